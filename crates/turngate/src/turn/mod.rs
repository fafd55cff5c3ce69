//! Turns downstream: each turn has one owner ([`owner::Turn`]) from its first frame to
//! its completion — its buffer of tagged frames and blobs, its trace, its barge-in
//! signal, its processing and its result — created when the engine opens the turn and
//! dropped when the turn completes.
//!
//! [`own_session`] reads a session's downstream queue and hands each item to its
//! turn's owner; once the turn's processing may start, the owner runs it as a task of
//! its own: ASR ([`asr`]) and vision ([`vision`]) concurrently, then, for a turn that
//! is answered, the LLM ([`llm`]) on a prompt ([`prompt`]) that holds the session's
//! earlier exchanges in turn order and the input of the turns it stands for (a
//! superseded turn, or the earlier pieces of a chain split at the maximum length).
//! Each backend call gets a client span ([`call`]).

mod asr;
mod call;
mod llm;
mod owner;
mod prompt;
mod stage;
mod vision;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;
use turngate_backends::Backend;
use turngate_backends::llm::StreamTimeouts;
use turngate_core::{History, TurnId};
use turngate_media::session::{Downstream, Session};
use turngate_telemetry::Telemetry;
use turngate_telemetry::metrics::Metrics;

use crate::config::Config;
pub use prompt::Exchange;

/// What turn processing uses, shared by every session.
pub struct Services {
    /// The configured backends and how prompts are built.
    pub backends: Backends,
    /// Spans: the OTLP pipeline, and whether content goes into spans.
    pub telemetry: Telemetry,
    /// Counted as it happens, for `/metrics`.
    pub metrics: Metrics,
    /// The tasks processing turns; shutdown waits for them.
    pub tasks: tokio_util::task::TaskTracker,
    /// The tasks writing turn records; shutdown waits for them after `tasks`.
    pub records: tokio_util::task::TaskTracker,
    /// The turn record, if recording is on.
    pub recorder: Option<Arc<crate::record::Recorder>>,
    /// Frames one turn's buffer holds at most.
    frames_cap: usize,
    /// 16 kHz samples of PCM one turn's buffer holds at most.
    samples_cap: u64,
}

impl Services {
    /// The services for a validated configuration.
    pub fn new(config: &Config, telemetry: Telemetry) -> anyhow::Result<Self> {
        let turn = config.session().turn;
        // Opus packets last at least 2.5 ms: a turn of `max_turn` (plus pre-roll) has
        // at most this many frames.
        let frames_cap = ((turn.max_turn + turn.preroll).as_micros() / 2500) as usize + 1;
        // A turn lasts at most `max_turn` (plus pre-roll) of arrival time, and a track's
        // output runs ahead of arrival time by at most the decoder's slack; only a
        // sender faster than real time reaches this.
        let longest = turn.max_turn + turn.preroll + turngate_media::decode::ARRIVAL_SLACK;
        let samples_cap =
            longest.as_millis() as u64 * u64::from(turngate_media::decode::PCM_RATE) / 1000;
        Ok(Self {
            backends: Backends::new(config)?,
            telemetry,
            metrics: Metrics::default(),
            tasks: tokio_util::task::TaskTracker::new(),
            records: tokio_util::task::TaskTracker::new(),
            recorder: crate::record::Recorder::new(config)?,
            frames_cap,
            samples_cap,
        })
    }

    /// Earlier exchanges a prompt holds.
    pub fn history_turns(&self) -> usize {
        self.backends.history_turns
    }
}

/// The configured backends and how prompts are built.
pub struct Backends {
    asr: Option<Backend>,
    vision: Option<Backend>,
    llm: Option<Backend>,
    llm_timeouts: StreamTimeouts,
    vision_instruction: String,
    system_prompt: String,
    history_turns: usize,
    send_images: bool,
}

impl Backends {
    /// Clients for the configured backends; unconfigured ones are skipped.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let make =
            |name, c: &turngate_backends::BackendConfig| -> anyhow::Result<Option<Backend>> {
                Ok(if c.is_configured() {
                    Some(Backend::new(name, c.clone())?)
                } else {
                    None
                })
            };
        Ok(Self {
            asr: make("asr", &config.asr)?,
            vision: make("vision", &config.vision.backend)?,
            llm: make("llm", &config.llm.backend)?,
            llm_timeouts: config.llm.timeouts(),
            vision_instruction: config.vision.instruction.clone(),
            system_prompt: config.llm.system_prompt.clone(),
            history_turns: config.llm.history_turns,
            send_images: config.llm.send_images,
        })
    }

    /// The configured backends.
    pub fn each(&self) -> impl Iterator<Item = &Backend> {
        [&self.asr, &self.vision, &self.llm]
            .into_iter()
            .filter_map(Option::as_ref)
    }
}

