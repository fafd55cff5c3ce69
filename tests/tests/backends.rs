//! Turn processing against in-process OpenAI-compatible servers that record what they
//! receive: ASR gets the turn's audio as WAV, vision its image, the LLM both results;
//! every request carries the turn id; the client gets the streamed answer.

use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Multipart, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};
use turngate_e2e::*;

const TRANSCRIPT: &str = "please turn on the kitchen lights";
const DESCRIPTION: &str = "A screenshot of an error dialog saying: disk full.";
const DELTAS: [&str; 3] = ["Sure", ", turning on", " the kitchen lights."];

/// What the fake backends received.
#[derive(Default)]
struct Seen {
    /// (path, traceparent, baggage) of every request.
    headers: Vec<(String, String, String)>,
    /// The WAV files ASR got, with their model field.
    wavs: Vec<(Vec<u8>, String)>,
    /// The JSON bodies of chat requests.
    chats: Vec<Value>,
}

type Shared = Arc<Mutex<Seen>>;

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
) -> impl IntoResponse {
    record(&seen, "audio/transcriptions", &headers);
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
    axum::Json(json!({ "text": TRANSCRIPT }))
}

async fn chat(
    State(seen): State<Shared>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> axum::response::Response {
    record(&seen, "chat/completions", &headers);
    let stream = body["stream"] == true;
    seen.lock().unwrap().chats.push(body);
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
    sse.push_str("data: [DONE]\n\n");
    ([("content-type", "text/event-stream")], sse).into_response()
}

async fn fake_openai() -> anyhow::Result<(String, Shared)> {
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

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 200) as u8, (y % 200) as u8, 40])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// RMS of each 20 ms (320-sample) block.
fn envelope(pcm: &[i16]) -> Vec<f64> {
    pcm.chunks(320)
        .map(|c| (c.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / c.len() as f64).sqrt())
        .collect()
}

/// The best Pearson correlation of `short` against any stretch of `long`.
fn best_correlation(short: &[f64], long: &[f64]) -> f64 {
    let corr = |a: &[f64], b: &[f64]| {
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
        let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
        let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
        let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
        cov / (va.sqrt() * vb.sqrt()).max(1e-9)
    };
    (0..=long.len().saturating_sub(short.len()))
        .map(|o| corr(short, &long[o..o + short.len()]))
        .fold(f64::MIN, f64::max)
}

#[tokio::test]
async fn a_turn_with_speech_and_an_image_reaches_every_backend_with_its_turn_id()
-> anyhow::Result<()> {
    let (base, seen) = fake_openai().await?;
    let env = [
        ("TURNGATE_ASR_URL", base.as_str()),
        ("TURNGATE_ASR_MODEL", "fake-whisper"),
        ("TURNGATE_VISION_URL", base.as_str()),
        ("TURNGATE_VISION_MODEL", "fake-vision"),
        ("TURNGATE_LLM_URL", base.as_str()),
        ("TURNGATE_LLM_MODEL", "fake-llm"),
        ("TURNGATE_LLM_API_KEY", "sk-secret-never-logged"),
    ];
    let gw = Gateway::start(&[], &env).await?;
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    let (rate, source) = wav::read(&data("speech.wav"))?;
    let packets = encode_opus(rate, &source)?;
    let image = png(320, 200);
    client.send_packets(&packets[..50], &[]).await?;
    client
        .upload("shot", "image/png", &image, 16 * 1024)
        .await?;
    client.send_packets(&packets[50..], &[]).await?;
    let completed = client
        .inbox
        .wait("turn.completed", 1, Duration::from_secs(10))
        .await?;
    let turn_id = client.inbox.of("turn.started")[0]["turn_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Everything the client got for the turn carries its id.
    for kind in [
        "transcript",
        "vision.result",
        "response.delta",
        "response.done",
        "turn.completed",
    ] {
        let events = client.inbox.of(kind);
        assert!(!events.is_empty(), "no {kind}: {:#?}", client.inbox.all());
        assert!(
            events.iter().all(|e| e["turn_id"] == turn_id),
            "{kind}: {events:#?}"
        );
    }
    assert_eq!(client.inbox.of("transcript")[0]["text"], TRANSCRIPT);
    assert_eq!(
        client.inbox.of("vision.result")[0]["description"],
        DESCRIPTION
    );
    assert_eq!(
        client.inbox.of("vision.result")[0]["blob_id"],
        sha256_hex(&image)
    );
    let streamed: String = client
        .inbox
        .of("response.delta")
        .iter()
        .map(|e| e["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        streamed,
        DELTAS.concat(),
        "the client got what the LLM sent"
    );
    assert_eq!(client.inbox.of("response.done")[0]["text"], DELTAS.concat());
    let c = &completed[0];
    assert_eq!(c["status"], "ok", "{c:#}");
    assert_eq!(
        c["stages"],
        json!({"asr": "ok", "vision": "ok", "llm": "ok"})
    );
    for key in ["asr_ms", "vision_ms", "llm_first_token_ms", "llm_total_ms"] {
        assert!(c[key].is_u64(), "{key} in {c:#}");
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    // Every request carried the turn id as trace id, and both ids as baggage.
    assert_eq!(seen.headers.len(), 3, "{:?}", seen.headers);
    for (path, traceparent, baggage) in &seen.headers {
        assert_eq!(&traceparent[3..35], turn_id, "{path}: {traceparent}");
        assert!(
            baggage.contains(&format!("turngate.turn.id={turn_id}")),
            "{path}: {baggage}"
        );
        assert!(
            baggage.contains(&format!("turngate.session.id={session_id}")),
            "{path}: {baggage}"
        );
    }
    // ASR got a valid 16 kHz mono 16-bit WAV of the turn's duration, sounding like what
    // was sent.
    let (wav_bytes, model) = &seen.wavs[0];
    assert_eq!(model, "fake-whisper");
    let path = std::env::temp_dir().join(format!("turngate-asr-{}.wav", std::process::id()));
    std::fs::write(&path, wav_bytes)?;
    let (wav_rate, heard) = wav::read(&path)?;
    let _ = std::fs::remove_file(&path);
    assert_eq!(wav_rate, 16_000);
    let session = gw.session(&session_id).await?;
    let audio_ms = session["turns"][0]["audio_ms"].as_u64().unwrap();
    assert_eq!(
        heard.len() as u64 / 16,
        audio_ms,
        "the WAV holds the turn's audio"
    );
    let r = best_correlation(&envelope(&heard), &envelope(&source));
    assert!(
        r > 0.8,
        "the WAV's loudness envelope correlates with the source at {r:.2}"
    );
    // The LLM got the transcript and the description, and the turn id in `user`.
    let llm = seen.chats.iter().find(|c| c["stream"] == true).unwrap();
    assert_eq!(llm["user"], turn_id);
    assert_eq!(llm["model"], "fake-llm");
    let prompt = llm["messages"].to_string();
    assert!(
        prompt.contains(TRANSCRIPT) && prompt.contains(DESCRIPTION),
        "{prompt}"
    );
    let vision = seen.chats.iter().find(|c| c["stream"] != true).unwrap();
    let url = vision["messages"][0]["content"][1]["image_url"]["url"]
        .as_str()
        .unwrap();
    assert!(url.starts_with("data:image/png;base64,"), "{url:.40}");
    assert!(
        !gw.log().contains("sk-secret-never-logged"),
        "the API key was logged"
    );
    let processed = &session["turns"][0]["processing"];
    assert_eq!(processed["response"], DELTAS.concat(), "{session:#}");
    Ok(())
}
