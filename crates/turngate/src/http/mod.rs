//! The HTTP API, one file per resource family: WHIP signaling ([`whip`]), image
//! uploads ([`uploads`]), session queries ([`sessions`]), health ([`health`]) and
//! metrics ([`metrics`]). Errors are RFC 9457 problem+json ([`crate::problem`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{HeaderValue, Method, header};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Router, middleware};
use tower_http::cors::{AllowOrigin, CorsLayer};
use turngate_core::ErrorCode;

use crate::app::App;
use crate::problem::Problem;

mod health;
mod login;
mod metrics;
pub mod server;
mod sessions;
mod uploads;
mod whip;

/// The router. CORS (for the configured origins) covers only the client routes — WHIP,
/// DELETE, uploads — with `Authorization` allowed and no credentials mode; session reads,
/// health and metrics send no CORS headers. Every request's `Host` is checked first.
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
        .route("/login", get(login::form).post(login::login))
        .route("/logout", post(login::logout))
        .fallback(|| async { Problem::new(ErrorCode::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|method: Method| async move {
            Problem::new(
                ErrorCode::MethodNotAllowed,
                format!("{method} is not allowed here"),
            )
        });
    let router = match cors(cors_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router
        .layer(middleware::from_fn_with_state(Arc::clone(&app), check_host))
        .with_state(app)
}

/// Whether `path` is a client route: `/v1/whip` and what lies under it.
fn client_route(path: &str) -> bool {
    path == "/v1/whip" || path.starts_with("/v1/whip/")
}

/// The CORS layer for `origins`, if any: it answers only for client routes (a
/// preflight elsewhere gets no CORS headers, so browsers refuse the request).
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let any = origins.iter().any(|o| o == "*");
    let listed: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let allowed = AllowOrigin::predicate(move |origin, request| {
        client_route(request.uri.path()) && (any || listed.contains(origin))
    });
    Some(
        CorsLayer::new()
            .allow_origin(allowed)
            .allow_methods([Method::POST, Method::DELETE, Method::OPTIONS])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
            .expose_headers([header::LOCATION])
            .max_age(Duration::from_secs(600)),
    )
}

/// Refuses a request whose `Host` is not one the gateway serves (`http.allowed_hosts`):
/// a web page that rebinds its own name to 127.0.0.1 (DNS rebinding) still sends its
/// name, so it cannot reach a loopback gateway.
async fn check_host(
    State(app): State<Arc<App>>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    if let Some(allowed) = &app.allowed_hosts {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(host_name)
            .unwrap_or_default();
        if !allowed.contains(&host) {
            return Problem::new(
                ErrorCode::Forbidden,
                format!("Host {host:?} is not served here (http.allowed_hosts)"),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// The name in a `Host` value, lowercase, without port or IPv6 brackets.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.to_ascii_lowercase()
}
