//! The capacity baseline on the gateway's own WebRTC stack: a WHIP receiver that only
//! reads each session's RTP and decodes it with libopus (at 16 kHz by default, the rate
//! the gateway decodes at, so both do the same decoding work; `--decode-rate 48000` for
//! a receiver that plays audio), on the same `webrtc` crate version and peer setup as
//! the gateway (`turngate_media::peer::answer`). Whatever turngate costs beyond it is
//! turngate's own work: turns, tags, VAD, records, telemetry.
//!
//! `POST /v1/whip` (an SDP offer) answers `201` with `Location: /v1/whip/{n}`;
//! `DELETE /v1/whip/{n}` ends the session; `GET /stats` gives packets received and
//! decoded, gateway-wide.
//!
//! ```text
//! turngate-bare-receiver --listen 127.0.0.1:18081 --media-ports 42000-42999
//!   [--decode-rate 16000]
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use turngate_media::peer::{self, PeerConfig, PeerEvent, PortPool};
use webrtc::media_stream::track_remote::TrackRemoteEvent;
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState};

#[derive(Default)]
struct Receiver {
    sessions: Mutex<HashMap<u64, Arc<dyn PeerConnection>>>,
    next: AtomicU64,
    packets: AtomicU64,
    decoded: AtomicU64,
}

struct App {
    receiver: Receiver,
    /// libopus output rate (Hz).
    decode_rate: u32,
    config: PeerConfig,
    ports: Arc<PortPool>,
}

async fn whip(State(app): State<Arc<App>>, offer: String) -> Response {
    let answered = match peer::answer(&app.config, &app.ports, offer).await {
        Ok(answered) => answered,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let n = app.receiver.next.fetch_add(1, Ordering::Relaxed);
    app.receiver
        .sessions
        .lock()
        .unwrap()
        .insert(n, Arc::clone(&answered.connection));
    let (connection, mut events, port) = (answered.connection, answered.events, answered.port);
    let task_app = Arc::clone(&app);
    tokio::spawn(async move {
        let _port = port;
        while let Some(event) = events.recv().await {
            match event {
                PeerEvent::Track(track) => {
                    let app = Arc::clone(&task_app);
                    tokio::spawn(async move {
                        let mut decoder = opus::Decoder::new(app.decode_rate, opus::Channels::Mono)
                            .expect("a decoder");
                        let mut pcm = vec![0i16; 5760];
                        while let Some(event) = track.poll().await {
                            match event {
                                TrackRemoteEvent::OnRtpPacket(packet) => {
                                    app.receiver.packets.fetch_add(1, Ordering::Relaxed);
                                    if decoder.decode(&packet.payload, &mut pcm, false).is_ok() {
                                        app.receiver.decoded.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                TrackRemoteEvent::OnEnded => break,
                                _ => {}
                            }
                        }
                    });
                }
                PeerEvent::State(
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed,
                ) => break,
                _ => {}
            }
        }
        let _ = connection.close().await;
        task_app.receiver.sessions.lock().unwrap().remove(&n);
    });
    (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_owned()),
            (header::LOCATION, format!("/v1/whip/{n}")),
        ],
        answered.answer,
    )
        .into_response()
}

async fn end(State(app): State<Arc<App>>, Path(n): Path<u64>) -> StatusCode {
    let connection = app.receiver.sessions.lock().unwrap().remove(&n);
    match connection {
        Some(connection) => {
            let _ = connection.close().await;
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn stats(State(app): State<Arc<App>>) -> axum::Json<serde_json::Value> {
    let r = &app.receiver;
    axum::Json(serde_json::json!({
        "sessions": r.sessions.lock().unwrap().len(),
        "packets": r.packets.load(Ordering::Relaxed),
        "decoded": r.decoded.load(Ordering::Relaxed),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut listen: SocketAddr = "127.0.0.1:18081".parse()?;
    let (mut min, mut max) = (42_000u16, 42_999u16);
    let mut decode_rate = 16_000;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = value.parse()?,
            "--media-ports" => {
                let (a, b) = value.split_once('-').context("--media-ports MIN-MAX")?;
                (min, max) = (a.parse()?, b.parse()?);
            }
            "--decode-rate" => decode_rate = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let app = Arc::new(App {
        receiver: Receiver::default(),
        decode_rate,
        // As the gateway's defaults: media on loopback.
        config: PeerConfig {
            ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            data_channel_send_buffer: 256 * 1024,
            ice_disconnected: Duration::from_secs(5),
            ice_failed: Duration::from_secs(25),
        },
        ports: PortPool::new(min..=max),
    });
    let router = Router::new()
        .route("/v1/whip", post(whip))
        .route("/v1/whip/{n}", delete(end))
        .route("/stats", get(stats))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("turngate-bare-receiver listening on {listen}");
    axum::serve(listener, router).await?;
    Ok(())
}
