//! One trace per turn. [`TurnTrace`] holds a turn's root span and makes the spans under
//! it: audio ingest and image uploads after the fact, with their real start and end
//! times (OpenTelemetry API), and the live backend and delivery spans as `tracing`
//! spans whose parent is the root.

use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceId, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use turngate_core::{Blob, CompletionStatus, SessionId, TurnInfo};

use crate::names::{TARGET, attr, span};
use crate::pipeline::Telemetry;
use crate::snake;

/// A turn's trace. Cheap to clone; without export every call is a no-op.
#[derive(Clone)]
pub struct TurnTrace {
    cx: Context,
    tracer: Option<SdkTracer>,
    common: Arc<[KeyValue]>,
    capture_content: bool,
}

/// A turn's audio, for its `audio.ingest` span.
#[derive(Clone, Copy, Debug)]
pub struct AudioStats {
    /// Frames.
    pub frames: u64,
    /// 16 kHz samples.
    pub samples: u64,
    /// Of those, concealed.
    pub concealed_samples: u64,
    /// Frames the session dropped (back-pressure) while the turn was open.
    pub dropped: u64,
    /// Frames the session could not decode while the turn was open.
    pub undecodable: u64,
    /// Arrival of the first frame.
    pub first: SystemTime,
    /// Arrival of the last frame.
    pub last: SystemTime,
}

impl Telemetry {
    /// Starts a turn's root span at `start` (its first frame, pre-roll included). Its
    /// trace id is the turn id and its span id the one `turn.started` announced; its
    /// parent is the client's span for client turns with a `traceparent`, otherwise it
    /// is a true root. It links to `previous`, the root of the session's turn before.
    /// `user` are attributes of who the session belongs to (the token claims an operator
    /// chose), on every span of the turn.
    pub fn start_turn(
        &self,
        turn: &TurnInfo,
        session: SessionId,
        start: SystemTime,
        previous: Option<SpanContext>,
        user: &[(String, String)],
    ) -> TurnTrace {
        let session = session.to_string();
        let mut common = vec![
            KeyValue::new(attr::TURN_ID, turn.id.to_string()),
            KeyValue::new(attr::SESSION_ID, session.clone()),
            KeyValue::new(attr::CONVERSATION_ID, session.clone()),
            KeyValue::new(attr::SESSION, session),
        ];
        common.extend(
            user.iter()
                .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
        );
        let common: Arc<[KeyValue]> = common.into();
        let mut trace = TurnTrace {
            cx: Context::new(),
            tracer: self.tracer.clone(),
            common,
            capture_content: self.capture_content,
        };
        let Some(tracer) = &self.tracer else {
            return trace;
        };
        let parent = turn
            .client_parent
            .map(crate::ids::remote_parent)
            .unwrap_or_default();
        let mut attributes = trace.common.to_vec();
        attributes.push(KeyValue::new(attr::TURN_CAUSE, snake(&turn.cause)));
        attributes.push(KeyValue::new(attr::TURN_NUMBER, i64::from(turn.number)));
        let builder = tracer
            .span_builder(span::TURN)
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .with_attributes(attributes)
            .with_links(previous.map(Link::with_context).into_iter().collect());
        let root = crate::ids::with_ids(
            TraceId::from_bytes(turn.id.to_bytes()),
            SpanId::from_bytes(turn.root_span_id.to_bytes()),
            || tracer.build_with_context(builder, &parent),
        );
        trace.cx = Context::new().with_span(root);
        trace
    }
}

impl TurnTrace {
    /// The root span's context: the next turn links to it.
    pub fn span_context(&self) -> SpanContext {
        self.cx.span().span_context().clone()
    }

    /// Whether content may go into span attributes (`telemetry.capture_content`).
    pub fn capture_content(&self) -> bool {
        self.capture_content
    }

    /// An event on the root span at `at`.
    pub fn event(&self, name: &'static str, at: SystemTime) {
        self.cx
            .span()
            .add_event_with_timestamp(name, at, Vec::new());
    }

    /// The `audio.ingest` span, first frame to last.
    pub fn audio(&self, audio: &AudioStats) {
        if self.tracer.is_none() {
            return;
        }
        let mut attributes = self.common.to_vec();
        attributes.extend([
            KeyValue::new(attr::AUDIO_FRAMES, audio.frames as i64),
            KeyValue::new(attr::AUDIO_SAMPLES, audio.samples as i64),
            KeyValue::new(
                attr::AUDIO_CONCEALED_SAMPLES,
                audio.concealed_samples as i64,
            ),
            KeyValue::new(attr::AUDIO_DROPPED, audio.dropped as i64),
            KeyValue::new(attr::AUDIO_UNDECODABLE, audio.undecodable as i64),
            KeyValue::new(attr::AUDIO_FIRST_FRAME, rfc3339(audio.first)),
            KeyValue::new(attr::AUDIO_LAST_FRAME, rfc3339(audio.last)),
        ]);
        self.child(span::AUDIO, audio.first, audio.last, attributes);
    }

