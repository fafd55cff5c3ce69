//! Setting up the pipeline: the tracer provider with the turn id generator, the
//! sampler and resource the `OTEL_*` variables ask for, the export queue, and the
//! `tracing` layer that exports turngate's spans (target [`TARGET`]) and nothing else.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, TraceId, TracerProvider as _};
use opentelemetry_otlp::WithTonicConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, SdkTracer, SdkTracerProvider, ShouldSample, SpanExporter,
};
use tonic::transport::ClientTlsConfig;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::{Layer, registry::LookupSpan};
use turngate_core::{TraceParent, TurnId, TurnSampler};

use crate::config::{OtelConfig, Protocol, SamplerChoice};
use crate::error::Error;
use crate::export::{self, SpanCounters, Worker};
use crate::ids::{TurnIdGenerator, remote_parent};
use crate::names::{TARGET, span};

/// The telemetry of one gateway process.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    pub(crate) tracer: Option<SdkTracer>,
    sampler: Option<Sampler>,
    worker: Mutex<Option<Worker>>,
    /// What happened to ended spans.
    pub spans: Arc<SpanCounters>,
    /// Whether content (transcripts, prompts, answers, images) goes into spans.
    pub capture_content: bool,
}

impl Telemetry {
    /// Telemetry as configured. Exports only if `otel.export`; otherwise spans cost
    /// next to nothing and nothing is sent anywhere. Call from within the tokio runtime:
    /// the export queue runs as a task.
    pub fn new(otel: &OtelConfig, capture_content: bool) -> Result<Self, Error> {
        if !otel.export {
            return Ok(Self {
                provider: None,
                tracer: None,
                sampler: None,
                worker: Mutex::new(None),
                spans: Arc::default(),
                capture_content,
            });
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = match otel.protocol {
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build(),
            Protocol::Grpc if otel.https => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_tls_config(ClientTlsConfig::new().with_enabled_roots())
                .build(),
            Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build(),
        }
        .map_err(|e| Error::Exporter(e.to_string()))?;
        Ok(Self::with_exporter(exporter, otel, capture_content))
    }

    /// Telemetry exporting through `exporter` (the OTLP one in production), with the
    /// sampler, resource and queue `otel` describes. Call from within the tokio runtime.
    pub fn with_exporter<E: SpanExporter + 'static>(
        mut exporter: E,
        otel: &OtelConfig,
        capture_content: bool,
    ) -> Self {
        let spans = Arc::new(SpanCounters::default());
        let mut resource = Resource::builder()
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        if !otel.service_name_set {
            resource = resource.with_service_name("turngate");
        }
        let resource = resource.build();
        exporter.set_resource(&resource);
        let (processor, worker) = export::start(exporter, otel.queue, Arc::clone(&spans));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_id_generator(TurnIdGenerator::default())
            .with_sampler(sampler(otel.sampler))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("turngate");
        Self {
            provider: Some(provider),
            tracer: Some(tracer),
            sampler: Some(sampler(otel.sampler)),
            worker: Mutex::new(Some(worker)),
            spans,
            capture_content,
        }
    }

    /// The tracer's sampling decision for a turn's root span, made when the turn opens
    /// so that `turn.started` can announce it; `None` when spans are not exported. The
    /// root span is then sampled by the same sampler on the same inputs.
    pub fn turn_sampler(&self) -> Option<TurnSampler> {
        let sampler = self.sampler.clone()?;
        Some(TurnSampler::new(move |turn_id, client_parent| {
            samples(&sampler, turn_id, client_parent)
        }))
    }

    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.tracer.is_some()
    }

    /// The `tracing` layer that turns turngate's spans into OpenTelemetry spans, if
    /// exporting.
    pub fn layer<S>(&self) -> Option<impl Layer<S> + use<S>>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let tracer = self.tracer.clone()?;
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_location(false)
                .with_threads(false)
                .with_level(false)
                .with_target(false)
                .with_tracked_inactivity(false)
                .with_filter(Targets::new().with_target(TARGET, tracing::Level::INFO)),
        )
    }

    /// Exports the spans still queued and stops the exporter, waiting at most `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        let worker = self.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(worker) = worker
            && !worker.finish(timeout).await
        {
            tracing::warn!("Spans were still being exported at shutdown; the rest are lost.");
        }
        if let Some(provider) = &self.provider {
            let _ = provider.shutdown();
        }
    }
}

/// Whether `sampler` records a turn's root span: the decision the SDK makes when
/// [`Telemetry::start_turn`] starts it (same parent, trace id, name and kind).
fn samples(sampler: &Sampler, turn_id: TurnId, client_parent: Option<TraceParent>) -> bool {
    let parent = client_parent.map(remote_parent).unwrap_or_default();
    let decision = sampler
        .should_sample(
            Some(&parent),
            TraceId::from_bytes(turn_id.to_bytes()),
            span::TURN,
            &SpanKind::Server,
            &[],
            &[],
        )
        .decision;
    decision == SamplingDecision::RecordAndSample
}

fn sampler(choice: SamplerChoice) -> Sampler {
    match choice {
        SamplerChoice::AlwaysOn => Sampler::AlwaysOn,
        SamplerChoice::AlwaysOff => Sampler::AlwaysOff,
        SamplerChoice::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
        SamplerChoice::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        SamplerChoice::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        SamplerChoice::ParentBasedTraceIdRatio(r) => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    /// Minted turn ids put their randomness in the low 8 bytes, which the ratio sampler
    /// reads: even ids minted in the same millisecond are kept at the configured share.
    #[test]
    fn traceidratio_keeps_its_share_of_minted_turn_ids() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for ratio in [0.1, 0.5, 0.9] {
            let sampler = sampler(SamplerChoice::TraceIdRatio(ratio));
            let n = 20_000;
            let kept = (0..n)
                .filter(|_| samples(&sampler, TurnId::mint(1_790_000_000_000, &mut rng), None))
                .count();
            let share = kept as f64 / f64::from(n);
            assert!((share - ratio).abs() < 0.02, "{ratio}: kept {share}");
        }
    }
}
