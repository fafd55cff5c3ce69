//! Interop with independent WebRTC stacks: Python's aiortc and headless Chromium.
//!
//! Needs the virtual environment with aiortc (`.venv`, made by `scripts/test`) and
//! Debian's `chromium`. The Chromium test runs only inside a network namespace that has
//! no interface but loopback (as `scripts/test` runs the suite): Chromium pairs its
//! other interfaces' addresses with the gateway's loopback candidate otherwise.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use turngate_e2e::*;

const TURN_ID: &str = "1be2f0a0c0ffee00112233445566778a";

/// The aiortc client speaking `speech-48k.wav` to `gw`, with a token of its own in
/// its environment on a gateway with the harness keys.
fn aiortc_client(gw: &Gateway) -> anyhow::Result<tokio::process::Command> {
    let python = workspace().join(".venv/bin/python");
    anyhow::ensure!(
        python.exists(),
        "{} is missing: run scripts/test, which creates it",
        python.display()
    );
    let mut command = tokio::process::Command::new(python);
    command
        .arg(workspace().join("tests/clients/aiortc_client.py"))
        .args(["--base", &gw.base, "--wav"])
        .arg(data("speech-48k.wav"))
        .envs(gw.client_token().map(|token| ("TURNGATE_TOKEN", token)));
    Ok(command)
}

async fn aiortc(gw: &Gateway, args: &[&str]) -> anyhow::Result<Value> {
    let out = aiortc_client(gw)?.args(args).output().await?;
    anyhow::ensure!(
        out.status.success(),
        "aiortc client failed: {}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn of<'a>(result: &'a Value, kind: &str) -> Vec<&'a Value> {
    result["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind)
        .collect()
}

#[tokio::test]
async fn aiortc_speech_gets_vad_turns_and_every_packet_is_counted() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let result = aiortc(&gw, &[]).await?;
    let session_id = result["session_id"].as_str().unwrap();
    assert_eq!(of(&result, "session.ready").len(), 1);
    let ended = of(&result, "turn.ended");
    assert_eq!(ended.len(), 2, "{result:#}");
    let session = gw
        .wait_session(session_id, Duration::from_secs(5), |s| {
            s["state"] == "ended"
        })
        .await?;
    assert_eq!(
        assert_balanced(&session),
        result["packets_sent"].as_u64().unwrap(),
        "{session:#}"
    );
    Ok(())
}

#[tokio::test]
async fn aiortc_client_turn_uses_the_clients_id() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let result = aiortc(&gw, &["--client-turn", "--turn-id", TURN_ID]).await?;
    let started = of(&result, "turn.started");
    assert_eq!(started.len(), 1, "{result:#}");
    assert_eq!(started[0]["turn_id"], TURN_ID);
    assert_eq!(started[0]["cause"], "client");
    let ended = of(&result, "turn.ended");
    assert_eq!(ended[0]["turn_id"], TURN_ID);
    assert_eq!(ended[0]["reason"], "client_end");
    Ok(())
}

#[tokio::test]
async fn aiortc_audio_only_offer_gets_vad_turns() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let result = aiortc(&gw, &["--no-datachannel"]).await?;
    assert!(result["events"].as_array().unwrap().is_empty());
    let (_, list) = gw.get("/v1/sessions").await?;
    let id = list["sessions"][0]["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let session = gw
        .wait_session(&id, Duration::from_secs(5), |s| s["state"] == "ended")
        .await?;
    assert_eq!(session["data_channel"], false);
    assert_eq!(session["turns"].as_array().unwrap().len(), 2, "{session:#}");
    assert_eq!(
        assert_balanced(&session),
        result["packets_sent"].as_u64().unwrap()
    );
    Ok(())
}

