//! The turn record: per turn, under one prefix of an object store, exactly what the
//! client sent and what each backend was given and returned, with a manifest written
//! last.
//!
//! - [`ogg`]: the received audio as an Ogg Opus stream (RFC 7845), muxed from RTP
//!   payloads with the sender's timing, flushed as page-aligned segments;
//! - [`layout`]: where each object of a record lives;
//! - [`manifest`]: the manifest, written last (schema: `proto/turngate/v1/record.proto`);
//! - [`store`]: the object store (a local directory or S3);
//! - [`retention`]: deleting whole records, by age and on request;
//! - [`read`]: finding a turn's records and reading them back.

pub mod layout;
pub mod manifest;
pub mod ogg;
pub mod read;
pub mod retention;
pub mod store;

pub use store::{Created, Store};

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store's configuration is unusable (message says why).
    #[error("record store: {0}")]
    Config(String),
    /// The store refused or failed an operation.
    #[error("record store: {0}")]
    Object(#[from] object_store::Error),
    /// An operation had no answer within the time it was given (milliseconds).
    #[error("record store: no answer within {0} ms")]
    Timeout(u64),
}
