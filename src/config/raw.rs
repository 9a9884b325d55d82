//! `RawConfig`: the TOML file exactly as serde reads it.
//!
//! Every table denies unknown fields; durations, sizes and rates stay strings here and are
//! parsed (with the key named in any error) by [`super::Config::from_raw`]. Defaults are
//! written once, in the `default_*` functions below, each with its reason. No validation lives
//! here and nothing here is used on the request path.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::units::RawSize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub accounts: Vec<RawAccount>,
    #[serde(default)]
    pub cache: RawCache,
    pub redis: Option<RawRedis>,
    #[serde(default = "default_routes")]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub profiles: BTreeMap<String, RawProfile>,
    #[serde(default)]
    pub clients: Vec<RawClient>,
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: String,
    #[serde(default = "default_request_timeout")]
    pub request_timeout: String,
    #[serde(default = "default_auth_failure_limit")]
    pub auth_failure_limit: String,
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: String,
    #[serde(default = "default_keep_alive_timeout")]
    pub keep_alive_timeout: String,
    #[serde(default = "default_max_connections")]
    pub max_connections: u64,
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: RawSize,
    #[serde(default = "default_max_uri_bytes")]
    pub max_uri_bytes: RawSize,
    pub admin_token_sha256: Option<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            shutdown_grace: default_shutdown_grace(),
            request_timeout: default_request_timeout(),
            auth_failure_limit: default_auth_failure_limit(),
            header_read_timeout: default_header_read_timeout(),
            keep_alive_timeout: default_keep_alive_timeout(),
            max_connections: default_max_connections(),
            max_header_bytes: default_max_header_bytes(),
            max_uri_bytes: default_max_uri_bytes(),
            admin_token_sha256: None,
        }
    }
}

/// `[upstream]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    #[serde(default = "default_base_url")]
    pub base_url: String,
    #[serde(default)]
    pub allow_insecure_http: bool,
    #[serde(default = "default_upstream_timeout")]
    pub timeout: String,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_max_body")]
    pub max_body: RawSize,
    pub rate: Option<String>,
    #[serde(default = "default_breaker_failures")]
    pub circuit_breaker_failures: u32,
    #[serde(default = "default_breaker_cooldown")]
    pub circuit_breaker_cooldown: String,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            base_url: default_base_url(),
            allow_insecure_http: false,
            timeout: default_upstream_timeout(),
            connect_timeout: default_connect_timeout(),
            retries: default_retries(),
            max_body: default_max_body(),
            rate: None,
            circuit_breaker_failures: default_breaker_failures(),
            circuit_breaker_cooldown: default_breaker_cooldown(),
        }
    }
}

/// One `[[accounts]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccount {
    pub name: String,
    pub api_key_env: Option<String>,
    pub api_key_file: Option<String>,
}

/// `[cache]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    #[serde(default = "default_ttl")]
    pub ttl: String,
    #[serde(default = "default_swr")]
    pub stale_while_revalidate: String,
    #[serde(default = "default_sie")]
    pub stale_if_error: String,
    #[serde(default = "default_max_size")]
    pub max_size: RawSize,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            ttl: default_ttl(),
            stale_while_revalidate: default_swr(),
            stale_if_error: default_sie(),
            max_size: default_max_size(),
        }
    }
}

/// `[redis]` (optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: String,
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    #[serde(default = "default_redis_timeout")]
    pub timeout: String,
    #[serde(default = "default_redis_pool")]
    pub pool_size: u32,
}

/// One `[[routes]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: String,
    pub ttl: Option<String>,
    #[serde(default)]
    pub forward_query: bool,
}

/// One `[profiles.NAME]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub mask: Vec<String>,
    pub allow: Option<Vec<String>>,
}

/// One `[[clients]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub name: String,
    pub keys: Vec<String>,
    pub account: String,
    pub profile: Option<String>,
    pub rate: Option<String>,
    pub burst: Option<u32>,
    pub routes: Option<Vec<String>>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}
/// Long enough for a slow upstream call (timeout 10 s) to finish during a rolling restart.
fn default_shutdown_grace() -> String {
    "10s".into()
}
/// Covers connect + (1 + retries) attempts with backoff on a slow upstream.
fn default_request_timeout() -> String {
    "15s".into()
}
/// 30 failures a minute per IP stops key guessing yet tolerates a misconfigured client.
fn default_auth_failure_limit() -> String {
    "30/m".into()
}
/// Slowloris protection: a whole request head must arrive within this.
fn default_header_read_timeout() -> String {
    "5s".into()
}
fn default_keep_alive_timeout() -> String {
    "60s".into()
}
fn default_max_connections() -> u64 {
    10_000
}
fn default_max_header_bytes() -> RawSize {
    RawSize::Text("16KiB".into())
}
fn default_max_uri_bytes() -> RawSize {
    RawSize::Text("8KiB".into())
}
fn default_base_url() -> String {
    "https://api.gcore.com".into()
}
fn default_upstream_timeout() -> String {
    "10s".into()
}
fn default_connect_timeout() -> String {
    "2s".into()
}
fn default_retries() -> u32 {
    2
}
/// A `/iam/clients/me` body is a few KiB; 1 MiB leaves room for large accounts.
fn default_max_body() -> RawSize {
    RawSize::Text("1MiB".into())
}
/// Five failures in a row is a pattern, not a blip (one request with retries makes 3 attempts).
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown() -> String {
    "15s".into()
}
fn default_ttl() -> String {
    "60s".into()
}
fn default_swr() -> String {
    "30s".into()
}
fn default_sie() -> String {
    "10m".into()
}
fn default_max_size() -> RawSize {
    RawSize::Text("64MiB".into())
}
fn default_key_prefix() -> String {
    "gcore-gateway:".into()
}
/// Redis on the same network answers in well under a millisecond; 50 ms means it is in trouble.
fn default_redis_timeout() -> String {
    "50ms".into()
}
fn default_redis_pool() -> u32 {
    4
}
/// Without `[[routes]]` only the endpoint the gateway was built for is exposed.
fn default_routes() -> Vec<RawRoute> {
    vec![RawRoute {
        path: "/iam/clients/me".into(),
        ttl: None,
        forward_query: false,
    }]
}
