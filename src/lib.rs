//! gcore-gateway: a caching reverse proxy in front of the Gcore API.
//!
//! Teams call the gateway with their own key; the gateway injects the real Gcore key
//! upstream, caches answers per account with one upstream call per key and TTL, rate-limits
//! each caller and removes or masks sensitive JSON fields per caller profile.
//!
//! # Layout
//!
//! One room per concept; imports point down this table, never up:
//!
//! | room | owns |
//! |---|---|
//! | `server` | sockets, the protocol of each connection, connection limits, watchdog, panic guard, signals, shutdown |
//! | `admin` | the admin listener: health, metrics, purge, reload, usage views |
//! | [`proxy`] | the request pipeline (shape → auth → limit → route → cache/miss → redact → respond), the miss path, the access log |
//! | `gateway` | [`Gateway`]: the current config generation behind `ArcSwap`, reload |
//! | `cache` | moka store, the per-thread front of repeated hits, cache keys, entries and renders, single-flight, the L2 value format |
//! | `rate_limit` | per-client GCRA (local or shared), failed-auth throttle, upstream budget |
//! | `redis` | the Redis connection, its up/down window, L2/lock/purge operations |
//! | `telemetry` | OpenTelemetry: server, fill and upstream-attempt spans, links, bounded OTLP/HTTP export |
//! | `upstream` | the HTTP client, the Gcore key (only place it is exposed), retries, breaker |
//! | [`config`] | TOML → validated runtime form |
//! | [`redact`] | redaction profiles: remove/mask/allow, what a profile does with new fields, `check --sample` review |
//! | [`drift`] | shape drift: field paths, known shapes (baselines), new-path detection and dropping, the per-process record behind `/admin/schema` |
//! | [`tls`] | caller-port TLS: the PEM files read into a rustls server config, certificate facts |
//! | [`auth`], [`forwarded`], [`routing`], [`units`], `error`, `metrics` | small pure leaves |
//! | [`demo`] | the fake upstream and config of `gcore-gateway demo` |
//!
//! The public surface is what the binary, the integration tests and the benchmarks use;
//! everything else is `pub(crate)`. [`bench_api`] re-exports the internals the criterion
//! benchmarks measure directly; it is not a stable interface.

#![forbid(unsafe_code)]

mod admin;
pub mod auth;
mod cache;
pub mod config;
pub mod demo;
pub mod drift;
mod error;
pub mod forwarded;
mod gateway;
mod metrics;
pub mod proxy;
mod rate_limit;
pub mod redact;
mod redis;
pub mod routing;
pub mod server;
mod telemetry;
pub mod tls;
pub mod units;
mod upstream;

pub use gateway::{BuildError, ConfigSource, Gateway, Generation, ReloadError};
pub use server::run;
pub use telemetry::{OtlpProtocol, TelemetryError, TracingSettings};
pub use upstream::{Account, UpstreamKey, UpstreamSettings};

/// Internals measured directly by the benchmarks in `benches/` (and a few tests). Not a stable
/// interface: it follows the code.
#[doc(hidden)]
pub mod bench_api {
    pub use crate::cache::{CacheKey, CacheStore, Entry, Origin, Rendered, StaleWindows};
    pub use crate::error::GatewayError;
    pub use crate::metrics::{Metrics, RequestLabels};
    pub use crate::rate_limit::distributed::check as shared_rate_limit;
    pub use crate::rate_limit::{throttle_key, AuthThrottle, ClientLimiter, TokioClock};
    pub use crate::redis::Redis;
    pub use crate::upstream::breaker::NEGATIVE_CACHE;
    pub use crate::upstream::UpstreamFailure;
}
