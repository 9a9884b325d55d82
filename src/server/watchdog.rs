//! The connection watchdog: per-connection timing that closes a connection whose request head
//! is too slow (`server.header_read_timeout`) or that has had no request in flight for too long
//! (`server.keep_alive_timeout`), over HTTP/1.1 and HTTP/2 alike.
//!
//! [`Watched`] wraps the socket and notes when bytes arrive, [`Busy`] marks a request in flight,
//! [`ConnClock`] holds the shared times and computes the next deadline. Serving the connection
//! and deciding what a request means live elsewhere (`server`, `proxy`).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Version;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::Limits;

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// A request head did not arrive within `header_read_timeout`.
    HeadTimeout,
    /// No request in flight for `keep_alive_timeout`.
    Idle,
}

impl Expiry {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Expiry::HeadTimeout => "header_read_timeout",
            Expiry::Idle => "keep_alive_timeout",
        }
    }
}

/// No request head pending.
pub(super) const NO_HEAD: u64 = u64::MAX;

/// Per-connection timing, shared by the socket wrapper ([`Watched`]), the service ([`Busy`])
/// and the watchdog ([`ConnClock::expired`]). Times are milliseconds since `origin`.
pub(super) struct ConnClock {
    origin: Instant,
    in_flight: AtomicUsize,
    /// When the last request in flight finished (its handler returned), or connect. Writing
    /// the answer does not count: one still being written after `keep_alive_timeout` (a
    /// caller that stopped reading) is cut. Our own HTTP/2 PINGs must not count either.
    idle_since: AtomicU64,
    /// When the pending request head started: connect, or (HTTP/1.1) the first byte read
    /// while idle. `NO_HEAD` once a request is handed over.
    head_since: AtomicU64,
    /// HTTP/2: frames between requests (PING, WINDOW_UPDATE) never start a head timer.
    h2: AtomicBool,
}

impl ConnClock {
    pub(super) fn new() -> ConnClock {
        ConnClock {
            origin: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            h2: AtomicBool::new(false),
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(NO_HEAD - 1)
    }

    pub(super) fn idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
    }

    /// Bytes arrived from the caller.
    pub(super) fn on_read(&self) {
        if self.idle()
            && !self.h2.load(Ordering::Relaxed)
            && self.head_since.load(Ordering::Relaxed) == NO_HEAD
        {
            let _ = self.head_since.compare_exchange(
                NO_HEAD,
                self.now_ms(),
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
    }

    /// When the connection expires if nothing changes; `None` while a request is in flight.
    pub(super) fn deadline(&self, limits: &Limits) -> Option<(Instant, Expiry)> {
        if !self.idle() {
            return None;
        }
        let at = |ms: u64, d: Duration| self.origin + Duration::from_millis(ms) + d;
        match self.head_since.load(Ordering::SeqCst) {
            NO_HEAD => Some((
                at(
                    self.idle_since.load(Ordering::SeqCst),
                    limits.keep_alive_timeout,
                ),
                Expiry::Idle,
            )),
            since => Some((at(since, limits.header_read_timeout), Expiry::HeadTimeout)),
        }
    }

    /// Resolves when the connection should be closed.
    ///
    /// The request path only writes atomics; nothing wakes this task per request (that cost
    /// about a microsecond a request in the load benchmark). It polls instead: it sleeps until
    /// the current deadline, but never longer than [`ConnClock::tick`], so a head that starts
    /// while it sleeps (which moves the deadline earlier) is caught at most one tick late.
    pub(super) async fn expired(&self, limits: &Limits) -> Expiry {
        let tick = Self::tick(limits);
        loop {
            let now = Instant::now();
            match self.deadline(limits) {
                Some((at, why)) if at <= now => return why,
                Some((at, _)) => tokio::time::sleep_until(at.min(now + tick)).await,
                None => tokio::time::sleep(tick).await,
            }
        }
    }

    /// How often the watchdog looks: half the shorter timeout, so a slow head is cut within
    /// 1.5 × `header_read_timeout` at worst.
    pub(super) fn tick(limits: &Limits) -> Duration {
        (limits.header_read_timeout.min(limits.keep_alive_timeout) / 2)
            .max(Duration::from_millis(50))
    }
}

/// A request being handled on a connection; dropping it (also when hyper drops the service
/// future, e.g. on an HTTP/2 stream reset) restarts the connection's idle timer.
pub(super) struct Busy(Arc<ConnClock>);

impl Busy {
    pub(super) fn start(clock: Arc<ConnClock>, version: Version) -> Busy {
        clock.in_flight.fetch_add(1, Ordering::SeqCst);
        clock.head_since.store(NO_HEAD, Ordering::SeqCst);
        if version == Version::HTTP_2 {
            clock.h2.store(true, Ordering::Relaxed);
        }
        Busy(clock)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle_since.store(self.0.now_ms(), Ordering::SeqCst);
        }
    }
}

/// The caller's socket, reporting reads to the connection's [`ConnClock`].
pub(super) struct Watched<S> {
    pub(super) io: S,
    pub(super) clock: Arc<ConnClock>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.clock.on_read();
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
