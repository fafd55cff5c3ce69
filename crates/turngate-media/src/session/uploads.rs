//! Image uploads of a session: data-channel chunks and whole HTTP uploads, tagged by the
//! turn engine, validated off the runtime, then announced and handed downstream.
//!
//! Every upload the engine tagged is reported back to it exactly once (accepted or not),
//! so a turn's processing never starts while one of its uploads is still open.
//!
//! Bounds: an upload that has arrived whole takes its size from its session's share and
//! from the gateway-wide [`ImageBudget`], and keeps it, once accepted, until its turn's
//! processing ends (bytes still arriving count against the session's in-flight limit); a session
//! validates one image at a time, waiting at most `validation_wait` for its turn and a
//! free validator; a validation is abandoned at the decode time limit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use turngate_core::upload::{
    Aborted, ChunkOutcome, EndOutcome, Received, UploadBegin, parse_chunk,
};
use turngate_core::{Blob, BlobId, Error, ErrorCode, ServerEvent, Tagged, TurnId};

use super::{Downstream, Driver};
use crate::image::{ImageInfo, decode_timeout, validate};

/// The gateway-wide budget of image bytes held by uploads and by turns not yet
/// processed, in KiB permits of a semaphore. Cloning shares it.
#[derive(Clone, Debug)]
pub struct ImageBudget {
    permits: Arc<Semaphore>,
    kib: usize,
}

impl ImageBudget {
    /// A budget of `bytes` (rounded down to KiB, at least 1 KiB).
    pub fn new(bytes: u64) -> Self {
        let kib = ((bytes / 1024) as usize).clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(kib)),
            kib,
        }
    }

    /// Bytes held now.
    pub fn held_bytes(&self) -> u64 {
        (self.kib - self.permits.available_permits()) as u64 * 1024
    }

    /// Reserves `bytes` in `session`'s share (KiB permits; full: `upload_budget_exceeded`)
    /// and in the budget (full: `overloaded`), refusing at once if either cannot hold
    /// them.
    fn reserve(&self, bytes: u64, session: &Arc<Semaphore>) -> Result<HeldImage, Error> {
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        let mine = Arc::clone(session)
            .try_acquire_many_owned(kib)
            .map_err(|_| {
                Error::refused(
                    ErrorCode::UploadBudgetExceeded,
                    "this session's images waiting for their turn's processing would exceed its share (uploads.max_in_flight_bytes)",
                )
            })?;
        let all = Arc::clone(&self.permits)
            .try_acquire_many_owned(kib)
            .map_err(|_| {
                Error::refused(
                    ErrorCode::Overloaded,
                    format!(
                        "the gateway holds its budget of {} MiB of images waiting for processing; try again shortly",
                        self.kib >> 10
                    ),
                )
            })?;
        Ok(HeldImage {
            _session: mine,
            _gateway: all,
        })
    }
}

/// An image's place in the [`ImageBudget`], given back when dropped.
#[derive(Debug)]
pub struct HeldImage {
    _session: OwnedSemaphorePermit,
    _gateway: OwnedSemaphorePermit,
}

/// An accepted image, as the session API lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BlobRecord {
    /// The turn it belongs to.
    pub turn_id: TurnId,
    /// SHA-256 of the bytes.
    pub blob_id: BlobId,
    /// The client's upload id.
    pub upload_id: String,
    /// The sniffed format.
    pub mime: &'static str,
    /// What the client declared.
    pub declared_mime: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Size in bytes.
    pub bytes: u64,
}

/// How long past the decode time limit the session waits for a validation that does
/// not stop by itself (the decoder checks the time as it reads; this covers one that
/// reads all its input first).
const DECODE_SLACK: Duration = Duration::from_millis(100);

