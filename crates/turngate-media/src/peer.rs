//! WebRTC answerer setup: offer checks, media port allocation and the peer connection.
//!
//! webrtc-rs 0.21 binds one UDP socket per peer connection and has neither a port range
//! nor a UDP mux, so [`PortPool`] hands out ports of the configured range itself and a
//! taken port (a failed build) moves on to the next.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtc::ice::candidate::unmarshal_candidate;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use tokio::sync::{mpsc, oneshot};
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription,
    Registry, SettingEngineBuilder, configure_rtcp_reports,
};

use crate::error::MediaError;

/// How long ICE gathering may take before the answer is given up.
const GATHER_TIMEOUT: Duration = Duration::from_secs(5);
/// Queue of peer-connection events towards the session task; events are rare.
const PEER_EVENT_QUEUE: usize = 32;

/// ICE connectivity checks while connecting: one every 20 ms, 70 per candidate pair, so
/// a pair is still tried for about 1.4 s as with the stack's defaults (200 ms × 7). The
/// stack's 200 ms interval was where the offer-to-connected time went: about 210 ms on
/// loopback, one check interval, where Pion connects in 5–20 ms (measured with
/// `scripts/bench-capacity`). The stack checks every pair on each tick, so with more
/// pairs the interval widens to keep [`ICE_PACING`] between checks ([`check_pacing`]).
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(20);
/// How long a pair is tried.
const ICE_CHECK_SPAN: Duration = Duration::from_millis(1400);
/// Least time between two connectivity checks of one agent (RFC 8445 §14.2: Ta ≥ 5 ms).
const ICE_PACING: Duration = Duration::from_millis(5);
/// Most remote ICE candidates an offer may carry: distinct addresses and ports, not
/// counting TCP ones (never paired: the gateway listens on UDP only) or mDNS `.local`
/// names (not resolved). The gateway sends connectivity checks to every address an
/// offer names, so the count bounds what one offer can make it send towards addresses
/// of the poster's choosing. A browser offers a handful to a dozen distinct ones (host
/// candidates per interface and address family, server-reflexive, relay), repeated per
/// media section.
pub const MAX_OFFER_CANDIDATES: usize = 24;

/// How long the process presents one DTLS certificate before it makes a new one.
const CERTIFICATE_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The DTLS certificate (RFC 8827 §6.5) every peer connection of the process presents:
/// an ECDSA P-256 key and self-signed certificate made on first use and renewed daily.
/// Left to itself the stack makes a new key and certificate for every peer connection, a
/// key generation and a signature on the path of every offer. The certificate only
/// authenticates the DTLS handshake (whose ECDHE keys are new each time, so sessions
/// keep forward secrecy) and its fingerprint travels in the answer; a server presents
/// the same one to everyone, as a TLS server does.
fn certificate() -> Result<RTCCertificate, MediaError> {
    static CURRENT: Mutex<Option<(std::time::Instant, RTCCertificate)>> = Mutex::new(None);
    let webrtc = |e: &dyn std::fmt::Display| MediaError::WebRtc(format!("DTLS certificate: {e}"));
    let mut current = CURRENT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // Renewed by age, or sooner if the wall clock comes within an hour of its expiry
    // (which the stack checks on every connection).
    let fresh = |c: &RTCCertificate| {
        c.expires
            .duration_since(std::time::SystemTime::now())
            .is_ok_and(|left| left > Duration::from_secs(3600))
    };
    if let Some((made, certificate)) = current.as_ref()
        && made.elapsed() < CERTIFICATE_LIFETIME
        && fresh(certificate)
    {
        return Ok(certificate.clone());
    }
    let provider = rtc::crypto::default_provider().map_err(|e| webrtc(&e))?;
    // A random name, as the stack gives its own: the certificate travels in the clear
    // (DTLS 1.2) and need not name the software.
    let name =
        rand::distr::SampleString::sample_string(&rand::distr::Alphanumeric, &mut rand::rng(), 16);
    let params = CertificateParams::new(vec![name]).map_err(|e| webrtc(&e))?;
    let certificate = RTCCertificate::generate(
        provider.crypto(),
        rtc::crypto::SignatureScheme::EcdsaP256Sha256,
        params,
    )
    .map_err(|e| webrtc(&e))?;
    *current = Some((std::time::Instant::now(), certificate.clone()));
    Ok(certificate)
}

/// The interval between connectivity-check rounds and the checks per pair, for
/// `pairs` candidate pairs: [`ICE_CHECK_INTERVAL`], widened so that checks are at
/// least [`ICE_PACING`] apart, and as many as fit in [`ICE_CHECK_SPAN`].
fn check_pacing(pairs: usize) -> (Duration, u16) {
    let interval = ICE_CHECK_INTERVAL.max(ICE_PACING * pairs.max(1) as u32);
    let checks = (ICE_CHECK_SPAN.as_millis() / interval.as_millis()).max(1);
    (interval, checks.min(u128::from(u16::MAX)) as u16)
}

