//! Scenario and property tests of the turn engine on simulated time.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use turngate_core::*;

const FRAME: Duration = Duration::from_millis(20);

const OK: Stages = Stages {
    asr: StageStatus::Ok,
    vision: StageStatus::Skipped,
    llm: StageStatus::Ok,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn engine() -> TurnEngine<StdRng> {
    let session = SessionId::mint(1_700_000_000_000, &mut StdRng::seed_from_u64(1));
    TurnEngine::new(
        TurnConfig::default(),
        session,
        1_700_000_000_000,
        StdRng::seed_from_u64(2),
    )
}

fn frame(n: u64) -> AudioFrame {
    AudioFrame {
        rtp_seq: n as u16,
        rtp_timestamp: (n * 960) as u32,
        payload: Bytes::from(vec![n as u8]),
        pcm: vec![0; 320],
        concealed_samples: 0,
    }
}

/// Drives an engine and records what came out.
struct Harness {
    engine: TurnEngine<StdRng>,
    frames: Vec<Tagged<AudioFrame>>,
    events: Vec<Output>,
    sent: u64,
}

impl Harness {
    fn new() -> Self {
        Self {
            engine: engine(),
            frames: Vec::new(),
            events: Vec::new(),
            sent: 0,
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Frame(f) => self.frames.push(f),
                other => self.events.push(other),
            }
        }
    }

    /// Sends frames every 20 ms from `from` for `dur`, voiced or not.
    fn audio(&mut self, from: Duration, dur: Duration, voiced: bool) -> Duration {
        let mut at = from;
        while at < from + dur {
            self.engine.handle_frame(at, frame(self.sent), voiced);
            self.sent += 1;
            self.drain();
            at += FRAME;
        }
        at
    }

    fn tick(&mut self, at: Duration) {
        self.engine.handle_tick(at);
        self.drain();
    }

    fn started(&self) -> Vec<TurnInfo> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Output::TurnStarted(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    fn ended(&self) -> Vec<TurnInfo> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Output::TurnEnded(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn two_utterances_make_two_vad_turns_with_preroll() {
    let mut h = Harness::new();
    let t = h.audio(ms(0), ms(1000), false);
    let t = h.audio(t, ms(800), true);
    let t = h.audio(t, ms(1500), false);
    let t = h.audio(t, ms(600), true);
    h.audio(t, ms(1500), false);
    let started = h.started();
    let ended = h.ended();
    assert_eq!(started.len(), 2);
    assert_eq!(ended.len(), 2);
    assert!(started.iter().all(|t| t.cause == Cause::Vad));
    assert!(
        ended
            .iter()
            .all(|t| t.reason == Some(EndReason::EndOfSpeech))
    );
    // Pre-roll: the onset frame is the fourth voiced frame (60 ms after the first, at
    // 1060 ms); the turn starts with the frames of the 300 ms up to and including it.
    assert_eq!(started[0].started_at, ms(1060 - 300 + 20));
    // It ends 700 ms after the last voiced frame.
    assert_eq!(ended[0].ended_at, Some(ms(1780 + 700)));
    assert_eq!(started[0].number, 1);
    assert_eq!(started[1].number, 2);
    // The turn holds its pre-roll before speech (780..1000), its speech (1000..1800)
    // and the hangover's frames (1800..2480; the frame at 2480 is past the end).
    assert_eq!(
        ended[0].frames,
        (1000 - 780) / 20 + 800 / 20 + (2480 - 1800) / 20
    );
    let c = h.engine.counters();
    assert_eq!(
        c.frames_in_turns + c.idle_frames_discarded + c.frames_held,
        h.sent
    );
}

#[test]
fn silence_without_packets_ends_a_vad_turn_on_tick() {
    let mut h = Harness::new();
    let t = h.audio(ms(0), ms(500), true);
    assert_eq!(h.started().len(), 1);
    assert_eq!(h.engine.poll_timeout(), Some(t - FRAME + ms(700)));
    h.tick(t + ms(100));
    assert!(h.ended().is_empty());
    h.tick(t + ms(1000));
    assert_eq!(h.ended()[0].reason, Some(EndReason::EndOfSpeech));
    assert_eq!(h.ended()[0].ended_at, Some(t - FRAME + ms(700)));
}

#[test]
fn client_turn_uses_client_id_and_ignores_vad() {
    let mut h = Harness::new();
    let id: TurnId = "0af7651916cd43dd8448eb211c80319c".parse().unwrap();
    let got = h.engine.handle_turn_start(ms(0), Some(id), None).unwrap();
    assert_eq!(got, id);
    let t = h.audio(ms(0), ms(400), true);
    let t = h.audio(t, ms(2000), false); // longer than the hangover: VAD does not close it
    assert!(h.ended().is_empty());
    assert_eq!(h.engine.handle_turn_end(t, None).unwrap(), id);
    h.drain();
    let ended = h.ended();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].reason, Some(EndReason::ClientEnd));
    assert_eq!(ended[0].frames as u64, h.sent);
    assert_eq!(h.started().len(), 1);
    // The id is now used, and no client turn is open.
    assert_eq!(
        h.engine
            .handle_turn_start(t, Some(id), None)
            .unwrap_err()
            .code(),
        ErrorCode::DuplicateTurnId
    );
    assert_eq!(
        h.engine.handle_turn_end(t, None).unwrap_err().code(),
        ErrorCode::NoOpenTurn
    );
}

#[test]
fn a_vad_turn_knows_when_speech_began_and_ended() {
    let mut h = Harness::new();
    let t = h.audio(ms(0), ms(1000), false);
    let speech = t;
    let t = h.audio(t, ms(800), true);
    let last_voiced = t - FRAME;
    let t = h.audio(t, ms(1500), false);
    h.tick(t);
    let (started, ended) = (h.started(), h.ended());
    assert_eq!((started.len(), ended.len()), (1, 1));
    // The turn starts with its pre-roll, before the speech that opened it.
    assert_eq!(started[0].speech_started_at, Some(speech));
    assert!(started[0].started_at < speech);
    assert_eq!(ended[0].reason, Some(EndReason::EndOfSpeech));
    assert_eq!(ended[0].speech_ended_at, Some(last_voiced));
    assert_eq!(
        ended[0].ended_at,
        Some(last_voiced + TurnConfig::default().hangover)
    );
    // Client turns have neither.
    let mut h = Harness::new();
    h.engine.handle_turn_start(ms(0), None, None).unwrap();
    let t = h.audio(ms(0), ms(500), true);
    h.engine.handle_turn_end(t, None).unwrap();
    h.drain();
    assert_eq!(
        (h.ended()[0].speech_started_at, h.ended()[0].speech_ended_at),
        (None, None)
    );
}

#[test]
fn the_sampler_decides_each_turns_sampled_flag_when_it_opens() {
    // Sample turns whose id ends in an odd digit; the client's flag is overridden.
    let mut h = Harness::new();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&seen);
    h.engine = engine().with_sampler(Some(TurnSampler::new(move |id, parent| {
        record.lock().unwrap().push((id, parent));
        id.to_bytes()[15] % 2 == 1
    })));
    let tp: TraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        .parse()
        .unwrap();
    let mut t = ms(0);
    h.engine.handle_turn_start(t, None, Some(tp)).unwrap();
    for _ in 0..20 {
        t += ms(10);
        h.engine.handle_turn_end(t, None).unwrap();
        h.engine.handle_turn_start(t, None, None).unwrap();
    }
    h.drain();
    let started = h.started();
    assert_eq!(started.len(), 21);
    assert_eq!(seen.lock().unwrap()[0], (tp.trace_id, Some(tp)));
    for turn in &started {
        let sampled = turn.id.to_bytes()[15] % 2 == 1;
        assert_eq!(turn.sampled, Some(sampled));
        assert_eq!(turn.traceparent().flags, u8::from(sampled), "{turn:?}");
    }
    // Without a sampler, the client's flags (or 01) are announced.
    let mut h = Harness::new();
    let unsampled: TraceParent = "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
        .parse()
        .unwrap();
    h.engine
        .handle_turn_start(ms(0), None, Some(unsampled))
        .unwrap();
    h.drain();
    assert_eq!(
        (h.started()[0].sampled, h.started()[0].traceparent().flags),
        (None, 0)
    );
}

