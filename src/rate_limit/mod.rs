//! Stage 2, rate limiting: per-client GCRA, the failed-authentication throttle per source IP,
//! and the global upstream call budget. All three are governor limiters on a clock driven by
//! `tokio::time`, so tests can pause and advance time.
//!
//! This module decides and reports (`RateLimit-*` values, `Retry-After`); it does not build
//! responses (see `error` and `proxy`). With Redis up, a client's limit is decided by the
//! shared GCRA in [`distributed`] instead of the local limiter ([`ClientLimiter::decide`]
//! makes that choice).

pub(crate) mod distributed;

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::redis::Redis;
use crate::units::Rate;

/// governor's clock on top of `tokio::time::Instant` (paused time in tests moves it).
#[derive(Clone, Debug)]
pub struct TokioClock {
    start: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        Self {
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Nanos;
    fn now(&self) -> Nanos {
        Nanos::from(self.start.elapsed())
    }
}

/// The quota for `rate` with `burst` cells of capacity.
/// The shared limiter name of the upstream budget (a space: no client can be named so).
const SHARED_BUDGET: &str = "upstream budget";

pub(crate) fn quota(rate: Rate, burst: u32) -> Quota {
    let burst = NonZeroU32::new(burst).unwrap_or(rate.count);
    Quota::with_period(rate.interval().max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(rate.count))
        .allow_burst(burst)
}

type Direct = RateLimiter<NotKeyed, InMemoryState, TokioClock, StateInformationMiddleware>;

/// The values of the `RateLimit-*` headers for one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// `RateLimit-Limit`: the burst capacity.
    pub limit: u32,
    /// `RateLimit-Remaining`: cells left after this request.
    pub remaining: u32,
    /// `RateLimit-Reset`: whole seconds until the capacity is full again.
    pub reset_secs: u64,
}

/// A client's limiter. Kept across config reloads while its rate and burst do not change.
pub struct ClientLimiter {
    limiter: Direct,
    clock: TokioClock,
    /// Sustained rate, when limited.
    pub rate: Rate,
    /// Burst capacity of the rate.
    pub burst: u32,
}

impl std::fmt::Debug for ClientLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLimiter")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .finish()
    }
}

impl ClientLimiter {
    /// A new one.
    pub fn new(rate: Rate, burst: u32, clock: TokioClock) -> Self {
        let limiter = RateLimiter::direct_with_clock(quota(rate, burst), clock.clone())
            .with_middleware::<StateInformationMiddleware>();
        Self {
            limiter,
            clock,
            rate,
            burst,
        }
    }

    /// One decision for the client named `name`: shared by all replicas while `redis` answers,
    /// this replica's own otherwise.
    pub(crate) async fn decide(
        &self,
        redis: Option<&Redis>,
        name: &str,
    ) -> Result<RateLimitInfo, (RateLimitInfo, Duration)> {
        if let Some(redis) = redis {
            // Boxed: the Redis round trip's state stays out of every request's future.
            let shared = Box::pin(distributed::check(redis, name, self.rate, self.burst));
            if let Some(d) = shared.await {
                return d;
            }
        }
        self.check()
    }

    /// Takes one cell. `Ok(info)` when allowed, `Err((info, retry_after))` when not.
    pub fn check(&self) -> Result<RateLimitInfo, (RateLimitInfo, Duration)> {
        let interval = self.rate.interval();
        match self.limiter.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let missing = self.burst.saturating_sub(remaining);
                Ok(RateLimitInfo {
                    limit: self.burst,
                    remaining,
                    reset_secs: ceil_secs(interval * missing),
                })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let info = RateLimitInfo {
                    limit: self.burst,
                    remaining: 0,
                    reset_secs: ceil_secs(wait + interval * self.burst.saturating_sub(1)),
                };
                Err((info, wait))
            }
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// What the failed-auth throttle counts per: the address for IPv4, its /64 for IPv6 (one
/// host usually holds a whole /64, so per-address budgets would be unlimited). An IPv4-mapped
/// IPv6 address counts as its IPv4 address.
pub fn throttle_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

/// Failed authentications per source address ([`throttle_key`]). An address over its budget is
/// refused (429) before its key is even looked at, until the budget recovers.
pub struct AuthThrottle {
    failures: RateLimiter<
        IpAddr,
        governor::state::keyed::DefaultKeyedStateStore<IpAddr>,
        TokioClock,
        NoOpMiddleware<Nanos>,
    >,
    /// IPs currently refused, with the instant they may try again. Bounded: a moka cache.
    blocked: moka::sync::Cache<IpAddr, tokio::time::Instant>,
    /// Milliseconds (on the limiter clock) after which no IP is blocked any more.
    latest_unblock_ms: std::sync::atomic::AtomicU64,
    /// Sustained rate, when limited.
    pub rate: Rate,
}

/// How many blocked IPs are remembered at most; beyond that the least recently used are
/// forgotten (they are then counted afresh), so an address flood cannot grow memory.
const MAX_BLOCKED_IPS: u64 = 100_000;

impl AuthThrottle {
    /// A new one.
    pub fn new(rate: Rate, clock: TokioClock) -> Self {
        Self {
            failures: RateLimiter::new(quota(rate, rate.count.get()), Default::default(), clock),
            blocked: moka::sync::Cache::builder()
                .max_capacity(MAX_BLOCKED_IPS)
                .time_to_live(rate.per)
                .build(),
            latest_unblock_ms: std::sync::atomic::AtomicU64::new(0),
            rate,
        }
    }

