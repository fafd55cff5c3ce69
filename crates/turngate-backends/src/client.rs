//! One configured backend: where it is, how to authenticate, how long to wait, how often
//! to retry, how many calls at once — and a circuit breaker so that a backend that is
//! down fails fast instead of piling up calls.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::context::TurnContext;
use crate::error::{self, BackendError, TimeoutKind};

/// Consecutive unreachable answers that open the circuit.
const BREAKER_THRESHOLD: u32 = 3;
/// How long an open circuit refuses calls before letting one through.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(5);
/// First retry delay; doubled per attempt up to [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_millis(200);
/// Longest delay between two attempts, however many retries are configured: a backend
/// that failed a few times in a row is retried every 2 s, not after minutes.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Most bytes of an error answer's body read, to find its message.
const ERROR_BODY_LIMIT: usize = 16 * 1024;

/// An API key: never printed.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct ApiKey(pub String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

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
    /// All backends: the longest wait for a free call slot, and (up to 10 s) to connect.
    /// An LLM stream's deadlines are [`crate::llm::StreamTimeouts`] instead.
    pub timeout_ms: u64,
    /// Retries of a failed request where repeating it is safe (never once an LLM stream
    /// has started), with exponential back-off from 200 ms capped at 2 s.
    pub retries: u32,
    /// Calls at once; more wait up to the timeout, then fail.
    pub max_concurrent: usize,
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
    permits: Arc<Semaphore>,
    failures: AtomicU32,
    open_until_ms: AtomicU64,
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
        let permits = Arc::new(Semaphore::new(config.max_concurrent.max(1)));
        Ok(Self {
            name,
            config,
            http,
            permits,
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
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

    /// Sends a request built by `build`, with the turn's trace headers, the API key, the
    /// per-request timeout (`timeout_ms`, reported as [`TimeoutKind::Request`]), bounded
    /// concurrency and the circuit breaker; retries where `retry` allows.
    /// Returns the successful response and the permit to hold while reading it.
    ///
    /// Errors: `Timeout`, `Unavailable`, `Status` (with the body's error message, if it
    /// has one), `Config`.
    pub async fn send(
        &self,
        ctx: &TurnContext,
        retry: bool,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::Response, OwnedSemaphorePermit), BackendError> {
        self.send_with(ctx, retry, Some(self.timeout()), build)
            .await
    }

    /// [`send`](Self::send) with the given per-request timeout, or none: a stream's
    /// reader keeps its own deadlines.
    pub(crate) async fn send_with(
        &self,
        ctx: &TurnContext,
        retry: bool,
        timeout: Option<Duration>,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::Response, OwnedSemaphorePermit), BackendError> {
        let mut attempt = 0;
        loop {
            let result = self.attempt(ctx, timeout, &build).await;
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

    async fn attempt(
        &self,
        ctx: &TurnContext,
        timeout: Option<Duration>,
        build: &impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::Response, OwnedSemaphorePermit), BackendError> {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        if self.open_until_ms.load(Ordering::Relaxed) > now_ms {
            return Err(BackendError::Unavailable {
                backend: self.name,
                detail: "failing fast: it was unreachable just now".into(),
            });
        }
        let permit =
            tokio::time::timeout(self.timeout(), Arc::clone(&self.permits).acquire_owned())
                .await
                .map_err(|_| BackendError::Unavailable {
                    backend: self.name,
                    detail: "too many calls waiting".into(),
                })?
                .map_err(|_| BackendError::Config(format!("{}: closed", self.name)))?;
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
                self.record_failure();
                return Err(error);
            }
        };
        self.failures.store(0, Ordering::Relaxed);
        let status = response.status();
        if !status.is_success() {
            return Err(BackendError::Status {
                backend: self.name,
                status: status.as_u16(),
                message: error::error_message(&error_body(response).await),
            });
        }
        Ok((response, permit))
    }

    fn record_failure(&self) {
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= BREAKER_THRESHOLD {
            let until = self.epoch.elapsed() + BREAKER_COOLDOWN;
            self.open_until_ms
                .store(until.as_millis() as u64, Ordering::Relaxed);
            self.failures.store(0, Ordering::Relaxed);
        }
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
