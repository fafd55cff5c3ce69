//! The per-session driver: feeds RTP, data-channel messages, uploads and ticks into the
//! turn engine and carries its outputs to the client and downstream.
//!
//! One clock: every input is stamped with the session clock when it reaches the
//! gateway (an RTP packet when its track yields it, a data-channel message when its
//! channel yields it, anything else when the session task takes it), and the engine
//! takes inputs in stamp order: before an input of the session task's own, everything
//! already queued from the network is taken first.
//!
//! Tasks and queues of one session:
//! - the track reader ([`ingress`]) counts every RTP packet at receipt and offers it to
//!   the ingress queue (`ingress_queue` packets); when that is full the packet is
//!   dropped and counted: audio is real time, so back-pressure drops before the state
//!   machine. The control channel's reader waits instead (SCTP back-pressure);
//! - the session task decodes ([`media`]), runs the VAD and the turn engine, takes
//!   client events ([`control`]) and uploads ([`uploads`]), and sends tagged frames and
//!   turn events downstream through a bounded queue (`downstream_queue`), waiting when
//!   it is full: the consumer is the gateway's own turn owners, which only buffer (a
//!   stalled consumer back-pressures into counted ingress drops, and cannot keep the
//!   session from ending);
//! - processing sends each turn's results and finally its report back through the
//!   session ([`SessionShared::send_result`], [`SessionShared::finish_turn`]); the
//!   session task gates them ([`outbox`]): no result of a turn reaches the client after
//!   the `turn.started` of the turn that interrupted it;
//! - gateway → client events go straight to the data channel when it is open (its send
//!   buffer is capped); before it opens, or without one, they wait in a bounded outbox
//!   whose overflow is counted.
//!
//! Closing (DELETE, a peer that leaves, shutdown): input already received is taken in
//! stamp order first — for DELETE and shutdown also what arrives within
//! [`CLOSE_DRAIN`], the time a message sent just before the request may still be on its
//! way — then uploads are settled and the open turn ends `session_closed`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use turngate_core::upload::{Reassembler, UploadLimits};
use turngate_core::{
    AudioFrame, Output, ServerEvent, SessionId, Tagged, TurnConfig, TurnEngine, TurnId, TurnInfo,
    TurnSampler,
};
use webrtc::data_channel::DataChannel;
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState};

use crate::decode::OpusTrackDecoder;
use crate::error::MediaError;
use crate::image::ImageLimits;
use crate::peer::{AnsweredPeer, PeerEvent, PortLease};
use crate::vad::VoiceDetector;

mod control;
mod counters;
mod ingress;
mod media;
mod outbox;
mod shared;
mod uploads;

pub use control::CONTROL_LABEL;
pub use counters::{Counts, SessionCounters};
pub use outbox::{Finished, ToClient, TurnReport};
pub use shared::SessionShared;
pub use uploads::{BlobRecord, HeldImage, ImageBudget, UploadRequest};

use ingress::{Ingress, Input};
use outbox::Outbox;

/// Results and reports from turn processing waiting for the session task.
const PROCESSING_QUEUE: usize = 64;
/// HTTP uploads waiting for the session task.
const UPLOAD_REQUESTS: usize = 8;
/// Validation results waiting for the session task.
const VALIDATED_QUEUE: usize = 16;
/// Inputs taken per wake-up before the session task yields to its other inputs.
const MAX_INPUTS_PER_WAKE: usize = 32;
/// On DELETE or shutdown, input that arrives this long after the request is still
/// taken before the session closes: a `turn.end` or audio sent just before the request
/// may still be on its way (it travels over SCTP or SRTP, the request over TCP).
pub const CLOSE_DRAIN: Duration = Duration::from_millis(50);
/// Once a session is asked to end, how long a downstream consumer that takes nothing
/// may hold it up before it is taken for stalled.
const CONSUMER_GRACE: Duration = Duration::from_secs(1);

