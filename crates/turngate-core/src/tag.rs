//! Tagged media: what leaves the turn engine, stamped with its session and turn.

use std::time::Duration;

use bytes::Bytes;

use crate::id::{SessionId, TurnId};

/// A value stamped with the session and turn it belongs to. Built once by the turn
/// engine; the tag is never rewritten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tagged<T> {
    /// The session the value arrived on.
    pub session_id: SessionId,
    /// The turn it belongs to, or `None` for input that arrived while no turn was open.
    pub turn_id: Option<TurnId>,
    /// Per-session sequence number, from 0, in arrival order.
    pub seq: u64,
    /// Arrival time on the session clock (time since the session started).
    pub at: Duration,
    /// The value.
    pub value: T,
}

/// One received RTP packet of the session's Opus track, with its decoded audio.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudioFrame {
    /// RTP sequence number as received.
    pub rtp_seq: u16,
    /// RTP timestamp as received (48 kHz clock for Opus).
    pub rtp_timestamp: u32,
    /// The Opus payload exactly as received.
    pub payload: Bytes,
    /// Mono 16 kHz PCM: first the concealment for any packets lost or skipped (DTX)
    /// just before this one, then this packet's audio. Concatenating the `pcm` of a
    /// turn's frames gives its audio with the sender's timing.
    pub pcm: Vec<i16>,
    /// Samples at the start of `pcm` that were concealed rather than decoded.
    pub concealed_samples: u32,
}

/// A blob id: the SHA-256 of the blob's bytes, written as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(pub [u8; 32]);

impl std::fmt::Display for BlobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::upload::hex(&self.0))
    }
}

impl std::fmt::Debug for BlobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobId({self})")
    }
}

impl serde::Serialize for BlobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for BlobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        crate::upload::parse_sha256(&s)
            .map(BlobId)
            .map_err(serde::de::Error::custom)
    }
}

/// An accepted image upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    /// The SHA-256 of the bytes.
    pub blob_id: BlobId,
    /// The client's upload id.
    pub upload_id: String,
    /// The format the bytes actually are (sniffed; authoritative), e.g. `image/png`.
    pub mime: String,
    /// The content type the client declared.
    pub declared_mime: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The bytes as uploaded.
    pub bytes: Bytes,
    /// Session time its upload began (its tag's `at` is when it was accepted).
    pub began_at: Duration,
}
