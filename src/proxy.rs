//! The caller-facing request handler: the pipeline, top to bottom.
//!
//! authenticate → rate limit → route → cache-or-fetch → redact → respond. Each step is a call
//! into the module that owns it; this file only sequences them, assembles the response
//! headers and writes one access-log event. Socket handling, connection limits and panics
//! are in `server`; the error→status table is in `error`.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use tokio::time::Instant;

use crate::auth::{self, Credential};
use crate::cache::fill::{get_or_fetch, FillSpec};
use crate::cache::{CacheKey, CacheStatus, Entry};
use crate::config::Client;
use crate::error::GatewayError;
use crate::metrics::{ClientLabel, RequestLabels};
use crate::rate_limit::RateLimitInfo;
use crate::routing;
use crate::state::{Gateway, Runtime};
use crate::upstream::UpstreamFailure;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
static RL_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RL_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RL_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
const VARY: HeaderValue = HeaderValue::from_static("Authorization, X-Api-Key");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// What the access log and metrics need to know about a finished request.
struct Outcome {
    client: Option<Arc<str>>,
    route: Option<Arc<str>>,
    cache: Option<CacheStatus>,
    /// Upstream fetch time, when this request waited for one (MISS).
    upstream: Option<std::time::Duration>,
    client_idx: Option<usize>,
    route_idx: Option<usize>,
}

/// Handles one caller request. Never panics on input; never sends caller bytes upstream.
pub async fn handle<B>(gw: Arc<Gateway>, peer: IpAddr, req: Request<B>) -> Response<Bytes> {
    let started = Instant::now();
    let rt = gw.runtime.load_full();
    let request_id = request_id(req.headers());
    let mut outcome = Outcome {
        client: None,
        route: None,
        cache: None,
        upstream: None,
        client_idx: None,
        route_idx: None,
    };
    let mut rl_info = None;
    let result = pipeline(&gw, &rt, peer, &req, &mut outcome, &mut rl_info).await;
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            if matches!(e, GatewayError::Internal | GatewayError::UpstreamError) {
                tracing::debug!(request_id = %request_id, error = %e, "request failed");
            }
            e.to_response(&request_id)
        }
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::try_from(request_id.as_str()) {
        h.insert(X_REQUEST_ID.clone(), v);
    }
    if let Some(info) = rl_info {
        set_rate_limit_headers(h, info);
    }
    record(&gw, &rt, &req, &resp, &outcome, &request_id, started);
    resp
}

