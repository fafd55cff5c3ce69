//! The turn record over HTTP, as an operator's tools use it: the manifest, artifacts
//! with `ETag` and `Range`, a session's turns a page at a time — still there after a
//! restart — and deletion; the operator credential required throughout.

use std::time::Duration;

use serde_json::{Value, json};
use turngate_e2e::fake_openai::*;
use turngate_e2e::*;

/// Waits until `GET /v1/turns/{turn}` answers 200 (the record's manifest is written
/// once the turn ends), and returns the manifest.
async fn record(gw: &Gateway, turn: &str) -> anyhow::Result<Value> {
    for _ in 0..100 {
        let (status, body) = gw.get(&format!("/v1/turns/{turn}")).await?;
        if status == 200 {
            return Ok(body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("no record of turn {turn}:\n{}", gw.log())
}

async fn delete(gw: &Gateway, path: &str) -> anyhow::Result<u16> {
    let response = gw.http.delete(format!("{}{path}", gw.base)).send().await?;
    Ok(response.status().as_u16())
}

async fn artifact(
    gw: &Gateway,
    turn: &str,
    name: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<reqwest::Response> {
    let mut request = gw
        .http
        .get(format!("{}/v1/turns/{turn}/artifacts/{name}", gw.base));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    Ok(request.send().await?)
}

#[tokio::test]
async fn the_record_is_read_ranged_paged_and_deleted_and_outlives_a_restart() -> anyhow::Result<()>
{
    let (base, _seen) = fake_openai().await?;
    let store = std::env::temp_dir().join(format!("turngate-read-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    let mut env = backend_env(&base, &base, &base);
    env.push(("TURNGATE_STORE_URL", store.to_str().unwrap().to_owned()));
    let mut gw = start_with(&env).await?;
    let client = Client::connect(&gw, true).await?;
    let session = client.session_id().await?;
    let image = png(64, 40);
    let mut turns = Vec::new();
    for n in 1..=3 {
        let (completed, _) = client_turn(&client, n, (n == 1).then_some(&image[..])).await?;
        turns.push(completed["turn_id"].as_str().unwrap().to_owned());
    }
    let turn = &turns[0];
    let m = record(&gw, turn).await?;
    assert_eq!(m["turn_id"], turn.as_str());
    assert_eq!(m["transcript"], TRANSCRIPT);

    // Without the operator credential: 401, for every read and delete.
    let anonymous = reqwest::Client::new();
    for (method, path) in [
        ("GET", format!("/v1/turns/{turn}")),
        (
            "GET",
            format!("/v1/turns/{turn}/artifacts/audio.received.ogg"),
        ),
        ("GET", format!("/v1/sessions/{session}/turns")),
        ("DELETE", format!("/v1/turns/{turn}")),
        ("DELETE", format!("/v1/sessions/{session}/records")),
    ] {
        let url = format!("{}{path}", gw.base);
        let request = match method {
            "GET" => anonymous.get(&url),
            _ => anonymous.delete(&url),
        };
        let status = request.send().await?.status().as_u16();
        assert_eq!(status, 401, "{method} {path}");
    }

    // An artifact whole: its bytes, its hash as ETag, its type; never run as a page.
    let ogg = m["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "audio.received.ogg")
        .unwrap()
        .clone();
    let whole = artifact(&gw, turn, "audio.received.ogg", &[]).await?;
    assert_eq!(whole.status(), 200);
    let etag = format!("\"{}\"", ogg["sha256"].as_str().unwrap());
    assert_eq!(whole.headers()["etag"], etag.as_str());
    assert_eq!(whole.headers()["content-type"], "audio/ogg");
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    assert!(
        whole.headers()["content-security-policy"]
            .to_str()?
            .contains("sandbox")
    );
    let bytes = whole.bytes().await?;
    assert_eq!(sha256_hex(&bytes), ogg["sha256"].as_str().unwrap());
    let size = bytes.len();
    // Revalidation.
    let again = artifact(&gw, turn, "audio.received.ogg", &[("if-none-match", &etag)]).await?;
    assert_eq!(again.status(), 304);
    let weak = format!("W/{etag}");
    let again = artifact(&gw, turn, "audio.received.ogg", &[("if-none-match", &weak)]).await?;
    assert_eq!(again.status(), 304, "If-None-Match compares weakly");
    // Ranges: the start, the end, and past the end.
    let head = artifact(&gw, turn, "audio.received.ogg", &[("range", "bytes=0-99")]).await?;
    assert_eq!(head.status(), 206);
    assert_eq!(
        head.headers()["content-range"],
        format!("bytes 0-99/{size}").as_str()
    );
    assert_eq!(head.bytes().await?, bytes.slice(0..100));
    let tail = artifact(&gw, turn, "audio.received.ogg", &[("range", "bytes=-10")]).await?;
    assert_eq!(tail.status(), 206);
    assert_eq!(tail.bytes().await?, bytes.slice(size - 10..));
    let past = format!("bytes={size}-");
    let beyond = artifact(&gw, turn, "audio.received.ogg", &[("range", &past)]).await?;
    assert_eq!(beyond.status(), 416);
    assert_eq!(
        beyond.headers()["content-range"],
        format!("bytes */{size}").as_str()
    );
    // A stale If-Range gets the whole artifact.
    let stale = artifact(
        &gw,
        turn,
        "audio.received.ogg",
        &[("range", "bytes=0-9"), ("if-range", "\"other\"")],
    )
    .await?;
    assert_eq!(stale.status(), 200);
    // The image as uploaded, under its blob id.
    let image_name = format!("images/{}.png", sha256_hex(&image));
    let got = artifact(&gw, turn, &image_name, &[]).await?;
    assert_eq!(got.headers()["content-type"], "image/png");
    assert_eq!(got.bytes().await?, image);
    // An artifact changed behind the gateway's back is served as it is now: its own
    // size, no ETag of bytes it no longer has; gone, it is 404.
    let file = store.join(format!("sessions/{session}/turns/{turn}/{image_name}"));
    std::fs::write(&file, &image[..10])?;
    let cut = artifact(&gw, turn, &image_name, &[("range", "bytes=0-99")]).await?;
    assert_eq!(cut.status(), 206);
    assert_eq!(cut.headers()["content-range"], "bytes 0-9/10");
    assert!(cut.headers().get("etag").is_none());
    std::fs::remove_file(&file)?;
    let gone = artifact(&gw, turn, &image_name, &[("if-none-match", "*")]).await?;
    assert_eq!(gone.status(), 404);
    // Only what the manifest lists: nothing else, no way out of the turn's prefix.
    // (`%2F` and `%2E` reach the handler decoded; a plain `../` would be resolved by
    // the client before it is sent.)
    for name in [
        "manifest.json",
        "%2E%2E%2F%2E%2E%2F%2E%2E%2Fturns%2Fx",
        "images/nope.png",
    ] {
        let refused = artifact(&gw, turn, name, &[]).await?;
        assert_eq!(refused.status(), 404, "{name}");
        // Refused by the record's list, not missed by the router.
        let body: Value = refused.json().await?;
        assert!(
            body["detail"]
                .as_str()
                .unwrap_or("")
                .contains("lists no artifact"),
            "{name}: {body}"
        );
    }
    for id in ["0af7651916cd43dd8448eb211c80319c", "not-an-id"] {
        let (status, body) = gw.get(&format!("/v1/turns/{id}")).await?;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("turn_not_found"))
        );
    }

    // The session's turns, two at a time; each names the turns its prompt held.
    for (t, history) in turns.iter().zip([json!([]), json!([1]), json!([1, 2])]) {
        let m = record(&gw, t).await?;
        assert_eq!(m.get("history").cloned().unwrap_or(json!([])), history);
    }
    let (status, page) = gw
        .get(&format!("/v1/sessions/{session}/turns?limit=2"))
        .await?;
    assert_eq!(status, 200, "{page}");
    let numbers = |p: &Value| -> Vec<u64> {
        p["turns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["number"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(numbers(&page), [1, 2]);
    assert_eq!(page["turns"][0]["turn_id"], turn.as_str());
    assert_eq!(page["turns"][0]["transcript"], TRANSCRIPT);
    assert_eq!(page["next"], 2);
    let (_, last) = gw
        .get(&format!("/v1/sessions/{session}/turns?limit=2&after=2"))
        .await?;
    assert_eq!(numbers(&last), [3]);
    assert_eq!(last["next"], Value::Null);
    let (status, _) = gw
        .get(&format!("/v1/sessions/{session}/turns?limit=0"))
        .await?;
    assert_eq!(status, 400);

    // Delete one turn: gone, and a second delete finds nothing.
    let deleted = format!("/v1/turns/{}", turns[1]);
    assert_eq!(delete(&gw, &deleted).await?, 204);
    let (status, body) = gw.get(&deleted).await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("turn_not_found"))
    );
    assert_eq!(delete(&gw, &deleted).await?, 404);

    // A restart: the ended session's turns come from the store.
    assert_eq!(client.delete(&gw).await?, 204);
    gw.kill().await?;
    let gw = start_with(&env).await?;
    let (status, page) = gw.get(&format!("/v1/sessions/{session}/turns")).await?;
    assert_eq!(status, 200, "{page}");
    assert_eq!(numbers(&page), [1, 3]);
    let ranged = artifact(&gw, turn, "audio.received.ogg", &[("range", "bytes=0-3")]).await?;
    assert_eq!(ranged.status(), 206);
    assert_eq!(&ranged.bytes().await?[..], b"OggS");

    // The session's records, all at once.
    let records = format!("/v1/sessions/{session}/records");
    assert_eq!(delete(&gw, &records).await?, 204);
    let (status, _) = gw.get(&format!("/v1/sessions/{session}/turns")).await?;
    assert_eq!(status, 404);
    assert_eq!(delete(&gw, &records).await?, 404);
    drop(gw);
    let _ = std::fs::remove_dir_all(&store);
    Ok(())
}

#[tokio::test]
async fn a_turn_id_two_sessions_recorded_is_a_conflict_until_one_is_named() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let turn = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let client = Client::connect(&gw, true).await?;
        sessions.push(client.session_id().await?);
        client
            .send_event(json!({"type": "turn.start", "turn_id": turn}))
            .await?;
        client
            .inbox
            .wait("turn.started", 1, Duration::from_secs(3))
            .await?;
        client.send_event(json!({"type": "turn.end"})).await?;
        client
            .inbox
            .wait("turn.completed", 1, Duration::from_secs(10))
            .await?;
        // Its manifest, under its own session.
        let path = format!("/v1/turns/{turn}?session={}", sessions.last().unwrap());
        let mut found = false;
        for _ in 0..100 {
            if gw.get(&path).await?.0 == 200 {
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(found, "no record at {path}");
    }
    let (status, problem) = gw.get(&format!("/v1/turns/{turn}")).await?;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["code"], "ambiguous_turn");
    let mut listed: Vec<String> = problem["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    sessions.sort();
    assert_eq!(listed, sessions);
    let (status, m) = gw
        .get(&format!("/v1/turns/{turn}?session={}", sessions[1]))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(m["session_id"], sessions[1].as_str());
    Ok(())
}
