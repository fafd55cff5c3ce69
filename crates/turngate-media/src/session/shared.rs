//! [`SessionShared`]: a session's handle for the API and for turn processing — its
//! counters and turns, HTTP uploads, the way back to the client for a turn's results
//! and report, and closing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use turngate_core::{Error, ErrorCode, ServerEvent, SessionId, TurnId, TurnInfo};

use super::{
    BlobRecord, Finished, SessionCounters, SessionEnd, ToClient, TurnReport, UploadRequest,
};

/// Bytes a recorded turn is estimated to hold: its [`TurnInfo`] and a slot in the list.
pub const RETAINED_PER_TURN: usize = std::mem::size_of::<TurnInfo>() + 64;

/// State shared between a session's tasks and the API.
pub struct SessionShared {
    /// The session id.
    pub id: SessionId,
    /// Wall-clock start.
    pub started: SystemTime,
    /// Counters.
    pub counters: SessionCounters,
    /// The session clock's origin: inputs are stamped with the time since.
    pub(super) clock: Instant,
    pub(super) turns: Mutex<Vec<TurnInfo>>,
    /// What processing made of each completed turn (see [`TurnReport::details`]).
    pub(super) results: Mutex<HashMap<TurnId, serde_json::Value>>,
    /// The accepted images, by turn.
    pub(super) blobs: Mutex<HashMap<TurnId, Vec<BlobRecord>>>,
    /// An estimate of the bytes `turns`, `results` and `blobs` hold.
    pub(super) retained: AtomicU64,
    pub(super) uploads: mpsc::Sender<UploadRequest>,
    pub(super) to_client: mpsc::Sender<ToClient>,
    pub(super) ended: watch::Sender<Option<(SystemTime, SessionEnd)>>,
    pub(super) data_channel: AtomicBool,
    /// Whether the peer has connected (ICE and DTLS).
    pub(super) connected: watch::Sender<bool>,
    /// Why and when (session clock) the session was asked to end.
    pub(super) close: watch::Sender<Option<(SessionEnd, Duration)>>,
}

impl SessionShared {
    /// The session's turns so far.
    pub fn turns(&self) -> Vec<TurnInfo> {
        self.turns.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Up to `limit` of the session's turns numbered above `after`, in order, and how
    /// many turns it has in all. Copies only the page.
    pub fn turns_page(&self, after: u32, limit: usize) -> (Vec<TurnInfo>, usize) {
        let Ok(turns) = self.turns.lock() else {
            return (Vec::new(), 0);
        };
        // Turns are recorded in the order they open, which is their numbers' order.
        let from = turns.partition_point(|t| t.number <= after);
        (
            turns[from..].iter().take(limit).cloned().collect(),
            turns.len(),
        )
    }

    /// An estimate of the bytes the session's turns, their results and its image
    /// records hold in memory (the images themselves are not kept): what retaining
    /// the session costs. Grows with each turn (see [`RETAINED_PER_TURN`]), result and
    /// image.
    pub fn retained_bytes(&self) -> u64 {
        self.retained.load(Ordering::Relaxed)
    }

    pub(super) fn retain(&self, bytes: usize) {
        self.retained.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// What processing made of a completed turn: the report's details, `response`
    /// (the answer as the client received it) and `completed` (its `turn.completed`).
    pub fn result(&self, turn: TurnId) -> Option<serde_json::Value> {
        self.results.lock().ok()?.get(&turn).cloned()
    }

    /// The images accepted so far for each of `turns` (a turn without any has none
    /// listed). Copies only theirs.
    pub fn blobs_of(&self, turns: &[TurnId]) -> HashMap<TurnId, Vec<BlobRecord>> {
        let Ok(blobs) = self.blobs.lock() else {
            return HashMap::new();
        };
        turns
            .iter()
            .filter_map(|t| Some((*t, blobs.get(t)?.clone())))
            .collect()
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

    /// Sends a result event of a turn (`transcript`, `vision.result`,
    /// `response.delta`, a turn's `error`) to the client, in order with the session's
    /// own events. It is dropped if its turn has been interrupted or completed by the
    /// time the session takes it, or if the session has ended.
    pub async fn send_result(&self, event: ServerEvent) {
        let _ = self.to_client.send(ToClient::Result(event)).await;
    }

    /// Reports that a turn's processing finished: the session sends its
    /// `response.done` (if `report.answer` is set and the turn was not interrupted) and
    /// its `turn.completed`, records the completion with the turn engine, and answers
    /// with the turn's status and what the client was sent of the answer. `None` if the
    /// session task is gone (only when the gateway stops).
    pub async fn finish_turn(&self, turn_id: TurnId, report: TurnReport) -> Option<Finished> {
        let (reply, answer) = oneshot::channel();
        let finish = ToClient::Finish {
            turn_id,
            report,
            reply,
        };
        self.to_client.send(finish).await.ok()?;
        answer.await.ok()
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

    /// The session clock now: the time since the session started, the clock its inputs
    /// are stamped with (`Tagged::at`).
    pub fn elapsed(&self) -> std::time::Duration {
        self.clock.elapsed()
    }

    /// When and why the session ended, if it has.
    pub fn ended(&self) -> Option<(SystemTime, SessionEnd)> {
        *self.ended.borrow()
    }

    /// Whether the client opened the `turngate` data channel.
    pub fn has_data_channel(&self) -> bool {
        self.data_channel.load(Ordering::Relaxed)
    }

    /// Asks the session to end. Idempotent; the first reason wins. Input received
    /// before now is still taken (see the module docs).
    pub fn close(&self, why: SessionEnd) {
        let at = self.clock.elapsed();
        self.close.send_if_modified(|current| {
            if current.is_none() {
                *current = Some((why, at));
                true
            } else {
                false
            }
        });
    }

    /// Waits until the peer has connected, or the session has ended without.
    pub async fn wait_connected(&self) {
        let mut connected = self.connected.subscribe();
        let mut ended = self.ended.subscribe();
        tokio::select! {
            _ = connected.wait_for(|c| *c) => {}
            _ = ended.wait_for(|e| e.is_some()) => {}
        }
    }

    /// Waits until the session has ended.
    pub async fn wait_ended(&self) {
        let mut rx = self.ended.subscribe();
        let _ = rx.wait_for(|e| e.is_some()).await;
    }
}

fn session_gone() -> Error {
    Error::refused(ErrorCode::NotFound, "the session has ended")
}