    /// An `image.upload` span, from the upload's first byte to its acceptance.
    pub fn image(&self, blob: &Blob, began: SystemTime, accepted: SystemTime) {
        if self.tracer.is_none() {
            return;
        }
        let mut attributes = self.common.to_vec();
        attributes.extend([
            KeyValue::new(attr::BLOB_ID, blob.blob_id.to_string()),
            KeyValue::new(attr::UPLOAD_ID, blob.upload_id.clone()),
            KeyValue::new(attr::IMAGE_BYTES, blob.bytes.len() as i64),
            KeyValue::new(attr::IMAGE_MIME, blob.mime.clone()),
            KeyValue::new(attr::IMAGE_WIDTH, i64::from(blob.width)),
            KeyValue::new(attr::IMAGE_HEIGHT, i64::from(blob.height)),
        ]);
        self.child(span::IMAGE, began, accepted, attributes);
    }

    fn child(
        &self,
        name: &'static str,
        start: SystemTime,
        end: SystemTime,
        attributes: Vec<KeyValue>,
    ) {
        if let Some(tracer) = &self.tracer {
            let mut span = tracer
                .span_builder(name)
                .with_start_time(start)
                .with_attributes(attributes)
                .start_with_context(tracer, &self.cx);
            span.end_with_timestamp(end.max(start));
        }
    }

    /// A live client span for a backend call (`asr`, `vision` or `llm`), under the
    /// root, with the GenAI request attributes. The request's `traceparent` names it
    /// (see [`parent_id`]).
    pub fn client_span(
        &self,
        name: &'static str,
        provider: &str,
        model: &str,
        url: &str,
    ) -> tracing::Span {
        let span = self.live_span(name, "client");
        if name != span::ASR {
            span.set_attribute(attr::GEN_AI_OPERATION, "chat");
        }
        span.set_attribute(attr::GEN_AI_PROVIDER, provider.to_owned());
        span.set_attribute(attr::GEN_AI_REQUEST_MODEL, model.to_owned());
        if let Some((host, port)) = host_port(url) {
            span.set_attribute(attr::SERVER_ADDRESS, host);
            span.set_attribute(attr::SERVER_PORT, port);
        }
        span
    }

    /// The live `response.delivery` span, under the root.
    pub fn delivery_span(&self) -> tracing::Span {
        self.live_span(span::DELIVERY, "internal")
    }

    fn live_span(&self, name: &'static str, kind: &'static str) -> tracing::Span {
        let span =
            tracing::info_span!(target: TARGET, "turngate", otel.name = name, otel.kind = kind);
        if self.tracer.is_some() {
            let _ = span.set_parent(self.cx.clone());
            for kv in self.common.iter() {
                span.set_attribute(kv.key.clone(), kv.value.clone());
            }
        }
        span
    }

    /// Ends the root span at `at` with the turn's final state.
    pub fn end(&self, turn: &TurnInfo, status: CompletionStatus, images: usize, at: SystemTime) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(attr::TURN_STATE, snake(&turn.state)));
        if let Some(reason) = turn.reason {
            span.set_attribute(KeyValue::new(attr::TURN_REASON, snake(&reason)));
        }
        span.set_attribute(KeyValue::new(attr::TURN_INTERRUPTED, turn.interrupted));
        span.set_attribute(KeyValue::new(attr::TURN_FRAMES, i64::from(turn.frames)));
        span.set_attribute(KeyValue::new(attr::TURN_IMAGES, images as i64));
        span.set_attribute(KeyValue::new(attr::TURN_STATUS, snake(&status)));
        if let Some(ended) = turn.ended_at {
            let ms = ended.saturating_sub(turn.started_at).as_millis() as i64;
            span.set_attribute(KeyValue::new(attr::TURN_DURATION_MS, ms));
        }
        if status == CompletionStatus::Failed {
            span.set_status(Status::error("turn processing failed"));
        }
        span.end_with_timestamp(at);
    }
}

/// The span id a request made under `span` names as its parent: the span's own, if
/// spans are exported.
pub fn parent_id(span: &tracing::Span) -> Option<[u8; 8]> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.span_id().to_bytes())
}

/// Marks a live span failed, with the error's kind.
pub fn record_error(span: &tracing::Span, kind: &'static str, message: String) {
    span.set_attribute(attr::ERROR_TYPE, kind);
    span.set_status(Status::error(message));
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

fn host_port(url: &str) -> Option<(String, i64)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?.rsplit('@').next()?;
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, port) = v6.split_once(']')?;
            (host, port.strip_prefix(':'))
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None if scheme == "https" => 443,
        None => 80,
    };
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn server_address_of_urls() {
        assert_eq!(
            host_port("http://127.0.0.1:8000/v1"),
            Some(("127.0.0.1".into(), 8000))
        );
        assert_eq!(
            host_port("https://api.example.com/v1"),
            Some(("api.example.com".into(), 443))
        );
        assert_eq!(host_port("http://u:p@[::1]:9/v1"), Some(("::1".into(), 9)));
        assert_eq!(host_port("nonsense"), None);
    }
}
