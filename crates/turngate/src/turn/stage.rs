//! What every stage of a turn works with ([`Job`]: the services, the session, the
//! turn's trace and trace context, its failures) and what it gives back ([`Ran`]).

use std::sync::Mutex;

use serde_json::{Value, json};
use turngate_backends::{BackendError, TurnContext};
use turngate_core::{ServerEvent, StageStatus};
use turngate_media::session::SessionShared;
use turngate_telemetry::TurnTrace;
use turngate_telemetry::metrics::Metrics;

use super::{Backends, Services};
use crate::record::TurnRecord;

/// What a stage of a turn works with.
pub(super) struct Job<'a> {
    services: &'a Services,
    pub shared: &'a SessionShared,
    pub trace: &'a TurnTrace,
    pub ctx: TurnContext,
    /// The turn's record, if recording is on.
    pub record: Option<&'a TurnRecord>,
    /// Failures, for the session API.
    errors: Mutex<Vec<Value>>,
}

impl<'a> Job<'a> {
    pub fn new(
        services: &'a Services,
        shared: &'a SessionShared,
        trace: &'a TurnTrace,
        ctx: TurnContext,
        record: Option<&'a TurnRecord>,
    ) -> Self {
        Self {
            services,
            shared,
            trace,
            ctx,
            record,
            errors: Mutex::default(),
        }
    }

    /// The failures recorded, as the session API lists them.
    pub fn into_errors(self) -> Vec<Value> {
        self.errors.into_inner().unwrap_or_default()
    }

    pub fn backends(&self) -> &Backends {
        &self.services.backends
    }

    pub fn metrics(&self) -> &'a Metrics {
        &self.services.metrics
    }

    /// A stage failed: logged, recorded on the turn, and told to the client — code,
    /// status and the backend's sanitized, capped message only.
    pub async fn fail(&self, stage: &'static str, e: &BackendError) {
        tracing::warn!(turn = %self.ctx.turn_id, error = %e, "{stage} failed.");
        let message = e.client_message();
        if let Ok(mut errors) = self.errors.lock() {
            errors.push(json!({"code": e.code(), "message": message}));
        }
        let event = ServerEvent::Error {
            code: e.code(),
            message,
            turn_id: Some(self.ctx.turn_id),
        };
        self.shared.send_result(event).await;
    }
}

/// How a stage ran: its status, what it made, and how long it took.
pub(super) struct Ran<T> {
    pub status: StageStatus,
    pub value: T,
    pub ms: Option<u32>,
}

impl<T: Default> Ran<T> {
    pub fn new(status: StageStatus, value: T, ms: Option<u32>) -> Self {
        Self { status, value, ms }
    }

    pub fn skipped(value: T) -> Self {
        Self::new(StageStatus::Skipped, value, None)
    }

    /// A barge-in stopped it.
    pub fn cancelled() -> Self {
        Self::new(StageStatus::Cancelled, T::default(), None)
    }
}
