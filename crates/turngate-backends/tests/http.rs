//! The backend calls against in-process OpenAI-compatible servers on loopback: status
//! errors, the LLM stream's deadlines and its in-stream errors, ASR and vision answers.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use turngate_backends::chat::{Message, Role};
use turngate_backends::error::{MESSAGE_CAP, TimeoutKind};
use turngate_backends::llm::{self, LlmEvent, LlmStream, StreamTimeouts, Usage};
use turngate_backends::{
    Backend, BackendConfig, BackendError, Tape, TurnContext, asr, vision, wav,
};
use turngate_core::{ErrorCode, SessionId, SpanId, TurnId};

// ---- Servers -------------------------------------------------------------------------

/// One step of a scripted response body.
#[derive(Clone)]
enum Step {
    /// Send these bytes.
    Send(String),
    /// Send nothing for this many milliseconds.
    Wait(u64),
}
use Step::{Send, Wait};

/// A `text/event-stream` response that plays `steps`, then ends.
fn sse(steps: Vec<Step>) -> Response {
    let body = futures_util::stream::unfold(steps.into_iter(), |mut steps| async move {
        loop {
            match steps.next()? {
                Wait(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Send(bytes) => return Some((Ok::<_, Infallible>(bytes), steps)),
            }
        }
    });
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}

/// `data: {chunk}` with one content delta.
fn delta(text: &str) -> Step {
    data(
        json!({"model": "m-1", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]}),
    )
}

/// `data: {value}` as one event.
fn data(value: Value) -> Step {
    Send(format!("data: {value}\n\n"))
}

fn done() -> Step {
    Send("data: [DONE]\n\n".into())
}

/// Serves `route` on 127.0.0.1; returns the API base URL.
async fn serve(path: &str, route: axum::routing::MethodRouter) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let app = Router::new().route(&format!("/v1{path}"), route);
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// An LLM server that streams `steps` to every request.
async fn llm_server(steps: Vec<Step>) -> String {
    serve(
        "/chat/completions",
        post(move || {
            let steps = steps.clone();
            async move { sse(steps) }
        }),
    )
    .await
}

/// A server answering every request on `path` with `status` and `body`.
async fn error_server(path: &str, status: u16, content_type: &'static str, body: &str) -> String {
    let body = body.to_owned();
    serve(
        path,
        post(move || async move {
            let status = StatusCode::from_u16(status).unwrap();
            (status, [("content-type", content_type)], body).into_response()
        }),
    )
    .await
}

// ---- Clients -------------------------------------------------------------------------

fn backend(name: &'static str, url: &str, timeout_ms: u64, retries: u32) -> Backend {
    let config = BackendConfig {
        url: url.into(),
        model: "m".into(),
        timeout_ms,
        retries,
        ..BackendConfig::default()
    };
    Backend::new(name, config).unwrap()
}

fn ctx() -> TurnContext {
    TurnContext {
        session_id: SessionId::from_bytes([2; 16]).unwrap(),
        turn_id: TurnId::from_bytes([1; 16]).unwrap(),
        parent: SpanId::from_bytes([3; 8]).unwrap(),
        flags: 1,
    }
}

fn messages() -> Vec<Message> {
    vec![Message::text(Role::User, "hello")]
}

fn timeouts(first_token: u64, idle: u64, total: u64) -> StreamTimeouts {
    StreamTimeouts {
        first_token: Duration::from_millis(first_token),
        idle: Duration::from_millis(idle),
        total: Duration::from_millis(total),
    }
}

/// The stream's deltas and how it ended: `Done` or an error.
/// The error a call to `llm` that is expected to fail before its stream ends with;
/// panics with `why` if it does not.
async fn stream_error(llm: &Backend, why: &str) -> BackendError {
    let Err(e) = llm::stream(
        llm,
        &ctx(),
        messages(),
        StreamTimeouts::default(),
        &Tape::OFF,
    )
    .await
    else {
        panic!("{why}");
    };
    e
}

async fn collect(stream: &mut LlmStream) -> (Vec<String>, Result<LlmEvent, BackendError>) {
    let mut deltas = Vec::new();
    loop {
        match stream
            .next()
            .await
            .expect("the stream ends with Done or an error")
        {
            Ok(LlmEvent::Delta(d)) => deltas.push(d),
            other => return (deltas, other),
        }
    }
}