/// An HTTP upload's steps, on their way to the session task. It is tagged when its
/// request arrives (`Begin`, before the body is read), so it belongs to the turn open
/// then, and it counts against the session's upload limits from then on.
pub enum UploadRequest {
    /// Reserve `size` bytes (the request's `Content-Length`) and tag the upload.
    Begin {
        /// The client's upload id, or `None` for a generated one.
        upload_id: Option<String>,
        /// The declared content type.
        mime: String,
        /// Upper bound of the image's size.
        size: u64,
        /// The turn the client names.
        turn_id: Option<TurnId>,
        /// The upload id, or why it is refused.
        reply: oneshot::Sender<Result<String, Error>>,
    },
    /// The body arrived: validate it.
    Complete {
        /// The upload id `Begin` answered.
        upload_id: String,
        /// The declared content type (a multipart part's may differ from the request's).
        mime: String,
        /// The image.
        bytes: Bytes,
        /// Its SHA-256, computed off the session task.
        sha256: [u8; 32],
        /// The `image.accepted` event, or why it is refused.
        reply: oneshot::Sender<Result<ServerEvent, Error>>,
    },
    /// The body could not be read, or was refused before validation.
    Abort {
        /// The upload id `Begin` answered.
        upload_id: String,
        /// Why.
        error: Error,
    },
}

/// The result of validating one received upload.
pub(super) struct Validated {
    received: Received,
    /// Its place in the image budget, carried through validation.
    held: HeldImage,
    result: Result<ImageInfo, Error>,
    reply: Option<oneshot::Sender<Result<ServerEvent, Error>>>,
}

impl Driver {
    pub(super) async fn on_image_begin(&mut self, begin: UploadBegin) {
        let upload_id = begin.upload_id.clone();
        if let Err(error) = self.uploads.check(&begin) {
            return self.reject(&upload_id, &error, 0).await;
        }
        let at = self.now();
        match self.engine.handle_upload_started(at, begin.turn_id) {
            Ok(turn) => {
                // Checked above, nothing changed since: this cannot fail.
                if let Err(error) = self.uploads.begin(at, begin, turn) {
                    self.finished(turn);
                    self.reject(&upload_id, &error, 0).await;
                }
            }
            Err(error) => self.reject(&upload_id, &error, 0).await,
        }
    }

    pub(super) async fn on_chunk(&mut self, message: &[u8]) {
        match self.uploads.chunk(message) {
            Ok(ChunkOutcome::Appended | ChunkOutcome::Dropped) => {}
            Ok(ChunkOutcome::Aborted(aborted)) => self.aborted(aborted).await,
            Err(error) => match parse_chunk(message) {
                Ok((upload_id, _)) => {
                    let upload_id = upload_id.to_owned();
                    self.reject(&upload_id, &error, 0).await;
                }
                Err(_) => self.refuse(&error, None).await,
            },
        }
        self.drain().await;
    }

    pub(super) async fn on_image_end(&mut self, upload_id: &str) {
        match self.uploads.end(upload_id) {
            Ok(EndOutcome::Received(received)) => self.received(received, None).await,
            Ok(EndOutcome::Aborted(aborted)) => self.aborted(aborted).await,
            Err(error) => self.reject(upload_id, &error, 0).await,
        }
    }

    pub(super) async fn on_http_upload(&mut self, request: UploadRequest) {
        match request {
            UploadRequest::Begin {
                upload_id,
                mime,
                size,
                turn_id,
                reply,
            } => {
                self.http_uploads += 1;
                let upload_id = upload_id.unwrap_or_else(|| format!("http-{}", self.http_uploads));
                let begin = UploadBegin {
                    upload_id: upload_id.clone(),
                    mime,
                    size,
                    sha256: None,
                    turn_id,
                };
                let result = match self.uploads.check(&begin) {
                    Ok(()) => self.engine.handle_upload_started(self.now(), turn_id),
                    Err(error) => Err(error),
                };
                let result = result.and_then(|turn| {
                    let began = self.uploads.begin_bounded(self.now(), begin, turn);
                    if began.is_err() {
                        self.finished(turn);
                    }
                    began.map(|()| upload_id)
                });
                if let Err(error) = &result {
                    self.count_rejected(error, 0);
                }
                let _ = reply.send(result);
            }
            UploadRequest::Complete {
                upload_id,
                mime,
                bytes,
                sha256,
                reply,
            } => match self.uploads.complete_whole(&upload_id, mime, bytes, sha256) {
                Ok(EndOutcome::Received(received)) => self.received(received, Some(reply)).await,
                Ok(EndOutcome::Aborted(aborted)) => {
                    self.finished(aborted.turn_id);
                    self.count_rejected(&aborted.error, aborted.bytes_freed);
                    let _ = reply.send(Err(aborted.error));
                }
                Err(error) => {
                    self.count_rejected(&error, 0);
                    let _ = reply.send(Err(error));
                }
            },
            UploadRequest::Abort { upload_id, error } => {
                if let Some(aborted) = self.uploads.abort_open(&upload_id, error) {
                    self.finished(aborted.turn_id);
                    self.count_rejected(&aborted.error, aborted.bytes_freed);
                }
            }
        }
        self.drain().await;
    }

