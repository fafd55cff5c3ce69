//! Configuration: defaults, the TOML file, `TURNGATE_*` environment variables and flags,
//! merged in that order and validated as a whole before any port is bound.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use turngate_backends::BackendConfig;
use turngate_core::TurnConfig;
use turngate_media::peer::PeerConfig;
use turngate_media::session::SessionConfig;

/// The whole configuration, as in the TOML file. Every key is optional.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP listen address. Loopback by default: there is no authentication yet.
    pub listen: SocketAddr,
    /// Origins allowed to call the API from a browser (CORS); `["*"]` allows any.
    /// Empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Largest accepted SDP offer, in bytes.
    pub max_offer_bytes: usize,
    /// The HTTP server's timeouts and connection cap.
    pub http: HttpConfig,
    /// Session limits and retention.
    pub sessions: SessionsConfig,
    /// Media sockets and queues.
    pub media: MediaConfig,
    /// Turn detection timing.
    pub turn: TurnTiming,
    /// Voice activity detection.
    pub vad: VadConfig,
    /// Image uploads.
    pub uploads: UploadsConfig,
    /// Speech to text (OpenAI-compatible `audio/transcriptions`).
    pub asr: BackendConfig,
    /// Image descriptions (OpenAI-compatible `chat/completions`).
    pub vision: VisionConfig,
    /// The answer (OpenAI-compatible streamed `chat/completions`).
    pub llm: LlmConfig,
    /// Spans and metrics (the exporter itself is configured by the `OTEL_*` variables).
    pub telemetry: TelemetryConfig,
    /// Client tokens and the operator credential.
    pub auth: AuthConfig,
    /// The turn record.
    pub record: RecordConfig,
    /// The web pages the gateway serves.
    pub ui: UiConfig,
    /// Serve without authentication on a non-loopback address (`--insecure-no-auth`;
    /// flag only).
    #[serde(skip)]
    pub insecure_no_auth: bool,
}

/// `[auth]`: with none of `hs256_secret`, `jwks_file` and `admin_token` set, every route
/// is open and the gateway listens on loopback only.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 secret for client tokens, at least 32 bytes (`TURNGATE_AUTH_HS256_SECRET`).
    /// Never logged (an `ApiKey` prints as `***`).
    pub hs256_secret: Option<turngate_backends::client::ApiKey>,
    /// A JWKS file of public keys (RS256, ES256, EdDSA) by `kid`
    /// (`TURNGATE_AUTH_JWKS_FILE`).
    pub jwks_file: Option<PathBuf>,
    /// The operator's bearer token (`TURNGATE_ADMIN_TOKEN`). Never logged.
    pub admin_token: Option<turngate_backends::client::ApiKey>,
    /// The `aud` client tokens must carry.
    pub audience: String,
    /// The `iss` client tokens must carry, if set.
    pub issuer: Option<String>,
    /// Clock leeway on `exp` and `nbf`, in seconds; at most 5.
    pub leeway_s: u64,
    /// Live sessions of one token subject.
    pub max_sessions_per_subject: usize,
    /// Sessions one token subject may create per minute (and at once).
    pub sessions_per_minute_per_subject: u32,
    /// Token claims put on the session's spans (`sub` as `user.id`, others as
    /// `turngate.auth.{claim}`); no other claim ever is.
    pub span_claims: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            hs256_secret: None,
            jwks_file: None,
            admin_token: None,
            audience: "turngate".into(),
            issuer: None,
            leeway_s: crate::auth::MAX_LEEWAY_S,
            max_sessions_per_subject: 10,
            sessions_per_minute_per_subject: 30,
            span_claims: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// Whether anything is configured that turns authentication on.
    pub fn enabled(&self) -> bool {
        self.hs256_secret.is_some() || self.jwks_file.is_some() || self.admin_token.is_some()
    }
}

/// `[ui]`: the demo page and the links of the turn inspector.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    /// Serve the demo page at `/` (`TURNGATE_UI_DEMO`); unset: when listening on
    /// loopback only.
    pub demo: Option<bool>,
    /// A trace UI's address for a turn, `{trace_id}` standing for its trace id, e.g.
    /// `http://jaeger:16686/trace/{trace_id}` (`TURNGATE_TRACE_URL_TEMPLATE`); unset: no
    /// link.
    pub trace_url_template: Option<String>,
}

impl UiConfig {
    /// Whether `/` serves the demo page, for a gateway listening on `listen`.
    pub fn demo(&self, listen: SocketAddr) -> bool {
        self.demo.unwrap_or_else(|| listen.ip().is_loopback())
    }
}

/// `[record]`: what the turn record keeps, and where.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordConfig {
    /// Record turns at all.
    pub enabled: bool,
    /// Where: a directory, `file:///dir`, or `s3://bucket/prefix` with the `AWS_*`
    /// variables (`TURNGATE_STORE_URL`).
    pub store: String,
    /// This node's id, stable across restarts: the markers it finishes at start are
    /// its own (`TURNGATE_NODE_ID`; default: the host name).
    pub node_id: Option<String>,
    /// Keep the received audio and the audio ASR was given.
    pub audio: bool,
    /// Keep the images as uploaded.
    pub images: bool,
    /// Keep each backend request's body and the answer as received (never headers,
    /// so never API keys).
    pub backend_bodies: bool,
    /// Received audio reaches the store at least this often, in milliseconds: a crash
    /// loses at most this much.
    pub segment_ms: u64,
    /// A failing store operation is retried (100 ms, doubling, at most 2 s apart) for
    /// this long, in milliseconds, each attempt cut at the end of it, before what it
    /// wrote goes into the spool: the longest a turn's record waits on the store (its
    /// audio waits in memory meanwhile, so keep it near `segment_ms`).
    pub retry_ms: u64,
    /// A node's lease on its open records, in milliseconds, renewed every third of it:
    /// another node finishes the records of a node whose lease ended a lease ago.
    pub lease_ms: u64,
    /// Records are deleted this many days after their turn ended (`turngate gc`, and
    /// hourly in `serve`).
    pub retention_days: u32,
    /// Bytes of records kept in memory while the store refuses them, written once it
    /// takes them again; beyond, they go to `spool_dir`.
    pub spool_bytes: u64,
    /// Where records wait past `spool_bytes`, surviving a restart
    /// (`TURNGATE_SPOOL_DIR`). Default: `./turngate-spool` for an S3 store, none for a
    /// local one (the store is a local directory already).
    pub spool_dir: Option<PathBuf>,
    /// Bytes of records `spool_dir` holds at most; beyond, parts of records are dropped
    /// (listed `missing`, `store_failed`).
    pub spool_disk_bytes: u64,
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            store: "./turngate-data".into(),
            node_id: None,
            audio: true,
            images: true,
            backend_bodies: true,
            segment_ms: 1000,
            retry_ms: 1_000,
            lease_ms: 60_000,
            retention_days: 30,
            spool_bytes: 64 * 1024 * 1024,
            spool_dir: None,
            spool_disk_bytes: 1024 * 1024 * 1024,
        }
    }
}

