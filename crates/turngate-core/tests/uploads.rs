//! The chunk reassembler and the tagging rule for images, sans-IO.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sha2::{Digest, Sha256};
use turngate_core::upload::*;
use turngate_core::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn turn() -> TurnId {
    "0af7651916cd43dd8448eb211c80319c".parse().unwrap()
}

fn begin(id: &str, size: u64) -> UploadBegin {
    UploadBegin {
        upload_id: id.into(),
        mime: "image/png".into(),
        size,
        sha256: None,
        turn_id: None,
    }
}

fn received(outcome: EndOutcome) -> Received {
    match outcome {
        EndOutcome::Received(r) => r,
        EndOutcome::Aborted(a) => panic!("aborted: {a:?}"),
    }
}

fn aborted_code(outcome: EndOutcome) -> ErrorCode {
    match outcome {
        EndOutcome::Aborted(a) => a.error.code(),
        EndOutcome::Received(_) => panic!("received"),
    }
}

#[test]
fn a_declared_upload_reassembles_and_hashes() {
    let mut r = Reassembler::new(UploadLimits::default());
    let bytes = b"0123456789".to_vec();
    let sha: [u8; 32] = Sha256::digest(&bytes).into();
    r.begin(
        ms(0),
        UploadBegin {
            sha256: Some(sha),
            ..begin("a", 10)
        },
        turn(),
    )
    .unwrap();
    r.chunk(&frame_chunk("a", &bytes[..4])).unwrap();
    r.chunk(&frame_chunk("a", &bytes[4..])).unwrap();
    let got = received(r.end("a").unwrap());
    assert_eq!(&got.bytes[..], &bytes[..]);
    assert_eq!(got.sha256, sha);
    assert_eq!(got.turn_id, turn());
    // Held (and counted) until its validation is over.
    assert_eq!(r.open_uploads(), 1);
    r.release("a");
    assert_eq!(r.open_uploads(), 0);
}

#[test]
fn each_bad_upload_gets_its_code() {
    let limits = UploadLimits {
        max_concurrent: 2,
        max_in_flight_bytes: 100,
        ..UploadLimits::default()
    };
    let mut r = Reassembler::new(limits);
    assert_eq!(
        r.check(&begin("", 5)).unwrap_err().code(),
        ErrorCode::MalformedMessage
    );
    assert_eq!(
        r.check(&begin(&"x".repeat(65), 5)).unwrap_err().code(),
        ErrorCode::MalformedMessage
    );
    assert_eq!(
        r.check(&begin("a", 0)).unwrap_err().code(),
        ErrorCode::SizeRequired
    );
    assert_eq!(
        r.check(&begin("a", 21 * 1024 * 1024)).unwrap_err().code(),
        ErrorCode::ImageTooLarge
    );
    r.begin(ms(0), begin("a", 60), turn()).unwrap();
    assert_eq!(
        r.check(&begin("a", 5)).unwrap_err().code(),
        ErrorCode::DuplicateUploadId
    );
    assert_eq!(
        r.check(&begin("b", 50)).unwrap_err().code(),
        ErrorCode::UploadBudgetExceeded
    );
    r.begin(ms(0), begin("b", 5), turn()).unwrap();
    assert_eq!(
        r.check(&begin("c", 5)).unwrap_err().code(),
        ErrorCode::TooManyUploads
    );
    // More bytes than declared aborts; later chunks of it are dropped quietly.
    match r.chunk(&frame_chunk("b", b"123456")).unwrap() {
        ChunkOutcome::Aborted(a) => assert_eq!(a.error.code(), ErrorCode::SizeExceeded),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        r.chunk(&frame_chunk("b", b"1")).unwrap(),
        ChunkOutcome::Dropped
    );
    assert_eq!(
        r.chunk(&frame_chunk("zz", b"1")).unwrap_err().code(),
        ErrorCode::UnknownUpload
    );
    assert_eq!(r.end("zz").unwrap_err().code(), ErrorCode::UnknownUpload);
    assert_eq!(
        r.chunk(&[]).unwrap_err().code(),
        ErrorCode::MalformedMessage
    );
    assert_eq!(
        r.chunk(&[0, 1, 2]).unwrap_err().code(),
        ErrorCode::MalformedMessage
    );
    assert_eq!(
        r.chunk(&[9, b'a']).unwrap_err().code(),
        ErrorCode::MalformedMessage
    );
    // Fewer bytes than declared.
    r.chunk(&frame_chunk("a", b"abc")).unwrap();
    assert_eq!(aborted_code(r.end("a").unwrap()), ErrorCode::SizeMismatch);
    // A wrong hash.
    r.begin(
        ms(0),
        UploadBegin {
            sha256: Some([7; 32]),
            ..begin("d", 3)
        },
        turn(),
    )
    .unwrap();
    r.chunk(&frame_chunk("d", b"abc")).unwrap();
    assert_eq!(aborted_code(r.end("d").unwrap()), ErrorCode::Sha256Mismatch);
    assert_eq!(r.open_uploads(), 0);
}

