//! A run's history: Jepsen's op shape, one JSON object per line.
//!
//! Every client operation appears twice: an `invoke` when the worker sends
//! it and a completion (`ok`, `fail` or `info`) with the same process when
//! the answer (or its absence) is known. `fail` means the operation certainly
//! did not take effect; `info` means it may have. Nemesis operations use the
//! process `"nemesis"`. The meaning of `value` is the workload's: see
//! `crate::workload`.

use std::fmt;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// The `f` of the nemesis's `info` op recorded each time it starts member
/// processes again (its value: their names). Checkers whose rules depend on
/// restarts (lease expiry) read it.
pub const MEMBERS_STARTED: &str = "members-started";

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// Who issued an operation: a client worker's process id, or the nemesis.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub enum Process {
    Client(u64),
    Nemesis,
}

impl Serialize for Process {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Process::Client(id) => serializer.serialize_u64(*id),
            Process::Nemesis => serializer.serialize_str("nemesis"),
        }
    }
}

impl<'de> Deserialize<'de> for Process {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Number(n) => n
                .as_u64()
                .map(Process::Client)
                .ok_or_else(|| serde::de::Error::custom("process must be a non-negative integer")),
            Value::String(s) if s == "nemesis" => Ok(Process::Nemesis),
            other => Err(serde::de::Error::custom(format!("bad process {other}"))),
        }
    }
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Process::Client(id) => write!(f, "{id}"),
            Process::Nemesis => f.write_str("nemesis"),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Op {
    /// Position in the history, from 0, dense.
    pub index: u64,
    /// Nanoseconds since the run started.
    pub time: u64,
    #[serde(rename = "type")]
    pub kind: OpType,
    pub process: Process,
    pub f: String,
    #[serde(default)]
    pub value: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The member the worker is pinned to (or the nemesis acted on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Op {
    pub fn is_invoke(&self) -> bool {
        self.kind == OpType::Invoke
    }

    pub fn is_client(&self) -> bool {
        matches!(self.process, Process::Client(_))
    }
}

/// One completed client operation: its invocation and its completion.
#[derive(Clone, Debug)]
pub struct Pair<'a> {
    pub invoke: &'a Op,
    pub complete: &'a Op,
}

/// Pairs every client invocation with its completion. An invocation left
/// without one (the run stopped while it was in flight) is completed as
/// `info` at the end of time, which is what it is: it may have happened.
pub fn pairs(history: &[Op]) -> Vec<Pair<'_>> {
    use std::collections::HashMap;
    let mut open: HashMap<Process, usize> = HashMap::new();
    let mut result: Vec<(usize, Option<usize>)> = Vec::new();
    for (position, op) in history.iter().enumerate() {
        if !op.is_client() {
            continue;
        }
        if op.is_invoke() {
            open.insert(op.process, result.len());
            result.push((position, None));
        } else if let Some(slot) = open.remove(&op.process) {
            result[slot].1 = Some(position);
        }
    }
    result
        .into_iter()
        .map(|(invoke, complete)| Pair {
            invoke: &history[invoke],
            complete: complete.map_or(&history[invoke], |c| &history[c]),
        })
        .collect()
}

impl Pair<'_> {
    /// The completion's type; an invocation never completed counts as `info`.
    pub fn outcome(&self) -> OpType {
        if std::ptr::eq(self.invoke, self.complete) {
            OpType::Info
        } else {
            self.complete.kind
        }
    }
}

pub fn write_jsonl(path: &Path, history: &[Op]) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    for op in history {
        serde_json::to_writer(&mut out, op)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Op>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut history = Vec::new();
    for (number, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op: Op = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}", path.display(), number + 1))?;
        history.push(op);
    }
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(index: u64, kind: OpType, process: u64) -> Op {
        Op {
            index,
            time: index * 10,
            kind,
            process: Process::Client(process),
            f: "read".into(),
            value: Value::Null,
            error: None,
            node: None,
        }
    }

    #[test]
    fn an_op_round_trips_in_jepsens_shape() {
        let text =
            r#"{"index":3,"time":120,"type":"info","process":"nemesis","f":"kill","value":["n1"]}"#;
        let op: Op = serde_json::from_str(text).unwrap();
        assert_eq!(op.process, Process::Nemesis);
        assert_eq!(op.kind, OpType::Info);
        assert_eq!(op.value, json!(["n1"]));
        assert_eq!(serde_json::to_string(&op).unwrap(), text);
    }

    #[test]
    fn pairs_match_each_invocation_with_its_process_completion() {
        let history = vec![
            op(0, OpType::Invoke, 1),
            op(1, OpType::Invoke, 2),
            op(2, OpType::Ok, 2),
            op(3, OpType::Fail, 1),
            op(4, OpType::Invoke, 3),
        ];
        let pairs = pairs(&history);
        let seen: Vec<(u64, u64, OpType)> = pairs
            .iter()
            .map(|p| (p.invoke.index, p.complete.index, p.outcome()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (0, 3, OpType::Fail),
                (1, 2, OpType::Ok),
                (4, 4, OpType::Info)
            ]
        );
    }
}
