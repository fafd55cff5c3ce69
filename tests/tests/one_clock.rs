//! One clock: a session task that runs late takes its own inputs (here a turn's
//! report) only after the audio that arrived before them, so a sentence whose frames
//! waited in the ingress queue is not cut into two turns. In-process: the media
//! crate's real answerer and session driver, a real webrtc-rs client, and a downstream
//! consumer that stalls at a chosen moment.

use std::time::Duration;

use tokio::sync::mpsc;
use turngate_core::{StageStatus, Stages};
use turngate_e2e::*;
use turngate_media::session::{Downstream, SessionConfig, SessionEnd, TurnReport};

#[tokio::test]
async fn a_late_session_task_does_not_split_a_sentence() -> anyhow::Result<()> {
    let session_config = SessionConfig {
        ingress_queue: 400,
        downstream_queue: 4,
        ..SessionConfig::default()
    };
    let (client, session) = in_process_session(39_100..=39_199, session_config).await?;
    let shared = session.shared.clone();
    let mut downstream = session.downstream;
    // The consumer: when the second sentence's turn opens, it stops reading for 1.5 s,
    // while the first turn's report reaches the session task.
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let consumer_shared = shared.clone();
    tokio::spawn(async move {
        let mut turns = Vec::new();
        while let Some(item) = downstream.recv().await {
            let Downstream::TurnStarted { turn, .. } = item else {
                continue;
            };
            turns.push(turn.id);
            let _ = seen_tx.send(turn.id);
            if turns.len() == 2 {
                let (shared, first) = (consumer_shared.clone(), turns[0]);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let report = TurnReport {
                        stages: Stages {
                            asr: StageStatus::Skipped,
                            vision: StageStatus::Skipped,
                            llm: StageStatus::Skipped,
                        },
                        answer: None,
                        asr_ms: None,
                        vision_ms: None,
                        llm_first_token_ms: None,
                        llm_total_ms: None,
                        details: Default::default(),
                    };
                    shared.finish_turn(first, report).await
                });
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
        }
    });
    client.session_id().await?;
    client.send_wav("two-utterances.wav").await?;
    let sent = client.packets_sent();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while shared.counters.read().frames_with_fate() < sent && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shared.close(SessionEnd::Deleted);
    tokio::time::timeout(Duration::from_secs(5), shared.wait_ended()).await?;
    client.vanish().await;

    let turns = shared.turns();
    let counts = shared.counters.read();
    assert_eq!(counts.frames_dropped_backpressure, 0, "{counts:?}");
    assert!(seen.try_recv().is_ok(), "the consumer saw the turns");
    assert_eq!(
        turns.len(),
        2,
        "one turn per sentence: {:#?}",
        turns
            .iter()
            .map(|t| (t.number, t.reason, t.started_at, t.ended_at))
            .collect::<Vec<_>>()
    );
    // The report was taken, after the audio that came before it.
    assert_eq!(turns[0].state, turngate_core::TurnState::Completed);
    Ok(())
}
