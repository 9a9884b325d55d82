//! The access log: one JSON line per request (target `gcore_gateway::access`), and the request
//! metrics recorded with it.
//!
//! Lines are encoded here, by hand, into a per-thread scratch buffer (no tracing formatter or
//! field visitor, no allocation on the hot path; the timestamp's date and time are formatted
//! once per second and thread) and appended to that thread's own queue ([`Shard`]), which a
//! writer thread swaps out and writes to stderr in batches every few milliseconds. A request
//! never makes a system call, wakes a thread or writes a cache line another core is using for
//! its line: each serving thread has its own queue and lock, which only the writer touches
//! besides it, once a round (the writer is woken early only when a queue passes [`WAKE_AT`]).
//! Each queue is bounded in bytes ([`MAX_QUEUED_BYTES`]): when the sink is slower than the
//! traffic, lines are dropped and counted (`gateway_log_dropped_total`) instead of growing
//! memory or slowing requests. The writer merges the threads' lines by timestamp (the fixed
//! width RFC 3339 text compares as the time), holding lines stamped after its round began for
//! the next round, so a request made after another's answer is always logged after it. Only values from a closed set or the config
//! reach a line: the method is a standard one or `OTHER`, names are config names, the request
//! id is checked.
//! Whether lines are written at all follows the tracing filter (`RUST_LOG`) for the target.

use std::cell::RefCell;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

/// The access log's tracing target (for `RUST_LOG` filters and log routing).
#[cfg(test)]
const TARGET: &str = "gcore_gateway::access";

/// Bytes of encoded lines that may wait for the writer in one thread's queue; beyond it, that
/// thread's lines are dropped. 4 MiB is about 20,000 lines: seconds of full-speed traffic for
/// a stalled sink. The total is bounded by this times the threads that serve requests (the
/// runtime's workers).
pub(crate) const MAX_QUEUED_BYTES: usize = 4 << 20;

/// Bytes in one queue at which a request wakes the writer instead of letting it find them on
/// its next round.
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
    pub(crate) client_ip: IpAddr,
    pub(crate) route: &'a str,
    pub(crate) method: &'static str,
    pub(crate) status: u16,
    pub(crate) cache: &'static str,
    pub(crate) latency: Duration,
    pub(crate) upstream: Option<Duration>,
    /// The W3C trace id of the request's span, when tracing is on.
    pub(crate) trace_id: Option<u128>,
    /// When the answer was ready (the line's timestamp).
    pub(crate) time: SystemTime,
}

/// Whether access lines are wanted (the tracing filter enables the target at INFO).
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: "gcore_gateway::access", tracing::Level::INFO)
}

/// One thread's encoding state: the scratch buffer, the last second's formatted date and
/// time, the last client address's text, and the thread's queue.
struct Local {
    scratch: Vec<u8>,
    clock: SecondsText,
    ip: IpText,
    shard: Option<Arc<Shard>>,
}

/// Encodes `line` and queues it for the writer (or drops and counts it when the queue is full).
pub(crate) fn write(line: &Line<'_>) {
    thread_local! {
        static LOCAL: RefCell<Local> = RefCell::new(Local {
            scratch: Vec::with_capacity(512),
            clock: seconds_text(),
            ip: ip_text(),
            shard: None,
        });
    }
    LOCAL.with(|local| {
        // Never re-entered (encoding calls nothing that logs); if it were, the line is dropped.
        let Ok(mut local) = local.try_borrow_mut() else {
            DROPPED.inc();
            return;
        };
        let Local {
            scratch,
            clock,
            ip,
            shard,
        } = &mut *local;
        scratch.clear();
        encode(scratch, line, clock, ip);
        let shard = shard.get_or_insert_with(|| sink().register());
        if shard.push(scratch) {
            sink().wake();
        }
    });
}

/// The text of the last value formatted, formatted again only when the value changes: the
/// second of the timestamp, the client address (callers repeat).
struct LastText<K> {
    last: Option<K>,
    text: Vec<u8>,
    format: fn(&mut Vec<u8>, K),
}

impl<K: Copy + PartialEq> LastText<K> {
    fn new(format: fn(&mut Vec<u8>, K)) -> LastText<K> {
        LastText {
            last: None,
            text: Vec::new(),
            format,
        }
    }

