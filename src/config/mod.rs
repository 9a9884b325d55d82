//! Configuration: read the TOML once, validate everything, build the runtime form.
//!
//! [`raw`] holds what serde reads; [`Config`] is the validated form the gateway runs on:
//! durations and sizes parsed, caller-key hashes decoded into a map, routes in a table,
//! JSONPaths compiled, account secrets resolved into [`SecretString`]s. Every error names the
//! config key at fault and never quotes a secret. Runtime state (limiters, cache) lives
//! elsewhere; this module only describes what the operator asked for.

pub mod raw;
pub mod units;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::auth::KeyHash;
use crate::redact::Profile;
use raw::RawConfig;
use units::Rate;

/// A config that failed to load or validate. The message names the key (and file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax or schema (unknown key, wrong type).
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    /// A value that parsed but is not acceptable.
    #[error("{origin}: {key}: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

/// `[server]`, validated.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub shutdown_grace: Duration,
    pub request_timeout: Duration,
    /// `None` when `auth_failure_limit = "off"`.
    pub auth_failure_limit: Option<Rate>,
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub admin_token: Option<KeyHash>,
}

/// `[upstream]`, validated.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Scheme, host and port (and optional path prefix), without a trailing slash.
    pub base_url: String,
    pub allow_insecure_http: bool,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub retries: u32,
    pub max_body: usize,
    pub rate: Option<Rate>,
    /// Consecutive failed fetches of one account that open its circuit; 0 disables.
    pub breaker_failures: u32,
    /// How long an open circuit refuses calls before one probe.
    pub breaker_cooldown: Duration,
}

/// One upstream (Gcore) key. `Debug` never shows the key (it is a [`SecretString`]).
#[derive(Debug)]
pub struct Account {
    pub name: Arc<str>,
    pub api_key: SecretString,
}

impl Account {
    /// Whether two accounts would answer the same upstream requests (same name and key).
    pub fn same_upstream(&self, other: &Account) -> bool {
        use subtle::ConstantTimeEq;
        self.name == other.name
            && bool::from(
                self.api_key
                    .expose_secret()
                    .as_bytes()
                    .ct_eq(other.api_key.expose_secret().as_bytes()),
            )
    }
}

/// `[cache]`, validated.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub ttl: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub max_size: u64,
}

