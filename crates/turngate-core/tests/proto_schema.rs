//! The data-channel schema in `proto/` and the Rust events cannot drift: every event is
//! round-tripped Rust → JSON → protobuf (strict: unknown fields refused) → JSON → Rust,
//! and every message of the schema is covered by an event.

use std::collections::BTreeSet;
use std::path::PathBuf;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use turngate_core::*;

fn pool() -> DescriptorPool {
    let proto = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    protox::Compiler::new([proto])
        .expect("proto include path")
        .include_imports(true)
        .open_file("turngate/v1/events.proto")
        .expect("events.proto compiles")
        .descriptor_pool()
}

/// "turn.started" → "turngate.v1.TurnStarted", as the schema's header documents.
fn message_name(kind: &str) -> String {
    let camel: String = kind
        .split(['.', '_'])
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    format!("turngate.v1.{camel}")
}

/// Passes `json` through the schema's message for its `type` and back to JSON.
fn through_proto(pool: &DescriptorPool, json: &serde_json::Value) -> serde_json::Value {
    let kind = json["type"].as_str().expect("events have a string type");
    let desc = pool
        .get_message_by_name(&message_name(kind))
        .unwrap_or_else(|| panic!("no message in proto/ for {kind:?}"));
    let msg = DynamicMessage::deserialize(desc, json)
        .unwrap_or_else(|e| panic!("{kind}: schema refuses {json}: {e}"));
    let options = SerializeOptions::new()
        .skip_default_fields(false)
        .use_proto_field_name(true);
    msg.serialize_with_options(serde_json::value::Serializer, &options)
        .expect("serializes")
}

fn ids() -> (SessionId, TurnId, TraceParent) {
    let tp: TraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        .parse()
        .unwrap();
    (
        "01890f3a9b7c4d5e6f708192a3b4c5d6".parse().unwrap(),
        tp.trace_id,
        tp,
    )
}

fn server_events() -> Vec<ServerEvent> {
    let (session_id, turn_id, traceparent) = ids();
    vec![
        ServerEvent::SessionReady { session_id },
        ServerEvent::TurnStarted {
            turn_id,
            turn_number: 3,
            traceparent,
            cause: Cause::Vad,
            continues: None,
        },
        ServerEvent::TurnStarted {
            turn_id,
            turn_number: 2,
            traceparent,
            cause: Cause::Image,
            continues: None,
        },
        ServerEvent::TurnStarted {
            turn_id,
            turn_number: 1,
            traceparent,
            cause: Cause::Client,
            continues: Some(turn_id),
        },
        ServerEvent::TurnEnded {
            turn_id,
            reason: EndReason::EndOfSpeech,
            frames: 0,
            continued_by: None,
        },
        ServerEvent::TurnEnded {
            turn_id,
            reason: EndReason::MaxLength,
            frames: 3000,
            continued_by: Some(turn_id),
        },
        ServerEvent::TurnEnded {
            turn_id,
            reason: EndReason::SessionClosed,
            frames: 4000,
            continued_by: None,
        },
        ServerEvent::ImageAccepted {
            upload_id: "screenshot-1".into(),
            blob_id: BlobId([0xab; 32]),
            turn_id,
            mime: "image/png".into(),
            declared_mime: "image/jpeg".into(),
            width: 1280,
            height: 720,
            bytes: 204_800,
        },
        ServerEvent::Transcript {
            turn_id,
            text: "hello".into(),
        },
        ServerEvent::VisionResult {
            turn_id,
            blob_id: BlobId([1; 32]),
            description: "a cat".into(),
        },
        ServerEvent::ResponseDelta {
            turn_id,
            delta: "Hi".into(),
        },
        ServerEvent::ResponseDone {
            turn_id,
            text: "Hi there".into(),
        },
        ServerEvent::TurnCompleted {
            turn_id,
            status: CompletionStatus::Partial,
            stages: Stages {
                asr: StageStatus::Ok,
                vision: StageStatus::Failed,
                llm: StageStatus::Ok,
            },
            asr_ms: Some(120),
            vision_ms: None,
            llm_first_token_ms: Some(80),
            llm_total_ms: Some(900),
        },
        ServerEvent::TurnCompleted {
            turn_id,
            status: CompletionStatus::Interrupted,
            stages: Stages {
                asr: StageStatus::Ok,
                vision: StageStatus::Skipped,
                llm: StageStatus::Cancelled,
            },
            asr_ms: Some(120),
            vision_ms: None,
            llm_first_token_ms: None,
            llm_total_ms: None,
        },
        ServerEvent::ImageRejected {
            upload_id: "u".into(),
            code: ErrorCode::CorruptImage,
            message: "m".into(),
        },
        ServerEvent::Error {
            code: ErrorCode::TurnAlreadyOpen,
            message: "m".into(),
            turn_id: Some(turn_id),
        },
        ServerEvent::Error {
            code: ErrorCode::MalformedMessage,
            message: String::new(),
            turn_id: None,
        },
    ]
}

