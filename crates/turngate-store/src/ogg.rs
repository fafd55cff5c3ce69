//! The received audio of a turn as an Ogg Opus stream (RFC 7845): the RTP payloads
//! exactly as they arrived, with the sender's timing.
//!
//! - The identification header (`OpusHead`, §5.1) and the comment header (`OpusTags`,
//!   §5.2) each end their own page, as §3 requires; the comments name the turn and the
//!   session (`TURNGATE_TURN_ID=…`, `TURNGATE_SESSION_ID=…`).
//! - Granule positions come from the RTP timestamps (48 kHz for Opus, RFC 7587 §4.1),
//!   unwrapped across the 32-bit wrap-around: a packet ends at its timestamp minus the
//!   first one's, plus its own duration (read from its TOC byte, RFC 6716 §3.1).
//! - A gap in the timestamps — packets lost, or not sent during discontinuous
//!   transmission (DTX) — is filled with packets whose frames are zero bytes long, which
//!   ask the decoder for packet loss concealment (RFC 7845 §4.1, RFC 6716 §3.2.1), so
//!   the stream decodes to the sender's duration. Only multiples of 2.5 ms can be
//!   filled; a smaller remainder is left out, as §4.1 allows. A gap is never filled
//!   past the packet's arrival time (from the first packet's) plus [`MAX_AHEAD`]: a
//!   sender whose timestamps jump (a restart, or an attack) cannot make the recording
//!   outgrow the time it took.
//! - Pre-skip is 0: the recording starts mid-stream, and its timing is the sender's,
//!   from the first packet received.
//! - Granule positions never go back (RFC 7845 §4), so a packet older than the stream's
//!   end (reordered, or repeated) cannot be appended: the last [`REORDER`] packets wait
//!   before they are paged, and a late packet takes the place of the concealment that
//!   filled its slot if that is still waiting; otherwise (a duplicate, or later than
//!   that) it is left out and counted ([`OggOpus::late`]), so the stream keeps the
//!   sender's timing.
//!
//! [`OggOpus::flush`] returns what has been muxed so far but the last packet, ending on
//! a page boundary, so the segments it returns concatenate into one valid stream: that
//! is how a turn's audio reaches the store at least every second.
//! [`OggOpus::finish`] ends the stream with its last packet on a page marked
//! end-of-stream.

use ogg::writing::{PacketWriteEndInfo, PacketWriter};

/// Granule positions count 48 kHz samples (RFC 7845 §4).
pub const GRANULE_RATE: u32 = 48_000;

/// 2.5 ms at 48 kHz: the shortest Opus frame, and the unit of repairable gaps.
const SHORTEST_FRAME: u64 = 120;

/// How far the recording may run ahead of the packets' arrival times: the jitter a
/// real sender's timing shows, and no more (the decoder's own concealment has the same
/// bound).
pub const MAX_AHEAD: std::time::Duration = std::time::Duration::from_secs(1);

/// Packets that wait before they are paged, so that a reordered packet can still take
/// its place: 5 packets, 100 ms of 20 ms packets.
pub const REORDER: usize = 5;

/// A packet waiting to be paged.
struct Queued {
    packet: Vec<u8>,
    /// Granule position at its start.
    start: u64,
    /// Granule position at its end.
    end: u64,
    /// Made to fill a gap: a packet that arrives late for this slot replaces it.
    concealment: bool,
}

/// An Ogg Opus muxer for one turn's received packets. See the module docs.
pub struct OggOpus {
    writer: PacketWriter<'static, Vec<u8>>,
    serial: u32,
    comments: Vec<String>,
    /// The RTP clock, from the first packet on.
    clock: Option<Clock>,
    /// When the first packet arrived.
    first_arrival: std::time::Duration,
    /// Granule position at the end of the last packet muxed.
    granule: u64,
    /// The TOC byte of the last packet with audio: gap packets take its configuration
    /// (RFC 7845 §4.1).
    last_toc: Option<u8>,
    /// Packets not paged yet, oldest first (at most [`REORDER`] + 1).
    queue: std::collections::VecDeque<Queued>,
    /// Packets received and muxed, packets made to fill gaps, packets left out as late.
    received: u64,
    concealment_packets: u64,
    late: u64,
}

