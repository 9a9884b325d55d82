//! Sockets: binding, serving both listeners, connection and request limits, signals and
//! graceful shutdown.
//!
//! The caller port is served by hyper directly: HTTP/1.1 and prior-knowledge h2c (no `Upgrade:
//! h2c`, no CONNECT tunnels), or, with `server.tls_cert_file`, only TLS carrying HTTP/1.1 or h2
//! (ALPN). Which of hyper's two connection types serves a connection is decided once, from its
//! first bytes or its ALPN (`stream`), so no sniffing layer sits under every read. Around every
//! connection:
//!
//! * a slot of `server.max_connections`, taken *before* `accept`, so excess connections wait in
//!   the kernel backlog instead of in a queue of ours;
//! * a watchdog ([`ConnClock`]) that closes the connection when a request head takes longer
//!   than `server.header_read_timeout` (counted from connect, and on HTTP/1.1 from the first
//!   byte of each later request) or when no request has been in flight for
//!   `server.keep_alive_timeout`. hyper's own `header_read_timeout` is deliberately not used:
//!   it also runs while a keep-alive connection sits idle, which would cut every idle period
//!   down to the header timeout. A TLS handshake counts as part of the first head;
//! * the TLS setup of the generation current at accept (a reload changes what new handshakes
//!   present; an open connection keeps its own).
//!
//! Around every request: for an HTTP/2 stream, a slot of the in-flight cap taken without
//! waiting (none free → 503 at once; an HTTP/1.1 connection carries one request at a time, so
//! `max_connections` bounds those and they take no slot), a `HasBody` marker so that `proxy` can refuse GET/HEAD bodies (bodies are never
//! read, so never forwarded), the request id (taken here, so every answer carries it), a
//! panic guard (500 `internal`, the process keeps serving) and a `server.request_timeout`
//! backstop. The guard is a `catch_unwind` around the handler future rather than
//! tower-http's `CatchPanicLayer`: the caller port is a bare hyper service, and wrapping it
//! in tower layers would box every response future on the hit path for the same effect. Requests that carried a body or `Transfer-Encoding` are
//! answered with `Connection: close`, so no byte after a refused head is ever parsed as a
//! request. hyper itself answers malformed heads: 400 for invalid bytes, unknown versions, bad
//! framing and conflicting `Content-Length`s, 431 for heads beyond the read buffer or with
//! more than [`MAX_HEADERS`] lines. The admin port is an axum router (`admin`); it stays up
//! while callers drain (`/readyz` answers 503 then) and closes last. Nothing here decides
//! what a request means.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderValue, Request, Response, Version};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{watch, Semaphore};

use crate::config::{ConnLimits, ServerSettings};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::metrics::RequestLabels;
use crate::proxy::{HasBody, RequestId};

mod stream;
mod watchdog;
use stream::{CallerStream, Protocol};
use watchdog::{Busy, ConnClock, Expiry, Watched};

/// Listen backlog: large enough that a storm of new connections queues instead of being
/// dropped (a dropped SYN costs the caller a 1 s retransmit).
const BACKLOG: u32 = 4096;
/// How often limiter state for idle source IPs is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Most header lines in an HTTP/1.1 request head (hyper's default, written down): more is 431.
pub const MAX_HEADERS: usize = 100;
/// Concurrent streams per HTTP/2 connection; the in-flight cap bounds the total anyway.
const H2_MAX_STREAMS: u32 = 256;
/// Upper bound on `max_connections` and the in-flight cap: far above any file-descriptor
/// limit, and it keeps a huge configured value from overflowing the semaphores.
const MAX_SLOTS: usize = 1 << 20;
/// The request-timeout backstop fires this long after `server.request_timeout`, so that the
/// handler's own deadline (which knows what it was waiting for) normally answers first.
const REQUEST_TIMEOUT_SLACK: Duration = Duration::from_secs(1);
/// An idle connection asked to close gets this long to say goodbye (HTTP/2 GOAWAY).
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// After `shutdown_grace`, connections still open are dropped; this bounds waiting for that.
const FORCE_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The caller-port limits, read from `[server]` once when serving starts (a reload does not
/// change them; `request_timeout` is re-read per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A request head must arrive within this (slowloris defence).
    pub header_read_timeout: Duration,
    /// An idle connection is closed after this.
    pub keep_alive_timeout: Duration,
    /// Open caller connections at most.
    pub max_connections: usize,
    /// HTTP/2 streams being handled at once, over all connections (HTTP/2 multiplexes many per
    /// connection; an HTTP/1.1 connection carries one request at a time, bounded by
    /// `max_connections`). Equal to `max_connections`.
    pub max_in_flight: usize,
    /// Request head size limit (431 beyond).
    pub max_header_bytes: usize,
    /// Request target size limit (414 beyond).
    pub max_uri_bytes: usize,
}

