//! Shared test setup: a fake Gcore upstream (a real axum server on 127.0.0.1:0 that records
//! every request) and the real gateway (`gcore_gateway::run`) on ephemeral ports.
#![allow(dead_code)]

pub mod binary;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use gcore_gateway::config::Config;
use gcore_gateway::{ConfigSource, Gateway};

pub const CLIENTS_ME: &str = include_str!("../../fixtures/clients_me.json");
pub const KEY_401: &str = include_str!("../../fixtures/error_401_bad_permanent_token.json");

/// Upstream secrets of the two test accounts.
pub const SECRET_A: &str = "1111_upstreamSecretForAccountA";
pub const SECRET_B: &str = "2222_upstreamSecretForAccountB";

/// Caller keys (plaintext, as teams would hold them).
pub const KEY_ALPHA: &str = "alpha-team-key-0123456789";
pub const KEY_ALPHA2: &str = "alpha-team-rotated-key-9876";
pub const KEY_BETA: &str = "beta-team-key-0123456789";
pub const KEY_GAMMA: &str = "gamma-team-key-0123456789";

/// One request as the fake upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
}

/// What the fake upstream does (beyond answering per key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 with the account's body (per Authorization), 401 for unknown keys.
    Normal,
    /// Answer this status with an error body that echoes part of the key.
    Status(u16),
    /// 429 with `Retry-After: N`.
    TooMany(u64),
    /// 200 with a body that is not JSON.
    NotJson,
    /// 200 with a body of this many bytes.
    Oversize(usize),
    /// Close the connection after sending half the body.
    DropMidBody,
    /// 200 `application/json` with exactly these bytes (malformed JSON, huge numbers...).
    Raw(&'static [u8]),
}

pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub seen: Mutex<Vec<Seen>>,
    pub calls: AtomicUsize,
    pub delay_ms: AtomicU64,
    mode: Mutex<Mode>,
    /// Fail this many next calls with `fail_status` before behaving per mode.
    pub fail_next: AtomicUsize,
    pub fail_status: AtomicU16,
    bodies: Mutex<HashMap<String, String>>,
}

impl FakeUpstream {
    pub async fn start() -> Arc<FakeUpstream> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut bodies = HashMap::new();
        bodies.insert(format!("APIKey {SECRET_A}"), body_for("A", 1));
        bodies.insert(format!("APIKey {SECRET_B}"), body_for("B", 1));
        let up = Arc::new(FakeUpstream {
            addr: listener.local_addr().unwrap(),
            seen: Mutex::new(Vec::new()),
            calls: AtomicUsize::new(0),
            delay_ms: AtomicU64::new(0),
            mode: Mutex::new(Mode::Normal),
            fail_next: AtomicUsize::new(0),
            fail_status: AtomicU16::new(503),
            bodies: Mutex::new(bodies),
        });
        let app = Router::new().fallback(handle).with_state(up.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        up
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    pub fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }
    /// Changes account A's answer (a new "version" of the profile).
    pub fn set_version(&self, account: &str, version: u32) {
        let secret = if account == "A" { SECRET_A } else { SECRET_B };
        self.bodies
            .lock()
            .unwrap()
            .insert(format!("APIKey {secret}"), body_for(account, version));
    }
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// The fixture with a marker of account and version, so tests can tell bodies apart.
pub fn body_for(account: &str, version: u32) -> String {
    let mut v: serde_json::Value = serde_json::from_str(CLIENTS_ME).unwrap();
    v["companyName"] = format!("Company {account}").into();
    v["website"] = format!("https://{account}.example/v{version}").into();
    if account == "B" {
        v["id"] = 2_000_002.into();
        v["email"] = "owner@b.example".into();
    }
    v.to_string()
}

async fn handle(State(up): State<Arc<FakeUpstream>>, req: Request) -> Response {
    up.calls.fetch_add(1, Ordering::SeqCst);
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    up.seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().map(str::to_string),
        headers: req.headers().clone(),
    });
    let delay = up.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let echo = format!(
        r#"{{"exception_class":"NotAuthenticated","message":"Bad permanent token: {}","request_id":"f6393419afcfb518a539006f099736da"}}"#,
        auth.trim_start_matches("APIKey ")
    );
    if up
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        let s = StatusCode::from_u16(up.fail_status.load(Ordering::SeqCst)).unwrap();
        return (s, echo).into_response();
    }
    let mode = *up.mode.lock().unwrap();
    match mode {
        Mode::Status(s) => (StatusCode::from_u16(s).unwrap(), echo).into_response(),
        Mode::TooMany(secs) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", secs.to_string())],
            echo,
        )
            .into_response(),
        Mode::Raw(bytes) => (
            StatusCode::OK,
            [("content-type", "application/json")],
            bytes::Bytes::from_static(bytes),
        )
            .into_response(),
        Mode::NotJson => (
            StatusCode::OK,
            "<html>maria.keller@acme-widgets.example</html>",
        )
            .into_response(),
        Mode::Oversize(n) => {
            let mut s = String::from("[\"");
            s.push_str(&"x".repeat(n));
            s.push_str("\"]");
            (StatusCode::OK, s).into_response()
        }
        Mode::DropMidBody => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(2);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(bytes::Bytes::from_static(b"{\"id\": 1, \"users\": [")))
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tx.send(Err(std::io::Error::other("dropped"))).await;
            });
            let stream = tokio_stream_from(rx);
            Response::builder()
                .header("content-length", "5000")
                .body(Body::from_stream(stream))
                .unwrap()
        }
        Mode::Normal => match up.bodies.lock().unwrap().get(&auth) {
            Some(b) => (
                StatusCode::OK,
                [("content-type", "application/json")],
                b.clone(),
            )
                .into_response(),
            None => (StatusCode::UNAUTHORIZED, echo).into_response(),
        },
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Edits a test config by text, failing loudly when the text to replace is not there (a plain
/// `str::replace` would silently leave the config unchanged and the test testing nothing).
pub trait Edit {
    /// `self` with every `from` replaced by `to`; panics if `from` does not occur.
    fn edit(&self, from: &str, to: &str) -> String;
}

impl Edit for str {
    fn edit(&self, from: &str, to: &str) -> String {
        assert!(
            self.contains(from),
            "test config edit: {from:?} is not in the config"
        );
        self.replace(from, to)
    }
}

/// A test config: accounts A and B, clients alpha (A, two keys), beta (B), gamma (A, no
/// routes but /iam/clients/me... restricted to /iam/users/me).
pub fn config(upstream: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace = "2s"
request_timeout = "3s"
auth_failure_limit = "off"

[upstream]
base_url = "{upstream}"
allow_insecure_http = true
timeout = "2s"
connect_timeout = "500ms"
retries = 0

[[accounts]]
name = "A"
api_key_env = "TEST_SECRET_A"

[[accounts]]
name = "B"
api_key_env = "TEST_SECRET_B"

[cache]
ttl = "60s"
stale_while_revalidate = "0s"
stale_if_error = "0s"

[[routes]]
path = "/iam/clients/me"

[[routes]]
path = "/iam/users/me"

[[clients]]
name = "alpha"
keys = ["{alpha}", "{alpha2}"]
account = "A"

[[clients]]
name = "beta"
keys = ["{beta}"]
account = "B"

[[clients]]
name = "gamma"
keys = ["{gamma}"]
account = "A"
routes = ["/iam/users/me"]
{extra}
"#,
        alpha = hash(KEY_ALPHA),
        alpha2 = hash(KEY_ALPHA2),
        beta = hash(KEY_BETA),
        gamma = hash(KEY_GAMMA),
    )
}

