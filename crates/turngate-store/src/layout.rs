//! Where a turn's record lives in the store.
//!
//! ```text
//! sessions/{session_id}/turns/{turn_id}/
//!     audio/received/{seq:06}.ogg     the received audio, one segment per flush
//!     audio.received.ogg              the segments joined at finalisation
//!     audio.asr.wav                   exactly the bytes sent to ASR
//!     images/{blob_id}.{ext}          each image as uploaded
//!     backends/{stage}.{attempt}.request.json, .response.json | .response.sse
//!     spans.otlp.json                 the turn's spans (OTLP/JSON)
//!     manifest.json                   written last
//! sessions/{session_id}/numbers/{number:010}.{turn_id}
//!                                     the session's turns by number (empty objects,
//!                                     listed in order: a page without reading them all)
//! turns/{turn_id}                     create-only index: the session that recorded it
//! conflicts/{turn_id}/{session_id}    a later session that recorded the same turn id
//! open/{node_id}/{turn_id}/{session_id}  marker: a turn being recorded by that node
//! ```

use object_store::path::Path;
use turngate_core::{SessionId, TurnId};

/// Artifact names, relative to a turn's prefix.
pub mod name {
    /// The segments joined.
    pub const AUDIO_RECEIVED: &str = "audio.received.ogg";
    /// The WAV sent to ASR.
    pub const AUDIO_ASR: &str = "audio.asr.wav";
    /// The manifest, written last.
    pub const MANIFEST: &str = "manifest.json";
    /// The turn's spans.
    pub const SPANS: &str = "spans.otlp.json";

    /// Received-audio segment `seq`.
    pub fn segment(seq: u32) -> String {
        format!("audio/received/{seq:06}.ogg")
    }

    /// An image as uploaded: `images/{blob_id}.{ext}`, the extension from its sniffed
    /// content type.
    pub fn image(blob_id: &str, mime: &str) -> String {
        let ext = TYPES
            .iter()
            .find(|(_, t)| *t == mime)
            .map_or("bin", |(ext, _)| ext);
        format!("images/{blob_id}.{ext}")
    }

    /// The content type of an artifact, from its name's extension.
    pub fn content_type(name: &str) -> &'static str {
        let ext = name.rsplit('.').next().unwrap_or("");
        TYPES
            .iter()
            .find(|(e, _)| *e == ext)
            .map_or("application/octet-stream", |(_, t)| t)
    }

    /// Artifact extensions and their content types, both ways.
    const TYPES: [(&str, &str); 9] = [
        ("ogg", "audio/ogg"),
        ("wav", "audio/wav"),
        ("png", "image/png"),
        ("jpg", "image/jpeg"),
        ("webp", "image/webp"),
        ("gif", "image/gif"),
        ("json", "application/json"),
        ("sse", "text/event-stream"),
        ("txt", "text/plain"),
    ];
}

/// The prefix of a turn's record (ids typed, or as read back from the store).
pub fn turn(session: impl std::fmt::Display, turn: impl std::fmt::Display) -> Path {
    Path::from(format!("{}/{turn}", turns_of(session)))
}

/// Where a session's turns' records are.
pub fn turns_of(session: impl std::fmt::Display) -> Path {
    Path::from(format!("sessions/{session}/turns"))
}

/// An artifact of a turn's record.
pub fn artifact(
    session: impl std::fmt::Display,
    turn_id: impl std::fmt::Display,
    name: &str,
) -> Path {
    Path::from(format!("{}/{name}", turn(session, turn_id)))
}

/// A session's entry for turn `number` (`turn`): its turns in number order, by listing.
pub fn number(session: impl std::fmt::Display, number: u32, turn: impl std::fmt::Display) -> Path {
    Path::from(format!("{}/{number:010}.{turn}", numbers(session)))
}

/// Where a session's number entries are.
pub fn numbers(session: impl std::fmt::Display) -> Path {
    Path::from(format!("sessions/{session}/numbers"))
}

/// The (number, turn) of a number entry's file name.
pub fn parse_number(file: &str) -> Option<(u32, &str)> {
    let (number, turn) = file.split_once('.')?;
    Some((number.parse().ok()?, turn))
}

/// The create-only index object of a turn id.
pub fn index(turn: TurnId) -> Path {
    Path::from(format!("turns/{turn}"))
}

/// Where a session that recorded `turn` after the index's first one is noted:
/// `conflicts/{turn}/{session}` (see [`crate::read::sessions_of`]).
pub fn conflict(turn: TurnId, session: SessionId) -> Path {
    Path::from(format!("conflicts/{turn}/{session}"))
}

/// The conflicts noted for `turn`.
pub fn conflicts(turn: &str) -> Path {
    Path::from(format!("conflicts/{turn}"))
}

/// The marker of a turn being recorded by `node`, for `session` (two sessions may
/// present one client turn id).
pub fn marker(node: &str, turn: TurnId, session: SessionId) -> Path {
    Path::from(format!("open/{node}/{turn}/{session}"))
}

/// What a marker's key names: `open/{node}/{turn}[/{session}]` as (node, turn, session;
/// markers from before they named the session have none). `None` for another key.
pub fn parse_marker(key: &Path) -> Option<(String, String, Option<String>)> {
    let mut parts = key.parts().map(|p| p.as_ref().to_owned());
    if parts.next()? != "open" {
        return None;
    }
    Some((parts.next()?, parts.next()?, parts.next()))
}

/// The markers of `node`.
pub fn markers(node: &str) -> Path {
    Path::from(format!("open/{node}"))
}
