//! Prometheus metrics (prometheus-client, no global recorder).
//!
//! Every label value comes from the config (client, account, route names) or from a fixed set
//! of words (cache status, outcome), never from request input, so cardinality is bounded by
//! the config. Encoding happens only on scrape (`/metrics` on the admin listener). Nothing
//! here holds or prints a secret.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of `gateway_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Client name (or `anonymous`).
    pub client: Arc<str>,
    /// Route path (or `other`).
    pub route: Arc<str>,
    /// HTTP status.
    pub status: u16,
    /// `[cache]`.
    pub cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub account: Arc<str>,
    pub route: Arc<str>,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabel {
    pub account: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabel {
    pub client: Arc<str>,
}

/// Labels of `gateway_client_key_expiry_timestamp_seconds`: the client and the key's label (its
/// id, or `sha256:` + 8 hex digits; never the key).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    pub client: Arc<str>,
    pub key: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BuildLabels {
    pub version: &'static str,
}

/// Buckets from 50 µs to ~26 s (×2 each): sub-millisecond hits and multi-second upstream calls
/// both land in informative buckets.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 20)
}

/// Stripes of a [`StripedHistogram`]: threads beyond this many share stripes.
const STRIPES: usize = 8;
/// Bounds of a [`StripedHistogram`] at most (the +Inf bucket is one more).
const MAX_BOUNDS: usize = 24;

/// A classic histogram for a value observed on every request, from every core. prometheus-
/// client's `Histogram` takes a mutex per observation, so two cores serving requests pass its
/// cache line back and forth; here each thread observes into its own stripe (plain atomic
/// adds on a line no other core writes) and a scrape sums the stripes. Durations are counted
/// in whole nanoseconds, so the sum is exact. Exported exactly like `Histogram`; clones share
/// the counts.
#[derive(Debug, Clone)]
pub struct StripedHistogram(Arc<Striped>);

#[derive(Debug)]
struct Striped {
    /// Upper bounds in nanoseconds (inclusive, as Prometheus' `le`), and as exported.
    bounds_ns: Vec<u64>,
    bounds: Vec<f64>,
    stripes: Box<[Stripe]>,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe {
    sum_ns: std::sync::atomic::AtomicU64,
    /// Per bucket (not cumulative); the last is +Inf.
    buckets: [std::sync::atomic::AtomicU64; MAX_BOUNDS + 1],
}

impl StripedHistogram {
    /// A histogram with these upper bounds in seconds (ascending; non-finite ones and any
    /// beyond the first [`MAX_BOUNDS`] are dropped).
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> StripedHistogram {
        let bounds: Vec<f64> = bounds
            .into_iter()
            .filter(|b| b.is_finite() && *b >= 0.0)
            .take(MAX_BOUNDS)
            .collect();
        StripedHistogram(Arc::new(Striped {
            bounds_ns: bounds.iter().map(|b| (b * 1e9).round() as u64).collect(),
            bounds,
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
        }))
    }

    /// Counts one observation of `d`.
    pub fn observe(&self, d: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        thread_local! {
            static STRIPE: usize = {
                static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                NEXT.fetch_add(1, Relaxed) % STRIPES
            };
        }
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let h = &*self.0;
        let stripe = &h.stripes[STRIPE.with(|s| *s)];
        let bucket = h
            .bounds_ns
            .iter()
            .position(|b| ns <= *b)
            .unwrap_or(h.bounds_ns.len());
        stripe.buckets[bucket].fetch_add(1, Relaxed);
        stripe.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Sum in seconds, count, and (upper bound, count) per bucket, +Inf last.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        use std::sync::atomic::Ordering::Relaxed;
        let h = &*self.0;
        let mut buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .map(|b| (b, 0))
            .collect();
        let mut sum_ns = 0u128;
        for s in h.stripes.iter() {
            for (i, b) in buckets.iter_mut().enumerate() {
                b.1 += s.buckets[i].load(Relaxed);
            }
            sum_ns += u128::from(s.sum_ns.load(Relaxed));
        }
        // The count is the buckets' total, so `_count` always equals the +Inf bucket.
        let count = buckets.iter().map(|b| b.1).sum::<u64>();
        (sum_ns as f64 / 1e9, count, buckets)
    }
}

impl prometheus_client::metrics::TypedMetric for StripedHistogram {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for StripedHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        <Self as prometheus_client::metrics::TypedMetric>::TYPE
    }
}

