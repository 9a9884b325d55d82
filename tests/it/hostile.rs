//! Hostile and broken input. The real binary on loopback is fed malformed, smuggling
//! and oversized requests over raw TCP (each case's status, the process stays up, its memory
//! stays bounded, the fake upstream sees nothing) and 200 slowloris connections; in-process
//! tests pin the connection timers, the in-flight cap, h2c and which headers pass each way
//! (docs/HEADERS.md).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::*;

use crate::support::binary::{Binary, BIN};
const ME: &str = "/iam/clients/me";

/// Inserts `lines` into the `[server]` table of a test config (replacing `request_timeout`).
fn server_settings(text: String, lines: &str) -> String {
    let text = text.edit("request_timeout = \"3s\"\n", "");
    text.replacen(
        "[server]\n",
        &format!("[server]\nrequest_timeout = \"10s\"\n{lines}\n"),
        1,
    )
}

/// What came back on one raw connection.
#[derive(Debug)]
struct RawAnswer {
    /// Status of the first response; `None` if the connection closed or reset first.
    status: Option<u16>,
    /// How many responses arrived (a smuggled request would add one).
    responses: usize,
    reset: bool,
    /// The server closed the connection after answering.
    closed: bool,
}

/// Sends `bytes` on a fresh connection and reads until the server closes it, or until no more
/// bytes arrive for a while after a response (keep-alive), or a hard deadline.
async fn raw(addr: SocketAddr, bytes: Vec<u8>) -> RawAnswer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    // Written concurrently with reading: the server may answer and close before it has read
    // everything (oversized heads).
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        wr
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut reset = false;
    let mut closed = false;
    let hard = Instant::now() + Duration::from_secs(15);
    loop {
        let wait = if got.is_empty() {
            hard.saturating_duration_since(Instant::now())
        } else {
            Duration::from_millis(500)
        };
        match tokio::time::timeout(wait, rd.read(&mut buf)).await {
            Ok(Ok(0)) => {
                closed = true;
                break;
            }
            Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => {
                reset = true;
                break;
            }
        }
    }
    writer.abort();
    let text = String::from_utf8_lossy(&got);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok());
    let responses = usize::from(text.starts_with("HTTP/1.")) + text.matches("\r\nHTTP/1.").count();
    RawAnswer {
        status,
        responses,
        reset,
        closed,
    }
}

