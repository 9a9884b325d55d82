//! One cache miss, in order: shared copy → cross-replica lock → breaker → budget → upstream
//! call → entry. Handed to the cache as the fetch of a single-flight fill.
//!
//! With `[redis]`, a fresh copy another replica stored is used as is (no call); otherwise this
//! replica takes the fill lock, or waits for the replica holding it and uses its copy. A lock
//! lives for the longest a fetch can take ([`lock_ttl`]), so it is never taken over while its
//! holder still works. Redis trouble falls back to a local fetch. On failure nothing is
//! stored: the previous good copy stays (a failed refresh never evicts).
//!
//! Each new answer is checked once against its route's baseline (`drift`): an upstream answer
//! with new fields is reported (one WARN per path per process, the counter, `/admin/schema`);
//! a copy from another replica is checked but not reported again (its fetcher did). With
//! tracing, a fill is a span (child of the request that started it) with one child per
//! upstream attempt; the fill lock in Redis carries its `traceparent` so another replica's
//! waiting fill links to it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::SpanContext;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use crate::cache::{l2, CacheKey, Entry, FetchPanicked, Flight, Origin};
use crate::config::Route;
use crate::drift::NewFields;
use crate::gateway::{AccountState, Gateway, Generation};
use crate::metrics::{AccountLabel, RouteLabel, UpstreamLabels};
use crate::redis::{Lock, Redis, POLL_EVERY};
use crate::telemetry::{FillLink, FillSpan};
use crate::upstream::breaker::Transition;
use crate::upstream::{Admission, UpstreamFailure, UpstreamSettings};

impl From<FetchPanicked> for UpstreamFailure {
    fn from(_: FetchPanicked) -> Self {
        UpstreamFailure::Body
    }
}

/// Added to the longest fetch for the lock's lifetime: Redis round trips and scheduling.
const LOCK_MARGIN: Duration = Duration::from_millis(500);

/// How long the cross-replica fill lock lives: the longest a fetch can take
/// (`UpstreamSettings::worst_case_fetch`, cut at `server.request_timeout`, since a fetch never
/// outlives its caller's deadline) plus [`LOCK_MARGIN`].
pub(crate) fn lock_ttl(generation: &Generation) -> Duration {
    let config = &generation.config;
    lock_ttl_for(&config.upstream, config.server.request_timeout)
}

fn lock_ttl_for(upstream: &UpstreamSettings, request_timeout: Duration) -> Duration {
    upstream.worst_case_fetch().min(request_timeout) + LOCK_MARGIN
}

/// What one miss needs from its request.
#[derive(Clone)]
pub(crate) struct Miss {
    pub(crate) gw: Arc<Gateway>,
    pub(crate) generation: Arc<Generation>,
    pub(crate) key: CacheKey,
    pub(crate) account: Arc<AccountState>,
    pub(crate) route: Arc<Route>,
    pub(crate) deadline: Instant,
    /// `gateway_upstream_calls_caused_total` of the client whose request started this miss:
    /// counts every upstream attempt the fetch makes (joiners' misses never run).
    pub(crate) caused: Counter,
    /// The server span of the request, when traced: the parent of a fill it starts.
    pub(crate) parent: Option<SpanContext>,
}

impl Miss {
    /// Joins the fill of this key, or starts one. Returns the fill and, when it was joined,
    /// what to link to.
    pub(crate) fn fill(self) -> (Flight<Arc<Entry>, UpstreamFailure>, Option<FillLink>) {
        let gw = self.gw.clone();
        let (key, ttl) = (self.key.clone(), self.route.ttl);
        gw.cache.fill(&key, ttl, move || {
            let span = match (&self.gw.telemetry, &self.parent) {
                (Some(t), Some(parent)) => Some(t.fill_span(parent, &self.route.path)),
                _ => None,
            };
            (
                span.as_ref().and_then(FillSpan::link_target),
                self.fetch(span),
            )
        })
    }

