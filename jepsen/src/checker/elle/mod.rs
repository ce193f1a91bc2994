//! Elle-style checkers of strict serializability: list-append
//! ([`check_list_append`]) and rw-register ([`check_rw_register`]).
//!
//! Both read the client operations with `f = "txn"`, whose value is a list of
//! micro-operations `[f, key, value]`: `["append", k, v]` (list-append) or
//! `["w", k, v]` (rw-register) writes, `["r", k, v]` reads, with `v = null`
//! in the invocation and filled in by an `ok` completion. Each workload
//! infers a version order per key and from it the dependencies between
//! transactions (ww, wr, rw); realtime edges run from each transaction to
//! those invoked after it completed. A cycle in that graph, or a non-cycle
//! anomaly (an aborted or intermediate read, a transaction contradicting
//! itself, ...), breaks strict serializability.

mod explain;
mod graph;
mod list_append;
mod rw_register;

pub use list_append::check_list_append;
pub use rw_register::check_rw_register;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::checker::{Anomaly, CheckResult, Verdict};
use crate::history::{Op, OpType, pairs};
use explain::Describe;
use graph::DepGraph;

/// Anomalies that say the history breaks the checker's preconditions, not
/// that the database misbehaved: with any of them the verdict is `Unknown`.
const UNCHECKABLE: [&str; 3] = ["malformed-txn", "duplicate-appends", "duplicate-writes"];

/// At most this many anomalies of one kind are explained; all are counted.
const LISTED_PER_KIND: usize = 16;

/// The stats list the sizes of this many of the largest cyclic components.
const LISTED_SCC_SIZES: usize = 32;

/// One transaction: its outcome, its place in the history and its
/// micro-operations. `R` is what a read returns.
pub(crate) struct Txn<R> {
    pub outcome: OpType,
    pub invoke_index: u64,
    /// The completion's index; the invocation's when it never completed.
    pub complete_index: u64,
    pub mops: Vec<Mop<R>>,
}

pub(crate) enum Mop<R> {
    /// An append (list-append) or a write (rw-register).
    Write { key: u64, value: u64 },
    /// A read; `value` is `None` when unknown (the txn did not complete ok).
    Read { key: u64, value: Option<R> },
}

/// Who wrote a value to a key: the txn, the position of the write among its
/// micro-operations, whether it was the txn's last write to that key, and
/// whether the txn failed.
#[derive(Clone, Copy)]
pub(crate) struct Writer {
    pub txn: usize,
    pub mop: usize,
    pub last: bool,
    pub failed: bool,
}

pub(crate) type Writers = HashMap<(u64, u64), Writer>;

/// What a workload's analysis found: non-cycle anomalies, the dependency
/// graph (without realtime edges) and the words to explain its edges.
pub(crate) struct Findings {
    pub anomalies: Vec<Anomaly>,
    pub graph: DepGraph,
    pub describe: Box<dyn Describe>,
}

pub(crate) struct Workload<R> {
    pub checker: &'static str,
    /// The micro-operation name of a write: "append" or "w".
    pub write_f: &'static str,
    /// Parses the value of a read in an ok txn; `Ok(None)` means unknown.
    pub parse_read: fn(&Value) -> Result<Option<R>, String>,
    pub analyze: fn(&[Txn<R>]) -> Findings,
}

pub(crate) fn anomaly(kind: &str, explanation: String, ops: Vec<u64>) -> Anomaly {
    Anomaly {
        kind: kind.to_string(),
        explanation,
        ops,
    }
}

