//! Who may do what. Clients present a JWT (RFC 7519) as `Authorization: Bearer …` to
//! open a session (`whip`), end it and upload images to it (`upload`); operators present
//! the admin token, or a JWT with scope `admin`, to read sessions.
//!
//! Keys: an HS256 secret and/or a JWKS file (RFC 7517) of public keys by `kid`. Each key
//! verifies with the one algorithm it was configured for — a token's `alg` header never
//! chooses it — so `alg: none` and an HS256 token "signed" with an RSA public key are
//! refused. Required claims: `exp` and `aud`; `iss` when configured; `nbf` when present;
//! at most [`MAX_LEEWAY_S`] of clock leeway (the library's default is 60 s).
//!
//! With no key and no admin token configured, everything is open: the loopback
//! development default (the gateway refuses to listen elsewhere like that unless told
//! `--insecure-no-auth`).

use std::collections::HashMap;

use axum::http::HeaderMap;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use turngate_core::upload::{hex, sha256};

/// Most leeway allowed on `exp` and `nbf`, in seconds.
pub const MAX_LEEWAY_S: u64 = 5;

/// Fewest bytes of the HS256 secret and of the admin token: 256 bits, what RFC 7518
/// §3.2 asks of an HS256 key.
pub const MIN_SECRET_BYTES: usize = 32;

type Sha256Digest = sha2::digest::Output<Sha256>;

/// What a client token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a session (`POST /v1/whip`).
    Whip,
    /// End a session and upload images to it.
    Upload,
}

impl Action {
    fn scope(self) -> &'static str {
        match self {
            Self::Whip => "whip",
            Self::Upload => "upload",
        }
    }
}

/// Why a request was refused, as counted in `turngate_auth_refused_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header.
    Missing,
    /// Not a JWT, or one of an algorithm the gateway does not take (`none` included).
    Malformed,
    /// No configured key for the token (its `kid`, or HS256 without a secret).
    UnknownKey,
    /// The token's `alg` is not the one its key is pinned to.
    Algorithm,
    /// The signature does not verify.
    Signature,
    /// `exp` has passed (beyond the leeway).
    Expired,
    /// `nbf` is still ahead (beyond the leeway).
    NotYetValid,
    /// `aud` is not the configured audience.
    Audience,
    /// `iss` is not the configured issuer.
    Issuer,
    /// A required claim (`exp`, `aud`, and `iss` when an issuer is configured) is missing.
    MissingClaim,
    /// The token is valid but its scope does not allow the action (403).
    Scope,
    /// The admin credential is wrong.
    AdminToken,
    /// The request names a host the gateway does not serve (403; `http.allowed_hosts`).
    Host,
}

impl Refusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::Algorithm => "algorithm",
            Self::Signature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Audience => "audience",
            Self::Issuer => "issuer",
            Self::MissingClaim => "missing_claim",
            Self::Scope => "scope",
            Self::AdminToken => "admin_token",
            Self::Host => "host",
        }
    }

    /// What the client is told: enough to fix its token, nothing about the keys.
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => "send Authorization: Bearer <token>",
            Self::Malformed => "the token is not a JWT of an accepted algorithm",
            Self::UnknownKey => "no key of this gateway signs such a token",
            Self::Algorithm => "the token's algorithm is not its key's",
            Self::Signature => "the token's signature does not verify",
            Self::Expired => "the token has expired",
            Self::NotYetValid => "the token is not valid yet",
            Self::Audience => "the token is not for this gateway (aud)",
            Self::Issuer => "the token's issuer is not accepted (iss)",
            Self::MissingClaim => "the token lacks a required claim (exp, aud, iss)",
            Self::Scope => "the token's scope does not allow this",
            Self::AdminToken => "this needs the operator credential",
            Self::Host => "this host is not served here (http.allowed_hosts)",
        }
    }

    /// Whether the client is known but not allowed (403) rather than unknown (401).
    pub fn forbidden(self) -> bool {
        matches!(self, Self::Scope | Self::Host)
    }
}

/// The claims the gateway reads.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct Claims {
    /// The subject: whose sessions these are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Space-separated actions: `whip`, `upload`, `admin`. Absent: `whip upload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Every other claim, for `auth.span_claims`.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
    /// Whose sessions a client's are (set when its token is verified): `sub`, or for a
    /// token without one, the token itself (`token:` and its SHA-256), so a token
    /// without `sub` owns only what it opened and counts for itself in the per-subject
    /// limits. `None` when open.
    #[serde(skip)]
    pub owner: Option<String>,
}

