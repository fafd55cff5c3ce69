//! Speech to text: `POST {base}/audio/transcriptions` (OpenAI-compatible), the turn's
//! audio as a 16 kHz mono 16-bit WAV.

use crate::client::{Backend, Outgoing, malformed, read_body};
use crate::context::TurnContext;
use crate::error::BackendError;
use crate::tape::Tape;

/// Transcribes a turn's audio: `wav`, its PCM (16 kHz mono, concealment included so
/// timing is kept) as [`wav::encode`] writes it, sent as the form's `file` byte for
/// byte. Returns the answer's `text`, trimmed of outer whitespace. `tape` keeps a JSON
/// account of the form (its fields, and the file's name, type and size) and the
/// answers.
///
/// Errors: those of [`Backend::send`], `Timeout` while reading the answer, `Malformed`
/// (the answer is not JSON with a string `text`).
pub async fn transcribe(
    backend: &Backend,
    ctx: &TurnContext,
    wav: bytes::Bytes,
    tape: &Tape,
) -> Result<String, BackendError> {
    let model = backend.config().model.clone();
    let url = backend.url("/audio/transcriptions");
    let filename = format!("{}.wav", ctx.turn_id);
    let account = bytes::Bytes::from(
        serde_json::json!({
            "model": model,
            "response_format": "json",
            "file": {"filename": filename, "content_type": "audio/wav", "bytes": wav.len()},
        })
        .to_string(),
    );
    let outgoing = Outgoing {
        tape,
        body: &account,
        content_type: "application/json",
    };
    let (response, _permit) = backend
        .send(ctx, true, &outgoing, |http| {
            let file = reqwest::multipart::Part::stream_with_length(wav.clone(), wav.len() as u64)
                .file_name(filename.clone())
                .mime_str("audio/wav")
                .expect("a valid mime type");
            let form = reqwest::multipart::Form::new()
                .part("file", file)
                .text("model", model.clone())
                .text("response_format", "json");
            http.post(&url).multipart(form)
        })
        .await?;
    let body = read_body(backend, response, tape).await?;
    let body: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| malformed(backend, e.to_string()))?;
    body.get("text")
        .and_then(|t| t.as_str())
        .map(|t| t.trim().to_owned())
        .ok_or_else(|| malformed(backend, "no string `text` in the answer".into()))
}