    async fn fetch(self, mut span: Option<FillSpan>) -> Result<Arc<Entry>, UpstreamFailure> {
        let result = self.fetch_traced(span.as_mut()).await;
        if let Some(s) = span {
            s.end(match &result {
                Ok(e) if e.origin == Origin::Replica => "shared",
                Ok(_) => "ok",
                Err(f) => f.outcome(),
            });
        }
        result
    }

    async fn fetch_traced(
        &self,
        mut span: Option<&mut FillSpan>,
    ) -> Result<Arc<Entry>, UpstreamFailure> {
        let Some(redis) = self.gw.redis.clone() else {
            return self.call_upstream(span.as_deref()).await;
        };
        let token = match self.shared_step(&redis, span.as_deref_mut()).await {
            SharedStep::Served(e) => return Ok(e),
            SharedStep::Fetch(token) => token,
        };
        let result = self.call_upstream(span.as_deref()).await;
        if let Ok(e) = &result {
            let name = redis.key("c", &self.key, &self.account.account.tag);
            let value = l2::encode(
                self.account.account.key.mac_key(),
                &name,
                &e.raw.body,
                e.fetched_wall,
            );
            redis
                .put(name, value, self.generation.retain(self.max_ttl()))
                .await;
        }
        if let Some(t) = token {
            redis.unlock(&self.key, &self.account.account.tag, &t).await;
        }
        result
    }

    /// The longest route TTL: how long the L2 keeps answers (other replicas may run other
    /// TTLs for the same route after a reload).
    fn max_ttl(&self) -> Duration {
        let config = &self.generation.config;
        config
            .routes
            .iter()
            .map(|r| r.ttl)
            .max()
            .unwrap_or(config.cache.ttl)
    }

    /// The cross-replica part: a fresh shared copy, or the lock, or waiting for the replica
    /// that holds it. Falls back to a local fetch when Redis is unavailable, when the holder
    /// finishes without a fresh copy (it failed), or when the deadline nears.
    async fn shared_step(&self, redis: &Redis, mut span: Option<&mut FillSpan>) -> SharedStep {
        if let Some(e) = self.shared_copy(redis).await {
            return SharedStep::Served(e);
        }
        let tag = &self.account.account.tag;
        let ttl = lock_ttl(&self.generation);
        let note = span.as_deref().and_then(FillSpan::traceparent);
        let mut linked: Option<String> = None;
        loop {
            match redis.lock(&self.key, tag, ttl, note.as_deref()).await {
                Lock::Acquired(token) => {
                    // A holder may have stored its answer and released the lock in between.
                    if let Some(e) = self.shared_copy(redis).await {
                        redis.unlock(&self.key, tag, &token).await;
                        return SharedStep::Served(e);
                    }
                    return SharedStep::Fetch(Some(token));
                }
                Lock::Unavailable => return SharedStep::Fetch(None),
                Lock::Held => {
                    // Recorded: link this fill to the holder's (once per holder).
                    if let Some(s) = span.as_deref_mut().filter(|s| s.recording()) {
                        let holder = redis.lock_note(&self.key, tag).await;
                        if let Some(h) = holder.filter(|h| linked.as_ref() != Some(h)) {
                            s.waited_on_replica(&h);
                            linked = Some(h);
                        }
                    }
                }
            }
            loop {
                if Instant::now() + POLL_EVERY >= self.deadline {
                    return SharedStep::Fetch(None);
                }
                tokio::time::sleep(POLL_EVERY).await;
                if let Some(e) = self.shared_copy(redis).await {
                    return SharedStep::Served(e);
                }
                match redis.lock_held(&self.key, tag).await {
                    Some(true) => continue,
                    // Released (or expired) without a fresh copy: try to take over.
                    Some(false) => break,
                    None => return SharedStep::Fetch(None),
                }
            }
        }
    }