impl Claims {
    /// The claims named in `names` that the token has, as span attributes: `sub` as
    /// `user.id` (OpenTelemetry's attribute for the user), any other as
    /// `turngate.auth.{name}`. No claim that is not named ever becomes one.
    pub fn span_attributes(&self, names: &[String]) -> Vec<(String, String)> {
        names
            .iter()
            .filter_map(|name| {
                let value = match name.as_str() {
                    "sub" => return self.sub.clone().map(|s| ("user.id".to_owned(), s)),
                    "scope" => self.scope.clone()?,
                    _ => match self.other.get(name)? {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    },
                };
                Some((format!("turngate.auth.{name}"), value))
            })
            .collect()
    }

    fn allows(&self, scope: &str) -> bool {
        match &self.scope {
            Some(scopes) => scopes.split(' ').any(|s| s == scope),
            None => scope == "whip" || scope == "upload",
        }
    }
}

/// How tokens are checked. See the module docs.
pub struct Auth {
    hs256: Option<DecodingKey>,
    /// Public keys by `kid`, each with the algorithm it is pinned to.
    jwks: HashMap<String, (DecodingKey, Algorithm)>,
    /// The SHA-256 of the admin token.
    admin_token: Option<Sha256Digest>,
    audience: String,
    issuer: Option<String>,
    leeway_s: u64,
    /// The key of operator sessions ([`ADMIN_COOKIE`]).
    session_key: [u8; 32],
    /// Sessions signed out before they ended, by `jti`, with their `exp` (unix seconds).
    ended: std::sync::Mutex<HashMap<String, u64>>,
}

/// The audience of an operator session's token: not a client's, not an admin Bearer
/// token's, so neither can stand for the other.
const SESSION_AUDIENCE: &str = "turngate-operator-session";

/// The auth settings, as configured.
pub struct AuthSettings<'a> {
    /// The HS256 secret (at least 32 bytes).
    pub hs256_secret: Option<&'a str>,
    /// A JWKS document's text.
    pub jwks: Option<&'a str>,
    /// The operator's bearer token.
    pub admin_token: Option<&'a str>,
    /// `aud` required.
    pub audience: &'a str,
    /// `iss` required, if set.
    pub issuer: Option<&'a str>,
    /// Clock leeway in seconds (at most [`MAX_LEEWAY_S`]).
    pub leeway_s: u64,
}

