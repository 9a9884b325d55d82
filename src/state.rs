//! The gateway's shared state: the current [`Runtime`] (config plus per-generation helpers)
//! behind an `ArcSwap`, and what outlives reloads (cache, metrics, limiter state).
//!
//! A reload builds a new `Runtime` from the new config, carrying over each client limiter whose
//! rate is unchanged, each account state whose upstream key is unchanged, and usage counters
//! by client name, then swaps it in atomically. In-flight requests keep the `Arc<Runtime>`
//! they started with. Request handling is in `proxy`; serving sockets is in `server`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::cache::CacheStore;
use crate::config::{Account, Config};
use crate::metrics::{AccountLabel, Metrics};
use crate::rate_limit::{AuthThrottle, ClientLimiter, TokioClock, UpstreamBudget};
use crate::upstream::{Upstream, UpstreamFailure};

/// How long an upstream 401/403 (our key is bad) is remembered, so a broken key is not hammered.
pub const NEGATIVE_CACHE: Duration = Duration::from_secs(5);

/// Where the config is re-read from on reload.
#[derive(Clone)]
pub enum ConfigSource {
    File(std::path::PathBuf),
    /// Embedded text with its own secrets (the demo, tests); reload re-validates it.
    Embedded {
        text: String,
        origin: String,
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

/// Per-account upstream health: circuit breaker and pauses (upstream 429, bad key).
#[derive(Debug)]
pub struct AccountState {
    pub account: Arc<Account>,
    /// Names the account in Redis keys (a hash; see `shared::account_tag`).
    pub tag: String,
    /// The first 8 bytes of `tag`: part of every cache key of this account.
    pub key_fp: u64,
    consecutive_failures: AtomicU32,
    /// Until when calls are refused, and what callers are told meanwhile.
    blocked: Mutex<Option<(Instant, UpstreamFailure)>>,
    half_open_probe: AtomicBool,
}

impl AccountState {
    pub fn new(account: Arc<Account>) -> Self {
        let tag = crate::shared::account_tag(&account);
        let key_fp = u64::from_str_radix(&tag[..16], 16).unwrap_or(0);
        Self {
            tag,
            key_fp,
            account,
            consecutive_failures: AtomicU32::new(0),
            blocked: Mutex::new(None),
            half_open_probe: AtomicBool::new(false),
        }
    }

    /// Whether an upstream call may be made now. While blocked, returns what to tell callers.
    /// After a block expires exactly one call (the half-open probe) is let through; the block
    /// is lifted when it succeeds and renewed when it fails.
    pub fn gate(&self) -> Result<(), UpstreamFailure> {
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((until, why)) = blocked.clone() {
            let now = Instant::now();
            if until > now {
                return Err(match why {
                    UpstreamFailure::Unauthorized(s) => UpstreamFailure::Unauthorized(s),
                    _ => UpstreamFailure::Paused {
                        retry_after: until - now,
                    },
                });
            }
            if matches!(
                why,
                UpstreamFailure::RateLimited { .. } | UpstreamFailure::Unauthorized(_)
            ) {
                // A pause (429) or the bad-key negative cache ran out: not a breaker state.
                *blocked = None;
                return Ok(());
            }
            if self.half_open_probe.swap(true, Ordering::AcqRel) {
                // Another fill is probing; answer from stale or 503 meanwhile.
                return Err(UpstreamFailure::Paused {
                    retry_after: Duration::from_secs(1),
                });
            }
        }
        Ok(())
    }

    /// Records a success: closes the circuit.
    pub fn on_success(&self, metrics: &Metrics) {
        self.consecutive_failures.store(0, Ordering::Release);
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        if blocked.take().is_some() {
            tracing::info!(account = %self.account.name, "upstream healthy again; circuit closed");
        }
        self.half_open_probe.store(false, Ordering::Release);
        metrics.breaker_open.get_or_create(&self.label()).set(0);
    }

    /// Records a failure; may open the circuit or pause the account.
    pub fn on_failure(
        &self,
        failure: &UpstreamFailure,
        breaker: (u32, Duration),
        metrics: &Metrics,
    ) {
        // Whatever happened, a probe in flight is over: never leave the flag set.
        let was_probe = self.half_open_probe.swap(false, Ordering::AcqRel);
        if failure.is_local() {
            return;
        }
        let (threshold, cooldown) = breaker;
        let now = Instant::now();
        let block = match failure {
            UpstreamFailure::RateLimited { retry_after } => {
                Some((now + *retry_after, failure.clone()))
            }
            UpstreamFailure::Unauthorized(status) => {
                tracing::error!(
                    account = %self.account.name,
                    status = *status,
                    "upstream rejected the account's API key: check the key configured for this account"
                );
                Some((now + NEGATIVE_CACHE, failure.clone()))
            }
            _ => {
                let n = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
                (threshold > 0 && (was_probe || n >= threshold)).then(|| {
                    tracing::warn!(
                        account = %self.account.name,
                        failures = n,
                        cooldown_ms = cooldown.as_millis() as u64,
                        "circuit opened for account"
                    );
                    metrics.breaker_open.get_or_create(&self.label()).set(1);
                    self.consecutive_failures.store(0, Ordering::Release);
                    (now + cooldown, failure.clone())
                })
            }
        };
        if let Some(b) = block {
            *self.blocked.lock().unwrap_or_else(|p| p.into_inner()) = Some(b);
        }
    }

    fn label(&self) -> AccountLabel {
        AccountLabel {
            account: self.account.name.clone(),
        }
    }
}

/// Per-client usage counters for `/admin/clients`; kept across reloads by client name.
#[derive(Debug, Default)]
pub struct ClientUsage {
    pub requests: AtomicU64,
    pub hits: AtomicU64,
    pub rate_limited: AtomicU64,
    /// Unix seconds of the last request, 0 = never.
    pub last_seen: AtomicU64,
}

impl ClientUsage {
    pub fn touch(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_seen.store(now, Ordering::Relaxed);
    }
}

/// Per-client runtime helpers.
#[derive(Debug)]
pub struct ClientRuntime {
    pub limiter: Option<Arc<ClientLimiter>>,
    pub usage: Arc<ClientUsage>,
    /// `gateway_requests_total{client, route, 200, HIT}` per route index, looked up once here
    /// so the hit path increments an atomic instead of hashing labels.
    pub hits_200: Vec<prometheus_client::metrics::counter::Counter>,
}

/// One config generation with everything derived from it.
pub struct Runtime {
    pub config: Config,
    pub generation: u64,
    pub upstream: Arc<Upstream>,
    pub budget: Option<Arc<UpstreamBudget>>,
    pub auth_throttle: Option<Arc<AuthThrottle>>,
    pub accounts: Vec<Arc<AccountState>>,
    pub clients: Vec<ClientRuntime>,
}

/// Building a runtime failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot build the upstream HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("invalid Redis settings (redis.url): {0}")]
    Redis(String),
}

impl Runtime {
    /// Builds a runtime for `config`, reusing what `prev` has that is still valid.
    pub fn build(
        config: Config,
        generation: u64,
        prev: Option<&Runtime>,
        clock: &TokioClock,
        metrics: &Metrics,
    ) -> Result<Runtime, RuntimeError> {
        let upstream = match prev {
            Some(p) if same_upstream_settings(p.upstream.settings(), &config.upstream) => {
                p.upstream.clone()
            }
            _ => Arc::new(Upstream::new(&config.upstream)?),
        };
        let budget = config
            .upstream
            .rate
            .map(|rate| match prev.and_then(|p| p.budget.as_ref()) {
                Some(b) if b.rate == rate => b.clone(),
                _ => Arc::new(UpstreamBudget::new(rate, clock.clone())),
            });
        let auth_throttle = config.server.auth_failure_limit.map(|rate| {
            match prev.and_then(|p| p.auth_throttle.as_ref()) {
                Some(t) if t.rate == rate => t.clone(),
                _ => Arc::new(AuthThrottle::new(rate, clock.clone())),
            }
        });
        let accounts = config
            .accounts
            .iter()
            .map(|a| {
                prev.and_then(|p| p.accounts.iter().find(|s| s.account.same_upstream(a)))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(AccountState::new(a.clone())))
            })
            .collect();
        let clients = config
            .clients
            .iter()
            .map(|c| {
                let old = prev.and_then(|p| {
                    p.config
                        .clients
                        .iter()
                        .position(|o| o.name == c.name)
                        .map(|i| &p.clients[i])
                });
                let limiter = c
                    .rate
                    .map(|rate| match old.and_then(|o| o.limiter.as_ref()) {
                        Some(l) if l.rate == rate && l.burst == c.burst => l.clone(),
                        _ => Arc::new(ClientLimiter::new(rate, c.burst, clock.clone())),
                    });
                let usage = old.map(|o| o.usage.clone()).unwrap_or_default();
                let hits_200 = config
                    .routes
                    .iter()
                    .map(|r| {
                        metrics
                            .requests
                            .get_or_create_owned(&crate::metrics::RequestLabels {
                                client: c.name.clone(),
                                route: r.path.clone(),
                                status: 200,
                                cache: "HIT",
                            })
                    })
                    .collect();
                ClientRuntime {
                    limiter,
                    usage,
                    hits_200,
                }
            })
            .collect();
        Ok(Runtime {
            config,
            generation,
            upstream,
            budget,
            auth_throttle,
            accounts,
            clients,
        })
    }
}

