//! The lease workload's checker: keys of kept-alive leases never vanish,
//! keys of revoked and of expired leases do.
//!
//! History shapes (see `crate::workload::lease`): `grant` is invoked with
//! `{"key","mode","ttl"}` (mode "keep", "expire" or "revoke") and completes
//! `ok` with `"lease"`, the granted `"ttl"` and the `"term"`; `revoke` with
//! `{"lease","key"}`; `read` completes `ok` with `{"keys","revision","term"}`.
//! The keep-alives of "keep" leases are in `leases.json`, one [`KeptLease`]
//! each, timed on the history's clock.
//!
//! A kept lease is surely alive from its grant up to `until`: the grant was
//! sent at its invocation, so the lease lives at least its TTL from then,
//! and every keep-alive that answered a TTL keeps it at least that TTL
//! past its sending. A lease never comes back, so it was alive in between
//! too, gaps or not. A read invoked after the grant completed and completed
//! before `until` must list the key; a keep-alive that finds the lease gone
//! before `until` is an anomaly too.
//!
//! Expiry is checked against Raft terms, because a new leader restarts every
//! lease's TTL (plus an election timeout): a key of a lease nobody keeps
//! alive must be gone from a read invoked more than its TTL plus
//! [`EXPIRY_SLACK`] after both its grant completed and the read's term was
//! first seen (in any answer: reads, grants, revokes, keep-alives), and
//! after the last restart of a member before the read: a restarted leader
//! may lead again in its old term (openraft takes up a committed vote of
//! its own again), with its leases' TTLs restarted. The nemesis records
//! every start of a member as a [`MEMBERS_STARTED`] op.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, json};

use super::{Anomaly, CheckResult, Verdict};
use crate::history::{MEMBERS_STARTED, Op, OpType, pairs};

/// One kept-alive lease and every keep-alive the harness sent for it.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct KeptLease {
    pub lease: i64,
    pub key: String,
    /// The TTL granted, in seconds.
    pub ttl: i64,
    pub keepalives: Vec<KeepAlive>,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct KeepAlive {
    /// Nanoseconds on the history's clock when it was sent.
    pub sent: u64,
    /// ... and when its answer (or the error, or the timeout) came.
    pub received: u64,
    /// The TTL answered: 0 means the lease is gone; -1 when unanswered.
    pub ttl: i64,
    /// The answering member's Raft term; 0 when unanswered.
    pub term: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Beyond the TTL, how long a lease nobody keeps alive may outlive the later
/// of its grant and the first sight of the current term: 1 s that a new
/// leader adds to every lease (the election timeout), up to 2 s for the
/// term's election to end after it was first seen (a randomized election
/// timeout), and 4 s for the leader's expiry tick, the leadership check
/// before revoking, and the revoke's commit and apply on a loaded machine.
pub const EXPIRY_SLACK: Duration = Duration::from_secs(7);

struct Grant<'a> {
    invoke: &'a Op,
    complete: &'a Op,
    outcome: OpType,
    mode: &'a str,
    ttl_s: i64,
}

impl Grant<'_> {
    fn describe(&self, key: &str) -> String {
        format!(
            "lease {} (key {key}, mode {}, TTL {} s) of grant op {}",
            self.complete.value["lease"], self.mode, self.ttl_s, self.complete.index
        )
    }
}

struct Read<'a> {
    invoke: &'a Op,
    complete: &'a Op,
    keys: BTreeSet<&'a str>,
    term: u64,
}

/// A kept lease's window in which its key must be present.
struct Alive<'a> {
    kept: &'a KeptLease,
    granted: &'a Op,
    until: u64,
}