pub fn hash(key: &str) -> String {
    gcore_gateway::auth::KeyHash::of(key.as_bytes()).to_string()
}

pub fn secrets() -> HashMap<String, String> {
    HashMap::from([
        ("TEST_SECRET_A".to_string(), SECRET_A.to_string()),
        ("TEST_SECRET_B".to_string(), SECRET_B.to_string()),
    ])
}

/// A running gateway on ephemeral ports.
pub struct Harness {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub gw: Arc<Gateway>,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Harness {
    pub async fn start(config_text: &str) -> Harness {
        let config =
            Config::parse(config_text, "test config", &secrets()).expect("valid test config");
        let listener = gcore_gateway::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let admin = gcore_gateway::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
        let gw = Gateway::new(
            config,
            ConfigSource::Embedded {
                text: config_text.to_string(),
                origin: "test config".into(),
                env: secrets(),
            },
        )
        .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gcore_gateway::run(
            gw.clone(),
            listener,
            admin,
            async move {
                let _ = rx.await;
            },
        ));
        Harness {
            addr,
            admin: admin_addr,
            gw,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(200)
                .build()
                .unwrap(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// GET `path` with `Authorization: APIKey <key>`.
    pub async fn get(&self, path: &str, key: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .header("authorization", format!("APIKey {key}"))
            .send()
            .await
            .unwrap()
    }

    /// The text of an admin GET (e.g. `/metrics`, `/admin/clients`).
    pub async fn admin_text(&self, path: &str) -> String {
        self.http
            .get(self.admin_url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `/metrics` as text.
    pub async fn metrics(&self) -> String {
        self.admin_text("/metrics").await
    }

    /// An admin GET parsed as JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        serde_json::from_str(&self.admin_text(path).await).unwrap()
    }

    /// `POST /admin/reload`.
    pub async fn reload(&self) -> reqwest::Response {
        self.http
            .post(self.admin_url("/admin/reload"))
            .send()
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// One answer of [`concurrent_gets`].
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

/// Sends `n` GETs of `path` with `X-Api-Key: key` at once, spread round-robin over `gws`, and
/// returns the answers in the order sent.
pub async fn concurrent_gets(gws: &[&Harness], path: &str, key: &str, n: usize) -> Vec<Answer> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let g = gws[i % gws.len()];
            let (http, url, key) = (g.http.clone(), g.url(path), key.to_string());
            tokio::spawn(async move {
                let r = http.get(url).header("x-api-key", key).send().await.unwrap();
                let (status, headers) = (r.status().as_u16(), r.headers().clone());
                Answer {
                    status,
                    headers,
                    body: r.text().await.unwrap(),
                }
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(n);
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Puts `text`'s caller and admin listeners on free fixed ports (a binary under test prints no
/// port, so the test must know them); returns the text and the two ports.
pub fn on_free_ports(text: &str) -> (String, u16, u16) {
    let (port, admin) = (free_port(), free_port());
    let text = text
        .edit(
            "admin_listen = \"127.0.0.1:0\"",
            &format!("admin_listen = \"127.0.0.1:{admin}\""),
        )
        .edit(
            "\nlisten = \"127.0.0.1:0\"",
            &format!("\nlisten = \"127.0.0.1:{port}\""),
        );
    (text, port, admin)
}

/// Waits until a gateway (binary) answers 200 on its admin `/readyz`.
/// The `/metrics` text of the admin port `admin` (of a binary under test).
pub async fn admin_metrics(http: &reqwest::Client, admin: u16) -> String {
    http.get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub async fn wait_ready(http: &reqwest::Client, admin_port: u16) {
    for _ in 0..200 {
        if http
            .get(format!("http://127.0.0.1:{admin_port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("gateway on admin port {admin_port} did not become ready");
}

pub fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}
