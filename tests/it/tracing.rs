//! `[tracing]`: OpenTelemetry spans exported over OTLP/HTTP to an in-test collector (axum on
//! 127.0.0.1:0 accepting `POST /v1/traces`). Most tests use `http/json` so spans can be read
//! as JSON; one decodes the default `http/protobuf`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use gcore_gateway::config::Config;

use crate::support::binary::Binary;
use crate::support::*;

const ME: &str = "/iam/clients/me";
const SERVER: i64 = 2;
const CLIENT: i64 = 3;
const INTERNAL: i64 = 1;

/// An OTLP/HTTP receiver that keeps every export it is sent.
struct Collector {
    addr: SocketAddr,
    exports: Mutex<Vec<(String, Bytes)>>,
}

impl Collector {
    async fn start() -> Arc<Collector> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = Arc::new(Collector {
            addr: listener.local_addr().unwrap(),
            exports: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(c.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        c
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span of every JSON export so far.
    fn spans(&self) -> Vec<SpanRec> {
        let mut out = Vec::new();
        for (_, body) in self.exports.lock().unwrap().iter() {
            let v: serde_json::Value = serde_json::from_slice(body).expect("OTLP JSON");
            for rs in v["resourceSpans"].as_array().unwrap() {
                let service = attrs(&rs["resource"]["attributes"])
                    .remove("service.name")
                    .unwrap_or_default();
                for ss in rs["scopeSpans"].as_array().unwrap() {
                    for s in ss["spans"].as_array().unwrap() {
                        out.push(SpanRec::from_json(s, &service));
                    }
                }
            }
        }
        out
    }

    /// Waits (up to 15 s) until `enough` holds for the spans received, and returns them.
    async fn wait_for(&self, enough: impl Fn(&[SpanRec]) -> bool) -> Vec<SpanRec> {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let spans = self.spans();
            if enough(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < until,
                "spans did not arrive; got {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every byte exported so far.
    fn raw(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (_, b) in self.exports.lock().unwrap().iter() {
            out.extend_from_slice(b);
        }
        out
    }
}

async fn receive(State(c): State<Arc<Collector>>, headers: HeaderMap, body: Bytes) -> &'static str {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    c.exports.lock().unwrap().push((ct, body));
    "{}"
}

/// One exported span, as the tests look at it.
#[derive(Debug, Clone)]
struct SpanRec {
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: i64,
    attrs: HashMap<String, String>,
    /// (trace id, span id) of each link.
    links: Vec<(String, String)>,
    status_code: i64,
}

impl SpanRec {
    fn from_json(s: &serde_json::Value, service: &str) -> SpanRec {
        let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
        SpanRec {
            service: service.to_string(),
            trace_id: text(&s["traceId"]),
            span_id: text(&s["spanId"]),
            parent: text(&s["parentSpanId"]),
            name: text(&s["name"]),
            kind: s["kind"].as_i64().unwrap_or(-1),
            attrs: attrs(&s["attributes"]),
            links: s["links"]
                .as_array()
                .map(|ls| {
                    ls.iter()
                        .map(|l| (text(&l["traceId"]), text(&l["spanId"])))
                        .collect()
                })
                .unwrap_or_default(),
            status_code: s["status"]["code"].as_i64().unwrap_or(0),
        }
    }

    fn attr(&self, key: &str) -> &str {
        self.attrs.get(key).map_or("", String::as_str)
    }
}

/// OTLP JSON attributes as text (`{"key": k, "value": {"stringValue"|"intValue"|…: v}}`).
fn attrs(list: &serde_json::Value) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for a in list.as_array().into_iter().flatten() {
        let value = a["value"]
            .as_object()
            .and_then(|o| o.values().next())
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default();
        out.insert(a["key"].as_str().unwrap_or("").to_string(), value);
    }
    out
}

fn of_kind(spans: &[SpanRec], kind: i64) -> Vec<SpanRec> {
    spans.iter().filter(|s| s.kind == kind).cloned().collect()
}

fn traced(up: &FakeUpstream, collector: &str, extra: &str) -> String {
    config(
        &up.url(),
        &format!("\n[tracing]\notlp_endpoint = \"{collector}\"\notlp_protocol = \"http/json\"\nservice_name = \"gw-test\"\n{extra}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_and_a_hit_are_server_spans_and_the_attempt_is_a_child() {
    let up = FakeUpstream::start().await;
    let col = Collector::start().await;
    let h = Harness::start(&traced(&up, &col.url(), "")).await;
    let miss = h.get(ME, KEY_ALPHA).await;
    assert_eq!(header(&miss, "x-cache"), "MISS");
    let miss_id = header(&miss, "x-request-id").to_string();
    let hit = h.get(ME, KEY_ALPHA).await;
    assert_eq!(header(&hit, "x-cache"), "HIT");
    let hit_id = header(&hit, "x-request-id").to_string();

    let spans = col
        .wait_for(|s| of_kind(s, SERVER).len() == 2 && of_kind(s, CLIENT).len() == 1)
        .await;
    let servers = of_kind(&spans, SERVER);
    let by_cache = |c: &str| {
        servers
            .iter()
            .find(|s| s.attr("gateway.cache") == c)
            .unwrap()
    };
    let (m, h2) = (by_cache("MISS"), by_cache("HIT"));
    for (s, id) in [(m, &miss_id), (h2, &hit_id)] {
        assert_eq!(s.service, "gw-test");
        assert_eq!(s.name, "GET /iam/clients/me");
        assert_eq!(s.attr("gateway.client"), "alpha");
        assert_eq!(s.attr("http.route"), ME);
        assert_eq!(s.attr("http.request.method"), "GET");
        assert_eq!(s.attr("http.response.status_code"), "200");
        assert_eq!(
            s.attr("gateway.request_id"),
            id.as_str(),
            "cross-referenced"
        );
        assert_eq!(s.parent, "", "a root span without traceparent");
    }
    assert_ne!(m.trace_id, h2.trace_id, "one trace per request");

    // MISS server span → fill span → one client span per attempt.
    let fills = of_kind(&spans, INTERNAL);
    assert_eq!(fills.len(), 1, "{fills:#?}");
    let fill = &fills[0];
    assert_eq!(fill.name, "cache fill");
    assert_eq!(
        (fill.trace_id.as_str(), fill.parent.as_str()),
        (m.trace_id.as_str(), m.span_id.as_str())
    );
    assert_eq!(fill.attr("gateway.fill.outcome"), "ok");
    let attempt = &of_kind(&spans, CLIENT)[0];
    assert_eq!(attempt.trace_id, m.trace_id);
    assert_eq!(
        attempt.parent, fill.span_id,
        "the attempt is a child of the fill"
    );
    assert_eq!(attempt.attr("http.response.status_code"), "200");
    assert_eq!(attempt.attr("gateway.upstream.attempt"), "1");
    assert_eq!(attempt.attr("gateway.upstream.outcome"), "ok");
    assert!(!attempt.attr("gateway.upstream.duration_ms").is_empty());
    assert!(h2.links.is_empty() && m.links.is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_retry_is_its_own_attempt_span() {
    let up = FakeUpstream::start().await;
    let col = Collector::start().await;
    let text = traced(&up, &col.url(), "").edit("retries = 0", "retries = 2");
    let h = Harness::start(&text).await;
    up.fail_next.store(2, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(h.get(ME, KEY_ALPHA).await.status(), 200);
    let spans = col.wait_for(|s| of_kind(s, CLIENT).len() == 3).await;
    let fill = &of_kind(&spans, INTERNAL)[0];
    let mut attempts = of_kind(&spans, CLIENT);
    attempts.sort_by_key(|a| a.attr("gateway.upstream.attempt").to_string());
    let got: Vec<_> = attempts
        .iter()
        .map(|a| {
            assert_eq!(a.parent, fill.span_id);
            (
                a.attr("gateway.upstream.attempt").to_string(),
                a.attr("http.response.status_code").to_string(),
                a.status_code,
            )
        })
        .collect();
    // Status code 2 = error, 0 = unset.
    assert_eq!(
        got,
        [
            ("1".to_string(), "503".to_string(), 2),
            ("2".to_string(), "503".to_string(), 2),
            ("3".to_string(), "200".to_string(), 0)
        ]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coalesced_storm_links_every_waiter_to_the_one_fetch() {
    let up = FakeUpstream::start().await;
    up.set_delay(Duration::from_millis(400));
    let col = Collector::start().await;
    let h = Harness::start(&traced(&up, &col.url(), "")).await;
    const N: usize = 8;
    let answers = concurrent_gets(&[&h], ME, KEY_ALPHA, N).await;
    assert!(answers
        .iter()
        .all(|a| a.status == 200 && a.headers["x-cache"] == "MISS"));
    assert_eq!(up.calls(), 1);

    let spans = col.wait_for(|s| of_kind(s, SERVER).len() == N).await;
    let (fills, attempts) = (of_kind(&spans, INTERNAL), of_kind(&spans, CLIENT));
    assert_eq!(
        (fills.len(), attempts.len()),
        (1, 1),
        "one fetch, one upstream span"
    );
    let fill = &fills[0];
    let servers = of_kind(&spans, SERVER);
    let leader: Vec<_> = servers
        .iter()
        .filter(|s| s.span_id == fill.parent)
        .collect();
    assert_eq!(
        leader.len(),
        1,
        "the fill is a child of the request that started it"
    );
    assert!(leader[0].links.is_empty());
    let waiters: Vec<_> = servers
        .iter()
        .filter(|s| s.span_id != fill.parent)
        .collect();
    assert_eq!(waiters.len(), N - 1);
    for w in waiters {
        assert_eq!(
            w.links,
            [(fill.trace_id.clone(), fill.span_id.clone())],
            "a waiter links to the fetch it waited on"
        );
        assert_ne!(w.trace_id, fill.trace_id, "waiters keep their own traces");
        assert_eq!(w.attr("gateway.cache"), "MISS");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_traceparent_is_the_parent_and_never_reaches_gcore() {
    let up = FakeUpstream::start().await;
    let col = Collector::start().await;
    let h = Harness::start(&traced(&up, &col.url(), "")).await;
    let r = h
        .http
        .get(h.url(ME))
        .header("x-api-key", KEY_ALPHA)
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("tracestate", "congo=t61rcWkgMzE")
        .header("baggage", "user=someone")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let spans = col.wait_for(|s| of_kind(s, CLIENT).len() == 1).await;
    let server = &of_kind(&spans, SERVER)[0];
    assert_eq!(server.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(server.parent, "00f067aa0ba902b7");
    assert!(spans.iter().all(|s| s.trace_id == server.trace_id));

    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let names: Vec<_> = seen[0]
        .headers
        .keys()
        .map(|k| k.as_str().to_string())
        .collect();
    for h in ["traceparent", "tracestate", "baggage", "b3", "x-b3-traceid"] {
        assert!(
            !names.contains(&h.to_string()),
            "{h} sent upstream: {names:?}"
        );
    }
    for (_, v) in seen[0].headers.iter() {
        let v = v.to_str().unwrap_or("");
        assert!(
            !v.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
            "trace id sent upstream"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_ratio_zero_records_only_sampled_callers() {
    let up = FakeUpstream::start().await;
    let col = Collector::start().await;
    let h = Harness::start(&traced(&up, &col.url(), "sample_ratio = 0.0\n")).await;
    for _ in 0..5 {
        assert_eq!(h.get(ME, KEY_ALPHA).await.status(), 200);
    }
    let sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = h
        .http
        .get(h.url(ME))
        .header("x-api-key", KEY_ALPHA)
        .header("traceparent", sampled)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    col.wait_for(|s| !s.is_empty()).await;
    // Give the unsampled ones every chance to show up (they must not).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = col.spans();
    assert_eq!(
        spans.len(),
        1,
        "only the sampled caller's (HIT) span: {spans:#?}"
    );
    assert_eq!(spans[0].trace_id, "0af7651916cd43dd8448eb211c80319c");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_and_no_body_reach_any_span() {
    let up = FakeUpstream::start().await;
    let col = Collector::start().await;
    let h = Harness::start(&traced(&up, &col.url(), "")).await;
    let wrong = "wrong-caller-key-5555555555";
    assert_eq!(h.get(ME, KEY_ALPHA).await.status(), 200);
    assert_eq!(h.get(ME, KEY_ALPHA).await.status(), 200);
    assert_eq!(h.get(ME, wrong).await.status(), 401);
    assert_eq!(h.get("/iam/users/me", KEY_BETA).await.status(), 200);
    // The upstream rejects our key with a body that echoes it: a 502 whose span must not.
    up.set_mode(Mode::Status(401));
    assert_eq!(h.get("/iam/users/me", KEY_ALPHA).await.status(), 502);
    let spans = col
        .wait_for(|s| of_kind(s, SERVER).len() == 5 && of_kind(s, CLIENT).len() == 3)
        .await;
    let raw = String::from_utf8_lossy(&col.raw()).to_string();
    for secret in [
        KEY_ALPHA,
        KEY_BETA,
        wrong,
        SECRET_A,
        SECRET_B,
        "APIKey",
        "upstreamSecret",
    ] {
        assert!(!raw.contains(secret), "{secret} in an exported span");
    }
    // Nor any part of a body.
    for word in [
        "companyName",
        "Company A",
        "maria.keller",
        "Bad permanent token",
    ] {
        assert!(
            !raw.contains(word),
            "body text {word:?} in an exported span"
        );
    }
    let failed = of_kind(&spans, CLIENT)
        .into_iter()
        .find(|a| a.attr("http.response.status_code") == "401")
        .expect("the rejected attempt");
    assert_eq!(failed.attr("error.type"), "unauthorized");
    let e502 = of_kind(&spans, SERVER)
        .into_iter()
        .find(|s| s.attr("http.response.status_code") == "502")
        .unwrap();
    assert_eq!(e502.status_code, 2, "a 5xx server span is an error");
    let e401 = of_kind(&spans, SERVER)
        .into_iter()
        .find(|s| s.attr("http.response.status_code") == "401")
        .unwrap();
    assert_eq!(
        e401.attr("gateway.client"),
        "",
        "no client for an unknown key"
    );
    assert_eq!(e401.name, "GET");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_protocol_is_protobuf() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let up = FakeUpstream::start().await;
    let col = Collector::start().await;
    let text = config(
        &up.url(),
        &format!("\n[tracing]\notlp_endpoint = \"{}/\"\n", col.url()),
    );
    let h = Harness::start(&text).await;
    assert_eq!(h.get(ME, KEY_ALPHA).await.status(), 200);
    let until = Instant::now() + Duration::from_secs(15);
    let mut names = loop {
        let mut names = Vec::new();
        for (ct, body) in col.exports.lock().unwrap().iter() {
            assert_eq!(ct, "application/x-protobuf");
            let req = ExportTraceServiceRequest::decode(body.clone()).expect("OTLP protobuf");
            for rs in req.resource_spans {
                for ss in rs.scope_spans {
                    names.extend(ss.spans.into_iter().map(|s| s.name));
                }
            }
        }
        if names.len() >= 3 || Instant::now() > until {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    names.sort();
    assert_eq!(names, ["GET", "GET /iam/clients/me", "cache fill"]);
    h.stop().await;
}

/// A collector that is not there (a closed port) changes neither the answers nor their
/// latency; its spans are counted as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_changes_no_answer_and_no_latency() {
    let up = FakeUpstream::start().await;
    let plain = Harness::start(&config(&up.url(), "")).await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let traced_h = Harness::start(&traced(&up, &dead, "")).await;
    async fn run(h: &Harness) -> Duration {
        let started = Instant::now();
        for _ in 0..10 {
            let answers = concurrent_gets(&[h], ME, KEY_ALPHA, 20).await;
            assert!(answers
                .iter()
                .all(|a| a.status == 200 && a.body.contains("Company A")));
        }
        started.elapsed()
    }
    let base = run(&plain).await;
    let with_dead = run(&traced_h).await;
    // Loose on purpose (a shared, noisy machine): the point is no stall on export.
    assert!(
        with_dead < base * 3 + Duration::from_secs(1),
        "200 requests took {with_dead:?} with a dead collector, {base:?} without tracing"
    );
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let m = traced_h.metrics().await;
        let dropped = m
            .lines()
            .find(|l| l.starts_with("gateway_trace_spans_dropped_total{reason=\"export_failed\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if dropped > 0.0 {
            break;
        }
        assert!(Instant::now() < until, "export failures not counted:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    plain.stop().await;
    traced_h.stop().await;
}

/// A collector that accepts connections and never answers: the exporter waits, the queue
/// fills to its bound, further spans are dropped and counted, requests never wait and the
/// process does not grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_collector_drops_and_counts_instead_of_growing() {
    let up = FakeUpstream::start().await;
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole = blackhole.local_addr().unwrap();
    // Accepts and holds every connection, reading nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in blackhole.incoming().flatten() {
            held.push(s);
        }
    });
    let (text, _, admin) = on_free_ports(&traced(&up, &format!("http://{hole}"), ""));
    let bin = Binary::start(&text);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let url = bin.url(ME);
    let burst = |n: usize| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let tasks: Vec<_> = (0..32)
                .map(|_| {
                    let (http, url) = (http.clone(), url.clone());
                    tokio::spawn(async move {
                        for _ in 0..n / 32 {
                            let r = http
                                .get(&url)
                                .header("x-api-key", KEY_ALPHA)
                                .send()
                                .await
                                .unwrap();
                            assert_eq!(r.status(), 200);
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    burst(640).await;
    let rss_before = bin.rss_kib();
    let started = Instant::now();
    burst(4800).await;
    let took = started.elapsed();
    let rss_after = bin.rss_kib();
    let metrics = admin_metrics(&http, admin).await;
    let full = metrics
        .lines()
        .find(|l| l.starts_with("gateway_trace_spans_dropped_total{reason=\"queue_full\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        full > 0.0,
        "a full queue drops and counts (took {took:?}):\n{metrics}"
    );
    // 4,800 spans held would be a few MiB; the queue bound keeps growth well below that.
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

/// Another replica waiting on the Redis fill lock links its fill to the holder's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_waiting_on_the_fill_lock_links_to_the_holders_fill() {
    let redis = crate::replicas::Redis::start();
    let up = FakeUpstream::start().await;
    up.set_delay(Duration::from_millis(600));
    let col = Collector::start().await;
    let text = crate::replicas::shared_config(&up, &redis, "")
        + &format!(
            "\n[tracing]\notlp_endpoint = \"{}\"\notlp_protocol = \"http/json\"\n",
            col.url()
        );
    let a = Harness::start(&text).await;
    let b = Harness::start(&text).await;
    crate::replicas::wait_redis_up(&[&a, &b]).await;
    let first = {
        let (http, url) = (a.http.clone(), a.url(ME));
        tokio::spawn(async move {
            http.get(url)
                .header("x-api-key", KEY_ALPHA)
                .send()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = b.get(ME, KEY_ALPHA).await;
    assert_eq!(second.status(), 200);
    assert_eq!(header(&second, "x-cache"), "HIT", "another replica's fetch");
    assert_eq!(first.await.unwrap().status(), 200);
    assert_eq!(up.calls(), 1);

    let spans = col
        .wait_for(|s| of_kind(s, INTERNAL).len() == 2 && of_kind(s, SERVER).len() == 2)
        .await;
    assert_eq!(of_kind(&spans, CLIENT).len(), 1, "one upstream call");
    let fills = of_kind(&spans, INTERNAL);
    let holder = fills
        .iter()
        .find(|f| f.attr("gateway.fill.outcome") == "ok")
        .unwrap();
    let waiter = fills
        .iter()
        .find(|f| f.attr("gateway.fill.outcome") == "shared")
        .unwrap();
    assert_eq!(
        waiter.links,
        [(holder.trace_id.clone(), holder.span_id.clone())],
        "the waiting replica's fill links to the holder's fill"
    );
    a.stop().await;
    b.stop().await;
}

#[test]
fn tracing_config_is_validated_naming_the_key() {
    let base = config("http://127.0.0.1:1", "");
    let parse =
        |tracing: &str| Config::parse(&format!("{base}\n[tracing]\n{tracing}"), "t", &secrets());
    for (text, key) in [
        (
            "otlp_endpoint = \"http://c:4318\"\nsample_ratio = 1.5",
            "tracing.sample_ratio",
        ),
        (
            "otlp_endpoint = \"http://c:4318\"\nsample_ratio = -0.1",
            "tracing.sample_ratio",
        ),
        (
            "otlp_endpoint = \"http://c:4318\"\nsample_ratio = nan",
            "tracing.sample_ratio",
        ),
        (
            "otlp_endpoint = \"http://c:4318\"\notlp_protocol = \"grpc\"",
            "tracing.otlp_protocol",
        ),
        (
            "otlp_endpoint = \"http://c:4318\"\notlp_protocol = \"json\"",
            "tracing.otlp_protocol",
        ),
        ("otlp_endpoint = \"ftp://c:4318\"", "tracing.otlp_endpoint"),
        ("otlp_endpoint = \"not a url\"", "tracing.otlp_endpoint"),
        (
            "otlp_endpoint = \"http://user:pw@c:4318\"",
            "tracing.otlp_endpoint",
        ),
        (
            "otlp_endpoint = \"http://c:4318\"\nservice_name = \" \"",
            "tracing.service_name",
        ),
    ] {
        let err = parse(text).expect_err(text).to_string();
        assert!(err.contains(key), "{text}: {err}");
        assert!(!err.contains("pw@"), "no credentials in errors: {err}");
    }
    let err = parse("otlp_endpoint = \"http://c:4318\"\nheaders = \"x\"").unwrap_err();
    assert!(
        err.to_string().contains("headers"),
        "unknown keys are errors: {err}"
    );

    for (endpoint, url) in [
        ("http://c:4318", "http://c:4318/v1/traces"),
        ("http://c:4318/", "http://c:4318/v1/traces"),
        ("https://c/otlp", "https://c/otlp/v1/traces"),
        ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
    ] {
        let c = parse(&format!("otlp_endpoint = \"{endpoint}\"")).unwrap();
        let t = c.tracing.as_ref().unwrap();
        assert_eq!(t.traces_url, url);
        assert_eq!(t.protocol, gcore_gateway::OtlpProtocol::HttpProtobuf);
        assert_eq!(t.service_name, "gcore-gateway");
        assert_eq!(t.sample_ratio, 1.0);
        assert!(c.summary().contains("tracing: OTLP http/protobuf to"));
    }
    // Without an endpoint there is nothing to export to: tracing stays off.
    assert!(parse("sample_ratio = 0.5").unwrap().tracing.is_none());
    assert!(Config::parse(&base, "t", &secrets())
        .unwrap()
        .tracing
        .is_none());
}

#[tokio::test]
async fn tracing_changes_need_a_restart() {
    let up = FakeUpstream::start().await;
    let col = Collector::start().await;
    let text = traced(&up, &col.url(), "");
    let h = Harness::start(&text).await;
    h.gw.set_embedded_text(text.edit("service_name = \"gw-test\"", "service_name = \"other\""));
    let r = h.reload().await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("[tracing]"));
    h.stop().await;
}

/// The access log line carries the trace id (here the caller's) next to the request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_carries_the_trace_id() {
    let up = FakeUpstream::start().await;
    let col = Collector::start().await;
    let (text, _, _) = on_free_ports(&traced(&up, &col.url(), ""));
    let bin = Binary::start(&text);
    let http = reqwest::Client::new();
    let r = http
        .get(bin.url(ME))
        .header("x-api-key", KEY_ALPHA)
        .header(
            "traceparent",
            "00-11112222333344445555666677778888-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .unwrap();
    let id = header(&r, "x-request-id").to_string();
    let until = Instant::now() + Duration::from_secs(10);
    let line = loop {
        if let Some(l) = bin
            .log_lines()
            .into_iter()
            .find(|l| l["target"] == "gcore_gateway::access" && l["request_id"] == id.as_str())
        {
            break l;
        }
        assert!(Instant::now() < until, "no access line");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line["trace_id"], "11112222333344445555666677778888");
    let spans = col.wait_for(|s| !of_kind(s, SERVER).is_empty()).await;
    assert_eq!(of_kind(&spans, SERVER)[0].attr("gateway.request_id"), id);
}
