//! WebRTC termination for turngate.
//!
//! - [`peer`]: offer checks, media port allocation and the answering peer connection
//!   (webrtc-rs, Opus only, mDNS off, one UDP socket per session);
//! - [`decode`]: Opus payloads to 16 kHz PCM with loss concealment;
//! - [`vad`]: the voice activity detector (earshot) with rebuffering;
//! - [`session`]: the per-session driver that runs the turn engine of `turngate-core`.
//!
//! It contains no HTTP: the binary maps WHIP requests onto [`peer::answer`] and
//! [`session::start`].

pub mod decode;
pub mod error;
pub mod image;
pub mod peer;
pub mod session;
pub mod vad;

pub use error::MediaError;
