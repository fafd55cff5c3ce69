//! The owner of one turn downstream, from its first frame to its completion.
//!
//! [`Turn::start`] is called when the engine opens the turn: it opens the turn's trace,
//! holds its barge-in signal (cancelled by the session the moment the user speaks over
//! the turn, even before its processing starts) and its place in the session's history.
//! Frames and blobs go into its buffer until its input ends; [`Turn::process`] then
//! runs its stages as one task and reports to the session, which decides its one
//! terminal status. A turn that hands its input on (superseded, or split and continued)
//! sends its transcript and images to its successor instead of asking the LLM; an
//! answered turn waits for those of the turns it stands for, and for every earlier turn
//! to settle, before it builds its prompt.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::SpanContext;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use turngate_backends::TurnContext;
use turngate_core::{
    AudioFrame, Blob, CompletionStatus, StageStatus, Stages, Tagged, TurnId, TurnInfo, TurnState,
};
use turngate_media::session::{HeldImage, SessionShared, TurnReport};
use turngate_telemetry::metrics::Metrics;
use turngate_telemetry::{AudioStats, TurnTrace, names, snake};

use super::prompt::{self, Described, Exchange};
use super::stage::{Job, Ran};
use super::{Conversation, Services, asr, llm, unless_cancelled, vision};
use crate::record::{Outcome, TurnRecord, User};

/// What a turn that hands its input on gives its successor.
#[derive(Debug, Default)]
pub(super) struct Carried {
    transcript: Option<String>,
    images: Vec<Described>,
}

/// The results of a turn this one stands for, once that turn has them.
pub(super) type CarriedIn = oneshot::Receiver<Carried>;

/// One turn, owned. See the module docs.
pub(super) struct Turn {
    info: TurnInfo,
    shared: Arc<SessionShared>,
    trace: TurnTrace,
    cancel: CancellationToken,
    frames: Vec<Tagged<AudioFrame>>,
    blobs: Vec<Tagged<Blob>>,
    /// The blobs' places in the gateway's image budget, given back when the owner is
    /// dropped (its processing ended).
    held: Vec<HeldImage>,
    frames_cap: usize,
    /// Samples of PCM in `frames`, and the most it may hold.
    samples: u64,
    samples_cap: u64,
    /// Frames beyond the cap, not kept, and frames kept without their PCM because the
    /// samples cap was reached (only a sender faster than real time gets here).
    over_cap: u64,
    pcm_over_cap: u64,
    /// The session's (dropped, undecodable) frame counts when the turn opened...
    losses_at_start: (u64, u64),
    /// ...and when its input ended.
    losses_at_end: Option<(u64, u64)>,
    /// Results of the turns it stands for, oldest first.
    carried_in: Vec<CarriedIn>,
    /// Where its results go if it hands its input on.
    hand_on: Option<oneshot::Sender<Carried>>,
    /// Its place in the session's history, settled when the owner is done (or dropped).
    settle: Settle,
    /// Its record, if recording is on.
    record: Option<TurnRecord>,
}

impl Turn {
    /// Takes a turn the engine just opened. `previous_root` is the root span of the
    /// session's previous turn (linked), and becomes this one's.
    pub fn start(
        services: &Services,
        conversation: &Arc<Conversation>,
        shared: &Arc<SessionShared>,
        info: TurnInfo,
        cancel: CancellationToken,
        carried_in: Vec<CarriedIn>,
        previous_root: &mut Option<SpanContext>,
    ) -> Self {
        let wall = |at: Duration| shared.started + at;
        let trace = services.telemetry.start_turn(
            &info,
            shared.id,
            wall(info.started_at),
            previous_root.take(),
            &conversation.user,
        );
        if let Some(speech) = info.speech_started_at {
            trace.event(names::event::SPEECH_START, wall(speech));
        }
        *previous_root = Some(trace.span_context());
        services.metrics.turns_started.inc([&snake(&info.cause)]);
        let record = services.recorder.as_ref().map(|recorder| {
            TurnRecord::start(
                recorder,
                &services.records,
                shared.id,
                &info,
                wall(info.started_at),
                User {
                    claims: &conversation.user,
                    subject: conversation.subject.clone(),
                },
                services.telemetry.turn_spans(),
            )
        });
        Self {
            record,
            settle: Settle {
                conversation: Arc::clone(conversation),
                number: info.number,
                exchange: None,
            },
            info,
            shared: Arc::clone(shared),
            trace,
            cancel,
            frames: Vec::new(),
            blobs: Vec::new(),
            held: Vec::new(),
            frames_cap: services.frames_cap,
            samples: 0,
            samples_cap: services.samples_cap,
            over_cap: 0,
            pcm_over_cap: 0,
            losses_at_start: losses(shared),
            losses_at_end: None,
            carried_in,
            hand_on: None,
        }
    }