/// Streams from an LLM server playing `steps`, with `timeouts`.
async fn play(
    steps: Vec<Step>,
    t: StreamTimeouts,
) -> (Vec<String>, Result<LlmEvent, BackendError>) {
    let url = llm_server(steps).await;
    let llm = backend("llm", &url, 5_000, 0);
    let mut stream = llm::stream(&llm, &ctx(), messages(), t, &Tape::OFF)
        .await
        .unwrap();
    collect(&mut stream).await
}

fn timeout(kind: TimeoutKind, ms: u64) -> BackendError {
    BackendError::Timeout {
        backend: "llm",
        kind,
        ms,
    }
}

// ---- Status errors -------------------------------------------------------------------

#[tokio::test]
async fn status_error_keeps_only_the_sanitized_message() {
    let body = r#"{"error":{"message":"Overloaded,\n\ttry\u0007 later","type":"server_error","param":"secret prompt"}}"#;
    let url = error_server("/chat/completions", 503, "application/json", body).await;
    let llm = backend("llm", &url, 5_000, 0);
    let e = stream_error(&llm, "a 503 fails the call").await;
    let expected = BackendError::Status {
        backend: "llm",
        status: 503,
        message: Some("Overloaded, try later".into()),
    };
    assert_eq!(e, expected);
    assert_eq!(e.to_string(), "llm answered 503: Overloaded, try later");
    assert_eq!(
        e.client_message(),
        "llm answered 503: Overloaded, try later"
    );
    assert_eq!(e.code(), ErrorCode::BackendStatus);
}

#[tokio::test]
async fn non_json_status_body_contributes_nothing() {
    let body = "<html>Traceback at db-7.internal: password=hunter2</html>";
    let url = error_server("/chat/completions", 500, "text/html", body).await;
    let llm = backend("llm", &url, 5_000, 0);
    let e = stream_error(&llm, "a 500 fails the call").await;
    let expected = BackendError::Status {
        backend: "llm",
        status: 500,
        message: None,
    };
    assert_eq!(e, expected);
    assert_eq!(e.to_string(), "llm answered 500");
}

#[tokio::test]
async fn long_status_message_is_capped() {
    let body =
        json!({"message": format!("{}\n{}", "ü".repeat(150), "x".repeat(5_000))}).to_string();
    let url = error_server("/audio/transcriptions", 400, "application/json", &body).await;
    let asr = backend("asr", &url, 5_000, 0);
    let e = asr::transcribe(&asr, &ctx(), wav::encode(&[0; 160]).into(), &Tape::OFF)
        .await
        .unwrap_err();
    let BackendError::Status {
        status: 400,
        message: Some(message),
        ..
    } = &e
    else {
        panic!("{e:?}");
    };
    assert_eq!(message.chars().count(), MESSAGE_CAP);
    assert!(message.starts_with(&format!("{} x", "ü".repeat(150))));
    assert!(message.ends_with("x…"));
    assert!(e.to_string().chars().count() < MESSAGE_CAP + 30);
}

#[tokio::test]
async fn detail_message_of_a_vision_error() {
    let url = error_server(
        "/chat/completions",
        404,
        "application/json",
        r#"{"detail":"Not Found"}"#,
    )
    .await;
    let vision = backend("vision", &url, 5_000, 0);
    let e = vision::describe(&vision, &ctx(), messages(), &Tape::OFF)
        .await
        .unwrap_err();
    assert_eq!(e.client_message(), "vision answered 404: Not Found");
}

#[tokio::test]
async fn unavailable_client_message_leaves_out_the_transport() {
    // A port that was just free: connections are refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    drop(listener);
    let llm = backend("llm", &url, 5_000, 0);
    let e = stream_error(&llm, "nothing listens").await;
    assert!(matches!(e, BackendError::Unavailable { .. }), "{e:?}");
    assert_eq!(e.client_message(), "llm is unavailable");
    let logged = e.to_string();
    assert!(
        logged.starts_with("llm is unavailable: ") && logged.len() > 20,
        "{logged}"
    );
    assert!(!logged.contains("127.0.0.1"), "{logged}");
}

