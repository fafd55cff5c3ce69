//! The turn record over HTTP (the operator credential): a turn's manifest
//! (`GET /v1/turns/{turn_id}`), its artifacts with `ETag` and `Range`
//! (`GET /v1/turns/{turn_id}/artifacts/{name}`), a session's turns from the store, a
//! page at a time (`GET /v1/sessions/{id}/turns`, so ended sessions survive a
//! restart), and deletion on request (`DELETE /v1/turns/{turn_id}`,
//! `DELETE /v1/sessions/{id}/records`).
//!
//! A turn id is found through the store's index (`turngate_store::read`); a client-given
//! id two sessions recorded is `409 ambiguous_turn` listing them, and `?session=` picks
//! one. Only a record's listed artifacts are served, each under a content type from a
//! short list of safe ones and a sandboxing `Content-Security-Policy`: what a backend or
//! a client sent is never run as a page of this origin.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use turngate_core::{ErrorCode, SessionId, TurnId};
use turngate_store::manifest::{Artifact, Manifest};
use turngate_store::retention::{self, Removed, Selector};
use turngate_store::{Store, read};

use super::sessions::{bad_query, limit};
use crate::app::App;
use crate::problem::Problem;

/// `?session=…`: which session's record of a turn id two sessions recorded.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Which {
    session: Option<String>,
}

/// `?after=…&limit=…` of a session's recorded turns.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Page {
    /// The last turn number of the previous page (`next` of its answer).
    after: Option<u32>,
    /// Turns per page: default 100, at most 1000.
    limit: Option<usize>,
}

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

/// The store, for an operator.
fn store<'a>(app: &'a App, headers: &HeaderMap) -> Result<&'a Store, Problem> {
    app.admin(headers)?;
    app.turns
        .recorder
        .as_ref()
        .map(|r| r.store())
        .ok_or_else(|| {
            Problem::new(
                ErrorCode::RecordsDisabled,
                "this gateway records nothing (record.enabled = false)",
            )
        })
}

fn store_failed(e: turngate_store::Error) -> Problem {
    tracing::warn!(error = %e, "Turn record: a read or delete failed.");
    Problem::new(ErrorCode::StoreUnavailable, "the record store failed")
}

fn no_turn() -> Problem {
    Problem::new(
        ErrorCode::TurnNotFound,
        "no record of this turn (a turn's record is readable once it ends)",
    )
}

/// The one record `turn` names: its session and manifest.
async fn resolve(
    store: &Store,
    turn: &str,
    session: Option<String>,
) -> Result<(String, Manifest), Problem> {
    turn.parse::<TurnId>().map_err(|_| no_turn())?;
    let sessions = match session {
        Some(s) => {
            s.parse::<SessionId>()
                .map_err(|_| bad_query("session is not a session id"))?;
            vec![s]
        }
        None => read::sessions_of(store, turn).await.map_err(store_failed)?,
    };
    let mut found = Vec::new();
    for session in sessions {
        if let Some(m) = read::manifest(store, &session, turn)
            .await
            .map_err(store_failed)?
        {
            found.push((session, m));
        }
    }
    match found.len() {
        0 => Err(no_turn()),
        1 => Ok(found.remove(0)),
        _ => {
            let sessions: Vec<&str> = found.iter().map(|(s, _)| s.as_str()).collect();
            Err(Problem::new(
                ErrorCode::AmbiguousTurn,
                "two sessions recorded a turn with this id: name one with ?session=",
            )
            .with("sessions", json!(sessions)))
        }
    }
}

/// `GET /v1/turns/{turn_id}`: the manifest.
pub(super) async fn get_turn(
    State(app): State<Arc<App>>,
    Path(turn): Path<String>,
    headers: HeaderMap,
    query: QueryResult<Which>,
) -> Result<Response, Problem> {
    let store = store(&app, &headers)?;
    let Query(which) = query.map_err(bad_query)?;
    let (_, manifest) = resolve(store, &turn, which.session).await?;
    Ok(axum::Json(manifest).into_response())
}

