//! The gateway's shared state: the current [`Generation`] (config plus what is built from it)
//! behind an `ArcSwap`, what outlives reloads (cache, metrics, Redis, clock), and reload.
//!
//! A reload re-reads the [`ConfigSource`], validates it, refuses it when a restart-only
//! setting changed (compared as whole `PartialEq` groups, so a field added later is compared
//! too), builds the next generation from the previous one and swaps it in atomically; then it
//! drops cached answers of accounts that are gone or whose key changed, and of routes whose
//! baseline changed (their new fields were found against the old one). Each config that goes
//! live has its key expiry dates exported as gauges and its warnings logged. Also here: the
//! record of new fields met (`drift::seen`), which outlives reloads. Request handling is in
//! `proxy`; serving sockets is in `server`.

mod generation;

use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

pub(crate) use generation::{AccountState, ClientState};
pub use generation::{BuildError, Generation};

use crate::cache::CacheStore;
use crate::config::Config;
use crate::drift::seen::SeenLog;
use crate::metrics::{AccountLabel, KeyLabels, Metrics};
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
    /// New fields met in upstream answers, per route (`/admin/schema`).
    pub(crate) schema: SeenLog,
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
        let metrics = match &config.server.tls {
            Some(_) => Metrics::new().with_tls(),
            None => Metrics::new(),
        };
        let metrics = Arc::new(metrics);
        record_tls(&metrics, &config);
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
        went_live(&metrics, &generation.config);
        let gw = Arc::new(Gateway {
            generation: ArcSwap::from_pointee(generation),
            cache,
            metrics,
            redis,
            telemetry,
            clock,
            ready: AtomicBool::new(false),
            schema: SeenLog::default(),
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
        self.cache.insert(key, entry);
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
        // Each thread's copies of hits were made under the old config: forgotten.
        self.cache.invalidate_hot();
        went_live(&self.metrics, &new.config);
        record_tls(&self.metrics, &new.config);
        for a in &old.config.accounts {
            if !new.config.accounts.iter().any(|n| n.same_upstream(a)) {
                self.cache.purge(Some(&a.name));
                // The other replicas' copies of an account whose key changed go too.
                if let Some(redis) = &self.redis {
                    redis.announce_purge(Some(&a.name)).await;
                }
            }
        }
        for r in &new.config.routes {
            let old_shape = old
                .config
                .routes
                .iter()
                .find(|o| o.path == r.path)
                .map(|o| o.baseline.as_ref().map(|b| &b.shape));
            let new_shape = r.baseline.as_ref().map(|b| &b.shape);
            let same = match (old_shape, new_shape) {
                (None, _) => true, // a new route has no entries yet
                (Some(None), None) => true,
                (Some(Some(a)), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
            if !same {
                tracing::info!(route = %r.path, "route baseline changed; its cached answers are dropped");
                self.cache.purge_route(&r.path);
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

/// What follows a config going live: its key expiry dates become the expiry gauges (series of
/// keys and accounts no longer configured disappear), and its warnings are logged.
fn went_live(metrics: &Metrics, config: &Config) {
    let secs = |t| (crate::units::unix_ms(t) / 1000).min(i64::MAX as u64) as i64;
    // Cleared and refilled: a scrape in between may miss a series for a moment, never see a
    // stale one.
    metrics.client_key_expiry.clear();
    for c in &config.clients {
        for k in &c.keys {
            if let Some(expires) = k.expires {
                let labels = KeyLabels {
                    client: c.name.clone(),
                    key: k.label.clone(),
                };
                metrics
                    .client_key_expiry
                    .get_or_create(&labels)
                    .set(secs(expires));
            }
        }
    }
    metrics.account_key_expiry.clear();
    for a in &config.accounts {
        if let Some(expires) = a.expires {
            let label = AccountLabel {
                account: a.name.clone(),
            };
            metrics
                .account_key_expiry
                .get_or_create(&label)
                .set(secs(expires));
        }
    }
    for warning in config.warnings(std::time::SystemTime::now()) {
        tracing::warn!("{warning}");
    }
}

/// Exports what the metrics say about the caller port's certificate.
fn record_tls(metrics: &Metrics, config: &Config) {
    if let Some(tls) = &config.server.tls {
        metrics.tls_cert_expiry.set(tls.expiry_unix());
    }
}

/// Refuses a config whose restart-only settings differ from the running one's.
fn restart_only_unchanged(new: &Config, old: &Config) -> Result<(), ReloadError> {
    let (new_tls, old_tls) = (&new.server.tls, &old.server.tls);
    let checks: [(bool, &'static str); 8] = [
        // A reload never turns TLS or client certificates off (an edit that drops a line
        // must not put team keys back on the wire in clear) nor on (callers would break
        // mid-flight); the files themselves are re-read on every reload.
        (
            new_tls.is_some() == old_tls.is_some(),
            "server.tls_cert_file / tls_key_file (TLS on or off)",
        ),
        (
            new_tls.as_ref().is_some_and(|t| t.mutual())
                == old_tls.as_ref().is_some_and(|t| t.mutual()),
            "server.tls_client_ca_file (client certificates on or off)",
        ),
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
