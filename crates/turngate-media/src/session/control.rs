//! The control data channel: adopting the client's `turngate` channel (and closing any
//! other, which the gateway would otherwise keep with its messages for the life of the
//! connection), and turning client events into turn-engine inputs.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use turngate_core::{ClientEvent, Error, ErrorCode, ServerEvent, TurnId};
use webrtc::data_channel::DataChannel;

use super::Driver;
use super::ingress::Control;

/// The label of the control data channel.
pub const CONTROL_LABEL: &str = "turngate";

impl Driver {
    /// Reads the client's first `turngate` channel; closes any other channel.
    pub(super) async fn adopt_channel(&mut self, channel: Arc<dyn DataChannel>) {
        let label = channel.label().await.unwrap_or_default();
        if label != CONTROL_LABEL || self.shared.has_data_channel() {
            tracing::debug!(session = %self.shared.id, label, "Closing a data channel the gateway does not use.");
            if let Err(e) = channel.close().await {
                tracing::debug!(session = %self.shared.id, error = %e, "Could not close a data channel.");
            }
            return;
        }
        // The channel is used once its reader reports it open, with `session.ready` first.
        self.shared.data_channel.store(true, Ordering::Relaxed);
        self.ingress.adopt_channel(channel, self.clock);
    }

    pub(super) async fn on_control(&mut self, control: Control) {
        match control {
            Control::Open(channel) => {
                self.channel = Some(channel);
                let ready = ServerEvent::SessionReady {
                    session_id: self.shared.id,
                };
                self.outbox.push_front(ready.to_json());
                self.flush_outbox().await;
            }
            Control::Closed => self.channel = None,
            Control::Binary(message) => self.on_chunk(&message).await,
            Control::Text(text) => self.on_client_event(&text).await,
        }
    }

    async fn on_client_event(&mut self, text: &str) {
        let at = self.now();
        let result = ClientEvent::parse(text);
        if let Some(upload_id) = ClientEvent::upload_id_of(text) {
            match result {
                Ok(ClientEvent::ImageBegin {
                    upload_id,
                    mime,
                    size,
                    sha256,
                    turn_id,
                }) => {
                    let begin = turngate_core::upload::UploadBegin {
                        upload_id,
                        mime,
                        size,
                        sha256,
                        turn_id,
                    };
                    self.on_image_begin(begin).await;
                }
                Ok(ClientEvent::ImageEnd { upload_id }) => self.on_image_end(&upload_id).await,
                Ok(_) => {}
                Err(error) => {
                    self.count_rejected(&error, 0);
                    self.send_event(ServerEvent::rejected(&upload_id, &error))
                        .await;
                }
            }
            return;
        }
        let result = result.and_then(|event| match event {
            ClientEvent::TurnStart {
                turn_id,
                traceparent,
            } => self
                .engine
                .handle_turn_start(at, turn_id, traceparent)
                .map(|_| ()),
            ClientEvent::TurnEnd { turn_id } => {
                self.engine.handle_turn_end(at, turn_id).map(|_| ())
            }
            ClientEvent::ImageBegin { .. } | ClientEvent::ImageEnd { .. } => Err(Error::refused(
                ErrorCode::MalformedMessage,
                "image messages need a string upload_id",
            )),
        });
        if let Err(error) = result {
            // Name the open turn only in errors about it.
            let about_open_turn = matches!(
                error.code(),
                ErrorCode::TurnAlreadyOpen | ErrorCode::TurnIdMismatch
            );
            let turn = self
                .engine
                .open_turn()
                .map(|t| t.id)
                .filter(|_| about_open_turn);
            self.refuse(&error, turn).await;
        }
    }

    pub(super) async fn refuse(&mut self, error: &Error, turn: Option<TurnId>) {
        self.shared
            .counters
            .messages_refused
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(session = %self.shared.id, code = %error.code(), %error, "Refused a client message.");
        self.send_event(ServerEvent::error(error, turn)).await;
    }
}
