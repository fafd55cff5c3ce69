//! `GET /v1/sessions` and `GET /v1/sessions/{session_id}`: live and recently ended
//! sessions with their counters, and one session's turns with what processing made of
//! them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use turngate_core::{ErrorCode, SessionId};

use crate::app::App;
use crate::problem::Problem;
use crate::registry::Entry;

pub(super) async fn list_sessions(State(app): State<Arc<App>>) -> Response {
    let sessions: Vec<Value> = app
        .registry
        .all()
        .iter()
        .map(|e| session_json(e, false))
        .collect();
    axum::Json(json!({ "sessions": sessions })).into_response()
}

pub(super) async fn get_session(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id: SessionId = id
        .parse()
        .map_err(|_| Problem::new(ErrorCode::NotFound, "no such session"))?;
    let entry = app
        .registry
        .get(id)
        .ok_or_else(|| Problem::new(ErrorCode::NotFound, "no such session"))?;
    Ok(axum::Json(session_json(&entry, true)).into_response())
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A session as JSON: counters always, turns when `detail`.
fn session_json(entry: &Entry, detail: bool) -> Value {
    let s = &entry.shared;
    let c = s.counters.read();
    let ended = s.ended();
    let mut v = json!({
        "session_id": s.id,
        "state": if ended.is_some() { "ended" } else { "live" },
        "started_at": time(s.started),
        "ended_at": ended.map(|(t, _)| time(t)),
        "end_reason": ended.map(|(_, why)| why),
        "data_channel": s.has_data_channel(),
        "counters": {
            "frames_received": c.frames_received,
            "frames_in_turns": c.frames_in_turns,
            "idle_frames_discarded": c.idle_frames_discarded,
            "frames_dropped_backpressure": c.frames_dropped_backpressure,
            "frames_undecodable": c.frames_undecodable,
            // Received but not yet given a fate (queued, or in the pre-roll ring).
            "frames_pending": c.frames_received.saturating_sub(c.frames_with_fate()),
            "packets_lost": c.packets_lost,
            "concealed_ms": c.samples_concealed / 16,
            "events_dropped": c.events_dropped,
            "messages_refused": c.messages_refused,
            "images_accepted": c.images_accepted,
            "image_bytes_accepted": c.image_bytes_accepted,
            "images_rejected": c.images_rejected,
            "upload_bytes_freed": c.upload_bytes_freed,
        },
    });
    if detail {
        let mut blobs: HashMap<_, Vec<_>> = HashMap::new();
        for blob in s.blobs() {
            blobs.entry(blob.turn_id).or_default().push(blob);
        }
        let at = |d: std::time::Duration| time(s.started + d);
        let turns: Vec<Value> = s
            .turns()
            .iter()
            .map(|t| {
                let result = s.result(t.id);
                let ms = |key: &str| result.as_ref().map(|r| r[key].clone());
                json!({
                    "turn_id": t.id,
                    "turn_number": t.number,
                    "cause": t.cause,
                    "state": t.state,
                    "reason": t.reason,
                    "interrupted": t.interrupted,
                    "status": t.status,
                    "continues": t.continues,
                    "continued_by": t.continued_by(),
                    "answered_by": t.successor,
                    "traceparent": t.traceparent().to_string(),
                    "started_at": at(t.started_at),
                    "ended_at": t.ended_at.map(at),
                    "completed_at": t.completed_at.map(at),
                    "duration_ms": t.ended_at.map(|e| (e - t.started_at).as_millis() as u64),
                    "frames": t.frames,
                    "audio_ms": ms("audio_ms"),
                    "concealed_ms": ms("concealed_ms"),
                    "blobs": blobs.get(&t.id).map_or(&[][..], Vec::as_slice),
                    "processing": result,
                })
            })
            .collect();
        v["turns"] = Value::Array(turns);
    }
    v
}
