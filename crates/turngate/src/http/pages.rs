//! The web pages the gateway serves, with their assets embedded at build time (no build
//! step, nothing from another origin at run time): the demo page at `/` (`ui.demo`),
//! and for the operator the turn inspector (`/turns/{turn_id}`) and a session's turns
//! (`/sessions/{session_id}`), which read the record through the API
//! ([`super::records`]).
//!
//! Every page is served under one Content-Security-Policy: scripts and styles from this
//! origin only (no inline script, no `eval`), images and audio from it or `data:`/`blob:`
//! URLs (a prompt's images are data URLs), never framed. An operator page asked for
//! without the operator credential sends the browser to the sign-in form, which comes
//! back to it.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;
use turngate_core::ErrorCode;

use crate::app::App;
use crate::problem::Problem;

/// The pages' policy. See the module docs.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; \
    form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The pages and their assets: name under `/ui/`, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "page.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/page.css"),
    ),
    ("common.js", JS, include_str!("../../ui/common.js")),
    ("demo.js", JS, include_str!("../../ui/demo.js")),
    ("inspector.js", JS, include_str!("../../ui/inspector.js")),
    ("session.js", JS, include_str!("../../ui/session.js")),
];
const JS: &str = "text/javascript; charset=utf-8";

const DEMO: &str = include_str!("../../ui/demo.html");
const INSPECTOR: &str = include_str!("../../ui/inspector.html");
const SESSION: &str = include_str!("../../ui/session.html");

/// `GET /`: the demo page, if `ui.demo`.
pub(super) async fn demo(State(app): State<Arc<App>>) -> Response {
    if !app.demo {
        return Problem::new(
            ErrorCode::NotFound,
            "no demo page here (ui.demo is off: it is on by default on loopback only)",
        )
        .into_response();
    }
    page(DEMO)
}

/// `GET /turns/{turn_id}`: the turn inspector.
pub(super) async fn inspector(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    operator_page(&app, &headers, &uri, INSPECTOR)
}

/// `GET /sessions/{session_id}`: a session's turns.
pub(super) async fn session(State(app): State<Arc<App>>, headers: HeaderMap, uri: Uri) -> Response {
    operator_page(&app, &headers, &uri, SESSION)
}

/// `GET /ui/{file}`: an asset, or `config.json` (for the operator: what the pages
/// need of the configuration).
pub(super) async fn asset(
    State(app): State<Arc<App>>,
    axum::extract::Path(file): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    if file == "config.json" {
        app.admin(&headers)?;
        let config = json!({ "trace_url_template": app.trace_url_template });
        return Ok(axum::Json(config).into_response());
    }
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .ok_or_else(|| Problem::new(ErrorCode::NotFound, "no such asset"))?;
    let mut response = (*body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

/// `html` for the operator; anyone else goes to sign in first, then back here.
fn operator_page(app: &App, headers: &HeaderMap, uri: &Uri, html: &'static str) -> Response {
    if app.auth.admin(headers).is_ok() {
        return page(html);
    }
    let back = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("next", &back)
        .finish();
    Redirect::to(&format!("/login?{query}")).into_response()
}

/// A page, under the pages' policy.
fn page(html: &'static str) -> Response {
    let mut response = axum::response::Html(html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