/// Sizes and timings of a session.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Limits of image uploads.
    pub uploads: UploadLimits,
    /// Limits of the images themselves.
    pub images: ImageLimits,
    /// Image validations running at once, across all sessions (CPU work, run on the
    /// blocking pool). Shared: clone the `Arc`. A session runs one validation at a
    /// time, so sessions take turns at them.
    pub validators: Arc<Semaphore>,
    /// Longest an image waits for a validator (its session's turn, then a free one);
    /// then it is refused `overloaded`.
    pub validation_wait: Duration,
    /// Bytes of images held gateway-wide, from their arrival until their turn's
    /// processing ends (each session at most `uploads.max_in_flight_bytes` of them).
    /// Shared: clone it.
    pub image_budget: ImageBudget,
    /// Turn detection timing.
    pub turn: TurnConfig,
    /// VAD score (0–1) a frame needs to begin speech (see [`crate::vad`]).
    pub vad_onset: f32,
    /// VAD score (0–1) a frame needs to continue speech.
    pub vad_sustain: f32,
    /// Bytes the session's record (its turns, their results, its image records) may hold,
    /// by [`SessionShared::retained_bytes`]; past it the session opens no more turns.
    pub max_record_bytes: u64,
    /// RTP packets queued between receipt and the turn engine (50 ≈ 1 s of 20 ms audio).
    pub ingress_queue: usize,
    /// Tagged frames and turn events queued for downstream consumers.
    pub downstream_queue: usize,
    /// Events held for a client whose data channel is not open (or absent).
    pub outbox: usize,
    /// A peer must connect (ICE + DTLS) within this time of the answer.
    pub connect_timeout: Duration,
    /// Decides whether each turn's trace is recorded (telemetry's sampler); `None`
    /// when spans are not exported.
    pub sampler: Option<TurnSampler>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            uploads: UploadLimits::default(),
            images: ImageLimits::default(),
            validators: Arc::new(Semaphore::new(2)),
            validation_wait: Duration::from_secs(10),
            image_budget: ImageBudget::new(512 << 20),
            turn: TurnConfig::default(),
            vad_onset: 0.9,
            vad_sustain: 0.5,
            max_record_bytes: 8 << 20,
            ingress_queue: 50,
            downstream_queue: 500,
            outbox: 64,
            connect_timeout: Duration::from_secs(30),
            sampler: None,
        }
    }
}

