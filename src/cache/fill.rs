//! Single-flight fills: one upstream fetch per cache key at a time, shared by every waiter.
//!
//! A fill runs in its own task, so a caller that gives up (timeout, disconnect) never cancels
//! the fetch others wait for. Before calling upstream the task looks at the store once more: a
//! fill that finished between a caller's miss and its joining is reused, never repeated. The
//! account's breaker and pauses and the global upstream budget are consulted here; on failure
//! the previous good copy is left in place (a failed refresh never evicts).

use futures_util::FutureExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use super::{CacheKey, CacheStatus, CacheStore, Entry, FillResult, Flight, Freshness};
use crate::config::Route;
use crate::metrics::{AccountLabel, UpstreamLabels};
use crate::shared::{Lock, Shared, POLL_EVERY};
use crate::state::{AccountState, Gateway, Runtime};
use crate::upstream::UpstreamFailure;

/// What to fetch: the key plus what the fill needs from the request's config generation.
pub struct FillSpec<'a> {
    pub key: CacheKey,
    pub account: usize,
    pub route: &'a Arc<Route>,
}

/// Cache-or-fetch for one request. Returns the entry to serve and how it was obtained, or the
/// upstream failure when there is nothing usable to serve.
pub async fn get_or_fetch(
    gw: &Arc<Gateway>,
    rt: &Arc<Runtime>,
    spec: &FillSpec<'_>,
    deadline: Instant,
) -> Result<(Arc<Entry>, CacheStatus), UpstreamFailure> {
    let cache = &rt.config.cache;
    let cached = gw.cache.get(&spec.key).await;
    let now = Instant::now();
    let stale = match cached {
        Some(e) => match e.freshness(now, cache.stale_while_revalidate, cache.stale_if_error) {
            Freshness::Fresh => return Ok((e, CacheStatus::Hit)),
            Freshness::Revalidate => {
                // Serve at once; one background refresh (joins any fill already running).
                let _ = flight(gw, rt, spec, now + rt.config.server.request_timeout);
                gw.metrics
                    .stale_served
                    .get_or_create(&crate::metrics::ReasonLabel {
                        reason: "revalidate",
                    })
                    .inc();
                return Ok((e, CacheStatus::Stale));
            }
            Freshness::IfError => Some(e),
            Freshness::Expired => None,
        },
        None => None,
    };
    let (fl, joined) = flight(gw, rt, spec, deadline);
    if joined {
        gw.metrics.coalesced.inc();
    }
    let result = tokio::time::timeout_at(deadline, fl)
        .await
        .unwrap_or(Err(UpstreamFailure::Timeout));
    match (result, stale) {
        (Ok(e), _) => Ok((e, CacheStatus::Miss)),
        (Err(_), Some(e)) => {
            gw.metrics
                .stale_served
                .get_or_create(&crate::metrics::ReasonLabel { reason: "error" })
                .inc();
            Ok((e, CacheStatus::Stale))
        }
        (Err(f), None) => Err(f),
    }
}

/// Joins the fill for `spec.key`, starting one if none runs. Returns the shared future and
/// whether an existing fill was joined.
fn flight(
    gw: &Arc<Gateway>,
    rt: &Arc<Runtime>,
    spec: &FillSpec<'_>,
    deadline: Instant,
) -> (Flight, bool) {
    let mut inflight = gw.cache.inflight();
    if let Some(f) = inflight.get(&spec.key) {
        return (f.clone(), true);
    }
    let task = tokio::spawn(run_fill(
        gw.clone(),
        rt.clone(),
        spec.key.clone(),
        spec.account,
        spec.route.clone(),
        deadline,
    ));
    let fut: Flight = async move { task.await.unwrap_or(Err(UpstreamFailure::Body)) }
        .boxed()
        .shared();
    inflight.insert(spec.key.clone(), fut.clone());
    (fut, false)
}

async fn run_fill(
    gw: Arc<Gateway>,
    rt: Arc<Runtime>,
    key: CacheKey,
    account: usize,
    route: Arc<Route>,
    deadline: Instant,
) -> FillResult {
    // Removes the in-flight entry however the fill ends, a panic included: a finished flight
    // left in the table would answer every later request for the key with its old result.
    struct Done<'a>(&'a CacheStore, &'a CacheKey);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.inflight().remove(self.1);
        }
    }
    let _done = Done(&gw.cache, &key);
    fetch_into_cache(&gw, &rt, &key, account, &route, deadline).await
}

async fn fetch_into_cache(
    gw: &Gateway,
    rt: &Runtime,
    key: &CacheKey,
    account: usize,
    route: &Route,
    deadline: Instant,
) -> FillResult {
    if let Some(e) = reuse_fresh(&gw.cache, key).await {
        return Ok(e);
    }
    let state = &rt.accounts[account];
    let Some(shared) = &gw.shared else {
        return fetch_upstream(gw, rt, key, state, route, deadline).await;
    };
    let token = match shared_step(gw, rt, shared, key, state, route, deadline).await {
        SharedStep::Served(e) => return Ok(e),
        SharedStep::Fetch(token) => token,
    };
    let result = fetch_upstream(gw, rt, key, state, route, deadline).await;
    if let Ok(e) = &result {
        shared
            .put(
                key,
                &state.tag,
                &e.raw.body,
                e.fetched_wall,
                rt.config.max_retention(),
            )
            .await;
    }
    if let Some(t) = token {
        shared.unlock(key, &state.tag, &t).await;
    }
    result
}

/// Added to `upstream.timeout` for the cross-replica lock's expiry.
const LOCK_MARGIN: Duration = Duration::from_millis(500);

