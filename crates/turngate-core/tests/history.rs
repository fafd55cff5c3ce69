//! Property test of the conversation history: whatever order turns finish in, a turn's
//! prompt holds the exchanges of earlier turns in turn order.

use proptest::prelude::*;
use turngate_core::History;

proptest! {
    #[test]
    fn history_order_is_turn_order_whatever_the_completion_order(
        turns in 1u32..30,
        keep in 0usize..6,
        order in proptest::collection::vec(any::<u32>(), 30),
        says in proptest::collection::vec(any::<bool>(), 30),
    ) {
        let mut history = History::new(keep);
        for n in 1..=turns {
            history.open(n);
        }
        // Settle every turn in a random order; whenever a turn still to settle could
        // build its prompt (every earlier turn settled), check what it would see.
        let mut pending: Vec<u32> = (1..=turns).collect();
        let mut settled: Vec<(u32, bool)> = Vec::new();
        let mut i = 0;
        while !pending.is_empty() {
            let n = pending.remove(order[i % order.len()] as usize % pending.len());
            let said = says[n as usize % says.len()];
            history.settle(n, said.then_some(n * 10));
            settled.push((n, said));
            i += 1;
            // Turns that may still build a prompt: those not settled, and the next one.
            for m in pending.iter().copied().chain([turns + 1]) {
                if !history.settled_before(m) {
                    prop_assert!(settled.iter().filter(|(k, _)| *k < m).count() < (m - 1) as usize);
                    continue;
                }
                let seen: Vec<u32> = history.before(m).map(|(k, e)| { assert_eq!(*e, k * 10); k }).collect();
                let mut expected: Vec<u32> = settled.iter().filter(|(k, s)| *s && *k < m).map(|(k, _)| *k).collect();
                expected.sort_unstable();
                let expected = expected[expected.len().saturating_sub(keep)..].to_vec();
                prop_assert_eq!(seen, expected);
            }
        }
    }
}
