//! A circuit breaker with half-open probing, as a pure state machine over a clock the
//! caller passes in (milliseconds since any fixed instant).
//!
//! - **Closed**: calls go through; [`BREAKER_THRESHOLD`] unreachable answers in a row
//!   open it.
//! - **Open** for [`BREAKER_COOLDOWN`]: every call fails fast.
//! - **Half-open** after that: exactly one call (the probe) goes through, every other
//!   still fails fast; the probe's success closes the circuit, its failure opens it for
//!   another cooldown. A probe that never reports (its caller was cancelled) is given up
//!   after a cooldown and another is let through.
//!
//! Hand-written rather than `failsafe`'s: its half-open state lets *every* call through
//! until one fails, which is the herd of queued calls this is meant to hold back.

use std::time::Duration;

/// Consecutive unreachable answers that open the circuit.
pub const BREAKER_THRESHOLD: u32 = 3;
/// How long an open circuit refuses calls before letting a probe through.
pub const BREAKER_COOLDOWN: Duration = Duration::from_secs(5);

/// Where the circuit is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Calls go through; `failures` unreachable answers in a row so far.
    Closed {
        /// Unreachable answers in a row.
        failures: u32,
    },
    /// Calls fail fast until `until_ms`.
    Open {
        /// When a probe may go.
        until_ms: u64,
    },
    /// One probe is out since `since_ms`; other calls fail fast.
    HalfOpen {
        /// When the probe went.
        since_ms: u64,
    },
}

/// What a call may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// Go; the circuit is closed.
    Call,
    /// Go as the probe of a half-open circuit.
    Probe,
    /// Fail fast.
    Refuse,
}

/// The breaker. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Breaker {
    state: State,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: State::Closed { failures: 0 },
        }
    }
}

impl Breaker {
    /// Where the circuit is.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a call starting at `now_ms` may go.
    pub fn permit(&mut self, now_ms: u64) -> Permit {
        let probe_from = match self.state {
            State::Closed { .. } => return Permit::Call,
            State::Open { until_ms } => until_ms,
            // The probe out has had a cooldown to report.
            State::HalfOpen { since_ms } => since_ms + BREAKER_COOLDOWN.as_millis() as u64,
        };
        if now_ms < probe_from {
            return Permit::Refuse;
        }
        self.state = State::HalfOpen { since_ms: now_ms };
        Permit::Probe
    }

    /// The backend answered (whatever the status: it is reachable).
    pub fn succeeded(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    /// The backend was unreachable (or timed out) at `now_ms`.
    pub fn failed(&mut self, now_ms: u64) {
        let until_ms = now_ms + BREAKER_COOLDOWN.as_millis() as u64;
        self.state = match self.state {
            State::Closed { failures } if failures + 1 < BREAKER_THRESHOLD => State::Closed {
                failures: failures + 1,
            },
            // A call that started before the circuit opened and failed late changes
            // nothing; only the probe's failure reopens it.
            State::Open { .. } => self.state,
            _ => State::Open { until_ms },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: u64 = BREAKER_COOLDOWN.as_millis() as u64;

    fn opened_at(t: u64) -> Breaker {
        let mut b = Breaker::default();
        for _ in 0..BREAKER_THRESHOLD {
            assert_eq!(b.permit(t), Permit::Call);
            b.failed(t);
        }
        assert_eq!(b.state(), State::Open { until_ms: t + COOL });
        b
    }

    #[test]
    fn a_success_between_failures_keeps_it_closed() {
        let mut b = Breaker::default();
        b.failed(0);
        b.failed(0);
        b.succeeded();
        b.failed(0);
        assert_eq!(b.permit(0), Permit::Call);
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through() {
        let mut b = opened_at(1000);
        assert_eq!(b.permit(1000 + COOL - 1), Permit::Refuse);
        assert_eq!(b.permit(1000 + COOL), Permit::Probe);
        assert_eq!(b.permit(1000 + COOL + 1), Permit::Refuse);
        b.succeeded();
        assert_eq!(b.permit(1000 + COOL + 2), Permit::Call);
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let mut b = opened_at(0);
        assert_eq!(b.permit(COOL), Permit::Probe);
        b.failed(COOL + 10);
        assert_eq!(
            b.state(),
            State::Open {
                until_ms: 2 * COOL + 10
            }
        );
        assert_eq!(b.permit(2 * COOL), Permit::Refuse);
        assert_eq!(b.permit(2 * COOL + 10), Permit::Probe);
    }

    #[test]
    fn a_late_failure_of_an_old_call_does_not_extend_the_cooldown() {
        let mut b = opened_at(0);
        b.failed(COOL - 1);
        assert_eq!(b.permit(COOL), Permit::Probe);
    }

    #[test]
    fn a_probe_that_never_reports_is_given_up_after_a_cooldown() {
        let mut b = opened_at(0);
        assert_eq!(b.permit(COOL), Permit::Probe);
        assert_eq!(b.permit(2 * COOL - 1), Permit::Refuse);
        assert_eq!(b.permit(2 * COOL), Permit::Probe);
    }
}
