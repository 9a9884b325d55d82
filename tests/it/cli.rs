//! The binary as a subprocess: hash-key, gen-key, check, serve start-up errors, demo.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::Edit;

const BIN: &str = env!("CARGO_BIN_EXE_gcore-gateway");

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("GCORE_GATEWAY_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gcore-gateway-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn hash_key_abc() {
    let (code, out, err) = run(&["hash-key", "abc"], &[]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
    );
    assert!(err.contains("shorter than 16 bytes"), "{err}");
}

#[test]
fn hash_key_from_stdin_without_warning_for_long_keys() {
    let mut child = Command::new(BIN)
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a-long-enough-team-key\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        crate::support::hash("a-long-enough-team-key")
    );
    assert!(out.stderr.is_empty());
}

#[test]
fn gen_key_prints_a_key_and_its_hash() {
    let (code, out, _) = run(&["gen-key"], &[]);
    assert_eq!(code, 0);
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .unwrap()
        .trim();
    let hash = out
        .lines()
        .find_map(|l| l.strip_prefix("hash:"))
        .unwrap()
        .trim();
    assert!(key.len() >= 43, "at least 32 bytes of entropy, base64url");
    assert_eq!(hash, crate::support::hash(key));
    let (_, out2, _) = run(&["gen-key"], &[]);
    assert_ne!(out, out2);
}