/// `[redis]`, validated. The URL may carry a password: `Debug` hides it.
pub struct RedisSettings {
    pub url: SecretString,
    pub key_prefix: String,
    pub timeout: Duration,
    pub pool_size: u32,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &"[REDACTED]")
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

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

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), &ProcessEnv)
    }

    /// Parses and validates TOML `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str, env: &dyn SecretSource) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: one_line_toml_error(text, &e),
        })?;
        Self::from_raw(raw, origin, env)
    }

    /// Validates a [`RawConfig`] into the runtime form.
    pub fn from_raw(
        raw: RawConfig,
        origin: &str,
        env: &dyn SecretSource,
    ) -> Result<Config, ConfigError> {
        let v = Validator { origin };
        let server = v.server(&raw.server)?;
        let upstream = v.upstream(&raw.upstream)?;
        let cache = v.cache(&raw.cache)?;
        let redis = raw.redis.as_ref().map(|r| v.redis(r)).transpose()?;
        let accounts = v.accounts(&raw.accounts, env)?;
        let (routes, route_by_path) = v.routes(&raw.routes, cache.ttl)?;
        let (profiles, profile_by_name) = v.profiles(&raw.profiles)?;
        let (clients, key_to_client) = v.clients(
            &raw.clients,
            &accounts,
            &route_by_path,
            &profile_by_name,
            routes.len(),
        )?;
        Ok(Config {
            origin: origin.to_string(),
            server,
            upstream,
            accounts,
            cache,
            redis,
            routes,
            route_by_path,
            profiles,
            clients,
            key_to_client,
        })
    }

    /// A short human summary for `check` and the startup log. Never contains a secret.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let names = |it: &mut dyn Iterator<Item = String>| it.collect::<Vec<_>>().join(", ");
        out.push_str(&format!(
            "listen {} (callers), {} (admin)\n",
            self.server.listen, self.server.admin_listen
        ));
        out.push_str(&format!("upstream {}\n", self.upstream.base_url));
        out.push_str(&format!(
            "accounts ({}): {}\n",
            self.accounts.len(),
            names(&mut self.accounts.iter().map(|a| a.name.to_string()))
        ));
        out.push_str(&format!(
            "routes ({}): {}\n",
            self.routes.len(),
            names(
                &mut self
                    .routes
                    .iter()
                    .map(|r| { format!("{} (ttl {})", r.path, humantime::format_duration(r.ttl)) })
            )
        ));
        out.push_str(&format!(
            "profiles ({}): {}\n",
            self.profiles.len(),
            names(&mut self.profiles.iter().map(|p| p.name.to_string()))
        ));
        out.push_str(&format!(
            "clients ({}): {}\n",
            self.clients.len(),
            names(&mut self.clients.iter().map(|c| {
                let mut s = format!(
                    "{} -> {} ({} key{}",
                    c.name,
                    self.accounts[c.account].name,
                    self.key_count(c.index),
                    if self.key_count(c.index) == 1 {
                        ""
                    } else {
                        "s"
                    }
                );
                if let Some(p) = c.profile {
                    s.push_str(&format!(", profile {}", self.profiles[p].name));
                }
                if let Some(r) = c.rate {
                    s.push_str(&format!(", rate {r} burst {}", c.burst));
                }
                s.push(')');
                s
            }))
        ));
        if self.redis.is_some() {
            out.push_str("redis: enabled (shared L2 cache and rate limits)\n");
        }
        out
    }

    fn key_count(&self, client: usize) -> usize {
        self.key_to_client
            .values()
            .filter(|c| **c == client)
            .count()
    }

    /// How long past its TTL an entry can still be served (the larger stale window).
    pub fn stale_windows(&self) -> Duration {
        self.cache
            .stale_while_revalidate
            .max(self.cache.stale_if_error)
    }

    /// The longest time any entry can still be useful: the longest route TTL plus the stale
    /// windows (how long the shared L2 keeps answers).
    pub fn max_retention(&self) -> Duration {
        let ttl = self
            .routes
            .iter()
            .map(|r| r.ttl)
            .max()
            .unwrap_or(self.cache.ttl);
        ttl + self.stale_windows()
    }
}

/// Squeezes toml's multi-line error into one line: "line L, column C: message".
fn one_line_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = without_quoted_values(e.message().trim());
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {col}: {message}")
        }
        None => message,
    }
}