pub fn check_leases(history: &[Op], kept: &[KeptLease]) -> CheckResult {
    let started = Instant::now();
    let mut grants: BTreeMap<&str, Grant> = BTreeMap::new();
    let mut revoked: HashMap<&str, &Op> = HashMap::new();
    let mut reads = Vec::new();
    let mut term_seen: HashMap<u64, u64> = HashMap::new();
    let mut see_term = |term: Option<u64>, time: u64| {
        if let Some(term) = term.filter(|t| *t > 0) {
            let first = term_seen.entry(term).or_insert(time);
            *first = (*first).min(time);
        }
    };
    for pair in pairs(history) {
        let (invoke, complete, outcome) = (pair.invoke, pair.complete, pair.outcome());
        if outcome == OpType::Ok {
            see_term(complete.value["term"].as_u64(), complete.time);
        }
        match (invoke.f.as_str(), outcome) {
            ("grant", _) => {
                let Some(key) = invoke.value["key"].as_str() else {
                    continue;
                };
                let ttl_s = complete.value["ttl"]
                    .as_i64()
                    .or(invoke.value["ttl"].as_i64())
                    .unwrap_or(0);
                let mode = invoke.value["mode"].as_str().unwrap_or_default();
                let grant = Grant {
                    invoke,
                    complete,
                    outcome,
                    mode,
                    ttl_s,
                };
                grants.insert(key, grant);
            }
            ("revoke", OpType::Ok) => {
                if let Some(key) = invoke.value["key"].as_str() {
                    let first = revoked.entry(key).or_insert(complete);
                    if complete.time < first.time {
                        *first = complete;
                    }
                }
            }
            ("read", OpType::Ok) => reads.push(Read {
                invoke,
                complete,
                keys: complete.value["keys"]
                    .as_array()
                    .map(|keys| keys.iter().filter_map(|k| k.as_str()).collect())
                    .unwrap_or_default(),
                term: complete.value["term"].as_u64().unwrap_or(0),
            }),
            _ => {}
        }
    }
    let mut restarts: Vec<u64> = history
        .iter()
        .filter(|op| !op.is_client() && op.kind == OpType::Info && op.f == MEMBERS_STARTED)
        .map(|op| op.time)
        .collect();
    restarts.sort_unstable();
    for keepalive in kept.iter().flat_map(|k| &k.keepalives) {
        if keepalive.error.is_none() {
            see_term(Some(keepalive.term), keepalive.received);
        }
    }
    // An indeterminate grant is known to have happened once a read saw it.
    let mut first_read_of: HashMap<&str, u64> = HashMap::new();
    for read in &reads {
        for key in &read.keys {
            let first = first_read_of.entry(key).or_insert(read.complete.time);
            *first = (*first).min(read.complete.time);
        }
    }

    let mut findings = Findings::default();
    let mut alive = Vec::new();
    for lease in kept {
        match grants.get(lease.key.as_str()) {
            Some(grant) if grant.outcome == OpType::Ok => {
                alive.push(alive_window(
                    lease,
                    grant.invoke,
                    grant.complete,
                    &mut findings,
                ));
            }
            _ => findings.report(
                "kept-lease-without-grant",
                &lease.key,
                format!(
                    "lease {} (key {}) has keep-alives but no ok grant in the history",
                    lease.lease, lease.key
                ),
                Vec::new(),
            ),
        }
    }
    let kept_keys: HashSet<&str> = kept.iter().map(|k| k.key.as_str()).collect();
    // Leases nobody keeps alive, with the time each surely existed by.
    let expiring: Vec<(&str, &Grant, u64)> = grants
        .iter()
        .filter(|(key, grant)| grant.outcome != OpType::Fail && !kept_keys.contains(*key))
        .filter_map(|(key, grant)| {
            let granted = match grant.outcome {
                OpType::Ok => Some(grant.complete.time),
                _ => first_read_of.get(key).copied(),
            };
            granted.map(|granted| (*key, grant, granted))
        })
        .collect();
    let slack = EXPIRY_SLACK.as_nanos() as u64;
    let mut kept_checks = 0u64;
    let mut expiry_checks = 0u64;
    for read in &reads {
        let (invoked, index) = (read.invoke.time, read.complete.index);
        for key in &read.keys {
            let Some(grant) = grants.get(key) else {
                findings.report(
                    "unknown-key-present",
                    key,
                    format!("read op {index} lists {key}, which no grant wrote"),
                    vec![index],
                );
                continue;
            };
            if grant.outcome == OpType::Fail {
                findings.report(
                    "failed-grant-key-present",
                    key,
                    format!(
                        "{}, which failed, yet read op {index} lists the key",
                        grant.describe(key)
                    ),
                    vec![grant.complete.index, index],
                );
            } else if let Some(revoke) = revoked.get(key).filter(|r| r.time < invoked) {
                findings.report(
                    "revoked-key-present",
                    key,
                    format!(
                        "{} was revoked by op {} (completed at {}), yet read op {index}, invoked later at {}, lists the key",
                        grant.describe(key), revoke.index, secs(revoke.time), secs(invoked)
                    ),
                    vec![revoke.index, index],
                );
            }
        }
        let Some(&term_from) = term_seen.get(&read.term) else {
            continue;
        };
        let restarted = restarts[..restarts.partition_point(|t| *t < invoked)]
            .last()
            .copied()
            .unwrap_or(0);
        for &(key, grant, granted) in &expiring {
            let from = granted.max(term_from).max(restarted);
            let deadline = from
                .saturating_add(nanos(grant.ttl_s))
                .saturating_add(slack);
            if invoked <= deadline || revoked.get(key).is_some_and(|r| r.time < invoked) {
                continue;
            }
            expiry_checks += 1;
            if read.keys.contains(key) {
                findings.report(
                    "expired-key-present",
                    key,
                    format!(
                        "{}, granted by {} and never kept alive, is still listed by read op {index} invoked at {} in term {}, first seen at {}, with the last member restart before it at {}: later than TTL + {} s after all three",
                        grant.describe(key), secs(granted), secs(invoked), read.term, secs(term_from), secs(restarted), EXPIRY_SLACK.as_secs()
                    ),
                    vec![grant.complete.index, index],
                );
            }
        }
        for window in &alive {
            if invoked < window.granted.time || read.complete.time > window.until {
                continue;
            }
            kept_checks += 1;
            if !read.keys.contains(window.kept.key.as_str()) {
                findings.report(
                    "kept-alive-key-vanished",
                    &window.kept.key,
                    format!(
                        "lease {} (key {}) of grant op {} (completed at {}) was kept alive until at least {}, yet read op {index} ({} to {}, term {}) does not list the key",
                        window.kept.lease, window.kept.key, window.granted.index, secs(window.granted.time),
                        secs(window.until), secs(invoked), secs(read.complete.time), read.term
                    ),
                    vec![window.granted.index, index],
                );
            }
        }
    }

    let count = |mode: &str, outcome: OpType| {
        grants
            .values()
            .filter(|g| g.mode == mode && g.outcome == outcome)
            .count()
    };
    let mut stats = Map::new();
    for mode in ["keep", "expire", "revoke"] {
        stats.insert(
            format!("grants_{mode}"),
            json!({"ok": count(mode, OpType::Ok), "info": count(mode, OpType::Info), "fail": count(mode, OpType::Fail)}),
        );
    }
    let keepalives = kept.iter().flat_map(|k| &k.keepalives);
    stats.insert("reads_ok".into(), json!(reads.len()));
    stats.insert("revokes_ok".into(), json!(revoked.len()));
    stats.insert("kept_leases".into(), json!(kept.len()));
    stats.insert(
        "keepalives_answered".into(),
        json!(keepalives.clone().filter(|k| k.error.is_none()).count()),
    );
    stats.insert(
        "keepalives_failed".into(),
        json!(keepalives.filter(|k| k.error.is_some()).count()),
    );
    stats.insert("kept_alive_checks".into(), json!(kept_checks));
    // Pairs of a read and a lease whose key it had to miss, expired.
    stats.insert("expiry_checks".into(), json!(expiry_checks));
    stats.insert("anomalies_by_kind".into(), json!(findings.counts));
    let verdict = if findings.anomalies.is_empty() {
        Verdict::Valid
    } else {
        Verdict::Invalid
    };
    CheckResult {
        checker: "lease".into(),
        verdict,
        anomalies: findings.anomalies,
        stats,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

/// Until when `lease` was surely alive; a keep-alive that said it was gone
/// before then is an anomaly of its own.
fn alive_window<'a>(
    lease: &'a KeptLease,
    invoke: &Op,
    granted: &'a Op,
    findings: &mut Findings,
) -> Alive<'a> {
    let answered = lease.keepalives.iter().filter(|k| k.error.is_none());
    let until = answered
        .clone()
        .filter(|k| k.ttl > 0)
        .map(|k| k.sent.saturating_add(nanos(k.ttl)))
        .fold(invoke.time.saturating_add(nanos(lease.ttl)), u64::max);
    if let Some(gone) = answered.clone().find(|k| k.ttl <= 0 && k.received <= until) {
        findings.report(
            "kept-alive-lease-gone",
            &lease.key,
            format!(
                "lease {} (key {}) was kept alive until at least {}, yet a keep-alive answered at {} (term {}) says it is gone",
                lease.lease, lease.key, secs(until), secs(gone.received), gone.term
            ),
            vec![granted.index],
        );
    }
    Alive {
        kept: lease,
        granted,
        until,
    }
}

