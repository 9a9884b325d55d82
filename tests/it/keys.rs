//! Team keys with ids and expiry dates, per-key usage, upstream calls caused and avoided per
//! team, `check`'s date warnings, `gen-key --id`, and the operator kit in deploy/ (alert
//! rules, PrometheusRule, ServiceMonitor, systemd unit).

use std::process::Command;
use std::time::{Duration, SystemTime};

use gcore_gateway::config::Config;

use crate::support::binary::{Binary, BIN};
use crate::support::*;

const ME: &str = "/iam/clients/me";
const KEY_DELTA: &str = "delta-team-key-0123456789";
const DAY: Duration = Duration::from_secs(24 * 3600);

fn date(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The test config with alpha's second key (`KEY_ALPHA2`) turned into the entry `table`
/// (`HASH2`, where present, stands for its hash); the first key stays plain.
fn with_alpha_keys(cfg: &str, table: &str) -> String {
    let (h1, h2) = (hash(KEY_ALPHA), hash(KEY_ALPHA2));
    let table = if table.contains("HASH2") {
        table.edit("HASH2", &h2)
    } else {
        table.to_string()
    };
    cfg.edit(
        &format!("keys = [\"{h1}\", \"{h2}\"]"),
        &format!("keys = [\"{h1}\", {table}]"),
    )
}

/// `sha256:` + the first 8 hex digits of the hash of `key`: how a plain key is named.
fn short(key: &str) -> String {
    hash(key)[..("sha256:".len() + 8)].to_string()
}

/// The value of the sample line starting with `series` (name plus labels), if any.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// The `/admin/clients` entry of `name`.
async fn admin_client(gw: &Harness, name: &str) -> serde_json::Value {
    let all = gw.admin_json("/admin/clients").await;
    all["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no client {name} in {all}"))
        .clone()
}

/// The key entry `id` of an `/admin/clients` client entry.
fn admin_key<'a>(client: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    client["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap_or_else(|| panic!("no key {id} in {client}"))
}

#[tokio::test]
async fn plain_and_table_keys_mix_in_one_client() {
    let up = FakeUpstream::start().await;
    let soon = date(SystemTime::now() + 30 * DAY);
    let cfg = with_alpha_keys(
        &config(&up.url(), ""),
        &format!("{{ id = \"2026-q4\", hash = \"HASH2\", expires = \"{soon}\" }}"),
    );
    let gw = Harness::start(&cfg).await;
    let r = gw.get(ME, KEY_ALPHA).await;
    assert_eq!(r.status(), 200);
    let r = gw.get(ME, KEY_ALPHA2).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-cache"), "HIT", "same client, same cache");
    let alpha = admin_client(&gw, "alpha").await;
    assert_eq!(alpha["keys"].as_array().unwrap().len(), 2, "{alpha}");
    let plain = admin_key(&alpha, &short(KEY_ALPHA));
    assert_eq!(plain["expires"], serde_json::Value::Null);
    assert_eq!(plain["requests"], 1);
    let table = admin_key(&alpha, "2026-q4");
    assert_eq!(table["expires"], soon.as_str());
    assert_eq!(table["expired"], false);
    assert_eq!(table["requests"], 1);
    let text = gw.admin_text("/admin/clients").await;
    assert!(
        !text.contains(&hash(KEY_ALPHA)) && !text.contains(KEY_ALPHA),
        "neither key nor full hash in /admin/clients: {text}"
    );
    gw.stop().await;
}

