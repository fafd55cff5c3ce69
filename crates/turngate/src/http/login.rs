//! The login form for web pages that cannot send an `Authorization` header: `GET /login`
//! shows it, `POST /login` takes the operator credential (the admin token, or a JWT with
//! scope `admin`) and sets an operator session for it — never the credential itself —
//! as an `HttpOnly`, `SameSite=Strict` cookie (`Secure` unless the gateway listens on
//! loopback), then sends the browser to `next`; `POST /logout` clears it. The
//! credential travels in the form body, never in a URL.

use std::sync::Arc;

use axum::Form;
use axum::extract::State;
use axum::extract::rejection::FormRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::app::App;
use crate::auth::ADMIN_COOKIE;
use crate::problem::Problem;
use turngate_core::ErrorCode;

/// How long the cookie lasts, in seconds.
const COOKIE_MAX_AGE_S: u32 = 8 * 3600;

const FORM: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>turngate: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/ui/page.css">
<link rel="icon" href="data:,"></head>
<body>
<main>
<h1>Sign in</h1>
{message}<form method="post" action="/login">
<p><label for="token">Operator token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required></p>
<input type="hidden" name="next" value="{next}">
<p><button type="submit">Sign in</button></p>
</form>
</main>
</body>
</html>
"#;

/// The form's fields.
#[derive(serde::Deserialize)]
pub(super) struct Login {
    token: String,
    /// Where to go after signing in: a path on this gateway.
    next: Option<String>,
}

/// `GET /login[?next=…]`: the form, coming back to `next` (a local path) once signed in.
pub(super) async fn form(
    query: Result<axum::extract::Query<Next>, axum::extract::rejection::QueryRejection>,
) -> Response {
    page(query.ok().and_then(|q| q.0.next), None)
}

/// The form, to come back to `next` (if a local path), with a `refusal` to show.
fn page(next: Option<String>, refusal: Option<&str>) -> Response {
    let next = next
        .filter(|n| local_path(n))
        .unwrap_or_else(|| "/v1/sessions".into());
    let message = refusal.map_or_else(String::new, |r| {
        format!(
            "<p role=\"alert\" class=\"problem\">Not signed in: {}</p>\n",
            escape(r)
        )
    });
    let html = FORM
        .replace("{message}", &message)
        .replace("{next}", &escape(&next));
    with_policy(Html(html).into_response())
}

/// `?next=…` of the form.
#[derive(serde::Deserialize)]
pub(super) struct Next {
    next: Option<String>,
}

/// `text` for an HTML attribute value.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
}

pub(super) async fn login(
    State(app): State<Arc<App>>,
    form: Result<Form<Login>, FormRejection>,
) -> Response {
    let Form(login) = match form {
        Ok(form) => form,
        Err(e) => {
            return Problem::new(ErrorCode::MalformedMessage, format!("the form: {e}"))
                .into_response();
        }
    };
    if let Err(problem) = app.admin_credential(&login.token) {
        // A person at the form: the form again, saying why, with the refusal's status.
        let mut response = page(login.next, Some(&problem.detail));
        *response.status_mut() = crate::problem::status(problem.code);
        return response;
    }
    let next = login
        .next
        .filter(|n| local_path(n))
        .unwrap_or_else(|| "/v1/sessions".into());
    let secure = if app.secure_cookies { "; Secure" } else { "" };
    let cookie = format!(
        "{ADMIN_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={COOKIE_MAX_AGE_S}{secure}",
        app.auth.session(u64::from(COOKIE_MAX_AGE_S))
    );
    set_cookie(Redirect::to(&next).into_response(), &cookie)
}

/// `POST /logout`: ends the session the cookie carries (on this node: other nodes take
/// it until it expires) and clears the cookie.
pub(super) async fn logout(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(session) = app.auth.session_of(&headers) {
        app.auth.end_session(session);
    }
    let secure = if app.secure_cookies { "; Secure" } else { "" };
    let cookie = format!("{ADMIN_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}");
    set_cookie(StatusCode::NO_CONTENT.into_response(), &cookie)
}

/// Whether `next` is a path on this gateway and nothing else: it starts with one `/`,
/// not `//` or `/\` (which browsers read as another host), and holds only visible
/// ASCII but `\`. Anything else would make the login form an open redirect.
fn local_path(next: &str) -> bool {
    let mut bytes = next.bytes();
    bytes.next() == Some(b'/')
        && !matches!(bytes.next(), Some(b'/' | b'\\'))
        && next.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
}

fn set_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// No scripts at all, nothing from other origins (the pages' stylesheet only), never
/// framed.
fn with_policy(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'none'; style-src 'self'; img-src data:; \
             form-action 'self'; \
             base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_local_path_is_a_place_to_go_next() {
        for ok in ["/v1/sessions", "/turns/abc?x=1", "/"] {
            assert!(local_path(ok), "{ok}");
        }
        for refused in [
            "//evil.example/",
            "/\\evil.example/",
            "/\t/evil.example/",
            "/\r\nX: y",
            "https://evil.example",
            "evil",
            "",
            "/ a",
        ] {
            assert!(!local_path(refused), "{refused:?}");
        }
    }
}
