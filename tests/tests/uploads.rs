//! Image uploads end to end: over the data channel and over HTTP, stamped with their
//! turn, validated, and refused clearly when they are not an image we accept.

use std::time::Duration;

use serde_json::{Value, json};
use turngate_e2e::*;

/// A valid 1-bit grayscale PNG, small on disk but `width × height` pixels.
fn big_png(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::One);
    let mut writer = encoder.write_header().unwrap();
    let mut stream = writer.stream_writer().unwrap();
    let row = vec![0u8; width.div_ceil(8) as usize];
    for _ in 0..height {
        std::io::Write::write_all(&mut stream, &row).unwrap();
    }
    stream.finish().unwrap();
    drop(writer);
    out
}

/// A PNG whose header declares a huge canvas, with almost no data: a decompression bomb.
fn bomb_png() -> Vec<u8> {
    let mut bytes = png(8, 8);
    // IHDR's data starts at byte 16: width, height (big-endian); then fix its CRC.
    bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn blobs_of(session: &Value, turn_id: &Value) -> Vec<Value> {
    session["turns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| &t["turn_id"] == turn_id)
        .flat_map(|t| t["blobs"].as_array().unwrap().clone())
        .collect()
}

#[tokio::test]
async fn a_png_uploaded_mid_utterance_lands_in_that_turn() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    let image = png(1280, 720);
    let started = client.speak_with_upload("screenshot-1", &image).await?;
    let accepted = client
        .inbox
        .wait("image.accepted", 1, Duration::from_secs(5))
        .await?;
    let a = &accepted[0];
    assert_eq!(a["upload_id"], "screenshot-1");
    assert_eq!(a["blob_id"], sha256_hex(&image));
    assert_eq!(a["turn_id"], started["turn_id"]);
    assert_eq!(
        (a["width"].as_u64(), a["height"].as_u64()),
        (Some(1280), Some(720))
    );
    assert_eq!(
        (a["mime"].as_str(), a["declared_mime"].as_str()),
        (Some("image/png"), Some("image/png"))
    );
    assert_eq!(a["bytes"], image.len() as u64);
    client
        .inbox
        .wait("turn.ended", 1, Duration::from_secs(3))
        .await?;
    let session = client.finish(&gw, &session_id).await?;
    let blobs = blobs_of(&session, &started["turn_id"]);
    assert_eq!(blobs.len(), 1, "{session:#}");
    assert_eq!(blobs[0]["blob_id"], sha256_hex(&image));
    assert_eq!(session["counters"]["images_accepted"], 1);
    assert_eq!(
        session["counters"]["image_bytes_accepted"],
        image.len() as u64
    );
    assert_eq!(
        session["turns"].as_array().unwrap().len(),
        1,
        "the upload opened no turn of its own"
    );
    Ok(())
}

#[tokio::test]
async fn an_http_upload_looks_the_same_as_one_on_the_data_channel() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    let url = format!("{}{}/images", gw.base, client.location);
    client.send_event(json!({"type": "turn.start"})).await?;
    let turn = client
        .inbox
        .wait("turn.started", 1, Duration::from_secs(2))
        .await?[0]["turn_id"]
        .clone();
    // Raw body, declared as JPEG though it is a PNG: the sniffed format wins.
    let image = png(640, 480);
    let r = client
        .authorized(gw.http.post(&url))
        .header("content-type", "image/jpeg")
        .body(image.clone())
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 201);
    let body: Value = r.json().await?;
    assert_eq!(body["type"], "image.accepted");
    assert_eq!(body["blob_id"], sha256_hex(&image));
    assert_eq!(body["turn_id"], turn);
    assert_eq!(
        (body["mime"].as_str(), body["declared_mime"].as_str()),
        (Some("image/png"), Some("image/jpeg"))
    );
    let on_channel = client
        .inbox
        .wait("image.accepted", 1, Duration::from_secs(2))
        .await?;
    assert_eq!(
        on_channel[0], body,
        "both paths look the same to the client"
    );
    // Multipart, naming the turn explicitly.
    let jpg = jpeg(320, 200);
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(jpg.clone())
            .file_name("photo.jpg")
            .mime_str("image/jpeg")?,
    );
    let r = client
        .authorized(
            gw.http
                .post(format!("{url}?turn_id={}", turn.as_str().unwrap())),
        )
        .multipart(form)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 201);
    let body: Value = r.json().await?;
    assert_eq!(
        (
            body["width"].as_u64(),
            body["height"].as_u64(),
            body["mime"].as_str()
        ),
        (Some(320), Some(200), Some("image/jpeg"))
    );
    // Refusals use the same codes as problem+json.
    let r = client
        .authorized(gw.http.post(&url))
        .header("content-type", "image/png")
        .body("not an image")
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 422);
    assert_eq!(r.json::<Value>().await?["code"], "not_an_image");
    let r = client
        .authorized(gw.http.post(&url))
        .header("content-type", "text/plain")
        .body(image.clone())
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 415);
    let r = gw
        .http
        .post(format!(
            "{}/v1/whip/0123456789abcdef0123456789abcdef/images",
            gw.base
        ))
        .header("content-type", "image/png")
        .body(image.clone())
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 404);
    client.send_event(json!({"type": "turn.end"})).await?;
    client
        .inbox
        .wait("turn.ended", 1, Duration::from_secs(2))
        .await?;
    let session = gw
        .wait_session(&session_id, Duration::from_secs(3), |s| {
            s["turns"][0]["state"] == "completed"
        })
        .await?;
    // Naming a turn whose processing has started is refused.
    let r = client
        .authorized(
            gw.http
                .post(format!("{url}?turn_id={}", turn.as_str().unwrap())),
        )
        .header("content-type", "image/png")
        .body(image.clone())
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 409);
    assert_eq!(r.json::<Value>().await?["code"], "turn_closed");
    assert_eq!(blobs_of(&session, &turn).len(), 2);
    assert_eq!(session["counters"]["images_rejected"]["not_an_image"], 1);
    Ok(())
}