fn client_events() -> Vec<ClientEvent> {
    let (_, turn_id, traceparent) = ids();
    vec![
        ClientEvent::TurnStart {
            turn_id: None,
            traceparent: None,
        },
        ClientEvent::TurnStart {
            turn_id: Some(turn_id),
            traceparent: Some(traceparent),
        },
        ClientEvent::TurnEnd { turn_id: None },
        ClientEvent::ImageBegin {
            upload_id: "screenshot-1".into(),
            mime: "image/png".into(),
            size: 204_800,
            sha256: Some([0xcd; 32]),
            turn_id: Some(turn_id),
        },
        ClientEvent::ImageBegin {
            upload_id: "u".into(),
            mime: "image/webp".into(),
            size: 1,
            sha256: None,
            turn_id: None,
        },
        ClientEvent::ImageEnd {
            upload_id: "u".into(),
        },
        ClientEvent::TurnEnd {
            turn_id: Some(turn_id),
        },
    ]
}

#[test]
fn server_events_round_trip_through_the_schema() {
    let pool = pool();
    for event in server_events() {
        let json = serde_json::to_value(&event).unwrap();
        let back = through_proto(&pool, &json);
        assert_eq!(back, json, "the schema's JSON differs for {event:?}");
        let parsed: ServerEvent = serde_json::from_value(back).unwrap();
        assert_eq!(parsed, event);
    }
}

#[test]
fn client_events_round_trip_through_the_schema() {
    let pool = pool();
    for event in client_events() {
        let json = serde_json::to_value(&event).unwrap();
        let back = through_proto(&pool, &json);
        assert_eq!(back, json, "the schema's JSON differs for {event:?}");
        assert_eq!(ClientEvent::parse(&back.to_string()).unwrap(), event);
    }
}

#[test]
fn every_schema_message_is_an_event() {
    let pool = pool();
    // Events are the messages with a `type`; others (e.g. `Stages`) are parts of events.
    const PARTS: &[&str] = &["turngate.v1.Stages"];
    let in_schema: BTreeSet<String> = pool
        .all_messages()
        .filter(|m| m.get_field_by_name("type").is_some())
        .map(|m| m.full_name().to_owned())
        .filter(|n| n.starts_with("turngate.v1."))
        .collect();
    let mut in_rust = BTreeSet::new();
    for json in server_events()
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
    {
        in_rust.insert(message_name(json["type"].as_str().unwrap()));
    }
    for json in client_events()
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
    {
        in_rust.insert(message_name(json["type"].as_str().unwrap()));
    }
    assert_eq!(in_schema, in_rust);
    // Every field has a snake_case json_name equal to its name, and none is 64-bit.
    for message in pool
        .all_messages()
        .filter(|m| m.full_name().starts_with("turngate.v1."))
    {
        assert!(
            message.get_field_by_name("type").is_some() || PARTS.contains(&message.full_name()),
            "{} has no type",
            message.full_name()
        );
        for field in message.fields() {
            assert_eq!(field.json_name(), field.name());
            use prost_reflect::Kind::*;
            assert!(
                !matches!(field.kind(), Int64 | Uint64 | Sint64 | Fixed64 | Sfixed64),
                "{} is 64-bit",
                field.full_name()
            );
        }
    }
}
