//! Stale-while-revalidate, stale-if-error, retries, circuit breaker, hot reload,
//! graceful shutdown.

use std::time::Duration;

use crate::support::*;

const ME: &str = "/iam/clients/me";

/// ttl 200 ms, stale-if-error 1 m, retries 2, upstream timeout 300 ms, breaker off.
fn resilient(up: &FakeUpstream) -> String {
    config(&up.url(), "")
        .edit("ttl = \"60s\"", "ttl = \"200ms\"")
        .edit("stale_if_error = \"0s\"", "stale_if_error = \"1m\"")
        .edit("retries = 0", "retries = 2\ncircuit_breaker_failures = 0")
        .edit("timeout = \"2s\"", "timeout = \"300ms\"")
}

async fn code_of(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    (
        status,
        v["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

/// Every fault, cold (account B, never cached) and primed (account A, stale copy).
#[tokio::test]
async fn fault_matrix_cold_and_primed() {
    struct Case {
        name: &'static str,
        mode: Mode,
        delay_ms: u64,
        status: u16,
        code: &'static str,
        calls_per_fetch: usize,
    }
    let cases = [
        Case {
            name: "500",
            mode: Mode::Status(500),
            delay_ms: 0,
            status: 502,
            code: "upstream_error",
            calls_per_fetch: 1,
        },
        Case {
            name: "502",
            mode: Mode::Status(502),
            delay_ms: 0,
            status: 502,
            code: "upstream_error",
            calls_per_fetch: 3,
        },
        Case {
            name: "503",
            mode: Mode::Status(503),
            delay_ms: 0,
            status: 502,
            code: "upstream_error",
            calls_per_fetch: 3,
        },
        Case {
            name: "504",
            mode: Mode::Status(504),
            delay_ms: 0,
            status: 502,
            code: "upstream_error",
            calls_per_fetch: 3,
        },
        Case {
            name: "timeout",
            mode: Mode::Normal,
            delay_ms: 600,
            status: 504,
            code: "upstream_timeout",
            calls_per_fetch: 1,
        },
        Case {
            name: "429",
            mode: Mode::TooMany(30),
            delay_ms: 0,
            status: 503,
            code: "upstream_unavailable",
            calls_per_fetch: 1,
        },
        Case {
            name: "401",
            mode: Mode::Status(401),
            delay_ms: 0,
            status: 502,
            code: "upstream_error",
            calls_per_fetch: 1,
        },
        Case {
            name: "invalid json",
            mode: Mode::NotJson,
            delay_ms: 0,
            status: 502,
            code: "upstream_error",
            calls_per_fetch: 1,
        },
        Case {
            name: "oversize",
            mode: Mode::Oversize(2 << 20),
            delay_ms: 0,
            status: 502,
            code: "upstream_error",
            calls_per_fetch: 1,
        },
        Case {
            name: "dropped mid-body",
            mode: Mode::DropMidBody,
            delay_ms: 0,
            status: 502,
            code: "upstream_error",
            calls_per_fetch: 1,
        },
    ];
    for c in cases {
        let up = FakeUpstream::start().await;
        let gw = Harness::start(&resilient(&up)).await;
        assert_eq!(
            gw.get(ME, KEY_ALPHA).await.status(),
            200,
            "{}: prime",
            c.name
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        up.set_mode(c.mode);
        up.set_delay(Duration::from_millis(c.delay_ms));
        // Primed: the stale copy is served.
        let before = up.calls();
        let r = gw.get(ME, KEY_ALPHA).await;
        assert_eq!(r.status(), 200, "{}: primed", c.name);
        assert_eq!(header(&r, "x-cache"), "STALE", "{}: primed", c.name);
        assert_eq!(r.text().await.unwrap(), body_for("A", 1), "{}", c.name);
        assert_eq!(
            up.calls() - before,
            c.calls_per_fetch,
            "{}: primed attempts",
            c.name
        );
        // Cold: the contract's status and code, JSON body, nothing of the upstream's body.
        let before = up.calls();
        let r = gw.get(ME, KEY_BETA).await;
        if c.status == 503 {
            assert!(r.headers().get("retry-after").is_some(), "{}", c.name);
        }
        let (status, code) = code_of(r).await;
        assert_eq!(
            (status, code.as_str()),
            (c.status, c.code),
            "{}: cold",
            c.name
        );
        assert_eq!(
            up.calls() - before,
            c.calls_per_fetch,
            "{}: cold attempts",
            c.name
        );
        gw.stop().await;
    }
}

#[tokio::test]
async fn connect_refused_cold_and_primed() {
    let up = FakeUpstream::start().await;
    let cfg = resilient(&up);
    let gw = Harness::start(&cfg).await;
    assert_eq!(gw.get(ME, KEY_ALPHA).await.status(), 200);
    // Point the upstream at a closed port (reload keeps the cache: the account is unchanged).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    gw.gw
        .set_embedded_text(cfg.edit(&up.url(), &format!("http://{dead}")));
    assert_eq!(gw.reload().await.status(), 200);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let r = gw.get(ME, KEY_ALPHA).await;
    assert_eq!(header(&r, "x-cache"), "STALE");
    let (status, code) = code_of(gw.get(ME, KEY_BETA).await).await;
    assert_eq!((status, code.as_str()), (502, "upstream_error"));
    gw.stop().await;
}

#[tokio::test]
async fn retries_recover_from_transient_errors() {
    let up = FakeUpstream::start().await;
    let gw = Harness::start(&resilient(&up)).await;
    up.fail_status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    up.fail_next.store(2, std::sync::atomic::Ordering::SeqCst);
    let r = gw.get(ME, KEY_ALPHA).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-cache"), "MISS");
    assert_eq!(up.calls(), 3);
    gw.stop().await;
}

#[tokio::test]
async fn recovery_to_fresh_data_after_the_upstream_heals() {
    let up = FakeUpstream::start().await;
    let gw = Harness::start(&resilient(&up)).await;
    assert_eq!(gw.get(ME, KEY_ALPHA).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(250)).await;
    up.set_mode(Mode::Status(500));
    assert_eq!(header(&gw.get(ME, KEY_ALPHA).await, "x-cache"), "STALE");
    up.set_mode(Mode::Normal);
    up.set_version("A", 7);
    let r = gw.get(ME, KEY_ALPHA).await;
    assert_eq!(header(&r, "x-cache"), "MISS");
    assert_eq!(r.text().await.unwrap(), body_for("A", 7));
    assert_eq!(header(&gw.get(ME, KEY_ALPHA).await, "x-cache"), "HIT");
    gw.stop().await;
}

#[tokio::test]
async fn stale_while_revalidate_makes_one_background_call() {
    let up = FakeUpstream::start().await;
    // A TTL of 1 s (not resilient()'s 200 ms) leaves a loaded machine room between the
    // refresh and the last request, which must find the refreshed copy still fresh.
    let cfg = resilient(&up)
        .edit(
            "stale_while_revalidate = \"0s\"",
            "stale_while_revalidate = \"30s\"",
        )
        .edit("ttl = \"200ms\"", "ttl = \"1s\"");
    let gw = Harness::start(&cfg).await;
    assert_eq!(gw.get(ME, KEY_ALPHA).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    up.set_version("A", 2);
    up.set_delay(Duration::from_millis(200));
    let started = std::time::Instant::now();
    for a in concurrent_gets(&[&gw], ME, KEY_ALPHA, 50).await {
        assert_eq!(a.headers["x-cache"], "STALE");
        assert_eq!(a.body, body_for("A", 1));
    }
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "stale answers do not wait for the refresh"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.calls(), 2, "one background refresh for 50 callers");
    let r = gw.get(ME, KEY_ALPHA).await;
    assert_eq!(header(&r, "x-cache"), "HIT");
    assert_eq!(r.text().await.unwrap(), body_for("A", 2));
    gw.stop().await;
}

#[tokio::test]
async fn circuit_breaker_opens_and_half_opens() {
    let up = FakeUpstream::start().await;
    let cfg = config(&up.url(), "").edit(
        "retries = 0",
        "retries = 0\ncircuit_breaker_failures = 3\ncircuit_breaker_cooldown = \"500ms\"",
    );
    let gw = Harness::start(&cfg).await;
    up.set_mode(Mode::Status(500));
    for _ in 0..3 {
        assert_eq!(gw.get(ME, KEY_ALPHA).await.status(), 502);
    }
    assert_eq!(up.calls(), 3);
    // Open: fast 503, no upstream call.
    let r = gw.get(ME, KEY_ALPHA).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(up.calls(), 3);
    let m = gw.metrics().await;
    assert!(m.contains("gateway_circuit_open{account=\"A\"} 1"), "{m}");
    // Half-open: one probe; it fails -> open again at once.
    tokio::time::sleep(Duration::from_millis(550)).await;
    assert_eq!(gw.get(ME, KEY_ALPHA).await.status(), 502);
    assert_eq!(up.calls(), 4);
    assert_eq!(gw.get(ME, KEY_ALPHA).await.status(), 503);
    assert_eq!(up.calls(), 4);
    // Probe succeeds -> closed.
    up.set_mode(Mode::Normal);
    tokio::time::sleep(Duration::from_millis(550)).await;
    assert_eq!(gw.get(ME, KEY_ALPHA).await.status(), 200);
    let m = gw.metrics().await;
    assert!(m.contains("gateway_circuit_open{account=\"A\"} 0"), "{m}");
    // Account B was never affected by A's breaker.
    assert_eq!(gw.get(ME, KEY_BETA).await.status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn upstream_401_is_negatively_cached() {
    let up = FakeUpstream::start().await;
    let gw = Harness::start(&config(&up.url(), "")).await;
    up.set_mode(Mode::Status(401));
    for _ in 0..5 {
        let (status, _) = code_of(gw.get(ME, KEY_ALPHA).await).await;
        assert_eq!(status, 502);
    }
    assert_eq!(up.calls(), 1, "a broken key is not hammered");
    gw.stop().await;
}

#[tokio::test]
async fn reload_adds_a_client_keeps_the_cache_and_rejects_broken_configs() {
    let up = FakeUpstream::start().await;
    let cfg = config(&up.url(), "");
    let gw = Harness::start(&cfg).await;
    assert_eq!(gw.get(ME, KEY_ALPHA).await.status(), 200);
    let new_key = "delta-team-key-0123456789";
    assert_eq!(gw.get(ME, new_key).await.status(), 401);
    let added = format!(
        "{cfg}\n[[clients]]\nname = \"delta\"\nkeys = [\"{}\"]\naccount = \"A\"\n",
        hash(new_key)
    );
    gw.gw.set_embedded_text(added.clone());
    let r = gw.reload().await;
    assert_eq!(r.status(), 200);
    let r = gw.get(ME, new_key).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-cache"),
        "HIT",
        "the cache survived the reload"
    );
    assert_eq!(up.calls(), 1);
    // A broken config is refused with the reason; the old one keeps serving.
    gw.gw
        .set_embedded_text(added.edit("ttl = \"60s\"", "ttl = \"often\""));
    let r = gw.reload().await;
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains("cache.ttl"), "{body}");
    assert_eq!(gw.get(ME, new_key).await.status(), 200);
    // Changing an account's key drops its entries (and only its).
    gw.gw.set_embedded_text(added.clone());
    let _ = gw.get(ME, KEY_BETA).await;
    let mut env_changed = added.edit("TEST_SECRET_A", "TEST_SECRET_B");
    env_changed.push('\n');
    gw.gw.set_embedded_text(env_changed);
    assert_eq!(gw.reload().await.status(), 200);
    assert_eq!(header(&gw.get(ME, KEY_ALPHA).await, "x-cache"), "MISS");
    assert_eq!(header(&gw.get(ME, KEY_BETA).await, "x-cache"), "HIT");
    let m = gw.metrics().await;
    assert!(
        m.contains("gateway_config_reloads_total{result=\"ok\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("gateway_config_reloads_total{result=\"failed\"} 1"),
        "{m}"
    );
    gw.stop().await;
}

fn write_config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("gateway.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test]
async fn binary_sighup_reloads_and_sigterm_drains_a_slow_request() {
    let up = FakeUpstream::start().await;
    let (text, port, admin) = on_free_ports(&config(&up.url(), ""));
    let dir = std::env::temp_dir().join(format!("gcore-gateway-res-{}", std::process::id()));
    let path = write_config(&dir, &text);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gcore-gateway"))
        .args([
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--log-format",
            "json",
        ])
        .envs(secrets())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let http = reqwest::Client::new();
    wait_ready(&http, admin).await;
    let url = format!("http://127.0.0.1:{port}{ME}");

    // SIGHUP: a new client becomes valid without a restart.
    let new_key = "epsilon-team-key-0123456789";
    write_config(
        &dir,
        &format!(
            "{text}\n[[clients]]\nname = \"epsilon\"\nkeys = [\"{}\"]\naccount = \"B\"\n",
            hash(new_key)
        ),
    );
    signal(pid, "-HUP");
    let mut ok = false;
    for _ in 0..100 {
        let r = http
            .get(&url)
            .header("x-api-key", new_key)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "SIGHUP reload did not add the client");

    // SIGTERM during a slow request: the request is still answered, then exit 0.
    up.set_delay(Duration::from_millis(800));
    let slow = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.get(url)
                .header("x-api-key", KEY_ALPHA)
                .send()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(pid, "-TERM");
    let r = slow.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), body_for("A", 1));
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// A half-open probe refused by the upstream budget (a local failure) must not leave the
/// breaker stuck: once the budget recovers, the next call goes through.
#[tokio::test]
async fn a_probe_refused_by_the_budget_does_not_wedge_the_breaker() {
    let up = FakeUpstream::start().await;
    let cfg = config(&up.url(), "").edit(
        "retries = 0",
        "retries = 0\nrate = \"1/s\"\ncircuit_breaker_failures = 1\ncircuit_breaker_cooldown = \"200ms\"",
    );
    let gw = Harness::start(&cfg).await;
    up.set_mode(Mode::Status(500));
    assert_eq!(
        gw.get(ME, KEY_ALPHA).await.status(),
        502,
        "opens the circuit"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        gw.get(ME, KEY_ALPHA).await.status(),
        503,
        "probe refused by the budget"
    );
    up.set_mode(Mode::Normal);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        gw.get(ME, KEY_ALPHA).await.status(),
        200,
        "breaker not wedged"
    );
    assert_eq!(up.calls(), 2);
    gw.stop().await;
}
