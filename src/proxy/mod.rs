//! The caller-facing request handler: the pipeline, top to bottom.
//!
//! client address → shape → authenticate → rate limit → route → cache (or [`miss`]) → redact →
//! respond. At the cache step a fresh answer this thread served before comes from the thread's
//! own ready copy (the cache's front, `cache::hot`), which skips the store and the redaction
//! lookup; anything else goes the long way. The client address is the TCP peer, or behind `server.trusted_proxies` the
//! forwarded one (`forwarded`); it is what the failed-auth throttle counts and the access log
//! names. Each step is a call into the room that owns it, walking one request context
//! ([`Ctx`]) that collects what the access log and metrics need. Rooms here: [`shape`] (refusals before any
//! key is looked at), [`miss`] (what a cache miss does, handed to the cache as a fetch),
//! [`respond`] (headers, 304, request ids), [`access_log`] (the log line and request
//! metrics). Sockets, connection limits and panics are `server`'s; the error→status table is
//! `error`'s. With `[tracing]`, the request is a server span (`telemetry`), started first and
//! ended after the access line; without it, the span is `None` and costs one branch.

pub(crate) mod access_log;
pub(crate) mod miss;
pub(crate) mod respond;
pub(crate) mod shape;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response};
use tokio::time::Instant;

pub use respond::RequestId;
pub use shape::HasBody;

use crate::auth::{self, Credential};
use crate::cache::{CacheKey, CacheStatus, Entry, Lookup, Origin};
use crate::config::{Client, KeyRef};
use crate::error::GatewayError;
use crate::gateway::{ClientState, Gateway, Generation};
use crate::metrics::{ClientLabel, ReasonLabel, RequestLabels};
use crate::rate_limit::RateLimitInfo;
use crate::redact::RedactError;
use crate::routing;
use crate::telemetry::{Finished, ServerSpan};
use crate::units::unix_ms;
use crate::upstream::UpstreamFailure;
use miss::Miss;

/// One request on its way through the pipeline: where it came from, and what the access log
/// and metrics will say about it.
struct Ctx<'g> {
    gw: &'g Arc<Gateway>,
    /// The config generation the request started with (a reload never changes it mid-way).
    generation: &'g Arc<Generation>,
    /// The caller's address: the TCP peer, or the forwarded client behind a trusted proxy.
    client_ip: IpAddr,
    client: Option<usize>,
    /// Which of the client's keys the request carried.
    key: Option<usize>,
    route: Option<usize>,
    cache: Option<CacheStatus>,
    /// Upstream fetch time, when this request waited for one (MISS).
    upstream: Option<Duration>,
    rate_limit: Option<RateLimitInfo>,
    /// The server span, when tracing is on.
    /// Boxed: a span is large, and without tracing the request's future carries only `None`.
    trace: Option<Box<ServerSpan>>,
    /// When the request was handed over, on the monotonic clock and the wall clock: the one
    /// pair of clock reads that every step of the request shares (freshness, Age, key expiry,
    /// last-used times); the access line's time is `wall` + the latency.
    started: Instant,
    wall: SystemTime,
}

/// Handles one caller request. Never panics on input; never sends caller bytes upstream.
pub async fn handle<B>(gw: Arc<Gateway>, peer: IpAddr, req: Request<B>) -> Response<Bytes> {
    let request_id = RequestId::from_headers(req.headers());
    handle_with_id(&gw, peer, req, &request_id).await
}

/// [`handle`] with the request id already taken (the server takes it first, so that even a
/// panic or timeout answer carries it).
pub(crate) async fn handle_with_id<B>(
    gw: &Arc<Gateway>,
    peer: IpAddr,
    req: Request<B>,
    request_id: &RequestId,
) -> Response<Bytes> {
    let started = Instant::now();
    let wall = SystemTime::now();
    // A guard, not a new `Arc`: no shared reference count is written per request; a miss
    // clones the `Arc` for its fill.
    let guard = gw.peek();
    let generation: &Arc<Generation> = &guard;
    let client_ip = generation
        .config
        .server
        .trusted_proxies
        .client_ip(peer, req.headers());
    let trace = gw
        .telemetry
        .as_ref()
        .and_then(|t| t.server_span(req.headers()))
        .map(Box::new);
    let mut ctx = Ctx {
        generation,
        gw,
        client_ip,
        client: None,
        key: None,
        route: None,
        cache: None,
        upstream: None,
        rate_limit: None,
        trace,
        started,
        wall,
    };
    let mut resp = match pipeline(&mut ctx, &req).await {
        Ok(r) => r,
        Err(e) => {
            if matches!(e, GatewayError::Internal | GatewayError::UpstreamError) {
                tracing::debug!(request_id = request_id.as_str(), error = %e, "request failed");
            }
            e.to_response(request_id.as_str())
        }
    };
    request_id.stamp(&mut resp);
    if let Some(info) = ctx.rate_limit {
        respond::rate_limit_headers(resp.headers_mut(), info);
    }
    record(&ctx, &req, &resp, request_id);
    if let Some(span) = ctx.trace.take() {
        finish_trace(*span, &ctx, &req, &resp, request_id);
    }
    resp
}