/// RTP timestamps unwrapped to 64 bits.
#[derive(Clone, Copy, Debug)]
struct Clock {
    first: i64,
    last: u32,
    last_unwrapped: i64,
}

impl Clock {
    fn new(timestamp: u32) -> Self {
        Self {
            first: i64::from(timestamp),
            last: timestamp,
            last_unwrapped: i64::from(timestamp),
        }
    }

    /// `timestamp`'s samples since the first packet's (negative for a packet older
    /// than the first), counting wrap-arounds in either direction.
    fn since_first(&mut self, timestamp: u32) -> i64 {
        let step = i64::from(timestamp.wrapping_sub(self.last) as i32);
        self.last = timestamp;
        self.last_unwrapped += step;
        self.last_unwrapped - self.first
    }
}

impl OggOpus {
    /// A muxer for logical stream `serial`, whose comment header holds `comments`
    /// (`NAME=value`, RFC 7845 §5.2). Nothing is written before the first packet.
    pub fn new(serial: u32, comments: Vec<String>) -> Self {
        Self {
            writer: PacketWriter::new(Vec::new()),
            serial,
            comments,
            clock: None,
            first_arrival: std::time::Duration::ZERO,
            granule: 0,
            last_toc: None,
            queue: std::collections::VecDeque::new(),
            received: 0,
            concealment_packets: 0,
            late: 0,
        }
    }

    /// Muxes one received packet: `payload` as it arrived at `arrival` (any clock, the
    /// same for every packet), with its RTP `timestamp`. A packet older than what was
    /// muxed (reordered, or repeated) replaces the concealment of its slot if that
    /// still waits, else it is left out (see the module docs).
    pub fn push(&mut self, timestamp: u32, arrival: std::time::Duration, payload: &[u8]) {
        let clock = match &mut self.clock {
            Some(clock) => clock,
            None => {
                self.first_arrival = arrival;
                let channels = if payload.first().is_some_and(|toc| toc & 0x04 != 0) {
                    2
                } else {
                    1
                };
                self.write_headers(channels);
                self.clock.insert(Clock::new(timestamp))
            }
        };
        let at = clock.since_first(timestamp);
        if at < self.granule as i64 {
            self.take_late(at, payload);
            return;
        }
        let elapsed = arrival.saturating_sub(self.first_arrival) + MAX_AHEAD;
        let limit = elapsed.as_micros() as u64 * u64::from(GRANULE_RATE) / 1_000_000;
        if let Ok(at) = u64::try_from(at)
            && at.min(limit) > self.granule
        {
            self.conceal(at.min(limit) - self.granule);
        }
        self.received += 1;
        if !payload.is_empty() {
            self.last_toc = Some(payload[0]);
        }
        self.emit(payload.to_vec(), false);
    }

    /// A packet starting at `at`, before the stream's end: into the concealment that
    /// filled its slot, if that still waits and has its length; else left out.
    fn take_late(&mut self, at: i64, payload: &[u8]) {
        let samples = u64::from(packet_samples(payload).unwrap_or(0));
        let slot = self.queue.iter_mut().find(|q| {
            q.concealment && i64::try_from(q.start) == Ok(at) && q.end - q.start == samples
        });
        match slot {
            Some(slot) => {
                slot.packet = payload.to_vec();
                slot.concealment = false;
                self.concealment_packets -= 1;
                self.received += 1;
            }
            None => self.late += 1,
        }
    }

