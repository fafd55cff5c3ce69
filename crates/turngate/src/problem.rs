//! Errors of the HTTP API as RFC 9457 problem+json responses: the one place where an
//! [`ErrorCode`] becomes an HTTP status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use turngate_core::ErrorCode;

/// Seconds a client should wait before retrying when the gateway is full, unless the
/// problem knows better.
const RETRY_AFTER_S: u64 = 5;

/// An API error: a code from the closed list and a message for the client.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct Problem {
    /// The error code.
    pub code: ErrorCode,
    /// What went wrong, for the client.
    pub detail: String,
    /// Seconds until a retry may succeed, when known (a rate limit's wait).
    pub retry_after_s: Option<u64>,
    /// Extension members of the body (RFC 9457 §3.2), e.g. `sessions` of
    /// `ambiguous_turn`.
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    /// A problem with a code and a message.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            retry_after_s: None,
            extensions: serde_json::Map::new(),
        }
    }

    /// The same, with extension member `name` (RFC 9457 §3.2).
    pub fn with(mut self, name: &str, value: serde_json::Value) -> Self {
        self.extensions.insert(name.to_owned(), value);
        self
    }

    /// The same, telling the client when to retry (rounded up to whole seconds, at
    /// least 1).
    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after_s = Some((wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1));
        self
    }
}

/// The HTTP status of an error code.
pub fn status(code: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match code {
        InvalidSdp => StatusCode::BAD_REQUEST,
        NoAudio | UnsupportedCodec => StatusCode::UNPROCESSABLE_ENTITY,
        UnsupportedMediaType | UnsupportedImageFormat => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        PayloadTooLarge | ImageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        NotAnImage | CorruptImage | TooManyPixels | DecodeTimeout | Sha256Mismatch => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        TurnClosed => StatusCode::CONFLICT,
        SizeRequired => StatusCode::LENGTH_REQUIRED,
        UnknownTurn => StatusCode::NOT_FOUND,
        TooManyUploads | UploadBudgetExceeded | TooManyPending => StatusCode::TOO_MANY_REQUESTS,
        NotFound => StatusCode::NOT_FOUND,
        MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        TooManySessions | NoMediaPort | ShuttingDown | Overloaded | StoreUnavailable => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        TurnNotFound | RecordsDisabled => StatusCode::NOT_FOUND,
        AmbiguousTurn | TurnBeingRecorded => StatusCode::CONFLICT,
        RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
        Internal => StatusCode::INTERNAL_SERVER_ERROR,
        RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        Unauthorized => StatusCode::UNAUTHORIZED,
        Forbidden => StatusCode::FORBIDDEN,
        RateLimited => StatusCode::TOO_MANY_REQUESTS,
        BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
        BackendUnavailable | BackendStatus | BackendMalformed | BackendStreamBroken => {
            StatusCode::BAD_GATEWAY
        }
        // Data-channel codes; should one reach HTTP, it is the client's fault.
        _ => StatusCode::BAD_REQUEST,
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = status(self.code);
        let mut body = serde_json::json!({
            "type": format!("urn:turngate:error:{}", self.code),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        for (name, value) in self.extensions {
            body[name] = value;
        }
        let mut response = (status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if matches!(
            self.code,
            ErrorCode::TooManySessions
                | ErrorCode::TooManyPending
                | ErrorCode::NoMediaPort
                | ErrorCode::ShuttingDown
                | ErrorCode::Overloaded
                | ErrorCode::StoreUnavailable
                | ErrorCode::RateLimited
        ) {
            let seconds = self.retry_after_s.unwrap_or(RETRY_AFTER_S);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.code == ErrorCode::Unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_wait_is_the_retry_after_rounded_up() {
        let retry = |problem: Problem| problem.into_response().headers()["retry-after"].clone();
        let limited = Problem::new(ErrorCode::RateLimited, "slow down");
        assert_eq!(
            retry(limited.retry_after(std::time::Duration::from_millis(29_100))),
            "30"
        );
        let limited = Problem::new(ErrorCode::RateLimited, "slow down");
        assert_eq!(retry(limited.retry_after(std::time::Duration::ZERO)), "1");
        assert_eq!(retry(Problem::new(ErrorCode::TooManySessions, "full")), "5");
    }

    /// docs/errors.md lists every code with the status this module gives it.
    #[test]
    fn the_documented_table_matches_the_codes() {
        let doc = include_str!("../../../docs/errors.md");
        for code in ErrorCode::ALL {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{code}` |")))
                .unwrap_or_else(|| panic!("docs/errors.md has no row for {code}"));
            let documented: u16 = row.split('|').nth(2).unwrap().trim().parse().unwrap();
            assert_eq!(documented, status(*code).as_u16(), "status of {code}");
        }
        let rows = doc.lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(
            rows,
            ErrorCode::ALL.len(),
            "docs/errors.md lists codes that do not exist"
        );
    }
}
