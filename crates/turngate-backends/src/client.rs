//! One configured backend: where it is, how to authenticate, how long to wait, how often
//! to retry, how many calls at once and how many may wait ([`crate::slots`]) — and a
//! circuit breaker ([`crate::breaker`]) so that a backend that is down fails fast
//! instead of piling up calls.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue};

use crate::breaker::{Breaker, Permit};
use crate::context::TurnContext;
use crate::error::{self, BackendError, TimeoutKind};
use crate::slots::{Shed, Slot, SlotLimits, Slots};
use crate::tape::Tape;
/// First retry delay; doubled per attempt up to [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_millis(200);
/// Longest delay between two attempts, however many retries are configured: a backend
/// that failed a few times in a row is retried every 2 s, not after minutes.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Most bytes of an error answer's body read, to find its message.
const ERROR_BODY_LIMIT: usize = 16 * 1024;

pub use crate::key::ApiKey;

/// How to reach one backend.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// API base URL including the version prefix, e.g. `http://127.0.0.1:8000/v1`.
    /// Empty: the backend is not configured and its stage is skipped.
    pub url: String,
    /// The model name sent with each request.
    pub model: String,
    /// Bearer token, if the backend wants one. Never logged.
    pub api_key: Option<ApiKey>,
    /// ASR and vision: per-request timeout in milliseconds (connection, headers, body).
    /// All backends: the connect timeout (at most 10 s). An LLM stream's deadlines are
    /// [`crate::llm::StreamTimeouts`] instead.
    pub timeout_ms: u64,
    /// Retries of a failed request where repeating it is safe (never once an LLM stream
    /// has started), with exponential back-off from 200 ms capped at 2 s. A retry keeps
    /// the call's slot.
    pub retries: u32,
    /// Calls at once, gateway-wide. Default 16.
    pub max_concurrent: usize,
    /// Calls at once of one session: its fair share of `max_concurrent`. Default 4.
    pub max_concurrent_per_session: usize,
    /// Calls waiting for a slot, gateway-wide; one more is shed (`overloaded`). Default 64.
    pub max_queued: usize,
    /// Calls of one session waiting for a slot; one more is shed. Default 8.
    pub max_queued_per_session: usize,
    /// Longest wait for a slot in milliseconds, then the call is shed. Default 10 000.
    pub queue_timeout_ms: u64,
    /// The API spoken, for telemetry (`gen_ai.provider.name`): `openai` for
    /// OpenAI-compatible servers.
    pub provider: String,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            model: String::new(),
            api_key: None,
            timeout_ms: 30_000,
            retries: 1,
            max_concurrent: 16,
            max_concurrent_per_session: 4,
            max_queued: 64,
            max_queued_per_session: 8,
            queue_timeout_ms: 10_000,
            provider: "openai".into(),
        }
    }
}

impl BackendConfig {
    /// Whether a URL is set.
    pub fn is_configured(&self) -> bool {
        !self.url.is_empty()
    }
}

/// A configured backend, shared by every session.
pub struct Backend {
    /// `asr`, `vision` or `llm`: names it in errors and logs.
    pub name: &'static str,
    config: BackendConfig,
    http: reqwest::Client,
    slots: Slots,
    breaker: Mutex<Breaker>,
    epoch: Instant,
}

impl Backend {
    /// A backend client. Installs the `ring` TLS provider if none is installed yet.
    pub fn new(name: &'static str, config: BackendConfig) -> Result<Self, BackendError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.timeout_ms.min(10_000)))
            .build()
            .map_err(|e| BackendError::Config(format!("{name}: {e}")))?;
        let slots = Slots::new(SlotLimits {
            max_concurrent: config.max_concurrent,
            per_session: config.max_concurrent_per_session,
            max_queued: config.max_queued,
            max_queued_per_session: config.max_queued_per_session,
            queue_timeout: Duration::from_millis(config.queue_timeout_ms),
        });
        Ok(Self {
            name,
            config,
            http,
            slots,
            breaker: Mutex::default(),
            epoch: Instant::now(),
        })
    }

