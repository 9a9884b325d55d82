//! The admin listener: health, readiness, metrics, cache, usage and schema-drift views, purge
//! and reload.
//!
//! Served only on `server.admin_listen`, never on the caller port. When
//! `server.admin_token_sha256` is set, every route but `/healthz` and `/readyz` needs
//! `Authorization: Bearer <token>` (compared by hash, in constant time). Answers never contain
//! bodies, keys or key hashes: `/admin/clients` names each key by its id, or by `sha256:` and
//! the first 8 hex digits of its hash.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::auth::KeyHash;
use crate::gateway::Gateway;

/// The admin router.
pub(crate) fn router(gw: Arc<Gateway>) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/admin/cache/purge", post(purge))
        .route("/admin/reload", post(reload))
        .route("/admin/clients", get(clients))
        .route("/admin/cache", get(cache))
        .route("/admin/schema", get(schema))
        .route_layer(middleware::from_fn_with_state(gw.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such admin route") })
        .with_state(gw)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"status": status.as_u16(), "code": code, "message": message}});
    (status, Json(body)).into_response()
}

async fn require_token(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    let expected: Option<KeyHash> = gw.peek().config.server.admin_token;
    if let Some(expected) = expected {
        // Only `Authorization: Bearer <token>`, as the contract says (not the caller forms).
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
            .map(|v| v[7..].trim_ascii());
        let ok = token.is_some_and(|t| !t.is_empty() && KeyHash::of(t).ct_eq(&expected));
        if !ok {
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "admin token required",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return resp;
        }
    }
    next.run(req).await
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    if gw.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "not ready")
    }
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    gw.cache.sync();
    gw.metrics.cache_entries.set(gw.cache.entry_count() as i64);
    gw.metrics.cache_bytes.set(gw.cache.weighted_size() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gw.metrics.encode(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct PurgeQuery {
    account: Option<String>,
}

async fn purge(State(gw): State<Arc<Gateway>>, Query(q): Query<PurgeQuery>) -> Response {
    let generation = gw.current();
    let state = match &q.account {
        Some(a) => match generation.accounts.iter().find(|s| *s.account.name == **a) {
            Some(s) => Some(s.clone()),
            None => return error(StatusCode::NOT_FOUND, "not_found", "no such account"),
        },
        None => None,
    };
    gw.cache.sync();
    let before = gw.cache.entry_count();
    gw.cache.purge(q.account.as_deref());
    gw.cache.sync();
    let purged = before.saturating_sub(gw.cache.entry_count());
    // The shared L2 too, or the next miss would refill from it; then every other replica
    // drops its own copies (announced through Redis).
    let (redis_purged, replicas) = match &gw.redis {
        Some(redis) => {
            let l2 = redis
                .purge(state.as_ref().map(|s| s.account.tag.as_str()))
                .await;
            let announced = redis.announce_purge(q.account.as_deref()).await;
            (
                l2.map_or(json!("redis unavailable"), |n| json!(n)),
                json!(if announced.is_some() {
                    "notified"
                } else {
                    "redis unavailable: other replicas keep their copies until their TTL"
                }),
            )
        }
        None => (serde_json::Value::Null, serde_json::Value::Null),
    };
    tracing::info!(
        account = q.account.as_deref().unwrap_or("*"),
        purged,
        "cache purged"
    );
    Json(json!({"purged": purged, "account": q.account, "redis_purged": redis_purged, "replicas": replicas}))
        .into_response()
}

async fn reload(State(gw): State<Arc<Gateway>>) -> Response {
    match gw.reload().await {
        Ok(()) => Json(json!({"status": "reloaded"})).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, "invalid_config", &e.to_string()),
    }
}

async fn clients(State(gw): State<Arc<Gateway>>) -> Response {
    let rt = gw.current();
    let now_ms = crate::units::unix_ms(std::time::SystemTime::now());
    let list: Vec<_> = rt
        .config
        .clients
        .iter()
        .zip(&rt.clients)
        .map(|(c, r)| {
            let last = r.usage.last_seen.load(Ordering::Relaxed);
            let keys: Vec<_> = c
                .keys
                .iter()
                .zip(&r.keys)
                .map(|(k, u)| {
                    let last_used = u.last_used_ms.load(Ordering::Relaxed);
                    json!({
                        "id": &*k.label,
                        "expires": k.expires.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                        "expired": k.expired_at(now_ms),
                        "requests": u.requests.load(Ordering::Relaxed),
                        "last_used": (last_used > 0).then(|| rfc3339_ms(last_used)),
                        "last_used_unix_ms": (last_used > 0).then_some(last_used),
                        "expired_refused": u.expired_refused.load(Ordering::Relaxed),
                    })
                })
                .collect();
            json!({
                "name": &*c.name,
                "account": &*rt.config.accounts[c.account].name,
                "profile": c.profile.map(|p| rt.config.profiles[p].name.clone()),
                "rate": c.rate.map(|r| r.to_string()),
                "burst": c.rate.map(|_| c.burst),
                "requests": r.usage.requests.load(Ordering::Relaxed),
                "hits": r.usage.hits.load(Ordering::Relaxed),
                "rate_limited": r.usage.rate_limited.load(Ordering::Relaxed),
                "last_seen_unix": (last > 0).then_some(last),
                "upstream_calls_caused": r.calls_caused.get(),
                "upstream_calls_avoided": r.calls_avoided.get(),
                "keys": keys,
            })
        })
        .collect();
    Json(json!({ "clients": list })).into_response()
}

/// Unix milliseconds as RFC 3339 with milliseconds (`2027-03-31T09:15:02.123Z`).
fn rfc3339_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Per route: its baseline and the new field paths this process has met (paths only, never
/// values).
async fn schema(State(gw): State<Arc<Gateway>>) -> Response {
    let generation = gw.current();
    let mut seen: std::collections::BTreeMap<_, _> = gw.schema.snapshot().into_iter().collect();
    let time = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let route_json = |path: &str,
                      baseline: Option<&crate::config::Baseline>,
                      r: crate::drift::seen::RouteSeen| {
        let fields: Vec<_> = r
            .paths
            .iter()
            .map(|(p, s)| {
                json!({
                    "path": p,
                    "first_seen": time(s.first_seen),
                    "last_seen": time(s.last_seen),
                    "answers": s.answers,
                })
            })
            .collect();
        json!({
            "route": path,
            "baseline": baseline.map(|b| b.source.as_str()),
            "known_paths": baseline.map(|b| b.shape.len()),
            "answers_with_new_fields": r.answers,
            "new_fields": fields,
            "unlisted": r.unlisted,
        })
    };
    let mut routes: Vec<_> = generation
        .config
        .routes
        .iter()
        .map(|r| {
            let record = seen.remove(&r.path).unwrap_or_default();
            route_json(&r.path, r.baseline.as_ref(), record)
        })
        .collect();
    // Routes a reload removed keep what was seen on them.
    routes.extend(seen.into_iter().map(|(p, r)| route_json(&p, None, r)));
    Json(json!({ "routes": routes })).into_response()
}

async fn cache(State(gw): State<Arc<Gateway>>) -> Response {
    gw.cache.sync();
    let now = Instant::now();
    let mut by_account: std::collections::BTreeMap<String, Vec<serde_json::Value>> =
        Default::default();
    let generation = gw.current();
    for (key, entry) in gw.cache.snapshot() {
        let ttl = generation
            .config
            .route_by_path
            .get(key.route())
            .map_or(generation.config.cache.ttl, |i| {
                generation.config.routes[*i].ttl
            });
        by_account
            .entry(key.account().to_string())
            .or_default()
            .push(json!({
                "route": key.route(),
                "query": key.query(),
                "age_s": entry.age(now).as_secs(),
                "ttl_s": ttl.as_secs(),
                "fresh": entry.age(now) < ttl,
                "bytes": entry.raw.body.len(),
            }));
    }
    let accounts: Vec<_> = by_account
        .into_iter()
        .map(|(account, entries)| json!({"account": account, "count": entries.len(), "entries": entries}))
        .collect();
    Json(json!({
        "entries": gw.cache.entry_count(),
        "weighted_bytes": gw.cache.weighted_size(),
        "accounts": accounts,
    }))
    .into_response()
}
