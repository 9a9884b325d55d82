//! Replicas sharing one cache, one upstream call and one rate limit through a real
//! Redis. Each test starts its own `redis-server` on a free port (never a Redis it did not
//! start); a missing `redis-server` binary fails loudly (scripts/test.sh installs it).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

const ME: &str = "/iam/clients/me";

struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        let r = Redis {
            port,
            child: Some(child),
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return r;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start on {port}");
    }
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Redis::start_on(port)
    }
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn shared_config(up: &FakeUpstream, redis: &Redis, extra: &str) -> String {
    config(
        &up.url(),
        &format!("{extra}\n[redis]\nurl = \"{}\"\nkey_prefix = \"test:\"\ntimeout = \"200ms\"\npool_size = 2\n", redis.url()),
    )
}

async fn wait_redis_up(gws: &[&Harness]) {
    for _ in 0..300 {
        if gws.iter().all(|g| g.gw.redis_up() == Some(true)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("gateways did not connect to Redis");
}

#[tokio::test]
async fn three_replicas_300_cold_requests_one_upstream_call() {
    let redis = Redis::start();
    let up = FakeUpstream::start().await;
    up.set_delay(Duration::from_millis(300));
    let cfg = shared_config(&up, &redis, "");
    let gws = [
        Harness::start(&cfg).await,
        Harness::start(&cfg).await,
        Harness::start(&cfg).await,
    ];
    wait_redis_up(&gws.iter().collect::<Vec<_>>()).await;
    let refs: Vec<&Harness> = gws.iter().collect();
    for a in concurrent_gets(&refs, ME, KEY_ALPHA, 300).await {
        assert_eq!(a.status, 200);
        assert_eq!(a.body, body_for("A", 1));
    }
    assert_eq!(up.calls(), 1, "one upstream call for three replicas");
    let l2: f64 = {
        let mut n = 0.0;
        for g in &gws {
            let m = g.metrics().await;
            assert!(m.contains("gateway_redis_up 1"), "{m}");
            n += m
                .lines()
                .find_map(|l| l.strip_prefix("gateway_l2_hits_total "))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
        }
        n
    };
    assert_eq!(l2, 2.0, "the two other replicas were filled from Redis");
    for g in gws {
        g.stop().await;
    }
}

#[tokio::test]
async fn a_burst_of_10_holds_across_three_replicas() {
    let redis = Redis::start();
    let up = FakeUpstream::start().await;
    let cfg = shared_config(&up, &redis, "").edit(
        "name = \"alpha\"\nkeys",
        "name = \"alpha\"\nrate = \"1/m\"\nburst = 10\nkeys",
    );
    let gws = [
        Harness::start(&cfg).await,
        Harness::start(&cfg).await,
        Harness::start(&cfg).await,
    ];
    wait_redis_up(&gws.iter().collect::<Vec<_>>()).await;
    let refs: Vec<&Harness> = gws.iter().collect();
    let mut ok = 0;
    for a in concurrent_gets(&refs, ME, KEY_ALPHA, 45).await {
        assert!(
            a.headers.contains_key("ratelimit-remaining"),
            "RateLimit headers in shared mode too"
        );
        match a.status {
            200 => ok += 1,
            429 => {}
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(ok, 10, "exactly the burst across all replicas");
    for g in gws {
        g.stop().await;
    }
}

#[tokio::test]
async fn redis_down_callers_still_served_then_shared_again() {
    let mut redis = Redis::start();
    let port = redis.port;
    let up = FakeUpstream::start().await;
    let cfg = shared_config(&up, &redis, "").edit(
        "name = \"alpha\"\nkeys",
        "name = \"alpha\"\nrate = \"100/s\"\nkeys",
    );
    let g1 = Harness::start(&cfg).await;
    let g2 = Harness::start(&cfg).await;
    wait_redis_up(&[&g1, &g2]).await;
    assert_eq!(g1.get(ME, KEY_ALPHA).await.status(), 200);
    assert_eq!(up.calls(), 1);
    redis.stop();
    // Redis is gone: both replicas keep answering, from L1 or their own upstream call.
    for _ in 0..5 {
        let r = g1.get(ME, KEY_ALPHA).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-cache"), "HIT");
    }
    let started = std::time::Instant::now();
    let r = g2.get(ME, KEY_ALPHA).await;
    assert_eq!(r.status(), 200, "served without Redis");
    assert!(started.elapsed() < Duration::from_secs(2));
    let m = g2.metrics().await;
    assert!(m.contains("gateway_redis_up 0"), "{m}");
    assert!(m.contains("gateway_redis_fallback_total"), "{m}");
    // Redis is back on the same port: shared again.
    let _redis = Redis::start_on(port);
    g1.gw.purge_local(None);
    g2.gw.purge_local(None);
    let mut shared_again = false;
    for _ in 0..100 {
        let _ = g1.get(ME, KEY_ALPHA).await;
        if g1.gw.redis_up() == Some(true) {
            shared_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(shared_again, "the replica went back to shared mode");
    g1.gw.purge_local(None);
    let before = up.calls();
    assert_eq!(g1.get(ME, KEY_ALPHA).await.status(), 200);
    g2.gw.purge_local(None);
    for _ in 0..50 {
        if g2.gw.redis_up() == Some(true) {
            break;
        }
        let _ = g2.get(ME, KEY_BETA).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls_b = up.calls();
    let r = g2.get(ME, KEY_ALPHA).await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.calls(), calls_b, "g2 took g1's answer from Redis");
    assert!(up.calls() <= before + 2);
    g1.stop().await;
    g2.stop().await;
}

#[tokio::test]
async fn a_dead_lock_holder_is_taken_over_after_expiry() {
    let redis = Redis::start();
    let up = FakeUpstream::start().await;
    // Lock TTL = upstream.timeout * (retries + 1) + 1 s, capped by request_timeout (3 s).
    let cfg = shared_config(&up, &redis, "").edit("timeout = \"2s\"", "timeout = \"500ms\"");
    let g = Harness::start(&cfg).await;
    wait_redis_up(&[&g]).await;
    // Another replica took the fill lock and died: its lock stays until it expires.
    let tag = g.gw.current().config.accounts[0].redis_tag().to_string();
    let lock_key = format!("test:l:{tag}:{ME}");
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "SET",
            &lock_key,
            "dead-replica",
            "NX",
            "PX",
            "1200",
        ])
        .output()
        .expect("redis-cli");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    let started = std::time::Instant::now();
    let r = g.get(ME, KEY_ALPHA).await;
    let waited = started.elapsed();
    assert_eq!(r.status(), 200);
    assert_eq!(up.calls(), 1, "this replica fetched after taking over");
    assert!(
        waited >= Duration::from_millis(1000),
        "waited for the expiry: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(2900),
        "but not for the whole request timeout: {waited:?}"
    );
    g.stop().await;
}

/// The same cold load (300 requests, 300 ms upstream) on 1 replica, on 3 replicas without
/// Redis, and on 3 replicas with Redis: upstream calls 1, 3, 1.
#[tokio::test]
async fn upstream_calls_one_vs_three_replicas() {
    async fn storm(gws: &[&Harness]) {
        for a in concurrent_gets(gws, ME, KEY_ALPHA, 300).await {
            assert_eq!(a.status, 200);
        }
    }
    let redis = Redis::start();
    let mut counts = Vec::new();
    for (replicas, with_redis) in [(1, false), (3, false), (3, true)] {
        let up = FakeUpstream::start().await;
        up.set_delay(Duration::from_millis(300));
        let cfg = if with_redis {
            shared_config(&up, &redis, "")
        } else {
            config(&up.url(), "")
        };
        let mut gws = Vec::new();
        for _ in 0..replicas {
            gws.push(Harness::start(&cfg).await);
        }
        let refs: Vec<&Harness> = gws.iter().collect();
        if with_redis {
            wait_redis_up(&refs).await;
        }
        storm(&refs).await;
        counts.push(up.calls());
        for g in gws {
            g.stop().await;
        }
    }
    println!("upstream calls for 300 cold requests: 1 replica {}, 3 replicas without Redis {}, 3 replicas with Redis {}", counts[0], counts[1], counts[2]);
    assert_eq!(counts, vec![1, 3, 1]);
}

#[tokio::test]
async fn purge_empties_the_shared_cache_too() {
    let redis = Redis::start();
    let up = FakeUpstream::start().await;
    let cfg = shared_config(&up, &redis, "");
    let g1 = Harness::start(&cfg).await;
    let g2 = Harness::start(&cfg).await;
    wait_redis_up(&[&g1, &g2]).await;
    assert_eq!(header(&g1.get(ME, KEY_ALPHA).await, "x-cache"), "MISS");
    assert_eq!(header(&g1.get(ME, KEY_BETA).await, "x-cache"), "MISS");
    assert_eq!(up.calls(), 2);
    let r = g1
        .http
        .post(g1.admin_url("/admin/cache/purge?account=A"))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["redis_purged"], 1, "{v}");
    // g2 has no L1 copy and the L2 copy of A is gone: A goes upstream, B comes from Redis.
    assert_eq!(header(&g2.get(ME, KEY_ALPHA).await, "x-cache"), "MISS");
    assert_eq!(up.calls(), 3);
    assert_eq!(g2.get(ME, KEY_BETA).await.status(), 200);
    assert_eq!(up.calls(), 3, "B still shared");
    g1.stop().await;
    g2.stop().await;
}

/// Every key of `redis` matching `pattern`, and a connection to change them with.
fn redis_keys(redis: &Redis, pattern: &str) -> (redis::Connection, Vec<String>) {
    let mut c = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut c).unwrap();
    (c, keys)
}

#[tokio::test]
async fn forged_or_garbage_l2_values_are_a_miss() {
    let redis = Redis::start();
    let up = FakeUpstream::start().await;
    let cfg = shared_config(&up, &redis, "");
    let g1 = Harness::start(&cfg).await;
    wait_redis_up(&[&g1]).await;
    assert_eq!(header(&g1.get(ME, KEY_ALPHA).await, "x-cache"), "MISS");
    assert_eq!(up.calls(), 1);
    let (mut c, keys) = redis_keys(&redis, "test:c:*");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let future = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 86_400_000;
    let forged = [
        "<html>maria.keller@acme-widgets.example</html>".to_string(),
        format!("v1|{future}|00000000000000000000000000000000|{{\"id\":1}}"),
        format!("v1|{future}|{}|{{\"id\":1}}", "ab".repeat(32)),
        String::new(),
    ];
    for (i, value) in forged.iter().enumerate() {
        let _: () = redis::cmd("SET")
            .arg(&keys[0])
            .arg(value)
            .arg("EX")
            .arg(60)
            .query(&mut c)
            .unwrap();
        // A fresh replica (empty L1) must not trust the value: it fetches again.
        let g = Harness::start(&cfg).await;
        wait_redis_up(&[&g]).await;
        let r = g.get(ME, KEY_ALPHA).await;
        assert_eq!(r.status(), 200, "{value}");
        assert_eq!(header(&r, "x-cache"), "MISS", "{value}");
        assert_eq!(r.text().await.unwrap(), body_for("A", 1));
        assert_eq!(up.calls(), 2 + i, "{value}");
        assert!(g.metrics().await.contains("gateway_l2_rejected_total"));
        g.stop().await;
    }
    g1.stop().await;
}

#[tokio::test]
async fn absurd_numbers_in_a_shared_limit_never_become_a_500() {
    let redis = Redis::start();
    let up = FakeUpstream::start().await;
    let cfg = shared_config(&up, &redis, "").edit(
        "name = \"alpha\"\n",
        "name = \"alpha\"\nrate = \"10/s\"\nburst = 5\n",
    );
    let g = Harness::start(&cfg).await;
    wait_redis_up(&[&g]).await;
    assert_eq!(g.get(ME, KEY_ALPHA).await.status(), 200);
    let (mut c, keys) = redis_keys(&redis, "test:r:*");
    assert!(!keys.is_empty());
    for value in [
        "1e308",
        "-1e308",
        "inf",
        "nan",
        "not a number",
        "99999999999999999999999",
    ] {
        for k in &keys {
            let _: () = redis::cmd("SET").arg(k).arg(value).query(&mut c).unwrap();
        }
        let r = g.get(ME, KEY_ALPHA).await;
        assert!(
            r.status() == 200 || r.status() == 429,
            "{value}: {}",
            r.status()
        );
    }
    g.stop().await;
}

/// How many answers replica `g` holds in its own cache.
async fn local_entries(g: &Harness) -> u64 {
    let v = g.admin_json("/admin/cache").await;
    v["accounts"].as_array().map_or(0, |a| {
        a.iter().map(|x| x["count"].as_u64().unwrap_or(0)).sum()
    })
}

/// Waits until replica `g` holds no answer; panics after `within`.
async fn emptied_within(g: &Harness, within: Duration) -> Duration {
    let started = std::time::Instant::now();
    while local_entries(g).await > 0 {
        assert!(
            started.elapsed() < within,
            "replica still holds its copies after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn a_copy_from_another_replica_is_a_hit_with_the_original_age() {
    let redis = Redis::start();
    let up = FakeUpstream::start().await;
    let cfg = shared_config(&up, &redis, "");
    let g1 = Harness::start(&cfg).await;
    let g2 = Harness::start(&cfg).await;
    wait_redis_up(&[&g1, &g2]).await;
    assert_eq!(header(&g1.get(ME, KEY_ALPHA).await, "x-cache"), "MISS");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // Replica 2 made no upstream call: a HIT, aged from replica 1's fetch.
    let r = g2.get(ME, KEY_ALPHA).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-cache"), "HIT");
    let first_age: u64 = header(&r, "age").parse().unwrap();
    assert!(first_age >= 1, "age {first_age}");
    assert_eq!(up.calls(), 1);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let r = g2.get(ME, KEY_ALPHA).await;
    assert_eq!(header(&r, "x-cache"), "HIT");
    let later: u64 = header(&r, "age").parse().unwrap();
    assert!(later > first_age, "age grows: {first_age} then {later}");
    // Dashboards see it as its own label: one shared hit, one local hit, no miss on g2.
    let m = g2.metrics().await;
    let line = |cache: &str| {
        m.lines()
            .find(|l| {
                l.starts_with("gateway_requests_total{")
                    && l.contains("client=\"alpha\"")
                    && l.contains(&format!("route=\"{ME}\""))
                    && l.contains(&format!("cache=\"{cache}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
    };
    assert_eq!(line("HIT_SHARED").as_deref(), Some("1"), "{m}");
    assert_eq!(line("HIT").as_deref(), Some("1"), "{m}");
    assert_eq!(line("MISS"), None, "{m}");
    g1.stop().await;
    g2.stop().await;
}

#[tokio::test]
async fn a_purge_on_one_replica_reaches_the_others_within_a_second() {
    let mut redis = Redis::start();
    let up = FakeUpstream::start().await;
    let cfg = shared_config(&up, &redis, "");
    let g1 = Harness::start(&cfg).await;
    let g2 = Harness::start(&cfg).await;
    wait_redis_up(&[&g1, &g2]).await;
    let purge = |g: &Harness, query: &'static str| {
        let req = g
            .http
            .post(g.admin_url(&format!("/admin/cache/purge{query}")));
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap()).unwrap()
        }
    };
    // Both replicas hold A and B.
    for g in [&g1, &g2] {
        assert_eq!(g.get(ME, KEY_ALPHA).await.status(), 200);
        assert_eq!(g.get(ME, KEY_BETA).await.status(), 200);
    }
    assert_eq!(up.calls(), 2);
    assert_eq!(local_entries(&g2).await, 2);

    // One account: only its copies go, on the other replica too.
    let v = purge(&g1, "?account=A").await;
    assert_eq!(v["replicas"], "notified", "{v}");
    let started = std::time::Instant::now();
    loop {
        let v = g2.admin_json("/admin/cache").await;
        let accounts: Vec<&str> = v["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a["account"].as_str())
            .collect();
        if accounts == ["B"] {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(header(&g2.get(ME, KEY_ALPHA).await, "x-cache"), "MISS");
    assert_eq!(up.calls(), 3);

    // Everything.
    purge(&g1, "").await;
    emptied_within(&g2, Duration::from_secs(1)).await;

    // Redis restarts in between (its subscribers drop, its purge count is lost): a purge
    // still reaches the other replica within a second once both are back.
    assert_eq!(g2.get(ME, KEY_BETA).await.status(), 200);
    redis.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let port = redis.port;
    let _redis = Redis::start_on(port);
    wait_redis_up(&[&g1, &g2]).await;
    assert_eq!(g2.get(ME, KEY_BETA).await.status(), 200);
    assert!(local_entries(&g2).await > 0);
    tokio::time::sleep(Duration::from_millis(1_200)).await; // resubscribed
    let v = purge(&g1, "").await;
    assert_eq!(v["replicas"], "notified", "{v}");
    emptied_within(&g2, Duration::from_secs(1)).await;
    g1.stop().await;
    g2.stop().await;
}

#[tokio::test]
async fn a_purge_announced_while_a_replica_was_not_listening_still_reaches_it() {
    let redis = Redis::start();
    let up = FakeUpstream::start().await;
    let cfg = shared_config(&up, &redis, "");
    let g2 = Harness::start(&cfg).await;
    wait_redis_up(&[&g2]).await;
    assert_eq!(g2.get(ME, KEY_ALPHA).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(700)).await; // the generation was read once
                                                          // A purge whose message this replica never received (it was cut off): only the purge
                                                          // generation moved.
    let (mut c, _) = redis_keys(&redis, "*");
    let _: u64 = redis::cmd("INCR")
        .arg("test:purge:gen")
        .query(&mut c)
        .unwrap();
    emptied_within(&g2, Duration::from_secs(1)).await;
    g2.stop().await;
}

#[tokio::test]
async fn a_429_on_one_replica_pauses_the_account_on_every_replica() {
    let redis = Redis::start();
    let up = FakeUpstream::start().await;
    let cfg = shared_config(&up, &redis, "");
    let g1 = Harness::start(&cfg).await;
    let g2 = Harness::start(&cfg).await;
    wait_redis_up(&[&g1, &g2]).await;
    up.set_mode(Mode::TooMany(30));
    let r = g1.get(ME, KEY_ALPHA).await;
    assert_eq!(r.status(), 503);
    assert_eq!(up.calls(), 1);
    up.set_mode(Mode::Normal);
    // Replica 2 never saw the 429, yet does not call: 503 with the time left.
    let r = g2.get(ME, KEY_ALPHA).await;
    assert_eq!(r.status(), 503);
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=30).contains(&retry), "retry-after {retry}");
    assert_eq!(up.calls(), 1, "no upstream call while paused");
    // Another account is not paused.
    assert_eq!(g2.get(ME, KEY_BETA).await.status(), 200);
    assert_eq!(up.calls(), 2);
    g1.stop().await;
    g2.stop().await;
}

#[tokio::test]
async fn the_upstream_budget_is_one_for_all_replicas() {
    let redis = Redis::start();
    let up = FakeUpstream::start().await;
    let cfg = shared_config(&up, &redis, "").edit("retries = 0", "retries = 0\nrate = \"2/m\"");
    let gws = [
        Harness::start(&cfg).await,
        Harness::start(&cfg).await,
        Harness::start(&cfg).await,
    ];
    wait_redis_up(&[&gws[0], &gws[1], &gws[2]]).await;
    // Four different answers, one per replica in turn: only two upstream calls in a minute.
    let asks = [
        (ME, KEY_ALPHA),
        (ME, KEY_BETA),
        ("/iam/users/me", KEY_GAMMA),
        ("/iam/users/me", KEY_BETA),
    ];
    let mut statuses = Vec::new();
    for (i, (path, key)) in asks.iter().enumerate() {
        statuses.push(gws[i % 3].get(path, key).await.status().as_u16());
    }
    assert_eq!(up.calls(), 2, "{statuses:?}");
    assert_eq!(statuses, vec![200, 200, 503, 503]);
    for g in gws {
        g.stop().await;
    }
}
