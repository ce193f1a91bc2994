//! The real etcdctl 3.4 `lease`, `lock` and `elect` commands against Ballast
//! and (for `lease` and `elect`) against a real etcd 3.4.
//!
//! * `etcdctl_lease_session_matches_etcd`: one session of `lease ...` and
//!   `put`/`get` commands on both servers, compared on stdout, stderr (minus
//!   clientv3's `{"level":"warn",...}` log lines) and exit code. Lease ids
//!   differ between servers, so each distinct id is renamed `lease0`,
//!   `lease1`, ... in order of appearance (hex in text, decimal in JSON);
//!   cluster/member ids and the raft term are masked in JSON. Revisions are
//!   not masked: the same commands must give the same revisions.
//! * `etcdctl_lock_gives_mutual_exclusion`: 20 concurrent `etcdctl lock`
//!   processes against Ballast; their critical sections must not overlap.
//! * `etcdctl_elect_and_observe`: an observer, a leader and a blocked
//!   candidate on both servers, compared after masking lease ids.
//!
//! Long-running etcdctl processes have their stdout read line by line; every
//! wait is bounded by [`WAIT`] (a hang guard, never a timing assertion).

mod common;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::process::Stdio;
use std::time::Duration;

use common::{Ballast, ETCDCTL_BIN, Etcd, ServerProcess};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Upper bound for any single wait (a hang guard only).
const WAIT: Duration = Duration::from_secs(30);
/// A lease id that never exists; printed the same by both servers, so it is
/// not masked.
const UNKNOWN_LEASE: &str = "1234abcd";
const UNKNOWN_LEASE_ID: i64 = 0x1234abcd;

// ---------------------------------------------------------------------------
// Running etcdctl
// ---------------------------------------------------------------------------

fn etcdctl_command(endpoint: &str, args: &[String]) -> tokio::process::Command {
    common::etcdctl_command(endpoint, args, Stdio::null())
}

/// What one etcdctl invocation printed.
#[derive(Debug, Clone, PartialEq)]
struct Run {
    cmd: String,
    /// `None` when the test killed the process.
    exit: Option<i32>,
    stdout: String,
    stderr: String,
    /// Expectations of the scenario that were not met (timeouts).
    note: String,
}

impl Run {
    fn show(&self) -> String {
        let mut s = format!("$ {}\n", self.cmd);
        match self.exit {
            Some(c) => {
                let _ = writeln!(s, "exit {c}");
            }
            None => s.push_str("(killed by the test)\n"),
        }
        if !self.note.is_empty() {
            let _ = writeln!(s, "!! {}", self.note);
        }
        let _ = write!(
            s,
            "--- stdout ---\n{}--- stderr ---\n{}",
            self.stdout, self.stderr
        );
        s
    }
}

