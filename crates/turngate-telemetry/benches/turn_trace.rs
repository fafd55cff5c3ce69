//! The cost of one turn's trace: the root span, audio and image spans, three backend
//! client spans and the delivery span — exported through the real queue to an exporter
//! that only counts — against the same calls with export off (the baseline, same run).
//!
//! cargo bench -p turngate-telemetry --bench turn_trace

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tracing_subscriber::prelude::*;
use turngate_core::{
    Blob, BlobId, Cause, CompletionStatus, SessionId, SpanId, TurnId, TurnInfo, TurnState,
};
use turngate_telemetry::config::{OtelConfig, Protocol, QueueConfig, SamplerChoice};
use turngate_telemetry::names::span;
use turngate_telemetry::{AudioStats, Telemetry};

#[derive(Debug, Default)]
struct Counting(Arc<AtomicU64>);

impl SpanExporter for Counting {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

fn turn(n: u32) -> TurnInfo {
    TurnInfo {
        id: TurnId::from_bytes([n as u8 | 1; 16]).unwrap(),
        number: n,
        cause: Cause::Vad,
        root_span_id: SpanId::from_bytes([7; 8]).unwrap(),
        client_parent: None,
        state: TurnState::Completed,
        reason: None,
        interrupted: false,
        started_at: Duration::ZERO,
        ended_at: Some(Duration::from_secs(2)),
        processing_started_at: None,
        uploads_pending: 0,
        uploads_tagged: 1,
        completed_at: None,
        frames: 100,
        sampled: Some(true),
        speech_started_at: None,
        speech_ended_at: None,
        continues: None,
        successor: None,
        status: None,
    }
}

fn one_turn(telemetry: &Telemetry, info: &TurnInfo, blob: &Blob) {
    let now = SystemTime::now();
    let trace = telemetry.start_turn(
        info,
        SessionId::from_bytes([3; 16]).unwrap(),
        now,
        None,
        &[],
    );
    trace.event("vad.speech_start", now);
    trace.audio(&AudioStats {
        frames: 100,
        samples: 32_000,
        concealed_samples: 0,
        dropped: 0,
        undecodable: 0,
        first: now,
        last: now,
    });
    trace.image(blob, now, now);
    for name in [span::ASR, span::VISION, span::LLM] {
        let call = trace.client_span(name, "openai", "model", "http://127.0.0.1:8000/v1");
        std::hint::black_box(turngate_telemetry::turn::parent_id(&call));
    }
    drop(trace.delivery_span());
    trace.end(info, CompletionStatus::Ok, 1, now);
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _guard = runtime.enter();
    let exported = Arc::new(AtomicU64::new(0));
    let otel = OtelConfig {
        export: true,
        protocol: Protocol::HttpProtobuf,
        https: false,
        sampler: SamplerChoice::ParentBasedAlwaysOn,
        service_name_set: false,
        queue: QueueConfig {
            max_queue: 65_536,
            ..QueueConfig::default()
        },
        warnings: Vec::new(),
    };
    let on = Telemetry::with_exporter(Counting(Arc::clone(&exported)), &otel, false, false);
    let off = Telemetry::new(
        &OtelConfig {
            export: false,
            ..otel.clone()
        },
        false,
        false,
    )
    .unwrap();
    // As in the gateway: the OpenTelemetry layer only when exporting.
    let plain = tracing::Dispatch::new(tracing_subscriber::registry());
    let exporting = tracing::Dispatch::new(tracing_subscriber::registry().with(on.layer()));
    let info = turn(1);
    let blob = Blob {
        blob_id: BlobId([9; 32]),
        upload_id: "u".into(),
        mime: "image/png".into(),
        declared_mime: "image/png".into(),
        width: 1280,
        height: 720,
        bytes: bytes::Bytes::from_static(&[0; 1024]),
        began_at: Duration::ZERO,
    };
    let mut group = c.benchmark_group("turn_trace");
    group.bench_function("export off (baseline)", |b| {
        tracing::dispatcher::with_default(&plain, || b.iter(|| one_turn(&off, &info, &blob)))
    });
    group.bench_function("export on, 8 spans", |b| {
        tracing::dispatcher::with_default(&exporting, || b.iter(|| one_turn(&on, &info, &blob)))
    });
    group.finish();
    runtime.block_on(on.shutdown(Duration::from_secs(5)));
    let dropped = on.spans.dropped_queue_full.load(Ordering::Relaxed);
    eprintln!(
        "spans exported: {}, dropped: {dropped}",
        exported.load(Ordering::Relaxed)
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
