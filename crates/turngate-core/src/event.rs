//! The data-channel wire events: JSON text messages with a string `type`.
//!
//! The schema of record is `proto/turngate/v1/events.proto`; its JSON form is exactly
//! what these types read and write, and a test round-trips every event through it.
//! Parsing a client message never panics and maps every failure to an [`ErrorCode`].

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode};
use crate::id::{SessionId, TraceParent, TurnId};
use crate::outcome::{CompletionStatus, Stages};
use crate::tag::BlobId;
use crate::turn::{Cause, EndReason};

/// An event sent by the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum ClientEvent {
    /// The user's turn begins (push-to-talk pressed, or the client's own VAD fired).
    #[serde(rename = "turn.start")]
    TurnStart {
        /// A client-chosen turn id; any valid trace-id, unique within the session.
        #[serde(skip_serializing_if = "Option::is_none")]
        turn_id: Option<TurnId>,
        /// The client's span context; its trace-id becomes the turn id.
        #[serde(skip_serializing_if = "Option::is_none")]
        traceparent: Option<TraceParent>,
    },
    /// The user's turn input ends.
    #[serde(rename = "turn.end")]
    TurnEnd {
        /// The turn it ends; if given, it must be the open turn.
        #[serde(skip_serializing_if = "Option::is_none")]
        turn_id: Option<TurnId>,
    },
    /// An image upload begins; binary chunk messages and `image.end` follow.
    #[serde(rename = "image.begin")]
    ImageBegin {
        /// Client-chosen id, 1–64 bytes, unique among the session's open uploads.
        upload_id: String,
        /// The declared content type.
        mime: String,
        /// The declared size in bytes.
        size: u64,
        /// The declared SHA-256 (64 lowercase hex).
        #[serde(skip_serializing_if = "Option::is_none", serialize_with = "sha256_hex")]
        sha256: Option<[u8; 32]>,
        /// The turn the image belongs to (open, or ended but not yet processing).
        #[serde(skip_serializing_if = "Option::is_none")]
        turn_id: Option<TurnId>,
    },
    /// All chunks of an upload have been sent.
    #[serde(rename = "image.end")]
    ImageEnd {
        /// The upload id.
        upload_id: String,
    },
}

fn sha256_hex<S: serde::Serializer>(v: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(bytes) => s.serialize_str(&crate::upload::hex(bytes)),
        None => s.serialize_none(),
    }
}

impl ClientEvent {
    /// The `upload_id` of an `image.*` message, even one that does not parse, so that a
    /// refusal can name the upload it refuses.
    pub fn upload_id_of(text: &str) -> Option<String> {
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        let kind = value.get("type")?.as_str()?;
        if !kind.starts_with("image.") {
            return None;
        }
        Some(value.get("upload_id")?.as_str()?.to_owned())
    }

    /// Parses one data-channel text message.
    ///
    /// Unknown fields are refused (`malformed_message`) so that a misspelt field is
    /// reported rather than silently ignored.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let malformed = |why: String| Error::refused(ErrorCode::MalformedMessage, why);
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| malformed(format!("not valid JSON: {e}")))?;
        let serde_json::Value::Object(mut fields) = value else {
            return Err(malformed("a message must be a JSON object".into()));
        };
        let kind = match fields.remove("type") {
            Some(serde_json::Value::String(kind)) => kind,
            Some(_) => return Err(malformed("`type` must be a string".into())),
            None => return Err(malformed("a message needs a string `type`".into())),
        };
        let mut take_str = |name: &str| -> Result<Option<String>, Error> {
            match fields.remove(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(malformed(format!("`{name}` must be a string"))),
            }
        };
        let event = match kind.as_str() {
            "turn.start" => {
                let turn_id = take_str("turn_id")?
                    .map(|s| parse_turn_id(&s))
                    .transpose()?;
                let traceparent = take_str("traceparent")?
                    .map(|s| s.parse::<TraceParent>())
                    .transpose()
                    .map_err(|e| Error::refused(ErrorCode::InvalidTraceparent, e.to_string()))?;
                ClientEvent::TurnStart {
                    turn_id,
                    traceparent,
                }
            }
            "turn.end" => {
                let turn_id = take_str("turn_id")?
                    .map(|s| parse_turn_id(&s))
                    .transpose()?;
                ClientEvent::TurnEnd { turn_id }
            }
            "image.begin" => {
                let required = |v: Option<String>, name: &str| {
                    v.ok_or_else(|| malformed(format!("image.begin needs a string `{name}`")))
                };
                let upload_id = required(take_str("upload_id")?, "upload_id")?;
                let mime = required(take_str("mime")?, "mime")?;
                let sha256 = take_str("sha256")?
                    .map(|s| crate::upload::parse_sha256(&s))
                    .transpose()?;
                let turn_id = take_str("turn_id")?
                    .map(|s| parse_turn_id(&s))
                    .transpose()?;
                let size = match fields.remove("size") {
                    Some(serde_json::Value::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => {
                        n.as_u64().unwrap_or(0)
                    }
                    _ => {
                        return Err(Error::refused(
                            ErrorCode::SizeRequired,
                            "image.begin needs `size`, the image's size in bytes (a positive integer)",
                        ));
                    }
                };
                ClientEvent::ImageBegin {
                    upload_id,
                    mime,
                    size,
                    sha256,
                    turn_id,
                }
            }
            "image.end" => {
                let upload_id = take_str("upload_id")?
                    .ok_or_else(|| malformed("image.end needs a string `upload_id`".into()))?;
                ClientEvent::ImageEnd { upload_id }
            }
            other => {
                let shown: String = other.chars().take(64).collect();
                return Err(Error::refused(
                    ErrorCode::UnknownMessageType,
                    format!("unknown message type {shown:?}"),
                ));
            }
        };
        if let Some(name) = fields.keys().next() {
            let shown: String = name.chars().take(64).collect();
            return Err(malformed(format!("unknown field {shown:?} in {kind}")));
        }
        Ok(event)
    }
}

