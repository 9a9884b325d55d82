//! The gateway's shared state: the current [`Generation`] (config plus what is built from it)
//! behind an `ArcSwap`, what outlives reloads (cache, metrics, Redis, clock), and reload.
//!
//! A reload re-reads the [`ConfigSource`], validates it, refuses it when a restart-only
//! setting changed (compared as whole `PartialEq` groups, so a field added later is compared
//! too), builds the next generation from the previous one and swaps it in atomically; then it
//! drops cached answers of accounts that are gone or whose key changed. Request handling is in
//! `proxy`; serving sockets is in `server`.

mod generation;

use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

pub(crate) use generation::AccountState;
pub use generation::{BuildError, Generation};

use crate::cache::CacheStore;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::rate_limit::TokioClock;
use crate::redis::Redis;
use crate::telemetry::{FillLink, Telemetry};
use crate::upstream::UpstreamFailure;

/// Where the config is re-read from on reload.
#[derive(Clone)]
pub enum ConfigSource {
    /// A TOML file, re-read on reload.
    File(std::path::PathBuf),
    /// Embedded text with its own secrets (the demo, tests); reload re-validates it.
    Embedded {
        /// The TOML text.
        text: String,
        /// Where the body came from.
        origin: String,
        /// Its secrets, as environment variables by name.
        env: std::collections::HashMap<String, String>,
    },
}

impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // `env` holds secret values: only the variable names are shown.
            ConfigSource::Embedded { origin, env, .. } => f
                .debug_struct("Embedded")
                .field("origin", origin)
                .field("env", &env.keys().collect::<Vec<_>>())
                .finish_non_exhaustive(),
            ConfigSource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

impl ConfigSource {
    fn load(&self) -> Result<Config, crate::config::ConfigError> {
        match self {
            ConfigSource::File(path) => Config::load(path),
            ConfigSource::Embedded { text, origin, env } => Config::parse(text, origin, env),
        }
    }
}

/// Everything a request handler or admin route needs.
pub struct Gateway {
    generation: ArcSwap<Generation>,
    pub(crate) cache: CacheStore<UpstreamFailure, FillLink>,
    pub(crate) metrics: Arc<Metrics>,
    /// Redis sharing, when `[redis]` is configured (fixed until restart).
    pub(crate) redis: Option<Arc<Redis>>,
    /// The tracer and exporter, when `[tracing]` exports (fixed until restart).
    pub(crate) telemetry: Option<Telemetry>,
    pub(crate) ready: AtomicBool,
    clock: TokioClock,
    source: Mutex<ConfigSource>,
    reload_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("source", &*self.source.lock())
            .finish_non_exhaustive()
    }
}

/// Why a reload was refused (the old config keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The runtime could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// … cannot change without a restart.
    #[error("{0} cannot change without a restart")]
    NeedsRestart(&'static str),
}

impl Gateway {
    /// A gateway serving `config`, re-reading it from `source` on reload.
    pub fn new(config: Config, source: ConfigSource) -> Result<Arc<Gateway>, BuildError> {
        let clock = TokioClock::default();
        let cache = CacheStore::new(config.cache.max_size);
        let metrics = Arc::new(Metrics::new());
        let redis = match &config.redis {
            Some(r) => Some(
                Redis::start(r, metrics.clone())
                    .map_err(|e| BuildError::Redis(format!("{:?}", e.kind())))?,
            ),
            None => None,
        };
        let telemetry = config
            .tracing
            .as_ref()
            .map(|t| Telemetry::start(t, &metrics))
            .transpose()?;
        let generation = Generation::build(config, None, &clock, &metrics)?;
        let gw = Arc::new(Gateway {
            generation: ArcSwap::from_pointee(generation),
            cache,
            metrics,
            redis,
            telemetry,
            clock,
            ready: AtomicBool::new(false),
            source: Mutex::new(source),
            reload_lock: tokio::sync::Mutex::new(()),
        });
        if let Some(redis) = &gw.redis {
            // Other replicas' purges empty this replica's copies too.
            let weak = Arc::downgrade(&gw);
            redis.watch_purges(move |account| {
                if let Some(gw) = weak.upgrade() {
                    gw.cache.purge(account);
                }
            });
        }
        Ok(gw)
    }

    /// The generation requests start with now.
    pub fn current(&self) -> Arc<Generation> {
        self.generation.load_full()
    }

