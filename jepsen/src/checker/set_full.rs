//! Set-full: Jepsen's `set-full` checker with `linearizable? true`.
//!
//! History shapes: an `add` invocation's value is the element (an integer);
//! a `read` is invoked with `null` and completes `ok` with every element of
//! the set (`[1, 5, 17]`).
//!
//! For each element the checker finds when it became *known* (the add's `ok`
//! or the first read completion that saw it, whichever is earlier), the
//! latest-invoked read that saw it and the latest-invoked read that missed it.
//! An element is *stable* when a read saw it after every read that missed it
//! began; *lost* when, after it was known, a read began that missed it and
//! no read invoked later saw it; otherwise *never read*. A stable element is
//! *stale* when a read invoked after it was known still missed it, which a
//! linearizable set forbids.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{Map, Value, json};

use super::{Anomaly, CheckResult, Verdict};
use crate::history::{Op, OpType, Pair, pairs};

pub fn check_set_full(history: &[Op]) -> CheckResult {
    let started = Instant::now();
    let mut analysis = Analysis::default();
    for step in steps(history) {
        analysis.apply(step);
    }
    let mut result = analysis.conclude();
    result.elapsed_ms = started.elapsed().as_millis() as u64;
    result
}

/// One point of the history that changes what is known about elements, in
/// history order.
enum Step<'a> {
    AddInvoked(Pair<'a>),
    AddCompleted(Pair<'a>),
    ReadCompleted(Pair<'a>),
}

fn steps(history: &[Op]) -> Vec<Step<'_>> {
    let mut steps: Vec<(u64, Step)> = Vec::new();
    for pair in pairs(history) {
        match (pair.invoke.f.as_str(), pair.outcome()) {
            ("add", outcome) => {
                steps.push((pair.invoke.index, Step::AddInvoked(pair.clone())));
                if outcome != OpType::Info {
                    steps.push((pair.complete.index, Step::AddCompleted(pair)));
                }
            }
            ("read", OpType::Ok) => steps.push((pair.complete.index, Step::ReadCompleted(pair))),
            _ => {}
        }
    }
    steps.sort_by_key(|(index, _)| *index);
    steps.into_iter().map(|(_, step)| step).collect()
}

struct Element<'a> {
    first_add: Pair<'a>,
    adds: usize,
    failed_adds: usize,
    /// The completion (add `ok` or read) that first made the element known.
    known: Option<&'a Op>,
    last_present: Option<Pair<'a>>,
    last_absent: Option<Pair<'a>>,
    /// The first read invoked after the element was known that missed it.
    first_stale_read: Option<Pair<'a>>,
    stale_reads: usize,
}

#[derive(Default)]
struct Analysis<'a> {
    elements: BTreeMap<i64, Element<'a>>,
    /// Reads that saw an element before any add of it was invoked: the first.
    early_sightings: BTreeMap<i64, Pair<'a>>,
    anomalies: Vec<Anomaly>,
    malformed: usize,
    ok_reads: usize,
}

impl<'a> Analysis<'a> {
    fn apply(&mut self, step: Step<'a>) {
        match step {
            Step::AddInvoked(pair) => match pair.invoke.value.as_i64() {
                Some(element) => {
                    let entry = self.elements.entry(element).or_insert_with(|| Element {
                        first_add: pair.clone(),
                        adds: 0,
                        failed_adds: 0,
                        known: None,
                        last_present: None,
                        last_absent: None,
                        first_stale_read: None,
                        stale_reads: 0,
                    });
                    entry.adds += 1;
                }
                None => self.malformed(pair.invoke, "an add's value must be an integer"),
            },
            Step::AddCompleted(pair) => {
                let Some(element) = pair.invoke.value.as_i64() else {
                    return;
                };
                let Some(state) = self.elements.get_mut(&element) else {
                    return;
                };
                match pair.complete.kind {
                    OpType::Ok => {
                        state.known.get_or_insert(pair.complete);
                    }
                    OpType::Fail => state.failed_adds += 1,
                    OpType::Invoke | OpType::Info => {}
                }
            }
            Step::ReadCompleted(pair) => self.read(pair),
        }
    }

