//! Client-driven turns over the `turngate` data channel, and refused messages.

use std::time::Duration;

use serde_json::json;
use turngate_e2e::*;

const TURN_ID: &str = "0af7651916cd43dd8448eb211c80319c";

#[tokio::test]
async fn turn_start_and_end_make_a_client_turn_with_the_clients_id() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    client
        .send_event(json!({"type": "turn.start", "turn_id": TURN_ID}))
        .await?;
    let started = client
        .inbox
        .wait("turn.started", 1, Duration::from_secs(3))
        .await?;
    assert_eq!(started[0]["turn_id"], TURN_ID);
    assert_eq!(started[0]["cause"], "client");
    assert_eq!(started[0]["turn_number"], 1);
    client.send_wav("two-utterances.wav").await?;
    // The pause between the utterances is longer than the hangover, but VAD does not
    // close or open turns while a client turn is open.
    assert!(client.inbox.of("turn.ended").is_empty());
    // Let the last packets land before ending the turn, as a push-to-talk client whose
    // button is released after its audio would.
    let sent = client.packets_sent();
    gw.wait_session(&session_id, Duration::from_secs(5), |s| {
        s["counters"]["frames_received"] == sent && s["counters"]["frames_pending"] == 0
    })
    .await?;
    client.send_event(json!({"type": "turn.end"})).await?;
    let ended = client
        .inbox
        .wait("turn.ended", 1, Duration::from_secs(3))
        .await?;
    assert_eq!(ended[0]["turn_id"], TURN_ID);
    assert_eq!(ended[0]["reason"], "client_end");
    assert_eq!(client.inbox.of("turn.started").len(), 1);
    let sent = client.packets_sent();
    let session = gw
        .wait_session(&session_id, Duration::from_secs(5), |s| {
            s["counters"]["frames_received"] == sent
        })
        .await?;
    let turn = &session["turns"][0];
    assert_eq!(turn["turn_id"], TURN_ID);
    assert_eq!(turn["frames"], ended[0]["frames"]);
    // Every packet sent while the turn was open is in it.
    assert_eq!(turn["frames"].as_u64(), Some(sent), "{session:#}");
    assert_eq!(client.delete(&gw).await?, 204);
    Ok(())
}

#[tokio::test]
async fn a_traceparent_makes_its_trace_id_the_turn_id() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    let tp = format!("00-{TURN_ID}-b7ad6b7169203331-01");
    client
        .send_event(json!({"type": "turn.start", "traceparent": tp}))
        .await?;
    let started = client
        .inbox
        .wait("turn.started", 1, Duration::from_secs(3))
        .await?;
    assert_eq!(started[0]["turn_id"], TURN_ID);
    let announced = started[0]["traceparent"].as_str().unwrap();
    assert_eq!(&announced[..36], &tp[..36], "same version and trace-id");
    assert_ne!(
        &announced[36..52],
        "b7ad6b7169203331",
        "the gateway's root span has its own id"
    );
    assert!(announced.ends_with("-01"));
    Ok(())
}

#[tokio::test]
async fn bad_messages_get_their_error_codes_and_the_session_goes_on() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "malformed_message"),
        ("[]".into(), "malformed_message"),
        (
            json!({"kind": "turn.start"}).to_string(),
            "malformed_message",
        ),
        (
            json!({"type": "turn.start", "turnId": TURN_ID}).to_string(),
            "malformed_message",
        ),
        (
            json!({"type": "turn.jump"}).to_string(),
            "unknown_message_type",
        ),
        (
            json!({"type": "turn.start", "turn_id": "ABC"}).to_string(),
            "invalid_turn_id",
        ),
        (
            json!({"type": "turn.start", "turn_id": "0".repeat(32)}).to_string(),
            "invalid_turn_id",
        ),
        (
            json!({"type": "turn.start", "traceparent": "00-abc-def-01"}).to_string(),
            "invalid_traceparent",
        ),
        (
            json!({"type": "turn.start", "turn_id": TURN_ID,
                   "traceparent": "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
            .to_string(),
            "turn_id_mismatch",
        ),
        (json!({"type": "turn.end"}).to_string(), "no_open_turn"),
    ];
    for (i, (text, code)) in cases.iter().enumerate() {
        client.send_text(text).await?;
        let errors = client
            .inbox
            .wait("error", i + 1, Duration::from_secs(3))
            .await?;
        assert_eq!(errors[i]["code"], *code, "for {text}: {:#}", errors[i]);
        assert!(errors[i]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // The session goes on: a valid turn works, a second turn.start is refused, and the
    // id cannot be reused.
    client
        .send_event(json!({"type": "turn.start", "turn_id": TURN_ID}))
        .await?;
    client
        .inbox
        .wait("turn.started", 1, Duration::from_secs(3))
        .await?;
    client.send_event(json!({"type": "turn.start"})).await?;
    let errors = client
        .inbox
        .wait("error", cases.len() + 1, Duration::from_secs(3))
        .await?;
    assert_eq!(errors[cases.len()]["code"], "turn_already_open");
    assert_eq!(errors[cases.len()]["turn_id"], TURN_ID);
    client.send_event(json!({"type": "turn.end"})).await?;
    client
        .inbox
        .wait("turn.ended", 1, Duration::from_secs(3))
        .await?;
    client
        .send_event(json!({"type": "turn.start", "turn_id": TURN_ID}))
        .await?;
    let errors = client
        .inbox
        .wait("error", cases.len() + 2, Duration::from_secs(3))
        .await?;
    assert_eq!(errors[cases.len() + 1]["code"], "duplicate_turn_id");
    let session = gw.session(&session_id).await?;
    assert_eq!(
        session["counters"]["messages_refused"],
        cases.len() as u64 + 2
    );
    Ok(())
}