async fn pipeline<B>(
    gw: &Arc<Gateway>,
    rt: &Arc<Runtime>,
    peer: IpAddr,
    req: &Request<B>,
    outcome: &mut Outcome,
    rl_info: &mut Option<RateLimitInfo>,
) -> Result<Response<Bytes>, GatewayError> {
    check_request_shape(rt, req)?;

    // 1. authenticate
    let client = authenticate(gw, rt, peer, req.headers())?;
    let client_rt = &rt.clients[client.index];
    outcome.client = Some(client.name.clone());
    outcome.client_idx = Some(client.index);
    client_rt.usage.touch();

    // 2. rate limit
    if let Some(limiter) = &client_rt.limiter {
        // Shared across replicas when Redis is up; the local limiter otherwise.
        let decision = match &gw.shared {
            Some(shared) => match shared
                .rate_limit(&client.name, limiter.rate, limiter.burst)
                .await
            {
                Some(d) => d,
                None => limiter.check(),
            },
            None => limiter.check(),
        };
        match decision {
            Ok(info) => *rl_info = Some(info),
            Err((info, retry_after)) => {
                *rl_info = Some(info);
                client_rt
                    .usage
                    .rate_limited
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                gw.metrics
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
    let route_idx = *rt
        .config
        .route_by_path
        .get(path.as_ref())
        .ok_or(GatewayError::NotFound)?;
    let route = &rt.config.routes[route_idx];
    outcome.route = Some(route.path.clone());
    outcome.route_idx = Some(route_idx);
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

    // 4. cache or fetch
    let account = &rt.config.accounts[client.account];
    let spec = FillSpec {
        key: CacheKey {
            account: account.name.clone(),
            key_fp: rt.accounts[client.account].key_fp,
            route: route.path.clone(),
            query: query.map(Arc::from),
        },
        account: client.account,
        route,
    };
    let deadline = Instant::now() + rt.config.server.request_timeout;
    let (entry, status) = get_or_fetch(gw, rt, &spec, deadline)
        .await
        .map_err(upstream_error)?;
    outcome.cache = Some(status);
    if status == CacheStatus::Miss {
        outcome.upstream = entry.fetch_latency;
    }
    if status == CacheStatus::Hit {
        client_rt
            .usage
            .hits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let entry = current_generation(gw, rt, &spec.key, entry).await;

    // 5. redact
    let profile = client.profile.map(|i| (i, rt.config.profiles[i].as_ref()));
    let rendered = entry.body_for(profile).map_err(|_| {
        tracing::error!(
            client = %client.name,
            "upstream body could not be redacted; answering 502 (fail closed)"
        );
        GatewayError::UpstreamError
    })?;

    // 6. respond
    Ok(respond(req, &entry, rendered, status))
}

fn check_request_shape<B>(rt: &Runtime, req: &Request<B>) -> Result<(), GatewayError> {
    let limits = &rt.config.server;
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > limits.max_uri_bytes {
        return Err(GatewayError::UriTooLong);
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge);
    }
    // Absolute-form and authority-form targets are proxy requests: not ours to serve. (An
    // HTTP/2 request always carries :scheme and :authority; its target is :path.)
    let proxy_form = req.uri().scheme().is_some() || req.uri().authority().is_some();
    if proxy_form && req.version() < http::Version::HTTP_2 {
        return Err(GatewayError::BadRequest);
    }
    check_method_and_framing(req)
}

/// Refusals that need no key and no route: proxy and echo methods (405), any
/// `Transfer-Encoding` (hyper drops a `Content-Length` sent beside it, so this also covers
/// CL+TE smuggling attempts; nothing here takes a body anyway), and a body on GET or HEAD (400).
/// A body is never read, so it can never be forwarded.
fn check_method_and_framing<B>(req: &Request<B>) -> Result<(), GatewayError> {
    if req.method() == Method::CONNECT || req.method() == Method::TRACE {
        return Err(GatewayError::MethodNotAllowed);
    }
    let h = req.headers();
    if h.contains_key(header::TRANSFER_ENCODING)
        || h.get_all(header::CONTENT_LENGTH).iter().count() > 1
    {
        return Err(GatewayError::BadRequest);
    }
    let has_body = req.extensions().get::<crate::server::HasBody>().is_some()
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body && (req.method() == Method::GET || req.method() == Method::HEAD) {
        return Err(GatewayError::BadRequest);
    }
    Ok(())
}

fn authenticate<'a>(
    gw: &Gateway,
    rt: &'a Runtime,
    peer: IpAddr,
    headers: &HeaderMap,
) -> Result<&'a Arc<Client>, GatewayError> {
    if let Some(t) = &rt.auth_throttle {
        if let Err(retry_after) = t.check(peer) {
            gw.metrics.auth_throttled.inc();
            return Err(GatewayError::AuthThrottled { retry_after });
        }
    }
    let found = match auth::credential(headers) {
        Credential::Key(k) => auth::lookup(&rt.config.key_to_client, k),
        Credential::Missing | Credential::Malformed => None,
    };
    match found {
        Some(i) => Ok(&rt.config.clients[i]),
        None => {
            gw.auth_failed(rt, peer);
            Err(GatewayError::Unauthorized)
        }
    }
}

fn upstream_error(f: UpstreamFailure) -> GatewayError {
    match f {
        UpstreamFailure::Timeout => GatewayError::UpstreamTimeout,
        UpstreamFailure::RateLimited { retry_after }
        | UpstreamFailure::BudgetExhausted { retry_after }
        | UpstreamFailure::Paused { retry_after } => GatewayError::UpstreamUnavailable {
            retry_after: Some(retry_after),
        },
        UpstreamFailure::Connect
        | UpstreamFailure::Status(_)
        | UpstreamFailure::Unauthorized(_)
        | UpstreamFailure::TooLarge
        | UpstreamFailure::Body
        | UpstreamFailure::InvalidBody => GatewayError::UpstreamError,
    }
}

/// An entry from an older config generation is re-keyed to the current profile table.
async fn current_generation(
    gw: &Gateway,
    rt: &Runtime,
    key: &CacheKey,
    entry: Arc<Entry>,
) -> Arc<Entry> {
    if entry.generation == rt.generation {
        return entry;
    }
    let ttl = rt
        .config
        .route_by_path
        .get(&key.route)
        .map_or(entry.ttl, |i| rt.config.routes[*i].ttl);
    let rebased = Arc::new(entry.rebase(rt.generation, rt.config.profiles.len(), ttl));
    gw.cache.insert(key.clone(), rebased.clone()).await;
    rebased
}

fn respond<B>(
    req: &Request<B>,
    entry: &Entry,
    rendered: &crate::cache::Rendered,
    status: CacheStatus,
) -> Response<Bytes> {
    let now = Instant::now();
    let not_modified = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| etag_matches(v.as_bytes(), rendered.etag.as_bytes()));
    let body = if not_modified || req.method() == Method::HEAD {
        Bytes::new()
    } else {
        rendered.body.clone()
    };
    let mut resp = Response::new(body);
    resp.headers_mut().reserve(12);
    if not_modified {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, JSON);
    h.insert(X_CACHE.clone(), HeaderValue::from_static(status.as_str()));
    h.insert(header::AGE, HeaderValue::from(entry.age(now).as_secs()));
    h.insert(header::ETAG, rendered.etag.clone());
    h.insert(
        header::CACHE_CONTROL,
        cache_control(entry.fresh_secs_left(now)),
    );
    h.insert(header::VARY, VARY);
    if req.method() == Method::HEAD && !not_modified {
        h.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(rendered.body.len()),
        );
    }
    resp
}