#[tokio::test]
async fn an_upload_while_idle_opens_an_image_turn_and_speech_joins_it() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    let image = png(200, 100);
    client.upload("idle", "image/png", &image, 4096).await?;
    let started = client
        .inbox
        .wait("turn.started", 1, Duration::from_secs(2))
        .await?;
    assert_eq!(started[0]["cause"], "image");
    client
        .inbox
        .wait("image.accepted", 1, Duration::from_secs(2))
        .await?;
    // Speech starts 0.5 s into the file: before the hangover (0.7 s) passes.
    client.send_wav("speech.wav").await?;
    let ended = client
        .inbox
        .wait("turn.ended", 1, Duration::from_secs(3))
        .await?;
    assert_eq!(
        client.inbox.of("turn.started").len(),
        1,
        "speech joined the image turn: {:#?}",
        client.inbox.all()
    );
    assert_eq!(ended[0]["turn_id"], started[0]["turn_id"]);
    assert_eq!(ended[0]["reason"], "idle");
    let session = client.finish(&gw, &session_id).await?;
    let turn = &session["turns"][0];
    assert!(
        turn["frames"].as_u64().unwrap() > 100,
        "the speech is in the image turn: {turn:#}"
    );
    assert_eq!(blobs_of(&session, &started[0]["turn_id"]).len(), 1);
    Ok(())
}

