//! Bounds a client cannot push the gateway past, tried as an attacker would.

use anyhow::Context;
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

/// A gateway with `[http]` settings from a config file.
async fn gateway_with_http(settings: &str) -> anyhow::Result<(Gateway, tempfile_path::Path)> {
    let path = tempfile_path::Path::new(&format!("[http]\n{settings}\n"))?;
    let gw = Gateway::start(&["--config", path.as_str()], &[]).await?;
    Ok((gw, path))
}

/// A config file that lives as long as the test.
mod tempfile_path {
    pub struct Path(std::path::PathBuf);

    impl Path {
        pub fn new(text: &str) -> anyhow::Result<Self> {
            let path = std::env::temp_dir().join(format!(
                "turngate-limits-{}-{}.toml",
                std::process::id(),
                rand::random::<u64>()
            ));
            std::fs::write(&path, text)?;
            Ok(Self(path))
        }

        pub fn as_str(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn addr(gw: &Gateway) -> String {
    gw.base.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(tcp: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let _ = tcp.read_to_end(&mut got).await;
    got
}

#[tokio::test]
async fn a_client_sending_headers_slowly_is_disconnected_within_the_header_timeout()
-> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let (gw, _config) = gateway_with_http("header_read_timeout_ms = 1000").await?;
    // Idle after connecting, and one header byte every 300 ms: both are cut off.
    let mut idle = tokio::net::TcpStream::connect(addr(&gw)).await?;
    let mut slow = tokio::net::TcpStream::connect(addr(&gw)).await?;
    let started = tokio::time::Instant::now();
    let trickle = async {
        for byte in b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n" {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        read_to_close(&mut slow).await
    };
    let (idle_got, slow_got) = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(read_to_close(&mut idle), trickle)
    })
    .await?;
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        idle_got.is_empty() && slow_got.is_empty(),
        "no answer to a request never completed"
    );
    // The server goes on serving.
    let (status, _) = gw.get("/v1/sessions").await?;
    assert_eq!(status, 200);
    let closed = "turngate_http_connections_closed_total{reason=\"timeout\"}";
    assert_eq!(gw.metric(closed).await?, 2.0);
    Ok(())
}

#[tokio::test]
async fn a_body_that_stalls_is_answered_408() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let (gw, _config) = gateway_with_http("body_read_timeout_ms = 500").await?;
    let mut tcp = tokio::net::TcpStream::connect(addr(&gw)).await?;
    tcp.write_all(
        format!("POST /v1/whip HTTP/1.1\r\nHost: localhost\r\n{}Content-Type: application/sdp\r\nContent-Length: 100\r\n\r\nv=0\r\n", authorization_line(gw.client_authorization().as_deref())).as_bytes(),
    )
    .await?;
    let answer = tokio::time::timeout(Duration::from_secs(3), read_to_close(&mut tcp)).await?;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    Ok(())
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_one() -> anyhow::Result<()> {
    let (gw, _config) = gateway_with_http("max_connections = 2").await?;
    let first = tokio::net::TcpStream::connect(addr(&gw)).await?;
    let _second = tokio::net::TcpStream::connect(addr(&gw)).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third client's request is not served while both slots are held...
    let third = tokio::time::timeout(Duration::from_millis(700), gw.get("/v1/sessions")).await;
    assert!(third.is_err(), "served beyond the cap: {third:?}");
    // ...and is once one of them goes.
    drop(first);
    let (status, _) =
        tokio::time::timeout(Duration::from_secs(3), gw.get("/v1/sessions")).await??;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test]
async fn sigterm_with_a_client_trickling_a_body_exits_within_the_shutdown_grace()
-> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let (mut gw, _config) = gateway_with_http("shutdown_grace_ms = 1000").await?;
    let mut tcp = tokio::net::TcpStream::connect(addr(&gw)).await?;
    tcp.write_all(
        format!("POST /v1/whip HTTP/1.1\r\nHost: localhost\r\n{}Content-Type: application/sdp\r\nContent-Length: 60000\r\n\r\n", authorization_line(gw.client_authorization().as_deref())).as_bytes(),
    )
    .await?;
    // One byte every 200 ms: never idle long enough for the body timeout.
    tokio::spawn(async move {
        while tcp.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = tokio::time::Instant::now();
    let status = gw.terminate().await?;
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "exit took {:?}",
        started.elapsed()
    );
    Ok(())
}

