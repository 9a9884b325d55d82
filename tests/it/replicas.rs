//! Replicas sharing one cache, one upstream call and one rate limit through a real
//! Redis. Each test starts its own `redis-server` on a free port (never a Redis it did not
//! start); a missing `redis-server` binary fails loudly (scripts/test.sh installs it).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::binary::Binary;
use crate::support::*;

const ME: &str = "/iam/clients/me";

pub(crate) struct Redis {
    pub(crate) port: u16,
    child: Option<Child>,
    dir: std::path::PathBuf,
}

impl Redis {
    fn start_on(port: u16) -> Redis {
        Redis::start_with(port, &[])
    }

    /// redis-server on `port` with `extra` arguments.
    pub(crate) fn start_with(port: u16, extra: &[&str]) -> Redis {
        let port_arg = port.to_string();
        let mut args = vec!["--port", port_arg.as_str(), "--bind", "127.0.0.1"];
        args.extend_from_slice(extra);
        Redis::spawn("redis-server", port, &args)
    }

    /// Starts `program` (redis-server or redis-sentinel) with `args`, listening on `port`.
    fn spawn(program: &str, port: u16, args: &[&str]) -> Redis {
        // In a directory of its own: a replica writes the primary's snapshot to its working
        // directory, and a later redis-server started there would load it.
        let dir = scratch_dir(&format!("{program}-{port}"));
        let child = Command::new(program)
            .current_dir(&dir)
            .args(args)
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program} must be installed (scripts/test.sh installs it): {e}")
            });
        let r = Redis {
            port,
            child: Some(child),
            dir,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return r;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start on {port}");
    }
    pub(crate) fn start() -> Redis {
        Redis::start_on(free_port())
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn shared_config(up: &FakeUpstream, redis: &Redis, extra: &str) -> String {
    config(
        &up.url(),
        &format!("{extra}\n[redis]\nurl = \"{}\"\nkey_prefix = \"test:\"\ntimeout = \"200ms\"\npool_size = 2\n", redis.url()),
    )
}

/// `N` replicas of `cfg`, each connected to its Redis.
async fn replicas<const N: usize>(cfg: &str) -> [Harness; N] {
    let mut started = Vec::with_capacity(N);
    for _ in 0..N {
        started.push(Harness::start(cfg).await);
    }
    wait_redis_up(&started.iter().collect::<Vec<_>>()).await;
    match started.try_into() {
        Ok(all) => all,
        Err(_) => unreachable!("N replicas were started"),
    }
}

pub(crate) async fn wait_redis_up(gws: &[&Harness]) {
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
    let gws: [Harness; 3] = replicas(&cfg).await;
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
    let gws: [Harness; 3] = replicas(&cfg).await;
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
    let [g1, g2] = replicas(&cfg).await;
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
    let [g1, g2] = replicas(&cfg).await;
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

/// Waits until `n` replicas listen for purges (`prefix` is their `redis.key_prefix`).
async fn wait_subscribed(redis: &Redis, prefix: &str, n: i64) {
    let mut c = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    for _ in 0..300 {
        let (_, count): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(format!("{prefix}purge"))
            .query(&mut c)
            .unwrap();
        if count >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("replicas did not subscribe to purges");
}

/// Waits until replica `g` holds answers of exactly `accounts`; panics after `within`.
async fn holds_only_within(g: &Harness, accounts: &[&str], within: Duration) {
    let started = std::time::Instant::now();
    loop {
        let v = g.admin_json("/admin/cache").await;
        let held: Vec<&str> = v["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a["account"].as_str())
            .collect();
        if held == accounts {
            return;
        }
        assert!(started.elapsed() < within, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let [g1, g2] = replicas(&cfg).await;
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
    let [g1, g2] = replicas(&cfg).await;
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
    wait_subscribed(&redis, "test:", 2).await;
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
    holds_only_within(&g2, &["B"], Duration::from_secs(1)).await;
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
    wait_subscribed(&_redis, "test:", 2).await;
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
    // A purge whose message this replica never received (it was cut off): only the purge
    // generation moved.
    wait_subscribed(&redis, "test:", 1).await;
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
    let [g1, g2] = replicas(&cfg).await;
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
    let gws: [Harness; 3] = replicas(&cfg).await;
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

/// A fresh directory for files a test hands to Redis or the gateway.
fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gcore-gateway-{name}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn rediss_with_a_private_ca_is_shared() {
    // A private CA and a server certificate for 127.0.0.1 signed by it.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let dir = scratch_dir("rediss");
    let (ca, crt, pem) = (
        dir.join("ca.pem"),
        dir.join("redis.crt"),
        dir.join("redis.key"),
    );
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&pem, key.serialize_pem()).unwrap();

    let port = free_port();
    let _redis = Redis::spawn(
        "redis-server",
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            crt.to_str().unwrap(),
            "--tls-key-file",
            pem.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
        ],
    );
    let up = FakeUpstream::start().await;
    let redis_section = format!(
        "[redis]\nurl = \"rediss://127.0.0.1:{port}\"\nkey_prefix = \"tls:\"\ntimeout = \"500ms\"\npool_size = 1\n"
    );
    let trusting = config(
        &up.url(),
        &format!("{redis_section}ca_file = \"{}\"\n", ca.display()),
    );
    let g1 = Harness::start(&trusting).await;
    let g2 = Harness::start(&trusting).await;
    wait_redis_up(&[&g1, &g2]).await;
    assert_eq!(header(&g1.get(ME, KEY_ALPHA).await, "x-cache"), "MISS");
    assert_eq!(header(&g2.get(ME, KEY_ALPHA).await, "x-cache"), "HIT");
    assert_eq!(up.calls(), 1, "shared over TLS");

    // Without the CA the server is not trusted: no sharing, yet every caller is served.
    let untrusting = Harness::start(&config(&up.url(), &redis_section)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(untrusting.gw.redis_up(), Some(false));
    assert_eq!(untrusting.get(ME, KEY_BETA).await.status(), 200);
    for g in [g1, g2, untrusting] {
        g.stop().await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn behind_sentinel_the_shared_limit_survives_a_failover() {
    let primary = Redis::start();
    let replica_port = free_port();
    let _replica = Redis::spawn(
        "redis-server",
        replica_port,
        &[
            "--port",
            &replica_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--replicaof",
            "127.0.0.1",
            &primary.port.to_string(),
        ],
    );
    let dir = scratch_dir("sentinel");
    let conf = dir.join("sentinel.conf");
    let sentinel_port = free_port();
    std::fs::write(
        &conf,
        format!(
            "port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor gw 127.0.0.1 {} 1\n\
             sentinel down-after-milliseconds gw 5000\nsentinel failover-timeout gw 5000\n\
             logfile {}\n",
            primary.port,
            dir.join("sentinel.log").display()
        ),
    )
    .unwrap();
    let _sentinel = Redis::spawn("redis-sentinel", sentinel_port, &[conf.to_str().unwrap()]);
    let mut sentinel = redis::Client::open(format!("redis://127.0.0.1:{sentinel_port}"))
        .unwrap()
        .get_connection()
        .unwrap();
    // The sentinel must know the replica before it can fail over to it.
    for i in 0.. {
        let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
            .arg("replicas")
            .arg("gw")
            .query(&mut sentinel)
            .unwrap();
        if !replicas.is_empty() {
            break;
        }
        assert!(i < 200, "the sentinel never saw the replica");
        std::thread::sleep(Duration::from_millis(50));
    }

    const POKE: &str = "poke-team-key-0123456789";
    let up = FakeUpstream::start().await;
    let cfg = config(
        &up.url(),
        &format!(
            "[[clients]]\nname = \"poke\"\nkeys = [\"{}\"]\naccount = \"B\"\nrate = \"100/s\"\nburst = 100\n\n\
             [redis]\nurl = \"redis://sentinel-gives-the-host\"\nsentinels = [\"127.0.0.1:{sentinel_port}\"]\n\
             sentinel_master = \"gw\"\nkey_prefix = \"s:\"\ntimeout = \"1s\"\npool_size = 1\n",
            hash(POKE)
        ),
    )
    .edit(
        "name = \"alpha\"\nkeys",
        "name = \"alpha\"\nrate = \"1/m\"\nburst = 4\nkeys",
    )
    .edit("name = \"beta\"\nkeys", "name = \"beta\"\nrate = \"1/m\"\nburst = 4\nkeys");
    let [g1, g2] = replicas(&cfg).await;
    let allowed = |answers: Vec<Answer>| answers.iter().filter(|a| a.status == 200).count();
    let answers = concurrent_gets(&[&g1, &g2], ME, KEY_ALPHA, 12).await;
    let statuses: Vec<(u16, String)> = answers
        .iter()
        .map(|a| (a.status, a.body.chars().take(80).collect()))
        .collect();
    assert_eq!(allowed(answers), 4, "{statuses:?}");

    // The replica is in sync (the sentinel promotes only a replica with a live link).
    let mut replica = redis::Client::open(format!("redis://127.0.0.1:{replica_port}"))
        .unwrap()
        .get_connection()
        .unwrap();
    for i in 0.. {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut replica)
            .unwrap();
        if info.contains("master_link_status:up") {
            break;
        }
        assert!(i < 300, "the replica never synced: {info}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The primary dies; the sentinel promotes the replica. (down-after 5 s, not less: a
    // sentinel starved on a loaded machine enters TILT for 30 s, and a replica counts as fit
    // to promote only while its link has been down for under 10 × down-after.)
    drop(primary);
    let started = std::time::Instant::now();
    loop {
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("gw")
            .query(&mut sentinel)
            .unwrap();
        if addr.is_some_and(|(_, p)| p == replica_port) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "no failover: {}",
            std::fs::read_to_string(dir.join("sentinel.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The replicas notice on their next Redis call and ask the sentinel again.
    let mut stable = 0;
    while stable < 5 {
        for g in [&g1, &g2] {
            assert_eq!(g.get(ME, POKE).await.status(), 200);
        }
        stable = if g1.gw.redis_up() == Some(true) && g2.gw.redis_up() == Some(true) {
            stable + 1
        } else {
            0
        };
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never back on Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One limit again, on the new primary: a fresh client's burst holds across both.
    let answers = concurrent_gets(&[&g1, &g2], ME, KEY_BETA, 12).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(allowed(answers), 4, "{statuses:?}");
    g1.stop().await;
    g2.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn redis_settings_are_refused_with_the_key_named() {
    let dir = scratch_dir("redis-config");
    let ca = dir.join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let cases = [
        (format!("url = \"redis://h:1\"\nca_file = \"{}\"", ca.display()), "redis.ca_file"),
        ("url = \"rediss://h:1\"\nca_file = \"/nonexistent/ca.pem\"".to_string(), "redis.ca_file"),
        (format!("url = \"rediss://h:1\"\nca_file = \"{}\"", not_pem.display()), "redis.ca_file"),
        ("url = \"redis://h\"\nsentinels = [\"127.0.0.1:26379\"]".to_string(), "redis.sentinel_master"),
        ("url = \"redis://h\"\nsentinel_master = \"gw\"".to_string(), "redis.sentinels"),
        ("url = \"redis://h\"\nsentinels = [\"no-port\"]\nsentinel_master = \"gw\"".to_string(), "redis.sentinels"),
        (
            format!("url = \"rediss://h\"\nca_file = \"{}\"\nsentinels = [\"h:1\"]\nsentinel_master = \"gw\"", ca.display()),
            "redis.ca_file",
        ),
    ];
    for (section, key) in cases {
        let text = config("http://127.0.0.1:1", &format!("[redis]\n{section}\n"));
        let err = gcore_gateway::config::Config::parse(&text, "test.toml", &secrets())
            .expect_err(&section)
            .to_string();
        assert!(err.contains(key), "{section}: {err}");
    }
    // And what is valid parses.
    let ok = "[redis]\nurl = \"rediss://:pw@h\"\nsentinels = [\"10.0.0.1:26379\", \"[::1]:26380\"]\nsentinel_master = \"gw\"\n";
    gcore_gateway::config::Config::parse(&config("http://127.0.0.1:1", ok), "t", &secrets())
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_reload_that_changes_an_accounts_key_empties_that_account_everywhere() {
    let redis = Redis::start();
    let up = FakeUpstream::start().await;
    let cfg = shared_config(&up, &redis, "");
    let [g1, g2] = replicas(&cfg).await;
    wait_subscribed(&redis, "test:", 2).await;
    for g in [&g1, &g2] {
        assert_eq!(g.get(ME, KEY_ALPHA).await.status(), 200);
        assert_eq!(g.get(ME, KEY_BETA).await.status(), 200);
    }
    assert_eq!(local_entries(&g2).await, 2);
    // Replica 1 is reloaded with another key for account A.
    let rotated = cfg.edit(
        "name = \"A\"\napi_key_env = \"TEST_SECRET_A\"",
        "name = \"A\"\napi_key_env = \"TEST_SECRET_B\"",
    );
    g1.gw.set_embedded_text(rotated);
    assert_eq!(g1.reload().await.status(), 200);
    holds_only_within(&g2, &["B"], Duration::from_secs(1)).await;
    g1.stop().await;
    g2.stop().await;
}

/// `[redis]` with `url_env` or `url_file` instead of `url`: the file's trailing newline is
/// ignored, and the URL (with its password) never reaches the log, even at debug level.
#[tokio::test]
async fn the_redis_url_comes_from_env_or_file_and_is_never_logged() {
    const PASSWORD: &str = "redisPassw0rdNeverLogged";
    let redis = Redis::start_with(free_port(), &["--requirepass", PASSWORD]);
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}", redis.port);
    let up = FakeUpstream::start().await;
    let file = std::env::temp_dir().join(format!("gcore-gateway-redis-url-{}", std::process::id()));
    std::fs::write(&file, format!("{url}\n")).unwrap();
    let http = reqwest::Client::new();
    for source in [
        "url_env = \"TEST_REDIS_URL\"".to_string(),
        format!("url_file = \"{}\"", file.display()),
    ] {
        let text = config(
            &up.url(),
            &format!("[redis]\n{source}\ntimeout = \"500ms\"\n"),
        );
        let (text, _, admin) = on_free_ports(&text);
        let bin = Binary::start_with(&text, &[("TEST_REDIS_URL", &url), ("RUST_LOG", "debug")]);
        wait_ready(&http, admin).await;
        let mut connected = false;
        for _ in 0..200 {
            let m = admin_metrics(&http, admin).await;
            if m.lines().any(|l| l == "gateway_redis_up 1") {
                connected = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(connected, "{source}: the gateway did not connect to Redis");
        let r = http
            .get(bin.url(ME))
            .header("authorization", format!("APIKey {KEY_ALPHA}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{source}");
        let log = bin.stderr.lock().unwrap().clone();
        assert!(!log.is_empty());
        assert!(
            !log.contains(PASSWORD),
            "{source}: the Redis password was logged"
        );
    }
    let _ = std::fs::remove_file(&file);
}

/// Exactly one of `url`, `url_env`, `url_file`; every error is one line naming the key and
/// never quoting the URL (it may hold a password).
#[test]
fn the_redis_url_source_is_exactly_one_and_errors_name_the_key() {
    use gcore_gateway::config::Config;
    let base = config("http://127.0.0.1:9", "");
    let secret = "pw-in-the-url-0123456789";
    let mut env = secrets();
    env.insert("GOOD_URL".into(), "redis://127.0.0.1:6379\n".into());
    env.insert("BAD_URL".into(), format!("http://:{secret}@127.0.0.1:6379"));
    let missing_file = "/nonexistent/gcore-gateway/redis_url";
    let file =
        std::env::temp_dir().join(format!("gcore-gateway-redis-url-ok-{}", std::process::id()));
    std::fs::write(&file, "  redis://127.0.0.1:6379\n").unwrap();
    let ok_file = format!("url_file = \"{}\"", file.display());
    let parse = |redis: &str| {
        Config::parse(&format!("{base}\n[redis]\n{redis}\n"), "t.toml", &env)
            .map(|c| c.redis.is_some())
    };
    // Accepted: each source alone (surrounding whitespace of the value ignored).
    for good in [
        "url = \"redis://127.0.0.1:6379\"",
        "url_env = \"GOOD_URL\"",
        ok_file.as_str(),
    ] {
        assert_eq!(parse(good).ok(), Some(true), "{good}");
    }
    let cases: Vec<(String, &str)> = vec![
        (
            "key_prefix = \"x:\"".into(),
            "redis: set exactly one of url / url_env / url_file",
        ),
        (
            "url = \"redis://127.0.0.1:6379\"\nurl_env = \"GOOD_URL\"".into(),
            "redis: set exactly one of url / url_env / url_file",
        ),
        (
            format!("url_env = \"GOOD_URL\"\n{ok_file}"),
            "redis: set exactly one of url / url_env / url_file",
        ),
        (
            "url_env = \"UNSET_REDIS_URL\"".into(),
            "redis.url_env: environment variable UNSET_REDIS_URL is not set",
        ),
        (format!("url_env = \"{secret}\""), "redis.url_env"),
        (
            "url_env = \"BAD_URL\"".into(),
            "redis.url_env: must start with redis:// or rediss://",
        ),
        (
            format!("url_file = \"{missing_file}\""),
            "redis.url_file: cannot read the file",
        ),
        (
            format!("url = \"redis://:{secret}@127.0.0.1:notaport\""),
            "redis.url",
        ),
    ];
    for (redis, want) in cases {
        let err = parse(&redis).expect_err(&redis).to_string();
        assert!(err.contains(want), "{redis}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            !err.contains(secret),
            "{redis}: the error quotes a secret: {err}"
        );
    }
    let _ = std::fs::remove_file(&file);
}