/// An event sent by the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum ServerEvent {
    /// The session's data channel is open; sent first.
    #[serde(rename = "session.ready")]
    SessionReady {
        /// The session id (also `GET /v1/sessions/{session_id}`).
        session_id: SessionId,
    },
    /// A turn has begun.
    #[serde(rename = "turn.started")]
    TurnStarted {
        /// The turn id, which is the trace id of the turn's root span.
        turn_id: TurnId,
        /// The turn's number within the session, from 1.
        turn_number: u32,
        /// `00-{turn_id}-{root span id}-{flags}`: the context of the turn's root span.
        traceparent: TraceParent,
        /// What opened the turn.
        cause: Cause,
        /// The turn this one continues: the previous piece of a turn split at the
        /// maximum length.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        continues: Option<TurnId>,
    },
    /// A turn's input has ended.
    #[serde(rename = "turn.ended")]
    TurnEnded {
        /// The turn id.
        turn_id: TurnId,
        /// Why the input ended.
        reason: EndReason,
        /// Audio frames (RTP packets) tagged with the turn.
        frames: u32,
        /// With reason `max_length`: the turn that goes on with the input.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        continued_by: Option<TurnId>,
    },
    /// An image upload was accepted and tagged with a turn.
    #[serde(rename = "image.accepted")]
    ImageAccepted {
        /// The client's upload id.
        upload_id: String,
        /// The SHA-256 of the bytes, 64 lowercase hex.
        blob_id: BlobId,
        /// The turn the image belongs to.
        turn_id: TurnId,
        /// The format the bytes are (sniffed), e.g. `image/png`.
        mime: String,
        /// The content type the client declared.
        declared_mime: String,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Size in bytes.
        bytes: u32,
    },
    /// An image upload was refused; its bytes are freed.
    #[serde(rename = "image.rejected")]
    ImageRejected {
        /// The client's upload id.
        upload_id: String,
        /// A code from the documented closed list.
        code: ErrorCode,
        /// A human-readable explanation.
        message: String,
    },
    /// What ASR heard in a turn.
    #[serde(rename = "transcript")]
    Transcript {
        /// The turn whose audio it is.
        turn_id: TurnId,
        /// The text.
        text: String,
    },
    /// What the vision model saw in one image of a turn.
    #[serde(rename = "vision.result")]
    VisionResult {
        /// The turn the image belongs to.
        turn_id: TurnId,
        /// The image.
        blob_id: BlobId,
        /// The description.
        description: String,
    },
    /// A piece of the answer to a turn.
    #[serde(rename = "response.delta")]
    ResponseDelta {
        /// The turn answered.
        turn_id: TurnId,
        /// The text, to append.
        delta: String,
    },
    /// The answer to a turn is complete.
    #[serde(rename = "response.done")]
    ResponseDone {
        /// The turn answered.
        turn_id: TurnId,
        /// The whole answer.
        text: String,
    },
    /// A turn's processing finished.
    #[serde(rename = "turn.completed")]
    TurnCompleted {
        /// The turn.
        turn_id: TurnId,
        /// `ok`, `partial`, `failed` or `interrupted`.
        status: CompletionStatus,
        /// Each stage's outcome.
        stages: Stages,
        /// ASR: request sent to answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        asr_ms: Option<u32>,
        /// Vision: first request sent to last answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vision_ms: Option<u32>,
        /// LLM: request sent to first content delta.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        llm_first_token_ms: Option<u32>,
        /// LLM: request sent to the end of the stream.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        llm_total_ms: Option<u32>,
    },
    /// A refused message or a failure; the session goes on.
    #[serde(rename = "error")]
    Error {
        /// A code from the documented closed list.
        code: ErrorCode,
        /// A human-readable explanation.
        message: String,
        /// The turn the error concerns, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        turn_id: Option<TurnId>,
    },
}

impl ServerEvent {
    /// An `image.rejected` event.
    pub fn rejected(upload_id: &str, error: &Error) -> Self {
        ServerEvent::ImageRejected {
            upload_id: upload_id.to_owned(),
            code: error.code(),
            message: message_of(error),
        }
    }

