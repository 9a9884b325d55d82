//! The configs the repository ships (`config/gateway.toml`, the image's `config/container.toml`,
//! the `deploy/` configs) open with no key that appears anywhere in the repository: every
//! key-looking string of every file (README, docs, examples, tests, the demo) is hashed and
//! looked up among the shipped client hashes, exactly as the gateway does for a request.
//! The `deploy/` examples serve TLS from the mount their manifests make and believe the
//! `X-Forwarded-For` of their load balancer (`trusted_proxies`) instead of turning the
//! failed-auth throttle off.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use gcore_gateway::auth::KeyHash;
use gcore_gateway::config::{Config, SecretSource};

use crate::support::Edit;

/// Resolves every secret reference: these configs are checked for their client keys only.
struct AnySecret;

impl SecretSource for AnySecret {
    fn env(&self, name: &str) -> Option<String> {
        Some(if name.contains("REDIS") {
            "redis://127.0.0.1:6379".into()
        } else {
            "0000_placeholderUpstreamKey".into()
        })
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the `deploy/` configs read their TLS pair: the directory docker-compose.yml and
/// deploy/k8s/deployment.yaml mount into the gateway container (absent here).
const DEPLOY_TLS_DIR: &str = "/etc/gcore-gateway/tls";

/// A self-signed pair in a temporary directory (removed on drop), standing in for the mount.
struct TestPair(PathBuf);

impl TestPair {
    fn new(tag: &str) -> TestPair {
        let dir = std::env::temp_dir().join(format!(
            "gcore-gateway-shipped-{tag}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let pair = rcgen::generate_simple_self_signed(vec!["gcore-gateway".to_string()]).unwrap();
        std::fs::write(dir.join("tls.crt"), pair.cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), pair.signing_key.serialize_pem()).unwrap();
        TestPair(dir)
    }

    /// `text` (a deploy config) reading this pair instead of the mount; panics unless the
    /// config serves TLS from the mount.
    fn serve_from_here(&self, text: &str) -> String {
        let path = |f: &str| format!("{:?}", self.0.join(f).display().to_string());
        text.edit(
            &format!("tls_cert_file = \"{DEPLOY_TLS_DIR}/tls.crt\""),
            &format!("tls_cert_file = {}", path("tls.crt")),
        )
        .edit(
            &format!("tls_key_file = \"{DEPLOY_TLS_DIR}/tls.key\""),
            &format!("tls_key_file = {}", path("tls.key")),
        )
    }
}

impl Drop for TestPair {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A shipped config as the gateway would load it; one that serves TLS must read the pair from
/// the deploy mount, and reads the stand-in pair instead.
fn load(rel: &str, pair: &TestPair) -> Config {
    let text = std::fs::read_to_string(root().join(rel)).unwrap();
    let serves_tls = text.lines().any(|l| l.starts_with("tls_cert_file"));
    let text = if serves_tls {
        pair.serve_from_here(&text)
    } else {
        text
    };
    Config::parse(&text, rel, &AnySecret)
        .unwrap_or_else(|e| panic!("{rel} must be a valid config: {e}"))
}

/// Every file of the repository but build output and git's own store.
fn repository_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if p.is_dir() {
                if !matches!(name.as_ref(), "target" | ".git" | "out") {
                    walk(&p, out);
                }
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &mut out);
    out
}

/// Characters a key can plausibly be made of (base64, base64url, hex, words, separators).
fn key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.~+/=:@".contains(c)
}

/// Every string of `text` that someone might paste as a key: whole lines, quoted strings,
/// the token after `APIKey`/`Bearer`/`X-Api-Key:`/`-H`, runs of key characters and their
/// pieces between separators. Only strings of at least 3 characters.
fn key_candidates(text: &str, out: &mut BTreeSet<String>) {
    let mut add = |s: &str| {
        let s = s.trim();
        if s.len() >= 3 && s.len() <= 512 {
            out.insert(s.to_string());
        }
    };
    for line in text.lines() {
        add(line);
        // Quoted strings, for each quote character.
        for q in ['"', '\'', '`'] {
            for (i, part) in line.split(q).enumerate() {
                if i % 2 == 1 {
                    add(part);
                }
            }
        }
        // The credential after a scheme or header name (also inside `-H '...'`).
        let lower = line.to_ascii_lowercase();
        for marker in ["apikey ", "bearer ", "x-api-key:", "x-api-key ", "-h "] {
            let mut from = 0;
            while let Some(at) = lower[from..].find(marker) {
                let start = from + at + marker.len();
                let rest = line[start..].trim_start();
                let token: String = rest
                    .chars()
                    .take_while(|c| !c.is_whitespace() && !"'\"`,)]}>".contains(*c))
                    .collect();
                add(&token);
                from = start;
            }
        }
        // Runs of key characters, and their pieces between separators.
        for run in line.split(|c: char| !key_char(c)) {
            add(run);
            add(run.trim_end_matches(['.', ':', '=', '/']));
            for piece in run.split(|c: char| ".:/=@+~".contains(c)) {
                add(piece);
                for word in piece.split(['-', '_']) {
                    add(word);
                }
            }
        }
        for word in line.split_whitespace() {
            add(word);
            add(word.trim_matches(|c: char| !c.is_ascii_alphanumeric()));
        }
    }
}

fn all_candidates() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for f in repository_files() {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        key_candidates(&String::from_utf8_lossy(&bytes), &mut out);
    }
    out
}

/// The configs the repository ships for real use: every gateway config under `config/` and
/// `deploy/`, except the demo's (which embeds placeholders and cannot be served, see below).
fn shipped_configs() -> Vec<PathBuf> {
    repository_files()
        .into_iter()
        .filter(|p| {
            let rel = p.strip_prefix(root()).unwrap_or(p);
            (rel.starts_with("config") || rel.starts_with("deploy"))
                && p.extension().is_some_and(|e| e == "toml")
                && rel != Path::new("config/demo.toml")
        })
        .collect()
}

/// The candidates that open `config`, if any.
fn openers<'a>(config: &Config, candidates: &'a BTreeSet<String>) -> Vec<&'a str> {
    candidates
        .iter()
        .filter(|c| {
            let h = KeyHash::of(c.as_bytes());
            gcore_gateway::auth::lookup(&config.key_to_client, c.as_bytes()).is_some()
                || config.key_to_client.contains_key(&h)
        })
        .map(String::as_str)
        .collect()
}

