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
}

impl Redis {
    fn start_on(port: u16) -> Redis {
        Redis::start_with(port, &[])
    }
    pub(crate) fn start_with(port: u16, extra: &[&str]) -> Redis {
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
            .args(extra)
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
            let m = http
                .get(format!("http://127.0.0.1:{admin}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
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