/// Access log lines dropped because the sink was slower than the traffic: one per process
/// (the log writer is), registered in every [`Metrics`].
pub(crate) static LOG_DROPPED: std::sync::LazyLock<Counter> =
    std::sync::LazyLock::new(Counter::default);

/// All metrics of the process.
pub struct Metrics {
    registry: Registry,
    /// `gateway_requests_total`.
    pub requests: Family<RequestLabels, Counter>,
    /// `gateway_upstream_requests_total`.
    pub upstream_requests: Family<UpstreamLabels, Counter>,
    /// `gateway_upstream_request_duration_seconds`.
    pub upstream_duration: Family<AccountLabel, Histogram>,
    /// `gateway_request_duration_seconds` (observed on every request: striped, see
    /// [`StripedHistogram`]).
    pub request_duration: StripedHistogram,
    /// `gateway_cache_entries`.
    pub cache_entries: Gauge,
    /// `gateway_cache_weighted_bytes`.
    pub cache_bytes: Gauge,
    /// `gateway_rate_limited_total`.
    pub rate_limited: Family<ClientLabel, Counter>,
    /// `gateway_coalesced_requests_total`.
    pub coalesced: Counter,
    /// `gateway_stale_served_total`.
    pub stale_served: Family<ReasonLabel, Counter>,
    /// `gateway_auth_failures_total`.
    pub auth_failures: Counter,
    /// `gateway_auth_throttled_total`.
    pub auth_throttled: Counter,
    /// `gateway_circuit_open`.
    pub breaker_open: Family<AccountLabel, Gauge>,
    /// `gateway_config_reloads_total`.
    pub config_reloads: Family<ResultLabel, Counter>,
    /// `gateway_upstream_budget_exhausted_total`.
    pub upstream_budget_exhausted: Counter,
    /// `gateway_open_connections`.
    pub connections: Gauge,
    /// `gateway_redis_up`.
    pub redis_up: Gauge,
    /// `gateway_redis_fallback_total`.
    pub redis_fallback: Family<OpLabel, Counter>,
    /// `gateway_l2_hits_total`.
    pub l2_hits: Counter,
    /// `gateway_l2_rejected_total`.
    pub l2_rejected: Counter,
    /// `gateway_client_key_expiry_timestamp_seconds`: set from the config at load and reload.
    pub client_key_expiry: Family<KeyLabels, Gauge>,
    /// `gateway_account_key_expiry_timestamp_seconds`: set from the config at load and reload.
    pub account_key_expiry: Family<AccountLabel, Gauge>,
    /// `gateway_upstream_calls_caused_total`.
    pub upstream_calls_caused: Family<ClientLabel, Counter>,
    /// `gateway_upstream_calls_avoided_total`.
    pub upstream_calls_avoided: Family<ClientLabel, Counter>,
    /// `gateway_upstream_new_fields_total`.
    pub upstream_new_fields: Family<RouteLabel, Counter>,
    /// `gateway_tls_cert_expiry_timestamp_seconds` (registered by [`Metrics::with_tls`]).
    pub tls_cert_expiry: Gauge,
    /// `gateway_tls_handshake_failures_total{reason}` (registered by [`Metrics::with_tls`]).
    pub tls_handshake_failures: Family<ReasonLabel, Counter>,
    /// `gateway_trace_spans_dropped_total`.
    pub trace_spans_dropped: Family<ReasonLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A new one.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "gateway_requests",
            "Caller requests answered, by client, route, status and cache status",
            requests.clone(),
        );
        let upstream_requests = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "gateway_upstream_requests",
            "Upstream fetches, by account, route and outcome",
            upstream_requests.clone(),
        );
        let upstream_duration = Family::<AccountLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "gateway_upstream_request_duration_seconds",
            "Duration of upstream fetches including retries",
            upstream_duration.clone(),
        );
        let request_duration = StripedHistogram::new(latency_buckets());
        registry.register(
            "gateway_request_duration_seconds",
            "Time to answer a caller request",
            request_duration.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "gateway_cache_entries",
            "Entries in the cache",
            cache_entries.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "gateway_cache_weighted_bytes",
            "Weighted size of the cache (bodies and renders) in bytes",
            cache_bytes.clone(),
        );
        let rate_limited = Family::<ClientLabel, Counter>::default();
        registry.register(
            "gateway_rate_limited",
            "Requests refused with 429 because the client was over its rate",
            rate_limited.clone(),
        );
        let coalesced = Counter::default();
        registry.register(
            "gateway_coalesced_requests",
            "Requests that waited for an upstream fetch started by another request",
            coalesced.clone(),
        );
        let stale_served = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "gateway_stale_served",
            "Answers served from a stale copy, by reason (revalidate, error)",
            stale_served.clone(),
        );
        let auth_failures = Counter::default();
        registry.register(
            "gateway_auth_failures",
            "Requests with a missing or unknown key",
            auth_failures.clone(),
        );
        let auth_throttled = Counter::default();
        registry.register(
            "gateway_auth_throttled",
            "Requests refused because their source IP failed authentication too often",
            auth_throttled.clone(),
        );
        let breaker_open = Family::<AccountLabel, Gauge>::default();
        registry.register(
            "gateway_circuit_open",
            "1 while the account's circuit breaker is open",
            breaker_open.clone(),
        );
        let config_reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "gateway_config_reloads",
            "Config reloads, by result (ok, failed)",
            config_reloads.clone(),
        );
        let upstream_budget_exhausted = Counter::default();
        registry.register(
            "gateway_upstream_budget_exhausted",
            "Upstream calls not made because upstream.rate was exhausted",
            upstream_budget_exhausted.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "gateway_open_connections",
            "Open caller connections",
            connections.clone(),
        );
        let redis_up = Gauge::default();
        registry.register(
            "gateway_redis_up",
            "1 while Redis answers (shared mode), 0 while the replica runs on its own",
            redis_up.clone(),
        );
        let redis_fallback = Family::<OpLabel, Counter>::default();
        registry.register(
            "gateway_redis_fallback",
            "Redis operations that failed or were skipped, answered locally instead",
            redis_fallback.clone(),
        );
        let l2_hits = Counter::default();
        registry.register(
            "gateway_l2_hits",
            "Fills answered from the shared Redis cache instead of the upstream",
            l2_hits.clone(),
        );
        let l2_rejected = Counter::default();
        registry.register(
            "gateway_l2_rejected",
            "Shared cache values ignored because they were not intact (HMAC) or not JSON",
            l2_rejected.clone(),
        );
        let client_key_expiry = Family::<KeyLabels, Gauge>::default();
        registry.register(
            "gateway_client_key_expiry_timestamp_seconds",
            "When a team key stops working (Unix seconds), for keys with an expiry date",
            client_key_expiry.clone(),
        );
        let account_key_expiry = Family::<AccountLabel, Gauge>::default();
        registry.register(
            "gateway_account_key_expiry_timestamp_seconds",
            "When an account's Gcore key expires (Unix seconds), where accounts.expires is set",
            account_key_expiry.clone(),
        );
        let upstream_calls_caused = Family::<ClientLabel, Counter>::default();
        registry.register(
            "gateway_upstream_calls_caused",
            "Upstream HTTP calls (retries included) made by fetches this client's requests started",
            upstream_calls_caused.clone(),
        );
        let upstream_calls_avoided = Family::<ClientLabel, Counter>::default();
        registry.register(
            "gateway_upstream_calls_avoided",
            "This client's requests answered without an upstream call of their own (hits, stale, coalesced waiters, other replicas' fetches)",
            upstream_calls_avoided.clone(),
        );
        let upstream_new_fields = Family::<RouteLabel, Counter>::default();
        registry.register(
            "gateway_upstream_new_fields",
            "Upstream answers with field paths outside the route's baseline (shape drift), by route",
            upstream_new_fields.clone(),
        );
        registry.register(
            "gateway_log_dropped",
            "Access log lines dropped because the log sink was slower than the traffic",
            LOG_DROPPED.clone(),
        );
        let trace_spans_dropped = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "gateway_trace_spans_dropped",
            "Trace spans not exported, by reason (queue_full: the collector is slower than the traffic; export_failed)",
            trace_spans_dropped.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("gateway_build_info", "Build information", build);
        Self {
            registry,
            requests,
            upstream_requests,
            upstream_duration,
            request_duration,
            cache_entries,
            cache_bytes,
            rate_limited,
            coalesced,
            stale_served,
            auth_failures,
            auth_throttled,
            breaker_open,
            config_reloads,
            upstream_budget_exhausted,
            connections,
            redis_up,
            redis_fallback,
            l2_hits,
            l2_rejected,
            client_key_expiry,
            account_key_expiry,
            upstream_calls_caused,
            upstream_calls_avoided,
            upstream_new_fields,
            tls_cert_expiry: Gauge::default(),
            tls_handshake_failures: Family::default(),
            trace_spans_dropped,
        }
    }

    /// Registers the caller-port TLS metrics. Only a gateway serving TLS exports them (TLS
    /// cannot be turned on or off by a reload), so an expiry alert never sees a 0 from a
    /// plain-HTTP gateway.
    pub fn with_tls(mut self) -> Self {
        self.registry.register(
            "gateway_tls_cert_expiry_timestamp_seconds",
            "When the caller port's TLS certificate expires (Unix seconds)",
            self.tls_cert_expiry.clone(),
        );
        self.registry.register(
            "gateway_tls_handshake_failures",
            "Caller TLS handshakes that failed, by reason (error: protocol or client certificate; timeout: header_read_timeout)",
            self.tls_handshake_failures.clone(),
        );
        self
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn text(register: impl FnOnce(&mut Registry)) -> String {
        let mut registry = Registry::default();
        register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn a_striped_histogram_exports_what_a_histogram_would() {
        let striped = StripedHistogram::new(latency_buckets());
        let plain = Histogram::new(latency_buckets());
        // Bucket edges, values between them, zero and beyond the last bound; from 4 threads.
        let values: Vec<Duration> = [0u64, 1, 49_999, 50_000, 50_001, 100_000, 123_456, 7_000_000]
            .into_iter()
            .map(Duration::from_nanos)
            .chain([Duration::from_secs(100), Duration::from_millis(3)])
            .collect();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for v in &values {
                        striped.observe(*v);
                    }
                });
            }
        });
        for _ in 0..4 {
            for v in &values {
                plain.observe(v.as_secs_f64());
            }
        }
        let a = text(|r| r.register("d", "h", striped.clone()));
        let b = text(|r| r.register("d", "h", plain.clone()));
        let sum = |t: &str| -> f64 {
            t.lines()
                .find_map(|l| l.strip_prefix("d_sum "))
                .unwrap()
                .parse()
                .unwrap()
        };
        assert!((sum(&a) - sum(&b)).abs() < 1e-9, "{a}\n{b}");
        let without_sum = |t: &str| {
            t.lines()
                .filter(|l| !l.starts_with("d_sum "))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(without_sum(&a), without_sum(&b));
        assert!(a.contains("d_bucket{le=\"0.0001\"} 24\n"), "{a}");
        assert!(a.contains("d_count 40\n"), "{a}");
    }
}
