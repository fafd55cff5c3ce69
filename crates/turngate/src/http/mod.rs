//! The HTTP API, one file per resource family: WHIP signaling ([`whip`]), image
//! uploads ([`uploads`]), session queries ([`sessions`]), health ([`health`]) and
//! metrics ([`metrics`]). Errors are RFC 9457 problem+json ([`crate::problem`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, header};
use axum::routing::{delete, get, post};
use tower_http::cors::{AllowOrigin, CorsLayer};
use turngate_core::ErrorCode;

use crate::app::App;
use crate::problem::Problem;

mod health;
mod metrics;
pub mod server;
mod sessions;
mod uploads;
mod whip;

/// The router, with CORS for the configured origins.
pub fn router(app: Arc<App>, cors_origins: &[String]) -> Router {
    let router = Router::new()
        .route("/v1/whip", post(whip::create_session))
        .route("/v1/whip/{resource}", delete(whip::delete_session))
        .route(
            "/v1/whip/{resource}/images",
            post(uploads::upload_image).layer(DefaultBodyLimit::max(uploads::max_body(&app))),
        )
        .route("/v1/sessions", get(sessions::list_sessions))
        .route("/v1/sessions/{id}", get(sessions::get_session))
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(metrics::metrics))
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
