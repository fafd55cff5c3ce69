//! The audio path of a session: each RTP packet decoded (gaps concealed), scored by the
//! VAD and given to the turn engine with its receipt stamp.

use std::sync::atomic::Ordering;

use turngate_core::AudioFrame;

use super::Driver;
use super::ingress::Rtp;
use crate::decode::Decoded;

impl Driver {
    pub(super) fn on_rtp(&mut self, rtp: Rtp) {
        let counters = &self.shared.counters;
        let (pcm, concealed) =
            match self
                .decoder
                .decode(rtp.seq, rtp.timestamp, &rtp.payload, rtp.at)
            {
                Decoded::Audio {
                    pcm,
                    concealed,
                    lost,
                } => {
                    counters
                        .packets_lost
                        .fetch_add(u64::from(lost), Ordering::Relaxed);
                    counters
                        .samples_concealed
                        .fetch_add(u64::from(concealed), Ordering::Relaxed);
                    (pcm, concealed)
                }
                Decoded::Late => (Vec::new(), 0),
                Decoded::Undecodable => {
                    counters.frames_undecodable.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
        let voiced = self.vad.push(&pcm);
        let frame = AudioFrame {
            rtp_seq: rtp.seq,
            rtp_timestamp: rtp.timestamp,
            payload: rtp.payload,
            pcm,
            concealed_samples: concealed,
        };
        self.engine.handle_frame(rtp.at, frame, voiced);
    }
}
