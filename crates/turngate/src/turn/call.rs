//! One backend call in progress: its client span under the turn's root span, the trace
//! context its requests carry (their `traceparent` names the span), its latency metric,
//! opt-in content capture, and its tape: the exchanges, byte for byte, that go into the
//! turn's record when the call ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tracing_opentelemetry::OpenTelemetrySpanExt;
use turngate_backends::chat::{Content, Message, Part};
use turngate_backends::{Backend, BackendError, Tape, TurnContext};
use turngate_core::SpanId;
use turngate_telemetry::content;
use turngate_telemetry::content::{InputMessage, InputPart};
use turngate_telemetry::metrics::Metrics;
use turngate_telemetry::names::attr;
use turngate_telemetry::turn::{parent_id, record_error};

use super::ms;
use super::stage::Job;
use crate::record::TurnRecord;

/// A backend call: the span ends when it is dropped; a call dropped before it finished
/// (its turn was interrupted) ends `cancelled`.
pub(super) struct Call<'a> {
    finished: AtomicBool,
    stage: &'static str,
    pub span: tracing::Span,
    pub ctx: TurnContext,
    pub started: Instant,
    metrics: &'a Metrics,
    /// Whether content goes into the span (`telemetry.capture_content`).
    content: bool,
    /// The call's exchanges, for the turn's record (keeping nothing without one).
    pub tape: Tape,
    /// Where they go, and under which name (`asr`, `vision-1`, `llm`).
    record: Option<(&'a TurnRecord, String)>,
}

impl<'a> Call<'a> {
    /// A call of `job`'s turn to `backend` for `stage` (the span's name); its exchanges
    /// go into the turn's record as `backends/{label}.{attempt}.…`, unless the record
    /// keeps no bodies, or no images and the call `carries_images`.
    pub fn start(
        job: &Job<'a>,
        stage: &'static str,
        label: String,
        backend: &Backend,
        carries_images: bool,
    ) -> Self {
        let (trace, turn, metrics) = (job.trace, &job.ctx, job.metrics());
        let c = backend.config();
        let span = trace.client_span(stage, &c.provider, &c.model, &c.url);
        let mut ctx = *turn;
        if let Some(id) = parent_id(&span).and_then(|b| SpanId::from_bytes(b).ok()) {
            ctx.parent = id;
        }
        Self {
            finished: AtomicBool::new(false),
            stage,
            span,
            ctx,
            started: Instant::now(),
            metrics,
            content: trace.capture_content(),
            tape: match job.record {
                Some(record) if record.keeps_bodies_of(&label, carries_images) => Tape::recording(),
                _ => Tape::OFF,
            },
            record: job.record.map(|record| (record, label)),
        }
    }

    pub fn attr(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        self.span.set_attribute(key, value);
    }

    /// Opt-in content: an attribute made only if content is captured.
    pub fn content(&self, key: &'static str, value: impl FnOnce() -> String) {
        if self.content {
            self.attr(key, value());
        }
    }

    /// Opt-in content: the request's messages, in the GenAI format.
    pub fn input(&self, messages: &[Message]) {
        if !self.content {
            return;
        }
        let parts: Vec<Vec<InputPart<'_>>> = messages
            .iter()
            .map(|m| match &m.content {
                Content::Text(text) => vec![InputPart::Text(text)],
                Content::Parts(parts) => parts
                    .iter()
                    .map(|part| match part {
                        Part::Text { text } => InputPart::Text(text),
                        Part::ImageUrl { image_url } => InputPart::Image {
                            mime: &image_url.mime,
                            bytes: &image_url.bytes,
                        },
                    })
                    .collect(),
            })
            .collect();
        let messages: Vec<InputMessage<'_>> = messages
            .iter()
            .zip(&parts)
            .map(|(m, parts)| InputMessage {
                role: m.role.as_str(),
                parts,
            })
            .collect();
        let (system, input) = content::input_messages(&messages);
        if let Some(system) = system {
            self.attr(attr::GEN_AI_SYSTEM_INSTRUCTIONS, system);
        }
        self.attr(attr::GEN_AI_INPUT_MESSAGES, input);
    }

    /// Records the outcome on the span and in the latency histogram; returns the
    /// call's milliseconds. The error's text is the backend crate's sanitized, capped
    /// one: no raw backend body reaches the span.
    pub fn finish(&self, outcome: Result<(), &BackendError>) -> u32 {
        let label = match outcome {
            Ok(()) => "ok",
            Err(e) => {
                record_error(&self.span, e.code().as_str(), e.to_string());
                "failed"
            }
        };
        self.finish_as(label)
    }

    /// Ends the call with an outcome label (`ok`, `failed`, `cancelled`).
    pub fn finish_as(&self, outcome: &'static str) -> u32 {
        self.finished.store(true, Ordering::Relaxed);
        // The span ends now: `tracing-opentelemetry` dates a span's end at its last
        // exit, and the LLM's stream is read outside of it.
        self.span.in_scope(|| {});
        self.attr(attr::OUTCOME, outcome);
        let elapsed = self.started.elapsed();
        self.metrics
            .backend_duration
            .observe([self.stage, outcome], elapsed.as_secs_f64());
        ms(self.started)
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if !self.finished.load(Ordering::Relaxed) {
            self.finish_as("cancelled");
        }
        if let Some((record, label)) = &self.record {
            record.exchanges(label, self.tape.exchanges());
        }
    }
}