    fn of(&mut self, k: K) -> &[u8] {
        if self.last != Some(k) {
            self.text.clear();
            (self.format)(&mut self.text, k);
            self.last = Some(k);
        }
        &self.text
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of one Unix second.
type SecondsText = LastText<u64>;
/// A client address.
type IpText = LastText<IpAddr>;

fn seconds_text() -> SecondsText {
    LastText::new(|text, secs| {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        // "YYYY-MM-DDTHH:MM:SSZ" without its "Z".
        let _ = write!(text, "{}", humantime::format_rfc3339_seconds(at));
        text.pop();
    })
}

fn ip_text() -> IpText {
    LastText::new(|text, ip| {
        let _ = write!(text, "{ip}");
    })
}

/// How every line starts; the timestamp follows, [`TIMESTAMP_LEN`] bytes of fixed width, so
/// comparing those bytes compares the times.
const LINE_START: &[u8] = b"{\"timestamp\":\"";
const TIMESTAMP_LEN: usize = "2026-01-01T00:00:00.000000Z".len();

/// RFC 3339 with microseconds, as the tracing JSON formatter writes it.
fn timestamp(buf: &mut Vec<u8>, time: SystemTime, clock: &mut SecondsText) {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    buf.extend_from_slice(clock.of(since.as_secs()));
    let mut num = itoa::Buffer::new();
    let digits = num.format(since.subsec_micros()).as_bytes();
    buf.push(b'.');
    buf.extend(std::iter::repeat_n(b'0', 6 - digits.len()));
    buf.extend_from_slice(digits);
    buf.push(b'Z');
}

/// The timestamp of an encoded line (empty for anything else, which then sorts first).
fn time_of(line: &[u8]) -> &[u8] {
    line.strip_prefix(LINE_START)
        .and_then(|rest| rest.get(..TIMESTAMP_LEN))
        .unwrap_or(&[])
}

fn encode(buf: &mut Vec<u8>, l: &Line<'_>, clock: &mut SecondsText, ip: &mut IpText) {
    let mut num = itoa::Buffer::new();
    buf.extend_from_slice(LINE_START);
    timestamp(buf, l.time, clock);
    buf.extend_from_slice(b"\",\"level\":\"INFO\",\"target\":\"gcore_gateway::access\"");
    buf.extend_from_slice(b",\"request_id\":");
    string(buf, l.request_id);
    buf.extend_from_slice(b",\"client\":");
    string(buf, l.client);
    if let Some(k) = l.key {
        buf.extend_from_slice(b",\"key\":");
        string(buf, k);
    }
    buf.extend_from_slice(b",\"client_ip\":\"");
    buf.extend_from_slice(ip.of(l.client_ip));
    buf.extend_from_slice(b"\",\"route\":");
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

/// One thread's queue of encoded lines, bounded by [`MAX_QUEUED_BYTES`].
struct Shard {
    buf: Mutex<Vec<u8>>,
}

impl Shard {
    fn new() -> Shard {
        Shard {
            buf: Mutex::new(Vec::with_capacity(64 << 10)),
        }
    }

    /// Appends one encoded line, or drops and counts it when the queue is full. Whether the
    /// writer should be woken now (the queue just passed [`WAKE_AT`]).
    fn push(&self, line: &[u8]) -> bool {
        let n = line.len();
        let mut buf = self.buf.lock();
        if buf.len() + n > MAX_QUEUED_BYTES {
            drop(buf);
            DROPPED.inc();
            return false;
        }
        buf.extend_from_slice(line);
        buf.len() >= WAKE_AT && buf.len() - n < WAKE_AT
    }

    /// Moves the queued lines to the end of `taken`. `writing` is set to all the writer holds
    /// before the queue's lock is let go, so the bytes are never counted nowhere
    /// ([`Sink::queued`] reads the queues, then `writing`).
    fn take(&self, taken: &mut Vec<u8>, spare: &mut Vec<u8>, writing: &AtomicUsize) {
        spare.clear();
        {
            let mut buf = self.buf.lock();
            std::mem::swap(&mut *buf, spare);
            writing.store(taken.len() + spare.len(), Ordering::Release);
        }
        taken.extend_from_slice(spare);
    }

    fn len(&self) -> usize {
        self.buf.lock().len()
    }
}

/// Every thread's queue, and the writer that empties them.
struct Sink {
    shards: Mutex<Vec<Arc<Shard>>>,
    /// Bytes taken from a queue and not yet written (for [`flush`]).
    writing: AtomicUsize,
    writer: OnceLock<std::thread::Thread>,
}

impl Sink {
    fn new() -> Sink {
        Sink {
            shards: Mutex::new(Vec::new()),
            writing: AtomicUsize::new(0),
            writer: OnceLock::new(),
        }
    }

    /// A new queue for the calling thread.
    fn register(&self) -> Arc<Shard> {
        let shard = Arc::new(Shard::new());
        self.shards.lock().push(shard.clone());
        shard
    }

    fn wake(&self) {
        if let Some(t) = self.writer.get() {
            t.unpark();
        }
    }

    /// One writer round: takes every queue's lines and writes them merged in timestamp order
    /// (each queue is one thread's lines in order; merged, sequential requests keep their
    /// order whichever threads served them). Lines stamped after `cutoff` (the round's start)
    /// wait for the next round, where they are written whatever their time: a line stamped
    /// before another request started was queued before that request's line could be due, so
    /// the two are written in one round, in order, or in order across rounds. Returns how
    /// many bytes were written. Queues of threads that are gone are forgotten once empty.
    fn drain(&self, round: &mut Round, cutoff: &[u8], out: &mut impl Write) -> usize {
        let shards: Vec<Arc<Shard>> = {
            let mut shards = self.shards.lock();
            shards.retain(|s| Arc::strong_count(s) > 1 || s.len() > 0);
            shards.clone()
        };
        // Last round's held lines come first, and are all due now.
        let held_len = round.held.len();
        round.taken.clear();
        round.taken.append(&mut round.held);
        for shard in shards {
            shard.take(&mut round.taken, &mut round.spare, &self.writing);
        }
        let taken = &round.taken;
        let mut due: Vec<(&[u8], std::ops::Range<usize>)> = Vec::new();
        let mut at = 0;
        for line in taken.split_inclusive(|b| *b == b'\n') {
            let range = at..at + line.len();
            at = range.end;
            let time = time_of(line);
            if range.start < held_len || time <= cutoff {
                due.push((time, range));
            } else {
                round.held.extend_from_slice(line);
            }
        }
        // Stable: lines of equal time keep their queue's order.
        due.sort_by(|a, b| a.0.cmp(b.0));
        round.batch.clear();
        for (_, range) in &due {
            round.batch.extend_from_slice(&taken[range.clone()]);
        }
        let wrote = round.batch.len();
        if wrote > 0 {
            // A failed write (stderr closed) loses these lines; the bound still holds.
            let _ = out.write_all(&round.batch);
            let _ = out.flush();
        }
        self.writing.store(round.held.len(), Ordering::Release);
        wrote
    }

    /// Bytes queued or being written.
    fn queued(&self) -> usize {
        let queued: usize = self.shards.lock().iter().map(|s| s.len()).sum();
        queued + self.writing.load(Ordering::Acquire)
    }
}

static SINK: OnceLock<Sink> = OnceLock::new();

fn sink() -> &'static Sink {
    SINK.get_or_init(|| {
        let new = Sink::new();
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

/// What the writer keeps from round to round: lines held for the next one, and buffers.
#[derive(Default)]
struct Round {
    held: Vec<u8>,
    taken: Vec<u8>,
    spare: Vec<u8>,
    batch: Vec<u8>,
}

/// Writes the queued lines in batches, one `write(2)` per round, in timestamp order.
fn writer(sink: &'static Sink, out: impl Write) {
    let mut out = std::io::BufWriter::with_capacity(64 << 10, out);
    let mut round = Round::default();
    let (mut clock, mut cutoff) = (seconds_text(), Vec::with_capacity(TIMESTAMP_LEN));
    loop {
        cutoff.clear();
        timestamp(&mut cutoff, SystemTime::now(), &mut clock);
        let wrote = sink.drain(&mut round, &cutoff, &mut out);
        let busy = wrote > 0 || !round.held.is_empty();
        std::thread::park_timeout(if busy { BUSY_ROUND } else { IDLE_ROUND });
    }
}

/// Waits (up to `max`) until every queued line is written; for shutdown.
pub(crate) fn flush(max: Duration) {
    let Some(s) = SINK.get() else { return };
    let until = std::time::Instant::now() + max;
    while s.queued() > 0 && std::time::Instant::now() < until {
        s.wake();
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
            time: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn lines_are_json_with_the_contract_fields() {
        let buf = encoded(&line(), SystemTime::UNIX_EPOCH);
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
        let buf = encoded(&l, SystemTime::UNIX_EPOCH);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        l.trace_id = Some(1);
        let buf = encoded(&l, SystemTime::UNIX_EPOCH);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["trace_id"], "00000000000000000000000000000001");
    }

    fn encoded(l: &Line<'_>, at: SystemTime) -> Vec<u8> {
        let mut buf = Vec::new();
        let l = Line { time: at, ..*l };
        encode(&mut buf, &l, &mut seconds_text(), &mut ip_text());
        buf
    }

    #[test]
    fn timestamps_and_addresses_are_reformatted_when_they_change() {
        let (mut clock, mut ip) = (seconds_text(), ip_text());
        let mut l = line();
        let mut at = |secs: u64, micros: u32, l: &Line<'_>| {
            let mut buf = Vec::new();
            let l = Line {
                time: SystemTime::UNIX_EPOCH + Duration::new(secs, micros * 1000),
                ..*l
            };
            encode(&mut buf, &l, &mut clock, &mut ip);
            serde_json::from_slice::<serde_json::Value>(&buf).unwrap()
        };
        let v = at(1_700_000_000, 7, &l);
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.000007Z");
        assert_eq!(v["client_ip"], "10.0.0.1");
        let v = at(1_700_000_000, 999_999, &l);
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.999999Z");
        l.client_ip = "2001:db8::1".parse().unwrap();
        let v = at(1_700_000_001, 0, &l);
        assert_eq!(v["timestamp"], "2023-11-14T22:13:21.000000Z");
        assert_eq!(v["client_ip"], "2001:db8::1");
        // The same as an encoder with nothing cached.
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_001, 0);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&encoded(&l, t)).unwrap(),
            v
        );
    }

    /// A cutoff after every timestamp (and lines without one).
    const LATER: &[u8] = b"9999";

    #[test]
    fn lines_of_all_threads_are_written_in_time_order_and_late_ones_wait_a_round() {
        let sink = Sink::new();
        let (a, b) = (sink.register(), sink.register());
        let at = |micros: u64| {
            let l = Line {
                time: SystemTime::UNIX_EPOCH
                    + Duration::from_micros(1_700_000_000_000_000 + micros),
                ..line()
            };
            encoded(&l, l.time)
        };
        // Two threads' queues, each in its own order, interleaved in time.
        for m in [1, 4, 5, 9] {
            a.push(&at(m));
        }
        for m in [2, 3, 6, 10] {
            b.push(&at(m));
        }
        let mut cutoff = Vec::new();
        timestamp(
            &mut cutoff,
            SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_000 + 8),
            &mut seconds_text(),
        );
        let times = |out: &[u8]| -> Vec<String> {
            out.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| String::from_utf8(time_of(l).to_vec()).unwrap())
                .collect()
        };
        let (mut round, mut out) = (Round::default(), Vec::new());
        sink.drain(&mut round, &cutoff, &mut out);
        let first = times(&out);
        assert_eq!(first.len(), 6, "the lines up to the cutoff: {first:?}");
        assert!(first.windows(2).all(|w| w[0] < w[1]), "{first:?}");
        assert_eq!(sink.queued(), round.held.len());
        assert!(sink.queued() > 0, "9 and 10 wait");
        // A line queued now, stamped before the held ones, is written with them, in order.
        a.push(&at(7));
        out.clear();
        sink.drain(&mut round, &cutoff, &mut out);
        let second = times(&out);
        assert_eq!(second.len(), 3, "{second:?}");
        assert!(second.windows(2).all(|w| w[0] < w[1]), "{second:?}");
        assert!(first.last() < second.first());
        assert_eq!(sink.queued(), 0);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_growing() {
        let sink = Sink::new();
        let shard = sink.register();
        let before = DROPPED.get();
        let line = vec![b'x'; 1024];
        // No writer drains it: the queue fills to its bound, then every line is dropped.
        for _ in 0..(MAX_QUEUED_BYTES / 1024 + 100) {
            shard.push(&line);
        }
        assert!(sink.queued() <= MAX_QUEUED_BYTES);
        assert!(shard.len() <= MAX_QUEUED_BYTES);
        assert!(DROPPED.get() - before >= 100);
        // A writer round empties it and gives the bytes back.
        let mut out = Vec::new();
        let wrote = sink.drain(&mut Round::default(), LATER, &mut out);
        assert_eq!(wrote, out.len());
        assert_eq!(sink.queued(), 0);
        shard.push(&line);
        assert_eq!(shard.len(), 1024, "accepting lines again");
    }

    #[test]
    fn every_threads_lines_are_written_in_their_order() {
        let sink = Arc::new(Sink::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    let shard = sink.register();
                    for i in 0..1000 {
                        shard.push(format!("{t} {i}\n").as_bytes());
                    }
                })
            })
            .collect();
        let mut out = Vec::new();
        let mut round = Round::default();
        for t in threads {
            sink.drain(&mut round, LATER, &mut out);
            t.join().unwrap();
        }
        sink.drain(&mut round, LATER, &mut out);
        assert_eq!(sink.queued(), 0);
        // A round with nothing to write forgets the queues of the finished threads.
        assert_eq!(sink.drain(&mut round, LATER, &mut out), 0);
        let text = String::from_utf8(out).unwrap();
        let mut next = [0u32; 4];
        for l in text.lines() {
            let (t, i) = l.split_once(' ').unwrap();
            let (t, i): (usize, u32) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(i, next[t], "thread {t}'s lines in order, none lost");
            next[t] += 1;
        }
        assert_eq!(next, [1000; 4]);
        // The queues of the finished threads are forgotten once drained.
        assert!(sink.shards.lock().is_empty());
    }
}
