//! The HTTP API: WHIP-shaped signaling, session queries, health, CORS.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};
use tower_http::cors::{AllowOrigin, CorsLayer};
use turngate_core::{ErrorCode, SessionId};
use turngate_media::peer::{self, PeerConfig, PortPool};
use turngate_media::session::{self, SessionConfig};

use crate::config::Config;
use crate::pipeline;
use crate::problem::Problem;
use crate::registry::{Entry, Registry};

/// Everything the handlers share.
pub struct App {
    pub registry: Registry,
    pub ports: Arc<PortPool>,
    pub peer: PeerConfig,
    pub session: SessionConfig,
    pub max_offer_bytes: usize,
    pub max_image_bytes: u64,
    pub upload_timeout: Duration,
    pub backends: crate::orchestrate::Backends,
    pub shutting_down: AtomicBool,
    /// Spans: the OTLP pipeline, and whether content goes into spans.
    pub telemetry: turngate_telemetry::Telemetry,
    /// Counted as it happens, for `/metrics`.
    pub metrics: turngate_telemetry::metrics::Metrics,
    /// The tasks processing turns; shutdown waits for them.
    pub processing: tokio_util::task::TaskTracker,
}

impl App {
    /// The application state for a validated configuration.
    pub fn new(
        config: &Config,
        telemetry: turngate_telemetry::Telemetry,
    ) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            registry: Registry::new(
                config.sessions.max,
                config.sessions.retain_ended,
                Duration::from_secs(config.sessions.retain_ended_s),
            ),
            ports: PortPool::new(config.media.port_min..=config.media.port_max),
            peer: config.peer(),
            session: SessionConfig {
                sampler: telemetry.turn_sampler(),
                ..config.session()
            },
            max_offer_bytes: config.max_offer_bytes,
            max_image_bytes: config.uploads.max_image_bytes,
            upload_timeout: Duration::from_millis(config.uploads.timeout_ms),
            backends: crate::orchestrate::Backends::new(config)?,
            shutting_down: AtomicBool::new(false),
            telemetry,
            metrics: Default::default(),
            processing: tokio_util::task::TaskTracker::new(),
        }))
    }
}

impl App {
    /// Largest HTTP upload body: an image at the limit plus room for multipart framing.
    fn max_upload_body(&self) -> usize {
        self.max_image_bytes as usize + MULTIPART_OVERHEAD
    }
}

/// Bytes of multipart headers and boundaries allowed around an image.
const MULTIPART_OVERHEAD: usize = 64 * 1024;

