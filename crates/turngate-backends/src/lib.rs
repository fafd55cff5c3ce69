//! Clients of the backends a turn is handed to — ASR, vision, LLM — speaking the
//! OpenAI-compatible HTTP API, with the turn id carried in band on every request.
//!
//! - [`client`]: one configured backend: base URL, model, key, timeout, retries, bounded
//!   concurrency and a circuit breaker so a backend that is down fails fast;
//! - [`context`]: the `traceparent` and `baggage` a turn's requests carry;
//! - [`asr`], [`vision`], [`llm`]: the three calls;
//! - [`wav`]: 16 kHz mono PCM as a WAV file.
//!
//! Nothing here knows about sessions or WebRTC; the binary orchestrates.

pub mod asr;
pub mod client;
pub mod context;
pub mod error;
pub mod llm;
pub mod vision;
pub mod wav;

pub use client::{Backend, BackendConfig};
pub use context::TurnContext;
pub use error::BackendError;