#[test]
fn traceparent_sets_the_turn_id_and_parent() {
    let mut h = Harness::new();
    let tp: TraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        .parse()
        .unwrap();
    let other: TurnId = "1af7651916cd43dd8448eb211c80319c".parse().unwrap();
    let err = h
        .engine
        .handle_turn_start(ms(0), Some(other), Some(tp))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::TurnIdMismatch);
    let id = h
        .engine
        .handle_turn_start(ms(0), Some(tp.trace_id), Some(tp))
        .unwrap();
    assert_eq!(id, tp.trace_id);
    h.drain();
    let started = &h.started()[0];
    assert_eq!(started.client_parent, Some(tp));
    let announced = started.traceparent();
    assert_eq!(announced.trace_id, tp.trace_id);
    assert_eq!(announced.parent_id, started.root_span_id);
    assert_ne!(announced.parent_id, tp.parent_id);
    let err = h.engine.handle_turn_start(ms(10), None, None).unwrap_err();
    assert_eq!(err.code(), ErrorCode::TurnAlreadyOpen);
}

#[test]
fn turn_start_supersedes_a_vad_turn() {
    let mut h = Harness::new();
    let t = h.audio(ms(0), ms(400), true);
    h.engine.handle_turn_start(t, None, None).unwrap();
    h.drain();
    let ended = h.ended();
    assert_eq!(ended[0].reason, Some(EndReason::Superseded));
    let started = h.started();
    assert_eq!(started.len(), 2);
    assert_eq!(
        (started[0].cause, started[1].cause),
        (Cause::Vad, Cause::Client)
    );
}

