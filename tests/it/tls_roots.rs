//! Which certificate authorities the gateway trusts: the upstream client (reqwest with
//! rustls-platform-verifier) and the Redis client (redis with rustls) both load the operating
//! system's store through rustls-native-certs, so `SSL_CERT_FILE` / `SSL_CERT_DIR` move both
//! at once. Certificates are made with the `openssl` command for a CA of the test's own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::replicas::Redis;
use crate::support::binary::Binary;
use crate::support::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command is needed to make test certificates");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>.pem`) and, signed by it, a server certificate for IP 127.0.0.1
/// (`<name>-leaf.pem`, `<name>-leaf.key`).
fn make_ca(dir: &Path, name: &str) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let (ca, ca_key) = (format!("{name}.pem"), format!("{name}.key"));
    let subj = format!("/CN=gcore-gateway test CA {name}");
    let mut args = vec![
        "req", "-x509", "-days", "2", "-subj", &subj, "-keyout", &ca_key, "-out", &ca,
    ];
    args.extend(ec);
    args.extend([
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &args);
    let (leaf, key, csr) = (
        format!("{name}-leaf.pem"),
        format!("{name}-leaf.key"),
        format!("{name}-leaf.csr"),
    );
    let mut args = vec![
        "req",
        "-new",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &key,
        "-out",
        &csr,
    ];
    args.extend(ec);
    openssl(dir, &args);
    let ext = format!("{name}-ext.cnf");
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &leaf,
        ],
    );
}

/// An https fake Gcore: answers every request with the fixture, HTTP/1.1, then closes.
async fn https_upstream(cert: &Path, key: &Path) -> (u16, Arc<AtomicUsize>) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                // A client that does not trust the certificate fails here: nothing is answered.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let body = CLIENTS_ME;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, answered)
}

async fn redis_up(http: &reqwest::Client, admin: u16, within: Duration) -> bool {
    let until = tokio::time::Instant::now() + within;
    loop {
        let m = admin_metrics(http, admin).await;
        if m.lines().any(|l| l == "gateway_redis_up 1") {
            return true;
        }
        if tokio::time::Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn upstream_and_redis_trust_the_same_roots() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("gcore-gateway-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    make_ca(&dir, "ours");
    make_ca(&dir, "other");
    let (leaf, key) = (dir.join("ours-leaf.pem"), dir.join("ours-leaf.key"));
    let (up_port, answered) = https_upstream(&leaf, &key).await;
    let redis_port = free_port();
    let port = redis_port.to_string();
    let _redis = Redis::start_with(
        redis_port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port,
            "--tls-cert-file",
            leaf.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-ca-cert-file",
            dir.join("ours.pem").to_str().unwrap(),
            "--tls-auth-clients",
            "no",
        ],
    );
    let text = config(
        &format!("https://127.0.0.1:{up_port}"),
        &format!("[redis]\nurl = \"rediss://127.0.0.1:{redis_port}\"\ntimeout = \"500ms\"\n"),
    );
    let http = reqwest::Client::new();

    // Trusting our CA (and only it): both the upstream and Redis are reached over TLS.
    let (trusting, _, admin) = on_free_ports(&text);
    let ca = dir.join("ours.pem");
    let bin = Binary::start_with(&trusting, &[("SSL_CERT_FILE", ca.to_str().unwrap())]);
    wait_ready(&http, admin).await;
    assert!(
        redis_up(&http, admin, Duration::from_secs(5)).await,
        "rediss:// with our CA"
    );
    let r = http
        .get(bin.url("/iam/clients/me"))
        .header("authorization", format!("APIKey {KEY_ALPHA}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "https upstream with our CA");
    assert_eq!(answered.load(Ordering::SeqCst), 1);
    drop(bin);

    // Trusting another CA only: neither is reached.
    let (distrusting, _, admin) = on_free_ports(&text);
    let other = dir.join("other.pem");
    let bin = Binary::start_with(&distrusting, &[("SSL_CERT_FILE", other.to_str().unwrap())]);
    wait_ready(&http, admin).await;
    let r = http
        .get(bin.url("/iam/clients/me"))
        .header("authorization", format!("APIKey {KEY_ALPHA}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        502,
        "an upstream certificate from an untrusted CA"
    );
    assert_eq!(
        answered.load(Ordering::SeqCst),
        1,
        "no answer through an untrusted TLS session"
    );
    assert!(
        !redis_up(&http, admin, Duration::from_millis(500)).await,
        "rediss:// with an untrusted CA"
    );
    drop(bin);
    let _ = std::fs::remove_dir_all(&dir);
}