#[test]
fn check_accepts_the_shipped_config_and_never_prints_the_secret() {
    let secret = "9999_theRealUpstreamSecretValue";
    let (code, out, err) = run(
        &["check", "--config", "config/gateway.toml"],
        &[("GCORE_API_KEY", secret)],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK"));
    for word in [
        "127.0.0.1:8080",
        "127.0.0.1:9090",
        "main",
        "billing",
        "support",
        "minimal",
        "no-contacts",
        "/iam/clients/me",
    ] {
        assert!(out.contains(word), "summary lacks {word}: {out}");
    }
    assert!(!out.contains(secret) && !err.contains(secret));
    assert!(!out.contains("sha256:"), "key hashes are not printed");
}

#[test]
fn check_also_reads_the_env_config_path() {
    let out = Command::new(BIN)
        .arg("check")
        .env("GCORE_GATEWAY_CONFIG", "config/gateway.toml")
        .env("GCORE_API_KEY", "x_y")
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn check_rejects_broken_configs_naming_the_key() {
    let good = std::fs::read_to_string("config/gateway.toml").unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key",
            good.edit("shutdown_grace =", "shutdown_grce ="),
            "shutdown_grce",
        ),
        (
            "bad duration",
            good.edit("ttl = \"60s\"", "ttl = \"60 parsecs\""),
            "cache.ttl",
        ),
        (
            "bad rate",
            good.edit("rate = \"10/s\"", "rate = \"10/d\""),
            "clients[0].rate",
        ),
        (
            "bad size",
            good.edit("max_body = \"1MiB\"", "max_body = \"1 lots\""),
            "upstream.max_body",
        ),
        (
            "plaintext key",
            good.edit(
                "sha256:4ab34b862d83b7f44d7a1e87de1aa5415312f90b1daeec81e779f7548acbdd19",
                "my-plaintext-team-key",
            ),
            "clients[0].keys[0]",
        ),
        (
            "unknown account",
            good.edit(
                "account = \"main\"\n# Optional redaction",
                "account = \"nope\"\n# Optional redaction",
            ),
            "clients[0].account",
        ),
        (
            "unknown profile",
            good.edit("profile = \"minimal\"", "profile = \"nope\""),
            "clients[0].profile",
        ),
        (
            "unknown route",
            good.edit(
                "routes = [\"/iam/clients/me\"]",
                "routes = [\"/iam/users\"]",
            ),
            "clients[0].routes[0]",
        ),
        (
            "insecure upstream",
            good.edit("https://api.gcore.com", "http://api.gcore.com"),
            "upstream.base_url",
        ),
        (
            "bad jsonpath",
            good.edit("\"$.status\",", "\"$.status[\","),
            "profiles.minimal.allow[1]",
        ),
        (
            "both secrets",
            good.edit(
                "api_key_env = \"GCORE_API_KEY\"",
                "api_key_env = \"GCORE_API_KEY\"\napi_key_file = \"/x\"",
            ),
            "accounts[0]",
        ),
        ("toml syntax", good.edit("[server]", "[server"), "line 11"),
    ];
    let cases = cases.into_iter().chain([
        ("key pasted as a string", good.edit("keys = [\"sha256:4ab34b862d83b7f44d7a1e87de1aa5415312f90b1daeec81e779f7548acbdd19\"]", "keys = \"my-plaintext-team-key\""), "line"),
        ("key pasted as env name", good.edit("api_key_env = \"GCORE_API_KEY\"", "api_key_env = \"1234_my-plaintext-team-key\""), "accounts[0].api_key_env"),
        ("absurd duration", good.edit("ttl = \"60s\"", "ttl = \"500000000000y\""), "cache.ttl"),
        ("bad redis url", good.edit("# [redis]\n# url = \"redis://127.0.0.1:6379\"", "[redis]\nurl = \"redis://:my-plaintext-team-key@127.0.0.1:notaport\""), "redis.url"),
    ]);
    for (what, text, key) in cases {
        let p = temp_config(&format!("{}.toml", what.replace(' ', "_")), &text);
        let (code, out, err) = run(
            &["check", "--config", p.to_str().unwrap()],
            &[("GCORE_API_KEY", "k_1")],
        );
        assert_eq!(code, 2, "{what}: {out}{err}");
        assert_eq!(err.trim().lines().count(), 1, "{what}: one line: {err}");
        assert!(err.contains(key), "{what}: error should name {key}: {err}");
        assert!(
            !err.contains("my-plaintext-team-key"),
            "plaintext key echoed"
        );
    }
    // A missing secret names the variable.
    let (code, _, err) = run(&["check", "--config", "config/gateway.toml"], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("accounts[0].api_key_env") && err.contains("GCORE_API_KEY"),
        "{err}"
    );
    // A missing file names the file.
    let (code, _, err) = run(&["check", "--config", "/nonexistent/gw.toml"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/gw.toml"), "{err}");
}

#[test]
fn serve_refuses_an_invalid_config_and_a_busy_port() {
    let (code, _, err) = run(&["serve", "--config", "/nonexistent/gw.toml"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/gw.toml"));
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let text = std::fs::read_to_string("config/gateway.toml")
        .unwrap()
        .edit("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .edit("127.0.0.1:9090", "127.0.0.1:0");
    let p = temp_config("busy.toml", &text);
    let (code, _, err) = run(
        &["serve", "--config", p.to_str().unwrap()],
        &[("GCORE_API_KEY", "k_1")],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("server.listen"),
        "{err}"
    );
}

#[tokio::test]
async fn demo_shows_a_miss_then_a_hit() {
    let port = {
        // Find two free consecutive ports (caller N, admin N+1).
        let mut found = None;
        for _ in 0..50 {
            let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let p = a.local_addr().unwrap().port();
            if p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                found = Some(p);
                break;
            }
        }
        found.unwrap()
    };
    let mut child = tokio::process::Command::new(BIN)
        .args(["demo", "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/iam/clients/me");
    crate::support::wait_ready(&http, port + 1).await;
    let get = || {
        http.get(&url)
            .header("authorization", "APIKey demo-platform-key")
            .send()
    };
    let r1 = get().await.unwrap();
    assert_eq!(r1.headers()["x-cache"], "MISS");
    let body: serde_json::Value = serde_json::from_str(&r1.text().await.unwrap()).unwrap();
    assert_eq!(body["id"], 1204816);
    let r2 = get().await.unwrap();
    assert_eq!(r2.headers()["x-cache"], "HIT");
    let minimal = http
        .get(&url)
        .header("x-api-key", "demo-billing-key")
        .send()
        .await
        .unwrap();
    let minimal: serde_json::Value = serde_json::from_str(&minimal.text().await.unwrap()).unwrap();
    assert!(minimal.get("users").is_none() && minimal.get("email").is_none());
    child.start_kill().unwrap();
    let out = child.wait_with_output().await.unwrap();
    let banner = String::from_utf8_lossy(&out.stdout);
    assert!(
        banner.contains("demo-platform-key") && banner.contains("curl"),
        "{banner}"
    );
}

#[tokio::test]
async fn serve_is_the_default_subcommand_and_sigint_drains() {
    let up = crate::support::FakeUpstream::start().await;
    let (text, _, admin) = crate::support::on_free_ports(&crate::support::config(&up.url(), ""));
    let p = temp_config("default.toml", &text);
    let mut child = tokio::process::Command::new(BIN)
        .args(["--config", p.to_str().unwrap()])
        .envs(crate::support::secrets())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    crate::support::wait_ready(&http, admin).await;
    std::process::Command::new("kill")
        .args(["-INT", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "SIGINT drains and exits 0: {status:?}");
}

#[test]
fn each_subcommand_takes_only_its_flags_and_usage_errors_exit_64() {
    for args in [
        &["demo", "--config", "/nonexistent"][..],
        &["gen-key", "--config", "x.toml"],
        &["hash-key", "--log-format", "json", "abc"],
        &["check", "--log-format", "json"],
        &["health", "--log-format", "json"],
        &["--config", "config/gateway.toml", "check"],
        &["no-such-command"],
        &["--no-such-flag"],
        &["serve", "--port", "1"],
        &["demo", "--port", "65535"],
        &["demo", "--port", "not-a-number"],
        &["hash-key", ""],
        &["health", "--url", "ftp://127.0.0.1/healthz"],
    ] {
        let (code, out, err) = run(args, &[("GCORE_API_KEY", "k_1")]);
        assert_eq!(code, 64, "{args:?}: {out}{err}");
        assert!(err.contains("error"), "{args:?}: {err}");
    }
    // An invalid config keeps its own code, whatever the subcommand.
    for args in [
        &["check", "--config", "/nonexistent/gw.toml"][..],
        &["serve", "--config", "/nonexistent/gw.toml"],
        &["--config", "/nonexistent/gw.toml"],
        &["health", "--config", "/nonexistent/gw.toml"],
    ] {
        let (code, _, err) = run(args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("/nonexistent/gw.toml"), "{args:?}: {err}");
    }
}

#[test]
fn help_lists_the_exit_codes() {
    let (code, out, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    for line in [
        "Exit codes:",
        "  0 ",
        "  1 ",
        "  2   invalid config",
        "  64  command-line usage",
    ] {
        assert!(out.contains(line), "--help lacks {line:?}: {out}");
    }
    let (code, out, _) = run(&["--version"], &[]);
    assert_eq!((code, out.starts_with("gcore-gateway ")), (0, true));
}

/// `health` finds the admin port in the config (a wildcard address probed on loopback), also
/// through `GCORE_GATEWAY_CONFIG` as in the image; a closed port is exit 1.
#[tokio::test]
async fn health_follows_the_configs_admin_listen() {
    let up = crate::support::FakeUpstream::start().await;
    let (text, _, admin) = crate::support::on_free_ports(&crate::support::config(&up.url(), ""));
    let _bin = crate::support::binary::Binary::start(&text);
    crate::support::wait_ready(&reqwest::Client::new(), admin).await;
    let direct = temp_config("health-direct.toml", &text);
    let wildcard = temp_config(
        "health-wildcard.toml",
        &text.edit(
            &format!("admin_listen = \"127.0.0.1:{admin}\""),
            &format!("admin_listen = \"0.0.0.0:{admin}\""),
        ),
    );
    for p in [&direct, &wildcard] {
        let (code, out, err) = run(&["health", "--config", p.to_str().unwrap()], &[]);
        assert_eq!(code, 0, "{}: {out}{err}", p.display());
    }
    let status = Command::new(BIN)
        .arg("health")
        .env("GCORE_GATEWAY_CONFIG", &wildcard)
        .status()
        .unwrap();
    assert!(status.success(), "health reads GCORE_GATEWAY_CONFIG");
    // No secret is needed to find the admin port (the test secrets are not in this env).
    let closed = crate::support::free_port();
    let down = temp_config(
        "health-down.toml",
        &text.edit(
            &format!("admin_listen = \"127.0.0.1:{admin}\""),
            &format!("admin_listen = \"127.0.0.1:{closed}\""),
        ),
    );
    let (code, _, err) = run(&["health", "--config", down.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("127.0.0.1:{closed}")), "{err}");
}

#[test]
fn check_warns_when_the_admin_port_is_reachable_without_a_token() {
    let good = std::fs::read_to_string("config/gateway.toml").unwrap();
    let open = good.edit(
        "admin_listen = \"127.0.0.1:9090\"",
        "admin_listen = \"0.0.0.0:9090\"",
    );
    let token = open.edit(
        "# admin_token_sha256 = \"sha256:…\"",
        &format!(
            "admin_token_sha256 = \"{}\"",
            crate::support::hash("an-admin-token-0123456789")
        ),
    );
    let env = [("GCORE_API_KEY", "k_1")];
    for (name, text, warned) in [("open", open, true), ("token", token, false)] {
        let p = temp_config(&format!("admin-{name}.toml"), &text);
        let (code, out, err) = run(&["check", "--config", p.to_str().unwrap()], &env);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(
            out.contains("warning: server.admin_listen 0.0.0.0:9090 is not loopback"),
            warned,
            "{name}: {out}"
        );
    }
    let (code, out, _) = run(&["check", "--config", "config/container.toml"], &env);
    assert_eq!(code, 0);
    assert!(!out.contains("warning"), "{out}");
}
