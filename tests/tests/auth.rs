//! Access control as a client developer and an attacker meet it: client tokens (HS256
//! and RS256 from a JWKS file), the operator credential, and the refusal of every kind
//! of bad token with its status and counter.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use turngate_e2e::*;

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";
const ADMIN: &str = "operator-token-for-tests-0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims valid now for `sub`, overridden by `extra`.
fn claims(sub: &str, extra: Value) -> Value {
    let mut claims = json!({"sub": sub, "aud": "turngate", "iss": "tests", "exp": now() + 300});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

fn hs256(claims: &Value) -> String {
    hs256_with(SECRET.as_bytes(), claims)
}

fn hs256_with(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn rs256(claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-rs256".into());
    let key = std::fs::read(data("auth/rs256-test-key.der")).unwrap();
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_der(&key)).unwrap()
}

/// An unsigned token: `alg: none`.
fn unsigned(claims: &Value) -> String {
    use base64::Engine;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(claims)
    )
}

/// The gateway with an HS256 secret, the test JWKS, an issuer and the admin token.
async fn gateway() -> anyhow::Result<Gateway> {
    let jwks = data("auth/jwks.json");
    let toml = format!(
        "[auth]\njwks_file = {:?}\nissuer = \"tests\"\n",
        jwks.to_str().unwrap()
    );
    Gateway::with_config(
        "auth",
        &toml,
        &[],
        &[
            ("TURNGATE_AUTH_HS256_SECRET", SECRET),
            ("TURNGATE_ADMIN_TOKEN", ADMIN),
        ],
    )
    .await
}

/// POSTs an offer with `authorization` (if any): status, headers' WWW-Authenticate, body.
async fn post_whip(
    gw: &Gateway,
    authorization: Option<&str>,
) -> anyhow::Result<(u16, Option<String>, Value)> {
    let mut request = gw
        .http
        .post(format!("{}/v1/whip", gw.base))
        .header("content-type", "application/sdp")
        .body("v=0\r\n");
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let r = request.send().await?;
    let status = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let body = r.json().await.unwrap_or_default();
    Ok((status, challenge, body))
}

/// A connected client whose offer carried `token`.
async fn connect(gw: &Gateway, token: &str) -> anyhow::Result<Client> {
    let bearer = format!("Bearer {token}");
    let client = Client::connect_with(true, |offer| {
        let bearer = bearer.clone();
        async move {
            let (status, location, answer) =
                post_offer_with(gw, &offer, &[("authorization", &bearer)]).await?;
            anyhow::ensure!(status == 201, "{status}: {answer}");
            Ok((answer, location.unwrap_or_default()))
        }
    })
    .await?;
    client.session_id().await?;
    Ok(client)
}

