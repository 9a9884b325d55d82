//! OpenTelemetry traces: one server span per caller request, one span per cache fill and one
//! client span per upstream attempt, exported over OTLP/HTTP (`[tracing]`).
//!
//! Built once per process from [`TracingSettings`] when `[tracing]` names an `otlp_endpoint`;
//! otherwise nothing here exists and the handler pays one branch on an `Option`. The spans are
//! made with the OpenTelemetry API directly (no `tracing` bridge on the hot path) and carry
//! only config names and fixed words: client, route, status, cache status, attempt outcome —
//! never a key, a header value other than the request id, or a body. An incoming W3C
//! `traceparent`/`tracestate` becomes the parent of the server span; nothing is propagated to
//! the upstream (its request is built from scratch in `upstream`). A request that waited on
//! another request's fetch carries a link to that fetch's fill span: the single-flight hands
//! waiters the leader's span context, and the cross-replica fill lock in Redis carries the
//! holder's `traceparent`. Export is batched and bounded ([`export`]): a slow or dead collector
//! costs dropped spans (counted in `gateway_trace_spans_dropped_total`), never request latency
//! or memory. What is cached and fetched is `cache`'s and `proxy::miss`'s; the access log's
//! `trace_id` is written by `proxy::access_log`.

mod export;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span};
use opentelemetry_sdk::Resource;

use crate::metrics::Metrics;
use crate::upstream::UpstreamFailure;

/// The OTLP/HTTP encodings (`tracing.otlp_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf` (the default).
    HttpProtobuf,
    /// `http/json`.
    HttpJson,
}

impl OtlpProtocol {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::HttpProtobuf => "http/protobuf",
            OtlpProtocol::HttpJson => "http/json",
        }
    }
}

/// `[tracing]`, validated; restart-only as a whole.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// Where batches are POSTed: `otlp_endpoint` + `/v1/traces` (unless it ends so already).
    pub traces_url: String,
    /// The encoding of the batches.
    pub protocol: OtlpProtocol,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Share of root requests (no sampled parent) that are recorded, 0..=1.
    pub sample_ratio: f64,
}

/// What a fill's starter leaves in the single-flight for those who join: the fill's span
/// context to link to (`None` when the fill is not recorded or tracing is off).
pub(crate) type FillLink = Option<SpanContext>;

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The exporter needs the async runtime to run its HTTP calls on.
    #[error("tracing needs a running tokio runtime")]
    NoRuntime,
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

/// The process's tracer and exporter.
pub(crate) struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    /// `sample_ratio > 0`: whether a request without a `traceparent` can be recorded at all.
    roots: bool,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

/// How long [`Telemetry::shutdown`] may take to export what is queued.
const SHUTDOWN_EXPORT: Duration = Duration::from_secs(2);

impl Telemetry {
    /// Builds the exporter, the batch processor and the tracer. Must be called inside the
    /// tokio runtime the exporter will send on.
    pub(crate) fn start(
        settings: &TracingSettings,
        metrics: &Metrics,
    ) -> Result<Telemetry, TelemetryError> {
        let processor = export::processor(settings, metrics)?;
        let ratio = Sampler::TraceIdRatioBased(settings.sample_ratio);
        let resource = Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            // A caller's sampled (or unsampled) traceparent decides; the ratio applies to roots.
            .with_sampler(Sampler::ParentBased(Box::new(ratio)))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("gcore-gateway");
        Ok(Telemetry {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
            roots: settings.sample_ratio > 0.0,
        })
    }

    /// Starts the server span of one caller request, child of its W3C `traceparent` if any.
    /// `None` when it could never be recorded (`sample_ratio = 0` and no `traceparent`): such
    /// a request costs a header lookup, not a span.
    pub(crate) fn server_span(&self, headers: &http::HeaderMap) -> Option<ServerSpan> {
        const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
        if !self.roots && !headers.contains_key(&TRACEPARENT) {
            return None;
        }
        let parent = self
            .propagator
            .extract(&opentelemetry_http::HeaderExtractor(headers));
        let span = self
            .tracer
            .span_builder("request")
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        Some(ServerSpan { span })
    }