/// Posts a real offer as if from `client` (through a proxy that says so in
/// `X-Forwarded-For`), then closes the peer before it can connect: the status.
async fn pending_offer(gw: &Gateway, client: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    let (status, body) = Client::offer_with(gw, &[("x-forwarded-for", client)]).await?;
    let body = serde_json::from_str(&body).unwrap_or_default();
    Ok((status, body))
}

#[tokio::test]
async fn offers_that_never_connect_from_one_address_do_not_lock_out_others() -> anyhow::Result<()> {
    // The gateway sits behind a proxy on loopback, which names the client.
    let (gw, _config) = gateway_with_http("trusted_proxies = [\"127.0.0.1\"]").await?;
    let mut refused = 0;
    for _ in 0..20 {
        let (status, body) = pending_offer(&gw, "203.0.113.7").await?;
        match status {
            201 => {}
            429 => {
                assert_eq!(body["code"], "too_many_pending", "{body}");
                refused += 1;
            }
            other => anyhow::bail!("offer answered {other}: {body}"),
        }
    }
    assert_eq!(refused, 12, "8 pending per address");
    // Another address connects.
    let gw_ref = &gw;
    let client = Client::connect_with(true, |offer| async move {
        let (status, location, answer) =
            post_offer_with(gw_ref, &offer, &[("x-forwarded-for", "198.51.100.9")]).await?;
        anyhow::ensure!(status == 201, "{status}: {answer}");
        Ok((answer, location.unwrap_or_default()))
    })
    .await?;
    client.session_id().await?;
    let refused = "turngate_sessions_refused_total{code=\"too_many_pending\"}";
    assert_eq!(gw.metric(refused).await?, 12.0);
    Ok(())
}

#[tokio::test]
async fn one_address_cannot_hold_every_session() -> anyhow::Result<()> {
    let toml = "[http]\ntrusted_proxies = [\"127.0.0.1\"]\n[sessions]\nmax_per_ip = 2\n";
    let gw = Gateway::with_config("per-address", toml, &[], &[]).await?;
    let gw_ref = &gw;
    let connect = |from: &'static str| {
        Client::connect_with(true, move |offer| async move {
            let (status, location, answer) =
                post_offer_with(gw_ref, &offer, &[("x-forwarded-for", from)]).await?;
            anyhow::ensure!(status == 201, "{status}: {answer}");
            Ok((answer, location.unwrap_or_default()))
        })
    };
    // Two connected sessions from one address; a third is refused.
    let _first = connect("203.0.113.7").await?;
    let _second = connect("203.0.113.7").await?;
    let (status, body) = pending_offer(&gw, "203.0.113.7").await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("too_many_sessions")),
        "{body}"
    );
    // Another address connects.
    let other = connect("198.51.100.9").await?;
    other.session_id().await?;
    // An IPv6 client counts by its /64: two addresses of one prefix share a limit.
    assert_eq!(pending_offer(&gw, "2001:db8:1:2::1").await?.0, 201);
    assert_eq!(pending_offer(&gw, "2001:db8:1:2::ffff").await?.0, 201);
    assert_eq!(pending_offer(&gw, "2001:db8:1:2:abcd::9").await?.0, 503);
    assert_eq!(pending_offer(&gw, "2001:db8:1:3::1").await?.0, 201);
    let refused = "turngate_sessions_refused_total{code=\"too_many_sessions\"}";
    assert_eq!(gw.metric(refused).await?, 2.0);
    Ok(())
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    // Every offer claims another address; without trusted proxies all count as the
    // peer's own.
    let mut statuses = Vec::new();
    for i in 0..9 {
        statuses.push(pending_offer(&gw, &format!("203.0.113.{i}")).await?.0);
    }
    assert_eq!(statuses[..8], [201; 8]);
    assert_eq!(statuses[8], 429);
    Ok(())
}