#[test]
fn no_key_in_the_repository_opens_a_shipped_config() {
    let candidates = all_candidates();
    // The collector does find the repository's documented keys (else it proves nothing).
    for known in [
        "test",
        "demo-billing-key",
        "demo-platform-key",
        crate::support::KEY_ALPHA,
        crate::support::SECRET_A,
    ] {
        assert!(candidates.contains(known), "collector missed {known:?}");
    }
    assert!(candidates.len() > 1000, "{} candidates", candidates.len());

    let configs = shipped_configs();
    let names: Vec<String> = configs
        .iter()
        .map(|p| p.strip_prefix(root()).unwrap_or(p).display().to_string())
        .collect();
    for must in [
        "config/gateway.toml",
        "config/container.toml",
        "deploy/compose/gateway.toml",
        "deploy/k8s/gateway.toml",
    ] {
        assert!(
            names.iter().any(|n| n == must),
            "{must} not found: {names:?}"
        );
    }
    let pair = TestPair::new("keys");
    let mut opened = Vec::new();
    for name in &names {
        let config = load(name, &pair);
        for key in openers(&config, &candidates) {
            opened.push(format!("{name} opens with {key:?}"));
        }
    }
    assert!(opened.is_empty(), "{opened:#?}");
}

/// Behind nginx (compose) or an Ingress (k8s) the failed-auth throttle stays on and counts per
/// forwarded caller, the caller port speaks TLS, and the config's TLS paths and nginx's
/// address are what the manifests actually mount and assign.
#[test]
fn the_deploy_examples_serve_tls_and_trust_only_their_proxies() {
    let pair = TestPair::new("deploy");
    let read = |rel: &str| std::fs::read_to_string(root().join(rel)).unwrap();
    for rel in ["deploy/compose/gateway.toml", "deploy/k8s/gateway.toml"] {
        let c = load(rel, &pair);
        assert!(c.server.tls.is_some(), "{rel}: the caller port speaks TLS");
        assert!(
            c.server.auth_failure_limit.is_some(),
            "{rel}: the throttle stays on"
        );
        assert!(
            !c.server.trusted_proxies.is_empty(),
            "{rel}: names its proxies"
        );
    }

    let compose = load("deploy/compose/gateway.toml", &pair);
    let nginx: std::net::IpAddr = "172.30.80.10".parse().unwrap();
    assert_eq!(compose.server.trusted_proxies.nets().len(), 1);
    assert!(compose.server.trusted_proxies.contains(nginx));
    let yml = read("deploy/docker-compose.yml");
    assert!(
        yml.contains(&format!("ipv4_address: {nginx}\n")),
        "lb keeps the trusted address"
    );
    assert!(
        yml.contains(&format!("target: {DEPLOY_TLS_DIR}\n")),
        "the gateways mount the pair"
    );

    let deployment = read("deploy/k8s/deployment.yaml");
    assert!(deployment.contains(&format!("mountPath: {DEPLOY_TLS_DIR}\n")));
    assert!(deployment.contains("secretName: gcore-gateway-tls\n"));
    // The base applies on a plain cluster: cert-manager and ingress-nginx objects are optional.
    let base = read("deploy/k8s/kustomization.yaml");
    let resources: Vec<&str> = base.lines().map(str::trim).collect();
    for optional in ["- certificate.yaml", "- ingress.yaml"] {
        assert!(!resources.contains(&optional), "{base}");
    }
}