    /// What was muxed since the last flush but the last packet, ending on a page
    /// boundary (empty if nothing was). The flushes' outputs, concatenated, are one
    /// valid stream.
    pub fn flush(&mut self) -> Vec<u8> {
        self.page_all_but(1, PacketWriteEndInfo::EndPage)
    }

    /// The rest of the stream, its last page marked end-of-stream.
    pub fn finish(&mut self) -> Vec<u8> {
        self.page_all_but(0, PacketWriteEndInfo::EndStream)
    }

    /// Pages the queued packets but the last `keep`, the last paged one ending its page
    /// as `end` says; returns the pages written since the last call.
    fn page_all_but(&mut self, keep: usize, end: PacketWriteEndInfo) -> Vec<u8> {
        while self.queue.len() > keep {
            let last = self.queue.len() == keep + 1;
            self.page_oldest(if last {
                end
            } else {
                PacketWriteEndInfo::NormalPacket
            });
        }
        std::mem::take(self.writer.inner_mut())
    }

    /// The stream's duration so far: its granule position, in 48 kHz samples.
    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// Packets received and muxed so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets received too late for their place in the stream, left out.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Packets made to fill gaps (lost packets, DTX) so far.
    pub fn concealment_packets(&self) -> u64 {
        self.concealment_packets
    }

    fn write_headers(&mut self, channels: u8) {
        // OpusHead, RFC 7845 §5.1: version 1, channels, pre-skip 0, the input rate
        // (48 kHz: the RTP clock), gain 0, channel mapping family 0.
        let mut head = b"OpusHead".to_vec();
        head.push(1);
        head.push(channels);
        head.extend_from_slice(&0u16.to_le_bytes());
        head.extend_from_slice(&GRANULE_RATE.to_le_bytes());
        head.extend_from_slice(&0i16.to_le_bytes());
        head.push(0);
        // OpusTags, §5.2: vendor string, then the user comments, each length-prefixed.
        let mut tags = b"OpusTags".to_vec();
        let vendor = concat!("turngate ", env!("CARGO_PKG_VERSION"));
        let field = |tags: &mut Vec<u8>, s: &str| {
            tags.extend_from_slice(&(s.len() as u32).to_le_bytes());
            tags.extend_from_slice(s.as_bytes());
        };
        field(&mut tags, vendor);
        tags.extend_from_slice(&(self.comments.len() as u32).to_le_bytes());
        for comment in &self.comments {
            field(&mut tags, comment);
        }
        for header in [head, tags] {
            self.write(header, PacketWriteEndInfo::EndPage, 0);
        }
    }

    /// Fills `gap` samples with packets of zero-length frames: the last packet's
    /// configuration while it fits, then the longest CELT frames that do.
    fn conceal(&mut self, mut gap: u64) {
        while gap >= SHORTEST_FRAME {
            let same = self
                .last_toc
                .map(|toc| (toc & !0x03, frame_samples(toc >> 3)))
                .filter(|&(_, samples)| u64::from(samples) <= gap);
            let (toc, samples) = same.unwrap_or_else(|| {
                // CELT-only fullband, configurations 28–31: 2.5, 5, 10, 20 ms.
                let config = (28..=31)
                    .rev()
                    .find(|&c| u64::from(frame_samples(c)) <= gap)
                    .unwrap_or(28);
                let stereo = self.last_toc.map_or(0, |toc| toc & 0x04);
                ((config << 3) | stereo, frame_samples(config))
            });
            gap -= u64::from(samples);
            self.concealment_packets += 1;
            self.emit(vec![toc], true);
        }
    }

    /// Queues `packet` at the stream's end; pages the oldest beyond [`REORDER`].
    fn emit(&mut self, packet: Vec<u8>, concealment: bool) {
        let start = self.granule;
        self.granule += u64::from(packet_samples(&packet).unwrap_or(0));
        self.queue.push_back(Queued {
            packet,
            start,
            end: self.granule,
            concealment,
        });
        if self.queue.len() > REORDER + 1 {
            self.page_oldest(PacketWriteEndInfo::NormalPacket);
        }
    }

