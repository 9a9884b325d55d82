//! The format of an answer shared between replicas (the L2, stored in Redis by `proxy::miss`).
//!
//! A value is `version (1) | fetched-at ms (8, big-endian) | HMAC-SHA256 (32) | body`. The MAC
//! covers the Redis key the value is stored under, the fetch time and the body, keyed by a
//! secret derived from the account's upstream key: a value written by anyone without that key
//! (a replica configured with another key, or someone with write access to Redis), or moved
//! to another key, is rejected. A value that is intact but not valid JSON is rejected too.
//! Anything odd is a miss, never an error. Pure functions; no I/O.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

const VERSION: u8 = 1;
const HEADER: usize = 1 + 8 + 32;

/// An answer read back from the L2.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub body: Bytes,
    pub fetched_wall: SystemTime,
}

fn mac(mac_key: &[u8; 32], redis_key: &str, ts: &[u8; 8], body: &[u8]) -> HmacSha256 {
    // A 32-byte key is always accepted by HMAC.
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(mac_key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(&(redis_key.len() as u64).to_be_bytes());
    m.update(redis_key.as_bytes());
    m.update(ts);
    m.update(body);
    m
}

/// The value to store under `redis_key` for `body` fetched at `fetched_wall`.
pub(crate) fn encode(
    mac_key: &[u8; 32],
    redis_key: &str,
    body: &[u8],
    fetched_wall: SystemTime,
) -> Vec<u8> {
    let ms = fetched_wall
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        .to_be_bytes();
    let tag = mac(mac_key, redis_key, &ms, body).finalize().into_bytes();
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.push(VERSION);
    out.extend_from_slice(&ms);
    out.extend_from_slice(&tag);
    out.extend_from_slice(body);
    out
}

/// The answer in `value` read from `redis_key`, if it is intact, ours and valid JSON.
pub(crate) fn decode(mac_key: &[u8; 32], redis_key: &str, value: &[u8]) -> Option<Shared> {
    if value.len() < HEADER || value[0] != VERSION {
        return None;
    }
    let ts: [u8; 8] = value[1..9].try_into().ok()?;
    let (tag, body) = value[9..].split_at(32);
    mac(mac_key, redis_key, &ts, body).verify_slice(tag).ok()?;
    crate::redact::check_json(body).ok()?;
    Some(Shared {
        body: Bytes::copy_from_slice(body),
        fetched_wall: UNIX_EPOCH + Duration::from_millis(u64::from_be_bytes(ts)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: [u8; 32] = [7; 32];

    #[test]
    fn round_trip() {
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let v = encode(&K, "c:tag:/r", b"{\"a\":1}", now);
        let s = decode(&K, "c:tag:/r", &v).unwrap();
        assert_eq!(&s.body[..], b"{\"a\":1}");
        assert_eq!(s.fetched_wall, now);
    }

    #[test]
    fn anything_odd_is_rejected() {
        let now = SystemTime::now();
        let v = encode(&K, "c:tag:/r", b"{\"a\":1}", now);
        assert!(decode(&[8; 32], "c:tag:/r", &v).is_none(), "another key");
        assert!(
            decode(&K, "c:tag:/other", &v).is_none(),
            "moved to another key"
        );
        let mut flipped = v.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(decode(&K, "c:tag:/r", &flipped).is_none(), "body changed");
        let mut later = v.clone();
        later[8] ^= 1;
        assert!(decode(&K, "c:tag:/r", &later).is_none(), "time changed");
        assert!(
            decode(&K, "c:tag:/r", b"<html>").is_none(),
            "not ours at all"
        );
        let html = encode(&K, "c:tag:/r", b"<html>", now);
        assert!(
            decode(&K, "c:tag:/r", &html).is_none(),
            "intact but not JSON"
        );
    }
}