    /// Starts the span of a cache fill (the fetch others may wait on), child of `parent` (the
    /// server span of the request that started it).
    pub(crate) fn fill_span(&self, parent: &SpanContext, route: &Arc<str>) -> FillSpan {
        let cx = Context::new().with_remote_span_context(parent.clone());
        let mut span = self
            .tracer
            .span_builder("cache fill")
            .with_kind(SpanKind::Internal)
            .start_with_context(&self.tracer, &cx);
        if span.is_recording() {
            span.set_attribute(KeyValue::new("http.route", route.clone()));
        }
        FillSpan {
            span,
            tracer: self.tracer.clone(),
            propagator: self.propagator.clone(),
        }
    }

    /// Exports what is queued and stops the exporter (bounded by [`SHUTDOWN_EXPORT`]).
    pub(crate) async fn shutdown(&self) {
        let provider = self.provider.clone();
        // The batch processor blocks while it exports, and the export runs on this runtime.
        let _ =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_EXPORT))
                .await;
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        // Dropping the last provider handle shuts the processor down, which waits for a final
        // export that runs on the async runtime: never wait for it on a runtime thread.
        let provider = self.provider.clone();
        let _ = std::thread::Builder::new()
            .name("otel-shutdown".into())
            .spawn(move || provider.shutdown_with_timeout(SHUTDOWN_EXPORT));
    }
}

/// What the server span says once the request is answered.
pub(crate) struct Finished<'a> {
    pub(crate) method: &'static str,
    pub(crate) route: Option<&'a Arc<str>>,
    pub(crate) client: Option<&'a Arc<str>>,
    pub(crate) status: u16,
    pub(crate) cache: &'static str,
    pub(crate) request_id: &'a str,
    pub(crate) client_ip: IpAddr,
}

/// The span of one caller request.
pub(crate) struct ServerSpan {
    span: Span,
}

impl ServerSpan {
    /// Its context: the parent of the fill it may start.
    pub(crate) fn context(&self) -> &SpanContext {
        self.span.span_context()
    }

    /// The trace id for the access log (also when not sampled: a caller's trace id still
    /// cross-references its own traces).
    pub(crate) fn trace_id(&self) -> Option<u128> {
        let cx = self.span.span_context();
        cx.is_valid()
            .then(|| u128::from_be_bytes(cx.trace_id().to_bytes()))
    }

    /// Records that this request waited on the fill whose span is `fill` (coalesced).
    pub(crate) fn waited_on(&mut self, fill: &SpanContext) {
        if self.span.is_recording() {
            self.span.add_link(
                fill.clone(),
                vec![KeyValue::new("gateway.link", "coalesced")],
            );
        }
    }

    /// Names the span after its route, records the outcome and ends it.
    pub(crate) fn finish(mut self, f: &Finished<'_>) {
        if !self.span.is_recording() {
            return;
        }
        let method = if f.method == "OTHER" {
            "_OTHER"
        } else {
            f.method
        };
        let mut attrs = Vec::with_capacity(8);
        attrs.push(KeyValue::new("http.request.method", method));
        attrs.push(KeyValue::new(
            "http.response.status_code",
            i64::from(f.status),
        ));
        attrs.push(KeyValue::new("gateway.cache", f.cache));
        attrs.push(KeyValue::new(
            "gateway.request_id",
            f.request_id.to_string(),
        ));
        attrs.push(KeyValue::new("client.address", f.client_ip.to_string()));
        if let Some(c) = f.client {
            attrs.push(KeyValue::new("gateway.client", c.clone()));
        }
        match f.route {
            Some(r) => {
                self.span.update_name(format!("{method} {r}"));
                attrs.push(KeyValue::new("http.route", r.clone()));
            }
            None => self.span.update_name(method),
        }
        self.span.set_attributes(attrs);
        if f.status >= 500 {
            self.span.set_status(Status::error(status_word(f.status)));
        }
        self.span.end();
    }
}

