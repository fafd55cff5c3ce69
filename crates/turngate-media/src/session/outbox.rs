//! Gateway → client events, in one order: the session's own events and the results of
//! turn processing pass through the session task, which sends them on the data channel
//! (or holds them in a bounded outbox until it opens).
//!
//! Results are gated here: a result of a turn the engine no longer admits (it was
//! interrupted, or it completed) is dropped. The engine marks a turn interrupted before
//! it outputs the `turn.started` of the turn that interrupted it, and this task sends
//! both, so no result of a turn can follow that `turn.started`. What the client was
//! sent of each answer is kept until the turn finishes: it is what the user heard.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tokio::time::Instant;
use turngate_core::{CompletionStatus, ServerEvent, Stages, TurnId};
use webrtc::data_channel::DataChannel;

use super::Driver;

/// How long a closing session waits for its last events to leave the data channel.
const FLUSH_GRACE: Duration = Duration::from_millis(250);

/// From turn processing to the session task.
pub enum ToClient {
    /// A result event of a turn (see [`ServerEvent::result_of`]).
    Result(ServerEvent),
    /// A turn's processing finished.
    Finish {
        /// The turn.
        turn_id: TurnId,
        /// How its stages ended.
        report: TurnReport,
        /// The turn's status and what the client heard.
        reply: oneshot::Sender<Finished>,
    },
}

/// How a turn's processing went, as its owner reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnReport {
    /// Each stage's outcome (`cancelled` for those a barge-in stopped).
    pub stages: Stages,
    /// The whole answer, if the LLM finished it: sent as `response.done` unless the turn
    /// was interrupted.
    pub answer: Option<String>,
    /// ASR: request sent to answer, in milliseconds.
    pub asr_ms: Option<u32>,
    /// Vision: first request sent to last answer, in milliseconds.
    pub vision_ms: Option<u32>,
    /// LLM: request sent to first content delta, in milliseconds.
    pub llm_first_token_ms: Option<u32>,
    /// LLM: request sent to the end of the stream, in milliseconds.
    pub llm_total_ms: Option<u32>,
    /// What processing made of the turn (transcript, descriptions, errors, …) for the
    /// session API. The session adds `response` (the answer as the client received
    /// it) and `completed` (the `turn.completed` event) and records it before
    /// `turn.completed` goes out, so a client that hears it can query the result.
    pub details: Map<String, Value>,
}

/// A finished turn, as the session recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// Its one terminal status (`interrupted` if it was spoken over before it finished).
    pub status: CompletionStatus,
    /// The answer as the client received it: the `response.delta`s it was sent.
    pub heard: String,
    /// The `turn.completed` event the client was sent.
    pub completed: ServerEvent,
}

/// Gateway → client events waiting for the data channel.
pub(super) struct Outbox {
    queue: VecDeque<String>,
    cap: usize,
}

impl Outbox {
    pub fn new(cap: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            cap,
        }
    }

    /// Queues an event; returns false (and keeps the older events) when full.
    fn push(&mut self, json: String) -> bool {
        if self.queue.len() >= self.cap {
            return false;
        }
        self.queue.push_back(json);
        true
    }

    /// Puts an event before all others (`session.ready`).
    pub fn push_front(&mut self, json: String) {
        self.queue.push_front(json);
    }
}

impl Driver {
    pub(super) async fn on_to_client(&mut self, message: ToClient) {
        match message {
            ToClient::Result(event) => {
                let Some(turn) = event.result_of() else {
                    return self.send_event(event).await;
                };
                if !self.engine.admits_results(turn) {
                    return;
                }
                if let ServerEvent::ResponseDelta { delta, .. } = &event {
                    self.heard.entry(turn).or_default().push_str(delta);
                }
                self.send_event(event).await;
            }
            ToClient::Finish {
                turn_id,
                report,
                reply,
            } => {
                let at = self.now();
                if let Some(text) = report
                    .answer
                    .filter(|_| self.engine.admits_results(turn_id))
                {
                    self.send_event(ServerEvent::ResponseDone { turn_id, text })
                        .await;
                }
                let status = match self.engine.handle_processing_finished(
                    at,
                    turn_id,
                    report.stages,
                ) {
                    Ok(status) => status,
                    Err(e) => {
                        tracing::warn!(session = %self.shared.id, turn = %turn_id, error = %e, "Processing finished for a turn not processing.");
                        return;
                    }
                };
                let completed = ServerEvent::TurnCompleted {
                    turn_id,
                    status,
                    stages: report.stages,
                    asr_ms: report.asr_ms,
                    vision_ms: report.vision_ms,
                    llm_first_token_ms: report.llm_first_token_ms,
                    llm_total_ms: report.llm_total_ms,
                };
                // Recorded first: whoever hears `turn.completed` finds the result.
                self.drain().await;
                let heard = self.heard.remove(&turn_id).unwrap_or_default();
                let mut details = report.details;
                details.insert("response".into(), Value::String(heard.clone()));
                details.insert(
                    "completed".into(),
                    serde_json::to_value(&completed).unwrap_or_default(),
                );
                let details = Value::Object(details);
                // A `Value` holds about twice its JSON text (strings plus map nodes).
                let text = serde_json::to_string(&details).map_or(0, |t| t.len());
                self.retain(2 * text + 64);
                if let Ok(mut results) = self.shared.results.lock() {
                    results.insert(turn_id, details);
                }
                self.send_event(completed.clone()).await;
                let _ = reply.send(Finished {
                    status,
                    heard,
                    completed,
                });
            }
        }
    }

    pub(super) async fn send_event(&mut self, event: ServerEvent) {
        let json = event.to_json();
        if self.channel.is_some() && self.outbox.queue.is_empty() && self.try_send(&json).await {
            return;
        }
        if !self.outbox.push(json) {
            self.shared
                .counters
                .events_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        self.flush_outbox().await;
    }

    pub(super) async fn flush_outbox(&mut self) {
        while let Some(json) = self.outbox.queue.front().cloned() {
            if self.channel.is_none() || !self.try_send(&json).await {
                return;
            }
            self.outbox.queue.pop_front();
        }
    }

    /// Sends without waiting; false when the channel is not open yet. A full send buffer
    /// drops the event (counted): a client that does not read must not stall media.
    async fn try_send(&mut self, json: &str) -> bool {
        let Some(channel) = &self.channel else {
            return false;
        };
        match channel.try_send_text(json).await {
            Ok(()) => true,
            Err(webrtc::error::Error::ErrSendBufferFull) => {
                self.shared
                    .counters
                    .events_dropped
                    .fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }
}

/// Waits (briefly) until a data channel has sent what is queued.
pub(super) async fn flush(channel: Arc<dyn DataChannel>) {
    let deadline = Instant::now() + FLUSH_GRACE;
    while Instant::now() < deadline {
        match channel.outstanding_bytes().await {
            Ok(0) | Err(_) => return,
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}
