//! Caller-port TLS material: reading the PEM files named by `server.tls_cert_file`,
//! `server.tls_key_file` and `server.tls_client_ca_file`, building the rustls `ServerConfig`
//! from them (TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`, client certificates required when a
//! CA is given) and the facts `check` and the metrics report about the certificate (subject,
//! validity).
//!
//! The crypto provider is aws-lc-rs, the one the upstream client (reqwest) and Redis already
//! link, passed explicitly so that no process-wide default is needed. The files are read when
//! the config is loaded, so a reload re-reads them and an unreadable or mismatched pair fails
//! the reload like any other invalid key. Serving handshakes (and timing them) is `server`'s.
//! The private key never leaves this module except inside the `ServerConfig`, and no error
//! quotes a byte of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// ALPN protocols offered, in order of preference: HTTP/2, then HTTP/1.1.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Where the PEM files are (paths as configured).
#[derive(Debug, Clone, Copy)]
pub struct TlsFiles<'a> {
    /// `server.tls_cert_file`: the certificate chain, end-entity first.
    pub cert: &'a Path,
    /// `server.tls_key_file`: its private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: &'a Path,
    /// `server.tls_client_ca_file`: CA certificates client certificates must chain to.
    pub client_ca: Option<&'a Path>,
}

/// A TLS file that could not be used; `key` is the config key naming the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TlsError {
    /// `server.tls_cert_file`, `server.tls_key_file` or `server.tls_client_ca_file`.
    pub key: &'static str,
    /// What is wrong (never a byte of the files).
    pub message: String,
}

fn err(key: &'static str, message: impl Into<String>) -> TlsError {
    TlsError {
        key,
        message: message.into(),
    }
}

const CERT_KEY: &str = "server.tls_cert_file";
const KEY_KEY: &str = "server.tls_key_file";
const CA_KEY: &str = "server.tls_client_ca_file";

/// The caller port's TLS setup, built from the files: what new handshakes use.
pub struct Tls {
    server_config: Arc<ServerConfig>,
    /// The certificate file, as configured.
    pub cert_file: PathBuf,
    /// The client CA file, when client certificates are required.
    pub client_ca_file: Option<PathBuf>,
    /// Subject of the end-entity certificate (RFC 4514 string).
    pub subject: String,
    /// Start of the end-entity certificate's validity.
    pub not_before: SystemTime,
    /// End of the end-entity certificate's validity.
    pub not_after: SystemTime,
    /// CA certificates in the client CA file.
    pub client_cas: usize,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The ServerConfig (which holds the private key) is left out.
        f.debug_struct("Tls")
            .field("cert_file", &self.cert_file)
            .field("client_ca_file", &self.client_ca_file)
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads and checks the files and builds the server configuration.
    pub fn load(files: TlsFiles<'_>) -> Result<Tls, TlsError> {
        let chain = read_certs(files.cert, CERT_KEY)?;
        let (subject, not_before, not_after) = facts(&chain[0])?;
        let key = read_key(files.key)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| err(CERT_KEY, format!("cannot set up TLS: {e}")))?;
        let (builder, client_cas) = match files.client_ca {
            None => (builder.with_no_client_auth(), 0),
            Some(path) => {
                let cas = read_certs(path, CA_KEY)?;
                let mut roots = RootCertStore::empty();
                let (added, _ignored) = roots.add_parsable_certificates(cas);
                if added == 0 {
                    return Err(err(CA_KEY, "holds no usable CA certificate"));
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| err(CA_KEY, format!("cannot use these CAs: {e}")))?;
                (builder.with_client_cert_verifier(verifier), added)
            }
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => err(
                KEY_KEY,
                "does not match the certificate in server.tls_cert_file",
            ),
            // rustls's messages name the problem ("failed to parse private key as RSA, ECDSA,
            // or EdDSA"), never the key.
            other => err(KEY_KEY, format!("unusable private key: {other}")),
        })?;
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Tls {
            server_config: Arc::new(config),
            cert_file: files.cert.to_path_buf(),
            client_ca_file: files.client_ca.map(Path::to_path_buf),
            subject,
            not_before,
            not_after,
            client_cas,
        })
    }

    /// What a new handshake uses.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server_config.clone())
    }

    /// Whether client certificates are required.
    pub fn mutual(&self) -> bool {
        self.client_ca_file.is_some()
    }

    /// `not_after` in Unix seconds (the expiry metric).
    pub fn expiry_unix(&self) -> i64 {
        unix(self.not_after)
    }

    /// One line for `check` and the startup log.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "tls: certificate {:?}, valid until {}",
            self.subject,
            humantime::format_rfc3339_seconds(self.not_after)
        );
        if self.mutual() {
            s.push_str(&format!(
                "; client certificates required ({} CA{})",
                self.client_cas,
                if self.client_cas == 1 { "" } else { "s" }
            ));
        }
        s
    }

    /// A warning when the certificate is not valid at `now` (expired or not yet valid).
    pub fn validity_warning(&self, now: SystemTime) -> Option<String> {
        if now > self.not_after {
            Some(format!(
                "{CERT_KEY}: the certificate expired at {}",
                humantime::format_rfc3339_seconds(self.not_after)
            ))
        } else if now < self.not_before {
            Some(format!(
                "{CERT_KEY}: the certificate is not valid before {}",
                humantime::format_rfc3339_seconds(self.not_before)
            ))
        } else {
            None
        }
    }
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn read(path: &Path, key: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| err(key, format!("cannot read {}: {e}", path.display())))
}

/// Every CERTIFICATE block of the file, in order; at least one.
fn read_certs(path: &Path, key: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, key)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| err(key, "is not valid PEM"))?;
    if certs.is_empty() {
        return Err(err(key, "holds no CERTIFICATE block"));
    }
    Ok(certs)
}

/// The first private key block of the key file. PEM errors are not passed on: rustls-pki-types
/// quotes the offending line, which would be part of the key.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path, KEY_KEY)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        err(
            KEY_KEY,
            "holds no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)",
        )
    })
}

/// Subject and validity of a certificate.
fn facts(cert: &CertificateDer<'_>) -> Result<(String, SystemTime, SystemTime), TlsError> {
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(cert.as_ref()).map_err(|e| {
        err(
            CERT_KEY,
            format!("the first certificate cannot be parsed: {e}"),
        )
    })?;
    let tbs = &parsed.tbs_certificate;
    Ok((
        tbs.subject.to_string(),
        tbs.validity.not_before.to_system_time(),
        tbs.validity.not_after.to_system_time(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_name_their_key() {
        let missing = Path::new("/nonexistent/gcore-gateway/tls.pem");
        let e = Tls::load(TlsFiles {
            cert: missing,
            key: missing,
            client_ca: None,
        })
        .unwrap_err();
        assert_eq!(e.key, CERT_KEY);
        assert!(e
            .to_string()
            .starts_with("server.tls_cert_file: cannot read"));
    }

    #[test]
    fn unix_seconds_before_and_after_the_epoch() {
        assert_eq!(unix(UNIX_EPOCH + std::time::Duration::from_secs(5)), 5);
        assert_eq!(unix(UNIX_EPOCH - std::time::Duration::from_secs(5)), -5);
    }
}
