//! `GET /healthz` (the process is up) and `GET /readyz` (it takes new sessions).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use turngate_core::ErrorCode;

use crate::app::App;
use crate::problem::Problem;

pub(super) async fn live() -> &'static str {
    "ok"
}

pub(super) async fn ready(State(app): State<Arc<App>>) -> Response {
    if app.shutting_down() {
        return Problem::new(ErrorCode::ShuttingDown, "shutting down").into_response();
    }
    if app.insecure {
        return "ready (WARNING: --insecure-no-auth: no authentication; anyone who reaches \
                this port can open sessions and read every transcript)"
            .into_response();
    }
    if let Some(recorder) = &app.turns.recorder
        && let Some(failing) = recorder.stats.failing_for()
        && failing > STORE_FAILING_REPORTED
    {
        // Still ready: media and turns go on, and every node shares the store.
        return format!(
            "ready (WARNING: the turn-record store {} has been failing for {} s; records are \
             marked incomplete)",
            recorder.location(),
            failing.as_secs()
        )
        .into_response();
    }
    "ready".into_response()
}

/// How long the record store may fail before `/readyz` reports it.
const STORE_FAILING_REPORTED: std::time::Duration = std::time::Duration::from_secs(30);
