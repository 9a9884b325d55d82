//! The response to a served request: status 200 or 304, `ETag`, `Age`, `Cache-Control`,
//! `X-Cache`, `Vary`, the `RateLimit-*` headers, and the request id every answer carries.
//!
//! `max-age` is the route's TTL and `Age` the whole seconds since the fetch (RFC 9111 §4.2: a
//! client's time left fresh is max-age − Age); a STALE answer's Age is at least its max-age.
//! Request ids are made here and nowhere else ([`RequestId`]).

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use tokio::time::Instant;

use crate::cache::{CacheStatus, Rendered};
use crate::rate_limit::RateLimitInfo;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
static RL_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RL_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RL_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const VARY: HeaderValue = HeaderValue::from_static("Authorization, X-Api-Key");

/// The id of one request: the caller's `X-Request-Id` when sane (1–128 of
/// `[A-Za-z0-9._-]`), else 32 random hex digits. Kept as a header value, so answering with it
/// costs a reference count.
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The caller's id from `headers`, or a new one.
    pub fn from_headers(headers: &HeaderMap) -> RequestId {
        if let Some(v) = headers.get(&X_REQUEST_ID) {
            let b = v.as_bytes();
            let sane = !b.is_empty()
                && b.len() <= 128
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
            if sane {
                return RequestId(v.clone());
            }
        }
        RequestId::new()
    }

    /// A new random id.
    pub fn new() -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = rand::random::<u128>();
        let mut buf = [0u8; 32];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
        }
        // Hex digits are always a valid header value.
        RequestId(HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0")))
    }

    /// The id as text (checked ASCII).
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("")
    }

    /// Sets `X-Request-Id` on `resp`.
    pub fn stamp<B>(&self, resp: &mut Response<B>) {
        resp.headers_mut().insert(&X_REQUEST_ID, self.0.clone());
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

/// The answer for a request served from an answer fetched at `fetched_at` (200, or 304 when
/// `If-None-Match` matches).
pub(crate) fn served<B>(
    req: &Request<B>,
    fetched_at: Instant,
    rendered: Rendered,
    status: CacheStatus,
    ttl_secs: u64,
    now: Instant,
) -> Response<Bytes> {
    let not_modified = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| etag_matches(v.as_bytes(), rendered.etag.as_bytes()));
    let head = req.method() == Method::HEAD;
    let length = rendered.body.len();
    let body = if not_modified || head {
        Bytes::new()
    } else {
        rendered.body
    };
    let mut resp = Response::new(body);
    if not_modified {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let h = resp.headers_mut();
    h.reserve(12);
    h.insert(header::CONTENT_TYPE, JSON);
    h.insert(&X_CACHE, HeaderValue::from_static(status.as_str()));
    h.insert(
        header::AGE,
        number(now.saturating_duration_since(fetched_at).as_secs()),
    );
    h.insert(header::ETAG, rendered.etag);
    h.insert(header::CACHE_CONTROL, cached(ttl_secs, Made::CacheControl));
    h.insert(header::VARY, VARY);
    if head && !not_modified {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    resp
}

/// Numbers below this have a header value made once (see [`number`]).
const SMALL_NUMBERS: usize = 1024;

/// `n` as a header value. Below [`SMALL_NUMBERS`] (ages, seconds to a reset, small limits) a
/// copy of a value made once, over static bytes: no allocation, and a clone writes no
/// reference count.
pub(crate) fn number(n: u64) -> HeaderValue {
    static TABLE: std::sync::LazyLock<Vec<HeaderValue>> = std::sync::LazyLock::new(|| {
        let mut text = String::new();
        let mut ends = Vec::with_capacity(SMALL_NUMBERS);
        for i in 0..SMALL_NUMBERS {
            text.push_str(itoa::Buffer::new().format(i));
            ends.push(text.len());
        }
        // Made once per process and kept for its life.
        let text: &'static str = Box::leak(text.into_boxed_str());
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let v = HeaderValue::from_static(&text[start..end]);
                start = end;
                v
            })
            .collect()
    });
    usize::try_from(n)
        .ok()
        .and_then(|i| TABLE.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(n))
}

/// The values [`cached`] keeps: which header a number is made into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Made {
    /// `private, max-age=N` ([`cache_control`]).
    CacheControl,
    /// The number itself ([`number`]).
    Number,
}

