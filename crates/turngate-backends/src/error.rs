//! The crate's error type, and the one place where what a backend says about an error
//! is made fit to show: [`sanitize`].
//!
//! A backend's error body may be HTML, a stack trace or an echo of the request, so no
//! body is ever kept: only a message found where OpenAI-compatible servers put one,
//! sanitized and capped. Every error's `Display` is then safe to log and to show a
//! client; [`BackendError::client_message`] also leaves out transport details.

use std::fmt;

use turngate_core::ErrorCode;

/// Most characters of a backend's message that are kept, the `…` marking a cut included.
pub const MESSAGE_CAP: usize = 200;

/// Which deadline a call missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimeoutKind {
    /// A non-streaming call's per-request timeout (`timeout_ms`): connection, headers and
    /// body.
    Request,
    /// An LLM stream's wait from the call's start to its first content delta.
    FirstToken,
    /// An LLM stream's longest gap between bytes once its first delta has arrived.
    Idle,
    /// An LLM stream's whole call.
    Total,
}

impl TimeoutKind {
    /// `request`, `first token`, `idle` or `total`: for logs and telemetry.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::FirstToken => "first token",
            Self::Idle => "idle",
            Self::Total => "total",
        }
    }
}

impl fmt::Display for TimeoutKind {
    /// What the call was doing when the deadline passed, e.g. `waiting for the first token`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Request => "waiting for its answer",
            Self::FirstToken => "waiting for the first token",
            Self::Idle => "waiting for more of its stream",
            Self::Total => "before its answer was complete",
        })
    }
}

/// Why a backend call failed. `Display` is safe to log and to show a client: it holds no
/// backend body, only [`sanitize`]d messages; [`client_message`](Self::client_message)
/// also leaves out transport details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// A deadline passed, e.g. `llm timed out waiting for the first token (10000 ms)`.
    #[error("{backend} timed out {kind} ({ms} ms)")]
    Timeout {
        /// The backend's name.
        backend: &'static str,
        /// Which deadline.
        kind: TimeoutKind,
        /// That deadline's length in milliseconds.
        ms: u64,
    },
    /// The backend could not be reached (connection refused or reset, circuit open, too
    /// many calls waiting).
    #[error("{backend} is unavailable: {detail}")]
    Unavailable {
        /// The backend's name.
        backend: &'static str,
        /// What failed: the transport's error chain without the URL. For logs only: it
        /// may name internal hosts.
        detail: String,
    },
    /// The backend answered with an error status, e.g. `llm answered 503: overloaded`.
    #[error("{backend} answered {status}{}", suffix(.message))]
    Status {
        /// The backend's name.
        backend: &'static str,
        /// The HTTP status.
        status: u16,
        /// The error message of a JSON body, [`sanitize`]d; `None` if there was none.
        message: Option<String>,
    },
    /// The backend reported an error inside a successful (200) event stream: an
    /// `event: error` event, or a chunk with an `error` member.
    #[error("{backend} reported an error in its stream{}", suffix(.message))]
    StreamError {
        /// The backend's name.
        backend: &'static str,
        /// The error's message, [`sanitize`]d; `None` if there was none.
        message: Option<String>,
    },
    /// The answer was not what the API promises.
    #[error("{backend} sent a malformed answer: {detail}")]
    Malformed {
        /// The backend's name.
        backend: &'static str,
        /// What was wrong (the gateway's words, not the backend's).
        detail: String,
    },
    /// The response stream broke off before it was done.
    #[error("{backend}'s stream broke off: {detail}")]
    StreamBroken {
        /// The backend's name.
        backend: &'static str,
        /// What happened (the gateway's words, or the transport's error chain).
        detail: String,
    },
    /// The call was shed: no call slot of the backend came free in time, or too many
    /// calls were waiting for one (see [`crate::slots`]). The backend did nothing wrong:
    /// never retried, never counted against its health.
    #[error("{backend} is overloaded: {}", shed_reason(*.reason))]
    Overloaded {
        /// The backend's name.
        backend: &'static str,
        /// Why the call was shed.
        reason: crate::slots::Shed,
    },
    /// The configuration cannot work (e.g. no TLS provider, an API key that is not a
    /// valid header value).
    #[error("{0}")]
    Config(String),
}