    /// `Err(retry_after)` when `ip` is currently blocked.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let ip = throttle_key(ip);
        // Fast path: no block outlives the latest one recorded, so past it nothing is blocked
        // and the per-IP lookup is skipped (the common case on the hit path).
        let now_ms = self.failures.clock().now().as_u64() / 1_000_000;
        if now_ms
            >= self
                .latest_unblock_ms
                .load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(());
        }
        match self.blocked.get(&ip) {
            Some(until) => {
                let now = tokio::time::Instant::now();
                if until > now {
                    Err(until - now)
                } else {
                    self.blocked.invalidate(&ip);
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    /// Records one failed authentication from `ip`; returns `Err(retry_after)` if that
    /// exhausted the budget (the IP is blocked from now on).
    pub fn record_failure(&self, ip: IpAddr) -> Result<(), Duration> {
        let ip = throttle_key(ip);
        match self.failures.check_key(&ip) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let now = self.failures.clock().now();
                let wait = not_until.wait_time_from(now);
                self.blocked.insert(ip, tokio::time::Instant::now() + wait);
                let until_ms = (now.as_u64() / 1_000_000) + wait.as_millis() as u64 + 1;
                self.latest_unblock_ms
                    .fetch_max(until_ms, std::sync::atomic::Ordering::AcqRel);
                Err(wait)
            }
        }
    }

    /// Forgets IPs whose failure budget is full again (bounds memory under address floods).
    pub fn prune(&self) {
        self.failures.retain_recent();
        self.failures.shrink_to_fit();
        self.blocked.run_pending_tasks();
    }

    /// How many IPs have failure state.
    pub fn tracked(&self) -> usize {
        self.failures.len()
    }
}

/// The global budget of upstream calls (`upstream.rate`).
pub(crate) struct UpstreamBudget {
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>,
    clock: TokioClock,
    pub rate: Rate,
}

impl UpstreamBudget {
    pub(crate) fn new(rate: Rate, clock: TokioClock) -> Self {
        Self {
            limiter: RateLimiter::direct_with_clock(quota(rate, rate.count.get()), clock.clone()),
            clock,
            rate,
        }
    }

    /// Takes one call from the budget, or says how long until one is available. With Redis
    /// the budget is one for all replicas (the shared GCRA); without it, or while Redis is
    /// unavailable, this replica's own.
    pub(crate) async fn admit_shared(&self, redis: Option<&Redis>) -> Result<(), Duration> {
        if let Some(redis) = redis {
            let burst = self.rate.count.get();
            if let Some(d) = distributed::check(redis, SHARED_BUDGET, self.rate, burst).await {
                return d.map(drop).map_err(|(_, retry_after)| retry_after);
            }
        }
        self.admit()
    }

    /// Takes one call from this replica's budget, or says how long until one is available.
    pub(crate) fn admit(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|nu| nu.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::rate;

    #[tokio::test(start_paused = true)]
    async fn burst_then_refuse_then_recover() {
        let l = ClientLimiter::new(rate("2/s").unwrap(), 3, TokioClock::default());
        let remaining: Vec<u32> = (0..3).map(|_| l.check().unwrap().remaining).collect();
        assert_eq!(remaining, vec![2, 1, 0]);
        let (info, wait) = l.check().unwrap_err();
        assert_eq!(info.remaining, 0);
        assert_eq!(wait, Duration::from_millis(500));
        tokio::time::advance(wait).await;
        assert!(l.check().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn per_ip_state_is_pruned() {
        let t = AuthThrottle::new(rate("30/m").unwrap(), TokioClock::default());
        for i in 0..5000u32 {
            let _ = t.record_failure(IpAddr::from(i.to_be_bytes()));
        }
        assert_eq!(t.tracked(), 5000);
        tokio::time::advance(Duration::from_secs(61)).await;
        t.prune();
        assert_eq!(
            t.tracked(),
            0,
            "a flood of addresses leaves no state behind"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_is_throttled_per_64() {
        let t = AuthThrottle::new(rate("2/m").unwrap(), TokioClock::default());
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(t.record_failure(a).is_ok());
        assert!(t.record_failure(b).is_ok());
        assert!(t.record_failure(a).is_err(), "same /64 shares one budget");
        assert!(t.check(b).is_err());
        assert!(t.check(other).is_ok(), "another /64 is not affected");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(throttle_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn auth_throttle_blocks_then_recovers() {
        let t = AuthThrottle::new(rate("3/m").unwrap(), TokioClock::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(t.record_failure(ip).is_ok());
        }
        let wait = t.record_failure(ip).unwrap_err();
        assert!(t.check(ip).is_err());
        assert!(t.check(other).is_ok());
        tokio::time::advance(wait + Duration::from_millis(1)).await;
        assert!(t.check(ip).is_ok());
    }
}
