//! The crate's error type and the closed list of error codes that clients see.
//!
//! [`ErrorCode`] is the one list used by problem+json HTTP bodies and by data-channel
//! `error` events alike; `docs/errors.md` documents each code. A code never changes
//! meaning; new codes may be added.

use std::fmt;

/// A client-visible error code. Serialized as its snake_case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request body is not a parseable SDP offer.
    InvalidSdp,
    /// The SDP offer has no audio media section.
    NoAudio,
    /// The SDP offer's audio does not offer Opus.
    UnsupportedCodec,
    /// The request's `Content-Type` is not the one the endpoint takes.
    UnsupportedMediaType,
    /// The request body exceeds the configured cap.
    PayloadTooLarge,
    /// No such WHIP resource or session (or it has expired).
    NotFound,
    /// The endpoint exists but not with this HTTP method.
    MethodNotAllowed,
    /// The gateway holds `max_sessions` sessions already.
    TooManySessions,
    /// Too many sessions are waiting for their peer to connect, gateway-wide or from
    /// the client's address.
    TooManyPending,
    /// No UDP port of the configured media range is free.
    NoMediaPort,
    /// The gateway is shutting down and takes no new sessions.
    ShuttingDown,
    /// A data-channel message is not a JSON object with a string `type`, or its fields
    /// do not have the documented types.
    MalformedMessage,
    /// A data-channel message has a `type` the gateway does not know.
    UnknownMessageType,
    /// A `turn_id` is not 32 lowercase hex characters, or is all zero.
    InvalidTurnId,
    /// A `turn_id` was already used in this session.
    DuplicateTurnId,
    /// A `traceparent` does not follow W3C Trace Context.
    InvalidTraceparent,
    /// Both `turn_id` and `traceparent` were given and their ids differ, or `turn.end`
    /// names a turn that is not the open one.
    TurnIdMismatch,
    /// `turn.start` while a client turn is open.
    TurnAlreadyOpen,
    /// `turn.end` while no client turn is open.
    NoOpenTurn,
    /// The session has had its maximum number of turns.
    TooManyTurns,
    /// `image.begin` lacks a positive `size`.
    SizeRequired,
    /// The declared or received image exceeds the per-image byte limit.
    ImageTooLarge,
    /// An `upload_id` that is already open in this session.
    DuplicateUploadId,
    /// A chunk or `image.end` for an upload that is not open.
    UnknownUpload,
    /// More bytes arrived than the upload declared.
    SizeExceeded,
    /// `image.end` arrived before all declared bytes.
    SizeMismatch,
    /// The bytes do not hash to the declared `sha256`.
    Sha256Mismatch,
    /// The session has its maximum number of uploads open.
    TooManyUploads,
    /// The session's open uploads would exceed the bytes allowed in flight.
    UploadBudgetExceeded,
    /// The upload did not complete within the per-upload time.
    UploadTimeout,
    /// The session closed while the upload was open.
    UploadAbandoned,
    /// The bytes are not an image format the gateway recognises.
    NotAnImage,
    /// A recognised image format the gateway does not accept (accepted: PNG, JPEG, WebP, GIF).
    UnsupportedImageFormat,
    /// The image is truncated or corrupt: it does not decode.
    CorruptImage,
    /// Width × height exceeds the pixel limit (decompression bombs included).
    TooManyPixels,
    /// The image did not decode within the per-image time limit.
    DecodeTimeout,
    /// The named turn's processing has started (or finished): it takes no more input.
    TurnClosed,
    /// The named turn does not exist in this session.
    UnknownTurn,
    /// A backend did not answer within its timeout.
    BackendTimeout,
    /// A backend could not be reached (or failed just before, so the gateway fails fast).
    BackendUnavailable,
    /// A backend answered with an error status.
    BackendStatus,
    /// A backend's answer was not what its API promises.
    BackendMalformed,
    /// The LLM's answer stream broke off before it was done.
    BackendStreamBroken,
    /// A request's body did not arrive within the body read timeout.
    RequestTimeout,
    /// The request needs a valid token (or the operator credential) and has none.
    Unauthorized,
    /// The token is valid but does not allow this.
    Forbidden,
    /// Too many sessions created too fast by this subject or address.
    RateLimited,
    /// The gateway is at a capacity bound and shed the work: a backend's queue was full
    /// or no call slot came free in time, no image validator came free in time, or the
    /// gateway holds its budget of image bytes. Retrying later may succeed.
    Overloaded,
    /// No record of this turn (never recorded, deleted, or expired), or none of it is
    /// whole yet (its manifest is written when it ends).
    TurnNotFound,
    /// Two sessions recorded a turn with this (client-given) id: name one with
    /// `?session=`; the problem lists them in `sessions`.
    AmbiguousTurn,
    /// The turn is being recorded: its record cannot be deleted until it ends.
    TurnBeingRecorded,
    /// The `Range` asks for bytes the object does not have.
    RangeNotSatisfiable,
    /// The gateway records nothing (`record.enabled = false`).
    RecordsDisabled,
    /// The record store failed the read or delete; retrying later may succeed.
    StoreUnavailable,
    /// An unexpected failure inside the gateway; the message says more.
    Internal,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: &'static [ErrorCode] = &[
        Self::InvalidSdp,
        Self::NoAudio,
        Self::UnsupportedCodec,
        Self::UnsupportedMediaType,
        Self::PayloadTooLarge,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::TooManySessions,
        Self::TooManyPending,
        Self::NoMediaPort,
        Self::ShuttingDown,
        Self::MalformedMessage,
        Self::UnknownMessageType,
        Self::InvalidTurnId,
        Self::DuplicateTurnId,
        Self::InvalidTraceparent,
        Self::TurnIdMismatch,
        Self::TurnAlreadyOpen,
        Self::NoOpenTurn,
        Self::TooManyTurns,
        Self::SizeRequired,
        Self::ImageTooLarge,
        Self::DuplicateUploadId,
        Self::UnknownUpload,
        Self::SizeExceeded,
        Self::SizeMismatch,
        Self::Sha256Mismatch,
        Self::TooManyUploads,
        Self::UploadBudgetExceeded,
        Self::UploadTimeout,
        Self::UploadAbandoned,
        Self::NotAnImage,
        Self::UnsupportedImageFormat,
        Self::CorruptImage,
        Self::TooManyPixels,
        Self::DecodeTimeout,
        Self::TurnClosed,
        Self::UnknownTurn,
        Self::BackendTimeout,
        Self::BackendUnavailable,
        Self::BackendStatus,
        Self::BackendMalformed,
        Self::BackendStreamBroken,
        Self::RequestTimeout,
        Self::Unauthorized,
        Self::Forbidden,
        Self::RateLimited,
        Self::Overloaded,
        Self::TurnNotFound,
        Self::AmbiguousTurn,
        Self::TurnBeingRecorded,
        Self::RangeNotSatisfiable,
        Self::RecordsDisabled,
        Self::StoreUnavailable,
        Self::Internal,
    ];

    /// The wire name, e.g. `invalid_sdp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidSdp => "invalid_sdp",
            Self::NoAudio => "no_audio",
            Self::UnsupportedCodec => "unsupported_codec",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge => "payload_too_large",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::TooManySessions => "too_many_sessions",
            Self::TooManyPending => "too_many_pending",
            Self::NoMediaPort => "no_media_port",
            Self::ShuttingDown => "shutting_down",
            Self::MalformedMessage => "malformed_message",
            Self::UnknownMessageType => "unknown_message_type",
            Self::InvalidTurnId => "invalid_turn_id",
            Self::DuplicateTurnId => "duplicate_turn_id",
            Self::InvalidTraceparent => "invalid_traceparent",
            Self::TurnIdMismatch => "turn_id_mismatch",
            Self::TurnAlreadyOpen => "turn_already_open",
            Self::NoOpenTurn => "no_open_turn",
            Self::TooManyTurns => "too_many_turns",
            Self::SizeRequired => "size_required",
            Self::ImageTooLarge => "image_too_large",
            Self::DuplicateUploadId => "duplicate_upload_id",
            Self::UnknownUpload => "unknown_upload",
            Self::SizeExceeded => "size_exceeded",
            Self::SizeMismatch => "size_mismatch",
            Self::Sha256Mismatch => "sha256_mismatch",
            Self::TooManyUploads => "too_many_uploads",
            Self::UploadBudgetExceeded => "upload_budget_exceeded",
            Self::UploadTimeout => "upload_timeout",
            Self::UploadAbandoned => "upload_abandoned",
            Self::NotAnImage => "not_an_image",
            Self::UnsupportedImageFormat => "unsupported_image_format",
            Self::CorruptImage => "corrupt_image",
            Self::TooManyPixels => "too_many_pixels",
            Self::DecodeTimeout => "decode_timeout",
            Self::TurnClosed => "turn_closed",
            Self::UnknownTurn => "unknown_turn",
            Self::BackendTimeout => "backend_timeout",
            Self::BackendUnavailable => "backend_unavailable",
            Self::BackendStatus => "backend_status",
            Self::BackendMalformed => "backend_malformed",
            Self::BackendStreamBroken => "backend_stream_broken",
            Self::RequestTimeout => "request_timeout",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::TurnNotFound => "turn_not_found",
            Self::AmbiguousTurn => "ambiguous_turn",
            Self::TurnBeingRecorded => "turn_being_recorded",
            Self::RangeNotSatisfiable => "range_not_satisfiable",
            Self::RecordsDisabled => "records_disabled",
            Self::StoreUnavailable => "store_unavailable",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The crate's error: a malformed id or `traceparent`, or a refused client event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An id with the wrong number of characters.
    #[error("expected {expected} hex characters, found {found}")]
    IdLength {
        /// Characters expected.
        expected: usize,
        /// Characters found.
        found: usize,
    },
    /// An id with a character outside `0-9a-f`.
    #[error("only lowercase hex characters are allowed")]
    IdNotLowercaseHex,
    /// The all-zero id, which W3C Trace Context reserves as invalid.
    #[error("an all-zero id is invalid")]
    IdAllZero,
    /// A malformed `traceparent`.
    #[error("invalid traceparent: {0}")]
    TraceParent(&'static str),
    /// A client event the turn engine refuses, or a driver misuse.
    #[error("{message}")]
    Refused {
        /// The client-visible code.
        code: ErrorCode,
        /// A human-readable explanation, safe to show to the client.
        message: String,
    },
}

impl Error {
    /// A refusal with a code and a message.
    pub fn refused(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Refused {
            code,
            message: message.into(),
        }
    }

    /// The client-visible code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::IdLength { .. } | Self::IdNotLowercaseHex | Self::IdAllZero => {
                ErrorCode::InvalidTurnId
            }
            Self::TraceParent(_) => ErrorCode::InvalidTraceparent,
            Self::Refused { code, .. } => *code,
        }
    }
}