/// Runs a workload's analysis, adds realtime edges, searches the graph's
/// cycles (each search within `time_limit`) and gives the verdict.
pub(crate) fn check<R>(
    workload: &Workload<R>,
    history: &[Op],
    time_limit: Duration,
) -> CheckResult {
    let started = Instant::now();
    let (txns, mut anomalies) = parse_txns(history, workload);
    let Findings {
        anomalies: found,
        mut graph,
        describe,
    } = (workload.analyze)(&txns);
    anomalies.extend(found);
    add_realtime_edges(&txns, &mut graph);
    let search = graph::search_cycles(&graph, txns.len(), time_limit);
    anomalies.extend(
        search
            .cycles
            .iter()
            .map(|(kind, cycle)| explain::cycle(kind, cycle, &txns, &graph, describe.as_ref())),
    );

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    anomalies.retain(|a| {
        let count = counts.entry(a.kind.clone()).or_default();
        *count += 1;
        *count <= LISTED_PER_KIND
    });
    let verdict = if counts.keys().any(|k| UNCHECKABLE.contains(&k.as_str())) {
        Verdict::Unknown
    } else if counts.is_empty() {
        Verdict::Valid
    } else {
        Verdict::Invalid
    };
    let outcomes = |kind| txns.iter().filter(|t| t.outcome == kind).count();
    let keys: BTreeSet<u64> = txns
        .iter()
        .flat_map(|t| &t.mops)
        .map(|m| match m {
            Mop::Write { key, .. } | Mop::Read { key, .. } => *key,
        })
        .collect();
    let mut scc_sizes = search.scc_sizes;
    scc_sizes.sort_unstable_by(|a, b| b.cmp(a));
    let sccs = scc_sizes.len();
    scc_sizes.truncate(LISTED_SCC_SIZES);
    let stats = [
        ("txns", json!(txns.len())),
        ("ok", json!(outcomes(OpType::Ok))),
        ("info", json!(outcomes(OpType::Info))),
        ("fail", json!(outcomes(OpType::Fail))),
        ("keys", json!(keys.len())),
        ("anomaly-counts", json!(counts)),
        (
            "edges",
            json!({
                "ww": graph.count(graph::WW),
                "wr": graph.count(graph::WR),
                "rw": graph.count(graph::RW),
                "realtime": graph.count(graph::REALTIME),
            }),
        ),
        ("sccs", json!(sccs)),
        ("largest-scc-sizes", json!(scc_sizes)),
        ("cycle-search-timeouts", json!(search.timeouts)),
    ];
    CheckResult {
        checker: workload.checker.to_string(),
        verdict,
        anomalies,
        stats: stats.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

/// The `txn` operations as transactions, and a `malformed-txn` anomaly for
/// each one whose value does not parse (it is left out).
fn parse_txns<R>(history: &[Op], workload: &Workload<R>) -> (Vec<Txn<R>>, Vec<Anomaly>) {
    let mut txns = Vec::new();
    let mut malformed = Vec::new();
    for pair in pairs(history).into_iter().filter(|p| p.invoke.f == "txn") {
        let outcome = pair.outcome();
        // Only an ok completion reports what was read.
        let value = if outcome == OpType::Ok {
            &pair.complete.value
        } else {
            &pair.invoke.value
        };
        match parse_mops(value, workload, outcome == OpType::Ok) {
            Ok(mops) => txns.push(Txn {
                outcome,
                invoke_index: pair.invoke.index,
                complete_index: pair.complete.index,
                mops,
            }),
            Err(why) => malformed.push(anomaly(
                "malformed-txn",
                format!(
                    "Op {} is not a txn this checker reads: {why}.",
                    pair.complete.index
                ),
                vec![pair.complete.index],
            )),
        }
    }
    (txns, malformed)
}

fn parse_mops<R>(value: &Value, workload: &Workload<R>, ok: bool) -> Result<Vec<Mop<R>>, String> {
    let mops = value.as_array().ok_or("the value is not a list")?;
    mops.iter()
        .map(|mop| {
            let (f, key, argument) = match mop.as_array().map(Vec::as_slice) {
                Some([f, key, argument]) => (f.as_str(), key.as_u64(), argument),
                _ => return Err(format!("{mop} is not [f, key, value]")),
            };
            let key = key.ok_or_else(|| format!("{mop} has no integer key"))?;
            match f {
                Some("r") if ok => Ok(Mop::Read {
                    key,
                    value: (workload.parse_read)(argument)?,
                }),
                Some("r") => Ok(Mop::Read { key, value: None }),
                Some(f) if f == workload.write_f => match argument.as_u64() {
                    Some(value) => Ok(Mop::Write { key, value }),
                    None => Err(format!("{mop} writes no integer")),
                },
                _ => Err(format!(
                    "{mop} is neither a read nor a {}",
                    workload.write_f
                )),
            }
        })
        .collect()
}

/// Indexes every write by (key, value). A value written twice to one key
/// breaks the workload's precondition and is reported as `duplicate_kind`;
/// the first writer is kept.
pub(crate) fn index_writes<R>(
    txns: &[Txn<R>],
    duplicate_kind: &str,
    found: &mut Vec<Anomaly>,
) -> Writers {
    let mut writers = Writers::new();
    for (id, txn) in txns.iter().enumerate() {
        for (position, mop) in txn.mops.iter().enumerate() {
            let Mop::Write { key, value } = *mop else {
                continue;
            };
            let last = !txn.mops[position + 1..]
                .iter()
                .any(|m| matches!(m, Mop::Write { key: k, .. } if *k == key));
            let writer = Writer {
                txn: id,
                mop: position,
                last,
                failed: txn.outcome == OpType::Fail,
            };
            if let Some(first) = writers.get(&(key, value)) {
                found.push(anomaly(
                    duplicate_kind,
                    format!(
                        "Op {} and op {} both write {value} to key {key}; values must be unique per key.",
                        txns[first.txn].complete_index, txn.complete_index
                    ),
                    vec![txns[first.txn].complete_index, txn.complete_index],
                ));
            } else {
                writers.insert((key, value), writer);
            }
        }
    }
    writers
}

/// Realtime edges, transitively reduced: walking the history in order, a
/// txn's invocation gets an edge from each ok txn that completed and has no
/// ok successor completed yet; when a txn completes ok it replaces the
/// predecessors it had at its invocation. Failed txns have no edges; info
/// txns have incoming edges only, since they may complete at any time.
fn add_realtime_edges<R>(txns: &[Txn<R>], graph: &mut DepGraph) {
    let mut events: Vec<(u64, usize, bool)> = Vec::new();
    for (id, txn) in txns.iter().enumerate() {
        match txn.outcome {
            OpType::Ok => {
                events.push((txn.invoke_index, id, false));
                events.push((txn.complete_index, id, true));
            }
            OpType::Info => events.push((txn.invoke_index, id, false)),
            _ => {}
        }
    }
    events.sort_unstable();
    let mut frontier: BTreeSet<usize> = BTreeSet::new();
    let mut predecessors: HashMap<usize, Vec<usize>> = HashMap::new();
    for (_, id, completed) in events {
        if completed {
            for before in predecessors.remove(&id).unwrap_or_default() {
                frontier.remove(&before);
            }
            frontier.insert(id);
        } else {
            for &before in &frontier {
                graph.add_realtime(before, id);
            }
            if txns[id].outcome == OpType::Ok {
                predecessors.insert(id, frontier.iter().copied().collect());
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use serde_json::Value;

    use crate::checker::CheckResult;
    use crate::history::{Op, OpType, Process};

    /// Builds histories by hand: invocations null their reads, and only ok
    /// completions keep them.
    #[derive(Default)]
    pub struct Builder {
        pub ops: Vec<Op>,
    }

    impl Builder {
        pub fn invoke(&mut self, process: u64, mops: Value) -> &mut Self {
            self.push(process, OpType::Invoke, without_reads(&mops))
        }

        pub fn complete(&mut self, process: u64, kind: OpType, mops: Value) -> &mut Self {
            let value = if kind == OpType::Ok {
                mops
            } else {
                without_reads(&mops)
            };
            self.push(process, kind, value)
        }

        /// A txn invoked and completed with nothing in between.
        pub fn txn(&mut self, process: u64, kind: OpType, mops: Value) -> &mut Self {
            self.invoke(process, mops.clone())
                .complete(process, kind, mops)
        }

        pub fn ok(&mut self, process: u64, mops: Value) -> &mut Self {
            self.txn(process, OpType::Ok, mops)
        }

        fn push(&mut self, process: u64, kind: OpType, value: Value) -> &mut Self {
            let index = self.ops.len() as u64;
            self.ops.push(Op {
                index,
                time: index * 1_000,
                kind,
                process: Process::Client(process),
                f: "txn".into(),
                value,
                error: None,
                node: None,
            });
            self
        }
    }

    fn without_reads(mops: &Value) -> Value {
        let mut mops = mops.clone();
        for mop in mops.as_array_mut().into_iter().flatten() {
            if mop[0] == "r" {
                mop[2] = Value::Null;
            }
        }
        mops
    }

    /// `count` txns executed one after another (txn i takes effect at time
    /// 100·i) by five processes, each invoked up to 240 before and
    /// completed up to 240 after its moment: concurrent in the history yet
    /// strictly serializable in that order. `run` executes one txn against
    /// a model and gives its mops with reads filled in and its outcome.
    pub fn concurrent_history(
        count: usize,
        seed: u64,
        mut run: impl FnMut(&mut ChaCha8Rng) -> (Value, OpType),
    ) -> Vec<Op> {
        const PROCESSES: usize = 5;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut free_at = [0u64; PROCESSES];
        let mut events: Vec<(u64, usize, OpType, Value)> = Vec::new();
        for i in 0..count {
            let process = i % PROCESSES;
            let moment = 100 * i as u64 + 500;
            let invoked = (moment - rng.random_range(0..240)).max(free_at[process] + 1);
            let completed = moment + rng.random_range(1..240);
            free_at[process] = completed;
            let (mops, outcome) = run(&mut rng);
            events.push((invoked, process, OpType::Invoke, mops.clone()));
            events.push((completed, process, outcome, mops));
        }
        events.sort_by_key(|e| e.0);
        let mut builder = Builder::default();
        for (_, process, kind, mops) in events {
            match kind {
                OpType::Invoke => builder.invoke(process as u64, mops),
                kind => builder.complete(process as u64, kind, mops),
            };
        }
        builder.ops
    }

    pub fn kinds(result: &CheckResult) -> Vec<&str> {
        result.anomalies.iter().map(|a| a.kind.as_str()).collect()
    }
}
