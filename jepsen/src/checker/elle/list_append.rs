//! Elle's list-append workload: each key holds a list, a write appends a
//! value (unique per key) and a read returns the whole list. Every read is
//! then a prefix of the key's version order, so that order, and every
//! dependency, can be read off the longest list.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;

use super::explain::{Describe, show_list};
use super::graph::{DepGraph, Why};
use super::{Findings, Mop, Txn, Workload, Writers, anomaly, index_writes};
use crate::checker::{Anomaly, CheckResult};
use crate::history::{Op, OpType};

/// Checks a list-append history for strict serializability. Txn values:
/// `[["append", k, v], ["r", k, null]]` invoked, `["r", k, [1, 2]]` once ok
/// (`[]` for a key never appended to).
///
/// `time_limit` bounds the search of each cyclic component for cycles of
/// particular kinds; past it, any cycle of the component is reported, named
/// by its edges, and counted in the stats' `cycle-search-timeouts`. Any
/// cycle breaks strict serializability, so a timeout never makes a history
/// pass.
pub fn check_list_append(history: &[Op], time_limit: Duration) -> CheckResult {
    let workload = Workload {
        checker: "elle-list-append",
        write_f: "append",
        parse_read: parse_list,
        analyze,
    };
    super::check(&workload, history, time_limit)
}

type ListTxn = Txn<Vec<u64>>;

fn parse_list(value: &Value) -> Result<Option<Vec<u64>>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_u64()
                    .ok_or_else(|| format!("the read {value} holds a non-integer"))
            })
            .collect::<Result<Vec<u64>, String>>()
            .map(Some),
        other => Err(format!("the read {other} is not a list")),
    }
}

/// A key's version order: the longest list read, each element's position
/// in it, and the appends (txn, value) of txns that did not fail whose
/// values no read saw, which therefore follow the whole list.
#[derive(Default)]
struct KeyOrder {
    order: Vec<u64>,
    position: HashMap<u64, usize>,
    unobserved: Vec<(usize, u64)>,
}

impl KeyOrder {
    /// The appends that directly follow the first `start` elements: the
    /// next element appended by a txn that did not fail, else every
    /// unobserved append.
    fn next_appends(&self, key: u64, start: usize, writers: &Writers) -> Vec<(usize, u64)> {
        match self.order[start..]
            .iter()
            .find_map(|&e| committed(writers, key, e))
        {
            Some(next) => vec![next],
            None => self.unobserved.clone(),
        }
    }
}

/// The txn that appended `element` to `key`, if one did and did not fail.
fn committed(writers: &Writers, key: u64, element: u64) -> Option<(usize, u64)> {
    writers
        .get(&(key, element))
        .filter(|w| !w.failed)
        .map(|w| (w.txn, element))
}

fn ok_reads(txns: &[ListTxn]) -> impl Iterator<Item = (usize, usize, u64, &Vec<u64>)> {
    txns.iter()
        .enumerate()
        .filter(|(_, txn)| txn.outcome == OpType::Ok)
        .flat_map(|(id, txn)| {
            txn.mops
                .iter()
                .enumerate()
                .filter_map(move |(position, mop)| match mop {
                    Mop::Read {
                        key,
                        value: Some(list),
                    } => Some((id, position, *key, list)),
                    _ => None,
                })
        })
}

fn analyze(txns: &[ListTxn]) -> Findings {
    let mut found = Vec::new();
    let writers = index_writes(txns, "duplicate-appends", &mut found);
    let orders = version_orders(txns, &writers, &mut found);
    for txn in txns.iter().filter(|t| t.outcome == OpType::Ok) {
        internal_reads(txn, &mut found);
    }
    read_anomalies(txns, &writers, &mut found);
    lost_updates(txns, &mut found);
    dirty_updates(txns, &orders, &writers, &mut found);
    let graph = dependencies(txns, &writers, &orders);
    Findings {
        anomalies: found,
        graph,
        describe: Box::new(ListWords { orders }),
    }
}

