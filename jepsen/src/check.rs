//! Checks a run directory: the workload's checker on the history, the
//! members' end state, and their logs. `test` calls it after a run and
//! `check DIR` calls it again later, with the same answer.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use std::collections::HashSet;

use crate::checker::{Anomaly, CheckResult, Verdict, elle, lease, linear, set_full, watch};
use crate::history::{self, Op, OpType};
use crate::results::{self, MemberState, OpCounts, RunConfig, RunResults};
use crate::runner::{LEASES_FILE, MEMBERS_FILE, WatchRecord};

pub fn check_dir(dir: &Path) -> anyhow::Result<RunResults> {
    let config: RunConfig = results::read_json(&dir.join(results::CONFIG_FILE))?;
    let history = history::read_jsonl(&dir.join(results::HISTORY_FILE))?;
    let (members, exited): (Vec<MemberState>, Vec<String>) =
        results::read_json(&dir.join(MEMBERS_FILE))?;
    let mut checkers = match config.workload.as_str() {
        "watch" => {
            let record: WatchRecord = results::read_json(&dir.join(results::WATCHES_FILE))?;
            let compacted = members
                .iter()
                .map(|m| m.compact_revision)
                .max()
                .unwrap_or(0);
            watch_checks(&history, &record, compacted.max(0))
        }
        "lease" => {
            let kept: Vec<lease::KeptLease> = results::read_json(&dir.join(LEASES_FILE))?;
            vec![lease::check_leases(&history, &kept)]
        }
        _ => vec![workload_check(&config.workload, &history)],
    };
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

const LOCK_SET_NOTE: &str = "lock-set guards an in-memory set with etcd's Lock: a lease that \
    expires while its holder is cut off or paused lets a second holder in, so this workload is \
    expected to fail on any etcd-compatible store; the fenced variant (lock-fenced-set) is \
    expected to pass.";

/// How long a checker may search before it answers unknown.
const CHECK_TIME_LIMIT: Duration = Duration::from_secs(300);

fn workload_check(workload: &str, history: &[Op]) -> CheckResult {
    match workload {
        "register" => linear::check_register(history, CHECK_TIME_LIMIT),
        "set" | "lock-fenced-set" => set_full::check_set_full(history),
        "lock-set" => {
            let mut result = set_full::check_set_full(history);
            result.stats.insert("note".into(), json!(LOCK_SET_NOTE));
            result
        }
        "append" => elle::check_list_append(history, CHECK_TIME_LIMIT),
        "wr" => elle::check_rw_register(history, CHECK_TIME_LIMIT),
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

/// The recorders must agree with each other and with every member's
/// history read after healing; every watch must follow etcd's rules
/// against that replay.
fn watch_checks(history: &[Op], record: &WatchRecord, compacted: i64) -> Vec<CheckResult> {
    let written: HashSet<String> = history
        .iter()
        .filter(|op| op.is_client() && op.is_invoke() && op.f == "put")
        .filter_map(|op| op.value["value"].as_str().map(str::to_string))
        .collect();
    let started = std::time::Instant::now();
    let mut replay_check = CheckResult {
        checker: "watch-replay".into(),
        verdict: Verdict::Valid,
        anomalies: Vec::new(),
        stats: Default::default(),
        elapsed_ms: 0,
    };
    let replay = match watch::merge_replays(&record.replays) {
        Ok(replay) => replay,
        Err(anomaly) => {
            replay_check.verdict = Verdict::Invalid;
            replay_check.anomalies.push(anomaly);
            Vec::new()
        }
    };
    // Every acknowledged put must be in the replay at its revision.
    let committed: HashSet<(i64, &str)> = replay
        .iter()
        .map(|e| (e.mod_revision, e.value.as_str()))
        .collect();
    for op in history
        .iter()
        .filter(|op| op.is_client() && op.kind == OpType::Ok && op.f == "put")
    {
        let revision = op.value["revision"].as_i64().unwrap_or(0);
        let value = op.value["value"].as_str().unwrap_or_default();
        if revision > compacted && !committed.contains(&(revision, value)) {
            replay_check.verdict = Verdict::Invalid;
            replay_check.anomalies.push(Anomaly {
                kind: "lost-write".into(),
                explanation: format!(
                    "op {} put {value:?} acknowledged at revision {revision}, but no member's history has it there",
                    op.index
                ),
                ops: vec![op.index],
            });
        }
    }
    replay_check
        .stats
        .insert("replay_events".into(), json!(replay.len()));
    replay_check.elapsed_ms = started.elapsed().as_millis() as u64;
    let watches = watch::check_watches(&record.watches, &replay, &written, compacted);
    vec![watches, replay_check]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Process;

    fn op(index: u64, kind: OpType, f: &str, value: serde_json::Value) -> Op {
        Op {
            index,
            time: index * 1_000_000,
            kind,
            process: Process::Client(0),
            f: f.into(),
            value,
            error: None,
            node: None,
        }
    }

    #[test]
    fn lock_workloads_use_set_full_and_only_the_plain_one_carries_the_note() {
        let lost = [
            op(0, OpType::Invoke, "add", json!(7)),
            op(1, OpType::Ok, "add", json!(7)),
            op(2, OpType::Invoke, "read", json!(null)),
            op(3, OpType::Ok, "read", json!([])),
        ];
        let plain = workload_check("lock-set", &lost);
        assert_eq!(plain.verdict, Verdict::Invalid);
        assert_eq!(plain.stats["note"], json!(LOCK_SET_NOTE));
        let fenced = workload_check("lock-fenced-set", &lost);
        assert_eq!(fenced.verdict, Verdict::Invalid);
        assert!(!fenced.stats.contains_key("note"));
    }
}
