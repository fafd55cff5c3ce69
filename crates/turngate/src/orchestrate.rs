//! Turn processing: once a turn's processing may start, its audio goes to ASR and its
//! images to vision, concurrently; then, if there is anything to say, both results go
//! to the LLM, whose streamed answer is relayed to the client. Every event carries the
//! turn id of the input it was derived from, and every backend request carries the
//! turn's trace context.

use std::time::Instant;

use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use turngate_backends::llm::LlmEvent;
use turngate_backends::{Backend, BackendError, TurnContext, asr, llm, vision};
use turngate_core::{
    CompletionStatus, ServerEvent, SessionId, SpanId, StageStatus, Stages, TurnInfo,
};
use turngate_telemetry::metrics::Metrics;
use turngate_telemetry::names::{self, attr, span};
use turngate_telemetry::turn::{parent_id, record_error};
use turngate_telemetry::{TurnTrace, content};

use crate::api::App;
use crate::config::Config;
use crate::pipeline::TurnBuffer;
use crate::registry::Entry;

/// The configured backends and how prompts are built.
pub struct Backends {
    asr: Option<Backend>,
    vision: Option<Backend>,
    llm: Option<Backend>,
    vision_instruction: String,
    system_prompt: String,
    history_turns: usize,
    send_images: bool,
}

impl Backends {
    /// Clients for the configured backends; unconfigured ones are skipped.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let make =
            |name, c: &turngate_backends::BackendConfig| -> anyhow::Result<Option<Backend>> {
                Ok(if c.is_configured() {
                    Some(Backend::new(name, c.clone())?)
                } else {
                    None
                })
            };
        Ok(Self {
            asr: make("asr", &config.asr)?,
            vision: make("vision", &config.vision.backend)?,
            llm: make("llm", &config.llm.backend)?,
            vision_instruction: config.vision.instruction.clone(),
            system_prompt: config.llm.system_prompt.clone(),
            history_turns: config.llm.history_turns,
            send_images: config.llm.send_images,
        })
    }
}

/// One exchange of a session, for the next turns' prompts: what the user said and
/// showed, and what they heard of the answer.
#[derive(Clone, Debug, Default)]
pub struct Exchange {
    user: String,
    assistant: String,
}

/// What processing produced for a turn, for `GET /v1/sessions/{id}`.
pub type TurnResult = Value;

fn ms(since: Instant) -> u32 {
    since.elapsed().as_millis().min(u128::from(u32::MAX)) as u32
}

/// One backend call in progress: its client span, the trace context its requests
/// carry (their `traceparent` names the span), and when it began.
struct Call<'a> {
    stage: &'static str,
    span: tracing::Span,
    ctx: TurnContext,
    started: Instant,
    metrics: &'a Metrics,
    /// Whether content goes into the span (`telemetry.capture_content`).
    content: bool,
}

impl<'a> Call<'a> {
    fn start(
        app: &'a App,
        trace: &TurnTrace,
        turn: &TurnContext,
        stage: &'static str,
        backend: &Backend,
    ) -> Self {
        let c = backend.config();
        let span = trace.client_span(stage, &c.provider, &c.model, &c.url);
        let mut ctx = *turn;
        if let Some(id) = parent_id(&span).and_then(|b| SpanId::from_bytes(b).ok()) {
            ctx.parent = id;
        }
        Self {
            stage,
            span,
            ctx,
            started: Instant::now(),
            metrics: &app.metrics,
            content: trace.capture_content(),
        }
    }

    fn attr(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        self.span.set_attribute(key, value);
    }

    /// Opt-in content: an attribute made only if content is captured.
    fn content(&self, key: &'static str, value: impl FnOnce() -> String) {
        if self.content {
            self.attr(key, value());
        }
    }

    /// Opt-in content: the request's messages, in the GenAI format.
    fn input(&self, messages: &[Value]) {
        if !self.content {
            return;
        }
        let (system, input) = content::input_messages(messages);
        if let Some(system) = system {
            self.attr(attr::GEN_AI_SYSTEM_INSTRUCTIONS, system);
        }
        self.attr(attr::GEN_AI_INPUT_MESSAGES, input);
    }