#[test]
fn max_length_splits_continuing_speech_into_follow_on_turns() {
    let mut h = Harness::new();
    h.audio(ms(0), ms(130_000), true);
    let ended = h.ended();
    assert_eq!(ended.len(), 2);
    assert!(ended.iter().all(|t| t.reason == Some(EndReason::MaxLength)));
    assert_eq!(h.started().len(), 3);
    assert_eq!(ended[0].ended_at, Some(h.started()[1].started_at));
    // A follow-on is not a barge-in.
    assert!(h.engine.turns().iter().all(|t| !t.interrupted));
}

#[test]
fn barge_in_marks_unfinished_turns_interrupted() {
    let mut h = Harness::new();
    let t = h.audio(ms(0), ms(500), true);
    let t = h.audio(t, ms(1000), false);
    let first = h.ended()[0].id;
    h.audio(t, ms(500), true);
    assert!(h.events.contains(&Output::TurnInterrupted(first)));
    assert!(h.engine.turns()[0].interrupted);
    // A completed turn is not interrupted by later speech.
    let mut h = Harness::new();
    let t = h.audio(ms(0), ms(500), true);
    let t = h.audio(t, ms(1000), false);
    let first = h.ended()[0].id;
    h.engine.handle_processing_finished(t, first, OK).unwrap();
    h.audio(t, ms(500), true);
    assert!(!h.engine.turns()[0].interrupted);
    assert_eq!(h.engine.turns()[0].state, TurnState::Completed);
}

#[test]
fn close_ends_the_open_turn_and_flushes_held_frames() {
    let mut h = Harness::new();
    let t = h.audio(ms(0), ms(300), true);
    h.engine.handle_close(t);
    h.drain();
    assert_eq!(h.ended()[0].reason, Some(EndReason::SessionClosed));
    let mut h = Harness::new();
    let t = h.audio(ms(0), ms(200), false);
    assert!(h.engine.counters().frames_held > 0);
    h.engine.handle_close(t);
    h.drain();
    assert_eq!(h.engine.counters().frames_held, 0);
    assert_eq!(h.engine.counters().idle_frames_discarded, h.sent);
    // Frames that still arrive after close leave at once, as idle, even voiced ones.
    h.audio(t, ms(500), true);
    assert_eq!(h.engine.counters().frames_held, 0);
    assert_eq!(h.engine.counters().idle_frames_discarded, h.sent);
    assert_eq!(h.started().len(), 0);
}

