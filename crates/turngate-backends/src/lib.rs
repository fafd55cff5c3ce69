//! Clients of the backends a turn is handed to — ASR, vision, LLM — speaking the
//! OpenAI-compatible HTTP API, with the turn id carried in band on every request.
//!
//! - [`client`]: one configured backend: base URL, model, key, timeout, retries;
//! - [`key`]: its API key, never printed, redacted from what it says back;
//! - [`slots`]: its call slots — a fair share per session, a bounded queue, shedding;
//! - [`breaker`]: its circuit breaker, so a backend that is down fails fast;
//! - [`chat`]: chat-completion messages, whose images become data URLs only as a
//!   request body is written;
//! - [`context`]: the `traceparent` and `baggage` a turn's requests carry;
//! - [`asr`], [`vision`], [`llm`]: the three calls;
//! - [`tape`]: each call's exchanges, byte for byte, for the turn record;
//! - [`wav`]: 16 kHz mono PCM as a WAV file.
//!
//! Nothing here knows about sessions or WebRTC; the binary orchestrates.

pub mod asr;
pub mod breaker;
pub mod chat;
pub mod client;
pub mod context;
pub mod error;
pub mod key;
pub mod llm;
pub mod slots;
pub mod tape;
pub mod vision;
pub mod wav;

pub use client::{Backend, BackendConfig};
pub use context::TurnContext;
pub use error::BackendError;
pub use tape::Tape;