#[tokio::test]
async fn every_kind_of_bad_token_is_refused_and_counted() -> anyhow::Result<()> {
    let gw = gateway().await?;
    let rsa_public_key = {
        let jwks: Value = serde_json::from_str(&std::fs::read_to_string(data("auth/jwks.json"))?)?;
        jwks["keys"][0]["n"].as_str().unwrap().to_owned()
    };
    let mut forged_with_public_key = Header::new(Algorithm::HS256);
    forged_with_public_key.kid = Some("test-rs256".into());
    let forged = jsonwebtoken::encode(
        &forged_with_public_key,
        &claims("mallory", json!({})),
        &EncodingKey::from_secret(rsa_public_key.as_bytes()),
    )?;
    let cases: Vec<(&str, Option<String>, u16, &str)> = vec![
        ("no token", None, 401, "missing"),
        (
            "not a JWT",
            Some("Bearer not-a-jwt".into()),
            401,
            "malformed",
        ),
        (
            "wrong signature",
            Some(format!(
                "Bearer {}",
                hs256_with(
                    b"another-secret-of-at-least-32-bytes",
                    &claims("a", json!({}))
                )
            )),
            401,
            "signature",
        ),
        (
            "expired beyond the leeway",
            Some(format!(
                "Bearer {}",
                hs256(&claims("a", json!({"exp": now() - 30})))
            )),
            401,
            "expired",
        ),
        (
            "not yet valid",
            Some(format!(
                "Bearer {}",
                hs256(&claims("a", json!({"nbf": now() + 60})))
            )),
            401,
            "not_yet_valid",
        ),
        (
            "wrong audience",
            Some(format!(
                "Bearer {}",
                hs256(&claims("a", json!({"aud": "someone-else"})))
            )),
            401,
            "audience",
        ),
        (
            "no audience",
            Some(format!(
                "Bearer {}",
                hs256(&claims("a", json!({"aud": null})))
            )),
            401,
            "missing_claim",
        ),
        (
            "no issuer",
            Some(format!(
                "Bearer {}",
                hs256(&claims("a", json!({"iss": null})))
            )),
            401,
            "missing_claim",
        ),
        (
            "wrong issuer",
            Some(format!(
                "Bearer {}",
                hs256(&claims("a", json!({"iss": "elsewhere"})))
            )),
            401,
            "issuer",
        ),
        (
            "alg none",
            Some(format!("Bearer {}", unsigned(&claims("a", json!({}))))),
            401,
            "malformed",
        ),
        (
            "HS256 signed with the RSA public key",
            Some(format!("Bearer {forged}")),
            401,
            "algorithm",
        ),
        (
            "a scope without whip",
            Some(format!(
                "Bearer {}",
                hs256(&claims("a", json!({"scope": "upload"})))
            )),
            403,
            "scope",
        ),
    ];
    for (what, authorization, status, reason) in &cases {
        let (got, challenge, body) = post_whip(&gw, authorization.as_deref()).await?;
        assert_eq!(got, *status, "{what}: {body}");
        let code = if *status == 401 {
            "unauthorized"
        } else {
            "forbidden"
        };
        assert_eq!(body["code"], code, "{what}: {body}");
        if *status == 401 {
            assert_eq!(challenge.as_deref(), Some("Bearer"), "{what}");
        }
        let counted = gw
            .metric(&format!(
                "turngate_auth_refused_total{{reason=\"{reason}\"}}"
            ))
            .await?;
        assert!(counted >= 1.0, "{what}: not counted as {reason}");
    }
    // Nothing of a token reaches the log.
    let log = gw.log();
    for (_, authorization, ..) in &cases {
        if let Some(a) = authorization {
            let token = a.trim_start_matches("Bearer ");
            assert!(!log.contains(token), "a token was logged");
        }
    }
    assert!(!log.contains(SECRET) && !log.contains(ADMIN));
    Ok(())
}

