//! One config generation: the validated config plus everything built from it (upstream
//! client, limiters, per-account breakers, per-client usage and metric handles).
//!
//! A reload builds a new generation from the new config, carrying over what is still valid:
//! the HTTP client while `[upstream]` is unchanged, each client limiter whose rate is
//! unchanged, each account's breaker while its key is unchanged, usage counters by client
//! name, and profiles whose spec is unchanged (so cached renders stay valid). In-flight
//! requests keep the `Arc<Generation>` they started with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;

use crate::cache::StaleWindows;
use crate::config::Config;
use crate::metrics::{Metrics, RequestLabels};
use crate::rate_limit::{AuthThrottle, ClientLimiter, TokioClock, UpstreamBudget};
use crate::upstream::{Account, Breaker, Upstream};

/// Per-account state: the account and its breaker (kept while its key is unchanged).
#[derive(Debug)]
pub(crate) struct AccountState {
    pub(crate) account: Arc<Account>,
    pub(crate) breaker: Breaker,
}

/// Per-client usage counters for `/admin/clients`; kept across reloads by client name.
#[derive(Debug, Default)]
pub(crate) struct ClientUsage {
    pub(crate) requests: AtomicU64,
    pub(crate) hits: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    /// Unix seconds of the last request, 0 = never.
    pub(crate) last_seen: AtomicU64,
}

impl ClientUsage {
    pub(crate) fn touch(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_seen.store(now, Ordering::Relaxed);
    }
}

/// Per-client runtime helpers.
#[derive(Debug)]
pub(crate) struct ClientState {
    pub(crate) limiter: Option<Arc<ClientLimiter>>,
    pub(crate) usage: Arc<ClientUsage>,
    /// `gateway_requests_total{client, route, 200, HIT}` per route index, looked up once here
    /// so the hit path increments an atomic instead of hashing labels.
    pub(crate) hits_200: Vec<Counter>,
}

/// One config generation with everything derived from it.
pub struct Generation {
    /// The validated config.
    pub config: Config,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) budget: Option<Arc<UpstreamBudget>>,
    pub(crate) auth_throttle: Option<Arc<AuthThrottle>>,
    pub(crate) accounts: Vec<Arc<AccountState>>,
    pub(crate) clients: Vec<ClientState>,
    pub(crate) stale: StaleWindows,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("origin", &self.config.origin)
            .finish_non_exhaustive()
    }
}

/// Building a generation failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Cannot build the upstream HTTP client: ….
    #[error("cannot build the upstream HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// Invalid Redis settings (redis.url): ….
    #[error("invalid Redis settings (redis.url): {0}")]
    Redis(String),
    /// Cannot start tracing ([tracing]): ….
    #[error("cannot start tracing ([tracing]): {0}")]
    Tracing(#[from] crate::telemetry::TelemetryError),
}

impl Generation {
    /// Builds a generation for `config`, reusing what `prev` has that is still valid.
    pub(crate) fn build(
        mut config: Config,
        prev: Option<&Generation>,
        clock: &TokioClock,
        metrics: &Metrics,
    ) -> Result<Generation, BuildError> {
        let upstream = match prev {
            Some(p) if p.upstream.settings() == &config.upstream => p.upstream.clone(),
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
        if let Some(p) = prev {
            // An unchanged profile keeps its identity, and with it the renders already cached.
            for profile in &mut config.profiles {
                if let Some(old) = p.config.profiles.iter().find(|o| o.same_as(profile)) {
                    *profile = old.clone();
                }
            }
        }
        let accounts = config
            .accounts
            .iter()
            .map(|a| {
                prev.and_then(|p| p.accounts.iter().find(|s| s.account.same_upstream(a)))
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(AccountState {
                            account: a.clone(),
                            breaker: Breaker::default(),
                        })
                    })
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
                        metrics.requests.get_or_create_owned(&RequestLabels {
                            client: c.name.clone(),
                            route: r.path.clone(),
                            status: 200,
                            cache: "HIT",
                        })
                    })
                    .collect();
                ClientState {
                    limiter,
                    usage,
                    hits_200,
                }
            })
            .collect();
        let stale = StaleWindows {
            revalidate: config.cache.stale_while_revalidate,
            if_error: config.cache.stale_if_error,
        };
        Ok(Generation {
            config,
            upstream,
            budget,
            auth_throttle,
            accounts,
            clients,
            stale,
        })
    }

    /// How long the store keeps an entry of a route with `ttl`: the TTL plus the longest stale
    /// window.
    pub(crate) fn retain(&self, ttl: Duration) -> Duration {
        ttl + self.stale.longest()
    }
}