impl RecordConfig {
    /// The node id: `node_id`, else the host name (`/etc/hostname`, `HOSTNAME`), else
    /// `local`; made safe for an object key.
    pub fn node_id(&self) -> String {
        let name = self
            .node_id
            .clone()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_default();
        let safe: String = name
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if safe.is_empty() {
            "local".into()
        } else {
            safe
        }
    }

    /// How often audio segments are flushed.
    pub fn segment(&self) -> Duration {
        Duration::from_millis(self.segment_ms.max(1))
    }

    /// The spool's directory, if it has one.
    pub fn spool_dir(&self) -> Option<PathBuf> {
        self.spool_dir.clone().or_else(|| {
            self.store
                .starts_with("s3://")
                .then(|| PathBuf::from("turngate-spool"))
        })
    }

    /// How long records are kept.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.retention_days) * 86_400)
    }

    /// How long a store operation is retried.
    pub fn retry(&self) -> Duration {
        Duration::from_millis(self.retry_ms)
    }
}

/// `[telemetry]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Put content — transcripts, prompts, answers, the images sent to vision — into
    /// span attributes. Off: spans carry sizes, hashes and ids only.
    pub capture_content: bool,
}

/// `[vision]`: the backend, and what it is asked.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    /// The backend (`url`, `model`, `api_key`, `timeout_ms`, `retries`, `max_concurrent`).
    #[serde(flatten)]
    pub backend: BackendConfig,
    /// The instruction sent with each image.
    pub instruction: String,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            backend: BackendConfig::default(),
            instruction: "Describe this image for an assistant that cannot see it: what it shows, \
                          and any text in it, verbatim."
                .into(),
        }
    }
}

/// `[llm]`: the backend, and how its prompt is built.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct LlmConfig {
    /// The backend (`url`, `model`, `api_key`, `timeout_ms`, `retries`, `max_concurrent`).
    #[serde(flatten)]
    pub backend: BackendConfig,
    /// The system prompt.
    pub system_prompt: String,
    /// Earlier turns of the session included in the prompt.
    pub history_turns: usize,
    /// Send the images themselves too, not only their descriptions.
    pub send_images: bool,
    /// Longest wait from the request to the first token of the answer, in
    /// milliseconds (connection and headers included). The backend's `timeout_ms` caps
    /// the whole answer.
    pub first_token_timeout_ms: u64,
    /// Longest silence between two pieces of a streaming answer, in milliseconds.
    pub idle_timeout_ms: u64,
}

impl LlmConfig {
    /// The answer's timeouts: to the first token, between pieces, and in total (the
    /// backend's `timeout_ms`).
    pub fn timeouts(&self) -> turngate_backends::llm::StreamTimeouts {
        turngate_backends::llm::StreamTimeouts {
            first_token: Duration::from_millis(self.first_token_timeout_ms),
            idle: Duration::from_millis(self.idle_timeout_ms),
            total: Duration::from_millis(self.backend.timeout_ms),
        }
    }
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            backend: BackendConfig::default(),
            system_prompt: "You are a helpful voice assistant. The user speaks; their words come \
                            to you transcribed, and images they share come described."
                .into(),
            history_turns: 10,
            send_images: false,
            first_token_timeout_ms: 10_000,
            idle_timeout_ms: 10_000,
        }
    }
}

/// `[uploads]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadsConfig {
    /// Largest image in bytes (data channel and HTTP).
    pub max_image_bytes: u64,
    /// Largest width × height.
    pub max_pixels: u64,
    /// Data-channel uploads open at once per session.
    pub max_concurrent: usize,
    /// Declared bytes of a session's open uploads together.
    pub max_in_flight_bytes: u64,
    /// Longest an upload may stay open, in milliseconds.
    pub timeout_ms: u64,
    /// Image validations (decoding) running at once across the gateway.
    pub validators: usize,
    /// Longest an image waits for a validator, in milliseconds.
    pub validation_wait_ms: u64,
    /// Longest one image's validation may take, in milliseconds.
    pub decode_timeout_ms: u64,
    /// Bytes of images held gateway-wide by uploads and turns not yet processed.
    pub max_held_bytes: u64,
    /// Uploads one turn may take.
    pub max_per_turn: u32,
}

impl Default for UploadsConfig {
    fn default() -> Self {
        let u = turngate_core::upload::UploadLimits::default();
        Self {
            max_image_bytes: u.max_image_bytes,
            max_pixels: turngate_media::image::ImageLimits::default().max_pixels,
            max_concurrent: u.max_concurrent,
            max_in_flight_bytes: u.max_in_flight_bytes,
            timeout_ms: u.timeout.as_millis() as u64,
            validators: 2,
            validation_wait_ms: 10_000,
            decode_timeout_ms: turngate_media::image::ImageLimits::default()
                .decode_timeout
                .as_millis() as u64,
            max_held_bytes: 512 << 20,
            max_per_turn: turngate_core::TurnConfig::default().max_uploads_per_turn,
        }
    }
}