    fn read(&mut self, read: Pair<'a>) {
        let Some(seen) = read_elements(read.complete) else {
            self.malformed(
                read.complete,
                "a read's ok value must be a list of integers",
            );
            return;
        };
        self.ok_reads += 1;
        let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
        for element in seen {
            *counts.entry(element).or_default() += 1;
        }
        for (&element, &count) in &counts {
            if count > 1 {
                self.anomalies.push(Anomaly {
                    kind: "duplicated".into(),
                    explanation: format!(
                        "{} returned {element} {count} times.",
                        describe_read(&read)
                    ),
                    ops: vec![read.complete.index],
                });
            }
            if !self.elements.contains_key(&element) {
                self.early_sightings
                    .entry(element)
                    .or_insert_with(|| read.clone());
            }
        }
        for (element, state) in self.elements.iter_mut() {
            if counts.contains_key(element) {
                state.known.get_or_insert(read.complete);
                if state
                    .last_present
                    .as_ref()
                    .is_none_or(|p| p.invoke.index < read.invoke.index)
                {
                    state.last_present = Some(read.clone());
                }
            } else {
                if state
                    .known
                    .is_some_and(|known| known.index < read.invoke.index)
                {
                    state.stale_reads += 1;
                    state.first_stale_read.get_or_insert_with(|| read.clone());
                }
                if state
                    .last_absent
                    .as_ref()
                    .is_none_or(|a| a.invoke.index < read.invoke.index)
                {
                    state.last_absent = Some(read.clone());
                }
            }
        }
    }

    fn malformed(&mut self, op: &Op, rule: &str) {
        self.malformed += 1;
        self.anomalies.push(Anomaly {
            kind: "malformed-op".into(),
            explanation: format!(
                "Op #{} ({} {}) is malformed: {rule}.",
                op.index, op.f, op.value
            ),
            ops: vec![op.index],
        });
    }

    fn conclude(mut self) -> CheckResult {
        let mut outcomes: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        let mut stale = Vec::new();
        let mut stable_latencies = Vec::new();
        let mut lost_latencies = Vec::new();
        for (&element, state) in &self.elements {
            if state.failed_adds == state.adds {
                if let Some(read) = state.last_present.as_ref() {
                    self.anomalies.push(Anomaly {
                        kind: "unexpected".into(),
                        explanation: format!(
                            "Every add of {element} failed (so none took effect), yet {} saw it.",
                            describe_read(read)
                        ),
                        ops: vec![state.first_add.complete.index, read.complete.index],
                    });
                }
                continue;
            }
            let outcome = classify(element, state);
            match &outcome {
                Outcome::Stable {
                    latency_ns,
                    stale_read,
                } => {
                    stable_latencies.push(*latency_ns);
                    if let Some(anomaly) = stale_read {
                        stale.push(element);
                        self.anomalies.push(anomaly.clone());
                    }
                }
                Outcome::Lost {
                    latency_ns,
                    anomaly,
                } => {
                    lost_latencies.push(*latency_ns);
                    self.anomalies.push(anomaly.clone());
                }
                Outcome::NeverRead => {}
            }
            outcomes.entry(outcome.name()).or_default().push(element);
        }
        for (element, read) in &self.early_sightings {
            let explanation = match self.elements.get(element) {
                Some(state) => format!(
                    "{} saw {element} before its add (op #{}) was invoked.",
                    describe_read(read),
                    state.first_add.invoke.index
                ),
                None => format!(
                    "{} saw {element}, which no add ever added.",
                    describe_read(read)
                ),
            };
            self.anomalies.push(Anomaly {
                kind: "unexpected".into(),
                explanation,
                ops: vec![read.complete.index],
            });
        }

        let count_of = |kind: &str| self.anomalies.iter().filter(|a| a.kind == kind).count();
        let listed = |name: &str| outcomes.get(name).cloned().unwrap_or_default();
        let stable_count = listed("stable").len();
        let mut stats = Map::new();
        stats.insert("attempt_count".into(), json!(self.elements.len()));
        stats.insert("ok_read_count".into(), json!(self.ok_reads));
        stats.insert("stable_count".into(), json!(stable_count));
        stats.insert("lost".into(), json!(listed("lost")));
        stats.insert("lost_count".into(), json!(listed("lost").len()));
        stats.insert("stale".into(), json!(stale));
        stats.insert("stale_count".into(), json!(stale.len()));
        stats.insert("never_read".into(), json!(listed("never-read")));
        stats.insert("never_read_count".into(), json!(listed("never-read").len()));
        stats.insert("unexpected_count".into(), json!(count_of("unexpected")));
        stats.insert("duplicated_count".into(), json!(count_of("duplicated")));
        stats.insert(
            "stable_latencies_ms".into(),
            quantiles_ms(&mut stable_latencies),
        );
        stats.insert(
            "lost_latencies_ms".into(),
            quantiles_ms(&mut lost_latencies),
        );

        let verdict = if self.anomalies.iter().any(|a| a.kind != "malformed-op") {
            Verdict::Invalid
        } else if self.malformed > 0 || self.ok_reads == 0 || stable_count == 0 {
            Verdict::Unknown
        } else {
            Verdict::Valid
        };
        CheckResult {
            checker: "set-full".into(),
            verdict,
            anomalies: self.anomalies,
            stats,
            elapsed_ms: 0,
        }
    }
}