#[test]
fn key_table_mistakes_are_config_errors_naming_the_field() {
    let cfg = config("http://127.0.0.1:9", "");
    let h2 = "HASH2";
    let cases = [
        (
            format!(
                "{{ id = \"a\", hash = \"{h2}\" }}, {{ id = \"a\", hash = \"{}\" }}",
                hash("other-key-0123456789")
            ),
            "clients[0].keys[2].id",
            "duplicate key id",
        ),
        (
            format!("{{ id = \"has space\", hash = \"{h2}\" }}"),
            "clients[0].keys[1].id",
            "invalid name",
        ),
        (
            format!("{{ id = \"sha256:abcd\", hash = \"{h2}\" }}"),
            "clients[0].keys[1].id",
            "invalid name",
        ),
        (
            "{ id = \"a\", hash = \"my-plaintext-team-key\" }".to_string(),
            "clients[0].keys[1].hash",
            "sha256",
        ),
        (
            format!("{{ id = \"a\", hash = \"{h2}\", expires = \"next tuesday\" }}"),
            "clients[0].keys[1].expires",
            "RFC 3339",
        ),
        (
            format!("{{ id = \"a\", hash = \"{h2}\", expire = \"2027-01-01\" }}"),
            "line",
            "unknown field `expire`",
        ),
        (
            format!("{{ hash = \"{h2}\" }}"),
            "line",
            "missing field `id`",
        ),
        ("42".to_string(), "line", "`{ id, hash, expires }`"),
        (
            format!("{{ id = \"a\", hash = \"{}\" }}", hash(KEY_BETA)),
            // Found where it is listed the second time (beta's plain entry).
            "clients[1].keys[0]",
            "already listed for \"alpha\"",
        ),
    ];
    for (table, field, message) in cases {
        let text = with_alpha_keys(&cfg, &table);
        let err = Config::parse(&text, "test", &secrets())
            .expect_err(&table)
            .to_string();
        assert!(err.contains(field), "{table}: should name {field}: {err}");
        assert!(
            err.contains(message),
            "{table}: should say {message}: {err}"
        );
        assert!(!err.contains("my-plaintext-team-key"), "key echoed: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // Ids are unique per client, not across clients; a table without `expires` never expires.
    let text = with_alpha_keys(&cfg, "{ id = \"main\", hash = \"HASH2\" }").edit(
        &format!("keys = [\"{}\"]\naccount = \"B\"", hash(KEY_BETA)),
        &format!(
            "keys = [{{ id = \"main\", hash = \"{}\" }}]\naccount = \"B\"",
            hash(KEY_BETA)
        ),
    );
    let config = Config::parse(&text, "test", &secrets()).unwrap();
    assert_eq!(&*config.clients[0].keys[1].label, "main");
    assert_eq!(config.clients[0].keys[1].expires, None);
    assert_eq!(&*config.clients[1].keys[0].label, "main");
    assert_eq!(*config.clients[0].keys[0].label, short(KEY_ALPHA));
}

/// An expired key is refused exactly like an unknown one, nothing goes upstream, the log
/// names client and key id, and the client's other key keeps working.
#[tokio::test]
async fn an_expired_key_is_401_like_an_unknown_one_while_the_other_key_works() {
    let up = FakeUpstream::start().await;
    let cfg = with_alpha_keys(
        &config(&up.url(), ""),
        "{ id = \"contractor\", hash = \"HASH2\", expires = \"2020-01-01T00:00:00Z\" }",
    );
    let bin = Binary::start(&cfg);
    let http = reqwest::Client::new();
    let get = |key: &'static str| {
        http.get(bin.url(ME))
            .header("authorization", format!("APIKey {key}"))
            .send()
    };
    let expired = get(KEY_ALPHA2).await.unwrap();
    let unknown = get("no-such-key-0123456789").await.unwrap();
    assert_eq!(up.calls(), 0, "nothing sent upstream for an expired key");
    assert_eq!(expired.status(), 401);
    let same = |r: &reqwest::Response| {
        (
            r.status(),
            header(r, "www-authenticate").to_string(),
            header(r, "content-type").to_string(),
        )
    };
    assert_eq!(same(&expired), same(&unknown));
    let body = |v: serde_json::Value| (v["error"]["code"].clone(), v["error"]["message"].clone());
    let json = |t: String| -> serde_json::Value { serde_json::from_str(&t).unwrap() };
    let (e, u) = (
        json(expired.text().await.unwrap()),
        json(unknown.text().await.unwrap()),
    );
    assert_eq!(body(e), body(u), "the caller learns nothing more");
    let ok = get(KEY_ALPHA).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(up.calls(), 1);

    let mut warned = None;
    for _ in 0..100 {
        warned = bin.log_lines().into_iter().find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("expired key"))
        });
        if warned.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let warned = warned.unwrap_or_else(|| panic!("no expired-key log: {:?}", bin.log_lines()));
    assert_eq!(warned["client"], "alpha", "{warned}");
    assert_eq!(warned["key"], "contractor", "{warned}");
    assert_eq!(warned["level"], "WARN", "{warned}");
    // Logged at startup too: the expired key is a config warning.
    assert!(bin.log_lines().iter().any(|l| l["message"]
        .as_str()
        .is_some_and(|m| m.contains("key contractor") && m.contains("expired"))));
    let log = bin.stderr.lock().unwrap().clone();
    assert!(!log.contains(KEY_ALPHA2) && !log.contains(&hash(KEY_ALPHA2)[7..]));
}