/// One step of a random session.
#[derive(Clone, Debug)]
enum Step {
    Frames {
        gap_ms: u64,
        count: u8,
        voiced: bool,
    },
    Tick {
        gap_ms: u64,
    },
    Start {
        with_id: bool,
    },
    End,
    Finish {
        llm_ok: bool,
    },
    Result,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u64..60, 1u8..60, any::<bool>()).prop_map(|(gap_ms, count, voiced)| Step::Frames { gap_ms, count, voiced }),
        2 => (0u64..3000).prop_map(|gap_ms| Step::Tick { gap_ms }),
        1 => any::<bool>().prop_map(|with_id| Step::Start { with_id }),
        1 => Just(Step::End),
        1 => any::<bool>().prop_map(|llm_ok| Step::Finish { llm_ok }),
        1 => Just(Step::Result),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_frame_is_tagged_once_and_turns_do_not_overlap(
        steps in proptest::collection::vec(step(), 1..120),
        seed in any::<u64>(),
    ) {
        let config = TurnConfig { max_turn: ms(5_000), ..TurnConfig::default() };
        let session = SessionId::mint(1, &mut StdRng::seed_from_u64(seed));
        let mut engine = TurnEngine::new(config.clone(), session, 1_700_000_000_000, StdRng::seed_from_u64(seed));
        let mut at = Duration::ZERO;
        let mut sent = 0u64;
        let mut outputs = Vec::new();
        let mut statuses = Vec::new();
        // (outputs emitted before it, turn) of every result the engine let out.
        let mut admitted: Vec<(usize, TurnId)> = Vec::new();
        let drain = |engine: &mut TurnEngine<StdRng>, outputs: &mut Vec<Output>| {
            while let Some(o) = engine.poll_output() { outputs.push(o); }
        };
        for step in steps {
            match step {
                Step::Frames { gap_ms, count, voiced } => {
                    at += ms(gap_ms);
                    for _ in 0..count {
                        engine.handle_frame(at, frame(sent), voiced);
                        sent += 1;
                        at += FRAME;
                        drain(&mut engine, &mut outputs);
                        let c = engine.counters();
                        prop_assert_eq!(c.frames_in_turns + c.idle_frames_discarded + c.frames_held, sent);
                    }
                }
                Step::Tick { gap_ms } => { at += ms(gap_ms); engine.handle_tick(at); }
                Step::Start { with_id } => {
                    let id = with_id.then(|| TurnId::mint(at.as_millis() as u64 + 1, &mut StdRng::seed_from_u64(sent)));
                    let _ = engine.handle_turn_start(at, id, None);
                }
                Step::End => { let _ = engine.handle_turn_end(at, None); }
                Step::Finish { llm_ok } => {
                    // Any turn whose processing runs may finish first.
                    let running: Vec<TurnId> = engine.turns().iter()
                        .filter(|t| t.state == TurnState::Ended && t.processing_started_at.is_some())
                        .map(|t| t.id).collect();
                    if let Some(&id) = running.get(sent as usize % running.len().max(1)) {
                        let llm = if llm_ok { StageStatus::Ok } else { StageStatus::Failed };
                        let status = engine.handle_processing_finished(at, id, Stages { llm, ..OK }).unwrap();
                        statuses.push((id, status));
                    }
                }
                Step::Result => {
                    // Each turn offers a result; the engine decides whether it may go out.
                    let ids: Vec<TurnId> = engine.turns().iter().map(|t| t.id).collect();
                    for id in ids {
                        if engine.admits_results(id) {
                            admitted.push((outputs.len(), id));
                        }
                    }
                }
            }
            drain(&mut engine, &mut outputs);
        }
        engine.handle_close(at + ms(1));
        // Frames still arriving after close leave too.
        for i in 0..3 {
            engine.handle_frame(at + ms(2 + i), frame(sent), true);
            sent += 1;
        }
        drain(&mut engine, &mut outputs);
        // Every turn's processing ends, in any order.
        let running: Vec<TurnId> = engine.turns().iter()
            .filter(|t| t.state == TurnState::Ended).map(|t| t.id).collect();
        for id in running.into_iter().rev() {
            let status = engine.handle_processing_finished(at + ms(10), id, OK).unwrap();
            statuses.push((id, status));
        }
        drain(&mut engine, &mut outputs);

        // Every turn reaches exactly one terminal status: `interrupted` exactly when it
        // was spoken over, and one `TurnCompleted` carrying it.
        for t in engine.turns() {
            prop_assert_eq!(t.state, TurnState::Completed);
            let completions: Vec<_> = outputs.iter().filter_map(|o| match o {
                Output::TurnCompleted(c) if c.id == t.id => Some(c.status), _ => None }).collect();
            prop_assert_eq!(&completions, &vec![t.status]);
            let reported: Vec<_> = statuses.iter().filter(|(id, _)| *id == t.id).map(|(_, s)| *s).collect();
            prop_assert_eq!(reported, vec![t.status.unwrap()]);
            prop_assert_eq!(t.status == Some(CompletionStatus::Interrupted), t.interrupted);
        }
        // No result of a turn goes out after its interruption, nor after its completion.
        for (emitted, id) in &admitted {
            let cut = outputs.iter().position(|o| matches!(o,
                Output::TurnInterrupted(i) if i == id) || matches!(o, Output::TurnCompleted(t) if t.id == *id));
            if let Some(cut) = cut {
                prop_assert!(*emitted <= cut, "a result of {} was admitted after its interruption", id);
            }
        }
        // Who answers: a turn hands its input on exactly when it was superseded or split
        // and continued, and always to the next turn.
        let turns = engine.turns();
        for (i, t) in turns.iter().enumerate() {
            let hands_on = t.reason == Some(EndReason::Superseded)
                || (t.reason == Some(EndReason::MaxLength) && turns.get(i + 1).is_some_and(|n| n.continues == Some(t.id)));
            prop_assert_eq!(!t.answered(), hands_on);
            if let Some(next) = t.successor {
                prop_assert_eq!(turns.get(i + 1).map(|n| n.id), Some(next));
            }
        }

        // Every frame leaves exactly once, in order, and nothing is held at the end.
        let frames: Vec<&Tagged<AudioFrame>> = outputs.iter().filter_map(|o| match o {
            Output::Frame(f) => Some(f), _ => None }).collect();
        prop_assert_eq!(frames.len() as u64, sent);
        for (i, f) in frames.iter().enumerate() {
            prop_assert_eq!(f.seq, i as u64);
            prop_assert_eq!(f.value.rtp_seq, i as u16);
            prop_assert_eq!(f.session_id, session);
        }
        let c = engine.counters();
        prop_assert_eq!(c.frames_held, 0);
        prop_assert_eq!(c.frames_in_turns + c.idle_frames_discarded, sent);

        // Each turn starts before its frames arrive, frames fall inside its input window,
        // and a frame is tagged only between its turn's start and end outputs.
        let turns = engine.turns();
        let mut open: Option<TurnId> = None;
        let mut frames_per_turn: HashMap<TurnId, u32> = HashMap::new();
        for o in &outputs {
            match o {
                Output::TurnStarted(t) => { prop_assert!(open.is_none()); open = Some(t.id); }
                Output::TurnEnded(t) => { prop_assert_eq!(open, Some(t.id)); open = None; }
                Output::Frame(f) => {
                    prop_assert_eq!(f.turn_id, if f.turn_id.is_some() { open } else { None });
                    if let Some(id) = f.turn_id {
                        *frames_per_turn.entry(id).or_default() += 1;
                        let t = turns.iter().find(|t| t.id == id).unwrap();
                        prop_assert!(f.at >= t.started_at);
                        prop_assert!(f.at <= t.ended_at.unwrap());
                    }
                }
                _ => {}
            }
        }
        prop_assert!(open.is_none());
        for pair in turns.windows(2) {
            prop_assert!(pair[0].ended_at.unwrap() <= pair[1].started_at, "input windows overlap");
            prop_assert_eq!(pair[1].number, pair[0].number + 1);
        }
        for t in turns {
            prop_assert_eq!(t.frames, frames_per_turn.get(&t.id).copied().unwrap_or(0));
            prop_assert!(t.state != TurnState::Open);
            if t.cause == Cause::Vad && t.reason == Some(EndReason::EndOfSpeech) {
                // VAD turns never outlive the maximum length.
                prop_assert!(t.ended_at.unwrap() - t.started_at <= config.max_turn);
            }
        }
        // A frame that arrived strictly inside a turn's input window belongs to it; with
        // the check above, pre-roll frames (which lie inside the window of a VAD turn,
        // since it starts at its first frame) belong to the turn that followed them.
        for f in &frames {
            for t in turns {
                if t.started_at < f.at && f.at < t.ended_at.unwrap() {
                    prop_assert_eq!(f.turn_id, Some(t.id));
                }
            }
        }
    }
}

