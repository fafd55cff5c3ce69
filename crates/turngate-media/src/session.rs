//! The per-session driver: feeds RTP, data-channel messages and ticks into the turn
//! engine and carries its outputs to the client and downstream.
//!
//! Tasks and queues of one session:
//! - the track reader counts every RTP packet at receipt and offers it to the ingress
//!   queue (`ingress_queue` packets); when that is full the packet is dropped and
//!   counted: audio is real time, so back-pressure drops before the state machine;
//! - the session task decodes (concealing gaps), runs the VAD and the turn engine, and
//!   sends tagged frames and turn events downstream through a bounded queue
//!   (`downstream_queue`); a stalled consumer stalls the session task, which fills the
//!   ingress queue, which drops;
//! - gateway → client events go straight to the data channel when it is open (its send
//!   buffer is capped); before it opens, or without one, they wait in a bounded outbox
//!   whose overflow is counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use turngate_core::upload::{Reassembler, UploadLimits};
use turngate_core::{
    AudioFrame, ClientEvent, Error, ErrorCode, Output, ServerEvent, SessionId, Tagged, TurnConfig,
    TurnEngine, TurnId, TurnInfo, TurnSampler,
};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState};

use crate::decode::{Decoded, OpusTrackDecoder};
use crate::error::MediaError;
use crate::image::ImageLimits;
use crate::peer::{AnsweredPeer, PeerEvent, PortLease};
use crate::vad::VoiceDetector;

/// The label of the control data channel.
pub const CONTROL_LABEL: &str = "turngate";
/// Messages from the data channel waiting for the session task; the channel's reader
/// waits when it is full, which back-pressures SCTP rather than dropping.
const CONTROL_QUEUE: usize = 64;
/// Events from turn processing waiting for the session task.
const PROCESSING_EVENTS: usize = 64;
/// HTTP uploads waiting for the session task.
const UPLOAD_REQUESTS: usize = 8;
/// Validation results waiting for the session task.
const VALIDATED_QUEUE: usize = 16;
/// Work done per wake-up before the session task yields to its other inputs.
const MAX_PACKETS_PER_WAKE: usize = 32;

mod uploads;

pub use uploads::{BlobRecord, UploadRequest};

/// Sizes and timings of a session.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Limits of image uploads.
    pub uploads: UploadLimits,
    /// Limits of the images themselves.
    pub images: ImageLimits,
    /// Image validations running at once, across all sessions (CPU work, run on the
    /// blocking pool). Shared: clone the `Arc`.
    pub validators: Arc<Semaphore>,
    /// Turn detection timing.
    pub turn: TurnConfig,
    /// VAD score (0–1) a frame needs to begin speech (see [`crate::vad`]).
    pub vad_onset: f32,
    /// VAD score (0–1) a frame needs to continue speech.
    pub vad_sustain: f32,
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
            turn: TurnConfig::default(),
            vad_onset: 0.9,
            vad_sustain: 0.5,
            ingress_queue: 50,
            downstream_queue: 500,
            outbox: 64,
            connect_timeout: Duration::from_secs(30),
            sampler: None,
        }
    }
}

/// What a session hands downstream, in order.
#[derive(Debug)]
pub enum Downstream {
    /// A frame with its final tag.
    Frame(Tagged<AudioFrame>),
    /// A turn opened.
    TurnStarted(TurnInfo),
    /// An accepted image, tagged with its turn. Comes before its turn's
    /// `ProcessingStarted`.
    Blob(Tagged<turngate_core::Blob>),
    /// A turn's processing may start: its frames and blobs have all been sent.
    ProcessingStarted(TurnInfo),
    /// The user spoke over a turn still processing (barge-in).
    TurnInterrupted(TurnId),
    /// A turn's input ended: all its frames have been sent. When the session ends,
    /// the queue closes after its last turn's `TurnEnded`.
    TurnEnded(TurnInfo),
}

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
    pub images_rejected: Mutex<std::collections::BTreeMap<&'static str, u64>>,
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
    pub images_rejected: std::collections::BTreeMap<&'static str, u64>,
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

/// State shared between a session's tasks and the API.
pub struct SessionShared {
    /// The session id.
    pub id: SessionId,
    /// Wall-clock start.
    pub started: SystemTime,
    /// Counters.
    pub counters: SessionCounters,
    turns: Mutex<Vec<TurnInfo>>,
    blobs: Mutex<Vec<BlobRecord>>,
    uploads: mpsc::Sender<UploadRequest>,
    events: mpsc::Sender<ServerEvent>,
    ended: watch::Sender<Option<(SystemTime, SessionEnd)>>,
    data_channel: AtomicBool,
    close: watch::Sender<Option<SessionEnd>>,
}