/// A request head with the given start line and extra header lines (CRLF added).
fn head(start: &str, headers: &[&str]) -> Vec<u8> {
    let mut s = format!("{start}\r\nHost: gw.test\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn with_body(mut head: Vec<u8>, body: &[u8]) -> Vec<u8> {
    head.extend_from_slice(body);
    head
}

/// Limits of the hostile-table gateway (small, so that the cases stay cheap).
const TABLE_SERVER: &str = r#"header_read_timeout = "3s"
keep_alive_timeout = "5s"
max_header_bytes = "8KiB"
max_uri_bytes = "2KiB""#;

struct Case {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    /// The server may reset before the client reads the answer (it stops reading an
    /// oversized head and closes with bytes unread); then "no answer" also passes.
    reset_ok: bool,
}

fn cases() -> Vec<Case> {
    let key = format!("Authorization: APIKey {KEY_ALPHA}");
    let key = key.as_str();
    let get = format!("GET {ME} HTTP/1.1");
    let get = get.as_str();
    let smuggled = format!("GET {ME} HTTP/1.1\r\nHost: gw.test\r\n{key}\r\n\r\n");
    let big_header = format!("X-Pad: {}", "a".repeat(9 * 1024));
    let many_headers: Vec<String> = (0..120).map(|i| format!("X-H{i}: v")).collect();
    let many: Vec<&str> = many_headers
        .iter()
        .map(String::as_str)
        .chain([key])
        .collect();
    let huge_header = format!("X-Pad: {}", "a".repeat(256 * 1024));
    let long_uri = format!("GET {ME}?{} HTTP/1.1", "q=1&".repeat(700));
    let huge_uri = format!("GET {ME}?{} HTTP/1.1", "a".repeat(64 * 1024));
    let c = |name, request, status| Case {
        name,
        request,
        status,
        reset_ok: false,
    };
    vec![
        // Framing and smuggling.
        c(
            "CL+TE (CL.TE smuggling shape)",
            with_body(
                head(
                    get,
                    &[key, "Content-Length: 6", "Transfer-Encoding: chunked"],
                ),
                b"0\r\n\r\nG",
            ),
            400,
        ),
        c(
            "TE+CL with a smuggled request in the chunked body",
            with_body(
                head(
                    get,
                    &[key, "Transfer-Encoding: chunked", "Content-Length: 4"],
                ),
                format!("0\r\n\r\n{smuggled}").as_bytes(),
            ),
            400,
        ),
        c(
            "TE chunked alone, smuggled request after the last chunk",
            with_body(
                head(get, &[key, "Transfer-Encoding: chunked"]),
                format!("0\r\n\r\n{smuggled}").as_bytes(),
            ),
            400,
        ),
        c(
            "TE not chunked (identity)",
            head(get, &[key, "Transfer-Encoding: identity"]),
            400,
        ),
        c(
            "TE with space before colon",
            head(get, &[key, "Transfer-Encoding : chunked"]),
            400,
        ),
        c(
            "TE on HTTP/1.0",
            head(
                &format!("GET {ME} HTTP/1.0"),
                &[key, "Transfer-Encoding: chunked"],
            ),
            400,
        ),
        c(
            "duplicate Content-Length, different values",
            with_body(
                head(get, &[key, "Content-Length: 0", "Content-Length: 5"]),
                b"hello",
            ),
            400,
        ),
        c(
            "duplicate Content-Length, same value, GET body",
            with_body(
                head(get, &[key, "Content-Length: 5", "Content-Length: 5"]),
                b"hello",
            ),
            400,
        ),
        c(
            "Content-Length not a number",
            head(get, &[key, "Content-Length: 5x"]),
            400,
        ),
        c(
            "GET with a body carrying a second request",
            with_body(
                head(get, &[key, &format!("Content-Length: {}", smuggled.len())]),
                smuggled.as_bytes(),
            ),
            400,
        ),
        c(
            "GET with Expect: 100-continue and a body never sent",
            head(get, &[key, "Content-Length: 10", "Expect: 100-continue"]),
            400,
        ),
        c(
            "HEAD with a body",
            with_body(
                head(&format!("HEAD {ME} HTTP/1.1"), &[key, "Content-Length: 2"]),
                b"{}",
            ),
            400,
        ),
        c(
            "POST with a body (never read, never forwarded)",
            with_body(
                head(&format!("POST {ME} HTTP/1.1"), &[key, "Content-Length: 2"]),
                b"{}",
            ),
            405,
        ),
        // Invalid bytes.
        c(
            "control byte in a header name",
            head(get, &[key, "X-Bad\x01Name: v"]),
            400,
        ),
        c(
            "NUL in a header value",
            head(get, &[key, "X-Bad: a\x00b"]),
            400,
        ),
        c(
            "obsolete line folding",
            head(get, &[key, "X-Folded: a", " continued"]),
            400,
        ),
        c(
            "space before a header colon",
            head(get, &[key, "X-Api-Key : v"]),
            400,
        ),
        c(
            "raw UTF-8 bytes in the target (no such route)",
            head("GET /iam/clients/m\u{e9} HTTP/1.1", &[key]),
            404,
        ),
        c(
            "space in the target",
            head("GET /iam/clients /me HTTP/1.1", &[key]),
            400,
        ),
        c(
            "TLS ClientHello on the plain port",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcdefgh\r\n\r\n".to_vec(),
            400,
        ),
        c(
            "unknown HTTP version",
            head(&format!("GET {ME} HTTP/3.0"), &[key]),
            400,
        ),
        // Request targets and methods.
        c(
            "absolute-form to another host",
            head(&format!("GET http://evil.example{ME} HTTP/1.1"), &[key]),
            400,
        ),
        c(
            "absolute-form naming the gateway itself",
            head(&format!("GET http://gw.test{ME} HTTP/1.1"), &[key]),
            400,
        ),
        c(
            "authority-form CONNECT",
            head("CONNECT api.gcore.com:443 HTTP/1.1", &[key]),
            400,
        ),
        c(
            "CONNECT with an origin-form target",
            head(&format!("CONNECT {ME} HTTP/1.1"), &[key]),
            405,
        ),
        c("TRACE", head(&format!("TRACE {ME} HTTP/1.1"), &[key]), 405),
        c(
            "TRACE without a key",
            head(&format!("TRACE {ME} HTTP/1.1"), &[]),
            405,
        ),
        c(
            "asterisk-form OPTIONS",
            head("OPTIONS * HTTP/1.1", &[key]),
            404,
        ),
        c(
            "DELETE on a route",
            head(&format!("DELETE {ME} HTTP/1.1"), &[key]),
            405,
        ),
        // Paths.
        c(
            "dot-dot above the route",
            head("GET /iam/clients/me/../../../etc/passwd HTTP/1.1", &[key]),
            404,
        ),
        c(
            "encoded dot-dot",
            head("GET /iam/clients/%2e%2e/%2E%2E/admin HTTP/1.1", &[key]),
            404,
        ),
        c(
            "encoded slash",
            head("GET /iam%2fclients%2fme HTTP/1.1", &[key]),
            404,
        ),
        c(
            "double-encoded dot-dot",
            head("GET /iam/clients/me/%252e%252e/x HTTP/1.1", &[key]),
            404,
        ),
        c(
            "backslash traversal",
            head("GET /iam/clients/me/..%5c..%5cx HTTP/1.1", &[key]),
            404,
        ),
        c(
            "encoded NUL",
            head("GET /iam/clients/me%00 HTTP/1.1", &[key]),
            404,
        ),
        // Credentials.
        c(
            "key in the query string only",
            head(&format!("GET {ME}?api_key={KEY_ALPHA} HTTP/1.1"), &[]),
            401,
        ),
        c(
            "two Authorization headers",
            head(get, &[key, "Authorization: APIKey other-key-0123456789"]),
            401,
        ),
        c(
            "Authorization and X-Api-Key",
            head(get, &[key, &format!("X-Api-Key: {KEY_ALPHA}")]),
            401,
        ),
        c(
            "Basic scheme",
            head(get, &[&format!("Authorization: Basic {KEY_ALPHA}")]),
            401,
        ),
        c(
            "1 KiB key",
            head(get, &[&format!("X-Api-Key: {}", "k".repeat(1024))]),
            401,
        ),
        c(
            "Proxy-Authorization instead of Authorization",
            head(get, &[&format!("Proxy-Authorization: APIKey {KEY_ALPHA}")]),
            401,
        ),
        // Sizes.
        c(
            "request target over max_uri_bytes",
            head(&long_uri, &[key]),
            414,
        ),
        c(
            "head over max_header_bytes",
            head(get, &[key, &big_header]),
            431,
        ),
        c("more than 100 header lines", head(get, &many), 431),
        Case {
            name: "256 KiB header (beyond the read buffer)",
            request: head(get, &[key, &huge_header]),
            status: 431,
            reset_ok: true,
        },
        Case {
            name: "64 KiB request target (beyond the read buffer)",
            request: head(&huge_uri, &[key]),
            status: 431,
            reset_ok: true,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_table_against_the_binary() {
    let up = FakeUpstream::start().await;
    let mut gw = Binary::start(&server_settings(config(&up.url(), ""), TABLE_SERVER));
    // Warm up allocator and pools with harmless 401s before the baseline.
    let http = reqwest::Client::new();
    for _ in 0..20 {
        let r = http.get(gw.url(ME)).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let rss_before = gw.rss_kib();

    let mut table = Vec::new();
    let mut failures = Vec::new();
    for round in 0..2 {
        for case in cases() {
            let a = raw(gw.addr, case.request).await;
            let ok = a.status == Some(case.status) || (case.reset_ok && a.status.is_none());
            if !ok {
                failures.push(format!(
                    "{}: expected {}, got {a:?}",
                    case.name, case.status
                ));
            }
            if a.responses > 1 {
                failures.push(format!(
                    "{}: {} responses (smuggled?)",
                    case.name, a.responses
                ));
            }
            assert!(gw.alive(), "gateway died on case {:?}", case.name);
            if round == 0 {
                table.push(format!(
                    "| {} | {} | {} | {} |",
                    case.name,
                    case.status,
                    if a.closed || a.reset {
                        "closed"
                    } else {
                        "kept"
                    },
                    match (a.status, a.reset) {
                        (Some(s), _) => s.to_string(),
                        (None, true) => "reset before the answer was read".to_string(),
                        (None, false) => "closed without an answer".to_string(),
                    },
                ));
            }
        }
    }
    // A flood of oversized heads on parallel connections.
    let flood: Vec<_> = (0..400)
        .map(|i| {
            let req = if i % 2 == 0 {
                head(
                    &format!("GET {ME} HTTP/1.1"),
                    &[&format!("X-Pad: {}", "b".repeat(9000))],
                )
            } else {
                with_body(
                    head(&format!("GET {ME} HTTP/1.1"), &["Content-Length: 4"]),
                    b"abcd",
                )
            };
            tokio::spawn(raw(gw.addr, req))
        })
        .collect();
    for f in flood {
        let a = f.await.unwrap();
        assert!(matches!(a.status, Some(431 | 400)), "{a:?}");
    }
    println!(
        "| case | expected | connection | got |\n|---|---|---|---|\n{}",
        table.join("\n")
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(gw.alive());

    // Nothing reached the upstream, even after a moment for stragglers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(up.calls(), 0, "a hostile request reached the upstream");

    let rss_after = gw.rss_kib();
    println!("RSS before {rss_before} KiB, after {rss_after} KiB");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );

    // Still serving normally afterwards.
    let r = http
        .get(gw.url(ME))
        .header("authorization", format!("APIKey {KEY_ALPHA}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.calls(), 1);
    let log = gw.stderr.lock().unwrap().clone();
    for secret in [SECRET_A, SECRET_B, KEY_ALPHA] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_does_not_starve_a_normal_caller() {
    let up = FakeUpstream::start().await;
    let gw = Binary::start(&server_settings(
        config(&up.url(), ""),
        "header_read_timeout = \"3s\"\nkeep_alive_timeout = \"30s\"",
    ));
    let addr = gw.addr;
    let connected = Arc::new(AtomicUsize::new(0));
    let lorises: Vec<_> = (0..200)
        .map(|i| {
            let connected = connected.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let mut s = TcpStream::connect(addr).await.unwrap();
                connected.fetch_add(1, Ordering::SeqCst);
                let _ = s
                    .write_all(format!("GET {ME} HTTP/1.1\r\n").as_bytes())
                    .await;
                let mut buf = [0u8; 256];
                // Trickle one header line every 250 ms until the server hangs up.
                for n in 0.. {
                    tokio::select! {
                        r = s.read(&mut buf) => match r {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        },
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {
                            let line = format!("X-Slow-{i}-{n}: z\r\n");
                            if s.write_all(line.as_bytes()).await.is_err() {
                                break;
                            }
                        }
                    }
                    if started.elapsed() > Duration::from_secs(60) {
                        return None;
                    }
                }
                Some(started.elapsed())
            })
        })
        .collect();
    while connected.load(Ordering::SeqCst) < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let http = reqwest::Client::new();
    for key in [KEY_ALPHA, KEY_BETA] {
        let t = Instant::now();
        let r = http
            .get(gw.url(ME))
            .header("authorization", format!("APIKey {key}"))
            .send()
            .await
            .unwrap();
        let took = t.elapsed();
        assert_eq!(r.status(), 200);
        assert!(took < Duration::from_secs(1), "normal caller took {took:?}");
    }
    // Every trickling connection is cut by header_read_timeout (3 s), none lives on.
    let mut cut = 0;
    for l in lorises {
        if let Some(alive_for) = l.await.unwrap() {
            assert!(alive_for < Duration::from_secs(30), "{alive_for:?}");
            cut += 1;
        }
    }
    assert_eq!(cut, 200);
    assert_eq!(up.calls(), 2);
}

#[test]
fn hash_key_warns_below_16_bytes() {
    for (key, warns) in [("fifteen-bytes-k", true), ("sixteen-bytes-ke", false)] {
        assert_eq!(key.len(), if warns { 15 } else { 16 });
        let out = Command::new(BIN).args(["hash-key", key]).output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), hash(key));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.contains("warning"), warns, "{key}: {err}");
        assert!(!err.contains(key), "the warning must not echo the key");
    }
}

// ---------------------------------------------------------------------------------------------
// In-process: connection timers, in-flight cap, h2c, headers each way
// ---------------------------------------------------------------------------------------------

/// Reads one HTTP/1.1 response (head and `Content-Length` body); returns its status.
async fn read_response(s: &mut TcpStream) -> u16 {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "closed before a response");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return text[9..12].parse().unwrap();
            }
        }
    }
}

