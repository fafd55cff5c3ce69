//! Retention and deletion on a local store: whole turns go, by the age their manifest
//! gives or on request; orphans go once old; turns being recorded stay.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use object_store::path::Path;
use turngate_store::Store;
use turngate_store::manifest::{Manifest, Moment, Timings};
use turngate_store::retention::{Removed, Selector, Sweeper, delete, sweep};

const DAY: Duration = Duration::from_secs(86_400);

fn manifest(turn: &str, ended: SystemTime, subject: &str) -> Bytes {
    let m = Manifest {
        turn_id: turn.into(),
        session_id: "s1".into(),
        subject: Some(subject.into()),
        timings: Timings {
            started: Moment {
                at: humantime::format_rfc3339_millis(ended - Duration::from_secs(5)).to_string(),
                offset_ms: 0,
            },
            completed: Some(Moment {
                at: humantime::format_rfc3339_millis(ended).to_string(),
                offset_ms: 5000,
            }),
            ..Timings::default()
        },
        ..Manifest::default()
    };
    Bytes::from(serde_json::to_vec(&m).unwrap())
}

async fn put(store: &Store, key: &str, bytes: Bytes) {
    store.put(&Path::from(key), bytes).await.unwrap();
}

#[tokio::test]
async fn a_sweep_removes_old_turns_whole_and_old_orphans_and_nothing_else() {
    let dir = std::env::temp_dir().join(format!("turngate-retention-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(dir.to_str().unwrap()).unwrap();
    let now = SystemTime::now();
    let turn = |t: &str| format!("sessions/s1/turns/{t}");
    // An old turn, a recent one, an old orphan, and an old turn still being recorded.
    put(
        &store,
        &format!("{}/manifest.json", turn("old")),
        manifest("old", now - 40 * DAY, "alice"),
    )
    .await;
    put(
        &store,
        &format!("{}/audio.asr.wav", turn("old")),
        Bytes::from_static(b"RIFF"),
    )
    .await;
    put(
        &store,
        "turns/old",
        Bytes::from_static(br#"{"session_id":"s1"}"#),
    )
    .await;
    put(
        &store,
        &format!("{}/manifest.json", turn("new")),
        manifest("new", now, "bob"),
    )
    .await;
    put(
        &store,
        &format!("{}/images/a.png", turn("new")),
        Bytes::from_static(b"png"),
    )
    .await;
    put(
        &store,
        &format!("{}/audio/received/000000.ogg", turn("orphan")),
        Bytes::from_static(b"OggS"),
    )
    .await;
    put(
        &store,
        &format!("{}/audio/received/000000.ogg", turn("live")),
        Bytes::from_static(b"OggS"),
    )
    .await;
    put(&store, "open/node-a/live", Bytes::from_static(b"{}")).await;
    for t in ["orphan", "live"] {
        let file = std::fs::File::options()
            .write(true)
            .open(dir.join(format!("{}/audio/received/000000.ogg", turn(t))))
            .unwrap();
        file.set_modified(now - 40 * DAY).unwrap();
    }

    let removed = sweep(&store, 30 * DAY, now).await.unwrap();
    assert_eq!(
        removed,
        Removed {
            turns: 1,
            orphans: 1,
            objects: 4,
            open: 0
        }
    );
    assert!(!dir.join(turn("old")).join("manifest.json").exists());
    assert!(!dir.join(turn("old")).join("audio.asr.wav").exists());
    assert!(
        !dir.join("turns/old").exists(),
        "the index goes with its turn"
    );
    assert!(
        !dir.join(turn("orphan"))
            .join("audio/received/000000.ogg")
            .exists()
    );
    assert!(dir.join(turn("new")).join("images/a.png").exists());
    assert!(
        dir.join(turn("live"))
            .join("audio/received/000000.ogg")
            .exists()
    );
    // Nothing more to do.
    assert_eq!(
        sweep(&store, 30 * DAY, now).await.unwrap(),
        Removed::default()
    );

    // On request: by subject, then by session.
    let removed = delete(&store, &Selector::Subject("bob".into()))
        .await
        .unwrap();
    assert_eq!((removed.turns, removed.objects), (1, 2));
    assert!(!dir.join(turn("new")).join("manifest.json").exists());
    // A turn being recorded is left alone: its node would write it back.
    let removed = delete(&store, &Selector::Session("s1".into()))
        .await
        .unwrap();
    assert_eq!((removed.turns, removed.open), (0, 1));
    assert!(
        dir.join(turn("live"))
            .join("audio/received/000000.ogg")
            .exists()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_sweeper_reads_each_manifest_once_and_ages_it_from_its_end() {
    let dir = std::env::temp_dir().join(format!("turngate-sweeper-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(dir.to_str().unwrap()).unwrap();
    let now = SystemTime::now();
    let key = "sessions/s1/turns/mid/manifest.json";
    // An empty store: nothing to do, no error.
    assert_eq!(
        sweep(&store, 30 * DAY, now).await.unwrap(),
        Removed::default()
    );
    // Ended 20 days ago (recovered late: written now).
    put(&store, key, manifest("mid", now - 20 * DAY, "carol")).await;
    let written = std::fs::metadata(dir.join(key))
        .unwrap()
        .modified()
        .unwrap();

    let mut sweeper = Sweeper::default();
    assert_eq!(
        sweeper.sweep(&store, 30 * DAY, now).await.unwrap(),
        Removed::default()
    );
    // The manifest's bytes change behind the sweeper's back, its writing time does
    // not: the sweeper goes by the end time it read, where a fresh pass would read the
    // new bytes (no end time: aged from its writing, so kept).
    std::fs::write(dir.join(key), b"not json").unwrap();
    std::fs::File::options()
        .write(true)
        .open(dir.join(key))
        .unwrap()
        .set_modified(written)
        .unwrap();
    let later = now + 15 * DAY;
    assert_eq!(
        sweep(&store, 30 * DAY, later).await.unwrap(),
        Removed::default()
    );
    let removed = sweeper.sweep(&store, 30 * DAY, later).await.unwrap();
    assert_eq!((removed.turns, removed.objects), (1, 1));
    assert!(!dir.join(key).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_turn_id_being_recorded_in_one_session_holds_up_only_that_sessions_record() {
    let dir = std::env::temp_dir().join(format!("turngate-open-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(dir.to_str().unwrap()).unwrap();
    let now = SystemTime::now();
    // Turn id "x" recorded whole by sessions a and b; session c records it now and has
    // stored nothing yet.
    for s in ["a", "b"] {
        let key = format!("sessions/{s}/turns/x/manifest.json");
        put(&store, &key, manifest("x", now, "bob")).await;
    }
    put(
        &store,
        "open/node-1/x/c",
        Bytes::from_static(b"{\"subject\":\"carol\"}"),
    )
    .await;

    let removed = delete(&store, &Selector::Session("a".into()))
        .await
        .unwrap();
    assert_eq!((removed.turns, removed.open), (1, 0));
    let removed = delete(&store, &Selector::Turn("x".into())).await.unwrap();
    assert_eq!(
        (removed.turns, removed.open),
        (1, 1),
        "b's deleted, c's held"
    );
    assert!(!dir.join("sessions/b/turns/x/manifest.json").exists());
    let removed = delete(&store, &Selector::Subject("carol".into()))
        .await
        .unwrap();
    assert_eq!((removed.turns, removed.open), (0, 1));
    let removed = delete(&store, &Selector::Session("c".into()))
        .await
        .unwrap();
    assert_eq!((removed.turns, removed.open), (0, 1));
    let _ = std::fs::remove_dir_all(&dir);
}
