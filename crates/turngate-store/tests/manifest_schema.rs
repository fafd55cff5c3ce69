//! The manifest types and `proto/turngate/v1/record.proto` cannot drift: a manifest
//! with every field set goes Rust → JSON → protobuf (unknown fields refused) → JSON →
//! Rust unchanged, and every field of the schema is written.

use std::path::PathBuf;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use turngate_store::manifest::*;

fn pool() -> DescriptorPool {
    let proto = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    protox::Compiler::new([proto])
        .unwrap()
        .include_imports(true)
        .open_file("turngate/v1/record.proto")
        .expect("record.proto compiles")
        .descriptor_pool()
}

fn moment(ms: u32) -> Moment {
    Moment {
        at: format!("2026-11-30T10:00:00.{ms:03}Z"),
        offset_ms: ms,
    }
}

fn full() -> Manifest {
    let shape = |m: &str| BackendShape {
        provider: "openai".into(),
        model: m.into(),
        base_url: "http://127.0.0.1:9/v1".into(),
    };
    Manifest {
        format: FORMAT.into(),
        turn_id: "0af7651916cd43dd8448eb211c80319c".into(),
        session_id: "01890f3a9b7c4d5e6f708192a3b4c5d6".into(),
        node_id: "node-a".into(),
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        root_span_id: "b7ad6b7169203331".into(),
        number: 3,
        cause: "vad".into(),
        reason: Some("end_of_speech".into()),
        chain: Chain {
            continues: Some("1af7651916cd43dd8448eb211c80319c".into()),
            successor: Some("2af7651916cd43dd8448eb211c80319c".into()),
        },
        status: Some("ok".into()),
        stages: [("asr".into(), "ok".into())].into(),
        record_state: RecordState::Incomplete,
        missing: vec![Missing {
            name: "spans.otlp.json".into(),
            reason: "store_failed".into(),
        }],
        timings: Timings {
            started: moment(0),
            speech_started: Some(moment(1)),
            speech_ended: Some(moment(2)),
            input_ended: Some(moment(3)),
            processing_started: Some(moment(4)),
            completed: Some(moment(5)),
            stages_ms: [("asr".into(), 120)].into(),
        },
        counters: Counters {
            frames: 1,
            packets_recorded: 2,
            concealment_packets: 3,
            audio_ms: 4,
            concealed_ms: 5,
            images: 6,
            late_packets: 7,
        },
        artifacts: vec![Artifact::of("audio.asr.wav", b"RIFF", "audio/wav", 7)],
        transcript: Some("hello".into()),
        descriptions: vec![Description {
            blob_id: "ab".repeat(32),
            description: "a cat".into(),
        }],
        answer: Some("hi".into()),
        history: vec![1, 2],
        config: TurnConfig {
            asr: Some(shape("whisper")),
            vision: Some(shape("llava")),
            llm: Some(shape("llama")),
            vision_instruction: Some("Describe".into()),
            system_prompt: Some("Be brief".into()),
            history_turns: 8,
            send_images: true,
        },
        claims: [("user.id".into(), "alice".into())].into(),
        subject: Some("alice".into()),
    }
}

#[test]
fn the_manifest_round_trips_through_its_schema_with_every_field() {
    let pool = pool();
    let desc = pool
        .get_message_by_name("turngate.v1.TurnManifest")
        .unwrap();
    let manifest = full();
    let json = serde_json::to_value(&manifest).unwrap();
    let message = DynamicMessage::deserialize(desc.clone(), &json)
        .unwrap_or_else(|e| panic!("the schema refuses {json:#}: {e}"));
    // Every field of the schema is set by the full manifest.
    for field in desc.fields() {
        assert!(
            message.has_field(&field),
            "{} is never written",
            field.name()
        );
    }
    let options = SerializeOptions::new()
        .skip_default_fields(true)
        .use_proto_field_name(true);
    let back = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap();
    let back: Manifest = serde_json::from_value(back).unwrap();
    assert_eq!(back, manifest);
}
