//! The Redis connection that replicas share through, its up/down window, and the operations
//! the gateway runs on it: L2 values, the cross-replica fill lock, purges and scripts.
//!
//! Optional (`[redis]`). Every Redis call has a short timeout; on any trouble the caller falls
//! back to the replica's own L1 cache, single-flight and local limiter, so Redis never fails a
//! request. State changes (down/up) are logged once and exposed as `gateway_redis_up`; each
//! fallback is counted. Key names carry a hash of the account (its name and a fingerprint of
//! its key), never the upstream key itself. What the values mean is elsewhere: the L2 format
//! in `cache::l2`, the order of a miss in `proxy::miss`, the shared GCRA in
//! `rate_limit::distributed`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{ConnectionAddr, IntoConnectionInfo, TlsCertificates, TlsMode};
use secrecy::ExposeSecret;

use crate::cache::CacheKey;
use crate::config::RedisSettings;
use crate::metrics::{Metrics, OpLabel};

/// After a failed call, Redis is not asked again for this long (fail fast while it is down).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Interval at which a replica waiting for another replica's fill polls the L2.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(20);

/// Deletes the lock only if we still hold it.
const UNLOCK: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
"#;

/// Bumps the purge generation and tells every replica: `KEYS[1]` the generation, `KEYS[2]` the
/// channel, `ARGV[1]` who purged, `ARGV[2]` the scope (`*` or an account name).
const ANNOUNCE_PURGE: &str = r#"
local g = redis.call("INCR", KEYS[1])
redis.call("PUBLISH", KEYS[2], g .. " " .. ARGV[1] .. " " .. ARGV[2])
return g
"#;

/// The longest pause a value read back from Redis may impose (a corrupt or forged TTL never
/// stops an account for longer).
const MAX_SHARED_PAUSE: Duration = Duration::from_secs(3600);

/// How often a replica compares the purge generation with the one it last saw (catches a
/// purge published while its subscription was down), and how soon it resubscribes.
const PURGE_CHECK_EVERY: Duration = Duration::from_millis(500);

/// Outcome of asking for the cross-replica fill lock.
#[derive(Debug)]
pub(crate) enum Lock {
    /// We hold it; release with [`Redis::unlock`].
    Acquired(String),
    /// Another replica is filling.
    Held,
    /// Redis is unavailable: fill locally.
    Unavailable,
}

/// The Redis connection(s) and the up/down state.
pub struct Redis {
    conns: ArcSwapOption<Vec<ConnectionManager>>,
    next: AtomicUsize,
    prefix: String,
    timeout: Duration,
    up: AtomicBool,
    /// Milliseconds since `epoch` before which Redis is not asked (after a failure).
    retry_at_ms: AtomicU64,
    epoch: tokio::time::Instant,
    unlock: redis::Script,
    announce: redis::Script,
    /// The client of the current primary, for the purge subscription (its own connection).
    client: ArcSwapOption<redis::Client>,
    /// This process, in purge announcements (it skips its own).
    replica_id: String,
    /// The purge generation this replica has applied (`u64::MAX`: not read yet).
    purge_seen: AtomicU64,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Starts connecting in the background (the gateway serves meanwhile, locally).
    pub fn start(
        settings: &RedisSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Redis>, redis::RedisError> {
        let source = Source::new(settings)?;
        let shared = Arc::new(Redis {
            conns: ArcSwapOption::empty(),
            next: AtomicUsize::new(0),
            prefix: settings.key_prefix.clone(),
            timeout: settings.timeout,
            up: AtomicBool::new(false),
            retry_at_ms: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
            unlock: redis::Script::new(UNLOCK),
            announce: redis::Script::new(ANNOUNCE_PURGE),
            client: ArcSwapOption::empty(),
            replica_id: format!("{:016x}", rand::random::<u64>()),
            purge_seen: AtomicU64::new(u64::MAX),
            metrics,
        });
        shared.metrics.redis_up.set(0);
        let pool = settings.pool_size.max(1) as usize;
        tokio::spawn(connect(
            Arc::downgrade(&shared),
            source,
            pool,
            settings.timeout,
        ));
        Ok(shared)
    }

    /// Whether the last Redis call succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn conn(&self, patient: bool) -> Option<ConnectionManager> {
        let now = self.epoch.elapsed().as_millis() as u64;
        if !patient && now < self.retry_at_ms.load(Ordering::Acquire) {
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
    /// While Redis is marked down it is not asked at all (the request path fails fast).
    pub(crate) async fn call<T, F>(
        &self,
        op: &'static str,
        f: impl FnOnce(ConnectionManager) -> F,
    ) -> Option<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.call_with(op, false, f).await
    }

    /// For rare operations an operator waits for (purges): asks Redis even while it is marked
    /// down, and once more after a short pause if the first try fails (a connection broken by
    /// a Redis restart is re-established in between).
    async fn call_patiently<T, F>(
        &self,
        op: &'static str,
        f: impl Fn(ConnectionManager) -> F,
    ) -> Option<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if let Some(v) = self.call_with(op, true, &f).await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        self.call_with(op, true, &f).await
    }

