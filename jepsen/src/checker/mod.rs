//! Checkers: each reads a history (and, for watches, the recorded streams)
//! and gives a verdict with every anomaly explained.

pub mod elle;
pub mod lease;
pub mod linear;
pub mod set_full;
pub mod watch;

use serde::{Deserialize, Serialize};

/// A checker's answer. `Unknown` is never a pass: it means the checker ran
/// out of time or lacked the information to decide.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Valid,
    Invalid,
    Unknown,
}

impl Verdict {
    /// The exit code of `ballast-jepsen test` and `check`.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Valid => 0,
            Verdict::Invalid => 1,
            Verdict::Unknown => 2,
        }
    }

    /// The verdict of several checkers together: any invalid makes the whole
    /// invalid, else any unknown makes it unknown.
    pub fn and(self, other: Verdict) -> Verdict {
        match (self, other) {
            (Verdict::Invalid, _) | (_, Verdict::Invalid) => Verdict::Invalid,
            (Verdict::Unknown, _) | (_, Verdict::Unknown) => Verdict::Unknown,
            _ => Verdict::Valid,
        }
    }
}

/// One anomaly, explained for a reader of the report.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Anomaly {
    /// The anomaly's class: "nonlinearizable", "G1c", "G-single-realtime",
    /// "lost", "stale", "watch-ordered", ...
    pub kind: String,
    /// Sentences a person can follow: the cycle step by step, or the read
    /// and the write it missed.
    pub explanation: String,
    /// The history indexes of the operations involved (their completions).
    #[serde(default)]
    pub ops: Vec<u64>,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct CheckResult {
    pub checker: String,
    pub verdict: Verdict,
    #[serde(default)]
    pub anomalies: Vec<Anomaly>,
    /// Counts and figures particular to the checker (ops checked, keys, ...).
    #[serde(default)]
    pub stats: serde_json::Map<String, serde_json::Value>,
    pub elapsed_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::Verdict::*;

    #[test]
    fn invalid_outranks_unknown_which_outranks_valid() {
        assert_eq!(Valid.and(Valid), Valid);
        assert_eq!(Valid.and(Unknown), Unknown);
        assert_eq!(Unknown.and(Invalid), Invalid);
        assert_eq!(Invalid.and(Valid), Invalid);
    }
}
