//! `RawConfig`: the TOML file exactly as serde reads it.
#![allow(missing_docs)] // The fields are the TOML keys, documented in config/gateway.toml and docs/CONTRACT.md.
//!
//! Every table denies unknown fields and takes its defaults from one container-level
//! `Default` impl, written next to the struct with the reason for each value. Durations, sizes
//! and rates stay strings here and are parsed (with the key named in any error) by
//! `validate`. No validation lives here and nothing here is used on the request path.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::units::RawSize;

/// One `[profiles.NAME]` table: redaction owns its spec; the config reads it as is.
pub type RawProfile = crate::redact::ProfileSpec;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    pub server: RawServer,
    pub upstream: RawUpstream,
    pub accounts: Vec<RawAccount>,
    pub cache: RawCache,
    pub redis: Option<RawRedis>,
    pub tracing: Option<RawTracing>,
    pub routes: Vec<RawRoute>,
    pub profiles: BTreeMap<String, RawProfile>,
    pub clients: Vec<RawClient>,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            server: RawServer::default(),
            upstream: RawUpstream::default(),
            accounts: Vec::new(),
            cache: RawCache::default(),
            redis: None,
            tracing: None,
            // Without `[[routes]]` only the endpoint the gateway was built for is exposed.
            routes: vec![RawRoute {
                path: "/iam/clients/me".into(),
                ttl: None,
                forward_query: false,
                baseline: None,
            }],
            profiles: BTreeMap::new(),
            clients: Vec::new(),
        }
    }
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawServer {
    pub listen: String,
    pub admin_listen: String,
    pub shutdown_grace: String,
    pub request_timeout: String,
    pub auth_failure_limit: String,
    pub header_read_timeout: String,
    pub keep_alive_timeout: String,
    pub max_connections: u64,
    pub max_header_bytes: RawSize,
    pub max_uri_bytes: RawSize,
    pub admin_token_sha256: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    pub tls_client_ca_file: Option<String>,
    pub trusted_proxies: Vec<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            // Long enough for a slow upstream call (timeout 10 s) to finish during a rolling
            // restart.
            shutdown_grace: "10s".into(),
            // Covers connect + (1 + retries) attempts with backoff on a slow upstream.
            request_timeout: "15s".into(),
            // 30 failures a minute per address stops key guessing yet tolerates a
            // misconfigured client.
            auth_failure_limit: "30/m".into(),
            // Slowloris protection: a whole request head must arrive within this.
            header_read_timeout: "5s".into(),
            keep_alive_timeout: "60s".into(),
            max_connections: 10_000,
            max_header_bytes: RawSize::Text("16KiB".into()),
            max_uri_bytes: RawSize::Text("8KiB".into()),
            admin_token_sha256: None,
            // Plain HTTP unless both files are given.
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            // Nobody's X-Forwarded-For is believed until the operator names its proxies.
            trusted_proxies: Vec::new(),
        }
    }
}

/// `[upstream]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawUpstream {
    pub base_url: String,
    pub allow_insecure_http: bool,
    pub timeout: String,
    pub connect_timeout: String,
    pub retries: u32,
    pub max_body: RawSize,
    pub rate: Option<String>,
    pub circuit_breaker_failures: u32,
    pub circuit_breaker_cooldown: String,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            base_url: "https://api.gcore.com".into(),
            allow_insecure_http: false,
            timeout: "10s".into(),
            connect_timeout: "2s".into(),
            retries: 2,
            // A `/iam/clients/me` body is a few KiB; 1 MiB leaves room for large accounts.
            max_body: RawSize::Text("1MiB".into()),
            rate: None,
            // Five failures in a row is a pattern, not a blip (one request with retries makes
            // 3 attempts).
            circuit_breaker_failures: 5,
            circuit_breaker_cooldown: "15s".into(),
        }
    }
}

/// One `[[accounts]]` entry (no defaults: every field is the operator's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccount {
    pub name: String,
    pub api_key_env: Option<String>,
    pub api_key_file: Option<String>,
    /// RFC 3339: when the Gcore key expires.
    pub expires: Option<String>,
}

/// `[cache]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCache {
    pub ttl: String,
    pub stale_while_revalidate: String,
    pub stale_if_error: String,
    pub max_size: RawSize,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            ttl: "60s".into(),
            stale_while_revalidate: "30s".into(),
            stale_if_error: "10m".into(),
            max_size: RawSize::Text("64MiB".into()),
        }
    }
}

