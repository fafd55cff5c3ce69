//! Load generator: N webrtc-rs clients on loopback, each sending a speech fixture as
//! Opus in real time (looped), while the gateway's CPU time and RSS are sampled from
//! /proc. Prints one JSON line.
//!
//! turngate-load --base http://127.0.0.1:18080 --pid PID --sessions 20 --seconds 30

use std::time::Duration;

use anyhow::Context;
use turngate_e2e::{Client, Gateway, data, encode_opus, wav};

struct Args {
    base: String,
    pid: u32,
    sessions: usize,
    seconds: u64,
    wav: String,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        base: String::new(),
        pid: 0,
        sessions: 20,
        seconds: 30,
        wav: "two-utterances.wav".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--base" => a.base = value,
            "--pid" => a.pid = value.parse()?,
            "--sessions" => a.sessions = value.parse()?,
            "--seconds" => a.seconds = value.parse()?,
            "--wav" => a.wav = value,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    anyhow::ensure!(
        !a.base.is_empty() && a.pid != 0,
        "--base and --pid are required"
    );
    Ok(a)
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let gw = Gateway::external(&a.base);
    let (rate, pcm) = wav::read(&data(&a.wav))?;
    let packets = encode_opus(rate, &pcm)?;
    let (_, rss_idle) = sample(a.pid)?;
    let mut clients = Vec::new();
    for _ in 0..a.sessions {
        clients.push(Client::connect(&gw, true).await?);
    }
    // Let setup settle, then measure a steady window while every client sends.
    let total = (a.seconds * 50) as usize + 100;
    let looped: Vec<Vec<u8>> = packets.iter().cycle().take(total).cloned().collect();
    let mut tasks = Vec::new();
    for client in clients {
        let looped = looped.clone();
        tasks.push(tokio::spawn(async move {
            client.send_packets(&looped, &[]).await.map(|_| client)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu0, _) = sample(a.pid)?;
    let t0 = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let (cpu1, rss_loaded) = sample(a.pid)?;
    let wall = t0.elapsed().as_secs_f64();
    let mut sent = 0;
    for task in tasks {
        let client = task.await??;
        sent += client.packets_sent();
        client.delete(&gw).await?;
    }
    let (_, list) = gw.get("/v1/sessions?limit=1000").await?;
    let received: u64 = list["sessions"]
        .as_array()
        .context("sessions")?
        .iter()
        .filter_map(|s| s["counters"]["frames_received"].as_u64())
        .sum();
    let millicores = (cpu1 - cpu0) / wall * 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "sessions": a.sessions,
            "window_s": (wall * 10.0).round() / 10.0,
            "gateway_cpu_millicores": (millicores * 10.0).round() / 10.0,
            "gateway_cpu_millicores_per_session": (millicores / a.sessions.max(1) as f64 * 100.0).round() / 100.0,
            "gateway_rss_kib_before": rss_idle,
            "gateway_rss_kib_loaded": rss_loaded,
            "packets_sent": sent,
            "frames_received_all_sessions": received,
        })
    );
    Ok(())
}
