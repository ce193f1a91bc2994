//! Elle's rw-register workload: each key holds one value, a write replaces
//! it (values are unique per key) and a read returns it (`null` before any
//! write). Who wrote what a read saw is exact, but the version order must
//! be inferred: the initial state comes first, a txn's write follows what it
//! read of that key, and (strict serializability making each key
//! linearizable) a version seen by a txn that completed precedes any
//! version written by a txn invoked afterwards.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;

use super::explain::Describe;
use super::graph::{DepGraph, Why};
use super::{Findings, Mop, Txn, Workload, Writers, anomaly, index_writes};
use crate::checker::{Anomaly, CheckResult};
use crate::history::{Op, OpType};

/// Checks an rw-register history for strict serializability. Txn values:
/// `[["w", k, v], ["r", k, null]]` invoked, `["r", k, 5]` once ok (`null`
/// for a key never written). `time_limit` as for
/// [`check_list_append`](super::check_list_append).
pub fn check_rw_register(history: &[Op], time_limit: Duration) -> CheckResult {
    let workload = Workload {
        checker: "elle-rw-register",
        write_f: "w",
        parse_read: parse_register,
        analyze,
    };
    super::check(&workload, history, time_limit)
}

/// A read: `None` for the initial state, else the value.
type RegisterTxn = Txn<Option<u64>>;

fn parse_register(value: &Value) -> Result<Option<Option<u64>>, String> {
    match value {
        Value::Null => Ok(Some(None)),
        other => other
            .as_u64()
            .map(|v| Some(Some(v)))
            .ok_or_else(|| format!("the read {other} is neither null nor an integer")),
    }
}

/// What a txn leaves behind and what it saw from outside, per key: its
/// last write, and its read of a key it had not yet written (ok txns only).
#[derive(Default)]
struct Access {
    final_writes: BTreeMap<u64, u64>,
    external_reads: BTreeMap<u64, Option<u64>>,
}

impl Access {
    fn of(txn: &RegisterTxn) -> Access {
        let mut access = Access::default();
        for mop in &txn.mops {
            match *mop {
                Mop::Write { key, value } => {
                    access.final_writes.insert(key, value);
                }
                Mop::Read {
                    key,
                    value: Some(read),
                } if !access.final_writes.contains_key(&key) => {
                    access.external_reads.entry(key).or_insert(read);
                }
                Mop::Read { .. } => {}
            }
        }
        access
    }
}

/// Versions of a key: (key, earlier version, later value), `None` being the
/// initial state.
type Versions = BTreeSet<(u64, Option<u64>, u64)>;

/// Whether a value read is a version of the key: the initial state, or a
/// txn's last write to the key in a txn that did not fail.
fn is_version(writers: &Writers, key: u64, value: Option<u64>) -> bool {
    value.is_none_or(|v| writers.get(&(key, v)).is_some_and(|w| w.last && !w.failed))
}

fn analyze(txns: &[RegisterTxn]) -> Findings {
    let mut found = Vec::new();
    let writers = index_writes(txns, "duplicate-writes", &mut found);
    for id in (0..txns.len()).filter(|&id| txns[id].outcome == OpType::Ok) {
        check_reads(id, txns, &writers, &mut found);
    }
    let accesses: Vec<Access> = txns.iter().map(Access::of).collect();
    let versions = infer_versions(txns, &accesses, &writers);
    let graph = dependencies(txns, &accesses, &writers, &versions);
    Findings {
        anomalies: found,
        graph,
        describe: Box::new(RegisterWords),
    }
}

