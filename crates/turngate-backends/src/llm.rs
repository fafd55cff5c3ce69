//! The answer: `POST {base}/chat/completions` (OpenAI-compatible) with `stream: true`,
//! read as server-sent events by a task of its own.

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::client::Backend;
use crate::context::TurnContext;
use crate::error::BackendError;

/// Events buffered between the SSE reader and its consumer.
const STREAM_BUFFER: usize = 64;

/// What the stream yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LlmEvent {
    /// A piece of the answer.
    Delta(String),
    /// The answer is complete.
    Done {
        /// The model that answered, if it said.
        model: Option<String>,
        /// Why it stopped, if it said.
        finish_reason: Option<String>,
        /// Tokens used, if it said.
        usage: Option<Usage>,
    },
}

/// Tokens an answer used, as the stream's final `usage` chunk reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
}

/// A running answer. Dropping it cancels the request.
pub struct LlmStream {
    events: mpsc::Receiver<Result<LlmEvent, BackendError>>,
    reader: JoinHandle<()>,
}

impl LlmStream {
    /// The next event; `None` after `Done` or an error.
    pub async fn next(&mut self) -> Option<Result<LlmEvent, BackendError>> {
        self.events.recv().await
    }
}

impl Drop for LlmStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Starts a streamed chat completion. Retries (where configured) happen only before the
/// stream starts; once it has, a failure ends it with `StreamBroken`.
pub async fn stream(
    backend: &Backend,
    ctx: &TurnContext,
    messages: Vec<Value>,
) -> Result<LlmStream, BackendError> {
    let body = json!({
        "model": backend.config().model,
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": ctx.turn_id.to_string(),
        "messages": messages,
    });
    let url = backend.url("/chat/completions");
    let (response, permit) = backend
        .send(ctx, true, |http| http.post(&url).json(&body))
        .await?;
    let name = backend.name;
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("text/event-stream") {
        return Err(BackendError::Malformed {
            backend: name,
            detail: format!("expected an event stream, got {content_type:?}"),
        });
    }
    let (tx, events) = mpsc::channel(STREAM_BUFFER);
    let reader = tokio::spawn(async move {
        let _permit = permit;
        let result = read(name, response, &tx).await;
        if let Err(e) = result {
            let _ = tx.send(Err(e)).await;
        }
    });
    Ok(LlmStream { events, reader })
}

async fn read(
    name: &'static str,
    response: reqwest::Response,
    tx: &mpsc::Sender<Result<LlmEvent, BackendError>>,
) -> Result<(), BackendError> {
    let broken = |detail: String| BackendError::StreamBroken {
        backend: name,
        detail,
    };
    let mut events = response.bytes_stream().eventsource();
    let (mut model, mut finish_reason, mut usage) = (None, None, None);
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| broken(e.to_string()))?;
        if event.data.trim() == "[DONE]" {
            let _ = tx
                .send(Ok(LlmEvent::Done {
                    model,
                    finish_reason,
                    usage,
                }))
                .await;
            return Ok(());
        }
        let chunk: Value =
            serde_json::from_str(&event.data).map_err(|e| BackendError::Malformed {
                backend: name,
                detail: format!("a stream chunk: {e}"),
            })?;
        if let Some(m) = chunk["model"].as_str() {
            model = Some(m.to_owned());
        }
        if let (Some(input_tokens), Some(output_tokens)) = (
            chunk["usage"]["prompt_tokens"].as_u64(),
            chunk["usage"]["completion_tokens"].as_u64(),
        ) {
            usage = Some(Usage {
                input_tokens,
                output_tokens,
            });
        }
        if let Some(reason) = chunk["choices"][0]["finish_reason"].as_str() {
            finish_reason = Some(reason.to_owned());
        }
        if let Some(text) = chunk["choices"][0]["delta"]["content"].as_str()
            && !text.is_empty()
            && tx.send(Ok(LlmEvent::Delta(text.to_owned()))).await.is_err()
        {
            return Ok(()); // the consumer is gone: cancelled
        }
    }
    Err(broken("the stream ended without [DONE]".into()))
}
