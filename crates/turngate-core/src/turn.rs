//! The turn state machine of one session, sans-IO.
//!
//! [`TurnEngine`] takes inputs stamped with the session clock (time since the session
//! started) — audio frames with their VAD decision, client `turn.start` / `turn.end`,
//! "processing finished", ticks, session close — and produces [`Output`]s: every frame
//! exactly once as a [`Tagged`] frame, and turn lifecycle events. It never reads a clock
//! or an RNG it was not given; [`TurnEngine::poll_timeout`] says when it next needs a
//! tick, so silence without packets (DTX) still ends turns.
//!
//! Rules (see the project README for the full model):
//! - a turn is opened by a client `turn.start` (cause `client`), or by VAD speech onset
//!   while no turn is open (cause `vad`);
//! - a client turn's input ends on `turn.end`; a VAD turn's after `hangover` without
//!   voiced frames; any turn's at `max_turn`; any turn's when the session closes;
//! - **chains**: a turn that reaches `max_turn` while its input goes on (a client turn,
//!   or a VAD turn whose speech goes on) ends `max_length` and is continued by a new
//!   turn that names it (`continues`; the ended one names its `continued_by`). A
//!   `turn.end` naming any turn of a chain ends the chain's open piece;
//! - **who answers**: a turn ended `superseded`, or split at `max_length` and
//!   continued, hands its input on to the next turn ([`TurnInfo::successor`]) and gets
//!   no answer of its own; every other turn is answered;
//! - an image upload while no turn is open opens a turn (cause `image`); its input ends on
//!   `turn.end`, or once `hangover + preroll` passed with no upload open or beginning and
//!   no speech (the detector notices speech up to `preroll` after it began, so speech
//!   that began within the hangover still joins); speech joins it;
//! - while a client turn is open, VAD neither opens nor closes turns; `turn.start`
//!   during a VAD turn supersedes it; a second `turn.start` during a client turn is refused;
//! - while idle, frames wait up to `preroll` in a ring; on VAD onset those frames join the
//!   new turn, older ones leave as idle. A tag is assigned once and never rewritten;
//! - a turn is `open`, then `ended` (input closed), then `completed` (processing
//!   finished), with exactly one [`CompletionStatus`]. A new turn opened by the user
//!   (speech or `turn.start`) while earlier turns are not completed marks them
//!   `interrupted` (barge-in): from then on [`TurnEngine::admits_results`] refuses
//!   their result events, and they complete with status `interrupted`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand_core::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode};
use crate::id::{SessionId, SpanId, TraceParent, TurnId};
use crate::outcome::{CompletionStatus, Stages};
use crate::tag::{AudioFrame, Tagged};

/// Timing of turn detection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnConfig {
    /// Silence after the last voiced frame that ends a VAD turn. Longer values merge
    /// pauses within a sentence into one turn; shorter ones answer sooner. Default 700 ms.
    pub hangover: Duration,
    /// Audio kept from before VAD onset and added to the new turn, because a detector
    /// notices speech some time after it began. Default 300 ms.
    pub preroll: Duration,
    /// The longest a turn's input may last; longer input is split. Bounds the audio any
    /// one turn holds. Default 60 s.
    pub max_turn: Duration,
    /// How long voiced frames must run before VAD calls speech onset; filters clicks.
    /// Default 60 ms.
    pub speech_onset: Duration,
    /// Turns a session may have; bounds what a session keeps about its turns. Beyond it,
    /// `turn.start` is refused and speech stays idle. Default 10 000.
    pub max_turns: usize,
    /// Uploads one turn may take (each holds up to the image size limit until the turn
    /// is processed). Default 32.
    pub max_uploads_per_turn: u32,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            hangover: Duration::from_millis(700),
            preroll: Duration::from_millis(300),
            max_turn: Duration::from_secs(60),
            speech_onset: Duration::from_millis(60),
            max_turns: 10_000,
            max_uploads_per_turn: 32,
        }
    }
}

/// What opened a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Cause {
    /// The client sent `turn.start`.
    Client,
    /// The gateway's voice activity detector heard speech onset.
    Vad,
    /// An image upload began while no turn was open.
    Image,
}