    pub fn id(&self) -> TurnId {
        self.info.id
    }

    /// Keeps a frame of the turn: its packet as received and its PCM, within the caps.
    pub fn push_frame(&mut self, mut frame: Tagged<AudioFrame>) {
        if self.frames.len() >= self.frames_cap {
            self.over_cap += 1;
            return;
        }
        if let Some(record) = &self.record {
            record.frame(frame.value.rtp_timestamp, &frame.value.payload, frame.at);
        }
        let samples = frame.value.pcm.len() as u64;
        if self.samples + samples > self.samples_cap {
            frame.value.pcm = Vec::new();
            self.pcm_over_cap += 1;
        } else {
            self.samples += samples;
        }
        self.frames.push(frame);
    }

    pub fn push_blob(&mut self, blob: Tagged<Blob>, held: HeldImage) {
        self.held.push(held);
        if let Some(record) = &self.record {
            record.image(&blob.value);
        }
        let wall = |at: Duration| self.shared.started + at;
        self.trace
            .image(&blob.value, wall(blob.value.began_at), wall(blob.at));
        self.blobs.push(blob);
    }

    /// The turn's input ended. If it hands its input on, returns its successor and what
    /// the successor will receive: the results of the turns this one stood for, then
    /// this one's.
    pub fn ended(&mut self, info: TurnInfo) -> Option<(TurnId, Vec<CarriedIn>)> {
        self.losses_at_end = Some(losses(&self.shared));
        if let Some(speech) = info.speech_ended_at {
            self.trace
                .event(names::event::SPEECH_END, self.shared.started + speech);
        }
        let successor = info.successor;
        self.info = info;
        let successor = successor?;
        let (tx, rx) = oneshot::channel();
        self.hand_on = Some(tx);
        let mut carry = std::mem::take(&mut self.carried_in);
        carry.push(rx);
        Some((successor, carry))
    }

