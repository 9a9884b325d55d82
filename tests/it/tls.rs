//! TLS on the caller port (`server.tls_cert_file`, `tls_key_file`, `tls_client_ca_file`):
//! served over HTTP/1.1 and h2 by ALPN with RSA, ECDSA and Ed25519 keys, plain HTTP refused,
//! certificates rotated by reload for new handshakes only, a bad pair refused with the old
//! certificate still serving, client certificates, the handshake under the header timeout,
//! `check` and the expiry metric. Certificates are made in the test with rcgen.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SignatureAlgorithm,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::binary::BIN;
use crate::support::*;

const ME: &str = "/iam/clients/me";

/// A test certificate authority.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM, plus the certificate's DER (what a client sees).
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ca {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(
        &self,
        cn: &str,
        alg: &'static SignatureAlgorithm,
        expires_year: i32,
        usage: ExtendedKeyUsagePurpose,
    ) -> Leaf {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut p =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_after = rcgen::date_time_ymd(expires_year, 1, 1);
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &*self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A server certificate for 127.0.0.1 / localhost with an ECDSA P-256 key.
    fn server(&self, cn: &str) -> Leaf {
        self.issue(
            cn,
            &rcgen::PKCS_ECDSA_P256_SHA256,
            2031,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self, cn: &str) -> Leaf {
        self.issue(
            cn,
            &rcgen::PKCS_ECDSA_P256_SHA256,
            2031,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

/// A directory for the PEM files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "gcore-gateway-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).unwrap();
    }
    /// Writes the pair to tls.crt / tls.key.
    fn install(&self, leaf: &Leaf) {
        self.write("tls.crt", &leaf.cert_pem);
        self.write("tls.key", &leaf.key_pem);
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The test config with TLS from `dir` (and client certificates when `client_ca`).
fn tls_config(upstream: &str, dir: &Dir, client_ca: bool) -> String {
    let mut lines = format!(
        "auth_failure_limit = \"off\"\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
        dir.path("tls.crt").display().to_string(),
        dir.path("tls.key").display().to_string(),
    );
    if client_ca {
        lines.push_str(&format!(
            "tls_client_ca_file = {:?}\n",
            dir.path("ca.crt").display().to_string()
        ));
    }
    config(upstream, "").edit("auth_failure_limit = \"off\"\n", &lines)
}

/// A client that trusts only `ca` (a new one makes new connections, so new handshakes).
fn client(ca: &Ca, identity: Option<&Leaf>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
        .tls_info(true)
        .timeout(Duration::from_secs(5));
    if let Some(id) = identity {
        let pem = format!("{}{}", id.cert_pem, id.key_pem);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// The value of one series in a metrics text (0 when absent).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn https(gw: &Harness, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", gw.addr.port())
}

async fn get(http: &reqwest::Client, url: &str, key: &str) -> reqwest::Result<reqwest::Response> {
    http.get(url).header("x-api-key", key).send().await
}

/// The certificate the server presented on the connection that carried `r`.
fn peer_cert(r: &reqwest::Response) -> Vec<u8> {
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("TLS info on an https response")
        .to_vec()
}

#[tokio::test]
async fn tls_is_served_over_h2_and_http1_with_rsa_ecdsa_and_ed25519_keys() {
    let up = FakeUpstream::start().await;
    let ca = Ca::new("test CA");
    for (name, alg) in [
        ("rsa", &rcgen::PKCS_RSA_SHA256),
        ("ecdsa", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("ed25519", &rcgen::PKCS_ED25519),
    ] {
        let dir = Dir::new();
        let leaf = ca.issue(name, alg, 2031, ExtendedKeyUsagePurpose::ServerAuth);
        dir.install(&leaf);
        let gw = Harness::start(&tls_config(&up.url(), &dir, false)).await;
        // ALPN offers h2 first.
        let r = get(&client(&ca, None), &https(&gw, ME), KEY_ALPHA)
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        assert_eq!(r.version(), reqwest::Version::HTTP_2, "{name}: ALPN h2");
        assert_eq!(peer_cert(&r), leaf.der, "{name}");
        assert!(r.text().await.unwrap().contains("Company A"));
        // A client that offers only http/1.1 gets it.
        let h1 = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
            .http1_only()
            .build()
            .unwrap();
        let r = get(&h1, &https(&gw, ME), KEY_ALPHA).await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
        assert_eq!(r.version(), reqwest::Version::HTTP_11, "{name}");
        // Team keys are still required.
        let r = get(&h1, &https(&gw, ME), "wrong-key").await.unwrap();
        assert_eq!(r.status(), 401, "{name}");
        gw.stop().await;
    }
}

#[tokio::test]
async fn plain_http_to_the_tls_port_is_refused() {
    let up = FakeUpstream::start().await;
    let (ca, dir) = (Ca::new("test CA"), Dir::new());
    dir.install(&ca.server("gateway"));
    let gw = Harness::start(&tls_config(&up.url(), &dir, false)).await;
    // reqwest over http:// fails: no HTTP answer on this port.
    assert!(gw
        .http
        .get(gw.url(ME))
        .header("x-api-key", KEY_ALPHA)
        .send()
        .await
        .is_err());
    // Neither HTTP/1.1 nor h2c prior knowledge gets an HTTP answer; nothing goes upstream.
    for request in [
        format!("GET {ME} HTTP/1.1\r\nHost: x\r\nX-Api-Key: {KEY_ALPHA}\r\n\r\n").into_bytes(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
    ] {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(&request).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
            .await
            .expect("the connection is closed");
        assert!(
            !answer.starts_with(b"HTTP") && !answer.windows(4).any(|w| w == b"HTTP"),
            "an HTTP answer on the TLS port: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_eq!(up.calls(), 0);
    // The TLS port still serves TLS.
    let r = get(&client(&ca, None), &https(&gw, ME), KEY_ALPHA)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = gw.metrics().await;
    assert!(
        sample(&m, "gateway_tls_handshake_failures_total{reason=\"error\"}") >= 3.0,
        "{m}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn reload_rotates_the_certificate_for_new_handshakes_and_open_connections_keep_theirs() {
    let up = FakeUpstream::start().await;
    let (ca, dir) = (Ca::new("test CA"), Dir::new());
    let first = ca.server("gateway-2031");
    dir.install(&first);
    let gw = Harness::start(&tls_config(&up.url(), &dir, false)).await;
    let old_client = client(&ca, None);
    let r = get(&old_client, &https(&gw, ME), KEY_ALPHA).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(peer_cert(&r), first.der);
    let m = gw.metrics().await;
    assert!(
        m.contains("gateway_tls_cert_expiry_timestamp_seconds 1924992000"),
        "2031-01-01T00:00:00Z: {m}"
    );

    let second = ca.issue(
        "gateway-2032",
        &rcgen::PKCS_ED25519,
        2032,
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    dir.install(&second);
    // Files changed on disk: nothing changes until a reload.
    let r = get(&client(&ca, None), &https(&gw, ME), KEY_ALPHA)
        .await
        .unwrap();
    assert_eq!(peer_cert(&r), first.der);
    let r = gw.reload().await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let r = get(&client(&ca, None), &https(&gw, ME), KEY_ALPHA)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        peer_cert(&r),
        second.der,
        "a new handshake sees the new one"
    );
    let r = get(&old_client, &https(&gw, ME), KEY_ALPHA).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        peer_cert(&r),
        first.der,
        "the open (h2) connection keeps its certificate"
    );
    let m = gw.metrics().await;
    assert!(
        m.contains("gateway_tls_cert_expiry_timestamp_seconds 1956528000"),
        "2032-01-01T00:00:00Z: {m}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_bad_pair_is_refused_on_reload_and_the_old_certificate_keeps_serving() {
    let up = FakeUpstream::start().await;
    let (ca, dir) = (Ca::new("test CA"), Dir::new());
    let good = ca.server("gateway");
    dir.install(&good);
    let text = tls_config(&up.url(), &dir, false);
    let gw = Harness::start(&text).await;
    let other = ca.server("other");

    let secret_looking =
        "-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL!!\n-----END PRIVATE KEY-----\n";
    type Breakage<'a> = Box<dyn Fn() + 'a>;
    let cases: [(&str, Breakage<'_>, &str); 4] = [
        (
            "mismatched key",
            Box::new(|| dir.write("tls.key", &other.key_pem)),
            "server.tls_key_file: does not match the certificate",
        ),
        (
            "key file not PEM",
            Box::new(|| dir.write("tls.key", secret_looking)),
            "server.tls_key_file",
        ),
        (
            "unreadable certificate",
            Box::new(|| std::fs::remove_file(dir.path("tls.crt")).unwrap()),
            "server.tls_cert_file: cannot read",
        ),
        (
            "certificate file without certificates",
            Box::new(|| dir.write("tls.crt", "not a certificate\n")),
            "server.tls_cert_file",
        ),
    ];
    for (what, break_it, expected) in cases {
        dir.install(&good);
        break_it();
        let r = gw.reload().await;
        assert_eq!(r.status(), 400, "{what}");
        let body = r.text().await.unwrap();
        assert!(body.contains(expected), "{what}: {body}");
        assert!(
            !body.contains("TOPSECRET"),
            "{what}: key bytes quoted: {body}"
        );
        // A new handshake still gets the old certificate.
        let r = get(&client(&ca, None), &https(&gw, ME), KEY_ALPHA)
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{what}");
        assert_eq!(peer_cert(&r), good.der, "{what}");
    }

    // A reload never turns TLS off.
    dir.install(&good);
    let without_tls = text
        .edit(
            &format!(
                "tls_cert_file = {:?}\n",
                dir.path("tls.crt").display().to_string()
            ),
            "",
        )
        .edit(
            &format!(
                "tls_key_file = {:?}\n",
                dir.path("tls.key").display().to_string()
            ),
            "",
        );
    gw.gw.set_embedded_text(without_tls);
    let r = gw.reload().await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("TLS on or off"));
    let r = get(&client(&ca, None), &https(&gw, ME), KEY_ALPHA)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn client_certificates_are_required_with_a_client_ca_and_team_keys_still_are() {
    let up = FakeUpstream::start().await;
    let (ca, dir) = (Ca::new("server CA"), Dir::new());
    let client_ca = Ca::new("client CA");
    let stranger_ca = Ca::new("stranger CA");
    dir.install(&ca.server("gateway"));
    dir.write("ca.crt", &client_ca.pem());
    let gw = Harness::start(&tls_config(&up.url(), &dir, true)).await;

    // Without a client certificate, or with one from another CA: no HTTP answer at all.
    let e = get(&client(&ca, None), &https(&gw, ME), KEY_ALPHA).await;
    assert!(e.is_err(), "no client certificate: {e:?}");
    let stranger = stranger_ca.client("team-x");
    let e = get(&client(&ca, Some(&stranger)), &https(&gw, ME), KEY_ALPHA).await;
    assert!(e.is_err(), "a certificate of another CA: {e:?}");
    assert_eq!(up.calls(), 0);

    // With one: the team key decides as always.
    let team = client_ca.client("team-alpha");
    let http = client(&ca, Some(&team));
    let r = get(&http, &https(&gw, ME), KEY_ALPHA).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = get(&http, &https(&gw, ME), "not-a-team-key").await.unwrap();
    assert_eq!(
        r.status(),
        401,
        "a client certificate does not replace the key"
    );
    let r = http.get(https(&gw, ME)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let m = gw.metrics().await;
    assert!(
        sample(&m, "gateway_tls_handshake_failures_total{reason=\"error\"}") >= 2.0,
        "{m}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_stalled_handshake_is_cut_by_the_header_timeout() {
    let up = FakeUpstream::start().await;
    let (ca, dir) = (Ca::new("test CA"), Dir::new());
    dir.install(&ca.server("gateway"));
    let text = tls_config(&up.url(), &dir, false)
        .edit("[server]\n", "[server]\nheader_read_timeout = \"600ms\"\n");
    let gw = Harness::start(&text).await;
    // One connection says nothing; one sends the start of a ClientHello and stalls.
    for opening in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00][..]] {
        let started = std::time::Instant::now();
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(opening).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        let took = started.elapsed();
        assert!(read.is_ok(), "the stalled connection was not closed");
        assert!(
            took >= Duration::from_millis(550) && took < Duration::from_millis(2500),
            "closed after {took:?}"
        );
    }
    // A complete handshake in time is served.
    let r = get(&client(&ca, None), &https(&gw, ME), KEY_ALPHA)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = gw.metrics().await;
    assert_eq!(
        sample(
            &m,
            "gateway_tls_handshake_failures_total{reason=\"timeout\"}"
        ),
        2.0,
        "{m}"
    );
    gw.stop().await;
}

fn check(config: &Path) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(config)
        .envs(secrets())
        .output()
        .unwrap()
}

#[test]
fn check_validates_the_pair_and_prints_subject_and_expiry() {
    let ca = Ca::new("test CA");
    let dir = Dir::new();
    dir.install(&ca.server("gateway.example"));
    dir.write("ca.crt", &ca.pem());
    let text = tls_config("http://127.0.0.1:9", &dir, true);
    dir.write("gateway.toml", &text);
    let out = check(&dir.path("gateway.toml"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("CN=gateway.example"), "{stdout}");
    assert!(stdout.contains("2031-01-01T00:00:00Z"), "{stdout}");
    assert!(stdout.contains("client certificates required"), "{stdout}");

    // An expired certificate is valid config, with a warning.
    let old = ca.issue(
        "old",
        &rcgen::PKCS_ECDSA_P256_SHA256,
        2020,
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    dir.install(&old);
    let out = check(&dir.path("gateway.toml"));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("warning: server.tls_cert_file: the certificate expired"),
        "{stdout}"
    );

    // A mismatched pair is invalid: exit 2 naming the key.
    dir.write("tls.key", &ca.server("other").key_pem);
    let out = check(&dir.path("gateway.toml"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.tls_key_file: does not match"),
        "{stderr}"
    );
    // Half a pair, or a client CA without TLS, names the missing key.
    let only_cert = text.edit(
        &format!(
            "tls_key_file = {:?}\n",
            dir.path("tls.key").display().to_string()
        ),
        "",
    );
    dir.write("gateway.toml", &only_cert);
    let out = check(&dir.path("gateway.toml"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.tls_key_file: needed"));
}
