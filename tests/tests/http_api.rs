//! The HTTP API refuses bad input with problem+json and the documented codes, without
//! harming other sessions.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use turngate_e2e::*;

const PCMU_ONLY: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
    a=fingerprint:sha-256 AB:CD\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\n\
    a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=sendrecv\r\na=rtpmap:0 PCMU/8000\r\n";

fn no_audio() -> String {
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
     m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=sctp-port:5000\r\n"
        .to_owned()
}

/// Asserts a problem+json response with a status and code.
async fn expect_problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let ct = response
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(ct, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body:#}");
    assert_eq!(body["status"], status);
    assert_eq!(body["type"], format!("urn:turngate:error:{code}"));
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    body
}

async fn post(
    gw: &Gateway,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    gw.http
        .post(format!("{}/v1/whip", gw.base))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Sends a chunked POST (no Content-Length) of `total` bytes over a raw socket and
/// returns the status line.
async fn chunked_post(gw: &Gateway, total: usize) -> anyhow::Result<String> {
    let addr = gw.base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("POST /v1/whip HTTP/1.1\r\nHost: {addr}\r\n{}Content-Type: application/sdp\r\nTransfer-Encoding: chunked\r\n\r\n", authorization_line(gw.client_authorization().as_deref()))
            .as_bytes(),
    )
    .await?;
    let chunk = vec![b'a'; 8192];
    let mut sent = 0;
    while sent < total {
        let piece = format!("{:x}\r\n", chunk.len());
        if s.write_all(piece.as_bytes()).await.is_err()
            || s.write_all(&chunk).await.is_err()
            || s.write_all(b"\r\n").await.is_err()
        {
            break; // the server answered and closed: it did not buffer it all
        }
        sent += chunk.len();
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut response = vec![0u8; 1024];
    let n = s.read(&mut response).await?;
    Ok(String::from_utf8_lossy(&response[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned())
}

#[tokio::test]
async fn bad_offers_get_documented_problems_and_live_sessions_go_on() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    // A live session speaking while the bad requests arrive.
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    let speaking = tokio::spawn(async move { client.send_wav("speech.wav").await.map(|_| client) });

    expect_problem(
        post(&gw, "application/sdp", "hello, not SDP").await,
        400,
        "invalid_sdp",
    )
    .await;
    expect_problem(
        post(&gw, "application/sdp", vec![0xffu8, 0xfe, 0x00]).await,
        400,
        "invalid_sdp",
    )
    .await;
    expect_problem(post(&gw, "application/sdp", "").await, 400, "invalid_sdp").await;
    expect_problem(
        post(&gw, "text/plain", PCMU_ONLY).await,
        415,
        "unsupported_media_type",
    )
    .await;
    expect_problem(
        gw.http
            .post(format!("{}/v1/whip", gw.base))
            .body(PCMU_ONLY)
            .send()
            .await?,
        415,
        "unsupported_media_type",
    )
    .await;
    expect_problem(
        post(&gw, "application/sdp", no_audio()).await,
        422,
        "no_audio",
    )
    .await;
    expect_problem(
        post(&gw, "application/sdp", PCMU_ONLY).await,
        422,
        "unsupported_codec",
    )
    .await;
    expect_problem(
        post(
            &gw,
            "application/sdp",
            PCMU_ONLY
                .replace("a=sendrecv", "a=recvonly")
                .replace("PCMU/8000", "opus/48000/2"),
        )
        .await,
        422,
        "no_audio",
    )
    .await;
    expect_problem(
        post(&gw, "application/sdp", "v=0\r\n".repeat(20_000)).await,
        413,
        "payload_too_large",
    )
    .await;
    // Without a Content-Length the cap still holds, and not everything is read first.
    let status = chunked_post(&gw, 50 * 1024 * 1024).await?;
    assert!(status.contains("413"), "{status}");
    for (method, path) in [
        (
            reqwest::Method::DELETE,
            "/v1/whip/0123456789abcdef0123456789abcdef",
        ),
        (reqwest::Method::GET, "/v1/sessions/nope"),
        (
            reqwest::Method::GET,
            "/v1/sessions/0123456789abcdef0123456789abcdef",
        ),
        (reqwest::Method::GET, "/v2/whatever"),
    ] {
        let r = gw
            .http
            .request(method, format!("{}{path}", gw.base))
            .send()
            .await?;
        expect_problem(r, 404, "not_found").await;
    }

    let client = speaking.await??;
    client
        .inbox
        .wait("turn.ended", 1, Duration::from_secs(3))
        .await?;
    client.finish(&gw, &session_id).await?;
    assert_eq!(
        client.delete(&gw).await?,
        404,
        "a second DELETE finds nothing"
    );
    Ok(())
}

#[tokio::test]
async fn sessions_beyond_the_maximum_get_503_with_retry_after() -> anyhow::Result<()> {
    let gw = Gateway::start(&["--max-sessions", "1"], &[]).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    let err = match Client::connect(&gw, true).await {
        Ok(_) => panic!("a second session was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("503") && err.contains("too_many_sessions"),
        "{err}"
    );
    let r = post(
        &gw,
        "application/sdp",
        PCMU_ONLY.replace("PCMU/8000", "opus/48000/2"),
    )
    .await;
    assert!(r.headers().get("retry-after").is_some());
    expect_problem(r, 503, "too_many_sessions").await;
    // Freeing the session frees its place.
    assert_eq!(client.delete(&gw).await?, 204);
    let again = Client::connect(&gw, true).await?;
    again.session_id().await?;
    Ok(())
}

#[tokio::test]
async fn cors_preflight_is_answered_and_location_exposed() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[("TURNGATE_CORS_ORIGINS", "http://app.example")]).await?;
    let r = gw
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/v1/whip", gw.base))
        .header("origin", "http://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await?;
    assert!(r.status().is_success());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    let r = gw
        .http
        .post(format!("{}/v1/whip", gw.base))
        .header("origin", "http://app.example")
        .header("content-type", "application/sdp")
        .body("garbage")
        .send()
        .await?;
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    assert!(
        r.headers()["access-control-expose-headers"]
            .to_str()?
            .to_ascii_lowercase()
            .contains("location")
    );
    let r = gw
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/v1/whip", gw.base))
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await?;
    assert!(r.headers().get("access-control-allow-origin").is_none());
    Ok(())
}

#[tokio::test]
async fn ended_sessions_are_retained_up_to_the_configured_count() -> anyhow::Result<()> {
    let gw = Gateway::with_config("retain", "[sessions]\nretain_ended = 1\n", &[], &[]).await?;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let client = Client::connect(&gw, true).await?;
        ids.push(client.session_id().await?);
        assert_eq!(client.delete(&gw).await?, 204);
    }
    let live = Client::connect(&gw, true).await?;
    ids.push(live.session_id().await?);
    // Wait until the second session has been retired, then list.
    gw.wait_session(&ids[1], Duration::from_secs(5), |s| s["state"] == "ended")
        .await?;
    let (_, list) = gw.get("/v1/sessions").await?;
    let listed: Vec<&str> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        vec![ids[1].as_str(), ids[2].as_str()],
        "oldest first: the newest ended one and the live one"
    );
    let (status, _) = gw.get(&format!("/v1/sessions/{}", ids[0])).await?;
    assert_eq!(status, 404);
    Ok(())
}

