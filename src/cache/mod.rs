//! Stage 4, cache: per-account answers in moka, single-flight fills and stale serving.
//!
//! The store keeps entries and decides what an entry is worth now ([`Lookup`]); [`flight`]
//! coalesces concurrent fills of one key into one fetch. What a fetch does (breaker, budget,
//! shared cache, upstream call) is handed in as a future by `proxy::miss`: this room imports
//! nothing of the gateway, the upstream, Redis or metrics, and reports through return values.
//! moka's own expiry only bounds memory; freshness is decided from the entry's `fetched_at`.
//! [`key`] builds cache keys, [`entry`] holds one answer and its renders, [`l2`] is the
//! format of answers shared between replicas.

pub(crate) mod entry;
pub(crate) mod flight;
pub(crate) mod key;
pub(crate) mod l2;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use moka::ops::compute::Op;
use moka::sync::Cache;
use tokio::time::Instant;

use entry::Freshness;
pub use entry::{Entry, Origin, Rendered, StaleWindows};
pub(crate) use flight::{FetchPanicked, Flight};
pub use key::CacheKey;

use flight::Flights;

/// How an answer was produced (the `X-Cache` header and the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheStatus {
    /// From this replica's cache.
    Hit,
    /// A copy another replica fetched, read from the shared cache: no upstream call was made,
    /// so it is a `HIT` to the caller; metrics and the access log say `HIT_SHARED` so the
    /// shared hit ratio is visible.
    SharedHit,
    /// The request waited for an upstream call (its own or a coalesced one).
    Miss,
    Stale,
}

impl CacheStatus {
    /// The `X-Cache` header value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit | CacheStatus::SharedHit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
        }
    }

    /// The metric label and access-log value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            CacheStatus::SharedHit => "HIT_SHARED",
            s => s.as_str(),
        }
    }
}

/// What the store holds for a key, judged at one instant.
#[derive(Debug)]
pub enum Lookup {
    /// Serve it (HIT).
    Fresh(Arc<Entry>),
    /// Serve it (STALE) and refresh in the background.
    Revalidate(Arc<Entry>),
    /// Fetch; `stale` may be served if the fetch fails.
    Miss { stale: Option<Arc<Entry>> },
}

/// moka's per-entry expiry: an entry lives for its `retain`, counted from when it is stored.
struct Retain;

impl moka::Expiry<CacheKey, Arc<Entry>> for Retain {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<Entry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.retain.max(Duration::from_secs(1)))
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<Entry>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.retain.max(Duration::from_secs(1)))
    }
}

/// The cache store and the table of fills in progress; `E` is how a fetch fails, `T` the note
/// a fill's starter leaves for those who join it.
pub struct CacheStore<E, T = ()> {
    entries: Cache<CacheKey, Arc<Entry>>,
    flights: Arc<Flights<CacheKey, Arc<Entry>, E, T>>,
}

impl<E, T> std::fmt::Debug for CacheStore<E, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStore")
            .field("entries", &self.entries.entry_count())
            .finish_non_exhaustive()
    }
}

