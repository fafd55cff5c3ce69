//! Image description: `POST {base}/chat/completions` (OpenAI-compatible) with the image
//! as a data URL and a configurable instruction.

use turngate_core::Blob;

use crate::asr::{body_error, malformed};
use crate::chat::{Content, Message, Part, Request, Role};
use crate::client::Backend;
use crate::context::TurnContext;
use crate::error::BackendError;

/// Asks the vision model to describe one image, given its [`messages`]: the answer's
/// `choices[0].message.content`, trimmed.
///
/// Errors: those of [`Backend::send`], `Timeout` while reading the answer, `Malformed`
/// (no string `choices[0].message.content`).
pub async fn describe(
    backend: &Backend,
    ctx: &TurnContext,
    messages: Vec<Message>,
) -> Result<String, BackendError> {
    let body = Request {
        model: &backend.config().model,
        user: ctx.turn_id.to_string(),
        messages: &messages,
        stream: false,
        stream_options: None,
    };
    let url = backend.url("/chat/completions");
    let (response, _permit) = backend
        .send(ctx, true, |http| http.post(&url).json(&body))
        .await?;
    let answer: serde_json::Value = response.json().await.map_err(|e| body_error(backend, e))?;
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
