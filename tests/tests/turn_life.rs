//! A turn's downstream life as a client sees it: barge-in cancels every stage and cuts
//! the turn's results off at the `turn.started` that interrupted it; a long turn is a
//! chain that `turn.end` naming any piece ends and one answer covers; a superseded turn
//! is answered by the turn that replaced it; input sent just before DELETE is kept;
//! backend failures reach the client sanitized; ignored data channels are closed.

use std::time::Duration;

use serde_json::{Value, json};
use turngate_e2e::fake_openai::*;
use turngate_e2e::*;

/// The Opus packets of `speech.wav` (speech from 0.5 s).
fn speech() -> anyhow::Result<Vec<Vec<u8>>> {
    let (rate, pcm) = wav::read(&data("speech.wav"))?;
    encode_opus(rate, &pcm)
}

/// Requests the fake backends got whose `traceparent` names `turn`.
fn requests_of(seen: &Shared, turn: &str) -> Vec<String> {
    seen.lock()
        .unwrap()
        .headers
        .iter()
        .filter(|(_, tp, _)| tp.get(3..35) == Some(turn))
        .map(|(path, ..)| path.clone())
        .collect()
}

/// Sends `turn.start` (the session's first turn) and returns the turn's id.
async fn start_turn(client: &Client) -> anyhow::Result<String> {
    client.send_event(json!({"type": "turn.start"})).await?;
    let started = client
        .inbox
        .wait("turn.started", 1, Duration::from_secs(3))
        .await?;
    Ok(started[0]["turn_id"].as_str().unwrap().to_owned())
}

/// Makes the fake ASR answer "turn {turn id}", so transcripts can be told apart.
fn name_transcripts(seen: &Shared) {
    seen.lock()
        .unwrap()
        .asr_delay
        .push(("-".into(), Duration::ZERO));
}

/// The user message of the one LLM request the fake backend got.
fn the_answers_user_message(seen: &Shared) -> Value {
    let seen = seen.lock().unwrap();
    assert_eq!(seen.streams(), 1, "one answer");
    let prompt = seen.chats.iter().find(|c| c["stream"] == true).unwrap();
    prompt["messages"].as_array().unwrap().last().unwrap()["content"].clone()
}

fn completed_of(client: &Client, turn: &str) -> Option<Value> {
    client
        .inbox
        .of("turn.completed")
        .into_iter()
        .find(|c| c["turn_id"] == turn)
}

