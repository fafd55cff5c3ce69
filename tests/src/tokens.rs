//! The credentials harness gateways run with, so every end-to-end test exercises the
//! gateway with access control on: client tokens are HS256 JWTs signed with
//! [`SECRET`], the operator's credential is [`ADMIN_TOKEN`].
//!
//! Each offer the harness posts carries a token for a subject of its own
//! ([`client_token`]), as if every peer were a different user, so the per-subject
//! limits of one test never see another's sessions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// The HS256 secret harness gateways verify client tokens with
/// (`TURNGATE_AUTH_HS256_SECRET`).
pub const SECRET: &str = "turngate-end-to-end-harness-secret-0123456789";

/// The operator credential of harness gateways (`TURNGATE_ADMIN_TOKEN`).
pub const ADMIN_TOKEN: &str = "turngate-end-to-end-harness-operator";

/// Environment variables that configure a gateway's keys: a test that sets one brings
/// its own credentials, and the harness adds none.
pub const KEY_VARIABLES: [&str; 3] = [
    "TURNGATE_AUTH_HS256_SECRET",
    "TURNGATE_AUTH_JWKS_FILE",
    "TURNGATE_ADMIN_TOKEN",
];

/// A token for `sub` allowed `scope` (space-separated: `whip`, `upload`, `admin`),
/// audience `turngate`, valid for an hour, signed with the harness [`SECRET`].
pub fn mint(sub: &str, scope: &str) -> String {
    mint_with(SECRET, sub, scope)
}

/// [`mint`] signed with `secret` (a gateway's `auth.hs256_secret`).
pub fn mint_with(secret: &str, sub: &str, scope: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let claims = serde_json::json!({
        "sub": sub, "aud": "turngate", "scope": scope, "iat": now, "exp": now + 3600,
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signs")
}

/// A token for a subject no other call of this process gets, allowed `whip` and
/// `upload`.
pub fn client_token() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    mint(&format!("client-{}-{n}", std::process::id()), "whip upload")
}

/// `Bearer <token>` for the harness itself: one subject allowed everything, reads
/// included.
pub fn harness_bearer() -> String {
    format!("Bearer {}", mint("harness", "whip upload admin"))
}