async fn pipeline<B>(ctx: &mut Ctx<'_>, req: &Request<B>) -> Result<Response<Bytes>, GatewayError> {
    let generation = ctx.generation;
    let config = &generation.config;
    shape::check(&config.server.conn, req)?;

    // 1. authenticate (one clock read serves the key's expiry and its last-used time)
    let now_ms = unix_ms(ctx.wall);
    let found = authenticate(ctx.gw, generation, ctx.client_ip, req.headers(), now_ms)?;
    let client = &config.clients[found.client];
    ctx.client = Some(found.client);
    ctx.key = Some(found.key);
    let state = &generation.clients[found.client];
    state.usage.touch(now_ms);
    if let Some(key) = state.keys.get(found.key) {
        key.touch(now_ms);
    }

    // 2. rate limit
    if let Some(limiter) = &state.limiter {
        match limiter.decide(ctx.gw.redis.as_deref(), &client.name).await {
            Ok(info) => ctx.rate_limit = Some(info),
            Err((info, retry_after)) => {
                ctx.rate_limit = Some(info);
                state.usage.rate_limited.fetch_add(1, Ordering::Relaxed);
                ctx.gw
                    .metrics
                    .rate_limited
                    .get_or_create(&ClientLabel {
                        client: client.name.clone(),
                    })
                    .inc();
                return Err(GatewayError::RateLimited { retry_after });
            }
        }
    }

    // 3. route
    let path = routing::normalize(req.uri().path()).map_err(|_| GatewayError::NotFound)?;
    let route_idx = *config
        .route_by_path
        .get(path.as_ref())
        .ok_or(GatewayError::NotFound)?;
    let route = &config.routes[route_idx];
    ctx.route = Some(route_idx);
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(GatewayError::MethodNotAllowed);
    }
    if !client.allowed_routes[route_idx] {
        return Err(GatewayError::Forbidden);
    }
    let query = if route.forward_query {
        routing::canonical_query(req.uri().query()).map_err(|_| GatewayError::NotFound)?
    } else {
        None
    };

    // 4. cache, or fetch on a miss
    let account = &generation.accounts[client.account];
    let owned_key;
    let key = match query {
        None => &generation.route_keys[client.account][route_idx],
        Some(q) => {
            owned_key = CacheKey::new(
                account.account.name.clone(),
                account.account.key_fp,
                route.path.clone(),
                Some(q),
            );
            &owned_key
        }
    };
    let profile = client.profile.map(|i| &config.profiles[i]);
    let now = ctx.started;
    // Read before the store is asked: a hit remembered under it is never newer than a purge.
    let epoch = ctx.gw.cache.epoch();
    // 4a. this thread's own copy of a fresh answer (no shared cache line written)
    if let Some(hot) = ctx.gw.cache.hot(epoch, key, profile, now, route.ttl) {
        ctx.cache = Some(CacheStatus::Hit);
        count_answer(state, CacheStatus::Hit, false);
        return Ok(respond::served(
            req,
            hot.fetched_at,
            hot.rendered,
            CacheStatus::Hit,
            route.ttl.as_secs(),
            now,
        ));
    }
    let lookup = ctx.gw.cache.lookup(key, now, route.ttl, generation.stale);
    let miss = || Miss {
        gw: ctx.gw.clone(),
        generation: generation.clone(),
        key: key.clone(),
        account: account.clone(),
        route: route.clone(),
        deadline: now + config.server.request_timeout,
        caused: state.calls_caused.clone(),
        // Only a miss needs the span's context (a hit never clones it).
        parent: ctx.trace.as_ref().map(|s| s.context().clone()),
    };
    // `joined`: this request waited for a fetch another request started.
    let (entry, status, joined) = match lookup {
        Lookup::Fresh(e) => (e, CacheStatus::Hit, false),
        Lookup::Revalidate(e) => {
            // Serve at once; one background refresh (joins any fill already running).
            drop(miss().fill());
            ctx.gw
                .metrics
                .stale_served
                .get_or_create(&ReasonLabel {
                    reason: "revalidate",
                })
                .inc();
            (e, CacheStatus::Stale, false)
        }
        // Boxed: what waiting for a fill holds lives on the heap, only for misses, so the
        // future of every request (hits included) stays small and cheap to move.
        Lookup::Miss { stale } => {
            let m = miss();
            Box::pin(wait_for_fill(ctx, m, stale)).await?
        }
    };
    ctx.cache = Some(status);
    if let (CacheStatus::Miss, Origin::Upstream(took)) = (status, entry.origin) {
        ctx.upstream = Some(took);
    }
    count_answer(state, status, joined);

    // 5. redact
    let rendered = entry.body_for(profile).map_err(|e| {
        match e {
            RedactError::NotJson => tracing::error!(
                client = %client.name,
                "upstream body could not be redacted; answering 502 (fail closed)"
            ),
            // The new paths were logged (WARN) when the answer was fetched; this repeats
            // for every request while the answer is cached.
            RedactError::NewFields => tracing::debug!(
                client = %client.name,
                route = %route.path,
                "answer has fields outside the route's baseline and the client's profile blocks them; answering 502"
            ),
        }
        GatewayError::UpstreamError
    })?;
    if status == CacheStatus::Hit {
        ctx.gw
            .cache
            .remember(epoch, key, profile, &entry, &rendered);
    }

    // 6. respond
    Ok(respond::served(
        req,
        entry.fetched_at,
        rendered,
        status,
        route.ttl.as_secs(),
        now,
    ))
}

