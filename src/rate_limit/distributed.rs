//! The rate limit shared by replicas: one GCRA per client in Redis.
//!
//! Used instead of the local limiter while Redis answers; `None` from here means "decide
//! locally" (see [`super::Limiter`]). The algorithm runs in one atomic script on the Redis
//! server, on the server's clock, so replicas with skewed clocks agree.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::RateLimitInfo;
use crate::redis::Redis;
use crate::units::Rate;

/// GCRA in one atomic script (the go-redis `redis_rate` formulation). Time comes from the Redis
/// server (`TIME`), so replicas with skewed clocks agree. Returns
/// `{allowed, remaining, retry_after_s, reset_after_s}`; the floats as strings.
const GCRA: &str = r#"
local key = KEYS[1]
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local emission = period / rate
local burst_offset = emission * burst
local t = redis.call("TIME")
local now = (tonumber(t[1]) - 1483228800) + tonumber(t[2]) / 1000000
local tat = redis.call("GET", key)
if not tat then tat = now else tat = tonumber(tat) end
tat = math.max(tat, now)
local new_tat = tat + emission
local diff = now - (new_tat - burst_offset)
if diff < 0 then
  return {0, 0, tostring(-diff), tostring(tat - now)}
end
local reset_after = new_tat - now
redis.call("SET", key, tostring(new_tat), "PX", math.ceil(reset_after * 1000) + 1)
return {1, math.floor(diff / emission), "-1", tostring(reset_after)}
"#;

/// One GCRA decision for the limiter named `name` (a client, or the upstream budget),
/// shared by all replicas; `None` when Redis is unavailable.
pub async fn check(
    redis: &Redis,
    name: &str,
    rate: Rate,
    burst: u32,
) -> Option<Result<RateLimitInfo, (RateLimitInfo, Duration)>> {
    let k = format!(
        "{}r:{}",
        redis.prefix(),
        hex::encode(&Sha256::digest(name.as_bytes())[..12])
    );
    let script = redis::Script::new(GCRA);
    let (count, per) = (rate.count.get(), rate.per.as_secs_f64());
    let (allowed, remaining, retry, reset): (i64, i64, String, String) = redis
        .call("rate_limit", |mut c| async move {
            script
                .key(k)
                .arg(burst)
                .arg(count)
                .arg(per)
                .arg(0)
                .invoke_async(&mut c)
                .await
        })
        .await?;
    // Values from Redis are not trusted: anything odd is "no wait" rather than a panic.
    let secs = |s: &str| {
        s.parse::<f64>()
            .ok()
            .and_then(|v| Duration::try_from_secs_f64(v).ok())
    };
    let reset = secs(&reset).unwrap_or_default();
    let info = RateLimitInfo {
        limit: burst,
        remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
        reset_secs: reset.as_secs() + u64::from(reset.subsec_nanos() > 0),
    };
    if allowed > 0 {
        Some(Ok(info))
    } else {
        Some(Err((info, secs(&retry).unwrap_or(Duration::from_secs(1)))))
    }
}
