//! Metrics, admin routes, admin token, and no secret anywhere (trace logs included).

use std::time::Duration;

use crate::support::*;

const ME: &str = "/iam/clients/me";

/// The value of the sample line starting with `series` (name plus labels), or 0.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_with_requests_and_match_the_upstream_count() {
    let up = FakeUpstream::start().await;
    let cfg = config(&up.url(), "")
        .edit("ttl = \"60s\"", "ttl = \"200ms\"")
        .edit("stale_if_error = \"0s\"", "stale_if_error = \"1m\"")
        .edit("retries = 0", "retries = 2")
        .edit(
            "name = \"beta\"\nkeys",
            "name = \"beta\"\nrate = \"1/m\"\nburst = 1\nkeys",
        );
    let gw = Harness::start(&cfg).await;
    let req = |c: &str, r: &str, s: u16, cache: &str| {
        format!("gateway_requests_total{{client=\"{c}\",route=\"{r}\",status=\"{s}\",cache=\"{cache}\"}}")
    };
    gw.get(ME, KEY_ALPHA).await; // MISS
    gw.get(ME, KEY_ALPHA).await; // HIT
    gw.get(ME, KEY_BETA).await; // MISS
    gw.get(ME, KEY_BETA).await; // 429
    gw.get(ME, "unknown-key").await; // 401
    tokio::time::sleep(Duration::from_millis(250)).await;
    up.set_mode(Mode::Status(503));
    gw.get(ME, KEY_ALPHA).await; // STALE (error)
    gw.get(ME, KEY_GAMMA).await; // 403
    let m = gw.metrics().await;
    assert_eq!(sample(&m, &req("alpha", ME, 200, "MISS")), 1.0, "{m}");
    assert_eq!(sample(&m, &req("alpha", ME, 200, "HIT")), 1.0);
    assert_eq!(sample(&m, &req("alpha", ME, 200, "STALE")), 1.0);
    assert_eq!(sample(&m, &req("beta", ME, 200, "MISS")), 1.0);
    assert_eq!(sample(&m, &req("beta", "other", 429, "NONE")), 1.0);
    assert_eq!(sample(&m, &req("anonymous", "other", 401, "NONE")), 1.0);
    assert_eq!(sample(&m, &req("gamma", ME, 403, "NONE")), 1.0);
    assert_eq!(
        sample(&m, "gateway_rate_limited_total{client=\"beta\"}"),
        1.0
    );
    assert_eq!(
        sample(&m, "gateway_stale_served_total{reason=\"error\"}"),
        1.0
    );
    assert_eq!(sample(&m, "gateway_auth_failures_total"), 1.0);
    let ok = sample(
        &m,
        &format!("gateway_upstream_requests_total{{account=\"A\",route=\"{ME}\",outcome=\"ok\"}}"),
    ) + sample(
        &m,
        &format!("gateway_upstream_requests_total{{account=\"B\",route=\"{ME}\",outcome=\"ok\"}}"),
    );
    let failed = sample(&m, &format!("gateway_upstream_requests_total{{account=\"A\",route=\"{ME}\",outcome=\"bad_status\"}}"));
    assert_eq!((ok, failed), (2.0, 3.0));
    assert_eq!(
        (ok + failed) as usize,
        up.calls(),
        "upstream counter equals the upstream's own count"
    );
    assert!(m.contains("gateway_upstream_request_duration_seconds_bucket"));
    assert!(m.contains("gateway_request_duration_seconds_bucket{le=\"0.0001\"}"));
    assert!(m.contains("gateway_build_info{version="));
    assert_eq!(sample(&m, "gateway_cache_entries"), 2.0);
    gw.stop().await;
}