/// True when the only network interface is loopback.
fn only_loopback() -> bool {
    // /proc/net/dev lists the interfaces of the reader's network namespace.
    std::fs::read_to_string("/proc/net/dev")
        .map(|t| {
            t.lines()
                .skip(2)
                .filter_map(|l| l.split(':').next())
                .all(|name| name.trim() == "lo")
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn chromium_with_a_fake_microphone_gets_a_vad_turn() -> anyhow::Result<()> {
    anyhow::ensure!(
        only_loopback(),
        "this test must run in a network namespace with only loopback (run scripts/test)"
    );
    let page_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let origin = format!("http://127.0.0.1:{page_port}");
    let gw = Gateway::start(&[], &[("TURNGATE_CORS_ORIGINS", &origin)]).await?;
    // The page and, beside it, the client token it fetches (as from the app's backend).
    let site = std::env::temp_dir().join(format!("turngate-site-{}", std::process::id()));
    std::fs::create_dir_all(&site)?;
    std::fs::copy(
        workspace().join("tests/browser/whip.html"),
        site.join("whip.html"),
    )?;
    std::fs::write(
        site.join("token"),
        gw.client_token()
            .context("a gateway with the harness keys")?,
    )?;
    let _server = tokio::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &page_port.to_string(),
            "--directory",
        ])
        .arg(&site)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let profile = std::env::temp_dir().join(format!("turngate-chromium-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    let audio = format!("{}%noloop", data("speech-48k.wav").display());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut chromium = tokio::process::Command::new("/usr/bin/chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            &format!("--use-file-for-fake-audio-capture={audio}"),
            "--allow-loopback-in-peer-connection",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            &format!("--user-data-dir={}", profile.display()),
            "--remote-debugging-port=0",
            &format!("{origin}/whip.html?whip={}/v1/whip", gw.base),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let found = async {
        loop {
            let (_, list) = gw.get("/v1/sessions").await?;
            if let Some(id) = list["sessions"][0]["session_id"].as_str() {
                let s = gw.session(id).await?;
                if s["turns"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t["state"] != "open"))
                {
                    return anyhow::Ok(s);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let session = tokio::time::timeout(Duration::from_secs(30), found).await;
    let _ = chromium.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
    let _ = std::fs::remove_dir_all(&site);
    let session = session
        .map_err(|_| anyhow::anyhow!("no turn from Chromium; gateway log:\n{}", gw.log()))??;
    let turn = &session["turns"][0];
    assert_eq!(turn["cause"], "vad", "{session:#}");
    assert_eq!(turn["reason"], "end_of_speech");
    assert_eq!(session["data_channel"], true);
    assert!(turn["frames"].as_u64().unwrap() > 50);
    Ok(())
}

#[tokio::test]
async fn a_peer_that_goes_silent_ends_its_session_within_35_seconds() -> anyhow::Result<()> {
    // An aiortc client that is frozen (SIGSTOP) mid-session: no close, no DTLS alert,
    // just silence, as when a phone loses its network. ICE consent then fails.
    let gw = Gateway::start(&[], &[]).await?;
    let mut child = aiortc_client(&gw)?
        .args(["--client-turn", "--linger", "120"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().expect("running").to_string();
    let session_id = loop {
        let (_, list) = gw.get("/v1/sessions").await?;
        if let Some(id) = list["sessions"][0]["session_id"].as_str() {
            let s = gw.session(id).await?;
            if s["turns"].as_array().is_some_and(|t| !t.is_empty()) {
                break id.to_owned();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()?;
    let frozen = std::time::Instant::now();
    let session = gw
        .wait_session(&session_id, Duration::from_secs(40), |s| {
            s["state"] == "ended"
        })
        .await;
    let elapsed = frozen.elapsed();
    let _ = child.kill().await;
    let session = session?;
    assert!(
        elapsed <= Duration::from_secs(35),
        "ended after {elapsed:?}"
    );
    assert_eq!(session["end_reason"], "peer_failed", "{session:#}");
    assert_eq!(session["turns"][0]["reason"], "session_closed");
    assert_balanced(&session);
    Ok(())
}

#[tokio::test]
async fn aiortc_uploads_a_jpeg_mid_utterance() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let jpeg = jpeg(800, 600);
    let path = std::env::temp_dir().join(format!("turngate-aiortc-{}.jpg", std::process::id()));
    std::fs::write(&path, &jpeg)?;
    // Speech runs from 0.5 s to 2.3 s of the file: upload 1.2 s in.
    let result = aiortc(
        &gw,
        &["--upload", path.to_str().unwrap(), "--upload-at", "1.2"],
    )
    .await?;
    let _ = std::fs::remove_file(&path);
    let accepted = of(&result, "image.accepted");
    assert_eq!(accepted.len(), 1, "{result:#}");
    let a = accepted[0];
    assert_eq!(a["blob_id"], sha256_hex(&jpeg));
    assert_eq!(
        (
            a["mime"].as_str(),
            a["width"].as_u64(),
            a["height"].as_u64()
        ),
        (Some("image/jpeg"), Some(800), Some(600))
    );
    let first_turn = &of(&result, "turn.started")[0];
    assert_eq!(
        a["turn_id"], first_turn["turn_id"],
        "the image joined the utterance's turn"
    );
    let session_id = result["session_id"].as_str().unwrap();
    let session = gw
        .wait_session(session_id, Duration::from_secs(5), |s| {
            s["state"] == "ended"
        })
        .await?;
    assert_eq!(
        session["turns"][0]["blobs"][0]["blob_id"],
        sha256_hex(&jpeg)
    );
    assert_eq!(
        assert_balanced(&session),
        result["packets_sent"].as_u64().unwrap()
    );
    Ok(())
}
