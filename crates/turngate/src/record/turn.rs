//! One turn's record: a handle the turn's owner feeds ([`TurnRecord`]) and the task
//! that writes what it is fed.
//!
//! The task writes, in order: the `open/{node}/{turn}/{session}` marker, the create-only
//! `turns/{turn}` index and the session's number entry; the received audio as Ogg Opus segments every
//! `record.segment_ms`; images and other artifacts as they come; at the end the last
//! segment, the segments joined (`audio.received.ogg`), the manifest, and then removes
//! the marker. A handle dropped without [`TurnRecord::finish`] (the turn never
//! completed) still gets its manifest, `incomplete`.

use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::mpsc;
use turngate_backends::tape::Exchange;
use turngate_core::{Blob, CompletionStatus, SessionId, Stages, TurnId, TurnInfo};
use turngate_store::layout;
use turngate_store::manifest::{
    self, Artifact, Chain, Counters, Description, Manifest, Missing, Moment, RecordState, Timings,
};
use turngate_store::ogg::{GRANULE_RATE, OggOpus};
use turngate_telemetry::capture::TurnSpans;
use turngate_telemetry::snake;

use super::recover::Marker;
use super::{Recorder, Stored};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Who a turn's session is with, for its manifest.
pub struct User<'a> {
    /// The token claims `auth.span_claims` names, as on the spans.
    pub claims: &'a [(String, String)],
    /// The token's subject (records are deleted on request by it).
    pub subject: Option<String>,
}

/// How a turn ended, for its manifest.
pub struct Outcome {
    /// The turn as it completed.
    pub info: TurnInfo,
    pub status: CompletionStatus,
    pub stages: Stages,
    /// Stage durations: `asr`, `vision`, `llm_first_token`, `llm_total`.
    pub stages_ms: Vec<(&'static str, u32)>,
    pub transcript: Option<String>,
    /// (blob id, description), in upload order.
    pub descriptions: Vec<(String, String)>,
    pub answer: Option<String>,
    /// The numbers of the earlier turns whose exchanges the prompt held, oldest first.
    pub history: Vec<u32>,
    /// Of the audio ASR was given, milliseconds concealed.
    pub concealed_ms: u32,
}

enum Op {
    Frame {
        timestamp: u32,
        payload: Bytes,
        arrival: std::time::Duration,
    },
    Artifact(Piece),
    /// Something the record will not hold whole.
    Missing(Missing),
    Finish(Box<Outcome>),
}

/// An artifact to store: name, bytes, content type.
struct Piece {
    name: String,
    bytes: Bytes,
    content_type: String,
}

/// A turn's record in the making. See the module docs.
pub struct TurnRecord {
    tx: mpsc::UnboundedSender<Op>,
    audio: bool,
    images: bool,
    bodies: bool,
    /// Where the turn's spans are kept until they go into the record.
    spans: Option<(TurnSpans, TurnId, SessionId)>,
}

impl TurnRecord {
    /// Starts the record of a turn that just opened; its task runs in `tasks` (shutdown
    /// waits for it).
    pub fn start(
        recorder: &Arc<Recorder>,
        tasks: &tokio_util::task::TaskTracker,
        session_id: SessionId,
        info: &TurnInfo,
        started: SystemTime,
        user: User<'_>,
        spans: Option<&TurnSpans>,
    ) -> Self {
        if let Some(spans) = spans {
            spans.watch(info.id, session_id);
        }
        recorder.set_live(format!("{}/{session_id}", info.id), true);
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            recorder: Arc::clone(recorder),
            session_id,
            opened: info.clone(),
            started,
            claims: user.claims.to_vec(),
            subject: user.subject,
            artifacts: Vec::new(),
            missing: Vec::new(),
            segments: Vec::new(),
        };
        tasks.spawn(writer.run(rx));
        let settings = &recorder.settings;
        Self {
            tx,
            audio: settings.audio,
            images: settings.images,
            bodies: settings.backend_bodies,
            spans: spans.map(|s| (s.clone(), info.id, session_id)),
        }
    }