impl SessionShared {
    /// The session's turns so far.
    pub fn turns(&self) -> Vec<TurnInfo> {
        self.turns.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// The images accepted so far.
    pub fn blobs(&self) -> Vec<BlobRecord> {
        self.blobs.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// Begins an HTTP upload of at most `size` bytes: tagged with the turn open now and
    /// counted against the session's upload limits. Returns its upload id.
    pub async fn begin_upload(
        &self,
        upload_id: Option<String>,
        mime: String,
        size: u64,
        turn_id: Option<TurnId>,
    ) -> Result<String, Error> {
        let (reply, answer) = oneshot::channel();
        self.request(UploadRequest::Begin {
            upload_id,
            mime,
            size,
            turn_id,
            reply,
        })
        .await?;
        answer.await.map_err(|_| session_gone())?
    }

    /// Completes an HTTP upload with its body (and the body's SHA-256): validated, and
    /// announced on the data channel like one sent there. Returns `image.accepted`.
    pub async fn complete_upload(
        &self,
        upload_id: String,
        mime: String,
        bytes: Bytes,
        sha256: [u8; 32],
    ) -> Result<ServerEvent, Error> {
        let (reply, answer) = oneshot::channel();
        self.request(UploadRequest::Complete {
            upload_id,
            mime,
            bytes,
            sha256,
            reply,
        })
        .await?;
        answer.await.map_err(|_| session_gone())?
    }

    /// Gives up an HTTP upload whose body could not be read or was refused.
    pub async fn abort_upload(&self, upload_id: String, error: Error) {
        let _ = self
            .request(UploadRequest::Abort { upload_id, error })
            .await;
    }

    /// Sends an event to the client, as the session's own events go (the data channel,
    /// or the outbox). After the session has ended, the event is dropped.
    pub async fn send_event(&self, event: ServerEvent) {
        let _ = self.events.send(event).await;
    }

    /// Counts a refused upload (and the bytes it freed).
    pub fn count_rejected(&self, error: &Error, bytes_freed: u64) {
        let counters = &self.counters;
        counters
            .upload_bytes_freed
            .fetch_add(bytes_freed, Ordering::Relaxed);
        if let Ok(mut by_code) = counters.images_rejected.lock() {
            *by_code.entry(error.code().as_str()).or_default() += 1;
        }
    }

    async fn request(&self, request: UploadRequest) -> Result<(), Error> {
        self.uploads.send(request).await.map_err(|_| session_gone())
    }

    /// When and why the session ended, if it has.
    pub fn ended(&self) -> Option<(SystemTime, SessionEnd)> {
        *self.ended.borrow()
    }

    /// Whether the client opened the `turngate` data channel.
    pub fn has_data_channel(&self) -> bool {
        self.data_channel.load(Ordering::Relaxed)
    }

    /// Asks the session to end. Idempotent; the first reason wins.
    pub fn close(&self, why: SessionEnd) {
        self.close.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(why);
                true
            } else {
                false
            }
        });
    }

    /// Waits until the session has ended.
    pub async fn wait_ended(&self) {
        let mut rx = self.ended.subscribe();
        let _ = rx.wait_for(|e| e.is_some()).await;
    }
}

/// A running session.
pub struct Session {
    /// Shared state.
    pub shared: Arc<SessionShared>,
    /// Frames and turn events, in order.
    pub downstream: mpsc::Receiver<Downstream>,
    /// Tells the engine a turn's processing finished. Unbounded, but carries at most
    /// one message per ended turn.
    pub processing: mpsc::UnboundedSender<TurnId>,
}