/// Each key's order from the longest list read by an ok txn. A read with
/// an element twice is a `duplicate-elements` anomaly and does not count;
/// a read that is not a prefix of the longest one is an `incompatible-order`.
fn version_orders(
    txns: &[ListTxn],
    writers: &Writers,
    found: &mut Vec<Anomaly>,
) -> BTreeMap<u64, KeyOrder> {
    let mut reads: BTreeMap<u64, Vec<(usize, &[u64])>> = BTreeMap::new();
    for (id, _, key, list) in ok_reads(txns) {
        let mut seen = HashSet::with_capacity(list.len());
        if let Some(twice) = list.iter().find(|&e| !seen.insert(e)) {
            found.push(anomaly(
                "duplicate-elements",
                format!(
                    "Op {} read key {key} as {}, which holds {twice} more than once.",
                    txns[id].complete_index,
                    show_list(list)
                ),
                vec![txns[id].complete_index],
            ));
        } else {
            reads.entry(key).or_default().push((id, list));
        }
    }
    let mut orders: BTreeMap<u64, KeyOrder> = BTreeMap::new();
    for (key, reads) in reads {
        let Some(&(longest_reader, longest)) = reads.iter().max_by_key(|(_, list)| list.len())
        else {
            continue;
        };
        if let Some(&(reader, list)) = reads.iter().find(|(_, list)| !longest.starts_with(list)) {
            let (a, b) = (
                txns[longest_reader].complete_index,
                txns[reader].complete_index,
            );
            found.push(anomaly(
                "incompatible-order",
                format!(
                    "Op {a} read key {key} as {} and op {b} as {}: neither is a prefix of the other, so they disagree on the order of appends.",
                    show_list(longest),
                    show_list(list)
                ),
                vec![a, b],
            ));
        }
        let position = longest.iter().enumerate().map(|(i, &e)| (e, i)).collect();
        let order = longest.to_vec();
        orders.insert(
            key,
            KeyOrder {
                order,
                position,
                unobserved: Vec::new(),
            },
        );
    }
    for (&(key, value), writer) in writers {
        let order = orders.entry(key).or_default();
        if !writer.failed && !order.position.contains_key(&value) {
            order.unobserved.push((writer.txn, value));
        }
    }
    for order in orders.values_mut() {
        order.unobserved.sort_unstable();
    }
    orders
}

/// `internal`: a read in an ok txn that disagrees with what the txn read
/// and appended to that key before. After only appends, the list must end
/// with them; after a read, it is known in full.
fn internal_reads(txn: &ListTxn, found: &mut Vec<Anomaly>) {
    let mut known: HashMap<u64, (bool, Vec<u64>)> = HashMap::new();
    for mop in &txn.mops {
        match mop {
            Mop::Write { key, value } => known.entry(*key).or_default().1.push(*value),
            Mop::Read {
                key,
                value: Some(list),
            } => {
                if let Some((whole, expected)) = known.get(key) {
                    let agrees = if *whole {
                        list == expected
                    } else {
                        list.ends_with(expected)
                    };
                    if !agrees {
                        let expected = if *whole {
                            show_list(expected)
                        } else {
                            format!("a list ending in {}", show_list(expected))
                        };
                        found.push(anomaly(
                            "internal",
                            format!(
                                "Op {} read key {key} as {}, but its own earlier reads and appends say it was {expected}.",
                                txn.complete_index,
                                show_list(list)
                            ),
                            vec![txn.complete_index],
                        ));
                    }
                }
                known.insert(*key, (true, list.clone()));
            }
            Mop::Read { value: None, .. } => {}
        }
    }
}

/// Per read of an ok txn: `G1a` (it holds a failed txn's append),
/// `garbage-read` (it holds a value nobody appended), `future-read` (it
/// holds the reader's own later append) and `G1b` (it ends in another txn's
/// append that was not that txn's last to the key).
fn read_anomalies(txns: &[ListTxn], writers: &Writers, found: &mut Vec<Anomaly>) {
    for (id, position, key, list) in ok_reads(txns) {
        let op = txns[id].complete_index;
        let read = show_list(list);
        let mut g1a = None;
        let mut garbage = None;
        let mut future = None;
        for &element in list {
            match writers.get(&(key, element)) {
                None => garbage = garbage.or(Some(element)),
                Some(w) if w.failed => g1a = g1a.or(Some((element, w.txn))),
                Some(w) if w.txn == id && w.mop > position => future = future.or(Some(element)),
                Some(_) => {}
            }
        }
        if let Some((element, writer)) = g1a {
            let failed = txns[writer].complete_index;
            found.push(anomaly(
                "G1a",
                format!("Op {op} read key {key} as {read}, which holds {element}, appended by op {failed}, which failed."),
                vec![op, failed],
            ));
        }
        if let Some(element) = garbage {
            found.push(anomaly(
                "garbage-read",
                format!("Op {op} read key {key} as {read}, which holds {element}, which no txn appended."),
                vec![op],
            ));
        }
        if let Some(element) = future {
            found.push(anomaly(
                "future-read",
                format!("Op {op} read key {key} as {read}, which holds {element}, which it appends only later."),
                vec![op],
            ));
        }
        let last = list
            .last()
            .and_then(|e| writers.get(&(key, *e)).map(|w| (e, w)));
        if let Some((element, writer)) = last.filter(|(_, w)| w.txn != id && !w.last && !w.failed) {
            let writer = txns[writer.txn].complete_index;
            found.push(anomaly(
                "G1b",
                format!("Op {op} read key {key} as {read}, which ends in {element}, an intermediate append of op {writer}, which appended to key {key} again later."),
                vec![op, writer],
            ));
        }
    }
}