#[tokio::test]
async fn a_turn_interrupted_while_it_waited_for_an_upload_is_not_processed() -> anyhow::Result<()> {
    let (base, seen) = fake_openai().await?;
    let gw = start_with(&backend_env(&base, &base, &base)).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    let packets = speech()?;
    let first = start_turn(&client).await?;
    // An upload begins in the turn and stays open past its end: processing waits.
    let image = png(64, 48);
    let begin = json!({"type": "image.begin", "upload_id": "late", "mime": "image/png",
        "size": image.len(), "sha256": sha256_hex(&image)});
    client.send_event(begin).await?;
    client.send_packets(&packets[25..75], &[]).await?;
    client.send_event(json!({"type": "turn.end"})).await?;
    client
        .inbox
        .wait("turn.ended", 1, Duration::from_secs(3))
        .await?;
    // The user starts the next turn: the first is interrupted before it was processed,
    // and completes at once, without waiting for its upload.
    client.send_event(json!({"type": "turn.start"})).await?;
    client
        .inbox
        .wait("turn.completed", 1, Duration::from_secs(2))
        .await?;
    // The upload still finishes (its image is accepted, but nothing processes it), and
    // the second turn is answered at once.
    client.send_binary(&frame_chunk("late", &image)).await?;
    client
        .send_event(json!({"type": "image.end", "upload_id": "late"}))
        .await?;
    client
        .inbox
        .wait("image.accepted", 1, Duration::from_secs(3))
        .await?;
    client.send_packets(&packets[25..75], &[]).await?;
    client.send_event(json!({"type": "turn.end"})).await?;
    let done = client
        .inbox
        .wait("response.done", 1, Duration::from_secs(5))
        .await?;
    assert_ne!(done[0]["turn_id"], first.as_str());
    let completed = completed_of(&client, &first).expect("the first turn completed");
    assert_eq!(completed["status"], "interrupted", "{completed:#}");
    assert_eq!(
        completed["stages"],
        json!({"asr": "cancelled", "vision": "cancelled", "llm": "cancelled"})
    );
    // None of its stages reached a backend, and it got no results.
    assert!(
        requests_of(&seen, &first).is_empty(),
        "{:?}",
        requests_of(&seen, &first)
    );
    for kind in [
        "transcript",
        "vision.result",
        "response.delta",
        "response.done",
    ] {
        assert!(
            client.inbox.of(kind).iter().all(|e| e["turn_id"] != first),
            "{kind} for an interrupted turn"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_barge_in_during_asr_cancels_the_request_and_every_later_stage() -> anyhow::Result<()> {
    let (base, seen) = fake_openai().await?;
    let mut env = backend_env(&base, "", &base);
    env[1].1 = "5000".to_owned(); // TURNGATE_ASR_TIMEOUT_MS
    let gw = start_with(&env).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    let packets = speech()?;
    let first = start_turn(&client).await?;
    seen.lock()
        .unwrap()
        .asr_delay
        .push((first.clone(), Duration::from_secs(3)));
    client.send_packets(&packets[25..75], &[]).await?;
    client.send_event(json!({"type": "turn.end"})).await?;
    // ASR is working on it; the user speaks again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(requests_of(&seen, &first), vec!["audio/transcriptions"]);
    client.send_event(json!({"type": "turn.start"})).await?;
    let completed = client
        .inbox
        .wait("turn.completed", 1, Duration::from_secs(2))
        .await?;
    assert_eq!(
        completed[0]["turn_id"],
        first.as_str(),
        "it completes at once"
    );
    assert_eq!(completed[0]["status"], "interrupted");
    assert_eq!(
        completed[0]["stages"],
        json!({"asr": "cancelled", "vision": "skipped", "llm": "cancelled"})
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        client.inbox.of("transcript").is_empty(),
        "no late transcript"
    );
    assert_eq!(
        requests_of(&seen, &first),
        vec!["audio/transcriptions"],
        "the LLM was never asked"
    );
    Ok(())
}

#[tokio::test]
async fn a_barge_in_before_the_llms_first_byte_cancels_the_request() -> anyhow::Result<()> {
    let (base, seen) = fake_openai().await?;
    let gw = start_with(&backend_env(&base, "", &base)).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    seen.lock().unwrap().llm_fault = Fault::Slow; // answers after 1.5 s
    let packets = speech()?;
    let first = start_turn(&client).await?;
    client.send_packets(&packets[25..75], &[]).await?;
    client.send_event(json!({"type": "turn.end"})).await?;
    client
        .inbox
        .wait("transcript", 1, Duration::from_secs(3))
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.lock().unwrap().streams(), 1, "the LLM was asked");
    client.send_event(json!({"type": "turn.start"})).await?;
    let completed = client
        .inbox
        .wait("turn.completed", 1, Duration::from_millis(800))
        .await?;
    assert_eq!(completed[0]["turn_id"], first.as_str());
    assert_eq!(completed[0]["status"], "interrupted");
    assert_eq!(completed[0]["stages"]["llm"], "cancelled");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        client.inbox.of("response.delta").is_empty(),
        "no late answer"
    );
    assert!(client.inbox.of("response.done").is_empty());
    Ok(())
}

#[tokio::test]
async fn a_push_to_talk_turn_longer_than_max_turn_is_one_chain_with_one_answer()
-> anyhow::Result<()> {
    let (base, seen) = fake_openai().await?;
    let mut env = backend_env(&base, "", &base);
    env.push(("TURNGATE_MAX_TURN_MS", "1000".to_owned()));
    let gw = start_with(&env).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    let packets = speech()?;
    let first = "4bf92f3577b34da6a3ce929d0e0e4736";
    client
        .send_event(json!({"type": "turn.start", "turn_id": first}))
        .await?;
    // 2.5 s of push-to-talk: split at 1 s and 2 s.
    client.send_packets(&packets[..125], &[]).await?;
    let started = client
        .inbox
        .wait("turn.started", 3, Duration::from_secs(3))
        .await?;
    // The client ends the turn by the id it knows.
    client
        .send_event(json!({"type": "turn.end", "turn_id": first}))
        .await?;
    let ended = client
        .inbox
        .wait("turn.ended", 3, Duration::from_secs(3))
        .await?;
    assert!(
        client.inbox.of("error").is_empty(),
        "{:#?}",
        client.inbox.of("error")
    );
    assert_eq!(started[0]["turn_id"], first);
    for i in 0..2 {
        assert_eq!(ended[i]["reason"], "max_length");
        assert_eq!(ended[i]["continued_by"], started[i + 1]["turn_id"]);
        assert_eq!(started[i + 1]["continues"], started[i]["turn_id"]);
        assert_eq!(started[i + 1]["cause"], "client");
    }
    assert_eq!(ended[2]["reason"], "client_end");
    assert!(ended[2].get("continued_by").is_none());
    let last = started[2]["turn_id"].as_str().unwrap();
    let completed = client
        .inbox
        .wait("turn.completed", 3, Duration::from_secs(10))
        .await?;
    assert!(
        completed.iter().all(|c| c["status"] == "ok"),
        "{completed:#?}"
    );
    // One answer, for the chain's last piece, with every piece's words in order.
    for event in client.inbox.of("response.delta") {
        assert_eq!(event["turn_id"], last);
    }
    let done = client.inbox.of("response.done");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["turn_id"], last);
    for piece in &started[..2] {
        let c = completed_of(&client, piece["turn_id"].as_str().unwrap()).unwrap();
        assert_eq!(c["stages"]["llm"], "skipped", "{c:#}");
    }
    let user = the_answers_user_message(&seen);
    assert_eq!(user, [TRANSCRIPT; 3].join(" "));
    Ok(())
}