    /// Records the outcome on the span and in the latency histogram; returns the
    /// call's milliseconds. The span ends when the call is dropped.
    fn finish(&self, outcome: Result<(), &BackendError>) -> u32 {
        let label = match outcome {
            Ok(()) => "ok",
            Err(e) => {
                // A backend's error body may echo the prompt: only with the opt-in.
                let message = if self.content {
                    e.to_string()
                } else {
                    e.summary()
                };
                record_error(&self.span, e.code().as_str(), message);
                "failed"
            }
        };
        self.finish_as(label)
    }

    fn finish_as(&self, outcome: &'static str) -> u32 {
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

/// Processes one turn; returns its status and `turn.completed` event. `interrupted` turns true on
/// barge-in, which cancels a running LLM stream. Each backend call gets a client span
/// under the turn's root span.
pub async fn run(
    app: &App,
    entry: &Entry,
    session_id: SessionId,
    turn: &TurnInfo,
    trace: &TurnTrace,
    buffer: TurnBuffer,
    mut interrupted: watch::Receiver<bool>,
) -> (CompletionStatus, ServerEvent) {
    let backends = &app.backends;
    // Each call's client span replaces the root as its requests' parent; the flags say
    // whether the sampler kept the turn.
    let ctx = TurnContext {
        session_id,
        turn_id: turn.id,
        parent: turn.root_span_id,
        flags: turn.traceparent().flags,
    };
    let shared = &entry.shared;
    // Each failure is recorded on the turn and told to the client.
    let errors = std::sync::Mutex::new(Vec::new());
    let fail = |e: &BackendError| {
        if let Ok(mut errors) = errors.lock() {
            errors.push(json!({"code": e.code(), "message": e.to_string()}));
        }
        ServerEvent::Error {
            code: e.code(),
            message: e.to_string(),
            turn_id: Some(turn.id),
        }
    };

    // ASR and vision, concurrently.
    let pcm: Vec<i16> = buffer
        .frames
        .iter()
        .flat_map(|f| f.value.pcm.iter().copied())
        .collect();
    let asr_stage = async {
        let Some(backend) = backends.asr.as_ref().filter(|_| !pcm.is_empty()) else {
            return (StageStatus::Skipped, None, None);
        };
        let call = Call::start(app, trace, &ctx, span::ASR, backend);
        call.attr(
            attr::REQUEST_BYTES,
            (turngate_backends::wav::HEADER_BYTES + pcm.len() * 2) as i64,
        );
        let result = asr::transcribe(backend, &call.ctx, &pcm)
            .instrument(call.span.clone())
            .await;
        match result {
            Ok(text) => {
                call.attr(attr::RESPONSE_BYTES, text.len() as i64);
                call.content(attr::TRANSCRIPT, || text.clone());
                let took = call.finish(Ok(()));
                shared
                    .send_event(ServerEvent::Transcript {
                        turn_id: turn.id,
                        text: text.clone(),
                    })
                    .await;
                (StageStatus::Ok, Some(text), Some(took))
            }
            Err(e) => {
                let took = call.finish(Err(&e));
                tracing::warn!(turn = %turn.id, error = %e, "ASR failed.");
                shared.send_event(fail(&e)).await;
                (StageStatus::Failed, None, Some(took))
            }
        }
    };
    let vision_stage = async {
        let Some(backend) = backends
            .vision
            .as_ref()
            .filter(|_| !buffer.blobs.is_empty())
        else {
            return (StageStatus::Skipped, Vec::new(), None);
        };
        let started = Instant::now();
        let calls = buffer.blobs.iter().map(|blob| async move {
            let call = Call::start(app, trace, &ctx, span::VISION, backend);
            call.attr(attr::BLOB_ID, blob.value.blob_id.to_string());
            call.attr(attr::REQUEST_BYTES, blob.value.bytes.len() as i64);
            let messages = vision::messages(&blob.value, &backends.vision_instruction);
            call.input(&messages);
            let result = vision::describe(backend, &call.ctx, messages)
                .instrument(call.span.clone())
                .await;
            match &result {
                Ok(description) => {
                    call.attr(attr::RESPONSE_BYTES, description.len() as i64);
                    call.content(attr::GEN_AI_OUTPUT_MESSAGES, || {
                        content::output_messages(description, None)
                    });
                    call.finish(Ok(()));
                }
                Err(e) => {
                    call.finish(Err(e));
                }
            }
            (blob, result)
        });
        let mut status = StageStatus::Ok;
        let mut descriptions = Vec::new();
        for (blob, result) in join_all(calls).await {
            match result {
                Ok(description) => {
                    let event = ServerEvent::VisionResult {
                        turn_id: turn.id,
                        blob_id: blob.value.blob_id,
                        description: description.clone(),
                    };
                    shared.send_event(event).await;
                    descriptions.push((blob, description));
                }
                Err(e) => {
                    tracing::warn!(turn = %turn.id, error = %e, "Vision failed.");
                    shared.send_event(fail(&e)).await;
                    status = StageStatus::Failed;
                }
            }
        }
        (status, descriptions, Some(ms(started)))
    };
    let ((asr_status, transcript, asr_ms), (vision_status, descriptions, vision_ms)) =
        tokio::join!(asr_stage, vision_stage);

    // The LLM, if there is anything to say.
    let mut user = transcript.clone().unwrap_or_default();
    for (i, (_, description)) in descriptions.iter().enumerate() {
        user.push_str(&format!("\n[Image {}: {description}]", i + 1));
    }
    let user = user.trim().to_owned();
    let mut answer = String::new();
    let (mut llm_status, mut first_token_ms, mut total_ms) = (StageStatus::Skipped, None, None);
    if let Some(backend) = backends.llm.as_ref().filter(|_| !user.is_empty()) {
        let messages = prompt(backends, entry, &user, &descriptions);
        let call = Call::start(app, trace, &ctx, span::LLM, backend);
        let prompt_bytes = serde_json::to_vec(&messages).map_or(0, |b| b.len());
        call.attr(attr::REQUEST_BYTES, prompt_bytes as i64);
        call.input(&messages);
        let mut delivery = Delivery::default();
        let mut finish = None;
        let outcome = match llm::stream(backend, &call.ctx, messages)
            .instrument(call.span.clone())
            .await
        {
            Err(e) => {
                shared.send_event(fail(&e)).await;
                Err(e)
            }
            Ok(mut stream) => loop {
                let event = tokio::select! {
                    event = stream.next() => event,
                    _ = barge_in(&mut interrupted) => break Ok(StageStatus::Cancelled),
                };
                match event {
                    Some(Ok(LlmEvent::Delta(delta))) => {
                        if first_token_ms.is_none() {
                            let took = ms(call.started);
                            first_token_ms = Some(took);
                            call.attr(attr::TIME_TO_FIRST_TOKEN_MS, i64::from(took));
                            call.span.add_event(names::event::FIRST_TOKEN, Vec::new());
                            app.metrics
                                .llm_first_token
                                .observe([], call.started.elapsed().as_secs_f64());
                        }
                        answer.push_str(&delta);
                        delivery.relay(trace, delta.len());
                        shared
                            .send_event(ServerEvent::ResponseDelta {
                                turn_id: turn.id,
                                delta,
                            })
                            .await;
                    }
                    Some(Ok(LlmEvent::Done {
                        model,
                        finish_reason,
                        usage,
                    })) => {
                        if let Some(model) = model {
                            call.attr(attr::GEN_AI_RESPONSE_MODEL, model);
                        }
                        finish.clone_from(&finish_reason);
                        if let Some(reason) = finish_reason {
                            call.attr(
                                attr::GEN_AI_FINISH_REASONS,
                                opentelemetry::Value::Array(
                                    vec![opentelemetry::StringValue::from(reason)].into(),
                                ),
                            );
                        }
                        if let Some(usage) = usage {
                            call.attr(attr::GEN_AI_INPUT_TOKENS, usage.input_tokens as i64);
                            call.attr(attr::GEN_AI_OUTPUT_TOKENS, usage.output_tokens as i64);
                        }
                        shared
                            .send_event(ServerEvent::ResponseDone {
                                turn_id: turn.id,
                                text: answer.clone(),
                            })
                            .await;
                        break Ok(StageStatus::Ok);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(turn = %turn.id, error = %e, "LLM stream failed.");
                        shared.send_event(fail(&e)).await;
                        break Err(e);
                    }
                    None => break Ok(StageStatus::Failed),
                }
            },
        };
        delivery.finish();
        call.attr(attr::RESPONSE_BYTES, answer.len() as i64);
        call.content(attr::GEN_AI_OUTPUT_MESSAGES, || {
            content::output_messages(&answer, finish.as_deref())
        });
        llm_status = match outcome {
            Ok(StageStatus::Cancelled) => {
                call.finish_as("cancelled");
                StageStatus::Cancelled
            }
            Ok(StageStatus::Ok) => {
                call.finish(Ok(()));
                StageStatus::Ok
            }
            Ok(_) => {
                call.finish_as("failed");
                StageStatus::Failed
            }
            Err(e) => {
                call.finish(Err(&e));
                StageStatus::Failed
            }
        };
        total_ms = Some(ms(call.started));
    }

    let configured_failed =
        asr_status == StageStatus::Failed || vision_status == StageStatus::Failed;
    let status = match llm_status {
        StageStatus::Ok if configured_failed => CompletionStatus::Partial,
        StageStatus::Ok => CompletionStatus::Ok,
        StageStatus::Skipped if backends.llm.is_none() && !configured_failed => {
            CompletionStatus::Ok
        }
        _ => CompletionStatus::Failed,
    };
    if !user.is_empty() {
        remember(
            entry,
            backends.history_turns,
            Exchange {
                user: user.clone(),
                assistant: answer.clone(),
            },
        );
    }
    let completed = ServerEvent::TurnCompleted {
        turn_id: turn.id,
        status,
        stages: Stages {
            asr: asr_status,
            vision: vision_status,
            llm: llm_status,
        },
        asr_ms,
        vision_ms,
        llm_first_token_ms: first_token_ms,
        llm_total_ms: total_ms,
    };
    let result = json!({
        "transcript": transcript,
        "descriptions": descriptions.iter().map(|(b, d)| json!({"blob_id": b.value.blob_id, "description": d})).collect::<Vec<_>>(),
        "response": answer,
        "errors": errors.into_inner().unwrap_or_default(),
        "completed": completed,
    });
    if let Ok(mut results) = entry.results.lock() {
        results.insert(turn.id, result);
    }
    (status, completed)
}

/// The answer's relay to the client: a span from its first delta to its end.
#[derive(Default)]
struct Delivery {
    span: Option<tracing::Span>,
    deltas: i64,
    bytes: i64,
}

impl Delivery {
    fn relay(&mut self, trace: &TurnTrace, bytes: usize) {
        self.span.get_or_insert_with(|| trace.delivery_span());
        self.deltas += 1;
        self.bytes += bytes as i64;
    }

    fn finish(self) {
        if let Some(span) = self.span {
            span.set_attribute(attr::DELIVERY_DELTAS, self.deltas);
            span.set_attribute(attr::DELIVERY_BYTES, self.bytes);
        }
    }
}

/// Resolves on barge-in. If the flag's sender is gone (the session's downstream has
/// ended), no barge-in can come any more: never resolves.
async fn barge_in(interrupted: &mut watch::Receiver<bool>) {
    if interrupted.wait_for(|i| *i).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// System prompt, the last exchanges, then this turn.
fn prompt(
    backends: &Backends,
    entry: &Entry,
    user: &str,
    descriptions: &[(&turngate_core::Tagged<turngate_core::Blob>, String)],
) -> Vec<Value> {
    let mut messages = vec![json!({"role": "system", "content": backends.system_prompt})];
    if let Ok(history) = entry.history.lock() {
        for exchange in history.iter() {
            messages.push(json!({"role": "user", "content": exchange.user}));
            messages.push(json!({"role": "assistant", "content": exchange.assistant}));
        }
    }
    if backends.send_images && !descriptions.is_empty() {
        let mut parts = vec![json!({"type": "text", "text": user})];
        for (blob, _) in descriptions {
            parts.push(
                json!({"type": "image_url", "image_url": {"url": vision::data_url(&blob.value)}}),
            );
        }
        messages.push(json!({"role": "user", "content": parts}));
    } else {
        messages.push(json!({"role": "user", "content": user}));
    }
    messages
}

fn remember(entry: &Entry, keep: usize, exchange: Exchange) {
    if let Ok(mut history) = entry.history.lock() {
        history.push_back(exchange);
        while history.len() > keep {
            history.pop_front();
        }
    }
}