impl Limits {
    /// See the type.
    pub fn from_settings(s: &ServerSettings) -> Limits {
        let c: &ConnLimits = &s.conn;
        let max_connections = c.max_connections.clamp(1, MAX_SLOTS);
        Limits {
            header_read_timeout: c.header_read_timeout,
            keep_alive_timeout: c.keep_alive_timeout,
            max_connections,
            max_in_flight: max_connections,
            max_header_bytes: c.max_header_bytes,
            max_uri_bytes: c.max_uri_bytes,
        }
    }
}

/// Binds a TCP listener with an explicit backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serves the caller and admin listeners until `shutdown` resolves, then drains in-flight
/// requests for at most `server.shutdown_grace`.
pub async fn run(
    gw: Arc<Gateway>,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    // The admin port outlives the drain: probes see 503 on /readyz, /metrics stays scrapable.
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin = {
        let gw = gw.clone();
        tokio::spawn(async move {
            let app = crate::admin::router(gw);
            axum::serve(admin_listener, app)
                .with_graceful_shutdown(async move {
                    let _ = admin_stop_rx.await;
                })
                .await
        })
    };
    {
        let gw = gw.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            stopped(&mut stop).await;
            gw.ready.store(false, Ordering::Release);
        });
    }
    let maintenance = tokio::spawn(maintenance(gw.clone()));
    gw.ready.store(true, Ordering::Release);
    tracing::info!(
        listen = %listener.local_addr()?,
        tls = gw.peek().config.server.tls.is_some(),
        "gcore-gateway serving"
    );
    let result = serve_callers(gw.clone(), listener, stop_rx).await;
    gw.ready.store(false, Ordering::Release);
    maintenance.abort();
    let _ = admin_stop_tx.send(());
    let _ = admin.await;
    if let Some(t) = &gw.telemetry {
        // The spans of the last requests are exported before the process ends.
        t.shutdown().await;
    }
    crate::proxy::access_log::flush(Duration::from_secs(1));
    result
}

/// What open connections are told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Finish the request in flight, then close (HTTP/2: GOAWAY).
    Draining,
    /// The grace period is over: close now.
    Closing,
}

