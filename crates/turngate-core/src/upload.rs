//! Image uploads over the data channel, reassembled sans-IO.
//!
//! An upload is `image.begin` (a client-chosen `upload_id`, the declared `mime` and
//! `size`, optionally its `sha256`), binary chunk messages, then `image.end`. A chunk
//! message is one byte L (1–64), the L bytes of the `upload_id`, then payload, so chunks
//! of concurrent uploads may interleave. [`Reassembler`] checks every step against the
//! declaration and the [`UploadLimits`], hashes as bytes arrive, and frees the bytes of
//! anything refused, timed out or abandoned — counting them.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorCode};
use crate::id::TurnId;

/// Longest `upload_id`, in bytes (it must fit the chunk header's length byte).
pub const MAX_UPLOAD_ID_BYTES: usize = 64;
/// Longest declared content type kept: RFC 6838 §4.2 allows 127 characters each for
/// type and subtype names, so `type/subtype` fits, with room for a short parameter.
pub const MAX_MIME_BYTES: usize = 255;
/// Recently aborted uploads whose late chunks are dropped quietly rather than each
/// answered with `unknown_upload`.
const REMEMBER_ABORTED: usize = 16;

/// Limits of one session's uploads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadLimits {
    /// Largest image, in bytes. Default 20 MiB.
    pub max_image_bytes: u64,
    /// Uploads open at once. Default 4.
    pub max_concurrent: usize,
    /// Declared bytes of all open uploads together. Default 64 MiB.
    pub max_in_flight_bytes: u64,
    /// Longest an upload may stay open. Default 30 s.
    pub timeout: Duration,
}

impl Default for UploadLimits {
    fn default() -> Self {
        Self {
            max_image_bytes: 20 * 1024 * 1024,
            max_concurrent: 4,
            max_in_flight_bytes: 64 * 1024 * 1024,
            timeout: Duration::from_secs(30),
        }
    }
}

/// What `image.begin` declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadBegin {
    /// Client-chosen id, 1–64 bytes, unique among the session's open uploads.
    pub upload_id: String,
    /// The declared content type.
    pub mime: String,
    /// The declared size in bytes.
    pub size: u64,
    /// The declared SHA-256 of the bytes.
    pub sha256: Option<[u8; 32]>,
    /// The turn the client names, if any.
    pub turn_id: Option<TurnId>,
}

/// A fully received upload whose size and hash match its declaration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The upload id.
    pub upload_id: String,
    /// The declared content type.
    pub declared_mime: String,
    /// The turn it is tagged with.
    pub turn_id: TurnId,
    /// The bytes.
    pub bytes: Bytes,
    /// Their SHA-256.
    pub sha256: [u8; 32],
    /// Session time its upload began.
    pub began_at: Duration,
}

/// An upload that ended without being received: refused mid-way, timed out or
/// abandoned. Its bytes are freed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aborted {
    /// The upload id.
    pub upload_id: String,
    /// The turn it was tagged with.
    pub turn_id: TurnId,
    /// Bytes received and now freed.
    pub bytes_freed: u64,
    /// Why.
    pub error: Error,
}

/// Outcome of `image.end` for an open upload.
#[derive(Debug, PartialEq, Eq)]
pub enum EndOutcome {
    /// Size and hash match: the bytes, ready for validation.
    Received(Received),
    /// Size or hash do not match; the upload is aborted.
    Aborted(Aborted),
}

/// Outcome of a binary chunk message.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Appended.
    Appended,
    /// A chunk for an upload aborted a moment ago; dropped without an answer.
    Dropped,
    /// The chunk broke the upload, which is aborted.
    Aborted(Aborted),
}

struct Open {
    declared_mime: String,
    size: u64,
    sha256: Option<[u8; 32]>,
    turn_id: TurnId,
    began_at: Duration,
    bytes: Vec<u8>,
    hasher: Sha256,
    /// Whether `size` is exact (data channel) or only an upper bound (HTTP bodies).
    exact: bool,
}

/// The open uploads of one session.
pub struct Reassembler {
    limits: UploadLimits,
    open: HashMap<String, Open>,
    /// Uploads received and being validated: their bytes are still held, so they still
    /// count against the limits until [`Reassembler::release`].
    validating: HashMap<String, u64>,
    in_flight: u64,
    aborted: VecDeque<String>,
}

