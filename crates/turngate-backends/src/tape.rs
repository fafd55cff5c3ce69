//! A call's exchanges with its backend, byte for byte, for the turn record: each
//! attempt's request body and its answer as it came — status, content type and body,
//! a stream as received. Headers are never kept (the API key travels in one).
//!
//! A [`Tape`] that is not [`recording`](Tape::recording) keeps nothing and costs
//! nothing; a recording one shares its exchanges between its clones (the LLM's stream
//! reader appends to the call's tape). A body is kept up to [`MAX_BODY`] bytes. The
//! backend's API key is redacted from what is handed out ([`Tape::exchanges`]), should
//! the backend have echoed it.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::key::ApiKey;

/// The most bytes of one response body a tape keeps.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// Where a call's exchanges are kept. See the module docs.
#[derive(Clone, Debug, Default)]
pub struct Tape(Option<Arc<Mutex<Vec<Attempt>>>>);

/// An attempt's exchange, and the key it was sent with (to redact).
type Attempt = (Exchange, Option<ApiKey>);

/// One attempt of a call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exchange {
    /// From 1.
    pub attempt: u32,
    /// The request body as sent (for a multipart form, a JSON account of its fields
    /// and of the file it carried).
    pub request: Bytes,
    pub request_type: String,
    /// The answer's status; `None` if none came (connection failed, timed out).
    pub status: Option<u16>,
    /// The answer's content type, as the backend sent it.
    pub response_type: String,
    /// The answer's body as received, up to [`MAX_BODY`] bytes.
    pub response: Vec<u8>,
    /// Whether the body was longer than what is kept.
    pub truncated: bool,
}

impl Tape {
    /// A tape that keeps nothing.
    pub const OFF: Tape = Tape(None);

    /// A tape that keeps the exchanges.
    pub fn recording() -> Self {
        Self(Some(Arc::default()))
    }

    /// Whether it keeps anything.
    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    /// The exchanges so far, in order, the API key of each redacted.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.with(|exchanges| {
            exchanges
                .iter()
                .map(|(e, key)| match key {
                    Some(key) => Exchange {
                        request: Bytes::from(key.redact(&e.request).into_owned()),
                        response: key.redact(&e.response).into_owned(),
                        ..e.clone()
                    },
                    None => e.clone(),
                })
                .collect()
        })
        .unwrap_or_default()
    }

    /// A new attempt sends `body`, with `key`.
    pub(crate) fn request(&self, body: &Bytes, content_type: &str, key: Option<&ApiKey>) {
        self.with(|exchanges| {
            let attempt = exchanges.len() as u32 + 1;
            exchanges.push((
                Exchange {
                    attempt,
                    request: body.clone(),
                    request_type: content_type.to_owned(),
                    ..Exchange::default()
                },
                key.cloned(),
            ));
        });
    }

    /// The current attempt's answer began: its status and content type.
    pub(crate) fn response(&self, status: u16, content_type: &str) {
        self.last(|e| {
            e.status = Some(status);
            e.response_type = content_type.to_owned();
        });
    }

    /// More of the current attempt's answer body.
    pub(crate) fn body(&self, chunk: &[u8]) {
        self.last(|e| {
            let room = MAX_BODY.saturating_sub(e.response.len());
            e.response
                .extend_from_slice(&chunk[..chunk.len().min(room)]);
            e.truncated |= chunk.len() > room;
        });
    }

    fn last(&self, f: impl FnOnce(&mut Exchange)) {
        self.with(|exchanges| {
            if let Some((e, _)) = exchanges.last_mut() {
                f(e);
            }
        });
    }

    fn with<T>(&self, f: impl FnOnce(&mut Vec<Attempt>) -> T) -> Option<T> {
        let inner = self.0.as_ref()?;
        let mut exchanges = inner.lock().unwrap_or_else(|e| e.into_inner());
        Some(f(&mut exchanges))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echoed_api_key_is_redacted_from_what_is_handed_out() {
        let tape = Tape::recording();
        let key = ApiKey("sk-distinctive-0123456789".into());
        tape.request(&Bytes::from_static(b"{}"), "application/json", Some(&key));
        tape.response(401, "application/json");
        // Split across two chunks, as a stream may deliver it.
        tape.body(br#"{"error":{"message":"Incorrect API key provided: Bearer sk-distinc"#);
        tape.body(br#"tive-0123456789 and again sk-distinctive-0123456789"}}"#);
        let e = &tape.exchanges()[0];
        let body = String::from_utf8(e.response.clone()).unwrap();
        assert!(!body.contains("sk-distinctive"), "{body}");
        assert_eq!(body.matches("[redacted]").count(), 2, "{body}");
        let error = crate::BackendError::Status {
            backend: "asr",
            status: 401,
            message: Some("Incorrect API key provided: Bearer sk-distinctive-0123456789".into()),
        }
        .redact(Some(&key));
        assert_eq!(
            error.to_string(),
            "asr answered 401: Incorrect API key provided: Bearer [redacted]"
        );
    }

    #[test]
    fn a_recording_tape_keeps_each_attempt_and_caps_bodies() {
        let tape = Tape::recording();
        let reader = tape.clone();
        tape.request(&Bytes::from_static(b"{}"), "application/json", None);
        tape.response(500, "application/json");
        tape.body(b"{\"error\":1}");
        tape.request(&Bytes::from_static(b"{}"), "application/json", None);
        tape.response(200, "text/event-stream");
        reader.body(&vec![b'x'; MAX_BODY - 1]);
        reader.body(b"yz");
        let e = tape.exchanges();
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].attempt, e[0].status), (1, Some(500)));
        assert_eq!(e[0].response, b"{\"error\":1}");
        assert_eq!((e[1].attempt, e[1].response.len()), (2, MAX_BODY));
        assert!(e[1].truncated && !e[0].truncated);
    }

    #[test]
    fn a_tape_that_is_not_recording_keeps_nothing() {
        let tape = Tape::default();
        tape.request(&Bytes::from_static(b"{}"), "application/json", None);
        tape.body(b"x");
        assert!(tape.exchanges().is_empty());
    }
}