/// The two protocol builders of the caller port. Each connection is served by one of them,
/// chosen once per connection (see [`stream::protocol`]): hyper's plain HTTP/1.1 connection
/// for the common case, with no sniffing layer under every read, and HTTP/2 for prior-knowledge
/// h2c or ALPN `h2`.
struct Protocols {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl Protocols {
    fn new(limits: &Limits) -> Protocols {
        let mut h1 = http1::Builder::new();
        // No timer: hyper's header-read timeout is off on purpose (hyper's default is 30 s,
        // and it also runs while a keep-alive connection idles); the watchdog times heads.
        h1.header_read_timeout(None)
            // Twice our own limits, so heads just over them reach `proxy` and get its JSON
            // 414/431 with a request id; only far larger ones are cut by hyper (a bare 431).
            .max_buf_size(
                ((limits.max_header_bytes + limits.max_uri_bytes) * 2 + 8192).max(16 * 1024),
            )
            .max_headers(MAX_HEADERS)
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(H2_MAX_STREAMS)
            .keep_alive_interval(Some(limits.keep_alive_timeout / 2))
            .keep_alive_timeout(limits.keep_alive_timeout / 2);
        Protocols { h1, h2 }
    }
}

async fn serve_callers(
    gw: Arc<Gateway>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let limits = Limits::from_settings(&gw.peek().config.server);
    let protocols = Arc::new(Protocols::new(&limits));
    let (phase_tx, phase_rx) = watch::channel(Phase::Serving);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight));
    loop {
        // Waiting for a slot before accepting leaves excess connections in the backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped(&mut stop) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let clock = Arc::new(ConnClock::new());
        let svc = service(gw.clone(), peer, clock.clone(), in_flight.clone());
        let watched = Watched {
            io: stream,
            clock: clock.clone(),
        };
        // The certificate of the generation current at accept: a reload changes what new
        // handshakes present, never an open connection.
        let tls = gw.peek().config.server.tls.as_ref().map(|t| t.acceptor());
        let mut phase = phase_rx.clone();
        let gw = gw.clone();
        let protocols = protocols.clone();
        gw.metrics.connections.inc();
        tokio::spawn(async move {
            let io = match tls {
                None => Some(CallerStream::Plain(watched)),
                Some(acceptor) => {
                    stream::handshake(
                        acceptor,
                        watched,
                        &clock,
                        &limits,
                        &mut phase,
                        &gw.metrics,
                        peer,
                    )
                    .await
                }
            };
            let proto = match &io {
                Some(io) => stream::protocol(io, &clock, &limits, &mut phase).await,
                None => None,
            };
            match (io, proto) {
                (Some(io), Some(Protocol::Http1)) => {
                    let conn = protocols.h1.serve_connection(TokioIo::new(io), svc);
                    drive(conn, &clock, &limits, &mut phase, peer).await;
                }
                (Some(io), Some(Protocol::Http2)) => {
                    let conn = protocols.h2.serve_connection(TokioIo::new(io), svc);
                    drive(conn, &clock, &limits, &mut phase, peer).await;
                }
                _ => {}
            }
            gw.metrics.connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    let _ = phase_tx.send(Phase::Draining);
    // Every open connection holds a slot: all slots back means all connections are closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let grace = gw.peek().config.server.shutdown_grace;
    if tokio::time::timeout(grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            grace_s = grace.as_secs(),
            "shutdown grace elapsed with requests in flight; closing their connections"
        );
        let _ = phase_tx.send(Phase::Closing);
        let _ = tokio::time::timeout(FORCE_CLOSE_WAIT, slots.acquire_many(all)).await;
    }
    Ok(())
}

/// Serves one connection until it ends, the watchdog expires it, or the drain closes it. The
/// connection is polled first (`biased`): on the hit path every wake-up is the connection's,
/// and the watchdog and the phase are only looked at when it has nothing to do.
async fn drive<C: GracefulConnection>(
    conn: C,
    clock: &ConnClock,
    limits: &Limits,
    phase: &mut watch::Receiver<Phase>,
    peer: SocketAddr,
) {
    let mut conn = std::pin::pin!(conn);
    let expired = clock.expired(limits);
    let mut expired = std::pin::pin!(expired);
    loop {
        tokio::select! {
            biased;
            _ = conn.as_mut() => break,
            why = expired.as_mut() => {
                tracing::debug!(%peer, reason = why.as_str(), "closing caller connection");
                if why == Expiry::Idle {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(IDLE_CLOSE_GRACE, conn.as_mut()).await;
                }
                break;
            }
            changed = phase.changed() => match changed.map(|_| *phase.borrow()) {
                Ok(Phase::Draining) => conn.as_mut().graceful_shutdown(),
                Ok(Phase::Serving) => {}
                Ok(Phase::Closing) | Err(_) => break,
            },
        }
    }
}

/// What every request of one connection shares. Requests take a reference to this (one count
/// on a line that only the connection's own core writes) rather than to the shared
/// [`Gateway`], whose count every core would write for every request.
struct Conn {
    gw: Arc<Gateway>,
    peer: SocketAddr,
    clock: Arc<ConnClock>,
    in_flight: Arc<Semaphore>,
}

impl Conn {
    /// Whether a request of `version` may be handled now. An HTTP/2 stream takes a slot of the
    /// in-flight cap (none free: false); its slot comes back in `stream_slot`. An HTTP/1.1
    /// connection carries one request at a time, so `max_connections` already bounds those:
    /// they take no slot, and the shared semaphore is not written per request (nor held by an
    /// idle keep-alive connection).
    fn admit(
        &self,
        version: Version,
        stream_slot: &mut Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> bool {
        if version < Version::HTTP_2 {
            return true;
        }
        match self.in_flight.clone().try_acquire_owned() {
            Ok(p) => {
                *stream_slot = Some(p);
                true
            }
            Err(_) => false,
        }
    }
}

/// The per-connection hyper service: in-flight slot, body marker, then `proxy::handle` inside
/// the panic guard and timeout backstop.
fn service(
    gw: Arc<Gateway>,
    peer: SocketAddr,
    clock: Arc<ConnClock>,
    in_flight: Arc<Semaphore>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone {
    let conn = Arc::new(Conn {
        gw,
        peer,
        clock,
        in_flight,
    });
    hyper::service::service_fn(move |mut req: Request<Incoming>| {
        // Taken when hyper hands the request over, so the watchdog stops counting at once.
        let busy = Busy::start(conn.clock.clone(), req.version());
        let conn = conn.clone();
        async move {
            let has_body = !req.body().is_end_stream();
            // An unread body or chunked framing must not leave bytes that could be taken for
            // the next request: such connections close after the answer (HTTP/1.x only;
            // HTTP/2 frames its streams).
            let close = req.version() < Version::HTTP_2
                && (has_body || req.headers().contains_key(http::header::TRANSFER_ENCODING));
            let mut slot = None;
            let mut resp = if conn.admit(req.version(), &mut slot) {
                if has_body {
                    req.extensions_mut().insert(HasBody);
                }
                let timeout = conn.gw.peek().config.server.request_timeout;
                let id = RequestId::from_headers(req.headers());
                // Pinned where it is made: the wrappers around it (panic guard, timeout) hold
                // a pointer, so the ~1 KB state is not moved through each of them.
                let handler = crate::proxy::handle_with_id(&conn.gw, conn.peer.ip(), req, &id);
                let handler = std::pin::pin!(handler);
                let resp = guarded(handler, timeout + REQUEST_TIMEOUT_SLACK, &id).await;
                drop(slot);
                resp
            } else {
                overloaded(&conn.gw, &RequestId::from_headers(req.headers()))
            };
            if close {
                resp.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            drop(busy);
            Ok::<_, Infallible>(resp.map(Full::new))
        }
    })
}

/// Runs a request handler so that a panic becomes 500 `internal` and a handler that outlives
/// `timeout` becomes 504, instead of a dropped connection or a stuck one. A panic's message is
/// not logged: it could quote request data.
///
/// A combinator rather than an `async fn`: an `async fn` keeps its `handler` argument and the
/// timeout future made from it side by side in its state, twice the handler's size copied per
/// request; this holds the handler once.
fn guarded<'a, F>(
    handler: F,
    timeout: Duration,
    id: &'a RequestId,
) -> impl Future<Output = Response<Bytes>> + 'a
where
    F: Future<Output = Response<Bytes>> + 'a,
{
    tokio::time::timeout(timeout, AssertUnwindSafe(handler).catch_unwind()).map(move |result| {
        match result {
            Ok(Ok(resp)) => resp,
            Ok(Err(_)) => {
                tracing::error!(
                    request_id = id.as_str(),
                    "request handler panicked; answered 500"
                );
                fallback_response(&GatewayError::Internal, id)
            }
            Err(_) => {
                tracing::warn!(
                    request_id = id.as_str(),
                    timeout_ms = timeout.as_millis() as u64,
                    "request outlived server.request_timeout; answered 504"
                );
                fallback_response(&GatewayError::UpstreamTimeout, id)
            }
        }
    })
}

/// 503 without touching the pipeline: every in-flight slot is taken.
fn overloaded(gw: &Gateway, id: &RequestId) -> Response<Bytes> {
    tracing::debug!("in-flight cap reached; answered 503");
    gw.metrics
        .requests
        .get_or_create(&RequestLabels {
            client: "anonymous".into(),
            route: "other".into(),
            status: 503,
            cache: "NONE",
        })
        .inc();
    fallback_response(&GatewayError::Overloaded, id)
}

/// An error answer made here rather than in `proxy`, with the request's id.
fn fallback_response(err: &GatewayError, id: &RequestId) -> Response<Bytes> {
    let mut resp = err.to_response(id.as_str());
    id.stamp(&mut resp);
    resp
}

/// Replaces the default panic hook, which prints the panic message to stderr, with one that
/// logs only where the panic happened: a message can quote request data (a `Debug` of a
/// header, say). For the binary; tests keep the default hook so assertion messages show.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(%location, "panic (message withheld: it may quote request data)");
    }));
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// Periodic housekeeping: prune per-IP limiter state and refresh cache gauges.
async fn maintenance(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tick.tick().await;
        if let Some(t) = &gw.current().auth_throttle {
            t.prune();
        }
        gw.cache.sync();
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received; draining in-flight requests");
}