impl Reassembler {
    /// No uploads yet.
    pub fn new(limits: UploadLimits) -> Self {
        Self {
            limits,
            open: HashMap::new(),
            validating: HashMap::new(),
            in_flight: 0,
            aborted: VecDeque::new(),
        }
    }

    /// Uploads open now, or received and not yet released.
    pub fn open_uploads(&self) -> usize {
        self.open.len() + self.validating.len()
    }

    /// Checks a declaration before anything is tagged. `http` uploads arrive whole and
    /// are not counted against the data channel's concurrency.
    pub fn check(&self, begin: &UploadBegin) -> Result<(), Error> {
        check_declaration(begin, &self.limits)?;
        if self.open.contains_key(&begin.upload_id)
            || self.validating.contains_key(&begin.upload_id)
        {
            return Err(Error::refused(
                ErrorCode::DuplicateUploadId,
                format!("upload {:?} is already open", begin.upload_id),
            ));
        }
        if self.open_uploads() >= self.limits.max_concurrent {
            return Err(Error::refused(
                ErrorCode::TooManyUploads,
                format!(
                    "at most {} uploads may be open at once",
                    self.limits.max_concurrent
                ),
            ));
        }
        if self.in_flight + begin.size > self.limits.max_in_flight_bytes {
            return Err(Error::refused(
                ErrorCode::UploadBudgetExceeded,
                format!(
                    "open uploads would exceed {} bytes in flight",
                    self.limits.max_in_flight_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Opens a checked upload of exactly `begin.size` bytes, tagged with `turn_id`.
    pub fn begin(
        &mut self,
        at: Duration,
        begin: UploadBegin,
        turn_id: TurnId,
    ) -> Result<(), Error> {
        self.open_upload(at, begin, turn_id, true)
    }

    /// Opens a checked upload of at most `begin.size` bytes (an HTTP body whose image
    /// size is known only once it has arrived), tagged with `turn_id`.
    pub fn begin_bounded(
        &mut self,
        at: Duration,
        begin: UploadBegin,
        turn_id: TurnId,
    ) -> Result<(), Error> {
        self.open_upload(at, begin, turn_id, false)
    }

    fn open_upload(
        &mut self,
        at: Duration,
        begin: UploadBegin,
        turn_id: TurnId,
        exact: bool,
    ) -> Result<(), Error> {
        self.check(&begin)?;
        self.in_flight += begin.size;
        self.aborted.retain(|id| *id != begin.upload_id);
        self.open.insert(
            begin.upload_id,
            Open {
                declared_mime: begin.mime,
                size: begin.size,
                sha256: begin.sha256,
                turn_id,
                began_at: at,
                bytes: Vec::new(),
                hasher: Sha256::new(),
                exact,
            },
        );
        Ok(())
    }

    /// Takes one binary message: `[L][upload_id: L bytes][payload]`.
    pub fn chunk(&mut self, message: &[u8]) -> Result<ChunkOutcome, Error> {
        let (upload_id, payload) = parse_chunk(message)?;
        let Some(open) = self.open.get_mut(upload_id) else {
            if self.aborted.iter().any(|id| id == upload_id) {
                return Ok(ChunkOutcome::Dropped);
            }
            return Err(Error::refused(
                ErrorCode::UnknownUpload,
                format!("no open upload {upload_id:?}"),
            ));
        };
        if open.bytes.len() as u64 + payload.len() as u64 > open.size {
            let error = Error::refused(
                ErrorCode::SizeExceeded,
                format!("more bytes than the declared {}", open.size),
            );
            let upload_id = upload_id.to_owned();
            return Ok(ChunkOutcome::Aborted(self.abort(&upload_id, error)));
        }
        open.hasher.update(payload);
        // Grow by doubling, but never past the declared size: memory stays within the
        // budget reserved at `image.begin`.
        let needed = open.bytes.len() + payload.len();
        if needed > open.bytes.capacity() {
            let target = (open.bytes.capacity() * 2)
                .max(needed)
                .min(open.size as usize);
            open.bytes.reserve_exact(target - open.bytes.len());
        }
        open.bytes.extend_from_slice(payload);
        Ok(ChunkOutcome::Appended)
    }

    /// `image.end`: the upload is complete if its size and hash match. An upload that
    /// is not open is an error (nothing changes).
    pub fn end(&mut self, upload_id: &str) -> Result<EndOutcome, Error> {
        let Some(open) = self.open.get(upload_id) else {
            return Err(Error::refused(
                ErrorCode::UnknownUpload,
                format!("image.end for {upload_id:?}, which is not open"),
            ));
        };
        let received = open.bytes.len() as u64;
        if received != open.size && (open.exact || received == 0) {
            let error = Error::refused(
                ErrorCode::SizeMismatch,
                format!("received {received} bytes of the declared {}", open.size),
            );
            return Ok(EndOutcome::Aborted(self.abort(upload_id, error)));
        }
        let sha256: [u8; 32] = open.hasher.clone().finalize().into();
        if open.sha256.is_some_and(|declared| declared != sha256) {
            let error = Error::refused(
                ErrorCode::Sha256Mismatch,
                format!(
                    "the bytes hash to {}, not to the declared sha256",
                    hex(&sha256)
                ),
            );
            return Ok(EndOutcome::Aborted(self.abort(upload_id, error)));
        }
        let open = self.open.remove(upload_id).expect("checked above");
        // Still held (and counted) while it is validated.
        self.validating.insert(upload_id.to_owned(), open.size);
        Ok(EndOutcome::Received(Received {
            upload_id: upload_id.to_owned(),
            declared_mime: open.declared_mime,
            turn_id: open.turn_id,
            bytes: Bytes::from(open.bytes),
            sha256,
            began_at: open.began_at,
        }))
    }

    /// Completes a bounded (HTTP) upload with its whole body, hashed by the caller off
    /// the session task. An upload that is no longer open has timed out.
    pub fn complete_whole(
        &mut self,
        upload_id: &str,
        declared_mime: String,
        bytes: Bytes,
        sha256: [u8; 32],
    ) -> Result<EndOutcome, Error> {
        let Some(open) = self.open.get(upload_id) else {
            return Err(Error::refused(
                ErrorCode::UploadTimeout,
                format!("upload {upload_id:?} timed out before its body arrived"),
            ));
        };
        if let Err(error) = check_mime(&declared_mime) {
            return Ok(EndOutcome::Aborted(self.abort(upload_id, error)));
        }
        let len = bytes.len() as u64;
        if len == 0 || len > open.size {
            let error = if len == 0 {
                Error::refused(ErrorCode::SizeRequired, "the body holds no image")
            } else {
                Error::refused(
                    ErrorCode::SizeExceeded,
                    format!("{len} bytes, more than the {} announced", open.size),
                )
            };
            return Ok(EndOutcome::Aborted(self.abort(upload_id, error)));
        }
        let open = self.open.remove(upload_id).expect("checked above");
        self.validating.insert(upload_id.to_owned(), open.size);
        Ok(EndOutcome::Received(Received {
            upload_id: upload_id.to_owned(),
            declared_mime,
            turn_id: open.turn_id,
            bytes,
            sha256,
            began_at: open.began_at,
        }))
    }

    /// A received upload's validation is over: its bytes no longer count.
    pub fn release(&mut self, upload_id: &str) {
        if let Some(size) = self.validating.remove(upload_id) {
            self.in_flight -= size;
        }
    }

    /// Aborts an open upload (its HTTP body could not be read). `None` if not open.
    pub fn abort_open(&mut self, upload_id: &str, error: Error) -> Option<Aborted> {
        self.open
            .contains_key(upload_id)
            .then(|| self.abort(upload_id, error))
    }

    /// When the oldest open upload times out, if any is open.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.open
            .values()
            .map(|o| o.began_at + self.limits.timeout)
            .min()
    }

    /// Aborts the uploads that have been open longer than the timeout.
    pub fn expire(&mut self, now: Duration) -> Vec<Aborted> {
        let expired: Vec<String> = self
            .open
            .iter()
            .filter(|(_, o)| o.began_at + self.limits.timeout <= now)
            .map(|(id, _)| id.clone())
            .collect();
        expired
            .into_iter()
            .map(|id| {
                let error = Error::refused(
                    ErrorCode::UploadTimeout,
                    format!("not completed within {} s", self.limits.timeout.as_secs()),
                );
                self.abort(&id, error)
            })
            .collect()
    }

    /// Aborts every open upload (the session is closing).
    pub fn abandon_all(&mut self) -> Vec<Aborted> {
        let ids: Vec<String> = self.open.keys().cloned().collect();
        let validating: u64 = self.validating.drain().map(|(_, size)| size).sum();
        self.in_flight -= validating;
        ids.into_iter()
            .map(|id| {
                let error = Error::refused(ErrorCode::UploadAbandoned, "the session closed");
                self.abort(&id, error)
            })
            .collect()
    }

    fn abort(&mut self, upload_id: &str, error: Error) -> Aborted {
        let open = self
            .open
            .remove(upload_id)
            .expect("callers check the upload is open");
        self.in_flight -= open.size;
        self.remember_aborted(upload_id);
        Aborted {
            upload_id: upload_id.to_owned(),
            turn_id: open.turn_id,
            bytes_freed: open.bytes.len() as u64,
            error,
        }
    }

    fn remember_aborted(&mut self, upload_id: &str) {
        if self.aborted.len() >= REMEMBER_ABORTED {
            self.aborted.pop_front();
        }
        self.aborted.push_back(upload_id.to_owned());
    }
}

/// Checks what a declaration says on its own (id, size).
fn check_declaration(begin: &UploadBegin, limits: &UploadLimits) -> Result<(), Error> {
    let id_len = begin.upload_id.len();
    if id_len == 0 || id_len > MAX_UPLOAD_ID_BYTES {
        return Err(Error::refused(
            ErrorCode::MalformedMessage,
            format!("upload_id must be 1–{MAX_UPLOAD_ID_BYTES} bytes, not {id_len}"),
        ));
    }
    check_mime(&begin.mime)?;
    if begin.size == 0 {
        return Err(Error::refused(
            ErrorCode::SizeRequired,
            "size must be the image's size in bytes, at least 1",
        ));
    }
    if begin.size > limits.max_image_bytes {
        return Err(Error::refused(
            ErrorCode::ImageTooLarge,
            format!(
                "{} bytes is over the limit of {} bytes",
                begin.size, limits.max_image_bytes
            ),
        ));
    }
    Ok(())
}

/// A declared content type longer than [`MAX_MIME_BYTES`] is refused
/// `unsupported_media_type`: it is kept with the image and echoed to the client.
fn check_mime(mime: &str) -> Result<(), Error> {
    if mime.len() > MAX_MIME_BYTES {
        return Err(Error::refused(
            ErrorCode::UnsupportedMediaType,
            format!(
                "the declared content type is {} bytes, over the limit of {MAX_MIME_BYTES}",
                mime.len()
            ),
        ));
    }
    Ok(())
}

/// Splits a chunk message into its upload id and payload.
pub fn parse_chunk(message: &[u8]) -> Result<(&str, &[u8]), Error> {
    let malformed = |why: &str| Error::refused(ErrorCode::MalformedMessage, why.to_owned());
    let (&len, rest) = message
        .split_first()
        .ok_or_else(|| malformed("an empty binary message"))?;
    let len = len as usize;
    if len == 0 || len > MAX_UPLOAD_ID_BYTES || rest.len() < len {
        return Err(malformed(
            "a chunk starts with one byte L (1–64), then the L bytes of the upload_id, then payload",
        ));
    }
    let (id, payload) = rest.split_at(len);
    let id =
        std::str::from_utf8(id).map_err(|_| malformed("the chunk's upload_id is not UTF-8"))?;
    Ok((id, payload))
}

/// Frames a chunk: the inverse of [`parse_chunk`].
pub fn frame_chunk(upload_id: &str, payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(1 + upload_id.len() + payload.len());
    message.push(upload_id.len() as u8);
    message.extend_from_slice(upload_id.as_bytes());
    message.extend_from_slice(payload);
    message
}

/// The SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 lowercase hex characters into a SHA-256.
pub fn parse_sha256(s: &str) -> Result<[u8; 32], Error> {
    crate::id::parse_hex::<32>(s).map_err(|_| {
        Error::refused(
            ErrorCode::MalformedMessage,
            "sha256 must be 64 lowercase hex characters",
        )
    })
}