    /// Calls waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.slots.queued()
    }

    /// Calls shed so far for `reason`.
    pub fn shed(&self, reason: Shed) -> u64 {
        self.slots.shed(reason)
    }

    /// The configuration.
    pub fn config(&self) -> &BackendConfig {
        &self.config
    }

    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }

    /// `{base}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.url.trim_end_matches('/'))
    }

    /// Sends a request built by `build` (called once the call has its slot, so a large
    /// body is only made then), with the turn's trace headers, the API key, the
    /// per-request timeout (`timeout_ms`, reported as [`TimeoutKind::Request`]), the
    /// session's fair share of slots and the circuit breaker; retries where `retry`
    /// allows. Returns the successful response and the slot to hold while reading it.
    ///
    /// Errors: `Overloaded` (shed: no slot), `Timeout`, `Unavailable`, `Status` (with
    /// the body's error message, if it has one), `Config`.
    pub async fn send(
        &self,
        ctx: &TurnContext,
        retry: bool,
        outgoing: &Outgoing<'_>,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::Response, Slot), BackendError> {
        let slot = self.slot(ctx).await?;
        let response = self
            .send_in(ctx, retry, Some(self.timeout()), outgoing, build)
            .await?;
        Ok((response, slot))
    }

    /// A call slot for the session of `ctx` (see [`crate::slots`]).
    ///
    /// Errors: `Overloaded` (shed).
    pub async fn slot(&self, ctx: &TurnContext) -> Result<Slot, BackendError> {
        self.slots
            .acquire(ctx.session_id)
            .await
            .map_err(|reason| BackendError::Overloaded {
                backend: self.name,
                reason,
            })
    }

    /// [`send`](Self::send) for a call that holds its slot already, with the given
    /// per-request timeout, or none: a stream's reader keeps its own deadlines.
    pub(crate) async fn send_in(
        &self,
        ctx: &TurnContext,
        retry: bool,
        timeout: Option<Duration>,
        outgoing: &Outgoing<'_>,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, BackendError> {
        let mut attempt = 0;
        loop {
            let key = self.config.api_key.as_ref();
            outgoing
                .tape
                .request(outgoing.body, outgoing.content_type, key);
            let result = self
                .attempt(ctx, timeout, outgoing.tape, &build)
                .await
                .map_err(|e| e.redact(key));
            match result {
                Err(e) if retry && e.retryable() && attempt < self.config.retries => {
                    tracing::debug!(backend = self.name, turn = %ctx.turn_id, error = %e, attempt, "Retrying.");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn attempt(
        &self,
        ctx: &TurnContext,
        timeout: Option<Duration>,
        tape: &Tape,
        build: &impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, BackendError> {
        let permit = self.breaker().permit(self.now_ms());
        match permit {
            Permit::Refuse => {
                return Err(BackendError::Unavailable {
                    backend: self.name,
                    detail: "failing fast: it was unreachable just now".into(),
                });
            }
            Permit::Probe => {
                tracing::info!(backend = self.name, "Circuit half-open: probing.");
            }
            Permit::Call => {}
        }
        let mut headers = HeaderMap::new();
        let value = |s: String| {
            HeaderValue::from_str(&s)
                .map_err(|e| BackendError::Config(format!("{}: {e}", self.name)))
        };
        headers.insert("traceparent", value(ctx.traceparent())?);
        headers.insert("baggage", value(ctx.baggage())?);
        if let Some(key) = &self.config.api_key {
            let mut auth = value(format!("Bearer {}", key.0))?;
            auth.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, auth);
        }
        let mut request = build(&self.http).headers(headers);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                // A connect timeout means unreachable, not slow.
                let error = if e.is_timeout() && !e.is_connect() {
                    BackendError::Timeout {
                        backend: self.name,
                        kind: TimeoutKind::Request,
                        ms: self.config.timeout_ms,
                    }
                } else {
                    BackendError::Unavailable {
                        backend: self.name,
                        detail: describe(e),
                    }
                };
                self.breaker().failed(self.now_ms());
                return Err(error);
            }
        };
        self.breaker().succeeded();
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        tape.response(status.as_u16(), content_type);
        if !status.is_success() {
            let body = error_body(response).await;
            tape.body(&body);
            return Err(BackendError::Status {
                backend: self.name,
                status: status.as_u16(),
                message: error::error_message(&body),
            });
        }
        Ok(response)
    }
}

/// What a call sends, for its [`Tape`]: the request body (for a multipart form, a JSON
/// account of its fields) and its content type.
pub struct Outgoing<'a> {
    pub tape: &'a Tape,
    pub body: &'a Bytes,
    pub content_type: &'a str,
}

/// Reads a whole answer body into the call's tape: the bytes, or `Timeout`/`Malformed`.
pub(crate) async fn read_body(
    backend: &Backend,
    response: reqwest::Response,
    tape: &Tape,
) -> Result<Bytes, BackendError> {
    let bytes = response.bytes().await.map_err(|e| body_error(backend, e))?;
    tape.body(&bytes);
    Ok(bytes)
}

/// Reading or decoding an answer's body failed: past the request timeout, or not JSON.
pub(crate) fn body_error(backend: &Backend, e: reqwest::Error) -> BackendError {
    if e.is_timeout() {
        BackendError::Timeout {
            backend: backend.name,
            kind: TimeoutKind::Request,
            ms: backend.config().timeout_ms,
        }
    } else {
        malformed(backend, describe(e))
    }
}

/// An answer that does not say what it should (`detail` says how).
pub(crate) fn malformed(backend: &Backend, detail: String) -> BackendError {
    BackendError::Malformed {
        backend: backend.name,
        detail,
    }
}

/// The delay before retry `attempt` (0 for the first retry): [`BACKOFF`] doubled per
/// attempt, at most [`MAX_BACKOFF`].
fn backoff(attempt: u32) -> Duration {
    BACKOFF
        .saturating_mul(2u32.saturating_pow(attempt))
        .min(MAX_BACKOFF)
}

/// The start of an error answer's body: up to [`ERROR_BODY_LIMIT`] bytes, less if
/// reading fails.
async fn error_body(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT
        && let Ok(Some(chunk)) = response.chunk().await
    {
        body.extend_from_slice(&chunk);
    }
    body
}

/// A reqwest error's message and causes, without the URL (which may hold credentials),
/// [`sanitize`](error::sanitize)d.
pub(crate) fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    error::sanitize(&msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let ms = |attempt| backoff(attempt).as_millis();
        assert_eq!([ms(0), ms(1), ms(2), ms(3)], [200, 400, 800, 1600]);
        assert_eq!(ms(4), 2000);
        // No overflow, however many retries.
        for attempt in [31, 32, 33, 64, u32::MAX] {
            assert_eq!(backoff(attempt), MAX_BACKOFF);
        }
    }
}
