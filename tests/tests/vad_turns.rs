//! Speech from a webrtc-rs client becomes VAD turns; the counters balance.

use std::time::Duration;

use turngate_e2e::*;

#[tokio::test]
async fn two_utterances_make_two_vad_turns_and_frames_balance() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let client = Client::connect(&gw, true).await?;
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
    // Every packet sent is counted at receipt.
    let session = client.finish(&gw, &session_id).await?;
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

#[tokio::test]
async fn tone_and_noise_open_no_turn_but_quiet_speech_does() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    client.send_wav("tone.wav").await?;
    client.send_wav("noise.wav").await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        client.inbox.of("turn.started").is_empty(),
        "a tone or noise opened a turn: {:#?}",
        client.inbox.all()
    );
    client.send_wav("quiet-speech.wav").await?;
    let started = client
        .inbox
        .wait("turn.started", 1, Duration::from_secs(3))
        .await?;
    assert_eq!(started[0]["cause"], "vad");
    client
        .inbox
        .wait("turn.ended", 1, Duration::from_secs(3))
        .await?;
    let session = client.finish(&gw, &session_id).await?;
    assert_eq!(session["turns"].as_array().unwrap().len(), 1);
    Ok(())
}

#[tokio::test]
async fn an_audio_only_offer_without_data_channel_gets_vad_turns() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let client = Client::connect(&gw, false).await?;
    let session_id = only_session_id(&gw).await?;
    client.send_wav("two-utterances.wav").await?;
    let sent = client.packets_sent();
    let session = gw
        .wait_session(&session_id, Duration::from_secs(5), |s| {
            s["counters"]["frames_received"] == sent
                && s["turns"].as_array().is_some_and(|t| t.len() == 2)
        })
        .await?;
    assert_eq!(session["data_channel"], false);
    // Events for a client without a data channel wait in a bounded outbox; none was lost
    // yet (4 events fit), so nothing is counted as dropped.
    assert_eq!(session["counters"]["events_dropped"], 0);
    let session = client.finish(&gw, &session_id).await?;
    assert!(
        session["turns"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["cause"] == "vad" && t["reason"] == "end_of_speech")
    );
    Ok(())
}

#[tokio::test]
async fn lost_packets_are_concealed_and_keep_the_turn_timing() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    let (rate, pcm) = wav::read(&data("speech.wav"))?;
    let packets = encode_opus(rate, &pcm)?;
    // Lose single packets and one burst of three, all inside the speech.
    let lose = [40, 55, 70, 71, 72, 90];
    client.send_packets(&packets, &lose).await?;
    client
        .inbox
        .wait("turn.ended", 1, Duration::from_secs(3))
        .await?;
    assert_eq!(client.packets_sent() as usize, packets.len() - lose.len());
    let session = client.finish(&gw, &session_id).await?;
    assert_eq!(session["counters"]["packets_lost"], lose.len() as u64);
    assert_eq!(session["counters"]["concealed_ms"], 20 * lose.len() as u64);
    let turn = &session["turns"][0];
    // The turn's PCM covers its frames plus the concealed gaps: 20 ms per packet.
    let frames = turn["frames"].as_u64().unwrap();
    assert_eq!(
        turn["audio_ms"].as_u64().unwrap(),
        20 * (frames + lose.len() as u64),
        "{turn:#}"
    );
    assert_eq!(
        turn["concealed_ms"].as_u64().unwrap(),
        20 * lose.len() as u64
    );
    Ok(())
}

#[tokio::test]
async fn events_for_a_client_without_data_channel_overflow_a_bounded_counted_outbox()
-> anyhow::Result<()> {
    let gw = Gateway::with_config("outbox", "[media]\noutbox = 1\n", &[], &[]).await?;
    let client = Client::connect(&gw, false).await?;
    let session_id = only_session_id(&gw).await?;
    client.send_wav("two-utterances.wav").await?;
    // Two turns give six events (started, ended, completed, twice); one fits the
    // outbox, five are dropped and counted — and no more.
    let session = gw
        .wait_session(&session_id, Duration::from_secs(5), |s| {
            s["turns"]
                .as_array()
                .is_some_and(|t| t.len() == 2 && t[1]["state"] == "completed")
                && s["counters"]["events_dropped"] == 5
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = gw.session(&session_id).await?;
    assert_eq!(later["counters"]["events_dropped"], 5, "{session:#}");
    Ok(())
}
