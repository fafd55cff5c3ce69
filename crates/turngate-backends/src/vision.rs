//! Image description: `POST {base}/chat/completions` (OpenAI-compatible) with the image
//! as a data URL and a configurable instruction.

use turngate_core::Blob;

use crate::chat::{Content, JSON, Message, Part, Request, Role};
use crate::client::{Backend, Outgoing, malformed, read_body};
use crate::context::TurnContext;
use crate::error::BackendError;
use crate::tape::Tape;

/// Asks the vision model to describe one image, given its [`messages`]: the answer's
/// `choices[0].message.content`, trimmed.
///
/// Errors: those of [`Backend::send`], `Timeout` while reading the answer, `Malformed`
/// (no string `choices[0].message.content`).
pub async fn describe(
    backend: &Backend,
    ctx: &TurnContext,
    messages: Vec<Message>,
    tape: &Tape,
) -> Result<String, BackendError> {
    // The body (its image a data URL) is written only once the call has its slot.
    let _slot = backend.slot(ctx).await?;
    let body = Request {
        model: &backend.config().model,
        user: ctx.turn_id.to_string(),
        messages: &messages,
        stream: false,
        stream_options: None,
    }
    .to_json();
    let url = backend.url("/chat/completions");
    let outgoing = Outgoing {
        tape,
        body: &body,
        content_type: JSON,
    };
    let response = backend
        .send_in(ctx, true, Some(backend.timeout()), &outgoing, |http| {
            http.post(&url)
                .header(reqwest::header::CONTENT_TYPE, JSON)
                .body(body.clone())
        })
        .await?;
    let answer = read_body(backend, response, tape).await?;
    let answer: serde_json::Value =
        serde_json::from_slice(&answer).map_err(|e| malformed(backend, e.to_string()))?;
    answer["choices"][0]["message"]["content"]
        .as_str()
        .map(|t| t.trim().to_owned())
        .ok_or_else(|| {
            malformed(
                backend,
                "no choices[0].message.content in the answer".into(),
            )
        })
}

/// The messages the vision model is sent for one image.
pub fn messages(blob: &Blob, instruction: &str) -> Vec<Message> {
    vec![Message {
        role: Role::User,
        content: Content::Parts(vec![
            Part::Text {
                text: instruction.to_owned(),
            },
            Part::image(blob.mime.clone(), blob.bytes.clone()),
        ]),
    }]
}
