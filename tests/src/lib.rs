//! End-to-end test harness: runs the real `turngate` binary, built from the current
//! source, and drives it with real WebRTC peers over loopback only.
//!
//! - [`Gateway`] builds (`cargo build -p turngate`, so no stale binary is ever tested)
//!   and starts `turngate serve` on free loopback ports, and stops it on drop;
//! - [`Client`] is a webrtc-rs peer bound to 127.0.0.1 that sends Opus RTP it encodes
//!   from a WAV fixture, optionally with the `turngate` data channel;
//! - [`wav`] reads the fixtures under `tests/data/`;
//! - [`tokens`] holds the keys harness gateways run with: access control is on in
//!   every test unless the test brings its own keys or asks for the open development
//!   default ([`Gateway::start_open`]).

pub mod fake_openai;
pub mod otlp;
pub mod s3;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::sync::{Notify, oneshot};
use turngate_media::peer;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription,
    SettingEngineBuilder,
};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// A fixture under `tests/data/`.
pub fn data(name: &str) -> PathBuf {
    workspace().join("tests/data").join(name)
}

/// The gateway binary, built from the current source: if any file of the gateway's
/// crates (or `Cargo.lock`) is newer than the binary, it is rebuilt first, once per test
/// process. (`cargo nextest run --workspace` builds it anyway; this catches runs of this
/// package alone.)
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace().join("target"));
        let binary = target.join("debug/turngate");
        let built = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
        let newest_source = [
            workspace().join("crates"),
            workspace().join("Cargo.lock"),
            workspace().join("Cargo.toml"),
        ]
        .iter()
        .filter_map(|p| newest_mtime(p))
        .max();
        if built.is_none() || newest_source > built {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args(["build", "--quiet", "-p", "turngate", "--bin", "turngate"])
                .current_dir(workspace())
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building turngate failed");
        }
        binary
    })
}

fn newest_mtime(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}

/// A loopback TCP port free just now (nothing listens on it).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running `turngate serve`.
pub struct Gateway {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// An HTTP client; on a gateway with the harness keys it sends
    /// [`tokens::harness_bearer`] unless a request names its own `Authorization`.
    pub http: reqwest::Client,
    /// Whether the gateway verifies tokens with the harness keys ([`tokens`]).
    harness_keys: bool,
    /// The directory its turn records go to (`TURNGATE_STORE_URL`): one of its own,
    /// removed when it is dropped, unless the test named one.
    pub store: PathBuf,
    own_store: bool,
    /// Its spool directory (`TURNGATE_SPOOL_DIR`), removed when it is dropped.
    spool: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.own_store {
            let _ = std::fs::remove_dir_all(&self.store);
        }
        let _ = std::fs::remove_dir_all(&self.spool);
    }
}