/// `GET /v1/turns/{turn_id}/artifacts/{name}`: one listed artifact, whole or a range.
pub(super) async fn get_artifact(
    State(app): State<Arc<App>>,
    Path((turn, name)): Path<(String, String)>,
    headers: HeaderMap,
    query: QueryResult<Which>,
) -> Result<Response, Problem> {
    let store = store(&app, &headers)?;
    let Query(which) = query.map_err(bad_query)?;
    let (session, manifest) = resolve(store, &turn, which.session).await?;
    let artifact = manifest
        .artifacts
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| {
            Problem::new(
                ErrorCode::NotFound,
                format!("the record lists no artifact {name:?}"),
            )
        })?;
    let key = turngate_store::layout::artifact(&session, &turn, &artifact.name);
    let gone = || Problem::new(ErrorCode::NotFound, "the artifact is gone from the store");
    // The stored object's own size: a record changed behind the gateway's back is
    // served as it is, never cut or padded to what its manifest says.
    let size = store
        .size(&key)
        .await
        .map_err(store_failed)?
        .ok_or_else(gone)?;
    let etag = (size == u64::from(artifact.size)).then(|| format!("\"{}\"", artifact.sha256));
    if let Some(etag) = &etag
        && headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| matches(v, etag))
    {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        set(&mut response, header::ETAG, etag);
        return Ok(response);
    }
    let range = match requested_range(&headers, etag.as_deref(), size) {
        Ok(range) => range,
        Err(()) => {
            let mut response = Problem::new(
                ErrorCode::RangeNotSatisfiable,
                format!("the artifact has {size} bytes"),
            )
            .into_response();
            set(
                &mut response,
                header::CONTENT_RANGE,
                &format!("bytes */{size}"),
            );
            return Ok(response);
        }
    };
    let bytes = match &range {
        Some(r) => store.get_range(&key, *r.start()..*r.end() + 1).await,
        None => store.get(&key).await,
    }
    .map_err(store_failed)?
    .ok_or_else(gone)?;
    let mut response = match &range {
        Some(r) => {
            let mut response = (StatusCode::PARTIAL_CONTENT, bytes).into_response();
            let content_range = format!("bytes {}-{}/{size}", r.start(), r.end());
            set(&mut response, header::CONTENT_RANGE, &content_range);
            response
        }
        None => bytes.into_response(),
    };
    set(&mut response, header::CONTENT_TYPE, served_type(artifact));
    if let Some(etag) = &etag {
        set(&mut response, header::ETAG, etag);
    }
    set(&mut response, header::ACCEPT_RANGES, "bytes");
    set(&mut response, header::CACHE_CONTROL, "private, no-cache");
    set(&mut response, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(
        &mut response,
        header::CONTENT_SECURITY_POLICY,
        "sandbox; default-src 'none'",
    );
    Ok(response)
}

/// Whether an `If-None-Match` value matches `etag`: `*`, or one of its entity tags,
/// compared weakly (RFC 9110 §13.1.2: `W/"x"` matches `"x"`).
fn matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// The one range a request asks for (RFC 9110 §14.2), if any and if it is to be
/// honoured: none for no `Range`, an `If-Range` that is not the current `ETag` (strong
/// comparison; an artifact without one never matches), a header that does not parse,
/// or several ranges (the whole artifact is as good an answer); `Err` for a range that
/// starts past the end.
fn requested_range(
    headers: &HeaderMap,
    etag: Option<&str>,
    size: u64,
) -> Result<Option<std::ops::RangeInclusive<u64>>, ()> {
    use http_range_header::RangeUnsatisfiableError::{
        FileSuffixOutOfBounds, RangeReversed, ZeroSuffix,
    };
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if headers
        .get(header::IF_RANGE)
        .is_some_and(|v| etag.is_none_or(|etag| v.as_bytes() != etag.as_bytes()))
    {
        return Ok(None);
    }
    let parsed = match http_range_header::parse_range_header(value) {
        Ok(parsed) => parsed,
        // `bytes=-0` asks for no bytes at all (RFC 9110 §14.1.1).
        Err(ZeroSuffix) => return Err(()),
        Err(_) => return Ok(None),
    };
    if parsed.ranges.len() != 1 {
        return Ok(None);
    }
    if size == 0 {
        return Err(());
    }
    match parsed.validate(size) {
        Ok(mut ranges) => Ok(ranges.pop()),
        // A suffix longer than the artifact selects all of it (§14.1.2).
        Err(FileSuffixOutOfBounds) => Ok(Some(0..=size - 1)),
        Err(RangeReversed) => Err(()),
        Err(_) => Ok(None),
    }
}

