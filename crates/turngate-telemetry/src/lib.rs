//! turngate's telemetry: one OpenTelemetry trace per turn, whose trace id is the turn
//! id, exported over OTLP as the standard `OTEL_*` variables say; and Prometheus
//! metrics.
//!
//! - [`config`]: the `OTEL_*` variables, checked;
//! - [`pipeline`]: the tracer provider, export queue and `tracing` layer;
//! - [`ids`]: the id generator that gives a turn's root span the turn's ids;
//! - [`export`]: the bounded export queue that counts what it drops;
//! - [`capture`]: the spans of turns being recorded, kept in process whatever the
//!   sampler decided;
//! - [`turn`]: a turn's trace and the spans under it;
//! - [`names`]: every span name and attribute key;
//! - [`content`]: opt-in content in the GenAI message format;
//! - [`metrics`]: the Prometheus text format.

pub mod capture;
pub mod config;
pub mod content;
pub mod error;
pub mod export;
pub mod ids;
pub mod metrics;
pub mod names;
pub mod pipeline;
pub mod turn;

pub use config::OtelConfig;
pub use error::Error;
pub use pipeline::Telemetry;
pub use turn::{AudioStats, TurnTrace};

/// The snake_case name a wire enum (cause, state, reason, status) serializes to.
pub fn snake<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}