impl BackendError {
    /// The same, with `key` [redacted](crate::key::ApiKey::redact) from every message
    /// the backend or the transport wrote.
    pub(crate) fn redact(self, key: Option<&crate::key::ApiKey>) -> Self {
        let Some(key) = key else {
            return self;
        };
        let text = |s: String| key.redact_str(&s);
        match self {
            Self::Unavailable { backend, detail } => Self::Unavailable {
                backend,
                detail: text(detail),
            },
            Self::Status {
                backend,
                status,
                message,
            } => Self::Status {
                backend,
                status,
                message: message.map(text),
            },
            Self::StreamError { backend, message } => Self::StreamError {
                backend,
                message: message.map(text),
            },
            Self::Malformed { backend, detail } => Self::Malformed {
                backend,
                detail: text(detail),
            },
            Self::StreamBroken { backend, detail } => Self::StreamBroken {
                backend,
                detail: text(detail),
            },
            other => other,
        }
    }
}

fn shed_reason(reason: crate::slots::Shed) -> &'static str {
    match reason {
        crate::slots::Shed::QueueFull => "too many turns are waiting for it",
        crate::slots::Shed::SessionQueueFull => "this session has too many turns waiting for it",
        crate::slots::Shed::QueueTimeout => "no call slot came free in time",
    }
}

/// `: {message}`, or nothing.
fn suffix(message: &Option<String>) -> String {
    message
        .as_deref()
        .map_or(String::new(), |m| format!(": {m}"))
}

impl BackendError {
    /// The client-visible code. A [`StreamError`](Self::StreamError) is a
    /// [`ErrorCode::BackendStatus`]: the backend reported an error, just not by status.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Timeout { .. } => ErrorCode::BackendTimeout,
            Self::Unavailable { .. } => ErrorCode::BackendUnavailable,
            Self::Status { .. } | Self::StreamError { .. } => ErrorCode::BackendStatus,
            Self::Malformed { .. } => ErrorCode::BackendMalformed,
            Self::StreamBroken { .. } => ErrorCode::BackendStreamBroken,
            Self::Overloaded { .. } => ErrorCode::Overloaded,
            Self::Config(_) => ErrorCode::Internal,
        }
    }

    /// The message to show a client: which backend, what went wrong, and the backend's
    /// own (sanitized) message if it gave one — never the transport's error chain or the
    /// gateway's diagnostics, which are for logs (`Display`). E.g. `llm is unavailable`,
    /// `llm answered 503: overloaded`, `llm timed out waiting for the first token
    /// (10000 ms)`.
    pub fn client_message(&self) -> String {
        match self {
            Self::Unavailable { backend, .. } => format!("{backend} is unavailable"),
            Self::Malformed { backend, .. } => format!("{backend} sent a malformed answer"),
            Self::StreamBroken { backend, .. } => format!("{backend}'s stream broke off"),
            Self::Config(_) => "a backend is misconfigured".into(),
            Self::Timeout { .. }
            | Self::Status { .. }
            | Self::StreamError { .. }
            | Self::Overloaded { .. } => self.to_string(),
        }
    }

    /// Whether trying again may help (and repeating the request is harmless).
    pub fn retryable(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Unavailable { .. } => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// Text from a backend made fit for a log line or a client: control characters
/// (newlines included) and bidirectional-text controls become spaces, runs of whitespace
/// collapse to one space, the ends are trimmed, and the result is capped at
/// [`MESSAGE_CAP`] characters, a cut one ending in `…`.
pub fn sanitize(text: &str) -> String {
    let spaced: String = text
        .chars()
        .map(|c| {
            let bidi = matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
            if c.is_control() || bidi { ' ' } else { c }
        })
        .collect();
    let collapsed = spaced.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= MESSAGE_CAP {
        return collapsed;
    }
    let kept: String = collapsed.chars().take(MESSAGE_CAP - 1).collect();
    format!("{}…", kept.trim_end())
}

/// The error message of an OpenAI-compatible error body, [`sanitize`]d: the first string
/// of `error.message`, `error`, `message`, `detail`. `None` if the body is not JSON, has
/// none of them, or the message is blank.
pub(crate) fn error_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    message_of(&value)
}

