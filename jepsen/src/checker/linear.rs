//! Linearizability: a Wing–Gong–Lowe search in Porcupine's manner (see
//! `linear/engine.rs`) and the register workload's model, a per-key versioned
//! register.
//!
//! Register history values (`f` is `read`, `write` or `cas`):
//! - read: invoke `{"key":"r1"}`, ok `{"key":"r1","value":3,"version":2}`;
//!   `"value": null` (version 0) means the key is absent; without
//!   `"version"` only the value is checked.
//! - write: invoke `{"key":"r1","value":3}`, ok may carry the `"version"`
//!   the write produced.
//! - cas: invoke `{"key":"r1","from":2,"to":4}`; ok means the compare held
//!   and the write took effect (it may carry `"version"`); a `fail` without
//!   an `error` means the compare did not hold, which the checker keeps as an
//!   observation of the register; a `fail` with an `error` never reached it.
//!
//! A key starts absent at version 0; a write or successful cas sets the value
//! and adds one to the version. `fail` writes and reads are dropped; `info`
//! (or never completed) writes and cas ops may take effect at any time after
//! their invocation, or never; `info` reads are dropped.

mod engine;
mod porcupine;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::checker::{Anomaly, CheckResult, Verdict};
use crate::history::{Op, OpType, Pair, pairs};