/// Waits for the server to close the connection; returns how long that took.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Duration {
    let t = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return t.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("connection still open after {limit:?}"),
        }
    }
}

fn request_401() -> &'static [u8] {
    b"GET /iam/clients/me HTTP/1.1\r\nHost: gw.test\r\n\r\n"
}

/// A fake upstream and a gateway in front of it with these `[server]` lines.
async fn gateway_with(server_lines: &str) -> (Arc<FakeUpstream>, Harness) {
    let up = FakeUpstream::start().await;
    let gw = Harness::start(&server_settings(config(&up.url(), ""), server_lines)).await;
    (up, gw)
}

/// An h2c client with its connection to `gw` established (one 401 answered).
async fn h2c_connected(gw: &Harness) -> reqwest::Client {
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    h2
}

/// A connection that has had one request answered (401) and is now idle.
async fn served_connection(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request_401()).await.unwrap();
    assert_eq!(read_response(&mut s).await, 401);
    s
}

#[tokio::test]
async fn idle_keep_alive_connections_close_after_keep_alive_timeout() {
    let (_up, gw) =
        gateway_with("header_read_timeout = \"60s\"\nkeep_alive_timeout = \"1s\"").await;
    let mut s = served_connection(gw.addr).await;
    // Idle from here: closed after ~1 s, far before the 60 s header timeout.
    closed_within(&mut s, Duration::from_secs(20)).await;
    gw.stop().await;
}