#[tokio::test]
async fn valid_tokens_open_sessions_and_only_their_subject_may_touch_them() -> anyhow::Result<()> {
    let gw = gateway().await?;
    let alice = hs256(&claims("alice", json!({})));
    let bob = rs256(&claims("bob", json!({})));
    let client = connect(&gw, &alice).await?;
    let _bobs = connect(&gw, &bob).await?;
    let location = format!("{}{}", gw.base, client.location);
    // Bob cannot upload to or end Alice's session: to him it does not exist.
    let upload = |token: &str| {
        gw.http
            .post(format!("{location}/images"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "image/png")
            .body(png(32, 24))
            .send()
    };
    assert_eq!(upload(&bob).await?.status().as_u16(), 404);
    let delete = |location: &str, token: &str| {
        gw.http
            .delete(location)
            .header("authorization", format!("Bearer {token}"))
            .send()
    };
    assert_eq!(delete(&location, &bob).await?.status().as_u16(), 404);
    // Without a token: 401.
    assert_eq!(
        gw.http.delete(&location).send().await?.status().as_u16(),
        401
    );
    // Alice can.
    assert_eq!(upload(&alice).await?.status().as_u16(), 201);
    assert_eq!(delete(&location, &alice).await?.status().as_u16(), 204);

    // Tokens without `sub` are no one in common: each owns only what it opened.
    let anonymous = |n: u64| hs256(&claims("", json!({"sub": null, "jti": n})));
    let (first, second) = (anonymous(1), anonymous(2));
    let theirs = connect(&gw, &first).await?;
    let location = format!("{}{}", gw.base, theirs.location);
    assert_eq!(delete(&location, &second).await?.status().as_u16(), 404);
    assert_eq!(delete(&location, &first).await?.status().as_u16(), 204);
    Ok(())
}

#[tokio::test]
async fn session_reads_need_the_operator_credential() -> anyhow::Result<()> {
    let gw = gateway().await?;
    let client = connect(&gw, &hs256(&claims("alice", json!({})))).await?;
    let id = client.session_id().await?;
    let read = |path: String, token: Option<String>| {
        let mut request = gw.http.get(format!("{}{path}", gw.base));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request.send()
    };
    for path in ["/v1/sessions".to_owned(), format!("/v1/sessions/{id}")] {
        let refused = read(path.clone(), None).await?;
        assert_eq!(refused.status().as_u16(), 401, "{path}");
        let body = refused.text().await?;
        assert!(!body.contains(&id) && !body.contains("turns"), "{body}");
        // A client token is not the operator's.
        let client_token = hs256(&claims("alice", json!({})));
        assert_eq!(
            read(path.clone(), Some(client_token))
                .await?
                .status()
                .as_u16(),
            403,
            "{path}"
        );
        assert_eq!(
            read(path.clone(), Some("wrong-admin-token".into()))
                .await?
                .status()
                .as_u16(),
            401,
            "{path}"
        );
        let admin = read(path.clone(), Some(ADMIN.into())).await?;
        assert_eq!(admin.status().as_u16(), 200, "{path}");
        assert!(admin.text().await?.contains(&id));
        let admin_jwt = hs256(&claims("ops", json!({"scope": "admin"})));
        assert_eq!(read(path, Some(admin_jwt)).await?.status().as_u16(), 200);
    }
    // Health and aggregate metrics stay open.
    assert_eq!(read("/healthz".into(), None).await?.status().as_u16(), 200);
    assert_eq!(read("/metrics".into(), None).await?.status().as_u16(), 200);
    Ok(())
}

#[tokio::test]
async fn a_minted_development_token_opens_a_session() -> anyhow::Result<()> {
    let gw = gateway().await?;
    // `turngate token create --sub dev --ttl 5m`, with more arguments: the token.
    let mint = |more: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(binary())
            .args(["token", "create", "--sub", "dev", "--ttl", "5m"])
            .args(more)
            .env("TURNGATE_AUTH_HS256_SECRET", SECRET)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    };
    let token = mint(&[])?;
    // Without the gateway's configuration it has no issuer, which this gateway requires.
    let (status, _, body) = post_whip(&gw, Some(&format!("Bearer {token}"))).await?;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let plain = Gateway::with_config(
        "auth-dev",
        "",
        &[],
        &[("TURNGATE_AUTH_HS256_SECRET", SECRET)],
    )
    .await?;
    connect(&plain, &token).await?;
    // With the gateway's configuration, it carries the issuer the gateway requires.
    let config = std::env::temp_dir().join(format!("turngate-iss-{}.toml", std::process::id()));
    std::fs::write(&config, "[auth]\nissuer = \"tests\"\n")?;
    let token = mint(&["--config".as_ref(), config.as_os_str()])?;
    connect(&gw, &token).await?;
    Ok(())
}

#[tokio::test]
async fn listening_beyond_loopback_without_keys_is_refused_at_start() -> anyhow::Result<()> {
    // 192.0.2.1 (TEST-NET-1) is never bound: the configuration is refused first.
    let out = tokio::process::Command::new(binary())
        .args(["serve", "--listen", "192.0.2.1:18999"])
        .env_remove("TURNGATE_AUTH_HS256_SECRET")
        .env_remove("TURNGATE_AUTH_JWKS_FILE")
        .env_remove("TURNGATE_ADMIN_TOKEN")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), out).await??;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for named in [
        "TURNGATE_AUTH_HS256_SECRET",
        "TURNGATE_AUTH_JWKS_FILE",
        "TURNGATE_ADMIN_TOKEN",
        "--insecure-no-auth",
    ] {
        assert!(stderr.contains(named), "{stderr}");
    }
    // A guessable operator credential is refused too.
    let out = tokio::process::Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("TURNGATE_ADMIN_TOKEN", "x7")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), out).await??;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("at least 32 bytes"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn cors_covers_client_routes_only_and_a_foreign_host_is_refused() -> anyhow::Result<()> {
    let gw = Gateway::start(&["--cors-origins", "https://app.example"], &[]).await?;
    let preflight = |path: &str, method: &str| {
        gw.http
            .request(reqwest::Method::OPTIONS, format!("{}{path}", gw.base))
            .header("origin", "https://app.example")
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let client_route = preflight("/v1/whip", "POST").await?;
    assert_eq!(
        client_route
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some("https://app.example")
    );
    let allowed = client_route
        .headers()
        .get("access-control-allow-headers")
        .map(|v| v.to_str().unwrap().to_ascii_lowercase())
        .unwrap_or_default();
    assert!(allowed.contains("authorization"), "{allowed}");
    assert!(
        client_route
            .headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    // Admin routes send no CORS header of any kind, to a preflight or a request.
    let cors_headers = |r: &reqwest::Response| -> Vec<String> {
        r.headers()
            .keys()
            .map(|k| k.as_str().to_owned())
            .filter(|k| k.starts_with("access-control-"))
            .collect()
    };
    for admin_route in ["/v1/sessions", "/metrics"] {
        let r = preflight(admin_route, "GET").await?;
        assert_eq!(cors_headers(&r), Vec::<String>::new(), "{admin_route}");
        let r = gw
            .http
            .get(format!("{}{admin_route}", gw.base))
            .header("origin", "https://app.example")
            .send()
            .await?;
        assert_eq!(cors_headers(&r), Vec::<String>::new(), "{admin_route}");
    }
    // DNS rebinding: a page at evil.example resolving to 127.0.0.1 still sends its name.
    let port = gw.base.rsplit(':').next().unwrap();
    for host in [format!("evil.example:{port}"), "evil.example".to_owned()] {
        let r = gw
            .http
            .get(format!("{}/v1/sessions", gw.base))
            .header("host", &host)
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 403, "{host}");
    }
    let refused = "turngate_auth_refused_total{reason=\"host\"}";
    assert_eq!(gw.metric(refused).await?, 2.0);
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let r = gw
            .http
            .get(format!("{}/healthz", gw.base))
            .header("host", &host)
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 200, "{host}");
    }
    Ok(())
}

