//! Stage 4, cache: per-account answers in moka, single-flight fills and stale serving.
//!
//! The store keeps entries and decides what an entry is worth now ([`Lookup`]); [`flight`]
//! coalesces concurrent fills of one key into one fetch. What a fetch does (breaker, budget,
//! shared cache, upstream call) is handed in as a future by `proxy::miss`: this room imports
//! nothing of the gateway, the upstream, Redis or metrics, and reports through return values.
//! moka's own expiry only bounds memory; freshness is decided from the entry's `fetched_at`.
//! [`key`] builds cache keys, [`entry`] holds one answer and its renders, [`l2`] is the
//! format of answers shared between replicas, [`hot`] the per-thread front that serves repeated
//! hits from each thread's own copy (valid while the store's epoch, bumped by every change of
//! the store, is unchanged).

pub(crate) mod entry;
pub(crate) mod flight;
pub(crate) mod hot;
pub(crate) mod key;
pub(crate) mod l2;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::ops::compute::Op;
use moka::sync::Cache;
use tokio::time::Instant;

use entry::Freshness;
pub use entry::{Entry, Origin, Rendered, StaleWindows};
pub(crate) use flight::{FetchPanicked, Flight};
pub(crate) use hot::HotHit;
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
    /// This store among others in the process (the per-thread fronts are per process).
    id: u64,
    /// Bumped after every change of the store: what a thread's front remembered under an
    /// older epoch is never served ([`hot`]).
    epoch: Arc<AtomicU64>,
}