#[tokio::test]
async fn idle_connections_outlive_the_header_read_timeout() {
    let (_up, gw) =
        gateway_with("header_read_timeout = \"1s\"\nkeep_alive_timeout = \"60s\"").await;
    let mut s = served_connection(gw.addr).await;
    // Idle for well over the header timeout: still open, and serves the next request.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.write_all(request_401()).await.unwrap();
    assert_eq!(read_response(&mut s).await, 401);
    // A next head that starts but never ends is cut by the header timeout.
    s.write_all(b"GET /iam/clients/me HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    closed_within(&mut s, Duration::from_secs(20)).await;
    gw.stop().await;
}

#[tokio::test]
async fn silent_and_slow_heads_are_cut_by_the_header_read_timeout() {
    let (up, gw) = gateway_with("header_read_timeout = \"1s\"\nkeep_alive_timeout = \"60s\"").await;
    // Connects and sends nothing.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    // Sends three bytes (not even enough to tell HTTP/1.1 from HTTP/2).
    let mut partial = TcpStream::connect(gw.addr).await.unwrap();
    partial.write_all(b"GET").await.unwrap();
    // Sends the HTTP/2 preface only partly.
    let mut preface = TcpStream::connect(gw.addr).await.unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    for s in [&mut silent, &mut partial, &mut preface] {
        closed_within(s, Duration::from_secs(20)).await;
    }
    assert_eq!(up.calls(), 0);
    gw.stop().await;
}

#[tokio::test]
async fn idle_http2_connections_close_despite_keep_alive_pings() {
    let (_up, gw) =
        gateway_with("header_read_timeout = \"60s\"\nkeep_alive_timeout = \"1s\"").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(gw.url(ME)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(gw.gw.open_connections(), 1);
    // The server pings every 500 ms and the client answers; still, with no request in flight
    // the connection is closed after about a second.
    let t = Instant::now();
    while gw.gw.open_connections() != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "idle h2 connection kept open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served_and_get_bodies_refused() {
    let up = FakeUpstream::start().await;
    let gw = Harness::start(&config(&up.url(), "")).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(gw.url(ME))
        .header("authorization", format!("APIKey {KEY_ALPHA}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-cache"), "MISS");
    // A GET body over HTTP/2 (DATA frames, no Content-Length) and over HTTP/1.1.
    let r = h2
        .get(gw.url(ME))
        .header("authorization", format!("APIKey {KEY_ALPHA}"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter([
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"x\":1}")),
        ])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A header list over max_header_bytes (16 KiB by default) is refused by the h2 layer.
    let r = h2
        .get(gw.url(ME))
        .header("authorization", format!("APIKey {KEY_ALPHA}"))
        .header("x-pad", "p".repeat(20 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let r = gw
        .http
        .get(gw.url(ME))
        .header("authorization", format!("APIKey {KEY_ALPHA}"))
        .body("{\"x\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(up.calls(), 1);
    gw.stop().await;
}

/// The protocol is chosen from the first bytes, however they are split into segments: the
/// HTTP/2 preface sent a byte at a time is h2c (the server answers with its SETTINGS frame),
/// an HTTP/1.1 request whose first byte could start the preface is HTTP/1.1, and a caller that
/// stops inside `PRI` is cut by the head timeout.
#[tokio::test]
async fn the_protocol_is_chosen_from_the_first_bytes_however_they_arrive() {
    let (up, gw) = gateway_with("header_read_timeout = \"1s\"").await;
    // The preface in pieces, then an empty SETTINGS frame.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    for piece in [&b"P"[..], b"R", b"I", b" * HTTP/2.0\r\n\r\nSM\r\n\r\n"] {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .expect("an HTTP/2 answer")
        .unwrap();
    assert_eq!(head[3], 4, "the server's first frame is SETTINGS: {head:?}");
    // A request that starts like the preface but is HTTP/1.1 gets an HTTP/1.1 answer.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"PRI /iam/clients/me HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let status = read_response(&mut s).await;
    assert!(
        (400..500).contains(&status),
        "an HTTP/1.1 answer, got {status}"
    );
    // "P" then the rest of a POST: HTTP/1.1 (refused as a method, with an HTTP/1.1 answer).
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    s.write_all(b"OST /iam/clients/me HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await, 401);
    // Stalled inside "PRI": closed by the head timeout, nothing sent upstream.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"PR").await.unwrap();
    closed_within(&mut s, Duration::from_secs(10)).await;
    assert_eq!(up.calls(), 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_cap_answers_503_at_once() {
    let up = FakeUpstream::start().await;
    // max_connections = 2 is also the in-flight cap; one HTTP/2 connection carries all.
    let text = config(&up.url(), "").edit(
        "timeout = \"2s\"\nconnect_timeout",
        "timeout = \"8s\"\nconnect_timeout",
    );
    let gw = Harness::start(&server_settings(text, "max_connections = 2")).await;
    let h2 = h2c_connected(&gw).await;
    up.set_delay(Duration::from_secs(4));
    let t = Instant::now();
    let reqs: Vec<_> = (0..10)
        .map(|_| {
            let h2 = h2.clone();
            let url = gw.url(ME);
            tokio::spawn(async move {
                let r = h2
                    .get(url)
                    .header("authorization", format!("APIKey {KEY_ALPHA}"))
                    .send()
                    .await
                    .unwrap();
                let retry = header(&r, "retry-after").to_string();
                (r.status().as_u16(), retry, t.elapsed())
            })
        })
        .collect();
    let mut ok = 0;
    let mut overloaded = 0;
    for r in reqs {
        let (status, retry, took) = r.await.unwrap();
        match status {
            200 => ok += 1,
            503 => {
                overloaded += 1;
                assert_eq!(retry, "1");
                // Long before the slow upstream (4 s) could have answered anything.
                assert!(took < Duration::from_secs(3), "503 took {took:?}");
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!((ok, overloaded), (2, 8));
    assert_eq!(up.calls(), 1, "the two admitted requests coalesce");
    gw.stop().await;
}

/// An idle HTTP/1.1 keep-alive connection holds no in-flight slot: with `max_connections = 2`,
/// one idle HTTP/1.1 connection and one HTTP/2 connection, the HTTP/2 connection still gets
/// both slots for concurrent streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_connection_holds_no_in_flight_slot() {
    let (up, gw) = gateway_with("max_connections = 2").await;
    let mut idle = served_connection(gw.addr).await;
    // `idle` stays open and idle from here.
    let h2 = h2c_connected(&gw).await;
    up.set_delay(Duration::from_millis(500));
    let reqs: Vec<_> = (0..2)
        .map(|_| {
            let (h2, url) = (h2.clone(), gw.url(ME));
            tokio::spawn(async move {
                h2.get(url)
                    .header("authorization", format!("APIKey {KEY_ALPHA}"))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    for r in reqs {
        assert_eq!(r.await.unwrap(), 200);
    }
    // And the idle connection still serves its next request.
    idle.write_all(request_401()).await.unwrap();
    assert_eq!(read_response(&mut idle).await, 401);
    gw.stop().await;
}

/// An upstream that answers 200 with the fixture and every header a caller must never see.
async fn leaky_upstream() -> (SocketAddr, Arc<Mutex<Vec<axum::http::HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let seen = s2.clone();
        async move {
            seen.lock().unwrap().push(req.headers().clone());
            axum::http::Response::builder()
                .header("content-type", "application/json")
                .header("set-cookie", "session=upstream-secret; HttpOnly")
                .header("set-cookie", "other=x")
                .header("server", "nginx/1.2.3")
                .header("x-powered-by", "gcore")
                .header("strict-transport-security", "max-age=1")
                .header("access-control-allow-origin", "*")
                .header("x-request-id", "upstream-request-id")
                .header("x-frame-options", "DENY")
                .header("keep-alive", "timeout=5")
                .header("proxy-authenticate", "Basic")
                .header("www-authenticate", "Basic")
                .header("etag", "\"upstream-etag\"")
                .header("cache-control", "public, max-age=99999")
                .header("age", "999")
                .header("trailer", "x-t")
                .header("upgrade", "h2c")
                .body(axum::body::Body::from(CLIENTS_ME))
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

#[tokio::test]
async fn exactly_the_documented_headers_pass_each_way() {
    let (up, seen) = leaky_upstream().await;
    let gw = Harness::start(&config(&format!("http://{up}"), "")).await;
    let r = gw
        .http
        .get(gw.url(ME))
        .header("authorization", format!("APIKey {KEY_ALPHA}"))
        .header("host", "evil.example")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=99")
        .header("te", "trailers")
        .header("forwarded", "for=6.6.6.6;host=evil.example;proto=https")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .header("x-real-ip", "6.6.6.6")
        .header("via", "1.1 evil")
        .header("cookie", "session=caller")
        .header("proxy-authorization", "Basic eA==")
        .header("proxy-connection", "keep-alive")
        .header("origin", "https://evil.example")
        .header("referer", "https://evil.example/")
        .header("user-agent", "caller-agent/1")
        .header("accept", "text/html")
        .header("accept-encoding", "gzip, br")
        .header("x-api-key-extra", "x")
        .header("x-request-id", "caller-rid-1")
        .header("if-none-match", "\"nope\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Caller side: only what docs/HEADERS.md lists for a served answer.
    let got: BTreeSet<String> = r.headers().keys().map(|k| k.to_string()).collect();
    let allowed: BTreeSet<String> = [
        "content-type",
        "content-length",
        "date",
        "x-cache",
        "age",
        "etag",
        "cache-control",
        "vary",
        "x-request-id",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert!(
        got.is_subset(&allowed),
        "extra headers: {:?}",
        got.difference(&allowed)
    );
    assert_ne!(header(&r, "etag"), "\"upstream-etag\"");
    assert_eq!(header(&r, "age"), "0");
    assert!(header(&r, "cache-control").starts_with("private"));
    assert_eq!(header(&r, "x-request-id"), "caller-rid-1");
    // Upstream side: exactly the four headers the gateway writes.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let names: BTreeSet<&str> = seen[0].keys().map(|k| k.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["accept", "authorization", "host", "user-agent"]),
    );
    assert_eq!(
        seen[0]["authorization"],
        format!("APIKey {SECRET_A}").as_str()
    );
    assert_eq!(seen[0]["host"], up.to_string().as_str());
    assert_eq!(seen[0]["accept"], "application/json");
    assert!(seen[0]["user-agent"]
        .to_str()
        .unwrap()
        .starts_with("gcore-gateway/"));
    gw.stop().await;
}