/// `lost-update`: ok txns that read a key in the same state, each before
/// appending to it; whichever append comes second was made without seeing
/// the first.
fn lost_updates(txns: &[ListTxn], found: &mut Vec<Anomaly>) {
    let mut groups: BTreeMap<(u64, Option<u64>), Vec<usize>> = BTreeMap::new();
    for (id, txn) in txns
        .iter()
        .enumerate()
        .filter(|(_, t)| t.outcome == OpType::Ok)
    {
        let mut first_read: BTreeMap<u64, Option<Option<u64>>> = BTreeMap::new();
        let mut appended = BTreeSet::new();
        for mop in &txn.mops {
            match mop {
                Mop::Read {
                    key,
                    value: Some(list),
                } => {
                    first_read.entry(*key).or_insert(Some(list.last().copied()));
                }
                Mop::Write { key, .. } => {
                    first_read.entry(*key).or_insert(None);
                    appended.insert(*key);
                }
                Mop::Read { value: None, .. } => {}
            }
        }
        for key in appended {
            if let Some(Some(state)) = first_read.get(&key) {
                groups.entry((key, *state)).or_default().push(id);
            }
        }
    }
    for ((key, state), group) in groups.into_iter().filter(|(_, g)| g.len() > 1) {
        let ops: Vec<u64> = group.iter().map(|&id| txns[id].complete_index).collect();
        let state = state.map_or("empty".to_string(), |e| format!("ending in {e}"));
        found.push(anomaly(
            "lost-update",
            format!("Ops {ops:?} each read key {key} {state} and then appended to it: all but one of those appends missed another."),
            ops,
        ));
    }
}

/// `dirty-update`: a key's order holds a failed txn's append followed by
/// the append of a txn that did not fail, which built on the aborted state.
fn dirty_updates(
    txns: &[ListTxn],
    orders: &BTreeMap<u64, KeyOrder>,
    writers: &Writers,
    found: &mut Vec<Anomaly>,
) {
    for (&key, order) in orders {
        let failed_at = order
            .order
            .iter()
            .position(|e| writers.get(&(key, *e)).is_some_and(|w| w.failed));
        let Some(failed_at) = failed_at else {
            continue;
        };
        let later = order.order[failed_at + 1..]
            .iter()
            .find_map(|&e| committed(writers, key, e));
        if let Some((txn, value)) = later {
            let failed_value = order.order[failed_at];
            let failed = txns[writers[&(key, failed_value)].txn].complete_index;
            let op = txns[txn].complete_index;
            found.push(anomaly(
                "dirty-update",
                format!("In key {key}'s order, op {op}'s append of {value} follows {failed_value}, appended by op {failed}, which failed."),
                vec![failed, op],
            ));
        }
    }
}

/// ww edges between consecutive appends of each key's order (failed ones
/// skipped), then from the last to every unobserved append; wr edges from
/// the append a read ends in; rw edges from a read to the appends that
/// directly follow its state.
fn dependencies(txns: &[ListTxn], writers: &Writers, orders: &BTreeMap<u64, KeyOrder>) -> DepGraph {
    let mut graph = DepGraph::default();
    for (&key, order) in orders {
        let appends: Vec<(usize, u64)> = order
            .order
            .iter()
            .filter_map(|&e| committed(writers, key, e))
            .collect();
        for pair in appends.windows(2) {
            let ((from, prior), (to, value)) = (pair[0], pair[1]);
            graph.add(from, to, Why::Ww { key, prior, value });
        }
        if let Some(&(from, prior)) = appends.last() {
            for &(to, value) in &order.unobserved {
                graph.add(from, to, Why::Ww { key, prior, value });
            }
        }
    }
    for (id, _, key, list) in ok_reads(txns) {
        let last = list.last().copied();
        if let Some((writer, value)) = last.and_then(|e| committed(writers, key, e)) {
            graph.add(writer, id, Why::Wr { key, value });
        }
        let Some(order) = orders.get(&key) else {
            continue;
        };
        let start = match last {
            None => Some(0),
            Some(e) => order.position.get(&e).map(|p| p + 1),
        };
        for (to, value) in start
            .map(|s| order.next_appends(key, s, writers))
            .unwrap_or_default()
        {
            graph.add(
                id,
                to,
                Why::Rw {
                    key,
                    read: last,
                    value,
                },
            );
        }
    }
    graph
}