/// Counts how a request was answered, for the client: a hit, and a call avoided when it made
/// no upstream call of its own (`joined`: it waited for a fetch another request started).
/// Calls caused are counted by the fetch itself, per upstream attempt.
fn count_answer(state: &ClientState, status: CacheStatus, joined: bool) {
    let avoided = match status {
        CacheStatus::Miss => joined,
        CacheStatus::Hit | CacheStatus::SharedHit => {
            state.usage.hits.fetch_add(1, Ordering::Relaxed);
            true
        }
        CacheStatus::Stale => true,
    };
    if avoided {
        state.calls_avoided.inc();
    }
}

/// A miss: joins or starts the fill of the key and waits for it until the request's deadline;
/// on failure serves `stale` when there is one. Returns the entry, how it was produced, and
/// whether this request joined a fill another request started.
async fn wait_for_fill(
    ctx: &mut Ctx<'_>,
    miss: Miss,
    stale: Option<Arc<Entry>>,
) -> Result<(Arc<Entry>, CacheStatus, bool), GatewayError> {
    let deadline = miss.deadline;
    let (flight, joined) = miss.fill();
    let was_joined = joined.is_some();
    if let Some(link) = joined {
        ctx.gw.metrics.coalesced.inc();
        if let (Some(span), Some(fill)) = (ctx.trace.as_mut(), link) {
            span.waited_on(&fill);
        }
    }
    let result = tokio::time::timeout_at(deadline, flight)
        .await
        .unwrap_or(Err(UpstreamFailure::Timeout));
    Ok(match (result, stale) {
        // Another replica's fetch, read from Redis: no upstream call was waited for.
        (Ok(e), _) if e.origin == Origin::Replica => (e, CacheStatus::SharedHit, was_joined),
        (Ok(e), _) => (e, CacheStatus::Miss, was_joined),
        (Err(_), Some(e)) => {
            ctx.gw
                .metrics
                .stale_served
                .get_or_create(&ReasonLabel { reason: "error" })
                .inc();
            (e, CacheStatus::Stale, was_joined)
        }
        (Err(f), None) => return Err(GatewayError::from(f)),
    })
}