/// Ids of stores.
static STORES: AtomicU64 = AtomicU64::new(1);

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
            id: STORES.fetch_add(1, Ordering::Relaxed),
            epoch: Arc::new(AtomicU64::new(0)),
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
        let epoch = self.epoch.clone();
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
                insert_if_newer(&entries, &epoch, k, e.clone());
                Ok(e)
            };
            (note, fill)
        })
    }

    /// Stores `entry` for `key` unless the store holds a newer fetch (never older over newer).
    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        insert_if_newer(&self.entries, &self.epoch, key, entry);
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
        self.invalidate_hot();
    }

    /// Drops every entry of the route `route` (its baseline changed: entries carry the new
    /// fields found against the old one).
    pub fn purge_route(&self, route: &str) {
        let route: Arc<str> = route.into();
        // Only fails if invalidation closures are disabled, which `new` enables.
        let _ = self
            .entries
            .invalidate_entries_if(move |k, _| k.route() == &*route);
        self.invalidate_hot();
    }

    /// The store's epoch now: read it *before* [`CacheStore::lookup`], and remember a hit
    /// under it ([`CacheStore::remember`]).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// This thread's own copy of (`key`, `profile`), when it was remembered under `epoch` (the
    /// current one) and is fresh at `now` for `ttl`.
    pub(crate) fn hot(
        &self,
        epoch: u64,
        key: &CacheKey,
        profile: Option<&Arc<crate::redact::Profile>>,
        now: Instant,
        ttl: Duration,
    ) -> Option<HotHit> {
        let hit = hot::get(self.id, epoch, key, profile, now, ttl)?;
        if hit.touch {
            // Lets moka's eviction policy see that the entry is in use.
            let _ = self.entries.get(key);
        }
        Some(hit)
    }

    /// Remembers a fresh hit of `entry` rendered as `rendered` for `profile` in this thread's
    /// front, under `epoch` (read before the lookup that found `entry`).
    pub(crate) fn remember(
        &self,
        epoch: u64,
        key: &CacheKey,
        profile: Option<&Arc<crate::redact::Profile>>,
        entry: &Entry,
        rendered: &Rendered,
    ) {
        hot::remember(self.id, epoch, key, profile, entry.fetched_at, rendered);
    }

    /// Makes every thread's front forget what it holds of this store (a reload calls it: new
    /// TTLs, profiles or keys apply to the next request).
    pub(crate) fn invalidate_hot(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
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

fn insert_if_newer(
    entries: &Cache<CacheKey, Arc<Entry>>,
    epoch: &AtomicU64,
    key: CacheKey,
    new: Arc<Entry>,
) {
    entries.entry(key).and_compute_with(|old| match old {
        Some(old) if old.value().fetched_at > new.fetched_at => Op::Nop,
        _ => Op::Put(new),
    });
    epoch.fetch_add(1, Ordering::AcqRel);
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

    /// What a caller of the store does on a hit: serve from the thread's front, else look the
    /// store up (epoch read first) and remember a fresh hit.
    fn serve(
        store: &CacheStore<Failed>,
        key: &CacheKey,
        profile: Option<&Arc<crate::redact::Profile>>,
    ) -> Option<(&'static str, Bytes)> {
        let (now, ttl) = (Instant::now(), Duration::from_secs(10));
        let epoch = store.epoch();
        if let Some(hot) = store.hot(epoch, key, profile, now, ttl) {
            return Some(("front", hot.rendered.body));
        }
        match store.lookup(key, now, ttl, StaleWindows::default()) {
            Lookup::Fresh(e) => {
                let r = e.body_for(profile).ok()?;
                store.remember(epoch, key, profile, &e, &r);
                Some(("store", r.body))
            }
            _ => None,
        }
    }

    fn profile() -> Arc<crate::redact::Profile> {
        let spec: crate::redact::ProfileSpec = toml::from_str("remove = [\"$.x\"]").unwrap();
        Arc::new(crate::redact::Profile::compile("p", &spec).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn a_thread_serves_its_own_copy_until_the_store_changes() {
        let store = CacheStore::<Failed>::new(1 << 20);
        let key = CacheKey::new("A".into(), 1, "/r".into(), None);
        store.insert(key.clone(), entry(Instant::now(), b"{\"v\":1}"));
        // Copied the second time in a row it is a hit, served from the copy after that.
        assert_eq!(serve(&store, &key, None).unwrap().0, "store");
        assert_eq!(serve(&store, &key, None).unwrap().0, "store");
        let (from, body) = serve(&store, &key, None).unwrap();
        assert_eq!((from, &body[..]), ("front", &b"{\"v\":1}"[..]));
        // Another thread has its own front: it asks the store first.
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(serve(&store, &key, None).unwrap().0, "store"));
        });
        // A newer answer: the front's copy is no longer served.
        tokio::time::advance(Duration::from_secs(1)).await;
        store.insert(key.clone(), entry(Instant::now(), b"{\"v\":2}"));
        let (from, body) = serve(&store, &key, None).unwrap();
        assert_eq!((from, &body[..]), ("store", &b"{\"v\":2}"[..]));
        serve(&store, &key, None);
        assert_eq!(serve(&store, &key, None).unwrap().0, "front");
        // Every kind of purge, and a reload, forget the front's copies.
        for forget in [
            &(|s: &CacheStore<Failed>| s.purge(None)) as &dyn Fn(&CacheStore<Failed>),
            &|s| s.purge(Some("A")),
            &|s| s.purge_route("/r"),
            &|s| s.invalidate_hot(),
        ] {
            store.insert(key.clone(), entry(Instant::now(), b"{\"v\":3}"));
            serve(&store, &key, None);
            serve(&store, &key, None);
            assert_eq!(serve(&store, &key, None).unwrap().0, "front");
            forget(&store);
            let after = serve(&store, &key, None).map(|h| h.0);
            assert_ne!(after, Some("front"));
        }
        // Freshness is the caller's TTL: an old copy is not served from the front.
        store.insert(key.clone(), entry(Instant::now(), b"{\"v\":4}"));
        serve(&store, &key, None);
        serve(&store, &key, None);
        assert_eq!(serve(&store, &key, None).unwrap().0, "front");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(serve(&store, &key, None).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hit_read_before_a_purge_is_never_remembered_past_it() {
        let store = CacheStore::<Failed>::new(1 << 20);
        let key = CacheKey::new("A".into(), 1, "/r".into(), None);
        store.insert(key.clone(), entry(Instant::now(), b"{}"));
        let epoch = store.epoch();
        let Lookup::Fresh(e) = store.lookup(
            &key,
            Instant::now(),
            Duration::from_secs(10),
            StaleWindows::default(),
        ) else {
            panic!("fresh")
        };
        // The purge lands between the lookup and remembering its hit.
        store.purge(None);
        store.remember(epoch, &key, None, &e, &e.raw);
        let now = Instant::now();
        assert!(store
            .hot(store.epoch(), &key, None, now, Duration::from_secs(10))
            .is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_front_tells_profiles_apart_by_identity_and_skips_big_bodies() {
        let store = CacheStore::<Failed>::new(1 << 24);
        let key = CacheKey::new("A".into(), 1, "/r".into(), None);
        store.insert(key.clone(), entry(Instant::now(), b"{\"x\":1,\"y\":2}"));
        let (p, same_spec) = (profile(), profile());
        assert_eq!(serve(&store, &key, Some(&p)).unwrap().0, "store");
        assert_eq!(serve(&store, &key, Some(&p)).unwrap().0, "store");
        let (from, body) = serve(&store, &key, Some(&p)).unwrap();
        assert_eq!((from, &body[..]), ("front", &b"{\"y\":2}"[..]));
        // Unprofiled callers and another profile (even with the same spec) are not served p's.
        let (from, body) = serve(&store, &key, None).unwrap();
        assert_eq!((from, &body[..]), ("store", &b"{\"x\":1,\"y\":2}"[..]));
        // (Its first request: what the front holds is p's copy, never served for it.)
        assert_ne!(serve(&store, &key, Some(&same_spec)).unwrap().0, "front");
        assert_eq!(serve(&store, &key, Some(&p)).unwrap().0, "front");
        // An answer beyond the front's bound is always served from the store.
        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(hot::MAX_BODY));
        let big_key = CacheKey::new("B".into(), 1, "/r".into(), None);
        let e = Arc::new(Entry::new(
            Bytes::from(big),
            Instant::now(),
            Origin::Upstream(Duration::ZERO),
            Duration::from_secs(60),
            0,
        ));
        store.insert(big_key.clone(), e);
        for _ in 0..3 {
            assert_eq!(serve(&store, &big_key, None).unwrap().0, "store");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keys_that_take_turns_at_a_slot_are_never_copied() {
        let store = CacheStore::<Failed>::new(1 << 24);
        // More keys than slots, each a fresh hit in turn: none is ever offered twice in a row
        // to its slot, so none is served from the front.
        let keys: Vec<CacheKey> = (0..hot::SLOTS * 4)
            .map(|i| CacheKey::new(format!("A{i}").into(), 1, "/r".into(), None))
            .collect();
        for k in &keys {
            store.insert(k.clone(), entry(Instant::now(), b"{}"));
        }
        let mut from_front = 0;
        for _ in 0..3 {
            for k in &keys {
                from_front += usize::from(serve(&store, k, None).unwrap().0 == "front");
            }
        }
        assert!(
            from_front < keys.len() / 4,
            "{from_front} of {} from the front",
            keys.len() * 3
        );
    }
}
