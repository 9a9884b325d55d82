//! The access log: one JSON line per request (target `gcore_gateway::access`), and the request
//! metrics recorded with it.
//!
//! Lines are encoded here, by hand, into a per-thread scratch buffer (no tracing formatter or
//! field visitor, no allocation on the hot path) and appended to one shared buffer, which a
//! writer thread swaps out and writes to stderr in batches every few milliseconds: a request
//! never makes a system call or wakes a thread for its line (the writer is woken only when the
//! buffer passes [`WAKE_AT`]). The buffer is bounded in bytes ([`MAX_QUEUED_BYTES`]): when the
//! sink is slower than the traffic, lines are dropped and counted (`gateway_log_dropped_total`)
//! instead of growing memory or slowing requests. Only values from a closed set or the config
//! reach a line: the method is a standard one or `OTHER`, names are config names, the request
//! id is checked.
//! Whether lines are written at all follows the tracing filter (`RUST_LOG`) for the target.

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

/// The access log's tracing target (for `RUST_LOG` filters and log routing).
#[cfg(test)]
const TARGET: &str = "gcore_gateway::access";

/// Bytes of encoded lines that may wait for the writer; beyond it, lines are dropped. 4 MiB
/// is about 20,000 lines: seconds of full-speed traffic for a stalled sink.
pub(crate) const MAX_QUEUED_BYTES: usize = 4 << 20;

/// Buffered bytes at which a request wakes the writer instead of letting it find them on its
/// next round.
const WAKE_AT: usize = 256 << 10;
/// How long the writer sleeps between rounds while lines keep coming, and when idle.
const BUSY_ROUND: Duration = Duration::from_millis(5);
const IDLE_ROUND: Duration = Duration::from_millis(25);

/// Lines dropped because the queue was full (exported as `gateway_log_dropped_total`).
use crate::metrics::LOG_DROPPED as DROPPED;

/// What one access line says.
pub(crate) struct Line<'a> {
    pub(crate) request_id: &'a str,
    pub(crate) client: &'a str,
    pub(crate) key: Option<&'a str>,
    pub(crate) client_ip: std::net::IpAddr,
    pub(crate) route: &'a str,
    pub(crate) method: &'static str,
    pub(crate) status: u16,
    pub(crate) cache: &'static str,
    pub(crate) latency: Duration,
    pub(crate) upstream: Option<Duration>,
    /// The W3C trace id of the request's span, when tracing is on.
    pub(crate) trace_id: Option<u128>,
}

/// Whether access lines are wanted (the tracing filter enables the target at INFO).
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: "gcore_gateway::access", tracing::Level::INFO)
}

/// Encodes `line` and queues it for the writer (or drops and counts it when the queue is full).
pub(crate) fn write(line: &Line<'_>) {
    thread_local! {
        static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
    }
    SCRATCH.with(|scratch| {
        // Never re-entered (encoding calls nothing that logs); if it were, the line is dropped.
        let Ok(mut buf) = scratch.try_borrow_mut() else {
            DROPPED.inc();
            return;
        };
        buf.clear();
        encode(&mut buf, line, SystemTime::now());
        sink().push(&buf);
    });
}

fn encode(buf: &mut Vec<u8>, l: &Line<'_>, now: SystemTime) {
    let mut num = itoa::Buffer::new();
    buf.extend_from_slice(b"{\"timestamp\":\"");
    // RFC 3339 with microseconds, as the tracing JSON formatter writes it.
    let _ = write!(buf, "{}", humantime::format_rfc3339_micros(now));
    buf.extend_from_slice(b"\",\"level\":\"INFO\",\"target\":\"gcore_gateway::access\"");
    buf.extend_from_slice(b",\"request_id\":");
    string(buf, l.request_id);
    buf.extend_from_slice(b",\"client\":");
    string(buf, l.client);
    if let Some(k) = l.key {
        buf.extend_from_slice(b",\"key\":");
        string(buf, k);
    }
    let _ = write!(buf, ",\"client_ip\":\"{}\"", l.client_ip);
    buf.extend_from_slice(b",\"route\":");
    string(buf, l.route);
    buf.extend_from_slice(b",\"method\":\"");
    buf.extend_from_slice(l.method.as_bytes());
    buf.extend_from_slice(b"\",\"status\":");
    buf.extend_from_slice(num.format(l.status).as_bytes());
    buf.extend_from_slice(b",\"cache\":\"");
    buf.extend_from_slice(l.cache.as_bytes());
    buf.extend_from_slice(b"\",\"latency_us\":");
    buf.extend_from_slice(num.format(l.latency.as_micros() as u64).as_bytes());
    if let Some(u) = l.upstream {
        buf.extend_from_slice(b",\"upstream_us\":");
        buf.extend_from_slice(num.format(u.as_micros() as u64).as_bytes());
    }
    if let Some(t) = l.trace_id {
        let _ = write!(buf, ",\"trace_id\":\"{t:032x}\"");
    }
    buf.extend_from_slice(b"}\n");
}