#[test]
fn a_superseded_turn_is_not_a_barge_in_but_earlier_unfinished_ones_are() {
    let mut h = Harness::new();
    let t = h.audio(ms(0), ms(500), true);
    let t = h.audio(t, ms(1000), false); // turn 1 ended, not completed
    let t = h.audio(t, ms(300), true); // turn 2 (VAD) open; turn 1 interrupted
    h.engine.handle_turn_start(t, None, None).unwrap();
    h.drain();
    let turns = h.engine.turns();
    assert!(turns[0].interrupted);
    assert_eq!(turns[1].reason, Some(EndReason::Superseded));
    assert!(!turns[1].interrupted, "superseding is not interrupting");
}

#[test]
fn a_client_turn_split_at_max_length_is_a_chain_that_turn_end_naming_its_first_piece_ends() {
    let mut h = Harness::new();
    let first = h.engine.handle_turn_start(ms(0), None, None).unwrap();
    // Push-to-talk held for 130 s: two splits at 60 s.
    let t = h.audio(ms(0), ms(130_000), true);
    let ended = h.ended();
    assert_eq!(ended.len(), 2);
    let started = h.started();
    assert_eq!(started.len(), 3);
    for (piece, next) in ended.iter().zip(&started[1..]) {
        assert_eq!(piece.reason, Some(EndReason::MaxLength));
        assert_eq!(piece.continued_by(), Some(next.id));
        assert_eq!(next.continues, Some(piece.id));
        assert_eq!(next.cause, Cause::Client);
        assert!(
            !piece.answered(),
            "a continued piece is answered by its chain's end"
        );
    }
    assert_eq!(started[0].id, first);
    assert_eq!(
        h.engine.handle_turn_end(t, Some(first)).unwrap(),
        started[2].id
    );
    h.drain();
    let last = h.ended().pop().unwrap();
    assert_eq!(
        (last.id, last.reason, last.continued_by()),
        (started[2].id, Some(EndReason::ClientEnd), None)
    );
    assert!(last.answered());
    // Naming a turn of an earlier chain is still a mismatch.
    let next = h.engine.handle_turn_start(t, None, None).unwrap();
    let err = h
        .engine
        .handle_turn_end(t + ms(10), Some(first))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::TurnIdMismatch);
    assert_eq!(
        h.engine.handle_turn_end(t + ms(20), Some(next)).unwrap(),
        next
    );
}