    /// Whether the bodies of call `label` are kept: `record.backend_bodies`, and for a
    /// call that `carries_images`, `record.images` too (its body holds them). Bodies
    /// not kept for want of `record.images` are listed as missing (`disabled`).
    pub fn keeps_bodies_of(&self, label: &str, carries_images: bool) -> bool {
        if carries_images && !self.images && self.bodies {
            let _ = self.tx.send(Op::Missing(Missing {
                name: format!("backends/{label}.*"),
                reason: "disabled".into(),
            }));
            return false;
        }
        self.bodies
    }

    /// A backend call's exchanges, under `backends/{label}.{attempt}.`: the request
    /// body (`request.json`), and the answer as received (`response.json`,
    /// `response.sse` for a stream, `response.txt` for anything else), if one came.
    pub fn exchanges(&self, label: &str, exchanges: Vec<Exchange>) {
        for e in exchanges {
            let name = |part: &str| format!("backends/{label}.{}.{part}", e.attempt);
            self.artifact(name("request.json"), e.request, &e.request_type);
            if e.status.is_none() {
                continue;
            }
            let kind = e.response_type.split(';').next().unwrap_or("").trim();
            let ext = match kind {
                "text/event-stream" => "sse",
                "application/json" => "json",
                _ => "txt",
            };
            let response = name(&format!("response.{ext}"));
            if e.truncated {
                let _ = self.tx.send(Op::Missing(Missing {
                    name: response.clone(),
                    reason: "over_limit".into(),
                }));
            }
            self.artifact(response, Bytes::from(e.response), &e.response_type);
        }
    }

    /// A frame of the turn: its RTP timestamp, its payload as received, and when it
    /// arrived (session time).
    pub fn frame(&self, timestamp: u32, payload: &Bytes, arrival: std::time::Duration) {
        if self.audio {
            let _ = self.tx.send(Op::Frame {
                timestamp,
                payload: payload.clone(),
                arrival,
            });
        }
    }

    /// An image of the turn, as uploaded.
    pub fn image(&self, blob: &Blob) {
        if self.images {
            self.artifact(
                layout::name::image(&blob.blob_id.to_string(), &blob.mime),
                blob.bytes.clone(),
                &blob.mime,
            );
        }
    }

    /// The WAV ASR was sent, byte for byte.
    pub fn asr_audio(&self, wav: Bytes) {
        if self.audio {
            self.artifact(layout::name::AUDIO_ASR.to_owned(), wav, "audio/wav");
        }
    }

    fn artifact(&self, name: String, bytes: Bytes, content_type: &str) {
        let _ = self.tx.send(Op::Artifact(Piece {
            name,
            bytes,
            content_type: content_type.to_owned(),
        }));
    }

    /// The turn completed: its record gets its manifest.
    pub fn finish(mut self, outcome: Outcome) {
        self.spans_now();
        let _ = self.tx.send(Op::Finish(Box::new(outcome)));
    }

    /// The turn's spans that ended, as `spans.otlp.json` (OTLP/JSON); they are no
    /// longer watched.
    fn spans_now(&mut self) {
        if let Some((spans, turn, session)) = self.spans.take()
            && let Some(taken) = spans.take(turn, session)
        {
            if taken.dropped > 0 {
                let _ = self.tx.send(Op::Missing(Missing {
                    name: layout::name::SPANS.to_owned(),
                    reason: "over_limit".into(),
                }));
            }
            self.artifact(
                layout::name::SPANS.to_owned(),
                Bytes::from(taken.json),
                "application/json",
            );
        }
    }
}

impl Drop for TurnRecord {
    /// A turn that never completed still gets the spans it has.
    fn drop(&mut self) {
        self.spans_now();
    }
}

