//! Safe by default: what the upstream, the environment or a caller can send that must not
//! change what the gateway serves. Malformed upstream JSON is an upstream failure for every
//! caller (stale copy kept), big numbers reach profiled callers digit for digit, the proxy
//! environment never sees the Gcore key, absurd methods are refused and never logged verbatim,
//! and the admin port keeps answering (`/readyz` 503) while the gateway drains.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::binary::Binary;
use crate::support::*;

const ME: &str = "/iam/clients/me";
const KEY_DELTA: &str = "delta-team-key-0123456789";

/// `config` plus a client `delta` on account A whose profile removes `$.email`.
fn with_profiled_client(upstream: &str) -> String {
    config(
        upstream,
        &format!(
            r#"
[profiles.no_email]
remove = ["$.email"]

[[clients]]
name = "delta"
keys = ["{}"]
account = "A"
profile = "no_email"
"#,
            hash(KEY_DELTA)
        ),
    )
}

/// Bodies Gcore could send that are not valid JSON text (RFC 8259 §8.1/§8.2): the parser that
/// renders profiles rejects them, so the cache must never hold them as a success.
const MALFORMED: [&[u8]; 3] = [
    br#"{"id": 1, "name": "Maria \ud83d"}"#,
    b"{\"id\": 1, \"name\": \"Maria \xff\xfe\"}",
    br#"{"id": 1, "name": "Maria"} {"id": 2}"#,
];

#[tokio::test]
async fn malformed_upstream_json_is_502_for_every_caller_when_cold() {
    let up = FakeUpstream::start().await;
    // Without the breaker, so that every call reaches the upstream and fails on its body.
    let cfg = with_profiled_client(&up.url())
        .edit("retries = 0", "retries = 0\ncircuit_breaker_failures = 0");
    let gw = Harness::start(&cfg).await;
    for body in MALFORMED {
        up.set_mode(Mode::Raw(body));
        for key in [KEY_ALPHA, KEY_DELTA] {
            let r = gw.get(ME, key).await;
            assert_eq!(
                r.status(),
                502,
                "{key} on {:?}",
                String::from_utf8_lossy(body)
            );
            let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            assert_eq!(v["error"]["code"], "upstream_error");
        }
    }
    // Nothing malformed was cached: each request above went upstream.
    assert_eq!(up.calls(), MALFORMED.len() * 2);
    gw.stop().await;
}

#[tokio::test]
async fn malformed_upstream_json_never_replaces_the_last_good_copy() {
    let up = FakeUpstream::start().await;
    let cfg = with_profiled_client(&up.url())
        .edit("ttl = \"60s\"", "ttl = \"200ms\"")
        .edit("stale_if_error = \"0s\"", "stale_if_error = \"1m\"")
        .edit("retries = 0", "retries = 0\ncircuit_breaker_failures = 0");
    let gw = Harness::start(&cfg).await;
    let good = gw.get(ME, KEY_ALPHA).await;
    assert_eq!(good.status(), 200);
    let good = good.text().await.unwrap();
    let redacted = gw.get(ME, KEY_DELTA).await.text().await.unwrap();
    assert_ne!(redacted, good, "delta's copy is redacted");
    for body in MALFORMED {
        up.set_mode(Mode::Raw(body));
        tokio::time::sleep(Duration::from_millis(250)).await;
        for (key, expected) in [(KEY_ALPHA, &good), (KEY_DELTA, &redacted)] {
            let r = gw.get(ME, key).await;
            assert_eq!(r.status(), 200, "{key}");
            assert_eq!(header(&r, "x-cache"), "STALE", "{key}");
            assert_eq!(&r.text().await.unwrap(), expected, "{key}");
        }
    }
    // The good copy is still the one served once the upstream heals.
    up.set_mode(Mode::Normal);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let r = gw.get(ME, KEY_ALPHA).await;
    assert_eq!(header(&r, "x-cache"), "MISS");
    gw.stop().await;
}

#[tokio::test]
async fn big_numbers_reach_profiled_callers_digit_for_digit() {
    const BODY: &[u8] = br#"{"id": 123456789012345678901234567890, "u64max_plus_one": 18446744073709551616, "precise": 0.1000000000000000055511151231257827, "exp": 1e400, "email": "maria@example.com"}"#;
    let up = FakeUpstream::start().await;
    up.set_mode(Mode::Raw(BODY));
    let gw = Harness::start(&with_profiled_client(&up.url())).await;
    let raw = gw.get(ME, KEY_ALPHA).await;
    assert_eq!(raw.status(), 200);
    assert_eq!(
        raw.bytes().await.unwrap(),
        BODY,
        "no profile: the bytes as received"
    );
    let r = gw.get(ME, KEY_DELTA).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for number in [
        "123456789012345678901234567890",
        "18446744073709551616",
        "0.1000000000000000055511151231257827",
    ] {
        assert!(text.contains(number), "{number} rounded in {text}");
    }
    // Beyond f64's range: kept as the same number (the exponent may be written `e+`).
    assert!(
        text.contains("\"exp\":1e+400") || text.contains("\"exp\":1e400"),
        "{text}"
    );
    assert!(!text.contains("maria"), "{text}");
    assert_eq!(up.calls(), 1);
    gw.stop().await;
}

