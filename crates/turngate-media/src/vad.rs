//! Voice activity detection: earshot's neural detector on 16 ms windows of 16 kHz PCM.
//!
//! Frames carry 20 ms (or other durations) of audio while earshot takes exactly 256
//! samples, so PCM is rebuffered. A frame counts as voiced when any window it completed
//! scored at least the threshold; a frame too short to complete a window keeps the
//! previous decision.

use earshot::Detector;

/// Samples per earshot window (16 ms at 16 kHz).
const WINDOW: usize = 256;

/// Rebuffering voice activity detector of one track.
pub struct VoiceDetector {
    detector: Box<Detector>,
    pending: Vec<i16>,
    threshold: f32,
    voiced: bool,
}

impl VoiceDetector {
    /// A detector calling a window voiced at `threshold` (0–1; 0.5 is earshot's default).
    pub fn new(threshold: f32) -> Self {
        Self { detector: Detector::default_boxed(), pending: Vec::with_capacity(2 * WINDOW), threshold, voiced: false }
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
            best = best.max(self.detector.predict_i16(window));
        }
        self.pending.drain(..windows * WINDOW);
        self.voiced = best >= self.threshold;
        self.voiced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_and_a_pure_tone_are_not_voice() {
        let mut vad = VoiceDetector::new(0.5);
        for _ in 0..100 {
            assert!(!vad.push(&[0i16; 320]));
        }
        let tone: Vec<i16> =
            (0..16_000).map(|k| ((k as f32 / 16_000.0 * 440.0 * std::f32::consts::TAU).sin() * 20_000.0) as i16).collect();
        let voiced = tone.chunks(320).filter(|c| vad.push(c)).count();
        assert!(voiced < 5, "{voiced} of 50 tone frames called voiced");
    }
}
