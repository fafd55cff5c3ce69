//! The crate's error type.

use turngate_core::ErrorCode;

/// Why media could not be set up or carried on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// The offer is not parseable SDP.
    #[error("the offer is not valid SDP: {0}")]
    InvalidSdp(String),
    /// The offer has no audio the gateway can receive.
    #[error("{0}")]
    NoAudio(&'static str),
    /// The offer's audio does not offer Opus.
    #[error("the offer's audio does not offer Opus (opus/48000/2)")]
    UnsupportedCodec,
    /// Every port of the media range is taken.
    #[error("no free UDP port in the media port range {0}")]
    NoPort(String),
    /// The WebRTC stack failed.
    #[error("WebRTC: {0}")]
    WebRtc(String),
    /// libopus failed to set up.
    #[error("Opus: {0}")]
    Codec(String),
    /// Session setup timed out (ICE gathering).
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

impl MediaError {
    /// The client-visible error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidSdp(_) => ErrorCode::InvalidSdp,
            Self::NoAudio(_) => ErrorCode::NoAudio,
            Self::UnsupportedCodec => ErrorCode::UnsupportedCodec,
            Self::NoPort(_) => ErrorCode::NoMediaPort,
            Self::WebRtc(_) | Self::Codec(_) | Self::Timeout(_) => ErrorCode::Internal,
        }
    }
}