/// A fake forward proxy: counts connections and what it was sent, answers 502.
async fn fake_proxy() -> (u16, Arc<AtomicUsize>, Arc<std::sync::Mutex<String>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (hits, seen) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(std::sync::Mutex::new(String::new())),
    );
    let (h, s) = (hits.clone(), seen.clone());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                if let Ok(n) = sock.read(&mut buf).await {
                    s.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
                let _ = sock
                    .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    (port, hits, seen)
}

#[tokio::test]
async fn the_proxy_environment_never_sees_the_gcore_key() {
    let up = FakeUpstream::start().await;
    let (proxy_port, proxy_hits, proxy_seen) = fake_proxy().await;
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let bin = Binary::start_with(
        &config(&up.url(), ""),
        &[
            ("HTTP_PROXY", &proxy),
            ("http_proxy", &proxy),
            ("HTTPS_PROXY", &proxy),
            ("https_proxy", &proxy),
            ("ALL_PROXY", &proxy),
            ("all_proxy", &proxy),
        ],
    );
    let r = reqwest::Client::new()
        .get(bin.url(ME))
        .header("authorization", format!("APIKey {KEY_ALPHA}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.calls(), 1, "the upstream was called directly");
    assert_eq!(
        proxy_hits.load(Ordering::SeqCst),
        0,
        "the proxy was not used"
    );
    assert!(!proxy_seen.lock().unwrap().contains(SECRET_A));
}

/// Sends one raw request head and returns the status line's code (0 if none came back).
async fn raw_status(addr: std::net::SocketAddr, head: &[u8]) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(head).await;
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap_or(Ok(0))
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn absurd_methods_are_refused_and_logged_as_other() {
    let up = FakeUpstream::start().await;
    let bin = Binary::start(&config(&up.url(), ""));
    let long = "M".repeat(50_000);
    let head =
        format!("{long} {ME} HTTP/1.1\r\nHost: gw\r\nAuthorization: APIKey {KEY_ALPHA}\r\n\r\n");
    assert_eq!(raw_status(bin.addr, head.as_bytes()).await, 400);
    let head =
        format!("PURGE {ME} HTTP/1.1\r\nHost: gw\r\nAuthorization: APIKey {KEY_ALPHA}\r\n\r\n");
    assert_eq!(raw_status(bin.addr, head.as_bytes()).await, 405);
    let head = format!("BREW {ME} HTTP/1.1\r\nHost: gw\r\n\r\n");
    let unauthenticated = raw_status(bin.addr, head.as_bytes()).await;
    assert!(
        unauthenticated == 401 || unauthenticated == 405,
        "{unauthenticated}"
    );
    assert_eq!(up.calls(), 0);
    // The access log names standard methods only.
    let mut methods = Vec::new();
    for _ in 0..100 {
        methods = bin
            .log_lines()
            .into_iter()
            .filter(|v| v["target"] == "gcore_gateway::access")
            .map(|v| v["method"].as_str().unwrap_or("").to_string())
            .collect();
        if methods.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(methods.len(), 3, "{methods:?}");
    assert!(methods.iter().all(|m| m == "OTHER"), "{methods:?}");
    let log = bin.stderr.lock().unwrap().clone();
    assert!(!log.contains("MMMMMMMM") && !log.contains("BREW") && !log.contains("PURGE"));
}

#[tokio::test]
async fn log_drops_are_exported() {
    let up = FakeUpstream::start().await;
    let gw = Harness::start(&config(&up.url(), "")).await;
    let m = gw.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("gateway_log_dropped_total ")),
        "{m}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_admin_port_answers_readyz_503_while_draining() {
    let up = FakeUpstream::start().await;
    up.set_delay(Duration::from_millis(1500));
    let (text, _, admin) = on_free_ports(&config(&up.url(), ""));
    let bin = Binary::start(&text);
    let http = reqwest::Client::new();
    wait_ready(&http, admin).await;
    let slow = tokio::spawn({
        let (http, url) = (http.clone(), bin.url(ME));
        async move {
            http.get(url)
                .header("authorization", format!("APIKey {KEY_ALPHA}"))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::process::Command::new("kill")
        .args(["-TERM", &bin.child.id().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let readyz = http
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .await
        .expect("the admin port is still up during the drain");
    assert_eq!(readyz.status(), 503);
    let metrics = http
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        metrics.status(),
        200,
        "metrics can be scraped during the drain"
    );
    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "the in-flight request finished"
    );
}
