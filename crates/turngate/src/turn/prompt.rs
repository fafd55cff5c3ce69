//! The LLM's prompt: the system prompt, the session's earlier exchanges in turn order,
//! then what the user said and showed in this turn and in the turns it stands for.

use turngate_backends::chat::{Content, Message, Part, Role};
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
) -> Vec<Message> {
    let mut messages = vec![Message::text(Role::System, system)];
    for exchange in history {
        messages.push(Message::text(Role::User, &exchange.user));
        messages.push(Message::text(Role::Assistant, &exchange.assistant));
    }
    if send_images && !images.is_empty() {
        let mut parts = vec![Part::Text {
            text: user.to_owned(),
        }];
        for (blob, _) in images {
            parts.push(Part::image(
                blob.value.mime.clone(),
                blob.value.bytes.clone(),
            ));
        }
        messages.push(Message {
            role: Role::User,
            content: Content::Parts(parts),
        });
    } else {
        messages.push(Message::text(Role::User, user));
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
