//! What identifies one cached answer.

use std::sync::Arc;

/// Account (name and a fingerprint of its upstream key), route and canonical query. With the
/// fingerprint in the key, answers fetched with an old key are never served for a new one,
/// whatever a reload races with. [`CacheKey::new`] is the only way to build one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    account: Arc<str>,
    key_fp: u64,
    route: Arc<str>,
    query: Option<Arc<str>>,
}

impl CacheKey {
    /// The key of `route?query` for the account named `account` whose upstream key has the
    /// fingerprint `key_fp` (`upstream::Account::key_fp`).
    pub fn new(account: Arc<str>, key_fp: u64, route: Arc<str>, query: Option<Box<str>>) -> Self {
        CacheKey {
            account,
            key_fp,
            route,
            query: query.map(Arc::from),
        }
    }

    /// The account's name.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The route path.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// A cheap hash for a small table of one thread (`hot`): the names by address (keys of one
    /// generation share them; an equal key with other allocations only lands in another slot,
    /// as slots compare keys in full), the fingerprint, the query's bytes.
    pub(crate) fn quick_hash(&self) -> u64 {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let addr = |s: &Arc<str>| Arc::as_ptr(s).cast::<u8>() as usize as u64;
        let mut h = (self.key_fp ^ addr(&self.account)).wrapping_mul(K);
        h = (h.rotate_left(31) ^ addr(&self.route)).wrapping_mul(K);
        if let Some(q) = &self.query {
            for b in q.bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }

    /// The canonical query, if the route forwards one.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
}
