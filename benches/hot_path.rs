//! Micro-benchmarks of the cache-hit path, piece by piece and whole.
//!
//! | group | measures |
//! |---|---|
//! | `auth` | credential extraction from the headers; SHA-256 of the key plus the map lookup (1 and 10 000 keys) |
//! | `cache` | a hit in the moka store (1 and 10 000 entries) |
//! | `rate_limit` | one GCRA check of a client limiter that never refuses; the per-IP failed-authentication throttle lookup every request makes |
//! | `hit_path_tracing` | `proxy::handle` for a cached answer without `[tracing]`, and with it at `sample_ratio` 0 and 1 (spans exported over OTLP/HTTP to an in-process receiver) |
//! | `metrics` | the per-request counter and histogram updates (`gateway_requests_total`, `gateway_request_duration_seconds`) |
//! | `hit_path` | `proxy::handle` for a cached answer, without and with the `minimal` profile (+ a rate): authentication, limit, routing, cache, redaction lookup, response assembly, metrics |
//!
//! `cargo bench --bench hot_path` (add `-- hit_path` to run one group). The load test with real
//! sockets is `bench/run.sh`; see BENCHMARKS.md.

#![allow(missing_docs)] // criterion_group! generates undocumented functions.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
mod common;
use common::async_batched;
use criterion::{criterion_group, criterion_main, Criterion};
use gcore_gateway::auth::{self, KeyHash};
use gcore_gateway::bench_api::{
    AuthThrottle, CacheKey, CacheStore, ClientLimiter, Entry, Origin, RequestLabels, TokioClock,
    UpstreamFailure,
};
use gcore_gateway::config::units::rate;
use gcore_gateway::Gateway;
use http::{HeaderMap, HeaderValue, Request};

/// The 1.7 KB `GET /iam/clients/me` answer the load test serves.
const BODY: &[u8] = include_bytes!("../bench/body.json");
const ROUTE: &str = "/iam/clients/me";
const KEY_PLAIN: &str = "bench-plain-key-0123456789abcdef";
const KEY_MINIMAL: &str = "bench-minimal-key-0123456789abcdef";
const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn key_map(n: usize) -> gcore_gateway::auth::KeyMap<usize> {
    let mut map: gcore_gateway::auth::KeyMap<usize> = (0..n)
        .map(|i| (KeyHash::of(format!("other-key-{i}").as_bytes()), i))
        .collect();
    map.insert(KeyHash::of(KEY_PLAIN.as_bytes()), n);
    map
}

fn bench_auth(c: &mut Criterion) {
    let mut g = c.benchmark_group("auth");
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("APIKey {KEY_PLAIN}")).unwrap(),
    );
    headers.insert(http::header::HOST, HeaderValue::from_static("127.0.0.1"));
    g.bench_function("credential", |b| {
        b.iter(|| auth::credential(black_box(&headers)))
    });
    g.bench_function("sha256_of_key", |b| {
        b.iter(|| KeyHash::of(black_box(KEY_PLAIN.as_bytes())))
    });
    for n in [1, 10_000] {
        let map = key_map(n - 1);
        g.bench_function(format!("hash_and_lookup/{n}_keys"), |b| {
            b.iter(|| auth::lookup(black_box(&map), black_box(KEY_PLAIN.as_bytes())))
        });
    }
    g.finish();
}

fn cache_key(account: &str) -> CacheKey {
    CacheKey::new(account.into(), 0, ROUTE.into(), None)
}

fn bench_cache(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("cache");
    for n in [1usize, 10_000] {
        let store = CacheStore::<UpstreamFailure>::new(1 << 30);
        rt.block_on(async {
            for i in 0..n {
                let entry = Entry::new(
                    Bytes::copy_from_slice(BODY),
                    tokio::time::Instant::now(),
                    Origin::Upstream(Duration::ZERO),
                    Duration::from_secs(600),
                    1,
                );
                store.insert(cache_key(&format!("acct-{i}")), Arc::new(entry));
            }
            store.sync();
        });
        let key = cache_key(&format!("acct-{}", n / 2));
        g.bench_function(format!("get_hit/{n}_entries"), |b| {
            b.iter_custom(|iters| async_batched(&rt, iters, || (), |()| async { store.get(&key) }))
        });
    }
    g.finish();
}

fn bench_rate_limit(c: &mut Criterion) {
    // 10^9 per second with an equal burst: never refuses, so only the allow path is timed.
    let limiter = ClientLimiter::new(
        rate("1000000000/s").unwrap(),
        1_000_000_000,
        TokioClock::default(),
    );
    let mut g = c.benchmark_group("rate_limit");
    g.bench_function("client_check_allowed", |b| {
        b.iter(|| limiter.check().is_ok())
    });
    // The failed-authentication throttle is consulted on every request, before the key.
    let throttle = AuthThrottle::new(rate("30/m").unwrap(), TokioClock::default());
    g.bench_function("auth_throttle_check_unblocked_ip", |b| {
        b.iter(|| throttle.check(black_box(PEER)).is_ok())
    });
    g.finish();
}

/// A gateway whose cache already holds the answer for the bench account.
fn gateway(rt: &tokio::runtime::Runtime) -> Arc<Gateway> {
    let tables = format!(
        r#"
[profiles.minimal]
allow = [
  "$.id", "$.status", "$.deleted", "$.capabilities", "$.serviceStatuses",
  "$.paidFeatures.*[*].feature_id", "$.paidFeatures.*[*].name", "$.paidFeatures.*[*].service",
  "$.freeFeatures.*[*].feature_id", "$.freeFeatures.*[*].name", "$.freeFeatures.*[*].service",
]

[[clients]]
name = "plain"
keys = ["{plain}"]
account = "bench"

[[clients]]
name = "minimal"
keys = ["{minimal}"]
account = "bench"
profile = "minimal"
rate = "1000000000/s"
burst = 1000000000
"#,
        plain = KeyHash::of(KEY_PLAIN.as_bytes()),
        minimal = KeyHash::of(KEY_MINIMAL.as_bytes()),
    );
    common::primed_gateway(rt, &tables, BODY)
}

