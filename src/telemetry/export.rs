//! The span pipeline after a span ends: a counting gate, the SDK's batch processor, and the
//! OTLP/HTTP exporter sending through the gateway's own `reqwest` on the async runtime.
//!
//! The batch processor queues ended spans in a bounded channel and exports them from its own
//! thread; a request never waits on it. It cannot report what it drops, so a gate in front of
//! it counts the spans that are queued or being exported and refuses (and counts) a span beyond
//! [`MAX_QUEUE`]; the SDK channel has the same capacity, so it never drops uncounted. A failed
//! export (collector down, refusing, timing out) counts its spans too. The exporter's HTTP
//! calls run as tasks on the runtime the gateway runs on; the processor's thread only waits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use opentelemetry::Context;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus_client::metrics::counter::Counter;

use super::{OtlpProtocol, TelemetryError, TracingSettings};
use crate::metrics::{Metrics, ReasonLabel};

/// Spans that may wait for export. A span is a few hundred bytes to 1 KiB, so this bounds the
/// queue to about 2 MiB; at 1 export a second it absorbs bursts of 2,000 requests a second.
pub(crate) const MAX_QUEUE: usize = 2048;
/// Spans per OTLP request: the SDK default, well under collectors' 4 MiB request limit.
const MAX_BATCH: usize = 512;
/// How often queued spans are sent: traces appear within a second.
const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// One export (retries included) gives up after this; its spans are then dropped and counted.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// A collector's answer is a few bytes; more is not read.
const MAX_RESPONSE: usize = 64 * 1024;

/// The span processor for `settings`: gate → batch processor → counted OTLP exporter.
pub(super) fn processor(
    settings: &TracingSettings,
    metrics: &Metrics,
) -> Result<impl SpanProcessor, TelemetryError> {
    let rt = tokio::runtime::Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // The collector is named in the config; no environment variable reroutes it.
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .timeout(EXPORT_TIMEOUT)
        .user_agent(concat!("gcore-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(OnRuntime { http, rt })
        .with_protocol(match settings.protocol {
            OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
            OtlpProtocol::HttpJson => Protocol::HttpJson,
        })
        .with_endpoint(settings.traces_url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let queued = Arc::new(AtomicUsize::new(0));
    let dropped = |reason| {
        metrics
            .trace_spans_dropped
            .get_or_create_owned(&ReasonLabel { reason })
    };
    let exporter = Counted {
        inner: exporter,
        queued: queued.clone(),
        failed: dropped("export_failed"),
    };
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(MAX_QUEUE)
        .with_max_export_batch_size(MAX_BATCH)
        .with_scheduled_delay(EXPORT_EVERY)
        .build();
    Ok(Gate {
        inner: BatchSpanProcessor::new(exporter, config),
        queued,
        full: dropped("queue_full"),
    })
}

/// Counts and refuses spans beyond [`MAX_QUEUE`] before the batch processor sees them.
#[derive(Debug)]
struct Gate {
    inner: BatchSpanProcessor,
    /// Spans handed to `inner` and not yet given to the exporter.
    queued: Arc<AtomicUsize>,
    full: Counter,
}

impl SpanProcessor for Gate {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUE {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.full.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, releasing the gate's places and counting the spans of failed exports.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
    failed: Counter,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        self.queued.fetch_sub(n, Ordering::AcqRel);
        let result = self.inner.export(batch).await;
        if result.is_err() {
            self.failed.inc_by(n as u64);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter's HTTP client: each call runs as a task on the gateway's runtime (the batch
/// processor's thread has no reactor of its own) and is awaited from the processor's thread.
#[derive(Debug)]
struct OnRuntime {
    http: reqwest::Client,
    rt: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let http = self.http.clone();
        let request = reqwest::Request::try_from(request)?;
        let task = self.rt.spawn(async move {
            let mut resp = http.execute(request).await?;
            let (status, headers) = (resp.status(), resp.headers().clone());
            let mut body = BytesMut::new();
            while let Some(chunk) = resp.chunk().await? {
                if body.len() + chunk.len() > MAX_RESPONSE {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, reqwest::Error>((status, headers, body.freeze()))
        });
        let (status, headers, body) = task.await??;
        let mut resp = http::Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        Ok(resp)
    }
}
