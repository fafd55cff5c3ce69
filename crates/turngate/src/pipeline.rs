//! Downstream of a session: collects each turn's tagged frames and blobs into a bounded
//! per-turn buffer and hands the buffer to processing once the turn's processing may
//! start (input ended, no upload of it open).
//!
//! It also keeps each turn's trace: the root span opens with the turn (at its first
//! frame), speech start and end become events on it, each accepted image gets its span,
//! the audio its span when the input is complete, and the root ends with processing.
//!
//! Processing ([`crate::orchestrate`]) runs per turn, concurrently with later turns;
//! when it is done its `turn.completed` goes to the client and "processing finished" to
//! the turn engine. A barge-in on a turn being processed cancels its LLM stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::SpanContext;
use turngate_core::{AudioFrame, Blob, Tagged, TurnId, TurnInfo, TurnState};
use turngate_media::session::{Downstream, Session};
use turngate_telemetry::{AudioStats, TurnTrace, names, snake};

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

/// A turn whose processing has not started: its buffer and its trace.
struct Pending {
    buffer: TurnBuffer,
    trace: TurnTrace,
    /// The session's (dropped, undecodable) frame counts when the turn opened...
    losses_at_start: (u64, u64),
    /// ...and when its input ended.
    losses_at_end: Option<(u64, u64)>,
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
        let wall = |at: Duration| shared.started + at;
        let losses = || {
            let c = &shared.counters;
            (
                c.frames_dropped_backpressure.load(Ordering::Relaxed),
                c.frames_undecodable.load(Ordering::Relaxed),
            )
        };
        // The root span of the session's latest turn: the next one links to it.
        let mut previous_root: Option<SpanContext> = None;
        let mut open = |turn: &TurnInfo| {
            let trace = app.telemetry.start_turn(
                turn,
                shared.id,
                wall(turn.started_at),
                previous_root.take(),
            );
            if let Some(speech) = turn.speech_started_at {
                trace.event(names::event::SPEECH_START, wall(speech));
            }
            previous_root = Some(trace.span_context());
            app.metrics.turns_started.inc([&snake(&turn.cause)]);
            Pending {
                buffer: TurnBuffer::new(cap),
                trace,
                losses_at_start: losses(),
                losses_at_end: None,
            }
        };
        // Turns whose processing has not started: the open one, and ended ones still
        // waiting for an upload.
        let mut pending: HashMap<TurnId, Pending> = HashMap::new();
        // Barge-in flags of turns being processed.
        let mut interrupts: HashMap<TurnId, watch::Sender<bool>> = HashMap::new();
        while let Some(item) = downstream.recv().await {
            match item {
                Downstream::TurnStarted(turn) => {
                    pending.insert(turn.id, open(&turn));
                }
                Downstream::Frame(frame) => {
                    if let Some(p) = frame.turn_id.and_then(|id| pending.get_mut(&id)) {
                        p.buffer.push(frame);
                    }
                }
                Downstream::Blob(blob) => {
                    if let Some(p) = blob.turn_id.and_then(|id| pending.get_mut(&id)) {
                        p.trace
                            .image(&blob.value, wall(blob.value.began_at), wall(blob.at));
                        p.buffer.blobs.push(blob);
                    }
                }
                Downstream::TurnEnded(turn) => {
                    if let Some(p) = pending.get_mut(&turn.id) {
                        p.losses_at_end = Some(losses());
                        if let Some(speech) = turn.speech_ended_at {
                            p.trace.event(names::event::SPEECH_END, wall(speech));
                        }
                    }
                }
                Downstream::TurnInterrupted(id) => {
                    if let Some(flag) = interrupts.get(&id) {
                        flag.send_replace(true);
                    }
                }
                Downstream::ProcessingStarted(turn) => {
                    // A closing session may have lost the turn's start (its queue was
                    // full): the turn is still processed, with what arrived.
                    let p = pending.remove(&turn.id).unwrap_or_else(|| open(&turn));
                    let audio = measure(&entry, &turn, &p.buffer);
                    if let (Some(first), Some(last)) =
                        (p.buffer.frames.first(), p.buffer.frames.last())
                    {
                        let (dropped, undecodable) = p.losses_at_end.unwrap_or_else(losses);
                        p.trace.audio(&AudioStats {
                            frames: p.buffer.frames.len() as u64,
                            samples: audio.samples,
                            concealed_samples: audio.concealed,
                            dropped: dropped - p.losses_at_start.0,
                            undecodable: undecodable - p.losses_at_start.1,
                            first: wall(first.at),
                            last: wall(last.at),
                        });
                    }
                    let (flag, interrupted) = watch::channel(false);
                    interrupts.retain(|_, f| !f.is_closed());
                    interrupts.insert(turn.id, flag);
                    let (app, entry, processing) =
                        (Arc::clone(&app), Arc::clone(&entry), processing.clone());
                    let session_id = shared.id;
                    let tasks = app.processing.clone();
                    tasks.spawn(async move {
                        let images = p.buffer.blobs.len();
                        let (status, completed) = orchestrate::run(
                            &app,
                            &entry,
                            session_id,
                            &turn,
                            &p.trace,
                            p.buffer,
                            interrupted.clone(),
                        )
                        .await;
                        entry.shared.send_event(completed).await;
                        let _ = processing.send(turn.id);
                        let mut done = turn.clone();
                        done.state = TurnState::Completed;
                        done.interrupted |= *interrupted.borrow();
                        p.trace.end(&done, status, images, SystemTime::now());
                        app.metrics
                            .turns_completed
                            .inc([&snake(&turn.cause), &snake(&status)]);
                    });
                }
            }
        }
        shared.wait_ended().await;
        app.registry.ended(&resource);
    });
}

/// Measures the turn's audio, and records it for the session API.
fn measure(entry: &Entry, turn: &TurnInfo, buffer: &TurnBuffer) -> TurnAudio {
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
    audio
}