/// Why a turn's input ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EndReason {
    /// The client sent `turn.end`.
    ClientEnd,
    /// VAD heard no speech for the hangover.
    EndOfSpeech,
    /// An image turn saw no further upload and no speech for the hangover.
    Idle,
    /// The turn reached the maximum length.
    MaxLength,
    /// A client `turn.start` replaced this VAD turn.
    Superseded,
    /// The session closed.
    SessionClosed,
}

/// A turn's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnState {
    /// Input is being collected.
    Open,
    /// Input closed; processing runs.
    Ended,
    /// Processing finished.
    Completed,
}

/// Everything the engine knows about one turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnInfo {
    /// The turn id (trace id of its root span).
    pub id: TurnId,
    /// Number within the session, from 1.
    pub number: u32,
    /// What opened it.
    pub cause: Cause,
    /// The span id assigned to the turn's root span.
    pub root_span_id: SpanId,
    /// The client's span context from `turn.start`, the root span's remote parent.
    pub client_parent: Option<TraceParent>,
    /// Lifecycle state.
    pub state: TurnState,
    /// Why its input ended, once it has.
    pub reason: Option<EndReason>,
    /// Whether the user spoke over its processing.
    pub interrupted: bool,
    /// Session time of its first frame (pre-roll included), or of `turn.start`.
    pub started_at: Duration,
    /// Session time its input ended.
    pub ended_at: Option<Duration>,
    /// Session time its processing started: input ended and no upload of it is open.
    /// From then on it takes no more input.
    pub processing_started_at: Option<Duration>,
    /// Uploads tagged with it that are still open (or being validated).
    pub uploads_pending: u32,
    /// Uploads ever tagged with it.
    pub uploads_tagged: u32,
    /// Session time its processing finished.
    pub completed_at: Option<Duration>,
    /// Frames tagged with it.
    pub frames: u32,
    /// Whether its trace is recorded, as the session's [`TurnSampler`] decided when it
    /// opened; `None` without a sampler.
    pub sampled: Option<bool>,
    /// VAD turns: session time the voiced run that opened it began.
    pub speech_started_at: Option<Duration>,
    /// Turns ended by end of speech: session time of the last voiced frame.
    pub speech_ended_at: Option<Duration>,
    /// The turn this one continues (the previous piece of a chain split at `max_turn`).
    pub continues: Option<TurnId>,
    /// The turn its input was handed to: the continuation of a turn split at
    /// `max_turn`, or the client turn that superseded it. Such a turn gets no answer of
    /// its own; its results go into the successor's prompt.
    pub successor: Option<TurnId>,
    /// How its processing ended, once it has.
    pub status: Option<CompletionStatus>,
}

impl TurnInfo {
    /// Whether the turn gets an answer of its own (it handed its input to no successor).
    pub fn answered(&self) -> bool {
        self.successor.is_none()
    }

    /// The continuation of a turn split at `max_turn` (`turn.ended`'s `continued_by`).
    pub fn continued_by(&self) -> Option<TurnId> {
        self.successor
            .filter(|_| self.reason == Some(EndReason::MaxLength))
    }

    /// The context of the turn's root span, as announced in `turn.started`: its flags
    /// are the client's (or `01`), with the sampled bit as decided, if decided.
    pub fn traceparent(&self) -> TraceParent {
        let flags = self.client_parent.map_or(1, |p| p.flags);
        TraceParent {
            trace_id: self.id,
            parent_id: self.root_span_id,
            flags: match self.sampled {
                Some(true) => flags | 1,
                Some(false) => flags & !1,
                None => flags,
            },
        }
    }
}

/// Decides, when a turn opens, whether its trace will be recorded: the tracer's sampler
/// applied to the turn id and the client's span context. The decision is announced in
/// `turn.started`.
#[derive(Clone)]
pub struct TurnSampler(Arc<dyn Fn(TurnId, Option<TraceParent>) -> bool + Send + Sync>);

impl TurnSampler {
    /// A sampler from its decision function.
    pub fn new(
        decide: impl Fn(TurnId, Option<TraceParent>) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(decide))
    }

    /// The decision for a turn.
    pub fn sampled(&self, turn_id: TurnId, client_parent: Option<TraceParent>) -> bool {
        (self.0)(turn_id, client_parent)
    }
}

impl std::fmt::Debug for TurnSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TurnSampler")
    }
}