    /// A fresh, intact copy of this key from the L2 (another replica's fetch).
    async fn shared_copy(&self, redis: &Redis) -> Option<Arc<Entry>> {
        let account = &self.account.account;
        let name = redis.key("c", &self.key, &account.tag);
        let value = redis.get(name.clone()).await?;
        let Some(shared) = l2::decode(account.key.mac_key(), &name, &value) else {
            self.gw.metrics.l2_rejected.inc();
            tracing::warn!(
                account = %account.name,
                route = %self.route.path,
                "ignored a shared cache value that is not intact or not JSON"
            );
            return None;
        };
        let e = Entry::from_replica(
            shared.body,
            shared.fetched_wall,
            self.generation.retain(self.route.ttl),
            self.generation.config.profiles.len(),
        );
        if e.age(Instant::now()) >= self.route.ttl {
            return None;
        }
        let new_fields = self.new_fields(&e.raw.body);
        let e = e.with_new_fields(new_fields);
        self.gw.metrics.l2_hits.inc();
        Some(Arc::new(e))
    }

    /// Breaker → budget → the upstream call (with its retries) → an entry.
    async fn call_upstream(&self, span: Option<&FillSpan>) -> Result<Arc<Entry>, UpstreamFailure> {
        let metrics = &self.gw.metrics;
        let account = &self.account;
        let labels = |outcome| UpstreamLabels {
            account: account.account.name.clone(),
            route: self.route.path.clone(),
            outcome,
        };
        let redis = self.gw.redis.as_deref();
        let up = &self.generation.config.upstream;
        let mut gate = account.breaker.gate();
        if let (Ok(()), Some(redis)) = (&gate, redis) {
            // Another replica may have been told to stop (429): that pause holds here too.
            if let Some(left) = redis.paused_for(&account.account.tag).await {
                let pause = UpstreamFailure::RateLimited { retry_after: left };
                account
                    .breaker
                    .on_failure(&pause, up.breaker_failures, up.breaker_cooldown);
                gate = account.breaker.gate();
            }
        }
        if let Err(f) = gate {
            // Not a call: the account is paused, negatively cached or its circuit is open.
            metrics
                .upstream_requests
                .get_or_create(&labels("skipped"))
                .inc();
            return Err(f);
        }
        let admit = || -> Admission<'_> {
            Box::pin(async move {
                match &self.generation.budget {
                    Some(b) => b.admit_shared(redis).await,
                    None => Ok(()),
                }
            })
        };
        let duration = metrics
            .upstream_duration
            .get_or_create_owned(&AccountLabel {
                account: account.account.name.clone(),
            });
        // Every HTTP attempt (retries included) is counted, so the metric equals what Gcore saw.
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let on_attempt = |result: Result<(), &UpstreamFailure>, took: Duration| {
            self.caused.inc();
            let outcome = result.map_or_else(UpstreamFailure::outcome, |()| "ok");
            metrics
                .upstream_requests
                .get_or_create(&labels(outcome))
                .inc();
            duration.observe(took.as_secs_f64());
            if let Some(s) = span {
                let n = attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                s.attempt(n, result, took, &self.route.path);
            }
        };
        let started = Instant::now();
        let fetched = self
            .generation
            .upstream
            .fetch(
                &account.account,
                &self.route.path,
                self.key.query(),
                self.deadline,
                &admit,
                &on_attempt,
            )
            .await;
        let elapsed = started.elapsed();
        let gauge = || {
            metrics.breaker_open.get_or_create(&AccountLabel {
                account: account.account.name.clone(),
            })
        };
        match fetched {
            Ok(body) => {
                if account.breaker.on_success() == Transition::Closed {
                    tracing::info!(account = %account.account.name, "upstream healthy again; circuit closed");
                    gauge().set(0);
                }
                let new_fields = self.new_fields(&body);
                if let Some(new) = &new_fields {
                    self.report(new);
                }
                Ok(Arc::new(
                    Entry::new(
                        body,
                        Instant::now(),
                        Origin::Upstream(elapsed),
                        self.generation.retain(self.route.ttl),
                        self.generation.config.profiles.len(),
                    )
                    .with_new_fields(new_fields),
                ))
            }
            Err(f) => {
                if matches!(f, UpstreamFailure::BudgetExhausted { .. }) {
                    metrics.upstream_budget_exhausted.inc();
                    metrics
                        .upstream_requests
                        .get_or_create(&labels("budget_exhausted"))
                        .inc();
                }
                if let UpstreamFailure::Unauthorized(status) = f {
                    tracing::error!(
                        account = %account.account.name,
                        status,
                        "upstream rejected the account's API key: check the key configured for this account"
                    );
                }
                if let (UpstreamFailure::RateLimited { retry_after }, Some(redis)) = (&f, redis) {
                    // Gcore told us to stop: every replica stops.
                    redis.pause(&account.account.tag, *retry_after).await;
                }
                let t = account
                    .breaker
                    .on_failure(&f, up.breaker_failures, up.breaker_cooldown);
                if t == Transition::Opened {
                    tracing::warn!(
                        account = %account.account.name,
                        cooldown_ms = up.breaker_cooldown.as_millis() as u64,
                        "circuit opened for account"
                    );
                    gauge().set(1);
                }
                tracing::warn!(
                    account = %account.account.name,
                    route = %self.route.path,
                    failure = %f,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "upstream fetch failed"
                );
                Err(f)
            }
        }
    }

    /// The body's fields outside the route's baseline (`None`: none, or no baseline).
    fn new_fields(&self, body: &[u8]) -> Option<NewFields> {
        self.route.baseline.as_ref()?.shape.check(body)
    }

    /// Reports one upstream answer with new fields: the counter, the record behind
    /// `/admin/schema`, and a WARN for each path this process meets for the first time. Paths
    /// are field names; no value of the answer is ever logged.
    fn report(&self, new: &NewFields) {
        let route = &self.route.path;
        self.gw
            .metrics
            .upstream_new_fields
            .get_or_create(&RouteLabel {
                route: route.clone(),
            })
            .inc();
        let recorded = self.gw.schema.record(route, new.paths(), SystemTime::now());
        for path in &recorded.first {
            tracing::warn!(
                route = %route,
                path = %path,
                "upstream answer has a field outside the route's baseline (shape drift)"
            );
        }
        if recorded.became_full {
            tracing::warn!(
                route = %route,
                limit = crate::drift::seen::MAX_PATHS_PER_ROUTE,
                "too many new field paths on this route; further ones are counted, not listed or logged"
            );
        }
    }
}

