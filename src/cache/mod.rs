//! Stage 4, cache: per-account answers in moka, with single-flight fills and stale serving.
//!
//! Layout: [`entry`] is one cached answer with its renders and freshness; this file is the
//! store (moka, bounded by weighted bytes) and the cache-or-fetch decision; [`fill`] runs one
//! upstream fetch per key no matter how many callers wait (coalescing), also for background
//! refreshes. moka's own expiry only bounds memory; what is fresh or stale is decided from the
//! entry's `fetched_at`. Redaction of bodies is in `redact`, the upstream call in `upstream`.

pub mod entry;
pub mod fill;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{BoxFuture, Shared};
use moka::future::Cache;

pub use entry::{Entry, Freshness, Rendered};

use crate::upstream::UpstreamFailure;

/// What identifies one cached answer: account (name and a fingerprint of its upstream key),
/// route and canonical query. With the fingerprint in the key, answers fetched with an old key
/// are never served for a new one, whatever a reload races with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub account: Arc<str>,
    /// `AccountState::key_fp` of the account the answer was fetched for.
    pub key_fp: u64,
    pub route: Arc<str>,
    pub query: Option<Arc<str>>,
}

/// How an answer was produced (the `X-Cache` header and the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Stale,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
        }
    }
}

type FillResult = Result<Arc<Entry>, UpstreamFailure>;
pub(crate) type Flight = Shared<BoxFuture<'static, FillResult>>;

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

/// The cache store and the table of fills in progress.
pub struct CacheStore {
    entries: Cache<CacheKey, Arc<Entry>>,
    inflight: Mutex<HashMap<CacheKey, Flight>>,
}

impl std::fmt::Debug for CacheStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStore")
            .field("entries", &self.entries.entry_count())
            .finish_non_exhaustive()
    }
}

impl CacheStore {
    /// A store bounded by `max_bytes` of weighted size; each entry is kept for its own
    /// [`Entry::retain`], so a reload that changes TTLs or stale windows applies to new entries.
    pub fn new(max_bytes: u64) -> CacheStore {
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &CacheKey, v: &Arc<Entry>| v.weight())
            .expire_after(Retain)
            .support_invalidation_closures()
            .build();
        CacheStore {
            entries,
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// The cached entry for `key`, whatever its age.
    pub async fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.entries.get(key).await
    }

    pub async fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        self.entries.insert(key, entry).await;
    }

    /// Drops every entry, or only those of `account`.
    pub fn purge(&self, account: Option<&str>) {
        match account {
            None => self.entries.invalidate_all(),
            Some(name) => {
                let name: Arc<str> = name.into();
                // Only fails if invalidation closures are disabled, which `new` enables.
                let _ = self
                    .entries
                    .invalidate_entries_if(move |k, _| k.account == name);
            }
        }
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
    pub async fn sync(&self) {
        self.entries.run_pending_tasks().await;
    }

    /// A snapshot of all entries (admin listing; never bodies).
    pub fn snapshot(&self) -> Vec<(Arc<CacheKey>, Arc<Entry>)> {
        self.entries.iter().collect()
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Flight>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }
}