fn session_gone() -> Error {
    Error::refused(ErrorCode::NotFound, "the session has ended")
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
    let (events_tx, events_rx) = mpsc::channel(PROCESSING_EVENTS);
    let shared = Arc::new(SessionShared {
        id,
        started,
        counters: SessionCounters::default(),
        turns: Mutex::new(Vec::new()),
        blobs: Mutex::new(Vec::new()),
        uploads: uploads_tx,
        events: events_tx,
        ended: watch::channel(None).0,
        data_channel: AtomicBool::new(false),
        close,
    });
    let (downstream_tx, downstream) = mpsc::channel(config.downstream_queue.max(1));
    let (processing, processing_rx) = mpsc::unbounded_channel();
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
    let uploads = Reassembler::new(config.uploads.clone());
    let driver = Driver {
        decoder,
        vad: VoiceDetector::new(config.vad_onset, config.vad_sustain),
        outbox: Outbox::new(config.outbox),
        engine,
        config,
        shared: Arc::clone(&shared),
        clock: Instant::now(),
        downstream: downstream_tx,
        channel: None,
        connected: false,
        uploads,
        validated: mpsc::channel(VALIDATED_QUEUE),
        validating: Default::default(),
        blob_seq: 0,
        http_uploads: 0,
        close: close_rx,
        closing: None,
        undelivered: 0,
    };
    tokio::spawn(driver.run(peer, processing_rx, uploads_rx, events_rx));
    Ok(Session {
        shared,
        downstream,
        processing,
    })
}

/// Gateway → client events waiting for the data channel.
struct Outbox {
    queue: VecDeque<String>,
    cap: usize,
}

impl Outbox {
    fn new(cap: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            cap,
        }
    }

    /// Queues an event; returns false (and keeps the older events) when full.
    fn push(&mut self, json: String) -> bool {
        if self.queue.len() >= self.cap {
            return false;
        }
        self.queue.push_back(json);
        true
    }
}

enum Control {
    Open(Arc<dyn DataChannel>),
    Text(String),
    Binary(Bytes),
    Closed,
}

struct Driver {
    config: SessionConfig,
    shared: Arc<SessionShared>,
    engine: TurnEngine<StdRng>,
    decoder: OpusTrackDecoder,
    vad: VoiceDetector,
    outbox: Outbox,
    clock: Instant,
    downstream: mpsc::Sender<Downstream>,
    channel: Option<Arc<dyn DataChannel>>,
    connected: bool,
    close: watch::Receiver<Option<SessionEnd>>,
    /// Set once the session is asked to end; downstream sends stop waiting then.
    closing: Option<SessionEnd>,
    /// Downstream items a stalled consumer never took before the session ended.
    undelivered: u64,
    uploads: Reassembler,
    validated: (
        mpsc::Sender<uploads::Validated>,
        mpsc::Receiver<uploads::Validated>,
    ),
    /// Uploads being validated: their turn and size.
    validating: std::collections::HashMap<String, (TurnId, u64)>,
    blob_seq: u64,
    http_uploads: u64,
}

struct Rtp {
    seq: u16,
    timestamp: u32,
    payload: Bytes,
    at: Duration,
}