    /// An `error` event for a refused input.
    pub fn error(error: &Error, turn_id: Option<TurnId>) -> Self {
        ServerEvent::Error {
            code: error.code(),
            message: message_of(error),
            turn_id,
        }
    }

    /// The turn a result event belongs to: `transcript`, `vision.result`,
    /// `response.delta`, `response.done` and a turn's `error`. Lifecycle events
    /// (`turn.*`), uploads and session events are not results.
    pub fn result_of(&self) -> Option<TurnId> {
        match self {
            ServerEvent::Transcript { turn_id, .. }
            | ServerEvent::VisionResult { turn_id, .. }
            | ServerEvent::ResponseDelta { turn_id, .. }
            | ServerEvent::ResponseDone { turn_id, .. } => Some(*turn_id),
            ServerEvent::Error { turn_id, .. } => *turn_id,
            _ => None,
        }
    }

    /// The JSON text of the event.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail: no maps with non-string keys, no
        // failing `Serialize` impls.
        serde_json::to_string(self).expect("server events always serialize")
    }
}

fn parse_turn_id(s: &str) -> Result<TurnId, Error> {
    s.parse::<TurnId>()
        .map_err(|e| Error::refused(ErrorCode::InvalidTurnId, format!("invalid turn_id: {e}")))
}

fn message_of(error: &Error) -> String {
    match error {
        Error::Refused { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

impl Serialize for TraceParent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TraceParent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        ClientEvent::parse(text).unwrap_err().code()
    }

    #[test]
    fn parses_client_events() {
        assert_eq!(
            ClientEvent::parse(r#"{"type":"turn.start"}"#).unwrap(),
            ClientEvent::TurnStart {
                turn_id: None,
                traceparent: None
            }
        );
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let ev = ClientEvent::parse(&format!(r#"{{"type":"turn.start","traceparent":"{tp}"}}"#))
            .unwrap();
        assert_eq!(
            ev,
            ClientEvent::TurnStart {
                turn_id: None,
                traceparent: Some(tp.parse().unwrap())
            }
        );
        assert_eq!(
            ClientEvent::parse(r#"{"type":"turn.end"}"#).unwrap(),
            ClientEvent::TurnEnd { turn_id: None }
        );
    }

    #[test]
    fn refuses_bad_messages_with_their_codes() {
        assert_eq!(code("not json"), ErrorCode::MalformedMessage);
        assert_eq!(code("[1,2]"), ErrorCode::MalformedMessage);
        assert_eq!(code(r#"{"type":7}"#), ErrorCode::MalformedMessage);
        assert_eq!(
            code(r#"{"kind":"turn.start"}"#),
            ErrorCode::MalformedMessage
        );
        assert_eq!(
            code(r#"{"type":"turn.start","turnId":"x"}"#),
            ErrorCode::MalformedMessage
        );
        assert_eq!(
            code(r#"{"type":"turn.start","turn_id":5}"#),
            ErrorCode::MalformedMessage
        );
        assert_eq!(
            code(r#"{"type":"turn.jump"}"#),
            ErrorCode::UnknownMessageType
        );
        assert_eq!(
            code(r#"{"type":"turn.start","turn_id":"ABC"}"#),
            ErrorCode::InvalidTurnId
        );
        assert_eq!(
            code(r#"{"type":"turn.start","traceparent":"00-xyz"}"#),
            ErrorCode::InvalidTraceparent
        );
    }

    #[test]
    fn server_events_serialize_as_documented() {
        let ev = ServerEvent::Error {
            code: ErrorCode::NoOpenTurn,
            message: "m".into(),
            turn_id: None,
        };
        assert_eq!(
            ev.to_json(),
            r#"{"type":"error","code":"no_open_turn","message":"m"}"#
        );
    }
}

#[cfg(test)]
mod no_panic {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a client sends, parsing returns (and never panics).
        #[test]
        fn any_text_parses_or_is_refused(text in ".{0,200}") {
            let _ = ClientEvent::parse(&text);
            let _ = text.parse::<TraceParent>();
            let _ = text.parse::<TurnId>();
        }

        #[test]
        fn json_shaped_messages_parse_or_are_refused(
            kind in prop_oneof![Just("turn.start".to_owned()), Just("turn.end".to_owned()), ".{0,12}"],
            key in prop_oneof![Just("turn_id".to_owned()), Just("traceparent".to_owned()), "[a-z_]{1,10}"],
            value in prop_oneof![
                "[0-9a-f]{32}".prop_map(|s| format!("{s:?}")),
                "00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]".prop_map(|s| format!("{s:?}")),
                ".{0,60}".prop_map(|s| format!("{s:?}")),
                Just("null".to_owned()), Just("7".to_owned()), Just("[]".to_owned()), Just("{}".to_owned()),
            ],
        ) {
            let text = format!(r#"{{"type":{kind:?},{key:?}:{value}}}"#);
            if let Ok(event) = ClientEvent::parse(&text) {
                // What parses serializes back to something that parses the same.
                let again = serde_json::to_string(&event).unwrap();
                prop_assert_eq!(ClientEvent::parse(&again).unwrap(), event);
            }
        }
    }
}