#[tokio::test]
async fn an_offer_trickled_byte_by_byte_is_cut_off_at_the_body_timeout() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let (gw, _config) = gateway_with_http("body_read_timeout_ms = 1000").await?;
    let mut tcp = tokio::net::TcpStream::connect(addr(&gw)).await?;
    tcp.write_all(
        format!("POST /v1/whip HTTP/1.1\r\nHost: localhost\r\n{}Content-Type: application/sdp\r\nContent-Length: 60000\r\n\r\n", authorization_line(gw.client_authorization().as_deref())).as_bytes(),
    )
    .await?;
    let started = tokio::time::Instant::now();
    // One byte every 300 ms: never a pause of a second, but never done either.
    let (mut read, mut write) = tcp.into_split();
    tokio::spawn(async move {
        while write.write_all(b"v").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut answer = Vec::new();
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn a_client_that_never_reads_its_answers_is_cut_off() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let (gw, _config) = gateway_with_http("body_read_timeout_ms = 1000").await?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(1024)?;
    let mut tcp = socket.connect(addr(&gw).parse()?).await?;
    // Pipelined requests whose answers are never read.
    tokio::spawn(async move {
        for _ in 0..20_000 {
            if tcp
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .is_err()
            {
                break;
            }
        }
        // Hold the socket open without reading.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(tcp);
    });
    let timed_out = "turngate_http_connections_closed_total{reason=\"timeout\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        if gw.metric(timed_out).await.unwrap_or(0.0) >= 1.0 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the connection was not cut off"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test]
async fn turns_beyond_the_backend_queue_are_shed_and_the_queue_depth_is_visible()
-> anyhow::Result<()> {
    let (base, seen) = fake_openai::fake_openai().await?;
    seen.lock().unwrap().asr_fault = fake_openai::Fault::Hang;
    let env = fake_openai::backend_env(&base, "", "");
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.retain(|(k, _)| *k != "TURNGATE_ASR_TIMEOUT_MS");
    let toml =
        "[asr]\nmax_concurrent = 2\nmax_queued = 8\nqueue_timeout_ms = 6000\ntimeout_ms = 30000\n";
    let args = ["--max-pending-per-ip", "64", "--max-sessions-per-ip", "64"];
    let gw = Gateway::with_config("shed", toml, &args, &env).await?;
    let (rate, pcm) = wav::read(&data("speech.wav"))?;
    let packets = encode_opus(rate, &pcm)?;
    // Fifty sessions, one turn each, with a little speech, while ASR takes 10 s.
    let clients = futures_util::future::try_join_all((0..50).map(|_| async {
        let client = Client::connect(&gw, true).await?;
        client.session_id().await?;
        anyhow::Ok(client)
    }))
    .await?;
    futures_util::future::try_join_all(clients.iter().map(|client| async {
        client
            .send_event(serde_json::json!({"type": "turn.start"}))
            .await?;
        client
            .inbox
            .wait("turn.started", 1, Duration::from_secs(5))
            .await?;
        client.send_packets(&packets[25..30], &[]).await?;
        // Audio and the data channel are two transports: the turn gets its audio (and
        // so an ASR call) only if the packets land before its end.
        let (id, sent) = (client.session_id().await?, client.packets_sent());
        gw.wait_session(&id, Duration::from_secs(10), |s| {
            s["counters"]["frames_received"] == sent && s["counters"]["frames_pending"] == 0
        })
        .await?;
        client
            .send_event(serde_json::json!({"type": "turn.end"}))
            .await
    }))
    .await?;
    let count = |kind: &str, code: Option<&str>| -> usize {
        clients
            .iter()
            .flat_map(|c| c.inbox.of(kind))
            .filter(|e| code.is_none_or(|code| e["code"] == code))
            .count()
    };
    let shed = |reason: &'static str| {
        format!("turngate_backend_shed_total{{backend=\"asr\",reason=\"{reason}\"}}")
    };
    // Two run, eight wait, forty are shed at once: the gateway's own counts, read while
    // the eight wait (the queue timeout, 6 s, is shorter than the 10 s ASR hangs).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while gw.metric(&shed("queue_full")).await? != 40.0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not 40 shed in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        gw.metric("turngate_backend_queued{backend=\"asr\"}")
            .await?,
        8.0
    );
    assert_eq!(gw.metric("turngate_turns_processing").await?, 10.0);
    // The waiting ones are shed when no slot comes free within the queue timeout. Every
    // shed turn completes failed and tells its client `overloaded` (each client's inbox
    // is read one after the other, so both counts are awaited).
    wait_until(Duration::from_secs(20), || {
        count("turn.completed", None) == 48 && count("error", Some("overloaded")) == 48
    })
    .await
    .with_context(|| {
        format!(
            "completed {}, overloaded {}, errors {:?}",
            count("turn.completed", None),
            count("error", Some("overloaded")),
            clients
                .iter()
                .flat_map(|c| c.inbox.of("error"))
                .filter(|e| e["code"] != "overloaded")
                .collect::<Vec<_>>()
        )
    })?;
    let completed: Vec<_> = clients
        .iter()
        .flat_map(|c| c.inbox.of("turn.completed"))
        .collect();
    assert!(
        completed
            .iter()
            .all(|c| c["status"] == "failed" && c["stages"]["asr"] == "failed"),
        "{completed:#?}"
    );
    assert_eq!(gw.metric(&shed("queue_full")).await?, 40.0);
    assert_eq!(gw.metric(&shed("queue_timeout")).await?, 8.0);
    assert_eq!(
        gw.metric("turngate_backend_queued{backend=\"asr\"}")
            .await?,
        0.0
    );
    // Only the two that got a slot reached the backend.
    assert_eq!(seen.lock().unwrap().transcriptions(), 2);
    Ok(())
}