/// Reloads the config on every SIGHUP.
pub fn spawn_reload_on_sighup(gw: Arc<Gateway>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; use POST /admin/reload");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received; reloading config");
            let _ = gw.reload().await;
        }
    });
}

/// The body type the caller port answers with.
pub type Body = Full<Bytes>;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(5),
            keep_alive_timeout: Duration::from_secs(60),
            max_connections: 10,
            max_in_flight: 10,
            max_header_bytes: 16 * 1024,
            max_uri_bytes: 8 * 1024,
        }
    }

    fn code(resp: &Response<Bytes>) -> String {
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        v["error"]["code"].as_str().unwrap().to_string()
    }

    async fn buggy_handler() -> Response<Bytes> {
        panic!("handler bug")
    }

    #[tokio::test]
    async fn a_panicking_handler_becomes_500_internal() {
        let handler = buggy_handler();
        let resp = guarded(handler, Duration::from_secs(5), &RequestId::new()).await;
        assert_eq!(resp.status(), 500);
        assert_eq!(code(&resp), "internal");
        assert!(!String::from_utf8_lossy(resp.body()).contains("handler bug"));
        assert_eq!(resp.headers()["x-request-id"].len(), 32);
    }

    #[tokio::test]
    async fn panic_and_timeout_answers_keep_the_callers_request_id() {
        let mut h = http::HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("caller-id-7"));
        let id = RequestId::from_headers(&h);
        let resp = guarded(buggy_handler(), Duration::from_secs(5), &id).await;
        assert_eq!(resp.headers()["x-request-id"], "caller-id-7");
        let resp = guarded(std::future::pending(), Duration::from_millis(10), &id).await;
        assert_eq!(resp.status(), 504);
        assert_eq!(resp.headers()["x-request-id"], "caller-id-7");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_handler_is_cut_by_the_backstop() {
        let resp = guarded(
            std::future::pending(),
            Duration::from_secs(3),
            &RequestId::new(),
        )
        .await;
        assert_eq!(resp.status(), 504);
        assert_eq!(code(&resp), "upstream_timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn connection_clock_deadlines() {
        let l = limits();
        let c = Arc::new(ConnClock::new());
        let start = Instant::now();
        // From connect, the first head must arrive within the header timeout.
        assert_eq!(
            c.deadline(&l),
            Some((start + l.header_read_timeout, Expiry::HeadTimeout))
        );
        let busy = Busy::start(c.clone(), Version::HTTP_11);
        assert_eq!(c.deadline(&l), None);
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(
            c.deadline(&l),
            None,
            "no timer while a request is in flight"
        );
        drop(busy);
        let idle_at = Instant::now();
        assert_eq!(
            c.deadline(&l),
            Some((idle_at + l.keep_alive_timeout, Expiry::Idle))
        );
        // Reading while idle starts the next head.
        tokio::time::advance(Duration::from_secs(2)).await;
        c.on_read();
        let (at, why) = c.deadline(&l).unwrap();
        assert_eq!(why, Expiry::HeadTimeout);
        assert!(at <= Instant::now() + l.header_read_timeout);
        assert_eq!(c.expired(&l).await, Expiry::HeadTimeout);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_frames_between_requests_do_not_start_a_head_timer() {
        let l = limits();
        let c = Arc::new(ConnClock::new());
        drop(Busy::start(c.clone(), Version::HTTP_2));
        c.on_read();
        assert_eq!(c.deadline(&l).unwrap().1, Expiry::Idle);
        let t = Instant::now();
        assert_eq!(c.expired(&l).await, Expiry::Idle);
        assert!(t.elapsed() >= l.keep_alive_timeout);
    }

    #[test]
    fn limits_are_clamped() {
        let mut s = crate::config::Config::parse(
            "[upstream]\nbase_url = \"https://api.gcore.com\"\n",
            "t",
            &std::collections::HashMap::new(),
        )
        .unwrap()
        .server;
        s.conn.max_connections = usize::MAX;
        let l = Limits::from_settings(&s);
        assert_eq!(l.max_connections, MAX_SLOTS);
        assert_eq!(l.max_in_flight, MAX_SLOTS);
        let _ = Semaphore::new(l.max_connections);
    }
}
