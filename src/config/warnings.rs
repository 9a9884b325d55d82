//! What is worth a warning in a valid config: dates that are near or past.
//!
//! `check` prints these, and the gateway logs them at WARN when it loads or reloads a config,
//! so an operator hears about a team key or a Gcore key running out before the teams do. The
//! dates themselves are parsed by `validate`; what happens to an expired key on a request is
//! `proxy`'s business.

use std::time::{Duration, SystemTime};

use super::Config;
use crate::units::unix_ms;

/// Keys (team or Gcore) expiring within this are warned about: two weeks leaves time to mint,
/// hand over and switch a key without a rush.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

impl Config {
    /// One line per finding, in config order; empty when nothing needs attention. Never
    /// contains a key or a hash: keys are named by their id or `sha256:` + 8 hex digits.
    pub fn warnings(&self, now: SystemTime) -> Vec<String> {
        let mut out = Vec::new();
        for (i, a) in self.accounts.iter().enumerate() {
            let Some(expires) = a.expires else { continue };
            let at = format!("accounts[{i}].expires ({})", a.name);
            match left(expires, now) {
                None => out.push(format!(
                    "{at}: the Gcore key expired {}: every upstream call of this account fails until it is rotated",
                    date(expires)
                )),
                Some(d) if d <= EXPIRY_WARNING => out.push(format!(
                    "{at}: the Gcore key expires {}, in {}: rotate it before every client of this account breaks at once",
                    date(expires),
                    human(d)
                )),
                Some(_) => {}
            }
        }
        let now_ms = unix_ms(now);
        for (i, c) in self.clients.iter().enumerate() {
            if c.keys.iter().all(|k| k.expired_at(now_ms)) {
                out.push(format!(
                    "clients[{i}] ({}): every key has expired: all of this team's requests get 401",
                    c.name
                ));
                continue;
            }
            for (k, key) in c.keys.iter().enumerate() {
                let Some(expires) = key.expires else { continue };
                let at = format!("clients[{i}].keys[{k}] ({}, key {})", c.name, key.label);
                match left(expires, now) {
                    None => out.push(format!(
                        "{at}: expired {}: requests with it get 401; remove it",
                        date(expires)
                    )),
                    Some(d) if d <= EXPIRY_WARNING => out.push(format!(
                        "{at}: expires {}, in {}: mint a new key (gen-key --id …) and rotate",
                        date(expires),
                        human(d)
                    )),
                    Some(_) => {}
                }
            }
        }
        out
    }
}

/// Time left until `expires`, `None` once it has passed.
fn left(expires: SystemTime, now: SystemTime) -> Option<Duration> {
    expires.duration_since(now).ok().filter(|d| !d.is_zero())
}

fn date(t: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(t)
}

/// A duration to the hour ("5days 3h"), or "less than an hour".
fn human(d: Duration) -> String {
    let hours = d.as_secs() / 3600;
    if hours == 0 {
        "less than an hour".to_string()
    } else {
        humantime::format_duration(Duration::from_secs(hours * 3600)).to_string()
    }
}