/// A JSON string (names and ids are plain ASCII already; escaping keeps that a guarantee).
fn string(buf: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// The shared buffer of encoded lines and the writer that empties it.
struct Sink {
    buf: Mutex<Vec<u8>>,
    /// Bytes buffered or being written.
    queued: &'static AtomicUsize,
    writer: OnceLock<std::thread::Thread>,
}

static QUEUED: AtomicUsize = AtomicUsize::new(0);

impl Sink {
    fn new(queued: &'static AtomicUsize) -> Sink {
        Sink {
            buf: Mutex::new(Vec::with_capacity(64 << 10)),
            queued,
            writer: OnceLock::new(),
        }
    }

    /// Appends one encoded line, or drops and counts it when the bound is reached.
    fn push(&self, line: &[u8]) {
        let n = line.len();
        if self.queued.fetch_add(n, Ordering::AcqRel) + n > MAX_QUEUED_BYTES {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            DROPPED.inc();
            return;
        }
        let len = {
            let mut buf = self.buf.lock();
            buf.extend_from_slice(line);
            buf.len()
        };
        if len >= WAKE_AT && len - n < WAKE_AT {
            self.wake();
        }
    }

    fn wake(&self) {
        if let Some(t) = self.writer.get() {
            t.unpark();
        }
    }

    /// Swaps the buffered lines into `spare` (emptied before) and writes them; returns how
    /// many bytes were written.
    fn drain(&self, spare: &mut Vec<u8>, out: &mut impl Write) -> usize {
        spare.clear();
        std::mem::swap(&mut *self.buf.lock(), spare);
        let n = spare.len();
        if n > 0 {
            // A failed write (stderr closed) loses these lines; the bound still holds.
            let _ = out.write_all(spare);
            let _ = out.flush();
            self.queued.fetch_sub(n, Ordering::AcqRel);
        }
        n
    }
}

static SINK: OnceLock<Sink> = OnceLock::new();

fn sink() -> &'static Sink {
    SINK.get_or_init(|| {
        let new = Sink::new(&QUEUED);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            // `sink()` in the thread waits for this initialisation to finish.
            .spawn(|| writer(sink(), std::io::stderr()));
        match spawned {
            Ok(handle) => {
                let _ = new.writer.set(handle.thread().clone());
            }
            Err(_) => {
                tracing::error!("cannot start the access log writer; access lines are dropped")
            }
        }
        new
    })
}

/// Writes the buffered lines in batches, one `write(2)` per round.
fn writer(sink: &'static Sink, out: impl Write) {
    let mut out = std::io::BufWriter::with_capacity(64 << 10, out);
    let mut spare = Vec::with_capacity(64 << 10);
    loop {
        let wrote = sink.drain(&mut spare, &mut out);
        std::thread::park_timeout(if wrote > 0 { BUSY_ROUND } else { IDLE_ROUND });
    }
}

/// Waits (up to `max`) until every queued line is written; for shutdown.
pub(crate) fn flush(max: Duration) {
    let until = std::time::Instant::now() + max;
    while QUEUED.load(Ordering::Acquire) > 0 && std::time::Instant::now() < until {
        if let Some(s) = SINK.get() {
            s.wake();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> Line<'static> {
        Line {
            request_id: "abc",
            client: "alpha",
            key: Some("2026-q4"),
            client_ip: "10.0.0.1".parse().unwrap(),
            route: "/iam/clients/me",
            method: "GET",
            status: 200,
            cache: "HIT",
            latency: Duration::from_micros(42),
            upstream: None,
            trace_id: None,
        }
    }

    #[test]
    fn lines_are_json_with_the_contract_fields() {
        let mut buf = Vec::new();
        encode(&mut buf, &line(), SystemTime::UNIX_EPOCH);
        assert_eq!(buf.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["target"], TARGET);
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000000Z");
        for (k, want) in [
            ("request_id", "abc"),
            ("client", "alpha"),
            ("key", "2026-q4"),
            ("client_ip", "10.0.0.1"),
            ("route", "/iam/clients/me"),
            ("method", "GET"),
            ("cache", "HIT"),
        ] {
            assert_eq!(v[k], want, "{k}");
        }
        assert_eq!(v["status"], 200);
        assert_eq!(v["latency_us"], 42);
        assert!(v.get("upstream_us").is_none());
        assert!(v.get("trace_id").is_none(), "no trace id without tracing");
    }

    #[test]
    fn the_trace_id_is_32_hex_digits() {
        let mut l = line();
        l.trace_id = Some(0x4bf92f3577b34da6a3ce929d0e0e4736);
        let mut buf = Vec::new();
        encode(&mut buf, &l, SystemTime::UNIX_EPOCH);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        l.trace_id = Some(1);
        buf.clear();
        encode(&mut buf, &l, SystemTime::UNIX_EPOCH);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["trace_id"], "00000000000000000000000000000001");
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_growing() {
        static Q: AtomicUsize = AtomicUsize::new(0);
        let sink = Sink::new(&Q);
        let before = DROPPED.get();
        let line = vec![b'x'; 1024];
        // No writer drains it: the buffer fills to its bound, then every line is dropped.
        for _ in 0..(MAX_QUEUED_BYTES / 1024 + 100) {
            sink.push(&line);
        }
        assert!(Q.load(Ordering::Acquire) <= MAX_QUEUED_BYTES);
        assert!(sink.buf.lock().len() <= MAX_QUEUED_BYTES);
        assert!(DROPPED.get() - before >= 100);
        // A writer round empties it and gives the bytes back.
        let mut out = Vec::new();
        let wrote = sink.drain(&mut Vec::new(), &mut out);
        assert_eq!(wrote, out.len());
        assert_eq!(Q.load(Ordering::Acquire), 0);
        sink.push(&line);
        assert_eq!(sink.buf.lock().len(), 1024, "accepting lines again");
    }
}
