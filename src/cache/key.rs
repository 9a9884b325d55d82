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

    /// The canonical query, if the route forwards one.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
}
