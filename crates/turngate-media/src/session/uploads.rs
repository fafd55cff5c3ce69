//! Image uploads of a session: data-channel chunks and whole HTTP uploads, tagged by the
//! turn engine, validated off the runtime, then announced and handed downstream.
//!
//! Every upload the engine tagged is reported back to it exactly once (accepted or not),
//! so a turn's processing never starts while one of its uploads is still open.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use turngate_core::upload::{
    Aborted, ChunkOutcome, EndOutcome, Received, UploadBegin, check_declaration, parse_chunk,
};
use turngate_core::{Blob, BlobId, Error, ErrorCode, ServerEvent, Tagged, TurnId};

use super::{Downstream, Driver};
use crate::image::{ImageInfo, validate};

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
    /// Session time the upload began.
    #[serde(skip)]
    pub began_at: Duration,
}

/// A whole image uploaded over HTTP, on its way to the session task.
pub struct UploadRequest {
    pub(super) upload_id: Option<String>,
    pub(super) declared_mime: String,
    pub(super) turn_id: Option<TurnId>,
    pub(super) bytes: Bytes,
    pub(super) reply: oneshot::Sender<Result<ServerEvent, Error>>,
}

/// The result of validating one received upload.
pub(super) struct Validated {
    received: Received,
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
            Ok(EndOutcome::Received(received)) => self.spawn_validation(received, None),
            Ok(EndOutcome::Aborted(aborted)) => self.aborted(aborted).await,
            Err(error) => self.reject(upload_id, &error, 0).await,
        }
    }

    pub(super) async fn on_http_upload(&mut self, request: UploadRequest) {
        let UploadRequest {
            upload_id,
            declared_mime,
            turn_id,
            bytes,
            reply,
        } = request;
        self.http_uploads += 1;
        let upload_id = upload_id.unwrap_or_else(|| format!("http-{}", self.http_uploads));
        let begin = UploadBegin {
            upload_id: upload_id.clone(),
            mime: declared_mime,
            size: bytes.len() as u64,
            sha256: None,
            turn_id,
        };
        if let Err(error) = check_declaration(&begin, self.uploads.limits()) {
            self.count_rejected(&error, 0);
            let _ = reply.send(Err(error));
            return;
        }
        let at = self.now();
        let turn = match self.engine.handle_upload_started(at, begin.turn_id) {
            Ok(turn) => turn,
            Err(error) => {
                self.count_rejected(&error, 0);
                let _ = reply.send(Err(error));
                self.drain().await;
                return;
            }
        };
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        let received = Received {
            upload_id,
            declared_mime: begin.mime,
            turn_id: turn,
            began_at: at,
            bytes,
            sha256,
        };
        self.spawn_validation(received, Some(reply));
        self.drain().await;
    }

    pub(super) async fn on_validated(&mut self, validated: Validated) {
        self.validations -= 1;
        let Validated {
            received,
            result,
            reply,
        } = validated;
        self.finished(received.turn_id);
        match result {
            Ok(info) => {
                let event = self.accept(received, info).await;
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

    /// At session end: lets running validations finish (they are quick and bounded),
    /// then abandons the uploads still open, freeing their bytes.
    pub(super) async fn settle_uploads(&mut self) {
        while self.validations > 0 {
            match tokio::time::timeout(SETTLE_GRACE, self.validated.1.recv()).await {
                Ok(Some(validated)) => self.on_validated(validated).await,
                _ => break,
            }
        }
        for aborted in self.uploads.abandon_all() {
            self.finished(aborted.turn_id);
            self.count_rejected(&aborted.error, aborted.bytes_freed);
        }
        self.drain().await;
    }

    async fn accept(&mut self, received: Received, info: ImageInfo) -> ServerEvent {
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
            began_at: received.began_at,
        };
        if let Ok(mut blobs) = self.shared.blobs.lock() {
            blobs.push(record);
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
            at: received.began_at,
            value: blob,
        };
        self.send_downstream(Downstream::Blob(tagged)).await;
        event
    }

    fn spawn_validation(
        &mut self,
        received: Received,
        reply: Option<oneshot::Sender<Result<ServerEvent, Error>>>,
    ) {
        self.validations += 1;
        let permits = Arc::clone(&self.config.validators);
        let limits = self.config.images.clone();
        let done = self.validated.0.clone();
        tokio::spawn(async move {
            let bytes = received.bytes.clone();
            let result = match permits.acquire_owned().await {
                Ok(permit) => tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    validate(&bytes, &limits)
                })
                .await
                .unwrap_or_else(|_| {
                    Err(Error::refused(
                        ErrorCode::Internal,
                        "image validation failed",
                    ))
                }),
                Err(_) => Err(Error::refused(
                    ErrorCode::Internal,
                    "image validation is shut down",
                )),
            };
            let _ = done
                .send(Validated {
                    received,
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
        let counters = &self.shared.counters;
        counters
            .upload_bytes_freed
            .fetch_add(bytes_freed, Ordering::Relaxed);
        if let Ok(mut by_code) = counters.images_rejected.lock() {
            *by_code.entry(error.code().as_str()).or_default() += 1;
        }
    }
}

/// How long a closing session waits for one running validation.
const SETTLE_GRACE: Duration = Duration::from_secs(5);
