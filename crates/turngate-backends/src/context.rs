//! The trace context a turn's backend requests carry.

use turngate_core::{SessionId, SpanId, TraceParent, TurnId};

/// Baggage key of the turn id (also the span attribute key).
pub const TURN_ID_KEY: &str = "turngate.turn.id";
/// Baggage key of the session id (also the span attribute key).
pub const SESSION_ID_KEY: &str = "turngate.session.id";

/// Who a backend request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TurnContext {
    /// The session.
    pub session_id: SessionId,
    /// The turn: the trace id of every request.
    pub turn_id: TurnId,
    /// The span the request's `traceparent` names as parent (the turn's root span
    /// until each call gets its own client span).
    pub parent: SpanId,
    /// Trace flags.
    pub flags: u8,
}

impl TurnContext {
    /// The `traceparent` header value.
    pub fn traceparent(&self) -> String {
        TraceParent {
            trace_id: self.turn_id,
            parent_id: self.parent,
            flags: self.flags,
        }
        .to_string()
    }

    /// The `baggage` header value.
    pub fn baggage(&self) -> String {
        format!(
            "{TURN_ID_KEY}={},{SESSION_ID_KEY}={}",
            self.turn_id, self.session_id
        )
    }
}