impl Gateway {
    /// Starts the gateway on loopback with extra arguments and environment, with
    /// access control on: the harness keys ([`tokens`]), unless `env` names keys of
    /// its own ([`tokens::KEY_VARIABLES`]).
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let own_keys = env.iter().any(|(k, _)| tokens::KEY_VARIABLES.contains(k));
        Self::launch(args, env, !own_keys).await
    }

    /// Starts the gateway with no keys at all: the loopback development default,
    /// where every route is open.
    pub async fn start_open(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::launch(args, env, false).await
    }

    async fn launch(
        args: &[&str],
        env: &[(&str, &str)],
        harness_keys: bool,
    ) -> anyhow::Result<Self> {
        let port = free_tcp_port();
        // A media range of its own per gateway; a taken port is skipped by the gateway.
        let media = 20_000 + (port % 400) * 100;
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--media-ip",
                "127.0.0.1",
            ])
            .args(["--media-ports", &format!("{media}-{}", media + 99)])
            .args(args)
            .env(
                "TURNGATE_LOG",
                "info,turngate_media=debug,rtc=error,webrtc=warn",
            );
        for key in tokens::KEY_VARIABLES {
            cmd.env_remove(key);
        }
        if harness_keys {
            cmd.env("TURNGATE_AUTH_HS256_SECRET", tokens::SECRET)
                .env("TURNGATE_ADMIN_TOKEN", tokens::ADMIN_TOKEN);
        }
        let named = env.iter().find(|(k, _)| *k == "TURNGATE_STORE_URL");
        let store = match named {
            Some((_, url)) => PathBuf::from(url.trim_start_matches("file://")),
            None => {
                std::env::temp_dir().join(format!("turngate-records-{}-{port}", std::process::id()))
            }
        };
        cmd.env("TURNGATE_STORE_URL", &store);
        // A spool directory of its own too (used past the memory spool, S3 stores).
        let spool =
            std::env::temp_dir().join(format!("turngate-spool-{}-{port}", std::process::id()));
        if !env.iter().any(|(k, _)| *k == "TURNGATE_SPOOL_DIR") {
            cmd.env("TURNGATE_SPOOL_DIR", &spool);
        }
        cmd.envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("spawning turngate")?;
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                }
            });
        }
        let gw = Self {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            http: http_client(harness_keys.then(tokens::harness_bearer)),
            harness_keys,
            store,
            own_store: named.is_none(),
            spool,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = gw.http.get(format!("{}/healthz", gw.base)).send().await
                && r.status().is_success()
            {
                return Ok(gw);
            }
            if Instant::now() > deadline {
                bail!("turngate did not become healthy; log:\n{}", gw.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A gateway started elsewhere, at `base` (e.g. for load runs).
    pub fn external(base: &str) -> Self {
        Self {
            child: None,
            base: base.trim_end_matches('/').to_owned(),
            http: http_client(None),
            harness_keys: false,
            store: PathBuf::new(),
            own_store: false,
            spool: PathBuf::new(),
            log: Arc::default(),
        }
    }

    /// `Bearer <token>` for a new subject allowed `whip` and `upload`, on a gateway
    /// with the harness keys; `None` where the harness holds no keys.
    pub fn client_authorization(&self) -> Option<String> {
        self.harness_keys
            .then(|| format!("Bearer {}", tokens::client_token()))
    }

    /// A token (no `Bearer `) for a new subject, for clients outside this process
    /// (aiortc, Chromium), on a gateway with the harness keys.
    pub fn client_token(&self) -> Option<String> {
        self.harness_keys.then(tokens::client_token)
    }

    /// Everything the gateway wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `GET {path}` as JSON, with the status.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let r = self.http.get(format!("{}{path}", self.base)).send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await?))
    }

    /// `GET /v1/sessions/{id}`.
    pub async fn session(&self, id: &str) -> anyhow::Result<Value> {
        let (status, body) = self.get(&format!("/v1/sessions/{id}")).await?;
        anyhow::ensure!(status == 200, "session {id}: {status} {body}");
        Ok(body)
    }

    /// Polls a session until `done` holds, or fails after `timeout`.
    pub async fn wait_session(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.session(id).await?;
            if done(&s) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!(
                    "session {id} did not reach the expected state: {s:#}\nlog:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A gateway whose configuration file holds `toml` (written under a temporary
    /// directory named after `name`), with more `args` and `env`.
    pub async fn with_config(
        name: &str,
        toml: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("turngate-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("config.toml");
        std::fs::write(&file, toml)?;
        let mut all = vec!["--config", file.to_str().context("a UTF-8 path")?];
        all.extend_from_slice(args);
        Self::start(&all, env).await
    }

    /// Sends SIGTERM and waits for the exit status.
    /// A `/metrics` sample's value: `name{labels}` as written, or `name` alone.
    pub async fn metric(&self, sample: &str) -> anyhow::Result<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .text()
            .await?;
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{sample} not in\n{text}"))
    }

    /// Kills the process outright (SIGKILL): no shutdown, as in a crash.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("already stopped")?;
        child.kill().await?;
        Ok(())
    }

    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        let pid = child.id().context("no pid")?;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        Ok(tokio::time::timeout(Duration::from_secs(20), child.wait()).await??)
    }
}

/// Reads a 16-bit PCM WAV file: (sample rate, mono samples).
pub mod wav {
    use anyhow::{Context, bail};

    /// The samples of a mono 16-bit WAV.
    pub fn read(path: &std::path::Path) -> anyhow::Result<(u32, Vec<i16>)> {
        let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
        if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
            bail!("{}: not a WAV file", path.display());
        }
        let (mut rate, mut channels, mut bits, mut i) = (0u32, 0u16, 0u16, 12usize);
        while i + 8 <= bytes.len() {
            let id = &bytes[i..i + 4];
            let len = u32::from_le_bytes(bytes[i + 4..i + 8].try_into()?) as usize;
            let body = &bytes[i + 8..(i + 8 + len).min(bytes.len())];
            match id {
                b"fmt " => {
                    channels = u16::from_le_bytes(body[2..4].try_into()?);
                    rate = u32::from_le_bytes(body[4..8].try_into()?);
                    bits = u16::from_le_bytes(body[14..16].try_into()?);
                }
                b"data" => {
                    if channels != 1 || bits != 16 {
                        bail!(
                            "{}: want mono 16-bit, got {channels} ch {bits} bit",
                            path.display()
                        );
                    }
                    let pcm = body
                        .chunks_exact(2)
                        .map(|c| i16::from_le_bytes([c[0], c[1]]))
                        .collect();
                    return Ok((rate, pcm));
                }
                _ => {}
            }
            i += 8 + len + (len & 1);
        }
        bail!("{}: no data chunk", path.display())
    }
}

