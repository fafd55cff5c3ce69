//! The crate's error type.

use turngate_core::ErrorCode;

/// Why a backend call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// No answer within the configured timeout.
    #[error("{backend} timed out after {ms} ms")]
    Timeout {
        /// The backend's name.
        backend: &'static str,
        /// The timeout.
        ms: u64,
    },
    /// The backend could not be reached (connection refused, reset, circuit open).
    #[error("{backend} is unavailable: {detail}")]
    Unavailable {
        /// The backend's name.
        backend: &'static str,
        /// What failed.
        detail: String,
    },
    /// The backend answered with an error status.
    #[error("{backend} answered {status}: {detail}")]
    Status {
        /// The backend's name.
        backend: &'static str,
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        detail: String,
    },
    /// The answer was not what the API promises.
    #[error("{backend} sent a malformed answer: {detail}")]
    Malformed {
        /// The backend's name.
        backend: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The response stream broke off before it was done.
    #[error("{backend}'s stream broke off: {detail}")]
    StreamBroken {
        /// The backend's name.
        backend: &'static str,
        /// What happened.
        detail: String,
    },
    /// The configuration cannot work (e.g. no TLS provider).
    #[error("{0}")]
    Config(String),
}

impl BackendError {
    /// The client-visible code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Timeout { .. } => ErrorCode::BackendTimeout,
            Self::Unavailable { .. } => ErrorCode::BackendUnavailable,
            Self::Status { .. } => ErrorCode::BackendStatus,
            Self::Malformed { .. } => ErrorCode::BackendMalformed,
            Self::StreamBroken { .. } => ErrorCode::BackendStreamBroken,
            Self::Config(_) => ErrorCode::Internal,
        }
    }

    /// The error without anything the backend said: a status error's body may echo
    /// the request (the prompt), so it is left out.
    pub fn summary(&self) -> String {
        match self {
            Self::Status {
                backend, status, ..
            } => format!("{backend} answered {status}"),
            other => other.to_string(),
        }
    }

    /// Whether trying again may help (and repeating the request is harmless).
    pub fn retryable(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Unavailable { .. } => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}