    fn page_oldest(&mut self, end: PacketWriteEndInfo) {
        if let Some(q) = self.queue.pop_front() {
            self.write(q.packet, end, q.end);
        }
    }

    fn write(&mut self, packet: Vec<u8>, end: PacketWriteEndInfo, granule: u64) {
        // Writing into a Vec cannot fail.
        let _ = self.writer.write_packet(packet, self.serial, end, granule);
    }
}

/// What an Ogg Opus stream holds, read back (for a stream whose muxer is gone, as
/// after a crash).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// The last granule position: its duration in 48 kHz samples.
    pub granule: u64,
    /// Audio packets with data.
    pub packets: u32,
    /// Packets of a TOC byte alone: zero-length frames, as [`OggOpus`] fills gaps with.
    pub concealment_packets: u32,
}

impl Summary {
    /// Reads `bytes` up to their end or the first page that does not parse.
    pub fn of(bytes: &[u8]) -> Self {
        let mut reader = ogg::PacketReader::new(std::io::Cursor::new(bytes));
        let mut summary = Self::default();
        let mut n = 0;
        while let Ok(Some(packet)) = reader.read_packet() {
            n += 1;
            if n <= 2 {
                continue; // OpusHead, OpusTags
            }
            summary.granule = summary.granule.max(packet.absgp_page());
            match packet.data.len() {
                0 => {}
                1 => summary.concealment_packets += 1,
                _ => summary.packets += 1,
            }
        }
        summary
    }
}

/// Samples at 48 kHz of one frame of TOC configuration `config` (RFC 6716 §3.1,
/// Table 2).
fn frame_samples(config: u8) -> u32 {
    match config {
        // SILK-only: 10, 20, 40, 60 ms.
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        // Hybrid: 10, 20 ms.
        12..=15 => [480, 960][usize::from(config % 2)],
        // CELT-only: 2.5, 5, 10, 20 ms.
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    }
}

