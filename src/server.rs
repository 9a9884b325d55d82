//! Sockets: binding, serving both listeners, connection limits, signals and graceful shutdown.
//!
//! The caller port is served by hyper directly (HTTP/1.1 and h2c through `hyper-util`'s auto
//! builder) with the header-read timeout, header-size bound and connection cap from
//! `[server]`; every request goes to `proxy::handle` inside a panic guard. The admin port is
//! an axum router (`admin`). Nothing here decides what a request means.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;

use crate::error::GatewayError;
use crate::state::Gateway;

/// Listen backlog: large enough that a storm of new connections queues instead of being
/// dropped (a dropped SYN costs the caller a 1 s retransmit).
const BACKLOG: u32 = 4096;
/// How often limiter state for idle source IPs is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

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
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let admin = {
        let gw = gw.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let app = crate::admin::router(gw);
            axum::serve(admin_listener, app)
                .with_graceful_shutdown(async move { stopped(&mut stop).await })
                .await
        })
    };
    let maintenance = tokio::spawn(maintenance(gw.clone()));
    gw.ready.store(true, Ordering::Release);
    tracing::info!(
        listen = %listener.local_addr()?,
        "gcore-gateway serving"
    );
    let result = serve_callers(gw.clone(), listener, stop_rx).await;
    gw.ready.store(false, Ordering::Release);
    maintenance.abort();
    let _ = admin.await;
    result
}

async fn serve_callers(
    gw: Arc<Gateway>,
    listener: TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let settings = gw.runtime.load().config.server.clone();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size((settings.max_header_bytes + settings.max_uri_bytes + 1024).max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(settings.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(settings.keep_alive_timeout / 2))
        .keep_alive_timeout(settings.keep_alive_timeout / 2);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(settings.max_connections));
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
        let gw2 = gw.clone();
        let ip = peer.ip();
        let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let gw = gw2.clone();
            async move {
                let resp = AssertUnwindSafe(crate::proxy::handle(gw, ip, req))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| {
                        tracing::error!("request handler panicked; answered 500");
                        GatewayError::Internal.to_response("unknown")
                    });
                Ok::<_, Infallible>(resp.map(Full::new))
            }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        let gw3 = gw.clone();
        gw3.metrics.connections.inc();
        tokio::spawn(async move {
            let _ = conn.await;
            gw3.metrics.connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    let grace = gw.runtime.load().config.server.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_s = grace.as_secs(),
            "shutdown grace elapsed with requests in flight"
        );
    }
    Ok(())
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// Periodic housekeeping: prune per-IP limiter state and refresh cache gauges.
async fn maintenance(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tick.tick().await;
        let rt = gw.runtime.load_full();
        if let Some(t) = &rt.auth_throttle {
            t.prune();
        }
        gw.cache.sync().await;
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