#[test]
fn uploads_time_out_and_are_abandoned_with_their_bytes_counted() {
    let mut r = Reassembler::new(UploadLimits::default());
    r.begin(ms(0), begin("slow", 100), turn()).unwrap();
    r.chunk(&frame_chunk("slow", &[1; 40])).unwrap();
    r.begin(ms(10_000), begin("other", 100), turn()).unwrap();
    assert_eq!(r.poll_timeout(), Some(ms(30_000)));
    assert!(r.expire(ms(29_999)).is_empty());
    let expired = r.expire(ms(30_000));
    assert_eq!(expired.len(), 1);
    assert_eq!(
        (expired[0].upload_id.as_str(), expired[0].bytes_freed),
        ("slow", 40)
    );
    assert_eq!(expired[0].error.code(), ErrorCode::UploadTimeout);
    r.chunk(&frame_chunk("other", &[1; 7])).unwrap();
    let abandoned = r.abandon_all();
    assert_eq!(abandoned.len(), 1);
    assert_eq!(
        (abandoned[0].bytes_freed, abandoned[0].error.code()),
        (7, ErrorCode::UploadAbandoned)
    );
    // The budget is free again.
    assert!(r.check(&begin("again", 60 * 1024 * 1024)).is_err());
    assert!(r.check(&begin("again", 20 * 1024 * 1024)).is_ok());
}

proptest! {
    /// Any chunking and any interleaving of several uploads reassembles each exactly;
    /// abandoned ones free what they held and never appear as received.
    #[test]
    fn any_chunking_and_interleaving_reassembles(
        blobs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..2000), 1..4),
        cuts in proptest::collection::vec(1usize..700, 1..40),
        order_seed in any::<u64>(),
        abandon in proptest::collection::vec(any::<bool>(), 4),
    ) {
        let mut r = Reassembler::new(UploadLimits::default());
        let ids: Vec<String> = (0..blobs.len()).map(|i| format!("upload-{i}")).collect();
        for (id, blob) in ids.iter().zip(&blobs) {
            let sha: [u8; 32] = Sha256::digest(blob).into();
            r.begin(ms(0), UploadBegin { sha256: Some(sha), ..begin(id, blob.len() as u64) }, turn()).unwrap();
        }
        // Chunk every blob by the cut sizes, then interleave the chunk streams.
        let mut streams: Vec<Vec<Vec<u8>>> = blobs.iter().zip(&ids).map(|(blob, id)| {
            let mut chunks = Vec::new();
            let mut at = 0;
            let mut k = 0;
            while at < blob.len() {
                let n = cuts[k % cuts.len()].min(blob.len() - at);
                chunks.push(frame_chunk(id, &blob[at..at + n]));
                at += n;
                k += 1;
            }
            chunks.reverse();
            chunks
        }).collect();
        let mut rng = StdRng::seed_from_u64(order_seed);
        while streams.iter().any(|s| !s.is_empty()) {
            let live: Vec<usize> = (0..streams.len()).filter(|&i| !streams[i].is_empty()).collect();
            let pick = live[(rand::RngExt::random::<u32>(&mut rng) as usize) % live.len()];
            let chunk = streams[pick].pop().unwrap();
            prop_assert_eq!(r.chunk(&chunk).unwrap(), ChunkOutcome::Appended);
        }
        let mut freed = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            if abandon[i] {
                continue;
            }
            let got = received(r.end(id).unwrap());
            prop_assert_eq!(&got.bytes[..], &blobs[i][..]);
        }
        for a in r.abandon_all() {
            freed.insert(a.upload_id.clone(), a.bytes_freed);
        }
        for (i, id) in ids.iter().enumerate() {
            prop_assert_eq!(freed.get(id).copied(), abandon[i].then_some(blobs[i].len() as u64));
        }
        prop_assert_eq!(r.open_uploads(), 0);
    }
}

// ---- the tagging rule -------------------------------------------------------------

fn engine() -> TurnEngine<StdRng> {
    let session = SessionId::mint(1, &mut StdRng::seed_from_u64(1));
    TurnEngine::new(
        TurnConfig::default(),
        session,
        1_700_000_000_000,
        StdRng::seed_from_u64(2),
    )
}

fn outputs(e: &mut TurnEngine<StdRng>) -> Vec<Output> {
    std::iter::from_fn(|| e.poll_output()).collect()
}

fn frame(n: u64) -> AudioFrame {
    AudioFrame {
        rtp_seq: n as u16,
        rtp_timestamp: (n * 960) as u32,
        payload: bytes::Bytes::new(),
        pcm: vec![0; 320],
        concealed_samples: 0,
    }
}

