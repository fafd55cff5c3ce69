//! The id generator that makes a turn's root span carry the turn's own ids.
//!
//! The SDK takes a span's trace id from a valid parent, or else from its id generator,
//! and always takes the span id from the generator. [`with_ids`] hands the generator
//! the turn id and the root span id announced in `turn.started` for the duration of
//! one synchronous span start on this thread; every other span gets random ids.
//! [`remote_parent`] turns a client's `traceparent` into the remote parent context.

use std::cell::Cell;

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use turngate_core::TraceParent;

thread_local! {
    static NEXT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
    static NEXT_SPAN_ID: Cell<Option<SpanId>> = const { Cell::new(None) };
}

/// Random ids, except while [`with_ids`] runs.
#[derive(Debug, Default)]
pub struct TurnIdGenerator {
    random: RandomIdGenerator,
}

impl IdGenerator for TurnIdGenerator {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID
            .take()
            .unwrap_or_else(|| self.random.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_SPAN_ID
            .take()
            .unwrap_or_else(|| self.random.new_span_id())
    }
}

/// Runs `start` (which starts one span) with the generator yielding `trace_id` and
/// `span_id`. Ids `start` did not use are discarded, so they never leak to another span.
pub fn with_ids<T>(trace_id: TraceId, span_id: SpanId, start: impl FnOnce() -> T) -> T {
    NEXT_TRACE_ID.set(Some(trace_id));
    NEXT_SPAN_ID.set(Some(span_id));
    let started = start();
    NEXT_TRACE_ID.set(None);
    NEXT_SPAN_ID.set(None);
    started
}

/// The context of a client's span, as a remote parent.
pub(crate) fn remote_parent(p: TraceParent) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_bytes(p.trace_id.to_bytes()),
        SpanId::from_bytes(p.parent_id.to_bytes()),
        TraceFlags::new(p.flags),
        true,
        TraceState::default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yields_the_given_ids_once_then_random_ones() {
        let ids = TurnIdGenerator::default();
        let (t, s) = (TraceId::from(7u128), SpanId::from(9u64));
        let got = with_ids(t, s, || (ids.new_trace_id(), ids.new_span_id()));
        assert_eq!(got, (t, s));
        assert_ne!(ids.new_trace_id(), t);
        assert_ne!(ids.new_span_id(), s);
    }

    #[test]
    fn unused_ids_do_not_leak() {
        let ids = TurnIdGenerator::default();
        with_ids(TraceId::from(7u128), SpanId::from(9u64), || {
            ids.new_span_id()
        });
        assert_ne!(ids.new_trace_id(), TraceId::from(7u128));
    }
}