/// `private, max-age=N` built on the stack (no heap formatting on the hit path).
fn cache_control(max_age: u64) -> HeaderValue {
    const PREFIX: &[u8] = b"private, max-age=";
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(max_age).as_bytes();
    let mut buf = [0u8; PREFIX.len() + 20];
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    buf[PREFIX.len()..PREFIX.len() + digits.len()].copy_from_slice(digits);
    HeaderValue::from_bytes(&buf[..PREFIX.len() + digits.len()])
        .unwrap_or(HeaderValue::from_static("private, max-age=0"))
}

/// `If-None-Match` semantics (weak comparison): `*` or any listed tag equal to ours.
fn etag_matches(header: &[u8], etag: &[u8]) -> bool {
    header.split(|b| *b == b',').any(|t| {
        let t = trim_ascii(t);
        let t = t.strip_prefix(b"W/").unwrap_or(t);
        t == b"*" || t == etag
    })
}

fn trim_ascii(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

fn set_rate_limit_headers(h: &mut HeaderMap, info: RateLimitInfo) {
    h.insert(RL_LIMIT.clone(), HeaderValue::from(info.limit));
    h.insert(RL_REMAINING.clone(), HeaderValue::from(info.remaining));
    h.insert(RL_RESET.clone(), HeaderValue::from(info.reset_secs));
}

/// The caller's `X-Request-Id` when sane (1-128 of `[A-Za-z0-9._-]`), else a new random one.
fn request_id(headers: &HeaderMap) -> String {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        {
            // Checked ASCII above.
            return String::from_utf8_lossy(b).into_owned();
        }
    }
    format!("{:032x}", rand::random::<u128>())
}

fn record<B>(
    gw: &Gateway,
    rt: &Runtime,
    req: &Request<B>,
    resp: &Response<Bytes>,
    o: &Outcome,
    request_id: &str,
    started: Instant,
) {
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    let cache = o.cache.map_or("NONE", CacheStatus::as_str);
    static ANON: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    static OTHER: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    let client = o
        .client
        .clone()
        .unwrap_or_else(|| ANON.get_or_init(|| "anonymous".into()).clone());
    let route = o
        .route
        .clone()
        .unwrap_or_else(|| OTHER.get_or_init(|| "other".into()).clone());
    gw.metrics.request_duration.observe(elapsed.as_secs_f64());
    tracing::info!(
        target: "gcore_gateway::access",
        request_id,
        client = %client,
        route = %route,
        method = %req.method(),
        status,
        cache,
        latency_us = elapsed.as_micros() as u64,
        upstream_us = o.upstream.map(|d| d.as_micros() as u64),
    );
    // The common case (200 HIT) uses a counter handle made at config load: no label hashing.
    if let (200, Some(CacheStatus::Hit), Some(c), Some(r)) =
        (status, o.cache, o.client_idx, o.route_idx)
    {
        if let Some(counter) = rt.clients.get(c).and_then(|c| c.hits_200.get(r)) {
            counter.inc();
            return;
        }
    }
    gw.metrics
        .requests
        .get_or_create(&RequestLabels {
            client,
            route,
            status,
            cache,
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_forms() {
        assert!(etag_matches(b"\"a\"", b"\"a\""));
        assert!(etag_matches(b"W/\"a\"", b"\"a\""));
        assert!(etag_matches(b"\"x\", \"a\"", b"\"a\""));
        assert!(etag_matches(b"*", b"\"a\""));
        assert!(!etag_matches(b"\"b\"", b"\"a\""));
    }

    #[test]
    fn cache_control_value() {
        assert_eq!(cache_control(0), "private, max-age=0");
        assert_eq!(cache_control(300), "private, max-age=300");
        assert_eq!(
            cache_control(u64::MAX),
            format!("private, max-age={}", u64::MAX)
        );
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-1"));
        assert_eq!(request_id(&h), "abc-1");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("bad id\"<x>"));
        assert_eq!(request_id(&h).len(), 32);
    }
}
