//! Speech to text: `POST {base}/audio/transcriptions` (OpenAI-compatible), the turn's
//! audio as a 16 kHz mono 16-bit WAV.

use crate::client::{Backend, describe};
use crate::context::TurnContext;
use crate::error::{BackendError, TimeoutKind};

/// Transcribes a turn's audio: `wav`, its PCM (16 kHz mono, concealment included so
/// timing is kept) as [`wav::encode`] writes it, sent as the form's `file` byte for
/// byte. Returns the answer's `text`, trimmed of outer whitespace.
///
/// Errors: those of [`Backend::send`], `Timeout` while reading the answer, `Malformed`
/// (the answer is not JSON with a string `text`).
pub async fn transcribe(
    backend: &Backend,
    ctx: &TurnContext,
    wav: bytes::Bytes,
) -> Result<String, BackendError> {
    let model = backend.config().model.clone();
    let url = backend.url("/audio/transcriptions");
    let (response, _permit) = backend
        .send(ctx, true, |http| {
            let file = reqwest::multipart::Part::stream_with_length(wav.clone(), wav.len() as u64)
                .file_name(format!("{}.wav", ctx.turn_id))
                .mime_str("audio/wav")
                .expect("a valid mime type");
            let form = reqwest::multipart::Form::new()
                .part("file", file)
                .text("model", model.clone())
                .text("response_format", "json");
            http.post(&url).multipart(form)
        })
        .await?;
    let body: serde_json::Value = response.json().await.map_err(|e| body_error(backend, e))?;
    body.get("text")
        .and_then(|t| t.as_str())
        .map(|t| t.trim().to_owned())
        .ok_or_else(|| malformed(backend, "no string `text` in the answer".into()))
}

/// Reading or decoding an answer's body failed: past the request timeout, or not JSON.
pub(crate) fn body_error(backend: &Backend, e: reqwest::Error) -> BackendError {
    if e.is_timeout() {
        BackendError::Timeout {
            backend: backend.name,
            kind: TimeoutKind::Request,
            ms: backend.config().timeout_ms,
        }
    } else {
        malformed(backend, describe(e))
    }
}

pub(crate) fn malformed(backend: &Backend, detail: String) -> BackendError {
    BackendError::Malformed {
        backend: backend.name,
        detail,
    }
}