#[test]
fn the_check_catches_a_config_that_opens_with_a_word_of_the_repository() {
    // The old shipped config held sha256("test") and sha256("test2"): both must be caught.
    let candidates = all_candidates();
    let text = std::fs::read_to_string(root().join("config/gateway.toml")).unwrap();
    let hash_of = |k: &str| KeyHash::of(k.as_bytes()).to_string();
    // Each client's `keys = [...]` (one line or several) becomes one old example key.
    let mut old = String::new();
    let mut rest = text.as_str();
    let mut replaced = 0;
    for key in ["test", "test2"] {
        let Some(start) = rest.find("\nkeys = [") else {
            break;
        };
        let len = rest[start..].find("]\n").expect("keys list ends") + 2;
        old.push_str(&rest[..start]);
        old.push_str(&format!("\nkeys = [\"{}\"]\n", hash_of(key)));
        rest = &rest[start + len..];
        replaced += 1;
    }
    old.push_str(rest);
    assert_eq!(replaced, 2, "config/gateway.toml ships two example clients");
    let config = Config::parse(&old, "old gateway.toml", &AnySecret).unwrap();
    let found = openers(&config, &candidates);
    assert!(
        found.contains(&"test") && found.contains(&"test2"),
        "{found:?}"
    );
}

#[test]
fn the_demo_config_cannot_be_served() {
    // config/demo.toml's keys are printed by `demo` on purpose; the file itself holds port
    // placeholders, so it cannot be passed to `serve` (with a real Gcore key) as it is.
    let text = std::fs::read_to_string(root().join("config/demo.toml")).unwrap();
    let err = Config::parse(&text, "config/demo.toml", &AnySecret).unwrap_err();
    assert!(err.to_string().contains("server.listen"), "{err}");
}

/// The image runs `config/container.toml`: callers reach port 8080 from outside the container,
/// the admin port stays on the container's loopback (no token needed there), and the image's
/// HEALTHCHECK asks the binary, which reads that config's admin_listen (`cli::health_*`).
#[test]
fn the_image_has_its_own_config_and_a_healthcheck_that_follows_it() {
    let text = std::fs::read_to_string(root().join("config/container.toml")).unwrap();
    let c = Config::parse(&text, "config/container.toml", &AnySecret).unwrap();
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
    assert!(
        c.server.admin_listen.ip().is_loopback() || c.server.admin_token.is_some(),
        "an admin port reachable from outside needs admin_token_sha256"
    );
    let docker = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let lines: Vec<&str> = docker.lines().map(str::trim).collect();
    assert!(lines.contains(&"COPY config/container.toml /etc/gcore-gateway/gateway.toml"));
    assert!(lines.contains(&"ENV GCORE_GATEWAY_CONFIG=/etc/gcore-gateway/gateway.toml"));
    assert!(lines.contains(&"USER 65532:65532"));
    assert!(lines.contains(&"CMD [\"/usr/local/bin/gcore-gateway\", \"health\"]"));
    assert!(
        !docker.contains("--url"),
        "the healthcheck must not hard-code an address"
    );
    // Every base image is pinned by digest.
    let images: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ARG "))
        .filter(|l| l.contains("_IMAGE="))
        .collect();
    assert_eq!(images.len(), 2, "{images:?}");
    for image in images {
        let digest = image.split("@sha256:").nth(1).unwrap_or("");
        assert!(
            digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{image}"
        );
    }
    for from in lines.iter().filter(|l| l.starts_with("FROM ")) {
        assert!(from.starts_with("FROM ${"), "unpinned base image: {from}");
    }
    // The image's license label and file match the crate's.
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(manifest.contains("license = \"Apache-2.0\""));
    assert!(docker.contains("org.opencontainers.image.licenses=\"Apache-2.0\""));
    let license = std::fs::read_to_string(root().join("LICENSE")).unwrap();
    assert!(license.contains("Apache License") && license.contains("Version 2.0, January 2004"));
}
