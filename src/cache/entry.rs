//! A cache entry: the upstream body, its fetch time, and one ready-to-send body per profile.
//!
//! Bodies are rendered lazily, once per (entry, profile), and kept, so a hit costs a clone of
//! `Bytes` and of a precomputed `ETag`. Freshness is computed from `fetched_at`
//! (`tokio::time::Instant`, so paused time in tests moves it). An entry is tied to the config
//! generation whose profile table indexes its renders; after a reload it is rebased.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::HeaderValue;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::redact::{Profile, RedactError};

/// A body ready to send, with its strong ETag.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub body: Bytes,
    pub etag: HeaderValue,
}

impl Rendered {
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

/// One cached upstream answer.
pub struct Entry {
    pub fetched_at: Instant,
    pub fetched_wall: SystemTime,
    pub ttl: Duration,
    /// The upstream body as received (served to clients without a profile).
    pub raw: Rendered,
    /// Config generation whose profile indexes `renders` follows.
    pub generation: u64,
    /// How long the upstream fetch that produced this entry took (`None`: from another replica).
    pub fetch_latency: Option<Duration>,
    /// How long the store keeps the entry: its TTL plus the larger stale window of the config
    /// it was stored under (moka's per-entry expiry; freshness is decided from `fetched_at`).
    pub retain: Duration,
    renders: Box<[OnceLock<Option<Rendered>>]>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print bodies: they hold personal data.
        f.debug_struct("Entry")
            .field("fetched_at", &self.fetched_at)
            .field("ttl", &self.ttl)
            .field("bytes", &self.raw.body.len())
            .finish_non_exhaustive()
    }
}

impl Entry {
    pub fn new(
        body: Bytes,
        fetched_at: Instant,
        ttl: Duration,
        generation: u64,
        profiles: usize,
    ) -> Entry {
        Entry {
            fetched_at,
            fetched_wall: SystemTime::now(),
            ttl,
            raw: Rendered::new(body),
            generation,
            fetch_latency: None,
            retain: ttl,
            renders: (0..profiles).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Records how long the upstream fetch took (for the access log of the MISS).
    pub fn fetched_in(mut self, took: Duration) -> Entry {
        self.fetch_latency = Some(took);
        self
    }

    /// Sets how long the store keeps the entry (see [`Entry::retain`]).
    pub fn retaining(mut self, stale_windows: Duration) -> Entry {
        self.retain = self.ttl + stale_windows;
        self
    }

    /// An answer another replica fetched `age` ago at wall-clock time `fetched_wall`.
    pub fn from_shared(
        body: Bytes,
        fetched_wall: SystemTime,
        ttl: Duration,
        generation: u64,
        profiles: usize,
    ) -> Entry {
        let age = SystemTime::now()
            .duration_since(fetched_wall)
            .unwrap_or(Duration::ZERO);
        let now = Instant::now();
        let mut e = Entry::new(
            body,
            now.checked_sub(age).unwrap_or(now),
            ttl,
            generation,
            profiles,
        );
        e.fetched_wall = fetched_wall;
        e
    }

    /// The same answer for another config generation (renders dropped; profiles may differ).
    pub fn rebase(&self, generation: u64, profiles: usize, ttl: Duration) -> Entry {
        Entry {
            fetched_at: self.fetched_at,
            fetched_wall: self.fetched_wall,
            ttl,
            raw: self.raw.clone(),
            generation,
            fetch_latency: None,
            retain: self.retain,
            renders: (0..profiles).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The body for a client: raw, or rendered through `profile` (index `idx` in the entry's
    /// generation). Fails closed when the profile cannot be applied.
    pub fn body_for(&self, profile: Option<(usize, &Profile)>) -> Result<&Rendered, RedactError> {
        let Some((idx, profile)) = profile else {
            return Ok(&self.raw);
        };
        let slot = self.renders.get(idx).ok_or(RedactError)?;
        slot.get_or_init(|| profile.render(&self.raw.body).ok().map(Rendered::new))
            .as_ref()
            .ok_or(RedactError)
    }

    /// Age now.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.fetched_at)
    }

    /// Classifies the entry at `now`.
    pub fn freshness(&self, now: Instant, revalidate: Duration, if_error: Duration) -> Freshness {
        let age = self.age(now);
        if age < self.ttl {
            Freshness::Fresh
        } else if age < self.ttl + revalidate {
            Freshness::Revalidate
        } else if age < self.ttl + if_error.max(revalidate) {
            Freshness::IfError
        } else {
            Freshness::Expired
        }
    }

    /// Seconds of freshness left (for `Cache-Control: max-age`).
    pub fn fresh_secs_left(&self, now: Instant) -> u64 {
        self.ttl.saturating_sub(self.age(now)).as_secs()
    }

    /// Weight for the cache's size bound: the raw body plus room for one render per profile
    /// (a render is never larger than the raw body but for `"***"` masks), plus bookkeeping.
    pub fn weight(&self) -> u32 {
        let per_copy = self.raw.body.len() as u64 + 64;
        let total = per_copy * (1 + self.renders.len() as u64) + 256;
        total.min(u32::MAX as u64) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn freshness_windows() {
        let e = Entry::new(
            Bytes::from_static(b"{}"),
            Instant::now(),
            Duration::from_secs(10),
            0,
            0,
        );
        let (swr, sie) = (Duration::from_secs(5), Duration::from_secs(60));
        assert_eq!(e.freshness(Instant::now(), swr, sie), Freshness::Fresh);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(e.freshness(Instant::now(), swr, sie), Freshness::Revalidate);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(e.freshness(Instant::now(), swr, sie), Freshness::IfError);
        tokio::time::advance(Duration::from_secs(55)).await;
        assert_eq!(e.freshness(Instant::now(), swr, sie), Freshness::Expired);
    }

    #[test]
    fn etag_depends_on_body() {
        let a = Rendered::new(Bytes::from_static(b"a"));
        let b = Rendered::new(Bytes::from_static(b"b"));
        assert_ne!(a.etag, b.etag);
        assert_eq!(a.etag, Rendered::new(Bytes::from_static(b"a")).etag);
    }
}