#[tokio::test]
async fn a_superseded_vad_turn_is_answered_by_the_turn_that_replaced_it() -> anyhow::Result<()> {
    let (base, seen) = fake_openai().await?;
    let gw = start_with(&backend_env(&base, "", &base)).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    // Transcripts name their turn.
    name_transcripts(&seen);
    let packets = speech()?;
    client.send_packets(&packets[..60], &[]).await?;
    let vad = client
        .inbox
        .wait("turn.started", 1, Duration::from_secs(3))
        .await?[0]
        .clone();
    assert_eq!(vad["cause"], "vad");
    client.send_event(json!({"type": "turn.start"})).await?;
    client.send_packets(&packets[60..100], &[]).await?;
    client.send_event(json!({"type": "turn.end"})).await?;
    let completed = client
        .inbox
        .wait("turn.completed", 2, Duration::from_secs(10))
        .await?;
    let ended = client.inbox.of("turn.ended");
    assert_eq!(ended[0]["reason"], "superseded");
    let (vad_id, client_id) = (
        vad["turn_id"].as_str().unwrap(),
        client.inbox.of("turn.started")[1]["turn_id"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    assert!(
        completed.iter().all(|c| c["status"] == "ok"),
        "{completed:#?}"
    );
    assert_eq!(
        completed_of(&client, vad_id).unwrap()["stages"]["llm"],
        "skipped"
    );
    let user = the_answers_user_message(&seen);
    assert_eq!(user, format!("turn {vad_id} turn {client_id}"));
    assert!(
        client
            .inbox
            .of("response.done")
            .iter()
            .all(|e| e["turn_id"] == client_id.as_str())
    );
    Ok(())
}

#[tokio::test]
async fn a_turn_start_during_a_vad_chain_folds_every_piece_into_one_answer() -> anyhow::Result<()> {
    let (base, seen) = fake_openai().await?;
    let mut env = backend_env(&base, "", &base);
    env[1].1 = "5000".to_owned(); // TURNGATE_ASR_TIMEOUT_MS
    env.push(("TURNGATE_MAX_TURN_MS", "1000".to_owned()));
    let gw = start_with(&env).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    // Transcripts name their turn; the first piece's ASR is slow, so it is still
    // running when the client's turn begins.
    name_transcripts(&seen);
    let packets = speech()?;
    client.send_packets(&packets[..40], &[]).await?;
    let first = client
        .inbox
        .wait("turn.started", 1, Duration::from_secs(3))
        .await?;
    let first = first[0]["turn_id"].as_str().unwrap().to_owned();
    seen.lock()
        .unwrap()
        .asr_delay
        .push((first, Duration::from_millis(1500)));
    client.send_packets(&packets[40..85], &[]).await?;
    let started = client
        .inbox
        .wait("turn.started", 2, Duration::from_secs(3))
        .await?;
    assert_eq!(started[1]["continues"], started[0]["turn_id"]);
    let pieces: Vec<String> = started
        .iter()
        .map(|s| s["turn_id"].as_str().unwrap().to_owned())
        .collect();
    client.send_event(json!({"type": "turn.start"})).await?;
    client.send_packets(&packets[85..110], &[]).await?;
    client.send_event(json!({"type": "turn.end"})).await?;
    let completed = client
        .inbox
        .wait("turn.completed", 3, Duration::from_secs(10))
        .await?;
    assert!(
        completed.iter().all(|c| c["status"] == "ok"),
        "no piece is interrupted: {completed:#?}"
    );
    let last = client.inbox.of("turn.started")[2]["turn_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let user = the_answers_user_message(&seen);
    assert_eq!(
        user,
        format!("turn {} turn {} turn {last}", pieces[0], pieces[1])
    );
    Ok(())
}

#[tokio::test]
async fn audio_queued_when_delete_comes_goes_into_its_turn() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    let packets = speech()?;
    // Silence first, so the audio track is flowing.
    client.send_packets(&packets[..10], &[]).await?;
    gw.wait_session(&session_id, Duration::from_secs(3), |s| {
        s["counters"]["frames_received"] == 10
    })
    .await?;
    client.send_event(json!({"type": "turn.start"})).await?;
    client
        .inbox
        .wait("turn.started", 1, Duration::from_secs(3))
        .await?;
    // A burst the gateway cannot have taken yet when the DELETE comes.
    client.send_burst(&packets[10..50]).await?;
    assert_eq!(client.delete(&gw).await?, 204);
    let session = gw
        .wait_session(&session_id, Duration::from_secs(5), |s| {
            s["state"] == "ended"
        })
        .await?;
    let turn = &session["turns"][0];
    assert_eq!(turn["reason"], "session_closed", "{session:#}");
    let c = &session["counters"];
    assert_eq!(c["frames_received"], 50, "{c:#}");
    assert_eq!(
        c["frames_in_turns"].as_u64().unwrap() + c["frames_dropped_backpressure"].as_u64().unwrap(),
        40,
        "every frame of the burst went into the turn: {c:#}"
    );
    assert_eq!(turn["frames"], c["frames_in_turns"]);
    assert_balanced(&session);
    Ok(())
}

#[tokio::test]
async fn a_turn_end_sent_just_before_delete_ends_its_turn() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    let packets = speech()?;
    client.send_event(json!({"type": "turn.start"})).await?;
    client
        .inbox
        .wait("turn.started", 1, Duration::from_secs(3))
        .await?;
    client.send_packets(&packets[..20], &[]).await?;
    client.send_event(json!({"type": "turn.end"})).await?;
    assert_eq!(client.delete(&gw).await?, 204);
    let session = gw
        .wait_session(&session_id, Duration::from_secs(5), |s| {
            s["state"] == "ended"
        })
        .await?;
    assert_eq!(session["turns"][0]["reason"], "client_end", "{session:#}");
    assert_eq!(session["counters"]["messages_refused"], 0);
    assert_balanced(&session);
    Ok(())
}

#[tokio::test]
async fn backend_error_bodies_never_reach_clients_or_logs() -> anyhow::Result<()> {
    let (base, seen) = fake_openai().await?;
    let gw = start_with(&backend_env(&base, "", &base)).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    // A plain-text error body: the client gets the status only.
    seen.lock().unwrap().asr_fault = Fault::Status500;
    let (completed, errors) = fake_openai::client_turn(&client, 1, None).await?;
    assert_eq!(completed["stages"]["asr"], "failed");
    assert_eq!(errors[0]["code"], "backend_status");
    assert_eq!(errors[0]["message"], "asr answered 500");
    // A JSON error: its message, sanitized; nothing else of the body.
    seen.lock().unwrap().asr_fault = Fault::None;
    seen.lock().unwrap().llm_fault = Fault::Status500Json;
    let (completed, errors) = fake_openai::client_turn(&client, 2, None).await?;
    assert_eq!(completed["status"], "failed");
    assert_eq!(errors[0]["message"], "llm answered 500: model overloaded");
    let everything = serde_json::to_string(&client.inbox.all())?;
    assert!(!everything.contains(SECRET_IN_BODY), "{everything}");
    let session = gw.session(&client.session_id().await?).await?;
    assert!(!session.to_string().contains(SECRET_IN_BODY));
    assert!(!gw.log().contains(SECRET_IN_BODY), "{}", gw.log());
    Ok(())
}

#[tokio::test]
async fn an_error_inside_a_200_stream_fails_the_answer_with_the_servers_message()
-> anyhow::Result<()> {
    let (base, seen) = fake_openai().await?;
    let gw = start_with(&backend_env(&base, "", &base)).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    for (n, (fault, message)) in [
        (Fault::StreamErrorData, "the context window is full"),
        (Fault::StreamErrorEvent, "upstream reset the stream"),
    ]
    .into_iter()
    .enumerate()
    {
        seen.lock().unwrap().llm_fault = fault;
        let (completed, errors) = fake_openai::client_turn(&client, n + 1, None).await?;
        assert_eq!(completed["status"], "failed", "{fault:?}: {completed:#}");
        assert_eq!(completed["stages"]["llm"], "failed");
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0]["code"], "backend_status");
        assert!(
            errors[0]["message"].as_str().unwrap().contains(message),
            "{fault:?}: {errors:#?}"
        );
    }
    assert!(client.inbox.of("response.done").is_empty());
    Ok(())
}