#[tokio::test]
async fn purge_all_and_by_account_and_the_admin_views() {
    let up = FakeUpstream::start().await;
    let gw = Harness::start(&config(&up.url(), "")).await;
    gw.get(ME, KEY_ALPHA).await;
    gw.get(ME, KEY_BETA).await;
    let cache: serde_json::Value =
        serde_json::from_str(&gw.admin_text("/admin/cache").await).unwrap();
    assert_eq!(cache["entries"], 2, "{cache}");
    let text = cache.to_string();
    assert!(!text.contains("acme-widgets"), "no bodies in /admin/cache");
    assert!(
        cache["accounts"][0]["entries"][0]["bytes"]
            .as_u64()
            .unwrap()
            > 1000
    );
    let r = gw
        .http
        .post(gw.admin_url("/admin/cache/purge?account=A"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&gw.get(ME, KEY_ALPHA).await, "x-cache"), "MISS");
    assert_eq!(header(&gw.get(ME, KEY_BETA).await, "x-cache"), "HIT");
    let r = gw
        .http
        .post(gw.admin_url("/admin/cache/purge?account=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = gw
        .http
        .post(gw.admin_url("/admin/cache/purge"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&gw.get(ME, KEY_ALPHA).await, "x-cache"), "MISS");
    assert_eq!(header(&gw.get(ME, KEY_BETA).await, "x-cache"), "MISS");
    let clients: serde_json::Value =
        serde_json::from_str(&gw.admin_text("/admin/clients").await).unwrap();
    let alpha = clients["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "alpha")
        .unwrap()
        .clone();
    assert_eq!(alpha["requests"], 3);
    assert_eq!(alpha["hits"], 0);
    assert!(alpha["last_seen_unix"].as_u64().unwrap() > 1_700_000_000);
    let gamma = clients["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "gamma")
        .unwrap()
        .clone();
    assert!(gamma["last_seen_unix"].is_null());
    gw.stop().await;
}

#[tokio::test]
async fn admin_token_is_enforced_except_on_health() {
    let up = FakeUpstream::start().await;
    let token = "admin-token-0123456789abcdef";
    let cfg = config(&up.url(), "").edit(
        "auth_failure_limit = \"off\"",
        &format!(
            "auth_failure_limit = \"off\"\nadmin_token_sha256 = \"{}\"",
            hash(token)
        ),
    );
    let gw = Harness::start(&cfg).await;
    for p in ["/healthz", "/readyz"] {
        assert_eq!(
            gw.http.get(gw.admin_url(p)).send().await.unwrap().status(),
            200,
            "{p}"
        );
    }
    for p in ["/metrics", "/admin/clients", "/admin/cache"] {
        assert_eq!(
            gw.http.get(gw.admin_url(p)).send().await.unwrap().status(),
            401,
            "{p}"
        );
        let r = gw
            .http
            .get(gw.admin_url(p))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{p}");
        let r = gw
            .http
            .get(gw.admin_url(p))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{p}");
    }
    for p in ["/admin/cache/purge", "/admin/reload"] {
        assert_eq!(
            gw.http.post(gw.admin_url(p)).send().await.unwrap().status(),
            401,
            "{p}"
        );
        let r = gw
            .http
            .post(gw.admin_url(p))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{p}");
    }
    // Only as `Authorization: Bearer` (scheme case-insensitive), never the caller forms.
    let url = gw.admin_url("/admin/clients");
    for (name, value) in [
        ("x-api-key", token.to_string()),
        ("authorization", format!("APIKey {token}")),
    ] {
        let r = gw.http.get(&url).header(name, value).send().await.unwrap();
        assert_eq!(r.status(), 401, "{name}");
    }
    let r = gw
        .http
        .get(&url)
        .header("authorization", format!("bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.stop().await;
}

/// Mixed workload against the binary with RUST_LOG=trace; every byte it printed, every admin
/// answer and /metrics are searched for the upstream secret and every caller key.
#[tokio::test]
async fn no_secret_anywhere_even_at_trace_level() {
    let up = FakeUpstream::start().await;
    let (text, port, admin) = on_free_ports(&config(&up.url(), ""));
    let text = text
        .edit("ttl = \"60s\"", "ttl = \"200ms\"")
        .edit("stale_if_error = \"0s\"", "stale_if_error = \"1m\"")
        .edit(
            "name = \"beta\"\nkeys",
            "name = \"beta\"\nrate = \"1/m\"\nburst = 2\nkeys",
        );
    let dir = std::env::temp_dir().join(format!("gcore-gateway-obs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, &text).unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gcore-gateway"))
        .args([
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--log-format",
            "json",
        ])
        .envs(secrets())
        .env("RUST_LOG", "trace")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let http = reqwest::Client::new();
    wait_ready(&http, admin).await;
    let url = format!("http://127.0.0.1:{port}{ME}");
    let mut seen_by_callers = String::new();
    let call = |r: reqwest::Response| async move {
        let mut s = format!("{:?}", r.headers());
        s.push_str(&r.text().await.unwrap());
        s
    };
    // Hits, misses, every credential form, wrong keys, 429s, upstream errors (401 echoing the
    // key, 500), stale serving, 404/405.
    for key in [KEY_ALPHA, KEY_ALPHA2, KEY_BETA, KEY_GAMMA] {
        for form in [
            "authorization:APIKey ",
            "authorization:Bearer ",
            "x-api-key:",
        ] {
            let (name, prefix) = form.split_once(':').unwrap();
            let r = http
                .get(&url)
                .header(name, format!("{prefix}{key}"))
                .send()
                .await
                .unwrap();
            seen_by_callers.push_str(&call(r).await);
        }
    }
    let r = http
        .get(&url)
        .header("x-api-key", format!("{KEY_ALPHA}x"))
        .send()
        .await
        .unwrap();
    seen_by_callers.push_str(&call(r).await);
    let r = http
        .post(&url)
        .header("x-api-key", KEY_ALPHA)
        .send()
        .await
        .unwrap();
    seen_by_callers.push_str(&call(r).await);
    tokio::time::sleep(Duration::from_millis(250)).await;
    up.set_mode(Mode::Status(500));
    let r = http
        .get(&url)
        .header("x-api-key", KEY_ALPHA)
        .send()
        .await
        .unwrap();
    seen_by_callers.push_str(&call(r).await);
    up.set_mode(Mode::Status(401));
    let r = http
        .get(&url)
        .header("x-api-key", KEY_BETA)
        .send()
        .await
        .unwrap();
    seen_by_callers.push_str(&call(r).await);
    for p in [
        "/metrics",
        "/admin/clients",
        "/admin/cache",
        "/healthz",
        "/readyz",
    ] {
        let r = http
            .get(format!("http://127.0.0.1:{admin}{p}"))
            .send()
            .await
            .unwrap();
        seen_by_callers.push_str(&call(r).await);
    }
    let r = http
        .post(format!("http://127.0.0.1:{admin}/admin/reload"))
        .send()
        .await
        .unwrap();
    seen_by_callers.push_str(&call(r).await);
    assert!(seen_by_callers.contains("gateway_requests_total"));
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(logs.contains("gcore_gateway::access"), "access log present");
    let miss = logs
        .lines()
        .find(|l| l.contains("gcore_gateway::access") && l.contains("\"cache\":\"MISS\""))
        .expect("an access line for a MISS");
    for field in [
        "request_id",
        "\"client\":\"alpha\"",
        "\"route\":\"/iam/clients/me\"",
        "\"method\":\"GET\"",
        "\"status\":200",
        "latency_us",
        "upstream_us",
    ] {
        assert!(miss.contains(field), "{field} missing in {miss}");
    }
    assert!(
        logs.contains("\"level\":\"DEBUG\"") || logs.contains("\"level\":\"TRACE\""),
        "trace logging was on"
    );
    let secrets = [
        SECRET_A,
        SECRET_B,
        "upstreamSecretForAccount",
        KEY_ALPHA,
        KEY_ALPHA2,
        KEY_BETA,
        KEY_GAMMA,
    ];
    for s in secrets {
        assert!(!logs.contains(s), "secret {s:?} in the logs");
        assert!(!seen_by_callers.contains(s), "secret {s:?} in an answer");
    }
    // The upstream's error body that echoes the key is never forwarded or logged.
    assert!(
        !logs.contains("Bad permanent token") && !seen_by_callers.contains("Bad permanent token")
    );
}

#[tokio::test]
async fn debug_prints_never_show_secrets() {
    let up = FakeUpstream::start().await;
    let cfg = config(
        &up.url(),
        "\n[redis]\nurl = \"redis://:redis-password-123@127.0.0.1:1\"\n",
    );
    let gw = Harness::start(&cfg).await;
    let rt = gw.gw.current();
    let printed = format!(
        "{:?}\n{:?}\n{:?}\n{:?}",
        rt.config,
        gw.gw,
        rt.config.accounts,
        gcore_gateway::auth::credential(&{
            let mut h = http::HeaderMap::new();
            h.insert(
                "authorization",
                format!("APIKey {KEY_ALPHA}").parse().unwrap(),
            );
            h
        })
    );
    for s in [SECRET_A, SECRET_B, KEY_ALPHA, "redis-password-123"] {
        assert!(!printed.contains(s), "{s} in Debug output");
    }
    assert!(
        printed.contains("TEST_SECRET_A"),
        "variable names are fine to show"
    );
    gw.stop().await;
}