/// Encodes mono PCM into 20 ms Opus packets.
pub fn encode_opus(rate: u32, pcm: &[i16]) -> anyhow::Result<Vec<Vec<u8>>> {
    encode_opus_frames(rate, pcm, 20)
}

/// Encodes PCM as Opus packets of `frame_ms` (2.5 to 120 ms, as Opus allows).
pub fn encode_opus_frames(rate: u32, pcm: &[i16], frame_ms: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut enc = opus::Encoder::new(rate, opus::Channels::Mono, opus::Application::Voip)?;
    enc.set_inband_fec(true)?;
    let frame = rate as usize * frame_ms / 1000;
    let mut packets = Vec::new();
    for chunk in pcm.chunks(frame) {
        let mut padded = chunk.to_vec();
        padded.resize(frame, 0);
        packets.push(enc.encode_vec(&padded, 1500)?);
    }
    Ok(packets)
}

/// Data-channel messages a client received.
#[derive(Clone, Default)]
pub struct Inbox {
    /// Each event with when it arrived.
    events: Arc<Mutex<Vec<(Instant, Value)>>>,
    notify: Arc<Notify>,
}

impl Inbox {
    /// All events so far.
    pub fn all(&self) -> Vec<Value> {
        let events = self.events.lock().unwrap();
        events.iter().map(|(_, event)| event.clone()).collect()
    }

    /// All events so far, each with when the client received it.
    pub fn stamped(&self) -> Vec<(Instant, Value)> {
        self.events.lock().unwrap().clone()
    }

    /// Events of one type.
    pub fn of(&self, kind: &str) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|e| e["type"] == kind)
            .collect()
    }

    /// Waits until `n` events of `kind` have arrived.
    pub async fn wait(
        &self,
        kind: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            let got = self.of(kind);
            if got.len() >= n {
                return Ok(got);
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                bail!("waited for {n} {kind:?} events; got {:#?}", self.all());
            }
        }
    }

    fn push(&self, event: Value) {
        self.events.lock().unwrap().push((Instant::now(), event));
        self.notify.notify_waiters();
    }
}

struct ClientHandler {
    gathered: Mutex<Option<oneshot::Sender<()>>>,
    state: tokio::sync::watch::Sender<RTCPeerConnectionState>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for ClientHandler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete
            && let Some(tx) = self.gathered.lock().unwrap().take()
        {
            let _ = tx.send(());
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.state.send_replace(state);
    }
}

const SSRC: u32 = 0x7475_726e;
const PT: u8 = 111;

