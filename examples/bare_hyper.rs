//! A bare hyper 1.x server that answers every GET with the same bytes from memory: the
//! physical limit of this stack (tokio + hyper HTTP/1.1, no routing, no auth, no cache), used
//! by `bench/run.sh` as the ceiling the gateway's hit path is compared with.
//!
//! With `--upstream` the same program is the benchmark's fake Gcore upstream: it wants
//! `Authorization: APIKey …` (401 without it), counts the calls, and waits a settable latency
//! before answering. Control routes (upstream mode only, loopback only):
//!
//! | route | does |
//! |---|---|
//! | `GET /__bench/calls` | `calls=N unauthorized=M` since the last reset |
//! | `GET /__bench/reset` | zeroes both counters |
//! | `GET /__bench/delay?ms=N` | sets the latency of every later answer |
//!
//! ```text
//! cargo run --release --example bare_hyper -- --port 18401
//! cargo run --release --example bare_hyper -- --port 18400 --upstream --delay-ms 50
//! ```
//!
//! The body is `bench/body.json` (a 1.7 KB Gcore `GET /iam/clients/me` answer with fabricated
//! data) unless `--body FILE` names another.
//!
//! Two switches rebuild, on this bare server, the connection setup the gateway's caller port
//! uses, to price it separately from the gateway's own work: `--auto` serves through
//! hyper-util's HTTP/1.1 + h2c auto builder instead of hyper's plain HTTP/1.1 one, and
//! `--header-read-timeout SECS` arms hyper's per-request header-read timer (the gateway's
//! `server.header_read_timeout`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpSocket;

const BODY: &str = include_str!("../bench/body.json");
/// Same backlog as the gateway, so a connection storm queues instead of losing SYNs.
const BACKLOG: u32 = 4096;

struct Args {
    port: u16,
    upstream: bool,
    delay_ms: u64,
    body: Bytes,
    auto: bool,
    header_read_timeout: Option<Duration>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        port: 18401,
        upstream: false,
        delay_ms: 0,
        body: Bytes::from_static(BODY.as_bytes()),
        auto: false,
        header_read_timeout: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--port" => args.port = value("--port")?.parse().map_err(|e| format!("{e}"))?,
            "--delay-ms" => {
                args.delay_ms = value("--delay-ms")?.parse().map_err(|e| format!("{e}"))?
            }
            "--body" => {
                let path = value("--body")?;
                args.body = std::fs::read(&path)
                    .map_err(|e| format!("cannot read {path}: {e}"))?
                    .into();
            }
            "--header-read-timeout" => {
                let secs: u64 = value("--header-read-timeout")?
                    .parse()
                    .map_err(|e| format!("{e}"))?;
                args.header_read_timeout = Some(Duration::from_secs(secs));
            }
            "--upstream" => args.upstream = true,
            "--auto" => args.auto = true,
            "-h" | "--help" => {
                return Err(
                    "usage: bare_hyper [--port N] [--upstream] [--delay-ms N] [--body FILE] \
                     [--auto] [--header-read-timeout SECS]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

/// The fake upstream's counters and latency.
#[derive(Default)]
struct Upstream {
    calls: AtomicU64,
    unauthorized: AtomicU64,
    delay_ms: AtomicU64,
}

fn respond(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn upstream(state: &Upstream, body: &Bytes, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if let Some(ctl) = path.strip_prefix("/__bench/") {
        let text = match ctl {
            "calls" => format!(
                "calls={} unauthorized={}\n",
                state.calls.load(Ordering::SeqCst),
                state.unauthorized.load(Ordering::SeqCst)
            ),
            "reset" => {
                state.calls.store(0, Ordering::SeqCst);
                state.unauthorized.store(0, Ordering::SeqCst);
                "ok\n".to_string()
            }
            "delay" => {
                let ms = req
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("ms="))
                    .and_then(|v| v.parse().ok());
                match ms {
                    Some(ms) => {
                        state.delay_ms.store(ms, Ordering::SeqCst);
                        format!("delay_ms={ms}\n")
                    }
                    None => return respond(StatusCode::BAD_REQUEST, "want ?ms=N\n".into()),
                }
            }
            _ => return respond(StatusCode::NOT_FOUND, Bytes::new()),
        };
        return respond(StatusCode::OK, text.into());
    }
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes().starts_with(b"APIKey ") && v.len() > 7);
    if !authorized {
        state.unauthorized.fetch_add(1, Ordering::SeqCst);
        return respond(
            StatusCode::UNAUTHORIZED,
            Bytes::from_static(br#"{"exception_class":"NotAuthenticated","message":"Authentication credentials were not provided."}"#),
        );
    }
    state.calls.fetch_add(1, Ordering::SeqCst);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    respond(StatusCode::OK, body.clone())
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = (|| {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    })()
    .unwrap_or_else(|e| {
        eprintln!("cannot listen on {addr}: {e}");
        std::process::exit(1);
    });
    let state = args.upstream.then(|| {
        let s = Upstream::default();
        s.delay_ms.store(args.delay_ms, Ordering::SeqCst);
        Arc::new(s)
    });
    let body = args.body;
    eprintln!(
        "bare_hyper listening on {addr} ({}, {} byte body, {}, header read timeout {:?})",
        if state.is_some() {
            "fake upstream"
        } else {
            "limit"
        },
        body.len(),
        if args.auto { "auto h1+h2c" } else { "http1" },
        args.header_read_timeout,
    );
    let mut http1 = http1::Builder::new();
    http1.keep_alive(true);
    let mut auto = auto::Builder::new(TokioExecutor::new());
    auto.http1().keep_alive(true);
    if let Some(t) = args.header_read_timeout {
        http1.timer(TokioTimer::new()).header_read_timeout(t);
        auto.http1().timer(TokioTimer::new()).header_read_timeout(t);
    }
    let (http1, auto) = (Arc::new(http1), Arc::new(auto));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (state, body) = (state.clone(), body.clone());
        let (http1, auto, use_auto) = (http1.clone(), auto.clone(), args.auto);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (state, body) = (state.clone(), body.clone());
                async move {
                    Ok::<_, Infallible>(match &state {
                        Some(s) => upstream(s, &body, req).await,
                        None => respond(StatusCode::OK, body),
                    })
                }
            });
            let io = TokioIo::new(stream);
            let _ = if use_auto {
                auto.serve_connection(io, svc).await
            } else {
                http1.serve_connection(io, svc).await.map_err(Into::into)
            };
        });
    }
}
