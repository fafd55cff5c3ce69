//! An in-process OpenAI-compatible server (ASR, vision, streamed chat) that records
//! what it receives and misbehaves on demand; and helpers to run turns against it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Multipart, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};

use crate::{Client, Gateway, data, encode_opus, wav};

pub const TRANSCRIPT: &str = "please turn on the kitchen lights";
pub const DESCRIPTION: &str = "A screenshot of an error dialog saying: disk full.";
/// Prompt tokens the fake LLM reports using.
pub const PROMPT_TOKENS: u64 = 42;
pub const DELTAS: [&str; 3] = ["Sure", ", turning on", " the kitchen lights."];

/// What the fake backends received.
#[derive(Default)]
pub struct Seen {
    /// (path, traceparent, baggage) of every request.
    pub headers: Vec<(String, String, String)>,
    /// The WAV files ASR got, with their model field.
    pub wavs: Vec<(Vec<u8>, String)>,
    /// The JSON bodies of chat requests.
    pub chats: Vec<Value>,
    /// How each stage misbehaves now.
    pub asr_fault: Fault,
    pub vision_fault: Fault,
    pub llm_fault: Fault,
    /// Delay of ASR answers, by the turn id in the request's traceparent.
    pub asr_delay: Vec<(String, Duration)>,
    /// Whether an LLM stream was cut off by its client.
    pub llm_cancelled: bool,
}

impl Seen {
    /// Transcription requests received.
    pub fn transcriptions(&self) -> usize {
        self.headers
            .iter()
            .filter(|h| h.0 == "audio/transcriptions")
            .count()
    }

    /// Streamed chat (LLM) requests received.
    pub fn streams(&self) -> usize {
        self.chats.iter().filter(|c| c["stream"] == true).count()
    }
}

/// A way for a fake backend to misbehave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    Status500,
    Status400,
    Malformed,
    Slow,
    /// Answers normally, after 10 s.
    Hang,
    /// LLM only: the stream stops after a delta, without [DONE].
    Break,
    /// LLM only: deltas come slowly, for a barge-in.
    Trickle,
    /// A 500 whose JSON body carries an error message with control characters, and
    /// the prompt echoed back (as some servers do).
    Status500Json,
    /// LLM only: `200`, a delta, then an error inside the stream as llama.cpp and
    /// proxies send it: a `data:` object with an `error` member.
    StreamErrorData,
    /// LLM only: `200`, then an SSE `event: error`.
    StreamErrorEvent,
}

/// A marker the fake backends put into error bodies; it must never reach a client or
/// the gateway's log.
pub const SECRET_IN_BODY: &str = "SECRET-ECHOED-PROMPT";

/// The misbehaviour `fault` as a response, or `None` to answer normally.
async fn misbehave(fault: Fault) -> Option<axum::response::Response> {
    match fault {
        Fault::Status500 => Some(
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("boom: {SECRET_IN_BODY}"),
            )
                .into_response(),
        ),
        Fault::Status500Json => Some(
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({
                    "error": {"message": "model\n\toverloaded\u{7}", "type": "server_error"},
                    "prompt": SECRET_IN_BODY,
                })),
            )
                .into_response(),
        ),
        Fault::Status400 => {
            Some((axum::http::StatusCode::BAD_REQUEST, "bad request").into_response())
        }
        Fault::Malformed => {
            Some(([("content-type", "application/json")], "{not json").into_response())
        }
        Fault::Slow => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            None
        }
        Fault::Hang => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            None
        }
        _ => None,
    }
}

pub type Shared = Arc<Mutex<Seen>>;

fn record(seen: &Shared, path: &str, headers: &HeaderMap) {
    let get = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    seen.lock()
        .unwrap()
        .headers
        .push((path.to_owned(), get("traceparent"), get("baggage")));
}

async fn transcriptions(
    State(seen): State<Shared>,
    headers: HeaderMap,
    mut form: Multipart,
) -> axum::response::Response {
    record(&seen, "audio/transcriptions", &headers);
    let fault = seen.lock().unwrap().asr_fault;
    if let Some(response) = misbehave(fault).await {
        return response;
    }
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let turn = traceparent.get(3..35).unwrap_or("").to_owned();
    let delay = seen
        .lock()
        .unwrap()
        .asr_delay
        .iter()
        .find(|(t, _)| *t == turn)
        .map(|(_, d)| *d);
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let (mut wav, mut model, mut format) = (Vec::new(), String::new(), String::new());
    while let Ok(Some(field)) = form.next_field().await {
        match field.name().unwrap_or("") {
            "file" => wav = field.bytes().await.unwrap().to_vec(),
            "model" => model = field.text().await.unwrap(),
            "response_format" => format = field.text().await.unwrap(),
            _ => {}
        }
    }
    assert_eq!(format, "json");
    seen.lock().unwrap().wavs.push((wav, model));
    // The text names the turn it heard, so a test can tell answers apart.
    let named = !seen.lock().unwrap().asr_delay.is_empty();
    let text = if named {
        format!("turn {turn}")
    } else {
        TRANSCRIPT.to_owned()
    };
    axum::Json(json!({ "text": text })).into_response()
}

