//! Cycles told step by step, in sentences a reader can check against the
//! history.

use super::Txn;
use super::graph::{Cycle, DepGraph, Why};
use crate::checker::Anomaly;

/// A workload's words for its writes and reads.
pub(crate) trait Describe {
    /// The past tense of a write: "appended", "wrote".
    fn wrote(&self) -> &'static str;
    /// A write as a noun: "append", "write".
    fn write_noun(&self) -> &'static str;
    /// How a read of `key` that ended at `last` (`None`: the initial state)
    /// saw it, after "read key K": "at [1, 2]", "as 5", "as nil".
    fn read_state(&self, key: u64, last: Option<u64>) -> String;
}

/// The anomaly for a cycle: one sentence per edge, naming each txn `Tn`
/// (in cycle order) with the history index of its completion.
pub(crate) fn cycle<R>(
    kind: &str,
    cycle: &Cycle,
    txns: &[Txn<R>],
    graph: &DepGraph,
    describe: &dyn Describe,
) -> Anomaly {
    let name = |step: usize| format!("T{} (op {})", step + 1, txns[cycle[step].0].complete_index);
    let (wrote, noun) = (describe.wrote(), describe.write_noun());
    let sentences: Vec<String> = (0..cycle.len())
        .map(|step| {
            let (from, kind) = cycle[step];
            let next = (step + 1) % cycle.len();
            let to = cycle[next].0;
            match graph.why(from, to, kind) {
                Some(Why::Ww { key, prior, value }) => format!(
                    "{} {wrote} {value} to key {key} after {} {wrote} {prior} (ww)",
                    name(next),
                    name(step)
                ),
                Some(Why::Wr { key, value }) => format!(
                    "{} observed T{}'s {noun} of {value} to key {key} (wr)",
                    name(next),
                    step + 1
                ),
                Some(Why::Rw { key, read, value }) => format!(
                    "{} read key {key} {} before {} {wrote} {value} (rw)",
                    name(step),
                    describe.read_state(*key, *read),
                    name(next)
                ),
                None => format!(
                    "{} completed before {} was invoked at op {} (realtime)",
                    name(step),
                    name(next),
                    txns[to].invoke_index
                ),
            }
        })
        .collect();
    Anomaly {
        kind: kind.to_string(),
        explanation: format!(
            "A {kind} cycle of {} transactions: {}; so T1 precedes itself.",
            cycle.len(),
            sentences.join("; ")
        ),
        ops: cycle
            .iter()
            .map(|&(txn, _)| txns[txn].complete_index)
            .collect(),
    }
}

/// A list as JSON shows it, with the middle of a long one elided.
pub(crate) fn show_list(list: &[u64]) -> String {
    let show = |items: &[u64]| {
        items
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if list.len() <= 8 {
        format!("[{}]", show(list))
    } else {
        format!(
            "[{}, … {} more …, {}]",
            show(&list[..2]),
            list.len() - 6,
            show(&list[list.len() - 4..])
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lists_are_elided_in_the_middle() {
        assert_eq!(show_list(&[]), "[]");
        assert_eq!(show_list(&[1, 2, 3]), "[1, 2, 3]");
        let long: Vec<u64> = (1..=20).collect();
        assert_eq!(show_list(&long), "[1, 2, … 14 more …, 17, 18, 19, 20]");
    }
}
