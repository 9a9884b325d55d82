//! The validated runtime form of the config: what the gateway runs on.
//!
//! Built once by `validate` from the raw TOML; nothing on the request path parses anything.
//! Settings that need a restart to change are grouped in structs that derive `PartialEq`
//! ([`ConnLimits`], [`RedisSettings`], `UpstreamSettings`), so a field added later is compared
//! on reload without anyone remembering to. Secrets are [`SecretString`]s or
//! `upstream::UpstreamKey`s; `Debug` never shows them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::auth::KeyHash;
use crate::redact::Profile;
use crate::units::Rate;
use crate::upstream::{Account, UpstreamSettings};

/// `[server]`, validated.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub shutdown_grace: Duration,
    pub request_timeout: Duration,
    /// `None` when `auth_failure_limit = "off"`.
    pub auth_failure_limit: Option<Rate>,
    /// Connection limits: fixed while serving (a reload that changes one is refused).
    pub conn: ConnLimits,
    pub admin_token: Option<KeyHash>,
}

/// The caller port's connection limits (`[server]`); restart-only as a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
}

/// `[cache]`, validated.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub ttl: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub max_size: u64,
}

/// `[redis]`, validated; restart-only as a whole.
#[derive(Debug, PartialEq, Eq)]
pub struct RedisSettings {
    pub url: RedisUrl,
    pub key_prefix: String,
    pub timeout: Duration,
    pub pool_size: u32,
}

/// A Redis URL, which may carry a password: `Debug` hides it, `==` compares in constant time.
pub struct RedisUrl(pub SecretString);

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisUrl([REDACTED])")
    }
}

impl PartialEq for RedisUrl {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0
            .expose_secret()
            .as_bytes()
            .ct_eq(other.0.expose_secret().as_bytes())
            .into()
    }
}

impl Eq for RedisUrl {}

/// One allow-listed route.
#[derive(Debug)]
pub struct Route {
    pub index: usize,
    pub path: Arc<str>,
    pub ttl: Duration,
    /// Whether the caller's (canonical) query string is forwarded and part of the cache key.
    /// Off by default: otherwise any caller could bust the cache and spend the account's quota
    /// with `?x=1`, `?x=2`, …
    pub forward_query: bool,
}

/// One caller (team).
#[derive(Debug)]
pub struct Client {
    pub index: usize,
    pub name: Arc<str>,
    /// Index into [`Config::accounts`].
    pub account: usize,
    /// Index into [`Config::profiles`].
    pub profile: Option<usize>,
    pub rate: Option<Rate>,
    pub burst: u32,
    /// `allowed_routes[route.index]`; every route when the client lists none.
    pub allowed_routes: Vec<bool>,
}

/// The validated runtime configuration.
#[derive(Debug)]
pub struct Config {
    /// Where it came from (a path, or "embedded demo config").
    pub origin: String,
    pub server: ServerSettings,
    pub upstream: UpstreamSettings,
    pub accounts: Vec<Arc<Account>>,
    pub cache: CacheSettings,
    pub redis: Option<RedisSettings>,
    pub routes: Vec<Arc<Route>>,
    pub route_by_path: HashMap<Arc<str>, usize>,
    pub profiles: Vec<Arc<Profile>>,
    pub clients: Vec<Arc<Client>>,
    pub key_to_client: HashMap<KeyHash, usize>,
}

/// Where account secrets come from: the process environment in production, a map in tests.
pub trait SecretSource {
    /// The value of environment variable `name`, if set.
    fn env(&self, name: &str) -> Option<String>;
}

/// Reads secrets from the real process environment.
pub struct ProcessEnv;

impl SecretSource for ProcessEnv {
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl SecretSource for HashMap<String, String> {
    fn env(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

