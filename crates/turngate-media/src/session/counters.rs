//! The counters of one session: every frame's fate and every upload's outcome, counted
//! where each happens, read together for the session API and `/metrics`.
//!
//! Per session, `frames_received == frames_in_turns + idle_frames_discarded +
//! frames_dropped_backpressure + frames_undecodable` once every frame has its fate.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one session, each counted where its event happens.
#[derive(Debug, Default)]
pub struct SessionCounters {
    /// RTP packets of the audio track received.
    pub frames_received: AtomicU64,
    /// Frames tagged with a turn.
    pub frames_in_turns: AtomicU64,
    /// Frames that left while no turn was open.
    pub idle_frames_discarded: AtomicU64,
    /// Frames dropped because the ingress queue was full.
    pub frames_dropped_backpressure: AtomicU64,
    /// Frames libopus could not decode.
    pub frames_undecodable: AtomicU64,
    /// Packets missing by sequence number (concealed).
    pub packets_lost: AtomicU64,
    /// 16 kHz samples synthesized by concealment.
    pub samples_concealed: AtomicU64,
    /// Server events the client never got (outbox full, or send buffer full).
    pub events_dropped: AtomicU64,
    /// Data-channel messages the client sent that were refused.
    pub messages_refused: AtomicU64,
    /// Images accepted.
    pub images_accepted: AtomicU64,
    /// Bytes of accepted images.
    pub image_bytes_accepted: AtomicU64,
    /// Bytes of uploads refused, timed out or abandoned, freed.
    pub upload_bytes_freed: AtomicU64,
    /// Uploads refused, by error code.
    pub images_rejected: Mutex<BTreeMap<&'static str, u64>>,
}

impl SessionCounters {
    /// The counters now. Fates are read before receipt: a frame is counted received
    /// before it gets its fate, so `frames_received` is never below the sum of fates.
    pub fn read(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let frames_in_turns = get(&self.frames_in_turns);
        let idle_frames_discarded = get(&self.idle_frames_discarded);
        let frames_dropped_backpressure = get(&self.frames_dropped_backpressure);
        let frames_undecodable = get(&self.frames_undecodable);
        Counts {
            frames_received: get(&self.frames_received),
            frames_in_turns,
            idle_frames_discarded,
            frames_dropped_backpressure,
            frames_undecodable,
            packets_lost: get(&self.packets_lost),
            samples_concealed: get(&self.samples_concealed),
            events_dropped: get(&self.events_dropped),
            messages_refused: get(&self.messages_refused),
            images_accepted: get(&self.images_accepted),
            image_bytes_accepted: get(&self.image_bytes_accepted),
            upload_bytes_freed: get(&self.upload_bytes_freed),
            images_rejected: self
                .images_rejected
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default(),
        }
    }
}

/// A reading of [`SessionCounters`] (same names and meanings). Readings of several
/// sessions add up to their totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub frames_received: u64,
    pub frames_in_turns: u64,
    pub idle_frames_discarded: u64,
    pub frames_dropped_backpressure: u64,
    pub frames_undecodable: u64,
    pub packets_lost: u64,
    pub samples_concealed: u64,
    pub events_dropped: u64,
    pub messages_refused: u64,
    pub images_accepted: u64,
    pub image_bytes_accepted: u64,
    pub upload_bytes_freed: u64,
    pub images_rejected: BTreeMap<&'static str, u64>,
}

impl Counts {
    /// Frames that got their fate: in a turn, idle, dropped or undecodable. The rest of
    /// `frames_received` is still queued or in the pre-roll ring.
    pub fn frames_with_fate(&self) -> u64 {
        self.frames_in_turns
            + self.idle_frames_discarded
            + self.frames_dropped_backpressure
            + self.frames_undecodable
    }
}

impl std::ops::AddAssign<&Counts> for Counts {
    fn add_assign(&mut self, other: &Counts) {
        self.frames_received += other.frames_received;
        self.frames_in_turns += other.frames_in_turns;
        self.idle_frames_discarded += other.idle_frames_discarded;
        self.frames_dropped_backpressure += other.frames_dropped_backpressure;
        self.frames_undecodable += other.frames_undecodable;
        self.packets_lost += other.packets_lost;
        self.samples_concealed += other.samples_concealed;
        self.events_dropped += other.events_dropped;
        self.messages_refused += other.messages_refused;
        self.images_accepted += other.images_accepted;
        self.image_bytes_accepted += other.image_bytes_accepted;
        self.upload_bytes_freed += other.upload_bytes_freed;
        for (code, n) in &other.images_rejected {
            *self.images_rejected.entry(code).or_default() += n;
        }
    }
}