/// A webrtc-rs client peer on loopback.
pub struct Client {
    pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
    channel: Option<Arc<dyn DataChannel>>,
    state: tokio::sync::watch::Receiver<RTCPeerConnectionState>,
    /// Events received on the data channel.
    pub inbox: Inbox,
    /// The WHIP resource URL path.
    pub location: String,
    /// The `Authorization` its offer carried (`Bearer …`), if the harness chose it.
    pub authorization: Option<String>,
    /// RTP packets written to the track, and the (sequence number, timestamp) of the next.
    rtp: Mutex<(u64, u16, u32)>,
    /// Paced packets written more than one packet time (20 ms) after their time, and
    /// the latest any was: a load generator short of CPU.
    late: Mutex<(u64, Duration)>,
}

impl Client {
    /// Connects to the gateway, with or without the `turngate` data channel.
    /// As a subject of its own on a gateway with the harness keys.
    pub async fn connect(gw: &Gateway, data_channel: bool) -> anyhow::Result<Self> {
        let authorization = gw.client_authorization();
        let headers: Vec<_> = authorization
            .iter()
            .map(|bearer| ("authorization", bearer.as_str()))
            .collect();
        let mut client = Self::connect_with(data_channel, |offer| async move {
            let (status, location, answer) = post_offer_with(gw, &offer, &headers).await?;
            anyhow::ensure!(status == 201, "WHIP POST gave {status}: {answer}");
            Ok((answer, location.context("no Location")?))
        })
        .await?;
        client.authorization = authorization;
        Ok(client)
    }

    /// Connects through `signal`, which takes the offer and returns the answer and the
    /// resource location.
    pub async fn connect_with<F, Fut>(data_channel: bool, signal: F) -> anyhow::Result<Self>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<(String, String)>>,
    {
        let (pc, track, channel, inbox, state, offer) = Self::prepare(data_channel).await?;
        let (answer, location) = signal(offer).await?;
        pc.set_remote_description(RTCSessionDescription::answer(answer)?)
            .await?;
        let mut client = Self {
            pc,
            track,
            channel,
            state,
            inbox,
            location,
            authorization: None,
            rtp: Mutex::new((0, 1000, 0)),
            late: Mutex::default(),
        };
        client.wait_connected().await?;
        Ok(client)
    }

    /// Posts a real offer, then closes the peer before it can connect. Returns the
    /// WHIP resource path.
    pub async fn offer_only(gw: &Gateway) -> anyhow::Result<String> {
        let (pc, .., offer) = Self::prepare(true).await?;
        let (status, location, answer) = post_offer(gw, "application/sdp", offer).await?;
        let _ = pc.close().await;
        anyhow::ensure!(status == 201, "WHIP POST gave {status}: {answer}");
        location.context("no Location")
    }

    /// Posts a real offer with extra `headers`, then closes the peer before it can
    /// connect. Returns the status and the body.
    pub async fn offer_with(
        gw: &Gateway,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, String)> {
        let (pc, .., offer) = Self::prepare(true).await?;
        let (status, _, body) = post_offer_with(gw, &offer, headers).await?;
        let _ = pc.close().await;
        Ok((status, body))
    }