/// What the engine asks its driver to do or tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// A frame with its final tag.
    Frame(Tagged<AudioFrame>),
    /// A turn opened.
    TurnStarted(TurnInfo),
    /// A turn's input ended.
    TurnEnded(TurnInfo),
    /// A turn's processing may start: its input ended and none of its uploads is open.
    ProcessingStarted(TurnInfo),
    /// A not yet completed turn was spoken over.
    TurnInterrupted(TurnId),
    /// A turn's processing finished.
    TurnCompleted(TurnInfo),
}

/// A turn about to open.
struct NewTurn {
    cause: Cause,
    id: TurnId,
    client_parent: Option<TraceParent>,
    continues: Option<TurnId>,
}

/// Frame counts kept by the engine. Frames dropped or undecodable before reaching it
/// are counted by the driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// Frames tagged with a turn.
    pub frames_in_turns: u64,
    /// Frames that left while no turn was open.
    pub idle_frames_discarded: u64,
    /// Frames waiting in the pre-roll ring for their tag.
    pub frames_held: u64,
}

/// The turn state machine of one session. See the module docs.
pub struct TurnEngine<R> {
    config: TurnConfig,
    session_id: SessionId,
    started_unix_ms: u64,
    rng: R,
    now: Duration,
    next_seq: u64,
    preroll: VecDeque<(u64, Duration, AudioFrame)>,
    turns: Vec<TurnInfo>,
    /// Index of each turn by id; an id is never used twice in a session.
    by_id: HashMap<TurnId, usize>,
    open: Option<usize>,
    voiced_since: Option<Duration>,
    last_voiced: Option<Duration>,
    last_upload_activity: Option<Duration>,
    counters: EngineCounters,
    outputs: VecDeque<Output>,
    closed: bool,
    sampler: Option<TurnSampler>,
}

impl<R: Rng> TurnEngine<R> {
    /// An engine for a session that started at `started_unix_ms` (wall clock, used to
    /// time-stamp minted turn ids), drawing ids from `rng`. A zero `max_turn` is taken
    /// as 1 ms.
    pub fn new(
        mut config: TurnConfig,
        session_id: SessionId,
        started_unix_ms: u64,
        rng: R,
    ) -> Self {
        config.max_turn = config.max_turn.max(Duration::from_millis(1));
        Self {
            config,
            session_id,
            started_unix_ms,
            rng,
            now: Duration::ZERO,
            next_seq: 0,
            preroll: VecDeque::new(),
            turns: Vec::new(),
            by_id: HashMap::new(),
            open: None,
            voiced_since: None,
            last_voiced: None,
            last_upload_activity: None,
            counters: EngineCounters::default(),
            outputs: VecDeque::new(),
            closed: false,
            sampler: None,
        }
    }

    /// Opens no more turns from now on, as if `max_turns` had been reached (the
    /// session's record is full). Whether this changed anything.
    pub fn stop_new_turns(&mut self) -> bool {
        let stopped = self.turns.len().min(self.config.max_turns);
        let changed = stopped < self.config.max_turns;
        self.config.max_turns = stopped;
        changed
    }

    /// Decides with `sampler` whether each new turn's trace is recorded.
    pub fn with_sampler(mut self, sampler: Option<TurnSampler>) -> Self {
        self.sampler = sampler;
        self
    }

    /// The session id frames are tagged with.
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// The session's turns, oldest first.
    pub fn turns(&self) -> &[TurnInfo] {
        &self.turns
    }

    /// The turn whose input is open, if any.
    pub fn open_turn(&self) -> Option<&TurnInfo> {
        self.open.map(|i| &self.turns[i])
    }

    /// Frame counts.
    pub fn counters(&self) -> EngineCounters {
        self.counters
    }