#[test]
fn a_superseded_turn_hands_its_input_to_the_turn_that_replaced_it() {
    let mut h = Harness::new();
    let t = h.audio(ms(0), ms(400), true);
    let client = h.engine.handle_turn_start(t, None, None).unwrap();
    h.drain();
    let vad = &h.ended()[0];
    assert_eq!(vad.reason, Some(EndReason::Superseded));
    assert_eq!(vad.successor, Some(client));
    assert_eq!(vad.continued_by(), None, "superseding is not a chain");
    assert!(!vad.answered());
}

#[test]
fn an_interrupted_turn_admits_no_results_and_completes_interrupted() {
    let mut h = Harness::new();
    let t = h.audio(ms(0), ms(500), true);
    let t = h.audio(t, ms(1000), false);
    let first = h.ended()[0].id;
    assert!(h.engine.admits_results(first));
    h.audio(t, ms(500), true); // barge-in
    assert!(!h.engine.admits_results(first));
    let status = h.engine.handle_processing_finished(t, first, OK).unwrap();
    assert_eq!(status, CompletionStatus::Interrupted);
    assert_eq!(
        h.engine.turns()[0].status,
        Some(CompletionStatus::Interrupted)
    );
    // A completed turn admits no more results either.
    assert!(!h.engine.admits_results(first));
}

