//! The LLM stage: the prompt streamed to the LLM, its answer relayed to the client as
//! `response.delta`s; a barge-in stops it at once (the request is dropped).

use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use turngate_backends::chat::{self, Message};
use turngate_backends::llm::{self, LlmEvent};
use turngate_core::{ServerEvent, StageStatus};
use turngate_telemetry::names::{self, attr, span};
use turngate_telemetry::{TurnTrace, content};

use super::call::Call;
use super::ms;
use super::stage::Job;

/// How the LLM stage went.
pub(super) struct Answer {
    pub status: StageStatus,
    /// The whole answer, if the stream finished: sent as `response.done`.
    pub text: Option<String>,
    pub first_token_ms: Option<u32>,
    pub total_ms: Option<u32>,
}

/// Streams the answer to `messages`; `cancel` (barge-in) stops it between any two
/// events, the cancellation checked first.
pub(super) async fn run(
    job: &Job<'_>,
    messages: Vec<Message>,
    cancel: &CancellationToken,
) -> Answer {
    let backends = job.backends();
    let Some(backend) = backends.llm.as_ref() else {
        return Answer {
            status: StageStatus::Skipped,
            text: None,
            first_token_ms: None,
            total_ms: None,
        };
    };
    let carries_images = messages.iter().any(|m| match &m.content {
        chat::Content::Parts(parts) => parts
            .iter()
            .any(|p| matches!(p, chat::Part::ImageUrl { .. })),
        chat::Content::Text(_) => false,
    });
    let call = Call::start(job, span::LLM, "llm".into(), backend, carries_images);
    let prompt_bytes = chat::json_len(&messages);
    call.attr(attr::REQUEST_BYTES, prompt_bytes as i64);
    call.input(&messages);
    let mut answer = String::new();
    let mut delivery = Delivery::default();
    let mut first_token_ms = None;
    let mut finish_reason = None;
    let opened = tokio::select! {
        biased;
        () = cancel.cancelled() => None,
        opened = llm::stream(backend, &call.ctx, messages, backends.llm_timeouts, &call.tape)
            .instrument(call.span.clone()) => Some(opened),
    };
    let outcome = match opened {
        None => Outcome::Cancelled,
        Some(Err(e)) => Outcome::Failed(e),
        Some(Ok(mut stream)) => loop {
            let event = tokio::select! {
                biased;
                () = cancel.cancelled() => break Outcome::Cancelled,
                event = stream.next() => event,
            };
            match event {
                Some(Ok(LlmEvent::Delta(delta))) => {
                    if first_token_ms.is_none() {
                        let took = ms(call.started);
                        first_token_ms = Some(took);
                        call.attr(attr::TIME_TO_FIRST_TOKEN_MS, i64::from(took));
                        call.span.add_event(names::event::FIRST_TOKEN, Vec::new());
                        job.metrics()
                            .llm_first_token
                            .observe([], call.started.elapsed().as_secs_f64());
                    }
                    answer.push_str(&delta);
                    delivery.relay(job.trace, delta.len());
                    let event = ServerEvent::ResponseDelta {
                        turn_id: job.ctx.turn_id,
                        delta,
                    };
                    job.shared.send_result(event).await;
                }
                Some(Ok(LlmEvent::Done {
                    model,
                    finish_reason: reason,
                    usage,
                })) => {
                    if let Some(model) = model {
                        call.attr(attr::GEN_AI_RESPONSE_MODEL, model);
                    }
                    if let Some(reason) = &reason {
                        call.attr(
                            attr::GEN_AI_FINISH_REASONS,
                            opentelemetry::Value::Array(
                                vec![opentelemetry::StringValue::from(reason.clone())].into(),
                            ),
                        );
                    }
                    finish_reason = reason;
                    if let Some(usage) = usage {
                        call.attr(attr::GEN_AI_INPUT_TOKENS, usage.input_tokens as i64);
                        call.attr(attr::GEN_AI_OUTPUT_TOKENS, usage.output_tokens as i64);
                    }
                    break Outcome::Done;
                }
                Some(Err(e)) => break Outcome::Failed(e),
                None => {
                    break Outcome::Failed(turngate_backends::BackendError::StreamBroken {
                        backend: backend.name,
                        detail: "the stream ended early".into(),
                    });
                }
            }
        },
    };
    delivery.finish();
    call.attr(attr::RESPONSE_BYTES, answer.len() as i64);
    call.content(attr::GEN_AI_OUTPUT_MESSAGES, || {
        content::output_messages(&answer, finish_reason.as_deref())
    });
    let (status, text) = match outcome {
        Outcome::Done => {
            call.finish(Ok(()));
            (StageStatus::Ok, Some(answer))
        }
        Outcome::Cancelled => {
            call.finish_as("cancelled");
            (StageStatus::Cancelled, None)
        }
        Outcome::Failed(e) => {
            call.finish(Err(&e));
            job.fail("LLM", &e).await;
            (StageStatus::Failed, None)
        }
    };
    Answer {
        status,
        text,
        first_token_ms,
        total_ms: Some(ms(call.started)),
    }
}

enum Outcome {
    Done,
    Cancelled,
    Failed(turngate_backends::BackendError),
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
