//! Replica sharing through Redis: the L2 cache, the cross-replica fill lock and the
//! distributed GCRA rate limit.
//!
//! Optional (`[redis]`). Every Redis call has a short timeout; on any trouble the caller falls
//! back to the replica's own L1 cache, single-flight and local limiter, so Redis never fails a
//! request. State changes (down/up) are logged once and exposed as `gateway_redis_up`; each
//! fallback is counted. Key names carry a hash of the account (its name and a fingerprint of
//! its key), never the upstream key itself. The L2 holds raw, unredacted upstream answers: the
//! Redis must be private to the gateway. What to do with the values (freshness, rendering)
//! stays in `cache`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use crate::cache::CacheKey;
use crate::config::units::Rate;
use crate::config::{Account, RedisSettings};
use crate::metrics::{Metrics, OpLabel};
use crate::rate_limit::RateLimitInfo;

/// After a failed call, Redis is not asked again for this long (fail fast while it is down).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Interval at which a replica waiting for another replica's fill polls the L2.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

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

/// Deletes the lock only if we still hold it.
const UNLOCK: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
"#;

/// A raw upstream answer as stored in the L2.
#[derive(Debug, Clone)]
pub struct L2Value {
    pub body: Bytes,
    pub fetched_wall: SystemTime,
}

/// Outcome of asking for the cross-replica fill lock.
#[derive(Debug)]
pub enum Lock {
    /// We hold it; release with [`Shared::unlock`].
    Acquired(String),
    /// Another replica is filling.
    Held,
    /// Redis is unavailable: fill locally.
    Unavailable,
}