/// The duration of an Opus packet in 48 kHz samples, from its TOC byte and, for code 3,
/// its frame count byte (RFC 6716 §3.1–3.2); `None` for an empty or truncated packet.
pub fn packet_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let frames = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(packet.get(1)? & 0x3f),
    };
    Some(frames * frame_samples(toc >> 3))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 20 ms SILK wideband mono packet: TOC config 9, code 0.
    const SILK_20MS: u8 = 9 << 3;

    fn ms(n: u64) -> std::time::Duration {
        std::time::Duration::from_millis(n)
    }

    /// The arrival time of a packet sent in real time: its timestamp's.
    fn at(timestamp: u32) -> std::time::Duration {
        ms(u64::from(timestamp) / 48)
    }

    #[test]
    fn a_timestamp_jump_is_filled_no_further_than_the_packets_arrival() {
        let mut mux = OggOpus::new(1, Vec::new());
        mux.push(0, ms(0), &[SILK_20MS]);
        // The next packet arrives 20 ms later, claiming to be an hour later.
        mux.push(48_000 * 3600, ms(20), &[SILK_20MS]);
        // Filled up to its arrival plus a second (50 packets of 20 ms), then itself.
        assert_eq!(mux.granule(), 48 * (20 + 1000) + 960);
        assert_eq!(mux.concealment_packets(), 50);
    }

    fn packets(bytes: &[u8]) -> Vec<(Vec<u8>, u64, bool)> {
        let mut reader = ogg::PacketReader::new(std::io::Cursor::new(bytes));
        let mut out = Vec::new();
        while let Some(p) = reader.read_packet().expect("a valid Ogg stream") {
            let (last, granule) = (p.last_in_page(), p.absgp_page());
            out.push((p.data, granule, last));
        }
        out
    }

    #[test]
    fn the_headers_come_first_each_on_its_own_page_with_the_comments() {
        let mut mux = OggOpus::new(7, vec!["TURNGATE_TURN_ID=abc".into()]);
        mux.push(1000, ms(0), &[SILK_20MS, 1, 2, 3]);
        let packets = packets(&mux.finish());
        assert!(packets[0].0.starts_with(b"OpusHead"));
        assert_eq!(packets[0].0[9], 1, "mono");
        assert!(packets[0].2, "OpusHead ends its page");
        assert!(packets[1].0.starts_with(b"OpusTags"));
        assert!(packets[1].2, "OpusTags ends its page");
        let tags = String::from_utf8_lossy(&packets[1].0);
        assert!(tags.contains("TURNGATE_TURN_ID=abc"), "{tags}");
        assert_eq!(packets[2].0, vec![SILK_20MS, 1, 2, 3]);
        assert_eq!(packets[2].1, 960);
    }

    #[test]
    fn lost_and_dtx_gaps_are_filled_with_zero_length_frames() {
        let mut mux = OggOpus::new(1, Vec::new());
        // 0, 20 ms, then 3 packets lost (40..100 ms), then 100 ms.
        for ts in [0u32, 960, 4800] {
            mux.push(ts, at(ts), &[SILK_20MS, 0xaa]);
        }
        assert_eq!(mux.granule(), 5760);
        assert_eq!(mux.concealment_packets(), 3);
        let stream = mux.finish();
        let audio: Vec<_> = packets(&stream).into_iter().skip(2).collect();
        let sizes: Vec<usize> = audio.iter().map(|p| p.0.len()).collect();
        assert_eq!(sizes, [2, 2, 1, 1, 1, 2]);
        let summary = Summary::of(&stream);
        assert_eq!(
            (
                summary.granule,
                summary.packets,
                summary.concealment_packets
            ),
            (5760, 3, 3)
        );
        assert_eq!(
            audio[2].0,
            vec![SILK_20MS],
            "the last packet's configuration"
        );
    }

    #[test]
    fn a_gap_shorter_than_a_frame_is_filled_with_celt_frames_and_rounded_to_2_5_ms() {
        let mut mux = OggOpus::new(1, Vec::new());
        mux.push(0, at(0), &[SILK_20MS]);
        // 20 ms of audio, then a gap of 7.5 ms + 50 samples.
        mux.push(960 + 360 + 50, at(960 + 360 + 50), &[SILK_20MS]);
        // 2.5 ms units only: 5 ms + 2.5 ms of concealment.
        assert_eq!(mux.concealment_packets(), 2);
        assert_eq!(mux.granule(), 960 + 360 + 960);
    }

    #[test]
    fn timestamps_unwrap_across_the_32_bit_boundary() {
        let mut mux = OggOpus::new(1, Vec::new());
        let start = u32::MAX - 959;
        for i in 0..4u32 {
            mux.push(start.wrapping_add(i * 960), at(i * 960), &[SILK_20MS]);
        }
        assert_eq!(mux.granule(), 4 * 960);
        assert_eq!(mux.concealment_packets(), 0);
    }

    #[test]
    fn a_reordered_packet_takes_its_place_and_a_duplicate_is_left_out() {
        let mut mux = OggOpus::new(1, Vec::new());
        // 960 arrives after 1920 (its slot filled with concealment meanwhile), then
        // 960 again; the sender's timing is 3 packets.
        for ts in [0u32, 1920, 960, 960] {
            mux.push(ts, at(1920), &[SILK_20MS, ts as u8]);
        }
        assert_eq!(
            (mux.received(), mux.concealment_packets(), mux.late()),
            (3, 0, 1)
        );
        assert_eq!(mux.granule(), 3 * 960);
        let audio: Vec<_> = packets(&mux.finish()).into_iter().skip(2).collect();
        let order: Vec<(u8, u64)> = audio.iter().map(|p| (p.0[1], p.1)).collect();
        // Packet bytes in timestamp order (granules are per page: one page here).
        assert_eq!(
            order.iter().map(|o| o.0).collect::<Vec<_>>(),
            [0, 960u32 as u8, 1920u32 as u8]
        );
        // Later than the reorder window: left out, the timing kept.
        let mut mux = OggOpus::new(1, Vec::new());
        for i in [0u32, 2, 3, 4, 5, 6, 7, 8, 1] {
            mux.push(i * 960, at(8 * 960), &[SILK_20MS]);
        }
        assert_eq!((mux.late(), mux.concealment_packets()), (1, 1));
        assert_eq!(mux.granule(), 9 * 960);
    }

    #[test]
    fn the_last_page_is_marked_end_of_stream_even_after_a_flush() {
        let mut mux = OggOpus::new(1, Vec::new());
        for i in 0..3u32 {
            mux.push(i * 960, at(i * 960), &[SILK_20MS]);
        }
        let mut joined = mux.flush();
        joined.extend(mux.finish());
        let mut reader = ogg::PacketReader::new(std::io::Cursor::new(&joined));
        let mut last = None;
        while let Some(p) = reader.read_packet().unwrap() {
            last = Some((p.last_in_stream(), p.absgp_page()));
        }
        assert_eq!(last, Some((true, 3 * 960)));
    }

    #[test]
    fn flushed_segments_end_on_pages_and_join_into_one_stream() {
        let mut mux = OggOpus::new(3, Vec::new());
        let mut joined = Vec::new();
        for i in 0..150u32 {
            mux.push(i * 960, at(i * 960), &[SILK_20MS, i as u8]);
            if i % 50 == 49 {
                let segment = mux.flush();
                assert!(segment.starts_with(b"OggS"));
                joined.extend(segment);
                // What is joined so far is a whole stream (as after a crash) of all
                // but the last packet, ending a page.
                let so_far = packets(&joined);
                assert_eq!(so_far.len(), 2 + i as usize);
                assert!(so_far.last().unwrap().2);
            }
        }
        joined.extend(mux.finish());
        let audio: Vec<_> = packets(&joined).into_iter().skip(2).collect();
        assert_eq!(audio.len(), 150);
        assert_eq!(audio.last().unwrap().1, 150 * 960);
        let summary = Summary::of(&joined);
        assert_eq!((summary.granule, summary.packets), (150 * 960, 150));
    }

    proptest::proptest! {
        /// Whatever is lost and wherever the clock starts, the stream lasts from the
        /// first packet's timestamp to the end of the last packet.
        #[test]
        fn the_duration_is_the_senders_whatever_is_lost(
            start: u32,
            kept in proptest::collection::vec(proptest::bool::ANY, 1..300),
        ) {
            let mut mux = OggOpus::new(1, Vec::new());
            let sent: Vec<u32> = (0..kept.len() as u32)
                .filter(|&i| i == 0 || kept[i as usize])
                .collect();
            for &i in &sent {
                mux.push(start.wrapping_add(i * 960), at(i * 960), &[SILK_20MS, 0]);
            }
            let last = u64::from(*sent.last().unwrap());
            proptest::prop_assert_eq!(mux.granule(), (last + 1) * 960);
            proptest::prop_assert_eq!(
                mux.received() + mux.concealment_packets(),
                last + 1
            );
        }
    }

    #[test]
    fn packet_durations_follow_the_toc_byte() {
        // SILK 60 ms, code 1 (two frames): 120 ms.
        assert_eq!(packet_samples(&[(3 << 3) | 1]), Some(5760));
        // CELT 2.5 ms, code 3 with 6 frames.
        assert_eq!(packet_samples(&[(16 << 3) | 3, 6]), Some(720));
        // Hybrid 10 ms, code 0.
        assert_eq!(packet_samples(&[12 << 3]), Some(480));
        assert_eq!(packet_samples(&[]), None);
        assert_eq!(packet_samples(&[3]), None, "code 3 without its count byte");
    }
}