/// `[http]`: what a slow or idle client may hold of the HTTP server.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// A connection must deliver a request's headers within this many milliseconds of
    /// being ready for one (after accept, or after the previous response): it bounds
    /// slow headers and idle keep-alive alike.
    pub header_read_timeout_ms: u64,
    /// Longest pause, in milliseconds, while a request's body is read.
    pub body_read_timeout_ms: u64,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// On shutdown, requests in flight get this many milliseconds; then the remaining
    /// connections are dropped.
    pub shutdown_grace_ms: u64,
    /// Proxies (exact addresses) whose `X-Forwarded-For` names the client. From any
    /// other peer the header is ignored and the peer's address is the client's.
    pub trusted_proxies: Vec<IpAddr>,
    /// Host names (or addresses) requests may carry in `Host`, without port; `["*"]`
    /// allows any. Empty: the listen address and `localhost` (on an unspecified listen
    /// address, `localhost` and any address literal). See `http::host`.
    pub allowed_hosts: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            max_connections: 1024,
            shutdown_grace_ms: 10_000,
            trusted_proxies: Vec::new(),
            allowed_hosts: Vec::new(),
        }
    }
}

/// `[sessions]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// Live sessions at most; more get 503 with `Retry-After`.
    pub max: usize,
    /// Sessions whose peer has not connected yet, at most, gateway-wide; more get 429
    /// `too_many_pending`. An offer that never connects holds its place until
    /// `media.connect_timeout_ms`.
    pub max_pending: usize,
    /// The same, per client address (see `http.trusted_proxies`).
    pub max_pending_per_ip: usize,
    /// Live sessions (connected or not) of one client address (an IPv6 address's /64).
    pub max_per_ip: usize,
    /// Sessions one client address may create per minute (and at once).
    pub per_minute_per_ip: u32,
    /// Estimated bytes one session's record (turns, results, image records) may hold;
    /// past it the session opens no more turns.
    pub max_record_bytes: u64,
    /// Ended sessions kept queryable, at most this many...
    pub retain_ended: usize,
    /// ...and for at most this long (seconds).
    pub retain_ended_s: u64,
    /// Estimated bytes of the ended sessions kept queryable, together.
    pub retain_ended_bytes: u64,
}

/// `[media]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Addresses the media sockets bind to and advertise as host candidates. Use the
    /// address clients reach; `0.0.0.0` binds every interface except loopback.
    pub ips: Vec<IpAddr>,
    /// First UDP port of the media range (one port per session).
    pub port_min: u16,
    /// Last UDP port of the media range.
    pub port_max: u16,
    /// RTP packets queued before the turn engine; overflow is dropped and counted.
    pub ingress_queue: usize,
    /// Tagged frames and turn events queued for downstream processing.
    pub downstream_queue: usize,
    /// Events held for a client whose data channel is not open; overflow is counted.
    pub outbox: usize,
    /// Bytes a data channel may queue for sending.
    pub data_channel_send_buffer: usize,
    /// A peer must connect within this many milliseconds of the answer.
    pub connect_timeout_ms: u64,
    /// ICE: milliseconds without traffic before a peer counts as disconnected.
    pub ice_disconnected_ms: u64,
    /// ICE: further milliseconds after disconnection before the session ends.
    pub ice_failed_ms: u64,
}

/// `[turn]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnTiming {
    /// Silence that ends a VAD turn.
    pub hangover_ms: u64,
    /// Audio before speech onset added to a VAD turn.
    pub preroll_ms: u64,
    /// Longest turn input; longer input is split into follow-on turns.
    pub max_turn_ms: u64,
    /// Voiced audio needed before VAD calls speech onset.
    pub speech_onset_ms: u64,
    /// Turns a session may have.
    pub max_turns: usize,
}

/// `[vad]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VadConfig {
    /// Score (0–1) a frame needs to begin speech.
    pub onset: f32,
    /// Score (0–1) a frame needs to continue speech.
    pub sustain: f32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            cors_origins: Vec::new(),
            max_offer_bytes: 64 * 1024,
            http: HttpConfig::default(),
            sessions: SessionsConfig::default(),
            media: MediaConfig::default(),
            turn: TurnTiming::default(),
            vad: VadConfig::default(),
            uploads: UploadsConfig::default(),
            asr: BackendConfig::default(),
            vision: VisionConfig::default(),
            llm: LlmConfig::default(),
            telemetry: TelemetryConfig::default(),
            auth: AuthConfig::default(),
            record: RecordConfig::default(),
            ui: UiConfig::default(),
            insecure_no_auth: false,
        }
    }
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            max: 200,
            max_pending: 64,
            max_pending_per_ip: 8,
            max_per_ip: 32,
            per_minute_per_ip: 120,
            max_record_bytes: 8 << 20,
            retain_ended: 1000,
            retain_ended_s: 3600,
            retain_ended_bytes: 256 << 20,
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        let session = SessionConfig::default();
        Self {
            ips: vec![IpAddr::from([127, 0, 0, 1])],
            port_min: 40_000,
            port_max: 40_999,
            ingress_queue: session.ingress_queue,
            downstream_queue: session.downstream_queue,
            outbox: session.outbox,
            data_channel_send_buffer: 256 * 1024,
            connect_timeout_ms: session.connect_timeout.as_millis() as u64,
            ice_disconnected_ms: 5_000,
            ice_failed_ms: 25_000,
        }
    }
}

impl Default for TurnTiming {
    fn default() -> Self {
        let t = TurnConfig::default();
        Self {
            hangover_ms: t.hangover.as_millis() as u64,
            preroll_ms: t.preroll.as_millis() as u64,
            max_turn_ms: t.max_turn.as_millis() as u64,
            speech_onset_ms: t.speech_onset.as_millis() as u64,
            max_turns: t.max_turns,
        }
    }
}

impl Default for VadConfig {
    fn default() -> Self {
        let s = SessionConfig::default();
        Self {
            onset: s.vad_onset,
            sustain: s.vad_sustain,
        }
    }
}

