//! The per-frame work of a session, step by step, on real speech: Opus decode to 16 kHz
//! (the baseline: the largest single cost), then VAD, then the turn engine.
//!
//! cargo bench -p turngate-e2e --bench frame_path

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::StdRng;
use turngate_core::{AudioFrame, SessionId, TurnConfig, TurnEngine};
use turngate_e2e::{data, encode_opus, wav};
use turngate_media::decode::{Decoded, OpusTrackDecoder};
use turngate_media::vad::VoiceDetector;

fn packets() -> Vec<Vec<u8>> {
    let (rate, pcm) = wav::read(&data("two-utterances.wav")).expect("fixture");
    encode_opus(rate, &pcm).expect("encodes")
}

fn pcm(d: Decoded) -> Vec<i16> {
    match d {
        Decoded::Audio { pcm, .. } => pcm,
        other => panic!("{other:?}"),
    }
}

/// Packet `i` decoded, VAD-decided and made into the frame the engine takes.
fn frame(
    i: usize,
    packet: &[u8],
    dec: &mut OpusTrackDecoder,
    vad: &mut VoiceDetector,
) -> (AudioFrame, bool) {
    let pcm = pcm(dec.decode(
        i as u16,
        i as u32 * 960,
        packet,
        Duration::from_millis(20 * i as u64),
    ));
    let voiced = vad.push(&pcm);
    let frame = AudioFrame {
        rtp_seq: i as u16,
        rtp_timestamp: i as u32 * 960,
        payload: Bytes::copy_from_slice(packet),
        pcm,
        concealed_samples: 0,
    };
    (frame, voiced)
}

fn frame_path(c: &mut Criterion) {
    let packets = packets();
    let n = packets.len();
    let mut group = c.benchmark_group("per_frame");
    group.throughput(criterion::Throughput::Elements(n as u64));

    group.bench_function("decode", |b| {
        b.iter(|| {
            let mut dec = OpusTrackDecoder::new().unwrap();
            for (i, p) in packets.iter().enumerate() {
                black_box(dec.decode(
                    i as u16,
                    i as u32 * 960,
                    p,
                    Duration::from_millis(20 * i as u64),
                ));
            }
        })
    });

    group.bench_function("decode_vad", |b| {
        b.iter(|| {
            let mut dec = OpusTrackDecoder::new().unwrap();
            let mut vad = VoiceDetector::new(0.9, 0.5);
            for (i, p) in packets.iter().enumerate() {
                black_box(vad.push(&pcm(dec.decode(
                    i as u16,
                    i as u32 * 960,
                    p,
                    Duration::from_millis(20 * i as u64),
                ))));
            }
        })
    });

    group.bench_function("decode_vad_engine", |b| {
        b.iter(|| {
            let mut dec = OpusTrackDecoder::new().unwrap();
            let mut vad = VoiceDetector::new(0.9, 0.5);
            let session = SessionId::mint(1, &mut StdRng::seed_from_u64(1));
            let mut engine =
                TurnEngine::new(TurnConfig::default(), session, 1, StdRng::seed_from_u64(2));
            for (i, p) in packets.iter().enumerate() {
                let (frame, voiced) = frame(i, p, &mut dec, &mut vad);
                engine.handle_frame(Duration::from_millis(20 * i as u64), frame, voiced);
                while let Some(out) = engine.poll_output() {
                    black_box(out);
                }
            }
        })
    });
    group.finish();
}

/// Tagging alone: the turn engine taking the fixture's frames (decoded and VAD-decided
/// beforehand, outside the timing) and giving out each one tagged, pre-roll and turn
/// lifecycle included. The target is at most 1 µs a frame.
fn tagging(c: &mut Criterion) {
    let packets = packets();
    let mut dec = OpusTrackDecoder::new().unwrap();
    let mut vad = VoiceDetector::new(0.9, 0.5);
    let frames: Vec<(AudioFrame, bool)> = packets
        .iter()
        .enumerate()
        .map(|(i, p)| frame(i, p, &mut dec, &mut vad))
        .collect();
    let mut group = c.benchmark_group("tagging");
    group.throughput(criterion::Throughput::Elements(frames.len() as u64));
    group.bench_function("engine", |b| {
        b.iter_batched(
            || {
                let session = SessionId::mint(1, &mut StdRng::seed_from_u64(1));
                let engine =
                    TurnEngine::new(TurnConfig::default(), session, 1, StdRng::seed_from_u64(2));
                (engine, frames.clone())
            },
            |(mut engine, frames)| {
                for (i, (frame, voiced)) in frames.into_iter().enumerate() {
                    engine.handle_frame(Duration::from_millis(20 * i as u64), frame, voiced);
                    while let Some(out) = engine.poll_output() {
                        black_box(out);
                    }
                }
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, frame_path, tagging, image_validation, image_limits);
criterion_main!(benches);

/// Image validation of a 1280×720 screenshot: reading the header (the baseline) against
/// the full check the gateway runs (sniff, header, pixel limit, full decode).
fn image_validation(c: &mut Criterion) {
    use turngate_media::image::{ImageLimits, validate};
    let png = turngate_e2e::png(1280, 720);
    let mut group = c.benchmark_group("image_1280x720_png");
    group.bench_function("header_only", |b| {
        b.iter(|| {
            image::ImageReader::with_format(
                std::io::Cursor::new(black_box(&png[..])),
                image::ImageFormat::Png,
            )
            .into_dimensions()
            .unwrap()
        })
    });
    group.bench_function("validate", |b| {
        b.iter(|| validate(black_box(&png), &ImageLimits::default()).unwrap())
    });
    group.finish();
}

/// What the validation limits are sized against: the largest image the pixel limit
/// lets through (a 40 MP photo-like PNG) and a GIF of a few hundred bytes whose ten
/// one-pixel frames each cost a decode of a 36 MP canvas, both without a time limit.
fn image_limits(c: &mut Criterion) {
    use turngate_media::image::{ImageLimits, validate};
    let unlimited = ImageLimits {
        decode_timeout: Duration::from_secs(600),
        ..ImageLimits::default()
    };
    let mut group = c.benchmark_group("image_limits");
    group.sample_size(10);
    let largest = turngate_e2e::picture(7744, 5164, image::ImageFormat::Png);
    group.bench_function("png_40mp", |b| {
        b.iter(|| validate(black_box(&largest), &unlimited).unwrap())
    });
    let canvas = turngate_e2e::canvas_gif(6000, 10);
    group.bench_function("gif_10_frames_on_36mp_canvas", |b| {
        b.iter(|| validate(black_box(&canvas), &unlimited).unwrap())
    });
    group.finish();
}
