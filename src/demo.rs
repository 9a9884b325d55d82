//! `gcore-gateway demo`: a fake Gcore upstream on loopback plus the gateway in front of it.
//!
//! The fake upstream answers `GET /iam/clients/me` with a realistic account profile (the
//! bundled fixture, fabricated data) when it receives the demo upstream key as
//! `Authorization: APIKey …`, and Gcore-shaped 401/404 otherwise. The gateway runs with the
//! embedded `config/demo.toml`. Needs no network and no Gcore key.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::config::Config;
use crate::gateway::{ConfigSource, Gateway};

/// The example `GET /iam/clients/me` body (fabricated; see tests/fixtures/README.md).
pub const CLIENTS_ME: &str = include_str!("../tests/fixtures/clients_me.json");
/// The config the demo runs with (ports are filled in at start).
pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");
const DEMO_KEY_VAR: &str = "GCORE_GATEWAY_DEMO_UPSTREAM_KEY";
/// The fake upstream's key. Made up; it only ever travels over loopback.
const DEMO_UPSTREAM_KEY: &str = "4242_demoUpstreamSecretNotARealKey";
/// The demo callers' plaintext keys (their hashes are in `config/demo.toml`).
pub const DEMO_KEYS: [(&str, &str, &str); 3] = [
    (
        "billing",
        "demo-billing-key",
        "allow-list profile \"minimal\", rate 5/s burst 10",
    ),
    (
        "support",
        "demo-support-key",
        "remove-list profile \"no-contacts\"",
    ),
    ("platform", "demo-platform-key", "no profile: the full body"),
];

/// Starts the fake upstream on an ephemeral loopback port; returns its address.
pub async fn start_fake_upstream() -> std::io::Result<SocketAddr> {
    async fn clients_me(headers: HeaderMap) -> impl IntoResponse {
        let ok = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("APIKey {DEMO_UPSTREAM_KEY}"));
        if ok {
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                CLIENTS_ME,
            )
        } else {
            (
                StatusCode::UNAUTHORIZED,
                [("content-type", "application/json")],
                r#"{"exception_class":"NotAuthenticated","message":"Authentication credentials were not provided.","request_id":"00000000000000000000000000000000"}"#,
            )
        }
    }
    let app = Router::new().route("/iam/clients/me", get(clients_me));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// The demo config text for the given ports.
pub fn config_text(port: u16, upstream: SocketAddr) -> String {
    DEMO_CONFIG
        .replace("{PORT}", &port.to_string())
        .replace("{ADMIN_PORT}", &port.saturating_add(1).to_string())
        .replace("{UPSTREAM_PORT}", &upstream.port().to_string())
}

/// The demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The runtime could not be built.
    #[error(transparent)]
    Build(#[from] crate::gateway::BuildError),
}

/// Builds the demo gateway (config validated like any other).
pub fn gateway(text: String) -> Result<std::sync::Arc<Gateway>, DemoError> {
    let env: HashMap<String, String> =
        HashMap::from([(DEMO_KEY_VAR.to_string(), DEMO_UPSTREAM_KEY.to_string())]);
    let origin = "embedded demo config".to_string();
    let config = Config::parse(&text, &origin, &env)?;
    Ok(Gateway::new(
        config,
        ConfigSource::Embedded { text, origin, env },
    )?)
}

/// What the demo prints once it is up.
pub fn banner(port: u16, upstream: SocketAddr) -> String {
    let admin = port.saturating_add(1);
    let mut s = format!(
        "gcore-gateway demo\n\
         \n\
         fake Gcore upstream : http://{upstream}  (serves GET /iam/clients/me, fabricated data)\n\
         gateway (callers)   : http://127.0.0.1:{port}\n\
         gateway (admin)     : http://127.0.0.1:{admin}  (/healthz /readyz /metrics /admin/clients /admin/cache)\n\
         \n\
         demo team keys:\n"
    );
    for (team, key, what) in DEMO_KEYS {
        s.push_str(&format!("  {team:<9} {key:<18} {what}\n"));
    }
    s.push_str(&format!(
        "\ntry (the first call is a MISS, the next a HIT; see X-Cache):\n\
         \x20 curl -si -H 'Authorization: APIKey demo-platform-key' http://127.0.0.1:{port}/iam/clients/me\n\
         \x20 curl -si -H 'Authorization: APIKey demo-platform-key' http://127.0.0.1:{port}/iam/clients/me | grep -i x-cache\n\
         \x20 curl -s  -H 'X-Api-Key: demo-billing-key' http://127.0.0.1:{port}/iam/clients/me     # minimal profile\n\
         \x20 curl -s  -H 'Authorization: Bearer demo-support-key' http://127.0.0.1:{port}/iam/clients/me   # no contacts\n\
         \x20 curl -si http://127.0.0.1:{port}/iam/clients/me                                   # 401\n\
         \x20 curl -s  http://127.0.0.1:{admin}/metrics | grep gateway_upstream_requests\n\
         \nCtrl-C stops the demo.\n"
    ));
    s
}
