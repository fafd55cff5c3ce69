//! Load generator for capacity runs: N concurrent webrtc-rs sessions, each sending
//! pre-encoded Opus packets at exact real-time pacing (packet i at its start plus
//! i × 20 ms, sessions spread across the 20 ms, session k starting k/N of the way into
//! the recording so that their turns do not end all at once), optionally holding client turns
//! (`turn.start` … `turn.end`) with an image uploaded into each. Nothing is encoded
//! while it runs: the packets come from an Ogg Opus file (a turn record's
//! `audio.received.ogg`, or `opusenc` output), or are encoded once, before, from a WAV
//! fixture.
//!
//! Prints one JSON object: whether the run was `lossless` and `real_time` (the verdicts
//! the bench scripts go by), offer-to-connected percentiles as the client saw them,
//! packets sent, the events each session received, the kernel's UDP receive errors
//! during the run, the receiver's CPU and RSS (with `--pid`), the gateway's per-frame
//! latency over the run (from its `turngate_frame_latency_seconds` histogram), the
//! time from each `turn.ended` to the turn's first `response.delta` as the clients
//! received them (with backends configured), and — with the operator
//! credential, or on an open gateway — each session's `frames_received` checked against
//! what it sent. Any other receiver that answers WHIP at `/v1/whip` works too (with
//! `--no-check`: its packet count is read from `GET /stats` if it has one).
//!
//! Offers go `--connect-concurrency` at a time from one address: against a gateway on
//! its defaults (`sessions.max_pending_per_ip = 8`) use 8, or raise its limits as the
//! bench scripts do. With `--turn-ms`, each turn's audio is paced from its own start,
//! after its `turn.start` and image upload: the gaps those take stretch the session a
//! little beyond real time.
//!
//! ```text
//! turngate-load --base http://127.0.0.1:8080 [--sessions 20]
//!   [--seconds 30] [--ogg FILE | --wav NAME] [--connect-concurrency 50] [--pid PID]
//!   [--turn-ms 0] [--image FILE] [--token T | --hs256-secret S] [--admin-token T]
//!   [--no-check]
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::{Value, json};
use turngate_e2e::{Client, Gateway, data, encode_opus, post_offer_with, tokens, wav};

/// The gateway's histogram of its own per-frame latency (receipt to turn buffer).
const FRAME_LATENCY: &str = "turngate_frame_latency_seconds";

struct Args {
    base: String,
    sessions: usize,
    seconds: u64,
    ogg: Option<String>,
    wav: String,
    connect_concurrency: usize,
    pid: Option<u32>,
    turn_ms: u64,
    image: Option<String>,
    token: Option<String>,
    hs256_secret: Option<String>,
    admin_token: Option<String>,
    check: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        base: String::new(),
        sessions: 20,
        seconds: 30,
        ogg: None,
        wav: "two-utterances.wav".into(),
        connect_concurrency: 50,
        pid: None,
        turn_ms: 0,
        image: None,
        token: std::env::var("TURNGATE_TOKEN").ok(),
        hs256_secret: None,
        admin_token: std::env::var("TURNGATE_ADMIN_TOKEN").ok(),
        check: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--no-check" {
            a.check = false;
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--base" => a.base = value,
            "--sessions" => a.sessions = value.parse()?,
            "--seconds" => a.seconds = value.parse()?,
            "--ogg" => a.ogg = Some(value),
            "--wav" => a.wav = value,
            "--connect-concurrency" => a.connect_concurrency = value.parse::<usize>()?.max(1),
            "--pid" => a.pid = Some(value.parse()?),
            "--turn-ms" => a.turn_ms = value.parse()?,
            "--image" => a.image = Some(value),
            "--token" => a.token = Some(value),
            "--hs256-secret" => a.hs256_secret = Some(value),
            "--admin-token" => a.admin_token = Some(value),
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    anyhow::ensure!(!a.base.is_empty(), "--base is required");
    // The CPU window runs from 1 s to 1 s before the end.
    anyhow::ensure!(a.seconds >= 3, "--seconds must be at least 3");
    Ok(a)
}

/// The Opus packets of an Ogg Opus file, in order (the two header packets left out).
fn ogg_packets(path: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {path}"))?;
    let mut reader = ogg::PacketReader::new(std::io::BufReader::new(file));
    let mut packets = Vec::new();
    let mut n = 0;
    while let Some(packet) = reader.read_packet()? {
        n += 1;
        if n > 2 {
            packets.push(packet.data);
        }
    }
    anyhow::ensure!(!packets.is_empty(), "{path} holds no Opus packets");
    Ok(packets)
}