/// The router, with CORS for the configured origins.
pub fn router(app: Arc<App>, cors_origins: &[String]) -> Router {
    let router = Router::new()
        .route("/v1/whip", post(create_session))
        .route("/v1/whip/{resource}", delete(delete_session))
        .route(
            "/v1/whip/{resource}/images",
            post(upload_image).layer(DefaultBodyLimit::max(app.max_upload_body())),
        )
        .route("/v1/sessions", get(list_sessions))
        .route("/v1/sessions/{id}", get(get_session))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|| async { Problem::new(ErrorCode::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|method: Method| async move {
            Problem::new(
                ErrorCode::MethodNotAllowed,
                format!("{method} is not allowed here"),
            )
        })
        .with_state(app);
    if cors_origins.is_empty() {
        return router;
    }
    let origins = if cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    router.layer(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
            .expose_headers([header::LOCATION])
            .max_age(Duration::from_secs(600)),
    )
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    if app.shutting_down.load(Ordering::Relaxed) {
        return Problem::new(ErrorCode::ShuttingDown, "shutting down").into_response();
    }
    "ready".into_response()
}

/// `POST /v1/whip`: an SDP offer in, `201 Created` with the answer and `Location` out.
async fn create_session(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    if app.shutting_down.load(Ordering::Relaxed) {
        return Err(Problem::new(
            ErrorCode::ShuttingDown,
            "the gateway is shutting down",
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/sdp") {
        return Err(Problem::new(
            ErrorCode::UnsupportedMediaType,
            format!("the offer must be sent as application/sdp, not {content_type:?}"),
        ));
    }
    let too_large = || {
        Problem::new(
            ErrorCode::PayloadTooLarge,
            format!("the offer exceeds {} bytes", app.max_offer_bytes),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > app.max_offer_bytes) {
        return Err(too_large());
    }
    let body = to_bytes(body, app.max_offer_bytes)
        .await
        .map_err(|_| too_large())?;
    let offer = String::from_utf8(body.to_vec())
        .map_err(|_| Problem::new(ErrorCode::InvalidSdp, "the offer is not UTF-8 text"))?;
    peer::check_offer(&offer).map_err(|e| Problem::new(e.code(), e.to_string()))?;

    // Set up in a task of its own: a client that hangs up mid-way must not leave a
    // half-built peer connection (and its socket) behind.
    let setup = tokio::spawn(establish(Arc::clone(&app), offer));
    let (answer, resource) = setup
        .await
        .map_err(|_| Problem::new(ErrorCode::Internal, "session setup failed"))??;
    let location = format!("/v1/whip/{resource}");
    Ok((
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_owned()),
            (header::LOCATION, location),
        ],
        answer,
    )
        .into_response())
}

/// Answers the offer, starts and registers the session: (answer, resource id).
async fn establish(app: Arc<App>, offer: String) -> Result<(String, String), Problem> {
    let slot = app.registry.reserve().ok_or_else(|| {
        Problem::new(
            ErrorCode::TooManySessions,
            "the gateway holds its maximum number of sessions; retry later",
        )
    })?;
    let answered = peer::answer(&app.peer, &app.ports, offer)
        .await
        .map_err(|e| {
            if e.code() == ErrorCode::Internal {
                tracing::warn!(error = %e, "Could not answer an offer.");
            }
            Problem::new(e.code(), e.to_string())
        })?;
    if app.shutting_down.load(Ordering::Relaxed) {
        let _ = answered.connection.close().await;
        return Err(Problem::new(
            ErrorCode::ShuttingDown,
            "the gateway is shutting down",
        ));
    }
    let answer = answered.answer.clone();
    let mut rng = rand::rng();
    let started = session::start(app.session.clone(), answered, &mut rng)
        .map_err(|e| Problem::new(e.code(), e.to_string()))?;
    let resource = resource_id(&mut rng);
    let entry = Arc::new(Entry::new(Arc::clone(&started.shared)));
    app.registry
        .insert(slot, resource.clone(), Arc::clone(&entry));
    tracing::info!(session = %entry.shared.id, "Session created.");
    tracing::debug!(session = %entry.shared.id, resource = %resource, "WHIP resource.");
    pipeline::spawn(Arc::clone(&app), resource.clone(), entry, started);
    Ok((answer, resource))
}

/// Query of `POST /v1/whip/{resource}/images`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    turn_id: Option<String>,
    upload_id: Option<String>,
}

/// `POST /v1/whip/{resource}/images`: an image as the raw body (an `image/*` content
/// type) or as the first file of a multipart/form-data body. `201` with the same JSON
/// as the `image.accepted` event, which the data channel also gets.
///
/// The upload is tagged (and counted against the session's upload limits) when the
/// request arrives, before its body is read; `Content-Length` is required so that the
/// body's size can be reserved first.
async fn upload_image(
    State(app): State<Arc<App>>,
    Path(resource): Path<String>,
    query: Result<Query<UploadQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, Problem> {
    let entry = app.registry.by_resource(&resource).ok_or_else(|| {
        Problem::new(
            ErrorCode::NotFound,
            "no such WHIP resource (or it has ended)",
        )
    })?;
    let shared = &entry.shared;
    let refuse = |error: turngate_core::Error| {
        shared.count_rejected(&error, 0);
        Problem::new(error.code(), error.to_string())
    };
    let Query(query) = query.map_err(|e| {
        refuse(turngate_core::Error::refused(
            ErrorCode::MalformedMessage,
            format!("invalid query: {e}"),
        ))
    })?;
    let turn_id = query
        .turn_id
        .map(|s| s.parse::<turngate_core::TurnId>())
        .transpose()
        .map_err(|e| {
            refuse(turngate_core::Error::refused(
                ErrorCode::InvalidTurnId,
                format!("invalid turn_id: {e}"),
            ))
        })?;
    let headers = request.headers();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let multipart = mime == "multipart/form-data";
    if !multipart && !mime.starts_with("image/") {
        return Err(refuse(turngate_core::Error::refused(
            ErrorCode::UnsupportedMediaType,
            format!(
                "send the image with an image/* content type or as multipart/form-data, not {content_type:?}"
            ),
        )));
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .ok_or_else(|| {
            refuse(turngate_core::Error::refused(
                ErrorCode::SizeRequired,
                "Content-Length is required",
            ))
        })?;
    // A raw body is the image; a multipart body holds it with some framing around.
    let reserve = if multipart {
        length.min(app.max_image_bytes)
    } else {
        length
    };
    if length > app.max_upload_body() as u64 || (!multipart && length > app.max_image_bytes) {
        return Err(refuse(turngate_core::Error::refused(
            ErrorCode::ImageTooLarge,
            format!("the image exceeds {} bytes", app.max_image_bytes),
        )));
    }
    let upload_id = shared
        .begin_upload(query.upload_id, mime.clone(), reserve, turn_id)
        .await
        .map_err(|e| Problem::new(e.code(), e.to_string()))?;
    let body = tokio::time::timeout(
        app.upload_timeout,
        read_image(&app, request, multipart, mime),
    )
    .await;
    let (declared_mime, bytes) = match body {
        Ok(Ok(body)) => body,
        Ok(Err(problem)) => {
            let error = turngate_core::Error::refused(problem.code, problem.detail.clone());
            shared.abort_upload(upload_id, error).await;
            return Err(problem);
        }
        Err(_) => {
            let error = turngate_core::Error::refused(
                ErrorCode::UploadTimeout,
                "the body did not arrive in time",
            );
            let problem = Problem::new(error.code(), error.to_string());
            shared.abort_upload(upload_id, error).await;
            return Err(problem);
        }
    };
    let hashed = bytes.clone();
    let sha256 = tokio::task::spawn_blocking(move || turngate_core::upload::sha256(&hashed))
        .await
        .map_err(|_| Problem::new(ErrorCode::Internal, "hashing failed"))?;
    let accepted = shared
        .complete_upload(upload_id, declared_mime, bytes, sha256)
        .await
        .map_err(|e| Problem::new(e.code(), e.to_string()))?;
    Ok((StatusCode::CREATED, axum::Json(accepted)).into_response())
}

/// Reads the image out of the request: (declared content type, bytes).
async fn read_image(
    app: &App,
    request: Request,
    multipart: bool,
    mime: String,
) -> Result<(String, bytes::Bytes), Problem> {
    let too_large = || {
        Problem::new(
            ErrorCode::ImageTooLarge,
            format!("the image exceeds {} bytes", app.max_image_bytes),
        )
    };
    let (declared_mime, bytes) = if multipart {
        let form = Multipart::from_request(request, &()).await.map_err(|e| {
            Problem::new(
                ErrorCode::MalformedMessage,
                format!("invalid multipart body: {e}"),
            )
        })?;
        first_file(form).await?
    } else {
        let body = to_bytes(request.into_body(), app.max_upload_body())
            .await
            .map_err(|_| too_large())?;
        (mime, body)
    };
    if bytes.len() as u64 > app.max_image_bytes {
        return Err(too_large());
    }
    Ok((declared_mime, bytes))
}

/// The first part of a multipart body that carries a file (or, failing that, the first
/// part): (its content type, its bytes).
async fn first_file(mut multipart: Multipart) -> Result<(String, bytes::Bytes), Problem> {
    let malformed = |e: axum::extract::multipart::MultipartError| {
        let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorCode::ImageTooLarge
        } else {
            ErrorCode::MalformedMessage
        };
        Problem::new(code, format!("invalid multipart body: {e}"))
    };
    while let Some(field) = multipart.next_field().await.map_err(malformed)? {
        if field.file_name().is_none()
            && field
                .content_type()
                .is_none_or(|t| !t.starts_with("image/"))
        {
            continue;
        }
        let mime = field
            .content_type()
            .unwrap_or("application/octet-stream")
            .to_ascii_lowercase();
        let bytes = field.bytes().await.map_err(malformed)?;
        return Ok((mime, bytes));
    }
    Err(Problem::new(
        ErrorCode::MalformedMessage,
        "the multipart body has no file part",
    ))
}

/// 128 random bits, hex: the unguessable WHIP resource id.
fn resource_id(rng: &mut impl rand::Rng) -> String {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `DELETE /v1/whip/{resource}`: ends the session and frees what it held.
async fn delete_session(
    State(app): State<Arc<App>>,
    Path(resource): Path<String>,
) -> Result<StatusCode, Problem> {
    let entry = app.registry.by_resource(&resource).ok_or_else(|| {
        Problem::new(
            ErrorCode::NotFound,
            "no such WHIP resource (or it has ended)",
        )
    })?;
    entry.shared.close(session::SessionEnd::Deleted);
    entry.shared.wait_ended().await;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_sessions(State(app): State<Arc<App>>) -> Response {
    let sessions: Vec<Value> = app
        .registry
        .all()
        .iter()
        .map(|e| session_json(e, false))
        .collect();
    axum::Json(json!({ "sessions": sessions })).into_response()
}

async fn get_session(
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

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let content_type = turngate_telemetry::metrics::Exposition::CONTENT_TYPE;
    (
        [(header::CONTENT_TYPE, content_type)],
        crate::metrics::render(&app),
    )
        .into_response()
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
        let audio = entry.audio.lock().map(|a| a.clone()).unwrap_or_default();
        let blobs = s.blobs();
        let results = entry.results.lock().map(|r| r.clone()).unwrap_or_default();
        let at = |d: std::time::Duration| time(s.started + d);
        let turns: Vec<Value> = s
            .turns()
            .iter()
            .map(|t| {
                let a = audio.get(&t.id).copied().unwrap_or_default();
                json!({
                    "turn_id": t.id,
                    "turn_number": t.number,
                    "cause": t.cause,
                    "state": t.state,
                    "reason": t.reason,
                    "interrupted": t.interrupted,
                    "traceparent": t.traceparent().to_string(),
                    "started_at": at(t.started_at),
                    "ended_at": t.ended_at.map(at),
                    "completed_at": t.completed_at.map(at),
                    "duration_ms": t.ended_at.map(|e| (e - t.started_at).as_millis() as u64),
                    "frames": t.frames,
                    "audio_ms": a.samples / 16,
                                        "concealed_ms": a.concealed / 16,
                                        "blobs": blobs.iter().filter(|b| b.turn_id == t.id).collect::<Vec<_>>(),
                    "processing": results.get(&t.id),
                })
            })
            .collect();
        v["turns"] = Value::Array(turns);
    }
    v
}