#[test]
fn turn_start_during_a_chains_continuation_interrupts_no_piece_of_it() {
    let mut h = Harness::new();
    // A VAD chain: 62 s of speech split at 60 s.
    let t = h.audio(ms(0), ms(62_000), true);
    let pieces: Vec<TurnId> = h.started().iter().map(|s| s.id).collect();
    assert_eq!(pieces.len(), 2);
    let client = h.engine.handle_turn_start(t, None, None).unwrap();
    h.drain();
    assert!(
        !h.events
            .iter()
            .any(|o| matches!(o, Output::TurnInterrupted(_))),
        "{:?}",
        h.events
    );
    let turns = h.engine.turns();
    assert_eq!(turns[0].successor, Some(pieces[1]));
    assert_eq!(turns[1].reason, Some(EndReason::Superseded));
    assert_eq!(turns[1].successor, Some(client));
    // Speech over the client turn's answer interrupts all three.
    h.engine.handle_turn_end(t + ms(100), None).unwrap();
    h.audio(t + ms(200), ms(500), true);
    for id in pieces.iter().chain([&client]) {
        assert!(h.events.contains(&Output::TurnInterrupted(*id)), "{id}");
    }
}

#[test]
fn a_turn_interrupted_while_it_waits_for_an_upload_starts_processing_at_once() {
    let mut h = Harness::new();
    let first = h.engine.handle_turn_start(ms(0), None, None).unwrap();
    h.engine.handle_upload_started(ms(10), None).unwrap();
    h.engine.handle_turn_end(ms(500), None).unwrap();
    h.drain();
    assert!(
        !h.events
            .iter()
            .any(|o| matches!(o, Output::ProcessingStarted(_))),
        "the open upload holds it"
    );
    h.engine.handle_turn_start(ms(600), None, None).unwrap();
    h.drain();
    let started = h
        .events
        .iter()
        .position(|o| matches!(o, Output::ProcessingStarted(t) if t.id == first));
    let interrupted = h
        .events
        .iter()
        .position(|o| *o == Output::TurnInterrupted(first));
    assert!(
        interrupted.is_some() && started > interrupted,
        "{:?}",
        h.events
    );
    let status = h
        .engine
        .handle_processing_finished(ms(610), first, OK)
        .unwrap();
    assert_eq!(status, CompletionStatus::Interrupted);
    // The upload still reports back; the completed turn takes nothing more.
    h.engine.handle_upload_finished(ms(900), first).unwrap();
    let err = h
        .engine
        .handle_upload_started(ms(950), Some(first))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::TurnClosed);
}

#[test]
fn turn_end_naming_another_turn_is_refused() {
    let mut h = Harness::new();
    let id = h.engine.handle_turn_start(ms(0), None, None).unwrap();
    let other: TurnId = "1af7651916cd43dd8448eb211c80319c".parse().unwrap();
    let err = h.engine.handle_turn_end(ms(10), Some(other)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::TurnIdMismatch);
    assert_eq!(h.engine.handle_turn_end(ms(20), Some(id)).unwrap(), id);
}

#[test]
fn a_session_has_at_most_max_turns() {
    let session = SessionId::mint(1, &mut StdRng::seed_from_u64(1));
    let config = TurnConfig {
        max_turns: 2,
        ..TurnConfig::default()
    };
    let mut engine = TurnEngine::new(config, session, 1, StdRng::seed_from_u64(2));
    for i in 0..2 {
        engine.handle_turn_start(ms(i * 100), None, None).unwrap();
        engine.handle_turn_end(ms(i * 100 + 50), None).unwrap();
    }
    let err = engine.handle_turn_start(ms(300), None, None).unwrap_err();
    assert_eq!(err.code(), ErrorCode::TooManyTurns);
    // Speech stays idle.
    for i in 0..50 {
        engine.handle_frame(ms(400 + 20 * i), frame(i), true);
    }
    assert_eq!(engine.turns().len(), 2);
}
