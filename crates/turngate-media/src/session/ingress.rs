//! What arrives from the network, stamped with the session clock at receipt: RTP
//! packets of the audio track and messages of the control data channel, each from a
//! reader task of its own into a bounded queue, merged back into one stream in stamp
//! order for the session task.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

use super::SessionShared;

/// Messages from the data channel waiting for the session task; the channel's reader
/// waits when it is full, which back-pressures SCTP rather than dropping.
const CONTROL_QUEUE: usize = 64;

/// One RTP packet of the audio track.
pub(super) struct Rtp {
    pub seq: u16,
    pub timestamp: u32,
    pub payload: Bytes,
    /// Session clock at receipt.
    pub at: Duration,
}

/// What the control data channel's reader reports.
pub(super) enum Control {
    /// The channel is open and may be written to.
    Open(Arc<dyn DataChannel>),
    /// A text message (a JSON client event).
    Text(String),
    /// A binary message (an image chunk).
    Binary(Bytes),
    /// The channel closed.
    Closed,
}

/// A value and the session clock at its receipt.
pub(super) struct Stamped<T> {
    pub at: Duration,
    pub value: T,
}

/// One network input.
pub(super) enum Input {
    Rtp(Rtp),
    Control(Stamped<Control>),
}

impl Input {
    /// Session clock at receipt.
    pub fn at(&self) -> Duration {
        match self {
            Input::Rtp(rtp) => rtp.at,
            Input::Control(c) => c.at,
        }
    }
}

/// The two input queues of a session, read in stamp order.
pub(super) struct Ingress {
    rtp_tx: Option<mpsc::Sender<Rtp>>,
    rtp: mpsc::Receiver<Rtp>,
    control_tx: mpsc::Sender<Stamped<Control>>,
    control: mpsc::Receiver<Stamped<Control>>,
    next_rtp: Option<Rtp>,
    next_control: Option<Stamped<Control>>,
}

impl Ingress {
    /// Queues for `rtp_queue` packets and [`CONTROL_QUEUE`] messages.
    pub fn new(rtp_queue: usize) -> Self {
        let (rtp_tx, rtp) = mpsc::channel(rtp_queue.max(1));
        let (control_tx, control) = mpsc::channel(CONTROL_QUEUE);
        Self {
            rtp_tx: Some(rtp_tx),
            rtp,
            control_tx,
            control,
            next_rtp: None,
            next_control: None,
        }
    }

    /// Starts reading the audio track (the first one; an offer has one audio track).
    pub fn adopt_track(
        &mut self,
        track: Arc<dyn TrackRemote>,
        shared: &Arc<SessionShared>,
        clock: Instant,
    ) {
        if let Some(tx) = self.rtp_tx.take() {
            tokio::spawn(read_track(track, tx, Arc::clone(shared), clock));
        }
    }

    /// Starts reading the control data channel.
    pub fn adopt_channel(&self, channel: Arc<dyn DataChannel>, clock: Instant) {
        tokio::spawn(read_channel(channel, self.control_tx.clone(), clock));
    }

    /// Resolves once an input is waiting. Cancel-safe: what it receives is kept.
    pub async fn ready(&mut self) {
        if self.next_rtp.is_some() || self.next_control.is_some() {
            return;
        }
        tokio::select! {
            biased;
            Some(rtp) = self.rtp.recv() => self.next_rtp = Some(rtp),
            Some(control) = self.control.recv() => self.next_control = Some(control),
            else => std::future::pending().await,
        }
    }

