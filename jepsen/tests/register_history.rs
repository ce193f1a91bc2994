//! A real register history that once ran the linearizability search out of
//! time: one key of a Ballast run under member changes and packet loss,
//! with 59 indeterminate writes and compare-and-sets of five values and
//! few reads (runs/matrix, seed 1). It must be decided, and it is valid.

use std::path::Path;
use std::time::Duration;

use ballast_jepsen::checker::Verdict;
use ballast_jepsen::checker::linear::check_register;
use ballast_jepsen::history::{Op, OpType, Process, read_jsonl};
use serde_json::{Value, json};

#[test]
fn many_indeterminate_writes_of_few_values_are_decided() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/register-many-indeterminate.jsonl");
    let history = read_jsonl(&path).unwrap();
    let result = check_register(&history, Duration::from_secs(60));
    assert_eq!(result.stats["indeterminate_ops"], 59, "{:?}", result.stats);
    assert_eq!(result.verdict, Verdict::Valid, "{:?}", result.anomalies);
}

fn op(index: u64, time: u64, kind: OpType, process: u64, f: &str, value: Value) -> Op {
    Op {
        index,
        time,
        kind,
        process: Process::Client(process),
        f: f.into(),
        value,
        error: None,
        node: None,
    }
}

/// Two indeterminate writes of one value, then reads: trying twins only in
/// call order still finds "both applied" and still refuses a third version.
#[test]
fn indeterminate_twins_may_both_apply_but_not_thrice() {
    use OpType::*;
    let history = |version: u64| {
        vec![
            op(0, 0, Invoke, 1, "write", json!({"key": "k", "value": 1})),
            op(1, 5, Info, 1, "write", json!({"key": "k", "value": 1})),
            op(2, 10, Invoke, 2, "write", json!({"key": "k", "value": 1})),
            op(3, 15, Info, 2, "write", json!({"key": "k", "value": 1})),
            op(4, 20, Invoke, 3, "read", json!({"key": "k"})),
            op(
                5,
                30,
                Ok,
                3,
                "read",
                json!({"key": "k", "value": 1, "version": 1}),
            ),
            op(6, 40, Invoke, 3, "read", json!({"key": "k"})),
            op(
                7,
                50,
                Ok,
                3,
                "read",
                json!({"key": "k", "value": 1, "version": version}),
            ),
        ]
    };
    let limit = Duration::from_secs(10);
    assert_eq!(check_register(&history(2), limit).verdict, Verdict::Valid);
    assert_eq!(check_register(&history(1), limit).verdict, Verdict::Valid);
    assert_eq!(check_register(&history(3), limit).verdict, Verdict::Invalid);
}