/// Per read of an ok txn: `internal` (it disagrees with the txn's own
/// earlier read or write of the key), `G1a` (a failed txn wrote the value),
/// `G1b` (another txn wrote it and then wrote the key again),
/// `garbage-read` (nobody wrote it), `future-read` (the txn writes it later).
fn check_reads(id: usize, txns: &[RegisterTxn], writers: &Writers, found: &mut Vec<Anomaly>) {
    let op = txns[id].complete_index;
    let mut known: HashMap<u64, Option<u64>> = HashMap::new();
    for (position, mop) in txns[id].mops.iter().enumerate() {
        let (key, read) = match *mop {
            Mop::Write { key, value } => {
                known.insert(key, Some(value));
                continue;
            }
            Mop::Read {
                key,
                value: Some(read),
            } => (key, read),
            Mop::Read { value: None, .. } => continue,
        };
        let shown = show(read);
        if let Some(&expected) = known.get(&key).filter(|&&expected| expected != read) {
            found.push(anomaly(
                "internal",
                format!("Op {op} read key {key} as {shown}, but its own earlier read or write left it at {}.", show(expected)),
                vec![op],
            ));
        }
        known.insert(key, read);
        let Some(value) = read else {
            continue;
        };
        match writers.get(&(key, value)) {
            None => found.push(anomaly(
                "garbage-read",
                format!("Op {op} read key {key} as {value}, which no txn wrote."),
                vec![op],
            )),
            Some(w) if w.failed => {
                let writer = txns[w.txn].complete_index;
                found.push(anomaly(
                    "G1a",
                    format!(
                        "Op {op} read key {key} as {value}, written by op {writer}, which failed."
                    ),
                    vec![op, writer],
                ));
            }
            Some(w) if w.txn == id && w.mop > position => found.push(anomaly(
                "future-read",
                format!("Op {op} read key {key} as {value}, which it writes only later."),
                vec![op],
            )),
            Some(w) if w.txn != id && !w.last => {
                let writer = txns[w.txn].complete_index;
                found.push(anomaly(
                    "G1b",
                    format!("Op {op} read key {key} as {value}, an intermediate write of op {writer}, which wrote key {key} again later."),
                    vec![op, writer],
                ));
            }
            Some(_) => {}
        }
    }
}

/// The version order's known pairs: writes follow what their txn read of
/// the key; per key, what a completed ok txn saw or wrote precedes what any
/// txn invoked later writes; every version without a known predecessor
/// follows the initial state.
fn infer_versions(txns: &[RegisterTxn], accesses: &[Access], writers: &Writers) -> Versions {
    let mut versions = Versions::new();
    for access in accesses {
        for (&key, &read) in &access.external_reads {
            if let Some(&value) = access.final_writes.get(&key)
                && read != Some(value)
                && is_version(writers, key, read)
            {
                versions.insert((key, read, value));
            }
        }
    }
    realtime_versions(txns, accesses, writers, &mut versions);
    let preceded: HashSet<(u64, u64)> = versions
        .iter()
        .filter(|(_, before, _)| before.is_some())
        .map(|&(key, _, after)| (key, after))
        .collect();
    for (txn, access) in txns.iter().zip(accesses) {
        if txn.outcome != OpType::Fail {
            for (&key, &value) in &access.final_writes {
                if !preceded.contains(&(key, value)) {
                    versions.insert((key, None, value));
                }
            }
        }
    }
    versions
}

/// Walks the history keeping, per key, the versions that completed ok txns
/// saw or wrote and that no later-completed write has yet followed; a
/// write's invocation follows all of them. When an ok write completes, it
/// replaces those it followed, which keeps the pairs few.
fn realtime_versions(
    txns: &[RegisterTxn],
    accesses: &[Access],
    writers: &Writers,
    versions: &mut Versions,
) {
    let mut events: Vec<(u64, usize, bool)> = Vec::new();
    for (id, txn) in txns.iter().enumerate() {
        if txn.outcome != OpType::Fail && !accesses[id].final_writes.is_empty() {
            events.push((txn.invoke_index, id, false));
        }
        if txn.outcome == OpType::Ok {
            events.push((txn.complete_index, id, true));
        }
    }
    events.sort_unstable();
    let mut frontier: HashMap<u64, BTreeSet<u64>> = HashMap::new();
    let mut followed: HashMap<(usize, u64), Vec<u64>> = HashMap::new();
    for (_, id, completed) in events {
        let access = &accesses[id];
        if !completed {
            for (&key, &value) in &access.final_writes {
                let before: Vec<u64> = frontier
                    .get(&key)
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|&v| v != value)
                    .collect();
                versions.extend(before.iter().map(|&v| (key, Some(v), value)));
                if txns[id].outcome == OpType::Ok {
                    followed.insert((id, key), before);
                }
            }
            continue;
        }
        for (&key, &value) in &access.final_writes {
            let current = frontier.entry(key).or_default();
            for before in followed.remove(&(id, key)).unwrap_or_default() {
                current.remove(&before);
            }
            current.insert(value);
        }
        for (&key, &read) in &access.external_reads {
            if let Some(value) = read.filter(|_| !access.final_writes.contains_key(&key))
                && is_version(writers, key, read)
            {
                frontier.entry(key).or_default().insert(value);
            }
        }
    }
}