#[test]
fn an_upload_while_idle_opens_an_image_turn_that_speech_joins() {
    let mut e = engine();
    let t = e.handle_upload_started(ms(1000), None).unwrap();
    let started = outputs(&mut e);
    assert!(matches!(&started[0], Output::TurnStarted(i) if i.cause == Cause::Image && i.id == t));
    e.handle_upload_finished(ms(1200), t).unwrap();
    // Speech 500 ms later (before the hangover passed) joins the turn.
    for i in 0..40 {
        e.handle_frame(ms(1700 + 20 * i), frame(i), true);
    }
    let out = outputs(&mut e);
    assert!(
        out.iter().all(|o| !matches!(o, Output::TurnStarted(_))),
        "speech opened no new turn"
    );
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Frame(f) if f.turn_id == Some(t)))
    );
    // Then silence: the image turn ends after the hangover (and pre-roll), as idle.
    e.handle_tick(ms(5000));
    let ended: Vec<_> = outputs(&mut e)
        .into_iter()
        .filter_map(|o| match o {
            Output::TurnEnded(i) => Some(i),
            _ => None,
        })
        .collect();
    assert_eq!(ended[0].reason, Some(EndReason::Idle));
    assert_eq!(ended[0].ended_at, Some(ms(1700 + 20 * 39 + 700 + 300)));
}

#[test]
fn an_image_turn_without_speech_ends_after_hangover_and_preroll() {
    let mut e = engine();
    let t = e.handle_upload_started(ms(0), None).unwrap();
    e.handle_tick(ms(5000));
    assert!(
        e.open_turn().is_some(),
        "an open upload holds the turn open"
    );
    e.handle_upload_finished(ms(6000), t).unwrap();
    e.handle_tick(ms(6999));
    assert!(e.open_turn().is_some());
    e.handle_tick(ms(7000));
    assert!(e.open_turn().is_none());
    assert_eq!(e.turns()[0].reason, Some(EndReason::Idle));
    assert!(e.turns()[0].processing_started_at.is_some());
}

#[test]
fn an_upload_during_a_turn_belongs_to_it_and_holds_its_processing() {
    let mut e = engine();
    let t = e.handle_turn_start(ms(0), None, None).unwrap();
    assert_eq!(e.handle_upload_started(ms(100), None).unwrap(), t);
    e.handle_turn_end(ms(200), None).unwrap();
    let out = outputs(&mut e);
    assert!(out.iter().any(|o| matches!(o, Output::TurnEnded(_))));
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::ProcessingStarted(_))),
        "the upload is still open"
    );
    // The client may still name the ended turn...
    assert_eq!(e.handle_upload_started(ms(250), Some(t)).unwrap(), t);
    e.handle_upload_finished(ms(300), t).unwrap();
    assert!(outputs(&mut e).is_empty());
    e.handle_upload_finished(ms(400), t).unwrap();
    assert!(matches!(&outputs(&mut e)[..], [Output::ProcessingStarted(i)] if i.id == t));
    // ...but not once its processing has started.
    assert_eq!(
        e.handle_upload_started(ms(500), Some(t))
            .unwrap_err()
            .code(),
        ErrorCode::TurnClosed
    );
    let unknown: TurnId = "1af7651916cd43dd8448eb211c80319c".parse().unwrap();
    assert_eq!(
        e.handle_upload_started(ms(500), Some(unknown))
            .unwrap_err()
            .code(),
        ErrorCode::UnknownTurn
    );
}

#[test]
fn turn_end_ends_an_image_turn() {
    let mut e = engine();
    let t = e.handle_upload_started(ms(0), None).unwrap();
    e.handle_upload_finished(ms(10), t).unwrap();
    assert_eq!(e.handle_turn_end(ms(20), None).unwrap(), t);
    assert_eq!(e.turns()[0].reason, Some(EndReason::ClientEnd));
}

#[test]
fn a_turn_takes_at_most_max_uploads_per_turn() {
    let session = SessionId::mint(1, &mut StdRng::seed_from_u64(1));
    let config = TurnConfig {
        max_uploads_per_turn: 2,
        ..TurnConfig::default()
    };
    let mut e = TurnEngine::new(config, session, 1, StdRng::seed_from_u64(2));
    let t = e.handle_turn_start(ms(0), None, None).unwrap();
    for i in 0..2 {
        assert_eq!(e.handle_upload_started(ms(10 + i), None).unwrap(), t);
        e.handle_upload_finished(ms(20 + i), t).unwrap();
    }
    assert_eq!(
        e.handle_upload_started(ms(30), None).unwrap_err().code(),
        ErrorCode::TooManyUploads
    );
}
