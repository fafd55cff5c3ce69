//! A stalled downstream consumer forces real back-pressure drops before the turn
//! engine, and every frame is still accounted for. In-process: the media crate's real
//! answerer and session driver, a real webrtc-rs client, and a consumer that never reads.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use turngate_e2e::*;
use turngate_media::peer::{self, PeerConfig, PortPool};
use turngate_media::session::{self, SessionConfig, SessionEnd};

#[tokio::test]
async fn a_stalled_consumer_forces_counted_drops_and_the_identity_holds() -> anyhow::Result<()> {
    let ports = PortPool::new(39_000..=39_099);
    let config = PeerConfig {
        ips: vec!["127.0.0.1".parse()?],
        data_channel_send_buffer: 64 * 1024,
        ice_disconnected: Duration::from_secs(5),
        ice_failed: Duration::from_secs(25),
    };
    let session_config = SessionConfig {
        ingress_queue: 8,
        downstream_queue: 4,
        ..SessionConfig::default()
    };
    let mut started = None;
    let client = Client::connect_with(true, |offer| {
        let (ports, config, started) = (&ports, &config, &mut started);
        async move {
            let answered = peer::answer(config, ports, offer).await?;
            let answer = answered.answer.clone();
            *started = Some(session::start(session_config, answered, &mut rand::rng())?);
            Ok((answer, "/in-process".to_owned()))
        }
    })
    .await?;
    // The consumer: holds the downstream queue and never reads it.
    let session = started.expect("session started");
    client.session_id().await?;
    client.send_wav("speech.wav").await?;
    let shared = &session.shared;
    let sent = client.packets_sent();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while shared.counters.frames_received.load(Relaxed) < sent
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shared.close(SessionEnd::Deleted);
    tokio::time::timeout(Duration::from_secs(5), shared.wait_ended()).await?;
    client.vanish().await;

    let c = &shared.counters;
    let (received, in_turns, idle, dropped, undecodable) = (
        c.frames_received.load(Relaxed),
        c.frames_in_turns.load(Relaxed),
        c.idle_frames_discarded.load(Relaxed),
        c.frames_dropped_backpressure.load(Relaxed),
        c.frames_undecodable.load(Relaxed),
    );
    assert_eq!(received, sent);
    assert!(dropped > 20, "expected back-pressure drops, got {dropped}");
    assert!(
        in_turns > 0,
        "the turn opened before the consumer stalled everything"
    );
    assert_eq!(received, in_turns + idle + dropped + undecodable);
    drop(session.downstream);
    Ok(())
}
