//! Speech from a webrtc-rs client becomes VAD turns; the counters balance.

use std::time::Duration;

use turngate_e2e::*;

#[tokio::test]
async fn two_utterances_make_two_vad_turns_and_frames_balance() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let mut client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    client.send_wav("two-utterances.wav").await?;
    let ended = client
        .inbox
        .wait("turn.ended", 2, Duration::from_secs(5))
        .await?;
    let started = client.inbox.of("turn.started");
    assert_eq!(started.len(), 2, "{:#?}", client.inbox.all());
    for (i, (s, e)) in started.iter().zip(&ended).enumerate() {
        assert_eq!(s["cause"], "vad");
        assert_eq!(s["turn_number"], i as u64 + 1);
        assert_eq!(s["turn_id"], e["turn_id"]);
        let tp = s["traceparent"].as_str().unwrap();
        assert_eq!(
            &tp[3..35],
            s["turn_id"].as_str().unwrap(),
            "trace-id is the turn id"
        );
        assert_eq!(e["reason"], "end_of_speech");
    }
    // Every packet sent is counted at receipt (the last ones may still be in flight).
    let sent = client.packets_sent;
    gw.wait_session(&session_id, Duration::from_secs(5), |s| {
        s["counters"]["frames_received"] == sent
    })
    .await?;
    assert_eq!(client.delete(&gw).await?, 204);
    let session = gw
        .wait_session(&session_id, Duration::from_secs(5), |s| {
            s["state"] == "ended"
        })
        .await?;
    assert_eq!(assert_balanced(&session), sent);
    let turns = session["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2);
    for (t, e) in turns.iter().zip(&ended) {
        assert_eq!(t["frames"], e["frames"]);
        assert_eq!(t["state"], "completed");
        // Each turn holds one utterance (1.6–1.9 s of speech) plus pre-roll and hangover.
        let ms = t["audio_ms"].as_u64().unwrap();
        assert!((2_000..=3_500).contains(&ms), "turn audio {ms} ms: {t:#}");
    }
    Ok(())
}