    #[allow(clippy::type_complexity)]
    async fn prepare(
        data_channel: bool,
    ) -> anyhow::Result<(
        Arc<dyn PeerConnection>,
        Arc<TrackLocalStaticRTP>,
        Option<Arc<dyn DataChannel>>,
        Inbox,
        tokio::sync::watch::Receiver<RTCPeerConnectionState>,
        String,
    )> {
        let mut media = MediaEngine::default();
        media.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: peer::opus_codec(),
                payload_type: PT,
            },
            RtpCodecKind::Audio,
        )?;
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .build();
        let (gathered_tx, gathered) = oneshot::channel();
        let (state_tx, state) = tokio::sync::watch::channel(RTCPeerConnectionState::New);
        let handler = Arc::new(ClientHandler {
            gathered: Mutex::new(Some(gathered_tx)),
            state: state_tx,
        });
        let pc: Arc<dyn PeerConnection> = Arc::new(
            PeerConnectionBuilder::new()
                .with_configuration(RTCConfigurationBuilder::new().build())
                .with_media_engine(media)
                .with_setting_engine(settings)
                .with_handler(handler)
                .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
                .build()
                .await?,
        );
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            "turngate-test".to_owned(),
            "mic".to_owned(),
            "mic".to_owned(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(SSRC),
                    ..Default::default()
                },
                codec: peer::opus_codec(),
                ..Default::default()
            }],
        )));
        pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
            .await?;
        let inbox = Inbox::default();
        let channel = if data_channel {
            let dc = pc.create_data_channel("turngate", None).await?;
            let (dc2, inbox2) = (Arc::clone(&dc), inbox.clone());
            tokio::spawn(async move {
                while let Some(ev) = dc2.poll().await {
                    if let DataChannelEvent::OnMessage(m) = ev
                        && m.is_string
                        && let Ok(v) = serde_json::from_slice::<Value>(&m.data)
                    {
                        inbox2.push(v);
                    }
                }
            });
            Some(dc)
        } else {
            None
        };
        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer).await?;
        tokio::time::timeout(Duration::from_secs(5), gathered).await??;
        let offer = pc
            .local_description()
            .await
            .context("no local description")?
            .sdp;
        Ok((pc, track, channel, inbox, state, offer))
    }

    async fn wait_connected(&mut self) -> anyhow::Result<()> {
        let connected = self
            .state
            .wait_for(|s| *s == RTCPeerConnectionState::Connected);
        tokio::time::timeout(Duration::from_secs(10), connected).await??;
        Ok(())
    }

    /// Sends a JSON event on the data channel.
    pub async fn send_event(&self, event: Value) -> anyhow::Result<()> {
        self.send_text(&event.to_string()).await
    }

    /// Sends raw text on the data channel.
    pub async fn send_text(&self, text: &str) -> anyhow::Result<()> {
        let dc = self.channel.as_ref().context("no data channel")?;
        dc.send_text(text).await?;
        Ok(())
    }

    /// RTP packets written to the track so far.
    pub fn packets_sent(&self) -> u64 {
        self.rtp.lock().unwrap().0
    }

    /// Of the packets sent in real time, how many left more than 20 ms after their
    /// time, and the most any was late.
    pub fn packets_late(&self) -> (u64, Duration) {
        *self.late.lock().unwrap()
    }

    /// Sends a binary message on the data channel.
    pub async fn send_binary(&self, message: &[u8]) -> anyhow::Result<()> {
        let dc = self.channel.as_ref().context("no data channel")?;
        dc.send(bytes::BytesMut::from(message)).await?;
        Ok(())
    }

    /// Uploads an image on the data channel: `image.begin` (with its size and SHA-256),
    /// chunks of at most `chunk` payload bytes framed `[L][upload_id][payload]`, then
    /// `image.end`.
    pub async fn upload(
        &self,
        upload_id: &str,
        mime: &str,
        image: &[u8],
        chunk: usize,
    ) -> anyhow::Result<()> {
        let sha = sha256_hex(image);
        let begin = serde_json::json!({
            "type": "image.begin", "upload_id": upload_id, "mime": mime,
            "size": image.len(), "sha256": sha,
        });
        self.send_event(begin).await?;
        for piece in image.chunks(chunk) {
            self.send_binary(&frame_chunk(upload_id, piece)).await?;
        }
        self.send_event(serde_json::json!({"type": "image.end", "upload_id": upload_id}))
            .await
    }

    /// Speaks `speech.wav` (speech begins 0.5 s in) and, once the VAD turn has started
    /// (1 s in), uploads a PNG over the data channel while the speech goes on. Returns
    /// the turn's `turn.started` event.
    pub async fn speak_with_upload(&self, upload_id: &str, image: &[u8]) -> anyhow::Result<Value> {
        let (rate, pcm) = wav::read(&data("speech.wav"))?;
        let packets = encode_opus(rate, &pcm)?;
        self.send_packets(&packets[..50], &[]).await?;
        let started = self
            .inbox
            .wait("turn.started", 1, Duration::from_secs(2))
            .await?;
        self.upload(upload_id, "image/png", image, 16 * 1024)
            .await?;
        self.send_packets(&packets[50..], &[]).await?;
        Ok(started[0].clone())
    }

    /// Sends Opus packets in real time (20 ms apart), skipping the indices in `lose`.
    pub async fn send_packets(&self, packets: &[Vec<u8>], lose: &[usize]) -> anyhow::Result<()> {
        self.send_paced(packets, lose, Duration::from_millis(20), 960)
            .await
    }

    /// Sends Opus packets in real time whose RTP timestamps step by `step` (48 kHz
    /// units) instead of the 960 of a 20 ms packet: a sender claiming more time passed
    /// than did.
    pub async fn send_stepped(&self, packets: &[Vec<u8>], step: u32) -> anyhow::Result<()> {
        self.send_paced(packets, &[], Duration::from_millis(20), step)
            .await
    }

    /// Sends Opus packets as fast as the stack takes them (their RTP timestamps still
    /// 20 ms apart), so they queue up in the gateway.
    pub async fn send_burst(&self, packets: &[Vec<u8>]) -> anyhow::Result<()> {
        self.send_paced(packets, &[], Duration::ZERO, 960).await
    }

    /// Opens another data channel; the receiver resolves when the channel closes.
    pub async fn open_channel(&self, label: &str) -> anyhow::Result<oneshot::Receiver<()>> {
        let dc = self.pc.create_data_channel(label, None).await?;
        let (closed_tx, closed) = oneshot::channel();
        tokio::spawn(async move {
            while let Some(ev) = dc.poll().await {
                if matches!(ev, DataChannelEvent::OnClose) {
                    break;
                }
            }
            let _ = closed_tx.send(());
        });
        Ok(closed)
    }

    async fn send_paced(
        &self,
        packets: &[Vec<u8>],
        lose: &[usize],
        pace: Duration,
        step: u32,
    ) -> anyhow::Result<()> {
        let start = tokio::time::Instant::now();
        for (i, payload) in packets.iter().enumerate() {
            let due = start + pace * i as u32;
            tokio::time::sleep_until(due).await;
            let (seq, timestamp) = {
                let mut rtp = self.rtp.lock().unwrap();
                let next = (rtp.1, rtp.2);
                rtp.1 = rtp.1.wrapping_add(1);
                rtp.2 = rtp.2.wrapping_add(step);
                next
            };
            if lose.contains(&i) {
                continue;
            }
            let packet = rtc::rtp::Packet {
                header: rtc::rtp::Header {
                    version: 2,
                    payload_type: PT,
                    sequence_number: seq,
                    timestamp,
                    ssrc: SSRC,
                    marker: i == 0,
                    ..Default::default()
                },
                payload: Bytes::from(payload.clone()),
            };
            self.track.write_rtp(packet).await?;
            self.rtp.lock().unwrap().0 += 1;
            if !pace.is_zero() {
                // Taken once the stack has the packet: its send queue (256 packets)
                // shows here only once full; lag inside it shows as packets that land
                // after the run (the counters are read 500 ms after the last send).
                let behind = due.elapsed();
                let mut late = self.late.lock().unwrap();
                late.0 += u64::from(behind > Duration::from_millis(20));
                late.1 = late.1.max(behind);
            }
        }
        Ok(())
    }

    /// Sends nothing for `packets` × 20 ms while the RTP clock runs on, as a sender in
    /// discontinuous transmission (DTX) does: the next packet's timestamp jumps, its
    /// sequence number does not.
    pub async fn pause_dtx(&self, packets: u32) {
        tokio::time::sleep(Duration::from_millis(20) * packets).await;
        let mut rtp = self.rtp.lock().unwrap();
        rtp.2 = rtp.2.wrapping_add(960 * packets);
    }

    /// Encodes a WAV fixture and sends it in real time.
    pub async fn send_wav(&self, name: &str) -> anyhow::Result<()> {
        let (rate, pcm) = wav::read(&data(name))?;
        let packets = encode_opus(rate, &pcm)?;
        self.send_packets(&packets, &[]).await
    }

    /// The session id from `session.ready`.
    pub async fn session_id(&self) -> anyhow::Result<String> {
        let ready = self
            .inbox
            .wait("session.ready", 1, Duration::from_secs(10))
            .await?;
        Ok(ready[0]["session_id"]
            .as_str()
            .context("session_id")?
            .to_owned())
    }

    /// `DELETE` on the WHIP resource (with the offer's `Authorization`); returns the
    /// status. The peer connection is closed.
    pub async fn delete(&self, gw: &Gateway) -> anyhow::Result<u16> {
        let r = self
            .authorized(gw.http.delete(format!("{}{}", gw.base, self.location)))
            .send()
            .await?;
        let _ = self.pc.close().await;
        Ok(r.status().as_u16())
    }

    /// Waits until the gateway has received every packet sent, DELETEs the session
    /// (expecting 204), waits for it to end and checks that its counters balance with
    /// `frames_received` equal to the packets sent. Returns the ended session.
    pub async fn finish(&self, gw: &Gateway, session_id: &str) -> anyhow::Result<Value> {
        let sent = self.packets_sent();
        gw.wait_session(session_id, Duration::from_secs(5), |s| {
            s["counters"]["frames_received"] == sent
        })
        .await?;
        anyhow::ensure!(self.delete(gw).await? == 204, "DELETE did not give 204");
        let session = gw
            .wait_session(session_id, Duration::from_secs(5), |s| {
                s["state"] == "ended"
            })
            .await?;
        assert_eq!(assert_balanced(&session), sent, "{session:#}");
        Ok(session)
    }

    /// `request` with the `Authorization` this client's offer carried, if any: what its
    /// owner sends to its WHIP resource (DELETE, image uploads).
    pub fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.authorization {
            Some(bearer) => request.header("authorization", bearer),
            None => request,
        }
    }

    /// Closes the peer connection without telling the gateway.
    pub async fn vanish(&self) {
        let _ = self.pc.close().await;
    }
}

