//! Telemetry end to end: the real gateway exports its spans to in-process OTLP
//! receivers (HTTP/protobuf and gRPC) while turns go through in-process backends. One
//! trace per turn, trace id = turn id, the documented span tree, backend requests
//! parented on their client spans, links between turns, content only on opt-in,
//! sampling, a dead collector, and `/metrics`.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{Value, json};
use turngate_e2e::fake_openai::*;
use turngate_e2e::otlp::{Collector, Span};
use turngate_e2e::*;

/// What every span of a turn carries.
fn assert_ids(span: &Span, turn_id: &str, session_id: &str) {
    assert_eq!(span.trace_id, turn_id, "{span:?}");
    assert_eq!(span.attr("turngate.turn.id"), turn_id, "{span:?}");
    for key in [
        "turngate.session.id",
        "gen_ai.conversation.id",
        "session.id",
    ] {
        assert_eq!(span.attr(key), session_id, "{key} on {span:?}");
    }
}

fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span in {spans:#?}");
    found[0]
}

async fn gateway(
    collector: &Collector,
    backends: &str,
    extra: &[(&'static str, String)],
) -> anyhow::Result<Gateway> {
    let mut env = backend_env(backends, backends, backends);
    env.extend(collector.env());
    env.extend(extra.iter().cloned());
    start_with(&env).await
}

/// A root span named `turn` of `trace_id` has arrived.
fn has_root(trace_id: &str) -> impl Fn(&[Span]) -> bool + '_ {
    move |spans| {
        spans
            .iter()
            .any(|s| s.trace_id == trace_id && s.name == "turn")
    }
}

/// Waits until the gateway has counted spans whose export failed.
async fn wait_for_dropped_exports(gw: &Gateway) -> anyhow::Result<()> {
    let sample = "turngate_spans_dropped_total{reason=\"export_failed\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gw.metric(sample).await? < 1.0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no dropped spans counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_vad_turn_with_speech_and_an_image_is_one_trace_over_otlp_http() -> anyhow::Result<()> {
    let collector = Collector::http().await?;
    let (base, seen) = fake_openai().await?;
    let gw = gateway(&collector, &base, &[]).await?;
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    let image = png(640, 360);
    let started = client.speak_with_upload("shot-1", &image).await?;
    let completed = client
        .inbox
        .wait("turn.completed", 1, Duration::from_secs(15))
        .await?;
    assert_eq!(completed[0]["status"], "ok", "{completed:?}");
    let turn_id = started["turn_id"].as_str().unwrap().to_owned();
    let announced_root = started["traceparent"].as_str().unwrap()[36..52].to_owned();

    let all = collector
        .wait(Duration::from_secs(10), has_root(&turn_id))
        .await?;
    // Every span exported is this turn's, with its ids.
    for span in &all {
        assert_ids(span, &turn_id, &session_id);
        assert_eq!(span.resource["service.name"], "turngate");
    }
    // Exactly one root: the span `turn.started` announced, a true root.
    let roots: Vec<_> = all.iter().filter(|s| s.parent_id.is_empty()).collect();
    assert_eq!(roots.len(), 1, "{all:#?}");
    let root = roots[0];
    assert_eq!(
        (root.name.as_str(), root.span_id.as_str()),
        ("turn", announced_root.as_str())
    );
    assert_eq!(root.kind, 2, "server");
    assert_eq!(root.attr("turngate.turn.cause"), "vad");
    assert_eq!(root.attr("turngate.turn.number"), 1);
    assert_eq!(root.attr("turngate.turn.state"), "completed");
    assert_eq!(root.attr("turngate.turn.reason"), "end_of_speech");
    assert_eq!(root.attr("turngate.turn.interrupted"), false);
    assert_eq!(root.attr("turngate.turn.status"), "ok");
    assert_eq!(root.attr("turngate.turn.images"), 1);
    assert!(
        root.attr("turngate.turn.frames").as_i64().unwrap() > 50,
        "{root:?}"
    );
    assert!(
        root.attr("turngate.turn.duration_ms").as_i64().unwrap() > 500,
        "{root:?}"
    );
    assert!(
        root.links.is_empty(),
        "the session's first turn links nowhere"
    );
    let events: Vec<_> = root.events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(events, ["vad.speech_start", "vad.speech_end"]);
    assert!(
        root.events
            .iter()
            .all(|(_, t)| (root.start_ns..=root.end_ns).contains(t))
    );
    // Speech began after the pre-roll the turn starts with, and ended a hangover
    // (700 ms) before the turn's last frame.
    let (speech_start, speech_end) = (root.events[0].1, root.events[1].1);
    let ms = |a: u64, b: u64| (a as f64 - b as f64) / 1e6;

    // The tree: every other span is a child of the root, with the documented names.
    let names: BTreeSet<_> = all.iter().map(|s| s.name.as_str()).collect();
    let expected: BTreeSet<_> = [
        "turn",
        "audio.ingest",
        "image.upload",
        "asr",
        "vision",
        "llm",
        "response.delivery",
    ]
    .into();
    assert_eq!(names, expected);
    for span in all.iter().filter(|s| s.name != "turn") {
        assert_eq!(span.parent_id, root.span_id, "{span:?}");
        assert!(
            span.start_ns >= root.start_ns && span.end_ns <= root.end_ns,
            "{span:?} within {root:?}"
        );
    }

    // The audio: from the root's start (pre-roll included), every frame.
    let audio = one(&all, "audio.ingest");
    assert_eq!(
        audio.start_ns, root.start_ns,
        "the turn starts at its first frame"
    );
    assert_eq!(
        audio.attr("turngate.audio.frames"),
        root.attr("turngate.turn.frames")
    );
    assert_eq!(audio.attr("turngate.audio.frames_dropped"), 0);
    let after_start = ms(speech_start, audio.start_ns);
    assert!((100.0..=400.0).contains(&after_start), "{after_start} ms");
    let before_end = ms(audio.end_ns, speech_end);
    assert!((600.0..=800.0).contains(&before_end), "{before_end} ms");
    assert!(audio.attr("turngate.audio.first_frame_time").is_string());

    // The image.
    let upload = one(&all, "image.upload");
    assert_eq!(upload.attr("turngate.blob.id"), sha256_hex(&image).as_str());
    assert_eq!(upload.attr("turngate.image.bytes"), image.len() as i64);
    assert_eq!(upload.attr("turngate.image.mime"), "image/png");
    assert_eq!(
        (
            upload.attr("turngate.image.width"),
            upload.attr("turngate.image.height")
        ),
        (&json!(640), &json!(360))
    );

    // Backend client spans; the LLM's after the GenAI conventions.
    let (asr, vision, llm) = (one(&all, "asr"), one(&all, "vision"), one(&all, "llm"));
    for span in [asr, vision, llm] {
        assert_eq!(span.kind, 3, "client: {span:?}");
        assert_eq!(span.attr("turngate.backend.outcome"), "ok");
        assert_eq!(span.attr("gen_ai.provider.name"), "openai");
        assert_eq!(span.attr("server.address"), "127.0.0.1");
    }
    assert_eq!(llm.attr("gen_ai.operation.name"), "chat");
    assert_eq!(llm.attr("gen_ai.response.model"), "fake-llm");
    assert_eq!(llm.attr("gen_ai.usage.input_tokens"), PROMPT_TOKENS as i64);
    assert_eq!(llm.attr("gen_ai.usage.output_tokens"), DELTAS.len() as i64);
    assert_eq!(llm.attr("gen_ai.response.finish_reasons"), &json!(["stop"]));
    assert!(llm.attr("turngate.llm.time_to_first_token_ms").is_i64());
    assert_eq!(
        llm.events
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["gen_ai.first_token"]
    );
    assert!(
        asr.end_ns <= llm.start_ns && vision.end_ns <= llm.start_ns,
        "the LLM comes after ASR and vision"
    );
    // The LLM span lasts until the stream ends: past its first token and the delivery.
    assert!(llm.events[0].1 <= llm.end_ns, "{llm:?}");
    let delivery = one(&all, "response.delivery");
    assert!(delivery.end_ns <= llm.end_ns && delivery.start_ns >= llm.start_ns);
    assert_eq!(
        delivery.attr("turngate.delivery.deltas"),
        DELTAS.len() as i64
    );

    // The backends saw traceparents naming their client spans.
    let headers = seen.lock().unwrap().headers.clone();
    let parents: HashMap<&str, Vec<String>> =
        headers.iter().fold(HashMap::new(), |mut m, (path, tp, _)| {
            assert_eq!(&tp[3..35], turn_id, "{tp}");
            assert!(tp.ends_with("-01"), "sampled: {tp}");
            m.entry(path.as_str())
                .or_default()
                .push(tp[36..52].to_owned());
            m
        });
    assert_eq!(
        parents["audio/transcriptions"],
        std::slice::from_ref(&asr.span_id)
    );
    let mut chats = parents["chat/completions"].clone();
    chats.sort();
    let mut expected = vec![vision.span_id.clone(), llm.span_id.clone()];
    expected.sort();
    assert_eq!(chats, expected);

    // No content by default: nothing the user said or the models answered.
    for span in &all {
        for key in [
            "gen_ai.input.messages",
            "gen_ai.output.messages",
            "turngate.asr.transcript",
        ] {
            assert!(!span.attrs.contains_key(key), "{key} on {span:?}");
        }
        let text = serde_json::to_string(&span.attrs)?;
        for content in [TRANSCRIPT, DESCRIPTION, DELTAS[1]] {
            assert!(!text.contains(content), "{content:?} in {span:?}");
        }
    }

    // Metrics.
    assert!(gw.metric("turngate_spans_exported_total").await? >= all.len() as f64);
    assert_eq!(
        gw.metric("turngate_turns_completed_total{cause=\"vad\",status=\"ok\"}")
            .await?,
        1.0
    );
    assert_eq!(
        gw.metric("turngate_backend_request_duration_seconds_count{stage=\"asr\",outcome=\"ok\"}")
            .await?,
        1.0
    );
    assert_eq!(
        gw.metric("turngate_uploads_total{outcome=\"accepted\"}")
            .await?,
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn client_turns_over_grpc_join_the_client_trace_link_in_order_and_capture_content_on_opt_in()
-> anyhow::Result<()> {
    let collector = Collector::grpc().await?;
    let (base, _seen) = fake_openai().await?;
    let extra = [
        ("TURNGATE_TELEMETRY_CAPTURE_CONTENT", "true".to_owned()),
        ("OTEL_SERVICE_NAME", "voice-gateway".to_owned()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=test".to_owned(),
        ),
    ];
    let gw = gateway(&collector, &base, &extra).await?;
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    let (rate, pcm) = wav::read(&data("speech.wav"))?;
    let packets = encode_opus(rate, &pcm)?;

    // Turn 1 joins the client's own trace; turns 2 and 3 are minted by the gateway.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let mut turn_ids = Vec::new();
    for n in 1..=3 {
        let mut start = json!({"type": "turn.start"});
        if n == 1 {
            start["traceparent"] = json!(format!("00-{client_trace}-{client_span}-01"));
        }
        client.send_event(start).await?;
        let started = client
            .inbox
            .wait("turn.started", n, Duration::from_secs(3))
            .await?;
        if n == 1 {
            client
                .upload("shot", "image/png", &png(320, 200), 16 * 1024)
                .await?;
        }
        client.send_packets(&packets[25..75], &[]).await?;
        client.send_event(json!({"type": "turn.end"})).await?;
        client
            .inbox
            .wait("turn.completed", n, Duration::from_secs(15))
            .await?;
        turn_ids.push(started[n - 1]["turn_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(turn_ids[0], client_trace);
    let all = collector
        .wait(Duration::from_secs(10), |s| {
            turn_ids.iter().all(|t| has_root(t)(s))
        })
        .await?;
    let roots: Vec<&Span> = turn_ids
        .iter()
        .map(|t| {
            let trace: Vec<_> = all.iter().filter(|s| &s.trace_id == t).collect();
            for span in &trace {
                assert_ids(span, t, &session_id);
            }
            let roots: Vec<_> = trace.into_iter().filter(|s| s.name == "turn").collect();
            assert_eq!(roots.len(), 1);
            roots[0]
        })
        .collect();
    // The resource the standard variables describe.
    assert_eq!(roots[0].resource["service.name"], "voice-gateway");
    assert_eq!(roots[0].resource["deployment.environment.name"], "test");
    // The client turn's root is a child of the client's span; the others are roots.
    assert_eq!(roots[0].parent_id, client_span);
    assert_eq!(roots[0].attr("turngate.turn.cause"), "client");
    assert!(roots[1].parent_id.is_empty() && roots[2].parent_id.is_empty());
    // Each turn links to the one before, in order.
    assert!(roots[0].links.is_empty());
    for i in 1..3 {
        assert_eq!(
            roots[i].links,
            [(roots[i - 1].trace_id.clone(), roots[i - 1].span_id.clone())]
        );
        assert_eq!(roots[i].attr("turngate.turn.number"), (i + 1) as i64);
    }

    // With the opt-in, the spans carry what the models were given and returned, in the
    // GenAI conventions' message format.
    let first: Vec<_> = all.iter().filter(|s| s.trace_id == client_trace).collect();
    let span = |name: &str| *first.iter().find(|s| s.name == name).unwrap();
    let json_attr = |name: &str, key: &str| -> Value {
        serde_json::from_str(span(name).attr(key).as_str().unwrap_or("null")).unwrap()
    };
    assert_eq!(span("asr").attr("turngate.asr.transcript"), TRANSCRIPT);
    let vision_input = json_attr("vision", "gen_ai.input.messages");
    let image_part = &vision_input[0]["parts"][1];
    assert_eq!(vision_input[0]["role"], "user");
    assert_eq!(
        (&image_part["type"], &image_part["mime_type"]),
        (&json!("blob"), &json!("image/png"))
    );
    assert!(
        image_part["content"].as_str().unwrap().starts_with("iVBOR"),
        "{image_part}"
    );
    let vision_output = json_attr("vision", "gen_ai.output.messages");
    assert_eq!(vision_output[0]["parts"][0]["content"], DESCRIPTION);
    let system = json_attr("llm", "gen_ai.system_instructions");
    assert_eq!(system[0]["type"], "text");
    let prompt = json_attr("llm", "gen_ai.input.messages");
    let last = prompt.as_array().unwrap().last().unwrap();
    let said = last["parts"][0]["content"].as_str().unwrap();
    assert!(
        said.contains(TRANSCRIPT) && said.contains(DESCRIPTION),
        "{prompt}"
    );
    let answer = json_attr("llm", "gen_ai.output.messages");
    assert_eq!(answer[0]["parts"][0]["content"], DELTAS.concat());
    assert_eq!(answer[0]["finish_reason"], "stop");
    // Later turns' prompts hold the earlier exchanges.
    let third: Vec<_> = all
        .iter()
        .filter(|s| s.trace_id == turn_ids[2] && s.name == "llm")
        .collect();
    let history: Value =
        serde_json::from_str(third[0].attr("gen_ai.input.messages").as_str().unwrap())?;
    assert_eq!(history.as_array().unwrap().len(), 5, "{history}");
    Ok(())
}

#[tokio::test]
async fn a_failed_call_marks_its_span_without_the_backends_answer() -> anyhow::Result<()> {
    let collector = Collector::http().await?;
    let (base, seen) = fake_openai().await?;
    seen.lock().unwrap().asr_fault = Fault::Status500;
    let gw = gateway(&collector, &base, &[]).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    let (completed, errors) = client_turn(&client, 1, None).await?;
    assert_eq!(completed["stages"]["asr"], "failed", "{completed}");
    assert_eq!(errors.len(), 1);
    let turn_id = completed["turn_id"].as_str().unwrap();
    let spans = collector
        .wait(Duration::from_secs(10), has_root(turn_id))
        .await?;
    let asr = one(&spans, "asr");
    assert_eq!(
        (asr.status, asr.attr("error.type")),
        (2, &json!("backend_status"))
    );
    assert_eq!(asr.attr("turngate.backend.outcome"), "failed");
    assert!(asr.status_message.contains("500"), "{asr:?}");
    // The backend's body ("boom") could echo the prompt: not without the opt-in.
    assert!(!format!("{spans:?}").contains("boom"));
    let root = one(&spans, "turn");
    assert_eq!(
        (root.status, root.attr("turngate.turn.status")),
        (2, &json!("failed"))
    );
    assert_eq!(
        gw.metric(
            "turngate_backend_request_duration_seconds_count{stage=\"asr\",outcome=\"failed\"}"
        )
        .await?,
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn traceidratio_half_keeps_about_half_of_200_turns_whole() -> anyhow::Result<()> {
    let collector = Collector::http().await?;
    let env: Vec<(&str, String)> = collector
        .env()
        .into_iter()
        .chain([
            ("OTEL_TRACES_SAMPLER", "traceidratio".to_owned()),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5".to_owned()),
        ])
        .collect();
    let gw = start_with(&env).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    const TURNS: usize = 200;
    for n in 1..=TURNS {
        client.send_event(json!({"type": "turn.start"})).await?;
        client.send_event(json!({"type": "turn.end"})).await?;
        client
            .inbox
            .wait("turn.completed", n, Duration::from_secs(5))
            .await?;
    }
    let turns: BTreeSet<String> = client
        .inbox
        .of("turn.started")
        .iter()
        .map(|t| t["turn_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(turns.len(), TURNS);
    // The last turn's fate decides nothing: wait until the queue has surely drained.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spans = collector.spans();
    let kept: BTreeSet<_> = spans.iter().map(|s| s.trace_id.clone()).collect();
    assert!(kept.is_subset(&turns), "only turns are traced");
    // A kept turn is kept whole: its root is there.
    for t in &kept {
        assert!(has_root(t)(&spans), "{t} has spans but no root");
    }
    // Binomial(200, 0.5): ±30 is more than four standard deviations.
    assert!(
        (70..=130).contains(&kept.len()),
        "kept {} of {TURNS}",
        kept.len()
    );
    // The decision is the trace id's, as the ratio sampler defines it, and
    // `turn.started` announced it in its traceparent's flags.
    for started in client.inbox.of("turn.started") {
        let t = started["turn_id"].as_str().unwrap();
        let low = u64::from_str_radix(&t[16..], 16)? >> 1;
        assert_eq!(kept.contains(t), low < 1u64 << 62, "{t}");
        let flags = &started["traceparent"].as_str().unwrap()[53..];
        assert_eq!(
            flags,
            if kept.contains(t) { "01" } else { "00" },
            "{started}"
        );
    }
    Ok(())
}

/// Two VAD turns on a gateway started with `env` complete, and every packet sent is
/// accounted for, none dropped. Returns the gateway and the packets received.
async fn two_vad_turns_unharmed(env: &[(&str, &str)]) -> anyhow::Result<(Gateway, u64)> {
    let gw = Gateway::start(&[], env).await?;
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    client.send_wav("two-utterances.wav").await?;
    client
        .inbox
        .wait("turn.completed", 2, Duration::from_secs(10))
        .await?;
    let session = client.finish(&gw, &session_id).await?;
    let received = assert_balanced(&session);
    assert_eq!(received, client.packets_sent());
    assert_eq!(session["counters"]["frames_dropped_backpressure"], 0);
    Ok((gw, received))
}

#[tokio::test]
async fn a_dead_collector_leaves_media_and_turns_alone_and_counts_dropped_spans()
-> anyhow::Result<()> {
    let dead = format!("http://127.0.0.1:{}", free_tcp_port());
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", dead.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_BSP_EXPORT_TIMEOUT", "2000"),
    ];
    let (gw, received) = two_vad_turns_unharmed(&env).await?;
    wait_for_dropped_exports(&gw).await?;
    assert_eq!(gw.metric("turngate_spans_exported_total").await?, 0.0);
    assert_eq!(
        gw.metric("turngate_frames_received_total").await?,
        received as f64
    );
    assert_eq!(
        gw.metric("turngate_turns_completed_total{cause=\"vad\",status=\"ok\"}")
            .await?,
        2.0
    );
    // One warning for the outage, not one per export.
    assert_eq!(
        gw.log().matches("Span export failed").count(),
        1,
        "{}",
        gw.log()
    );
    Ok(())
}

#[tokio::test]
async fn a_slow_collector_fills_the_queue_and_drops_are_counted_not_waited_for()
-> anyhow::Result<()> {
    let collector = Collector::http_answering_after(Duration::from_secs(30)).await?;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "1"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1"),
    ];
    // Two turns of two spans each: one export hangs, one span waits, the rest drop.
    let (gw, _) = two_vad_turns_unharmed(&env).await?;
    assert!(
        gw.metric("turngate_spans_dropped_total{reason=\"queue_full\"}")
            .await?
            >= 1.0
    );
    assert_eq!(gw.metric("turngate_spans_exported_total").await?, 0.0);
    Ok(())
}

#[tokio::test]
async fn spans_still_queued_are_exported_at_shutdown() -> anyhow::Result<()> {
    let collector = Collector::http().await?;
    // Without shutdown, nothing would be sent for a minute.
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
    ];
    let mut gw = Gateway::start(&[], &env).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    client.send_event(json!({"type": "turn.start"})).await?;
    let started = client
        .inbox
        .wait("turn.started", 1, Duration::from_secs(3))
        .await?;
    // The turn is still open: shutdown closes it, completes it and exports its spans.
    assert!(gw.terminate().await?.success());
    let turn_id = started[0]["turn_id"].as_str().unwrap();
    let spans = collector.trace(turn_id);
    let root = one(&spans, "turn");
    assert_eq!(root.attr("turngate.turn.reason"), "session_closed");
    Ok(())
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_metrics_still_count() -> anyhow::Result<()> {
    let gw = Gateway::start(&[], &[]).await?;
    let client = Client::connect(&gw, true).await?;
    let session_id = client.session_id().await?;
    client.send_event(json!({"type": "turn.start"})).await?;
    client.send_event(json!({"type": "turn.end"})).await?;
    client
        .inbox
        .wait("turn.completed", 1, Duration::from_secs(5))
        .await?;
    client.finish(&gw, &session_id).await?;
    let response = gw.http.get(format!("{}/metrics", gw.base)).send().await?;
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await?;
    for line in [
        "# TYPE turngate_sessions gauge",
        "turngate_sessions 0",
        "turngate_sessions_started_total 1",
        "turngate_turns_started_total{cause=\"client\"} 1",
        "turngate_turns_completed_total{cause=\"client\",status=\"ok\"} 1",
        "turngate_spans_exported_total 0",
        "turngate_spans_dropped_total{reason=\"queue_full\"} 0",
        "# TYPE turngate_backend_request_duration_seconds histogram",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
    }
    // Every sample line is `name{labels} value` with a family declared before it.
    let mut families = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.insert(rest.split(' ').next().unwrap().to_owned());
        } else if !line.starts_with('#') {
            let (name, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>()?;
            let base = name.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| base.strip_suffix(s).filter(|f| families.contains(*f)))
                .unwrap_or(base);
            assert!(families.contains(family), "{line} has no TYPE");
        }
    }
    assert!(!gw.log().contains("export"), "{}", gw.log());
    Ok(())
}

#[tokio::test]
async fn https_and_gzip_over_grpc_start_and_unusable_values_warn() -> anyhow::Result<()> {
    // Nothing listens there: the gateway starts, and exports fail and are counted.
    let endpoint = format!("https://127.0.0.1:{}", free_tcp_port());
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_SDK_DISABLED", "no"),
    ];
    let gw = Gateway::start(&[], &env).await?;
    let client = Client::connect(&gw, true).await?;
    client.session_id().await?;
    client.send_event(json!({"type": "turn.start"})).await?;
    client.send_event(json!({"type": "turn.end"})).await?;
    client
        .inbox
        .wait("turn.completed", 1, Duration::from_secs(5))
        .await?;
    wait_for_dropped_exports(&gw).await?;
    let log = gw.log();
    for var in ["OTEL_TRACES_SAMPLER", "OTEL_SDK_DISABLED"] {
        assert!(
            log.contains(&format!("{var}=")),
            "no warning about {var}:\n{log}"
        );
    }
    Ok(())
}