/// (CPU seconds used so far, RSS in KiB) of a process.
fn sample(pid: u32) -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    // Fields after the command: state is [0]; utime [11], stime [12] (clock ticks).
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")?;
    Ok((ticks / 100.0, rss))
}

/// The kernel's UDP `RcvbufErrors` and `InErrors` (`/proc/net/snmp`): datagrams it
/// dropped because a receiver did not read them in time, which no application counts.
fn udp_errors() -> anyhow::Result<(u64, u64)> {
    let snmp = std::fs::read_to_string("/proc/net/snmp")?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = lines
        .next()
        .context("Udp header")?
        .split_whitespace()
        .collect();
    let values: Vec<&str> = lines
        .next()
        .context("Udp values")?
        .split_whitespace()
        .collect();
    let field = |name: &str| -> u64 {
        names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| values.get(i)?.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("RcvbufErrors"), field("InErrors")))
}

/// The `p`-th percentile of sorted, non-empty `values` (nearest rank).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50, p90, p99 and the maximum of `values` (milliseconds), to 0.01; nulls when
/// there are none.
fn percentiles(mut values: Vec<f64>) -> Value {
    if values.is_empty() {
        return json!({"p50": null, "p90": null, "p99": null, "max": null});
    }
    values.sort_by(f64::total_cmp);
    let round = |v: f64| (v * 100.0).round() / 100.0;
    json!({
        "p50": round(percentile(&values, 50.0)),
        "p90": round(percentile(&values, 90.0)),
        "p99": round(percentile(&values, 99.0)),
        "max": round(values[values.len() - 1]),
    })
}

/// The cumulative buckets of a Prometheus histogram on the receiver's `/metrics`, as
/// (upper bound in seconds, count) with `+Inf` last; none before its first observation,
/// or where the receiver has no such histogram (a baseline).
async fn histogram(gw: &Gateway, name: &str) -> Vec<(f64, u64)> {
    let text = async {
        gw.http
            .get(format!("{}/metrics", gw.base))
            .send()
            .await?
            .text()
            .await
    };
    let Ok(text) = text.await else {
        return Vec::new();
    };
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|line| {
            let (le, count) = line.strip_prefix(&prefix)?.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The frames a histogram observed between two reads, and for each percentile asked
/// the upper bound of the bucket it falls in (what a bucketed histogram can say).
fn histogram_delta(before: &[(f64, u64)], after: &[(f64, u64)]) -> Value {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before.iter().find(|(b, _)| b == le).map_or(0, |(_, n)| *n);
            (*le, n.saturating_sub(was))
        })
        .collect();
    let total = delta.last().map_or(0, |(_, n)| *n);
    let bound = |p: f64| {
        let want = (p / 100.0 * total as f64).ceil() as u64;
        delta
            .iter()
            .find(|(_, n)| *n >= want.max(1))
            .map(|(le, _)| {
                if le.is_finite() {
                    json!(le * 1000.0)
                } else {
                    json!("+Inf")
                }
            })
    };
    let within = |ms: f64| {
        delta
            .iter()
            .find(|(le, _)| (le * 1000.0 - ms).abs() < 1e-9)
            .map(|(_, n)| *n as f64 / total.max(1) as f64)
    };
    json!({
        "observed": total,
        "p50_ms_at_most": bound(50.0),
        "p99_ms_at_most": bound(99.0),
        "p999_ms_at_most": bound(99.9),
        "share_within_1ms": within(1.0),
        "share_within_2ms": within(2.0),
    })
}