fn same_redis(
    a: Option<&crate::config::RedisSettings>,
    b: Option<&crate::config::RedisSettings>,
) -> bool {
    use secrecy::ExposeSecret;
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.url.expose_secret() == b.url.expose_secret()
                && a.key_prefix == b.key_prefix
                && a.timeout == b.timeout
                && a.pool_size == b.pool_size
        }
        _ => false,
    }
}

fn same_upstream_settings(
    a: &crate::config::UpstreamSettings,
    b: &crate::config::UpstreamSettings,
) -> bool {
    a.base_url == b.base_url
        && a.allow_insecure_http == b.allow_insecure_http
        && a.timeout == b.timeout
        && a.connect_timeout == b.connect_timeout
        && a.retries == b.retries
        && a.max_body == b.max_body
}

/// Everything a request handler or admin route needs.
pub struct Gateway {
    pub runtime: ArcSwap<Runtime>,
    pub cache: CacheStore,
    pub metrics: Arc<Metrics>,
    /// Redis sharing, when `[redis]` is configured (fixed until restart).
    pub shared: Option<Arc<crate::shared::Shared>>,
    pub clock: TokioClock,
    pub ready: AtomicBool,
    source: Mutex<ConfigSource>,
    generation: AtomicU64,
    reload_lock: tokio::sync::Mutex<()>,
}