enum Outcome {
    Stable {
        latency_ns: u64,
        stale_read: Option<Anomaly>,
    },
    Lost {
        latency_ns: u64,
        anomaly: Anomaly,
    },
    NeverRead,
}

impl Outcome {
    fn name(&self) -> &'static str {
        match self {
            Outcome::Stable { .. } => "stable",
            Outcome::Lost { .. } => "lost",
            Outcome::NeverRead => "never-read",
        }
    }
}

fn classify(element: i64, state: &Element) -> Outcome {
    let invoked = |pair: &Option<Pair>| pair.as_ref().map(|p| p.invoke.index);
    let (present, absent) = (invoked(&state.last_present), invoked(&state.last_absent));
    let Some(known) = state.known else {
        return Outcome::NeverRead;
    };
    let add = describe_add(element, state);
    if let (Some(present_read), true) = (&state.last_present, absent < present) {
        // Every read that missed it began before a read that saw it began.
        let latency_ns = state
            .last_absent
            .as_ref()
            .map_or(0, |a| a.invoke.time.saturating_sub(known.time));
        let stale_read = state.first_stale_read.as_ref().map(|read| Anomaly {
            kind: "stale".into(),
            explanation: format!(
                "{element} was known from op #{} ({add}), but {} was invoked after that and \
                 missed it ({} read(s) did so); {} later saw it again.",
                known.index,
                describe_read(read),
                state.stale_reads,
                describe_read(present_read)
            ),
            ops: vec![
                known.index,
                read.complete.index,
                present_read.complete.index,
            ],
        });
        return Outcome::Stable {
            latency_ns,
            stale_read,
        };
    }
    match &state.last_absent {
        Some(absent_read) if present < absent && known.index < absent_read.invoke.index => {
            let last_seen = state.last_present.as_ref().map_or_else(
                || "no read ever saw it".to_string(),
                |read| format!("the last read to see it was {}", describe_read(read)),
            );
            let latency_ns = state
                .last_present
                .as_ref()
                .map_or(0, |p| p.invoke.time.saturating_sub(known.time));
            let mut ops = vec![known.index, absent_read.complete.index];
            ops.extend(state.last_present.as_ref().map(|p| p.complete.index));
            Outcome::Lost {
                latency_ns,
                anomaly: Anomaly {
                    kind: "lost".into(),
                    explanation: format!(
                        "{element} was known from op #{} ({add}); {last_seen}; {} was invoked \
                         later and missed it, and no read invoked after that saw it.",
                        known.index,
                        describe_read(absent_read)
                    ),
                    ops,
                },
            }
        }
        _ => Outcome::NeverRead,
    }
}