/// The content type an artifact is served as: its own if it is one of the kinds a
/// record holds (audio, images, JSON), plain text for other text (an SSE stream), and
/// bytes for anything else.
fn served_type(artifact: &Artifact) -> &'static str {
    let essence = artifact
        .content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "audio/ogg" => "audio/ogg",
        "audio/wav" | "audio/x-wav" | "audio/wave" => "audio/wav",
        "image/png" => "image/png",
        "image/jpeg" => "image/jpeg",
        "image/webp" => "image/webp",
        "image/gif" => "image/gif",
        "application/json" => "application/json",
        t if t.starts_with("text/") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn set(response: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

/// `GET /v1/sessions/{id}/turns`: the session's recorded turns in turn order, a page at
/// a time; `next` is the `after` of the next page, `null` on the last.
pub(super) async fn session_turns(
    State(app): State<Arc<App>>,
    Path(session): Path<String>,
    headers: HeaderMap,
    query: QueryResult<Page>,
) -> Result<Response, Problem> {
    let store = store(&app, &headers)?;
    let Query(page) = query.map_err(bad_query)?;
    let limit = limit(page.limit)?;
    let id: SessionId = session
        .parse()
        .map_err(|_| Problem::new(ErrorCode::NotFound, "no such session"))?;
    let after = page.after.unwrap_or(0);
    let found = read::session_turns(store, &session, after, limit)
        .await
        .map_err(store_failed)?;
    if !found.recorded && app.registry.get(id).is_none() {
        return Err(Problem::new(
            ErrorCode::NotFound,
            "no such session, and no records of one",
        ));
    }
    let turns = found.turns;
    let next = found.more.then(|| turns.last().map(|m| m.number)).flatten();
    let turns: Vec<Value> = turns.iter().map(summary).collect();
    Ok(axum::Json(json!({ "session_id": session, "turns": turns, "next": next })).into_response())
}

/// A turn in a session's list: what tells it apart at a glance.
fn summary(m: &Manifest) -> Value {
    let t = &m.timings;
    let input_ms = t
        .input_ended
        .as_ref()
        .map(|e| e.offset_ms.saturating_sub(t.started.offset_ms));
    json!({
        "turn_id": m.turn_id,
        "number": m.number,
        "cause": m.cause,
        "reason": m.reason,
        "status": m.status,
        "record_state": m.record_state,
        "started": t.started.at,
        "completed": t.completed.as_ref().map(|c| &c.at),
        "input_ms": input_ms,
        "audio_ms": m.counters.audio_ms,
        "images": m.counters.images,
        "transcript": m.transcript,
        "chain": m.chain,
    })
}

/// `DELETE /v1/turns/{turn_id}`: every record of the turn id (in whichever sessions).
pub(super) async fn delete_turn(
    State(app): State<Arc<App>>,
    Path(turn): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let store = store(&app, &headers)?;
    turn.parse::<TurnId>().map_err(|_| no_turn())?;
    let removed = retention::delete(store, &Selector::Turn(turn))
        .await
        .map_err(store_failed)?;
    deleted(removed, no_turn)
}

/// `DELETE /v1/sessions/{id}/records`: every record of the session.
pub(super) async fn delete_session_records(
    State(app): State<Arc<App>>,
    Path(session): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let store = store(&app, &headers)?;
    let not_found = || Problem::new(ErrorCode::NotFound, "no records of this session");
    session.parse::<SessionId>().map_err(|_| not_found())?;
    let removed = retention::delete(store, &Selector::Session(session))
        .await
        .map_err(store_failed)?;
    deleted(removed, not_found)
}

/// 204 when something was deleted and nothing left; 409 while a turn is recorded
/// still (what could go went); `nothing` when there was nothing.
fn deleted(removed: Removed, nothing: impl FnOnce() -> Problem) -> Result<Response, Problem> {
    if removed.open > 0 {
        return Err(Problem::new(
            ErrorCode::TurnBeingRecorded,
            format!(
                "{} turns are being recorded (deleted: {}): delete again once they end",
                removed.open,
                removed.turns + removed.orphans
            ),
        ));
    }
    if removed.turns + removed.orphans == 0 {
        return Err(nothing());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str, if_range: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_str(value).unwrap());
        if let Some(v) = if_range {
            headers.insert(header::IF_RANGE, HeaderValue::from_str(v).unwrap());
        }
        requested_range(&headers, Some("\"e\""), size).map(|r| r.map(|r| (*r.start(), *r.end())))
    }

    #[test]
    fn one_range_is_honoured_and_the_rest_answered_whole_or_refused() {
        assert_eq!(range("bytes=0-99", None, 1000), Ok(Some((0, 99))));
        assert_eq!(range("bytes=900-", None, 1000), Ok(Some((900, 999))));
        assert_eq!(range("bytes=-100", None, 1000), Ok(Some((900, 999))));
        // Past the end: the end is the artifact's.
        assert_eq!(range("bytes=990-2000", None, 1000), Ok(Some((990, 999))));
        // A suffix longer than the artifact: all of it.
        assert_eq!(range("bytes=-5000", None, 1000), Ok(Some((0, 999))));
        // Starting past the end: 416.
        assert_eq!(range("bytes=1000-", None, 1000), Err(()));
        assert_eq!(range("bytes=0-", None, 0), Err(()));
        assert_eq!(range("bytes=-0", None, 1000), Err(()));
        // Answered whole: several ranges, a header that does not parse, a stale If-Range.
        assert_eq!(range("bytes=0-1,5-9", None, 1000), Ok(None));
        assert_eq!(range("items=0-1", None, 1000), Ok(None));
        assert_eq!(range("bytes=0-1", Some("\"old\""), 1000), Ok(None));
        assert_eq!(range("bytes=0-1", Some("\"e\""), 1000), Ok(Some((0, 1))));
    }

    #[test]
    fn if_none_match_compares_weakly() {
        assert!(matches("\"e\"", "\"e\""));
        assert!(matches("W/\"e\"", "\"e\""));
        assert!(matches("\"a\", W/\"e\"", "\"e\""));
        assert!(matches("*", "\"e\""));
        assert!(!matches("\"a\"", "\"e\""));
    }

    #[test]
    fn artifacts_are_served_as_safe_types_only() {
        let of = |t: &str| {
            served_type(&Artifact {
                content_type: t.into(),
                ..Artifact::default()
            })
        };
        assert_eq!(of("audio/ogg"), "audio/ogg");
        assert_eq!(of("image/PNG"), "image/png");
        assert_eq!(of("application/json; charset=utf-8"), "application/json");
        assert_eq!(of("text/event-stream"), "text/plain; charset=utf-8");
        assert_eq!(of("text/html"), "text/plain; charset=utf-8");
        assert_eq!(of("image/svg+xml"), "application/octet-stream");
    }
}