#[tokio::test]
async fn an_llm_that_pauses_longer_than_the_idle_timeout_fails_the_answer() -> anyhow::Result<()> {
    let (base, seen) = fake_openai().await?;
    let mut env = backend_env(&base, "", &base);
    env.push(("TURNGATE_LLM_IDLE_TIMEOUT_MS", "100".to_owned()));
    let gw = start_with(&env).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    seen.lock().unwrap().llm_fault = Fault::Trickle; // a delta every 250 ms
    let (completed, errors) = fake_openai::client_turn(&client, 1, None).await?;
    assert_eq!(completed["stages"]["llm"], "failed", "{completed:#}");
    assert_eq!(errors[0]["code"], "backend_timeout");
    assert!(
        errors[0]["message"].as_str().unwrap().contains("100 ms"),
        "{errors:#?}"
    );
    assert_eq!(client.inbox.of("response.delta").len(), 1);
    Ok(())
}

#[tokio::test]
async fn data_channels_the_gateway_does_not_use_are_closed() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    let closed = client.open_channel("telemetry").await?;
    tokio::time::timeout(Duration::from_secs(5), closed).await??;
    // The control channel goes on working.
    client.send_event(json!({"type": "turn.start"})).await?;
    client
        .inbox
        .wait("turn.started", 1, Duration::from_secs(3))
        .await?;
    Ok(())
}
