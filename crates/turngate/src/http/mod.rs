//! The HTTP API, one file per resource family: WHIP signaling ([`whip`]), image
//! uploads ([`uploads`]), session queries ([`sessions`]), the turn record
//! ([`records`]), the web pages ([`pages`]), health ([`health`]) and metrics
//! ([`metrics`]). Errors are RFC 9457 problem+json ([`crate::problem`]).

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
pub mod host;
mod login;
mod metrics;
mod pages;
mod records;
pub mod server;
mod sessions;
mod uploads;
mod whip;

/// The router. CORS (for the configured origins) covers only the client routes — WHIP,
/// DELETE, uploads — with `Authorization` allowed and no credentials mode; session reads,
/// health and metrics send no CORS headers. Every request's `Host` is checked first.
pub fn router(app: Arc<App>, cors_origins: &[String]) -> Router {
    // The client routes' 405 is set before their CORS layer, which then wraps it: a
    // preflight (OPTIONS) reaches the layer instead of the 405.
    let client = Router::new()
        .route("/v1/whip", post(whip::create_session))
        .route("/v1/whip/{resource}", delete(whip::delete_session))
        .route(
            "/v1/whip/{resource}/images",
            post(uploads::upload_image).layer(DefaultBodyLimit::max(uploads::max_body(&app))),
        )
        .method_not_allowed_fallback(method_not_allowed);
    let client = match cors(cors_origins) {
        Some(cors) => client.layer(cors),
        None => client,
    };
    Router::new()
        .route("/v1/sessions", get(sessions::list_sessions))
        .route("/v1/sessions/{id}", get(sessions::get_session))
        .route("/v1/sessions/{id}/turns", get(records::session_turns))
        .route(
            "/v1/sessions/{id}/records",
            delete(records::delete_session_records),
        )
        .route(
            "/v1/turns/{turn}",
            get(records::get_turn).delete(records::delete_turn),
        )
        .route(
            "/v1/turns/{turn}/artifacts/{*name}",
            get(records::get_artifact),
        )
        .route("/", get(pages::demo))
        .route("/turns/{turn}", get(pages::inspector))
        .route("/sessions/{id}", get(pages::session))
        .route("/ui/{file}", get(pages::asset))
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(metrics::metrics))
        .route("/login", get(login::form).post(login::login))
        .route("/logout", post(login::logout))
        .method_not_allowed_fallback(method_not_allowed)
        .merge(client)
        .fallback(|| async { Problem::new(ErrorCode::NotFound, "no such endpoint") })
        .layer(middleware::from_fn_with_state(Arc::clone(&app), check_host))
        .with_state(app)
}

async fn method_not_allowed(method: Method) -> Problem {
    Problem::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed here"),
    )
}

/// The CORS layer for `origins`, if any, for the client routes only: anywhere else a
/// preflight gets no CORS headers at all, so browsers refuse the request.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let any = origins.iter().any(|o| o == "*");
    let listed: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let allowed = AllowOrigin::predicate(move |origin, _| any || listed.contains(origin));
    Some(
        CorsLayer::new()
            .allow_origin(allowed)
            .allow_methods([Method::POST, Method::DELETE, Method::OPTIONS])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
            .expose_headers([header::LOCATION])
            .max_age(Duration::from_secs(600)),
    )
}

/// Refuses a request whose `Host` is not one the gateway serves (`http.allowed_hosts`,
/// see [`host`]), counted as an access refusal with reason `host`.
async fn check_host(
    State(app): State<Arc<App>>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    if let Err(named) = app.allowed_hosts.check(request.uri(), request.headers()) {
        let mut refused = app.refuse(crate::auth::Refusal::Host);
        refused.detail = format!("Host {named:?} is not served here (http.allowed_hosts)");
        return refused.into_response();
    }
    next.run(request).await
}