fn read_elements(op: &Op) -> Option<Vec<i64>> {
    op.value.as_array()?.iter().map(Value::as_i64).collect()
}

fn describe_add(element: i64, state: &Element) -> String {
    let add = &state.first_add;
    let outcome = match add.outcome() {
        OpType::Ok => "ok",
        OpType::Fail => "fail",
        OpType::Info | OpType::Invoke => "info",
    };
    format!(
        "add {element} invoked as op #{} by process {}, completed {outcome} as op #{}",
        add.invoke.index, add.invoke.process, add.complete.index
    )
}

fn describe_read(read: &Pair) -> String {
    format!(
        "the read invoked as op #{} by process {} (completed as op #{})",
        read.invoke.index, read.invoke.process, read.complete.index
    )
}

/// Jepsen's latency distribution: the values at quantiles 0, 0.5, 0.95, 0.99
/// and 1, in milliseconds; `null` without values.
fn quantiles_ms(latencies_ns: &mut [u64]) -> Value {
    if latencies_ns.is_empty() {
        return Value::Null;
    }
    latencies_ns.sort_unstable();
    let count = latencies_ns.len();
    let at = |point: f64| {
        let position = ((count as f64 * point).floor() as usize).min(count - 1);
        latencies_ns[position] as f64 / 1e6
    };
    let mut quantiles = Map::new();
    for (name, point) in [
        ("0", 0.0),
        ("0.5", 0.5),
        ("0.95", 0.95),
        ("0.99", 0.99),
        ("1", 1.0),
    ] {
        quantiles.insert(name.into(), json!(at(point)));
    }
    Value::Object(quantiles)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Process;

    /// Builds a history one op at a time, a millisecond apart.
    #[derive(Default)]
    struct History(Vec<Op>);

    impl History {
        fn op(&mut self, process: u64, kind: OpType, f: &str, value: Value) -> &mut Self {
            let index = self.0.len() as u64;
            self.0.push(Op {
                index,
                time: index * 1_000_000,
                kind,
                process: Process::Client(process),
                f: f.into(),
                value,
                error: None,
                node: None,
            });
            self
        }

        fn add(&mut self, process: u64, element: i64, outcome: OpType) -> &mut Self {
            self.op(process, OpType::Invoke, "add", json!(element)).op(
                process,
                outcome,
                "add",
                json!(element),
            )
        }

        fn read(&mut self, process: u64, seen: &[i64]) -> &mut Self {
            self.op(process, OpType::Invoke, "read", Value::Null).op(
                process,
                OpType::Ok,
                "read",
                json!(seen),
            )
        }
    }

    fn kinds(result: &CheckResult) -> Vec<&str> {
        result.anomalies.iter().map(|a| a.kind.as_str()).collect()
    }

    #[test]
    fn reads_that_see_every_acknowledged_add_are_valid() {
        let mut h = History::default();
        h.add(1, 1, OpType::Ok)
            .add(1, 2, OpType::Ok)
            .read(2, &[1, 2])
            .read(3, &[2, 1])
            .add(1, 3, OpType::Fail)
            .read(2, &[1, 2]);
        let result = check_set_full(&h.0);
        assert_eq!(result.verdict, Verdict::Valid, "{:?}", result.anomalies);
        assert_eq!(result.stats["stable_count"], json!(2));
        assert_eq!(result.stats["stale_count"], json!(0));
        assert_eq!(result.stats["stable_latencies_ms"]["1"], json!(0.0));
    }

    #[test]
    fn an_element_no_read_sees_after_it_was_known_is_lost() {
        let mut h = History::default();
        h.add(1, 7, OpType::Ok)
            .read(2, &[7])
            .read(2, &[])
            .add(1, 8, OpType::Ok)
            .read(2, &[8]);
        let result = check_set_full(&h.0);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert_eq!(kinds(&result), ["lost"]);
        assert_eq!(result.stats["lost"], json!([7]));
        let explanation = &result.anomalies[0].explanation;
        for part in [
            "7 was known from op #1",
            "add 7 invoked as op #0",
            "op #2 by process 2",
            "op #8 by process 2",
        ] {
            assert!(
                explanation.contains(part),
                "{part} missing from {explanation}"
            );
        }
        assert_eq!(result.anomalies[0].ops, vec![1, 9, 3]);
        assert_eq!(result.stats["lost_latencies_ms"]["0"], json!(1.0));
    }

    #[test]
    fn a_read_that_misses_a_known_element_later_seen_is_stale() {
        let mut h = History::default();
        h.add(1, 4, OpType::Ok).read(2, &[]).read(3, &[4]);
        let result = check_set_full(&h.0);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert_eq!(kinds(&result), ["stale"]);
        assert_eq!(result.stats["stale"], json!([4]));
        assert!(
            result.anomalies[0]
                .explanation
                .contains("invoked as op #2 by process 2")
        );
        assert_eq!(result.stats["stable_latencies_ms"]["0"], json!(1.0));
    }

    #[test]
    fn unconfirmed_and_concurrent_elements_are_never_read_not_lost() {
        let mut h = History::default();
        // 5's add never completes; the only read missing 6 began before 6's add finished.
        h.add(2, 9, OpType::Ok)
            .op(1, OpType::Invoke, "add", json!(5))
            .op(2, OpType::Invoke, "add", json!(6))
            .op(3, OpType::Invoke, "read", Value::Null)
            .op(2, OpType::Ok, "add", json!(6))
            .op(3, OpType::Ok, "read", json!([9]));
        let result = check_set_full(&h.0);
        assert_eq!(result.verdict, Verdict::Valid, "{:?}", result.anomalies);
        assert_eq!(result.stats["never_read"], json!([5, 6]));
        assert_eq!(result.stats["stable_count"], json!(1));
    }

    #[test]
    fn elements_never_added_or_whose_add_failed_are_unexpected() {
        let mut h = History::default();
        h.add(1, 1, OpType::Ok)
            .add(1, 2, OpType::Fail)
            .read(2, &[1, 2, 3]);
        let result = check_set_full(&h.0);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert_eq!(kinds(&result), ["unexpected", "unexpected"]);
        assert!(
            result.anomalies[0]
                .explanation
                .contains("Every add of 2 failed")
        );
        assert!(
            result.anomalies[1]
                .explanation
                .contains("saw 3, which no add ever added")
        );
        let mut h = History::default();
        h.read(2, &[1, 1]).add(1, 1, OpType::Ok);
        let result = check_set_full(&h.0);
        assert_eq!(kinds(&result), ["duplicated", "unexpected"]);
        assert!(
            result.anomalies[1]
                .explanation
                .contains("before its add (op #2) was invoked")
        );
    }

    #[test]
    fn without_a_successful_read_the_verdict_is_unknown() {
        let mut h = History::default();
        h.add(1, 1, OpType::Ok)
            .op(2, OpType::Invoke, "read", Value::Null)
            .op(2, OpType::Info, "read", Value::Null);
        assert_eq!(check_set_full(&h.0).verdict, Verdict::Unknown);
        let mut h = History::default();
        h.add(1, 1, OpType::Info).read(2, &[]);
        assert_eq!(check_set_full(&h.0).verdict, Verdict::Unknown);
        let mut h = History::default();
        h.op(1, OpType::Invoke, "add", json!("x"))
            .op(1, OpType::Ok, "add", json!("x"))
            .read(2, &[]);
        let result = check_set_full(&h.0);
        assert_eq!(
            (result.verdict, kinds(&result)),
            (Verdict::Unknown, vec!["malformed-op"])
        );
    }
}
