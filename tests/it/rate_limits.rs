//! Per-client GCRA, failed-auth throttle, global upstream budget, upstream 429.

use std::time::Duration;

use crate::support::*;

const ME: &str = "/iam/clients/me";

fn with_rate(up: &FakeUpstream, rate: &str, burst: u32) -> String {
    config(&up.url(), "").edit(
        "name = \"alpha\"\nkeys",
        &format!("name = \"alpha\"\nrate = \"{rate}\"\nburst = {burst}\nkeys"),
    )
}

#[tokio::test]
async fn burst_then_429_with_consistent_headers_and_recovery() {
    let up = FakeUpstream::start().await;
    let gw = Harness::start(&with_rate(&up, "2/s", 5)).await;
    for i in 0..5u32 {
        let r = gw.get(ME, KEY_ALPHA).await;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(header(&r, "ratelimit-limit"), "5");
        assert_eq!(header(&r, "ratelimit-remaining"), (4 - i).to_string());
        let reset: u64 = header(&r, "ratelimit-reset").parse().unwrap();
        assert!(reset <= 3, "reset {reset}");
    }
    let r = gw.get(ME, KEY_ALPHA).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "ratelimit-remaining"), "0");
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    assert_eq!(retry, 1, "one cell every 500 ms, rounded up");
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another client is unaffected and has no RateLimit headers (no rate configured).
    let r = gw.get(ME, KEY_BETA).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("ratelimit-limit").is_none());
    // Recovery after Retry-After.
    tokio::time::sleep(Duration::from_millis(retry * 1000 + 50)).await;
    assert_eq!(gw.get(ME, KEY_ALPHA).await.status(), 200);
    assert_eq!(
        up.calls(),
        2,
        "one per account; 429s never reach the upstream"
    );
    gw.stop().await;
}

#[tokio::test]
async fn exactly_burst_successes_under_100_concurrent_requests() {
    let up = FakeUpstream::start().await;
    let gw = Harness::start(&with_rate(&up, "1/m", 10)).await;
    let (mut ok, mut limited) = (0, 0);
    for a in concurrent_gets(&[&gw], ME, KEY_ALPHA, 100).await {
        match (a.status, a.headers.contains_key("retry-after")) {
            (200, _) => ok += 1,
            (429, true) => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((ok, limited), (10, 90));
    assert_eq!(up.calls(), 1);
    let clients = gw.admin_text("/admin/clients").await;
    let v: serde_json::Value = serde_json::from_str(&clients).unwrap();
    let alpha = v["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "alpha")
        .unwrap();
    assert_eq!(alpha["requests"], 100);
    assert_eq!(alpha["rate_limited"], 90);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("gateway_rate_limited_total{client=\"alpha\"} 90"),
        "{metrics}"
    );
    gw.stop().await;
}

async fn get_from(ip: &str, url: &str, key: Option<&str>) -> reqwest::Response {
    let http = reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let mut req = http.get(url);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn failed_auth_throttle_per_ip_trips_and_recovers() {
    let up = FakeUpstream::start().await;
    let cfg = config(&up.url(), "").edit(
        "auth_failure_limit = \"off\"",
        "auth_failure_limit = \"3/s\"",
    );
    let gw = Harness::start(&cfg).await;
    let url = gw.url(ME);
    for _ in 0..3 {
        assert_eq!(
            get_from("127.0.0.1", &url, Some("wrong")).await.status(),
            401
        );
    }
    // The fourth failure exhausts the budget; from then on even a valid key is refused.
    assert_eq!(
        get_from("127.0.0.1", &url, Some("wrong")).await.status(),
        401
    );
    let r = get_from("127.0.0.1", &url, Some(KEY_ALPHA)).await;
    assert_eq!(r.status(), 429);
    assert!(header(&r, "retry-after").parse::<u64>().unwrap() >= 1);
    // Another source IP is unaffected.
    assert_eq!(
        get_from("127.0.0.2", &url, Some(KEY_ALPHA)).await.status(),
        200
    );
    // Recovery.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        get_from("127.0.0.1", &url, Some(KEY_ALPHA)).await.status(),
        200
    );
    gw.stop().await;
}

#[tokio::test]
async fn upstream_budget_exhausted_serves_stale_or_503() {
    let up = FakeUpstream::start().await;
    let cfg = config(&up.url(), "")
        .edit("retries = 0", "retries = 0\nrate = \"1/m\"")
        .edit("ttl = \"60s\"", "ttl = \"200ms\"")
        .edit("stale_if_error = \"0s\"", "stale_if_error = \"1m\"");
    let gw = Harness::start(&cfg).await;
    assert_eq!(header(&gw.get(ME, KEY_ALPHA).await, "x-cache"), "MISS");
    // Account B has no copy: 503 with Retry-After.
    let r = gw.get(ME, KEY_BETA).await;
    assert_eq!(r.status(), 503);
    assert!(header(&r, "retry-after").parse::<u64>().unwrap() >= 1);
    // Account A's copy is past its TTL: served stale.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let r = gw.get(ME, KEY_ALPHA).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-cache"), "STALE");
    assert_eq!(up.calls(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn upstream_429_pauses_the_account() {
    let up = FakeUpstream::start().await;
    let cfg = config(&up.url(), "")
        .edit("ttl = \"60s\"", "ttl = \"200ms\"")
        .edit("stale_if_error = \"0s\"", "stale_if_error = \"1m\"");
    let gw = Harness::start(&cfg).await;
    assert_eq!(gw.get(ME, KEY_ALPHA).await.status(), 200);
    up.set_mode(Mode::TooMany(2));
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Primed account: stale while paused.
    let r = gw.get(ME, KEY_ALPHA).await;
    assert_eq!(header(&r, "x-cache"), "STALE");
    assert_eq!(up.calls(), 2, "the call that got the 429");
    for _ in 0..5 {
        let r = gw.get(ME, KEY_ALPHA).await;
        assert_eq!(header(&r, "x-cache"), "STALE");
    }
    assert_eq!(up.calls(), 2, "no calls during the pause");
    // Cold account B is paused separately: its own 429, then 503 with the remaining wait.
    let r = gw.get(ME, KEY_BETA).await;
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after"), "2");
    let r = gw.get(ME, KEY_BETA).await;
    assert_eq!(r.status(), 503);
    assert_eq!(up.calls(), 3);
    // After Retry-After the upstream is asked again.
    up.set_mode(Mode::Normal);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = gw.get(ME, KEY_ALPHA).await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.calls(), 4);
    gw.stop().await;
}

#[tokio::test]
async fn reload_changes_a_rate_without_restart() {
    let up = FakeUpstream::start().await;
    let gw = Harness::start(&with_rate(&up, "1/m", 2)).await;
    assert_eq!(gw.get(ME, KEY_ALPHA).await.status(), 200);
    assert_eq!(gw.get(ME, KEY_ALPHA).await.status(), 200);
    assert_eq!(gw.get(ME, KEY_ALPHA).await.status(), 429);
    let new = with_rate(&up, "1/m", 5);
    gw.gw.set_embedded_text(new);
    let r = gw.reload().await;
    assert_eq!(r.status(), 200);
    let r = gw.get(ME, KEY_ALPHA).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "ratelimit-limit"), "5");
    gw.stop().await;
}
