//! What a run leaves in its directory besides the history: `config.json`
//! (how to rerun it) and `results.json` (what the checkers found).

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::checker::{CheckResult, Verdict};

pub const HISTORY_FILE: &str = "history.jsonl";
pub const CONFIG_FILE: &str = "config.json";
pub const RESULTS_FILE: &str = "results.json";
pub const WATCHES_FILE: &str = "watches.json";
pub const REPORT_FILE: &str = "index.html";

#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct RunConfig {
    /// "ballast" or "etcd".
    pub target: String,
    /// The server's own version string, as its Status RPC reports it.
    pub target_version: String,
    pub workload: String,
    pub nemeses: Vec<String>,
    pub seed: u64,
    /// Seconds of client load with faults, before healing.
    pub time_limit_s: u64,
    pub nodes: usize,
    /// Client operations per second, over all workers.
    pub rate: f64,
    pub concurrency: usize,
    /// Seconds between nemesis actions.
    pub nemesis_interval_s: f64,
    /// Wall-clock start of the run, seconds since the Unix epoch.
    pub started_at_unix_s: u64,
    /// The command line that reproduces the run.
    pub command: String,
}

/// A member's state at the end of a run, after healing and final reads.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct MemberState {
    pub name: String,
    pub revision: i64,
    pub compact_revision: i64,
    /// HashKV at the revision all members were compared at; None if the
    /// member did not answer.
    pub hash: Option<u32>,
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Debug, Default)]
pub struct OpCounts {
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct RunResults {
    pub verdict: Verdict,
    pub checkers: Vec<CheckResult>,
    pub op_counts: OpCounts,
    pub members: Vec<MemberState>,
    /// Lines of the members' logs that show a crash (panic, fatal).
    pub crash_log_lines: Vec<String>,
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}
