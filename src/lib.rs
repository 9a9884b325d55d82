//! gcore-gateway: a caching reverse proxy in front of the Gcore API.
//!
//! Teams call the gateway with their own key; the gateway injects the real Gcore key
//! upstream, caches answers per account with one upstream call per key and TTL, rate-limits
//! each caller and removes or masks sensitive JSON fields per caller profile.
//!
//! # Layout
//!
//! One module per stage of the request pipeline, in order:
//!
//! | stage | module | owns |
//! |---|---|---|
//! | 1 | [`auth`] | credential parsing, key hashes, constant-time lookup |
//! | 2 | [`rate_limit`] | per-client GCRA, failed-auth throttle, upstream budget |
//! | 3 | [`routing`] | path normalisation, allow-list, canonical query |
//! | 4 | [`cache`] | moka store, single-flight fills, stale serving |
//! | 5 | [`upstream`] | the shared HTTP client, key injection, retries, body cap |
//! | 6 | [`redact`] | JSONPath remove/mask/allow profiles |
//! | 7 | [`proxy`] | the handler that sequences 1–6 and assembles the response |
//!
//! Around them: [`config`] (TOML → validated runtime form), [`error`] (the one status table),
//! [`state`] (the swappable runtime and what survives reloads), [`server`] (sockets, limits,
//! signals, shutdown), [`admin`] (admin listener), [`metrics`] (Prometheus), [`shared`]
//! (optional Redis: L2 cache, cross-replica lock, distributed GCRA), [`demo`].

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cache;
pub mod config;
pub mod demo;
pub mod error;
pub mod metrics;
pub mod proxy;
pub mod rate_limit;
pub mod redact;
pub mod routing;
pub mod server;
pub mod shared;
pub mod state;
pub mod upstream;

pub use server::run;
pub use state::Gateway;