/// Polls `done` every 50 ms until it holds, or fails after `timeout`.
async fn wait_until(timeout: Duration, done: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// POSTs `image` to the session's upload endpoint: (status, body, when it answered).
async fn post_image(
    gw: &Gateway,
    client: &Client,
    image: Vec<u8>,
) -> anyhow::Result<(u16, serde_json::Value, tokio::time::Instant)> {
    let r = client
        .authorized(
            gw.http
                .post(format!("{}{}/images", gw.base, client.location)),
        )
        .header("content-type", "image/gif")
        .body(image)
        .send()
        .await?;
    let status = r.status().as_u16();
    let retry_after = r.headers().contains_key("retry-after");
    let mut body: serde_json::Value = r.json().await?;
    body["retry_after_sent"] = retry_after.into();
    Ok((status, body, tokio::time::Instant::now()))
}

#[tokio::test]
async fn sessions_take_turns_at_the_image_validators() -> anyhow::Result<()> {
    let gw = Gateway::with_config(
        "fair-validators",
        "[uploads]\nvalidators = 1\nvalidation_wait_ms = 60000\ndecode_timeout_ms = 60000\n",
        &[],
        &[],
    )
    .await?;
    let greedy = Client::connect(&gw, true).await?;
    greedy.session_id().await?;
    let polite = Client::connect(&gw, true).await?;
    polite.session_id().await?;
    // The greedy session sends three images that are slow to check…
    let slow = canvas_gif(2000, 5);
    let greedy_uploads =
        futures_util::future::try_join_all((0..3).map(|_| post_image(&gw, &greedy, slow.clone())));
    let polite_upload = async {
        // …and the polite one a small image just after.
        tokio::time::sleep(Duration::from_millis(100)).await;
        post_image(&gw, &polite, png(64, 48)).await
    };
    let (greedy_done, polite_done) = tokio::join!(greedy_uploads, polite_upload);
    let mut greedy_done = greedy_done?;
    let polite_done = polite_done?;
    assert_eq!(polite_done.0, 201, "{:#}", polite_done.1);
    greedy_done.sort_by_key(|(_, _, at)| *at);
    for (status, body, _) in &greedy_done {
        assert_eq!(*status, 201, "{body:#}");
    }
    // The small image waited for one greedy validation at most, not for three.
    assert!(
        polite_done.2 < greedy_done[1].2,
        "the polite image was checked after the greedy session's second"
    );
    Ok(())
}

#[tokio::test]
async fn waiting_for_a_validator_and_decoding_are_both_bounded() -> anyhow::Result<()> {
    // One validator, and an image waits for it at most 200 ms.
    let gw = Gateway::with_config(
        "validator-wait",
        "[uploads]\nvalidators = 1\nvalidation_wait_ms = 200\ndecode_timeout_ms = 60000\n",
        &[],
        &[],
    )
    .await?;
    let busy = Client::connect(&gw, true).await?;
    busy.session_id().await?;
    let other = Client::connect(&gw, true).await?;
    other.session_id().await?;
    let slow = post_image(&gw, &busy, canvas_gif(2000, 5));
    let refused = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        post_image(&gw, &other, png(64, 48)).await
    };
    let (slow, refused) = tokio::join!(slow, refused);
    assert_eq!(slow?.0, 201);
    let (status, body, _) = refused?;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("overloaded")),
        "{body:#}"
    );
    assert_eq!(body["retry_after_sent"], true);
    assert_eq!(
        gw.metric("turngate_uploads_total{outcome=\"overloaded\"}")
            .await?,
        1.0
    );

    // An image that takes longer than the decode time limit is refused at the limit.
    let gw = Gateway::with_config(
        "decode-timeout",
        "[uploads]\ndecode_timeout_ms = 100\n",
        &[],
        &[],
    )
    .await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    let started = tokio::time::Instant::now();
    let (status, body, answered) = post_image(&gw, &client, canvas_gif(2000, 20)).await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("decode_timeout")),
        "{body:#}"
    );
    assert!(answered - started < Duration::from_secs(2));
    Ok(())
}

