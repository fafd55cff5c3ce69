//! `GET /v1/sessions` and `GET /v1/sessions/{session_id}` (the operator credential, once
//! authentication is on): live and recently ended
//! sessions with their counters, a page at a time, and one session's turns with what
//! processing made of them, a page at a time. The JSON is built on the blocking pool:
//! a page of a thousand turns is milliseconds of work that must not hold up a runtime
//! thread serving media.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use turngate_core::{ErrorCode, SessionId};

use crate::app::App;
use crate::problem::Problem;
use crate::registry::Entry;

/// Items of a page when the request does not say.
const DEFAULT_LIMIT: usize = 100;
/// Most items of a page.
const MAX_LIMIT: usize = 1000;

/// `?after=…&limit=…` of the session list.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// The last session id of the previous page (`next` of its answer).
    after: Option<String>,
    /// Sessions per page: default 100, at most 1000.
    limit: Option<usize>,
}

/// `?after_turn=…&limit=…` of one session's turns.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TurnsQuery {
    /// The last turn number of the previous page (`next_after_turn` of its answer).
    after_turn: Option<u32>,
    /// Turns per page: default 100, at most 1000.
    limit: Option<usize>,
}

/// A page's size: `requested`, default 100, 1 to 1000 (else `malformed_message`).
pub(super) fn limit(requested: Option<usize>) -> Result<usize, Problem> {
    match requested.unwrap_or(DEFAULT_LIMIT) {
        n @ 1..=MAX_LIMIT => Ok(n),
        n => Err(Problem::new(
            ErrorCode::MalformedMessage,
            format!("limit must be 1 to {MAX_LIMIT}, not {n}"),
        )),
    }
}

/// A query that does not parse: `malformed_message`, saying why.
pub(super) fn bad_query(e: impl std::fmt::Display) -> Problem {
    Problem::new(ErrorCode::MalformedMessage, format!("bad query: {e}"))
}

/// Builds a response on the blocking pool.
async fn off_runtime(build: impl FnOnce() -> Value + Send + 'static) -> Result<Response, Problem> {
    tokio::task::spawn_blocking(build)
        .await
        .map(|v| axum::Json(v).into_response())
        .map_err(|_| Problem::new(ErrorCode::Internal, "building the answer failed"))
}

/// Oldest first; `next` is the `after` of the next page, `null` on the last.
pub(super) async fn list_sessions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    app.admin(&headers)?;
    let Query(query) = query.map_err(bad_query)?;
    let limit = limit(query.limit)?;
    let after = match query.after {
        Some(id) => Some(id.parse::<SessionId>().map_err(bad_query)?),
        None => None,
    };
    let (page, more) = app.registry.page(after, limit);
    off_runtime(move || {
        let next = more.then(|| page.last().map(|e| e.shared.id)).flatten();
        let sessions: Vec<Value> = page.iter().map(|e| session_json(e, None)).collect();
        json!({ "sessions": sessions, "next": next })
    })
    .await
}

/// One session with a page of its turns: `turns_total`, and `next_after_turn`, the
/// `after_turn` of the next page (`null` on the last).
pub(super) async fn get_session(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<TurnsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    app.admin(&headers)?;
    let Query(query) = query.map_err(bad_query)?;
    let limit = limit(query.limit)?;
    let id: SessionId = id
        .parse()
        .map_err(|_| Problem::new(ErrorCode::NotFound, "no such session"))?;
    let entry = app
        .registry
        .get(id)
        .ok_or_else(|| Problem::new(ErrorCode::NotFound, "no such session"))?;
    off_runtime(move || session_json(&entry, Some((query.after_turn.unwrap_or(0), limit)))).await
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A session as JSON: counters always, and with `turns = (after, limit)` that page of
/// its turns.
fn session_json(entry: &Entry, turns: Option<(u32, usize)>) -> Value {
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
    if let Some((after, limit)) = turns {
        let (page, total) = s.turns_page(after, limit);
        let ids: Vec<_> = page.iter().map(|t| t.id).collect();
        let blobs = s.blobs_of(&ids);
        let at = |d: std::time::Duration| time(s.started + d);
        let next = page
            .last()
            .filter(|last| last.number < total as u32)
            .map(|last| last.number);
        let turns: Vec<Value> = page
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
        v["turns_total"] = total.into();
        v["next_after_turn"] = next.into();
    }
    v
}
