//! A turn record's manifest (`manifest.json`, written last): what the turn was, what
//! was kept of it and where, with hashes, and what was not kept and why.
//!
//! The schema of record is `proto/turngate/v1/record.proto`; its proto3 JSON form is
//! exactly what these types write (a test checks every field against it). Times are
//! RFC 3339 UTC with milliseconds, each with its offset from the turn's start; sizes
//! are bytes; there are no 64-bit integers (proto3 JSON would write them as strings).
//! Reading takes any proto3 JSON writer's output: a field at its default may be absent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use turngate_core::upload::{hex, sha256};

/// The manifest of one turn's record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Manifest {
    /// The manifest format: [`FORMAT`].
    pub format: String,
    pub turn_id: String,
    pub session_id: String,
    /// The node that recorded it (`record.node_id`).
    pub node_id: String,
    /// The turn's trace: its id is the turn id.
    pub trace_id: String,
    pub root_span_id: String,
    /// The turn's number within its session, from 1.
    pub number: u32,
    /// What opened it: `vad` or `client`.
    pub cause: String,
    /// Why its input ended (`end_of_speech`, `client_end`, `max_length`, …); absent if
    /// it never did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its place in a chain: the turn it continues and the turn its input went on to.
    #[serde(default, skip_serializing_if = "Chain::is_empty")]
    pub chain: Chain,
    /// `ok`, `partial`, `failed` or `interrupted`; absent for a turn the node stopped
    /// before it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Each stage's outcome (`ok`, `failed`, `skipped`, `cancelled`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stages: BTreeMap<String, String>,
    /// `complete`: every artifact the turn produced and the configuration asked for is
    /// stored; `incomplete`: see `missing`.
    pub record_state: RecordState,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<Missing>,
    pub timings: Timings,
    pub counters: Counters,
    pub artifacts: Vec<Artifact>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub descriptions: Vec<Description>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// The numbers of the earlier turns whose exchanges the LLM's prompt held, oldest
    /// first (after the system prompt, a user and an assistant message each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<u32>,
    /// The configuration that shaped the turn: models, prompts, base URLs (never keys).
    pub config: TurnConfig,
    /// The token claims `auth.span_claims` names, as on the turn's spans.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
    /// The session's token subject (`sub`), so its records can be deleted on request
    /// (`turngate delete --subject`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// The manifest format this crate writes.
pub const FORMAT: &str = "turngate.turn_record.v1";

/// Whether a record holds everything it should.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    #[default]
    Complete,
    Incomplete,
}

/// An artifact the record does not hold, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing {
    /// The artifact's name (see [`crate::layout`]), or a pattern such as `backends/*`.
    pub name: String,
    /// `disabled` (the configuration keeps no such artifact), `store_failed` (the store
    /// refused it past every retry and the spool), `node_stopped` (the node stopped
    /// before the turn completed; found at its next start), `not_completed` (the turn
    /// ended without its processing, as when its session task stops), `over_limit`
    /// (larger than the record keeps).
    pub reason: String,
}

/// A turn's chain links.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Chain {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continues: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<String>,
}

impl Chain {
    fn is_empty(&self) -> bool {
        self.continues.is_none() && self.successor.is_none()
    }
}

/// A moment of the turn: when, and its offset from the turn's start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Moment {
    /// RFC 3339, UTC, milliseconds.
    pub at: String,
    /// Milliseconds since the turn started.
    pub offset_ms: u32,
}

/// When things happened.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timings {
    /// Its first frame (pre-roll included), or `turn.start`.
    pub started: Moment,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speech_started: Option<Moment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speech_ended: Option<Moment>,
    /// Its input ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_ended: Option<Moment>,
    /// Processing started (input ended, no upload of it open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_started: Option<Moment>,
    /// Processing finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<Moment>,
    /// Each stage's duration in milliseconds: `asr`, `vision`, `llm_first_token`,
    /// `llm_total`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stages_ms: BTreeMap<String, u32>,
}

/// What the turn's audio was.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Frames tagged with the turn.
    pub frames: u32,
    /// RTP packets in the received-audio recording.
    pub packets_recorded: u32,
    /// Zero-length packets the recording holds for lost or DTX gaps (RFC 7845 §4.1).
    pub concealment_packets: u32,
    /// The recording's duration, milliseconds.
    pub audio_ms: u32,
    /// Of the audio ASR was given, milliseconds concealed rather than decoded.
    pub concealed_ms: u32,
    /// Image uploads tagged with the turn (one the gateway then refused has no
    /// artifact); of a recovered turn, the images that reached the store.
    pub images: u32,
    /// RTP packets that arrived too late for their place in the recording (duplicates,
    /// or reordered beyond its window), left out of it.
    pub late_packets: u32,
}

/// One stored artifact.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Artifact {
    /// Its name under the turn's prefix, e.g. `audio.received.ogg`.
    pub name: String,
    /// SHA-256 of its bytes, lowercase hex.
    pub sha256: String,
    /// Bytes.
    pub size: u32,
    pub content_type: String,
    /// When it came to be, milliseconds from the turn's start.
    pub offset_ms: u32,
}

impl Artifact {
    /// The entry for `bytes` stored as `name`.
    pub fn of(name: &str, bytes: &[u8], content_type: &str, offset_ms: u32) -> Self {
        Self {
            name: name.to_owned(),
            sha256: sha256_hex(bytes),
            size: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
            content_type: content_type.to_owned(),
            offset_ms,
        }
    }
}

/// A vision description.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Description {
    pub blob_id: String,
    pub description: String,
}

/// The configuration that shaped a turn.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TurnConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asr: Option<BackendShape>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision: Option<BackendShape>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<BackendShape>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision_instruction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// Earlier exchanges a prompt holds at most.
    pub history_turns: u32,
    /// Whether the LLM is sent the images themselves.
    pub send_images: bool,
}

/// A backend as configured: never its key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendShape {
    pub provider: String,
    pub model: String,
    pub base_url: String,
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha256(bytes))
}
