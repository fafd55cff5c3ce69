//! The spans of turns being recorded, kept in process for each turn's record
//! (`spans.otlp.json`) whatever the sampler decided: a span processor that keeps the
//! ended spans of the traces it was asked to watch, and hands them over as OTLP/JSON.
//!
//! With recording on, the sampler records every span (a span it would drop becomes
//! record-only: captured here, never exported, since the export queue takes sampled
//! spans only). A trace keeps at most [`MAX_SPANS`] spans (the rest are counted, so a
//! record can say it lacks them); spans of traces no one
//! watches are let go at once. A turn is watched with its session: two sessions
//! presenting the same client turn id share a trace id, and each record keeps only its
//! own session's spans (by their `turngate.session.id`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentelemetry::Context;
use opentelemetry::trace::TraceId;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use turngate_core::{SessionId, TurnId};

use crate::names::attr::SESSION_ID;

/// The most spans one turn's record keeps.
pub const MAX_SPANS: usize = 2000;

/// The spans of watched turns. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct TurnSpans {
    inner: Arc<Mutex<Watched>>,
}

#[derive(Debug, Default)]
struct Watched {
    traces: HashMap<(TraceId, String), Kept>,
    resource: Option<Resource>,
}

/// One watched turn's spans, and how many more ended beyond [`MAX_SPANS`].
#[derive(Debug, Default)]
struct Kept {
    spans: Vec<SpanData>,
    dropped: usize,
}

/// A turn's spans as [`TurnSpans::take`] hands them over.
#[derive(Debug)]
pub struct Taken {
    /// OTLP/JSON: an `ExportTraceServiceRequest`.
    pub json: Vec<u8>,
    /// Spans that ended beyond [`MAX_SPANS`] and are not in `json`.
    pub dropped: usize,
}

/// The key of a turn's spans: its trace and its session.
fn key(turn: TurnId, session: SessionId) -> (TraceId, String) {
    (TraceId::from_bytes(turn.to_bytes()), session.to_string())
}

impl TurnSpans {
    /// Keeps the spans of `turn` in `session` from now on.
    pub fn watch(&self, turn: TurnId, session: SessionId) {
        self.lock().traces.entry(key(turn, session)).or_default();
    }

    /// The spans of `turn` that ended, as an OTLP/JSON `ExportTraceServiceRequest`
    /// (hex ids, as the OTLP JSON encoding asks); stops watching it. `None` if it was
    /// not watched.
    pub fn take(&self, turn: TurnId, session: SessionId) -> Option<Taken> {
        let (Kept { spans, dropped }, resource) = {
            let mut watched = self.lock();
            let spans = watched.traces.remove(&key(turn, session))?;
            (
                spans,
                watched
                    .resource
                    .clone()
                    .unwrap_or_else(|| Resource::builder_empty().build()),
            )
        };
        let request = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans,
                &ResourceAttributesWithSchema::from(&resource),
            ),
        };
        let json = serde_json::to_vec(&request).ok()?;
        Some(Taken { json, dropped })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SpanProcessor for TurnSpans {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let Some(session) = span
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == SESSION_ID)
            .map(|kv| kv.value.as_str().into_owned())
        else {
            return;
        };
        let mut watched = self.lock();
        if let Some(kept) = watched
            .traces
            .get_mut(&(span.span_context.trace_id(), session))
        {
            if kept.spans.len() < MAX_SPANS {
                kept.spans.push(span);
            } else {
                kept.dropped += 1;
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> OTelSdkResult {
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.lock().resource = Some(resource.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::KeyValue;
    use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState, Tracer};
    use opentelemetry::trace::{SpanId, TracerProvider};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// Ends `n` spans in `turn`'s trace carrying `session`.
    fn end_spans(provider: &SdkTracerProvider, turn: TurnId, session: SessionId, n: usize) {
        let tracer = provider.tracer("test");
        let parent = SpanContext::new(
            TraceId::from_bytes(turn.to_bytes()),
            SpanId::from_bytes([1; 8]),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(parent);
        for _ in 0..n {
            tracer
                .span_builder("s")
                .with_attributes([KeyValue::new(SESSION_ID, session.to_string())])
                .start_with_context(&tracer, &cx);
        }
    }

    #[test]
    fn keeps_each_sessions_spans_and_counts_those_beyond_the_limit() {
        let spans = TurnSpans::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(spans.clone())
            .build();
        let turn: TurnId = "0af7651916cd43dd8448eb211c80319c".parse().unwrap();
        let (a, b): (SessionId, SessionId) = (
            "01890f3a9b7c4d5e6f708192a3b4c5d6".parse().unwrap(),
            "01890f3a9b7c4d5e6f708192a3b4c5d7".parse().unwrap(),
        );
        spans.watch(turn, a);
        spans.watch(turn, b);
        end_spans(&provider, turn, a, MAX_SPANS + 3);
        end_spans(&provider, turn, b, 2);

        let taken = spans.take(turn, a).unwrap();
        assert_eq!(taken.dropped, 3);
        let request: serde_json::Value = serde_json::from_slice(&taken.json).unwrap();
        let count = |r: &serde_json::Value| {
            r["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .map_or(0, Vec::len)
        };
        assert_eq!(count(&request), MAX_SPANS);
        let taken = spans.take(turn, b).unwrap();
        assert_eq!(taken.dropped, 0);
        assert_eq!(count(&serde_json::from_slice(&taken.json).unwrap()), 2);
        // No longer watched: taken once.
        assert!(spans.take(turn, a).is_none());
    }
}