/// What a session hands downstream, in order. Nothing is dropped: the session waits
/// while the queue is full (only a consumer that takes nothing for a second after the
/// session was asked to end loses items, counted and logged).
#[derive(Debug)]
pub enum Downstream {
    /// A frame with its final tag.
    Frame {
        /// The frame.
        frame: Tagged<AudioFrame>,
        /// Whether the engine held it before tagging it: a pre-roll frame, tagged when
        /// its turn opened after it. Any other frame is tagged as it is taken, so its
        /// latency from receipt to the consumer is the gateway's own.
        held: bool,
    },
    /// A turn opened. `cancel` fires when the user speaks over the turn (barge-in)
    /// before it completes: every stage of it still running stops.
    TurnStarted {
        /// The turn.
        turn: TurnInfo,
        /// Cancelled on barge-in; the engine's `interrupted` bit is its only source.
        cancel: CancellationToken,
    },
    /// An accepted image, tagged with its turn, and its place in the gateway's image
    /// budget (keep it until the turn's processing ends). Comes before its turn's
    /// `ProcessingStarted`.
    Blob(Tagged<turngate_core::Blob>, HeldImage),
    /// A turn's input ended: all its frames have been sent. When the session ends,
    /// the queue closes after its last turn's `ProcessingStarted`.
    TurnEnded(TurnInfo),
    /// A turn's processing may start: its frames and blobs have all been sent.
    ProcessingStarted(TurnInfo),
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEnd {
    /// The client sent DELETE.
    Deleted,
    /// The peer connection failed (ICE failure or consent lost).
    PeerFailed,
    /// The peer closed the connection.
    PeerClosed,
    /// The peer never connected within the connect timeout.
    ConnectTimeout,
    /// The gateway shut down.
    Shutdown,
}

impl SessionEnd {
    /// Whether the peer may still be sending when the session is asked to end, so
    /// input on its way is worth waiting for ([`CLOSE_DRAIN`]).
    fn peer_still_there(self) -> bool {
        matches!(self, SessionEnd::Deleted | SessionEnd::Shutdown)
    }
}

/// A running session.
pub struct Session {
    /// Shared state.
    pub shared: Arc<SessionShared>,
    /// Frames and turn events, in order.
    pub downstream: mpsc::Receiver<Downstream>,
}

/// Starts the session driver for an answered peer.
pub fn start(
    config: SessionConfig,
    peer: AnsweredPeer,
    rng: &mut impl rand::Rng,
) -> Result<Session, MediaError> {
    let started = SystemTime::now();
    let started_unix_ms = started
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let id = SessionId::mint(started_unix_ms, rng);
    let (close, close_rx) = watch::channel(None);
    let (uploads_tx, uploads_rx) = mpsc::channel(UPLOAD_REQUESTS);
    let (to_client_tx, to_client_rx) = mpsc::channel(PROCESSING_QUEUE);
    let clock = Instant::now();
    let shared = Arc::new(SessionShared {
        id,
        started,
        counters: SessionCounters::default(),
        clock,
        turns: Mutex::new(Vec::new()),
        results: Mutex::default(),
        blobs: Mutex::default(),
        retained: AtomicU64::new(0),
        uploads: uploads_tx,
        to_client: to_client_tx,
        ended: watch::channel(None).0,
        data_channel: AtomicBool::new(false),
        connected: watch::channel(false).0,
        close,
    });
    let (downstream_tx, downstream) = mpsc::channel(config.downstream_queue.max(1));
    let decoder = match OpusTrackDecoder::new() {
        Ok(decoder) => decoder,
        Err(e) => {
            let connection = Arc::clone(&peer.connection);
            tokio::spawn(async move { connection.close().await });
            return Err(e);
        }
    };
    let engine = TurnEngine::new(
        config.turn.clone(),
        id,
        started_unix_ms,
        StdRng::from_rng(rng),
    )
    .with_sampler(config.sampler.clone());
    let held_share = Arc::new(Semaphore::new(
        ((config.uploads.max_in_flight_bytes / 1024) as usize).clamp(1, Semaphore::MAX_PERMITS),
    ));
    let driver = Driver {
        decoder,
        vad: VoiceDetector::new(config.vad_onset, config.vad_sustain),
        outbox: Outbox::new(config.outbox),
        engine,
        uploads: Reassembler::new(config.uploads.clone()),
        ingress: Ingress::new(config.ingress_queue),
        config,
        shared: Arc::clone(&shared),
        clock,
        at: Duration::ZERO,
        downstream: downstream_tx,
        channel: None,
        validated: mpsc::channel(VALIDATED_QUEUE),
        validating: HashMap::new(),
        validator_share: Arc::new(Semaphore::new(1)),
        held_share,
        blob_seq: 0,
        http_uploads: 0,
        close: close_rx,
        closing: None,
        undelivered: 0,
        cancels: HashMap::new(),
        heard: HashMap::new(),
    };
    tokio::spawn(driver.run(peer, to_client_rx, uploads_rx));
    Ok(Session { shared, downstream })
}

struct Driver {
    config: SessionConfig,
    shared: Arc<SessionShared>,
    engine: TurnEngine<StdRng>,
    decoder: OpusTrackDecoder,
    vad: VoiceDetector,
    outbox: Outbox,
    clock: Instant,
    /// The stamp of the input being taken: the engine's one clock.
    at: Duration,
    ingress: Ingress,
    downstream: mpsc::Sender<Downstream>,
    channel: Option<Arc<dyn DataChannel>>,
    close: watch::Receiver<Option<(SessionEnd, Duration)>>,
    uploads: Reassembler,
    validated: (
        mpsc::Sender<uploads::Validated>,
        mpsc::Receiver<uploads::Validated>,
    ),
    /// Uploads being validated: their turn and size.
    validating: HashMap<String, (TurnId, u64)>,
    /// The session's one validation at a time.
    validator_share: Arc<Semaphore>,
    /// The session's share of the image budget (KiB permits).
    held_share: Arc<Semaphore>,
    blob_seq: u64,
    http_uploads: u64,
    /// Why and when the session was asked to end, once it has been.
    closing: Option<(SessionEnd, Duration)>,
    /// Downstream items a stalled consumer never took before the session ended.
    undelivered: u64,
    /// Barge-in signals of the turns not yet completed.
    cancels: HashMap<TurnId, CancellationToken>,
    /// What the client was sent of each running answer (its admitted deltas).
    heard: HashMap<TurnId, String>,
}

impl Driver {
    async fn run(
        mut self,
        peer: AnsweredPeer,
        mut to_client: mpsc::Receiver<ToClient>,
        mut http_uploads: mpsc::Receiver<UploadRequest>,
    ) {
        let AnsweredPeer {
            connection,
            mut events,
            port,
            ..
        } = peer;
        let connect_deadline = tokio::time::sleep_until(self.clock + self.config.connect_timeout);
        // One timer for the engine's and the uploads' next deadline, reset when the
        // deadline moves (while idle the pre-roll deadline moves with every packet) rather
        // than a new timer registered and dropped on every wake-up.
        let tick = tokio::time::sleep_until(self.clock);
        tokio::pin!(connect_deadline, tick);
        let mut armed = None;
        let why = loop {
            if let Some((why, at)) = self.closing {
                break self.drain_before_close(why, at).await;
            }
            // Whether the peer has connected: kept once, where the API reads it too.
            let connected = *self.shared.connected.borrow();
            let next = [self.engine.poll_timeout(), self.uploads.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .map(|d| self.clock + d);
            if next != armed {
                if let Some(deadline) = next {
                    tick.as_mut().reset(deadline);
                }
                armed = next;
            }
            tokio::select! {
                biased;
                _ = self.close.changed() => self.closing = *self.close.borrow_and_update(),
                Some(event) = events.recv() => match event {
                    PeerEvent::State(state) => match state {
                        RTCPeerConnectionState::Connected => {
                            self.shared.connected.send_replace(true);
                        }
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Disconnected
                            if !connected => break SessionEnd::PeerFailed,
                        RTCPeerConnectionState::Failed => break SessionEnd::PeerFailed,
                        RTCPeerConnectionState::Closed => break SessionEnd::PeerClosed,
                        _ => {}
                    },
                    PeerEvent::Track(track) => self.ingress.adopt_track(track, &self.shared, self.clock),
                    PeerEvent::DataChannel(channel) => self.adopt_channel(channel).await,
                },
                Some(message) = to_client.recv() => {
                    self.catch_up().await;
                    self.on_to_client(message).await;
                }
                Some(request) = http_uploads.recv() => {
                    self.catch_up().await;
                    self.on_http_upload(request).await;
                }
                Some(validated) = self.validated.1.recv() => {
                    self.catch_up().await;
                    self.on_validated(validated).await;
                }
                () = self.ingress.ready() => {
                    for _ in 0..MAX_INPUTS_PER_WAKE {
                        let Some(input) = self.ingress.pop(None) else { break };
                        self.on_input(input).await;
                    }
                }
                () = &mut tick, if armed.is_some() => {
                    armed = None;
                    self.catch_up().await;
                    let at = self.stamp_now();
                    self.engine.handle_tick(at);
                    self.expire_uploads(at).await;
                    self.drain().await;
                }
                () = &mut connect_deadline, if !connected => break SessionEnd::ConnectTimeout,
            }
        };
        self.finish(why, connection, port).await;
        self.complete_remaining(to_client).await;
    }

    /// The session clock now, taken as the stamp of an input of the session task's
    /// own.
    fn stamp_now(&mut self) -> Duration {
        self.at = self.clock.elapsed();
        self.at
    }

    /// The stamp of the input being taken.
    fn now(&self) -> Duration {
        self.at
    }

    /// Takes every network input already queued, so an input of the session task's
    /// own (stamped now) does not overtake input that arrived earlier.
    async fn catch_up(&mut self) {
        while let Some(input) = self.ingress.pop(None) {
            self.on_input(input).await;
        }
        self.stamp_now();
    }

    /// Asked to end at `close_at`: takes the input received until then (and, while the
    /// peer may still be sending, for [`CLOSE_DRAIN`] more), in stamp order.
    async fn drain_before_close(&mut self, why: SessionEnd, close_at: Duration) -> SessionEnd {
        let until = if why.peer_still_there() {
            let deadline = self.clock + close_at + CLOSE_DRAIN;
            while let Ok(()) = tokio::time::timeout_at(deadline, self.ingress.ready()).await {
                let Some(input) = self.ingress.pop(None) else {
                    break;
                };
                self.on_input(input).await;
            }
            close_at + CLOSE_DRAIN
        } else {
            close_at
        };
        while let Some(input) = self.ingress.pop(Some(until)) {
            self.on_input(input).await;
        }
        why
    }

    /// Takes one network input and carries out what it caused, so events leave in the
    /// order their causes arrived.
    async fn on_input(&mut self, input: Input) {
        self.at = input.at();
        match input {
            Input::Rtp(rtp) => self.on_rtp(rtp),
            Input::Control(control) => self.on_control(control.value).await,
        }
        self.drain().await;
    }

    /// Carries the engine's outputs out: frames downstream (waiting when the consumer
    /// is slow), events to the client.
    async fn drain(&mut self) {
        while let Some(output) = self.engine.poll_output() {
            let counters = &self.shared.counters;
            match output {
                Output::Frame(frame) => {
                    let counter = if frame.turn_id.is_some() {
                        &counters.frames_in_turns
                    } else {
                        &counters.idle_frames_discarded
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if frame.turn_id.is_some() {
                        let held = frame.at < self.at;
                        self.send_downstream(Downstream::Frame { frame, held })
                            .await;
                    }
                }
                Output::TurnStarted(turn) => {
                    tracing::debug!(session = %self.shared.id, turn = %turn.id, cause = ?turn.cause, "Turn started.");
                    self.record_turn(&turn);
                    let event = ServerEvent::TurnStarted {
                        turn_id: turn.id,
                        turn_number: turn.number,
                        traceparent: turn.traceparent(),
                        cause: turn.cause,
                        continues: turn.continues,
                    };
                    self.send_event(event).await;
                    let cancel = CancellationToken::new();
                    self.cancels.insert(turn.id, cancel.clone());
                    self.send_downstream(Downstream::TurnStarted { turn, cancel })
                        .await;
                }
                Output::TurnEnded(turn) => {
                    tracing::debug!(session = %self.shared.id, turn = %turn.id, reason = ?turn.reason, frames = turn.frames, "Turn ended.");
                    self.record_turn(&turn);
                    if let Some(reason) = turn.reason {
                        let event = ServerEvent::TurnEnded {
                            turn_id: turn.id,
                            reason,
                            frames: turn.frames,
                            continued_by: turn.continued_by(),
                        };
                        self.send_event(event).await;
                    }
                    self.send_downstream(Downstream::TurnEnded(turn)).await;
                }
                Output::TurnInterrupted(id) => {
                    // Before the `turn.started` of the turn that interrupts it, which
                    // the engine outputs next: its stages stop, its results are gated.
                    if let Some(cancel) = self.cancels.get(&id) {
                        cancel.cancel();
                    }
                    if let Ok(mut turns) = self.shared.turns.lock()
                        && let Some(t) = turns.iter_mut().find(|t| t.id == id)
                    {
                        t.interrupted = true;
                    }
                }
                Output::TurnCompleted(turn) => {
                    self.cancels.remove(&turn.id);
                    self.record_turn(&turn);
                }
                Output::ProcessingStarted(turn) => {
                    self.record_turn(&turn);
                    self.send_downstream(Downstream::ProcessingStarted(turn))
                        .await;
                }
            }
        }
    }

    /// Hands an item downstream, waiting while the consumer is busy. Once the session
    /// is asked to end, a consumer that takes nothing for [`CONSUMER_GRACE`] is taken
    /// for stalled: what it does not take is counted (`undelivered`) and logged, so a
    /// stuck consumer cannot keep a session from ending.
    async fn send_downstream(&mut self, item: Downstream) {
        if self.closing.is_none() {
            tokio::select! {
                biased;
                permit = self.downstream.reserve() => {
                    match permit {
                        Ok(permit) => permit.send(item),
                        Err(_) => self.undelivered += 1,
                    }
                    return;
                }
                _ = self.close.changed() => self.closing = *self.close.borrow_and_update(),
            }
        }
        let grace = if self.undelivered == 0 {
            CONSUMER_GRACE
        } else {
            Duration::ZERO
        };
        if !matches!(
            tokio::time::timeout(grace, self.downstream.send(item)).await,
            Ok(Ok(()))
        ) {
            self.undelivered += 1;
        }
    }

    fn record_turn(&mut self, turn: &TurnInfo) {
        let added = {
            let Ok(mut turns) = self.shared.turns.lock() else {
                return;
            };
            match turns.iter_mut().rev().find(|t| t.id == turn.id) {
                Some(slot) => {
                    *slot = turn.clone();
                    false
                }
                None => {
                    turns.push(turn.clone());
                    true
                }
            }
        };
        if added {
            self.retain(shared::RETAINED_PER_TURN);
        }
    }

    /// Adds `bytes` to the estimate of what the session's record holds; past
    /// `max_record_bytes` the session opens no more turns (`too_many_turns`), as at
    /// `max_turns`.
    fn retain(&mut self, bytes: usize) {
        self.shared.retain(bytes);
        if self.shared.retained_bytes() > self.config.max_record_bytes
            && self.engine.stop_new_turns()
        {
            tracing::warn!(session = %self.shared.id, bytes = self.shared.retained_bytes(), "The session's record is full: it opens no more turns.");
        }
    }

    async fn finish(
        &mut self,
        why: SessionEnd,
        connection: Arc<dyn PeerConnection>,
        port: PortLease,
    ) {
        // Uploads end with the session: wait for validations already running, abandon
        // what is still open. Then close the turns, so the client still hears
        // `turn.ended` on a channel that is open; frames arriving from now on leave as idle.
        self.stamp_now();
        self.settle_uploads().await;
        let at = self.stamp_now();
        self.engine.handle_close(at);
        self.drain().await;
        if let Some(channel) = self.channel.clone() {
            outbox::flush(channel).await;
        }
        let _ = connection.close().await;
        // Whatever still comes leaves as idle: the engine is closed.
        for input in self.ingress.close() {
            self.on_input(input).await;
        }
        drop(port);
        if self.undelivered > 0 {
            tracing::warn!(session = %self.shared.id, items = self.undelivered, "The downstream consumer did not take every item before the session ended.");
        }
        let c = &self.shared.counters;
        let accounted = c.read().frames_with_fate();
        let received = c.frames_received.load(Ordering::Relaxed);
        if accounted != received {
            tracing::error!(session = %self.shared.id, received, accounted, "Frame accounting does not balance.");
        }
        self.shared.close(why);
        self.shared
            .ended
            .send_replace(Some((SystemTime::now(), why)));
        tracing::info!(session = %self.shared.id, reason = ?why, received, "Session ended.");
    }

    /// After the session has ended, its ended turns may still be processing: close the
    /// downstream queue (so the consumer sees the end) and take their results and
    /// reports (the client is gone: results are dropped) until every turn completed.
    async fn complete_remaining(mut self, mut to_client: mpsc::Receiver<ToClient>) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.downstream, closed));
        while self
            .engine
            .turns()
            .iter()
            .any(|t| t.state != turngate_core::TurnState::Completed)
        {
            let Some(message) = to_client.recv().await else {
                break;
            };
            self.stamp_now();
            self.on_to_client(message).await;
        }
    }
}