pub use engine::{
    Counterexample, Model, Operation, Outcome, PartitionReport, check_partition, check_partitions,
    explain,
};
pub use porcupine::parse_porcupine_etcd;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RegisterState {
    /// `None` while the key is absent.
    pub value: Option<i64>,
    pub version: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RegisterInput {
    Read,
    Write(i64),
    Cas { from: i64, to: i64 },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RegisterOutput {
    /// What a read saw; `version` is `None` when it was not recorded.
    Read {
        value: Option<i64>,
        version: Option<u64>,
    },
    /// A write, or a cas whose compare held, with the version it produced if
    /// known.
    Applied { version: Option<u64> },
    /// A cas whose compare did not hold.
    CompareFailed,
    /// An indeterminate operation: it may have taken effect.
    Unknown,
}

/// One key of etcd: a value with the version etcd counts for it.
pub struct VersionedRegister;

impl VersionedRegister {
    fn write(state: &RegisterState, value: i64, version: Option<u64>) -> Option<RegisterState> {
        let next = RegisterState {
            value: Some(value),
            version: state.version + 1,
        };
        version.is_none_or(|v| v == next.version).then_some(next)
    }
}

impl Model for VersionedRegister {
    type State = RegisterState;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> RegisterState {
        RegisterState {
            value: None,
            version: 0,
        }
    }

    fn step(
        &self,
        state: &RegisterState,
        input: &RegisterInput,
        output: &RegisterOutput,
    ) -> Option<RegisterState> {
        use RegisterInput as In;
        use RegisterOutput as Out;
        match (*input, *output) {
            (In::Read, Out::Read { value, version }) => (value == state.value
                && version.is_none_or(|v| v == state.version))
            .then_some(*state),
            (In::Read, Out::Unknown) => Some(*state),
            (In::Write(value), Out::Applied { version }) => Self::write(state, value, version),
            (In::Write(value), Out::Unknown) => Self::write(state, value, None),
            (In::Cas { from, to }, Out::Applied { version }) if state.value == Some(from) => {
                Self::write(state, to, version)
            }
            (In::Cas { from, .. }, Out::CompareFailed) => {
                (state.value != Some(from)).then_some(*state)
            }
            (In::Cas { from, to }, Out::Unknown) if state.value == Some(from) => {
                Self::write(state, to, None)
            }
            (In::Cas { .. }, Out::Unknown) => Some(*state),
            _ => None,
        }
    }

    fn describe_state(&self, state: &RegisterState) -> String {
        match state.value {
            Some(value) => format!("{value} at version {}", state.version),
            None => format!("absent at version {}", state.version),
        }
    }

    fn describe_op(&self, input: &RegisterInput, output: &RegisterOutput) -> String {
        let produced = |version: &Option<u64>| match version {
            Some(v) => format!(", producing version {v}"),
            None => String::new(),
        };
        match (input, output) {
            (RegisterInput::Read, RegisterOutput::Read { value, version }) => {
                let seen = value.map_or("absent".to_string(), |v| v.to_string());
                match version {
                    Some(v) => format!("read saw {seen} at version {v}"),
                    None => format!("read saw {seen}"),
                }
            }
            (RegisterInput::Read, _) => "read with unknown result".to_string(),
            (RegisterInput::Write(value), RegisterOutput::Applied { version }) => {
                format!("write {value}{}", produced(version))
            }
            (RegisterInput::Write(value), _) => format!("write {value} (indeterminate)"),
            (RegisterInput::Cas { from, to }, RegisterOutput::Applied { version }) => {
                format!("cas {from}→{to} succeeded{}", produced(version))
            }
            (RegisterInput::Cas { from, to }, RegisterOutput::CompareFailed) => {
                format!("cas {from}→{to} found the value was not {from}")
            }
            (RegisterInput::Cas { from, to }, _) => format!("cas {from}→{to} (indeterminate)"),
        }
    }
}

type RegisterOperation = Operation<RegisterInput, RegisterOutput>;

/// What becomes of one invocation and its completion.
enum Disposition {
    Check(String, RegisterOperation),
    /// A `fail` that never reached the register.
    DroppedFailure,
    /// An indeterminate read tells nothing.
    DroppedIndeterminateRead,
}

/// Checks a register workload's history for linearizability, key by key.
/// Past `time_limit` the keys not yet decided make the verdict `Unknown`
/// (unless another key is invalid); so does any op the checker cannot read.
pub fn check_register(history: &[Op], time_limit: Duration) -> CheckResult {
    let started = Instant::now();
    let deadline = started.checked_add(time_limit);
    let mut keys: BTreeMap<String, Vec<RegisterOperation>> = BTreeMap::new();
    let mut unreadable = Vec::new();
    let (mut dropped_failures, mut dropped_reads) = (0u64, 0u64);
    for pair in pairs(history) {
        match disposition(&pair) {
            Ok(Disposition::Check(key, op)) => keys.entry(key).or_default().push(op),
            Ok(Disposition::DroppedFailure) => dropped_failures += 1,
            Ok(Disposition::DroppedIndeterminateRead) => dropped_reads += 1,
            Err(why) => unreadable.push((pair.complete.index, why)),
        }
    }
    let (names, partitions): (Vec<String>, Vec<Vec<RegisterOperation>>) = keys.into_iter().unzip();
    let reports = check_partitions(&VersionedRegister, &partitions, deadline);

    let mut verdict = Verdict::Valid;
    let mut anomalies = Vec::new();
    if !unreadable.is_empty() {
        verdict = Verdict::Unknown;
        let listed: Vec<String> = unreadable
            .iter()
            .map(|(index, why)| format!("op {index}: {why}"))
            .collect();
        anomalies.push(Anomaly {
            kind: "unreadable-op".to_string(),
            explanation: format!(
                "These operations are not register operations the checker understands, so \
                 their keys were checked without them: {}.",
                listed.join("; ")
            ),
            ops: unreadable.iter().map(|(index, _)| *index).collect(),
        });
    }
    let (mut invalid_keys, mut timed_out_keys) = (Vec::new(), Vec::new());
    for ((key, ops), report) in names.iter().zip(&partitions).zip(&reports) {
        match &report.outcome {
            Outcome::Linearizable => {}
            Outcome::TimedOut => {
                verdict = verdict.and(Verdict::Unknown);
                timed_out_keys.push(key.clone());
            }
            Outcome::NotLinearizable(counterexample) => {
                verdict = verdict.and(Verdict::Invalid);
                invalid_keys.push(key.clone());
                anomalies.push(nonlinearizable(key, ops, counterexample));
            }
        }
    }

    let states = reports.iter().map(|report| report.states);
    let mut stats = serde_json::Map::new();
    stats.insert("keys".into(), json!(partitions.len()));
    stats.insert(
        "ops_checked".into(),
        json!(partitions.iter().map(Vec::len).sum::<usize>()),
    );
    let indeterminate = partitions
        .iter()
        .flatten()
        .filter(|op| op.ret.is_none())
        .count();
    stats.insert("indeterminate_ops".into(), json!(indeterminate));
    stats.insert("dropped_failed_ops".into(), json!(dropped_failures));
    stats.insert("dropped_indeterminate_reads".into(), json!(dropped_reads));
    stats.insert("unreadable_ops".into(), json!(unreadable.len()));
    stats.insert(
        "max_states_per_key".into(),
        json!(states.clone().max().unwrap_or(0)),
    );
    stats.insert("total_states".into(), json!(states.sum::<usize>()));
    stats.insert("invalid_keys".into(), json!(invalid_keys));
    stats.insert("timed_out_keys".into(), json!(timed_out_keys));
    CheckResult {
        checker: "linearizable-register".to_string(),
        verdict,
        anomalies,
        stats,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

fn nonlinearizable(
    key: &str,
    ops: &[RegisterOperation],
    counterexample: &Counterexample<RegisterState>,
) -> Anomaly {
    let stuck = counterexample.stuck.iter();
    let placed = counterexample.linearized.iter().map(|(op, _)| op);
    Anomaly {
        kind: "nonlinearizable".to_string(),
        explanation: format!(
            "Key {key} has no linearization: no order of its operations within their real-time \
             intervals is a history of a register. {}",
            explain(&VersionedRegister, ops, counterexample)
        ),
        ops: stuck.chain(placed).map(|&op| ops[op].index).collect(),
    }
}

fn disposition(pair: &Pair<'_>) -> Result<Disposition, String> {
    let (invoke, complete) = (pair.invoke, pair.complete);
    let key = match invoke.value.get("key") {
        Some(Value::String(key)) => key.clone(),
        Some(key) if !key.is_null() => key.to_string(),
        _ => return Err("the invocation has no key".to_string()),
    };
    let input = match invoke.f.as_str() {
        "read" => RegisterInput::Read,
        "write" => RegisterInput::Write(integer(&invoke.value, "value")?),
        "cas" => RegisterInput::Cas {
            from: integer(&invoke.value, "from")?,
            to: integer(&invoke.value, "to")?,
        },
        other => return Err(format!("unknown function {other:?}")),
    };
    let (output, ret) = match pair.outcome() {
        OpType::Fail if complete.error.is_none() && matches!(input, RegisterInput::Cas { .. }) => {
            (RegisterOutput::CompareFailed, Some(complete.time))
        }
        OpType::Fail => return Ok(Disposition::DroppedFailure),
        OpType::Info | OpType::Invoke if input == RegisterInput::Read => {
            return Ok(Disposition::DroppedIndeterminateRead);
        }
        OpType::Info | OpType::Invoke => (RegisterOutput::Unknown, None),
        OpType::Ok => (ok_output(input, &complete.value)?, Some(complete.time)),
    };
    if ret.is_some_and(|ret| ret < invoke.time) {
        return Err("it completed before it was invoked".to_string());
    }
    let op = Operation {
        input,
        output,
        call: invoke.time,
        ret,
        index: complete.index,
    };
    Ok(Disposition::Check(key, op))
}

fn ok_output(input: RegisterInput, value: &Value) -> Result<RegisterOutput, String> {
    let version = match value.get("version") {
        None | Some(Value::Null) => None,
        Some(version) => Some(
            version
                .as_u64()
                .ok_or_else(|| format!("version {version} is not a count"))?,
        ),
    };
    if input != RegisterInput::Read {
        return Ok(RegisterOutput::Applied { version });
    }
    let value = match value.get("value") {
        None => return Err("the read's completion has no value".to_string()),
        Some(Value::Null) => None,
        Some(_) => Some(integer(value, "value")?),
    };
    Ok(RegisterOutput::Read { value, version })
}

fn integer(value: &Value, field: &str) -> Result<i64, String> {
    value
        .get(field)
        .and_then(Value::as_i64)
        .ok_or_else(|| format!("{field:?} is not an integer in {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Process;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const LIMIT: Duration = Duration::from_secs(30);

    /// Builds a history from (time, process, type, f, value) events; the
    /// index is the position after sorting by time.
    fn history(mut events: Vec<(u64, u64, OpType, &str, Value)>) -> Vec<Op> {
        events.sort_by_key(|event| event.0);
        events
            .into_iter()
            .enumerate()
            .map(|(index, (time, process, kind, f, value))| Op {
                index: index as u64,
                time,
                kind,
                process: Process::Client(process),
                f: f.to_string(),
                value,
                error: None,
                node: None,
            })
            .collect()
    }

    use OpType::{Fail, Info, Invoke, Ok as Done};

    fn read(key: &str) -> Value {
        json!({ "key": key })
    }

    fn seen(key: &str, value: Option<i64>, version: u64) -> Value {
        json!({ "key": key, "value": value, "version": version })
    }

    fn write(key: &str, value: i64) -> Value {
        json!({ "key": key, "value": value })
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_state() {
        for (value, version) in [(Some(1), 1), (None, 0)] {
            let result = check_register(
                &history(vec![
                    (0, 1, Invoke, "write", write("r", 1)),
                    (5, 2, Invoke, "read", read("r")),
                    (10, 1, Done, "write", write("r", 1)),
                    (15, 2, Done, "read", seen("r", value, version)),
                ]),
                LIMIT,
            );
            assert_eq!(result.verdict, Verdict::Valid, "{value:?}");
            assert_eq!(result.stats["ops_checked"], json!(2));
        }
    }

    #[test]
    fn a_read_of_an_overwritten_value_is_invalid_and_explained() {
        let result = check_register(
            &history(vec![
                (0, 1, Invoke, "write", write("r", 1)),
                (10, 1, Done, "write", write("r", 1)),
                (20, 1, Invoke, "write", write("r", 2)),
                (30, 1, Done, "write", write("r", 2)),
                (40, 2, Invoke, "read", read("r")),
                (50, 2, Done, "read", json!({ "key": "r", "value": 1 })),
            ]),
            LIMIT,
        );
        assert_eq!(result.verdict, Verdict::Invalid);
        assert_eq!(result.anomalies.len(), 1);
        let anomaly = &result.anomalies[0];
        assert_eq!(anomaly.kind, "nonlinearizable");
        // The read (completion index 5) could not be placed; both writes were.
        assert_eq!(anomaly.ops, vec![5, 1, 3]);
        let text = &anomaly.explanation;
        assert!(text.contains("Key r "), "{text}");
        assert!(text.contains("places 2 of 3"), "{text}");
        assert!(
            text.contains("op 3: write 2; then 2 at version 2"),
            "{text}"
        );
        assert!(
            text.contains("op 5: read saw 1 cannot follow 2 at version 2"),
            "{text}"
        );
    }

    #[test]
    fn intervals_are_closed_so_ops_meeting_at_one_instant_overlap() {
        let result = check_register(
            &history(vec![
                (0, 1, Invoke, "write", write("r", 1)),
                (10, 1, Done, "write", write("r", 1)),
                (10, 2, Invoke, "read", read("r")),
                (20, 2, Done, "read", seen("r", None, 0)),
            ]),
            LIMIT,
        );
        assert_eq!(result.verdict, Verdict::Valid);
        let result = check_register(
            &history(vec![
                (0, 1, Invoke, "write", write("r", 1)),
                (10, 1, Done, "write", write("r", 1)),
                (11, 2, Invoke, "read", read("r")),
                (20, 2, Done, "read", seen("r", None, 0)),
            ]),
            LIMIT,
        );
        assert_eq!(result.verdict, Verdict::Invalid);
    }

    #[test]
    fn a_read_of_the_right_value_at_the_wrong_version_is_invalid() {
        let result = check_register(
            &history(vec![
                (0, 1, Invoke, "write", write("r", 7)),
                (
                    10,
                    1,
                    Done,
                    "write",
                    json!({ "key": "r", "value": 7, "version": 1 }),
                ),
                (20, 2, Invoke, "read", read("r")),
                (30, 2, Done, "read", seen("r", Some(7), 2)),
            ]),
            LIMIT,
        );
        assert_eq!(result.verdict, Verdict::Invalid);
        assert_eq!(result.anomalies[0].ops[0], 3);
    }

    #[test]
    fn an_indeterminate_write_may_take_effect_later_or_never() {
        for (value, version) in [(Some(1), 1), (None, 0)] {
            let result = check_register(
                &history(vec![
                    (0, 1, Invoke, "write", write("r", 1)),
                    (10, 1, Info, "write", write("r", 1)),
                    (20, 2, Invoke, "read", read("r")),
                    (30, 2, Done, "read", seen("r", value, version)),
                    (40, 2, Invoke, "read", read("r")),
                    (50, 2, Done, "read", seen("r", value, version)),
                ]),
                LIMIT,
            );
            assert_eq!(result.verdict, Verdict::Valid, "{value:?}");
            assert_eq!(result.stats["indeterminate_ops"], json!(1));
        }
        // But it cannot take effect before it was invoked.
        let early = check_register(
            &history(vec![
                (0, 2, Invoke, "read", read("r")),
                (10, 2, Done, "read", seen("r", Some(1), 1)),
                (20, 1, Invoke, "write", write("r", 1)),
            ]),
            LIMIT,
        );
        assert_eq!(early.verdict, Verdict::Invalid);
    }

    #[test]
    fn a_failed_write_read_back_is_invalid() {
        let result = check_register(
            &history(vec![
                (0, 1, Invoke, "write", write("r", 1)),
                (10, 1, Fail, "write", write("r", 1)),
                (20, 2, Invoke, "read", read("r")),
                (30, 2, Done, "read", seen("r", Some(1), 1)),
            ]),
            LIMIT,
        );
        assert_eq!(result.verdict, Verdict::Invalid);
        assert_eq!(result.stats["dropped_failed_ops"], json!(1));
    }

    #[test]
    fn a_failed_cas_is_a_compare_that_did_not_hold_unless_it_carries_an_error() {
        let cas = json!({ "key": "r", "from": 1, "to": 2 });
        let mut events = history(vec![
            (0, 1, Invoke, "write", write("r", 1)),
            (10, 1, Done, "write", write("r", 1)),
            (20, 2, Invoke, "cas", cas.clone()),
            (30, 2, Fail, "cas", cas),
        ]);
        assert_eq!(check_register(&events, LIMIT).verdict, Verdict::Invalid);
        events[3].error = Some("no leader".to_string());
        let result = check_register(&events, LIMIT);
        assert_eq!(result.verdict, Verdict::Valid);
        assert_eq!(result.stats["dropped_failed_ops"], json!(1));
    }

    #[test]
    fn an_unreadable_op_makes_the_verdict_unknown() {
        let result = check_register(
            &history(vec![
                (0, 1, Invoke, "write", json!({ "key": "r", "value": "one" })),
                (10, 1, Done, "write", json!({ "key": "r" })),
            ]),
            LIMIT,
        );
        assert_eq!(result.verdict, Verdict::Unknown);
        assert_eq!(result.anomalies[0].kind, "unreadable-op");
        assert_eq!(result.anomalies[0].ops, vec![1]);
    }

    /// A generated run: a sequential register per key behind it, each op
    /// taking effect at a random moment inside its interval. Also returns,
    /// for each ok read, the state before the op that produced what it saw,
    /// when that op had completed before the read began.
    fn generated_run(seed: u64) -> (Vec<Op>, Vec<(u64, String, RegisterState)>) {
        struct Planned {
            process: u64,
            call: u64,
            effect: u64,
            ret: u64,
            key: String,
            input: RegisterInput,
            indeterminate: bool,
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut planned = Vec::new();
        for process in 0..8u64 {
            let mut now = rng.random_range(0..10u64);
            for _ in 0..40 {
                let call = now;
                let effect = call + rng.random_range(1..30);
                let ret = effect + rng.random_range(1..30);
                now = ret + rng.random_range(1..10);
                let input = match rng.random_range(0..10) {
                    0..5 => RegisterInput::Read,
                    5..8 => RegisterInput::Write(rng.random_range(0..5)),
                    _ => RegisterInput::Cas {
                        from: rng.random_range(0..5),
                        to: rng.random_range(0..5),
                    },
                };
                let indeterminate = input != RegisterInput::Read && rng.random_ratio(1, 20);
                let key = format!("k{}", rng.random_range(0..4));
                let process = process * 1000 + planned.len() as u64;
                planned.push(Planned {
                    process,
                    call,
                    effect,
                    ret,
                    key,
                    input,
                    indeterminate,
                });
            }
        }
        planned.sort_by_key(|op| op.effect);
        let mut registers: BTreeMap<String, Vec<(RegisterState, u64)>> = BTreeMap::new();
        let mut events = Vec::new();
        let mut stale_candidates = Vec::new();
        let initial = (VersionedRegister.init(), 0);
        for op in &planned {
            let states = registers
                .entry(op.key.clone())
                .or_insert_with(|| vec![initial]);
            let (state, produced_at) = *states.last().unwrap();
            let key = op.key.as_str();
            let (f, invoke_value, complete_value, kind) = match op.input {
                RegisterInput::Read => {
                    if produced_at < op.call && state.version > 0 {
                        let before = states[states.len() - 2].0;
                        stale_candidates.push((op.call, key.to_string(), before));
                    }
                    (
                        "read",
                        read(key),
                        seen(key, state.value, state.version),
                        Done,
                    )
                }
                RegisterInput::Write(value) => {
                    let version = state.version + 1;
                    let ret = if op.indeterminate { u64::MAX } else { op.ret };
                    states.push((
                        RegisterState {
                            value: Some(value),
                            version,
                        },
                        ret,
                    ));
                    let done = json!({ "key": key, "value": value, "version": version });
                    (
                        "write",
                        write(key, value),
                        done,
                        if op.indeterminate { Info } else { Done },
                    )
                }
                RegisterInput::Cas { from, to } => {
                    let cas = json!({ "key": key, "from": from, "to": to });
                    if state.value == Some(from) {
                        let version = state.version + 1;
                        let ret = if op.indeterminate { u64::MAX } else { op.ret };
                        states.push((
                            RegisterState {
                                value: Some(to),
                                version,
                            },
                            ret,
                        ));
                        (
                            "cas",
                            cas.clone(),
                            cas,
                            if op.indeterminate { Info } else { Done },
                        )
                    } else {
                        ("cas", cas.clone(), cas, Fail)
                    }
                }
            };
            events.push((op.call, op.process, Invoke, f, invoke_value));
            events.push((op.ret, op.process, kind, f, complete_value));
        }
        let history = history(events);
        // Each candidate named by its read's completion index.
        let stale = stale_candidates
            .into_iter()
            .filter_map(|(call, key, before)| {
                let invoke = history
                    .iter()
                    .find(|op| op.time == call && op.is_invoke())?;
                let complete = history[invoke.index as usize + 1..]
                    .iter()
                    .find(|op| op.process == invoke.process)?;
                Some((complete.index, key, before))
            })
            .collect();
        (history, stale)
    }

    #[test]
    fn a_generated_history_is_valid_until_one_read_is_made_stale() {
        let (mut history, stale) = generated_run(7);
        let result = check_register(&history, LIMIT);
        assert_eq!(result.verdict, Verdict::Valid, "{:?}", result.anomalies);
        assert_eq!(result.stats["keys"], json!(4));
        assert!(result.stats["ops_checked"].as_u64().unwrap() > 250);
        assert!(result.stats["indeterminate_ops"].as_u64().unwrap() > 0);

        let (read, key, before) = stale[stale.len() / 2].clone();
        history[read as usize].value = seen(&key, before.value, before.version);
        let result = check_register(&history, LIMIT);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert_eq!(result.stats["invalid_keys"], json!([key]));
        assert_eq!(result.anomalies.len(), 1);
        assert!(result.anomalies[0].ops.contains(&read));
    }

    #[test]
    fn no_time_at_all_gives_unknown_never_valid() {
        let (history, _) = generated_run(11);
        let result = check_register(&history, Duration::ZERO);
        assert_eq!(result.verdict, Verdict::Unknown);
        assert_eq!(result.stats["timed_out_keys"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn a_porcupine_log_reads_as_a_register_history() {
        let log = "INFO  jepsen.util - 0\t:invoke\t:cas\t[1 2]\n\
                   INFO  jepsen.util - 1\t:invoke\t:read\tnil\n\
                   some other line\n\
                   INFO  jepsen.util - 0\t:fail\t:cas\t[1 2]\n\
                   INFO  jepsen.util - 1\t:ok\t:read\tnil\n\
                   INFO  jepsen.util - 2  :invoke :write  3\n\
                   INFO  jepsen.util - 2  :info   :write  :timed-out\n";
        let history = parse_porcupine_etcd(log).unwrap();
        assert_eq!(history.len(), 6);
        assert_eq!(
            history[0].value,
            json!({ "key": "register", "from": 1, "to": 2 })
        );
        assert_eq!((history[2].kind, history[2].error.as_deref()), (Fail, None));
        assert_eq!(
            history[3].value,
            json!({ "key": "register", "value": null })
        );
        assert_eq!(history[5].error.as_deref(), Some("timed-out"));
        assert_eq!(history[5].time, 5);
        assert_eq!(check_register(&history, LIMIT).verdict, Verdict::Valid);
        assert!(parse_porcupine_etcd("INFO  jepsen.util - 0 :invoke :cas [1]").is_err());
    }
}