impl Auth {
    /// Keys from the settings.
    ///
    /// Errors: a secret or an admin token shorter than [`MIN_SECRET_BYTES`], a JWKS that
    /// does not parse, a key without `kid`, with a `kid` used twice, for encryption, or
    /// of a type or algorithm the gateway does not take, a leeway over 5 s.
    pub fn new(settings: &AuthSettings<'_>) -> anyhow::Result<Self> {
        anyhow::ensure!(
            settings.leeway_s <= MAX_LEEWAY_S,
            "auth.leeway_s must be at most {MAX_LEEWAY_S}"
        );
        if let Some(token) = settings.admin_token {
            // A guessable operator credential would be found by trying: nothing throttles
            // guesses but their number.
            anyhow::ensure!(
                token.len() >= MIN_SECRET_BYTES,
                "TURNGATE_ADMIN_TOKEN must be at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)"
            );
        }
        let hs256 = match settings.hs256_secret {
            Some(secret) => {
                anyhow::ensure!(
                    secret.len() >= MIN_SECRET_BYTES,
                    "auth.hs256_secret (TURNGATE_AUTH_HS256_SECRET) must be at least {MIN_SECRET_BYTES} bytes"
                );
                Some(DecodingKey::from_secret(secret.as_bytes()))
            }
            None => None,
        };
        let mut jwks = HashMap::new();
        if let Some(text) = settings.jwks {
            let set: JwkSet = serde_json::from_str(text)
                .map_err(|e| anyhow::anyhow!("auth.jwks_file is not a JWKS: {e}"))?;
            for jwk in &set.keys {
                let kid = jwk
                    .common
                    .key_id
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("auth.jwks_file: every key needs a kid"))?;
                let algorithm = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    AlgorithmParameters::EllipticCurve(ec)
                        if ec.curve == jsonwebtoken::jwk::EllipticCurve::P256 =>
                    {
                        Algorithm::ES256
                    }
                    AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                    AlgorithmParameters::EllipticCurve(_) => anyhow::bail!(
                        "auth.jwks_file: key {kid}: only P-256 (ES256) elliptic curve keys are taken"
                    ),
                    AlgorithmParameters::OctetKey(_) => anyhow::bail!(
                        "auth.jwks_file: key {kid} is a secret; put secrets in auth.hs256_secret"
                    ),
                };
                // A key's own `alg` and `use` (RFC 7517 §4.2, §4.4) must agree with what
                // it would verify.
                if let Some(alg) = jwk.common.key_algorithm {
                    anyhow::ensure!(
                        format!("{alg:?}") == format!("{algorithm:?}"),
                        "auth.jwks_file: key {kid} is for {alg:?}; the gateway verifies this key type with {algorithm:?} only"
                    );
                }
                anyhow::ensure!(
                    !matches!(
                        jwk.common.public_key_use,
                        Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
                    ),
                    "auth.jwks_file: key {kid} is for encryption (use: enc)"
                );
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| anyhow::anyhow!("auth.jwks_file: key {kid}: {e}"))?;
                anyhow::ensure!(
                    jwks.insert(kid.clone(), (key, algorithm)).is_none(),
                    "auth.jwks_file: kid {kid} is used by two keys"
                );
            }
        }
        Ok(Self {
            hs256,
            jwks,
            admin_token: settings.admin_token.map(|t| Sha256::digest(t.as_bytes())),
            audience: settings.audience.to_owned(),
            issuer: settings.issuer.map(str::to_owned),
            leeway_s: settings.leeway_s,
            session_key: session_key(settings),
            ended: Default::default(),
        })
    }

    /// Whether nothing is configured: every route is open (loopback only).
    pub fn is_open(&self) -> bool {
        self.hs256.is_none() && self.jwks.is_empty() && self.admin_token.is_none()
    }

    /// Whether a key for client tokens is configured.
    pub fn has_keys(&self) -> bool {
        self.hs256.is_some() || !self.jwks.is_empty()
    }

    /// The claims of a client allowed to do `action`; empty claims when open.
    pub fn client(&self, headers: &HeaderMap, action: Action) -> Result<Claims, Refusal> {
        if self.is_open() {
            return Ok(Claims::default());
        }
        let token = bearer(headers)?;
        let mut claims = self.verify(token)?;
        if !claims.allows(action.scope()) {
            return Err(Refusal::Scope);
        }
        claims.owner = Some(match &claims.sub {
            Some(sub) => sub.clone(),
            None => format!("token:{}", hex(&sha256(token.as_bytes()))),
        });
        Ok(claims)
    }

    /// Whether the request carries the operator credential — the admin token, or a JWT
    /// with scope `admin` — as a Bearer token or in the [`ADMIN_COOKIE`] set by the login
    /// form. Always when open.
    pub fn admin(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if self.is_open() {
            return Ok(());
        }
        match bearer(headers) {
            Err(Refusal::Missing) => {
                let session = cookie(headers, ADMIN_COOKIE).ok_or(Refusal::Missing)?;
                self.verify_session(session)
            }
            token => self.admin_credential(token?),
        }
    }

    /// A new operator session for the login cookie, valid `ttl_s` seconds: an HS256
    /// token of the session key (see [`session_key`]), never the credential itself,
    /// so a cookie that reaches another service (browsers do not keep cookies apart
    /// by port) gives nothing beyond this gateway's session, and only until it ends.
    pub fn session(&self, ttl_s: u64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let jti = hex(&rand::random::<[u8; 16]>());
        let claims = serde_json::json!({
            "sub": "operator", "aud": SESSION_AUDIENCE, "iat": now, "exp": now + ttl_s,
            "jti": jti,
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&self.session_key),
        )
        .unwrap_or_default()
    }

    /// Whether `token` is an operator session this gateway (or one sharing its keys)
    /// made, that has not expired and was not signed out here.
    fn verify_session(&self, token: &str) -> Result<(), Refusal> {
        let (jti, _) = self.decode_session(token)?;
        if self.ended().contains_key(&jti) {
            return Err(Refusal::AdminToken);
        }
        Ok(())
    }

    /// Ends the operator session `token` (sign-out): this node refuses it from now on,
    /// until it would have expired anyway.
    pub fn end_session(&self, token: &str) {
        if let Ok((jti, exp)) = self.decode_session(token) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut ended = self.ended();
            ended.retain(|_, until| *until + self.leeway_s >= now);
            ended.insert(jti, exp);
        }
    }

    /// A session token's `jti` and `exp`, if it is one of ours and has not expired.
    fn decode_session(&self, token: &str) -> Result<(String, u64), Refusal> {
        #[derive(serde::Deserialize)]
        struct Session {
            jti: String,
            exp: u64,
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = self.leeway_s;
        validation.set_audience(&[SESSION_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        let key = DecodingKey::from_secret(&self.session_key);
        match jsonwebtoken::decode::<Session>(token, &key, &validation) {
            Ok(data) => Ok((data.claims.jti, data.claims.exp)),
            Err(e) if *e.kind() == jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                Err(Refusal::Expired)
            }
            Err(_) => Err(Refusal::AdminToken),
        }
    }

    fn ended(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The operator session a request's cookie carries, if any.
    pub fn session_of<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        cookie(headers, ADMIN_COOKIE)
    }

    /// Whether `token` is the operator credential. The admin token is compared by its
    /// SHA-256, in constant time, so neither its bytes nor its length leak by timing.
    pub fn admin_credential(&self, token: &str) -> Result<(), Refusal> {
        if let Some(admin) = &self.admin_token
            && bool::from(Sha256::digest(token.as_bytes()).ct_eq(admin))
        {
            return Ok(());
        }
        if !self.has_keys() {
            return Err(Refusal::AdminToken);
        }
        match self.verify(token) {
            Ok(claims) if claims.allows("admin") => Ok(()),
            Ok(_) => Err(Refusal::Scope),
            // Not a JWT: a wrong admin token.
            Err(Refusal::Malformed) if self.admin_token.is_some() => Err(Refusal::AdminToken),
            Err(refusal) => Err(refusal),
        }
    }

    /// Verifies a JWT with the key its header names, pinned to that key's algorithm.
    fn verify(&self, token: &str) -> Result<Claims, Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
        let (key, algorithm) = match header.kid.as_deref().and_then(|k| self.jwks.get(k)) {
            Some((key, algorithm)) => (key, *algorithm),
            None => match (&self.hs256, header.alg) {
                (Some(key), Algorithm::HS256) => (key, Algorithm::HS256),
                _ => return Err(Refusal::UnknownKey),
            },
        };
        if header.alg != algorithm {
            return Err(Refusal::Algorithm);
        }
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.leeway_s;
        validation.validate_nbf = true;
        validation.set_audience(&[&self.audience]);
        match &self.issuer {
            // Without `iss` among the required claims the library accepts a token that
            // has none.
            Some(issuer) => {
                validation.set_required_spec_claims(&["exp", "aud", "iss"]);
                validation.set_issuer(&[issuer]);
            }
            None => validation.set_required_spec_claims(&["exp", "aud"]),
        }
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidSignature => Refusal::Signature,
                    ErrorKind::ExpiredSignature => Refusal::Expired,
                    ErrorKind::ImmatureSignature => Refusal::NotYetValid,
                    ErrorKind::InvalidAudience => Refusal::Audience,
                    ErrorKind::InvalidIssuer => Refusal::Issuer,
                    ErrorKind::MissingRequiredClaim(_) => Refusal::MissingClaim,
                    ErrorKind::InvalidAlgorithm => Refusal::Algorithm,
                    _ => Refusal::Malformed,
                }
            })
    }
}

