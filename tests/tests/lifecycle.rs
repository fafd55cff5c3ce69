//! Session and process lifecycle: SIGTERM, vanished peers, peers that never connect,
//! configuration refused before binding.

use std::time::{Duration, Instant};

use serde_json::json;
use turngate_e2e::*;

#[tokio::test]
async fn sigterm_ends_sessions_and_open_turns_and_exits_zero() -> anyhow::Result<()> {
    let mut gw = Gateway::start(&[], &[]).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    client.send_event(json!({"type": "turn.start"})).await?;
    client
        .inbox
        .wait("turn.started", 1, Duration::from_secs(3))
        .await?;
    let status = gw.terminate().await?;
    assert!(status.success(), "exit status {status:?}");
    let ended = client
        .inbox
        .wait("turn.ended", 1, Duration::from_secs(3))
        .await?;
    assert_eq!(ended[0]["reason"], "session_closed");
    Ok(())
}

#[tokio::test]
async fn a_vanished_peer_ends_its_session_within_35_seconds() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    client.send_event(json!({"type": "turn.start"})).await?;
    client
        .inbox
        .wait("turn.started", 1, Duration::from_secs(3))
        .await?;
    let gone = Instant::now();
    client.vanish().await;
    let session = gw
        .wait_session(&session_id, Duration::from_secs(35), |s| {
            s["state"] == "ended"
        })
        .await?;
    assert!(gone.elapsed() <= Duration::from_secs(35));
    assert!(
        ["peer_failed", "peer_closed"].contains(&session["end_reason"].as_str().unwrap()),
        "{session:#}"
    );
    assert_eq!(session["turns"][0]["reason"], "session_closed");
    assert_balanced(&session);
    // Processing of a turn whose session closed still finishes.
    let session = gw
        .wait_session(&session_id, Duration::from_secs(5), |s| {
            s["turns"][0]["state"] == "completed"
        })
        .await?;
    assert!(session["turns"][0]["completed_at"].is_string());
    Ok(())
}

#[tokio::test]
async fn a_peer_that_never_connects_is_dropped_within_35_seconds() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    // A real offer, whose peer is gone before ICE can start.
    Client::offer_only(&gw).await?;
    let session_id = only_session_id(&gw).await?;
    let start = Instant::now();
    let session = gw
        .wait_session(&session_id, Duration::from_secs(36), |s| {
            s["state"] == "ended"
        })
        .await?;
    assert!(start.elapsed() <= Duration::from_secs(35));
    assert!(
        ["connect_timeout", "peer_failed"].contains(&session["end_reason"].as_str().unwrap()),
        "{session:#}"
    );
    Ok(())
}

#[tokio::test]
async fn invalid_configuration_is_refused_before_binding() -> anyhow::Result<()> {
    let out = tokio::process::Command::new(binary())
        .args(["serve", "--media-ports", "5000-4000"])
        .output()
        .await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("media.port_min"), "{stderr}");
    let dir = std::env::temp_dir().join(format!("turngate-bad-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[turn]\nhangover_ms = 700\nmystery = 1\n")?;
    let out = tokio::process::Command::new(binary())
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mystery"), "{stderr}");
    Ok(())
}
