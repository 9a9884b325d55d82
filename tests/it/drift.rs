//! Shape drift: a field Gcore adds (here `users[*].billing.iban`) is noticed once per fetch
//! (WARN once per path, counter, `/admin/schema`) and each remove/mask profile passes, drops or
//! blocks it; allow-lists never show it; `routes.baseline`, reload and `check --sample`.

use std::process::Command;
use std::time::Duration;

use crate::support::binary::{Binary, BIN};
use crate::support::*;
use gcore_gateway::config::Config;
use serde_json::{json, Value};

const ME: &str = "/iam/clients/me";
const USERS_ME: &str = "/iam/users/me";
/// The value of the new field: it must never appear in a log line or an admin answer.
const IBAN: &str = "DE89370400440532013000";
const NEW: [&str; 3] = [
    "$.users[*].billing",
    "$.users[*].billing.holder",
    "$.users[*].billing.iban",
];

/// The example answer with a new nested field under every user.
fn drifted() -> Value {
    let mut v: Value = serde_json::from_str(&body_for("A", 1)).unwrap();
    for u in v["users"].as_array_mut().unwrap() {
        u["billing"] = json!({"iban": IBAN, "holder": "Acme Widgets GmbH"});
    }
    v
}

/// The fake upstream answers `doc` for every account.
fn serve(up: &FakeUpstream, doc: &Value) {
    let bytes: &'static [u8] = Box::leak(doc.to_string().into_bytes().into_boxed_slice());
    up.set_mode(Mode::Raw(bytes));
}

/// The caller key of a test client named `name`.
fn key(name: &str) -> String {
    format!("{name}-team-key-0123456789")
}

/// A `[[clients]]` table on account A with profile `profile`.
fn client(name: &str, profile: &str) -> String {
    format!(
        "\n[[clients]]\nname = \"{name}\"\nkeys = [\"{}\"]\naccount = \"A\"\nprofile = \"{profile}\"\n",
        hash(&key(name))
    )
}

