//! The answer: `POST {base}/chat/completions` (OpenAI-compatible) with `stream: true`,
//! read as server-sent events by a task of its own, within the deadlines of
//! [`StreamTimeouts`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::chat::{JSON, Message, Request, StreamOptions};
use crate::client::{Backend, Outgoing, describe};
use crate::context::TurnContext;
use crate::error::{self, BackendError, TimeoutKind};
use crate::tape::Tape;

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

/// The deadlines of one streamed answer. Each one that passes ends the stream with a
/// [`BackendError::Timeout`] of its [`TimeoutKind`]. The backend's `timeout_ms` bounds
/// only the wait for a call slot and the connection (see
/// [`BackendConfig`](crate::BackendConfig)), never the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamTimeouts {
    /// From the moment the call has a slot (connection, retries and headers included) to the first
    /// content delta; SSE comments and empty chunks do not count. Default 10 s.
    pub first_token: Duration,
    /// Once the first delta has arrived, the longest gap between any bytes of the stream
    /// (SSE comment keep-alives count). Default 10 s.
    pub idle: Duration,
    /// The whole call, from the moment it has a slot to the end of the stream. Default 60 s.
    pub total: Duration,
}

impl Default for StreamTimeouts {
    fn default() -> Self {
        Self {
            first_token: Duration::from_secs(10),
            idle: Duration::from_secs(10),
            total: Duration::from_secs(60),
        }
    }
}

/// A running answer. Dropping it cancels the request.
pub struct LlmStream {
    events: mpsc::Receiver<Result<LlmEvent, BackendError>>,
    reader: JoinHandle<()>,
}

impl LlmStream {
    /// The next event: deltas, then `Done` or an error; `None` after that.
    ///
    /// Errors: `Timeout` (first token, idle or total), `StreamError` (the backend reported
    /// an error in the stream), `StreamBroken` (the stream ended without `[DONE]` or a
    /// `finish_reason`, or the connection failed), `Malformed` (a chunk is not JSON).
    pub async fn next(&mut self) -> Option<Result<LlmEvent, BackendError>> {
        self.events.recv().await
    }
}

impl Drop for LlmStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Starts a streamed chat completion of `messages` (OpenAI chat messages) and returns once
/// the backend has answered with an event stream; read it with [`LlmStream::next`].
/// The call waits for its slot first (up to the backend's `queue_timeout_ms`); its
/// deadlines run from when it has one. Retries (where configured) happen only before
/// the stream starts, within `timeouts.first_token`.
///
/// Errors: `Overloaded` (shed: no slot), `Timeout` (first token or total: no answer in
/// time), `Unavailable`, `Status`, `Malformed` (the answer is not an event stream),
/// `Config`.
pub async fn stream(
    backend: &Backend,
    ctx: &TurnContext,
    messages: Vec<Message>,
    timeouts: StreamTimeouts,
    tape: &Tape,
) -> Result<LlmStream, BackendError> {
    let slot = backend.slot(ctx).await?;
    let clock = Clock::start(backend.name, timeouts);
    let body = Request {
        model: &backend.config().model,
        user: ctx.turn_id.to_string(),
        messages: &messages,
        stream: true,
        stream_options: Some(StreamOptions {
            include_usage: true,
        }),
    }
    .to_json();
    let url = backend.url("/chat/completions");
    let outgoing = Outgoing {
        tape,
        body: &body,
        content_type: JSON,
    };
    let send = backend.send_in(ctx, true, None, &outgoing, |http| {
        http.post(&url)
            .header(reqwest::header::CONTENT_TYPE, JSON)
            .body(body.clone())
    });
    let (deadline, late) = clock.deadline(false);
    let response = tokio::time::timeout_at(deadline, send)
        .await
        .map_err(|_| late)??;
    let name = backend.name;
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("text/event-stream") {
        return Err(BackendError::Malformed {
            backend: name,
            detail: error::sanitize(&format!("expected an event stream, got {content_type:?}")),
        });
    }
    let (tx, events) = mpsc::channel(STREAM_BUFFER);
    let tape = tape.clone();
    let key = backend.config().api_key.clone();
    let reader = tokio::spawn(async move {
        let _slot = slot;
        if let Err(e) = read(clock, response, &tx, &tape).await {
            let _ = tx.send(Err(e.redact(key.as_ref()))).await;
        }
    });
    Ok(LlmStream { events, reader })
}

/// A call's deadlines, and when the reader last heard from the backend.
struct Clock {
    backend: &'static str,
    timeouts: StreamTimeouts,
    start: Instant,
    /// When bytes last arrived, or the reader last went back to waiting for them (time
    /// spent handing events to a slow consumer is not the backend's idleness).
    heard: Arc<Mutex<Instant>>,
}

impl Clock {
    fn start(backend: &'static str, timeouts: StreamTimeouts) -> Self {
        let start = Instant::now();
        Self {
            backend,
            timeouts,
            start,
            heard: Arc::new(Mutex::new(start)),
        }
    }

    /// The next deadline and the error of missing it: before the first delta the
    /// first-token deadline, after it the idle one; the total deadline if that is sooner.
    fn deadline(&self, started: bool) -> (Instant, BackendError) {
        let t = self.timeouts;
        let (mut from, mut kind, mut limit) = if started {
            (heard(&self.heard), TimeoutKind::Idle, t.idle)
        } else {
            (self.start, TimeoutKind::FirstToken, t.first_token)
        };
        if after(self.start, t.total) <= after(from, limit) {
            (from, kind, limit) = (self.start, TimeoutKind::Total, t.total);
        }
        let error = BackendError::Timeout {
            backend: self.backend,
            kind,
            ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        };
        (after(from, limit), error)
    }
}

