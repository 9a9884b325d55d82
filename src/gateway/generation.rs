//! One config generation: the validated config plus everything built from it (upstream
//! client, limiters, per-account breakers, per-client usage and metric handles).
//!
//! A reload builds a new generation from the new config, carrying over what is still valid:
//! the HTTP client while `[upstream]` is unchanged, each client limiter whose rate is
//! unchanged, each account's breaker while its key is unchanged, usage counters by client
//! name (and per key by client name and key hash, so renaming a key's id keeps its history),
//! profiles whose spec is unchanged (so cached renders stay valid), and route baselines whose
//! shape is unchanged (so `reload` can tell a changed one by identity). In-flight requests
//! keep the `Arc<Generation>` they started with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use crate::cache::{CacheKey, StaleWindows};
use crate::config::Config;
use crate::metrics::{ClientLabel, Metrics, RequestLabels};
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
    /// Counts an authenticated request at `now_ms` (Unix milliseconds).
    pub(crate) fn touch(&self, now_ms: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        // Written only when the second changes: every core reads the line, few write it.
        let secs = now_ms / 1000;
        if self.last_seen.load(Ordering::Relaxed) != secs {
            self.last_seen.store(secs, Ordering::Relaxed);
        }
    }
}

/// Per-key usage for `/admin/clients` (which key of a team is still in use); kept across
/// reloads by client name and key hash. Plain atomics: the request path pays two relaxed
/// stores.
#[derive(Debug, Default)]
pub(crate) struct KeyUsage {
    /// Requests authenticated with this key.
    pub(crate) requests: AtomicU64,
    /// Unix milliseconds of the last of them, 0 = never.
    pub(crate) last_used_ms: AtomicU64,
    /// Requests refused because the key had expired.
    pub(crate) expired_refused: AtomicU64,
    /// Unix milliseconds of the last "expired key" log line, so a client hammering with an
    /// expired key logs once a minute, not once per request.
    expired_logged_ms: AtomicU64,
}

/// At most one "expired key" log line per key per this long.
const EXPIRED_LOG_EVERY_MS: u64 = 60_000;

impl KeyUsage {
    /// Counts a request authenticated with this key at `now_ms`.
    pub(crate) fn touch(&self, now_ms: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        // Written only when the millisecond changes (as `ClientUsage::touch`).
        if self.last_used_ms.load(Ordering::Relaxed) != now_ms {
            self.last_used_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Counts a refusal of this (expired) key at `now_ms`; whether it should be logged.
    pub(crate) fn refused_expired(&self, now_ms: u64) -> bool {
        self.expired_refused.fetch_add(1, Ordering::Relaxed);
        let last = self.expired_logged_ms.load(Ordering::Relaxed);
        (last == 0 || now_ms.saturating_sub(last) >= EXPIRED_LOG_EVERY_MS)
            && self
                .expired_logged_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Per-client runtime helpers.
#[derive(Debug)]
pub(crate) struct ClientState {
    pub(crate) limiter: Option<Arc<ClientLimiter>>,
    pub(crate) usage: Arc<ClientUsage>,
    /// Usage per key, indexed like the client's `keys`.
    pub(crate) keys: Vec<Arc<KeyUsage>>,
    /// `gateway_upstream_calls_caused_total{client}`: handed to the fetches this client starts.
    pub(crate) calls_caused: Counter,
    /// `gateway_upstream_calls_avoided_total{client}`.
    pub(crate) calls_avoided: Counter,
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
    /// The cache key of every (account, route) without a query, made once here so a hit
    /// builds none (and takes no reference count on the names): `route_keys[account][route]`.
    pub(crate) route_keys: Vec<Vec<CacheKey>>,
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
            // So does an unchanged baseline (the new config's routes are not shared yet).
            for route in &mut config.routes {
                let old = p
                    .config
                    .routes
                    .iter()
                    .find(|o| o.path == route.path)
                    .and_then(|o| o.baseline.as_ref());
                let new = Arc::get_mut(route).and_then(|r| r.baseline.as_mut());
                if let (Some(old), Some(new)) = (old, new) {
                    if old.shape == new.shape {
                        new.shape = old.shape.clone();
                    }
                }
            }
        }
        let accounts: Vec<Arc<AccountState>> = config
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
                // The previous generation's config and state of the client of this name.
                let before = prev.and_then(|p| {
                    p.config
                        .clients
                        .iter()
                        .position(|o| o.name == c.name)
                        .map(|i| (&p.config.clients[i], &p.clients[i]))
                });
                let old = before.map(|(_, state)| state);
                let limiter = c
                    .rate
                    .map(|rate| match old.and_then(|o| o.limiter.as_ref()) {
                        Some(l) if l.rate == rate && l.burst == c.burst => l.clone(),
                        _ => Arc::new(ClientLimiter::new(rate, c.burst, clock.clone())),
                    });
                let usage = old.map(|o| o.usage.clone()).unwrap_or_default();
                let keys = c
                    .keys
                    .iter()
                    .map(|k| {
                        before
                            .and_then(|(conf, state)| {
                                let i = conf.keys.iter().position(|o| o.hash == k.hash)?;
                                state.keys.get(i).cloned()
                            })
                            .unwrap_or_default()
                    })
                    .collect();
                let label = ClientLabel {
                    client: c.name.clone(),
                };
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
                    keys,
                    calls_caused: metrics.upstream_calls_caused.get_or_create_owned(&label),
                    calls_avoided: metrics.upstream_calls_avoided.get_or_create_owned(&label),
                    hits_200,
                }
            })
            .collect();
        let stale = StaleWindows {
            revalidate: config.cache.stale_while_revalidate,
            if_error: config.cache.stale_if_error,
        };
        let route_keys = accounts
            .iter()
            .map(|a| {
                config
                    .routes
                    .iter()
                    .map(|r| {
                        CacheKey::new(
                            a.account.name.clone(),
                            a.account.key_fp,
                            r.path.clone(),
                            None,
                        )
                    })
                    .collect()
            })
            .collect();
        Ok(Generation {
            config,
            upstream,
            budget,
            auth_throttle,
            accounts,
            clients,
            stale,
            route_keys,
        })
    }

    /// How long the store keeps an entry of a route with `ttl`: the TTL plus the longest stale
    /// window.
    pub(crate) fn retain(&self, ttl: Duration) -> Duration {
        ttl + self.stale.longest()
    }
}
