//! A stalled downstream consumer forces real back-pressure drops before the turn
//! engine, and every frame is still accounted for. In-process: the media crate's real
//! answerer and session driver, a real webrtc-rs client, and a consumer that never reads.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use turngate_e2e::*;
use turngate_media::session::{SessionConfig, SessionEnd};

#[tokio::test]
async fn a_stalled_consumer_forces_counted_drops_and_the_identity_holds() -> anyhow::Result<()> {
    let session_config = SessionConfig {
        ingress_queue: 8,
        downstream_queue: 4,
        ..SessionConfig::default()
    };
    let (client, session) = in_process_session(39_000..=39_099, session_config).await?;
    // The consumer: holds the downstream queue and never reads it.
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
