//! The Ogg Opus recording decodes with libopus to the sender's duration, across a
//! lost-packet gap and a DTX gap.

use turngate_store::ogg::{GRANULE_RATE, OggOpus};

/// 20 ms packets of a 440 Hz tone, encoded by libopus (48 kHz mono).
fn tone(packets: usize) -> Vec<Vec<u8>> {
    let mut encoder =
        opus::Encoder::new(GRANULE_RATE, opus::Channels::Mono, opus::Application::Voip).unwrap();
    (0..packets)
        .map(|p| {
            let pcm: Vec<i16> = (0..960)
                .map(|i| {
                    let t = (p * 960 + i) as f32 / GRANULE_RATE as f32;
                    ((t * 440.0 * std::f32::consts::TAU).sin() * 8000.0) as i16
                })
                .collect();
            encoder.encode_vec(&pcm, 4000).unwrap()
        })
        .collect()
}

#[test]
fn the_recording_decodes_to_the_senders_duration_across_loss_and_dtx() {
    let sent = tone(100);
    let mut mux = OggOpus::new(9, vec!["TURNGATE_TURN_ID=t".into()]);
    let base = 0xffff_0000_u32; // wraps around mid-stream
    let mut joined = Vec::new();
    for (i, packet) in sent.iter().enumerate() {
        // Packets 20..25 lost; 60..80 not sent (DTX: the timestamp jumps, nothing else).
        if (20..25).contains(&i) || (60..80).contains(&i) {
            continue;
        }
        let arrival = std::time::Duration::from_millis(i as u64 * 20);
        mux.push(base.wrapping_add(i as u32 * 960), arrival, packet);
        if i % 50 == 49 {
            joined.extend(mux.flush());
        }
    }
    joined.extend(mux.finish());
    assert_eq!(mux.concealment_packets(), 25);

    let mut reader = ogg::PacketReader::new(std::io::Cursor::new(joined));
    let mut decoder = opus::Decoder::new(GRANULE_RATE, opus::Channels::Mono).unwrap();
    let (mut decoded, mut last_granule, mut n) = (0usize, 0, 0);
    let mut out = vec![0i16; 5760];
    while let Some(p) = reader.read_packet().unwrap() {
        n += 1;
        if n <= 2 {
            continue; // OpusHead, OpusTags
        }
        decoded += decoder.decode(&p.data, &mut out, false).unwrap();
        last_granule = p.absgp_page();
    }
    // 100 packets of 20 ms: 2 s, to the sample.
    assert_eq!(decoded, 100 * 960);
    assert_eq!(last_granule, 100 * 960);
}
