//! Opus RTP payloads to 16 kHz mono PCM, with loss concealment that keeps timing.
//!
//! libopus decodes straight to 16 kHz, the rate both the VAD and ASR want. When the RTP
//! timestamp jumps past what the previous packet covered (packets lost, or skipped by
//! DTX), the gap is filled first: with Opus packet loss concealment, and for the last
//! lost packet with the in-band FEC the current packet may carry. Concatenating the PCM
//! of consecutive packets therefore gives audio with the sender's timing.
//!
//! Concealment is audio the gateway makes up, so it is budgeted: it is granted only
//! while the audio output so far (decoded and concealed) stays within the wall time
//! since the track's first packet plus [`ARRIVAL_SLACK`]. A sender stepping RTP
//! timestamps by 240 ms every 20 ms gets no more than that; a real sender, whose
//! timestamps follow its clock, never notices. (Packets themselves are decoded as sent;
//! what a turn keeps is capped downstream.)

use std::time::Duration;

use opus::{Channels, Decoder};

use crate::error::MediaError;

/// Output rate of the decoder.
pub const PCM_RATE: u32 = 16_000;
/// RTP clock rate of Opus.
const RTP_RATE: u32 = 48_000;
const RTP_PER_PCM: u32 = RTP_RATE / PCM_RATE;
/// The longest gap filled with concealment; a longer jump (a muted sender, a sender
/// restart) is treated as a discontinuity and filled only this far.
pub const MAX_CONCEALMENT_SAMPLES: u32 = PCM_RATE;
/// How far the track's output may run ahead of the wall time since its first packet
/// before concealment stops (jitter: packets bunch up); a sender cannot make the
/// gateway synthesize audio faster than real time.
pub const ARRIVAL_SLACK: Duration = Duration::from_millis(200);
/// A sequence number this far behind the last is a new stream (a sender restart), not a
/// late packet...
const RESYNC_BEHIND: i16 = -1000;
/// ...and so is one this far ahead (a minute of 20 ms packets), not a loss.
const RESYNC_AHEAD: i16 = 3000;
/// libopus conceals in multiples of 2.5 ms.
const PLC_GRANULE: u32 = PCM_RATE / 400;
/// The longest Opus packet is 120 ms.
const MAX_PACKET_SAMPLES: usize = (PCM_RATE as usize * 120) / 1000;

/// What one received packet decoded to.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// PCM: `concealed` samples filling the gap before the packet, then its audio.
    Audio {
        /// The samples.
        pcm: Vec<i16>,
        /// How many of them, at the start, are concealment.
        concealed: u32,
        /// Packets missing (by sequence number) just before this one.
        lost: u32,
    },
    /// A duplicate or a packet older than one already decoded: kept as received, not
    /// decoded, because its time has already been filled.
    Late,
    /// libopus refused the payload.
    Undecodable,
}

/// Decoder state of one Opus track. Not `Sync` (libopus state), one per track.
pub struct OpusTrackDecoder {
    decoder: Decoder,
    last_seq: Option<u16>,
    /// RTP timestamp just past the audio decoded so far.
    next_timestamp: Option<u32>,
    /// Arrival time of the first packet: the concealment budget runs from it.
    first_arrival: Option<Duration>,
    /// 16 kHz samples output so far, decoded and concealed.
    produced: u64,
}

impl OpusTrackDecoder {
    /// A decoder producing 16 kHz mono PCM.
    pub fn new() -> Result<Self, MediaError> {
        let decoder =
            Decoder::new(PCM_RATE, Channels::Mono).map_err(|e| MediaError::Codec(e.to_string()))?;
        Ok(Self {
            decoder,
            last_seq: None,
            next_timestamp: None,
            first_arrival: None,
            produced: 0,
        })
    }