impl Driver {
    async fn run(
        mut self,
        peer: AnsweredPeer,
        mut processing: mpsc::UnboundedReceiver<TurnId>,
        mut http_uploads: mpsc::Receiver<UploadRequest>,
        mut processing_events: mpsc::Receiver<ServerEvent>,
    ) {
        let AnsweredPeer {
            connection,
            mut events,
            port,
            ..
        } = peer;
        let (rtp_tx, mut rtp_rx) = mpsc::channel::<Rtp>(self.config.ingress_queue.max(1));
        let (control_tx, mut control_rx) = mpsc::channel::<Control>(CONTROL_QUEUE);
        let mut rtp_tx = Some(rtp_tx);
        let connect_deadline = self.clock + self.config.connect_timeout;
        let why = loop {
            if let Some(why) = self.closing {
                break why;
            }
            let tick = [self.engine.poll_timeout(), self.uploads.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .map(|d| self.clock + d);
            tokio::select! {
                biased;
                _ = self.close.changed() => self.closing = Some((*self.close.borrow()).unwrap_or(SessionEnd::Deleted)),
                Some(event) = events.recv() => match event {
                    PeerEvent::State(state) => match state {
                        RTCPeerConnectionState::Connected => self.connected = true,
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Disconnected
                            if !self.connected => break SessionEnd::PeerFailed,
                        RTCPeerConnectionState::Failed => break SessionEnd::PeerFailed,
                        RTCPeerConnectionState::Closed => break SessionEnd::PeerClosed,
                        _ => {}
                    },
                    PeerEvent::Track(track) => {
                        if let Some(tx) = rtp_tx.take() {
                            tokio::spawn(read_track(track, tx, Arc::clone(&self.shared), self.clock));
                        }
                    }
                    PeerEvent::DataChannel(channel) => self.adopt_channel(channel, &control_tx).await,
                },
                                Some(control) = control_rx.recv() => self.on_control(control).await,
                                Some(request) = http_uploads.recv() => self.on_http_upload(request).await,
                Some(event) = processing_events.recv() => self.send_event(event).await,
                Some(validated) = self.validated.1.recv() => self.on_validated(validated).await,
                Some(turn) = processing.recv() => {
                    let at = self.now();
                    if let Err(e) = self.engine.handle_processing_finished(at, turn) {
                        tracing::warn!(session = %self.shared.id, turn = %turn, error = %e, "Processing finished for a turn not ended.");
                    }
                    self.drain().await;
                }
                Some(first) = rtp_rx.recv() => {
                    self.on_rtp(first);
                    for _ in 1..MAX_PACKETS_PER_WAKE {
                        match rtp_rx.try_recv() {
                            Ok(rtp) => self.on_rtp(rtp),
                            Err(_) => break,
                        }
                    }
                    self.drain().await;
                }
                                _ = sleep_until_opt(tick) => {
                    let at = self.now();
                    self.engine.handle_tick(at);
                    self.expire_uploads(at).await;
                    self.drain().await;
                }
                _ = tokio::time::sleep_until(connect_deadline), if !self.connected => break SessionEnd::ConnectTimeout,
            }
        };
        self.finish(why, connection, port, rtp_rx).await;
        // Nobody is left to hear processing events: refuse them at once.
        drop(processing_events);
        self.complete_remaining(processing).await;
    }

    fn now(&self) -> Duration {
        self.clock.elapsed()
    }

    async fn adopt_channel(
        &mut self,
        channel: Arc<dyn DataChannel>,
        control: &mpsc::Sender<Control>,
    ) {
        let label = channel.label().await.unwrap_or_default();
        if label != CONTROL_LABEL || self.shared.has_data_channel() {
            tracing::debug!(session = %self.shared.id, label, "Ignoring a data channel.");
            return;
        }
        // The channel is used once its reader reports it open, with `session.ready` first.
        self.shared.data_channel.store(true, Ordering::Relaxed);
        tokio::spawn(read_channel(channel, control.clone()));
    }

    async fn on_control(&mut self, control: Control) {
        match control {
            Control::Open(channel) => {
                self.channel = Some(channel);
                let ready = ServerEvent::SessionReady {
                    session_id: self.shared.id,
                }
                .to_json();
                self.outbox.queue.push_front(ready);
                self.flush_outbox().await;
            }
            Control::Closed => self.channel = None,
            Control::Binary(message) => self.on_chunk(&message).await,
            Control::Text(text) => {
                let at = self.now();
                let result = ClientEvent::parse(&text);
                if let Some(upload_id) = ClientEvent::upload_id_of(&text) {
                    match result {
                        Ok(ClientEvent::ImageBegin {
                            upload_id,
                            mime,
                            size,
                            sha256,
                            turn_id,
                        }) => {
                            let begin = turngate_core::upload::UploadBegin {
                                upload_id,
                                mime,
                                size,
                                sha256,
                                turn_id,
                            };
                            self.on_image_begin(begin).await;
                        }
                        Ok(ClientEvent::ImageEnd { upload_id }) => {
                            self.on_image_end(&upload_id).await
                        }
                        Ok(_) => {}
                        Err(error) => {
                            self.count_rejected(&error, 0);
                            self.send_event(ServerEvent::rejected(&upload_id, &error))
                                .await;
                        }
                    }
                    self.drain().await;
                    return;
                }
                let result = result.and_then(|event| match event {
                    ClientEvent::TurnStart {
                        turn_id,
                        traceparent,
                    } => self
                        .engine
                        .handle_turn_start(at, turn_id, traceparent)
                        .map(|_| ()),
                    ClientEvent::TurnEnd { turn_id } => {
                        self.engine.handle_turn_end(at, turn_id).map(|_| ())
                    }
                    ClientEvent::ImageBegin { .. } | ClientEvent::ImageEnd { .. } => {
                        Err(Error::refused(
                            ErrorCode::MalformedMessage,
                            "image messages need a string upload_id",
                        ))
                    }
                });
                if let Err(error) = result {
                    // Name the open turn only in errors about it.
                    let about_open_turn = matches!(
                        error.code(),
                        ErrorCode::TurnAlreadyOpen | ErrorCode::TurnIdMismatch
                    );
                    let turn = self
                        .engine
                        .open_turn()
                        .map(|t| t.id)
                        .filter(|_| about_open_turn);
                    self.refuse(&error, turn).await;
                }
                self.drain().await;
            }
        }
    }

    async fn refuse(&mut self, error: &Error, turn: Option<TurnId>) {
        self.shared
            .counters
            .messages_refused
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(session = %self.shared.id, code = %error.code(), %error, "Refused a client message.");
        self.send_event(ServerEvent::error(error, turn)).await;
    }

    fn on_rtp(&mut self, rtp: Rtp) {
        let counters = &self.shared.counters;
        let (pcm, concealed) =
            match self
                .decoder
                .decode(rtp.seq, rtp.timestamp, &rtp.payload, rtp.at)
            {
                Decoded::Audio {
                    pcm,
                    concealed,
                    lost,
                } => {
                    counters
                        .packets_lost
                        .fetch_add(u64::from(lost), Ordering::Relaxed);
                    counters
                        .samples_concealed
                        .fetch_add(u64::from(concealed), Ordering::Relaxed);
                    (pcm, concealed)
                }
                Decoded::Late => (Vec::new(), 0),
                Decoded::Undecodable => {
                    counters.frames_undecodable.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
        let voiced = self.vad.push(&pcm);
        let frame = AudioFrame {
            rtp_seq: rtp.seq,
            rtp_timestamp: rtp.timestamp,
            payload: rtp.payload,
            pcm,
            concealed_samples: concealed,
        };
        self.engine.handle_frame(rtp.at, frame, voiced);
    }

    /// Carries the engine's outputs out: frames downstream (waiting when the consumer
    /// is slow: this is where back-pressure starts), events to the client.
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
                        self.send_downstream(Downstream::Frame(frame)).await;
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
                    };
                    self.send_event(event).await;
                    self.send_downstream(Downstream::TurnStarted(turn)).await;
                }
                Output::TurnEnded(turn) => {
                    tracing::debug!(session = %self.shared.id, turn = %turn.id, reason = ?turn.reason, frames = turn.frames, "Turn ended.");
                    self.record_turn(&turn);
                    if let Some(reason) = turn.reason {
                        let event = ServerEvent::TurnEnded {
                            turn_id: turn.id,
                            reason,
                            frames: turn.frames,
                        };
                        self.send_event(event).await;
                    }
                    self.send_downstream(Downstream::TurnEnded(turn)).await;
                }
                Output::TurnInterrupted(id) => {
                    self.send_downstream(Downstream::TurnInterrupted(id)).await;
                    if let Ok(mut turns) = self.shared.turns.lock()
                        && let Some(t) = turns.iter_mut().find(|t| t.id == id)
                    {
                        t.interrupted = true;
                    }
                }
                Output::TurnCompleted(turn) => self.record_turn(&turn),
                Output::ProcessingStarted(turn) => {
                    self.record_turn(&turn);
                    self.send_downstream(Downstream::ProcessingStarted(turn))
                        .await;
                }
            }
        }
    }

    /// Hands an item downstream, waiting while the consumer is slow — unless the
    /// session is ending, when a full queue loses the item (counted in `undelivered`).
    async fn send_downstream(&mut self, item: Downstream) {
        if self.closing.is_none() {
            tokio::select! {
                biased;
                sent = self.downstream.send(item) => {
                    if sent.is_err() { self.undelivered += 1; }
                    return;
                }
                _ = self.close.changed() => {
                    self.closing = Some((*self.close.borrow()).unwrap_or(SessionEnd::Deleted));
                    self.undelivered += 1;
                    return;
                }
            }
        }
        if self.downstream.try_send(item).is_err() {
            self.undelivered += 1;
        }
    }

    fn record_turn(&self, turn: &TurnInfo) {
        let Ok(mut turns) = self.shared.turns.lock() else {
            return;
        };
        match turns.iter_mut().rev().find(|t| t.id == turn.id) {
            Some(slot) => *slot = turn.clone(),
            None => turns.push(turn.clone()),
        }
    }

    async fn send_event(&mut self, event: ServerEvent) {
        let json = event.to_json();
        if self.channel.is_some() && self.outbox.queue.is_empty() && self.try_send(&json).await {
            return;
        }
        if !self.outbox.push(json) {
            self.shared
                .counters
                .events_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        self.flush_outbox().await;
    }

    async fn flush_outbox(&mut self) {
        while let Some(json) = self.outbox.queue.front().cloned() {
            if self.channel.is_none() || !self.try_send(&json).await {
                return;
            }
            self.outbox.queue.pop_front();
        }
    }

    /// Sends without waiting; false when the channel is not open yet. A full send buffer
    /// drops the event (counted): a client that does not read must not stall media.
    async fn try_send(&mut self, json: &str) -> bool {
        let Some(channel) = &self.channel else {
            return false;
        };
        match channel.try_send_text(json).await {
            Ok(()) => true,
            Err(webrtc::error::Error::ErrSendBufferFull) => {
                self.shared
                    .counters
                    .events_dropped
                    .fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    async fn finish(
        &mut self,
        why: SessionEnd,
        connection: Arc<dyn PeerConnection>,
        port: PortLease,
        mut rtp_rx: mpsc::Receiver<Rtp>,
    ) {
        // Uploads end with the session: wait for validations already running, abandon
        // what is still open. Then close the turns, so the client still hears
        // `turn.ended` on a channel that is open; frames arriving from now on leave as idle.
        self.settle_uploads().await;
        let at = self.now();
        self.engine.handle_close(at);
        self.drain().await;
        if let Some(channel) = self.channel.clone() {
            flush(channel).await;
        }
        let _ = connection.close().await;
        rtp_rx.close();
        while let Some(rtp) = rtp_rx.recv().await {
            self.on_rtp(rtp);
        }
        self.drain().await;
        drop(port);
        if self.undelivered > 0 {
            tracing::warn!(session = %self.shared.id, items = self.undelivered, "Downstream consumer did not take every item before the session ended.");
        }
        let c = &self.shared.counters;
        let accounted = c.frames_in_turns.load(Ordering::Relaxed)
            + c.idle_frames_discarded.load(Ordering::Relaxed)
            + c.frames_dropped_backpressure.load(Ordering::Relaxed)
            + c.frames_undecodable.load(Ordering::Relaxed);
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
    /// downstream queue (so the consumer sees the end) and record their completions
    /// until the consumer lets go of the processing channel.
    async fn complete_remaining(mut self, mut processing: mpsc::UnboundedReceiver<TurnId>) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.downstream, closed));
        while let Some(turn) = processing.recv().await {
            let at = self.now();
            if let Err(e) = self.engine.handle_processing_finished(at, turn) {
                tracing::warn!(session = %self.shared.id, turn = %turn, error = %e, "Processing finished for a turn not ended.");
            }
            self.drain().await;
        }
    }
}

/// How long a closing session waits for its last events to leave the data channel.
const FLUSH_GRACE: Duration = Duration::from_millis(250);

/// Waits (briefly) until a data channel has sent what is queued.
async fn flush(channel: Arc<dyn DataChannel>) {
    let deadline = Instant::now() + FLUSH_GRACE;
    while Instant::now() < deadline {
        match channel.outstanding_bytes().await {
            Ok(0) | Err(_) => return,
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Counts every RTP packet of the track at receipt and offers it to the session task.
async fn read_track(
    track: Arc<dyn TrackRemote>,
    tx: mpsc::Sender<Rtp>,
    shared: Arc<SessionShared>,
    clock: Instant,
) {
    while let Some(event) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(packet) = event else {
            if matches!(event, TrackRemoteEvent::OnEnded) {
                break;
            }
            continue;
        };
        shared
            .counters
            .frames_received
            .fetch_add(1, Ordering::Relaxed);
        let rtp = Rtp {
            seq: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            payload: packet.payload,
            at: clock.elapsed(),
        };
        match tx.try_send(rtp) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                shared
                    .counters
                    .frames_dropped_backpressure
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The session has closed its turns: like any frame after close, this
                // one leaves as idle.
                shared
                    .counters
                    .idle_frames_discarded
                    .fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
}

/// Forwards the control channel's messages to the session task.
async fn read_channel(channel: Arc<dyn DataChannel>, tx: mpsc::Sender<Control>) {
    // `on_data_channel` fires when the channel is already open.
    if tx.send(Control::Open(Arc::clone(&channel))).await.is_err() {
        return;
    }
    while let Some(event) = channel.poll().await {
        let control = match event {
            DataChannelEvent::OnMessage(msg) if msg.is_string => {
                Control::Text(String::from_utf8_lossy(&msg.data).into_owned())
            }
            DataChannelEvent::OnMessage(msg) => Control::Binary(msg.data.freeze()),
            DataChannelEvent::OnClose => break,
            _ => continue,
        };
        if tx.send(control).await.is_err() {
            return;
        }
    }
    let _ = tx.send(Control::Closed).await;
}
