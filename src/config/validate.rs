//! Validation: [`RawConfig`](super::raw::RawConfig) in, the runtime [`Config`](super::Config)
//! out. Every error names the config key at fault and never quotes a secret or a value that
//! could be one (a key pasted in the wrong field).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use super::model::*;
use super::raw;
use super::ConfigError;
use crate::auth::KeyHash;
use crate::drift::{self, Shape};
use crate::forwarded::TrustedProxies;
use crate::redact::Profile;
use crate::telemetry::{OtlpProtocol, TracingSettings};
use crate::tls::{Tls, TlsFiles};
use crate::units;
use crate::upstream::{Account, UpstreamKey, UpstreamSettings};

/// The longest duration any setting accepts: sums of a few of them can never overflow, and no
/// TTL, window or timeout of a gateway needs more.
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Items in config order plus an index from a lookup key to their position (or to `V`).
type Table<T, K, V = usize> = (Vec<Arc<T>>, HashMap<K, V>);

pub(super) struct Validator<'a> {
    pub(super) origin: &'a str,
}

impl Validator<'_> {
    pub(super) fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
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

    pub(super) fn server(&self, s: &raw::RawServer) -> Result<ServerSettings, ConfigError> {
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
            conn: ConnLimits {
                header_read_timeout: self
                    .positive("server.header_read_timeout", &s.header_read_timeout)?,
                keep_alive_timeout: self
                    .positive("server.keep_alive_timeout", &s.keep_alive_timeout)?,
                max_connections: s.max_connections.min(usize::MAX as u64) as usize,
                max_header_bytes: max_header_bytes.min(1 << 20) as usize,
                max_uri_bytes: max_uri_bytes.min(1 << 20) as usize,
            },
            admin_token,
            tls: self.tls(s)?,
            trusted_proxies: self.trusted_proxies(&s.trusted_proxies)?,
        })
    }

    /// `server.tls_*`: both files or neither; the files are read and checked now, so `check`
    /// and a reload fail on a bad pair.
    fn tls(&self, s: &raw::RawServer) -> Result<Option<Arc<Tls>>, ConfigError> {
        let (cert, key) = match (&s.tls_cert_file, &s.tls_key_file) {
            (None, None) => {
                if s.tls_client_ca_file.is_some() {
                    return Err(self.err(
                        "server.tls_client_ca_file",
                        "needs server.tls_cert_file and server.tls_key_file (client certificates are part of TLS)",
                    ));
                }
                return Ok(None);
            }
            (Some(_), None) => {
                return Err(self.err("server.tls_key_file", "needed with server.tls_cert_file"))
            }
            (None, Some(_)) => {
                return Err(self.err("server.tls_cert_file", "needed with server.tls_key_file"))
            }
            (Some(c), Some(k)) => (c, k),
        };
        let files = TlsFiles {
            cert: Path::new(cert),
            key: Path::new(key),
            client_ca: s.tls_client_ca_file.as_deref().map(Path::new),
        };
        Tls::load(files)
            .map(|t| Some(Arc::new(t)))
            .map_err(|e| self.err(e.key, e.message))
    }

    fn trusted_proxies(&self, list: &[String]) -> Result<TrustedProxies, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, s)| {
                TrustedProxies::parse_entry(s)
                    .map_err(|m| self.err(format!("server.trusted_proxies[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies::new)
    }

    pub(super) fn upstream(&self, u: &raw::RawUpstream) -> Result<UpstreamSettings, ConfigError> {
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
        self.bare_url(key, &url)?;
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

    /// `[tracing]`: `None` when no `otlp_endpoint` is set (nothing is traced or exported).
    pub(super) fn tracing(
        &self,
        t: &raw::RawTracing,
    ) -> Result<Option<TracingSettings>, ConfigError> {
        let protocol = match t.otlp_protocol.trim() {
            "http/protobuf" => OtlpProtocol::HttpProtobuf,
            "http/json" => OtlpProtocol::HttpJson,
            "grpc" => {
                return Err(self.err(
                    "tracing.otlp_protocol",
                    "gRPC is not supported: use \"http/protobuf\" (collector port 4318)",
                ))
            }
            _ => {
                return Err(self.err(
                    "tracing.otlp_protocol",
                    "expected \"http/protobuf\" or \"http/json\"",
                ))
            }
        };
        let r = t.sample_ratio;
        if !(0.0..=1.0).contains(&r) {
            return Err(self.err(
                "tracing.sample_ratio",
                "must be a number from 0 to 1 (0 = only requests whose caller's traceparent is sampled)",
            ));
        }
        let service_name = t.service_name.trim();
        if service_name.is_empty()
            || service_name.len() > 255
            || service_name.chars().any(char::is_control)
        {
            return Err(self.err(
                "tracing.service_name",
                "must be 1 to 255 printable characters",
            ));
        }
        let Some(endpoint) = &t.otlp_endpoint else {
            return Ok(None);
        };
        let key = "tracing.otlp_endpoint";
        let url = reqwest::Url::parse(endpoint.trim())
            .map_err(|e| self.err(key, format!("invalid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self.err(key, "must be an http:// or https:// URL (OTLP over HTTP)"));
        }
        self.bare_url(key, &url)?;
        // The base URL of OTLP/HTTP, as OTEL_EXPORTER_OTLP_ENDPOINT: the signal path is added.
        let traces_url = if url.path().ends_with("/v1/traces") {
            url.as_str().to_string()
        } else {
            format!("{}/v1/traces", url.as_str().trim_end_matches('/'))
        };
        Ok(Some(TracingSettings {
            traces_url,
            protocol,
            service_name: service_name.to_string(),
            sample_ratio: r,
        }))
    }

    pub(super) fn cache(&self, c: &raw::RawCache) -> Result<CacheSettings, ConfigError> {
        Ok(CacheSettings {
            ttl: self.positive("cache.ttl", &c.ttl)?,
            stale_while_revalidate: self
                .dur("cache.stale_while_revalidate", &c.stale_while_revalidate)?,
            stale_if_error: self.dur("cache.stale_if_error", &c.stale_if_error)?,
            max_size: self.size("cache.max_size", &c.max_size)?,
        })
    }

    /// A URL that is only scheme, host, port and path: a host, no credentials (they would be
    /// printed by `check` and logs), no query or fragment.
    fn bare_url(&self, key: &str, url: &reqwest::Url) -> Result<(), ConfigError> {
        if url.host_str().is_none() {
            return Err(self.err(key, "has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.err(key, "must not carry credentials"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(self.err(key, "must not have a query or fragment"));
        }
        Ok(())
    }

    pub(super) fn redis(
        &self,
        r: &raw::RawRedis,
        env: &dyn SecretSource,
    ) -> Result<RedisSettings, ConfigError> {
        let (key, url) = match (&r.url, &r.url_env, &r.url_file) {
            (Some(url), None, None) => ("redis.url", url.clone()),
            (None, Some(var), None) => {
                self.env_name("redis.url_env", var)?;
                let url = env.env(var).ok_or_else(|| {
                    self.err(
                        "redis.url_env",
                        format!("environment variable {var} is not set"),
                    )
                })?;
                ("redis.url_env", url)
            }
            (None, None, Some(file)) => {
                // The path is not quoted: a URL with its password pasted here is a secret.
                let url = std::fs::read_to_string(file).map_err(|e| {
                    self.err("redis.url_file", format!("cannot read the file: {e}"))
                })?;
                ("redis.url_file", url)
            }
            _ => return Err(self.err("redis", "set exactly one of url / url_env / url_file")),
        };
        let url = url.trim().to_string();
        let scheme_ok = url.starts_with("redis://") || url.starts_with("rediss://");
        if !scheme_ok {
            return Err(self.err(key, "must start with redis:// or rediss://"));
        }
        if redis::IntoConnectionInfo::into_connection_info(url.as_str()).is_err() {
            // The URL may hold a password: never quote it.
            return Err(self.err(key, "is not a valid Redis URL"));
        }
        if r.pool_size == 0 {
            return Err(self.err("redis.pool_size", "must be at least 1"));
        }
        let ca_pem = match &r.ca_file {
            None => None,
            Some(file) => {
                if !url.starts_with("rediss://") {
                    return Err(self.err(
                        "redis.ca_file",
                        "applies to rediss:// (TLS) only; the URL is redis://",
                    ));
                }
                let pem = std::fs::read(file)
                    .map_err(|e| self.err("redis.ca_file", format!("cannot read {file}: {e}")))?;
                if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                    return Err(
                        self.err("redis.ca_file", format!("{file} holds no PEM certificate"))
                    );
                }
                Some(pem)
            }
        };
        let sentinel = match (&r.sentinels[..], &r.sentinel_master) {
            ([], None) => None,
            ([], Some(_)) => {
                return Err(self.err("redis.sentinels", "is required with sentinel_master"))
            }
            (_, None) => {
                return Err(self.err(
                    "redis.sentinel_master",
                    "is required with sentinels (the name the sentinels monitor)",
                ))
            }
            (_, Some(_)) if ca_pem.is_some() => {
                return Err(self.err(
                    "redis.ca_file",
                    "is not supported with sentinels (the primary must be trusted by the OS roots)",
                ))
            }
            (addrs, Some(master)) => {
                let addrs = addrs
                    .iter()
                    .map(|a| {
                        let parsed = a
                            .rsplit_once(':')
                            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse().ok()?)))
                            .filter(|(h, _)| !h.is_empty());
                        parsed.map(|(h, p)| (h.to_string(), p)).ok_or_else(|| {
                            self.err("redis.sentinels", format!("{a:?} is not host:port"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if master.is_empty() {
                    return Err(self.err("redis.sentinel_master", "must not be empty"));
                }
                Some(SentinelSettings {
                    addrs,
                    master: master.clone(),
                })
            }
        };
        Ok(RedisSettings {
            url: RedisUrl(SecretString::from(url)),
            key_prefix: r.key_prefix.clone(),
            timeout: self.positive("redis.timeout", &r.timeout)?,
            pool_size: r.pool_size,
            ca_pem,
            sentinel,
        })
    }

    /// `var` must be the NAME of an environment variable. Never echoed: a secret pasted here
    /// instead of a name must not reach a log.
    fn env_name(&self, key: &str, var: &str) -> Result<(), ConfigError> {
        let valid = !var.is_empty()
            && var.len() <= 128
            && !var.starts_with(|c: char| c.is_ascii_digit())
            && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if valid {
            Ok(())
        } else {
            Err(self.err(
                key,
                "must be the NAME of an environment variable ([A-Za-z_][A-Za-z0-9_]*), not the secret itself",
            ))
        }
    }

    /// An RFC 3339 timestamp in UTC (`2027-06-30T00:00:00Z`).
    pub(super) fn timestamp(
        &self,
        key: &str,
        s: &str,
    ) -> Result<std::time::SystemTime, ConfigError> {
        units::timestamp(s).map_err(|m| self.err(key, m))
    }

    pub(super) fn accounts(
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
                self.env_name(&format!("{at}.api_key_env"), var)?;
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
            let expires = a
                .expires
                .as_deref()
                .map(|e| self.timestamp(&format!("{at}.expires"), e))
                .transpose()?;
            out.push(Arc::new(Account::new(
                a.name.as_str().into(),
                UpstreamKey::new(SecretString::from(secret)),
                expires,
            )));
        }
        Ok(out)
    }

    pub(super) fn routes(
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
            let baseline = self.baseline(i, r)?;
            routes.push(Arc::new(Route {
                index: i,
                path,
                ttl,
                forward_query: r.forward_query,
                baseline,
            }));
        }
        Ok((routes, by_path))
    }

    /// `routes[i].baseline`: the file's shape, read now (once per load or reload); without
    /// one, the built-in sample for `/iam/clients/me` and nothing for other routes.
    fn baseline(&self, i: usize, r: &raw::RawRoute) -> Result<Option<Baseline>, ConfigError> {
        let key = format!("routes[{i}].baseline");
        let (source, shape) = match &r.baseline {
            Some(file) => {
                let bytes = std::fs::read(file)
                    .map_err(|e| self.err(&key, format!("cannot read {file:?}: {e}")))?;
                let shape = Shape::parse(&bytes)
                    .map_err(|e| self.err(&key, format!("{file:?} is not JSON: {e}")))?;
                (file.clone(), shape)
            }
            None if r.path == drift::CLIENTS_ME_ROUTE => {
                // Built from a file compiled into the binary and checked by a unit test.
                let shape = Shape::parse(drift::CLIENTS_ME_BASELINE.as_bytes())
                    .map_err(|e| self.err(&key, format!("built-in baseline: {e}")))?;
                ("built-in".to_string(), shape)
            }
            None => return Ok(None),
        };
        if shape.is_empty() {
            return Err(self.err(
                &key,
                format!("{source:?} has no fields: a baseline is a sample answer (a JSON object or array)"),
            ));
        }
        Ok(Some(Baseline {
            source,
            shape: Arc::new(shape),
        }))
    }

    pub(super) fn profiles(
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

    pub(super) fn clients(
        &self,
        raw: &[raw::RawClient],
        accounts: &[Arc<Account>],
        routes: &HashMap<Arc<str>, usize>,
        profiles: &HashMap<String, usize>,
        route_count: usize,
    ) -> Result<(Vec<Arc<Client>>, crate::auth::KeyMap<KeyRef>), ConfigError> {
        let mut out = Vec::with_capacity(raw.len());
        let mut keys = crate::auth::KeyMap::default();
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
            let mut client_keys = Vec::with_capacity(c.keys.len());
            for (k, raw_key) in c.keys.iter().enumerate() {
                let key = self.client_key(&format!("{at}.keys[{k}]"), raw_key, &client_keys)?;
                let here = KeyRef {
                    client: i,
                    key: client_keys.len(),
                };
                if let Some(other) = keys.insert(key.hash, here) {
                    let field = match raw_key {
                        raw::RawKey::Plain(_) => format!("{at}.keys[{k}]"),
                        raw::RawKey::Table(_) => format!("{at}.keys[{k}].hash"),
                    };
                    return Err(self.err(
                        field,
                        format!(
                            "the same key is already listed for {:?}",
                            raw[other.client].name
                        ),
                    ));
                }
                client_keys.push(key);
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
                keys: client_keys,
            }));
        }
        Ok((out, keys))
    }

    /// One `clients.keys` entry at `at`; `earlier` are the client's keys before it (ids are
    /// unique within a client).
    fn client_key(
        &self,
        at: &str,
        raw_key: &raw::RawKey,
        earlier: &[ClientKey],
    ) -> Result<ClientKey, ConfigError> {
        let (hash, id, expires) = match raw_key {
            raw::RawKey::Plain(h) => (KeyHash::parse(h).map_err(|m| self.err(at, m))?, None, None),
            raw::RawKey::Table(t) => {
                let hash =
                    KeyHash::parse(&t.hash).map_err(|m| self.err(format!("{at}.hash"), m))?;
                check_name(&t.id).map_err(|m| self.err(format!("{at}.id"), m))?;
                if earlier.iter().any(|e| e.has_id && *e.label == *t.id) {
                    return Err(self.err(
                        format!("{at}.id"),
                        format!("duplicate key id {:?} in this client", t.id),
                    ));
                }
                let expires = t
                    .expires
                    .as_deref()
                    .map(|e| self.timestamp(&format!("{at}.expires"), e))
                    .transpose()?;
                (hash, Some(t.id.as_str()), expires)
            }
        };
        let label: Arc<str> = match id {
            Some(id) => id.into(),
            None => format!("sha256:{}", hex::encode(&hash.0[..4])).into(),
        };
        Ok(ClientKey {
            hash,
            has_id: id.is_some(),
            label,
            expires,
            expires_unix_ms: expires.map_or(u64::MAX, units::unix_ms),
        })
    }
}

/// Names end up in metric labels and logs: keep them short and plain. (Key ids too: with no
/// `:` allowed, an id can never look like the `sha256:…` label of a key without one.)
pub(super) fn check_name(name: &str) -> Result<(), String> {
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
