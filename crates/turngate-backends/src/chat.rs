//! Chat-completion messages as the OpenAI-compatible API takes them
//! (`POST {base}/chat/completions`), for vision and the LLM.
//!
//! An image part holds the image's bytes (a shared [`Bytes`], not a copy); its
//! `data:{mime};base64,…` URL is written straight into the request body as the body is
//! serialized — which [`Backend::send`](crate::Backend::send) does only once the call has
//! a slot — and never exists as a string of its own. So turns waiting for a backend
//! hold their images once, not also a third again as large in base64.

use std::fmt;

use base64::display::Base64Display;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

/// One message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Message {
    /// Who says it.
    pub role: Role,
    /// What is said.
    pub content: Content,
}

impl Message {
    /// A message of plain text.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            content: Content::Text(text.into()),
        }
    }
}

/// A message's author.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The user.
    User,
    /// The model's earlier answers.
    Assistant,
}

impl Role {
    /// `system`, `user` or `assistant`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

/// A message's content: a string, or an array of parts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Content {
    /// `"content": "…"`.
    Text(String),
    /// `"content": [{"type": "text", …}, {"type": "image_url", …}]`.
    Parts(Vec<Part>),
}

/// A part of a message's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    /// `{"type": "text", "text": "…"}`.
    Text {
        /// The text.
        text: String,
    },
    /// `{"type": "image_url", "image_url": {"url": "data:…"}}`.
    ImageUrl {
        /// The image.
        image_url: Image,
    },
}

impl Part {
    /// An image part.
    pub fn image(mime: impl Into<String>, bytes: Bytes) -> Self {
        Self::ImageUrl {
            image_url: Image {
                mime: mime.into(),
                bytes,
            },
        }
    }
}

/// An image, serialized as `{"url": "data:{mime};base64,{bytes}"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Its content type.
    pub mime: String,
    /// Its bytes.
    pub bytes: Bytes,
}

impl Serialize for Image {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("url", &DataUrl(self))?;
        map.end()
    }
}

/// The data URL of an image, written piece by piece.
struct DataUrl<'a>(&'a Image);

impl Serialize for DataUrl<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl fmt::Display for DataUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "data:{};base64,{}",
            self.0.mime,
            Base64Display::new(&self.0.bytes, &STANDARD)
        )
    }
}

/// A chat-completion request body.
#[derive(Serialize)]
pub(crate) struct Request<'a> {
    pub model: &'a str,
    /// The turn id: OpenAI's end-user field, so the backend's own logs carry it.
    pub user: String,
    pub messages: &'a [Message],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
}

/// The content type of a JSON body.
pub(crate) const JSON: &str = "application/json";

impl Request<'_> {
    /// The body as sent: written once per call (its images become data URLs here),
    /// then the same bytes for every attempt and for the call's tape.
    pub(crate) fn to_json(&self) -> bytes::Bytes {
        // A request of strings and numbers always serializes.
        serde_json::to_vec(self).unwrap_or_default().into()
    }
}

/// `{"include_usage": true}`: the stream's last chunk reports the tokens used.
#[derive(Serialize)]
pub(crate) struct StreamOptions {
    pub include_usage: bool,
}

/// Bytes of `value` serialized as JSON, counted without keeping them.
pub fn json_len(value: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn serializes_as_the_api_takes_it() {
        let messages = [
            Message::text(Role::System, "Be brief."),
            Message {
                role: Role::User,
                content: Content::Parts(vec![
                    Part::Text {
                        text: "look".into(),
                    },
                    Part::image("image/png", Bytes::from_static(b"\x89PNG")),
                ]),
            },
        ];
        let value = serde_json::to_value(messages.as_slice()).unwrap();
        assert_eq!(
            value,
            json!([
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw=="}},
                ]},
            ])
        );
        assert_eq!(
            json_len(&messages),
            serde_json::to_vec(&messages).unwrap().len()
        );
    }
}