/// ww edges between the writers of ordered versions; wr edges from the
/// writer of each value read; rw edges from an ok txn's read of a version
/// to the writers of the versions that follow it.
fn dependencies(
    txns: &[RegisterTxn],
    accesses: &[Access],
    writers: &Writers,
    versions: &Versions,
) -> DepGraph {
    let mut graph = DepGraph::default();
    let mut following: HashMap<(u64, Option<u64>), Vec<u64>> = HashMap::new();
    for &(key, before, value) in versions {
        following.entry((key, before)).or_default().push(value);
        let Some(writer) = writers.get(&(key, value)) else {
            continue;
        };
        if let Some(prior) = before.and_then(|b| writers.get(&(key, b)).map(|w| (b, w))) {
            graph.add(
                prior.1.txn,
                writer.txn,
                Why::Ww {
                    key,
                    prior: prior.0,
                    value,
                },
            );
        }
    }
    for (id, txn) in txns
        .iter()
        .enumerate()
        .filter(|(_, t)| t.outcome == OpType::Ok)
    {
        for mop in &txn.mops {
            if let Mop::Read {
                key,
                value: Some(Some(value)),
            } = *mop
                && let Some(writer) = writers.get(&(key, value)).filter(|w| !w.failed)
            {
                graph.add(writer.txn, id, Why::Wr { key, value });
            }
        }
        for (&key, &read) in &accesses[id].external_reads {
            for &value in following.get(&(key, read)).into_iter().flatten() {
                if let Some(writer) = writers.get(&(key, value)) {
                    graph.add(id, writer.txn, Why::Rw { key, read, value });
                }
            }
        }
    }
    graph
}

fn show(value: Option<u64>) -> String {
    value.map_or("nil".to_string(), |v| v.to_string())
}

struct RegisterWords;