#[tokio::test]
async fn last_used_moves_per_key_and_survives_reload_by_hash() {
    let up = FakeUpstream::start().await;
    let cfg = with_alpha_keys(&config(&up.url(), ""), "{ id = \"new\", hash = \"HASH2\" }");
    let gw = Harness::start(&cfg).await;
    let old_id = short(KEY_ALPHA);
    let alpha = admin_client(&gw, "alpha").await;
    assert!(admin_key(&alpha, &old_id)["last_used"].is_null());
    assert!(admin_key(&alpha, "new")["last_used"].is_null());

    let before = SystemTime::now();
    gw.get(ME, KEY_ALPHA).await;
    let alpha = admin_client(&gw, "alpha").await;
    let t1 = admin_key(&alpha, &old_id)["last_used_unix_ms"]
        .as_u64()
        .unwrap();
    let since_epoch = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    assert!(
        t1 >= since_epoch(before).as_millis() as u64
            && t1 <= since_epoch(SystemTime::now()).as_millis() as u64
    );
    let shown = humantime::parse_rfc3339(admin_key(&alpha, &old_id)["last_used"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        since_epoch(shown).as_millis() as u64,
        t1,
        "last_used and last_used_unix_ms agree"
    );
    assert!(
        admin_key(&alpha, "new")["last_used"].is_null(),
        "the other key was not used"
    );

    tokio::time::sleep(Duration::from_millis(20)).await;
    gw.get(ME, KEY_ALPHA2).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    gw.get(ME, KEY_ALPHA).await;
    let alpha = admin_client(&gw, "alpha").await;
    let old = admin_key(&alpha, &old_id);
    let new = admin_key(&alpha, "new");
    let (t2, t_new) = (
        old["last_used_unix_ms"].as_u64().unwrap(),
        new["last_used_unix_ms"].as_u64().unwrap(),
    );
    assert!(
        t_new > t1 && t2 > t_new,
        "last used moves: {t1} {t_new} {t2}"
    );
    assert_eq!(
        (old["requests"].clone(), new["requests"].clone()),
        (2.into(), 1.into())
    );
    assert_eq!(alpha["requests"], 3);

    // Rotation done: the old key is removed and the new one renamed; the new key's history
    // follows its hash.
    let rotated = cfg.edit(
        &format!("keys = [\"{}\", {{ id = \"new\"", hash(KEY_ALPHA)),
        "keys = [{ id = \"2027-q1\"",
    );
    gw.gw.set_embedded_text(rotated);
    assert_eq!(gw.reload().await.status(), 200);
    assert_eq!(
        gw.get(ME, KEY_ALPHA).await.status(),
        401,
        "removed key refused at once"
    );
    let alpha = admin_client(&gw, "alpha").await;
    assert_eq!(alpha["keys"].as_array().unwrap().len(), 1, "{alpha}");
    let kept = admin_key(&alpha, "2027-q1");
    assert_eq!(kept["requests"], 1);
    assert_eq!(kept["last_used_unix_ms"].as_u64(), Some(t_new));
    gw.stop().await;
}

#[tokio::test]
async fn expiry_gauges_equal_the_dates_and_reload_applies_at_once() {
    let up = FakeUpstream::start().await;
    let cfg = with_alpha_keys(
        &config(&up.url(), "").edit(
            "api_key_env = \"TEST_SECRET_A\"",
            "api_key_env = \"TEST_SECRET_A\"\nexpires = \"2027-06-30T00:00:00Z\"",
        ),
        "{ id = \"2026-q4\", hash = \"HASH2\", expires = \"2027-03-31T00:00:00Z\" }",
    );
    let gw = Harness::start(&cfg).await;
    let m = gw.metrics().await;
    let key_series =
        "gateway_client_key_expiry_timestamp_seconds{client=\"alpha\",key=\"2026-q4\"}";
    assert_eq!(sample(&m, key_series), Some(1_806_451_200.0), "{m}");
    assert_eq!(
        sample(
            &m,
            "gateway_account_key_expiry_timestamp_seconds{account=\"A\"}"
        ),
        Some(1_814_313_600.0)
    );
    assert_eq!(
        sample(
            &m,
            "gateway_account_key_expiry_timestamp_seconds{account=\"B\"}"
        ),
        None,
        "no expiry configured, no series"
    );
    assert!(
        !m.contains("key=\"sha256:"),
        "plain keys never expire: no series"
    );

    // Past date on reload: refused at once, gauge follows.
    let expired = cfg.edit("2027-03-31T00:00:00Z", "2021-01-01T00:00:00Z");
    gw.gw.set_embedded_text(expired);
    assert_eq!(gw.reload().await.status(), 200);
    assert_eq!(gw.get(ME, KEY_ALPHA2).await.status(), 401);
    assert_eq!(gw.get(ME, KEY_ALPHA).await.status(), 200);
    assert_eq!(up.calls(), 1);
    let m = gw.metrics().await;
    assert_eq!(sample(&m, key_series), Some(1_609_459_200.0));
    let alpha = admin_client(&gw, "alpha").await;
    assert_eq!(admin_key(&alpha, "2026-q4")["expired"], true);
    assert_eq!(admin_key(&alpha, "2026-q4")["expired_refused"], 1);

    // Key and account expiry removed: their series go.
    gw.gw.set_embedded_text(config(&up.url(), ""));
    assert_eq!(gw.reload().await.status(), 200);
    assert_eq!(
        gw.get(ME, KEY_ALPHA2).await.status(),
        200,
        "a plain key again"
    );
    let m = gw.metrics().await;
    assert_eq!(sample(&m, key_series), None, "{m}");
    assert_eq!(
        sample(
            &m,
            "gateway_account_key_expiry_timestamp_seconds{account=\"A\"}"
        ),
        None
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_access_log_names_the_key_by_id_and_never_shows_it() {
    let up = FakeUpstream::start().await;
    let cfg = with_alpha_keys(
        &config(&up.url(), ""),
        "{ id = \"2026-q4\", hash = \"HASH2\" }",
    );
    let bin = Binary::start(&cfg);
    let http = reqwest::Client::new();
    for (header_name, value) in [
        ("authorization", format!("APIKey {KEY_ALPHA2}")),
        ("x-api-key", KEY_ALPHA.to_string()),
        ("authorization", "Bearer no-such-key-0123456789".to_string()),
    ] {
        http.get(bin.url(ME))
            .header(header_name, value)
            .send()
            .await
            .unwrap();
    }
    let mut access = Vec::new();
    for _ in 0..100 {
        access = bin
            .log_lines()
            .into_iter()
            .filter(|l| l["target"] == "gcore_gateway::access")
            .collect();
        if access.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(access.len(), 3, "{access:?}");
    assert_eq!(access[0]["client"], "alpha");
    assert_eq!(access[0]["key"], "2026-q4");
    assert_eq!(access[1]["client"], "alpha");
    assert_eq!(access[1]["key"], short(KEY_ALPHA).as_str());
    assert_eq!(access[2]["status"], 401);
    assert!(access[2].get("key").is_none(), "no key for an unknown one");
    let log = bin.stderr.lock().unwrap().clone();
    for secret in [KEY_ALPHA, KEY_ALPHA2, "no-such-key-0123456789"] {
        assert!(!log.contains(secret), "a key in the log");
    }
    assert!(
        !log.contains(&hash(KEY_ALPHA)[7..]),
        "a full hash in the log"
    );
}

#[test]
fn check_warns_about_keys_and_accounts_running_out() {
    let now = SystemTime::now();
    let cfg = config("http://127.0.0.1:9", "")
        .edit(
            "api_key_env = \"TEST_SECRET_A\"",
            &format!(
                "api_key_env = \"TEST_SECRET_A\"\nexpires = \"{}\"",
                date(now + 3 * DAY)
            ),
        )
        .edit(
            &format!("keys = [\"{}\", \"{}\"]", hash(KEY_ALPHA), hash(KEY_ALPHA2)),
            &format!(
                "keys = [\"{}\", {{ id = \"soon\", hash = \"{}\", expires = \"{}\" }}, {{ id = \"later\", hash = \"{}\", expires = \"{}\" }}, {{ id = \"old\", hash = \"{}\", expires = \"2021-01-01\" }}]",
                hash(KEY_ALPHA),
                hash(KEY_ALPHA2),
                date(now + 5 * DAY + Duration::from_secs(600)),
                hash("later-key-0123456789"),
                date(now + 60 * DAY),
                hash("old-key-0123456789"),
            ),
        )
        .edit(
            &format!("keys = [\"{}\"]\naccount = \"B\"", hash(KEY_BETA)),
            &format!(
                "keys = [{{ id = \"gone\", hash = \"{}\", expires = \"2020-01-01T00:00:00Z\" }}]\naccount = \"B\"",
                hash(KEY_BETA)
            ),
        );
    let path = std::env::temp_dir().join(format!("gcore-gateway-keys-{}.toml", std::process::id()));
    std::fs::write(&path, cfg).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .env("TEST_SECRET_A", SECRET_A)
        .env("TEST_SECRET_B", SECRET_B)
        .env_remove("GCORE_GATEWAY_CONFIG")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "warnings do not fail check: {stdout}"
    );
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    let has = |parts: &[&str]| warnings.iter().any(|w| parts.iter().all(|p| w.contains(p)));
    assert!(
        has(&[
            "accounts[0].expires (A)",
            "Gcore key expires",
            "in 2days 23h"
        ]),
        "{stdout}"
    );
    assert!(
        has(&[
            "clients[0].keys[1] (alpha, key soon)",
            "expires",
            "in 5days"
        ]),
        "{stdout}"
    );
    assert!(
        has(&[
            "clients[0].keys[3] (alpha, key old)",
            "expired 2021-01-01T00:00:00Z"
        ]),
        "{stdout}"
    );
    assert!(
        has(&["clients[1] (beta)", "every key has expired"]),
        "{stdout}"
    );
    assert!(
        !stdout.contains("key later"),
        "60 days out is no warning: {stdout}"
    );
    assert_eq!(warnings.len(), 4, "{stdout}");
    assert!(!stdout.contains(&hash(KEY_ALPHA2)[7..]) && !stdout.contains(KEY_ALPHA2));
}

#[test]
fn gen_key_with_id_and_expiry_prints_a_line_ready_to_paste() {
    let out = Command::new(BIN)
        .args(["gen-key", "--id", "ci-2027", "--expires", "2027-03-31"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let key = stdout
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .unwrap()
        .trim();
    let line = stdout.lines().find(|l| l.starts_with('{')).unwrap();
    assert_eq!(
        line,
        format!(
            "{{ id = \"ci-2027\", hash = \"{}\", expires = \"2027-03-31T00:00:00Z\" }},",
            hash(key)
        )
    );
    // Pasted into clients.keys, it names and dates the key.
    let cfg = config("http://127.0.0.1:9", "").edit(
        &format!("keys = [\"{}\"]\naccount = \"B\"", hash(KEY_BETA)),
        &format!(
            "keys = [\n  \"{}\",\n  {line}\n]\naccount = \"B\"",
            hash(KEY_BETA)
        ),
    );
    let config = Config::parse(&cfg, "test", &secrets()).unwrap();
    let pasted = &config.clients[1].keys[1];
    assert_eq!(&*pasted.label, "ci-2027");
    assert_eq!(
        pasted.hash,
        gcore_gateway::auth::KeyHash::of(key.as_bytes())
    );
    assert_eq!(
        pasted.expires,
        Some(humantime::parse_rfc3339("2027-03-31T00:00:00Z").unwrap())
    );

    // Without --expires: no expiry; without --id: no table line.
    let out = Command::new(BIN)
        .args(["gen-key", "--id", "x"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("{ id = \"x\", hash = \"sha256:") && l.ends_with("\" },")),
        "{stdout}"
    );
    let out = Command::new(BIN).args(["gen-key"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains('{'));

    for (args, says) in [
        (&["gen-key", "--id", "has space"][..], "--id"),
        (&["gen-key", "--expires", "2027-03-31"][..], "--id"),
        (
            &["gen-key", "--id", "x", "--expires", "tomorrow"][..],
            "invalid date",
        ),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "{args:?}: no key printed on a usage error"
        );
    }
}

/// Two teams on one account storm the same route while the upstream is slow: one upstream
/// call, caused by exactly one request; every other request avoided one.
#[tokio::test]
async fn calls_caused_and_avoided_in_a_coalesced_storm_of_two_teams() {
    let up = FakeUpstream::start().await;
    up.set_delay(Duration::from_millis(400));
    let cfg = config(
        &up.url(),
        &format!(
            "\n[[clients]]\nname = \"delta\"\nkeys = [\"{}\"]\naccount = \"A\"\n",
            hash(KEY_DELTA)
        ),
    );
    let gw = Harness::start(&cfg).await;
    let gws = [&gw];
    let (a, d) = tokio::join!(
        concurrent_gets(&gws, ME, KEY_ALPHA, 10),
        concurrent_gets(&gws, ME, KEY_DELTA, 10)
    );
    assert!(a.iter().chain(&d).all(|r| r.status == 200));
    assert_eq!(up.calls(), 1, "one upstream call for the whole storm");
    let m = gw.metrics().await;
    let caused = |c: &str| {
        sample(
            &m,
            &format!("gateway_upstream_calls_caused_total{{client=\"{c}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let avoided = |c: &str| {
        sample(
            &m,
            &format!("gateway_upstream_calls_avoided_total{{client=\"{c}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(caused("alpha") + caused("delta"), 1.0, "{m}");
    assert_eq!(avoided("alpha") + avoided("delta"), 19.0, "{m}");
    assert_eq!(caused("alpha") + avoided("alpha"), 10.0);
    assert_eq!(caused("delta") + avoided("delta"), 10.0);

    // A hit is avoided; another account's miss is caused.
    up.set_delay(Duration::ZERO);
    assert_eq!(header(&gw.get(ME, KEY_DELTA).await, "x-cache"), "HIT");
    assert_eq!(header(&gw.get(ME, KEY_BETA).await, "x-cache"), "MISS");
    let m = gw.metrics().await;
    let caused = |c: &str| {
        sample(
            &m,
            &format!("gateway_upstream_calls_caused_total{{client=\"{c}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let avoided = |c: &str| {
        sample(
            &m,
            &format!("gateway_upstream_calls_avoided_total{{client=\"{c}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(caused("delta") + avoided("delta"), 11.0);
    assert_eq!((caused("beta"), avoided("beta")), (1.0, 0.0));
    let total: f64 = ["alpha", "beta", "gamma", "delta"]
        .iter()
        .map(|c| caused(c))
        .sum();
    assert_eq!(
        total as usize,
        up.calls(),
        "calls caused add up to what the upstream saw"
    );
    for c in ["alpha", "delta", "beta"] {
        let entry = admin_client(&gw, c).await;
        assert_eq!(
            entry["upstream_calls_caused"].as_f64(),
            Some(caused(c)),
            "{entry}"
        );
        assert_eq!(
            entry["upstream_calls_avoided"].as_f64(),
            Some(avoided(c)),
            "{entry}"
        );
    }
    gw.stop().await;
}

// --- The operator kit in deploy/ -------------------------------------------------------------

const RULES: &str = "deploy/prometheus/gcore-gateway.rules.yml";
const RULES_TEST: &str = "deploy/prometheus/gcore-gateway.rules.test.yml";
const PROMETHEUS_RULE: &str = "deploy/k8s/monitoring/prometheusrule.yaml";
const DASHBOARD: &str = "deploy/grafana/gcore-gateway.json";
const SYSTEMD_UNIT: &str = "deploy/systemd/gcore-gateway.service";

/// Runs `tool args`; `None` (after printing why) when the tool is not installed.
fn run_tool(tool: &str, args: &[&str]) -> Option<std::process::Output> {
    match Command::new(tool).args(args).output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("SKIPPED: {tool} is not on PATH ({tool} {})", args.join(" "));
            None
        }
        Err(e) => panic!("cannot run {tool}: {e}"),
    }
}

fn assert_success(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `promtool check rules` and the rules' unit tests (`promtool test rules`), when promtool is
/// installed (Debian: `apt-get install prometheus`).
#[test]
fn alert_rules_pass_promtool() {
    let Some(out) = run_tool("promtool", &["check", "rules", RULES]) else {
        return;
    };
    assert_success("promtool check rules", &out);
    let out = run_tool("promtool", &["test", "rules", RULES_TEST]).unwrap();
    assert_success("promtool test rules", &out);
}

/// Every expression of the Grafana dashboard is valid PromQL: they are wrapped into recording
/// rules (JSON is YAML) with Grafana's variables filled in, and checked by promtool.
#[test]
fn dashboard_queries_are_valid_promql() {
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let mut rules = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let mut expr = t["expr"].as_str().unwrap().to_string();
            for (var, value) in [
                ("$__rate_interval", "1m"),
                ("$__range", "1h"),
                ("$job", ".*"),
                ("$instance", ".*"),
                ("$client", ".*"),
                ("$account", ".*"),
            ] {
                expr = expr.replace(var, value);
            }
            assert!(!expr.contains('$'), "unknown variable in {expr}");
            rules.push(serde_json::json!({
                "record": format!("panel_{}_{}", panel["id"], t["refId"].as_str().unwrap()),
                "expr": expr,
            }));
        }
    }
    let file = std::env::temp_dir().join(format!("gcore-gateway-dash-{}.json", std::process::id()));
    let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = run_tool("promtool", &["check", "rules", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    if let Some(out) = out {
        assert_success("promtool check rules (dashboard queries)", &out);
    }
}

/// The PrometheusRule is the plain rules file's `groups:`, indented by two spaces.
#[test]
fn the_prometheus_rule_holds_the_same_rules_as_the_plain_file() {
    let plain = std::fs::read_to_string(RULES).unwrap();
    let wrapped = std::fs::read_to_string(PROMETHEUS_RULE).unwrap();
    let groups = &plain[plain.find("\ngroups:").expect("groups: in the rules file") + 1..];
    let spec = &wrapped[wrapped
        .find("\nspec:\n")
        .expect("spec: in the PrometheusRule")
        + 7..];
    let unindented: String = spec
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        unindented.trim_end(),
        groups.trim_end(),
        "{PROMETHEUS_RULE} differs from {RULES}"
    );
    assert!(wrapped.contains("kind: PrometheusRule"));
}

/// Every `gateway_*` metric the alert rules and the dashboard use is one the gateway registers
/// (a typo would make an alert that never fires). Names are taken from the registry's source,
/// since a family without samples yet (no circuit opened, no Redis, no TLS) is not exposed.
#[test]
fn alerts_and_dashboard_use_only_metrics_the_gateway_registers() {
    let source = std::fs::read_to_string("src/metrics.rs").unwrap();
    let families: Vec<&str> = source
        .split('"')
        .filter(|s| s.starts_with("gateway_") && !s.contains(' '))
        .collect();
    assert!(families.contains(&"gateway_requests"), "{families:?}");
    for file in [RULES, DASHBOARD] {
        let text = std::fs::read_to_string(file).unwrap();
        let mut used: Vec<&str> = text
            .match_indices("gateway_")
            .map(|(i, _)| {
                let rest = &text[i..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect();
        used.sort_unstable();
        used.dedup();
        assert!(used.len() > 5, "{file}: {used:?}");
        for name in used {
            let family = ["_total", "_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                families.contains(&family),
                "{file} uses {name}, which the gateway does not export"
            );
        }
    }
}

/// The systemd unit reloads with SIGHUP, and `systemd-analyze verify` accepts it (pointed at
/// the binary under test) without a warning, when systemd-analyze is installed.
#[test]
fn the_systemd_unit_reloads_with_sighup_and_verifies() {
    let unit = std::fs::read_to_string(SYSTEMD_UNIT).unwrap();
    assert!(
        unit.lines()
            .any(|l| l == "ExecReload=/bin/kill -HUP $MAINPID"),
        "{unit}"
    );
    assert!(unit.contains("ExecStart=/usr/local/bin/gcore-gateway serve --config "));
    let dir = std::env::temp_dir().join(format!("gcore-gateway-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gcore-gateway.service");
    // The env file exists only on an installed host: optional ("-") for the check.
    let local = unit
        .edit("/usr/local/bin/gcore-gateway", BIN)
        .edit("EnvironmentFile=/etc/", "EnvironmentFile=-/etc/");
    std::fs::write(&path, local).unwrap();
    let out = run_tool("systemd-analyze", &["verify", path.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(out) = out {
        assert_success("systemd-analyze verify", &out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.trim().is_empty(), "systemd-analyze warns: {stderr}");
    }
}

/// The monitoring kustomization builds, and its ServiceMonitor selects the admin Service by its
/// labels and port name.
#[test]
fn the_monitoring_kustomization_builds_and_selects_the_admin_service() {
    let service = std::fs::read_to_string("deploy/k8s/service.yaml").unwrap();
    let admin = &service[service.find("name: gcore-gateway-admin").unwrap()..];
    for needle in [
        "app.kubernetes.io/component: gateway-admin",
        "- name: admin",
    ] {
        assert!(admin.contains(needle), "admin Service lost {needle}");
    }
    let monitor = std::fs::read_to_string("deploy/k8s/monitoring/servicemonitor.yaml").unwrap();
    for needle in [
        "app.kubernetes.io/name: gcore-gateway",
        "app.kubernetes.io/component: gateway-admin",
        "- port: admin",
        "path: /metrics",
    ] {
        assert!(monitor.contains(needle), "ServiceMonitor lacks {needle}");
    }
    let Some(out) = run_tool("kubectl", &["kustomize", "deploy/k8s/monitoring"]) else {
        return;
    };
    assert_success("kubectl kustomize deploy/k8s/monitoring", &out);
    let built = String::from_utf8_lossy(&out.stdout);
    for kind in [
        "kind: ServiceMonitor",
        "kind: PrometheusRule",
        "namespace: gcore-gateway",
    ] {
        assert!(built.contains(kind), "{kind} missing: {built}");
    }
}
