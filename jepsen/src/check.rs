//! Checks a run directory: the workload's checker on the history, the
//! members' end state, and their logs. `test` calls it after a run and
//! `check DIR` calls it again later, with the same answer.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::checker::{Anomaly, CheckResult, Verdict, linear, set_full};
use crate::history::{self, Op, OpType};
use crate::results::{self, MemberState, OpCounts, RunConfig, RunResults};
use crate::runner::MEMBERS_FILE;

pub fn check_dir(dir: &Path) -> anyhow::Result<RunResults> {
    let config: RunConfig = results::read_json(&dir.join(results::CONFIG_FILE))?;
    let history = history::read_jsonl(&dir.join(results::HISTORY_FILE))?;
    let (members, exited): (Vec<MemberState>, Vec<String>) =
        results::read_json(&dir.join(MEMBERS_FILE))?;
    let mut checkers = vec![workload_check(&config, &history)];
    checkers.push(convergence(&members));
    let logs: Vec<_> = (1..=config.nodes)
        .map(|n| dir.join(format!("n{n}.log")))
        .collect();
    let mut crash_log_lines = crate::db::crash_lines(&logs);
    crash_log_lines.extend(exited);
    checkers.push(crashes(&crash_log_lines));
    let verdict = checkers
        .iter()
        .fold(Verdict::Valid, |v, c| v.and(c.verdict));
    let results = RunResults {
        verdict,
        checkers,
        op_counts: op_counts(&history),
        members,
        crash_log_lines,
    };
    results::write_json(&dir.join(results::RESULTS_FILE), &results)?;
    Ok(results)
}

/// How long a checker may search before it answers unknown.
const CHECK_TIME_LIMIT: Duration = Duration::from_secs(300);

fn workload_check(config: &RunConfig, history: &[Op]) -> CheckResult {
    match config.workload.as_str() {
        "register" => linear::check_register(history, CHECK_TIME_LIMIT),
        "set" => set_full::check_set_full(history),
        other => CheckResult {
            checker: other.to_string(),
            verdict: Verdict::Unknown,
            anomalies: vec![Anomaly {
                kind: "no-checker".into(),
                explanation: format!("no checker for the workload {other}"),
                ops: Vec::new(),
            }],
            stats: Default::default(),
            elapsed_ms: 0,
        },
    }
}

/// After healing, every member must hold the same data at the same
/// revision.
fn convergence(members: &[MemberState]) -> CheckResult {
    let mut anomalies = Vec::new();
    for member in members {
        if let Some(error) = &member.error {
            anomalies.push(Anomaly {
                kind: "member-unavailable".into(),
                explanation: format!("{} did not answer after healing: {error}", member.name),
                ops: Vec::new(),
            });
        }
    }
    let answered: Vec<&MemberState> = members.iter().filter(|m| m.error.is_none()).collect();
    if let Some(first) = answered.first() {
        for other in &answered[1..] {
            if other.hash != first.hash || other.compact_revision != first.compact_revision {
                anomalies.push(Anomaly {
                    kind: "divergence".into(),
                    explanation: format!(
                        "{} and {} differ at the common revision: hash {:?} vs {:?}, compact revision {} vs {}",
                        first.name, other.name, first.hash, other.hash,
                        first.compact_revision, other.compact_revision
                    ),
                    ops: Vec::new(),
                });
            }
        }
    }
    let verdict = if anomalies.iter().any(|a| a.kind == "divergence") {
        Verdict::Invalid
    } else if anomalies.is_empty() {
        Verdict::Valid
    } else {
        Verdict::Unknown
    };
    let mut stats = serde_json::Map::new();
    stats.insert("members".into(), json!(members.len()));
    CheckResult {
        checker: "convergence".into(),
        verdict,
        anomalies,
        stats,
        elapsed_ms: 0,
    }
}

fn crashes(lines: &[String]) -> CheckResult {
    CheckResult {
        checker: "crash".into(),
        verdict: if lines.is_empty() {
            Verdict::Valid
        } else {
            Verdict::Invalid
        },
        anomalies: lines
            .iter()
            .map(|line| Anomaly {
                kind: "crash".into(),
                explanation: line.clone(),
                ops: Vec::new(),
            })
            .collect(),
        stats: Default::default(),
        elapsed_ms: 0,
    }
}

fn op_counts(history: &[Op]) -> OpCounts {
    let mut counts = OpCounts::default();
    for op in history.iter().filter(|op| op.is_client()) {
        match op.kind {
            OpType::Ok => counts.ok += 1,
            OpType::Fail => counts.fail += 1,
            OpType::Info => counts.info += 1,
            OpType::Invoke => {}
        }
    }
    counts
}