/// Checks that an SDP offer is SDP, has audio the gateway can receive, offers Opus and
/// names at most [`MAX_OFFER_CANDIDATES`] remote candidates; returns how many it names.
pub fn check_offer(sdp: &str) -> Result<usize, MediaError> {
    let parsed = rtc::sdp::SessionDescription::try_from(sdp.to_owned())
        .map_err(|e| MediaError::InvalidSdp(e.to_string()))?;
    // Read by the stack's own parser, as it will read them to pair them: only UDP
    // candidates are paired, mDNS names are dropped (mDNS is off), and a candidate
    // repeated in each media section is one.
    let candidates: BTreeSet<(String, u16)> = parsed
        .attributes
        .iter()
        .chain(parsed.media_descriptions.iter().flat_map(|m| &m.attributes))
        .filter(|a| a.key == "candidate")
        .filter_map(|a| unmarshal_candidate(a.value.as_deref()?).ok())
        .filter(|c| c.network_type().is_udp() && !c.address().ends_with(".local"))
        .map(|c| (c.address().to_ascii_lowercase(), c.port()))
        .collect();
    if candidates.len() > MAX_OFFER_CANDIDATES {
        return Err(MediaError::InvalidSdp(format!(
            "the offer names {} ICE candidate addresses; at most {MAX_OFFER_CANDIDATES} are taken",
            candidates.len()
        )));
    }
    let audio: Vec<_> = parsed
        .media_descriptions
        .iter()
        .filter(|m| m.media_name.media == "audio")
        .collect();
    if audio.is_empty() {
        return Err(MediaError::NoAudio("the offer has no audio media section"));
    }
    let sending = |m: &&rtc::sdp::MediaDescription| {
        !(m.has_attribute("recvonly") || m.has_attribute("inactive"))
    };
    let sending: Vec<_> = audio.into_iter().filter(sending).collect();
    if sending.is_empty() {
        return Err(MediaError::NoAudio(
            "the offer's audio is recvonly or inactive: it sends nothing to receive",
        ));
    }
    if sending.len() > 1 {
        return Err(MediaError::InvalidSdp(format!(
            "the offer sends {} audio tracks; the gateway receives one",
            sending.len()
        )));
    }
    let offers_opus = sending.iter().flat_map(|m| m.attributes.iter()).any(|a| {
        a.key == "rtpmap"
            && a.value
                .as_deref()
                .and_then(|v| v.split_whitespace().nth(1))
                .is_some_and(|codec| {
                    let codec = codec.to_ascii_lowercase();
                    codec.starts_with("opus/48000")
                })
    });
    if !offers_opus {
        return Err(MediaError::UnsupportedCodec);
    }
    Ok(candidates.len())
}

/// Ports of the media range not currently leased.
#[derive(Debug)]
pub struct PortPool {
    range: RangeInclusive<u16>,
    state: Mutex<PoolState>,
}

#[derive(Debug)]
struct PoolState {
    leased: BTreeSet<u16>,
    next: u16,
}

/// A leased port, returned to the pool on drop.
#[derive(Debug)]
pub struct PortLease {
    pool: Arc<PortPool>,
    port: u16,
}

impl PortLease {
    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        if let Ok(mut state) = self.pool.state.lock() {
            state.leased.remove(&self.port);
        }
    }
}

impl PortPool {
    /// A pool over `range` (inclusive). Port 0 ranges mean "any port the OS picks".
    pub fn new(range: RangeInclusive<u16>) -> Arc<Self> {
        let next = *range.start();
        Arc::new(Self {
            range,
            state: Mutex::new(PoolState {
                leased: BTreeSet::new(),
                next,
            }),
        })
    }

    /// Ports in the range.
    pub fn size(&self) -> usize {
        (*self.range.end() as usize + 1).saturating_sub(*self.range.start() as usize)
    }

    /// Leases the next free port, round-robin so a just-freed port rests a while.
    pub fn lease(self: &Arc<Self>) -> Option<PortLease> {
        let mut state = self.state.lock().ok()?;
        let (start, end) = (*self.range.start(), *self.range.end());
        for _ in 0..self.size() {
            let port = state.next;
            state.next = if port >= end { start } else { port + 1 };
            if state.leased.insert(port) {
                return Some(PortLease {
                    pool: Arc::clone(self),
                    port,
                });
            }
        }
        None
    }
}