#[tokio::test]
async fn with_no_keys_on_loopback_every_route_is_open_behind_the_host_check() -> anyhow::Result<()>
{
    let gw = Gateway::start_open(&[], &[]).await?;
    // No Authorization anywhere: offer, read, DELETE.
    let client = Client::connect(&gw, true).await?;
    assert_eq!(client.authorization, None);
    let id = client.session_id().await?;
    let (status, list) = gw.get("/v1/sessions").await?;
    assert_eq!(status, 200);
    assert_eq!(list["sessions"][0]["session_id"], id.as_str());
    gw.session(&id).await?;
    assert_eq!(client.delete(&gw).await?, 204);
    let port = gw.base.rsplit(':').next().unwrap();
    let r = gw
        .http
        .get(format!("{}/v1/sessions", gw.base))
        .header("host", format!("evil.example:{port}"))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 403);
    Ok(())
}

#[tokio::test]
async fn session_creation_is_limited_per_subject_without_touching_others() -> anyhow::Result<()> {
    let offer = |gw: &Gateway, token: String| {
        let gw = Gateway::external(&gw.base);
        async move {
            let bearer = format!("Bearer {token}");
            let (status, body) = Client::offer_with(&gw, &[("authorization", &bearer)]).await?;
            anyhow::Ok((
                status,
                serde_json::from_str::<Value>(&body).unwrap_or_default(),
            ))
        }
    };
    let alice = || hs256(&claims("alice", json!({"iss": null})));
    // Alice's next offer is refused, Bob's is not.
    let assert_refused_while_bob_is_not = |gw: &Gateway| {
        let gw = Gateway::external(&gw.base);
        async move {
            let (status, body) = offer(&gw, alice()).await?;
            assert_eq!(
                (status, body["code"].as_str()),
                (429, Some("rate_limited")),
                "{body}"
            );
            let (status, body) = offer(&gw, hs256(&claims("bob", json!({"iss": null})))).await?;
            assert_eq!(status, 201, "{body}");
            anyhow::Ok(())
        }
    };
    let env = [("TURNGATE_AUTH_HS256_SECRET", SECRET)];
    let toml = "[auth]\nsessions_per_minute_per_subject = 2\nmax_sessions_per_subject = 5\n";
    let gw = Gateway::with_config("rate", toml, &[], &env).await?;
    assert_eq!(offer(&gw, alice()).await?.0, 201);
    assert_eq!(offer(&gw, alice()).await?.0, 201);
    assert_refused_while_bob_is_not(&gw).await?;
    let refused = "turngate_sessions_refused_total{code=\"rate_limited\"}";
    assert_eq!(gw.metric(refused).await?, 1.0);

    // Live sessions per subject.
    let toml = "[auth]\nmax_sessions_per_subject = 1\n";
    let gw = Gateway::with_config("per-subject", toml, &[], &env).await?;
    assert_eq!(offer(&gw, alice()).await?.0, 201);
    assert_refused_while_bob_is_not(&gw).await?;
    Ok(())
}