#[tokio::test]
async fn retries_before_the_stream_starts() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let url = serve(
        "/chat/completions",
        post(move || {
            let first = seen.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response()
                } else {
                    sse(vec![delta("ok"), done()])
                }
            }
        }),
    )
    .await;
    let llm = backend("llm", &url, 5_000, 1);
    let tape = Tape::recording();
    let mut stream = llm::stream(&llm, &ctx(), messages(), StreamTimeouts::default(), &tape)
        .await
        .unwrap();
    let (deltas, end) = collect(&mut stream).await;
    assert_eq!(deltas, ["ok"]);
    assert!(matches!(end, Ok(LlmEvent::Done { .. })), "{end:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The tape holds both attempts: the same body, each answer as it came.
    let exchanges = tape.exchanges();
    assert_eq!(exchanges.len(), 2);
    assert_eq!(exchanges[0].request, exchanges[1].request);
    let body: Value = serde_json::from_slice(&exchanges[0].request).unwrap();
    assert_eq!(body["stream"], true);
    assert_eq!(
        (exchanges[0].status, &exchanges[0].response[..]),
        (Some(503), &b"busy"[..])
    );
    assert_eq!(exchanges[1].status, Some(200));
    assert!(exchanges[1].response_type.starts_with("text/event-stream"));
    let stream = String::from_utf8_lossy(&exchanges[1].response);
    assert!(
        stream.contains("\"ok\"") && stream.contains("[DONE]"),
        "{stream}"
    );
}

// ---- LLM deadlines -------------------------------------------------------------------