/// A client turn with nothing in it: `turn.start`, then `turn.end`.
async fn empty_turn(client: &Client) -> anyhow::Result<()> {
    client
        .send_event(serde_json::json!({"type": "turn.start"}))
        .await?;
    client
        .send_event(serde_json::json!({"type": "turn.end"}))
        .await
}

/// A session with `turns` client turns, deleted once they have all completed: its id.
async fn session_of_turns(gw: &Gateway, turns: usize) -> anyhow::Result<String> {
    let client = Client::connect(gw, true).await?;
    let id = client.session_id().await?;
    for _ in 0..turns {
        empty_turn(&client).await?;
    }
    client
        .inbox
        .wait("turn.completed", turns, Duration::from_secs(10))
        .await?;
    assert_eq!(client.delete(gw).await?, 204);
    gw.wait_session(&id, Duration::from_secs(5), |s| s["state"] == "ended")
        .await?;
    Ok(id)
}

#[tokio::test]
async fn ended_sessions_are_retained_within_a_byte_budget_and_listed_a_page_at_a_time()
-> anyhow::Result<()> {
    let toml = "[sessions]\nretain_ended_bytes = 50000\n";
    let gw = Gateway::with_config("retain-bytes", toml, &[], &[]).await?;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(session_of_turns(&gw, 20).await?);
    }
    // Four sessions of twenty turns do not fit in 50 kB: the oldest went first, the
    // newest stays; what is kept fits.
    let (status, _) = gw.get(&format!("/v1/sessions/{}", ids[0])).await?;
    assert_eq!(status, 404);
    let (status, newest) = gw.get(&format!("/v1/sessions/{}", ids[3])).await?;
    assert_eq!(status, 200, "{newest:#}");
    let retained = gw.metric("turngate_sessions_retained_bytes").await?;
    assert!(retained > 0.0 && retained <= 50_000.0, "{retained}");

    // The list, one at a time, oldest first.
    let mut all: Vec<String> = Vec::new();
    let mut query = "/v1/sessions?limit=1".to_owned();
    loop {
        let (_, page) = gw.get(&query).await?;
        let sessions = page["sessions"].as_array().unwrap();
        assert!(sessions.len() <= 1, "{page:#}");
        all.extend(
            sessions
                .iter()
                .map(|s| s["session_id"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => query = format!("/v1/sessions?limit=1&after={next}"),
            None => break,
        }
    }
    assert!(all.len() >= 2, "{all:?}");
    assert!(all.iter().all(|id| ids[1..].contains(id)), "{all:?}");
    assert_eq!(all.last(), Some(&ids[3]));
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(all, sorted, "oldest first, each once");
    let (status, _) = gw.get("/v1/sessions?limit=0").await?;
    assert_eq!(status, 400);

    // One session's turns, five at a time.
    let mut numbers = Vec::new();
    let mut after = 0;
    loop {
        let (_, page) = gw
            .get(&format!(
                "/v1/sessions/{}?limit=5&after_turn={after}",
                ids[3]
            ))
            .await?;
        assert_eq!(page["turns_total"], 20);
        let turns = page["turns"].as_array().unwrap();
        assert!(turns.len() <= 5);
        numbers.extend(turns.iter().map(|t| t["turn_number"].as_u64().unwrap()));
        match page["next_after_turn"].as_u64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(numbers, (1..=20).collect::<Vec<u64>>());
    Ok(())
}

#[tokio::test]
async fn a_live_session_stops_opening_turns_when_its_record_is_full() -> anyhow::Result<()> {
    let gw = Gateway::with_config(
        "record-full",
        "[sessions]\nmax_record_bytes = 20000\n",
        &[],
        &[],
    )
    .await?;
    let client = Client::connect(&gw, true).await?;
    let id = client.session_id().await?;
    // Turn after turn, each completed (and recorded) before the next.
    for n in 1..=40 {
        empty_turn(&client).await?;
        if client
            .inbox
            .wait("turn.completed", n, Duration::from_secs(2))
            .await
            .is_err()
        {
            break;
        }
    }
    let refused = client.inbox.of("error");
    assert!(!refused.is_empty(), "every turn opened");
    assert_eq!(refused[0]["code"], "too_many_turns", "{refused:#?}");
    let session = gw
        .wait_session(&id, Duration::from_secs(5), |s| {
            s["turns"]
                .as_array()
                .is_some_and(|t| t.iter().all(|t| t["state"] == "completed"))
        })
        .await?;
    let turns = session["turns_total"].as_u64().unwrap();
    assert!((5..40).contains(&turns), "{turns} turns recorded");
    let held = gw.metric("turngate_sessions_retained_bytes").await?;
    assert!(held <= 25_000.0, "{held}");
    Ok(())
}