    pub(super) async fn on_validated(&mut self, validated: Validated) {
        let Validated {
            received,
            held,
            result,
            reply,
        } = validated;
        if self.validating.remove(&received.upload_id).is_none() {
            // Abandoned when the session closed; already counted.
            return;
        }
        self.uploads.release(&received.upload_id);
        self.finished(received.turn_id);
        match result {
            Ok(info) => {
                let event = self.accept(received, info, held).await;
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(event));
                }
            }
            Err(error) => {
                let freed = received.bytes.len() as u64;
                match reply {
                    // The HTTP client gets the problem; the data channel hears nothing.
                    Some(reply) => {
                        self.count_rejected(&error, freed);
                        let _ = reply.send(Err(error));
                    }
                    None => self.reject(&received.upload_id, &error, freed).await,
                }
            }
        }
        self.drain().await;
    }

    pub(super) async fn expire_uploads(&mut self, at: Duration) {
        for aborted in self.uploads.expire(at) {
            self.aborted(aborted).await;
        }
    }

    /// At session end: abandons the uploads still open or being validated (their bytes
    /// are freed and counted; a validation that finishes later is ignored), so their
    /// turns' processing can start.
    pub(super) async fn settle_uploads(&mut self) {
        for (upload_id, (turn, bytes)) in std::mem::take(&mut self.validating) {
            tracing::debug!(session = %self.shared.id, upload_id, "Validation abandoned: the session closed.");
            self.finished(turn);
            self.count_rejected(
                &Error::refused(ErrorCode::UploadAbandoned, "the session closed"),
                bytes,
            );
        }
        for aborted in self.uploads.abandon_all() {
            self.finished(aborted.turn_id);
            self.count_rejected(&aborted.error, aborted.bytes_freed);
        }
        self.drain().await;
    }

    async fn accept(
        &mut self,
        received: Received,
        info: ImageInfo,
        held: HeldImage,
    ) -> ServerEvent {
        let counters = &self.shared.counters;
        counters.images_accepted.fetch_add(1, Ordering::Relaxed);
        counters
            .image_bytes_accepted
            .fetch_add(received.bytes.len() as u64, Ordering::Relaxed);
        let blob = Blob {
            blob_id: BlobId(received.sha256),
            upload_id: received.upload_id,
            mime: info.mime.to_owned(),
            declared_mime: received.declared_mime,
            width: info.width,
            height: info.height,
            bytes: received.bytes,
            began_at: received.began_at,
        };
        let record = BlobRecord {
            turn_id: received.turn_id,
            blob_id: blob.blob_id,
            upload_id: blob.upload_id.clone(),
            mime: info.mime,
            declared_mime: blob.declared_mime.clone(),
            width: info.width,
            height: info.height,
            bytes: blob.bytes.len() as u64,
        };
        self.retain(
            std::mem::size_of::<BlobRecord>() + record.upload_id.len() + record.declared_mime.len(),
        );
        if let Ok(mut blobs) = self.shared.blobs.lock() {
            blobs.entry(record.turn_id).or_default().push(record);
        }
        let event = ServerEvent::ImageAccepted {
            upload_id: blob.upload_id.clone(),
            blob_id: blob.blob_id,
            turn_id: received.turn_id,
            mime: blob.mime.clone(),
            declared_mime: blob.declared_mime.clone(),
            width: blob.width,
            height: blob.height,
            bytes: blob.bytes.len() as u32,
        };
        tracing::debug!(session = %self.shared.id, turn = %received.turn_id, blob = %blob.blob_id, "Image accepted.");
        self.send_event(event.clone()).await;
        let seq = self.blob_seq;
        self.blob_seq += 1;
        let tagged = Tagged {
            session_id: self.shared.id,
            turn_id: Some(received.turn_id),
            seq,
            at: self.now(),
            value: blob,
        };
        self.send_downstream(Downstream::Blob(tagged, held)).await;
        event
    }

    /// An upload has arrived whole: it takes its place in the session's share and the
    /// gateway's budget of held images, then is validated; or it is refused if either
    /// is full.
    async fn received(
        &mut self,
        received: Received,
        reply: Option<oneshot::Sender<Result<ServerEvent, Error>>>,
    ) {
        let size = received.bytes.len() as u64;
        match self.config.image_budget.reserve(size, &self.held_share) {
            Ok(held) => self.spawn_validation(received, held, reply),
            Err(error) => {
                self.uploads.release(&received.upload_id);
                self.finished(received.turn_id);
                match reply {
                    Some(reply) => {
                        self.count_rejected(&error, size);
                        let _ = reply.send(Err(error));
                    }
                    None => self.reject(&received.upload_id, &error, size).await,
                }
            }
        }
    }

    fn spawn_validation(
        &mut self,
        received: Received,
        held: HeldImage,
        reply: Option<oneshot::Sender<Result<ServerEvent, Error>>>,
    ) {
        self.validating.insert(
            received.upload_id.clone(),
            (received.turn_id, received.bytes.len() as u64),
        );
        let mine = Arc::clone(&self.validator_share);
        let validators = Arc::clone(&self.config.validators);
        let wait = self.config.validation_wait;
        let limits = self.config.images.clone();
        let done = self.validated.0.clone();
        tokio::spawn(async move {
            let bytes = received.bytes.clone();
            let permits = async {
                let mine = mine.acquire_owned().await.ok()?;
                let validator = validators.acquire_owned().await.ok()?;
                Some((mine, validator))
            };
            let result = match tokio::time::timeout(wait, permits).await {
                Ok(Some(permits)) => {
                    let limit = limits.decode_timeout;
                    // Both permits stay with the decoding thread: should it overrun the
                    // time limit (a decoder that reads all its input first), its session
                    // and its validator stay busy until it ends.
                    let decoding = tokio::task::spawn_blocking(move || {
                        let _permits = permits;
                        validate(&bytes, &limits)
                    });
                    match tokio::time::timeout(limit + DECODE_SLACK, decoding).await {
                        Ok(Ok(result)) => result,
                        Ok(Err(_)) => Err(Error::refused(
                            ErrorCode::Internal,
                            "image validation failed",
                        )),
                        Err(_) => Err(decode_timeout(limit)),
                    }
                }
                Ok(None) => Err(Error::refused(
                    ErrorCode::Internal,
                    "image validation is shut down",
                )),
                Err(_) => Err(Error::refused(
                    ErrorCode::Overloaded,
                    format!(
                        "no image validator came free within {} ms; try again shortly",
                        wait.as_millis()
                    ),
                )),
            };
            let _ = done
                .send(Validated {
                    received,
                    held,
                    result,
                    reply,
                })
                .await;
        });
    }

    async fn aborted(&mut self, aborted: Aborted) {
        self.finished(aborted.turn_id);
        self.reject(&aborted.upload_id, &aborted.error, aborted.bytes_freed)
            .await;
    }

    /// Tells the engine an upload of `turn` is over.
    fn finished(&mut self, turn: TurnId) {
        let at = self.now();
        if let Err(e) = self.engine.handle_upload_finished(at, turn) {
            tracing::warn!(session = %self.shared.id, turn = %turn, error = %e, "Upload finished for no pending upload.");
        }
    }

    async fn reject(&mut self, upload_id: &str, error: &Error, bytes_freed: u64) {
        self.count_rejected(error, bytes_freed);
        tracing::debug!(session = %self.shared.id, upload_id, code = %error.code(), %error, "Upload refused.");
        self.send_event(ServerEvent::rejected(upload_id, error))
            .await;
    }

    pub(super) fn count_rejected(&self, error: &Error, bytes_freed: u64) {
        self.shared.count_rejected(error, bytes_freed);
    }
}