impl Made {
    fn make(self, n: u64) -> HeaderValue {
        match self {
            Made::CacheControl => cache_control(n),
            Made::Number => number(n),
        }
    }
}

/// The `kind` value of `n`, from a small per-thread table of the values made last: for values
/// that repeat request after request (a route's `Cache-Control`, a client's limit), so a hit
/// neither formats nor allocates them, and the clone's reference count is this thread's own.
pub(crate) fn cached(n: u64, kind: Made) -> HeaderValue {
    const KEEP: usize = 16;
    thread_local! {
        static MADE: std::cell::RefCell<Vec<(Made, u64, HeaderValue)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    MADE.with(|m| {
        let Ok(mut m) = m.try_borrow_mut() else {
            return kind.make(n);
        };
        if let Some((_, _, v)) = m.iter().find(|(k, num, _)| *k == kind && *num == n) {
            return v.clone();
        }
        let v = kind.make(n);
        if m.len() == KEEP {
            m.remove(0);
        }
        m.push((kind, n, v.clone()));
        v
    })
}

/// `private, max-age=N` built on the stack (no heap formatting on the hit path).
pub(crate) fn cache_control(max_age: u64) -> HeaderValue {
    const PREFIX: &[u8] = b"private, max-age=";
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(max_age).as_bytes();
    let mut buf = [0u8; PREFIX.len() + 20];
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    buf[PREFIX.len()..PREFIX.len() + digits.len()].copy_from_slice(digits);
    HeaderValue::from_bytes(&buf[..PREFIX.len() + digits.len()])
        .unwrap_or(HeaderValue::from_static("private, max-age=0"))
}

/// `If-None-Match` semantics (weak comparison): `*` or any listed tag equal to ours.
fn etag_matches(header: &[u8], etag: &[u8]) -> bool {
    header.split(|b| *b == b',').any(|t| {
        let t = t.trim_ascii();
        let t = t.strip_prefix(b"W/").unwrap_or(t);
        t == b"*" || t == etag
    })
}

/// The `RateLimit-*` headers of one decision.
pub(crate) fn rate_limit_headers(h: &mut HeaderMap, info: RateLimitInfo) {
    h.insert(&RL_LIMIT, cached(info.limit.into(), Made::Number));
    h.insert(&RL_REMAINING, number(info.remaining.into()));
    h.insert(&RL_RESET, number(info.reset_secs));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_forms() {
        assert!(etag_matches(b"\"a\"", b"\"a\""));
        assert!(etag_matches(b"W/\"a\"", b"\"a\""));
        assert!(etag_matches(b"\"x\", \"a\"", b"\"a\""));
        assert!(etag_matches(b"*", b"\"a\""));
        assert!(!etag_matches(b"\"b\"", b"\"a\""));
    }

    #[test]
    fn cache_control_value() {
        assert_eq!(cache_control(0), "private, max-age=0");
        assert_eq!(cache_control(300), "private, max-age=300");
        assert_eq!(
            cache_control(u64::MAX),
            format!("private, max-age={}", u64::MAX)
        );
    }

    #[test]
    fn numbers_and_cached_values_are_the_plain_ones() {
        for n in [0u64, 1, 9, 10, 99, 1023, 1024, 1025, 999_999, u64::MAX] {
            assert_eq!(number(n), HeaderValue::from(n), "{n}");
            assert_eq!(cached(n, Made::Number), HeaderValue::from(n), "{n}");
            assert_eq!(cached(n, Made::CacheControl), cache_control(n), "{n}");
        }
        // The per-thread table keeps the last ones made, one value per (kind, number).
        for n in 0..100u64 {
            assert_eq!(
                cached(n % 20 + 5_000, Made::Number),
                HeaderValue::from(n % 20 + 5_000)
            );
            assert_eq!(cached(n % 20, Made::CacheControl), cache_control(n % 20));
        }
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-1"));
        assert_eq!(RequestId::from_headers(&h).as_str(), "abc-1");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("bad id\"<x>"));
        let id = RequestId::from_headers(&h);
        assert_eq!(id.as_str().len(), 32);
        assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(RequestId::new().as_str(), RequestId::new().as_str());
    }
}