enum SharedStep {
    /// Another replica's answer, now also in L1.
    Served(Arc<Entry>),
    /// Call the upstream ourselves (holding the lock when `Some`).
    Fetch(Option<String>),
}

/// The cross-replica part of a fill: a fresh L2 copy, or the lock, or waiting for the replica
/// that holds it. Falls back to a local fetch when Redis is unavailable, when the holder
/// finishes without a fresh copy (it failed), or when the deadline nears.
async fn shared_step(
    gw: &Gateway,
    rt: &Runtime,
    shared: &Shared,
    key: &CacheKey,
    state: &AccountState,
    route: &Route,
    deadline: Instant,
) -> SharedStep {
    if let Some(e) = l2_fresh(gw, rt, shared, key, state, route).await {
        return SharedStep::Served(e);
    }
    // One attempt plus a margin: a dead holder is taken over well inside a caller's deadline
    // (a holder that retries past it may see a second replica call too; rare and bounded).
    let lock_ttl = rt.config.upstream.timeout + LOCK_MARGIN;
    loop {
        match shared.lock(key, &state.tag, lock_ttl).await {
            Lock::Acquired(token) => {
                // A holder may have stored its answer and released the lock in between.
                if let Some(e) = l2_fresh(gw, rt, shared, key, state, route).await {
                    shared.unlock(key, &state.tag, &token).await;
                    return SharedStep::Served(e);
                }
                return SharedStep::Fetch(Some(token));
            }
            Lock::Unavailable => return SharedStep::Fetch(None),
            Lock::Held => {}
        }
        loop {
            if Instant::now() + POLL_EVERY >= deadline {
                return SharedStep::Fetch(None);
            }
            tokio::time::sleep(POLL_EVERY).await;
            if let Some(e) = l2_fresh(gw, rt, shared, key, state, route).await {
                return SharedStep::Served(e);
            }
            match shared.lock_held(key, &state.tag).await {
                Some(true) => continue,
                // Released (or expired) without a fresh copy: try to take over.
                Some(false) => break,
                None => return SharedStep::Fetch(None),
            }
        }
    }
}

async fn l2_fresh(
    gw: &Gateway,
    rt: &Runtime,
    shared: &Shared,
    key: &CacheKey,
    state: &AccountState,
    route: &Route,
) -> Option<Arc<Entry>> {
    let v = shared.get(key, &state.tag).await?;
    let e = Entry::from_shared(
        v.body,
        v.fetched_wall,
        route.ttl,
        rt.generation,
        rt.config.profiles.len(),
    )
    .retaining(rt.config.stale_windows());
    if e.age(Instant::now()) >= e.ttl {
        return None;
    }
    let e = Arc::new(e);
    gw.metrics.l2_hits.inc();
    gw.cache.insert(key.clone(), e.clone()).await;
    Some(e)
}

async fn fetch_upstream(
    gw: &Gateway,
    rt: &Runtime,
    key: &CacheKey,
    state: &AccountState,
    route: &Route,
    deadline: Instant,
) -> FillResult {
    let labels = |outcome| UpstreamLabels {
        account: state.account.name.clone(),
        route: route.path.clone(),
        outcome,
    };
    if let Err(f) = state.gate() {
        // Not a call: the account is paused, negatively cached or its circuit is open.
        gw.metrics
            .upstream_requests
            .get_or_create(&labels("skipped"))
            .inc();
        return Err(f);
    }
    let admit = || match &rt.budget {
        Some(b) => b.admit(),
        None => Ok(()),
    };
    let duration = gw
        .metrics
        .upstream_duration
        .get_or_create_owned(&AccountLabel {
            account: state.account.name.clone(),
        });
    // Every HTTP attempt (retries included) is counted, so the metric equals what Gcore saw.
    let on_attempt = |outcome: &'static str, took: Duration| {
        gw.metrics
            .upstream_requests
            .get_or_create(&labels(outcome))
            .inc();
        duration.observe(took.as_secs_f64());
    };
    let started = Instant::now();
    let fetched = rt
        .upstream
        .fetch(
            &state.account,
            &route.path,
            key.query.as_deref(),
            deadline,
            &admit,
            &on_attempt,
        )
        .await;
    let elapsed = started.elapsed();
    match fetched {
        Ok(f) => {
            state.on_success(&gw.metrics);
            let entry = Arc::new(
                Entry::new(
                    f.body,
                    Instant::now(),
                    route.ttl,
                    rt.generation,
                    rt.config.profiles.len(),
                )
                .retaining(rt.config.stale_windows())
                .fetched_in(elapsed),
            );
            gw.cache.insert(key.clone(), entry.clone()).await;
            Ok(entry)
        }
        Err(f) => {
            if matches!(f, UpstreamFailure::BudgetExhausted { .. }) {
                gw.metrics.upstream_budget_exhausted.inc();
                gw.metrics
                    .upstream_requests
                    .get_or_create(&labels("budget_exhausted"))
                    .inc();
            }
            let up = &rt.config.upstream;
            state.on_failure(&f, (up.breaker_failures, up.breaker_cooldown), &gw.metrics);
            tracing::warn!(
                account = %state.account.name,
                route = %route.path,
                failure = %f,
                elapsed_ms = elapsed.as_millis() as u64,
                "upstream fetch failed"
            );
            Err(f)
        }
    }
}

/// A fresh entry stored by a fill that finished just before this one started.
async fn reuse_fresh(cache: &CacheStore, key: &CacheKey) -> Option<Arc<Entry>> {
    let e = cache.get(key).await?;
    (e.age(Instant::now()) < e.ttl).then_some(e)
}
