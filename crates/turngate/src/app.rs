//! The application: its state and how the parts are wired. Handlers (`http/`) and the
//! CLI read it; it knows neither.
//!
//! A session's life: `POST /v1/whip` answers the offer ([`App::open_session`]), the
//! media crate's session driver runs the turn engine, and the session's turns are
//! owned downstream by [`crate::turn`] until each completes; the [`Registry`] holds
//! the session for the API until it is pruned.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;
use turngate_core::ErrorCode;
use turngate_media::peer::{self, PeerConfig, PortPool};
use turngate_media::session::{self, SessionConfig};

use crate::auth::{Action, Auth, AuthSettings, Claims, Refusal};
use crate::config::Config;
use crate::problem::Problem;
use crate::rate::CreationRates;
use crate::registry::{Entry, Full, Registry, Retention};
use crate::turn;

/// Everything the handlers share.
pub struct App {
    pub registry: Registry,
    pub ports: Arc<PortPool>,
    pub peer: PeerConfig,
    pub session: SessionConfig,
    pub max_offer_bytes: usize,
    pub max_image_bytes: u64,
    pub upload_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<IpAddr>,
    /// A request body's longest pause, and an offer's whole time.
    pub body_read_timeout: Duration,
    pub shutting_down: AtomicBool,
    /// Backends, telemetry and metrics of turn processing, and its running tasks.
    pub turns: Arc<turn::Services>,
    /// How tokens and the operator credential are checked.
    pub auth: Auth,
    /// The hosts a request may name (`http.allowed_hosts`).
    pub allowed_hosts: crate::http::host::AllowedHosts,
    /// Serving beyond loopback without authentication (`--insecure-no-auth`).
    pub insecure: bool,
    /// How fast subjects and addresses may create sessions.
    pub creation_rates: CreationRates,
    /// Whether cookies carry `Secure` (the gateway listens beyond loopback).
    pub secure_cookies: bool,
    /// The token claims that go onto spans.
    pub span_claims: Vec<String>,
    /// Whether `/` serves the demo page (`ui.demo`).
    pub demo: bool,
    /// The trace UI's address template (`ui.trace_url_template`).
    pub trace_url_template: Option<String>,
}