#[tokio::test]
async fn interleaved_chunks_of_two_uploads_both_arrive_intact() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    let a = png(900, 600);
    let b = jpeg(700, 500);
    for (id, mime, img) in [("a", "image/png", &a), ("b", "image/jpeg", &b)] {
        client
            .send_event(json!({"type": "image.begin", "upload_id": id, "mime": mime, "size": img.len(), "sha256": sha256_hex(img)}))
            .await?;
    }
    let (mut ca, mut cb) = (a.chunks(16 * 1024 - 2), b.chunks(9000));
    loop {
        let (x, y) = (ca.next(), cb.next());
        if x.is_none() && y.is_none() {
            break;
        }
        if let Some(x) = x {
            client.send_binary(&frame_chunk("a", x)).await?;
        }
        if let Some(y) = y {
            client.send_binary(&frame_chunk("b", y)).await?;
        }
    }
    client
        .send_event(json!({"type": "image.end", "upload_id": "b"}))
        .await?;
    client
        .send_event(json!({"type": "image.end", "upload_id": "a"}))
        .await?;
    let accepted = client
        .inbox
        .wait("image.accepted", 2, Duration::from_secs(5))
        .await?;
    let by_id = |id: &str| {
        accepted
            .iter()
            .find(|e| e["upload_id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_id("a")["blob_id"], sha256_hex(&a));
    assert_eq!(by_id("b")["blob_id"], sha256_hex(&b));
    assert_eq!(
        (by_id("b")["width"].as_u64(), by_id("b")["height"].as_u64()),
        (Some(700), Some(500))
    );
    assert_eq!(
        by_id("a")["turn_id"],
        by_id("b")["turn_id"],
        "both began in the same image turn"
    );
    Ok(())
}

#[tokio::test]
async fn each_bad_upload_is_refused_with_its_code_and_audio_is_unharmed() -> anyhow::Result<()> {
    let gw = Gateway::with_config("uploads", "[uploads]\ntimeout_ms = 1500\n", &[], &[]).await?;
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    let speaking = {
        let (rate, pcm) = wav::read(&data("two-utterances.wav"))?;
        encode_opus(rate, &pcm)?
    };
    let good = png(64, 64);
    let mut truncated = png(300, 300);
    truncated.truncate(truncated.len() * 2 / 3);
    let tiff =
        b"II*\x00\x08\x00\x00\x00\x0e\x00\x00\x01\x03\x00\x01\x00\x00\x00\x10\x00\x00\x00".to_vec();
    let big = big_png(10_000, 10_000);
    let bomb = bomb_png();
    let mut expected: Vec<(&str, &str)> = Vec::new();

    // The client speaks throughout, while its uploads are refused.
    let client = std::sync::Arc::new(client);
    let speaker = std::sync::Arc::clone(&client);
    let audio = tokio::spawn(async move { speaker.send_packets(&speaking, &[]).await });
    let cases: Vec<(&str, Value, Vec<Vec<u8>>, bool)> = vec![
        (
            "size-missing",
            json!({"type": "image.begin", "upload_id": "size-missing", "mime": "image/png"}),
            vec![],
            false,
        ),
        (
            "too-big",
            json!({"type": "image.begin", "upload_id": "too-big", "mime": "image/png", "size": 30_000_000}),
            vec![],
            false,
        ),
        (
            "more",
            json!({"type": "image.begin", "upload_id": "more", "mime": "image/png", "size": 10}),
            vec![vec![0u8; 11]],
            false,
        ),
        (
            "sha",
            json!({"type": "image.begin", "upload_id": "sha", "mime": "image/png", "size": good.len(), "sha256": "0".repeat(64)}),
            vec![good.clone()],
            true,
        ),
        (
            "text",
            json!({"type": "image.begin", "upload_id": "text", "mime": "image/png", "size": 12}),
            vec![b"hello world!".to_vec()],
            true,
        ),
        (
            "tiff",
            json!({"type": "image.begin", "upload_id": "tiff", "mime": "image/tiff", "size": tiff.len()}),
            vec![tiff.clone()],
            true,
        ),
        (
            "trunc",
            json!({"type": "image.begin", "upload_id": "trunc", "mime": "image/png", "size": truncated.len()}),
            vec![truncated.clone()],
            true,
        ),
        (
            "pixels",
            json!({"type": "image.begin", "upload_id": "pixels", "mime": "image/png", "size": big.len()}),
            vec![big.clone()],
            true,
        ),
        (
            "bomb",
            json!({"type": "image.begin", "upload_id": "bomb", "mime": "image/png", "size": bomb.len()}),
            vec![bomb.clone()],
            true,
        ),
    ];
    let codes = [
        "size_required",
        "image_too_large",
        "size_exceeded",
        "sha256_mismatch",
        "not_an_image",
        "unsupported_image_format",
        "corrupt_image",
        "too_many_pixels",
        "too_many_pixels",
    ];
    for ((id, begin, chunks, end), code) in cases.into_iter().zip(codes) {
        client.send_event(begin).await?;
        for chunk in chunks {
            for piece in chunk.chunks(16_000) {
                client.send_binary(&frame_chunk(id, piece)).await?;
            }
        }
        if end {
            client
                .send_event(json!({"type": "image.end", "upload_id": id}))
                .await?;
        }
        expected.push((id, code));
        let rejected = client
            .inbox
            .wait("image.rejected", expected.len(), Duration::from_secs(5))
            .await?;
        let last = rejected.last().unwrap();
        assert_eq!(
            (
                last["upload_id"].as_str().unwrap(),
                last["code"].as_str().unwrap()
            ),
            (id, code),
            "{last:#}"
        );
    }
    // image.end without image.begin; chunks for an unknown upload; a duplicate id.
    client
        .send_event(json!({"type": "image.end", "upload_id": "never"}))
        .await?;
    client.send_binary(&frame_chunk("nobody", b"xyz")).await?;
    client
        .send_event(
            json!({"type": "image.begin", "upload_id": "dup", "mime": "image/png", "size": 100}),
        )
        .await?;
    client
        .send_event(
            json!({"type": "image.begin", "upload_id": "dup", "mime": "image/png", "size": 100}),
        )
        .await?;
    // Too many at once: "dup" is open; three more fit, the fifth does not.
    for id in ["c1", "c2", "c3", "c4"] {
        client
            .send_event(
                json!({"type": "image.begin", "upload_id": id, "mime": "image/png", "size": 100}),
            )
            .await?;
    }
    let rejected = client
        .inbox
        .wait("image.rejected", expected.len() + 4, Duration::from_secs(5))
        .await?;
    let tail: Vec<(&str, &str)> = rejected[expected.len()..]
        .iter()
        .map(|e| {
            (
                e["upload_id"].as_str().unwrap(),
                e["code"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tail,
        vec![
            ("never", "unknown_upload"),
            ("nobody", "unknown_upload"),
            ("dup", "duplicate_upload_id"),
            ("c4", "too_many_uploads")
        ]
    );
    // The limits count HTTP uploads too: with four open, an HTTP upload is refused.
    let url = format!("{}{}/images", gw.base, client.location);
    let r = client
        .authorized(gw.http.post(&url))
        .header("content-type", "image/png")
        .body(good.clone())
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.json::<Value>().await?["code"], "too_many_uploads");
    // Half an upload, then nothing: it times out and its bytes are freed.
    client.send_binary(&frame_chunk("c1", &[1; 50])).await?;
    let timed_out = client
        .inbox
        .wait("image.rejected", expected.len() + 8, Duration::from_secs(4))
        .await?;
    assert!(
        timed_out[expected.len() + 4..]
            .iter()
            .all(|e| e["code"] == "upload_timeout"),
        "{timed_out:#?}"
    );
    // Fewer bytes than declared; declared sizes over the in-flight budget.
    let n = expected.len() + 8;
    client
        .send_event(
            json!({"type": "image.begin", "upload_id": "short", "mime": "image/png", "size": 100}),
        )
        .await?;
    client.send_binary(&frame_chunk("short", &[1; 50])).await?;
    client
        .send_event(json!({"type": "image.end", "upload_id": "short"}))
        .await?;
    for id in ["b1", "b2", "b3", "b4"] {
        let size = if id == "b4" { 10_000_000 } else { 20_000_000 };
        client
            .send_event(
                json!({"type": "image.begin", "upload_id": id, "mime": "image/png", "size": size}),
            )
            .await?;
    }
    let rejected = client
        .inbox
        .wait("image.rejected", n + 2, Duration::from_secs(3))
        .await?;
    let tail: Vec<(&str, &str)> = rejected[n..]
        .iter()
        .map(|e| {
            (
                e["upload_id"].as_str().unwrap(),
                e["code"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tail,
        vec![("short", "size_mismatch"), ("b4", "upload_budget_exceeded")]
    );
    // The audio went on: the speech made its turns, and every frame is accounted for.
    audio.await??;
    client
        .inbox
        .wait("turn.ended", 2, Duration::from_secs(3))
        .await?;
    assert!(
        client.inbox.of("turn.ended").len() >= 2,
        "{:#?}",
        client.inbox.of("turn.ended")
    );
    assert!(client.inbox.of("image.accepted").is_empty());
    let session = client.finish(&gw, &session_id).await?;
    let rejected = &session["counters"]["images_rejected"];
    // dup, c1–c3 timed out; b1–b3 timed out too, or were open when the session closed
    // (abandoned): either way freed and never attached.
    let n = |code: &str| rejected[code].as_u64().unwrap_or(0);
    assert!(n("upload_timeout") >= 4);
    assert_eq!(n("upload_timeout") + n("upload_abandoned"), 7);
    assert_eq!(
        rejected["too_many_uploads"], 2,
        "one on the data channel, one over HTTP"
    );
    assert!(
        session["turns"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["blobs"].as_array().unwrap().is_empty())
    );
    assert_eq!(rejected["too_many_pixels"], 2);
    assert!(session["counters"]["upload_bytes_freed"].as_u64().unwrap() >= 50 + big.len() as u64);
    Ok(())
}

#[tokio::test]
async fn an_upload_abandoned_by_a_closing_session_is_freed_and_counted() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    client
        .send_event(
            json!({"type": "image.begin", "upload_id": "half", "mime": "image/png", "size": 5000}),
        )
        .await?;
    client.send_binary(&frame_chunk("half", &[7; 2000])).await?;
    client
        .inbox
        .wait("turn.started", 1, Duration::from_secs(2))
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(client.delete(&gw).await?, 204);
    let session = gw
        .wait_session(&session_id, Duration::from_secs(5), |s| {
            s["state"] == "ended"
        })
        .await?;
    assert_eq!(
        session["counters"]["images_rejected"]["upload_abandoned"],
        1
    );
    assert_eq!(session["counters"]["upload_bytes_freed"], 2000);
    let turn = &session["turns"][0];
    assert_eq!(turn["cause"], "image");
    assert!(
        turn["blobs"].as_array().unwrap().is_empty(),
        "never attached to a turn"
    );
    Ok(())
}
