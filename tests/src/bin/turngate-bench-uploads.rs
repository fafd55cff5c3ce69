//! Image validation under a flood, through the gateway, against the raw decode rate
//! measured in the same run: HEAVY sessions each keep `--in-flight` HTTP uploads of a
//! 1920×1080 PNG screenshot going for SECONDS (in client turns of 28 images, under
//! `uploads.max_per_turn`), while LIGHT sessions post one small image, wait 1.5 s (so
//! its image turn ends) and time each answer. The baseline validates the same screenshot
//! in this process on `--validators` threads, as fast as it can. Prints one JSON line.
//!
//! turngate-bench-uploads --base http://127.0.0.1:18080 --heavy 4 --light 2 --seconds 20

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use turngate_e2e::{Client, Gateway, picture, png};
use turngate_media::image::{ImageLimits, validate};

struct Args {
    base: String,
    heavy: usize,
    light: usize,
    in_flight: usize,
    seconds: u64,
    validators: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        base: String::new(),
        heavy: 4,
        light: 2,
        in_flight: 4,
        seconds: 20,
        validators: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--base" => a.base = value,
            "--heavy" => a.heavy = value.parse()?,
            "--light" => a.light = value.parse()?,
            "--in-flight" => a.in_flight = value.parse()?,
            "--seconds" => a.seconds = value.parse()?,
            "--validators" => a.validators = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    anyhow::ensure!(!a.base.is_empty(), "--base is required");
    Ok(a)
}

/// Images validated per second on `threads` threads for `seconds`.
fn raw_rate(image: &[u8], threads: usize, seconds: u64) -> f64 {
    let done = AtomicU64::new(0);
    let until = Instant::now() + Duration::from_secs(seconds);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while Instant::now() < until {
                    validate(image, &ImageLimits::default()).expect("valid");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    done.load(Ordering::Relaxed) as f64 / seconds as f64
}

/// POSTs an image; its status.
async fn post(gw: &Gateway, client: &Client, image: &[u8]) -> anyhow::Result<u16> {
    let r = gw
        .http
        .post(format!("{}{}/images", gw.base, client.location))
        .header("content-type", "image/png")
        .body(image.to_vec())
        .send()
        .await?;
    Ok(r.status().as_u16())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let screenshot = Arc::new(picture(1920, 1080, image::ImageFormat::Png));
    let small = Arc::new(png(320, 200));
    let raw = tokio::task::spawn_blocking({
        let screenshot = Arc::clone(&screenshot);
        move || raw_rate(&screenshot, a.validators, 5)
    })
    .await?;

    let gw = Arc::new(Gateway::external(&a.base));
    let mut heavy = Vec::new();
    for _ in 0..a.heavy {
        heavy.push(Arc::new(Client::connect(&gw, true).await?));
    }
    let mut light = Vec::new();
    for _ in 0..a.light {
        light.push(Arc::new(Client::connect(&gw, true).await?));
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(a.seconds);
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for client in &heavy {
        let (gw, client, image) = (Arc::clone(&gw), Arc::clone(client), Arc::clone(&screenshot));
        let (accepted, refused) = (Arc::clone(&accepted), Arc::clone(&refused));
        let in_flight = a.in_flight;
        tasks.push(tokio::spawn(async move {
            while tokio::time::Instant::now() < until {
                client
                    .send_event(serde_json::json!({"type": "turn.start"}))
                    .await?;
                let per_worker = 28 / in_flight.max(1);
                let workers = (0..in_flight).map(|_| async {
                    for _ in 0..per_worker {
                        match post(&gw, &client, &image).await? {
                            201 => accepted.fetch_add(1, Ordering::Relaxed),
                            _ => refused.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                    anyhow::Ok(())
                });
                futures_util::future::try_join_all(workers).await?;
                client
                    .send_event(serde_json::json!({"type": "turn.end"}))
                    .await?;
            }
            anyhow::Ok(Vec::new())
        }));
    }
    for client in &light {
        let (gw, client, image) = (Arc::clone(&gw), Arc::clone(client), Arc::clone(&small));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while tokio::time::Instant::now() < until {
                let started = Instant::now();
                let status = post(&gw, &client, &image).await?;
                anyhow::ensure!(status == 201, "a light upload got {status}");
                latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    latencies.sort_by(f64::total_cmp);
    for client in heavy.iter().chain(&light) {
        client.delete(&gw).await?;
    }
    let rate = accepted.load(Ordering::Relaxed) as f64 / a.seconds as f64;
    println!(
        "{}",
        serde_json::json!({
            "heavy_sessions": a.heavy,
            "uploads_in_flight_per_heavy_session": a.in_flight,
            "light_sessions": a.light,
            "window_s": a.seconds,
            "raw_validations_per_s": (raw * 10.0).round() / 10.0,
            "gateway_screenshots_accepted_per_s": (rate * 10.0).round() / 10.0,
            "gateway_vs_raw": (rate / raw * 100.0).round() / 100.0,
            "heavy_refused": refused.load(Ordering::Relaxed),
            "light_uploads": latencies.len(),
            "light_latency_ms_p50": (percentile(&latencies, 0.5) * 10.0).round() / 10.0,
            "light_latency_ms_p99": (percentile(&latencies, 0.99) * 10.0).round() / 10.0,
        })
    );
    Ok(())
}