/// Every key of the configuration file, for `turngate serve --help`.
pub const KEYS_HELP: &str = "\
Configuration file keys (TOML; every key optional; defaults shown):
  listen = \"127.0.0.1:8080\"        HTTP address (--listen, TURNGATE_LISTEN)
  cors_origins = []                 browser origins or [\"*\"] (--cors-origins, TURNGATE_CORS_ORIGINS)
  max_offer_bytes = 65536           largest SDP offer; larger gets 413
  [http]
  header_read_timeout_ms = 10000    a request's headers must arrive within this (also the keep-alive idle limit)
  body_read_timeout_ms = 10000      longest pause while a body is read (408 request_timeout)
  max_connections = 1024            connections served at once; more wait in the backlog
  shutdown_grace_ms = 10000         on shutdown, requests in flight get this long; then connections drop
  trusted_proxies = []              proxies whose X-Forwarded-For names the client (exact addresses)
  allowed_hosts = []                names Host may carry (default: the listen address, localhost;
                                    listening on 0.0.0.0/::, any address literal too); [\"*\"]: any
  [sessions]
  max = 200                         live sessions; more get 503 (--max-sessions, TURNGATE_MAX_SESSIONS)
  max_pending = 64                  sessions not yet connected, gateway-wide; more get 429 (--max-pending)
  max_pending_per_ip = 8            ...per client address (--max-pending-per-ip, TURNGATE_MAX_PENDING_PER_IP)
  max_per_ip = 32                   live sessions of one client address (an IPv6 /64); more get 503
                                    (--max-sessions-per-ip, TURNGATE_MAX_SESSIONS_PER_IP)
  per_minute_per_ip = 120           sessions one address may create per minute (then 429 rate_limited)
  max_record_bytes = 8388608        what one session's turns and results may hold; then no more turns
  retain_ended = 1000               ended sessions kept queryable...
  retain_ended_s = 3600             ...for how long
  retain_ended_bytes = 268435456    ...and holding at most this much memory together (estimated)
  [media]
  ips = [\"127.0.0.1\"]               media addresses (--media-ip, TURNGATE_MEDIA_IP)
  port_min = 40000                  UDP port range, one port per session
  port_max = 40999                  (--media-ports MIN-MAX, TURNGATE_MEDIA_PORTS)
  ingress_queue = 50                RTP packets queued before the turn engine; overflow dropped, counted
  downstream_queue = 500            tagged frames queued for processing
  outbox = 64                       events held for a client without an open data channel
  data_channel_send_buffer = 262144 bytes a data channel may queue
  connect_timeout_ms = 30000        a peer must connect within this
  ice_disconnected_ms = 5000        silence before a peer counts as disconnected
  ice_failed_ms = 25000             further silence before its session ends
  [turn]
  hangover_ms = 700                 silence ending a VAD turn (--hangover-ms, TURNGATE_HANGOVER_MS)
  preroll_ms = 300                  audio before onset joining a VAD turn (--preroll-ms, TURNGATE_PREROLL_MS)
  max_turn_ms = 60000               longest turn input (--max-turn-ms, TURNGATE_MAX_TURN_MS)
  speech_onset_ms = 60              voiced audio needed for speech onset
  max_turns = 10000                 turns a session may have
  [vad]
  onset = 0.9                       VAD score that begins speech
  sustain = 0.5                     VAD score that continues speech
  [uploads]
  max_image_bytes = 20971520        largest image (20 MiB)
  max_pixels = 40000000             largest width x height
  max_concurrent = 4                data-channel uploads open at once per session
  max_in_flight_bytes = 67108864    declared bytes of a session's open uploads (64 MiB)
  timeout_ms = 30000                longest an upload may stay open
  validators = 2                    image decodes running at once, gateway-wide (one per session at a time)
  validation_wait_ms = 10000        longest an image waits for a validator (then overloaded)
  decode_timeout_ms = 3000          longest one image's validation (then decode_timeout)
  max_held_bytes = 536870912        image bytes held gateway-wide until their turns are processed (512 MiB)
  [asr], [vision], [llm]            each: url (API base with /v1; empty = stage skipped), model,
                                    api_key, timeout_ms = 30000, retries = 1, max_concurrent = 16,
                                    max_concurrent_per_session = 4, max_queued = 64,
                                    max_queued_per_session = 8, queue_timeout_ms = 10000 (beyond: shed,
                                    overloaded), provider = \"openai\" (the API spoken, for gen_ai.provider.name)
                                    (env: TURNGATE_ASR_URL, _MODEL, _API_KEY, _TIMEOUT_MS, _RETRIES;
                                    likewise TURNGATE_VISION_*, TURNGATE_LLM_*)
  [vision] instruction              what the vision model is asked about each image
  [llm] system_prompt               the system prompt
  [llm] history_turns = 10          earlier turns of the session in the prompt
  [llm] send_images = false         send the images too, not only their descriptions
  [llm] timeout_ms = 30000          the whole answer, streamed (for ASR and vision: one request)
  [llm] first_token_timeout_ms = 10000  request to the answer's first token
                                    (TURNGATE_LLM_FIRST_TOKEN_TIMEOUT_MS)
  [llm] idle_timeout_ms = 10000     longest pause within a streamed answer
                                    (TURNGATE_LLM_IDLE_TIMEOUT_MS)
  max_per_turn = 32                 uploads one turn may take
  [auth]                            off (every route open, loopback only) until one of these is set:
  hs256_secret                      client tokens' HS256 secret, >= 32 bytes (TURNGATE_AUTH_HS256_SECRET)
  jwks_file                         public keys by kid: RS256/ES256/EdDSA (TURNGATE_AUTH_JWKS_FILE)
  admin_token                       the operator's bearer token (TURNGATE_ADMIN_TOKEN)
  audience = \"turngate\"            the aud client tokens must carry
  issuer                            the iss they must carry, if set
  leeway_s = 5                      clock leeway on exp and nbf, at most 5
  max_sessions_per_subject = 10     live sessions of one token subject (then 429 rate_limited)
  sessions_per_minute_per_subject = 30  sessions one subject may create per minute
  span_claims = []                  token claims put on the session's spans (sub as user.id)
  [record]
  enabled = true                    keep a record of every turn
  store = \"./turngate-data\"         a directory, file:///dir or s3://bucket/prefix (TURNGATE_STORE_URL;
                                    S3 from the AWS_* variables, AWS_ENDPOINT for MinIO)
  node_id                           this node's stable id (TURNGATE_NODE_ID; default: host name)
  audio = true                      keep the received audio and the audio ASR was given
  images = true                     keep the images as uploaded
  backend_bodies = true             keep backend request bodies and answers as received
  segment_ms = 1000                 received audio reaches the store at least this often
  retry_ms = 1000                   how long a failing store operation is retried
  lease_ms = 60000                  a node's lease on its open records (renewed every third)
  retention_days = 30               records are deleted this long after their turn ended
  spool_bytes = 67108864            records held in memory while the store is down
  spool_dir                         then on disk, surviving a restart (TURNGATE_SPOOL_DIR;
                                    default ./turngate-spool for an s3:// store)
  spool_disk_bytes = 1073741824     at most this much on disk; beyond, parts are dropped
  [ui]
  demo                              the demo page at / (TURNGATE_UI_DEMO; default: on when
                                    listening on loopback only)
  trace_url_template                a trace UI's address, {trace_id} for the id: the inspector
                                    links each turn there (TURNGATE_TRACE_URL_TEMPLATE)
  [telemetry]
  capture_content = false           transcripts, prompts, answers and images in span attributes
                                    (TURNGATE_TELEMETRY_CAPTURE_CONTENT); the OTLP exporter is
                                    configured by the standard OTEL_* variables (see README)
Precedence: defaults < file < TURNGATE_* < flags. TURNGATE_LOG sets the log filter.";

/// Settings given on the command line or in `TURNGATE_*` variables; they override the
/// file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// TOML configuration file (every key optional; see README).
    #[arg(long, env = "TURNGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "TURNGATE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Media IP addresses, comma-separated: bound for UDP and advertised as ICE host
    /// candidates [default: 127.0.0.1]. `0.0.0.0` binds every interface but loopback.
    #[arg(
        long,
        env = "TURNGATE_MEDIA_IP",
        value_name = "IP,...",
        value_delimiter = ','
    )]
    pub media_ip: Option<Vec<IpAddr>>,
    /// UDP port range for media, one port per session [default: 40000-40999].
    #[arg(long, env = "TURNGATE_MEDIA_PORTS", value_name = "MIN-MAX", value_parser = parse_port_range)]
    pub media_ports: Option<(u16, u16)>,
    /// Silence in milliseconds that ends a VAD turn [default: 700].
    #[arg(long, env = "TURNGATE_HANGOVER_MS", value_name = "MS")]
    pub hangover_ms: Option<u64>,
    /// Audio in milliseconds before speech onset that joins a VAD turn [default: 300].
    #[arg(long, env = "TURNGATE_PREROLL_MS", value_name = "MS")]
    pub preroll_ms: Option<u64>,
    /// Longest turn input in milliseconds; longer input is split [default: 60000].
    #[arg(long, env = "TURNGATE_MAX_TURN_MS", value_name = "MS")]
    pub max_turn_ms: Option<u64>,
    /// Live sessions at most; more get 503 [default: 200].
    #[arg(long, env = "TURNGATE_MAX_SESSIONS", value_name = "N")]
    pub max_sessions: Option<usize>,
    /// Sessions not yet connected, at most, gateway-wide [default: 64].
    #[arg(long, env = "TURNGATE_MAX_PENDING", value_name = "N")]
    pub max_pending: Option<usize>,
    /// Sessions not yet connected, at most, per client address [default: 8].
    #[arg(long, env = "TURNGATE_MAX_PENDING_PER_IP", value_name = "N")]
    pub max_pending_per_ip: Option<usize>,
    /// Serve on a non-loopback address without any authentication configured. For
    /// trusted networks only: anyone who reaches the port can open sessions and read
    /// every transcript.
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Sessions one client address may create per minute [default: 120].
    #[arg(long, env = "TURNGATE_SESSIONS_PER_MINUTE_PER_IP", value_name = "N")]
    pub sessions_per_minute_per_ip: Option<u32>,
    /// Live sessions at most per client address (an IPv6 /64) [default: 32].
    #[arg(long, env = "TURNGATE_MAX_SESSIONS_PER_IP", value_name = "N")]
    pub max_sessions_per_ip: Option<usize>,
    /// Browser origins allowed by CORS, comma-separated, or `*` [default: none].
    #[arg(
        long,
        env = "TURNGATE_CORS_ORIGINS",
        value_name = "ORIGIN,...",
        value_delimiter = ','
    )]
    pub cors_origins: Option<Vec<String>>,
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or("expected MIN-MAX, e.g. 40000-40999")?;
    let a = a.trim().parse::<u16>().map_err(|e| format!("{a:?}: {e}"))?;
    let b = b.trim().parse::<u16>().map_err(|e| format!("{b:?}: {e}"))?;
    Ok((a, b))
}