#[tokio::test]
async fn first_token_timeout_covers_the_headers() {
    let url = serve(
        "/chat/completions",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            sse(vec![delta("late"), done()])
        }),
    )
    .await;
    let llm = backend("llm", &url, 5_000, 0);
    let started = Instant::now();
    let result = llm::stream(
        &llm,
        &ctx(),
        messages(),
        timeouts(400, 10_000, 60_000),
        &Tape::OFF,
    )
    .await;
    assert_eq!(result.err(), Some(timeout(TimeoutKind::FirstToken, 400)));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn first_token_timeout_is_not_held_off_by_keep_alives() {
    // Headers at once, then only comments and an empty role chunk before the first delta.
    let mut steps = vec![data(
        json!({"choices": [{"delta": {"role": "assistant", "content": ""}}]}),
    )];
    for _ in 0..30 {
        steps.extend([Wait(100), Send(": keep-alive\n\n".into())]);
    }
    steps.extend([delta("late"), done()]);
    let started = Instant::now();
    let (deltas, end) = play(steps, timeouts(500, 10_000, 60_000)).await;
    assert!(deltas.is_empty());
    assert_eq!(end, Err(timeout(TimeoutKind::FirstToken, 500)));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn idle_timeout_after_a_stall() {
    let steps = vec![delta("Hel"), Wait(3_000), delta("lo"), done()];
    let started = Instant::now();
    let (deltas, end) = play(steps, timeouts(5_000, 400, 60_000)).await;
    assert_eq!(deltas, ["Hel"]);
    assert_eq!(end, Err(timeout(TimeoutKind::Idle, 400)));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn total_timeout_ends_a_trickle() {
    let mut steps = Vec::new();
    for i in 0..60 {
        steps.extend([delta(&format!("w{i} ")), Wait(100)]);
    }
    steps.push(done());
    let started = Instant::now();
    let (deltas, end) = play(steps, timeouts(5_000, 1_000, 800)).await;
    assert!(!deltas.is_empty() && deltas.len() < 60, "{deltas:?}");
    assert_eq!(end, Err(timeout(TimeoutKind::Total, 800)));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn keep_alive_comments_hold_off_the_idle_timeout() {
    // 1.5 s between the two deltas, idle 600 ms, a comment every 100 ms.
    let mut steps = vec![delta("a")];
    for _ in 0..15 {
        steps.extend([Wait(100), Send(": keep-alive\n\n".into())]);
    }
    steps.extend([delta("b"), done()]);
    let (deltas, end) = play(steps, timeouts(5_000, 600, 60_000)).await;
    assert_eq!(deltas, ["a", "b"]);
    assert!(matches!(end, Ok(LlmEvent::Done { .. })), "{end:?}");
}

#[tokio::test]
async fn the_request_timeout_does_not_cut_the_stream() {
    // `timeout_ms` is 300 ms; the stream takes about 1 s.
    let mut steps = Vec::new();
    for i in 0..10 {
        steps.extend([delta(&i.to_string()), Wait(100)]);
    }
    steps.push(done());
    let url = llm_server(steps).await;
    let llm = backend("llm", &url, 300, 0);
    let mut stream = llm::stream(
        &llm,
        &ctx(),
        messages(),
        timeouts(5_000, 5_000, 10_000),
        &Tape::OFF,
    )
    .await
    .unwrap();
    let (deltas, end) = collect(&mut stream).await;
    assert_eq!(deltas.len(), 10);
    assert!(matches!(end, Ok(LlmEvent::Done { .. })), "{end:?}");
}

#[tokio::test]
async fn unbounded_timeouts_do_not_overflow() {
    let max = StreamTimeouts {
        first_token: Duration::MAX,
        idle: Duration::MAX,
        total: Duration::MAX,
    };
    let (deltas, end) = play(vec![delta("a"), done()], max).await;
    assert_eq!(deltas, ["a"]);
    assert!(matches!(end, Ok(LlmEvent::Done { .. })), "{end:?}");
}

// ---- Errors inside a 200 stream ------------------------------------------------------

#[tokio::test]
async fn error_event_fails_the_stream() {
    let cases = [
        (
            r#"{"error":{"message":"model\ncrashed","code":500}}"#,
            Some("model crashed"),
        ),
        (r#"{"message":"overloaded"}"#, Some("overloaded")),
        // Plain text may echo the prompt: not passed on.
        ("upstream\u{1} failed SECRET", None),
        (r#"{"code":500}"#, None),
    ];
    for (payload, message) in cases {
        let steps = vec![
            delta("Hi"),
            Send(format!("event: error\ndata: {payload}\n\n")),
            done(),
        ];
        let (deltas, end) = play(steps, StreamTimeouts::default()).await;
        assert_eq!(deltas, ["Hi"]);
        let expected = BackendError::StreamError {
            backend: "llm",
            message: message.map(Into::into),
        };
        assert_eq!(end, Err(expected), "{payload}");
    }
}

#[tokio::test]
async fn error_field_as_llama_cpp_sends_it_fails_the_stream() {
    for split in [false, true] {
        let error = r#"error: {"message":"the context window is full","code":500}"#;
        let mut steps = vec![delta("Hi")];
        if split {
            // The line arrives in two pieces.
            steps.push(Send(error[..9].to_owned()));
            steps.push(Send(format!("{}\r\n\r\n", &error[9..])));
        } else {
            steps.push(Send(format!("{error}\n\n")));
        }
        steps.push(done());
        let (deltas, end) = play(steps, StreamTimeouts::default()).await;
        assert_eq!(deltas, ["Hi"]);
        let expected = BackendError::StreamError {
            backend: "llm",
            message: Some("the context window is full".into()),
        };
        assert_eq!(end, Err(expected), "split: {split}");
    }
}

#[tokio::test]
async fn data_error_member_fails_the_stream() {
    let cases = [
        (
            json!({"error": {"message": "context overflow", "code": 500}}),
            Some("context overflow"),
        ),
        (json!({"error": "oops"}), Some("oops")),
        (json!({"error": {"code": 500}}), None),
    ];
    for (chunk, message) in cases {
        let steps = vec![delta("Hi"), data(chunk.clone()), done()];
        let (deltas, end) = play(steps, StreamTimeouts::default()).await;
        assert_eq!(deltas, ["Hi"]);
        let Err(e) = end else {
            panic!("{chunk} fails the stream")
        };
        assert_eq!(e.code(), ErrorCode::BackendStatus);
        let expected = BackendError::StreamError {
            backend: "llm",
            message: message.map(Into::into),
        };
        assert_eq!(e, expected, "{chunk}");
    }
}

// ---- Streams that keep working -------------------------------------------------------

#[tokio::test]
async fn usage_only_chunk_with_empty_choices() {
    let steps = vec![
        delta("Hi"),
        data(json!({"choices": [{"delta": {}, "finish_reason": "stop"}]})),
        data(json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 1}})),
        done(),
    ];
    let (deltas, end) = play(steps, StreamTimeouts::default()).await;
    assert_eq!(deltas, ["Hi"]);
    let expected = LlmEvent::Done {
        model: Some("m-1".into()),
        finish_reason: Some("stop".into()),
        usage: Some(Usage {
            input_tokens: 7,
            output_tokens: 1,
        }),
    };
    assert_eq!(end, Ok(expected));
}

#[tokio::test]
async fn comments_and_id_and_retry_fields() {
    let chunk = |text: &str| json!({"choices": [{"delta": {"content": text}}]});
    let steps = vec![
        Send(": OPENROUTER PROCESSING\n\n".into()),
        Send(format!("id: 1\nretry: 3000\ndata: {}\n\n", chunk("a"))),
        Send(format!(":comment\nid: 2\ndata: {}\r\n\r\n", chunk("b"))),
        Send("retry: x\n\n".into()),
        done(),
    ];
    let (deltas, end) = play(steps, StreamTimeouts::default()).await;
    assert_eq!(deltas, ["a", "b"]);
    assert!(matches!(end, Ok(LlmEvent::Done { .. })), "{end:?}");
}

#[tokio::test]
async fn content_in_the_finish_reason_chunk() {
    let steps = vec![
        delta("Hello"),
        data(json!({"choices": [{"delta": {"content": " world"}, "finish_reason": "length"}]})),
        done(),
    ];
    let (deltas, end) = play(steps, StreamTimeouts::default()).await;
    assert_eq!(deltas, ["Hello", " world"]);
    let Ok(LlmEvent::Done { finish_reason, .. }) = end else {
        panic!("{end:?}")
    };
    assert_eq!(finish_reason.as_deref(), Some("length"));
}

#[tokio::test]
async fn an_end_after_a_finish_reason_is_done() {
    let steps = vec![
        delta("Hi"),
        data(json!({"choices": [{"delta": {}, "finish_reason": "stop"}]})),
    ];
    let (deltas, end) = play(steps, StreamTimeouts::default()).await;
    assert_eq!(deltas, ["Hi"]);
    let Ok(LlmEvent::Done { finish_reason, .. }) = end else {
        panic!("{end:?}")
    };
    assert_eq!(finish_reason.as_deref(), Some("stop"));
}

#[tokio::test]
async fn an_end_without_done_or_finish_reason_is_broken() {
    let (deltas, end) = play(vec![delta("Hi")], StreamTimeouts::default()).await;
    assert_eq!(deltas, ["Hi"]);
    assert!(
        matches!(end, Err(BackendError::StreamBroken { .. })),
        "{end:?}"
    );
}

// ---- ASR and vision ------------------------------------------------------------------

#[tokio::test]
async fn transcript_is_trimmed() {
    let url = serve(
        "/audio/transcriptions",
        post(|| async { axum::Json(json!({"text": " \n hello world \t\n"})) }),
    )
    .await;
    let asr = backend("asr", &url, 5_000, 0);
    let text = asr::transcribe(&asr, &ctx(), wav::encode(&[0; 160]).into(), &Tape::OFF)
        .await
        .unwrap();
    assert_eq!(text, "hello world");
}

#[tokio::test]
async fn vision_keeps_the_request_timeout() {
    let url = serve(
        "/chat/completions",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            axum::Json(json!({"choices": [{"message": {"content": "late"}}]}))
        }),
    )
    .await;
    let vision = backend("vision", &url, 300, 0);
    let started = Instant::now();
    let e = vision::describe(&vision, &ctx(), messages(), &Tape::OFF)
        .await
        .unwrap_err();
    let expected = BackendError::Timeout {
        backend: "vision",
        kind: TimeoutKind::Request,
        ms: 300,
    };
    assert_eq!(e, expected);
    assert_eq!(
        e.to_string(),
        "vision timed out waiting for its answer (300 ms)"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// After three unreachable answers the circuit opens; once its cooldown has passed,
/// exactly one call probes the backend while the others still fail fast, and the
/// probe's answer closes it.
#[tokio::test]
async fn a_half_open_circuit_lets_one_probe_through() {
    // A port with nothing listening: connections are refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let base = format!("http://{addr}/v1");
    let vision = backend("vision", &base, 2_000, 0);
    let ctx = ctx();
    for _ in 0..3 {
        let e = vision::describe(&vision, &ctx, messages(), &Tape::OFF)
            .await
            .unwrap_err();
        assert!(matches!(e, BackendError::Unavailable { .. }), "{e}");
    }
    let e = vision::describe(&vision, &ctx, messages(), &Tape::OFF)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("failing fast"), "{e}");
    // The backend comes back, slowly answering, on the same port.
    let calls = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let counted = Arc::clone(&calls);
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                axum::Json(json!({"choices": [{"message": {"content": "a cat"}}]}))
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    tokio::time::sleep(turngate_backends::breaker::BREAKER_COOLDOWN).await;
    let results = futures_util::future::join_all(
        (0..4).map(|_| vision::describe(&vision, &ctx, messages(), &Tape::OFF)),
    )
    .await;
    let probed: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(probed.len(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| e.to_string().contains("failing fast")),
        "{results:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Closed again: calls go through.
    let results = futures_util::future::join_all(
        (0..3).map(|_| vision::describe(&vision, &ctx, messages(), &Tape::OFF)),
    )
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}