/// Runs etcdctl to completion (bounded by [`WAIT`]).
async fn etcdctl(endpoint: &str, args: &[String]) -> Run {
    let cmd_text = format!("etcdctl {}", args.join(" "));
    let out = tokio::time::timeout(WAIT, etcdctl_command(endpoint, args).output())
        .await
        .unwrap_or_else(|_| panic!("`{cmd_text}` did not finish within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("spawn {ETCDCTL_BIN}: {e}"));
    Run {
        cmd: cmd_text,
        exit: Some(out.status.code().unwrap_or(-1)),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        note: String::new(),
    }
}

/// Sends `signal` (e.g. "INT", "TERM") to `pid`.
fn send_signal(pid: u32, signal: &str) {
    let st = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{signal} {pid} failed");
}

/// A long-running etcdctl whose stdout is read line by line.
struct Proc {
    cmd: String,
    child: tokio::process::Child,
    lines_rx: mpsc::UnboundedReceiver<String>,
    lines: Vec<String>,
    stderr: JoinHandle<String>,
    timeouts: Vec<String>,
}

impl Proc {
    fn spawn(endpoint: &str, args: &[String]) -> Proc {
        let mut child = etcdctl_command(endpoint, args)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {ETCDCTL_BIN}: {e}"));
        let (lines_rx, stderr) = common::read_output(&mut child);
        Proc {
            cmd: format!("etcdctl {}", args.join(" ")),
            child,
            lines_rx,
            lines: Vec::new(),
            stderr,
            timeouts: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("etcdctl still running")
    }

    /// Reads lines until `done(lines so far)` holds; records a timeout (and
    /// returns false) if it does not within [`WAIT`] or stdout ends first.
    async fn wait_for(&mut self, what: &str, done: impl Fn(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + WAIT;
        while !done(&self.lines) {
            match tokio::time::timeout_at(deadline, self.lines_rx.recv()).await {
                Ok(Some(line)) => self.lines.push(line),
                Ok(None) | Err(_) => {
                    self.timeouts.push(format!("timed out waiting for {what}"));
                    return false;
                }
            }
        }
        true
    }

    async fn wait_lines(&mut self, n: usize) -> bool {
        self.wait_for(&format!("{n} stdout lines"), |l| l.len() >= n)
            .await
    }

    /// Takes whatever stdout lines have arrived so far, without waiting.
    fn drain(&mut self) {
        while let Ok(line) = self.lines_rx.try_recv() {
            self.lines.push(line);
        }
    }

    /// Waits (bounded) for etcdctl to exit by itself.
    async fn exited(mut self) -> Run {
        let exit = match tokio::time::timeout(WAIT, self.child.wait()).await {
            Ok(status) => status.expect("wait for etcdctl").code().unwrap_or(-1),
            Err(_) => {
                self.timeouts
                    .push("timed out waiting for etcdctl to exit".into());
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                -1
            }
        };
        self.collect(Some(exit)).await
    }

    /// Kills etcdctl (SIGKILL) and returns what it printed.
    async fn kill(mut self) -> Run {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
        self.collect(None).await
    }

    async fn collect(mut self, exit: Option<i32>) -> Run {
        let deadline = Instant::now() + WAIT;
        while let Ok(Some(line)) = tokio::time::timeout_at(deadline, self.lines_rx.recv()).await {
            self.lines.push(line);
        }
        let stderr = tokio::time::timeout(WAIT, self.stderr)
            .await
            .map(|r| r.unwrap_or_default())
            .unwrap_or_else(|_| "<stderr did not close>".into());
        Run {
            cmd: self.cmd,
            exit,
            stdout: self.lines.iter().map(|l| format!("{l}\n")).collect(),
            stderr,
            note: self.timeouts.join("; "),
        }
    }
}

// ---------------------------------------------------------------------------
// Masking
// ---------------------------------------------------------------------------

/// Renames lease ids `lease0`, `lease1`, ... in order of first appearance
/// (one masker per server, fed the transcript in order).
#[derive(Default)]
struct Masker {
    ids: Vec<i64>,
}

impl Masker {
    /// The masked name of `id`, or `None` for ids that are the same on both
    /// servers (0 and the never-granted [`UNKNOWN_LEASE_ID`]).
    fn name(&mut self, id: i64) -> Option<String> {
        if id == 0 || id == UNKNOWN_LEASE_ID {
            return None;
        }
        let i = match self.ids.iter().position(|&x| x == id) {
            Some(i) => i,
            None => {
                self.ids.push(id);
                self.ids.len() - 1
            }
        };
        Some(format!("lease{i}"))
    }

    /// A word of a text line: a lease id if it is 16 lowercase hex digits
    /// (`%016x`), or at least 8 right after a `/` (the `%x` in lock and
    /// election keys such as `el/3ceea2095df40407`).
    fn mask_word(&mut self, word: &str, after_slash: bool) -> String {
        let hex = word
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let id_like = hex && (word.len() == 16 || (after_slash && (8..=16).contains(&word.len())));
        if id_like
            && let Ok(v) = u64::from_str_radix(word, 16)
            && let Some(name) = self.name(v as i64)
        {
            return name;
        }
        word.to_string()
    }

    fn mask_json(&mut self, v: &mut Value) {
        match v {
            Value::Object(map) => {
                // timetolive -w json of a 600 s lease: remaining 598..=600 is fine.
                if map.get("granted-ttl").and_then(Value::as_i64) == Some(600)
                    && map
                        .get("ttl")
                        .and_then(Value::as_i64)
                        .is_some_and(|t| (598..=600).contains(&t))
                {
                    map.insert("ttl".into(), Value::String("~599".into()));
                }
                for (k, val) in map.iter_mut() {
                    match k.as_str() {
                        "cluster_id" | "member_id" | "raft_term" => {
                            *val = Value::String("<ID>".into())
                        }
                        "ID" | "id" | "lease" => {
                            if let Some(name) = val.as_i64().and_then(|id| self.name(id)) {
                                *val = Value::String(name);
                            }
                        }
                        // Attached keys come in Go map order; leases in
                        // remaining-TTL order: compare as sets.
                        "keys" | "leases" => {
                            self.mask_json(val);
                            if let Value::Array(xs) = val {
                                xs.sort_by_key(|x| x.to_string());
                            }
                        }
                        _ => self.mask_json(val),
                    }
                }
            }
            Value::Array(xs) => xs.iter_mut().for_each(|x| self.mask_json(x)),
            _ => {}
        }
    }

    fn mask_line(&mut self, line: &str) -> String {
        let t = line.trim_start();
        if t.starts_with('{')
            && let Ok(mut v) = serde_json::from_str::<Value>(t)
        {
            self.mask_json(&mut v);
            return serde_json::to_string(&v).expect("serialize json");
        }
        let mut out = String::with_capacity(line.len());
        let mut word = String::new();
        let mut before_word: Option<char> = None;
        let mut prev: Option<char> = None;
        for c in line.chars() {
            if c.is_ascii_alphanumeric() {
                if word.is_empty() {
                    before_word = prev;
                }
                word.push(c);
            } else {
                if !word.is_empty() {
                    out.push_str(&self.mask_word(&word, before_word == Some('/')));
                    word.clear();
                }
                out.push(c);
            }
            prev = Some(c);
        }
        if !word.is_empty() {
            out.push_str(&self.mask_word(&word, before_word == Some('/')));
        }
        sort_attached_keys(&normalise_remaining(&out))
    }

    /// Masks a whole output; with `sorted`, its lines are sorted afterwards.
    fn mask_output(&mut self, text: &str, sorted: bool) -> String {
        let mut lines: Vec<String> = text.lines().map(|l| self.mask_line(l)).collect();
        if sorted {
            lines.sort();
        }
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    /// stderr without clientv3's JSON log lines (`{"level":"warn",...}`).
    fn mask_stderr(&mut self, text: &str) -> String {
        let kept: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("{\"level\":"))
            .map(|l| format!("{l}\n"))
            .collect();
        self.mask_output(&kept, false)
    }

    fn mask_run(&mut self, run: &Run, sorted: bool) -> Run {
        Run {
            cmd: run.cmd.clone(),
            exit: run.exit,
            stdout: self.mask_output(&run.stdout, sorted),
            stderr: self.mask_stderr(&run.stderr),
            note: run.note.clone(),
        }
    }
}

/// `granted with TTL(600s), remaining(N s)`: etcd truncates the remaining
/// time (599 right after the grant); accept 598..=600.
fn normalise_remaining(line: &str) -> String {
    if !line.contains("TTL(600s)") {
        return line.to_string();
    }
    if let Some(i) = line.find("remaining(") {
        let rest = &line[i + "remaining(".len()..];
        if let Some(j) = rest.find("s)")
            && rest[..j]
                .parse::<i64>()
                .is_ok_and(|n| (598..=600).contains(&n))
        {
            return format!("{}remaining(~599s){}", &line[..i], &rest[j + 2..]);
        }
    }
    line.to_string()
}

/// `attached keys([k2 k1])`: Go map order; sort the keys.
fn sort_attached_keys(line: &str) -> String {
    const OPEN: &str = "attached keys([";
    if let Some(i) = line.find(OPEN)
        && let Some(j) = line[i..].find("])")
    {
        let inner = &line[i + OPEN.len()..i + j];
        let mut keys: Vec<&str> = inner.split(' ').collect();
        keys.sort_unstable();
        return format!("{}{OPEN}{}{}", &line[..i], keys.join(" "), &line[i + j..]);
    }
    line.to_string()
}

/// The lease id (as etcdctl prints it, `%016x`) in the output of
/// `lease grant` (simple or JSON).
fn granted_id(stdout: &str) -> Option<String> {
    let line = stdout.lines().next()?.trim();
    if line.starts_with('{') {
        let v: Value = serde_json::from_str(line).ok()?;
        return Some(format!("{:016x}", v["ID"].as_i64()?));
    }
    let mut words = line.split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some("lease"), Some(id), Some("granted")) => Some(id.to_string()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// 1. The lease session
// ---------------------------------------------------------------------------

enum Step {
    /// Runs etcdctl. `{X}` in an argument stands for lease X's id (as
    /// granted on that server). `exit` is what etcd must answer (checks the
    /// session itself). `capture` names the lease a `lease grant` creates.
    /// `sorted`: compare stdout as sorted lines.
    Run {
        args: Vec<&'static str>,
        exit: i32,
        capture: Option<&'static str>,
        sorted: bool,
    },
    /// Polls `lease timetolive {X}` until it says `already expired`
    /// (awaits the expiry of a short lease).
    AwaitExpired(&'static str),
    /// Runs `lease keep-alive {X}`, waits for its first `keepalived` line,
    /// revokes the lease with another etcdctl and waits for keep-alive to
    /// notice and exit.
    KeepAliveRevoked(&'static str),
}

fn ok(args: &[&'static str]) -> Step {
    Step::Run {
        args: args.to_vec(),
        exit: 0,
        capture: None,
        sorted: false,
    }
}

fn fails(args: &[&'static str], exit: i32) -> Step {
    Step::Run {
        args: args.to_vec(),
        exit,
        capture: None,
        sorted: false,
    }
}

fn grant(name: &'static str, args: &[&'static str]) -> Step {
    Step::Run {
        args: args.to_vec(),
        exit: 0,
        capture: Some(name),
        sorted: false,
    }
}

fn sorted(args: &[&'static str]) -> Step {
    Step::Run {
        args: args.to_vec(),
        exit: 0,
        capture: None,
        sorted: true,
    }
}

/// The session. Revisions assume a fresh store (revision 1).
fn lease_session() -> Vec<Step> {
    vec![
        // Short leases (the minimum TTL is 2 s); they expire below.
        grant("S0", &["lease", "grant", "0"]),
        grant("S1", &["lease", "grant", "1"]),
        grant("S3", &["lease", "grant", "3"]),
        grant("SN", &["lease", "grant", "--", "-5"]),
        grant("A", &["lease", "grant", "600"]),
        grant("B", &["lease", "grant", "600", "-w", "json"]),
        fails(&["lease", "grant", "9000000001"], 1),
        fails(&["lease", "grant", "abc"], 128),
        fails(&["lease", "grant"], 128),
        // Keys with leases.
        ok(&["put", "--lease={A}", "k1", "v1"]), // rev 2
        ok(&["put", "--lease={A}", "k2", "v2"]), // rev 3
        ok(&["put", "--lease={B}", "k3", "v3"]), // rev 4
        fails(&["put", "--lease=1234abcd", "kx", "vx"], 1),
        ok(&["put", "--ignore-lease", "k1", "v1b"]), // rev 5, keeps lease A
        fails(&["put", "--ignore-lease", "nokey", "v"], 1),
        fails(&["put", "--lease={A}", "--ignore-lease", "k1", "v"], 1),
        ok(&["get", "k1", "-w", "json"]),
        ok(&["get", "k", "--prefix", "-w", "json"]),
        ok(&["get", "kx"]),
        // keep-alive (which also puts A and B back at 600 s, so the
        // remaining times below are 598..=600 however slow the steps above)
        ok(&["lease", "keep-alive", "--once", "{A}"]),
        ok(&["lease", "keep-alive", "--once", "{B}", "-w", "json"]),
        fails(&["lease", "keep-alive", "--once", UNKNOWN_LEASE], 2),
        ok(&["lease", "keep-alive", UNKNOWN_LEASE]),
        // timetolive
        ok(&["lease", "timetolive", "{A}"]),
        ok(&["lease", "timetolive", "--keys", "{A}"]),
        ok(&["lease", "timetolive", "--keys", "{A}", "-w", "json"]),
        ok(&["lease", "timetolive", "{B}", "-w", "json"]),
        ok(&["lease", "timetolive", UNKNOWN_LEASE]),
        ok(&["lease", "timetolive", "--keys", UNKNOWN_LEASE, "-w", "json"]),
        fails(&["lease", "timetolive", "zz"], 128),
        // A put without lease detaches the key.
        ok(&["put", "k2", "v2b"]), // rev 6
        ok(&["get", "k2", "-w", "json"]),
        ok(&["lease", "keep-alive", "--once", "{A}"]),
        ok(&["lease", "timetolive", "--keys", "{A}"]),
        // The short leases expire by themselves.
        Step::AwaitExpired("S0"),
        Step::AwaitExpired("S1"),
        Step::AwaitExpired("S3"),
        Step::AwaitExpired("SN"),
        sorted(&["lease", "list"]),
        ok(&["lease", "list", "-w", "json"]),
        // revoke
        ok(&["lease", "revoke", "{A}"]), // rev 7: deletes k1
        fails(&["lease", "revoke", "{A}"], 1),
        ok(&["lease", "revoke", "{B}", "-w", "json"]), // rev 8: deletes k3
        fails(&["lease", "revoke", UNKNOWN_LEASE], 1),
        fails(&["lease", "revoke", "zz"], 128),
        ok(&["lease", "timetolive", "--keys", "{A}"]),
        fails(&["lease", "keep-alive", "--once", "{A}"], 2),
        ok(&["get", "", "--prefix", "-w", "json"]),
        // A running keep-alive notices the revoke.
        grant("K", &["lease", "grant", "6"]),
        ok(&["put", "--lease={K}", "kk", "vk"]), // rev 9
        Step::KeepAliveRevoked("K"),             // revoke: rev 10
        sorted(&["lease", "list"]),
        ok(&["get", "", "--prefix", "-w", "json"]),
    ]
}

/// One server's side of the session.
struct SessionSide<'a> {
    srv: &'a ServerProcess,
    /// Captured lease ids, as etcdctl prints them.
    ids: HashMap<&'static str, String>,
    masker: Masker,
}

impl SessionSide<'_> {
    fn endpoint(&self) -> String {
        // etcdctl without a scheme, as most users type it.
        self.srv.host_port()
    }

    /// `{X}` replaced by lease X's id. A lease that was not captured (its
    /// grant failed on this server) stays `{X}`: etcdctl then fails, and
    /// the difference shows up in the comparison.
    fn subst(&self, args: &[&str]) -> Vec<String> {
        args.iter()
            .map(|a| {
                let mut a = a.to_string();
                for (name, id) in &self.ids {
                    a = a.replace(&format!("{{{name}}}"), id);
                }
                a
            })
            .collect()
    }

    /// Runs one step; returns the runs it made (raw) with `cmd` in the
    /// template form (so it is the same on both servers).
    async fn exec(&mut self, step: &Step) -> Vec<Run> {
        let endpoint = self.endpoint();
        match step {
            Step::Run { args, capture, .. } => {
                let mut r = etcdctl(&endpoint, &self.subst(args)).await;
                r.cmd = format!("etcdctl {}", args.join(" "));
                if let Some(name) = capture
                    && r.exit == Some(0)
                {
                    match granted_id(&r.stdout) {
                        Some(id) => {
                            self.ids.insert(name, id);
                        }
                        None => r.note = format!("no lease id in the output for {{{name}}}"),
                    }
                }
                vec![r]
            }
            Step::AwaitExpired(name) => {
                let id = format!("{{{name}}}");
                let template = ["lease", "timetolive", id.as_str()];
                let args = self.subst(&template);
                let deadline = Instant::now() + WAIT;
                loop {
                    let mut r = etcdctl(&endpoint, &args).await;
                    r.cmd = format!("etcdctl {} (until expired)", template.join(" "));
                    if r.exit == Some(0) && r.stdout.contains("already expired") {
                        return vec![r];
                    }
                    if Instant::now() > deadline {
                        r.note = format!("lease {{{name}}} still not expired after {WAIT:?}");
                        return vec![r];
                    }
                    // Poll interval: nothing announces an expiry to etcdctl.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Step::KeepAliveRevoked(name) => {
                let id = format!("{{{name}}}");
                let ka_args = self.subst(&["lease", "keep-alive", &id]);
                let mut ka = Proc::spawn(&endpoint, &ka_args);
                ka.wait_for("the first keepalived line", |l| {
                    l.iter().any(|x| x.contains("keepalived"))
                })
                .await;
                let mut revoke = etcdctl(&endpoint, &self.subst(&["lease", "revoke", &id])).await;
                revoke.cmd = format!("etcdctl lease revoke {id} (while keep-alive runs)");
                let mut ka = ka.exited().await;
                ka.cmd = format!("etcdctl lease keep-alive {id} (revoked while running)");
                // It prints one `keepalived` line per TTL/3 until the revoke
                // is noticed: how many is timing, so collapse repeats.
                let mut lines: Vec<&str> = ka.stdout.lines().collect();
                lines.dedup();
                ka.stdout = lines.iter().map(|l| format!("{l}\n")).collect();
                vec![revoke, ka]
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lease_session_matches_etcd() {
    let (etcd, ballast) = tokio::join!(Etcd::start(), Ballast::start());
    let mut e = SessionSide {
        srv: &etcd,
        ids: HashMap::new(),
        masker: Masker::default(),
    };
    let mut b = SessionSide {
        srv: &ballast,
        ids: HashMap::new(),
        masker: Masker::default(),
    };
    let mut mismatches = Vec::new();
    let mut transcript = String::new();
    for (i, step) in lease_session().iter().enumerate() {
        let (er, br) = tokio::join!(e.exec(step), b.exec(step));
        assert_eq!(er.len(), br.len());
        for (ej, bj) in er.iter().zip(&br) {
            // The session itself must hold against etcd.
            assert!(
                ej.note.is_empty(),
                "step #{i} does not hold against etcd:\n{}",
                ej.show()
            );
            match step {
                Step::Run { exit, .. } => assert_eq!(
                    ej.exit,
                    Some(*exit),
                    "step #{i} against etcd exits {:?}, the session expects {exit}:\n{}",
                    ej.exit,
                    ej.show()
                ),
                _ => assert_eq!(ej.exit, Some(0), "step #{i} against etcd:\n{}", ej.show()),
            }
            let sort = matches!(step, Step::Run { sorted: true, .. });
            let (em, bm) = (e.masker.mask_run(ej, sort), b.masker.mask_run(bj, sort));
            let _ = writeln!(transcript, "=== #{i}\n{}", em.show());
            if em != bm {
                mismatches.push(format!(
                    "=== step #{i}: {}\n--- etcd (masked) ---\n{}\n--- ballast (masked) ---\n{}\n--- ballast (raw) ---\n{}",
                    em.cmd,
                    em.show(),
                    bm.show(),
                    bj.show()
                ));
            }
        }
    }
    if let Ok(path) = std::env::var("BALLAST_LEASE_ETCDCTL_TRANSCRIPT") {
        std::fs::write(path, &transcript).expect("write transcript");
    }
    assert!(
        mismatches.is_empty(),
        "{} etcdctl lease runs differ from etcd (later ones may follow from earlier ones):\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 2. lock
// ---------------------------------------------------------------------------

const LOCKERS: usize = 20;

/// What each locker runs while holding the lock: appends an entry line,
/// works briefly, appends an exit line (each `echo >>` is one O_APPEND
/// write, so lines never interleave).
const LOCK_SCRIPT: &str = r#"echo "in $$ $ETCD_LOCK_KEY $ETCD_LOCK_REV" >> "$LOCK_LOG"; sleep 0.05; echo "out $$" >> "$LOCK_LOG""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_gives_mutual_exclusion() {
    let ballast = Ballast::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("lock.log");
    let endpoint = ballast.endpoint();

    let mut lockers = Vec::new();
    for _ in 0..LOCKERS {
        let args: Vec<String> = ["lock", "mutex", "--", "sh", "-c", LOCK_SCRIPT]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut cmd = etcdctl_command(&endpoint, &args);
        cmd.env("LOCK_LOG", &log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {ETCDCTL_BIN}: {e}"));
        lockers.push(tokio::spawn(async move {
            tokio::time::timeout(WAIT * 2, child.wait_with_output()).await
        }));
    }
    let mut failures = String::new();
    for (i, h) in lockers.into_iter().enumerate() {
        let out = h
            .await
            .expect("locker task")
            .unwrap_or_else(|_| panic!("locker #{i} did not finish within {:?}", WAIT * 2))
            .expect("wait for etcdctl lock");
        if !out.status.success() {
            let _ = writeln!(
                failures,
                "locker #{i}: {}\n--- stdout ---\n{}--- stderr ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        failures.is_empty(),
        "etcdctl lock failed:\n{failures}\n--- lock log ---\n{text}"
    );

    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        2 * LOCKERS,
        "{LOCKERS} entries and {LOCKERS} exits:\n{text}"
    );
    let mut keys = HashSet::new();
    let mut last_rev = 0i64;
    for (n, pair) in lines.chunks(2).enumerate() {
        let entry: Vec<&str> = pair[0].split(' ').collect();
        assert!(
            entry.len() == 4 && entry[0] == "in",
            "line {} should be an entry `in PID KEY REV`:\n{text}",
            2 * n + 1
        );
        let (pid, key, rev) = (entry[1], entry[2], entry[3]);
        assert_eq!(
            pair[1],
            format!("out {pid}"),
            "critical sections overlap: entry `{}` is not followed by its own exit:\n{text}",
            pair[0]
        );
        assert!(
            key.starts_with("mutex/") && key.len() > "mutex/".len(),
            "ETCD_LOCK_KEY {key:?} should be mutex/<lease>:\n{text}"
        );
        assert!(
            keys.insert(key.to_string()),
            "two holders with the same lock key {key}:\n{text}"
        );
        let rev: i64 = rev
            .parse()
            .unwrap_or_else(|_| panic!("ETCD_LOCK_REV {rev:?} is not a number:\n{text}"));
        // Each holder acquires after its predecessor's unlock (a delete, a
        // new revision), so acquisition revisions strictly increase.
        assert!(
            rev > last_rev,
            "ETCD_LOCK_REV {rev} of holder #{n} is not after the previous holder's {last_rev}:\n{text}"
        );
        last_rev = rev;
    }
    // Every locker unlocked.
    let left = etcdctl(
        &endpoint,
        &["get", "mutex/", "--prefix", "--keys-only"].map(String::from),
    )
    .await;
    assert_eq!(
        (left.exit, left.stdout.as_str()),
        (Some(0), ""),
        "lock keys left behind:\n{}",
        left.show()
    );
}

// ---------------------------------------------------------------------------
// 3. elect
// ---------------------------------------------------------------------------

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Observer, two candidates, and a watch on the election prefix (to know
/// when the second candidate has put its key). Returns the runs in a fixed
/// order: observer, first, second, watch.
async fn elect_scenario(srv: &ServerProcess) -> Vec<Run> {
    let ep = srv.endpoint();
    // The store is fresh: a watch from revision 1 sees every election key.
    let mut watch = Proc::spawn(&ep, &owned(&["watch", "el/", "--prefix", "--rev", "1"]));
    let mut observer = Proc::spawn(&ep, &owned(&["elect", "-l", "el"]));
    let mut first = Proc::spawn(&ep, &owned(&["elect", "el", "first"]));
    // Elected: prints its key and its proposal.
    first.wait_lines(2).await;
    observer.wait_lines(2).await;

    let mut second = Proc::spawn(&ep, &owned(&["elect", "el", "second"]));
    // The second candidate's key is in the store: it is campaigning.
    watch
        .wait_for("the second candidate's key", |l| {
            l.iter().any(|x| x == "second")
        })
        .await;
    second.drain();
    if !second.lines.is_empty() {
        second.timeouts.push(format!(
            "elected while the first leader still holds: {:?}",
            second.lines
        ));
    }

    // SIGINT: etcdctl elect resigns (deletes its key) and exits 0.
    send_signal(first.pid(), "INT");
    let first = first.exited().await;
    second.wait_lines(2).await;
    observer.wait_lines(4).await;

    send_signal(second.pid(), "TERM");
    let second = second.exited().await;
    // Both resignations are deletes.
    watch
        .wait_for("two DELETE events", |l| {
            l.iter().filter(|x| *x == "DELETE").count() >= 2
        })
        .await;
    send_signal(observer.pid(), "TERM");
    let observer = observer.exited().await;
    let watch = watch.kill().await;
    vec![observer, first, second, watch]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_and_observe() {
    let (etcd, ballast) = tokio::join!(Etcd::start(), Ballast::start());
    let (er, br) = tokio::join!(elect_scenario(&etcd), elect_scenario(&ballast));
    let (mut em, mut bm) = (Masker::default(), Masker::default());
    let mut mismatches = Vec::new();
    for (e, b) in er.iter().zip(&br) {
        assert!(
            e.note.is_empty(),
            "the scenario does not hold against etcd:\n{}",
            e.show()
        );
        let (e, b) = (em.mask_run(e, false), bm.mask_run(b, false));
        if e != b {
            mismatches.push(format!(
                "--- etcd (masked) ---\n{}\n--- ballast (masked) ---\n{}",
                e.show(),
                b.show()
            ));
        }
    }
    // etcd itself: the observer saw first, then second; both candidates
    // printed their key and value and exited 0 after resigning.
    let observer = em.mask_run(&er[0], false);
    assert_eq!(
        observer.stdout,
        "el/lease0\nfirst\nel/lease1\nsecond\n",
        "etcd observer:\n{}",
        observer.show()
    );
    for r in &er[..3] {
        assert_eq!(r.exit, Some(0), "etcd:\n{}", r.show());
    }
    assert!(
        mismatches.is_empty(),
        "etcdctl elect differs from etcd:\n{}",
        mismatches.join("\n")
    );
}