/// The status of `GET /v1/sessions` with only `cookie` (a `name=value` pair).
async fn sessions_status(gw: &Gateway, cookie: &str) -> anyhow::Result<u16> {
    let response = gw
        .http
        .get(format!("{}/v1/sessions", gw.base))
        .header("cookie", cookie)
        .send()
        .await?;
    Ok(response.status().as_u16())
}

#[tokio::test]
async fn the_login_form_sets_an_http_only_strict_cookie_that_reads_sessions() -> anyhow::Result<()>
{
    let gw = gateway().await?;
    let form = gw.http.get(format!("{}/login", gw.base)).send().await?;
    assert_eq!(form.status().as_u16(), 200);
    let csp = form.headers()["content-security-policy"]
        .to_str()?
        .to_owned();
    assert!(csp.contains("script-src 'none'"), "{csp}");
    assert!(
        form.text()
            .await?
            .contains("<form method=\"post\" action=\"/login\">")
    );
    // A browser's form post; redirects are looked at, not followed.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let login = |token: &str| {
        browser
            .post(format!("{}/login", gw.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}&next=%2Fv1%2Fsessions"))
            .send()
    };
    // A wrong credential sets nothing, and the form says why.
    let wrong = login("not-the-token").await?;
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let again = wrong.text().await?;
    assert!(
        again.contains("role=\"alert\"") && again.contains("<form"),
        "{again}"
    );
    let signed_in = login(ADMIN).await?;
    assert_eq!(signed_in.status().as_u16(), 303);
    assert_eq!(signed_in.headers()["location"], "/v1/sessions");
    let cookie = signed_in.headers()["set-cookie"].to_str()?.to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "loopback: {cookie}");
    let pair = cookie.split(';').next().unwrap();
    assert_eq!(sessions_status(&gw, pair).await?, 200);
    // The cookie is a session, not the credential: a cookie reaching another service
    // on this host (browsers do not keep cookies apart by port) does not carry it.
    assert!(!pair.contains(ADMIN), "{pair}");
    // Another node with the same keys takes the session.
    let other = gateway().await?;
    assert_eq!(sessions_status(&other, pair).await?, 200);
    // The credential itself in the cookie, or a client token, is no session.
    let client = hs256(&claims("ops", json!({"scope": "admin"})));
    for value in [ADMIN.to_owned(), client] {
        let cookie = format!("turngate_admin={value}");
        assert_eq!(sessions_status(&gw, &cookie).await?, 401, "{value}");
    }
    assert_eq!(sessions_status(&gw, "turngate_admin=guess").await?, 401);
    // Signing out ends the session: the same cookie, replayed, is refused.
    let out = browser
        .post(format!("{}/logout", gw.base))
        .header("cookie", pair)
        .send()
        .await?;
    assert_eq!(out.status().as_u16(), 204);
    assert_eq!(sessions_status(&gw, pair).await?, 401);
    Ok(())
}

#[tokio::test]
async fn only_the_named_claims_reach_the_spans() -> anyhow::Result<()> {
    let collector = otlp::Collector::http().await?;
    let mut env: Vec<(&str, String)> = collector.env();
    env.push(("TURNGATE_AUTH_HS256_SECRET", SECRET.to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let toml = "[auth]\nspan_claims = [\"sub\", \"tenant\"]\n";
    let gw = Gateway::with_config("span-claims", toml, &[], &env).await?;
    let token = hs256(&claims(
        "alice",
        json!({"iss": null, "tenant": "acme", "email": "alice@example.com"}),
    ));
    let client = connect(&gw, &token).await?;
    client.send_event(json!({"type": "turn.start"})).await?;
    let started = client
        .inbox
        .wait("turn.started", 1, Duration::from_secs(3))
        .await?;
    client.send_event(json!({"type": "turn.end"})).await?;
    let turn_id = started[0]["turn_id"].as_str().unwrap().to_owned();
    let spans = collector
        .wait(Duration::from_secs(10), |spans| {
            spans
                .iter()
                .any(|s| s.trace_id == turn_id && s.name == "turn")
        })
        .await?;
    let root = spans
        .iter()
        .find(|s| s.trace_id == turn_id && s.name == "turn")
        .unwrap();
    assert_eq!(root.attr("user.id"), &json!("alice"));
    assert_eq!(root.attr("turngate.auth.tenant"), &json!("acme"));
    for span in spans.iter().filter(|s| s.trace_id == turn_id) {
        let text = format!("{:?}", span.attrs);
        assert!(!text.contains("alice@example.com"), "{text}");
    }
    Ok(())
}
