//! The client address behind load balancers (`server.trusted_proxies`): `X-Forwarded-For` is
//! believed only from a trusted peer and only up to the rightmost untrusted entry; the address
//! feeds the failed-auth throttle (IPv6 per /64) and the access log's `client_ip`; the header
//! never reaches the upstream.

use std::time::Duration;

use crate::support::binary::Binary;
use crate::support::*;

const ME: &str = "/iam/clients/me";

/// The test config with `auth_failure_limit` and `trusted_proxies` set.
fn cfg(upstream: &str, limit: &str, trusted: &str) -> String {
    config(upstream, "").edit(
        "auth_failure_limit = \"off\"\n",
        &format!("auth_failure_limit = \"{limit}\"\ntrusted_proxies = {trusted}\n"),
    )
}

/// GET from local address `from` (127.0.0.x) with `key` and, when given, `X-Forwarded-For`.
async fn get_via(
    from: &str,
    url: &str,
    key: &str,
    xff: Option<&str>,
    request_id: Option<&str>,
) -> reqwest::Response {
    let http = reqwest::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let mut req = http.get(url).header("x-api-key", key);
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    if let Some(id) = request_id {
        req = req.header("x-request-id", id);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn the_failed_auth_throttle_counts_per_forwarded_address() {
    let up = FakeUpstream::start().await;
    let gw = Harness::start(&cfg(&up.url(), "3/m", "[\"127.0.0.1/32\"]")).await;
    let url = gw.url(ME);
    let fail_from = |from: &'static str, xff: &'static str| {
        let url = url.clone();
        async move {
            for _ in 0..4 {
                let s = get_via(from, &url, "wrong-key", Some(xff), None)
                    .await
                    .status();
                assert!(s == 401 || s == 429, "{s}");
            }
        }
    };
    let status = |from: &'static str, xff: &'static str| {
        let url = url.clone();
        async move {
            get_via(from, &url, KEY_ALPHA, Some(xff), None)
                .await
                .status()
                .as_u16()
        }
    };

    // Behind the trusted proxy 127.0.0.1, each forwarded address has its own budget.
    fail_from("127.0.0.1", "203.0.113.1").await;
    assert_eq!(status("127.0.0.1", "203.0.113.1").await, 429);
    assert_eq!(status("127.0.0.1", "203.0.113.2").await, 200);
    // A caller cannot escape by writing its own entry: only the rightmost untrusted counts.
    assert_eq!(status("127.0.0.1", "198.51.100.77, 203.0.113.1").await, 429);
    assert_eq!(
        status("127.0.0.1", "203.0.113.1, 203.0.113.2, 127.0.0.1").await,
        200,
        "trusted hops are skipped: the client is 203.0.113.2"
    );

    // IPv6 clients are counted per /64.
    fail_from("127.0.0.1", "2001:db8:1:2::1").await;
    assert_eq!(status("127.0.0.1", "2001:db8:1:2::ffff").await, 429);
    assert_eq!(status("127.0.0.1", "[2001:db8:1:3::1]:4711").await, 200);

    // From an untrusted peer (127.0.0.2) the header is ignored: the peer is the client.
    fail_from("127.0.0.2", "203.0.113.3").await;
    assert_eq!(status("127.0.0.2", "203.0.113.4").await, 429);
    assert_eq!(status("127.0.0.1", "203.0.113.4").await, 200);

    // The header never reaches Gcore.
    assert!(up.calls() > 0);
    for s in up.seen() {
        assert!(s.headers.get("x-forwarded-for").is_none());
    }
    gw.stop().await;
}

#[tokio::test]
async fn without_trusted_proxies_the_header_is_ignored() {
    let up = FakeUpstream::start().await;
    let gw = Harness::start(&cfg(&up.url(), "3/m", "[]")).await;
    let url = gw.url(ME);
    for i in 0..4 {
        let xff = format!("203.0.113.{i}");
        get_via("127.0.0.1", &url, "wrong-key", Some(&xff), None).await;
    }
    // Every request counted against 127.0.0.1, whatever it claimed.
    let r = get_via("127.0.0.1", &url, KEY_ALPHA, Some("203.0.113.200"), None).await;
    assert_eq!(r.status(), 429);
    gw.stop().await;
}

/// The access line with request id `id`, waiting for the log writer.
async fn access_line(bin: &Binary, id: &str) -> serde_json::Value {
    for _ in 0..100 {
        if let Some(l) = bin
            .log_lines()
            .into_iter()
            .find(|l| l["target"] == "gcore_gateway::access" && l["request_id"] == id)
        {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no access line for {id}");
}

#[tokio::test]
async fn the_access_log_names_the_forwarded_client_only_behind_a_trusted_proxy() {
    let up = FakeUpstream::start().await;
    let bin = Binary::start(&cfg(&up.url(), "30/m", "[\"127.0.0.1\", \"10.0.0.0/8\"]"));
    let url = bin.url(ME);
    let cases = [
        (
            "127.0.0.1",
            Some("6.6.6.6, 203.0.113.7"),
            "fwd-1",
            "203.0.113.7",
        ),
        (
            "127.0.0.1",
            Some("203.0.113.8, 10.1.2.3"),
            "fwd-2",
            "203.0.113.8",
        ),
        ("127.0.0.1", None, "fwd-3", "127.0.0.1"),
        ("127.0.0.2", Some("203.0.113.9"), "fwd-4", "127.0.0.2"),
    ];
    for (from, xff, id, _) in cases {
        let r = get_via(from, &url, KEY_ALPHA, xff, Some(id)).await;
        assert_eq!(r.status(), 200);
    }
    for (from, xff, id, expected) in cases {
        let line = access_line(&bin, id).await;
        assert_eq!(line["client_ip"], expected, "from {from} with {xff:?}");
    }
    for s in up.seen() {
        assert!(s.headers.get("x-forwarded-for").is_none());
    }
}

#[test]
fn trusted_proxies_entries_are_validated() {
    let bad = cfg(
        "http://127.0.0.1:9",
        "30/m",
        "[\"10.0.0.0/8\", \"proxy.local\"]",
    );
    let e = gcore_gateway::config::Config::parse(&bad, "t", &secrets()).unwrap_err();
    assert!(e.to_string().contains("server.trusted_proxies[1]"), "{e}");
}