/// For each turn a client heard end (`turn.ended`) and then answered
/// (`response.delta`), the milliseconds between the two as the client received them,
/// by the turn's end reason. Both travel on the same data channel, so this is the
/// gateway's time from the end of the turn's input (for a VAD turn, the hangover
/// elapsed) to the first token it forwards, backends included. Only turns that ended
/// while every session was still streaming count: when the streams stop together,
/// every session's last turn ends at once, a burst no real load has.
fn end_to_first_delta(clients: &[Arc<Client>], until: Instant) -> Value {
    // By end reason: the turns that ended, and for those answered the milliseconds.
    let mut by_reason: BTreeMap<String, (u64, Vec<f64>)> = BTreeMap::new();
    for client in clients {
        let events = client.inbox.stamped();
        let ended = events
            .iter()
            .filter(|(at, e)| e["type"] == "turn.ended" && *at < until);
        for (ended_at, ended) in ended {
            let reason = ended["reason"].as_str().unwrap_or("?").to_owned();
            let (count, ms) = by_reason.entry(reason).or_default();
            *count += 1;
            let first = events
                .iter()
                .find(|(_, e)| e["type"] == "response.delta" && e["turn_id"] == ended["turn_id"]);
            if let Some((delta_at, _)) = first {
                ms.push(delta_at.saturating_duration_since(*ended_at).as_secs_f64() * 1000.0);
            }
        }
    }
    by_reason
        .into_iter()
        .map(|(reason, (ended, ms))| {
            // Of the turns ended, those answered: a turn without speech, or whose
            // backend failed, gets no response.delta.
            let answered = ms.len();
            let mut summary = percentiles(ms);
            summary["ended"] = json!(ended);
            summary["turns"] = json!(answered);
            (reason, summary)
        })
        .collect::<serde_json::Map<String, Value>>()
        .into()
}

/// `Bearer …` for session `n`: the given token, a token of its own minted with the
/// secret, or none (an open gateway).
fn authorization(a: &Args, n: usize) -> Option<String> {
    match (&a.token, &a.hs256_secret) {
        (Some(token), _) => Some(format!("Bearer {token}")),
        (None, Some(secret)) => Some(format!(
            "Bearer {}",
            tokens::mint_with(
                secret,
                &format!("load-{}-{n}", std::process::id()),
                "whip upload"
            )
        )),
        (None, None) => None,
    }
}

/// One session's connect: the client, and milliseconds from its offer being posted to
/// connected, and to the answer back (the WHIP exchange; the rest is ICE and DTLS). The
/// client's own setup (its certificate, its offer, its ICE gathering) comes before and
/// is not counted.
async fn connect(gw: &Gateway, bearer: Option<String>) -> anyhow::Result<(Client, f64, f64)> {
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("authorization", b.as_str()))
        .collect();
    let (posted, answered) = (std::sync::OnceLock::new(), std::sync::OnceLock::new());
    let (posted_at, answered_at, headers) = (&posted, &answered, &headers);
    let client = Client::connect_with(true, |offer| async move {
        let _ = posted_at.set(Instant::now());
        let (status, location, answer) = post_offer_with(gw, &offer, headers).await?;
        let _ = answered_at.set(Instant::now());
        anyhow::ensure!(status == 201, "WHIP POST gave {status}: {answer}");
        Ok((answer, location.context("no Location")?))
    })
    .await?;
    let connected = Instant::now();
    let posted = *posted.get().context("the offer was never posted")?;
    let ms = |at: Instant| at.duration_since(posted).as_secs_f64() * 1000.0;
    let answer_ms = answered.get().copied().map_or(0.0, ms);
    Ok((client, ms(connected), answer_ms))
}