    /// The earliest input waiting, if any (and if stamped no later than `until`).
    pub fn pop(&mut self, until: Option<Duration>) -> Option<Input> {
        if self.next_rtp.is_none() {
            self.next_rtp = self.rtp.try_recv().ok();
        }
        if self.next_control.is_none() {
            self.next_control = self.control.try_recv().ok();
        }
        let rtp_first = match (&self.next_rtp, &self.next_control) {
            (Some(rtp), Some(control)) => rtp.at <= control.at,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let at = if rtp_first {
            self.next_rtp.as_ref().map(|r| r.at)
        } else {
            self.next_control.as_ref().map(|c| c.at)
        };
        if until.is_some_and(|until| at.is_some_and(|at| at > until)) {
            return None;
        }
        if rtp_first {
            self.next_rtp.take().map(Input::Rtp)
        } else {
            self.next_control.take().map(Input::Control)
        }
    }

    /// Closes both queues (their readers stop) and returns what is still in them, in
    /// stamp order.
    pub fn close(&mut self) -> Vec<Input> {
        self.rtp.close();
        self.control.close();
        std::iter::from_fn(|| self.pop(None)).collect()
    }
}

/// Counts every RTP packet of the track at receipt and offers it to the session task.
async fn read_track(
    track: Arc<dyn TrackRemote>,
    tx: mpsc::Sender<Rtp>,
    shared: Arc<SessionShared>,
    clock: Instant,
) {
    while let Some(event) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(packet) = event else {
            if matches!(event, TrackRemoteEvent::OnEnded) {
                break;
            }
            continue;
        };
        shared
            .counters
            .frames_received
            .fetch_add(1, Ordering::Relaxed);
        let rtp = Rtp {
            seq: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            payload: packet.payload,
            at: clock.elapsed(),
        };
        match tx.try_send(rtp) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                shared
                    .counters
                    .frames_dropped_backpressure
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The session has closed its turns: like any frame after close, this
                // one leaves as idle.
                shared
                    .counters
                    .idle_frames_discarded
                    .fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
}

/// Forwards the control channel's messages to the session task, stamped.
async fn read_channel(
    channel: Arc<dyn DataChannel>,
    tx: mpsc::Sender<Stamped<Control>>,
    clock: Instant,
) {
    let stamp = |value| Stamped {
        at: clock.elapsed(),
        value,
    };
    // `on_data_channel` fires when the channel is already open.
    if tx
        .send(stamp(Control::Open(Arc::clone(&channel))))
        .await
        .is_err()
    {
        return;
    }
    while let Some(event) = channel.poll().await {
        let control = match event {
            DataChannelEvent::OnMessage(msg) if msg.is_string => {
                Control::Text(String::from_utf8_lossy(&msg.data).into_owned())
            }
            DataChannelEvent::OnMessage(msg) => Control::Binary(msg.data.freeze()),
            DataChannelEvent::OnClose => break,
            _ => continue,
        };
        if tx.send(stamp(control)).await.is_err() {
            return;
        }
    }
    let _ = tx.send(stamp(Control::Closed)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16, at_ms: u64) -> Rtp {
        Rtp {
            seq,
            timestamp: u32::from(seq) * 960,
            payload: Bytes::new(),
            at: Duration::from_millis(at_ms),
        }
    }

    fn text(text: &str, at_ms: u64) -> Stamped<Control> {
        Stamped {
            at: Duration::from_millis(at_ms),
            value: Control::Text(text.into()),
        }
    }

    fn order(inputs: impl Iterator<Item = Input>) -> Vec<String> {
        inputs
            .map(|input| match input {
                Input::Rtp(r) => format!("rtp{}", r.seq),
                Input::Control(Stamped {
                    value: Control::Text(t),
                    ..
                }) => t,
                Input::Control(_) => "other".into(),
            })
            .collect()
    }

    /// Audio queued behind a slow session task and a `turn.end` that arrived between
    /// its packets reach the engine in the order they arrived, whichever queue the
    /// session task looks at first.
    #[tokio::test]
    async fn inputs_leave_in_receipt_order_across_both_queues() {
        let mut ingress = Ingress::new(8);
        let tx = ingress.rtp_tx.clone().unwrap();
        for (seq, at) in [(1, 0), (2, 20), (3, 40), (4, 60)] {
            tx.try_send(rtp(seq, at)).unwrap();
        }
        ingress.control_tx.try_send(text("turn.end", 30)).unwrap();
        ingress.control_tx.try_send(text("late", 70)).unwrap();
        ingress.ready().await;
        let first = order(std::iter::from_fn(|| {
            ingress.pop(Some(Duration::from_millis(40)))
        }));
        assert_eq!(first, ["rtp1", "rtp2", "turn.end", "rtp3"]);
        assert_eq!(order(ingress.close().into_iter()), ["rtp4", "late"]);
    }
}
