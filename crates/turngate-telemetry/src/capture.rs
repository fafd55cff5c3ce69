//! The spans of turns being recorded, kept in process for each turn's record
//! (`spans.otlp.json`) whatever the sampler decided: a span processor that keeps the
//! ended spans of the traces it was asked to watch, and hands them over as OTLP/JSON.
//!
//! With recording on, the sampler records every span (a span it would drop becomes
//! record-only: captured here, never exported, since the export queue takes sampled
//! spans only). A trace keeps at most [`MAX_SPANS`] spans; spans of traces no one
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
    traces: HashMap<(TraceId, String), Vec<SpanData>>,
    resource: Option<Resource>,
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
    pub fn take(&self, turn: TurnId, session: SessionId) -> Option<Vec<u8>> {
        let (spans, resource) = {
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
        serde_json::to_vec(&request).ok()
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
        if let Some(spans) = watched
            .traces
            .get_mut(&(span.span_context.trace_id(), session))
            && spans.len() < MAX_SPANS
        {
            spans.push(span);
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
