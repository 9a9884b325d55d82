//! A cache entry: the upstream body, its fetch time, and one ready-to-send body per profile.
//!
//! Bodies are rendered lazily, once per (entry, profile), and kept, keyed by the profile
//! itself (an `Arc<Profile>`; a reload that keeps a profile unchanged keeps the same `Arc`),
//! so a hit costs a lookup and two `Bytes` clones. Freshness is computed from `fetched_at`
//! (`tokio::time::Instant`, so paused time in tests moves it) against the TTL the caller's
//! config generation gives the route, so a reload's new TTL applies to entries already stored.
//! An entry also carries the answer's new fields against its route's baseline (found once, when
//! the entry is made), which a profile's render drops or refuses.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::HeaderValue;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::drift::NewFields;
use crate::redact::{Profile, RedactError};

/// A body ready to send, with its strong ETag.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The bytes sent.
    pub body: Bytes,
    /// Its strong ETag.
    pub etag: HeaderValue,
}

impl Rendered {
    /// A new one.
    pub fn new(body: Bytes) -> Rendered {
        let digest = Sha256::digest(&body);
        let etag = format!("\"{}\"", hex::encode(&digest[..16]));
        Rendered {
            // Hex digits and quotes are always a valid header value.
            etag: HeaderValue::try_from(etag).unwrap_or(HeaderValue::from_static("\"0\"")),
            body,
        }
    }
}

/// How usable an entry is right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Younger than its TTL: serve (HIT).
    Fresh,
    /// Past TTL, inside `stale_while_revalidate`: serve (STALE) and refresh in the background.
    Revalidate,
    /// Past both, inside `stale_if_error`: only served if a refresh fails.
    IfError,
    /// Too old to serve at all.
    Expired,
}

/// Where an entry's body came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// This replica's upstream call, which took this long.
    Upstream(Duration),
    /// Another replica's fetch, read from the shared cache.
    Replica,
}

/// The stale windows of a config generation: how long past its TTL an entry may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StaleWindows {
    /// `cache.stale_while_revalidate`.
    pub revalidate: Duration,
    /// `cache.stale_if_error`.
    pub if_error: Duration,
}

impl StaleWindows {
    /// The larger window: how long past its TTL an entry is worth keeping.
    pub fn longest(&self) -> Duration {
        self.revalidate.max(self.if_error)
    }
}

type Renders = Vec<(Arc<Profile>, Result<Rendered, RedactError>)>;

/// One cached upstream answer.
pub struct Entry {
    /// When it was fetched (tokio clock: paused time in tests moves it).
    pub fetched_at: Instant,
    /// When it was fetched, wall clock.
    pub fetched_wall: SystemTime,
    /// The upstream body as received (served to clients without a profile).
    pub raw: Rendered,
    /// Where the body came from.
    pub origin: Origin,
    /// How long the store keeps the entry: the TTL plus the larger stale window of the config
    /// it was stored under (moka's per-entry expiry; freshness is decided from `fetched_at`).
    pub retain: Duration,
    /// The answer's fields outside its route's known shape (`None`: none, or no baseline).
    new_fields: Option<NewFields>,
    renders: ArcSwap<Renders>,
    /// Serialises first renders, so a storm of first hits renders once.
    render_lock: Mutex<()>,
    /// How many renders the weight makes room for.
    expected_renders: usize,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print bodies: they hold personal data.
        f.debug_struct("Entry")
            .field("fetched_at", &self.fetched_at)
            .field("origin", &self.origin)
            .field("bytes", &self.raw.body.len())
            .finish_non_exhaustive()
    }
}

impl Entry {
    /// An answer fetched at `fetched_at` (wall clock: now). `expected_renders` (the number of
    /// profiles) sizes the entry's weight; `retain` is how long the store keeps it.
    pub fn new(
        body: Bytes,
        fetched_at: Instant,
        origin: Origin,
        retain: Duration,
        expected_renders: usize,
    ) -> Entry {
        Entry {
            fetched_at,
            fetched_wall: SystemTime::now(),
            raw: Rendered::new(body),
            origin,
            retain,
            new_fields: None,
            renders: ArcSwap::from_pointee(Vec::new()),
            render_lock: Mutex::new(()),
            expected_renders,
        }
    }

    /// An answer another replica fetched at wall-clock time `fetched_wall` (never in the
    /// future: a later time is taken as now).
    pub fn from_replica(
        body: Bytes,
        fetched_wall: SystemTime,
        retain: Duration,
        expected_renders: usize,
    ) -> Entry {
        let now_wall = SystemTime::now();
        let fetched_wall = fetched_wall.min(now_wall);
        let age = now_wall
            .duration_since(fetched_wall)
            .unwrap_or(Duration::ZERO);
        let now = Instant::now();
        let mut e = Entry::new(
            body,
            now.checked_sub(age).unwrap_or(now),
            Origin::Replica,
            retain,
            expected_renders,
        );
        e.fetched_wall = fetched_wall;
        e
    }

