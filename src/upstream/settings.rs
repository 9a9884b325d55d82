//! `[upstream]` in its validated form, and the one formula for how long a fetch can take.

use std::time::Duration;

use crate::units::Rate;

/// `[upstream]`, validated. Every field takes part in `==`: a reload rebuilds the HTTP client
/// when anything here changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSettings {
    /// Scheme, host and port (and optional path prefix), without a trailing slash.
    pub base_url: String,
    /// Whether an `http://` base URL is allowed.
    pub allow_insecure_http: bool,
    /// Timeout of one call.
    pub timeout: Duration,
    /// TCP+TLS connect timeout.
    pub connect_timeout: Duration,
    /// Retries after the first attempt (502/503/504, connect errors).
    pub retries: u32,
    /// Largest upstream body accepted.
    pub max_body: usize,
    /// Sustained rate, when limited.
    pub rate: Option<Rate>,
    /// Consecutive failed fetches of one account that open its circuit; 0 disables.
    pub breaker_failures: u32,
    /// How long an open circuit refuses calls before one probe.
    pub breaker_cooldown: Duration,
}

impl UpstreamSettings {
    /// The longest one fetch can take, retries included:
    ///
    /// `(retries + 1) × timeout + Σ_{i=1..retries} min(BACKOFF_BASE × 2^(i-1), BACKOFF_MAX)`
    ///
    /// (each attempt is cut at `timeout`; each backoff sleeps at most its cap). A fetch is also
    /// cut at its caller's deadline, so the real bound is the smaller of this and
    /// `server.request_timeout`. The cross-replica fill lock is sized from it.
    pub fn worst_case_fetch(&self) -> Duration {
        let attempts = self.timeout.saturating_mul(self.retries.saturating_add(1));
        let backoff: Duration = (1..=self.retries).map(super::backoff_cap).sum();
        attempts.saturating_add(backoff)
    }
}
