//! The caller connection's byte stream: the watched TCP socket itself, or TLS on top of it,
//! and the TLS handshake bounded by the connection watchdog.
//!
//! TLS sits *above* [`Watched`], so the watchdog sees every byte the caller sends, handshake
//! records included: the handshake and the first request head together must arrive within
//! `server.header_read_timeout` from connect, and a caller that opens a connection and never
//! finishes its ClientHello holds a connection slot no longer than a slowloris would. The
//! certificate and rustls setup are the `tls` room's; what a request means is `proxy`'s.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::watchdog::{ConnClock, Watched};
use super::{Limits, Phase};
use crate::metrics::{Metrics, ReasonLabel};

/// One caller connection's bytes, plain or TLS. An enum rather than a boxed trait object: one
/// branch per read instead of a virtual call, and one concrete type for hyper.
pub(super) enum CallerStream {
    Plain(Watched<TcpStream>),
    Tls(Box<tokio_rustls::server::TlsStream<Watched<TcpStream>>>),
}

/// Runs the TLS handshake on `io`. `None` (the connection is dropped) when it fails, when the
/// watchdog's head timeout passes first, or when the server starts draining (no request has
/// been accepted on the connection yet, so nothing is lost).
pub(super) async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    io: Watched<TcpStream>,
    clock: &ConnClock,
    limits: &Limits,
    phase: &mut watch::Receiver<Phase>,
    metrics: &Metrics,
    peer: std::net::SocketAddr,
) -> Option<CallerStream> {
    let failed = |reason: &'static str| {
        metrics
            .tls_handshake_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    };
    tokio::select! {
        done = acceptor.accept(io) => match done {
            Ok(tls) => Some(CallerStream::Tls(Box::new(tls))),
            Err(e) => {
                // rustls's messages name the protocol problem, never secret material.
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                failed("error");
                None
            }
        },
        why = clock.expired(limits) => {
            tracing::debug!(%peer, reason = why.as_str(), "TLS handshake not finished in time");
            failed("timeout");
            None
        }
        _ = phase.wait_for(|p| *p != Phase::Serving) => None,
    }
}

impl AsyncRead for CallerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            CallerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            CallerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for CallerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            CallerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            CallerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            CallerStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            CallerStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            CallerStream::Plain(s) => s.is_write_vectored(),
            CallerStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            CallerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            CallerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            CallerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            CallerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