/// Sends `packets` in real time, looped to fill `seconds` and starting `offset`
/// packets in (so that sessions do not all speak and pause at once), holding a client
/// turn every `turn_ms` (0: none) with `image` uploaded into it.
async fn stream(
    client: &Client,
    packets: &[Vec<u8>],
    offset: usize,
    seconds: u64,
    turn_ms: u64,
    image: Option<&[u8]>,
) -> anyhow::Result<()> {
    let total = (seconds * 50) as usize;
    let looped: Vec<Vec<u8>> = packets
        .iter()
        .cycle()
        .skip(offset)
        .take(total)
        .cloned()
        .collect();
    if turn_ms == 0 {
        return client.send_packets(&looped, &[]).await;
    }
    let per_turn = (turn_ms / 20).max(1) as usize;
    for (n, chunk) in looped.chunks(per_turn).enumerate() {
        client.send_event(json!({"type": "turn.start"})).await?;
        if let Some(image) = image {
            client
                .upload(&format!("load-{n}"), "image/png", image, 16 * 1024)
                .await?;
        }
        client.send_packets(chunk, &[]).await?;
        client.send_event(json!({"type": "turn.end"})).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Arc::new(args()?);
    let gw = Arc::new(Gateway::external(&a.base));
    let packets = match &a.ogg {
        Some(path) => ogg_packets(path)?,
        None => {
            let (rate, pcm) = wav::read(&data(&a.wav))?;
            encode_opus(rate, &pcm)?
        }
    };
    let packets = Arc::new(packets);
    let image = match &a.image {
        Some(path) => Some(Arc::new(std::fs::read(path)?)),
        None => None,
    };
    let idle = a.pid.map(sample).transpose()?;

    // Connect, at most `connect_concurrency` offers at once.
    let connected: Vec<anyhow::Result<(Client, f64, f64)>> =
        futures_util::stream::iter(0..a.sessions)
            .map(|n| {
                let (gw, a) = (Arc::clone(&gw), Arc::clone(&a));
                // A task each: one client's setup does not hold up another's clock.
                let task = tokio::spawn(async move { connect(&gw, authorization(&a, n)).await });
                async move { task.await? }
            })
            .buffer_unordered(a.connect_concurrency)
            .collect()
            .await;
    let mut clients = Vec::new();
    let (mut connect_ms, mut answer_ms) = (Vec::new(), Vec::new());
    let mut failed = Vec::new();
    for result in connected {
        match result {
            Ok((client, ms, answer)) => {
                clients.push(client);
                connect_ms.push(ms);
                answer_ms.push(answer);
            }
            Err(e) => failed.push(e.to_string()),
        }
    }
    // Session ids come in `session.ready` (turngate's); another receiver sends none.
    let mut ids = Vec::new();
    if a.check {
        for client in &clients {
            ids.push(client.session_id().await?);
        }
    }

    // Stream, every session at once, their starts spread across one packet time.
    let udp_before = udp_errors()?;
    let latency_before = histogram(&gw, FRAME_LATENCY).await;
    let spread = Duration::from_millis(20) / (clients.len().max(1) as u32);
    let clients: Vec<Arc<Client>> = clients.into_iter().map(Arc::new).collect();
    let mut tasks = Vec::new();
    for (k, client) in clients.iter().enumerate() {
        let (client, packets, image, a) = (
            Arc::clone(client),
            Arc::clone(&packets),
            image.clone(),
            Arc::clone(&a),
        );
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(spread * k as u32).await;
            // Session k starts k/N of the way into the recording.
            let offset = k * packets.len() / a.sessions.max(1);
            stream(
                &client,
                &packets,
                offset,
                a.seconds,
                a.turn_ms,
                image.as_deref().map(|v| &v[..]),
            )
            .await
        }));
    }
    // The receiver's CPU over a window in which every session streams.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let window_start = (a.pid.map(sample).transpose()?, Instant::now());
    let own_start = sample(std::process::id())?.0;
    tokio::time::sleep(Duration::from_secs(a.seconds.saturating_sub(2).max(1))).await;
    let window_end = (a.pid.map(sample).transpose()?, Instant::now());
    let own_cpu = sample(std::process::id())?.0 - own_start;
    let window_s = window_end.1.duration_since(window_start.1).as_secs_f64();
    // Every session still streams until then (the last starts 20 ms after the first).
    let streaming_until = window_end.1;
    for task in tasks {
        task.await??;
    }
    let sent: Vec<u64> = clients.iter().map(|c| c.packets_sent()).collect();
    let late = clients
        .iter()
        .map(|c| c.packets_late())
        .fold((0, Duration::ZERO), |(n, max), (m, most)| {
            (n + m, max.max(most))
        });
    // Let the last packets land before the counters are read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let udp_after = udp_errors()?;
    let latency_after = histogram(&gw, FRAME_LATENCY).await;
    let frame_latency = if latency_after.is_empty() {
        json!(null)
    } else {
        histogram_delta(&latency_before, &latency_after)
    };

    let mut events: BTreeMap<String, u64> = BTreeMap::new();
    for client in &clients {
        for event in client.inbox.all() {
            let kind = event["type"].as_str().unwrap_or("?").to_owned();
            *events.entry(kind).or_default() += 1;
        }
    }
    let mut checked = json!(null);
    if !a.check {
        // A baseline receiver's own count, where it keeps one (`GET /stats`).
        if let Ok(response) = gw.http.get(format!("{}/stats", gw.base)).send().await
            && let Ok(stats) = response.json::<Value>().await
        {
            // Totals only (a baseline keeps no per-session count): every packet sent
            // counted, and every packet counted decoded.
            let total: u64 = sent.iter().sum();
            let (packets, decoded) = (stats["packets"].as_u64(), stats["decoded"].as_u64());
            let mismatched = if packets == Some(total) && decoded == packets {
                vec![]
            } else {
                vec![json!({"sent": total, "received": packets, "decoded": decoded})]
            };
            checked =
                json!({"frames_received": packets, "decoded": decoded, "mismatched": mismatched});
        }
    } else {
        let mut mismatched = Vec::new();
        let (mut received_total, mut dropped_total, mut undecodable_total) = (0, 0, 0);
        for (id, sent) in ids.iter().zip(&sent) {
            let mut request = gw.http.get(format!("{}/v1/sessions/{id}", gw.base));
            if let Some(token) = &a.admin_token {
                request = request.bearer_auth(token);
            }
            let session: Value = request.send().await?.error_for_status()?.json().await?;
            let counters = &session["counters"];
            let received = counters["frames_received"].as_u64().unwrap_or(0);
            // Received, but dropped before the turn engine (its queue was full) or
            // refused by the decoder.
            let count = |name: &str| counters[name].as_u64().unwrap_or(0);
            let (dropped, undecodable) = (
                count("frames_dropped_backpressure"),
                count("frames_undecodable"),
            );
            received_total += received;
            dropped_total += dropped;
            undecodable_total += undecodable;
            if received != *sent || dropped > 0 || undecodable > 0 {
                mismatched.push(json!({"session_id": id, "sent": sent, "received": received,
                    "dropped": dropped, "undecodable": undecodable}));
            }
        }
        checked = json!({
            "frames_received": received_total,
            "frames_dropped_backpressure": dropped_total,
            "frames_undecodable": undecodable_total,
            "mismatched": mismatched,
        });
    }
    for client in &clients {
        let _ = client.delete(&gw).await;
    }
    let cpu = match window_start.0.zip(window_end.0) {
        Some(((cpu0, _), (cpu1, rss))) => {
            let millicores = (cpu1 - cpu0) / window_s * 1000.0;
            let n = clients.len().max(1) as f64;
            json!({
                "window_s": (window_s * 10.0).round() / 10.0,
                "millicores": (millicores * 10.0).round() / 10.0,
                "millicores_per_session": (millicores / n * 100.0).round() / 100.0,
                "rss_kib_idle": idle.map(|i| i.1),
                "rss_kib_loaded": rss,
                "rss_kib_per_session": idle.map(|i| (rss.saturating_sub(i.1) as f64 / n).round()),
            })
        }
        None => json!(null),
    };
    let round = |v: f64| (v * 10.0).round() / 10.0;
    let sent_total: u64 = sent.iter().sum();
    let udp = (udp_after.0 - udp_before.0, udp_after.1 - udp_before.1);
    // Nothing lost: every session connected, every packet sent counted by the receiver
    // (and none dropped or refused after), none dropped by the kernel.
    let lossless = failed.is_empty()
        && checked["mismatched"].as_array().is_some_and(Vec::is_empty)
        && checked["frames_received"].as_u64() == Some(sent_total)
        && udp == (0, 0);
    // The load offered was real time: at most 1 % of packets sent over 20 ms late.
    let real_time = late.0 * 100 <= sent_total;
    println!(
        "{}",
        json!({
            "sessions": a.sessions,
            "connected": clients.len(),
            "connect_failures": failed,
            "connect_ms": percentiles(connect_ms),
            // Of which the WHIP exchange: the offer posted, the answer back.
            "answer_ms": percentiles(answer_ms),
            "lossless": lossless,
            "real_time": real_time,
            "packets_sent": sent_total,
            // Packets this generator sent more than 20 ms after their time (it was
            // short of CPU: the run no longer offers real-time load), and the worst.
            "packets_sent_late": late.0,
            "max_send_lateness_ms": round(late.1.as_secs_f64() * 1000.0),
            "counters": checked,
            "events": events,
            "udp_rcvbuf_errors": udp.0,
            "udp_in_errors": udp.1,
            "receiver": cpu,
            // Its own CPU over the same window: a load generator near a full core
            // paces late, and the figures above no longer hold.
            "load_generator_millicores": round(own_cpu / window_s * 1000.0),
            "frame_latency": frame_latency,
            "turn_end_to_first_delta_ms": end_to_first_delta(&clients, streaming_until),
        })
    );
    anyhow::ensure!(
        failed.is_empty(),
        "{} sessions did not connect",
        failed.len()
    );
    Ok(())
}