    async fn call_with<T, F>(
        &self,
        op: &'static str,
        patient: bool,
        f: impl FnOnce(ConnectionManager) -> F,
    ) -> Option<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let result = match self.conn(patient) {
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

    /// The name of the Redis key of `kind` (`c` answer, `l` lock) for `key`.
    pub fn key(&self, kind: &str, key: &CacheKey, account_tag: &str) -> String {
        let mut k = format!("{}{kind}:{account_tag}:{}", self.prefix, key.route());
        if let Some(q) = key.query() {
            k.push('?');
            k.push_str(q);
        }
        k
    }

    /// The raw value stored under `name`, if any.
    pub async fn get(&self, name: String) -> Option<Vec<u8>> {
        self.call("l2_get", |mut c| async move {
            redis::cmd("GET")
                .arg(name)
                .query_async::<Option<Vec<u8>>>(&mut c)
                .await
        })
        .await?
    }

    /// Stores `value` under `name` for `retain`.
    pub async fn put(&self, name: String, value: Vec<u8>, retain: Duration) {
        let px = retain.as_millis().max(1) as u64;
        let _: Option<()> = self
            .call("l2_put", |mut c| async move {
                redis::cmd("SET")
                    .arg(name)
                    .arg(value)
                    .arg("PX")
                    .arg(px)
                    .query_async(&mut c)
                    .await
            })
            .await;
    }

    /// The prefix of every key name (`redis.key_prefix`).
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Deletes the L2 copies of one account (`Some(tag)`) or of all accounts. Returns how many
    /// keys were removed, `None` if Redis was unavailable. SCAN-based: never blocks Redis.
    pub(crate) async fn purge(&self, account_tag: Option<&str>) -> Option<u64> {
        let pattern = match account_tag {
            Some(tag) => format!("{}c:{tag}:*", self.prefix),
            None => format!("{}c:*", self.prefix),
        };
        let mut cursor: u64 = 0;
        let mut removed = 0u64;
        // Bounded: a SCAN over the keyspace ends when the cursor returns to 0; the cap only
        // guards against a server that never does.
        for _ in 0..100_000 {
            let (next, keys): (u64, Vec<String>) = self
                .call_patiently("purge", |mut c| {
                    let p = pattern.clone();
                    async move {
                        redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(p)
                            .arg("COUNT")
                            .arg(500)
                            .query_async(&mut c)
                            .await
                    }
                })
                .await?;
            if !keys.is_empty() {
                let n: u64 = self
                    .call_patiently("purge", |mut c| {
                        let keys = keys.clone();
                        async move { redis::cmd("UNLINK").arg(keys).query_async(&mut c).await }
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

    /// Tells every replica to drop its local copies (all, or one account's): bumps the purge
    /// generation and publishes it. `None` if Redis was unavailable.
    pub(crate) async fn announce_purge(&self, account: Option<&str>) -> Option<u64> {
        let (gen_key, channel) = self.purge_names();
        let scope = account.unwrap_or("*");
        let g: u64 = self
            .call_patiently("purge_announce", |mut c| {
                let script = self.announce.clone();
                let (gen_key, channel) = (gen_key.clone(), channel.clone());
                let (me, scope) = (self.replica_id.clone(), scope.to_string());
                async move {
                    script
                        .key(gen_key)
                        .key(channel)
                        .arg(me)
                        .arg(scope)
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await?;
        self.purge_seen.store(g, Ordering::Release);
        Some(g)
    }

    fn purge_names(&self) -> (String, String) {
        (
            format!("{}purge:gen", self.prefix),
            format!("{}purge", self.prefix),
        )
    }

    /// Applies other replicas' purges to this one, for as long as `self` lives: `on_purge`
    /// gets `None` (everything) or an account name. Announcements arrive by pub/sub; the
    /// generation is also compared every [`PURGE_CHECK_EVERY`], so a purge published while
    /// this replica was cut off (or a Redis restart, which loses the generation) empties
    /// everything here as soon as Redis answers again.
    pub(crate) fn watch_purges(
        self: &Arc<Self>,
        on_purge: impl Fn(Option<&str>) + Send + Sync + 'static,
    ) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(redis) = weak.upgrade() else { return };
                let client = redis.client.load_full();
                let channel = redis.purge_names().1;
                drop(redis);
                let subscribed = async {
                    let mut ps = client?.get_async_pubsub().await.ok()?;
                    ps.subscribe(&channel).await.ok()?;
                    Some(ps)
                };
                let ps = tokio::time::timeout(Duration::from_secs(2), subscribed)
                    .await
                    .ok()
                    .flatten();
                match ps {
                    Some(ps) => {
                        if !Self::follow(&weak, ps, &on_purge).await {
                            return;
                        }
                        tokio::time::sleep(PURGE_CHECK_EVERY).await;
                    }
                    // Not connected yet: subscribe as soon as the pool is.
                    None => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
    }

    /// Follows one subscription until it breaks (`true`) or the gateway is gone (`false`).
    async fn follow(
        weak: &std::sync::Weak<Self>,
        ps: redis::aio::PubSub,
        on_purge: &(impl Fn(Option<&str>) + Send + Sync),
    ) -> bool {
        use futures_util::StreamExt;
        let mut messages = ps.into_on_message();
        let mut check = tokio::time::interval(PURGE_CHECK_EVERY);
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else { return true };
                    let Some(redis) = weak.upgrade() else { return false };
                    let payload: String = msg.get_payload().unwrap_or_default();
                    let mut parts = payload.splitn(3, ' ');
                    let (Some(g), Some(from), Some(scope)) = (
                        parts.next().and_then(|g| g.parse::<u64>().ok()),
                        parts.next(),
                        parts.next(),
                    ) else {
                        continue;
                    };
                    redis.purge_seen.store(g, Ordering::Release);
                    if from != redis.replica_id {
                        let account = (scope != "*").then_some(scope);
                        tracing::info!(account = account.unwrap_or("*"), "cache purged by another replica");
                        on_purge(account);
                    }
                }
                _ = check.tick() => {
                    let Some(redis) = weak.upgrade() else { return false };
                    redis.catch_up_purges(on_purge).await;
                }
            }
        }
    }

    /// Compares the purge generation with the last one applied; a difference means purges
    /// were missed: everything local is dropped.
    async fn catch_up_purges(&self, on_purge: &(impl Fn(Option<&str>) + Send + Sync)) {
        let gen_key = self.purge_names().0;
        let Some(g) = self
            .call("purge_check", |mut c| async move {
                redis::cmd("GET")
                    .arg(gen_key)
                    .query_async::<Option<u64>>(&mut c)
                    .await
            })
            .await
        else {
            return;
        };
        let g = g.unwrap_or(0);
        let seen = self.purge_seen.swap(g, Ordering::AcqRel);
        if seen != u64::MAX && seen != g {
            tracing::info!("purges were missed while Redis was unreachable; cache purged");
            on_purge(None);
        }
    }

    /// The Redis key of an account's shared pause (its TTL is the time left).
    fn pause_key(&self, account_tag: &str) -> String {
        format!("{}p:{account_tag}", self.prefix)
    }

    /// Pauses `account_tag` on every replica for `pause` (Gcore answered 429).
    pub(crate) async fn pause(&self, account_tag: &str, pause: Duration) {
        let k = self.pause_key(account_tag);
        let px = pause.min(MAX_SHARED_PAUSE).as_millis().max(1) as u64;
        let _: Option<()> = self
            .call("pause", |mut c| async move {
                redis::cmd("SET")
                    .arg(k)
                    .arg(1)
                    .arg("PX")
                    .arg(px)
                    .query_async(&mut c)
                    .await
            })
            .await;
    }

    /// How long `account_tag` is still paused by any replica (`None`: it is not, or Redis is
    /// unavailable). The time left comes from the Redis server's clock.
    pub(crate) async fn paused_for(&self, account_tag: &str) -> Option<Duration> {
        let k = self.pause_key(account_tag);
        let ms: i64 = self
            .call("pause_check", |mut c| async move {
                redis::cmd("PTTL").arg(k).query_async(&mut c).await
            })
            .await?;
        (ms > 0).then(|| Duration::from_millis(ms as u64).min(MAX_SHARED_PAUSE))
    }

    /// Tries to take the fill lock for `key` for `ttl`. The lock's value is a random token,
    /// then `note` if any (the holder's `traceparent`), after a space.
    pub(crate) async fn lock(
        &self,
        key: &CacheKey,
        account_tag: &str,
        ttl: Duration,
        note: Option<&str>,
    ) -> Lock {
        let k = self.key("l", key, account_tag);
        let mut token = format!("{:032x}", rand::random::<u128>());
        if let Some(n) = note {
            token.push(' ');
            token.push_str(n);
        }
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
    pub(crate) async fn lock_held(&self, key: &CacheKey, account_tag: &str) -> Option<bool> {
        let k = self.key("l", key, account_tag);
        self.call("lock_check", |mut c| async move {
            redis::cmd("EXISTS")
                .arg(k)
                .query_async::<bool>(&mut c)
                .await
        })
        .await
    }

    /// The note of whoever holds the fill lock for `key` (see [`Redis::lock`]).
    pub(crate) async fn lock_note(&self, key: &CacheKey, account_tag: &str) -> Option<String> {
        let k = self.key("l", key, account_tag);
        let value: Option<String> = self
            .call("lock_note", |mut c| async move {
                redis::cmd("GET")
                    .arg(k)
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
            .await
            .flatten();
        value?.split_once(' ').map(|(_, note)| note.to_string())
    }

    /// Releases the fill lock if we still hold it.
    pub(crate) async fn unlock(&self, key: &CacheKey, account_tag: &str, token: &str) {
        let k = self.key("l", key, account_tag);
        let script = self.unlock.clone();
        let token = token.to_string();
        let _: Option<i64> = self
            .call("unlock", |mut c| async move {
                script.key(k).arg(token).invoke_async(&mut c).await
            })
            .await;
    }
}

/// Where the primary is: one URL, or whatever the sentinels say now.
enum Source {
    Direct(redis::Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

impl Source {
    fn new(settings: &RedisSettings) -> Result<Source, redis::RedisError> {
        let url = settings.url.0.expose_secret();
        let Some(sentinel) = &settings.sentinel else {
            return Ok(Source::Direct(match &settings.ca_pem {
                None => redis::Client::open(url)?,
                Some(pem) => redis::Client::build_with_tls(
                    url,
                    TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem.clone()),
                    },
                )?,
            }));
        };
        // The URL gives how to talk to the primary (TLS, user, password, db), not where it is.
        let info = url.into_connection_info()?;
        let mut node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(info.redis_settings().clone());
        if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
            node = node.set_tls_mode(TlsMode::Secure);
        }
        let sentinels: Vec<ConnectionAddr> = sentinel
            .addrs
            .iter()
            .map(|(host, port)| ConnectionAddr::Tcp(host.clone(), *port))
            .collect();
        let client = SentinelClient::build(
            sentinels,
            sentinel.master.as_str(),
            Some(node),
            SentinelServerType::Master,
        )?;
        Ok(Source::Sentinel(tokio::sync::Mutex::new(client)))
    }

    /// A client of the primary as of now.
    async fn primary(&self) -> redis::RedisResult<redis::Client> {
        match self {
            Source::Direct(c) => Ok(c.clone()),
            Source::Sentinel(s) => s.lock().await.async_get_client().await,
        }
    }
}

/// Connects the pool (retrying every [`RETRY_AFTER_FAILURE`]) and publishes it. A direct
/// connection then reconnects by itself; behind sentinels, whenever Redis stops answering the
/// primary is asked again (after a failover it is another server) and the pool rebuilt.
async fn connect(weak: std::sync::Weak<Redis>, source: Source, pool: usize, timeout: Duration) {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1);
    let mut logged = false;
    loop {
        let mut conns = Vec::with_capacity(pool);
        let client = source.primary().await;
        if let Ok(client) = &client {
            for _ in 0..pool {
                match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                    Ok(c) => conns.push(c),
                    Err(_) => break,
                }
            }
        }
        let Some(redis) = weak.upgrade() else { return };
        match client {
            Ok(client) if conns.len() == pool => {
                // From here on a moved purge generation means a purge this replica missed.
                let gen_key = redis.purge_names().0;
                let mut c = conns[0].clone();
                let mut get = redis::cmd("GET");
                get.arg(gen_key);
                let read = get.query_async::<Option<u64>>(&mut c);
                if let Ok(Ok(g)) = tokio::time::timeout(timeout, read).await {
                    let _ = redis.purge_seen.compare_exchange(
                        u64::MAX,
                        g.unwrap_or(0),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
                redis.conns.store(Some(Arc::new(conns)));
                redis.client.store(Some(Arc::new(client)));
                redis.mark_up();
                logged = false;
                if let Source::Direct(_) = source {
                    return;
                }
                drop(redis);
                // Behind sentinels: watch for the primary going away.
                loop {
                    tokio::time::sleep(RETRY_AFTER_FAILURE / 2).await;
                    let Some(redis) = weak.upgrade() else { return };
                    if !redis.is_up() {
                        tracing::info!("Redis primary unreachable; asking the sentinels again");
                        break;
                    }
                }
                continue;
            }
            Ok(_) | Err(_) => {
                if !logged {
                    tracing::warn!(
                        "cannot connect to Redis yet; serving from the local cache and limiter"
                    );
                    logged = true;
                }
            }
        }
        drop(redis);
        tokio::time::sleep(RETRY_AFTER_FAILURE).await;
    }
}

/// A Redis error without anything that could carry the password (URLs are never echoed).
fn redacted(e: &redis::RedisError) -> String {
    format!("{:?}: {}", e.kind(), e.category())
}
