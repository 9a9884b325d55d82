//! Per-account upstream health: the circuit breaker and the pauses Gcore asks for.
//!
//! One [`Breaker`] per account (kept across reloads while the account's key is unchanged).
//! It decides whether a call may be made now ([`Breaker::gate`]) and learns from each call's
//! result. It opens after `upstream.circuit_breaker_failures` consecutive failures for
//! `circuit_breaker_cooldown`, then lets exactly one probe through (half-open). An upstream 429
//! pauses the account for its `Retry-After`; an upstream 401/403 (our key is bad) is remembered
//! for [`NEGATIVE_CACHE`] so a broken key is not hammered. It stays per replica on purpose: it
//! reacts to what this replica's network path sees (see the README's Redis table). Metrics are
//! the caller's: the methods say when the circuit opened or closed.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::UpstreamFailure;

/// How long an upstream 401/403 (our key is bad) is remembered, so a broken key is not hammered.
pub const NEGATIVE_CACHE: Duration = Duration::from_secs(5);

/// What a call's result did to the circuit (for the `gateway_circuit_open` gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    Opened,
    Closed,
    Unchanged,
}

/// Circuit breaker and pause state of one account.
#[derive(Debug, Default)]
pub(crate) struct Breaker {
    consecutive_failures: AtomicU32,
    /// Until when calls are refused, and what callers are told meanwhile.
    blocked: Mutex<Option<(Instant, UpstreamFailure)>>,
    half_open_probe: AtomicBool,
}

impl Breaker {
    /// Whether an upstream call may be made now. While blocked, returns what to tell callers.
    /// After a block expires exactly one call (the half-open probe) is let through; the block
    /// is lifted when it succeeds and renewed when it fails.
    pub(crate) fn gate(&self) -> Result<(), UpstreamFailure> {
        let mut blocked = self.blocked.lock();
        if let Some((until, why)) = blocked.clone() {
            let now = Instant::now();
            if until > now {
                return Err(match why {
                    UpstreamFailure::Unauthorized(s) => UpstreamFailure::Unauthorized(s),
                    _ => UpstreamFailure::Paused {
                        retry_after: until - now,
                    },
                });
            }
            if matches!(
                why,
                UpstreamFailure::RateLimited { .. } | UpstreamFailure::Unauthorized(_)
            ) {
                // A pause (429) or the bad-key negative cache ran out: not a breaker state.
                *blocked = None;
                return Ok(());
            }
            if self.half_open_probe.swap(true, Ordering::AcqRel) {
                // Another fill is probing; answer from stale or 503 meanwhile.
                return Err(UpstreamFailure::Paused {
                    retry_after: Duration::from_secs(1),
                });
            }
        }
        Ok(())
    }

    /// Records a success: closes the circuit.
    pub(crate) fn on_success(&self) -> Transition {
        self.consecutive_failures.store(0, Ordering::Release);
        self.half_open_probe.store(false, Ordering::Release);
        if self.blocked.lock().take().is_some() {
            Transition::Closed
        } else {
            Transition::Unchanged
        }
    }

    /// Records a failure; may open the circuit or pause the account. `threshold` 0 disables
    /// the breaker (pauses still apply).
    pub(crate) fn on_failure(
        &self,
        failure: &UpstreamFailure,
        threshold: u32,
        cooldown: Duration,
    ) -> Transition {
        // Whatever happened, a probe in flight is over: never leave the flag set.
        let was_probe = self.half_open_probe.swap(false, Ordering::AcqRel);
        if failure.is_local() {
            return Transition::Unchanged;
        }
        let now = Instant::now();
        let (block, transition) = match failure {
            UpstreamFailure::RateLimited { retry_after } => (
                Some((now + *retry_after, failure.clone())),
                Transition::Unchanged,
            ),
            UpstreamFailure::Unauthorized(_) => (
                Some((now + NEGATIVE_CACHE, failure.clone())),
                Transition::Unchanged,
            ),
            _ => {
                let n = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
                if threshold > 0 && (was_probe || n >= threshold) {
                    self.consecutive_failures.store(0, Ordering::Release);
                    (Some((now + cooldown, failure.clone())), Transition::Opened)
                } else {
                    (None, Transition::Unchanged)
                }
            }
        };
        if let Some(b) = block {
            *self.blocked.lock() = Some(b);
        }
        transition
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_then_probes_once() {
        let b = Breaker::default();
        let cool = Duration::from_secs(10);
        assert_eq!(
            b.on_failure(&UpstreamFailure::Connect, 2, cool),
            Transition::Unchanged
        );
        assert_eq!(
            b.on_failure(&UpstreamFailure::Connect, 2, cool),
            Transition::Opened
        );
        assert!(matches!(b.gate(), Err(UpstreamFailure::Paused { .. })));
        tokio::time::advance(cool).await;
        assert!(b.gate().is_ok(), "one probe after the cooldown");
        assert!(b.gate().is_err(), "only one");
        assert_eq!(b.on_success(), Transition::Closed);
        assert!(b.gate().is_ok());
    }
}