/// A fixed description for a 5xx server span (never upstream text).
fn status_word(status: u16) -> &'static str {
    match status {
        502 => "upstream_error",
        503 => "upstream_unavailable",
        504 => "upstream_timeout",
        _ => "internal",
    }
}

/// The span of one cache fill, and the parent of its upstream attempts.
pub(crate) struct FillSpan {
    span: Span,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl FillSpan {
    /// Whether this fill is recorded (sampled): otherwise links and attempts are not made.
    pub(crate) fn recording(&self) -> bool {
        self.span.is_recording()
    }

    /// What waiters link to: `Some` only when this fill is recorded.
    pub(crate) fn link_target(&self) -> Option<SpanContext> {
        let cx = self.span.span_context();
        cx.is_sampled().then(|| cx.clone())
    }

    /// This fill as a W3C `traceparent`, for other replicas waiting on its lock.
    pub(crate) fn traceparent(&self) -> Option<String> {
        let target = self.link_target()?;
        let mut carrier = HashMap::new();
        self.propagator.inject_context(
            &Context::new().with_remote_span_context(target),
            &mut carrier,
        );
        carrier.remove("traceparent")
    }

    /// Records that this fill waited on another replica's fill, given as its `traceparent`.
    pub(crate) fn waited_on_replica(&mut self, traceparent: &str) {
        if !self.span.is_recording() {
            return;
        }
        let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
        let cx = self.propagator.extract(&carrier);
        let holder = cx.span().span_context().clone();
        if holder.is_valid() {
            self.span
                .add_link(holder, vec![KeyValue::new("gateway.link", "replica_lock")]);
        }
    }

    /// Records one upstream attempt that just ended after `took` (its span is written after
    /// the fact, with its real start time).
    pub(crate) fn attempt(
        &self,
        number: u32,
        result: Result<(), &UpstreamFailure>,
        took: Duration,
        route: &Arc<str>,
    ) {
        if !self.span.is_recording() {
            return;
        }
        let end = SystemTime::now();
        let cx = Context::new().with_remote_span_context(self.span.span_context().clone());
        let mut span = self
            .tracer
            .span_builder("GET")
            .with_kind(SpanKind::Client)
            .with_start_time(end.checked_sub(took).unwrap_or(end))
            .start_with_context(&self.tracer, &cx);
        let mut attrs = vec![
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("url.template", route.clone()),
            KeyValue::new("gateway.upstream.attempt", i64::from(number)),
            KeyValue::new("gateway.upstream.duration_ms", took.as_secs_f64() * 1000.0),
        ];
        if number > 1 {
            attrs.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(number - 1),
            ));
        }
        let outcome = match result {
            Ok(()) => {
                attrs.push(KeyValue::new("http.response.status_code", 200_i64));
                "ok"
            }
            Err(f) => {
                if let Some(s) = f.status() {
                    attrs.push(KeyValue::new("http.response.status_code", i64::from(s)));
                }
                attrs.push(KeyValue::new("error.type", f.outcome()));
                span.set_status(Status::error(f.outcome()));
                f.outcome()
            }
        };
        attrs.push(KeyValue::new("gateway.upstream.outcome", outcome));
        span.set_attributes(attrs);
        span.end_with_timestamp(end);
    }

    /// Ends the fill with its outcome: `ok`, `shared` (another replica's copy) or a failure.
    pub(crate) fn end(mut self, outcome: &'static str) {
        if self.span.is_recording() {
            self.span
                .set_attribute(KeyValue::new("gateway.fill.outcome", outcome));
            if !matches!(outcome, "ok" | "shared" | "cached") {
                self.span.set_status(Status::error(outcome));
            }
        }
        self.span.end();
    }
}
