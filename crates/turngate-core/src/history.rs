//! The conversation a session's prompts are built from, in turn order, sans-IO.
//!
//! Turns are processed concurrently and finish in any order, but the LLM must see the
//! conversation as the user lived it: the exchange of turn 3 before that of turn 4,
//! whichever answer finished first. [`History`] keeps exchanges by turn number. A turn
//! is *opened* when it starts and *settled* when its processing ends (with the
//! exchange it adds, if any); a turn's prompt is built once every earlier turn has
//! settled ([`History::settled_before`]) from the exchanges of earlier turns
//! ([`History::before`]). Waiting only ever goes to lower numbers, so it cannot
//! deadlock.

use std::collections::{BTreeMap, BTreeSet};

/// A session's exchanges by turn number. `E` is what one turn adds (e.g. what the user
/// said and what they heard of the answer).
#[derive(Clone, Debug)]
pub struct History<E> {
    keep: usize,
    exchanges: BTreeMap<u32, E>,
    unsettled: BTreeSet<u32>,
}

impl<E> History<E> {
    /// A history whose prompts hold at most `keep` earlier exchanges.
    pub fn new(keep: usize) -> Self {
        Self {
            keep,
            exchanges: BTreeMap::new(),
            unsettled: BTreeSet::new(),
        }
    }

    /// Turn `number` has started: later turns' prompts wait for it to settle.
    pub fn open(&mut self, number: u32) {
        self.unsettled.insert(number);
    }

    /// Turn `number` has finished, adding `exchange` (none for a turn that said
    /// nothing, or whose input went on into a later turn). Settling a turn never opened
    /// adds its exchange all the same.
    pub fn settle(&mut self, number: u32, exchange: Option<E>) {
        self.unsettled.remove(&number);
        if let Some(exchange) = exchange {
            self.exchanges.insert(number, exchange);
        }
        self.trim();
    }

    /// Whether every turn numbered below `number` has settled.
    pub fn settled_before(&self, number: u32) -> bool {
        self.unsettled.range(..number).next().is_none()
    }

    /// The last `keep` exchanges of turns numbered below `number`, oldest first, with
    /// their turn numbers.
    pub fn before(&self, number: u32) -> impl Iterator<Item = (u32, &E)> {
        let below = self.exchanges.range(..number);
        let skip = below.clone().count().saturating_sub(self.keep);
        below.skip(skip).map(|(n, e)| (*n, e))
    }

    /// Forgets exchanges no prompt can hold any more: those beyond the last `keep`
    /// below the oldest unsettled turn (every prompt still to be built is for a turn at
    /// or above it).
    fn trim(&mut self) {
        let bound = self.unsettled.first().copied().unwrap_or(u32::MAX);
        let mut excess = self
            .exchanges
            .range(..bound)
            .count()
            .saturating_sub(self.keep);
        while excess > 0 {
            self.exchanges.pop_first();
            excess -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_answer_lands_in_its_place() {
        let mut h = History::new(10);
        for n in 1..=3 {
            h.open(n);
        }
        h.settle(2, Some("two"));
        assert!(!h.settled_before(3), "turn 1 has not settled");
        h.settle(1, Some("one"));
        assert!(h.settled_before(3));
        let before: Vec<_> = h.before(3).collect();
        assert_eq!(before, vec![(1, &"one"), (2, &"two")]);
    }

    #[test]
    fn keeps_the_last_exchanges_before_a_turn() {
        let mut h = History::new(2);
        for n in 1..=5 {
            h.open(n);
            h.settle(n, Some(n));
        }
        assert_eq!(h.before(6).map(|(n, _)| n).collect::<Vec<_>>(), vec![4, 5]);
        assert_eq!(h.exchanges.len(), 2);
    }
}
