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
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};

use crate::auth::KeyHash;
use crate::drift::Shape;
use crate::forwarded::TrustedProxies;
use crate::redact::Profile;
use crate::telemetry::TracingSettings;
use crate::tls::Tls;
use crate::units::Rate;
use crate::upstream::{Account, UpstreamSettings};

/// `[server]`, validated.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Caller port address (`server.listen`).
    pub listen: SocketAddr,
    /// Admin port address (`server.admin_listen`).
    pub admin_listen: SocketAddr,
    /// How long in-flight requests may finish after a stop signal.
    pub shutdown_grace: Duration,
    /// Deadline of one caller request, upstream wait included.
    pub request_timeout: Duration,
    /// `None` when `auth_failure_limit = "off"`.
    pub auth_failure_limit: Option<Rate>,
    /// Connection limits: fixed while serving (a reload that changes one is refused).
    pub conn: ConnLimits,
    /// Hash of the admin bearer token, when admin routes need one.
    pub admin_token: Option<KeyHash>,
    /// TLS on the caller port (`tls_cert_file` + `tls_key_file`, optional
    /// `tls_client_ca_file`), read from the files at load; `None`: plain HTTP and h2c.
    pub tls: Option<Arc<Tls>>,
    /// Peers whose `X-Forwarded-For` names the client (`server.trusted_proxies`).
    pub trusted_proxies: TrustedProxies,
}

/// The caller port's connection limits (`[server]`); restart-only as a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// A request head must arrive within this (slowloris defence).
    pub header_read_timeout: Duration,
    /// An idle connection is closed after this.
    pub keep_alive_timeout: Duration,
    /// Open caller connections at most.
    pub max_connections: usize,
    /// Request head size limit (431 beyond).
    pub max_header_bytes: usize,
    /// Request target size limit (414 beyond).
    pub max_uri_bytes: usize,
}

/// `[cache]`, validated.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// How long an answer is fresh.
    pub ttl: Duration,
    /// Past the TTL, served while one refresh runs.
    pub stale_while_revalidate: Duration,
    /// Past the TTL, served when a refresh fails.
    pub stale_if_error: Duration,
    /// Weighted bytes the cache may hold.
    pub max_size: u64,
}

/// `[redis]`, validated; restart-only as a whole.
#[derive(Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// The Redis URL (may hold a password).
    pub url: RedisUrl,
    /// Prefix of every Redis key name.
    pub key_prefix: String,
    /// Timeout of one call.
    pub timeout: Duration,
    /// Connections kept open.
    pub pool_size: u32,
    /// PEM roots for a `rediss://` server (`ca_file`, read at load); `None`: the OS's.
    pub ca_pem: Option<Vec<u8>>,
    /// Ask these sentinels for the primary (the URL then gives scheme, user, password, db).
    pub sentinel: Option<SentinelSettings>,
}

/// `[redis] sentinels` + `sentinel_master`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelSettings {
    /// Sentinel addresses, in the order they are asked.
    pub addrs: Vec<(String, u16)>,
    /// The monitored primary's name.
    pub master: String,
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
    /// Position in its config table.
    pub index: usize,
    /// The route path, as configured.
    pub path: Arc<str>,
    /// How long an answer is fresh.
    pub ttl: Duration,
    /// Whether the caller's (canonical) query string is forwarded and part of the cache key.
    /// Off by default: otherwise any caller could bust the cache and spend the account's quota
    /// with `?x=1`, `?x=2`, …
    pub forward_query: bool,
    /// The known shape of its answers; `None`: no drift checking on this route.
    pub baseline: Option<Baseline>,
}

/// A route's known shape (`routes.baseline`, or the built-in sample) and where it came from.
#[derive(Debug)]
pub struct Baseline {
    /// `built-in` or the file's path, for `check` and `/admin/schema`.
    pub source: String,
    /// The field paths of the sample. A reload that reads an equal shape keeps this `Arc`.
    pub shape: Arc<Shape>,
}

/// One caller (team).
#[derive(Debug)]
pub struct Client {
    /// Position in its config table.
    pub index: usize,
    /// The name (config, metric labels, logs).
    pub name: Arc<str>,
    /// Index into [`Config::accounts`].
    pub account: usize,
    /// Index into [`Config::profiles`].
    pub profile: Option<usize>,
    /// Sustained rate, when limited.
    pub rate: Option<Rate>,
    /// Burst capacity of the rate.
    pub burst: u32,
    /// `allowed_routes[route.index]`; every route when the client lists none.
    pub allowed_routes: Vec<bool>,
    /// `clients.keys`, in config order.
    pub keys: Vec<ClientKey>,
}

/// One caller key of a client (`clients.keys`), as the request path needs it.
#[derive(Debug, Clone)]
pub struct ClientKey {
    /// SHA-256 of the key.
    pub hash: KeyHash,
    /// How logs, metrics and `/admin/clients` name the key: its configured id, else `sha256:`
    /// and the first 8 hex digits of its hash. Never the key.
    pub label: Arc<str>,
    /// Whether `label` is a configured id.
    pub has_id: bool,
    /// When the key stops working, if it does.
    pub expires: Option<SystemTime>,
    /// `expires` in Unix milliseconds, `u64::MAX` when the key never expires: the request
    /// path compares one integer with the clock.
    pub expires_unix_ms: u64,
}

impl ClientKey {
    /// Whether the key is expired at `now_unix_ms` (expired from its `expires` instant on).
    pub fn expired_at(&self, now_unix_ms: u64) -> bool {
        now_unix_ms >= self.expires_unix_ms
    }
}

/// Where a caller key belongs: `Config::clients[client].keys[key]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRef {
    /// Index into [`Config::clients`].
    pub client: usize,
    /// Index into that client's [`Client::keys`].
    pub key: usize,
}

/// The validated runtime configuration.
#[derive(Debug)]
pub struct Config {
    /// Where it came from (a path, or "embedded demo config").
    pub origin: String,
    /// `[server]`.
    pub server: ServerSettings,
    /// `[upstream]`.
    pub upstream: UpstreamSettings,
    /// `[[accounts]]`, in config order.
    pub accounts: Vec<Arc<Account>>,
    /// `[cache]`.
    pub cache: CacheSettings,
    /// `[redis]`, when replicas share through Redis.
    pub redis: Option<RedisSettings>,
    /// `[tracing]`, when traces are exported (an `otlp_endpoint` is set).
    pub tracing: Option<TracingSettings>,
    /// `[[routes]]`, in config order.
    pub routes: Vec<Arc<Route>>,
    /// Route index by path.
    pub route_by_path: HashMap<Arc<str>, usize>,
    /// `[profiles]`, compiled.
    pub profiles: Vec<Arc<Profile>>,
    /// `[[clients]]`, in config order.
    pub clients: Vec<Arc<Client>>,
    /// Client and key by caller-key hash.
    pub key_to_client: crate::auth::KeyMap<KeyRef>,
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