/// `from + limit`, or a year from `from` if that is too far to represent.
fn after(from: Instant, limit: Duration) -> Instant {
    from.checked_add(limit)
        .unwrap_or_else(|| from + Duration::from_secs(365 * 24 * 3600))
}

/// When the backend was last heard from.
fn heard(heard: &Mutex<Instant>) -> Instant {
    *heard.lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks now as a moment the backend was heard from.
fn touch(heard: &Mutex<Instant>) {
    *heard.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
}

/// Reads the event stream into `tx` until `[DONE]`, an error or a deadline.
async fn read(
    clock: Clock,
    response: reqwest::Response,
    tx: &mpsc::Sender<Result<LlmEvent, BackendError>>,
    tape: &Tape,
) -> Result<(), BackendError> {
    let name = clock.backend;
    let broken = |detail: String| BackendError::StreamBroken {
        backend: name,
        detail,
    };
    let heard = Arc::clone(&clock.heard);
    let tape = tape.clone();
    let bytes = response.bytes_stream().inspect(move |chunk| {
        touch(&heard);
        if let Ok(chunk) = chunk {
            tape.body(chunk);
        }
    });
    let mut events = Box::pin(error_fields(Box::pin(bytes))).eventsource();
    let mut started = false;
    let (mut model, mut finish_reason, mut usage) = (None, None, None);
    let mut done = false;
    loop {
        let (deadline, late) = clock.deadline(started);
        let event = match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(event)) => event.map_err(|e| broken(transport(e)))?,
            Ok(None) => break,
            // Bytes that came without completing an event moved the idle deadline.
            Err(_) if clock.deadline(started).0 > Instant::now() => continue,
            Err(_) => return Err(late),
        };
        if event.data.trim() == "[DONE]" {
            done = true;
            break;
        }
        let chunk = parse(name, &event)?;
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
        {
            started = true;
            if tx.send(Ok(LlmEvent::Delta(text.to_owned()))).await.is_err() {
                return Ok(()); // the consumer is gone: cancelled
            }
            touch(&clock.heard);
        }
    }
    // Some servers end the stream after the last chunk without `[DONE]`.
    if !done && finish_reason.is_none() {
        return Err(broken("the stream ended without [DONE]".into()));
    }
    let _ = tx
        .send(Ok(LlmEvent::Done {
            model,
            finish_reason,
            usage,
        }))
        .await;
    Ok(())
}

/// An event's chunk, or the error the backend reported in it: an `error` event (or an
/// `error:` field, see [`error_fields`]), or a chunk with an `error` member. Only a JSON
/// error message is kept (sanitized, capped); other text the backend sent is not, as
/// it may echo the prompt.
fn parse(name: &'static str, event: &Event) -> Result<Value, BackendError> {
    let chunk: Option<Value> = serde_json::from_str(&event.data).ok();
    let reported = |message| BackendError::StreamError {
        backend: name,
        message,
    };
    match chunk {
        _ if event.event == "error" => Err(reported(chunk.as_ref().and_then(error::message_of))),
        Some(chunk) if !chunk["error"].is_null() => Err(reported(error::message_of(&chunk))),
        Some(chunk) => Ok(chunk),
        None => Err(BackendError::Malformed {
            backend: name,
            detail: "a stream chunk is not JSON".into(),
        }),
    }
}

/// Errors as llama.cpp's server streams them: a line `error: {...}`. The SSE spec has
/// no `error` field (a parser ignores it), so each such line becomes an `error` event's
/// `event:` and `data:` lines; every other byte passes unchanged. Lines are passed on
/// once complete (a line split across chunks waits for its end).
fn error_fields<S, E>(bytes: S) -> impl futures_util::Stream<Item = Result<Bytes, E>>
where
    S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
{
    let is_end = |b: &u8| *b == b'\n' || *b == b'\r';
    futures_util::stream::unfold(
        (bytes, Vec::new(), false),
        move |(mut bytes, mut pending, ended)| async move {
            if ended {
                return None;
            }
            loop {
                match bytes.next().await {
                    Some(Ok(chunk)) => {
                        pending.extend_from_slice(&chunk);
                        let Some(end) = pending.iter().rposition(is_end) else {
                            continue;
                        };
                        let rest = pending.split_off(end + 1);
                        let lines = rewrite_error_lines(&pending);
                        return Some((Ok(lines), (bytes, rest, false)));
                    }
                    Some(Err(e)) => return Some((Err(e), (bytes, pending, true))),
                    None if pending.is_empty() => return None,
                    None => {
                        let last = rewrite_error_lines(&pending);
                        return Some((Ok(last), (bytes, Vec::new(), true)));
                    }
                }
            }
        },
    )
}

fn rewrite_error_lines(lines: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(lines.len() + 16);
    for line in lines.split_inclusive(|b| *b == b'\n' || *b == b'\r') {
        match line.strip_prefix(b"error:") {
            Some(value) => {
                out.extend_from_slice(b"event: error\ndata:");
                out.extend_from_slice(value);
            }
            None => out.extend_from_slice(line),
        }
    }
    Bytes::from(out)
}

/// What broke the event stream, without the backend's bytes or the URL.
fn transport(e: EventStreamError<reqwest::Error>) -> String {
    match e {
        EventStreamError::Transport(e) => describe(e),
        EventStreamError::Utf8(_) => "the stream is not UTF-8".into(),
        EventStreamError::Parser(_) => "the stream is not server-sent events".into(),
    }
}
