//! Parsers for the config's unit-bearing strings: humantime durations, byte sizes, rates and
//! RFC 3339 dates (key expiry), plus the one conversion of a wall-clock time to Unix
//! milliseconds that the request path compares expiry dates with.
//!
//! Each parser returns a plain `String` error; the caller (config validation) prefixes the
//! config key so the message names what is wrong. Nothing here touches the request path.

use std::num::NonZeroU32;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// A size as written in TOML: a string such as `"64MiB"` or an integer number of bytes.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    /// Bytes as an integer.
    Bytes(u64),
    /// A string with an optional unit suffix.
    Text(String),
}

/// Parses a humantime duration such as `"250ms"` or `"10m"`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Parses a size: bytes as an integer, or a number followed by `B`, `KB`, `KiB`, `MB`, `MiB`,
/// `GB`, `GiB` (decimal units are powers of 1000, binary ones powers of 1024).
pub fn size(raw: &RawSize) -> Result<u64, String> {
    let s = match raw {
        RawSize::Bytes(n) => return Ok(*n),
        RawSize::Text(s) => s.trim(),
    };
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. \"64MiB\" or a byte count"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => return Err(format!("invalid size {s:?}: unknown unit {other:?}")),
    };
    let bytes = num * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("invalid size {s:?}: out of range"));
    }
    Ok(bytes as u64)
}

/// A rate such as `"10/s"`: `count` events per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Events allowed per period; never zero.
    pub count: NonZeroU32,
    /// The period.
    pub per: Duration,
}

impl Rate {
    /// The interval between two replenished cells (`per / count`).
    pub fn interval(&self) -> Duration {
        self.per / self.count.get()
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{}", self.count, unit)
    }
}

/// Parses `"N/s"`, `"N/m"` or `"N/h"` with N ≥ 1.
pub fn rate(s: &str) -> Result<Rate, String> {
    let (n, unit) = s
        .trim()
        .split_once('/')
        .ok_or_else(|| format!("invalid rate {s:?}: expected \"N/s\", \"N/m\" or \"N/h\""))?;
    let count: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("invalid rate {s:?}: N must be a whole number"))?;
    let count =
        NonZeroU32::new(count).ok_or_else(|| format!("invalid rate {s:?}: N must be ≥ 1"))?;
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        other => {
            return Err(format!(
                "invalid rate {s:?}: unknown period {other:?} (use s, m or h)"
            ))
        }
    };
    Ok(Rate { count, per })
}

/// Parses a date in UTC: RFC 3339 (`2027-06-30T00:00:00Z`; fractions allowed, `T` or a space,
/// `Z` or `+00:00` or nothing) or a plain date (`2027-06-30`, meaning 00:00 UTC). Offsets other
/// than UTC are refused rather than guessed. The value is not quoted in the error (it sits
/// next to key hashes, where a pasted key must not reach a log).
pub fn timestamp(s: &str) -> Result<SystemTime, String> {
    let s = s.trim();
    let parsed = if s.len() == "2027-06-30".len() {
        humantime::parse_rfc3339(&format!("{s}T00:00:00Z"))
    } else {
        humantime::parse_rfc3339_weak(s)
    };
    parsed.map_err(|_| {
        "invalid date: expected RFC 3339 in UTC, e.g. \"2027-06-30T00:00:00Z\" (or \"2027-06-30\", meaning 00:00 UTC)"
            .to_string()
    })
}

/// `t` as milliseconds since the Unix epoch (0 before it, saturating far after it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let day = |s| unix_ms(timestamp(s).unwrap()) / 1000;
        assert_eq!(day("2027-03-31T00:00:00Z"), 1_806_451_200);
        assert_eq!(day("2027-03-31"), 1_806_451_200);
        assert_eq!(day("2027-03-31 00:00:00"), 1_806_451_200);
        assert_eq!(day("2027-03-31T00:00:00+00:00"), 1_806_451_200);
        assert_eq!(
            unix_ms(timestamp("2027-03-31T00:00:00.250Z").unwrap()) % 1000,
            250
        );
        for bad in [
            "tomorrow",
            "2027-03-31T00:00:00+02:00",
            "2027-13-01",
            "31.03.2027",
            "",
        ] {
            assert!(timestamp(bad).is_err(), "{bad}");
        }
        assert!(!timestamp("gk_secret").unwrap_err().contains("gk_secret"));
        assert_eq!(unix_ms(UNIX_EPOCH), 0);
    }

    #[test]
    fn sizes() {
        assert_eq!(size(&RawSize::Text("64MiB".into())), Ok(64 << 20));
        assert_eq!(size(&RawSize::Text("16KiB".into())), Ok(16 << 10));
        assert_eq!(size(&RawSize::Text("1MB".into())), Ok(1_000_000));
        assert_eq!(size(&RawSize::Bytes(42)), Ok(42));
        assert!(size(&RawSize::Text("12 parsecs".into())).is_err());
        assert!(size(&RawSize::Text("MiB".into())).is_err());
    }

    #[test]
    fn rates() {
        let r = rate("10/s").unwrap();
        assert_eq!((r.count.get(), r.per), (10, Duration::from_secs(1)));
        assert_eq!(r.interval(), Duration::from_millis(100));
        assert_eq!(rate("30/m").unwrap().to_string(), "30/m");
        assert!(rate("0/s").is_err());
        assert!(rate("10/d").is_err());
        assert!(rate("ten/s").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(duration("soon").is_err());
    }
}
