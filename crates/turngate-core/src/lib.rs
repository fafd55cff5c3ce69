//! The sans-IO heart of turngate.
//!
//! - [`id`]: session and turn ids (ULID layout, valid W3C trace-ids), span ids and the
//!   strict `traceparent` parser;
//! - [`event`]: the data-channel wire events;
//! - [`error`]: the crate's error and the closed list of client-visible error codes;
//! - [`history`]: a session's exchanges in turn order, for the LLM prompt;
//! - [`outcome`]: stage outcomes and a turn's terminal status;
//! - [`tag`]: [`Tagged`] values and [`AudioFrame`];
//! - [`turn`]: the turn state machine;
//! - [`upload`]: reassembly of image uploads from data-channel chunks.
//!
//! This crate does no I/O: no sockets, no async runtime, no clock, no randomness it is
//! not handed. Time is an input (a [`Duration`](std::time::Duration) since the session
//! started), so every rule can be tested on simulated time.

pub mod error;
pub mod event;
pub mod history;
pub mod id;
pub mod outcome;
pub mod tag;
pub mod turn;
pub mod upload;

pub use error::{Error, ErrorCode};
pub use event::{ClientEvent, ServerEvent};
pub use history::History;
pub use id::{SessionId, SpanId, TraceParent, TurnId};
pub use outcome::{CompletionStatus, StageStatus, Stages};
pub use tag::{AudioFrame, Blob, BlobId, Tagged};
pub use turn::{
    Cause, EndReason, EngineCounters, Output, TurnConfig, TurnEngine, TurnInfo, TurnSampler,
    TurnState,
};