    /// The entry with the answer's new fields (from `drift`), which renders drop or refuse
    /// as each profile says.
    pub fn with_new_fields(mut self, new_fields: Option<NewFields>) -> Entry {
        self.new_fields = new_fields;
        self
    }

    /// The answer's fields outside its route's known shape.
    pub fn new_fields(&self) -> Option<&NewFields> {
        self.new_fields.as_ref()
    }

    /// The body for a client: raw, or rendered through `profile`. Fails closed when the
    /// profile cannot be applied (not JSON, or new fields the profile blocks); the failure is
    /// kept like a render, so a blocked answer is judged once.
    pub fn body_for(&self, profile: Option<&Arc<Profile>>) -> Result<Rendered, RedactError> {
        let Some(profile) = profile else {
            return Ok(self.raw.clone());
        };
        if let Some(r) = find(&self.renders.load(), profile) {
            return r;
        }
        let _first = self.render_lock.lock();
        if let Some(r) = find(&self.renders.load(), profile) {
            return r;
        }
        let rendered = profile
            .render_checked(&self.raw.body, self.new_fields.as_ref())
            .map(Rendered::new);
        let mut renders = Vec::clone(&self.renders.load());
        renders.push((profile.clone(), rendered.clone()));
        self.renders.store(Arc::new(renders));
        rendered
    }

    /// Age now.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.fetched_at)
    }

    /// Classifies the entry at `now` for a route whose TTL is `ttl`.
    pub fn freshness(&self, now: Instant, ttl: Duration, stale: StaleWindows) -> Freshness {
        let age = self.age(now);
        if age < ttl {
            Freshness::Fresh
        } else if age < ttl + stale.revalidate {
            Freshness::Revalidate
        } else if age < ttl + stale.longest() {
            Freshness::IfError
        } else {
            Freshness::Expired
        }
    }

    /// Weight for the cache's size bound: the raw body plus room for one render per profile
    /// (a render is never larger than the raw body but for `"***"` masks), plus bookkeeping.
    pub fn weight(&self) -> u32 {
        let per_copy = self.raw.body.len() as u64 + 64;
        let total = per_copy * (1 + self.expected_renders as u64) + 256;
        total.min(u32::MAX as u64) as u32
    }
}

fn find(renders: &Renders, profile: &Arc<Profile>) -> Option<Result<Rendered, RedactError>> {
    renders
        .iter()
        .find(|(p, _)| Arc::ptr_eq(p, profile))
        .map(|(_, r)| r.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn freshness_windows() {
        let ttl = Duration::from_secs(10);
        let e = Entry::new(
            Bytes::from_static(b"{}"),
            Instant::now(),
            Origin::Upstream(Duration::ZERO),
            ttl,
            0,
        );
        let stale = StaleWindows {
            revalidate: Duration::from_secs(5),
            if_error: Duration::from_secs(60),
        };
        assert_eq!(e.freshness(Instant::now(), ttl, stale), Freshness::Fresh);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            e.freshness(Instant::now(), ttl, stale),
            Freshness::Revalidate
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(e.freshness(Instant::now(), ttl, stale), Freshness::IfError);
        tokio::time::advance(Duration::from_secs(55)).await;
        assert_eq!(e.freshness(Instant::now(), ttl, stale), Freshness::Expired);
    }

    #[test]
    fn etag_depends_on_body() {
        let a = Rendered::new(Bytes::from_static(b"a"));
        let b = Rendered::new(Bytes::from_static(b"b"));
        assert_ne!(a.etag, b.etag);
        assert_eq!(a.etag, Rendered::new(Bytes::from_static(b"a")).etag);
    }

    #[tokio::test]
    async fn a_replica_time_in_the_future_counts_as_now() {
        let day_ahead = SystemTime::now() + Duration::from_secs(86_400);
        let e = Entry::from_replica(
            Bytes::from_static(b"{}"),
            day_ahead,
            Duration::from_secs(60),
            0,
        );
        assert!(e.fetched_wall <= SystemTime::now());
        assert!(e.age(Instant::now()) < Duration::from_secs(1));
    }

    #[test]
    fn renders_are_keyed_by_profile_identity() {
        let spec = crate::redact::ProfileSpec {
            remove: vec!["$.a".into()],
            ..Default::default()
        };
        let p1 = Arc::new(Profile::compile("p", &spec).unwrap());
        let p2 = Arc::new(Profile::compile("p", &crate::redact::ProfileSpec::default()).unwrap());
        let e = Entry::new(
            Bytes::from_static(br#"{"a":1,"b":2}"#),
            Instant::now(),
            Origin::Replica,
            Duration::from_secs(1),
            2,
        );
        assert_eq!(&e.body_for(Some(&p1)).unwrap().body[..], br#"{"b":2}"#);
        assert_eq!(
            &e.body_for(Some(&p2)).unwrap().body[..],
            br#"{"a":1,"b":2}"#
        );
        assert_eq!(&e.body_for(Some(&p1)).unwrap().body[..], br#"{"b":2}"#);
    }
}
