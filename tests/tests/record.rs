//! The turn record as an operator finds it in the store after a call: every artifact,
//! each hash matching the bytes the client or the backend saw, the received audio
//! decodable to the sender's timing, and no secret anywhere.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use turngate_e2e::fake_openai::*;
use turngate_e2e::*;

const API_KEY: &str = "sk-distinctive-4f1c9e2b7d";

/// Waits for the manifest of `turn` in session `session` under `store`.
async fn manifest(store: &Path, session: &str, turn: &str) -> anyhow::Result<(PathBuf, Value)> {
    let dir = store.join(format!("sessions/{session}/turns/{turn}"));
    let path = dir.join("manifest.json");
    for _ in 0..100 {
        if let Ok(bytes) = std::fs::read(&path) {
            return Ok((dir, serde_json::from_slice(&bytes)?));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("no manifest at {}", path.display())
}

/// Sends `turn.start` and returns the id of the turn it opened.
async fn start_client_turn(client: &Client) -> anyhow::Result<String> {
    client.send_event(json!({"type": "turn.start"})).await?;
    let started = client
        .inbox
        .wait("turn.started", 1, Duration::from_secs(3))
        .await?;
    Ok(started[0]["turn_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(files(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Decodes an Ogg Opus file: (comment header text, 48 kHz samples decoded).
fn decode_ogg(bytes: &[u8]) -> (String, usize) {
    let mut reader = ogg::PacketReader::new(std::io::Cursor::new(bytes));
    let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let mut out = vec![0i16; 5760];
    let (mut tags, mut samples, mut n) = (String::new(), 0, 0);
    while let Some(packet) = reader.read_packet().expect("a valid Ogg stream") {
        n += 1;
        match n {
            1 => assert!(packet.data.starts_with(b"OpusHead")),
            2 => tags = String::from_utf8_lossy(&packet.data).into_owned(),
            _ => samples += decoder.decode(&packet.data, &mut out, false).unwrap(),
        }
    }
    (tags, samples)
}

#[tokio::test]
async fn a_turn_with_speech_and_two_images_is_recorded_whole() -> anyhow::Result<()> {
    let (base, seen) = fake_openai().await?;
    let mut env = backend_env(&base, &base, &base);
    env.push(("TURNGATE_LLM_API_KEY", API_KEY.to_owned()));
    env.push(("TURNGATE_ASR_API_KEY", API_KEY.to_owned()));
    let gw = start_with(&env).await?;
    let client = Client::connect(&gw, true).await?;
    let session = client.session_id().await?;
    let (rate, pcm) = wav::read(&data("speech.wav"))?;
    let packets = encode_opus(rate, &pcm)?;
    let (png, jpeg) = (png(320, 200), jpeg(64, 48));

    let turn = start_client_turn(&client).await?;
    client.send_packets(&packets[0..40], &[]).await?;
    client.upload("a", "image/png", &png, 16 * 1024).await?;
    // A loss gap of 3 packets, then a DTX gap of 10.
    client.send_packets(&packets[40..80], &[10, 11, 12]).await?;
    client.pause_dtx(10).await;
    client.send_packets(&packets[80..120], &[]).await?;
    client.upload("b", "image/jpeg", &jpeg, 16 * 1024).await?;
    // The audio and the data channel are two transports: let the last packets land
    // before ending the turn, as a push-to-talk client releasing its button would.
    let sent = client.packets_sent();
    gw.wait_session(&session, Duration::from_secs(5), |s| {
        s["counters"]["frames_received"] == sent && s["counters"]["frames_pending"] == 0
    })
    .await?;
    client.send_event(json!({"type": "turn.end"})).await?;
    client
        .inbox
        .wait("turn.completed", 1, Duration::from_secs(15))
        .await?;

    let (dir, m) = manifest(&gw.store, &session, &turn).await?;
    assert_eq!(m["record_state"], "complete", "{m:#}");
    assert_eq!(
        (m["turn_id"].as_str(), m["trace_id"].as_str()),
        (Some(turn.as_str()), Some(turn.as_str()))
    );
    assert_eq!(m["status"], "ok");
    let completed = &m["timings"]["completed"];
    assert!(completed["at"].is_string(), "{m:#}");
    assert!(
        completed["offset_ms"].as_u64().unwrap()
            >= m["timings"]["input_ended"]["offset_ms"].as_u64().unwrap()
    );
    assert_eq!(m["transcript"], TRANSCRIPT);
    assert_eq!(m["answer"], DELTAS.concat());
    assert_eq!(m["descriptions"].as_array().unwrap().len(), 2);
    assert_eq!(m["config"]["llm"]["base_url"], base.as_str());

    // Every artifact is there with the hash and size the manifest says.
    let artifacts = m["artifacts"].as_array().unwrap();
    for a in artifacts {
        let bytes = std::fs::read(dir.join(a["name"].as_str().unwrap()))?;
        assert_eq!(a["sha256"], sha256_hex(&bytes), "{a}");
        assert_eq!(a["size"], bytes.len(), "{a}");
    }
    let stored = |name: &str| std::fs::read(dir.join(name));
    // The images as uploaded, under their blob ids.
    for (bytes, ext) in [(&png, "png"), (&jpeg, "jpg")] {
        let name = format!("images/{}.{ext}", sha256_hex(bytes));
        assert_eq!(&stored(&name)?, bytes, "{name}");
        assert!(
            artifacts.iter().any(|a| a["name"] == name.as_str()),
            "{name}"
        );
    }
    // Exactly the WAV the ASR backend got.
    let asr_got = seen.lock().unwrap().wavs[0].0.clone();
    assert_eq!(stored("audio.asr.wav")?, asr_got);
    // The received audio: the turn's id in its comments, and the sender's duration —
    // 130 packets of 20 ms from the first timestamp to the end of the last — across
    // both gaps.
    let ogg = stored("audio.received.ogg")?;
    let (tags, samples) = decode_ogg(&ogg);
    assert!(tags.contains(&format!("TURNGATE_TURN_ID={turn}")), "{tags}");
    assert!(
        tags.contains(&format!("TURNGATE_SESSION_ID={session}")),
        "{tags}"
    );
    let ms = samples as i64 / 48;
    assert!((ms - 2600).abs() <= 20, "decoded {ms} ms");
    assert_eq!(m["counters"]["packets_recorded"], 117);
    // The segments it was joined from, as flushed during the turn, each listed.
    let segments: Vec<Vec<u8>> = (0..)
        .map_while(|i| stored(&format!("audio/received/{i:06}.ogg")).ok())
        .collect();
    assert!(segments.len() >= 2, "{} segments", segments.len());
    let listed = artifacts
        .iter()
        .filter(|a| a["name"].as_str().unwrap().starts_with("audio/received/"))
        .count();
    assert_eq!(listed, segments.len());
    assert_eq!(segments.concat(), ogg);

    // The turn's spans, kept whatever the sampler decided (nothing is exported here),
    // in OTLP/JSON: all of the turn's trace.
    let spans: Value = serde_json::from_slice(&stored("spans.otlp.json")?)?;
    let spans: Vec<&Value> = spans["resourceSpans"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["scopeSpans"].as_array().into_iter().flatten())
        .flat_map(|s| s["spans"].as_array().into_iter().flatten())
        .collect();
    let names: Vec<&str> = spans.iter().filter_map(|s| s["name"].as_str()).collect();
    for name in ["turn", "asr", "vision", "llm"] {
        assert!(names.contains(&name), "no {name} span in {names:?}");
    }
    assert!(
        spans.iter().all(|s| s["traceId"] == turn.as_str()),
        "{spans:#?}"
    );
    assert_eq!(names.iter().filter(|n| **n == "vision").count(), 2);

    // Each backend's request as the backend received it, and its answer as sent.
    let chats = seen.lock().unwrap().chats.clone();
    let request = |name: &str| -> anyhow::Result<Value> {
        Ok(serde_json::from_slice(&stored(&format!(
            "backends/{name}.1.request.json"
        ))?)?)
    };
    let llm = request("llm")?;
    assert_eq!(llm["stream"], true);
    assert!(chats.contains(&llm), "the LLM got another body");
    for n in 1..=2 {
        assert!(chats.contains(&request(&format!("vision-{n}"))?));
        let answer: Value =
            serde_json::from_slice(&stored(&format!("backends/vision-{n}.1.response.json"))?)?;
        assert_eq!(answer["choices"][0]["message"]["content"], DESCRIPTION);
    }
    let asr = request("asr")?;
    assert_eq!(asr["file"]["bytes"], asr_got.len());
    let sse = String::from_utf8(stored("backends/llm.1.response.sse")?)?;
    for delta in DELTAS {
        assert!(sse.contains(&format!("{delta:?}")), "{sse}");
    }
    assert!(sse.contains("[DONE]"));

    // The index points to the session; the marker is gone; no stored byte holds a key.
    let index: Value =
        serde_json::from_slice(&std::fs::read(gw.store.join(format!("turns/{turn}")))?)?;
    assert_eq!(index["session_id"], session.as_str());
    assert!(files(&gw.store.join("open")).is_empty());
    for file in files(&gw.store) {
        let bytes = std::fs::read(&file)?;
        assert!(
            !bytes
                .windows(API_KEY.len())
                .any(|w| w == API_KEY.as_bytes()),
            "{} holds the API key",
            file.display()
        );
    }

    // The CLI reads the record with the server's configuration.
    let cli = |args: &[&str]| {
        std::process::Command::new(binary())
            .args(args)
            .env("TURNGATE_STORE_URL", &gw.store)
            .output()
    };
    let shown = cli(&["turn", "show", &turn])?;
    let text = String::from_utf8(shown.stdout)?;
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    for expected in [
        turn.as_str(),
        session.as_str(),
        TRANSCRIPT,
        "audio.received.ogg",
    ] {
        assert!(text.contains(expected), "{expected} not in\n{text}");
    }
    let json: Value = serde_json::from_slice(&cli(&["turn", "show", &turn, "--json"])?.stdout)?;
    assert_eq!(json, m);
    let tar = std::env::temp_dir().join(format!("turngate-export-{}.tar", std::process::id()));
    let exported = cli(&["turn", "export", &turn, "-o", tar.to_str().unwrap()])?;
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let listing = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&tar)
        .output()?;
    let entries: Vec<String> = String::from_utf8(listing.stdout)?
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        entries[0],
        format!("{turn}/manifest.json"),
        "the manifest first"
    );
    assert_eq!(entries.len(), files(&dir).len());
    let _ = std::fs::remove_file(&tar);
    // An id that is not one is refused (it would name a wider prefix), nothing deleted.
    for bad in [
        ["delete", "--session", ""],
        ["delete", "--session", "/"],
        ["delete", "--turn", ".."],
    ] {
        let refused = cli(&bad)?;
        assert!(!refused.status.success(), "{bad:?}");
    }
    assert!(dir.join("manifest.json").exists());
    // Deleted on request: the whole turn, its index too; then nothing to show.
    let deleted = cli(&["delete", "--turn", &turn])?;
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    assert!(files(&dir).is_empty(), "{:?}", files(&dir));
    assert!(!gw.store.join(format!("turns/{turn}")).exists());
    let gone = cli(&["turn", "show", &turn])?;
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no record"));
    // A mistyped store is named, not made.
    let mistyped = gw.store.join("nowhere");
    let out = std::process::Command::new(binary())
        .args(["turn", "show", &turn])
        .env("TURNGATE_STORE_URL", &mistyped)
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no record store"));
    assert!(!mistyped.exists());
    Ok(())
}

#[tokio::test]
async fn a_node_killed_mid_turn_finishes_its_record_at_restart_and_leaves_live_nodes_alone()
-> anyhow::Result<()> {
    let store = std::env::temp_dir().join(format!("turngate-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    let url = store.to_str().unwrap().to_owned();
    let env = [
        ("TURNGATE_STORE_URL", url.as_str()),
        ("TURNGATE_NODE_ID", "node-k"),
    ];
    let mut gw = Gateway::start(&[], &env).await?;
    let client = Client::connect(&gw, true).await?;
    let session = client.session_id().await?;
    let (rate, pcm) = wav::read(&data("speech.wav"))?;
    let packets = encode_opus(rate, &pcm)?;
    let turn = start_client_turn(&client).await?;
    // 3 s of a 6 s utterance, then the process dies.
    let utterance: Vec<Vec<u8>> = packets.iter().cycle().take(300).cloned().collect();
    client.send_packets(&utterance[..150], &[]).await?;
    gw.kill().await?;
    client.vanish().await;
    let marker = store.join(format!("open/node-k/{turn}/{session}"));
    assert!(marker.exists(), "the turn's marker is left");

    // Two other nodes' open records: one whose lease runs, one whose lease ended.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    for (node, until) in [("alive", now_ms + 600_000), ("gone", now_ms - 600_000)] {
        let other = format!("{:032x}", node.len());
        std::fs::create_dir_all(store.join(format!("open/{node}")))?;
        std::fs::create_dir_all(store.join("nodes"))?;
        let marker = json!({
            "session_id": "01890f3a9b7c4d5e6f708192a3b4c5d6", "turn_id": other,
            "node_id": node, "number": 1, "cause": "vad",
            "root_span_id": "b7ad6b7169203331", "started": "2026-11-30T10:00:00.000Z",
        });
        std::fs::write(
            store.join(format!("open/{node}/{other}")),
            marker.to_string(),
        )?;
        std::fs::write(
            store.join(format!("nodes/{node}")),
            json!({"until_ms": until}).to_string(),
        )?;
    }

    let _restarted = Gateway::start(&[], &env).await?;
    let (dir, m) = manifest(&store, &session, &turn).await?;
    assert_eq!(m["record_state"], "incomplete", "{m:#}");
    assert!(
        m["missing"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["reason"] == "node_stopped"),
        "{m:#}"
    );
    assert_eq!(m["node_id"], "node-k");
    // At least 2 s of the 3 s sent made it, decodable, with the turn's id.
    let (tags, samples) = decode_ogg(&std::fs::read(dir.join("audio.received.ogg"))?);
    assert!(tags.contains(&format!("TURNGATE_TURN_ID={turn}")));
    assert!(samples >= 2 * 48_000, "{} ms", samples / 48);
    for a in m["artifacts"].as_array().unwrap() {
        let bytes = std::fs::read(dir.join(a["name"].as_str().unwrap()))?;
        assert_eq!(a["sha256"], sha256_hex(&bytes), "{a}");
    }
    assert!(!marker.exists(), "the marker is removed after the manifest");

    // The live node's record is untouched; the one whose lease ended is finished.
    let gone = format!("{:032x}", "gone".len());
    let (_, finished) = manifest(&store, "01890f3a9b7c4d5e6f708192a3b4c5d6", &gone).await?;
    assert_eq!(finished["node_id"], "gone");
    assert!(!store.join(format!("open/gone/{gone}")).exists());
    let alive = format!("{:032x}", "alive".len());
    assert!(store.join(format!("open/alive/{alive}")).exists());
    assert!(
        !store
            .join(format!(
                "sessions/01890f3a9b7c4d5e6f708192a3b4c5d6/turns/{alive}"
            ))
            .exists()
    );
    let _ = std::fs::remove_dir_all(&store);
    Ok(())
}

/// Runs the `turngate` CLI with `env`: (success, stdout, stderr).
fn turngate(env: &[(&str, String)], args: &[&str]) -> anyhow::Result<(bool, Vec<u8>, String)> {
    let out = std::process::Command::new(binary())
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()?;
    Ok((
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Polls `turngate turn show --json` until the turn's manifest is there.
async fn manifest_via_cli(env: &[(&str, String)], turn: &str) -> anyhow::Result<Value> {
    for _ in 0..150 {
        let (ok, stdout, _) = turngate(env, &["turn", "show", turn, "--json"])?;
        if ok {
            return Ok(serde_json::from_slice(&stdout)?);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, _, stderr) = turngate(env, &["turn", "show", turn, "--json"])?;
    anyhow::bail!("no manifest of {turn}: {stderr}")
}

#[tokio::test]
async fn a_record_in_s3_is_whole_and_the_cli_reads_it_back() -> anyhow::Result<()> {
    let s3 = s3::S3::start().await?;
    let (base, seen) = fake_openai().await?;
    let store = s3.env("gateway-a");
    let mut env = backend_env(&base, &base, &base);
    env.extend(store.iter().cloned());
    let gw = start_with(&env).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    let image = png(64, 48);
    let (completed, _) = client_turn(&client, 1, Some(&image)).await?;
    let turn = completed["turn_id"].as_str().unwrap().to_owned();
    let m = manifest_via_cli(&store, &turn).await?;
    assert_eq!(m["record_state"], "complete", "{m:#}");
    assert_eq!(m["transcript"], TRANSCRIPT);

    // The export holds every artifact with the manifest's hash.
    let dir = std::env::temp_dir().join(format!("turngate-s3-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tar = dir.join("turn.tar");
    let (ok, _, stderr) = turngate(
        &store,
        &["turn", "export", &turn, "-o", tar.to_str().unwrap()],
    )?;
    assert!(ok, "{stderr}");
    let untar = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&dir)
        .status()?;
    assert!(untar.success());
    for a in m["artifacts"].as_array().unwrap() {
        let bytes = std::fs::read(dir.join(&turn).join(a["name"].as_str().unwrap()))?;
        assert_eq!(a["sha256"], sha256_hex(&bytes), "{a}");
    }
    let asr_got = seen.lock().unwrap().wavs[0].0.clone();
    assert_eq!(
        std::fs::read(dir.join(&turn).join("audio.asr.wav"))?,
        asr_got
    );
    assert_eq!(
        std::fs::read(
            dir.join(&turn)
                .join(format!("images/{}.png", sha256_hex(&image)))
        )?,
        image
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn a_store_outage_keeps_turns_flowing_and_the_record_says_what_it_lost() -> anyhow::Result<()>
{
    let mut s3 = s3::S3::start().await?;
    let (base, _seen) = fake_openai().await?;
    let store = s3.env("outage");
    let mut env = backend_env(&base, &base, &base);
    env.extend(store.iter().cloned());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Short retries, and a spool (memory, then disk) too small for the image.
    let toml = "[record]\nretry_ms = 300\nspool_bytes = 60000\nspool_disk_bytes = 60000\n";
    let gw = Gateway::with_config("outage", toml, &[], &env).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    s3.stop().await?;

    // The turn goes on as if nothing happened.
    let image = noise_png(200, 200);
    assert!(image.len() > 60_000);
    let (completed, errors) = client_turn(&client, 1, Some(&image)).await?;
    assert_eq!(completed["status"], "ok", "{completed}");
    assert!(errors.is_empty(), "{errors:?}");
    let turn = completed["turn_id"].as_str().unwrap().to_owned();
    assert!(client.inbox.of("transcript")[0]["text"] == TRANSCRIPT);
    let spooled = async {
        while gw.metric("turngate_record_spool_bytes").await? == 0.0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), spooled).await??;
    assert!(gw.metric("turngate_record_store_failures_total").await? >= 1.0);
    assert!(gw.metric("turngate_record_store_failing_seconds").await? > 0.0);

    // The store comes back (empty): the spool drains, and the record says what it lost.
    s3.restart().await?;
    let drained = async {
        while gw.metric("turngate_record_spool_bytes").await? > 0.0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(40), drained).await??;
    let m = manifest_via_cli(&store, &turn).await?;
    assert_eq!(m["record_state"], "incomplete", "{m:#}");
    let image_name = format!("images/{}.png", sha256_hex(&image));
    assert!(
        m["missing"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == image_name.as_str() && x["reason"] == "store_failed"),
        "{m:#}"
    );
    // What the spool held is there: the audio, the ASR input, the manifest.
    let names: Vec<&str> = m["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    for name in [
        "audio.received.ogg",
        "audio.asr.wav",
        "backends/llm.1.request.json",
    ] {
        assert!(names.contains(&name), "{name} not in {names:?}");
    }
    assert_eq!(
        gw.metric("turngate_record_store_failing_seconds").await?,
        0.0
    );
    Ok(())
}