    /// The next output, if any. Drain after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the engine next needs [`handle_tick`](Self::handle_tick), if ever.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let turn_deadline = self
            .open
            .and_then(|i| self.turn_deadline(&self.turns[i]).map(|(at, _)| at));
        let preroll_deadline = self
            .preroll
            .front()
            .map(|(_, at, _)| *at + self.config.preroll);
        [turn_deadline, preroll_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// Time passes without input.
    pub fn handle_tick(&mut self, at: Duration) {
        self.advance(at);
    }

    /// A frame arrived, with the VAD decision for its audio.
    pub fn handle_frame(&mut self, at: Duration, frame: AudioFrame, voiced: bool) {
        let at = self.advance(at);
        let seq = self.next_seq;
        self.next_seq += 1;
        if voiced {
            self.voiced_since.get_or_insert(at);
            self.last_voiced = Some(at);
        } else {
            self.voiced_since = None;
        }
        if let Some(i) = self.open {
            let turn_id = self.turns[i].id;
            self.emit_frame(Some((i, turn_id)), seq, at, frame);
            return;
        }
        if self.closed {
            self.emit_frame(None, seq, at, frame);
            return;
        }
        self.preroll.push_back((seq, at, frame));
        self.counters.frames_held += 1;
        self.expire_preroll(at);
        let onset = self
            .voiced_since
            .is_some_and(|since| at - since >= self.config.speech_onset);
        if onset && !self.closed && self.turns.len() < self.config.max_turns {
            let started_at = self.preroll.front().map_or(at, |(_, first, _)| *first);
            let next = NewTurn {
                cause: Cause::Vad,
                id: self.mint_id(started_at),
                client_parent: None,
                continues: None,
            };
            self.open_turn_at(started_at, next, true);
        }
    }

    /// The client sent `turn.start`. Returns the new turn's id.
    pub fn handle_turn_start(
        &mut self,
        at: Duration,
        turn_id: Option<TurnId>,
        traceparent: Option<TraceParent>,
    ) -> Result<TurnId, Error> {
        let at = self.advance(at);
        if let (Some(id), Some(tp)) = (turn_id, traceparent)
            && id != tp.trace_id
        {
            return Err(Error::refused(
                ErrorCode::TurnIdMismatch,
                format!(
                    "turn_id {id} differs from the traceparent's trace-id {}",
                    tp.trace_id
                ),
            ));
        }
        let requested = traceparent.map(|tp| tp.trace_id).or(turn_id);
        if let Some(id) = requested
            && self.by_id.contains_key(&id)
        {
            return Err(Error::refused(
                ErrorCode::DuplicateTurnId,
                format!("turn id {id} was already used in this session"),
            ));
        }
        if self.closed {
            return Err(Error::refused(
                ErrorCode::NotFound,
                "the session has closed",
            ));
        }
        if let Some(open) = self.open_turn()
            && open.cause == Cause::Client
        {
            return Err(Error::refused(
                ErrorCode::TurnAlreadyOpen,
                format!("client turn {} is still open; send turn.end first", open.id),
            ));
        }
        if self.turns.len() >= self.config.max_turns {
            return Err(Error::refused(
                ErrorCode::TooManyTurns,
                format!(
                    "this session has had its maximum of {} turns",
                    self.config.max_turns
                ),
            ));
        }
        // The user acts: earlier turns still processing are interrupted; a VAD or image
        // turn open now is not interrupted but superseded: its input goes on into the
        // new turn.
        self.mark_interrupted(at);
        let id = requested.unwrap_or_else(|| self.mint_id(at));
        if self.open.is_some() {
            self.close_open_turn(at, EndReason::Superseded, Some(id));
        }
        self.flush_preroll_idle();
        self.voiced_since = None;
        let next = NewTurn {
            cause: Cause::Client,
            id,
            client_parent: traceparent,
            continues: None,
        };
        Ok(self.open_turn_at(at, next, false))
    }

    /// The client sent `turn.end`, optionally naming the turn it ends: the open turn,
    /// or any earlier piece of its chain (a turn split at `max_turn` goes on under a new
    /// id; naming the id the client knows ends the chain). Returns the id of the turn
    /// it ended.
    pub fn handle_turn_end(
        &mut self,
        at: Duration,
        turn_id: Option<TurnId>,
    ) -> Result<TurnId, Error> {
        let at = self.advance(at);
        match self.open_turn() {
            Some(open) if turn_id.is_some_and(|id| !self.chain_contains(open, id)) => {
                Err(Error::refused(
                    ErrorCode::TurnIdMismatch,
                    format!(
                        "turn.end names {}, but the open turn is {}",
                        turn_id.unwrap_or(open.id),
                        open.id
                    ),
                ))
            }
            Some(open) if matches!(open.cause, Cause::Client | Cause::Image) => {
                let id = open.id;
                self.close_open_turn(at, EndReason::ClientEnd, None);
                self.voiced_since = None;
                Ok(id)
            }
            _ => Err(Error::refused(
                ErrorCode::NoOpenTurn,
                "no client or image turn is open",
            )),
        }
    }

    /// Whether a result event of `turn_id` (transcript, vision result, answer, error)
    /// may still reach the client: not once the turn was interrupted or completed. The
    /// driver asks this for every result event, in the same order as it sends the
    /// engine's own events, so no result of a turn follows the `turn.started` of the
    /// turn that interrupted it.
    pub fn admits_results(&self, turn_id: TurnId) -> bool {
        self.turn(turn_id)
            .is_some_and(|t| !t.interrupted && t.state != TurnState::Completed)
    }

    /// Processing of an ended turn finished with `stages`. Returns the turn's status:
    /// `interrupted` if it was spoken over before now, else as [`Stages::status`] says.
    pub fn handle_processing_finished(
        &mut self,
        at: Duration,
        turn_id: TurnId,
        stages: Stages,
    ) -> Result<CompletionStatus, Error> {
        let at = self.advance(at);
        let index = self.by_id.get(&turn_id).copied().ok_or_else(|| {
            Error::refused(
                ErrorCode::Internal,
                format!("no turn {turn_id} in this session"),
            )
        })?;
        let turn = &mut self.turns[index];
        if turn.state != TurnState::Ended || turn.processing_started_at.is_none() {
            return Err(Error::refused(
                ErrorCode::Internal,
                format!("turn {turn_id} is {:?} and not yet processing", turn.state),
            ));
        }
        let status = if turn.interrupted {
            CompletionStatus::Interrupted
        } else {
            stages.status()
        };
        turn.state = TurnState::Completed;
        turn.completed_at = Some(at);
        turn.status = Some(status);
        self.outputs.push_back(Output::TurnCompleted(turn.clone()));
        Ok(status)
    }

    /// A turn of this session.
    pub fn turn(&self, turn_id: TurnId) -> Option<&TurnInfo> {
        self.by_id.get(&turn_id).map(|&i| &self.turns[i])
    }

    /// An image upload began. It belongs to the turn open now; with none open it opens
    /// a turn with cause `image`. A client may name a turn (`requested`) that is open, or
    /// ended but not yet processing. Returns the turn the upload is tagged with.
    pub fn handle_upload_started(
        &mut self,
        at: Duration,
        requested: Option<TurnId>,
    ) -> Result<TurnId, Error> {
        let at = self.advance(at);
        let index = match requested {
            Some(id) => {
                let index = self.by_id.get(&id).copied().ok_or_else(|| {
                    Error::refused(
                        ErrorCode::UnknownTurn,
                        format!("no turn {id} in this session"),
                    )
                })?;
                if self.turns[index].processing_started_at.is_some() {
                    return Err(Error::refused(
                        ErrorCode::TurnClosed,
                        format!("turn {id} is already being processed; it takes no more input"),
                    ));
                }
                index
            }
            None => match self.open {
                Some(index) => index,
                None if self.closed => {
                    return Err(Error::refused(
                        ErrorCode::UploadAbandoned,
                        "the session has closed",
                    ));
                }
                None if self.turns.len() >= self.config.max_turns => {
                    return Err(Error::refused(
                        ErrorCode::TooManyTurns,
                        format!(
                            "this session has had its maximum of {} turns",
                            self.config.max_turns
                        ),
                    ));
                }
                None => {
                    self.flush_preroll_idle();
                    let next = NewTurn {
                        cause: Cause::Image,
                        id: self.mint_id(at),
                        client_parent: None,
                        continues: None,
                    };
                    self.open_turn_at(at, next, false);
                    self.turns.len() - 1
                }
            },
        };
        let turn = &mut self.turns[index];
        if turn.uploads_tagged >= self.config.max_uploads_per_turn {
            return Err(Error::refused(
                ErrorCode::TooManyUploads,
                format!(
                    "turn {} has taken its maximum of {} uploads",
                    turn.id, self.config.max_uploads_per_turn
                ),
            ));
        }
        turn.uploads_pending += 1;
        turn.uploads_tagged += 1;
        self.last_upload_activity = Some(at);
        Ok(turn.id)
    }

    /// An upload tagged with `turn_id` finished (accepted or refused).
    pub fn handle_upload_finished(&mut self, at: Duration, turn_id: TurnId) -> Result<(), Error> {
        let at = self.advance(at);
        let index = self
            .by_id
            .get(&turn_id)
            .copied()
            .filter(|&i| self.turns[i].uploads_pending > 0)
            .ok_or_else(|| {
                Error::refused(
                    ErrorCode::Internal,
                    format!("no upload pending for turn {turn_id}"),
                )
            })?;
        self.turns[index].uploads_pending -= 1;
        self.last_upload_activity = Some(at);
        self.maybe_start_processing(index, at);
        Ok(())
    }

    /// The session closed: the open turn ends and held frames leave as idle. Frames
    /// that still arrive afterwards leave as idle too.
    pub fn handle_close(&mut self, at: Duration) {
        let at = self.advance(at);
        if self.open.is_some() {
            self.close_open_turn(at, EndReason::SessionClosed, None);
        }
        self.flush_preroll_idle();
        self.closed = true;
    }

    /// Clamps `at` to be monotonic and fires every deadline up to it.
    fn advance(&mut self, at: Duration) -> Duration {
        let at = at.max(self.now);
        self.now = at;
        while let Some(i) = self.open {
            let Some((deadline, reason)) = self.turn_deadline(&self.turns[i]) else {
                break;
            };
            if deadline > at {
                break;
            }
            let (cause, previous) = (self.turns[i].cause, self.turns[i].id);
            let speech_goes_on = self
                .last_voiced
                .is_some_and(|lv| lv + self.config.hangover > deadline);
            let room = self.turns.len() < self.config.max_turns;
            let continues = reason == EndReason::MaxLength
                && room
                && (cause == Cause::Client || speech_goes_on);
            if !continues {
                self.close_open_turn(deadline, reason, None);
                continue;
            }
            let next = NewTurn {
                cause,
                id: self.mint_id(deadline),
                client_parent: None,
                continues: Some(previous),
            };
            self.close_open_turn(deadline, reason, Some(next.id));
            self.open_turn_at(deadline, next, false);
        }
        self.expire_preroll(at);
        at
    }

    /// The open turn's next deadline and the reason it would end there.
    fn turn_deadline(&self, turn: &TurnInfo) -> Option<(Duration, EndReason)> {
        let max = (turn.started_at + self.config.max_turn, EndReason::MaxLength);
        let speech_end = match turn.cause {
            Cause::Vad => self
                .last_voiced
                .map(|lv| (lv + self.config.hangover, EndReason::EndOfSpeech)),
            Cause::Image if turn.uploads_pending == 0 => {
                self.last_upload_activity.max(self.last_voiced).map(|last| {
                    (
                        last + self.config.hangover + self.config.preroll,
                        EndReason::Idle,
                    )
                })
            }
            Cause::Image | Cause::Client => None,
        };
        Some(match speech_end {
            Some(end) if end.0 < max.0 => end,
            _ => max,
        })
    }

    /// A fresh turn id, time-stamped `at` into the session.
    fn mint_id(&mut self, at: Duration) -> TurnId {
        loop {
            let unix_ms = self.started_unix_ms + at.as_millis() as u64;
            let id = TurnId::mint(unix_ms, &mut self.rng);
            if !self.by_id.contains_key(&id) {
                break id;
            }
        }
    }

    /// Whether `id` names `open` or an earlier piece of its chain.
    fn chain_contains(&self, open: &TurnInfo, id: TurnId) -> bool {
        let mut piece = Some(open);
        while let Some(turn) = piece {
            if turn.id == id {
                return true;
            }
            piece = turn.continues.and_then(|c| self.turn(c));
        }
        false
    }

    fn open_turn_at(&mut self, at: Duration, next: NewTurn, user_action: bool) -> TurnId {
        if user_action {
            self.mark_interrupted(at);
        }
        let NewTurn {
            cause,
            id,
            client_parent,
            continues,
        } = next;
        self.by_id.insert(id, self.turns.len());
        let info = TurnInfo {
            id,
            number: self.turns.len() as u32 + 1,
            cause,
            root_span_id: SpanId::random(&mut self.rng),
            client_parent,
            state: TurnState::Open,
            reason: None,
            interrupted: false,
            started_at: at,
            ended_at: None,
            processing_started_at: None,
            uploads_pending: 0,
            uploads_tagged: 0,
            completed_at: None,
            frames: 0,
            sampled: self.sampler.as_ref().map(|s| s.sampled(id, client_parent)),
            // Speech onset opened it (not a follow-on of a long turn).
            speech_started_at: (cause == Cause::Vad && user_action)
                .then_some(self.voiced_since)
                .flatten(),
            speech_ended_at: None,
            continues,
            successor: None,
            status: None,
        };
        self.outputs.push_back(Output::TurnStarted(info.clone()));
        self.turns.push(info);
        let index = self.turns.len() - 1;
        self.open = Some(index);
        while let Some((seq, frame_at, frame)) = self.preroll.pop_front() {
            self.counters.frames_held -= 1;
            self.emit_frame(Some((index, id)), seq, frame_at, frame);
        }
        id
    }

    /// Barge-in: every ended turn not yet completed is interrupted, except the turns
    /// whose input goes on into the turn still open (the earlier pieces of its chain):
    /// they stand or fall with it. An interrupted turn still waiting for an upload
    /// starts processing at once, to be cancelled: nothing waits for it.
    fn mark_interrupted(&mut self, at: Duration) {
        for index in 0..self.turns.len() {
            let turn = &self.turns[index];
            if turn.state != TurnState::Ended || turn.interrupted || self.hands_on_to_open(index) {
                continue;
            }
            let turn = &mut self.turns[index];
            turn.interrupted = true;
            self.outputs.push_back(Output::TurnInterrupted(turn.id));
            if turn.processing_started_at.is_none() {
                turn.processing_started_at = Some(at);
                self.outputs
                    .push_back(Output::ProcessingStarted(turn.clone()));
            }
        }
    }

    /// Whether the turn at `index` hands its input on, piece by piece, to the open turn.
    fn hands_on_to_open(&self, mut index: usize) -> bool {
        while let Some(next) = self.turns[index].successor {
            match self.by_id.get(&next) {
                Some(&i) => index = i,
                None => return false,
            }
        }
        self.open == Some(index)
    }

    /// Ends the open turn's input; `successor` is the turn its input goes on into.
    fn close_open_turn(&mut self, at: Duration, reason: EndReason, successor: Option<TurnId>) {
        let Some(i) = self.open.take() else { return };
        let turn = &mut self.turns[i];
        turn.state = TurnState::Ended;
        turn.reason = Some(reason);
        turn.ended_at = Some(at);
        turn.successor = successor;
        if reason == EndReason::EndOfSpeech {
            turn.speech_ended_at = self.last_voiced;
        }
        self.outputs.push_back(Output::TurnEnded(turn.clone()));
        self.maybe_start_processing(i, at);
    }

    /// Starts processing of an ended turn once none of its uploads is open.
    fn maybe_start_processing(&mut self, index: usize, at: Duration) {
        let turn = &mut self.turns[index];
        if turn.state == TurnState::Ended
            && turn.uploads_pending == 0
            && turn.processing_started_at.is_none()
        {
            turn.processing_started_at = Some(at);
            self.outputs
                .push_back(Output::ProcessingStarted(turn.clone()));
        }
    }

    /// Lets frames older than the pre-roll window leave as idle.
    fn expire_preroll(&mut self, now: Duration) {
        while let Some((_, at, _)) = self.preroll.front() {
            if *at + self.config.preroll > now {
                break;
            }
            self.pop_preroll_idle();
        }
    }

    fn flush_preroll_idle(&mut self) {
        while !self.preroll.is_empty() {
            self.pop_preroll_idle();
        }
    }

    fn pop_preroll_idle(&mut self) {
        if let Some((seq, at, frame)) = self.preroll.pop_front() {
            self.counters.frames_held -= 1;
            self.emit_frame(None, seq, at, frame);
        }
    }

    fn emit_frame(
        &mut self,
        turn: Option<(usize, TurnId)>,
        seq: u64,
        at: Duration,
        frame: AudioFrame,
    ) {
        match turn {
            Some((index, _)) => {
                self.counters.frames_in_turns += 1;
                let t = &mut self.turns[index];
                t.frames = t.frames.saturating_add(1);
            }
            None => self.counters.idle_frames_discarded += 1,
        }
        self.outputs.push_back(Output::Frame(Tagged {
            session_id: self.session_id,
            turn_id: turn.map(|(_, id)| id),
            seq,
            at,
            value: frame,
        }));
    }
}