/// A session's conversation as its turns' owners keep it: the exchanges for the next
/// prompts, in turn order.
pub struct Conversation {
    history: watch::Sender<History<Exchange>>,
    /// Who it is with, as span attributes: the token claims `auth.span_claims` names.
    user: Vec<(String, String)>,
    /// The token's subject, for its records (deleted on request by subject).
    subject: Option<String>,
}

impl Conversation {
    /// A conversation with the user `user` describes (span attributes) and token
    /// subject `subject`, whose prompts hold at most `history_turns` earlier exchanges.
    pub fn new(
        history_turns: usize,
        user: Vec<(String, String)>,
        subject: Option<String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            history: watch::channel(History::new(history_turns)).0,
            user,
            subject,
        })
    }

    /// The exchanges of the turns before `number`, with their turn numbers, once every
    /// one of them has settled.
    async fn history_before(&self, number: u32) -> Vec<(u32, Exchange)> {
        let mut rx = self.history.subscribe();
        let Ok(history) = rx.wait_for(|h| h.settled_before(number)).await else {
            return Vec::new();
        };
        history
            .before(number)
            .map(|(n, e)| (n, e.clone()))
            .collect()
    }

    fn open(&self, number: u32) {
        self.history.send_modify(|h| h.open(number));
    }

    fn settle(&self, number: u32, exchange: Option<Exchange>) {
        self.history.send_modify(|h| h.settle(number, exchange));
    }
}

/// Owns a session's turns until its downstream queue ends (the session ended and every
/// turn's processing started). Processing tasks go on in `services.tasks`.
pub async fn own_session(
    services: Arc<Services>,
    conversation: Arc<Conversation>,
    session: Session,
) {
    let Session {
        shared,
        mut downstream,
    } = session;
    let mut owners: HashMap<TurnId, owner::Turn> = HashMap::new();
    // Results of turns that hand their input on, by the turn they hand it to.
    let mut carried: HashMap<TurnId, Vec<owner::CarriedIn>> = HashMap::new();
    let mut previous_root = None;
    while let Some(item) = downstream.recv().await {
        match item {
            Downstream::TurnStarted { turn, cancel } => {
                conversation.open(turn.number);
                let carried_in = carried.remove(&turn.id).unwrap_or_default();
                let owner = owner::Turn::start(
                    &services,
                    &conversation,
                    &shared,
                    turn,
                    cancel,
                    carried_in,
                    &mut previous_root,
                );
                owners.insert(owner.id(), owner);
            }
            Downstream::Frame { frame, held } => {
                let at = frame.at;
                if let Some(owner) = frame.turn_id.and_then(|id| owners.get_mut(&id)) {
                    owner.push_frame(frame);
                    if !held {
                        let latency = shared.elapsed().saturating_sub(at);
                        services
                            .metrics
                            .frame_latency
                            .observe([], latency.as_secs_f64());
                    }
                }
            }
            Downstream::Blob(blob, held) => {
                if let Some(owner) = blob.turn_id.and_then(|id| owners.get_mut(&id)) {
                    owner.push_blob(blob, held);
                }
            }
            Downstream::TurnEnded(turn) => {
                if let Some(owner) = owners.get_mut(&turn.id)
                    && let Some((successor, carry)) = owner.ended(turn)
                {
                    carried.insert(successor, carry);
                }
            }
            Downstream::ProcessingStarted(turn) => match owners.remove(&turn.id) {
                Some(owner) => {
                    let run = owner.process(Arc::clone(&services), turn);
                    services.tasks.spawn(run);
                }
                None => {
                    tracing::error!(turn = %turn.id, "Processing started for a turn without an owner.")
                }
            },
        }
    }
    // Owners left here never started processing (only if the session task stopped
    // early); dropping them settles their turns so no later prompt waits for them.
    if !owners.is_empty() {
        tracing::warn!(session = %shared.id, turns = owners.len(), "Turns ended without processing.");
    }
}

/// Milliseconds since `since`, saturating.
fn ms(since: std::time::Instant) -> u32 {
    since.elapsed().as_millis().min(u128::from(u32::MAX)) as u32
}

/// Waits for `future` unless `cancel` fires first (barge-in): `None` then.
async fn unless_cancelled<T>(
    cancel: &tokio_util::sync::CancellationToken,
    future: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => None,
        value = future => Some(value),
    }
}