/// A synthetic picture encoded as `format` (PNG, JPEG, GIF…).
pub fn picture(width: u32, height: u32, format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, 90])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encodes");
    out.into_inner()
}

/// A synthetic PNG screenshot.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    picture(width, height, image::ImageFormat::Png)
}

/// A synthetic JPEG photo.
pub fn jpeg(width: u32, height: u32) -> Vec<u8> {
    picture(width, height, image::ImageFormat::Jpeg)
}

/// A PNG of noise, which does not compress: about `width × height × 3` bytes.
pub fn noise_png(width: u32, height: u32) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    let img = image::RgbImage::from_fn(width, height, |_, _| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let [a, b, c, _] = state.to_le_bytes();
        image::Rgb([a, b, c])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encodes");
    out.into_inner()
}

/// A GIF of a few hundred bytes that is expensive to validate: `frames` frames of one
/// pixel each on a `side` × `side` canvas, each of which a decoder composites onto a
/// whole canvas. Written by hand (GIF89a), since encoders write frames canvas-sized.
pub fn canvas_gif(side: u16, frames: usize) -> Vec<u8> {
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&side.to_le_bytes());
    gif.extend_from_slice(&side.to_le_bytes());
    // A global colour table of two colours: black and white.
    gif.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff]);
    for _ in 0..frames {
        // Image descriptor: at (0, 0), 1×1, no local table; then LZW data for one
        // pixel of colour 0 (minimum code size 2: clear, 0, end).
        gif.extend_from_slice(&[0x2c, 0, 0, 0, 0, 1, 0, 1, 0, 0]);
        gif.extend_from_slice(&[0x02, 0x02, 0x44, 0x01, 0x00]);
    }
    gif.push(0x3b);
    gif
}