/// `[redis]` (optional). Exactly one of `url`, `url_env`, `url_file`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRedis {
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub url_file: Option<String>,
    pub key_prefix: String,
    pub timeout: String,
    pub pool_size: u32,
    /// PEM roots that a `rediss://` server's certificate must chain to (instead of the OS's).
    pub ca_file: Option<String>,
    /// Redis Sentinel addresses (`host:port`): the primary is asked of them.
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the primary under.
    pub sentinel_master: Option<String>,
}

impl Default for RawRedis {
    fn default() -> Self {
        Self {
            url: None,
            url_env: None,
            url_file: None,
            ca_file: None,
            sentinels: Vec::new(),
            sentinel_master: None,
            key_prefix: "gcore-gateway:".into(),
            // Redis on the same network answers in well under a millisecond; 50 ms means it
            // is in trouble.
            timeout: "50ms".into(),
            pool_size: 4,
        }
    }
}

/// `[tracing]` (optional): OpenTelemetry traces exported over OTLP/HTTP.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTracing {
    /// Base URL of the collector (`/v1/traces` is appended); absent = no export.
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: String,
    pub service_name: String,
    pub sample_ratio: f64,
}

impl Default for RawTracing {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            // The OTLP spec's default for HTTP: smaller than JSON, what every collector takes.
            otlp_protocol: "http/protobuf".into(),
            service_name: "gcore-gateway".into(),
            // Every request: the span cost is small next to a proxy hop (see BENCHMARKS.md).
            sample_ratio: 1.0,
        }
    }
}

/// One `[[routes]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: String,
    pub ttl: Option<String>,
    #[serde(default)]
    pub forward_query: bool,
    /// A JSON sample answer: its field paths are the route's known shape.
    pub baseline: Option<String>,
}

/// One `[[clients]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub name: String,
    pub keys: Vec<RawKey>,
    pub account: String,
    pub profile: Option<String>,
    pub rate: Option<String>,
    pub burst: Option<u32>,
    pub routes: Option<Vec<String>>,
}

/// One entry of `clients.keys`: a plain `"sha256:…"` string (no id, never expires) or a table
/// `{ id, hash, expires }`. Deserialized by hand so that a wrong shape gets a message naming
/// both accepted forms (serde's untagged enums only say "did not match any variant").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawKey {
    /// `"sha256:<64 hex>"`.
    Plain(String),
    /// `{ id = "…", hash = "sha256:…", expires = "…" }`.
    Table(RawKeyTable),
}

/// The table form of a `clients.keys` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyTable {
    /// Names the key in logs, metrics and `/admin/clients`; unique within the client.
    pub id: String,
    /// `sha256:<64 hex>` of the key.
    pub hash: String,
    /// RFC 3339 (UTC): from then on the key is refused like an unknown key.
    pub expires: Option<String>,
}

impl RawKey {
    /// The `hash` of either form.
    pub fn hash(&self) -> &str {
        match self {
            RawKey::Plain(h) => h,
            RawKey::Table(t) => &t.hash,
        }
    }
}

impl<'de> Deserialize<'de> for RawKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // No double quotes: parser messages have quoted parts cut out (they may be keys).
                f.write_str("a key hash `sha256:<64 hex>` or a table `{ id, hash, expires }`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawKey, E> {
                Ok(RawKey::Plain(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawKey, A::Error> {
                RawKeyTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawKey::Table)
            }
        }
        d.deserialize_any(V)
    }
}

/// The `clients.keys` table line for a key `hash` named `id`, expiring at `expires` (as
/// `gen-key --id … --expires …` prints it, ready to paste).
pub fn key_table_line(id: &str, hash: &str, expires: Option<std::time::SystemTime>) -> String {
    // Ids are validated names (no quotes or backslashes), hashes are hex: nothing to escape.
    match expires {
        Some(t) => format!(
            "{{ id = \"{id}\", hash = \"{hash}\", expires = \"{}\" }}",
            humantime::format_rfc3339_seconds(t)
        ),
        None => format!("{{ id = \"{id}\", hash = \"{hash}\" }}"),
    }
}