/// Anomalies, one per kind and key (its first); `counts` has them all.
#[derive(Default)]
struct Findings {
    anomalies: Vec<Anomaly>,
    reported: HashSet<(&'static str, String)>,
    counts: BTreeMap<&'static str, u64>,
}

impl Findings {
    fn report(&mut self, kind: &'static str, key: &str, explanation: String, ops: Vec<u64>) {
        *self.counts.entry(kind).or_default() += 1;
        if self.reported.insert((kind, key.to_string())) {
            self.anomalies.push(Anomaly {
                kind: kind.into(),
                explanation,
                ops,
            });
        }
    }
}

fn nanos(seconds: i64) -> u64 {
    seconds.max(0) as u64 * 1_000_000_000
}

fn secs(nanos: u64) -> String {
    format!("{:.3} s", nanos as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Process;
    use serde_json::{Value, json};

    /// A history built op by op, times in milliseconds.
    #[derive(Default)]
    struct History(Vec<Op>);

    impl History {
        fn op(&mut self, ms: u64, kind: OpType, process: u64, f: &str, value: Value) -> u64 {
            let index = self.0.len() as u64;
            self.0.push(Op {
                index,
                time: ms * 1_000_000,
                kind,
                process: Process::Client(process),
                f: f.into(),
                value,
                error: None,
                node: None,
            });
            index
        }

        /// A grant of `key` invoked at `from` and completed at `to`.
        fn grant(&mut self, from: u64, to: u64, kind: OpType, key: &str, mode: &str, lease: i64) {
            let asked = json!({"key": key, "mode": mode, "ttl": 3});
            self.op(from, OpType::Invoke, 1, "grant", asked.clone());
            let mut done = asked;
            if kind == OpType::Ok {
                done = json!({"key": key, "mode": mode, "ttl": 3, "lease": lease, "term": 2});
            }
            self.op(to, kind, 1, "grant", done);
        }

        fn revoke(&mut self, from: u64, to: u64, key: &str, lease: i64) {
            let value = json!({"lease": lease, "key": key});
            self.op(from, OpType::Invoke, 2, "revoke", value.clone());
            self.op(to, OpType::Ok, 2, "revoke", value);
        }

        /// A read invoked at `from`, completed at `to` in `term`; returns
        /// its completion's index.
        fn read(&mut self, from: u64, to: u64, term: u64, keys: &[&str]) -> u64 {
            self.op(from, OpType::Invoke, 3, "read", Value::Null);
            let value = json!({"keys": keys, "revision": 9, "term": term});
            self.op(to, OpType::Ok, 3, "read", value)
        }
    }

    /// Keep-alives of lease 7 (key "k") sent at each of `sent_ms`, answered
    /// 10 ms later with `ttl`.
    fn kept(sent_ms: &[u64], ttl: i64) -> Vec<KeptLease> {
        vec![KeptLease {
            lease: 7,
            key: "k".into(),
            ttl: 3,
            keepalives: sent_ms
                .iter()
                .map(|ms| KeepAlive {
                    sent: ms * 1_000_000,
                    received: ms * 1_000_000 + 10_000_000,
                    ttl,
                    term: 2,
                    error: None,
                })
                .collect(),
        }]
    }

    fn every_500_ms(from: u64, to: u64) -> Vec<u64> {
        (from..to).step_by(500).collect()
    }

    fn kinds(result: &CheckResult) -> Vec<&str> {
        result.anomalies.iter().map(|a| a.kind.as_str()).collect()
    }

    #[test]
    fn a_valid_history_passes_and_is_checked() {
        let mut h = History::default();
        h.grant(0, 100, OpType::Ok, "k", "keep", 7);
        h.grant(200, 300, OpType::Ok, "e", "expire", 8);
        h.grant(400, 500, OpType::Ok, "r", "revoke", 9);
        h.read(600, 700, 2, &["k", "e", "r"]);
        h.revoke(800, 900, "r", 9);
        h.read(1_000, 1_100, 2, &["k", "e"]);
        h.read(20_000, 20_100, 2, &["k"]);
        let result = check_leases(&h.0, &kept(&every_500_ms(200, 21_000), 3));
        assert_eq!(result.verdict, Verdict::Valid, "{:?}", result.anomalies);
        assert_eq!(result.stats["kept_alive_checks"], json!(3));
        assert_eq!(result.stats["expiry_checks"], json!(1));
    }

    #[test]
    fn a_kept_alive_key_that_vanishes_is_reported() {
        let mut h = History::default();
        h.grant(0, 100, OpType::Ok, "k", "keep", 7);
        h.read(5_000, 5_100, 2, &["k"]);
        let missed = h.read(9_000, 9_100, 3, &[]);
        let result = check_leases(&h.0, &kept(&every_500_ms(200, 12_000), 3));
        assert_eq!(result.verdict, Verdict::Invalid);
        assert_eq!(kinds(&result), ["kept-alive-key-vanished"]);
        assert_eq!(result.anomalies[0].ops, vec![1, missed]);
        assert!(result.anomalies[0].explanation.contains("lease 7 (key k)"));
    }

    #[test]
    fn a_key_may_vanish_once_keepalives_stop_but_not_before_a_later_one_finds_its_lease() {
        let mut h = History::default();
        h.grant(0, 100, OpType::Ok, "k", "keep", 7);
        h.read(9_000, 9_100, 3, &[]);
        let stopped = check_leases(&h.0, &kept(&every_500_ms(200, 2_000), 3));
        assert_eq!(stopped.verdict, Verdict::Valid, "{:?}", stopped.anomalies);
        assert_eq!(stopped.stats["kept_alive_checks"], json!(0));

        let mut sent = every_500_ms(200, 2_000);
        sent.extend(every_500_ms(10_000, 12_000));
        let resumed = check_leases(&h.0, &kept(&sent, 3));
        assert_eq!(kinds(&resumed), ["kept-alive-key-vanished"]);
    }

    #[test]
    fn a_keepalive_saying_a_kept_lease_is_gone_is_reported() {
        let mut h = History::default();
        h.grant(0, 100, OpType::Ok, "k", "keep", 7);
        let mut log = kept(&every_500_ms(200, 2_000), 3);
        log[0].keepalives.push(KeepAlive {
            sent: 2_000 * 1_000_000,
            received: 2_010 * 1_000_000,
            ttl: 0,
            term: 3,
            error: None,
        });
        let result = check_leases(&h.0, &log);
        assert_eq!(kinds(&result), ["kept-alive-lease-gone"]);
    }

    #[test]
    fn a_revoked_key_must_be_gone_from_later_reads_only() {
        let mut h = History::default();
        h.grant(0, 100, OpType::Ok, "r", "revoke", 9);
        h.revoke(200, 300, "r", 9);
        h.read(250, 400, 2, &["r"]);
        let late = h.read(500, 600, 2, &["r"]);
        let result = check_leases(&h.0, &[]);
        assert_eq!(kinds(&result), ["revoked-key-present"]);
        assert_eq!(result.anomalies[0].ops, vec![3, late]);
    }

    #[test]
    fn an_expired_key_must_be_gone_unless_the_term_is_new() {
        let mut h = History::default();
        h.grant(0, 100, OpType::Ok, "e", "expire", 8);
        // Term 4 began at 10 s: its leader restarted the lease's TTL.
        h.read(10_000, 10_100, 4, &[]);
        h.read(15_000, 15_100, 4, &["e"]);
        let stale = h.read(15_000, 15_100, 2, &["e"]);
        let result = check_leases(&h.0, &[]);
        assert_eq!(kinds(&result), ["expired-key-present"]);
        assert_eq!(result.anomalies[0].ops, vec![1, stale]);
        assert!(
            result.anomalies[0]
                .explanation
                .contains("read op 7 invoked at 15.000 s in term 2")
        );
    }

    #[test]
    fn a_member_restart_restarts_expiry_even_in_the_same_term() {
        let mut h = History::default();
        h.grant(0, 100, OpType::Ok, "e", "expire", 8);
        h.0.push(Op {
            index: 2,
            time: 9_000_000_000,
            kind: OpType::Info,
            process: Process::Nemesis,
            f: MEMBERS_STARTED.into(),
            value: json!("n1,n2,n3"),
            error: None,
            node: None,
        });
        h.read(15_000, 15_100, 2, &["e"]);
        let restarted = check_leases(&h.0, &[]);
        assert_eq!(
            restarted.verdict,
            Verdict::Valid,
            "{:?}",
            restarted.anomalies
        );
        h.read(20_000, 20_100, 2, &["e"]);
        let later = check_leases(&h.0, &[]);
        assert_eq!(kinds(&later), ["expired-key-present"]);
        assert!(
            later.anomalies[0]
                .explanation
                .contains("restart before it at 9.000 s")
        );
    }

    #[test]
    fn indeterminate_grants_count_once_seen_and_failed_ones_never_appear() {
        let mut h = History::default();
        h.grant(0, 100, OpType::Info, "i", "keep", 0);
        h.grant(0, 100, OpType::Info, "j", "expire", 0);
        h.grant(0, 100, OpType::Fail, "f", "expire", 0);
        h.read(200, 300, 2, &["i"]);
        h.read(12_000, 12_100, 2, &["i"]);
        h.read(13_000, 13_100, 2, &["i", "f", "x"]);
        let result = check_leases(&h.0, &[]);
        assert_eq!(
            kinds(&result),
            [
                "expired-key-present",
                "failed-grant-key-present",
                "unknown-key-present"
            ]
        );
        assert_eq!(result.anomalies[0].ops, vec![1, 9]);
        assert_eq!(
            result.stats["anomalies_by_kind"]["expired-key-present"],
            json!(2)
        );
    }
}
