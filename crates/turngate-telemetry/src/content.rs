//! Opt-in content (`telemetry.capture_content`) in the message format of the
//! OpenTelemetry GenAI conventions: `gen_ai.system_instructions`,
//! `gen_ai.input.messages` and `gen_ai.output.messages`, each a JSON array.
//!
//! Images are inlined as `blob` parts up to [`MAX_INLINE_IMAGE_BYTES`] of base64; a
//! larger one keeps its part without content, so that one screenshot cannot push a
//! span past what collectors accept (which would lose its whole export batch).

use serde_json::{Value, json};

/// Largest base64 image inlined into a content attribute.
pub const MAX_INLINE_IMAGE_BYTES: usize = 256 * 1024;

/// Content of a chat request given as OpenAI-compatible `messages`: the system
/// instructions (if any) and the other messages, as GenAI JSON.
pub fn input_messages(messages: &[Value]) -> (Option<String>, String) {
    let mut system = Vec::new();
    let mut input = Vec::new();
    for message in messages {
        let parts = parts(&message["content"]);
        match message["role"].as_str() {
            Some("system") => system.extend(parts),
            role => input.push(json!({"role": role.unwrap_or("user"), "parts": parts})),
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

fn parts(content: &Value) -> Vec<Value> {
    match content {
        Value::String(text) => vec![json!({"type": "text", "content": text})],
        Value::Array(items) => items
            .iter()
            .map(|item| match item["type"].as_str() {
                Some("text") => json!({"type": "text", "content": item["text"]}),
                Some("image_url") => image(item["image_url"]["url"].as_str().unwrap_or("")),
                _ => item.clone(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn image(url: &str) -> Value {
    let Some((mime, data)) = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"))
    else {
        return json!({"type": "uri", "modality": "image", "uri": url});
    };
    if data.len() <= MAX_INLINE_IMAGE_BYTES {
        json!({"type": "blob", "modality": "image", "mime_type": mime, "content": data})
    } else {
        json!({"type": "blob", "modality": "image", "mime_type": mime,
               "turngate.omitted_base64_bytes": data.len()})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_messages_become_genai_messages() {
        let messages = [
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": "hi"}),
            json!({"role": "assistant", "content": "hello"}),
            json!({"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
            ]}),
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
            json!({"type": "blob", "modality": "image", "mime_type": "image/png", "content": "iVBOR"})
        );
    }

    #[test]
    fn large_images_are_not_inlined() {
        let url = format!(
            "data:image/png;base64,{}",
            "A".repeat(MAX_INLINE_IMAGE_BYTES + 4)
        );
        let part = image(&url);
        assert!(part.get("content").is_none());
        assert_eq!(
            part["turngate.omitted_base64_bytes"],
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