/// Events of a peer connection, forwarded to its session task.
pub enum PeerEvent {
    /// The remote audio track (on its first RTP packet).
    Track(Arc<dyn TrackRemote>),
    /// A data channel the client opened.
    DataChannel(Arc<dyn DataChannel>),
    /// The connection state changed.
    State(RTCPeerConnectionState),
}

struct Handler {
    events: mpsc::Sender<PeerEvent>,
    gathered: Mutex<Option<oneshot::Sender<()>>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete
            && let Some(tx) = self.gathered.lock().ok().and_then(|mut g| g.take())
        {
            let _ = tx.send(());
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.events.send(PeerEvent::State(state)).await;
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        let _ = self.events.send(PeerEvent::DataChannel(channel)).await;
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.events.send(PeerEvent::Track(track)).await;
    }
}

/// What the answerer needs to know.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// Addresses media sockets bind to (one socket per address, same port).
    pub ips: Vec<IpAddr>,
    /// Cap on bytes queued for sending on a data channel.
    pub data_channel_send_buffer: usize,
    /// ICE: no traffic for this long marks the peer disconnected.
    pub ice_disconnected: Duration,
    /// ICE: further silence after disconnection that fails the connection.
    pub ice_failed: Duration,
}

/// A peer connection that has answered an offer.
pub struct AnsweredPeer {
    /// The SDP answer, candidates included.
    pub answer: String,
    /// The connection; `close()` it when done.
    pub connection: Arc<dyn PeerConnection>,
    /// Its events.
    pub events: mpsc::Receiver<PeerEvent>,
    /// The media port, held until the session ends.
    pub port: PortLease,
}

/// Opus as the gateway registers it: 48 kHz stereo, in-band FEC.
pub fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// Builds a peer connection on a port of `ports` and answers `offer` (non-trickle:
/// gathering completes before the answer is returned).
pub async fn answer(
    config: &PeerConfig,
    ports: &Arc<PortPool>,
    offer: String,
) -> Result<AnsweredPeer, MediaError> {
    let candidates = check_offer(&offer)?;
    // One local candidate per media address.
    let (check_interval, checks) = check_pacing(candidates * config.ips.len());
    let offer =
        RTCSessionDescription::offer(offer).map_err(|e| MediaError::InvalidSdp(e.to_string()))?;
    let webrtc = |e: webrtc::error::Error| MediaError::WebRtc(e.to_string());

    let mut last_error = None;
    for _ in 0..ports.size().min(16) {
        let Some(port) = ports.lease() else { break };
        let mut media = MediaEngine::default();
        media
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: opus_codec(),
                    payload_type: 111,
                },
                RtpCodecKind::Audio,
            )
            .map_err(webrtc)?;
        let registry = configure_rtcp_reports(Registry::new());
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_ice_timeouts(
                Some(config.ice_disconnected),
                Some(config.ice_failed),
                Some(Duration::from_secs(2)),
            )
            .with_ice_connection_attempts(Some(check_interval), Some(checks))
            .build();
        let (events_tx, events) = mpsc::channel(PEER_EVENT_QUEUE);
        let (gathered_tx, gathered) = oneshot::channel();
        let handler = Arc::new(Handler {
            events: events_tx,
            gathered: Mutex::new(Some(gathered_tx)),
        });
        let addrs: Vec<SocketAddr> = config
            .ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, port.port()))
            .collect();
        let built = PeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_certificates(vec![certificate()?])
                    .build(),
            )
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .with_handler(handler)
            .with_udp_addrs(addrs)
            .with_data_channel_send_buffer_limit(config.data_channel_send_buffer)
            .build()
            .await;
        let connection: Arc<dyn PeerConnection> = match built {
            Ok(pc) => Arc::new(pc),
            Err(e) => {
                // Most likely the port is taken by another process: try the next one.
                last_error = Some(e.to_string());
                continue;
            }
        };
        return match negotiate(&connection, offer, gathered).await {
            Ok(answer) => Ok(AnsweredPeer {
                answer,
                connection,
                events,
                port,
            }),
            Err(e) => {
                let _ = connection.close().await;
                Err(e)
            }
        };
    }
    Err(MediaError::NoPort(
        last_error.unwrap_or_else(|| "every port is leased".to_owned()),
    ))
}