#[tokio::test]
async fn images_held_by_unprocessed_turns_are_bounded_per_session_and_gateway_wide()
-> anyhow::Result<()> {
    // A session may hold two images of about 480 KB, the gateway three.
    let gw = Gateway::with_config(
        "held-images",
        "[uploads]\nmax_image_bytes = 600000\nmax_in_flight_bytes = 1100000\n\
         max_held_bytes = 1700000\n",
        &[],
        &[],
    )
    .await?;
    let first = Client::connect(&gw, true).await?;
    first.session_id().await?;
    let second = Client::connect(&gw, true).await?;
    second.session_id().await?;
    // A client turn is open (uploads join it).
    first
        .send_event(serde_json::json!({"type": "turn.start"}))
        .await?;
    first
        .inbox
        .wait("turn.started", 1, Duration::from_secs(2))
        .await?;
    // Declaring large uploads and sending nothing holds no image bytes.
    let mut stalled = Vec::new();
    for client in [&first, &second] {
        let mut socket =
            tokio::net::TcpStream::connect(gw.base.trim_start_matches("http://")).await?;
        let head = format!(
            "POST {}/images HTTP/1.1\r\nhost: localhost\r\n{}content-type: image/png\r\ncontent-length: 500000\r\n\r\nP",
            client.location,
            authorization_line(client.authorization.as_deref()),
        );
        tokio::io::AsyncWriteExt::write_all(&mut socket, head.as_bytes()).await?;
        stalled.push(socket);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gw.metric("turngate_image_bytes_held").await?, 0.0);
    // Dropped: their in-flight reservations are freed.
    drop(stalled);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let image = noise_png(400, 400);
    assert!(image.len() > 400_000, "{}", image.len());
    for _ in 0..2 {
        let (status, body, _) = post_image(&gw, &first, image.clone()).await?;
        assert_eq!(status, 201, "{body:#}");
    }
    // Its turn is still open: its images are held, and a third is over its share…
    let held = gw.metric("turngate_image_bytes_held").await?;
    assert!(held >= 2.0 * image.len() as f64, "{held}");
    let (status, body, _) = post_image(&gw, &first, image.clone()).await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("upload_budget_exceeded")),
        "{body:#}"
    );
    // …while another session still has room, until the gateway's budget is full.
    let (status, body, _) = post_image(&gw, &second, image.clone()).await?;
    assert_eq!(status, 201, "{body:#}");
    let (status, body, _) = post_image(&gw, &second, image.clone()).await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("overloaded")),
        "{body:#}"
    );
    // Once the turns have been processed, their images are given back.
    first
        .send_event(serde_json::json!({"type": "turn.end"}))
        .await?;
    first
        .inbox
        .wait("turn.completed", 1, Duration::from_secs(5))
        .await?;
    second
        .inbox
        .wait("turn.completed", 1, Duration::from_secs(5))
        .await?;
    assert_eq!(gw.metric("turngate_image_bytes_held").await?, 0.0);
    let (status, body, _) = post_image(&gw, &first, image).await?;
    assert_eq!(status, 201, "{body:#}");
    Ok(())
}