/// `[vision]` and `[llm]` flatten the backend keys into their own, which serde cannot
/// check for unknown keys; check them here.
fn check_flattened_keys(table: &toml::Table) -> Result<(), String> {
    const BACKEND: &[&str] = &[
        "url",
        "model",
        "api_key",
        "timeout_ms",
        "retries",
        "max_concurrent",
        "max_concurrent_per_session",
        "max_queued",
        "max_queued_per_session",
        "queue_timeout_ms",
        "provider",
    ];
    for (section, own) in [
        ("vision", &["instruction"][..]),
        (
            "llm",
            &[
                "system_prompt",
                "history_turns",
                "send_images",
                "first_token_timeout_ms",
                "idle_timeout_ms",
            ][..],
        ),
    ] {
        if let Some(toml::Value::Table(keys)) = table.get(section)
            && let Some(key) = keys
                .keys()
                .find(|k| !BACKEND.contains(&k.as_str()) && !own.contains(&k.as_str()))
        {
            return Err(format!("unknown key `{section}.{key}`"));
        }
    }
    Ok(())
}

/// `{PREFIX}_URL`, `_MODEL`, `_API_KEY`, `_TIMEOUT_MS`, `_RETRIES` override the file.
fn backend_from_env(prefix: &str, backend: &mut BackendConfig) -> anyhow::Result<()> {
    let var = |suffix: &str| std::env::var(format!("{prefix}_{suffix}")).ok();
    if let Some(v) = var("URL") {
        backend.url = v;
    }
    if let Some(v) = var("MODEL") {
        backend.model = v;
    }
    if let Some(v) = var("API_KEY") {
        backend.api_key = Some(turngate_backends::client::ApiKey(v));
    }
    let number = |suffix: &str, v: String| {
        v.parse::<u64>()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {prefix}_{suffix}={v:?}: {e}"))
    };
    if let Some(v) = var("TIMEOUT_MS") {
        backend.timeout_ms = number("TIMEOUT_MS", v)?;
    }
    if let Some(v) = var("RETRIES") {
        backend.retries = number("RETRIES", v)? as u32;
    }
    Ok(())
}