impl App {
    /// The application state for a validated configuration.
    pub fn new(
        config: &Config,
        telemetry: turngate_telemetry::Telemetry,
    ) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            registry: Registry::new(
                (
                    config.sessions.max,
                    config.sessions.max_per_ip,
                    config.auth.max_sessions_per_subject,
                ),
                (
                    config.sessions.max_pending,
                    config.sessions.max_pending_per_ip,
                ),
                Retention {
                    count: config.sessions.retain_ended,
                    age: Duration::from_secs(config.sessions.retain_ended_s),
                    bytes: config.sessions.retain_ended_bytes,
                },
            ),
            ports: PortPool::new(config.media.port_min..=config.media.port_max),
            peer: config.peer(),
            session: SessionConfig {
                sampler: telemetry.turn_sampler(),
                ..config.session()
            },
            max_offer_bytes: config.max_offer_bytes,
            max_image_bytes: config.uploads.max_image_bytes,
            upload_timeout: Duration::from_millis(config.uploads.timeout_ms),
            trusted_proxies: config.http.trusted_proxies.clone(),
            body_read_timeout: Duration::from_millis(config.http.body_read_timeout_ms),
            shutting_down: AtomicBool::new(false),
            turns: Arc::new(turn::Services::new(config, telemetry)?),
            auth: auth(&config.auth)?,
            allowed_hosts: crate::http::host::AllowedHosts::new(
                &config.http.allowed_hosts,
                config.listen,
            ),
            insecure: config.insecure_no_auth
                && !config.auth.enabled()
                && !config.listen.ip().is_loopback(),
            secure_cookies: !config.listen.ip().is_loopback(),
            span_claims: config.auth.span_claims.clone(),
            demo: config.ui.demo(config.listen),
            trace_url_template: config.ui.trace_url_template.clone(),
            creation_rates: CreationRates::new(
                config.auth.sessions_per_minute_per_subject,
                config.sessions.per_minute_per_ip,
            ),
        }))
    }

    /// A client allowed to do `action`, or the refusal (counted).
    pub fn client(&self, headers: &HeaderMap, action: Action) -> Result<Claims, Problem> {
        self.auth
            .client(headers, action)
            .map_err(|refusal| self.refuse(refusal))
    }

    /// The live session behind WHIP resource `resource`, for a client allowed to do
    /// `action` on it: its creator's subject. Another subject's session is as good as
    /// absent (404).
    pub fn client_session(
        &self,
        headers: &HeaderMap,
        resource: &str,
        action: Action,
    ) -> Result<Arc<Entry>, Problem> {
        let claims = self.client(headers, action)?;
        self.registry
            .by_resource(resource)
            .filter(|entry| entry.belongs_to(&claims))
            .ok_or_else(|| {
                Problem::new(
                    ErrorCode::NotFound,
                    "no such WHIP resource (or it has ended)",
                )
            })
    }

    /// The operator credential, or the refusal (counted).
    pub fn admin(&self, headers: &HeaderMap) -> Result<(), Problem> {
        self.auth
            .admin(headers)
            .map_err(|refusal| self.refuse(refusal))
    }

    /// Whether `token` is the operator credential, or the refusal (counted).
    pub fn admin_credential(&self, token: &str) -> Result<(), Problem> {
        self.auth
            .admin_credential(token)
            .map_err(|refusal| self.refuse(refusal))
    }

    /// The problem for `refusal`, counted by reason.
    pub fn refuse(&self, refusal: Refusal) -> Problem {
        self.turns.metrics.auth_refused.inc([refusal.as_str()]);
        let code = if refusal.forbidden() {
            ErrorCode::Forbidden
        } else {
            ErrorCode::Unauthorized
        };
        Problem::new(code, refusal.message())
    }

    /// Whether the gateway is shutting down (no new sessions).
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Answers an offer from `client`, starts and registers the session, and hands its
    /// turns to their owners: (answer, resource id).
    pub async fn open_session(
        self: Arc<Self>,
        offer: String,
        client: IpAddr,
        claims: Claims,
    ) -> Result<(String, String), Problem> {
        let subject = claims.owner.clone();
        let address = crate::registry::address_key(client);
        self.creation_rates
            .check(address, subject.as_deref())
            .map_err(|limited| {
                Problem::new(
                    ErrorCode::RateLimited,
                    if limited.subject {
                        "this token's subject creates sessions too fast; retry later"
                    } else {
                        "this address creates sessions too fast; retry later"
                    },
                )
                .retry_after(limited.retry_after)
            })?;
        let pending = self
            .registry
            .reserve_pending(client)
            .map_err(|detail| Problem::new(ErrorCode::TooManyPending, detail))?;
        let slot = self.registry.reserve(client, subject.as_deref()).map_err(|full| {
            if full == Full::Subject {
                return Problem::new(
                    ErrorCode::RateLimited,
                    "this token's subject holds its maximum of live sessions; end one first",
                );
            }
            Problem::new(
                ErrorCode::TooManySessions,
                match full {
                    Full::Gateway => {
                        "the gateway holds its maximum number of sessions; retry later"
                    }
                    Full::Address | Full::Subject => {
                        "the gateway holds as many sessions as it gives one address; retry later"
                    }
                },
            )
        })?;
        let answered = peer::answer(&self.peer, &self.ports, offer)
            .await
            .map_err(|e| {
                if e.code() == ErrorCode::Internal {
                    tracing::warn!(error = %e, "Could not answer an offer.");
                }
                Problem::new(e.code(), e.to_string())
            })?;
        if self.shutting_down() {
            let _ = answered.connection.close().await;
            return Err(Problem::new(
                ErrorCode::ShuttingDown,
                "the gateway is shutting down",
            ));
        }
        let answer = answered.answer.clone();
        let mut rng = rand::rng();
        let started = session::start(self.session.clone(), answered, &mut rng)
            .map_err(|e| Problem::new(e.code(), e.to_string()))?;
        let resource = resource_id(&mut rng);
        let user = claims.span_attributes(&self.span_claims);
        let conversation =
            turn::Conversation::new(self.turns.history_turns(), user, claims.sub.clone());
        let entry = Arc::new(Entry::new(Arc::clone(&started.shared), subject));
        self.registry
            .insert(slot, resource.clone(), Arc::clone(&entry));
        tracing::info!(session = %entry.shared.id, "Session created.");
        tracing::debug!(session = %entry.shared.id, resource = %resource, "WHIP resource.");
        // Pending until the peer connects (or the session ends: at the latest after
        // the connect timeout).
        let shared = Arc::clone(&entry.shared);
        tokio::spawn(async move {
            shared.wait_connected().await;
            drop(pending);
        });
        let app = Arc::clone(&self);
        let retired = resource.clone();
        tokio::spawn(async move {
            turn::own_session(Arc::clone(&app.turns), conversation, started).await;
            entry.shared.wait_ended().await;
            app.registry.ended(&retired);
        });
        Ok((answer, resource))
    }
}

/// The checker for the `[auth]` settings (the JWKS file read now).
fn auth(config: &crate::config::AuthConfig) -> anyhow::Result<Auth> {
    let jwks =
        match &config.jwks_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("auth.jwks_file: cannot read {}: {e}", path.display())
            })?),
            None => None,
        };
    Auth::new(&AuthSettings {
        hs256_secret: config.hs256_secret.as_ref().map(|s| s.0.as_str()),
        jwks: jwks.as_deref(),
        admin_token: config.admin_token.as_ref().map(|s| s.0.as_str()),
        audience: &config.audience,
        issuer: config.issuer.as_deref(),
        leeway_s: config.leeway_s,
    })
}

/// A WHIP resource id: 128 random bits, 32 lowercase hex.
fn resource_id(rng: &mut impl rand::Rng) -> String {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