    /// Decodes one packet that arrived at `arrival` (any monotonic clock).
    pub fn decode(
        &mut self,
        seq: u16,
        timestamp: u32,
        payload: &[u8],
        arrival: Duration,
    ) -> Decoded {
        let lost = match self.last_seq {
            None => 0,
            Some(last) => {
                let delta = seq.wrapping_sub(last) as i16;
                if !(RESYNC_BEHIND..RESYNC_AHEAD).contains(&delta) {
                    // A new stream: no gap to fill.
                    self.next_timestamp = None;
                    0
                } else if delta <= 0 {
                    return Decoded::Late;
                } else {
                    delta as u32 - 1
                }
            }
        };
        self.last_seq = Some(seq);
        let elapsed = arrival.saturating_sub(*self.first_arrival.get_or_insert(arrival));

        let gap = self.next_timestamp.map_or(0, |next| {
            let d = timestamp.wrapping_sub(next) as i32;
            if d > 0 {
                (d as u32 / RTP_PER_PCM).min(MAX_CONCEALMENT_SAMPLES)
            } else {
                0
            }
        });

        let Ok(samples) = opus::packet::get_nb_samples(payload, PCM_RATE) else {
            // Keep the timeline: the next packet's gap covers this one's time.
            self.next_timestamp.get_or_insert(timestamp);
            return Decoded::Undecodable;
        };
        if payload.is_empty() || samples == 0 || samples > MAX_PACKET_SAMPLES {
            self.next_timestamp.get_or_insert(timestamp);
            return Decoded::Undecodable;
        }
        // The running budget: what is left of wall time (plus slack) after the audio
        // output so far and this packet's own.
        let budget = (elapsed + ARRIVAL_SLACK).as_micros() as u64 * u64::from(PCM_RATE) / 1_000_000;
        let left = budget.saturating_sub(self.produced + samples as u64);
        let gap = gap.min(left.min(u64::from(u32::MAX)) as u32);
        let gap = gap - gap % PLC_GRANULE;

        let mut pcm = vec![0i16; gap as usize + samples];
        let concealed = self.conceal(&mut pcm[..gap as usize], lost > 0, payload);
        match self
            .decoder
            .decode(payload, &mut pcm[gap as usize..], false)
        {
            Ok(n) if n == samples => {}
            _ => return Decoded::Undecodable,
        }
        if concealed < gap {
            // Concealment stopped short; move the packet's audio up to keep samples
            // contiguous. (Happens only if libopus refused the concealment itself.)
            pcm.drain(concealed as usize..gap as usize);
        }
        self.next_timestamp = Some(timestamp.wrapping_add(samples as u32 * RTP_PER_PCM));
        self.produced += pcm.len() as u64;
        Decoded::Audio {
            pcm,
            concealed,
            lost,
        }
    }

