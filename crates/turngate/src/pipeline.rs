//! Downstream of a session: collects each turn's tagged frames and blobs into a bounded
//! per-turn buffer and hands the buffer to processing once the turn's processing may
//! start (input ended, no upload of it open).
//!
//! Processing ([`crate::orchestrate`]) runs per turn, concurrently with later turns;
//! when it is done its `turn.completed` goes to the client and "processing finished" to
//! the turn engine. A barge-in on a turn being processed cancels its LLM stream.

use std::collections::HashMap;
use std::sync::Arc;

use turngate_core::{AudioFrame, Blob, Tagged, TurnId, TurnInfo};
use turngate_media::session::{Downstream, Session};

use tokio::sync::watch;

use crate::api::App;
use crate::orchestrate;
use crate::registry::{Entry, TurnAudio};

/// The frames and blobs of one turn, in order, as tagged.
pub struct TurnBuffer {
    /// Its frames: the Opus packets as received and their decoded PCM.
    pub frames: Vec<Tagged<AudioFrame>>,
    /// Its accepted images.
    pub blobs: Vec<Tagged<Blob>>,
    cap: usize,
    /// Frames beyond the cap, not kept (the engine's maximum turn length makes this 0).
    pub over_cap: u64,
}

impl TurnBuffer {
    fn new(cap: usize) -> Self {
        Self {
            frames: Vec::new(),
            blobs: Vec::new(),
            cap,
            over_cap: 0,
        }
    }

    fn push(&mut self, frame: Tagged<AudioFrame>) {
        if self.frames.len() < self.cap {
            self.frames.push(frame);
        } else {
            self.over_cap += 1;
        }
    }
}

/// Runs the downstream consumer of a new session and retires the session when it ends.
pub fn spawn(app: Arc<App>, resource: String, entry: Arc<Entry>, session: Session) {
    let turn = &app.session.turn;
    // Opus packets last at least 2.5 ms: a turn of `max_turn` (plus pre-roll) has at most
    // this many frames.
    let cap = ((turn.max_turn + turn.preroll).as_micros() / 2500) as usize + 1;
    let Session {
        shared,
        mut downstream,
        processing,
    } = session;
    tokio::spawn(async move {
        // Turns whose processing has not started: the open one, and ended ones still
        // waiting for an upload.
        let mut buffers: HashMap<TurnId, TurnBuffer> = HashMap::new();
        // Barge-in flags of turns being processed.
        let mut interrupts: HashMap<TurnId, watch::Sender<bool>> = HashMap::new();
        while let Some(item) = downstream.recv().await {
            match item {
                Downstream::TurnStarted(turn) => {
                    buffers.insert(turn.id, TurnBuffer::new(cap));
                }
                Downstream::Frame(frame) => {
                    if let Some(buffer) = frame.turn_id.and_then(|id| buffers.get_mut(&id)) {
                        buffer.push(frame);
                    }
                }
                Downstream::Blob(blob) => {
                    if let Some(buffer) = blob.turn_id.and_then(|id| buffers.get_mut(&id)) {
                        buffer.blobs.push(blob);
                    }
                }
                Downstream::TurnEnded(_) => {}
                Downstream::TurnInterrupted(id) => {
                    if let Some(flag) = interrupts.get(&id) {
                        flag.send_replace(true);
                    }
                }
                Downstream::ProcessingStarted(turn) => {
                    let buffer = buffers
                        .remove(&turn.id)
                        .unwrap_or_else(|| TurnBuffer::new(cap));
                    measure(&entry, &turn, &buffer);
                    let (flag, interrupted) = watch::channel(false);
                    interrupts.retain(|_, f| !f.is_closed());
                    interrupts.insert(turn.id, flag);
                    let (app, entry, processing) =
                        (Arc::clone(&app), Arc::clone(&entry), processing.clone());
                    let session_id = shared.id;
                    tokio::spawn(async move {
                        let completed = orchestrate::run(
                            &app.backends,
                            &entry,
                            session_id,
                            &turn,
                            buffer,
                            interrupted,
                        )
                        .await;
                        entry.shared.send_event(completed).await;
                        let _ = processing.send(turn.id);
                    });
                }
            }
        }
        shared.wait_ended().await;
        app.registry.ended(&resource);
    });
}

/// Records the turn's audio measures for the session API.
fn measure(entry: &Entry, turn: &TurnInfo, buffer: &TurnBuffer) {
    let audio = TurnAudio {
        samples: buffer.frames.iter().map(|f| f.value.pcm.len() as u64).sum(),
        concealed: buffer
            .frames
            .iter()
            .map(|f| u64::from(f.value.concealed_samples))
            .sum(),
    };
    if buffer.over_cap > 0 {
        tracing::warn!(turn = %turn.id, frames = buffer.over_cap, "Turn buffer over its cap.");
    }
    if let Ok(mut map) = entry.audio.lock() {
        map.insert(turn.id, audio);
    }
}
