//! The core path against a real fake upstream and the real gateway on loopback.

use std::time::Duration;

use crate::support::*;

const ME: &str = "/iam/clients/me";

#[tokio::test]
async fn every_credential_form_is_accepted_and_never_forwarded() {
    let up = FakeUpstream::start().await;
    let gw = Harness::start(&config(&up.url(), "")).await;
    let forms: [(&str, String); 5] = [
        ("authorization", format!("APIKey {KEY_ALPHA}")),
        ("authorization", format!("apikey {KEY_ALPHA}")),
        ("authorization", format!("Bearer {KEY_ALPHA}")),
        ("x-api-key", KEY_ALPHA.to_string()),
        ("authorization", format!("APIKey {KEY_ALPHA2}")), // rotated second key
    ];
    for (name, value) in &forms {
        gw.gw.purge_local(None);
        let r = gw
            .http
            .get(gw.url(ME))
            .header(*name, value)
            .header("cookie", "session=caller-cookie")
            .header("x-forwarded-for", "6.6.6.6")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}: {value}");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), forms.len());
    for s in &seen {
        assert_eq!(s.method, "GET");
        assert_eq!(s.path, ME);
        let auth: Vec<_> = s.headers.get_all("authorization").iter().collect();
        assert_eq!(auth.len(), 1);
        assert_eq!(auth[0], format!("APIKey {SECRET_A}").as_str());
        assert!(s.headers.get("x-api-key").is_none());
        assert!(s.headers.get("cookie").is_none());
        assert!(s.headers.get("x-forwarded-for").is_none());
        for (_, v) in s.headers.iter() {
            let v = v.to_str().unwrap_or("");
            assert!(
                !v.contains(KEY_ALPHA) && !v.contains(KEY_ALPHA2),
                "caller key forwarded"
            );
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn hit_after_miss_with_cache_headers() {
    let up = FakeUpstream::start().await;
    let gw = Harness::start(&config(&up.url(), "")).await;
    let r1 = gw.get(ME, KEY_ALPHA).await;
    assert_eq!(r1.status(), 200);
    assert_eq!(header(&r1, "x-cache"), "MISS");
    assert_eq!(header(&r1, "content-type"), "application/json");
    assert_eq!(header(&r1, "vary"), "Authorization, X-Api-Key");
    assert_eq!(header(&r1, "age"), "0");
    assert!(header(&r1, "cache-control").starts_with("private, max-age="));
    let etag = header(&r1, "etag").to_string();
    assert!(etag.starts_with('"') && etag.len() > 10);
    assert!(!header(&r1, "x-request-id").is_empty());
    let b1 = r1.text().await.unwrap();
    let r2 = gw.get(ME, KEY_ALPHA).await;
    assert_eq!(header(&r2, "x-cache"), "HIT");
    assert_eq!(header(&r2, "etag"), etag);
    assert_eq!(r2.text().await.unwrap(), b1);
    assert_eq!(b1, body_for("A", 1));
    assert_eq!(up.calls(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_new_upstream_call_after_the_ttl() {
    let up = FakeUpstream::start().await;
    let cfg = config(&up.url(), "").edit("ttl = \"60s\"", "ttl = \"300ms\"");
    let gw = Harness::start(&cfg).await;
    assert_eq!(header(&gw.get(ME, KEY_ALPHA).await, "x-cache"), "MISS");
    assert_eq!(header(&gw.get(ME, KEY_ALPHA).await, "x-cache"), "HIT");
    up.set_version("A", 2);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = gw.get(ME, KEY_ALPHA).await;
    assert_eq!(header(&r, "x-cache"), "MISS");
    assert_eq!(r.text().await.unwrap(), body_for("A", 2));
    assert_eq!(up.calls(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn accounts_never_see_each_other() {
    let up = FakeUpstream::start().await;
    let gw = Harness::start(&config(&up.url(), "")).await;
    // Interleaved.
    for _ in 0..3 {
        assert_eq!(
            gw.get(ME, KEY_ALPHA).await.text().await.unwrap(),
            body_for("A", 1)
        );
        assert_eq!(
            gw.get(ME, KEY_BETA).await.text().await.unwrap(),
            body_for("B", 1)
        );
    }
    // Concurrent, cold.
    gw.gw.purge_local(None);
    up.set_delay(Duration::from_millis(100));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let key = if i % 2 == 0 { KEY_ALPHA } else { KEY_BETA };
        let (http, url) = (gw.http.clone(), gw.url(ME));
        tasks.push(tokio::spawn(async move {
            let r = http.get(url).header("x-api-key", key).send().await.unwrap();
            (key, r.text().await.unwrap())
        }));
    }
    for t in tasks {
        let (key, body) = t.await.unwrap();
        let want = if key == KEY_ALPHA {
            body_for("A", 1)
        } else {
            body_for("B", 1)
        };
        assert_eq!(body, want);
    }
    assert_eq!(
        up.calls(),
        4,
        "2 warm-up fills + one coalesced fill per account"
    );
    gw.stop().await;
}

#[tokio::test]
async fn hundred_concurrent_cold_requests_make_one_upstream_call() {
    let up = FakeUpstream::start().await;
    up.set_delay(Duration::from_millis(300));
    let gw = Harness::start(&config(&up.url(), "")).await;
    for a in concurrent_gets(&[&gw], ME, KEY_ALPHA, 100).await {
        assert_eq!(a.status, 200);
        assert_eq!(a.body, body_for("A", 1));
    }
    assert_eq!(up.calls(), 1);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("gateway_coalesced_requests_total 99"),
        "{metrics}"
    );
    gw.stop().await;
}

async fn error_body(r: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(r.status().as_u16(), status);
    assert_eq!(header(&r, "content-type"), "application/json");
    let rid = header(&r, "x-request-id").to_string();
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["error"]["status"], status);
    assert_eq!(v["error"]["code"], code);
    assert_eq!(v["error"]["request_id"], rid.as_str());
    v
}

#[tokio::test]
async fn error_rows_never_reach_the_upstream() {
    let up = FakeUpstream::start().await;
    let gw = Harness::start(&config(&up.url(), "")).await;
    let h = &gw.http;
    // 401: no key, unknown key, wrong scheme, key in the query string.
    let r = h.get(gw.url(ME)).send().await.unwrap();
    assert_eq!(header(&r, "www-authenticate"), "APIKey");
    error_body(r, 401, "unauthorized").await;
    let r = gw.get(ME, "not-a-known-key").await;
    assert_eq!(header(&r, "www-authenticate"), "APIKey");
    error_body(r, 401, "unauthorized").await;
    let r = h
        .get(gw.url(ME))
        .header("authorization", format!("Basic {KEY_ALPHA}"))
        .send()
        .await
        .unwrap();
    error_body(r, 401, "unauthorized").await;
    let r = h
        .get(gw.url(&format!("{ME}?api_key={KEY_ALPHA}")))
        .send()
        .await
        .unwrap();
    error_body(r, 401, "unauthorized").await;
    // 403: gamma may only use /iam/users/me.
    error_body(gw.get(ME, KEY_GAMMA).await, 403, "forbidden").await;
    // 404: not allow-listed.
    error_body(gw.get("/iam/users", KEY_ALPHA).await, 404, "not_found").await;
    error_body(gw.get("/healthz", KEY_ALPHA).await, 404, "not_found").await;
    error_body(gw.get("/metrics", KEY_ALPHA).await, 404, "not_found").await;
    // 405 with Allow.
    for m in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::PATCH,
    ] {
        let r = h
            .request(m.clone(), gw.url(ME))
            .header("authorization", format!("APIKey {KEY_ALPHA}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(header(&r, "allow"), "GET, HEAD", "{m}");
        error_body(r, 405, "method_not_allowed").await;
    }
    assert_eq!(up.calls(), 0);
    gw.stop().await;
}

#[tokio::test]
async fn traversal_variants_never_reach_another_upstream_path() {
    let up = FakeUpstream::start().await;
    let gw = Harness::start(&config(&up.url(), "")).await;
    let not_found = [
        "/iam/clients/me/../../users",
        "/iam/clients/me/%2e%2e/%2e%2e/clients",
        "/iam/clients/me/%2E%2E/%2E%2E/users/me/../../users",
        "/iam%2fclients%2fme",
        "/iam/clients%2Fme",
        "/IAM/CLIENTS/ME",
        "/iam/Clients/me",
        "/iam/clients/me/",
        "/iam/clients/me%00",
        "/iam/clients/me/..%2f..%2fusers",
        "/iam/%252e%252e/clients/me",
        "/iam/clients/me;x=1",
    ];
    for p in not_found {
        let r = gw.get(p, KEY_ALPHA).await;
        assert_eq!(r.status(), 404, "{p}");
    }
    assert_eq!(up.calls(), 0, "nothing went upstream");
    // Spellings that normalise to the allow-listed path are served from that path only.
    for p in [
        "//iam//clients/me",
        "/iam/./clients/me",
        "/iam/x/../clients/me",
        "/iam/clients/%6De",
    ] {
        let r = gw.get(p, KEY_ALPHA).await;
        assert_eq!(r.status(), 200, "{p}");
    }
    assert!(up.seen().iter().all(|s| s.path == ME));
    gw.stop().await;
}

#[tokio::test]
async fn if_none_match_and_head() {
    let up = FakeUpstream::start().await;
    let gw = Harness::start(&config(&up.url(), "")).await;
    let r = gw.get(ME, KEY_ALPHA).await;
    let etag = header(&r, "etag").to_string();
    let len = r.text().await.unwrap().len();
    let r = gw
        .http
        .get(gw.url(ME))
        .header("x-api-key", KEY_ALPHA)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(header(&r, "etag"), etag);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = gw
        .http
        .get(gw.url(ME))
        .header("x-api-key", KEY_ALPHA)
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = gw
        .http
        .head(gw.url(ME))
        .header("x-api-key", KEY_ALPHA)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-cache"), "HIT");
    assert_eq!(header(&r, "content-length"), len.to_string());
    assert!(r.bytes().await.unwrap().is_empty());
    assert_eq!(up.calls(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn request_id_is_echoed_when_sane() {
    let up = FakeUpstream::start().await;
    let gw = Harness::start(&config(&up.url(), "")).await;
    let r = gw
        .http
        .get(gw.url(ME))
        .header("x-request-id", "trace-42.a_b")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "x-request-id"), "trace-42.a_b");
    let v = error_body(r, 401, "unauthorized").await;
    assert_eq!(v["error"]["request_id"], "trace-42.a_b");
    let r = gw
        .http
        .get(gw.url(ME))
        .header("x-request-id", "<script>")
        .send()
        .await
        .unwrap();
    assert_ne!(header(&r, "x-request-id"), "<script>");
    gw.stop().await;
}

#[tokio::test]
async fn only_200_is_cached_and_upstream_error_bodies_never_leak() {
    let up = FakeUpstream::start().await;
    let gw = Harness::start(&config(&up.url(), "")).await;
    for (status, want, code) in [
        (500, 502, "upstream_error"),
        (401, 502, "upstream_error"),
        (404, 502, "upstream_error"),
    ] {
        up.set_mode(Mode::Status(status));
        let r = gw.get(ME, KEY_BETA).await;
        let v = error_body(r, want, code).await;
        assert!(!v.to_string().contains("Bad permanent token"));
        assert!(!v.to_string().contains(SECRET_B));
        // Negative cache after 401: wait it out before the next case.
        tokio::time::sleep(Duration::from_millis(10)).await;
        gw.gw.purge_local(None);
        if status == 401 {
            tokio::time::sleep(gcore_gateway::bench_api::NEGATIVE_CACHE).await;
        }
    }
    let before = up.calls();
    up.set_mode(Mode::Normal);
    let r = gw.get(ME, KEY_BETA).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-cache"), "MISS");
    assert_eq!(up.calls(), before + 1);
    gw.stop().await;
}

#[tokio::test]
async fn admin_routes_live_only_on_the_admin_port() {
    let up = FakeUpstream::start().await;
    let gw = Harness::start(&config(&up.url(), "")).await;
    let r = gw.http.get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = gw.http.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = gw
        .http
        .get(gw.admin_url(ME))
        .header("x-api-key", KEY_ALPHA)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    for p in ["/healthz", "/readyz", "/metrics", "/admin/clients"] {
        let r = gw.http.get(gw.url(p)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{p} on the caller port");
    }
    assert_eq!(up.calls(), 0);
    gw.stop().await;
}

#[tokio::test]
async fn queries_are_ignored_unless_the_route_forwards_them() {
    let up = FakeUpstream::start().await;
    let cfg = config(&up.url(), "").edit(
        "path = \"/iam/users/me\"",
        "path = \"/iam/users/me\"\nforward_query = true",
    );
    let gw = Harness::start(&cfg).await;
    // Default route: the query is neither forwarded nor part of the key (no cache busting).
    assert_eq!(header(&gw.get(ME, KEY_ALPHA).await, "x-cache"), "MISS");
    for q in ["?x=1", "?x=2", "?api_key=zzz&b=2"] {
        let r = gw.get(&format!("{ME}{q}"), KEY_ALPHA).await;
        assert_eq!(header(&r, "x-cache"), "HIT", "{q}");
    }
    assert_eq!(up.calls(), 1);
    assert!(up.seen()[0].query.is_none());
    // A forwarding route: canonical query upstream and in the key.
    let users = "/iam/users/me";
    assert_eq!(
        header(
            &gw.get(&format!("{users}?b=2&a=1"), KEY_ALPHA).await,
            "x-cache"
        ),
        "MISS"
    );
    assert_eq!(
        header(
            &gw.get(&format!("{users}?a=1&b=2&"), KEY_ALPHA).await,
            "x-cache"
        ),
        "HIT"
    );
    assert_eq!(
        header(&gw.get(&format!("{users}?a=9"), KEY_ALPHA).await, "x-cache"),
        "MISS"
    );
    let seen = up.seen();
    assert_eq!(seen[1].path, users);
    assert_eq!(seen[1].query.as_deref(), Some("a=1&b=2"));
    assert_eq!(seen[2].query.as_deref(), Some("a=9"));
    gw.stop().await;
}

#[tokio::test]
async fn age_and_max_age_count_the_seconds() {
    let up = FakeUpstream::start().await;
    let cfg = config(&up.url(), "").edit("ttl = \"60s\"", "ttl = \"5s\"");
    let gw = Harness::start(&cfg).await;
    // RFC 9111 §4.2: max-age is the TTL, Age the seconds since the fetch; a client's time
    // left fresh is max-age − Age (the age is never counted twice).
    let r = gw.get(ME, KEY_ALPHA).await;
    assert_eq!(header(&r, "age"), "0");
    assert_eq!(header(&r, "cache-control"), "private, max-age=5");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = gw.get(ME, KEY_ALPHA).await;
    assert_eq!(header(&r, "x-cache"), "HIT");
    assert_eq!(header(&r, "age"), "2");
    assert_eq!(header(&r, "cache-control"), "private, max-age=5");
    gw.stop().await;
}

#[tokio::test]
async fn rate_limit_headers_on_every_answer_to_a_limited_client() {
    let up = FakeUpstream::start().await;
    let cfg = config(&up.url(), "").edit(
        "name = \"gamma\"\nkeys",
        "name = \"gamma\"\nrate = \"10/s\"\nkeys",
    );
    let gw = Harness::start(&cfg).await;
    for (path, status) in [("/iam/users", 404), (ME, 403), ("/iam/users/me", 200)] {
        let r = gw.get(path, KEY_GAMMA).await;
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(header(&r, "ratelimit-limit"), "10", "{path}");
        assert!(!header(&r, "ratelimit-remaining").is_empty(), "{path}");
        assert!(!header(&r, "ratelimit-reset").is_empty(), "{path}");
    }
    up.set_mode(Mode::Status(500));
    gw.gw.purge_local(None);
    let r = gw.get("/iam/users/me", KEY_GAMMA).await;
    assert_eq!(r.status(), 502);
    assert_eq!(header(&r, "ratelimit-limit"), "10");
    gw.stop().await;
}