impl Config {
    /// Checks that every media IP can be bound, before the gateway starts serving.
    pub fn check_media_ips(&self) -> anyhow::Result<()> {
        for ip in &self.media.ips {
            std::net::UdpSocket::bind((*ip, 0)).map_err(|e| {
                anyhow::anyhow!(
                    "invalid configuration: media.ips (--media-ip): cannot bind {ip}: {e}"
                )
            })?;
        }
        Ok(())
    }

    /// Defaults, then the file, then the overrides; validated.
    pub fn load(overrides: &Overrides) -> anyhow::Result<Self> {
        let mut config = match &overrides.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("invalid configuration: cannot read {}: {e}", path.display())
                })?;
                let table = toml::from_str::<toml::Table>(&text).map_err(|e| {
                    anyhow::anyhow!("invalid configuration: {}: {e}", path.display())
                })?;
                check_flattened_keys(&table).map_err(|e| {
                    anyhow::anyhow!("invalid configuration: {}: {e}", path.display())
                })?;
                table.try_into::<Config>().map_err(|e| {
                    anyhow::anyhow!("invalid configuration: {}: {e}", path.display())
                })?
            }
            None => Config::default(),
        };
        let o = overrides.clone();
        if let Some(v) = o.listen {
            config.listen = v;
        }
        if let Some(v) = o.media_ip {
            config.media.ips = v;
        }
        if let Some((min, max)) = o.media_ports {
            (config.media.port_min, config.media.port_max) = (min, max);
        }
        if let Some(v) = o.hangover_ms {
            config.turn.hangover_ms = v;
        }
        if let Some(v) = o.preroll_ms {
            config.turn.preroll_ms = v;
        }
        if let Some(v) = o.max_turn_ms {
            config.turn.max_turn_ms = v;
        }
        if let Some(v) = o.max_sessions {
            config.sessions.max = v;
        }
        if let Some(v) = o.max_pending {
            config.sessions.max_pending = v;
        }
        if let Some(v) = o.sessions_per_minute_per_ip {
            config.sessions.per_minute_per_ip = v;
        }
        if let Some(v) = o.max_sessions_per_ip {
            config.sessions.max_per_ip = v;
        }
        if let Some(v) = o.max_pending_per_ip {
            config.sessions.max_pending_per_ip = v;
        }
        if let Some(v) = o.cors_origins {
            config.cors_origins = v
                .into_iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
        }
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(v) = env("TURNGATE_AUTH_HS256_SECRET") {
            config.auth.hs256_secret = Some(turngate_backends::client::ApiKey(v));
        }
        if let Some(v) = env("TURNGATE_AUTH_JWKS_FILE") {
            config.auth.jwks_file = Some(v.into());
        }
        if let Some(v) = env("TURNGATE_ADMIN_TOKEN") {
            config.auth.admin_token = Some(turngate_backends::client::ApiKey(v));
        }
        if let Some(v) = env("TURNGATE_STORE_URL") {
            config.record.store = v;
        }
        if let Some(v) = env("TURNGATE_NODE_ID") {
            config.record.node_id = Some(v);
        }
        if let Some(v) = env("TURNGATE_SPOOL_DIR") {
            config.record.spool_dir = Some(v.into());
        }
        if let Some(v) = env("TURNGATE_TRACE_URL_TEMPLATE") {
            config.ui.trace_url_template = Some(v);
        }
        if let Some(v) = env("TURNGATE_UI_DEMO") {
            config.ui.demo = Some(v.parse().map_err(|_| {
                anyhow::anyhow!(
                    "invalid configuration: TURNGATE_UI_DEMO={v:?}: expected true or false"
                )
            })?);
        }
        config.insecure_no_auth = o.insecure_no_auth;
        for (prefix, backend) in [
            ("TURNGATE_ASR", &mut config.asr),
            ("TURNGATE_VISION", &mut config.vision.backend),
            ("TURNGATE_LLM", &mut config.llm.backend),
        ] {
            backend_from_env(prefix, backend)?;
        }
        for (name, value) in [
            (
                "TURNGATE_LLM_FIRST_TOKEN_TIMEOUT_MS",
                &mut config.llm.first_token_timeout_ms,
            ),
            (
                "TURNGATE_LLM_IDLE_TIMEOUT_MS",
                &mut config.llm.idle_timeout_ms,
            ),
        ] {
            if let Ok(v) = std::env::var(name) {
                *value = v
                    .parse()
                    .map_err(|e| anyhow::anyhow!("invalid configuration: {name}={v:?}: {e}"))?;
            }
        }
        if let Ok(v) = std::env::var("TURNGATE_TELEMETRY_CAPTURE_CONTENT") {
            config.telemetry.capture_content = v.parse().map_err(|_| {
                anyhow::anyhow!(
                    "invalid configuration: TURNGATE_TELEMETRY_CAPTURE_CONTENT={v:?}: expected true or false"
                )
            })?;
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let fail = |msg: String| Err(anyhow::anyhow!("invalid configuration: {msg}"));
        let r = &self.record;
        if r.retention_days == 0 {
            return fail("record.retention_days must be at least 1 (a sweep would delete every finished record)".into());
        }
        if !(100..=60_000).contains(&r.segment_ms) {
            return fail(format!(
                "record.segment_ms ({}) must be 100 to 60000",
                r.segment_ms
            ));
        }
        if !(100..=60_000).contains(&r.retry_ms) {
            return fail(format!(
                "record.retry_ms ({}) must be 100 to 60000",
                r.retry_ms
            ));
        }
        if r.lease_ms < 3_000 {
            return fail(format!(
                "record.lease_ms ({}) must be at least 3000",
                r.lease_ms
            ));
        }
        if let Some(t) = &self.ui.trace_url_template
            && (!t.contains("{trace_id}")
                || !(t.starts_with("http://") || t.starts_with("https://")))
        {
            return fail(format!(
                "ui.trace_url_template ({t:?}) must be an http:// or https:// address with {{trace_id}}"
            ));
        }
        let m = &self.media;
        if m.ips.is_empty() {
            return fail("media.ips (--media-ip) must name at least one address".into());
        }
        for (name, b) in [
            ("asr", &self.asr),
            ("vision", &self.vision.backend),
            ("llm", &self.llm.backend),
        ] {
            if b.max_concurrent == 0 || b.max_concurrent_per_session == 0 {
                return fail(format!(
                    "{name}.max_concurrent and {name}.max_concurrent_per_session must be at least 1"
                ));
            }
        }
        if !self.listen.ip().is_loopback() && !self.auth.enabled() && !self.insecure_no_auth {
            return fail(format!(
                "refusing to listen on {} without authentication: set auth.hs256_secret \
                 (TURNGATE_AUTH_HS256_SECRET) or auth.jwks_file (TURNGATE_AUTH_JWKS_FILE), and \
                 auth.admin_token (TURNGATE_ADMIN_TOKEN); or listen on loopback; or pass \
                 --insecure-no-auth",
                self.listen
            ));
        }
        if self.auth.leeway_s > crate::auth::MAX_LEEWAY_S {
            return fail(format!(
                "auth.leeway_s ({}) must be at most {}",
                self.auth.leeway_s,
                crate::auth::MAX_LEEWAY_S
            ));
        }
        if let Some(secret) = &self.auth.hs256_secret
            && secret.0.len() < 32
        {
            return fail(
                "auth.hs256_secret (TURNGATE_AUTH_HS256_SECRET) must be at least 32 bytes".into(),
            );
        }
        if self.uploads.max_held_bytes < self.uploads.max_image_bytes {
            return fail(format!(
                "uploads.max_held_bytes ({}) must hold at least one image of uploads.max_image_bytes ({})",
                self.uploads.max_held_bytes, self.uploads.max_image_bytes
            ));
        }
        if m.port_min == 0 || m.port_min > m.port_max {
            return fail(format!(
                "media.port_min ({}) must be at least 1 and not above media.port_max ({})",
                m.port_min, m.port_max
            ));
        }
        for (key, value) in [
            ("media.ingress_queue", m.ingress_queue),
            ("media.downstream_queue", m.downstream_queue),
            ("media.outbox", m.outbox),
            ("media.data_channel_send_buffer", m.data_channel_send_buffer),
            ("sessions.max", self.sessions.max),
            ("max_offer_bytes", self.max_offer_bytes),
            ("http.max_connections", self.http.max_connections),
            ("sessions.max_pending", self.sessions.max_pending),
            (
                "sessions.max_pending_per_ip",
                self.sessions.max_pending_per_ip,
            ),
            ("sessions.max_per_ip", self.sessions.max_per_ip),
            ("turn.max_turns", self.turn.max_turns),
            ("uploads.max_concurrent", self.uploads.max_concurrent),
            ("uploads.validators", self.uploads.validators),
            ("uploads.max_per_turn", self.uploads.max_per_turn as usize),
        ] {
            if value == 0 {
                return fail(format!("{key} must be at least 1"));
            }
        }
        let t = &self.turn;
        for (key, value) in [
            ("turn.hangover_ms", t.hangover_ms),
            ("turn.max_turn_ms", t.max_turn_ms),
            ("media.connect_timeout_ms", m.connect_timeout_ms),
            ("media.ice_disconnected_ms", m.ice_disconnected_ms),
            ("media.ice_failed_ms", m.ice_failed_ms),
            ("uploads.max_image_bytes", self.uploads.max_image_bytes),
            ("uploads.max_pixels", self.uploads.max_pixels),
            (
                "uploads.max_in_flight_bytes",
                self.uploads.max_in_flight_bytes,
            ),
            ("uploads.timeout_ms", self.uploads.timeout_ms),
            (
                "uploads.validation_wait_ms",
                self.uploads.validation_wait_ms,
            ),
            ("uploads.decode_timeout_ms", self.uploads.decode_timeout_ms),
            ("uploads.max_held_bytes", self.uploads.max_held_bytes),
            ("sessions.max_record_bytes", self.sessions.max_record_bytes),
            (
                "llm.first_token_timeout_ms",
                self.llm.first_token_timeout_ms,
            ),
            ("llm.idle_timeout_ms", self.llm.idle_timeout_ms),
            (
                "http.header_read_timeout_ms",
                self.http.header_read_timeout_ms,
            ),
            ("http.body_read_timeout_ms", self.http.body_read_timeout_ms),
            ("http.shutdown_grace_ms", self.http.shutdown_grace_ms),
        ] {
            if value == 0 {
                return fail(format!("{key} must be at least 1"));
            }
        }
        if t.max_turn_ms < 1000 {
            return fail(format!(
                "turn.max_turn_ms ({}) must be at least 1000",
                t.max_turn_ms
            ));
        }
        if t.preroll_ms >= t.max_turn_ms {
            return fail(format!(
                "turn.preroll_ms ({}) must be below turn.max_turn_ms",
                t.preroll_ms
            ));
        }
        let v = &self.vad;
        if !(0.0..=1.0).contains(&v.onset)
            || !(0.0..=1.0).contains(&v.sustain)
            || v.sustain > v.onset
        {
            return fail(format!(
                "vad.onset ({}) and vad.sustain ({}) must lie in 0..=1 with sustain <= onset",
                v.onset, v.sustain
            ));
        }
        for (key, backend) in [
            ("asr", &self.asr),
            ("vision", &self.vision.backend),
            ("llm", &self.llm.backend),
        ] {
            if backend.is_configured() {
                if !(backend.url.starts_with("http://") || backend.url.starts_with("https://")) {
                    return fail(format!(
                        "{key}.url ({:?}) must be an http(s) URL with the version prefix, e.g. http://127.0.0.1:8000/v1",
                        backend.url
                    ));
                }
                if backend.timeout_ms == 0 || backend.max_concurrent == 0 {
                    return fail(format!(
                        "{key}.timeout_ms and {key}.max_concurrent must be at least 1"
                    ));
                }
            }
        }
        for origin in &self.cors_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return fail(format!(
                    "cors_origins: {origin:?} is not an origin like https://app.example or *"
                ));
            }
        }
        Ok(())
    }

    /// Settings of the WebRTC answerer.
    pub fn peer(&self) -> PeerConfig {
        PeerConfig {
            ips: self.media.ips.clone(),
            data_channel_send_buffer: self.media.data_channel_send_buffer,
            ice_disconnected: Duration::from_millis(self.media.ice_disconnected_ms),
            ice_failed: Duration::from_millis(self.media.ice_failed_ms),
        }
    }

    /// Settings of each session's driver.
    pub fn session(&self) -> SessionConfig {
        let t = &self.turn;
        let u = &self.uploads;
        SessionConfig {
            uploads: turngate_core::upload::UploadLimits {
                max_image_bytes: u.max_image_bytes,
                max_concurrent: u.max_concurrent,
                max_in_flight_bytes: u.max_in_flight_bytes,
                timeout: Duration::from_millis(u.timeout_ms),
            },
            images: turngate_media::image::ImageLimits {
                max_pixels: u.max_pixels,
                decode_timeout: Duration::from_millis(u.decode_timeout_ms),
            },
            validators: std::sync::Arc::new(tokio::sync::Semaphore::new(u.validators)),
            validation_wait: Duration::from_millis(u.validation_wait_ms),
            image_budget: turngate_media::session::ImageBudget::new(u.max_held_bytes),
            turn: TurnConfig {
                hangover: Duration::from_millis(t.hangover_ms),
                preroll: Duration::from_millis(t.preroll_ms),
                max_turn: Duration::from_millis(t.max_turn_ms),
                speech_onset: Duration::from_millis(t.speech_onset_ms),
                max_turns: t.max_turns,
                max_uploads_per_turn: u.max_per_turn,
            },
            vad_onset: self.vad.onset,
            vad_sustain: self.vad.sustain,
            max_record_bytes: self.sessions.max_record_bytes,
            ingress_queue: self.media.ingress_queue,
            downstream_queue: self.media.downstream_queue,
            outbox: self.media.outbox,
            connect_timeout: Duration::from_millis(self.media.connect_timeout_ms),
            sampler: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_toml(text: &str) -> anyhow::Result<Config> {
        let dir = std::env::temp_dir().join(format!("turngate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.toml", text.len()));
        std::fs::write(&path, text).unwrap();
        Config::load(&Overrides {
            config: Some(path),
            ..Overrides::default()
        })
    }

    #[test]
    fn defaults_are_valid_and_loopback() {
        let c = Config::load(&Overrides::default()).unwrap();
        assert!(c.listen.ip().is_loopback());
        assert_eq!(c.media.ips, vec![IpAddr::from([127, 0, 0, 1])]);
    }

    #[test]
    fn overrides_win_over_the_file() {
        let dir = std::env::temp_dir().join(format!("turngate-config-o-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "[turn]\nhangover_ms = 900\npreroll_ms = 100\n").unwrap();
        let o = Overrides {
            config: Some(path),
            hangover_ms: Some(500),
            ..Overrides::default()
        };
        let c = Config::load(&o).unwrap();
        assert_eq!((c.turn.hangover_ms, c.turn.preroll_ms), (500, 100));
    }

    #[test]
    fn backend_sections_parse_and_refuse_unknown_keys() {
        let c =
            load_toml("[llm]\nurl = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\nhistory_turns = 3\n")
                .unwrap();
        assert_eq!(
            (c.llm.backend.url.as_str(), c.llm.history_turns),
            ("http://127.0.0.1:9/v1", 3)
        );
        let e = load_toml("[vision]\nurl = \"http://x/v1\"\nmystery = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mystery"), "{e}");
        let e = load_toml("[asr]\nurl = \"ftp://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("asr.url"), "{e}");
    }

    #[test]
    fn a_trace_url_template_is_a_web_address_with_the_trace_id() {
        for refused in [
            "javascript:alert('{trace_id}')",
            "http://jaeger/trace/",
            "//jaeger/{trace_id}",
        ] {
            let toml = format!("[ui]\ntrace_url_template = {refused:?}\n");
            let e = load_toml(&toml).unwrap_err().to_string();
            assert!(e.contains("ui.trace_url_template"), "{refused}: {e}");
        }
        let toml = "[ui]\ntrace_url_template = \"http://127.0.0.1:16686/trace/{trace_id}\"\n";
        assert!(load_toml(toml).is_ok());
    }

    #[test]
    fn record_settings_that_would_lose_records_are_refused() {
        for (toml, key) in [
            ("[record]\nretention_days = 0\n", "record.retention_days"),
            ("[record]\nsegment_ms = 0\n", "record.segment_ms"),
            ("[record]\nretry_ms = 0\n", "record.retry_ms"),
            ("[record]\nlease_ms = 0\n", "record.lease_ms"),
        ] {
            let e = load_toml(toml).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        let c = load_toml("[record]\nstore = \"s3://b/p\"\n").unwrap();
        assert_eq!(c.record.spool_dir(), Some(PathBuf::from("turngate-spool")));
        assert_eq!(
            Config::load(&Overrides::default())
                .unwrap()
                .record
                .spool_dir(),
            None
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = load_toml("[media]\nport_min = 5000\nport_max = 4000\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("media.port_min"), "{e}");
        let e = load_toml("[turn]\nhangover = 5\n").unwrap_err().to_string();
        assert!(e.contains("hangover"), "{e}");
        let e = load_toml("[vad]\nonset = 0.3\nsustain = 0.6\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("vad.onset"), "{e}");
        let e = load_toml("cors_origins = [\"example.com\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cors_origins"), "{e}");
    }
}