impl<E, T> CacheStore<E, T>
where
    E: Clone + Send + Sync + From<FetchPanicked> + 'static,
    T: Clone + Send + 'static,
{
    /// A store bounded by `max_bytes` of weighted size; each entry is kept for its own
    /// [`Entry::retain`], so a reload that changes TTLs or stale windows applies to new entries.
    pub fn new(max_bytes: u64) -> Self {
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &CacheKey, v: &Arc<Entry>| v.weight())
            .expire_after(Retain)
            .support_invalidation_closures()
            .build();
        CacheStore {
            entries,
            flights: Flights::new(),
        }
    }

    /// What the store has for `key` at `now`, for a route with `ttl` and the `stale` windows.
    ///
    /// Synchronous: moka's reads are lock-free and never wait, so a hit is decided without a
    /// future, and the request's own future stays small.
    pub fn lookup(
        &self,
        key: &CacheKey,
        now: Instant,
        ttl: Duration,
        stale: StaleWindows,
    ) -> Lookup {
        let Some(e) = self.entries.get(key) else {
            return Lookup::Miss { stale: None };
        };
        match e.freshness(now, ttl, stale) {
            Freshness::Fresh => Lookup::Fresh(e),
            Freshness::Revalidate => Lookup::Revalidate(e),
            Freshness::IfError => Lookup::Miss { stale: Some(e) },
            Freshness::Expired => Lookup::Miss { stale: None },
        }
    }

    /// Joins the fill of `key`, or starts one when none runs: `start` gives the note for
    /// joiners and the fetch. Before fetching, the fill looks at the store once more (a fill
    /// that finished between a caller's miss and its joining is reused, never repeated); a
    /// fetched entry is stored unless the store already holds a newer one. Returns the shared
    /// fill and, when it was joined, its starter's note.
    pub fn fill<F>(
        &self,
        key: &CacheKey,
        ttl: Duration,
        start: impl FnOnce() -> (T, F),
    ) -> (Flight<Arc<Entry>, E>, Option<T>)
    where
        F: Future<Output = Result<Arc<Entry>, E>> + Send + 'static,
    {
        let entries = self.entries.clone();
        let k = key.clone();
        self.flights.join_or_start(key, move || {
            let (note, fetch) = start();
            let fill = async move {
                if let Some(e) = entries.get(&k) {
                    if e.age(Instant::now()) < ttl {
                        return Ok(e);
                    }
                }
                let e = fetch.await?;
                insert_if_newer(&entries, k, e.clone());
                Ok(e)
            };
            (note, fill)
        })
    }

    /// Stores `entry` for `key` unless the store holds a newer fetch (never older over newer).
    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        insert_if_newer(&self.entries, key, entry);
    }

    /// The entry for `key` whatever its age (admin, tests).
    pub fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.entries.get(key)
    }

    /// Drops every entry, or only those of the account named `account`.
    pub fn purge(&self, account: Option<&str>) {
        match account {
            None => self.entries.invalidate_all(),
            Some(name) => {
                let name: Arc<str> = name.into();
                // Only fails if invalidation closures are disabled, which `new` enables.
                let _ = self
                    .entries
                    .invalidate_entries_if(move |k, _| k.account() == &*name);
            }
        }
    }

    /// Drops every entry of the route `route` (its baseline changed: entries carry the new
    /// fields found against the old one).
    pub fn purge_route(&self, route: &str) {
        let route: Arc<str> = route.into();
        // Only fails if invalidation closures are disabled, which `new` enables.
        let _ = self
            .entries
            .invalidate_entries_if(move |k, _| k.route() == &*route);
    }

    /// Number of entries (approximate until pending maintenance runs).
    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Weighted size in bytes.
    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Runs moka's pending maintenance so counts are exact (admin and tests).
    pub fn sync(&self) {
        self.entries.run_pending_tasks();
    }

    /// A snapshot of all entries (admin listing; never bodies).
    pub fn snapshot(&self) -> Vec<(Arc<CacheKey>, Arc<Entry>)> {
        self.entries.iter().collect()
    }
}

fn insert_if_newer(entries: &Cache<CacheKey, Arc<Entry>>, key: CacheKey, new: Arc<Entry>) {
    entries.entry(key).and_compute_with(|old| match old {
        Some(old) if old.value().fetched_at > new.fetched_at => Op::Nop,
        _ => Op::Put(new),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[derive(Debug, Clone)]
    struct Failed;
    impl From<FetchPanicked> for Failed {
        fn from(_: FetchPanicked) -> Self {
            Failed
        }
    }

    fn entry(at: Instant, body: &'static [u8]) -> Arc<Entry> {
        Arc::new(Entry::new(
            Bytes::from_static(body),
            at,
            Origin::Upstream(Duration::ZERO),
            Duration::from_secs(60),
            0,
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn an_older_fetch_never_replaces_a_newer_one() {
        let store = CacheStore::<Failed>::new(1 << 20);
        let key = CacheKey::new("A".into(), 1, "/r".into(), None);
        let old = Instant::now();
        tokio::time::advance(Duration::from_secs(5)).await;
        store.insert(key.clone(), entry(Instant::now(), b"{\"v\":2}"));
        store.insert(key.clone(), entry(old, b"{\"v\":1}"));
        let got = store.get(&key).unwrap();
        assert_eq!(&got.raw.body[..], b"{\"v\":2}");
    }
}
