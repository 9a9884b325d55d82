//! Redaction profiles, end to end against the fake upstream and the real gateway, the
//! shipped profiles of `config/gateway.toml` against the example Gcore profile, and `check`.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use gcore_gateway::bench_api::{Entry, Origin};
use gcore_gateway::config::raw::RawProfile;
use gcore_gateway::config::Config;
use gcore_gateway::redact::Profile;
use serde_json::{json, Value};

const ME: &str = "/iam/clients/me";
const SHIPPED: &str = include_str!("../../config/gateway.toml");
const REDACTED: &str = include_str!("../fixtures/clients_me.redacted.json");

/// Every string of the example profile that is contact data of a person.
const CONTACTS: [&str; 7] = [
    "maria.keller@acme-widgets.example",
    "li.wei@acme-widgets.example",
    "cdn-purge-bot@acme-widgets.example",
    "+44 20 7946 0321",
    "Maria Keller",
    "Li Wei",
    "owner@b.example",
];

/// The `[profiles.*]` tables of the shipped `config/gateway.toml`, as TOML text to append to
/// a test config, so the gateway under test runs exactly the shipped paths.
fn shipped_profiles_toml() -> String {
    let mut doc: toml::Table = SHIPPED.parse().expect("config/gateway.toml is TOML");
    let profiles = doc
        .remove("profiles")
        .expect("config/gateway.toml has profiles");
    let mut out = toml::Table::new();
    out.insert("profiles".into(), profiles);
    toml::to_string(&out).unwrap()
}

/// The shipped config, validated, with a fake `GCORE_API_KEY`.
fn shipped_config() -> Config {
    let env = HashMap::from([("GCORE_API_KEY".to_string(), "1_fake".to_string())]);
    Config::parse(SHIPPED, "config/gateway.toml", &env).expect("shipped config is valid")
}

fn shipped_profile(config: &Config, name: &str) -> std::sync::Arc<Profile> {
    config
        .profiles
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("config/gateway.toml has no profile {name}"))
        .clone()
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

/// A `[profiles.NAME]` table with the given lists.
fn profile(name: &str, remove: &[&str], mask: &[&str], allow: Option<&[&str]>) -> String {
    let list = |l: &[&str]| serde_json::to_string(l).unwrap();
    let mut s = format!("\n[profiles.{name}]\n");
    match allow {
        Some(a) => s.push_str(&format!("allow = {}\n", list(a))),
        None => s.push_str(&format!(
            "remove = {}\nmask = {}\n",
            list(remove),
            list(mask)
        )),
    }
    s
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn account_a() -> Value {
    parse(&body_for("A", 1))
}

/// What `minimal` must produce: exactly the reference output (the shipped profile keeps the
/// empty feature lists through a filter path).
fn minimal_expected() -> Value {
    parse(REDACTED)
}

/// Every object key anywhere in `v`, with the value under it.
fn walk<'a>(v: &'a Value, out: &mut Vec<(&'a str, &'a Value)>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                out.push((k, child));
                walk(child, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| walk(c, out)),
        _ => {}
    }
}