fn request(key: &str) -> Request<()> {
    Request::get(ROUTE)
        .header(http::header::HOST, "127.0.0.1:8080")
        .header(http::header::AUTHORIZATION, format!("APIKey {key}"))
        .header(http::header::USER_AGENT, "wrk")
        .body(())
        .unwrap()
}

fn bench_hit_path(c: &mut Criterion) {
    let rt = runtime();
    let gw = gateway(&rt);
    // Sanity: both clients get a 200 HIT (and the profile's render is made once, here).
    for key in [KEY_PLAIN, KEY_MINIMAL] {
        let resp = rt.block_on(gcore_gateway::proxy::handle(gw.clone(), PEER, request(key)));
        assert_eq!(resp.status(), 200, "bench setup: {key} not served");
        assert_eq!(resp.headers()["x-cache"], "HIT");
    }
    let mut g = c.benchmark_group("hit_path");
    for (name, key) in [
        ("no_profile", KEY_PLAIN),
        ("minimal_profile_and_rate", KEY_MINIMAL),
    ] {
        g.bench_function(format!("proxy_handle/{name}"), |b| {
            b.iter_custom(|iters| {
                async_batched(
                    &rt,
                    iters,
                    || request(key),
                    |req| gcore_gateway::proxy::handle(gw.clone(), PEER, req),
                )
            })
        });
    }
    g.bench_function("reference_build_request_not_timed_above", |b| {
        b.iter(|| request(KEY_PLAIN))
    });
    g.finish();
}

/// A primed gateway with one client (no profile, no rate) and, for `Some(ratio)`, `[tracing]`
/// at that ratio exporting (http/protobuf) to a receiver that accepts every batch. Returns the
/// receiver's runtime too (the exporter sends on it) and the receiver's batch counter.
fn traced_gateway(
    ratio: Option<f64>,
) -> (
    tokio::runtime::Runtime,
    Arc<Gateway>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let ert = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("exporter runtime");
    let batches = Arc::new(AtomicUsize::new(0));
    let b = batches.clone();
    let addr = ert.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move || {
                b.fetch_add(1, Ordering::Relaxed);
                async { "" }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    });
    let mut tables = format!(
        "[[clients]]\nname = \"plain\"\nkeys = [\"{plain}\"]\naccount = \"bench\"\n",
        plain = KeyHash::of(KEY_PLAIN.as_bytes()),
    );
    if let Some(ratio) = ratio {
        tables.push_str(&format!(
            "\n[tracing]\notlp_endpoint = \"http://{addr}\"\nsample_ratio = {ratio:?}\n"
        ));
    }
    let gw = common::primed_gateway(&ert, &tables, BODY);
    (ert, gw, batches)
}

fn bench_hit_path_tracing(c: &mut Criterion) {
    let rt = runtime();
    let (_ert, plain, _) = traced_gateway(None);
    let (_ert0, ratio_0, _) = traced_gateway(Some(0.0));
    let (_ert1, ratio_1, batches) = traced_gateway(Some(1.0));
    for gw in [&plain, &ratio_0, &ratio_1] {
        let resp = rt.block_on(gcore_gateway::proxy::handle(
            gw.clone(),
            PEER,
            request(KEY_PLAIN),
        ));
        assert_eq!(resp.headers()["x-cache"], "HIT", "bench setup");
    }
    let mut g = c.benchmark_group("hit_path_tracing");
    for (name, gw) in [
        ("off", &plain),
        ("sample_ratio_0", &ratio_0),
        ("sample_ratio_1", &ratio_1),
    ] {
        g.bench_function(format!("proxy_handle/{name}"), |b| {
            b.iter_custom(|iters| {
                async_batched(
                    &rt,
                    iters,
                    || request(KEY_PLAIN),
                    |req| gcore_gateway::proxy::handle(gw.clone(), PEER, req),
                )
            })
        });
    }
    g.finish();
    // What the exporter managed to send, and what it dropped (the queue is bounded).
    let metrics = ratio_1.metrics_text();
    let dropped: Vec<_> = metrics
        .lines()
        .filter(|l| l.starts_with("gateway_trace_spans_dropped_total"))
        .collect();
    eprintln!(
        "sample_ratio_1: {} export batches received; {dropped:?}",
        batches.load(std::sync::atomic::Ordering::Relaxed)
    );
}

fn bench_metrics(c: &mut Criterion) {
    let metrics = gcore_gateway::bench_api::Metrics::new();
    let labels = RequestLabels {
        client: "plain".into(),
        route: ROUTE.into(),
        status: 200,
        cache: "HIT",
    };
    let mut g = c.benchmark_group("metrics");
    g.bench_function("requests_total_inc", |b| {
        b.iter(|| {
            metrics
                .requests
                .get_or_create(black_box(&labels.clone()))
                .inc()
        })
    });
    g.bench_function("request_duration_observe", |b| {
        b.iter(|| {
            metrics
                .request_duration
                .observe(black_box(std::time::Duration::from_micros(200)))
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_auth,
    bench_cache,
    bench_rate_limit,
    bench_hit_path,
    bench_hit_path_tracing,
    bench_metrics
);
criterion_main!(benches);
