//! The LLM's prompt: the system prompt, the session's earlier exchanges in turn order,
//! then what the user said and showed in this turn and in the turns it stands for.

use serde_json::{Value, json};
use turngate_backends::vision;
use turngate_core::{Blob, Tagged};

/// One exchange of a session, for the next turns' prompts: what the user said and
/// showed, and what they heard of the answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exchange {
    /// The user's message as the LLM got it.
    pub user: String,
    /// The answer as the client received it (cut short by a barge-in).
    pub assistant: String,
}

/// An image of the turn and what vision said of it.
pub(super) type Described = (Tagged<Blob>, String);

/// What the user said and showed: the transcripts, oldest turn first, then one line
/// per described image, numbered across the turns.
pub(super) fn user_text(transcripts: &[String], images: &[Described]) -> String {
    let mut user = transcripts
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    for (i, (_, description)) in images.iter().enumerate() {
        user.push_str(&format!("\n[Image {}: {description}]", i + 1));
    }
    user.trim().to_owned()
}

/// System prompt, the earlier exchanges, then this turn (with the images themselves if
/// `send_images`).
pub(super) fn messages(
    system: &str,
    history: &[Exchange],
    user: &str,
    images: &[Described],
    send_images: bool,
) -> Vec<Value> {
    let mut messages = vec![json!({"role": "system", "content": system})];
    for exchange in history {
        messages.push(json!({"role": "user", "content": exchange.user}));
        messages.push(json!({"role": "assistant", "content": exchange.assistant}));
    }
    if send_images && !images.is_empty() {
        let mut parts = vec![json!({"type": "text", "text": user})];
        for (blob, _) in images {
            parts.push(
                json!({"type": "image_url", "image_url": {"url": vision::data_url(&blob.value)}}),
            );
        }
        messages.push(json!({"role": "user", "content": parts}));
    } else {
        messages.push(json!({"role": "user", "content": user}));
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcripts_of_the_turns_a_turn_stands_for_come_first_trimmed() {
        let said = [
            "  set a timer ".to_owned(),
            String::new(),
            "for ten minutes\n".to_owned(),
        ];
        assert_eq!(user_text(&said, &[]), "set a timer for ten minutes");
    }
}