/// serde quotes the offending value (`invalid type: string "…"`); the value may be a key pasted
/// in the wrong place, so quoted strings are cut out of parser messages. Field names are
/// quoted with backticks and stay.
fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_quote = false;
    for c in message.lines().next().unwrap_or("").chars() {
        match (c, in_quote) {
            ('"', false) => {
                in_quote = true;
                out.push_str("\"…\"");
            }
            ('"', true) => in_quote = false,
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    out
}

/// The longest duration any setting accepts: sums of a few of them can never overflow, and no
/// TTL, window or timeout of a gateway needs more.
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Items in config order plus an index from a lookup key to their position.
type Table<T, K> = (Vec<Arc<T>>, HashMap<K, usize>);

struct Validator<'a> {
    origin: &'a str,
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.to_string(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn dur(&self, key: &str, s: &str) -> Result<Duration, ConfigError> {
        let d = units::duration(s).map_err(|m| self.err(key, m))?;
        if d > MAX_DURATION {
            return Err(self.err(key, "must be at most 30 days"));
        }
        Ok(d)
    }

    fn positive(&self, key: &str, s: &str) -> Result<Duration, ConfigError> {
        let d = self.dur(key, s)?;
        if d.is_zero() {
            return Err(self.err(key, "must be greater than zero"));
        }
        Ok(d)
    }

    fn size(&self, key: &str, s: &units::RawSize) -> Result<u64, ConfigError> {
        units::size(s).map_err(|m| self.err(key, m))
    }

    fn addr(&self, key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
        s.parse()
            .map_err(|_| self.err(key, format!("invalid address {s:?}: expected IP:PORT")))
    }

    fn server(&self, s: &raw::RawServer) -> Result<ServerSettings, ConfigError> {
        let listen = self.addr("server.listen", &s.listen)?;
        let admin_listen = self.addr("server.admin_listen", &s.admin_listen)?;
        if listen == admin_listen && listen.port() != 0 {
            return Err(self.err(
                "server.admin_listen",
                "must differ from server.listen (admin routes never share the caller port)",
            ));
        }
        let auth_failure_limit = match s.auth_failure_limit.trim() {
            "off" => None,
            r => Some(units::rate(r).map_err(|m| self.err("server.auth_failure_limit", m))?),
        };
        let admin_token = s
            .admin_token_sha256
            .as_deref()
            .map(|h| KeyHash::parse(h).map_err(|m| self.err("server.admin_token_sha256", m)))
            .transpose()?;
        if s.max_connections == 0 {
            return Err(self.err("server.max_connections", "must be at least 1"));
        }
        let max_header_bytes = self.size("server.max_header_bytes", &s.max_header_bytes)?;
        if max_header_bytes < 1024 {
            return Err(self.err("server.max_header_bytes", "must be at least 1KiB"));
        }
        let max_uri_bytes = self.size("server.max_uri_bytes", &s.max_uri_bytes)?;
        if max_uri_bytes < 256 {
            return Err(self.err("server.max_uri_bytes", "must be at least 256 bytes"));
        }
        Ok(ServerSettings {
            listen,
            admin_listen,
            shutdown_grace: self.dur("server.shutdown_grace", &s.shutdown_grace)?,
            request_timeout: self.positive("server.request_timeout", &s.request_timeout)?,
            auth_failure_limit,
            header_read_timeout: self
                .positive("server.header_read_timeout", &s.header_read_timeout)?,
            keep_alive_timeout: self
                .positive("server.keep_alive_timeout", &s.keep_alive_timeout)?,
            max_connections: s.max_connections.min(usize::MAX as u64) as usize,
            max_header_bytes: max_header_bytes.min(1 << 20) as usize,
            max_uri_bytes: max_uri_bytes.min(1 << 20) as usize,
            admin_token,
        })
    }

    fn upstream(&self, u: &raw::RawUpstream) -> Result<UpstreamSettings, ConfigError> {
        let key = "upstream.base_url";
        let url = reqwest::Url::parse(&u.base_url)
            .map_err(|e| self.err(key, format!("invalid URL {:?}: {e}", u.base_url)))?;
        match url.scheme() {
            "https" => {}
            "http" if u.allow_insecure_http => {}
            "http" => {
                return Err(self.err(
                    key,
                    "http:// needs upstream.allow_insecure_http = true (the API key would cross the network in clear text)",
                ))
            }
            other => return Err(self.err(key, format!("unsupported scheme {other:?}"))),
        }
        if url.host_str().is_none() {
            return Err(self.err(key, "has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.err(key, "must not carry credentials"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(self.err(key, "must not have a query or fragment"));
        }
        let max_body = self.size("upstream.max_body", &u.max_body)?;
        if max_body == 0 {
            return Err(self.err("upstream.max_body", "must be greater than zero"));
        }
        if u.retries > 10 {
            return Err(self.err("upstream.retries", "at most 10"));
        }
        Ok(UpstreamSettings {
            base_url: url.as_str().trim_end_matches('/').to_string(),
            allow_insecure_http: u.allow_insecure_http,
            timeout: self.positive("upstream.timeout", &u.timeout)?,
            connect_timeout: self.positive("upstream.connect_timeout", &u.connect_timeout)?,
            retries: u.retries,
            max_body: max_body.min(usize::MAX as u64) as usize,
            rate: u
                .rate
                .as_deref()
                .map(|r| units::rate(r).map_err(|m| self.err("upstream.rate", m)))
                .transpose()?,
            breaker_failures: u.circuit_breaker_failures,
            breaker_cooldown: self.positive(
                "upstream.circuit_breaker_cooldown",
                &u.circuit_breaker_cooldown,
            )?,
        })
    }

    fn cache(&self, c: &raw::RawCache) -> Result<CacheSettings, ConfigError> {
        Ok(CacheSettings {
            ttl: self.positive("cache.ttl", &c.ttl)?,
            stale_while_revalidate: self
                .dur("cache.stale_while_revalidate", &c.stale_while_revalidate)?,
            stale_if_error: self.dur("cache.stale_if_error", &c.stale_if_error)?,
            max_size: self.size("cache.max_size", &c.max_size)?,
        })
    }

    fn redis(&self, r: &raw::RawRedis) -> Result<RedisSettings, ConfigError> {
        let scheme_ok = r.url.starts_with("redis://") || r.url.starts_with("rediss://");
        if !scheme_ok {
            return Err(self.err("redis.url", "must start with redis:// or rediss://"));
        }
        if redis::IntoConnectionInfo::into_connection_info(r.url.as_str()).is_err() {
            // The URL may hold a password: never quote it.
            return Err(self.err("redis.url", "is not a valid Redis URL"));
        }
        if r.pool_size == 0 {
            return Err(self.err("redis.pool_size", "must be at least 1"));
        }
        Ok(RedisSettings {
            url: SecretString::from(r.url.clone()),
            key_prefix: r.key_prefix.clone(),
            timeout: self.positive("redis.timeout", &r.timeout)?,
            pool_size: r.pool_size,
        })
    }

    fn accounts(
        &self,
        raw: &[raw::RawAccount],
        env: &dyn SecretSource,
    ) -> Result<Vec<Arc<Account>>, ConfigError> {
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(raw.len());
        for (i, a) in raw.iter().enumerate() {
            let at = format!("accounts[{i}]");
            check_name(&a.name).map_err(|m| self.err(format!("{at}.name"), m))?;
            if !seen.insert(a.name.as_str()) {
                return Err(self.err(
                    format!("{at}.name"),
                    format!("duplicate account {:?}", a.name),
                ));
            }
            if let Some(var) = &a.api_key_env {
                let valid = !var.is_empty()
                    && var.len() <= 128
                    && !var.starts_with(|c: char| c.is_ascii_digit())
                    && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid {
                    // Never echo it: a key pasted here instead of a variable name is a secret.
                    return Err(self.err(
                        format!("{at}.api_key_env"),
                        "must be the NAME of an environment variable ([A-Za-z_][A-Za-z0-9_]*), not the key itself",
                    ));
                }
            }
            let secret = match (&a.api_key_env, &a.api_key_file) {
                (Some(var), None) => env.env(var).ok_or_else(|| {
                    self.err(
                        format!("{at}.api_key_env"),
                        format!("environment variable {var} is not set"),
                    )
                })?,
                (None, Some(file)) => std::fs::read_to_string(file).map_err(|e| {
                    self.err(
                        format!("{at}.api_key_file"),
                        // The path is not quoted: a key pasted here instead of a path is a secret.
                        format!("cannot read the file: {e}"),
                    )
                })?,
                _ => return Err(self.err(&at, "set exactly one of api_key_env / api_key_file")),
            };
            let secret = secret.trim().to_string();
            let source = if a.api_key_env.is_some() {
                "api_key_env"
            } else {
                "api_key_file"
            };
            if secret.is_empty() {
                return Err(self.err(format!("{at}.{source}"), "the API key is empty"));
            }
            if secret.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
                return Err(self.err(
                    format!("{at}.{source}"),
                    "the API key contains whitespace or non-printable characters",
                ));
            }
            out.push(Arc::new(Account {
                name: a.name.as_str().into(),
                api_key: SecretString::from(secret),
            }));
        }
        Ok(out)
    }

    fn routes(
        &self,
        raw: &[raw::RawRoute],
        default_ttl: Duration,
    ) -> Result<Table<Route, Arc<str>>, ConfigError> {
        let mut routes = Vec::with_capacity(raw.len());
        let mut by_path = HashMap::new();
        for (i, r) in raw.iter().enumerate() {
            let key = format!("routes[{i}].path");
            crate::routing::validate_route_path(&r.path).map_err(|m| self.err(&key, m))?;
            let path: Arc<str> = r.path.as_str().into();
            if by_path.insert(path.clone(), i).is_some() {
                return Err(self.err(key, format!("duplicate route {:?}", r.path)));
            }
            let ttl = match &r.ttl {
                Some(t) => self.positive(&format!("routes[{i}].ttl"), t)?,
                None => default_ttl,
            };
            routes.push(Arc::new(Route {
                index: i,
                path,
                ttl,
                forward_query: r.forward_query,
            }));
        }
        Ok((routes, by_path))
    }

    fn profiles(
        &self,
        raw: &std::collections::BTreeMap<String, raw::RawProfile>,
    ) -> Result<Table<Profile, String>, ConfigError> {
        let mut out = Vec::with_capacity(raw.len());
        let mut by_name = HashMap::new();
        for (name, p) in raw {
            check_name(name).map_err(|m| self.err(format!("profiles.{name}"), m))?;
            let profile = Profile::compile(name, p).map_err(|e| self.err(e.key, e.message))?;
            by_name.insert(name.clone(), out.len());
            out.push(Arc::new(profile));
        }
        Ok((out, by_name))
    }

    fn clients(
        &self,
        raw: &[raw::RawClient],
        accounts: &[Arc<Account>],
        routes: &HashMap<Arc<str>, usize>,
        profiles: &HashMap<String, usize>,
        route_count: usize,
    ) -> Result<Table<Client, KeyHash>, ConfigError> {
        let mut out = Vec::with_capacity(raw.len());
        let mut keys = HashMap::new();
        let mut names = HashSet::new();
        for (i, c) in raw.iter().enumerate() {
            let at = format!("clients[{i}]");
            check_name(&c.name).map_err(|m| self.err(format!("{at}.name"), m))?;
            if !names.insert(c.name.as_str()) {
                return Err(self.err(
                    format!("{at}.name"),
                    format!("duplicate client {:?}", c.name),
                ));
            }
            let account = accounts
                .iter()
                .position(|a| *a.name == *c.account)
                .ok_or_else(|| {
                    self.err(
                        format!("{at}.account"),
                        format!("no account named {:?}", c.account),
                    )
                })?;
            let profile = c
                .profile
                .as_ref()
                .map(|p| {
                    profiles.get(p).copied().ok_or_else(|| {
                        self.err(format!("{at}.profile"), format!("no profile named {p:?}"))
                    })
                })
                .transpose()?;
            if c.keys.is_empty() {
                return Err(self.err(format!("{at}.keys"), "needs at least one key hash"));
            }
            for (k, key) in c.keys.iter().enumerate() {
                let hash =
                    KeyHash::parse(key).map_err(|m| self.err(format!("{at}.keys[{k}]"), m))?;
                if let Some(other) = keys.insert(hash, i) {
                    return Err(self.err(
                        format!("{at}.keys[{k}]"),
                        format!("the same key is already listed for {:?}", raw[other].name),
                    ));
                }
            }
            let rate = c
                .rate
                .as_deref()
                .map(|r| units::rate(r).map_err(|m| self.err(format!("{at}.rate"), m)))
                .transpose()?;
            let burst = match (rate, c.burst) {
                (_, Some(0)) => return Err(self.err(format!("{at}.burst"), "must be at least 1")),
                (None, Some(_)) => {
                    return Err(self.err(format!("{at}.burst"), "needs a rate on the same client"))
                }
                (Some(_), Some(b)) => b,
                (Some(r), None) => r.count.get(),
                (None, None) => 0,
            };
            let allowed_routes = match &c.routes {
                None => vec![true; route_count],
                Some(list) => {
                    let mut allowed = vec![false; route_count];
                    for (r, path) in list.iter().enumerate() {
                        let idx = routes.get(path.as_str()).ok_or_else(|| {
                            self.err(
                                format!("{at}.routes[{r}]"),
                                format!("{path:?} is not a configured route"),
                            )
                        })?;
                        allowed[*idx] = true;
                    }
                    allowed
                }
            };
            out.push(Arc::new(Client {
                index: i,
                name: c.name.as_str().into(),
                account,
                profile,
                rate,
                burst,
                allowed_routes,
            }));
        }
        Ok((out, keys))
    }
}

/// Names end up in metric labels and logs: keep them short and plain.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: use 1-64 characters from A-Z a-z 0-9 - _ ."
        ))
    }
}