/// The task writing one turn's record.
struct Writer {
    recorder: Arc<Recorder>,
    session_id: SessionId,
    opened: TurnInfo,
    /// Wall time of the turn's start (offsets count from it).
    started: SystemTime,
    claims: Vec<(String, String)>,
    subject: Option<String>,
    artifacts: Vec<Artifact>,
    missing: Vec<Missing>,
    /// The audio segments stored so far, in order (joined at the end).
    segments: Vec<Bytes>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op>) {
        let id = self.opened.id;
        let marker = layout::marker(self.recorder.node_id(), id, self.session_id);
        let marker_body = Marker {
            session_id: self.session_id.to_string(),
            turn_id: id.to_string(),
            node_id: self.recorder.node_id().to_owned(),
            number: self.opened.number,
            cause: snake(&self.opened.cause),
            root_span_id: self.opened.root_span_id.to_string(),
            subject: self.subject.clone(),
            started: humantime::format_rfc3339_millis(self.started).to_string(),
        };
        let marker_bytes = Bytes::from(serde_json::to_vec(&marker_body).unwrap_or_default());
        let marked = self
            .recorder
            .store_or_spool(&marker, marker_bytes, true)
            .await
            != Stored::Dropped;
        self.recorder
            .index(super::spool::Index {
                turn: id,
                session: self.session_id,
            })
            .await;
        // The session's list of its turns by number (a page of them without reading
        // every manifest).
        let number = layout::number(self.session_id, self.opened.number, id);
        self.recorder
            .store_or_spool(&number, Bytes::new(), true)
            .await;

        let comments = vec![
            format!("TURNGATE_TURN_ID={id}"),
            format!("TURNGATE_SESSION_ID={}", self.session_id),
        ];
        let serial = u32::from_be_bytes(id.to_bytes()[..4].try_into().unwrap_or_default());
        let mut ogg = OggOpus::new(serial, comments);
        let mut flush = tokio::time::interval(self.recorder.settings.segment());
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        flush.tick().await;
        let outcome = loop {
            tokio::select! {
                op = rx.recv() => match op {
                    Some(Op::Frame { timestamp, payload, arrival }) => {
                        ogg.push(timestamp, arrival, &payload)
                    }
                    Some(Op::Artifact(piece)) => self.store(piece).await,
                    Some(Op::Missing(missing)) => self.missing.push(missing),
                    Some(Op::Finish(outcome)) => break Some(outcome),
                    None => break None,
                },
                _ = flush.tick() => {
                    let segment = ogg.flush();
                    self.segment(segment).await;
                }
            }
        };
        let last = ogg.finish();
        self.segment(last).await;
        let recorded = ogg.received() > 0;
        if recorded {
            let joined: Vec<u8> = self.segments.concat();
            self.store(Piece {
                name: layout::name::AUDIO_RECEIVED.to_owned(),
                bytes: Bytes::from(joined),
                content_type: "audio/ogg".into(),
            })
            .await;
        }
        let counters = Counters {
            frames: 0,
            packets_recorded: ogg.received() as u32,
            concealment_packets: ogg.concealment_packets() as u32,
            audio_ms: (ogg.granule() * 1000 / u64::from(GRANULE_RATE)) as u32,
            concealed_ms: 0,
            images: 0,
            late_packets: ogg.late() as u32,
        };
        let manifest = self.manifest(outcome.as_deref(), counters);
        let wrote = self.write_manifest(&manifest).await;
        if wrote && marked {
            self.recorder.delete_after_spool(&marker).await;
        }
        self.recorder
            .set_live(format!("{id}/{}", self.session_id), false);
    }

    async fn segment(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let bytes = Bytes::from(bytes);
        self.segments.push(bytes.clone());
        self.store(Piece {
            name: layout::name::segment(self.segments.len() as u32 - 1),
            bytes,
            content_type: "audio/ogg".into(),
        })
        .await;
    }

    async fn store(&mut self, piece: Piece) {
        let key = self.key(&piece.name);
        let entry = Artifact::of(
            &piece.name,
            &piece.bytes,
            &piece.content_type,
            self.offset_ms(SystemTime::now()),
        );
        match self.recorder.store_or_spool(&key, piece.bytes, false).await {
            Stored::Written | Stored::Spooled => self.artifacts.push(entry),
            Stored::Dropped => self.missing(piece.name, "store_failed"),
        }
    }

    async fn write_manifest(&self, manifest: &Manifest) -> bool {
        let key = self.key(layout::name::MANIFEST);
        let Ok(body) = serde_json::to_vec_pretty(manifest) else {
            return false;
        };
        if manifest.record_state == RecordState::Incomplete {
            self.recorder
                .stats
                .incomplete
                .fetch_add(1, Ordering::Relaxed);
        }
        let stored = self
            .recorder
            .store_or_spool(&key, Bytes::from(body), true)
            .await;
        if stored == Stored::Dropped {
            tracing::error!(turn = %self.opened.id, session = %self.session_id, "Turn record: the store refuses it and the spool is full; this turn's manifest is lost.");
        }
        stored != Stored::Dropped
    }

    fn missing(&mut self, name: String, reason: &str) {
        self.missing.push(Missing {
            name,
            reason: reason.to_owned(),
        });
    }

    fn key(&self, name: &str) -> object_store::path::Path {
        layout::artifact(self.session_id, self.opened.id, name)
    }

    fn offset_ms(&self, at: SystemTime) -> u32 {
        at.duration_since(self.started)
            .map_or(0, |d| d.as_millis().min(u128::from(u32::MAX)) as u32)
    }

    fn manifest(&mut self, outcome: Option<&Outcome>, mut counters: Counters) -> Manifest {
        let (audio, images) = (self.recorder.settings.audio, self.recorder.settings.images);
        if !audio {
            self.missing(layout::name::AUDIO_RECEIVED.into(), "disabled");
            self.missing(layout::name::AUDIO_ASR.into(), "disabled");
        }
        if !images {
            self.missing("images/*".into(), "disabled");
        }
        if !self.recorder.settings.backend_bodies {
            self.missing("backends/*".into(), "disabled");
        }
        if outcome.is_none() {
            // Its owner went before processing finished (the session task stopped).
            self.missing("outcome".into(), "not_completed");
        }
        let info = outcome.map_or(&self.opened, |o| &o.info);
        counters.frames = info.frames;
        counters.images = info.uploads_tagged;
        let session_start = self.started - info.started_at;
        let moment = |at: std::time::Duration| {
            let wall = session_start + at;
            Moment {
                at: humantime::format_rfc3339_millis(wall).to_string(),
                offset_ms: self.offset_ms(wall),
            }
        };
        let mut timings = Timings {
            started: moment(info.started_at),
            speech_started: info.speech_started_at.map(moment),
            speech_ended: info.speech_ended_at.map(moment),
            input_ended: info.ended_at.map(moment),
            processing_started: info.processing_started_at.map(moment),
            completed: info.completed_at.map(moment),
            stages_ms: Default::default(),
        };
        let mut stages = std::collections::BTreeMap::new();
        if let Some(o) = outcome {
            counters.concealed_ms = o.concealed_ms;
            timings.stages_ms = o
                .stages_ms
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect();
            stages = [
                ("asr", o.stages.asr),
                ("vision", o.stages.vision),
                ("llm", o.stages.llm),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), snake(&v)))
            .collect();
        }
        Manifest {
            format: manifest::FORMAT.into(),
            turn_id: info.id.to_string(),
            session_id: self.session_id.to_string(),
            node_id: self.recorder.node_id().to_owned(),
            trace_id: info.id.to_string(),
            root_span_id: info.root_span_id.to_string(),
            number: info.number,
            cause: snake(&info.cause),
            reason: info.reason.as_ref().map(snake),
            chain: Chain {
                continues: info.continues.map(|t| t.to_string()),
                successor: info.successor.map(|t| t.to_string()),
            },
            status: outcome.map(|o| snake(&o.status)),
            stages,
            record_state: if self.missing.iter().any(|m| m.reason != "disabled") {
                RecordState::Incomplete
            } else {
                RecordState::Complete
            },
            missing: self.missing.clone(),
            timings,
            counters,
            artifacts: self.artifacts.clone(),
            transcript: outcome.and_then(|o| o.transcript.clone()),
            descriptions: outcome
                .map(|o| {
                    o.descriptions
                        .iter()
                        .map(|(blob_id, description)| Description {
                            blob_id: blob_id.clone(),
                            description: description.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            answer: outcome.and_then(|o| o.answer.clone()),
            history: outcome.map(|o| o.history.clone()).unwrap_or_default(),
            config: self.recorder.shape.clone(),
            claims: self.claims.iter().cloned().collect(),
            subject: self.subject.clone(),
        }
    }
}
