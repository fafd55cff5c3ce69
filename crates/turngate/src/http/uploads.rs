//! `POST /v1/whip/{resource}/images`: an image for the session, as a raw body or the
//! first file of a multipart form, tagged with its turn like a data-channel upload.

use std::sync::Arc;

use axum::body::to_bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use turngate_core::ErrorCode;

use crate::app::App;
use crate::auth::Action;
use crate::problem::Problem;

/// Bytes of multipart headers and boundaries allowed around an image.
const MULTIPART_OVERHEAD: usize = 64 * 1024;

/// Largest HTTP upload body: an image at the limit plus room for multipart framing.
pub(super) fn max_body(app: &App) -> usize {
    app.max_image_bytes as usize + MULTIPART_OVERHEAD
}

/// Query of `POST /v1/whip/{resource}/images`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UploadQuery {
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
pub(super) async fn upload_image(
    State(app): State<Arc<App>>,
    Path(resource): Path<String>,
    query: Result<Query<UploadQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, Problem> {
    let entry = app.client_session(request.headers(), &resource, Action::Upload)?;
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
    if length > max_body(&app) as u64 || (!multipart && length > app.max_image_bytes) {
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
            let malformed = Problem::new(
                ErrorCode::MalformedMessage,
                format!("invalid multipart body: {e}"),
            );
            super::server::body_failed(&e, malformed)
        })?;
        first_file(form).await?
    } else {
        let body = to_bytes(request.into_body(), max_body(app))
            .await
            .map_err(|e| super::server::body_failed(&e, too_large()))?;
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
        let problem = Problem::new(code, format!("invalid multipart body: {e}"));
        super::server::body_failed(&e, problem)
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