enum SharedStep {
    /// Another replica's answer.
    Served(Arc<Entry>),
    /// Call the upstream ourselves (holding the lock when `Some`).
    Fetch(Option<String>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(timeout_ms: u64, retries: u32) -> UpstreamSettings {
        UpstreamSettings {
            base_url: "http://127.0.0.1:1".into(),
            allow_insecure_http: true,
            timeout: Duration::from_millis(timeout_ms),
            connect_timeout: Duration::from_millis(100),
            retries,
            max_body: 1 << 20,
            rate: None,
            breaker_failures: 0,
            breaker_cooldown: Duration::from_secs(1),
        }
    }

    /// The lock outlives every attempt and backoff of the holder's fetch (it used to be one
    /// attempt + 500 ms, so a retrying holder lost its lock to another replica).
    #[test]
    fn the_fill_lock_outlives_the_slowest_fetch() {
        // 3 attempts of 2 s and backoffs of 100 ms + 200 ms.
        let u = upstream(2_000, 2);
        assert_eq!(u.worst_case_fetch(), Duration::from_millis(6_300));
        assert_eq!(
            lock_ttl_for(&u, Duration::from_secs(30)),
            Duration::from_millis(6_800)
        );
        // A fetch never outlives its caller's deadline: the lock is cut there.
        assert_eq!(
            lock_ttl_for(&u, Duration::from_secs(3)),
            Duration::from_millis(3_500)
        );
        // Backoff is capped, counts saturate.
        let many = upstream(1_000, 10);
        assert_eq!(
            many.worst_case_fetch(),
            Duration::from_millis(11_000 + 100 + 200 + 400 + 800 + 1_600 + 5 * 2_000)
        );
    }
}