/// Remove-list profiles `pass` (default), `drop`, `block`, an allow-list `allowed`, and one
/// client per profile.
fn profiles() -> String {
    let remove = r#"remove = ["$.email", "$.phone", "$.users[*].email", "$.users[*].phone"]"#;
    let mut s = format!(
        "\n[profiles.pass]\n{remove}\n\
         \n[profiles.drop]\n{remove}\non_new_fields = \"drop\"\n\
         \n[profiles.block]\n{remove}\non_new_fields = \"block\"\n\
         \n[profiles.allowed]\nallow = [\"$.id\", \"$.users[*].id\", \"$.users[*].lang\", \"$.serviceStatuses\"]\n"
    );
    for p in ["pass", "drop", "block", "allowed"] {
        s.push_str(&client(p, p));
    }
    s
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The value of the sample line starting with `series` (name plus labels), or 0.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

fn new_fields_total(metrics: &str, route: &str) -> f64 {
    sample(
        metrics,
        &format!("gateway_upstream_new_fields_total{{route=\"{route}\"}}"),
    )
}

/// `/admin/schema`'s entry for `route`.
fn schema_of(schema: &Value, route: &str) -> Value {
    schema["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == route)
        .unwrap_or_else(|| panic!("{route} not in {schema}"))
        .clone()
}

fn listed_paths(route: &Value) -> Vec<String> {
    route["new_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

/// Every object key anywhere in `v`.
fn keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => m.iter().for_each(|(k, c)| {
            out.push(k.clone());
            keys(c, out)
        }),
        Value::Array(a) => a.iter().for_each(|c| keys(c, out)),
        _ => {}
    }
}

fn has_key(v: &Value, key: &str) -> bool {
    let mut all = Vec::new();
    keys(v, &mut all);
    all.iter().any(|k| k == key)
}

/// The real binary: the new nested field is counted once per fetch, WARNed once per path per
/// process naming route and path (never the value), and listed in `/admin/schema`.
#[tokio::test]
async fn a_new_nested_field_is_counted_logged_once_and_listed() {
    let up = FakeUpstream::start().await;
    serve(&up, &drifted());
    let (text, _, admin) = on_free_ports(&config(&up.url(), ""));
    let bin = Binary::start(&text);
    let http = reqwest::Client::new();
    wait_ready(&http, admin).await;
    let admin_get = |path: &str| {
        let (http, url) = (http.clone(), format!("http://127.0.0.1:{admin}{path}"));
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let get = || {
        let (http, url) = (http.clone(), bin.url(ME));
        async move {
            let r = http
                .get(url)
                .header("x-api-key", KEY_ALPHA)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    for _ in 0..4 {
        let (status, body) = get().await;
        assert_eq!(status, 200);
        assert!(
            body.contains(IBAN),
            "a client without a profile gets the answer as is"
        );
    }
    assert_eq!(up.calls(), 1);
    let m = admin_get("/metrics").await;
    assert_eq!(new_fields_total(&m, ME), 1.0, "{m}");
    let schema = parse(&admin_get("/admin/schema").await);
    let me = schema_of(&schema, ME);
    assert_eq!(listed_paths(&me), NEW, "{schema}");
    assert_eq!(me["baseline"], "built-in");
    assert_eq!(me["answers_with_new_fields"], 1);
    for f in me["new_fields"].as_array().unwrap() {
        assert_eq!(f["answers"], 1);
        assert!(f["first_seen"].as_str().unwrap().ends_with('Z'), "{f}");
    }
    let users = schema_of(&schema, USERS_ME);
    assert_eq!(
        users["baseline"],
        Value::Null,
        "no baseline, no drift checking"
    );

    // A second fetch of the same drift: counted again, no new WARN.
    let purged = http
        .post(format!("http://127.0.0.1:{admin}/admin/cache/purge"))
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);
    assert_eq!(get().await.0, 200);
    assert_eq!(up.calls(), 2);
    let m = admin_get("/metrics").await;
    assert_eq!(new_fields_total(&m, ME), 2.0);
    let me = schema_of(&parse(&admin_get("/admin/schema").await), ME);
    assert_eq!(me["answers_with_new_fields"], 2);
    assert_eq!(me["new_fields"][0]["answers"], 2);

    let log = bin.log_lines();
    let raw_log = bin.stderr.lock().unwrap().clone();
    assert!(!raw_log.contains(IBAN), "the value never reaches the log");
    assert!(!raw_log.contains("Acme Widgets GmbH"));
    for path in NEW {
        let warns: Vec<_> = log
            .iter()
            .filter(|l| l["level"] == "WARN" && l["path"] == path)
            .collect();
        assert_eq!(
            warns.len(),
            1,
            "one WARN per path per process: {path}\n{raw_log}"
        );
        assert_eq!(warns[0]["route"], ME);
        assert!(warns[0]["message"].as_str().unwrap().contains("baseline"));
    }
    let schema_text = admin_get("/admin/schema").await;
    assert!(!schema_text.contains(IBAN));
}

/// One fetch is one count, however many requests (concurrent misses and hits) it serves.
#[tokio::test]
async fn one_fetch_counts_once_however_many_hits_follow() {
    let up = FakeUpstream::start().await;
    up.set_delay(Duration::from_millis(200));
    serve(&up, &drifted());
    let gw = Harness::start(&config(&up.url(), &profiles())).await;
    let answers = concurrent_gets(&[&gw], ME, &key("drop"), 10).await;
    assert!(answers.iter().all(|a| a.status == 200));
    for name in ["pass", "drop", "allowed", "pass", "drop"] {
        assert_eq!(gw.get(ME, &key(name)).await.status(), 200);
    }
    for _ in 0..20 {
        gw.get(ME, KEY_ALPHA).await;
    }
    assert_eq!(up.calls(), 1);
    assert_eq!(new_fields_total(&gw.metrics().await, ME), 1.0);
    let me = schema_of(&gw.admin_json("/admin/schema").await, ME);
    assert_eq!(me["answers_with_new_fields"], 1);
    gw.stop().await;
}

/// pass serves the new field, drop removes it at every index and keeps the rest, block answers
/// 502 `upstream_error` while the answer has it, an allow-list never shows it.
#[tokio::test]
async fn each_profile_passes_drops_or_blocks_the_new_field() {
    let up = FakeUpstream::start().await;
    serve(&up, &drifted());
    let gw = Harness::start(&config(&up.url(), &profiles())).await;

    let r = gw.get(ME, &key("pass")).await;
    assert_eq!(r.status(), 200);
    let pass = parse(&r.text().await.unwrap());
    for u in pass["users"].as_array().unwrap() {
        assert_eq!(u["billing"]["iban"], IBAN, "pass serves new fields");
        assert!(u.get("email").is_none());
    }

    let r = gw.get(ME, &key("drop")).await;
    assert_eq!(r.status(), 200);
    let dropped = parse(&r.text().await.unwrap());
    assert!(!has_key(&dropped, "billing"), "{dropped}");
    // The rest is exactly the pass render without the new field.
    let mut expected = pass.clone();
    for u in expected["users"].as_array_mut().unwrap() {
        u.as_object_mut().unwrap().remove("billing");
    }
    assert_eq!(dropped, expected);
    assert_eq!(dropped["users"].as_array().unwrap().len(), 3);

    let r = gw.get(ME, &key("block")).await;
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert_eq!(parse(&text)["error"]["code"], "upstream_error");
    assert!(!text.contains(IBAN));
    // HEAD is refused alike.
    let head = gw
        .http
        .head(gw.url(ME))
        .header("x-api-key", key("block"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 502);

    let r = gw.get(ME, &key("allowed")).await;
    assert_eq!(r.status(), 200);
    let allowed = parse(&r.text().await.unwrap());
    assert!(!has_key(&allowed, "billing"), "{allowed}");
    assert_eq!(allowed["users"][0], json!({"id": 3301457, "lang": "de"}));

    // Once the upstream answers without the new field, block serves again.
    up.set_mode(Mode::Normal);
    gw.gw.purge_local(None);
    let r = gw.get(ME, &key("block")).await;
    assert_eq!(r.status(), 200);
    let clean = parse(&r.text().await.unwrap());
    assert!(clean["users"][0].get("email").is_none());
    assert_eq!(up.calls(), 2);
    gw.stop().await;
}

/// `routes.baseline` makes any route checked; a reload that changes the baseline drops the
/// route's cached answers, so a block profile serves as soon as the new shape is accepted.
#[tokio::test]
async fn a_baseline_file_checks_its_route_and_a_reload_accepts_the_new_shape() {
    let up = FakeUpstream::start().await;
    serve(&up, &drifted());
    let dir = std::env::temp_dir().join(format!("gcore-gateway-drift-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("users_me.json");
    std::fs::write(&file, body_for("A", 1)).unwrap();
    let text = config(&up.url(), &profiles()).edit(
        "path = \"/iam/users/me\"\n",
        &format!(
            "path = \"/iam/users/me\"\nbaseline = {:?}\n",
            file.display().to_string()
        ),
    );
    let gw = Harness::start(&text).await;
    assert_eq!(gw.get(USERS_ME, &key("block")).await.status(), 502);
    assert_eq!(new_fields_total(&gw.metrics().await, USERS_ME), 1.0);
    let users = schema_of(&gw.admin_json("/admin/schema").await, USERS_ME);
    assert_eq!(users["baseline"], file.display().to_string());
    assert_eq!(listed_paths(&users), NEW);

    // The operator accepts the new field into the baseline and reloads.
    std::fs::write(&file, drifted().to_string()).unwrap();
    assert_eq!(gw.reload().await.status(), 200);
    let r = gw.get(USERS_ME, &key("block")).await;
    assert_eq!(
        r.status(),
        200,
        "reload re-reads the baseline and refetches"
    );
    assert!(r.text().await.unwrap().contains(IBAN));
    assert_eq!(up.calls(), 2);
    assert_eq!(new_fields_total(&gw.metrics().await, USERS_ME), 1.0);

    // An unchanged baseline keeps the cached answers.
    assert_eq!(gw.reload().await.status(), 200);
    assert_eq!(gw.get(USERS_ME, &key("block")).await.status(), 200);
    assert_eq!(up.calls(), 2);

    // An unreadable baseline is refused, naming the key and the file; the old config serves.
    std::fs::remove_file(&file).unwrap();
    let r = gw.reload().await;
    assert_eq!(r.status(), 400);
    let msg = r.text().await.unwrap();
    assert!(msg.contains("routes[1].baseline"), "{msg}");
    assert!(msg.contains("users_me.json"), "{msg}");
    assert_eq!(gw.get(USERS_ME, &key("block")).await.status(), 200);
    gw.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_errors_name_the_key() {
    let err = |text: &str| {
        Config::parse(text, "t", &secrets())
            .expect_err("must be refused")
            .to_string()
    };
    let base = config("http://127.0.0.1:9", "");
    let e = err(&base.edit(
        "path = \"/iam/clients/me\"\n",
        "path = \"/iam/clients/me\"\nbaseline = \"/nonexistent/baseline.json\"\n",
    ));
    assert!(
        e.contains("routes[0].baseline") && e.contains("/nonexistent/baseline.json"),
        "{e}"
    );
    let not_json =
        std::env::temp_dir().join(format!("gcore-gateway-drift-bad-{}", std::process::id()));
    std::fs::write(&not_json, "not json").unwrap();
    let e = err(&base.edit(
        "path = \"/iam/clients/me\"\n",
        &format!(
            "path = \"/iam/clients/me\"\nbaseline = {:?}\n",
            not_json.display().to_string()
        ),
    ));
    assert!(
        e.contains("routes[0].baseline") && e.contains("not JSON"),
        "{e}"
    );
    let _ = std::fs::remove_file(&not_json);
    let e = err(&format!(
        "{base}\n[profiles.a]\nallow = [\"$.id\"]\non_new_fields = \"drop\"\n"
    ));
    assert!(e.contains("profiles.a.on_new_fields"), "{e}");
    let e = err(&format!(
        "{base}\n[profiles.r]\nremove = [\"$.email\"]\non_new_fields = \"ignore\"\n"
    ));
    assert!(
        e.contains("on_new_fields") || e.contains("unknown variant"),
        "{e}"
    );
}

/// `check --sample`: per profile, what it keeps, masks, removes or drops, and which paths of
/// the sample are new against the baseline.
#[test]
fn check_sample_reviews_every_profile() {
    let dir = std::env::temp_dir().join(format!("gcore-gateway-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gateway.toml");
    let sample = dir.join("sample.json");
    std::fs::write(&cfg, config("http://127.0.0.1:9", &profiles())).unwrap();
    std::fs::write(&sample, drifted().to_string()).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("check")
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env("TEST_SECRET_A", SECRET_A)
            .env("TEST_SECRET_B", SECRET_B)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        (
            out.status.code(),
            stdout,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = run(&["--sample", sample.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("baseline built-in"), "{out}");
    assert!(out.contains("no baseline: no drift checking"), "{out}");
    for p in NEW {
        assert!(out.contains(&format!("  new  {p}\n")), "{out}");
    }
    let section = |name: &str| {
        let start = out
            .find(&format!("\nprofile {name} "))
            .unwrap_or_else(|| panic!("no section {name}: {out}"));
        let rest = &out[start + 1..];
        rest[..rest.find("\n\n").unwrap_or(rest.len())].to_string()
    };
    let line = |verb: &str, path: &str| format!("  {verb:<8} {path}");
    let pass = section("pass");
    assert!(pass.contains("on_new_fields = \"pass\""), "{pass}");
    assert!(
        pass.contains(&line("keeps", "$.users[*].billing.iban")),
        "{pass}"
    );
    assert!(
        pass.contains(&line("removes", "$.users[*].email")),
        "{pass}"
    );
    let drop = section("drop");
    assert!(
        drop.contains(&line("drops", "$.users[*].billing")),
        "{drop}"
    );
    assert!(
        !drop.contains("billing.iban"),
        "children of a dropped path are not listed: {drop}"
    );
    assert!(drop.contains(&line("keeps", "$.users[*].id")), "{drop}");
    let block = section("block");
    assert!(block.contains("BLOCKS this sample"), "{block}");
    let allowed = section("allowed");
    assert!(
        allowed.contains(&line("removes", "$.users[*].billing")),
        "{allowed}"
    );
    assert!(!out.contains(IBAN), "paths only, never values");

    let (code, out, _) = run(&["--sample", sample.to_str().unwrap(), "--route", USERS_ME]);
    assert_eq!(code, Some(0));
    assert!(out.contains("no baseline, so no drift checking"), "{out}");
    let (code, _, err) = run(&["--sample", dir.join("missing.json").to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("missing.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