impl Describe for RegisterWords {
    fn wrote(&self) -> &'static str {
        "wrote"
    }

    fn write_noun(&self) -> &'static str {
        "write"
    }

    fn read_state(&self, _key: u64, last: Option<u64>) -> String {
        format!("as {}", show(last))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use rand::Rng;
    use serde_json::{Value, json};

    use super::check_rw_register;
    use crate::checker::elle::test_support::{Builder, concurrent_history, kinds};
    use crate::checker::{CheckResult, Verdict};
    use crate::history::OpType::{Fail, Info, Ok};

    fn check(builder: &Builder) -> CheckResult {
        check_rw_register(&builder.ops, Duration::from_secs(5))
    }

    #[test]
    fn reading_a_failed_write_is_g1a() {
        let mut h = Builder::default();
        h.txn(1, Fail, json!([["w", 1, 1]]));
        h.ok(2, json!([["r", 1, 1]]));
        let result = check(&h);
        assert_eq!(kinds(&result), vec!["G1a"]);
        assert_eq!(result.verdict, Verdict::Invalid);
    }

    #[test]
    fn reading_an_intermediate_write_is_g1b() {
        let mut h = Builder::default();
        h.ok(1, json!([["w", 1, 1], ["w", 1, 2]]));
        h.ok(2, json!([["r", 1, 1]]));
        assert_eq!(kinds(&check(&h)), vec!["G1b"]);
    }

    #[test]
    fn each_reading_the_others_write_is_g1c() {
        let mut h = Builder::default();
        let t1 = json!([["w", 1, 1], ["r", 2, 1]]);
        let t2 = json!([["w", 2, 1], ["r", 1, 1]]);
        h.invoke(1, t1.clone()).invoke(2, t2.clone());
        h.complete(1, Ok, t1).complete(2, Ok, t2);
        let result = check(&h);
        assert_eq!(kinds(&result), vec!["G1c"]);
        assert!(
            result.anomalies[0]
                .explanation
                .contains("T2 (op 3) observed T1's write of 1 to key 1 (wr)")
        );
    }

    #[test]
    fn read_skew_is_g_single() {
        let mut h = Builder::default();
        let writer = json!([["w", 1, 1], ["w", 2, 1]]);
        let reader = json!([["r", 1, null], ["r", 2, 1]]);
        h.invoke(1, writer.clone()).invoke(2, reader.clone());
        h.complete(1, Ok, writer).complete(2, Ok, reader);
        let result = check(&h);
        assert_eq!(kinds(&result), vec!["G-single"]);
        assert!(
            result.anomalies[0]
                .explanation
                .contains("T1 (op 3) read key 1 as nil before T2 (op 2) wrote 1 (rw)")
        );
    }

    #[test]
    fn write_skew_is_g2_item() {
        let mut h = Builder::default();
        let t1 = json!([["r", 1, null], ["w", 2, 1]]);
        let t2 = json!([["r", 2, null], ["w", 1, 1]]);
        h.invoke(1, t1.clone()).invoke(2, t2.clone());
        h.complete(1, Ok, t1).complete(2, Ok, t2);
        assert_eq!(kinds(&check(&h)), vec!["G2-item"]);
    }

    #[test]
    fn a_stale_read_is_g_single_realtime() {
        let mut h = Builder::default();
        h.ok(1, json!([["w", 1, 1]]));
        h.ok(2, json!([["w", 1, 2]]));
        h.ok(3, json!([["r", 1, 1]]));
        let result = check(&h);
        assert_eq!(kinds(&result), vec!["G-single-realtime"]);
        assert_eq!(result.anomalies[0].ops, vec![5, 3]);
    }

    #[test]
    fn versions_inferred_in_a_circle_are_g0() {
        // T1 read 3 and wrote 1, so 1 follows 3; T2 read 1 and wrote 2, so
        // 2 follows 1; T3 wrote 3 after T2 completed, so 3 follows 2.
        let mut h = Builder::default();
        h.ok(1, json!([["r", 1, 3], ["w", 1, 1]]));
        h.ok(2, json!([["r", 1, 1], ["w", 1, 2]]));
        h.ok(3, json!([["w", 1, 3]]));
        let result = check(&h);
        assert_eq!(kinds(&result), vec!["G0"]);
        assert!(
            result.anomalies[0]
                .explanation
                .contains("T3 (op 5) wrote 3 to key 1 after T2 (op 3) wrote 2 (ww)"),
            "{}",
            result.anomalies[0].explanation
        );
    }

    #[test]
    fn a_read_contradicting_the_txns_own_write_is_internal() {
        let mut h = Builder::default();
        h.ok(1, json!([["w", 1, 1], ["r", 1, null]]));
        h.ok(
            2,
            json!([["r", 2, null], ["r", 2, null], ["w", 2, 5], ["r", 2, 5]]),
        );
        let result = check(&h);
        assert_eq!(kinds(&result), vec!["internal"]);
        assert_eq!(result.anomalies[0].ops, vec![1]);
    }

    #[test]
    fn an_indeterminate_write_may_be_read() {
        let mut h = Builder::default();
        h.txn(1, Info, json!([["w", 1, 1]]));
        h.ok(2, json!([["r", 1, 1]]));
        h.invoke(3, json!([["w", 1, 2]]));
        h.ok(4, json!([["r", 1, 1], ["w", 2, 1]]));
        let result = check(&h);
        assert_eq!(result.verdict, Verdict::Valid, "{:?}", result.anomalies);
    }

    #[test]
    fn a_serializable_history_of_thousands_of_concurrent_txns_is_valid() {
        let mut registers: HashMap<u64, u64> = HashMap::new();
        let mut next_value = 0;
        let history = concurrent_history(3_000, 3, |rng| {
            let outcome = match rng.random_range(0..100) {
                0..4 => Fail,
                4..8 => Info,
                _ => Ok,
            };
            let applied = outcome == Ok || (outcome == Info && rng.random_bool(0.5));
            let mut staged = registers.clone();
            let mops: Vec<Value> = (0..rng.random_range(1..=4))
                .map(|_| {
                    let key = rng.random_range(0..5);
                    if rng.random_bool(0.5) {
                        next_value += 1;
                        staged.insert(key, next_value);
                        json!(["w", key, next_value])
                    } else {
                        json!(["r", key, staged.get(&key)])
                    }
                })
                .collect();
            if applied {
                registers = staged;
            }
            (Value::Array(mops), outcome)
        });
        let started = Instant::now();
        let result = check_rw_register(&history, Duration::from_secs(5));
        assert_eq!(
            result.verdict,
            Verdict::Valid,
            "{:?}",
            result.anomalies.first()
        );
        assert!(result.stats["edges"]["rw"].as_u64().unwrap() > 500);
        assert!(result.stats["edges"]["ww"].as_u64().unwrap() > 500);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
}