    /// The current config, for a short look (no `Arc` taken).
    pub(crate) fn peek(&self) -> arc_swap::Guard<Arc<Generation>> {
        self.generation.load()
    }

    /// Drops this replica's cached answers: all, or only the account named `account`. (The
    /// admin purge also empties the shared cache.)
    pub fn purge_local(&self, account: Option<&str>) {
        self.cache.purge(account);
    }

    /// Stores `entry` as the answer of `route` for the account named `account` under the key
    /// the handler looks up (benchmarks prime the cache with it). `false` if no such account.
    #[doc(hidden)]
    pub async fn prime(&self, account: &str, route: &str, entry: Arc<crate::cache::Entry>) -> bool {
        let generation = self.current();
        let Some(a) = generation
            .config
            .accounts
            .iter()
            .find(|a| &*a.name == account)
        else {
            return false;
        };
        let key = crate::cache::CacheKey::new(a.name.clone(), a.key_fp, route.into(), None);
        self.cache.insert(key, entry).await;
        true
    }

    /// The Prometheus text of `/metrics` (benchmarks read counters from it).
    #[doc(hidden)]
    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    /// Open caller connections now.
    pub fn open_connections(&self) -> i64 {
        self.metrics.connections.get()
    }

    /// Whether Redis answers (`None` without `[redis]`).
    pub fn redis_up(&self) -> Option<bool> {
        self.redis.as_ref().map(|r| r.is_up())
    }

    /// Replaces the text of an embedded config source (tests, the demo); the next reload
    /// validates and applies it. No effect on a file source.
    pub fn set_embedded_text(&self, new_text: String) {
        if let ConfigSource::Embedded { text, .. } = &mut *self.source.lock() {
            *text = new_text;
        }
    }

    /// Re-reads the config source, validates it and swaps it in. On error nothing changes.
    pub async fn reload(&self) -> Result<(), ReloadError> {
        let _guard = self.reload_lock.lock().await;
        let result = self.reload_inner().await;
        let label = crate::metrics::ResultLabel {
            result: if result.is_ok() { "ok" } else { "failed" },
        };
        self.metrics.config_reloads.get_or_create(&label).inc();
        match &result {
            Ok(()) => tracing::info!("config reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "config reload rejected; the old config keeps serving")
            }
        }
        result
    }

    async fn reload_inner(&self) -> Result<(), ReloadError> {
        let source = self.source.lock().clone();
        let config = tokio::task::spawn_blocking(move || source.load())
            .await
            .map_err(|_| ReloadError::NeedsRestart("a config that panics the loader"))??;
        let old = self.current();
        restart_only_unchanged(&config, &old.config)?;
        let new = Arc::new(Generation::build(
            config,
            Some(&old),
            &self.clock,
            &self.metrics,
        )?);
        // Swap first, then drop cached answers of accounts that are gone or whose upstream key
        // changed: requests that start after the swap never refill from the old key.
        self.generation.store(new.clone());
        for a in &old.config.accounts {
            if !new.config.accounts.iter().any(|n| n.same_upstream(a)) {
                self.cache.purge(Some(&a.name));
                // The other replicas' copies of an account whose key changed go too.
                if let Some(redis) = &self.redis {
                    redis.announce_purge(Some(&a.name)).await;
                }
            }
        }
        Ok(())
    }

    /// Records a failed authentication from `ip` for the brute-force throttle.
    pub(crate) fn auth_failed(&self, generation: &Generation, ip: IpAddr) {
        self.metrics.auth_failures.inc();
        if let Some(t) = &generation.auth_throttle {
            let _ = t.record_failure(ip);
        }
    }
}

/// Refuses a config whose restart-only settings differ from the running one's.
fn restart_only_unchanged(new: &Config, old: &Config) -> Result<(), ReloadError> {
    let checks: [(bool, &'static str); 6] = [
        (new.server.listen == old.server.listen, "server.listen"),
        (
            new.server.admin_listen == old.server.admin_listen,
            "server.admin_listen",
        ),
        (new.redis == old.redis, "[redis]"),
        (new.tracing == old.tracing, "[tracing]"),
        (new.cache.max_size == old.cache.max_size, "cache.max_size"),
        (
            new.server.conn == old.server.conn,
            "server.header_read_timeout / keep_alive_timeout / max_connections / max_header_bytes / max_uri_bytes",
        ),
    ];
    match checks.iter().find(|(same, _)| !same) {
        Some((_, what)) => Err(ReloadError::NeedsRestart(what)),
        None => Ok(()),
    }
}