/// The cookie the login form sets: an operator session ([`Auth::session`]), `HttpOnly`
/// and `SameSite=Strict`, so page scripts cannot read it and other sites cannot send it.
pub const ADMIN_COOKIE: &str = "turngate_admin";

/// The key operator sessions are signed with: derived from the configured secrets
/// (the HS256 secret and the admin token), so every node sharing them takes each
/// other's sessions and changing either ends them all; random (this process only) if
/// neither is configured (client keys from a JWKS, operators by admin-scoped JWTs).
fn session_key(settings: &AuthSettings<'_>) -> [u8; 32] {
    if settings.hs256_secret.is_none() && settings.admin_token.is_none() {
        return rand::random();
    }
    let mut hasher = Sha256::new();
    hasher.update(b"turngate operator session v1\0");
    for secret in [settings.hs256_secret, settings.admin_token] {
        let secret = secret.unwrap_or_default().as_bytes();
        hasher.update((secret.len() as u64).to_be_bytes());
        hasher.update(secret);
    }
    hasher.finalize().into()
}

/// The value of cookie `name` in the request's `Cookie` headers (RFC 6265 §5.4:
/// `name=value` pairs separated by `; `). Hand-parsed: one name, no attributes; the
/// `cookie` crate would bring the `time` crate for this.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim_matches('"'))
}

/// The token of an `Authorization: Bearer …` header.
fn bearer(headers: &HeaderMap) -> Result<&str, Refusal> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(Refusal::Missing)?;
    let value = value.to_str().map_err(|_| Refusal::Malformed)?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
        _ => Err(Refusal::Missing),
    }
}

/// A development token signed with the HS256 secret: `sub`, `aud`, `iss` if the gateway
/// requires one, `exp` = now + `ttl_s`, and `scope` if given.
///
/// Errors: an empty `sub`, a `ttl_s` of 0.
pub fn mint(
    secret: &str,
    audience: &str,
    issuer: Option<&str>,
    sub: &str,
    ttl_s: u64,
    scope: Option<&str>,
) -> anyhow::Result<String> {
    anyhow::ensure!(!sub.is_empty(), "--sub must not be empty");
    anyhow::ensure!(ttl_s > 0, "--ttl must be at least 1s");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut claims =
        serde_json::json!({"sub": sub, "aud": audience, "iat": now, "exp": now + ttl_s});
    if let Some(scope) = scope {
        claims["scope"] = scope.into();
    }
    if let Some(issuer) = issuer {
        claims["iss"] = issuer.into();
    }
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}
