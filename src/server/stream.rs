//! The caller connection's byte stream: the watched TCP socket itself, or TLS on top of it,
//! and the TLS handshake bounded by the connection watchdog.
//!
//! TLS sits *above* [`Watched`], so the watchdog sees every byte the caller sends, handshake
//! records included: the handshake and the first request head together must arrive within
//! `server.header_read_timeout` from connect, and a caller that opens a connection and never
//! finishes its ClientHello holds a connection slot no longer than a slowloris would. The
//! certificate and rustls setup are the `tls` room's; what a request means is `proxy`'s.
//!
//! Also here: which protocol a connection speaks ([`protocol`]), decided once per connection so
//! that no sniffing layer sits under every read. Over TLS it is the ALPN result (`h2`, else
//! HTTP/1.1); in plain text, a peek at the first bytes: the HTTP/2 connection preface means
//! prior-knowledge h2c, anything else HTTP/1.1 (decided at the first byte that differs; the
//! peeked bytes stay in the socket for hyper).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

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

/// What one caller connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    Http1,
    Http2,
}

/// The HTTP/2 connection preface (RFC 9113 §3.4): a prior-knowledge h2c client's first bytes.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// While the first bytes are a strict prefix of the preface, the first wait before peeking
/// again (a peek returns at once while any byte is buffered), doubling up to
/// [`SNIFF_RETRY_MAX`]: a caller that stalls inside the preface costs a few wake-ups a second
/// until its head timeout.
const SNIFF_RETRY: Duration = Duration::from_millis(1);
const SNIFF_RETRY_MAX: Duration = Duration::from_millis(64);

/// The protocol of `io`'s connection. `None` (the connection is dropped) when the caller
/// closes before sending a byte, when the watchdog's head timeout passes first, or when the
/// server starts draining (no request has been read yet, so nothing is lost).
pub(super) async fn protocol(
    io: &CallerStream,
    clock: &ConnClock,
    limits: &Limits,
    phase: &mut watch::Receiver<Phase>,
) -> Option<Protocol> {
    let tcp = match io {
        CallerStream::Tls(tls) => {
            return Some(match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => Protocol::Http2,
                _ => Protocol::Http1,
            })
        }
        CallerStream::Plain(w) => &w.io,
    };
    tokio::select! {
        p = sniff(tcp) => p,
        _ = clock.expired(limits) => None,
        _ = phase.wait_for(|p| *p != Phase::Serving) => None,
    }
}

/// Peeks at the first bytes of a plain connection until they tell HTTP/1.1 from h2c.
async fn sniff(tcp: &TcpStream) -> Option<Protocol> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut wait = SNIFF_RETRY;
    loop {
        let n = tcp.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(Protocol::Http1);
        }
        if n == H2_PREFACE.len() {
            return Some(Protocol::Http2);
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(SNIFF_RETRY_MAX);
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
