//! Bounds a client cannot push the gateway past, tried as an attacker would.

use std::time::Duration;

use turngate_e2e::*;

#[tokio::test]
async fn a_sender_stepping_timestamps_by_240_ms_gets_no_more_than_real_time() -> anyhow::Result<()>
{
    let gw = Gateway::start(&[], &[]).await?;
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    let (rate, pcm) = wav::read(&data("speech.wav"))?;
    let packets = encode_opus(rate, &pcm)?;
    // Three seconds of 20 ms packets, each claiming 240 ms passed.
    client.send_stepped(&packets[..150], 240 * 48).await?;
    let session = client.finish(&gw, &session_id).await?;
    let c = &session["counters"];
    let concealed_ms = c["concealed_ms"].as_u64().unwrap();
    // Real time allows 3 s of audio in all, of which 3 s is the packets' own: only
    // the 200 ms jitter allowance is left to conceal (12 × real time before).
    assert!(concealed_ms <= 300, "{concealed_ms} ms concealed: {c:#}");
    Ok(())
}

#[tokio::test]
async fn a_turn_holds_no_more_audio_than_its_maximum_length_however_fast_it_comes()
-> anyhow::Result<()> {
    let (base, seen) = fake_openai::fake_openai().await?;
    let mut env = fake_openai::backend_env(&base, "", "");
    env.push(("TURNGATE_MAX_TURN_MS", "1000".to_owned()));
    let gw = fake_openai::start_with(&env).await?;
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    let (rate, pcm) = wav::read(&data("speech.wav"))?;
    let packets = encode_opus(rate, &pcm)?;
    client.send_packets(&packets[..5], &[]).await?;
    client
        .send_event(serde_json::json!({"type": "turn.start"}))
        .await?;
    client
        .inbox
        .wait("turn.started", 1, Duration::from_secs(3))
        .await?;
    // 3.8 s of audio in 64 packets of 60 ms sent at once, far faster than real time.
    client
        .send_burst(&encode_opus_frames(rate, &pcm, 60)?)
        .await?;
    gw.wait_session(&session_id, Duration::from_secs(3), |s| {
        s["counters"]["frames_received"].as_u64() >= Some(5 + 64)
    })
    .await?;
    client
        .send_event(serde_json::json!({"type": "turn.end"}))
        .await?;
    gw.wait_session(&session_id, Duration::from_secs(10), |s| {
        s["turns"]
            .as_array()
            .is_some_and(|t| t.iter().all(|t| t["state"] == "completed"))
    })
    .await?;
    let session = gw.session(&session_id).await?;
    let turns = session["turns"].as_array().unwrap();
    // max_turn_ms + preroll_ms + 200 ms: 1.5 s of 16 kHz PCM at most in any turn...
    for turn in turns {
        assert!(turn["audio_ms"].as_u64().unwrap() <= 1500, "{turn:#}");
    }
    for (wav, _) in &seen.lock().unwrap().wavs {
        let samples = (wav.len() - 44) / 2;
        assert!(samples <= 24_000, "{samples} samples sent to ASR");
    }
    // ...though it was sent more (in 60 ms packets; the turn may have gone on as a
    // chain past its 1 s, but most of the burst lands in its first piece).
    let most = turns.iter().map(|t| t["frames"].as_u64().unwrap()).max();
    assert!(most.unwrap_or(0) * 60 > 1500, "{turns:#?}");
    Ok(())
}
