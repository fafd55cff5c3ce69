//! The turn record: per turn, under one prefix of an object store, exactly what the
//! client sent and what each backend was given and returned, with a manifest written
//! last.
//!
//! - [`ogg`]: the received audio as an Ogg Opus stream (RFC 7845), muxed from RTP
//!   payloads with the sender's timing, flushed as page-aligned segments.

pub mod ogg;
