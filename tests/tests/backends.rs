//! Turn processing against in-process OpenAI-compatible servers that record what they
//! receive: ASR gets the turn's audio as WAV, vision its image, the LLM both results;
//! every request carries the turn id; the client gets the streamed answer.

use std::time::Duration;

use serde_json::{Value, json};
use turngate_e2e::fake_openai::*;
use turngate_e2e::*;

/// RMS of each 20 ms (320-sample) block.
fn envelope(pcm: &[i16]) -> Vec<f64> {
    pcm.chunks(320)
        .map(|c| (c.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / c.len() as f64).sqrt())
        .collect()
}

/// The best Pearson correlation of `short` against any stretch of `long`.
fn best_correlation(short: &[f64], long: &[f64]) -> f64 {
    let corr = |a: &[f64], b: &[f64]| {
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
        let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
        let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
        let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
        cov / (va.sqrt() * vb.sqrt()).max(1e-9)
    };
    (0..=long.len().saturating_sub(short.len()))
        .map(|o| corr(short, &long[o..o + short.len()]))
        .fold(f64::MIN, f64::max)
}

#[tokio::test]
async fn a_turn_with_speech_and_an_image_reaches_every_backend_with_its_turn_id()
-> anyhow::Result<()> {
    let (base, seen) = fake_openai().await?;
    let env = [
        ("TURNGATE_ASR_URL", base.as_str()),
        ("TURNGATE_ASR_MODEL", "fake-whisper"),
        ("TURNGATE_VISION_URL", base.as_str()),
        ("TURNGATE_VISION_MODEL", "fake-vision"),
        ("TURNGATE_LLM_URL", base.as_str()),
        ("TURNGATE_LLM_MODEL", "fake-llm"),
        ("TURNGATE_LLM_API_KEY", "sk-secret-never-logged"),
    ];
    let gw = Gateway::start(&[], &env).await?;
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    let (_, source) = wav::read(&data("speech.wav"))?;
    let image = png(320, 200);
    client.speak_with_upload("shot", &image).await?;
    let completed = client
        .inbox
        .wait("turn.completed", 1, Duration::from_secs(10))
        .await?;
    let turn_id = client.inbox.of("turn.started")[0]["turn_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Everything the client got for the turn carries its id.
    for kind in [
        "transcript",
        "vision.result",
        "response.delta",
        "response.done",
        "turn.completed",
    ] {
        let events = client.inbox.of(kind);
        assert!(!events.is_empty(), "no {kind}: {:#?}", client.inbox.all());
        assert!(
            events.iter().all(|e| e["turn_id"] == turn_id),
            "{kind}: {events:#?}"
        );
    }
    assert_eq!(client.inbox.of("transcript")[0]["text"], TRANSCRIPT);
    assert_eq!(
        client.inbox.of("vision.result")[0]["description"],
        DESCRIPTION
    );
    assert_eq!(
        client.inbox.of("vision.result")[0]["blob_id"],
        sha256_hex(&image)
    );
    let streamed: String = client
        .inbox
        .of("response.delta")
        .iter()
        .map(|e| e["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        streamed,
        DELTAS.concat(),
        "the client got what the LLM sent"
    );
    assert_eq!(client.inbox.of("response.done")[0]["text"], DELTAS.concat());
    let c = &completed[0];
    assert_eq!(c["status"], "ok", "{c:#}");
    assert_eq!(
        c["stages"],
        json!({"asr": "ok", "vision": "ok", "llm": "ok"})
    );
    for key in ["asr_ms", "vision_ms", "llm_first_token_ms", "llm_total_ms"] {
        assert!(c[key].is_u64(), "{key} in {c:#}");
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    // Every request carried the turn id as trace id, and both ids as baggage.
    assert_eq!(seen.headers.len(), 3, "{:?}", seen.headers);
    for (path, traceparent, baggage) in &seen.headers {
        assert_eq!(&traceparent[3..35], turn_id, "{path}: {traceparent}");
        assert!(
            baggage.contains(&format!("turngate.turn.id={turn_id}")),
            "{path}: {baggage}"
        );
        assert!(
            baggage.contains(&format!("turngate.session.id={session_id}")),
            "{path}: {baggage}"
        );
    }
    // ASR got a valid 16 kHz mono 16-bit WAV of the turn's duration, sounding like what
    // was sent.
    let (wav_bytes, model) = &seen.wavs[0];
    assert_eq!(model, "fake-whisper");
    let path = std::env::temp_dir().join(format!("turngate-asr-{}.wav", std::process::id()));
    std::fs::write(&path, wav_bytes)?;
    let (wav_rate, heard) = wav::read(&path)?;
    let _ = std::fs::remove_file(&path);
    assert_eq!(wav_rate, 16_000);
    let session = gw.session(&session_id).await?;
    let audio_ms = session["turns"][0]["audio_ms"].as_u64().unwrap();
    assert_eq!(
        heard.len() as u64 / 16,
        audio_ms,
        "the WAV holds the turn's audio"
    );
    let r = best_correlation(&envelope(&heard), &envelope(&source));
    assert!(
        r > 0.8,
        "the WAV's loudness envelope correlates with the source at {r:.2}"
    );
    // The LLM got the transcript and the description, and the turn id in `user`.
    let llm = seen.chats.iter().find(|c| c["stream"] == true).unwrap();
    assert_eq!(llm["user"], turn_id);
    assert_eq!(llm["model"], "fake-llm");
    let prompt = llm["messages"].to_string();
    assert!(
        prompt.contains(TRANSCRIPT) && prompt.contains(DESCRIPTION),
        "{prompt}"
    );
    let vision = seen.chats.iter().find(|c| c["stream"] != true).unwrap();
    let url = vision["messages"][0]["content"][1]["image_url"]["url"]
        .as_str()
        .unwrap();
    assert!(url.starts_with("data:image/png;base64,"), "{url:.40}");
    assert!(
        !gw.log().contains("sk-secret-never-logged"),
        "the API key was logged"
    );
    let processed = &session["turns"][0]["processing"];
    assert_eq!(processed["response"], DELTAS.concat(), "{session:#}");
    Ok(())
}

fn codes(errors: &[Value]) -> Vec<String> {
    errors
        .iter()
        .map(|e| e["code"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn asr_faults_fail_their_stage_and_the_session_goes_on() -> anyhow::Result<()> {
    let (base, seen) = fake_openai().await?;
    let gw = start_with(&backend_env(&base, "", &base)).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    let cases = [
        (Fault::Status500, "backend_status", 2), // retried once
        (Fault::Status400, "backend_status", 1), // not retried
        (Fault::Malformed, "backend_malformed", 1),
        (Fault::Slow, "backend_timeout", 2), // retried once
        (Fault::None, "", 1),
    ];
    for (n, (fault, code, calls)) in cases.into_iter().enumerate() {
        seen.lock().unwrap().asr_fault = fault;
        let before = seen.lock().unwrap().transcriptions();
        let (completed, errors) = client_turn(&client, n + 1, None).await?;
        let after = seen.lock().unwrap().transcriptions();
        assert_eq!(after - before, calls, "{fault:?}: ASR calls");
        if fault == Fault::None {
            assert_eq!(completed["status"], "ok", "{completed:#}");
            assert_eq!(completed["stages"]["asr"], "ok");
            continue;
        }
        assert_eq!(codes(&errors), vec![code], "{fault:?}");
        assert!(errors[0]["turn_id"] == completed["turn_id"]);
        assert_eq!(
            completed["stages"]["asr"], "failed",
            "{fault:?}: {completed:#}"
        );
        // Nothing to say to the LLM: the turn failed.
        assert_eq!(
            (
                completed["status"].as_str(),
                completed["stages"]["llm"].as_str()
            ),
            (Some("failed"), Some("skipped"))
        );
        // The failure is recorded on the turn, too.
        let session = gw.session(&client.session_id().await?).await?;
        let turn = session["turns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["turn_id"] == completed["turn_id"])
            .unwrap()
            .clone();
        assert_eq!(turn["processing"]["errors"][0]["code"], code, "{turn:#}");
    }
    Ok(())
}

#[tokio::test]
async fn vision_and_llm_faults_fail_their_stage_and_the_session_goes_on() -> anyhow::Result<()> {
    let (base, seen) = fake_openai().await?;
    let gw = start_with(&backend_env(&base, &base, &base)).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    let image = png(64, 48);
    // Vision fails; the LLM still answers from the transcript: partial.
    seen.lock().unwrap().vision_fault = Fault::Status500;
    let (completed, errors) = client_turn(&client, 1, Some(&image)).await?;
    assert_eq!(codes(&errors), vec!["backend_status"]);
    assert_eq!(completed["status"], "partial", "{completed:#}");
    assert_eq!(
        completed["stages"],
        json!({"asr": "ok", "vision": "failed", "llm": "ok"})
    );
    seen.lock().unwrap().vision_fault = Fault::Malformed;
    let (completed, errors) = client_turn(&client, 2, Some(&image)).await?;
    assert_eq!(codes(&errors), vec!["backend_malformed"]);
    assert_eq!(completed["status"], "partial");
    seen.lock().unwrap().vision_fault = Fault::None;
    // LLM faults: the turn fails; a stream that breaks mid-way is not retried.
    let llm_cases = [
        (Fault::Status500, "backend_status", 2),
        (Fault::Malformed, "backend_malformed", 1),
        (Fault::Break, "backend_stream_broken", 1),
    ];
    for (i, (fault, code, calls)) in llm_cases.into_iter().enumerate() {
        seen.lock().unwrap().llm_fault = fault;
        let before = seen.lock().unwrap().streams();
        let (completed, errors) = client_turn(&client, 3 + i, None).await?;
        let after = seen.lock().unwrap().streams();
        assert_eq!(codes(&errors), vec![code], "{fault:?}");
        assert_eq!(after - before, calls, "{fault:?}: LLM calls");
        assert_eq!(completed["status"], "failed", "{fault:?}: {completed:#}");
        assert_eq!(completed["stages"]["llm"], "failed");
    }
    Ok(())
}

#[tokio::test]
async fn unreachable_backends_fail_fast_and_the_session_goes_on() -> anyhow::Result<()> {
    let (base, _seen) = fake_openai().await?;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}/v1", l.local_addr()?)
    };
    let gw = start_with(&backend_env(&base, &closed, &closed)).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    let image = png(64, 48);
    for n in 1..=3 {
        let (completed, errors) = client_turn(&client, n, Some(&image)).await?;
        assert_eq!(
            codes(&errors),
            vec!["backend_unavailable", "backend_unavailable"],
            "{errors:#?}"
        );
        assert_eq!(
            completed["stages"],
            json!({"asr": "ok", "vision": "failed", "llm": "failed"})
        );
        assert_eq!(completed["status"], "failed");
    }
    // After repeated failures the gateway fails fast instead of trying again (its log
    // says so; the client hears only that the backend is unavailable).
    assert!(gw.log().contains("failing fast"), "{}", gw.log());
    assert!(
        client.inbox.of("error").iter().all(
            |e| e["message"] == "llm is unavailable" || e["message"] == "vision is unavailable"
        ),
        "{:#?}",
        client.inbox.of("error")
    );
    Ok(())
}

#[tokio::test]
async fn a_barge_in_cancels_the_running_answer() -> anyhow::Result<()> {
    let (base, seen) = fake_openai().await?;
    let gw = start_with(&backend_env(&base, "", &base)).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    seen.lock().unwrap().llm_fault = Fault::Trickle;
    let (rate, pcm) = wav::read(&data("speech.wav"))?;
    let packets = encode_opus(rate, &pcm)?;
    client.send_event(json!({"type": "turn.start"})).await?;
    client.send_packets(&packets[25..75], &[]).await?;
    client.send_event(json!({"type": "turn.end"})).await?;
    client
        .inbox
        .wait("response.delta", 2, Duration::from_secs(5))
        .await?;
    // The user speaks over the answer.
    seen.lock().unwrap().llm_fault = Fault::None;
    client.send_event(json!({"type": "turn.start"})).await?;
    let completed = client
        .inbox
        .wait("turn.completed", 1, Duration::from_secs(5))
        .await?;
    let first = client.inbox.of("turn.started")[0]["turn_id"].clone();
    assert_eq!(completed[0]["turn_id"], first);
    assert_eq!(completed[0]["status"], "interrupted", "{:#}", completed[0]);
    assert_eq!(
        completed[0]["stages"],
        json!({"asr": "ok", "vision": "skipped", "llm": "cancelled"})
    );
    // Nothing of the first answer follows the turn.started that interrupted it.
    let events = client.inbox.all();
    let interrupter = events
        .iter()
        .rposition(|e| e["type"] == "turn.started")
        .unwrap();
    assert!(
        events[interrupter..]
            .iter()
            .all(|e| e["turn_id"] != first || e["type"] == "turn.completed"),
        "{events:#?}"
    );
    assert!(
        client.inbox.of("response.done").is_empty(),
        "the cancelled answer is not done"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        seen.lock().unwrap().llm_cancelled,
        "the LLM stream was closed"
    );
    // The next turn's prompt holds what the user heard of the interrupted answer.
    let heard: String = client
        .inbox
        .of("response.delta")
        .iter()
        .map(|e| e["delta"].as_str().unwrap().to_owned())
        .collect();
    client.send_packets(&packets[25..75], &[]).await?;
    client.send_event(json!({"type": "turn.end"})).await?;
    client
        .inbox
        .wait("turn.completed", 2, Duration::from_secs(10))
        .await?;
    let chats = seen.lock().unwrap().chats.clone();
    let last = chats.iter().rev().find(|c| c["stream"] == true).unwrap();
    let assistant = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "assistant")
        .unwrap();
    assert_eq!(assistant["content"], heard.as_str());
    let session = gw.session(&client.session_id().await?).await?;
    assert_eq!(session["turns"][0]["interrupted"], true);
    Ok(())
}

/// A gateway whose ASR may take up to 5 s, and a connected client.
async fn slow_asr_setup() -> anyhow::Result<(Shared, Gateway, Client, String)> {
    let (base, seen) = fake_openai().await?;
    let mut env = backend_env(&base, "", &base);
    env[1].1 = "5000".to_owned(); // TURNGATE_ASR_TIMEOUT_MS
    let gw = start_with(&env).await?;
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    Ok((seen, gw, client, session_id))
}

/// A client turn of speech whose ASR answer is held back by `asr_delay`; returns its id
/// once `turn.end` is sent.
async fn delayed_turn(
    seen: &Shared,
    client: &Client,
    n: usize,
    asr_delay: Duration,
) -> anyhow::Result<String> {
    let (rate, pcm) = wav::read(&data("speech.wav"))?;
    let packets = encode_opus(rate, &pcm)?;
    client.send_event(json!({"type": "turn.start"})).await?;
    let started = client
        .inbox
        .wait("turn.started", n, Duration::from_secs(3))
        .await?;
    let turn = started[n - 1]["turn_id"].as_str().unwrap().to_owned();
    seen.lock()
        .unwrap()
        .asr_delay
        .push((turn.clone(), asr_delay));
    client.send_packets(&packets[25..60], &[]).await?;
    client.send_event(json!({"type": "turn.end"})).await?;
    Ok(turn)
}

#[tokio::test]
async fn a_slow_asr_answer_stays_with_its_own_turn_and_history_keeps_turn_order()
-> anyhow::Result<()> {
    let (seen, _gw, client, _) = slow_asr_setup().await?;
    // Turn 1's ASR answer is slow. Turn 2 is opened by an image while turn 1 is still
    // processing (an upload is no barge-in), the user speaks into it and ends it: its
    // quick ASR answer comes first.
    let first = delayed_turn(&seen, &client, 1, Duration::from_millis(2500)).await?;
    client
        .upload("shot", "image/png", &png(64, 48), 16 * 1024)
        .await?;
    let started = client
        .inbox
        .wait("turn.started", 2, Duration::from_secs(3))
        .await?;
    assert_eq!(started[1]["cause"], "image");
    let second = started[1]["turn_id"].as_str().unwrap().to_owned();
    seen.lock()
        .unwrap()
        .asr_delay
        .push((second.clone(), Duration::ZERO));
    let (rate, pcm) = wav::read(&data("speech.wav"))?;
    let packets = encode_opus(rate, &pcm)?;
    client.send_packets(&packets[25..60], &[]).await?;
    client.send_event(json!({"type": "turn.end"})).await?;
    let transcripts = client
        .inbox
        .wait("transcript", 2, Duration::from_secs(10))
        .await?;
    assert_eq!(
        transcripts[0]["turn_id"], second,
        "turn 2's quick answer came first"
    );
    for t in &transcripts {
        let turn = t["turn_id"].as_str().unwrap();
        assert_eq!(
            t["text"],
            format!("turn {turn}"),
            "each transcript is tagged with the turn it was derived from"
        );
    }
    assert_eq!(transcripts[1]["turn_id"], first);
    // Turn 2's answer waited for turn 1's: its prompt holds turn 1's exchange, then
    // its own words, whatever order the transcripts came in.
    let completed = client
        .inbox
        .wait("turn.completed", 2, Duration::from_secs(10))
        .await?;
    assert!(
        completed.iter().all(|c| c["status"] == "ok"),
        "{completed:#?}"
    );
    let chats = seen.lock().unwrap().chats.clone();
    let prompts: Vec<Vec<Value>> = chats
        .iter()
        .filter(|c| c["stream"] == true)
        .map(|c| c["messages"].as_array().unwrap().clone())
        .collect();
    assert_eq!(prompts.len(), 2);
    let users = |messages: &[Value]| -> Vec<String> {
        messages
            .iter()
            .filter(|m| m["role"] == "user")
            .map(|m| m["content"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(users(&prompts[0]), vec![format!("turn {first}")]);
    assert_eq!(
        users(&prompts[1]),
        vec![format!("turn {first}"), format!("turn {second}")]
    );
    Ok(())
}

#[tokio::test]
async fn a_turn_whose_session_closed_still_completes_its_processing() -> anyhow::Result<()> {
    let (seen, gw, client, session_id) = slow_asr_setup().await?;
    let turn = delayed_turn(&seen, &client, 1, Duration::from_millis(1500)).await?;
    client
        .inbox
        .wait("turn.ended", 1, Duration::from_secs(3))
        .await?;
    // The client leaves while ASR is still working on its turn.
    assert_eq!(client.delete(&gw).await?, 204);
    let session = gw
        .wait_session(&session_id, Duration::from_secs(10), |s| {
            s["turns"][0]["state"] == "completed"
        })
        .await?;
    let processed = &session["turns"][0]["processing"];
    assert_eq!(
        processed["transcript"],
        format!("turn {turn}"),
        "{session:#}"
    );
    assert_eq!(processed["response"], DELTAS.concat());
    assert_eq!(processed["completed"]["status"], "ok");
    Ok(())
}

#[tokio::test]
async fn with_send_images_the_llm_gets_the_images_themselves() -> anyhow::Result<()> {
    let (base, seen) = fake_openai().await?;
    let env = backend_env(&base, &base, &base);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gw = Gateway::with_config("send-images", "[llm]\nsend_images = true\n", &[], &env).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    let image = png(64, 48);
    let (completed, errors) = client_turn(&client, 1, Some(&image)).await?;
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(completed["status"], "ok");
    let chats = seen.lock().unwrap().chats.clone();
    let llm = chats.iter().find(|c| c["stream"] == true).unwrap();
    let user = llm["messages"].as_array().unwrap().last().unwrap();
    let parts = user["content"].as_array().expect("text and image parts");
    assert!(parts[0]["text"].as_str().unwrap().contains(DESCRIPTION));
    assert!(
        parts[1]["image_url"]["url"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,")
    );
    Ok(())
}