    /// Processes the turn (its input has ended and no upload of it is open) and
    /// completes it.
    pub async fn process(mut self, services: Arc<Services>, info: TurnInfo) {
        self.info = info;
        let audio = self.measure(&services.metrics);
        let ctx = TurnContext {
            session_id: self.shared.id,
            turn_id: self.info.id,
            // Each call's client span replaces the root as its requests' parent; the
            // flags say whether the sampler kept the turn.
            parent: self.info.root_span_id,
            flags: self.info.traceparent().flags,
        };
        let job = Job::new(
            &services,
            &self.shared,
            &self.trace,
            ctx,
            self.record.as_ref(),
        );
        let pcm: Vec<i16> = self
            .frames
            .iter()
            .flat_map(|f| f.value.pcm.iter().copied())
            .collect();
        self.frames = Vec::new();

        // ASR and vision, concurrently; a barge-in stops whichever is still running.
        let cancel = &self.cancel;
        let (heard, seen) = tokio::join!(
            async { unless_cancelled(cancel, asr::run(&job, &pcm)).await },
            async { unless_cancelled(cancel, vision::run(&job, &self.blobs)).await },
        );
        drop(pcm);
        let heard = heard.unwrap_or_else(Ran::cancelled);
        let seen = seen.unwrap_or_else(Ran::cancelled);

        let mut report = TurnReport {
            stages: Stages {
                asr: heard.status,
                vision: seen.status,
                llm: StageStatus::Skipped,
            },
            answer: None,
            asr_ms: heard.ms,
            vision_ms: seen.ms,
            llm_first_token_ms: None,
            llm_total_ms: None,
            details: Default::default(),
        };
        let mut user = String::new();
        let mut history = Vec::new();
        let descriptions: Vec<Value> = seen
            .value
            .iter()
            .map(|(b, d)| json!({"blob_id": b.value.blob_id, "description": d}))
            .collect();
        let transcript = heard.value.clone();
        if let Some(hand_on) = self.hand_on.take() {
            // Its input goes on into the next turn, which answers for both.
            let _ = hand_on.send(Carried {
                transcript: heard.value,
                images: seen.value,
            });
        } else if job.backends().llm.is_some() {
            // The input of the turns it stands for, then its own. What the user said
            // counts even if a barge-in comes first: it goes into the history.
            let mut carried = Vec::new();
            let gathered =
                unless_cancelled(cancel, gather(&mut self.carried_in, &mut carried)).await;
            carried.push(Carried {
                transcript: heard.value,
                images: seen.value,
            });
            let transcripts: Vec<String> = carried
                .iter()
                .filter_map(|c| c.transcript.clone())
                .collect();
            let images: Vec<Described> = carried.into_iter().flat_map(|c| c.images).collect();
            user = prompt::user_text(&transcripts, &images);
            report.stages.llm = match gathered {
                None => StageStatus::Cancelled,
                Some(()) if user.is_empty() => StageStatus::Skipped,
                Some(()) => {
                    let (answer, numbers) = answer(
                        &job,
                        &self.settle.conversation,
                        self.info.number,
                        &user,
                        &images,
                        cancel,
                    )
                    .await;
                    history = numbers;
                    report.answer = answer.text;
                    report.llm_first_token_ms = answer.first_token_ms;
                    report.llm_total_ms = answer.total_ms;
                    answer.status
                }
            };
        }

        let stages = report.stages;
        let recorded = self.record.is_some().then(|| Recorded {
            stages_ms: [
                ("asr", report.asr_ms),
                ("vision", report.vision_ms),
                ("llm_first_token", report.llm_first_token_ms),
                ("llm_total", report.llm_total_ms),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect(),
            transcript: transcript.clone(),
            descriptions: descriptions
                .iter()
                .map(|d| {
                    let text = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
                    (text("blob_id"), text("description"))
                })
                .collect(),
            answer: report.answer.clone(),
            history,
        });
        let details = json!({
            "transcript": transcript,
            "descriptions": descriptions,
            "errors": job.into_errors(),
            "audio_ms": audio.samples / 16,
            "concealed_ms": audio.concealed / 16,
        });
        if let Value::Object(details) = details {
            report.details = details;
        }
        let finished = self.shared.finish_turn(self.info.id, report).await;
        let (status, assistant) = match finished {
            Some(f) => (f.status, f.heard),
            // The session task is gone (the gateway is stopping): nothing was sent.
            None => (stages.status(), String::new()),
        };
        if !user.is_empty() {
            self.settle.exchange = Some(Exchange { user, assistant });
        }
        let mut done = self.info.clone();
        done.state = TurnState::Completed;
        done.interrupted = status == CompletionStatus::Interrupted;
        done.status = Some(status);
        // Session time, as the engine records it once this report has reached it.
        done.completed_at = SystemTime::now().duration_since(self.shared.started).ok();
        self.trace
            .end(&done, status, self.blobs.len(), SystemTime::now());
        if let (Some(record), Some(r)) = (self.record.take(), recorded) {
            record.finish(Outcome {
                info: done.clone(),
                status,
                stages,
                stages_ms: r.stages_ms,
                transcript: r.transcript,
                descriptions: r.descriptions,
                answer: r.answer,
                history: r.history,
                concealed_ms: (audio.concealed / 16) as u32,
            });
        }
        services
            .metrics
            .turns_completed
            .inc([&snake(&done.cause), &snake(&status)]);
        // Dropping `self` settles the turn in the history, with its exchange.
    }

    /// Measures the turn's audio and records it on the trace (and in `metrics`, what
    /// the caps kept out).
    fn measure(&self, metrics: &Metrics) -> Audio {
        let audio = Audio {
            samples: self.frames.iter().map(|f| f.value.pcm.len() as u64).sum(),
            concealed: self
                .frames
                .iter()
                .map(|f| u64::from(f.value.concealed_samples))
                .sum(),
        };
        if self.over_cap > 0 || self.pcm_over_cap > 0 {
            let capped = &metrics.turn_audio_capped;
            capped.add(["frames"], self.over_cap);
            capped.add(["pcm"], self.pcm_over_cap);
            tracing::warn!(turn = %self.info.id, frames = self.over_cap, frames_without_pcm = self.pcm_over_cap, "Turn buffer over its cap: the sender sends faster than real time.");
        }
        if let (Some(first), Some(last)) = (self.frames.first(), self.frames.last()) {
            let wall = |at: Duration| self.shared.started + at;
            let (dropped, undecodable) = self.losses_at_end.unwrap_or_else(|| losses(&self.shared));
            self.trace.audio(&AudioStats {
                frames: self.frames.len() as u64,
                samples: audio.samples,
                concealed_samples: audio.concealed,
                dropped: dropped - self.losses_at_start.0,
                undecodable: undecodable - self.losses_at_start.1,
                first: wall(first.at),
                last: wall(last.at),
            });
        }
        audio
    }
}

/// The LLM's answer, once every earlier turn has settled (so the prompt holds the
/// conversation in turn order), and the numbers of the turns whose exchanges the prompt
/// holds.
async fn answer(
    job: &Job<'_>,
    conversation: &Conversation,
    number: u32,
    user: &str,
    images: &[Described],
    cancel: &CancellationToken,
) -> (llm::Answer, Vec<u32>) {
    let Some(history) = unless_cancelled(cancel, conversation.history_before(number)).await else {
        let cancelled = llm::Answer {
            status: StageStatus::Cancelled,
            text: None,
            first_token_ms: None,
            total_ms: None,
        };
        return (cancelled, Vec::new());
    };
    let (numbers, exchanges): (Vec<u32>, Vec<Exchange>) = history.into_iter().unzip();
    let backends = job.backends();
    let messages = prompt::messages(
        &backends.system_prompt,
        &exchanges,
        user,
        images,
        backends.send_images,
    );
    (llm::run(job, messages, cancel).await, numbers)
}

/// Waits for the results of the turns a turn stands for, oldest first, into `carried`
/// (kept as they come, so a barge-in meanwhile keeps what arrived); a turn that gave
/// none (its owner ended without) is left out.
async fn gather(stood_for: &mut Vec<CarriedIn>, carried: &mut Vec<Carried>) {
    for rx in stood_for.drain(..) {
        if let Ok(c) = rx.await {
            carried.push(c);
        }
    }
}

/// What the turn's record keeps of its processing, gathered before its report goes.
struct Recorded {
    stages_ms: Vec<(&'static str, u32)>,
    transcript: Option<String>,
    descriptions: Vec<(String, String)>,
    answer: Option<String>,
    history: Vec<u32>,
}

/// Audio of one turn as downstream received it.
#[derive(Clone, Copy, Debug, Default)]
struct Audio {
    /// 16 kHz samples of PCM, concealment included.
    samples: u64,
    /// Of which concealed.
    concealed: u64,
}

/// The session's (dropped by back-pressure, undecodable) frame counts now.
fn losses(shared: &SessionShared) -> (u64, u64) {
    let c = &shared.counters;
    (
        c.frames_dropped_backpressure.load(Ordering::Relaxed),
        c.frames_undecodable.load(Ordering::Relaxed),
    )
}

/// A turn's place in the session's history: settled when dropped, so every turn
/// settles exactly once, however its owner ends.
struct Settle {
    conversation: Arc<Conversation>,
    number: u32,
    exchange: Option<Exchange>,
}

impl Drop for Settle {
    fn drop(&mut self) {
        self.conversation.settle(self.number, self.exchange.take());
    }
}