/// A chunk message: one byte L, the L bytes of the upload id, then the payload.
pub fn frame_chunk(upload_id: &str, payload: &[u8]) -> Vec<u8> {
    let mut message = vec![upload_id.len() as u8];
    message.extend_from_slice(upload_id.as_bytes());
    message.extend_from_slice(payload);
    message
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `POST /v1/whip` (as a subject of its own on a gateway with the harness keys):
/// (status, Location, body).
pub async fn post_offer(
    gw: &Gateway,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> anyhow::Result<(u16, Option<String>, String)> {
    post_whip(gw, content_type, body, &[]).await
}

/// `POST /v1/whip` with an SDP offer and extra `headers` (without `Authorization`
/// among them, as a subject of its own on a gateway with the harness keys):
/// (status, Location, body).
pub async fn post_offer_with(
    gw: &Gateway,
    offer: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, Option<String>, String)> {
    post_whip(gw, "application/sdp", offer.to_owned(), headers).await
}

async fn post_whip(
    gw: &Gateway,
    content_type: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, Option<String>, String)> {
    let mut request = gw
        .http
        .post(format!("{}/v1/whip", gw.base))
        .header("content-type", content_type)
        .body(body);
    let named = |n: &str| headers.iter().any(|(name, _)| name.eq_ignore_ascii_case(n));
    if !named("authorization")
        && let Some(bearer) = gw.client_authorization()
    {
        request = request.header("authorization", bearer);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let r = request.send().await?;
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((status, location, r.text().await?))
}

/// `authorization: {value}\r\n` for the head of a raw HTTP/1.1 request, or nothing.
pub fn authorization_line(value: Option<&str>) -> String {
    value.map_or_else(String::new, |v| format!("authorization: {v}\r\n"))
}

/// Finds the session id of the only session on the gateway (for clients without a
/// data channel).
pub async fn only_session_id(gw: &Gateway) -> anyhow::Result<String> {
    let (_, list) = gw.get("/v1/sessions").await?;
    let sessions = list["sessions"].as_array().context("sessions")?;
    anyhow::ensure!(sessions.len() == 1, "expected one session: {list:#}");
    Ok(sessions[0]["session_id"]
        .as_str()
        .context("session_id")?
        .to_owned())
}

/// Asserts the accounting identity on a session's counters and returns `received`.
pub fn assert_balanced(session: &Value) -> u64 {
    let c = &session["counters"];
    let n = |k: &str| {
        c[k].as_u64()
            .unwrap_or_else(|| panic!("counter {k} in {c}"))
    };
    let received = n("frames_received");
    assert_eq!(
        received,
        n("frames_in_turns")
            + n("idle_frames_discarded")
            + n("frames_dropped_backpressure")
            + n("frames_undecodable"),
        "accounting identity broken: {c:#}"
    );
    assert_eq!(n("frames_pending"), 0, "{c:#}");
    received
}

/// An HTTP client that opens a connection per request (responses that refuse a body
/// unread (413) close their connection, and a pooled one could be reused just as it
/// closes), sending `authorization` on every request that names none.
fn http_client(authorization: Option<String>) -> reqwest::Client {
    // reqwest is built without a default TLS provider (the workspace uses ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(value) = authorization {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            value.parse().expect("a header value"),
        );
    }
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .default_headers(headers)
        .build()
        .expect("an HTTP client")
}

/// A session of the media crate run in this process (its real answerer and session
/// driver, media ports from `ports`), with a connected webrtc-rs client: for tests
/// that play the downstream consumer themselves.
pub async fn in_process_session(
    ports: std::ops::RangeInclusive<u16>,
    config: turngate_media::session::SessionConfig,
) -> anyhow::Result<(Client, turngate_media::session::Session)> {
    let ports = turngate_media::peer::PortPool::new(ports);
    let peer_config = turngate_media::peer::PeerConfig {
        ips: vec!["127.0.0.1".parse()?],
        data_channel_send_buffer: 64 * 1024,
        ice_disconnected: Duration::from_secs(5),
        ice_failed: Duration::from_secs(25),
    };
    let mut started = None;
    let client = Client::connect_with(true, |offer| {
        let (ports, peer_config, started) = (&ports, &peer_config, &mut started);
        async move {
            let answered = turngate_media::peer::answer(peer_config, ports, offer).await?;
            let answer = answered.answer.clone();
            *started = Some(turngate_media::session::start(
                config,
                answered,
                &mut rand::rng(),
            )?);
            Ok((answer, "/in-process".to_owned()))
        }
    })
    .await?;
    Ok((client, started.context("session started")?))
}
