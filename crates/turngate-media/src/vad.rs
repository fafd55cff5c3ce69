//! Voice activity detection: earshot's neural detector on 16 ms windows of 16 kHz PCM,
//! with hysteresis.
//!
//! Frames carry 20 ms (or other durations) of audio while earshot takes exactly 256
//! samples, so PCM is rebuffered; a frame's score is the best of the windows it
//! completed (a frame too short to complete one keeps the previous decision).
//!
//! Measured here on espeak-ng speech and synthetic sounds (see `tests/data/`): speech
//! scores 0.93–0.98 at its peaks, quiet speech (−26 dBFS) 0.97; steady tones score
//! 0.57–0.85 and loud brown noise up to 0.91 in single windows but never four windows in
//! a row ≥ 0.9. Hence two thresholds: speech begins when a frame scores at least
//! `onset` (default 0.9; the turn engine then also wants `speech_onset` of consecutive
//! voiced frames), and goes on while frames score at least `sustain` (default 0.5).
//!
//! Inference is most of a session's VAD cost (its share of the gateway's CPU was 14 %
//! in a profile of 40 sessions, BENCHMARKS.md), and silence is most of a session's audio.
//! So once the detector has seen [`SETTLE_WINDOWS`] windows of near-silence in a row (its
//! recurrent state has settled on silence), further near-silent windows score 0 without
//! inference; the first window with sound is scored as usual, from that settled state.

use earshot::Detector;

/// Samples per earshot window (16 ms at 16 kHz).
const WINDOW: usize = 256;

/// A window whose samples all stay within this amplitude is near-silent: −54 dBFS,
/// 28 dB below the quiet speech the detector must still hear (−26 dBFS, `tests/data`).
const SILENCE_PEAK: u16 = 64;

/// Near-silent windows in a row after which inference is skipped: 0.5 s.
const SETTLE_WINDOWS: u32 = 32;

/// Rebuffering voice activity detector of one track.
pub struct VoiceDetector {
    detector: Box<Detector>,
    pending: Vec<i16>,
    onset: f32,
    sustain: f32,
    voiced: bool,
    /// Near-silent windows in a row so far.
    quiet: u32,
    /// Skip inference on settled silence (always, but in a test comparing both).
    skip: bool,
    /// Windows whose inference was skipped (for the tests).
    #[cfg(test)]
    skipped: usize,
}

impl VoiceDetector {
    /// A detector with the given onset and sustain thresholds (0–1).
    pub fn new(onset: f32, sustain: f32) -> Self {
        Self {
            detector: Detector::default_boxed(),
            pending: Vec::with_capacity(2 * WINDOW),
            onset,
            sustain,
            voiced: false,
            quiet: 0,
            skip: true,
            #[cfg(test)]
            skipped: 0,
        }
    }

    /// Feeds one frame's PCM; returns whether the frame is voiced.
    pub fn push(&mut self, pcm: &[i16]) -> bool {
        self.pending.extend_from_slice(pcm);
        let windows = self.pending.len() / WINDOW;
        if windows == 0 {
            return self.voiced;
        }
        let mut best = 0.0f32;
        for window in self.pending.chunks_exact(WINDOW) {
            if window.iter().all(|s| s.unsigned_abs() <= SILENCE_PEAK) {
                self.quiet = self.quiet.saturating_add(1);
            } else {
                self.quiet = 0;
            }
            if self.skip && self.quiet > SETTLE_WINDOWS {
                #[cfg(test)]
                {
                    self.skipped += 1;
                }
                continue;
            }
            best = best.max(self.detector.predict_i16(window));
        }
        self.pending.drain(..windows * WINDOW);
        let threshold = if self.voiced {
            self.sustain
        } else {
            self.onset
        };
        self.voiced = best >= threshold;
        self.voiced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The samples of a 16-bit mono WAV fixture.
    fn fixture(name: &str) -> Vec<i16> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/data")
            .join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let data = bytes
            .windows(4)
            .position(|w| w == b"data")
            .expect("a data chunk")
            + 8;
        bytes[data..]
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect()
    }

    fn voiced_frames(pcm: &[i16]) -> usize {
        let mut vad = VoiceDetector::new(0.9, 0.5);
        pcm.chunks(320).filter(|frame| vad.push(frame)).count()
    }

    /// Each frame's decision, with or without skipping inference on settled silence,
    /// and the windows skipped.
    fn decisions(pcm: &[i16], skip: bool) -> (Vec<bool>, usize) {
        let mut vad = VoiceDetector::new(0.9, 0.5);
        vad.skip = skip;
        let decided = pcm.chunks(320).map(|frame| vad.push(frame)).collect();
        (decided, vad.skipped)
    }

    #[test]
    fn skipping_settled_silence_decides_every_frame_as_inference_would() {
        // Silence long enough to settle, each utterance, silence, both again.
        let mut pcm = vec![0i16; 32_000];
        pcm.extend(fixture("speech.wav"));
        pcm.extend(vec![0i16; 24_000]);
        pcm.extend(fixture("quiet-speech.wav"));
        pcm.extend(vec![3i16; 16_000]);
        pcm.extend(fixture("two-utterances.wav"));
        let ((skipping, skipped), (inferring, _)) = (decisions(&pcm, true), decisions(&pcm, false));
        assert_eq!(skipping, inferring);
        // Most of the silence went without inference.
        assert!(skipped > 200, "{skipped} windows skipped");
    }

    #[test]
    fn speech_is_voiced_and_tones_and_noise_are_not() {
        assert!(voiced_frames(&fixture("speech.wav")) > 40);
        assert!(voiced_frames(&fixture("quiet-speech.wav")) > 20);
        assert_eq!(voiced_frames(&fixture("tone.wav")), 0);
        assert!(voiced_frames(&fixture("noise.wav")) < 3);
        assert_eq!(voiced_frames(&[0i16; 16_000]), 0);
    }
}