async fn negotiate(
    pc: &Arc<dyn PeerConnection>,
    offer: RTCSessionDescription,
    gathered: oneshot::Receiver<()>,
) -> Result<String, MediaError> {
    pc.set_remote_description(offer)
        .await
        .map_err(|e| MediaError::InvalidSdp(e.to_string()))?;
    let answer = pc
        .create_answer(None)
        .await
        .map_err(|e| MediaError::WebRtc(e.to_string()))?;
    pc.set_local_description(answer)
        .await
        .map_err(|e| MediaError::WebRtc(e.to_string()))?;
    tokio::time::timeout(GATHER_TIMEOUT, gathered)
        .await
        .map_err(|_| MediaError::Timeout("ICE gathering"))?
        .map_err(|_| MediaError::WebRtc("the peer connection closed while gathering".into()))?;
    let local = pc
        .local_description()
        .await
        .ok_or_else(|| MediaError::WebRtc("no local description".into()))?;
    let parsed = local
        .unmarshal()
        .map_err(|e| MediaError::WebRtc(e.to_string()))?;
    let audio_accepted = parsed
        .media_descriptions
        .iter()
        .any(|m| m.media_name.media == "audio" && m.media_name.port.value != 0);
    if !audio_accepted {
        return Err(MediaError::UnsupportedCodec);
    }
    Ok(local.sdp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=sendrecv\r\n\
        a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n";

    fn code(sdp: &str) -> turngate_core::ErrorCode {
        check_offer(sdp).unwrap_err().code()
    }

    #[test]
    fn offer_checks() {
        use turngate_core::ErrorCode::*;
        assert!(check_offer(OFFER).is_ok());
        assert_eq!(code("hello"), InvalidSdp);
        assert_eq!(code(""), InvalidSdp);
        assert_eq!(code(&OFFER.replace("m=audio", "m=video")), NoAudio);
        assert_eq!(code(&OFFER.replace("a=sendrecv", "a=recvonly")), NoAudio);
        assert_eq!(
            code(&OFFER.replace("opus/48000/2", "G722/8000")),
            UnsupportedCodec
        );
        let two_tracks = OFFER.to_owned()
            + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\n";
        assert_eq!(code(&two_tracks), InvalidSdp);
    }

    #[test]
    fn offers_name_at_most_so_many_candidate_addresses() {
        use turngate_core::ErrorCode::InvalidSdp;
        let candidate = |n: usize, transport: &str| {
            format!("a=candidate:{n} 1 {transport} 2130706431 192.0.2.{n} 9 typ host\r\n")
        };
        let within: String = (1..=MAX_OFFER_CANDIDATES)
            .map(|n| candidate(n, "udp"))
            .collect();
        // The same candidates again (a second media section repeats them), TCP ones
        // and mDNS names do not count.
        let repeated = within.clone()
            + &within
            + &candidate(99, "tcp")
            + "a=candidate:7 1 udp 1 abcd.local 9 typ host\r\n";
        assert_eq!(
            check_offer(&(OFFER.to_owned() + &repeated)).unwrap(),
            MAX_OFFER_CANDIDATES
        );
        // The stack takes any transport but TCP for UDP: "udpx" counts.
        for transport in ["udp", "UDP", "udpx"] {
            let over = within.clone() + &candidate(MAX_OFFER_CANDIDATES + 1, transport);
            assert_eq!(code(&(OFFER.to_owned() + &over)), InvalidSdp, "{transport}");
        }
    }

    #[test]
    fn checks_stay_5_ms_apart_however_many_pairs() {
        assert_eq!(check_pacing(0), (Duration::from_millis(20), 70));
        assert_eq!(check_pacing(4), (Duration::from_millis(20), 70));
        assert_eq!(check_pacing(24), (Duration::from_millis(120), 11));
    }

    proptest::proptest! {
        /// Whatever a client posts, the offer check returns (and never panics).
        #[test]
        fn any_offer_is_checked_without_panicking(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("v=0".to_owned()),
                    proptest::strategy::Just("m=audio 9 UDP/TLS/RTP/SAVPF 111".to_owned()),
                    proptest::strategy::Just("a=rtpmap:111 opus/48000/2".to_owned()),
                    "[a-z]=.{0,40}",
                    ".{0,40}",
                ],
                0..20,
            ),
        ) {
            let _ = check_offer(&lines.join("\r\n"));
            let _ = check_offer(&(OFFER.to_owned() + &lines.join("\r\n")));
        }
    }

    #[test]
    fn every_peer_connection_presents_the_process_certificate() {
        let pem = |c: RTCCertificate| c.serialize_pem().unwrap();
        let first = pem(certificate().unwrap());
        assert!(first.contains("CERTIFICATE"), "{first}");
        assert_eq!(pem(certificate().unwrap()), first);
    }

    #[test]
    fn ports_are_leased_round_robin_and_returned() {
        let pool = PortPool::new(40_000..=40_001);
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        assert_eq!((a.port(), b.port()), (40_000, 40_001));
        assert!(pool.lease().is_none());
        drop(a);
        assert_eq!(pool.lease().unwrap().port(), 40_000);
    }
}