/// [`error_message`] of a parsed body.
pub(crate) fn message_of(value: &serde_json::Value) -> Option<String> {
    let found = [
        &value["error"]["message"],
        &value["error"],
        &value["message"],
        &value["detail"],
    ]
    .into_iter()
    .find_map(|v| v.as_str())?;
    Some(sanitize(found)).filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_replaces_controls_and_collapses_whitespace() {
        assert_eq!(
            sanitize("  a\nb\r\n\tc\u{0}d\u{1b}[31m  e  "),
            "a b c d [31m e"
        );
        assert_eq!(sanitize("left\u{202E}right\u{2028}x"), "left right x");
        assert_eq!(sanitize(" \n\t "), "");
    }

    #[test]
    fn sanitize_keeps_short_text_whole() {
        let exact = "x".repeat(MESSAGE_CAP);
        assert_eq!(sanitize(&exact), exact);
        let wide = "é".repeat(MESSAGE_CAP); // 2 bytes a char: counted in chars
        assert_eq!(sanitize(&wide), wide);
    }

    #[test]
    fn sanitize_caps_on_a_char_boundary() {
        let cut = sanitize(&"x".repeat(MESSAGE_CAP + 1));
        assert_eq!(cut.chars().count(), MESSAGE_CAP);
        assert!(cut.ends_with("x…"));

        // Multi-byte characters straddling the cap: cut between characters.
        for wide in ["é", "€", "😀"] {
            let text = format!("{}{}", "a".repeat(MESSAGE_CAP - 2), wide.repeat(5));
            let cut = sanitize(&text);
            assert_eq!(cut.chars().count(), MESSAGE_CAP, "{wide}");
            assert!(cut.ends_with(&format!("{wide}…")), "{cut}");
        }

        // No space before the mark when the cut falls after one.
        let text = format!("{} tail", "a".repeat(MESSAGE_CAP - 2));
        assert!(sanitize(&text).ends_with("a…"));
    }

    #[test]
    fn error_message_knows_the_usual_shapes() {
        let of = |body: &str| error_message(body.as_bytes());
        assert_eq!(
            of(r#"{"error":{"message":"bad\nmodel","code":400}}"#).as_deref(),
            Some("bad model")
        );
        assert_eq!(
            of(r#"{"error":"rate limited"}"#).as_deref(),
            Some("rate limited")
        );
        assert_eq!(
            of(r#"{"message":"no such model"}"#).as_deref(),
            Some("no such model")
        );
        assert_eq!(
            of(r#"{"detail":"Not Found"}"#).as_deref(),
            Some("Not Found")
        );
        assert_eq!(of(r#"{"error":{"code":500}}"#), None);
        assert_eq!(of(r#"{"detail":[{"msg":"field required"}]}"#), None);
        assert_eq!(of(r#"{"error":{"message":"  "}}"#), None);
        assert_eq!(
            of("<html>Internal Server Error at db-7.internal</html>"),
            None
        );
        assert_eq!(of(""), None);
        let long = format!(r#"{{"error":{{"message":"{}"}}}}"#, "y".repeat(1000));
        assert_eq!(of(&long).unwrap().chars().count(), MESSAGE_CAP);
    }

    #[test]
    fn display_and_client_message() {
        let status = BackendError::Status {
            backend: "llm",
            status: 503,
            message: Some("overloaded".into()),
        };
        assert_eq!(status.to_string(), "llm answered 503: overloaded");
        assert_eq!(status.client_message(), "llm answered 503: overloaded");
        let bare = BackendError::Status {
            backend: "llm",
            status: 502,
            message: None,
        };
        assert_eq!(bare.to_string(), "llm answered 502");

        let unavailable = BackendError::Unavailable {
            backend: "llm",
            detail: "error sending request: tcp connect error".into(),
        };
        assert_eq!(unavailable.client_message(), "llm is unavailable");
        assert!(unavailable.to_string().contains("tcp connect error"));

        let timeout = BackendError::Timeout {
            backend: "llm",
            kind: TimeoutKind::FirstToken,
            ms: 10_000,
        };
        assert_eq!(
            timeout.client_message(),
            "llm timed out waiting for the first token (10000 ms)"
        );

        let stream = BackendError::StreamError {
            backend: "llm",
            message: Some("model crashed".into()),
        };
        assert_eq!(stream.code(), ErrorCode::BackendStatus);
        assert_eq!(
            stream.client_message(),
            "llm reported an error in its stream: model crashed"
        );
        assert!(!stream.retryable());
    }
}