/// The Redis connection(s) and the up/down state.
pub struct Shared {
    conns: ArcSwapOption<Vec<ConnectionManager>>,
    next: AtomicUsize,
    prefix: String,
    timeout: Duration,
    up: AtomicBool,
    /// Milliseconds since `epoch` before which Redis is not asked (after a failure).
    retry_at_ms: AtomicU64,
    epoch: tokio::time::Instant,
    gcra: redis::Script,
    unlock: redis::Script,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("prefix", &self.prefix)
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Starts connecting in the background (the gateway serves meanwhile, locally).
    pub fn start(
        settings: &RedisSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Shared>, redis::RedisError> {
        let client = redis::Client::open(settings.url.expose_secret())?;
        let shared = Arc::new(Shared {
            conns: ArcSwapOption::empty(),
            next: AtomicUsize::new(0),
            prefix: settings.key_prefix.clone(),
            timeout: settings.timeout,
            up: AtomicBool::new(false),
            retry_at_ms: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
            gcra: redis::Script::new(GCRA),
            unlock: redis::Script::new(UNLOCK),
            metrics,
        });
        shared.metrics.redis_up.set(0);
        let pool = settings.pool_size.max(1) as usize;
        let weak = Arc::downgrade(&shared);
        let timeout = settings.timeout;
        tokio::spawn(async move {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1);
            let mut logged = false;
            loop {
                let mut conns = Vec::with_capacity(pool);
                for _ in 0..pool {
                    match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                        Ok(c) => conns.push(c),
                        Err(e) => {
                            if !logged {
                                tracing::warn!(error = %redacted(&e), "cannot connect to Redis yet; serving from the local cache and limiter");
                                logged = true;
                            }
                            break;
                        }
                    }
                }
                let Some(shared) = weak.upgrade() else { return };
                if conns.len() == pool {
                    shared.conns.store(Some(Arc::new(conns)));
                    shared.mark_up();
                    return;
                }
                drop(shared);
                tokio::time::sleep(RETRY_AFTER_FAILURE).await;
            }
        });
        Ok(shared)
    }

    /// Whether the last Redis call succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn conn(&self) -> Option<ConnectionManager> {
        let now = self.epoch.elapsed().as_millis() as u64;
        if now < self.retry_at_ms.load(Ordering::Acquire) {
            return None;
        }
        let conns = self.conns.load();
        let conns = conns.as_ref()?;
        let i = self.next.fetch_add(1, Ordering::Relaxed) % conns.len();
        Some(conns[i].clone())
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!("Redis is up: sharing cache and limits with other replicas");
        }
        self.metrics.redis_up.set(1);
    }

    fn mark_down(&self, op: &'static str, why: &str) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                op,
                error = why,
                "Redis unavailable: falling back to the local cache and limiter"
            );
        }
        self.metrics.redis_up.set(0);
        let retry = (self.epoch.elapsed() + RETRY_AFTER_FAILURE).as_millis() as u64;
        self.retry_at_ms.store(retry, Ordering::Release);
    }

    /// Runs one Redis operation with the timeout; `None` (and a fallback count) on any failure.
    async fn call<T, F>(
        &self,
        op: &'static str,
        f: impl FnOnce(ConnectionManager) -> F,
    ) -> Option<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let result = match self.conn() {
            None => None,
            Some(conn) => match tokio::time::timeout(self.timeout, f(conn)).await {
                Ok(Ok(v)) => {
                    self.mark_up();
                    Some(v)
                }
                Ok(Err(e)) => {
                    self.mark_down(op, &redacted(&e));
                    None
                }
                Err(_) => {
                    self.mark_down(op, "timed out");
                    None
                }
            },
        };
        if result.is_none() {
            self.metrics
                .redis_fallback
                .get_or_create(&OpLabel { op })
                .inc();
        }
        result
    }

    fn key(&self, kind: &str, key: &CacheKey, account_tag: &str) -> String {
        let mut k = format!("{}{kind}:{account_tag}:{}", self.prefix, key.route);
        if let Some(q) = &key.query {
            k.push('?');
            k.push_str(q);
        }
        k
    }

    /// The L2 copy of `key`, if any.
    pub async fn get(&self, key: &CacheKey, account_tag: &str) -> Option<L2Value> {
        let k = self.key("c", key, account_tag);
        let raw: Option<Vec<u8>> = self
            .call("l2_get", |mut c| async move {
                redis::cmd("GET").arg(k).query_async(&mut c).await
            })
            .await?;
        let raw = raw?;
        if raw.len() < 8 {
            return None;
        }
        let (ts, body) = raw.split_at(8);
        let ms = u64::from_be_bytes(ts.try_into().ok()?);
        Some(L2Value {
            body: Bytes::copy_from_slice(body),
            fetched_wall: UNIX_EPOCH + Duration::from_millis(ms),
        })
    }

    /// Stores `body` fetched at `fetched_wall`, kept in Redis for `retain`.
    pub async fn put(
        &self,
        key: &CacheKey,
        account_tag: &str,
        body: &Bytes,
        fetched_wall: SystemTime,
        retain: Duration,
    ) {
        let k = self.key("c", key, account_tag);
        let ms = fetched_wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut value = Vec::with_capacity(8 + body.len());
        value.extend_from_slice(&ms.to_be_bytes());
        value.extend_from_slice(body);
        let px = retain.as_millis().max(1) as u64;
        let _: Option<()> = self
            .call("l2_put", |mut c| async move {
                redis::cmd("SET")
                    .arg(k)
                    .arg(value)
                    .arg("PX")
                    .arg(px)
                    .query_async(&mut c)
                    .await
            })
            .await;
    }

    /// Deletes the L2 copies of one account (`Some(tag)`) or of all accounts. Returns how many
    /// keys were removed, `None` if Redis was unavailable. SCAN-based: never blocks Redis.
    pub async fn purge(&self, account_tag: Option<&str>) -> Option<u64> {
        let pattern = match account_tag {
            Some(tag) => format!("{}c:{tag}:*", self.prefix),
            None => format!("{}c:*", self.prefix),
        };
        let mut cursor: u64 = 0;
        let mut removed = 0u64;
        // Bounded: a SCAN over the keyspace ends when the cursor returns to 0; the cap only
        // guards against a server that never does.
        for _ in 0..100_000 {
            let p = pattern.clone();
            let (next, keys): (u64, Vec<String>) = self
                .call("purge", |mut c| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(p)
                        .arg("COUNT")
                        .arg(500)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if !keys.is_empty() {
                let n: u64 = self
                    .call("purge", |mut c| async move {
                        redis::cmd("UNLINK").arg(keys).query_async(&mut c).await
                    })
                    .await?;
                removed += n;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Some(removed)
    }

    /// Tries to take the fill lock for `key` for `ttl`.
    pub async fn lock(&self, key: &CacheKey, account_tag: &str, ttl: Duration) -> Lock {
        let k = self.key("l", key, account_tag);
        let token = format!("{:032x}", rand::random::<u128>());
        let t = token.clone();
        let px = ttl.as_millis().max(1) as u64;
        let got: Option<Option<String>> = self
            .call("lock", |mut c| async move {
                redis::cmd("SET")
                    .arg(k)
                    .arg(t)
                    .arg("NX")
                    .arg("PX")
                    .arg(px)
                    .query_async(&mut c)
                    .await
            })
            .await;
        match got {
            None => Lock::Unavailable,
            Some(Some(_)) => Lock::Acquired(token),
            Some(None) => Lock::Held,
        }
    }

    /// Whether someone holds the fill lock for `key` (`None`: Redis unavailable).
    pub async fn lock_held(&self, key: &CacheKey, account_tag: &str) -> Option<bool> {
        let k = self.key("l", key, account_tag);
        self.call("lock_check", |mut c| async move {
            redis::cmd("EXISTS")
                .arg(k)
                .query_async::<bool>(&mut c)
                .await
        })
        .await
    }

    /// Releases the fill lock if we still hold it.
    pub async fn unlock(&self, key: &CacheKey, account_tag: &str, token: &str) {
        let k = self.key("l", key, account_tag);
        let script = self.unlock.clone();
        let token = token.to_string();
        let _: Option<i64> = self
            .call("unlock", |mut c| async move {
                script.key(k).arg(token).invoke_async(&mut c).await
            })
            .await;
    }

    /// One GCRA decision for `client` shared by all replicas; `None` when Redis is unavailable
    /// (the caller then uses its local limiter).
    pub async fn rate_limit(
        &self,
        client: &str,
        rate: Rate,
        burst: u32,
    ) -> Option<Result<RateLimitInfo, (RateLimitInfo, Duration)>> {
        let k = format!("{}r:{}", self.prefix, tag(client.as_bytes()));
        let script = self.gcra.clone();
        let (count, per) = (rate.count.get(), rate.per.as_secs_f64());
        let (allowed, remaining, retry, reset): (i64, i64, String, String) = self
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
        let secs = |s: &str| {
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(Duration::from_secs_f64)
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
}

/// The tag that names an account in Redis keys: a hash of its name and of a fingerprint of its
/// key, so replicas only share entries when they call Gcore with the same key.
pub fn account_tag(account: &Account) -> String {
    let fingerprint = Sha256::digest(account.api_key.expose_secret().as_bytes());
    let mut h = Sha256::new();
    h.update(b"gcore-gateway/account\0");
    h.update(account.name.as_bytes());
    h.update(b"\0");
    h.update(fingerprint);
    hex::encode(&h.finalize()[..12])
}

fn tag(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..12])
}

/// A Redis error without anything that could carry the password (URLs are never echoed).
fn redacted(e: &redis::RedisError) -> String {
    format!("{:?}: {}", e.kind(), e.category())
}
