//! Opt-in content (`telemetry.capture_content`) in the message format of the
//! OpenTelemetry GenAI conventions: `gen_ai.system_instructions`,
//! `gen_ai.input.messages` and `gen_ai.output.messages`, each a JSON array.
//!
//! Images are inlined as `blob` parts up to [`MAX_INLINE_IMAGE_BYTES`] of base64; a
//! larger one keeps its part without content, so that one screenshot cannot push a
//! span past what collectors accept (which would lose its whole export batch).

use base64::Engine;
use serde_json::{Value, json};

/// Largest base64 image inlined into a content attribute.
pub const MAX_INLINE_IMAGE_BYTES: usize = 256 * 1024;

/// One message of a chat request, as content capture reads it.
#[derive(Clone, Copy, Debug)]
pub struct InputMessage<'a> {
    /// `system`, `user` or `assistant`.
    pub role: &'a str,
    /// Its parts, in order.
    pub parts: &'a [InputPart<'a>],
}

/// A part of a chat message.
#[derive(Clone, Copy, Debug)]
pub enum InputPart<'a> {
    /// Text.
    Text(&'a str),
    /// An image: its content type and bytes (encoded only if it is inlined).
    Image {
        /// Content type.
        mime: &'a str,
        /// The image.
        bytes: &'a [u8],
    },
}

/// Content of a chat request: the system instructions (if any) and the other messages,
/// as GenAI JSON.
pub fn input_messages(messages: &[InputMessage<'_>]) -> (Option<String>, String) {
    let mut system = Vec::new();
    let mut input = Vec::new();
    for message in messages {
        let parts = message.parts.iter().map(part);
        match message.role {
            "system" => system.extend(parts),
            role => input.push(json!({"role": role, "parts": parts.collect::<Vec<_>>()})),
        }
    }
    let system = (!system.is_empty()).then(|| Value::Array(system).to_string());
    (system, Value::Array(input).to_string())
}

/// An answer as GenAI output messages.
pub fn output_messages(text: &str, finish_reason: Option<&str>) -> String {
    let mut message = json!({"role": "assistant", "parts": [{"type": "text", "content": text}]});
    if let Some(reason) = finish_reason {
        message["finish_reason"] = json!(reason);
    }
    json!([message]).to_string()
}

fn part(part: &InputPart<'_>) -> Value {
    match *part {
        InputPart::Text(text) => json!({"type": "text", "content": text}),
        InputPart::Image { mime, bytes } => {
            let encoded = bytes.len().div_ceil(3) * 4;
            if encoded <= MAX_INLINE_IMAGE_BYTES {
                let content = base64::engine::general_purpose::STANDARD.encode(bytes);
                json!({"type": "blob", "modality": "image", "mime_type": mime, "content": content})
            } else {
                json!({"type": "blob", "modality": "image", "mime_type": mime,
                       "turngate.omitted_base64_bytes": encoded})
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_messages_become_genai_messages() {
        let look = [
            InputPart::Text("look"),
            InputPart::Image {
                mime: "image/png",
                bytes: b"\x89PNG",
            },
        ];
        let messages = [
            InputMessage {
                role: "system",
                parts: &[InputPart::Text("Be brief.")],
            },
            InputMessage {
                role: "user",
                parts: &[InputPart::Text("hi")],
            },
            InputMessage {
                role: "assistant",
                parts: &[InputPart::Text("hello")],
            },
            InputMessage {
                role: "user",
                parts: &look,
            },
        ];
        let (system, input) = input_messages(&messages);
        assert_eq!(
            system.unwrap(),
            r#"[{"content":"Be brief.","type":"text"}]"#
        );
        let input: Value = serde_json::from_str(&input).unwrap();
        assert_eq!(input.as_array().unwrap().len(), 3);
        assert_eq!(
            input[1],
            json!({"role": "assistant", "parts": [{"type": "text", "content": "hello"}]})
        );
        assert_eq!(
            input[2]["parts"][0],
            json!({"type": "text", "content": "look"})
        );
        assert_eq!(
            input[2]["parts"][1],
            json!({"type": "blob", "modality": "image", "mime_type": "image/png", "content": "iVBORw=="})
        );
    }

    #[test]
    fn large_images_are_not_inlined() {
        let bytes = vec![0u8; MAX_INLINE_IMAGE_BYTES / 4 * 3 + 3];
        let value = part(&InputPart::Image {
            mime: "image/png",
            bytes: &bytes,
        });
        assert!(value.get("content").is_none());
        assert_eq!(
            value["turngate.omitted_base64_bytes"],
            MAX_INLINE_IMAGE_BYTES + 4
        );
    }

    #[test]
    fn answers_carry_their_finish_reason() {
        let out: Value = serde_json::from_str(&output_messages("ok", Some("stop"))).unwrap();
        assert_eq!(out[0]["finish_reason"], "stop");
        assert_eq!(out[0]["parts"][0]["content"], "ok");
    }
}