/// Why a reload was refused (the old config keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{0} cannot change without a restart")]
    NeedsRestart(&'static str),
}

impl Gateway {
    /// A gateway serving `config`.
    pub fn new(config: Config, source: ConfigSource) -> Result<Arc<Gateway>, RuntimeError> {
        let clock = TokioClock::default();
        let cache = CacheStore::new(config.cache.max_size);
        let metrics = Arc::new(Metrics::new());
        let shared = match &config.redis {
            Some(r) => Some(
                crate::shared::Shared::start(r, metrics.clone())
                    .map_err(|e| RuntimeError::Redis(format!("{:?}", e.kind())))?,
            ),
            None => None,
        };
        let runtime = Runtime::build(config, 1, None, &clock, &metrics)?;
        Ok(Arc::new(Gateway {
            runtime: ArcSwap::from_pointee(runtime),
            cache,
            metrics,
            shared,
            clock,
            ready: AtomicBool::new(false),
            source: Mutex::new(source),
            generation: AtomicU64::new(1),
            reload_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// Where the config is re-read from on reload.
    pub fn source(&self) -> std::sync::MutexGuard<'_, ConfigSource> {
        self.source.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the text of an embedded config source (tests, the demo); the next reload
    /// validates and applies it. No effect on a file source.
    pub fn set_embedded_text(&self, new_text: String) {
        if let ConfigSource::Embedded { text, .. } = &mut *self.source() {
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
        let source = self.source().clone();
        let config = tokio::task::spawn_blocking(move || match &source {
            ConfigSource::File(path) => Config::load(path),
            ConfigSource::Embedded { text, origin, env } => Config::parse(text, origin, env),
        })
        .await
        .map_err(|_| ReloadError::NeedsRestart("a config that panics the loader"))??;
        let old = self.runtime.load_full();
        if config.server.listen != old.config.server.listen {
            return Err(ReloadError::NeedsRestart("server.listen"));
        }
        if config.server.admin_listen != old.config.server.admin_listen {
            return Err(ReloadError::NeedsRestart("server.admin_listen"));
        }
        if !same_redis(config.redis.as_ref(), old.config.redis.as_ref()) {
            return Err(ReloadError::NeedsRestart("[redis]"));
        }
        if config.cache.max_size != old.config.cache.max_size {
            return Err(ReloadError::NeedsRestart("cache.max_size"));
        }
        let (a, b) = (&config.server, &old.config.server);
        if a.header_read_timeout != b.header_read_timeout
            || a.keep_alive_timeout != b.keep_alive_timeout
            || a.max_connections != b.max_connections
            || a.max_header_bytes != b.max_header_bytes
            || a.max_uri_bytes != b.max_uri_bytes
        {
            return Err(ReloadError::NeedsRestart(
                "server.header_read_timeout / keep_alive_timeout / max_connections / max_header_bytes / max_uri_bytes",
            ));
        }
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let new = Arc::new(Runtime::build(
            config,
            generation,
            Some(&old),
            &self.clock,
            &self.metrics,
        )?);
        // Swap first, then drop cached answers of accounts that are gone or whose upstream key
        // changed: requests that start after the swap never refill from the old key.
        self.runtime.store(new.clone());
        for a in &old.config.accounts {
            if !new.config.accounts.iter().any(|n| n.same_upstream(a)) {
                self.cache.purge(Some(&a.name));
            }
        }
        Ok(())
    }

    /// Records a failed authentication from `ip` for the brute-force throttle.
    pub fn auth_failed(&self, rt: &Runtime, ip: IpAddr) {
        self.metrics.auth_failures.inc();
        if let Some(t) = &rt.auth_throttle {
            let _ = t.record_failure(ip);
        }
    }
}
