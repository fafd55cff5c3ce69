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

use crate::capture::TurnSpans;
use crate::config::{OtelConfig, Protocol, SamplerChoice};
use crate::error::Error;
use crate::export::{self, SpanCounters, Worker};
use crate::ids::{TurnIdGenerator, remote_parent};
use crate::names::{TARGET, span};

/// The telemetry of one gateway process.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    pub(crate) tracer: Option<SdkTracer>,
    /// The export's sampler, for [`Telemetry::turn_sampler`]; `None` when not exporting.
    sampler: Option<Sampler>,
    /// The spans of turns being recorded, when turns are recorded.
    turn_spans: Option<TurnSpans>,
    worker: Mutex<Option<Worker>>,
    /// What happened to ended spans.
    pub spans: Arc<SpanCounters>,
    /// Whether content (transcripts, prompts, answers, images) goes into spans.
    pub capture_content: bool,
}

impl Telemetry {
    /// Telemetry as configured. Exports only if `otel.export`; keeps the spans of
    /// turns for their records ([`Telemetry::turn_spans`]) if `record_spans`; with
    /// neither, spans cost next to nothing and nothing is kept or sent. Call from
    /// within the tokio runtime: the export queue runs as a task.
    pub fn new(
        otel: &OtelConfig,
        capture_content: bool,
        record_spans: bool,
    ) -> Result<Self, Error> {
        if !otel.export {
            return Ok(Self::assemble(
                None,
                otel,
                capture_content,
                record_spans,
                Arc::default(),
            ));
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
        Ok(Self::with_exporter(
            exporter,
            otel,
            capture_content,
            record_spans,
        ))
    }

    /// Telemetry exporting through `exporter` (the OTLP one in production), with the
    /// sampler, resource and queue `otel` describes. Call from within the tokio runtime.
    pub fn with_exporter<E: SpanExporter + 'static>(
        mut exporter: E,
        otel: &OtelConfig,
        capture_content: bool,
        record_spans: bool,
    ) -> Self {
        let spans = Arc::new(SpanCounters::default());
        exporter.set_resource(&resource(otel));
        let queue = export::start(exporter, otel.queue, Arc::clone(&spans));
        Self::assemble(Some(queue), otel, capture_content, record_spans, spans)
    }

    fn assemble(
        queue: Option<(export::QueueProcessor, Worker)>,
        otel: &OtelConfig,
        capture_content: bool,
        record_spans: bool,
        spans: Arc<SpanCounters>,
    ) -> Self {
        let turn_spans = record_spans.then(TurnSpans::default);
        if queue.is_none() && turn_spans.is_none() {
            return Self {
                provider: None,
                tracer: None,
                sampler: None,
                turn_spans: None,
                worker: Mutex::new(None),
                spans,
                capture_content,
            };
        }
        let exporting = queue.is_some();
        // What the export samples; without an export, nothing.
        let chosen = if exporting {
            sampler(otel.sampler)
        } else {
            Sampler::AlwaysOff
        };
        let mut builder = SdkTracerProvider::builder()
            .with_id_generator(TurnIdGenerator::default())
            .with_resource(resource(otel));
        builder = match &turn_spans {
            // Records kept in process take every span; the export still takes only
            // the sampled ones (the queue checks the sampled flag).
            Some(turn_spans) => builder
                .with_span_processor(turn_spans.clone())
                .with_sampler(RecordEverything(chosen.clone())),
            None => builder.with_sampler(chosen.clone()),
        };
        let worker = queue.map(|(processor, worker)| {
            builder = std::mem::take(&mut builder).with_span_processor(processor);
            worker
        });
        let provider = builder.build();
        let tracer = provider.tracer("turngate");
        Self {
            provider: Some(provider),
            tracer: Some(tracer),
            sampler: exporting.then_some(chosen),
            turn_spans,
            worker: Mutex::new(worker),
            spans,
            capture_content,
        }
    }

    /// The spans of turns being recorded, if turns are recorded.
    pub fn turn_spans(&self) -> Option<&TurnSpans> {
        self.turn_spans.as_ref()
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
        self.sampler.is_some()
    }

    /// The `tracing` layer that turns turngate's spans into OpenTelemetry spans, if
    /// they are exported or recorded.
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

/// The resource of the gateway's spans.
fn resource(otel: &OtelConfig) -> Resource {
    let mut resource = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if !otel.service_name_set {
        resource = resource.with_service_name("turngate");
    }
    resource.build()
}

/// A sampler that records every span its inner one would drop (record-only: kept for
/// turn records, never exported).
#[derive(Clone, Debug)]
struct RecordEverything(Sampler);

impl ShouldSample for RecordEverything {
    fn should_sample(
        &self,
        parent: Option<&opentelemetry::Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[opentelemetry::trace::Link],
    ) -> opentelemetry_sdk::trace::SamplingResult {
        let mut result = self
            .0
            .should_sample(parent, trace_id, name, kind, attributes, links);
        if result.decision == SamplingDecision::Drop {
            result.decision = SamplingDecision::RecordOnly;
        }
        result
    }
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
