//! The Gcore key of one account, and the only place it is ever exposed.
//!
//! [`UpstreamKey`] wraps the key in a [`SecretString`] and computes, once at load, what the
//! rest of the gateway needs instead of the key: a fingerprint (cache keys, Redis key names,
//! "did the key change" on reload) and a MAC key for values shared through Redis. Only
//! [`UpstreamKey::authorization`], private to `upstream`, builds a header from the key itself.

use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// One upstream (Gcore) key. `Debug` never shows the key.
pub struct UpstreamKey {
    secret: SecretString,
    /// SHA-256 of the key: identifies it without revealing it.
    fingerprint: [u8; 32],
    /// Keys the MAC of shared (Redis) values: derived from the key, so a replica with another
    /// key can neither forge nor accept them.
    mac_key: [u8; 32],
}

impl std::fmt::Debug for UpstreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamKey([REDACTED])")
    }
}

impl UpstreamKey {
    /// Wraps `secret`, computing its fingerprint and MAC key.
    pub fn new(secret: SecretString) -> UpstreamKey {
        let raw = secret.expose_secret().as_bytes();
        let fingerprint = Sha256::digest(raw).into();
        let mut h = Sha256::new();
        h.update(b"gcore-gateway/l2-mac\0");
        h.update(raw);
        UpstreamKey {
            fingerprint,
            mac_key: h.finalize().into(),
            secret,
        }
    }

    /// SHA-256 of the key.
    pub(crate) fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// The key for authenticating values shared through Redis (never the key itself).
    pub(crate) fn mac_key(&self) -> &[u8; 32] {
        &self.mac_key
    }

    /// `APIKey <key>`, marked sensitive (never logged by hyper/h2, never indexed by HPACK).
    pub(super) fn authorization(&self) -> Result<HeaderValue, ()> {
        let mut v = HeaderValue::try_from(format!("APIKey {}", self.secret.expose_secret()))
            .map_err(|_| ())?;
        v.set_sensitive(true);
        Ok(v)
    }
}

/// One configured account: a name and its Gcore key.
#[derive(Debug)]
pub struct Account {
    /// The name (config, metric labels, logs).
    pub name: Arc<str>,
    /// The Gcore key.
    pub key: UpstreamKey,
    /// When the Gcore key expires, if the operator said (`accounts.expires`).
    pub expires: Option<SystemTime>,
    /// Names the account in Redis keys: a hash of its name and key fingerprint, so replicas
    /// share entries only when they call Gcore with the same key.
    pub(crate) tag: String,
    /// The first 8 bytes of the key fingerprint: part of every cache key of this account, so
    /// answers fetched with an old key are never served for a new one.
    pub(crate) key_fp: u64,
}

impl Account {
    /// An account named `name` calling Gcore with `key`.
    pub fn new(name: Arc<str>, key: UpstreamKey, expires: Option<SystemTime>) -> Account {
        let mut h = Sha256::new();
        h.update(b"gcore-gateway/account\0");
        h.update(name.as_bytes());
        h.update(b"\0");
        h.update(key.fingerprint());
        let tag = hex::encode(&h.finalize()[..12]);
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&key.fingerprint()[..8]);
        Account {
            tag,
            key_fp: u64::from_be_bytes(fp),
            name,
            key,
            expires,
        }
    }

    /// The hash that names this account in Redis keys (never the key itself).
    pub fn redis_tag(&self) -> &str {
        &self.tag
    }

    /// Whether two accounts answer the same upstream requests (same name, same key).
    pub fn same_upstream(&self, other: &Account) -> bool {
        self.name == other.name && self.key.fingerprint == other.key.fingerprint
    }
}