/// The client and key the request carries. The failed-auth throttle is asked first, so an
/// address over its budget is refused before any key is looked at. An expired key is refused
/// exactly like an unknown one (the caller learns nothing more); the log names the client and
/// the key's id for the operator.
fn authenticate(
    gw: &Gateway,
    generation: &Generation,
    client_ip: IpAddr,
    headers: &http::HeaderMap,
    now_ms: u64,
) -> Result<KeyRef, GatewayError> {
    if let Some(t) = &generation.auth_throttle {
        if let Err(retry_after) = t.check(client_ip) {
            gw.metrics.auth_throttled.inc();
            return Err(GatewayError::AuthThrottled { retry_after });
        }
    }
    let found = match auth::credential(headers) {
        Credential::Key(k) => auth::lookup(&generation.config.key_to_client, k),
        Credential::Missing | Credential::Malformed => None,
    };
    let Some(found) = found else {
        gw.auth_failed(generation, client_ip);
        return Err(GatewayError::Unauthorized);
    };
    let client: &Client = &generation.config.clients[found.client];
    let key = &client.keys[found.key];
    if key.expired_at(now_ms) {
        let usage = generation.clients[found.client].keys.get(found.key);
        let log = usage.is_none_or(|u| u.refused_expired(now_ms));
        if let Some(expires) = key.expires.filter(|_| log) {
            tracing::warn!(
                client = %client.name,
                key = %key.label,
                expired = %humantime::format_rfc3339_seconds(expires),
                "expired key: request refused with 401"
            );
        }
        gw.auth_failed(generation, client_ip);
        return Err(GatewayError::Unauthorized);
    }
    Ok(found)
}

/// Writes the access line and counts the request.
fn record<B>(ctx: &Ctx<'_>, req: &Request<B>, resp: &Response<Bytes>, request_id: &RequestId) {
    let elapsed = ctx.started.elapsed();
    let status = resp.status().as_u16();
    let cache = ctx.cache.map_or("NONE", CacheStatus::label);
    let config = &ctx.generation.config;
    let client = ctx.client.map(|i| &config.clients[i].name);
    let key = ctx
        .client
        .zip(ctx.key)
        .and_then(|(c, k)| config.clients[c].keys.get(k))
        .map(|k| &*k.label);
    let route = ctx.route.map(|i| &config.routes[i].path);
    ctx.gw.metrics.request_duration.observe(elapsed);
    if access_log::enabled() {
        access_log::write(&access_log::Line {
            request_id: request_id.as_str(),
            client: client.map_or("anonymous", |c| c),
            key,
            client_ip: ctx.client_ip,
            route: route.map_or("other", |r| r),
            method: shape::method_label(req.method()),
            status,
            cache,
            latency: elapsed,
            upstream: ctx.upstream,
            trace_id: ctx.trace.as_ref().and_then(|s| s.trace_id()),
            time: ctx.wall + elapsed,
        });
    }
    // The common case (200 HIT) uses a counter handle made at config load: no label hashing.
    if let (200, Some(CacheStatus::Hit), Some(c), Some(r)) =
        (status, ctx.cache, ctx.client, ctx.route)
    {
        if let Some(counter) = ctx
            .generation
            .clients
            .get(c)
            .and_then(|c| c.hits_200.get(r))
        {
            counter.inc();
            return;
        }
    }
    static ANON: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    static OTHER: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    ctx.gw
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            client: client
                .cloned()
                .unwrap_or_else(|| ANON.get_or_init(|| "anonymous".into()).clone()),
            route: route
                .cloned()
                .unwrap_or_else(|| OTHER.get_or_init(|| "other".into()).clone()),
            status,
            cache,
        })
        .inc();
}

/// Ends the server span with what the access line says.
fn finish_trace<B>(
    span: ServerSpan,
    ctx: &Ctx<'_>,
    req: &Request<B>,
    resp: &Response<Bytes>,
    request_id: &RequestId,
) {
    let config = &ctx.generation.config;
    span.finish(&Finished {
        method: shape::method_label(req.method()),
        route: ctx.route.map(|i| &config.routes[i].path),
        client: ctx.client.map(|i| &config.clients[i].name),
        status: resp.status().as_u16(),
        cache: ctx.cache.map_or("NONE", CacheStatus::label),
        request_id: request_id.as_str(),
        client_ip: ctx.client_ip,
    });
}