struct ListWords {
    orders: BTreeMap<u64, KeyOrder>,
}

impl Describe for ListWords {
    fn wrote(&self) -> &'static str {
        "appended"
    }

    fn write_noun(&self) -> &'static str {
        "append"
    }

    fn read_state(&self, key: u64, last: Option<u64>) -> String {
        let Some(last) = last else {
            return "at []".to_string();
        };
        let order = self.orders.get(&key);
        match order.and_then(|o| o.position.get(&last).map(|&p| &o.order[..=p])) {
            Some(prefix) => format!("at {}", show_list(prefix)),
            None => format!("ending in {last}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use rand::Rng;
    use serde_json::{Value, json};

    use super::check_list_append;
    use crate::checker::Verdict;
    use crate::checker::elle::test_support::{Builder, concurrent_history, kinds};
    use crate::history::OpType::{Fail, Info, Ok};

    fn check(builder: &Builder) -> crate::checker::CheckResult {
        check_list_append(&builder.ops, Duration::from_secs(5))
    }

    #[test]
    fn appends_ordered_both_ways_on_two_keys_are_g0() {
        let mut h = Builder::default();
        let t1 = json!([["append", 1, 1], ["append", 2, 1]]);
        let t2 = json!([["append", 1, 2], ["append", 2, 2]]);
        h.invoke(1, t1.clone()).invoke(2, t2.clone());
        h.complete(1, Ok, t1).complete(2, Ok, t2);
        h.ok(3, json!([["r", 1, [1, 2]], ["r", 2, [2, 1]]]));
        let result = check(&h);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert_eq!(kinds(&result), vec!["G0"]);
        let explanation = &result.anomalies[0].explanation;
        assert!(
            explanation.contains("T2 (op 3) appended 2 to key 1 after T1 (op 2) appended 1 (ww)")
        );
        assert!(
            explanation.contains("T1 (op 2) appended 1 to key 2 after T2 (op 3) appended 2 (ww)")
        );
        assert_eq!(result.anomalies[0].ops, vec![2, 3]);
    }

    #[test]
    fn reading_a_failed_append_is_g1a() {
        let mut h = Builder::default();
        h.txn(1, Fail, json!([["append", 1, 1]]));
        h.ok(2, json!([["r", 1, [1]]]));
        let result = check(&h);
        assert_eq!(kinds(&result), vec!["G1a"]);
        assert_eq!(result.anomalies[0].ops, vec![3, 1]);
        assert_eq!(result.verdict, Verdict::Invalid);
    }

    #[test]
    fn reading_an_intermediate_append_is_g1b() {
        let mut h = Builder::default();
        h.ok(1, json!([["append", 1, 1], ["append", 1, 2]]));
        h.ok(2, json!([["r", 1, [1]]]));
        let result = check(&h);
        assert!(kinds(&result).contains(&"G1b"), "{:?}", kinds(&result));
        assert_eq!(result.verdict, Verdict::Invalid);
    }

    #[test]
    fn each_reading_the_others_append_is_g1c() {
        let mut h = Builder::default();
        let t1 = json!([["append", 1, 1], ["r", 2, [1]]]);
        let t2 = json!([["append", 2, 1], ["r", 1, [1]]]);
        h.invoke(1, t1.clone()).invoke(2, t2.clone());
        h.complete(1, Ok, t1).complete(2, Ok, t2);
        let result = check(&h);
        assert_eq!(kinds(&result), vec!["G1c"]);
        let explanation = &result.anomalies[0].explanation;
        assert!(
            explanation.contains("T2 (op 3) observed T1's append of 1 to key 1 (wr)"),
            "{explanation}"
        );
        assert!(
            explanation.contains("T1 (op 2) observed T2's append of 1 to key 2 (wr)"),
            "{explanation}"
        );
    }

    #[test]
    fn read_skew_is_g_single() {
        let mut h = Builder::default();
        let writer = json!([["append", 1, 1], ["append", 2, 1]]);
        let reader = json!([["r", 1, []], ["r", 2, [1]]]);
        h.invoke(1, writer.clone()).invoke(2, reader.clone());
        h.complete(1, Ok, writer).complete(2, Ok, reader);
        let result = check(&h);
        assert_eq!(kinds(&result), vec!["G-single"]);
        assert!(
            result.anomalies[0]
                .explanation
                .contains("read key 1 at [] before")
        );
    }

    #[test]
    fn a_cycle_search_out_of_time_still_finds_the_history_invalid() {
        let mut h = Builder::default();
        h.ok(1, json!([["append", 1, 1]]));
        h.ok(2, json!([["r", 1, []]]));
        let result = check_list_append(&h.ops, Duration::ZERO);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert_eq!(kinds(&result), vec!["G-single-realtime"]);
        assert_eq!(result.stats["cycle-search-timeouts"], 1);
    }

    #[test]
    fn write_skew_is_g2_item() {
        let mut h = Builder::default();
        let t1 = json!([["r", 1, []], ["append", 2, 1]]);
        let t2 = json!([["r", 2, []], ["append", 1, 1]]);
        h.invoke(1, t1.clone()).invoke(2, t2.clone());
        h.complete(1, Ok, t1).complete(2, Ok, t2);
        h.ok(3, json!([["r", 1, [1]], ["r", 2, [1]]]));
        let result = check(&h);
        assert_eq!(kinds(&result), vec!["G2-item"]);
    }

    #[test]
    fn a_stale_read_is_g_single_realtime() {
        let mut h = Builder::default();
        for value in 1..=15 {
            h.ok(1, json!([["append", 1, value]]));
        }
        h.ok(2, json!([["append", 1, 16]]));
        let stale: Vec<u64> = (1..=15).collect();
        h.ok(3, json!([["r", 1, stale]]));
        let all: Vec<u64> = (1..=16).collect();
        h.ok(1, json!([["r", 1, all]]));
        let result = check(&h);
        assert_eq!(kinds(&result), vec!["G-single-realtime"]);
        let anomaly = &result.anomalies[0];
        assert_eq!(anomaly.ops, vec![33, 31]);
        assert_eq!(
            anomaly.explanation,
            "A G-single-realtime cycle of 2 transactions: T1 (op 33) read key 1 at \
             [1, 2, … 9 more …, 12, 13, 14, 15] before T2 (op 31) appended 16 (rw); \
             T2 (op 31) completed before T1 (op 33) was invoked at op 32 (realtime); \
             so T1 precedes itself."
        );
    }

    #[test]
    fn reading_an_append_invoked_after_the_read_completed_is_g1c_realtime() {
        let mut h = Builder::default();
        h.ok(1, json!([["r", 1, [1]]]));
        h.ok(2, json!([["append", 1, 1]]));
        let result = check(&h);
        assert_eq!(kinds(&result), vec!["G1c-realtime"]);
    }

    #[test]
    fn a_read_missing_the_txns_own_append_is_internal() {
        let mut h = Builder::default();
        h.ok(1, json!([["append", 1, 1], ["r", 1, []]]));
        h.ok(2, json!([["append", 2, 7]]));
        h.ok(
            3,
            json!([["r", 2, [7]], ["append", 2, 8], ["r", 2, [7, 8]]]),
        );
        h.ok(4, json!([["append", 3, 4]]));
        h.ok(5, json!([["append", 3, 5], ["r", 3, [4]]]));
        let result = check(&h);
        assert_eq!(kinds(&result), vec!["internal", "internal"]);
        assert_eq!(result.anomalies[0].ops, vec![1]);
        assert_eq!(result.anomalies[1].ops, vec![9]);
        assert!(
            result.anomalies[1]
                .explanation
                .contains("a list ending in [5]")
        );
    }

    #[test]
    fn reads_that_are_not_prefixes_of_each_other_are_an_incompatible_order() {
        let mut h = Builder::default();
        h.ok(1, json!([["append", 1, 1]]));
        h.ok(2, json!([["append", 1, 2]]));
        h.ok(3, json!([["r", 1, [1]]]));
        h.ok(4, json!([["r", 1, [2]]]));
        let result = check(&h);
        assert!(
            kinds(&result).contains(&"incompatible-order"),
            "{:?}",
            kinds(&result)
        );
        assert_eq!(result.verdict, Verdict::Invalid);
    }

    #[test]
    fn an_element_read_twice_is_a_duplicate() {
        let mut h = Builder::default();
        h.ok(1, json!([["append", 1, 1]]));
        h.ok(2, json!([["r", 1, [1, 1]]]));
        let result = check(&h);
        assert_eq!(kinds(&result), vec!["duplicate-elements"]);
    }

    #[test]
    fn two_appends_after_reading_the_same_state_are_a_lost_update() {
        let mut h = Builder::default();
        h.ok(1, json!([["append", 1, 1]]));
        let t2 = json!([["r", 1, [1]], ["append", 1, 2]]);
        let t3 = json!([["r", 1, [1]], ["append", 1, 3]]);
        h.invoke(2, t2.clone()).invoke(3, t3.clone());
        h.complete(2, Ok, t2).complete(3, Ok, t3);
        h.ok(1, json!([["r", 1, [1, 2, 3]]]));
        let result = check(&h);
        assert!(
            kinds(&result).contains(&"lost-update"),
            "{:?}",
            kinds(&result)
        );
    }

    #[test]
    fn an_indeterminate_append_may_be_read() {
        let mut h = Builder::default();
        h.txn(1, Info, json!([["append", 1, 1], ["r", 2, null]]));
        h.ok(2, json!([["r", 1, [1]]]));
        h.invoke(3, json!([["append", 1, 2]]));
        h.ok(4, json!([["r", 1, [1]], ["append", 2, 1]]));
        let result = check(&h);
        assert_eq!(result.verdict, Verdict::Valid, "{:?}", result.anomalies);
        assert_eq!(result.stats["info"], 2);
    }

    #[test]
    fn a_value_that_is_not_a_list_makes_the_verdict_unknown() {
        let mut h = Builder::default();
        h.ok(1, json!([["r", 1, 3]]));
        let result = check(&h);
        assert_eq!(kinds(&result), vec!["malformed-txn"]);
        assert_eq!(result.verdict, Verdict::Unknown);
    }

    /// Random txns over 8 keys run one after another on an in-memory model.
    fn serial_history(count: usize, seed: u64) -> Vec<crate::history::Op> {
        let mut lists: HashMap<u64, Vec<u64>> = HashMap::new();
        let mut next_value = 0;
        concurrent_history(count, seed, |rng| {
            let outcome = match rng.random_range(0..100) {
                0..4 => Fail,
                4..8 => Info,
                _ => Ok,
            };
            let applied = outcome == Ok || (outcome == Info && rng.random_bool(0.5));
            let mut staged = lists.clone();
            let mops: Vec<Value> = (0..rng.random_range(1..=4))
                .map(|_| {
                    let key = rng.random_range(0..8);
                    let list = staged.entry(key).or_default();
                    if rng.random_bool(0.5) {
                        next_value += 1;
                        list.push(next_value);
                        json!(["append", key, next_value])
                    } else {
                        json!(["r", key, list])
                    }
                })
                .collect();
            if applied {
                lists = staged;
            }
            (Value::Array(mops), outcome)
        })
    }

    #[test]
    fn a_serializable_history_of_thousands_of_concurrent_txns_is_valid() {
        let history = serial_history(3_000, 7);
        let started = Instant::now();
        let result = check_list_append(&history, Duration::from_secs(5));
        assert_eq!(
            result.verdict,
            Verdict::Valid,
            "{:?}",
            result.anomalies.first()
        );
        assert_eq!(result.stats["txns"], 3_000);
        assert!(result.stats["edges"]["rw"].as_u64().unwrap() > 1_000);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_serializable_history_with_one_read_made_stale_is_not() {
        let mut history = serial_history(500, 11);
        // The last ok txn that starts by reading a long list sees only its
        // first half: the append after that half completed long before.
        let op = history
            .iter()
            .rposition(|op| {
                op.kind == Ok
                    && op.value[0][0] == "r"
                    && op.value[0][2].as_array().is_some_and(|l| l.len() > 30)
            })
            .unwrap();
        let read = history[op].value[0][2].as_array_mut().unwrap();
        read.truncate(read.len() / 2);
        let result = check_list_append(&history, Duration::from_secs(5));
        assert_eq!(result.verdict, Verdict::Invalid);
        assert!(
            kinds(&result).iter().all(|k| k.starts_with('G')),
            "{:?}",
            kinds(&result)
        );
    }
}