async fn chat(
    State(seen): State<Shared>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> axum::response::Response {
    record(&seen, "chat/completions", &headers);
    let stream = body["stream"] == true;
    seen.lock().unwrap().chats.push(body);
    let fault = if stream {
        seen.lock().unwrap().llm_fault
    } else {
        seen.lock().unwrap().vision_fault
    };
    if let Some(response) = misbehave(fault).await {
        return response;
    }
    if let Some(sse) = in_stream_error(fault) {
        return ([("content-type", "text/event-stream")], sse).into_response();
    }
    if fault == Fault::Break || fault == Fault::Trickle {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(1);
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            for i in 0..40 {
                let chunk = json!({"choices": [{"delta": {"content": format!("word{i} ")}}]});
                if tx.send(Ok(format!("data: {chunk}\n\n"))).await.is_err() {
                    seen.lock().unwrap().llm_cancelled = true;
                    return;
                }
                if fault == Fault::Break {
                    return; // the stream ends here, without [DONE]
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let _ = tx.send(Ok("data: [DONE]\n\n".to_owned())).await;
        });
        let body = axum::body::Body::from_stream(tokio_stream_from(rx));
        return ([("content-type", "text/event-stream")], body).into_response();
    }
    if !stream {
        return axum::Json(
            json!({"choices": [{"message": {"role": "assistant", "content": DESCRIPTION}}]}),
        )
        .into_response();
    }
    let mut sse = String::new();
    for delta in DELTAS {
        let chunk = json!({"model": "fake-llm", "choices": [{"delta": {"content": delta}, "finish_reason": null}]});
        sse.push_str(&format!("data: {chunk}\n\n"));
    }
    sse.push_str(&format!(
        "data: {}\n\n",
        json!({"choices": [{"delta": {}, "finish_reason": "stop"}]})
    ));
    sse.push_str(&format!(
        "data: {}\n\n",
        json!({"choices": [], "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": DELTAS.len()}})
    ));
    sse.push_str("data: [DONE]\n\n");
    ([("content-type", "text/event-stream")], sse).into_response()
}

/// A `200` event stream that reports an error after its first delta.
fn in_stream_error(fault: Fault) -> Option<String> {
    let delta = json!({"choices": [{"delta": {"content": "Sure"}}]});
    let error = match fault {
        Fault::StreamErrorData => format!(
            "data: {}\n\n",
            json!({"error": {"message": "the context window is full", "code": 500}})
        ),
        Fault::StreamErrorEvent => format!(
            "event: error\ndata: {}\n\n",
            json!({"error": {"message": "upstream reset the stream"}})
        ),
        _ => return None,
    };
    Some(format!("data: {delta}\n\n{error}"))
}

/// A receiver as a stream of body chunks.
fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<Result<String, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<String, std::io::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

pub async fn fake_openai() -> anyhow::Result<(String, Shared)> {
    let seen = Shared::default();
    let app = Router::new()
        .route("/v1/audio/transcriptions", post(transcriptions))
        .route("/v1/chat/completions", post(chat))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((base, seen))
}

/// The gateway environment for ASR, vision and LLM backends at these base URLs (empty:
/// not configured), with short timeouts.
pub fn backend_env(asr: &str, vision: &str, llm: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TURNGATE_ASR_URL", asr.to_owned()),
        ("TURNGATE_ASR_TIMEOUT_MS", "800".to_owned()),
        ("TURNGATE_VISION_URL", vision.to_owned()),
        ("TURNGATE_VISION_TIMEOUT_MS", "800".to_owned()),
        ("TURNGATE_LLM_URL", llm.to_owned()),
        ("TURNGATE_LLM_TIMEOUT_MS", "5000".to_owned()),
    ]
}

pub async fn start_with(env: &[(&'static str, String)]) -> anyhow::Result<Gateway> {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Gateway::start(&[], &env).await
}

/// One client turn with a second of speech (and an image, if given); returns its
/// `turn.completed` and the `error` events that came with it.
pub async fn client_turn(
    client: &Client,
    n: usize,
    image: Option<&[u8]>,
) -> anyhow::Result<(Value, Vec<Value>)> {
    let errors_before = client.inbox.of("error").len();
    let (rate, pcm) = wav::read(&data("speech.wav"))?;
    let packets = encode_opus(rate, &pcm)?;
    client.send_event(json!({"type": "turn.start"})).await?;
    client
        .inbox
        .wait("turn.started", n, Duration::from_secs(3))
        .await?;
    if let Some(image) = image {
        client
            .upload(&format!("img-{n}"), "image/png", image, 16 * 1024)
            .await?;
    }
    client.send_packets(&packets[25..75], &[]).await?;
    client.send_event(json!({"type": "turn.end"})).await?;
    let completed = client
        .inbox
        .wait("turn.completed", n, Duration::from_secs(15))
        .await?;
    Ok((
        completed[n - 1].clone(),
        client.inbox.of("error")[errors_before..].to_vec(),
    ))
}