    /// Fills `out` with concealment; the last packet-sized part from the current
    /// packet's in-band FEC when a packet was lost. Returns the samples written.
    fn conceal(&mut self, out: &mut [i16], packet_lost: bool, payload: &[u8]) -> u32 {
        let total = out.len();
        if total == 0 {
            return 0;
        }
        let fec_len = if packet_lost {
            opus::packet::get_nb_samples(payload, PCM_RATE)
                .unwrap_or(0)
                .min(total)
        } else {
            0
        };
        let plc_len = total - fec_len;
        let mut done = 0;
        while done < plc_len {
            let chunk = (plc_len - done).min(MAX_PACKET_SAMPLES);
            match self
                .decoder
                .decode(&[], &mut out[done..done + chunk], false)
            {
                Ok(n) if n > 0 => done += n,
                _ => return done as u32,
            }
        }
        if fec_len > 0 {
            match self
                .decoder
                .decode(payload, &mut out[done..done + fec_len], true)
            {
                Ok(n) => done += n,
                Err(_) => return done as u32,
            }
        }
        done as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opus::{Application, Encoder};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// 20 ms Opus packets of a 300 Hz tone at 16 kHz input.
    fn packets(n: usize) -> Vec<Vec<u8>> {
        let mut enc = Encoder::new(16_000, Channels::Mono, Application::Voip).unwrap();
        enc.set_inband_fec(true).unwrap();
        enc.set_packet_loss_perc(10).unwrap();
        (0..n)
            .map(|i| {
                let pcm: Vec<i16> = (0..320)
                    .map(|k| {
                        let t = (i * 320 + k) as f32 / 16_000.0;
                        ((t * 300.0 * std::f32::consts::TAU).sin() * 8000.0) as i16
                    })
                    .collect();
                enc.encode_vec(&pcm, 4000).unwrap()
            })
            .collect()
    }

    fn audio(d: Decoded) -> (usize, u32, u32) {
        match d {
            Decoded::Audio {
                pcm,
                concealed,
                lost,
            } => (pcm.len(), concealed, lost),
            other => panic!("expected audio, got {other:?}"),
        }
    }

    #[test]
    fn decodes_in_order_packets_to_320_samples() {
        let mut dec = OpusTrackDecoder::new().unwrap();
        for (i, p) in packets(5).iter().enumerate() {
            assert_eq!(
                audio(dec.decode(i as u16, i as u32 * 960, p, ms(20 * i as u64))),
                (320, 0, 0)
            );
        }
    }

    #[test]
    fn conceals_lost_packets_keeping_timing() {
        let mut dec = OpusTrackDecoder::new().unwrap();
        let p = packets(6);
        audio(dec.decode(65_534, 0, &p[0], ms(0)));
        // Sequence wraps; packets 65535 and 0 are lost.
        assert_eq!(
            audio(dec.decode(1, 3 * 960, &p[3], ms(60))),
            (3 * 320, 640, 2)
        );
        assert_eq!(audio(dec.decode(2, 4 * 960, &p[4], ms(80))), (320, 0, 0));
        assert_eq!(dec.decode(1, 3 * 960, &p[3], ms(90)), Decoded::Late);
    }

    #[test]
    fn fills_dtx_timestamp_jumps_and_caps_long_ones() {
        let mut dec = OpusTrackDecoder::new().unwrap();
        let p = packets(3);
        audio(dec.decode(10, 0, &p[0], ms(0)));
        // Contiguous sequence numbers, 400 ms timestamp jump (DTX).
        assert_eq!(
            audio(dec.decode(11, 960 + 19_200, &p[1], ms(420))),
            (320 + 6400, 6400, 0)
        );
        // A ten-second jump is filled only up to the cap.
        let (len, concealed, _) = audio(dec.decode(12, 500_000, &p[2], ms(10_840)));
        assert_eq!(concealed, MAX_CONCEALMENT_SAMPLES);
        assert_eq!(len, 320 + MAX_CONCEALMENT_SAMPLES as usize);
    }

    proptest::proptest! {
        /// Any payload, sequence number and timestamp decode or are refused, never panic.
        #[test]
        fn any_packet_stream_decodes_without_panicking(
            packets in proptest::collection::vec(
                (proptest::num::u16::ANY, proptest::num::u32::ANY, proptest::collection::vec(proptest::num::u8::ANY, 0..300)),
                1..30,
            ),
        ) {
            let mut dec = OpusTrackDecoder::new().unwrap();
            for (seq, ts, payload) in packets {
                if let Decoded::Audio { pcm, concealed, .. } = dec.decode(seq, ts, &payload, ms(u64::from(seq))) {
                    proptest::prop_assert!(concealed as usize <= pcm.len());
                    proptest::prop_assert!(pcm.len() <= MAX_CONCEALMENT_SAMPLES as usize + MAX_PACKET_SAMPLES);
                }
            }
        }
    }

    #[test]
    fn concealment_never_outruns_arrival_time() {
        let mut dec = OpusTrackDecoder::new().unwrap();
        let p = packets(2);
        audio(dec.decode(10, 0, &p[0], ms(0)));
        // A one-second timestamp jump only 20 ms later: filled at most 20 + 200 ms.
        let (_, concealed, _) = audio(dec.decode(11, 48_000, &p[1], ms(20)));
        assert!(concealed <= 220 * 16, "{concealed}");
    }

    #[test]
    fn timestamps_stepping_240_ms_every_20_ms_get_no_more_than_the_slack() {
        let mut dec = OpusTrackDecoder::new().unwrap();
        let p = packets(1);
        let mut concealed_total = 0u64;
        let mut produced = 0u64;
        // Ten seconds of 50 packets/s, each claiming 240 ms more than the last.
        for i in 0..500u32 {
            let (len, concealed, _) =
                audio(dec.decode(i as u16, i * 11_520, &p[0], ms(20 * u64::from(i))));
            concealed_total += u64::from(concealed);
            produced += len as u64;
        }
        let wall = 500 * 320 + 200 * 16; // 10 s of arrivals, plus the slack
        assert!(produced <= wall, "{produced} samples in {wall}");
        assert!(concealed_total <= 200 * 16, "{concealed_total}");
    }

    #[test]
    fn a_sequence_number_far_away_is_a_new_stream() {
        let mut dec = OpusTrackDecoder::new().unwrap();
        let p = packets(3);
        audio(dec.decode(40_000, 0, &p[0], ms(0)));
        // 25 636 ahead (or 39 900 behind): either way, a new stream.
        assert_eq!(audio(dec.decode(100, 777_777, &p[1], ms(20))), (320, 0, 0));
        assert_eq!(
            audio(dec.decode(101, 777_777 + 960, &p[2], ms(40))),
            (320, 0, 0)
        );
    }

    #[test]
    fn refuses_garbage_without_panicking() {
        let mut dec = OpusTrackDecoder::new().unwrap();
        assert_eq!(dec.decode(0, 0, &[], ms(0)), Decoded::Undecodable);
        assert_eq!(
            dec.decode(1, 960, &[0xff, 0xff, 0xff], ms(20)),
            Decoded::Undecodable
        );
        let p = packets(1);
        assert!(matches!(
            dec.decode(2, 1920, &p[0], ms(40)),
            Decoded::Audio { .. }
        ));
    }
}