fn members(v: &Value) -> Vec<(&str, &Value)> {
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

fn user_ids(v: &Value) -> Vec<i64> {
    v["users"]
        .as_array()
        .expect("users array")
        .iter()
        .map(|u| u["id"].as_i64().unwrap())
        .collect()
}

fn assert_no_contacts(text: &str) {
    for c in CONTACTS {
        assert!(!text.contains(c), "{c:?} leaked: {text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Through the gateway
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn two_profiles_on_one_account_share_one_upstream_call() {
    let up = FakeUpstream::start().await;
    up.set_delay(Duration::from_millis(200));
    let extra = format!(
        "{}{}{}",
        shipped_profiles_toml(),
        client("delta", "minimal"),
        client("epsilon", "no-contacts")
    );
    let gw = Harness::start(&config(&up.url(), &extra)).await;
    let raw = body_for("A", 1);
    let minimal = minimal_expected();
    let no_contacts = parse(
        std::str::from_utf8(
            &shipped_profile(&shipped_config(), "no-contacts")
                .render(raw.as_bytes())
                .unwrap(),
        )
        .unwrap(),
    );
    assert_ne!(minimal, no_contacts);

    // Cold and concurrent: raw, minimal and no-contacts callers wait on one fill.
    let callers = [KEY_ALPHA.to_string(), key("delta"), key("epsilon")];
    let mut tasks = Vec::new();
    for i in 0..30 {
        let k = callers[i % 3].clone();
        let (http, url) = (gw.http.clone(), gw.url(ME));
        tasks.push(tokio::spawn(async move {
            let r = http.get(url).header("x-api-key", &k).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let etag = header(&r, "etag").to_string();
            (i % 3, etag, r.text().await.unwrap())
        }));
    }
    let mut etags: [Option<String>; 3] = Default::default();
    for t in tasks {
        let (who, etag, body) = t.await.unwrap();
        match who {
            0 => assert_eq!(body, raw),
            1 => assert_eq!(parse(&body), minimal),
            _ => assert_eq!(parse(&body), no_contacts),
        }
        if who != 0 {
            assert_no_contacts(&body);
        }
        // One rendered body per profile, so one ETag per profile.
        let seen = etags[who].get_or_insert(etag.clone());
        assert_eq!(*seen, etag);
    }
    assert_eq!(up.calls(), 1, "one upstream call for every profile");
    let etags: Vec<String> = etags.into_iter().map(Option::unwrap).collect();
    assert_ne!(etags[0], etags[1]);
    assert_ne!(etags[1], etags[2]);
    assert_ne!(etags[0], etags[2]);

    // Hits serve the same rendered bytes, and conditional requests match per profile.
    let r = gw.get(ME, &key("delta")).await;
    assert_eq!(header(&r, "x-cache"), "HIT");
    assert_eq!(header(&r, "etag"), etags[1]);
    assert_eq!(parse(&r.text().await.unwrap()), minimal);
    let cond = |k: String, etag: String| {
        gw.http
            .get(gw.url(ME))
            .header("x-api-key", k)
            .header("if-none-match", etag)
            .send()
    };
    let r = cond(key("delta"), etags[1].clone()).await.unwrap();
    assert_eq!(r.status(), 304);
    let r = cond(key("epsilon"), etags[1].clone()).await.unwrap();
    assert_eq!(r.status(), 200, "another profile's ETag must not match");
    assert_eq!(up.calls(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn removal_at_every_array_index() {
    let up = FakeUpstream::start().await;
    let cases: [(&str, &str, &[i64]); 8] = [
        ("idx0", "$.users[0]", &[3301890, 3302214]),
        ("idx1", "$.users[1]", &[3301457, 3302214]),
        ("idx2", "$.users[2]", &[3301457, 3301890]),
        ("last", "$.users[-1]", &[3301457, 3301890]),
        ("first-and-last", "$.users[0,2]", &[3301890]),
        ("slice", "$.users[0:2]", &[3302214]),
        ("beyond", "$.users[3]", &[3301457, 3301890, 3302214]),
        ("no-2fa", "$.users[?@.two_fa == false]", &[3301457]),
    ];
    let mut extra = String::new();
    for (name, path, _) in &cases {
        extra.push_str(&profile(name, &[path], &[], None));
        extra.push_str(&client(name, name));
    }
    extra.push_str(&profile("emails", &["$.users[*].email"], &[], None));
    extra.push_str(&client("emails", "emails"));
    let gw = Harness::start(&config(&up.url(), &extra)).await;
    let original = account_a();

    for (name, path, want) in &cases {
        let r = gw.get(ME, &key(name)).await;
        assert_eq!(r.status(), 200, "{name}");
        let got = parse(&r.text().await.unwrap());
        assert_eq!(user_ids(&got), *want, "{path}");
        // Survivors are untouched and everything else is as received.
        let mut expected = original.clone();
        expected["users"]
            .as_array_mut()
            .unwrap()
            .retain(|u| want.contains(&u["id"].as_i64().unwrap()));
        assert_eq!(got, expected, "{path}");
    }

    let got = parse(&gw.get(ME, &key("emails")).await.text().await.unwrap());
    let mut expected = original.clone();
    for u in expected["users"].as_array_mut().unwrap() {
        u.as_object_mut().unwrap().remove("email");
    }
    assert_eq!(got, expected);
    assert_eq!(user_ids(&got).len(), 3);
    assert_eq!(got["email"], original["email"], "only the users' emails");
    assert_eq!(up.calls(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn mask_turns_strings_into_stars_and_everything_else_into_null() {
    let up = FakeUpstream::start().await;
    let mut extra = profile(
        "masked",
        &["$.users[*].email"],
        &[
            "$.name",
            "$.users[*].name",
            "$.users[*].phone",
            "$.users[1].id",
            "$.users[0].groups",
            "$.serviceStatuses.CDN",
            "$.deleted",
        ],
        None,
    );
    extra.push_str(&client("masked", "masked"));
    extra.push_str(&shipped_profiles_toml());
    extra.push_str(&client("shipped", "masked-users"));
    let gw = Harness::start(&config(&up.url(), &extra)).await;
    let original = account_a();

    let got = parse(&gw.get(ME, &key("masked")).await.text().await.unwrap());
    let mut expected = original.clone();
    expected["name"] = json!("***");
    let users = expected["users"].as_array_mut().unwrap();
    for (i, u) in users.iter_mut().enumerate() {
        let u = u.as_object_mut().unwrap();
        u.remove("email");
        // Strings become "***"; null stays null.
        let name = if i == 2 { Value::Null } else { json!("***") };
        u.insert("name".into(), name);
        let phone = if i == 0 { json!("***") } else { Value::Null };
        u.insert("phone".into(), phone);
    }
    users[1]["id"] = Value::Null; // a number
    users[0]["groups"] = Value::Null; // an array
    expected["serviceStatuses"]["CDN"] = Value::Null; // an object
    expected["deleted"] = Value::Null; // a boolean
    assert_eq!(got, expected);

    // The shipped example: contacts removed, names masked, keys kept for typed clients.
    let text = gw.get(ME, &key("shipped")).await.text().await.unwrap();
    assert_no_contacts(&text);
    let got = parse(&text);
    assert_eq!(got["name"], json!("***"));
    for u in got["users"].as_array().unwrap() {
        assert!(u.get("email").is_none() && u.get("phone").is_none());
        assert!(u["name"] == json!("***") || u["name"].is_null());
    }
    assert!(got.get("email").is_none() && got.get("phone").is_none());
    assert_eq!(up.calls(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn allow_list_keeps_only_matches_and_their_containers() {
    let up = FakeUpstream::start().await;
    let mut extra = profile(
        "ids",
        &[],
        &[],
        Some(&[
            "$.id",
            "$.users[*].id",
            "$.users[0].groups[*].name",
            "$.serviceStatuses.*.enabled",
            "$.freeFeatures.CLOUD",
            "$.does_not_exist",
        ]),
    );
    extra.push_str(&client("ids", "ids"));
    extra.push_str(&profile("nothing", &[], &[], Some(&["$.nope"])));
    extra.push_str(&client("nothing", "nothing"));
    extra.push_str(&shipped_profiles_toml());
    extra.push_str(&client("minimal", "minimal"));
    let gw = Harness::start(&config(&up.url(), &extra)).await;

    let got = parse(&gw.get(ME, &key("ids")).await.text().await.unwrap());
    let expected = json!({
        "id": 1204816,
        "users": [
            {"id": 3301457, "groups": [{"name": "Administrators"}]},
            {"id": 3301890},
            {"id": 3302214}
        ],
        "serviceStatuses": {
            "CDN": {"enabled": true},
            "CLOUD": {"enabled": true},
            "DDOS": {"enabled": false},
            "DNS": {"enabled": true},
            "STORAGE": {"enabled": true},
            "STREAMING": {"enabled": true}
        },
        // An allowed empty container is kept as it is.
        "freeFeatures": {"CLOUD": []}
    });
    assert_eq!(got, expected);

    // Nothing allowed matches: an empty document, not the original.
    let r = gw.get(ME, &key("nothing")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "{}");

    let text = gw.get(ME, &key("minimal")).await.text().await.unwrap();
    assert_no_contacts(&text);
    assert_eq!(parse(&text), minimal_expected());
    assert_eq!(up.calls(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn descendant_paths_reach_every_depth() {
    let up = FakeUpstream::start().await;
    let mut extra = profile("deep", &["$..email", "$..phone"], &["$..name"], None);
    extra.push_str(&client("deep", "deep"));
    extra.push_str(&profile("features", &[], &[], Some(&["$..feature_id"])));
    extra.push_str(&client("features", "features"));
    extra.push_str(&profile("all-wild", &["$..*"], &[], None));
    extra.push_str(&client("all-wild", "all-wild"));
    let gw = Harness::start(&config(&up.url(), &extra)).await;
    let original = account_a();

    let text = gw.get(ME, &key("deep")).await.text().await.unwrap();
    assert_no_contacts(&text);
    let got = parse(&text);
    let mut names = 0;
    for (k, v) in members(&got) {
        assert!(k != "email" && k != "phone", "{k} left at some depth");
        if k == "name" {
            names += 1;
            assert!(*v == json!("***") || v.is_null(), "name not masked: {v}");
        }
    }
    // Top level, 3 users, 3 groups, 3 paid and 2 free features.
    assert_eq!(names, 12);
    assert_eq!(got["id"], original["id"]);
    assert_eq!(got["users"][2]["groups"][0]["id"], json!(3022));

    let got = parse(&gw.get(ME, &key("features")).await.text().await.unwrap());
    let fid = |ids: &[i64]| {
        ids.iter()
            .map(|i| json!({"feature_id": i}))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        got,
        json!({
            "paidFeatures": {"CDN": fid(&[3, 7]), "STREAMING": fid(&[21])},
            "freeFeatures": {"CDN": fid(&[12]), "DNS": fid(&[31])}
        })
    );

    let r = gw.get(ME, &key("all-wild")).await;
    assert_eq!(r.text().await.unwrap(), "{}");
    assert_eq!(up.calls(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn invalid_json_upstream_is_502_and_the_raw_body_never_appears() {
    let up = FakeUpstream::start().await;
    up.set_mode(Mode::NotJson);
    let extra = format!("{}{}", shipped_profiles_toml(), client("delta", "minimal"));
    let gw = Harness::start(&config(&up.url(), &extra)).await;
    for k in [key("delta"), KEY_ALPHA.to_string()] {
        let r = gw.get(ME, &k).await;
        assert_eq!(r.status(), 502);
        assert_eq!(header(&r, "content-type"), "application/json");
        let text = r.text().await.unwrap();
        assert!(!text.contains("maria") && !text.contains("html"), "{text}");
        assert_eq!(parse(&text)["error"]["code"], json!("upstream_error"));
    }
    // Nothing was cached: the next good answer is fetched and redacted.
    up.set_mode(Mode::Normal);
    let r = gw.get(ME, &key("delta")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-cache"), "MISS");
    assert_eq!(parse(&r.text().await.unwrap()), minimal_expected());
    gw.stop().await;
}

/// The cache only stores JSON, so the redaction stage's own guard is checked on an entry: a
/// profile never yields a body it could not parse, and the failure is not remembered as a body.
#[test]
fn a_body_that_cannot_be_redacted_is_never_served_through_a_profile() {
    let p = std::sync::Arc::new(
        Profile::compile(
            "p",
            &RawProfile {
                remove: vec!["$.email".into()],
                ..Default::default()
            },
        )
        .unwrap(),
    );
    for body in [
        &b"<html>maria.keller@acme-widgets.example</html>"[..],
        b"{\"email\": \"maria.keller@acme-widgets.example\"",
        b"{\"email\": \"maria.keller@acme-widgets.example\"} trailing",
        b"",
    ] {
        let entry = Entry::new(
            Bytes::copy_from_slice(body),
            tokio::time::Instant::now(),
            Origin::Upstream(Duration::ZERO),
            Duration::from_secs(60),
            1,
        );
        assert!(p.render(body).is_err());
        assert!(entry.body_for(Some(&p)).is_err());
        assert!(entry.body_for(Some(&p)).is_err(), "second try");
        // Another profile (a reload's) fails closed too.
        let other = std::sync::Arc::new(Profile::compile("q", &RawProfile::default()).unwrap());
        assert!(entry.body_for(Some(&other)).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// The shipped profiles against the example Gcore profile
// ---------------------------------------------------------------------------------------------

#[test]
fn shipped_minimal_is_exactly_the_reference_output() {
    let config = shipped_config();
    let minimal = shipped_profile(&config, "minimal");
    let text = minimal.render(CLIENTS_ME.as_bytes()).unwrap();
    let got: Value = serde_json::from_slice(&text).unwrap();
    assert_no_contacts(std::str::from_utf8(&text).unwrap());

    assert_eq!(got["freeFeatures"]["CLOUD"], json!([]));
    assert_eq!(got, minimal_expected());

    // Only the allowed top-level keys, whatever else Gcore sends.
    let mut extended = parse(CLIENTS_ME);
    extended["new_field_gcore_added"] = json!({"owner_email": "new@acme-widgets.example"});
    extended["users"][0]["passport_number"] = json!("X1234567");
    let mut doc = extended;
    minimal.apply(&mut doc);
    assert_eq!(doc, minimal_expected());
}

#[test]
fn shipped_no_contacts_drops_contacts_and_posture_and_keeps_the_rest() {
    let config = shipped_config();
    let profile = shipped_profile(&config, "no-contacts");
    let text = profile.render(CLIENTS_ME.as_bytes()).unwrap();
    assert_no_contacts(std::str::from_utf8(&text).unwrap());
    let got: Value = serde_json::from_slice(&text).unwrap();
    let original = parse(CLIENTS_ME);

    // Dropped: contact data of the account owner and of every user, and security posture.
    for k in ["email", "phone", "name", "has_active_admin", "currentUser"] {
        assert!(got.get(k).is_none(), "top-level {k} kept");
    }
    let users = got["users"].as_array().unwrap();
    assert_eq!(users.len(), 3, "users stay, without their contacts");
    for u in users {
        for k in [
            "email",
            "phone",
            "name",
            "two_fa",
            "sso_auth",
            "auth_types",
            "activated",
            "groups",
        ] {
            assert!(u.get(k).is_none(), "users[].{k} kept: {u}");
        }
        assert!(u.get("id").is_some() && u.get("lang").is_some());
    }
    // Kept: everything operational, unchanged.
    for k in [
        "id",
        "status",
        "deleted",
        "capabilities",
        "serviceStatuses",
        "paidFeatures",
        "freeFeatures",
        "companyName",
        "entryBaseDomain",
    ] {
        assert_eq!(got[k], original[k], "{k}");
    }
    assert_eq!(got["freeFeatures"]["CLOUD"], json!([]));
}

#[test]
fn every_shipped_path_matches_the_example_profile() {
    let example = parse(CLIENTS_ME);
    let config = shipped_config();
    assert!(config.profiles.len() >= 2);
    for p in &config.profiles {
        assert_eq!(p.unmatched(&example), vec![], "profile {}", p.name);
    }
}

// ---------------------------------------------------------------------------------------------
// `gcore-gateway check`
// ---------------------------------------------------------------------------------------------

/// Writes `text` to a fresh file under the target's temp dir.
fn temp_config(text: &str) -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "redaction-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&path, text).unwrap();
    path
}

fn check(config_path: &std::path::Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gcore-gateway"));
    cmd.arg("check")
        .arg("--config")
        .arg(config_path)
        .env_remove("GCORE_GATEWAY_CONFIG")
        .env_remove("GCORE_API_KEY")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn test_env() -> [(&'static str, &'static str); 2] {
    [("TEST_SECRET_A", SECRET_A), ("TEST_SECRET_B", SECRET_B)]
}

#[test]
fn check_warns_about_a_path_that_matches_nothing() {
    let mut extra = profile("typo", &["$.users[*].emial", "$.email"], &["$.nmae"], None);
    extra.push_str(&profile(
        "allowed",
        &[],
        &[],
        Some(&["$.id", "$.capabilites"]),
    ));
    let path = temp_config(&config("http://127.0.0.1:9", &extra));
    let out = check(&path, &test_env());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 3, "{stdout}");
    for (key, p) in [
        ("profiles.typo.remove", "$.users[*].emial"),
        ("profiles.typo.mask", "$.nmae"),
        ("profiles.allowed.allow", "$.capabilites"),
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(key) && w.contains(p)),
            "no warning for {key} {p}: {stdout}"
        );
    }
    assert!(
        !stdout.contains("\"$.email\""),
        "a matching path was flagged"
    );
    for secret in [SECRET_A, SECRET_B] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret));
    }
    let _ = std::fs::remove_file(path);
}

#[test]
fn check_rejects_an_invalid_jsonpath_naming_profile_and_path() {
    for (list, extra) in [
        (
            "remove",
            profile("broken", &["$.email", "$.users[*"], &[], None),
        ),
        (
            "mask",
            profile("broken", &[], &["$.id", "$.users[?@.x ==]"], None),
        ),
        (
            "allow",
            profile("broken", &[], &[], Some(&["$.id", "users"])),
        ),
    ] {
        let bad = match list {
            "remove" => "$.users[*",
            "mask" => "$.users[?@.x ==]",
            _ => "users",
        };
        let path = temp_config(&config("http://127.0.0.1:9", &extra));
        let out = check(&path, &test_env());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{list}: {stderr}");
        let key = format!("profiles.broken.{list}[1]");
        assert!(stderr.contains(&key), "{key} not named: {stderr}");
        assert!(stderr.contains(bad), "{bad} not named: {stderr}");
        // The parser's message follows the path.
        let after = stderr.split(bad).nth(1).unwrap_or("");
        assert!(
            after.trim_matches(['"', ':', ' ', '\n']).len() > 3,
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "no summary for an invalid config");
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn check_accepts_the_shipped_config_without_warnings() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml");
    let out = check(&path, &[("GCORE_API_KEY", "1_fake-upstream-key")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("warning:"), "{stdout}");
    assert!(stdout.contains("minimal") && stdout.contains("no-contacts"));
    assert!(!stdout.contains("1_fake-upstream-key"));
}
