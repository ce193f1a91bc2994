//! The real etcdctl 3.4 `watch` against Ballast and against a real etcd 3.4:
//! the same scenario on both (same writes, so the same revisions), compared
//! on stdout, stderr and (when etcdctl exits by itself) the exit code, after
//! masking cluster/member ids and the raft term.
//!
//! `etcdctl watch` runs until killed, so its stdout is read line by line and
//! the process is stopped once the scenario's last expected line arrived (a
//! bounded wait, never a sleep). etcdctl prints nothing when a watch is
//! created; scenarios make sure no event is missed by watching from
//! `--rev <current + 1>`, or (for the plain `watch KEY`) by writing pings
//! until the first one shows up and dropping the pings from the transcript.

mod common;

use std::fmt::Write as _;
use std::process::Stdio;
use std::time::Duration;

use ballast_proto::etcdserverpb::kv_client::KvClient;
use ballast_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    request_op,
};
use common::{Ballast, ETCDCTL_BIN, Etcd, ServerProcess, guarded, prefix_end};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;

/// How long a scenario waits for an expected line (a hang guard only).
const LINE_WAIT: Duration = Duration::from_secs(20);
/// The shell command of the `watch ... -- cmd` scenario.
const EXEC_SCRIPT: &str = "echo \"exec rev=$ETCD_WATCH_REVISION type=$ETCD_WATCH_EVENT_TYPE key=$ETCD_WATCH_KEY value=$ETCD_WATCH_VALUE\"";

/// What one etcdctl run printed.
#[derive(Debug, Clone, PartialEq)]
struct Transcript {
    cmd: String,
    /// Set when etcdctl exited by itself (not killed by the scenario).
    exit: Option<i32>,
    stdout: Vec<String>,
    stderr: String,
    /// Waits that ran out (a scenario expectation that was not met).
    timeouts: Vec<String>,
}

impl Transcript {
    fn show(&self) -> String {
        let mut s = format!("$ {}\n", self.cmd);
        if let Some(code) = self.exit {
            let _ = writeln!(s, "exit {code}");
        }
        for t in &self.timeouts {
            let _ = writeln!(s, "!! timed out waiting for {t}");
        }
        s.push_str("--- stdout ---\n");
        for l in &self.stdout {
            let _ = writeln!(s, "{l}");
        }
        let _ = write!(s, "--- stderr ---\n{}", self.stderr);
        s
    }

    fn masked(&self, srv: &ServerProcess) -> Transcript {
        Transcript {
            cmd: self.cmd.clone(),
            exit: self.exit,
            stdout: self.stdout.iter().map(|l| mask_line(l, srv)).collect(),
            stderr: self
                .stderr
                .lines()
                .map(|l| mask_line(l, srv) + "\n")
                .collect(),
            timeouts: self.timeouts.clone(),
        }
    }
}

fn mask_json(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                match k.as_str() {
                    "cluster_id" | "member_id" | "raft_term" => *val = Value::String("<ID>".into()),
                    _ => mask_json(val),
                }
            }
        }
        Value::Array(xs) => xs.iter_mut().for_each(mask_json),
        _ => {}
    }
}

fn mask_line(line: &str, srv: &ServerProcess) -> String {
    let line = line
        .replace(&srv.endpoint(), "<CLIENT_URL>")
        .replace(&srv.host_port(), "<CLIENT_ADDR>");
    let t = line.trim_start();
    if t.starts_with('{')
        && let Ok(mut v) = serde_json::from_str::<Value>(t)
    {
        mask_json(&mut v);
        return serde_json::to_string(&v).expect("serialize json");
    }
    for key in ["\"ClusterID\" : ", "\"MemberID\" : ", "\"RaftTerm\" : "] {
        if line.starts_with(key) {
            return format!("{key}<ID>");
        }
    }
    line
}

/// A running `etcdctl watch`, its stdout read line by line.
struct Watching {
    cmd: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines_rx: mpsc::UnboundedReceiver<String>,
    lines: Vec<String>,
    stderr: JoinHandle<String>,
    timeouts: Vec<String>,
}

impl Watching {
    fn spawn(srv: &ServerProcess, args: &[&str]) -> Self {
        let mut child = common::etcdctl_command(&srv.endpoint(), args, Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {ETCDCTL_BIN}: {e}"));
        let (lines_rx, stderr) = common::read_output(&mut child);
        Watching {
            cmd: format!("etcdctl {}", args.join(" ")),
            stdin: child.stdin.take(),
            child,
            lines_rx,
            lines: Vec::new(),
            stderr,
            timeouts: Vec::new(),
        }
    }

    /// Reads lines until `done(lines so far)` holds; records a timeout (and
    /// returns false) if it does not within [`LINE_WAIT`] or stdout ends.
    async fn wait_for(&mut self, what: &str, done: impl Fn(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + LINE_WAIT;
        while !done(&self.lines) {
            match tokio::time::timeout_at(deadline, self.lines_rx.recv()).await {
                Ok(Some(line)) => self.lines.push(line),
                Ok(None) | Err(_) => {
                    self.timeouts.push(what.to_string());
                    return false;
                }
            }
        }
        true
    }

    /// Waits until stdout has `n` lines in all.
    async fn wait_lines(&mut self, n: usize) -> bool {
        self.wait_for(&format!("{n} stdout lines"), |l| l.len() >= n)
            .await
    }

    /// Waits until a stdout line equals `line`.
    async fn wait_line(&mut self, line: &str) -> bool {
        self.wait_for(&format!("the line {line:?}"), |l| {
            l.iter().any(|x| x == line)
        })
        .await
    }

    /// One more line within `within`, if any (for the ping loop).
    async fn next_line_within(&mut self, within: Duration) -> bool {
        match tokio::time::timeout(within, self.lines_rx.recv()).await {
            Ok(Some(line)) => {
                self.lines.push(line);
                true
            }
            _ => false,
        }
    }

    async fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(text.as_bytes())
            .await
            .expect("write etcdctl stdin");
        stdin.flush().await.expect("flush etcdctl stdin");
    }

    /// Kills etcdctl and returns what it printed (including anything that
    /// was still in the pipe).
    async fn stop(mut self) -> Transcript {
        let _ = self.child.start_kill();
        let _ = guarded("etcdctl exit after kill", self.child.wait()).await;
        self.collect(None).await
    }

    /// Waits (bounded) for etcdctl to exit by itself.
    async fn exited(mut self) -> Transcript {
        let status = match tokio::time::timeout(LINE_WAIT, self.child.wait()).await {
            Ok(status) => status.expect("wait for etcdctl").code(),
            Err(_) => {
                self.timeouts.push("etcdctl to exit".into());
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                None
            }
        };
        let exit = Some(status.unwrap_or(-1));
        self.collect(exit).await
    }

    async fn collect(mut self, exit: Option<i32>) -> Transcript {
        drop(self.stdin.take());
        // The pipe closes once etcdctl (and any exec'd child) is gone.
        let deadline = Instant::now() + LINE_WAIT;
        while let Ok(Some(line)) = tokio::time::timeout_at(deadline, self.lines_rx.recv()).await {
            self.lines.push(line);
        }
        let stderr = tokio::time::timeout(LINE_WAIT, self.stderr)
            .await
            .map(|r| r.unwrap_or_default())
            .unwrap_or_else(|_| "<stderr did not close>".into());
        Transcript {
            cmd: self.cmd,
            exit,
            stdout: self.lines,
            stderr,
            timeouts: self.timeouts,
        }
    }
}

/// One server with a KV client for the scenario's writes.
struct Side<'a> {
    srv: &'a ServerProcess,
    kv: KvClient<Channel>,
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            ..Default::default()
        })),
    }
}

fn del_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.as_bytes().to_vec().into(),
                ..Default::default()
            },
        )),
    }
}

impl<'a> Side<'a> {
    async fn new(srv: &'a ServerProcess) -> Side<'a> {
        Side {
            srv,
            kv: srv.kv_client().await,
        }
    }

    fn label(&self) -> &'static str {
        self.srv.kind().label()
    }

    fn watch(&self, args: &[&str]) -> Watching {
        Watching::spawn(self.srv, args)
    }

    async fn revision(&self) -> i64 {
        let mut kv = self.kv.clone();
        guarded(
            "range",
            kv.range(RangeRequest {
                key: b"rev-probe".to_vec().into(),
                ..Default::default()
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: range: {e}", self.label()))
        .into_inner()
        .header
        .expect("header")
        .revision
    }

    /// `--rev` of a watch that sees every later write.
    async fn next_rev(&self) -> String {
        (self.revision().await + 1).to_string()
    }

    async fn put(&self, key: &str, value: &str) -> i64 {
        let mut kv = self.kv.clone();
        guarded(
            "put",
            kv.put(PutRequest {
                key: key.as_bytes().to_vec().into(),
                value: value.as_bytes().to_vec().into(),
                ..Default::default()
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: put {key}: {e}", self.label()))
        .into_inner()
        .header
        .expect("header")
        .revision
    }

    async fn del(&self, key: &str, prefix: bool) -> i64 {
        let mut kv = self.kv.clone();
        let range_end = if prefix {
            prefix_end(key.as_bytes())
        } else {
            Vec::new()
        };
        guarded(
            "delete",
            kv.delete_range(DeleteRangeRequest {
                key: key.as_bytes().to_vec().into(),
                range_end: range_end.into(),
                ..Default::default()
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: delete {key}: {e}", self.label()))
        .into_inner()
        .header
        .expect("header")
        .revision
    }

    /// A txn that always succeeds with `ops` (one revision).
    async fn txn(&self, ops: Vec<RequestOp>) -> i64 {
        let mut kv = self.kv.clone();
        guarded(
            "txn",
            kv.txn(TxnRequest {
                success: ops,
                ..Default::default()
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: txn: {e}", self.label()))
        .into_inner()
        .header
        .expect("header")
        .revision
    }

    async fn compact(&self, revision: i64) {
        let mut kv = self.kv.clone();
        guarded(
            "compact",
            kv.compact(CompactionRequest {
                revision,
                physical: true,
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: compact {revision}: {e}", self.label()));
    }
}

// ---------------------------------------------------------------------------
// Scenarios. Each runs on one side; the test runs it on both at once.
// ---------------------------------------------------------------------------

/// Plain `watch KEY` (no --rev): pings until the watch shows it is
/// established, then the real writes; the pings are dropped afterwards.
async fn plain_key(s: &Side<'_>) -> Vec<Transcript> {
    let mut w = s.watch(&["watch", "plain"]);
    let deadline = Instant::now() + LINE_WAIT;
    loop {
        s.put("plain", "ping").await;
        if w.next_line_within(Duration::from_millis(300)).await {
            break;
        }
        if Instant::now() > deadline {
            w.timeouts.push("the first ping".into());
            break;
        }
    }
    s.put("plain", "v1").await;
    s.put("plainx", "not-watched").await;
    s.put("plain", "v2").await;
    s.del("plain", false).await;
    s.del("plain", false).await; // deletes nothing: no event
    s.put("plain", "END").await;
    w.wait_line("END").await;
    let mut t = w.stop().await;
    // Drop the pings: events are three lines (type, key, value).
    let mut kept = Vec::new();
    let mut i = 0;
    while i < t.stdout.len() {
        let ev = &t.stdout[i..(i + 3).min(t.stdout.len())];
        if ev.len() == 3 && ev[2] == "ping" {
            i += 3;
        } else {
            kept.push(t.stdout[i].clone());
            i += 1;
        }
    }
    t.stdout = kept;
    vec![t]
}

/// `watch KEY --rev <next>`, `watch PREFIX --prefix`, `watch KEY RANGE_END`,
/// live, with txns writing several keys in one revision.
async fn live_key_prefix_range(s: &Side<'_>) -> Vec<Transcript> {
    let rev = s.next_rev().await;
    let mut key = s.watch(&["watch", "k1", "--rev", &rev]);
    let mut prefix = s.watch(&["watch", "p/", "--prefix", "--rev", &rev]);
    let mut range = s.watch(&["watch", "p/b", "p/d", "--rev", &rev]);
    let mut hex = s.watch(&["watch", "p/", "--prefix", "--hex", "--rev", &rev]);
    s.put("k1", "v1").await;
    s.put("k10", "not-watched").await;
    s.put("p/a", "1").await;
    s.put("p", "not-watched").await;
    s.put("q", "not-watched").await;
    s.txn(vec![
        put_op("p/b", "2"),
        put_op("k1", "v2"),
        put_op("p/c", "3"),
    ])
    .await;
    s.txn(vec![del_op("p/a"), put_op("p/d", "4"), put_op("p/c", "33")])
        .await;
    s.put("k1", "v3").await;
    s.del("p/", true).await; // deletes p/b, p/c, p/d in one revision
    s.del("k1", false).await;
    s.put("p/e", "END-e").await;
    s.put("k1", "END").await;
    s.put("p/c", "END-c").await;
    key.wait_line("END").await;
    prefix.wait_line("END-c").await;
    range.wait_line("END-c").await;
    hex.wait_line(r"\x45\x4e\x44\x2d\x63").await;
    vec![
        key.stop().await,
        prefix.stop().await,
        range.stop().await,
        hex.stop().await,
    ]
}

/// `--prev-kv`, live and from history.
async fn prev_kv(s: &Side<'_>) -> Vec<Transcript> {
    let start = s.next_rev().await;
    let mut live = s.watch(&["watch", "pk", "--prefix", "--prev-kv", "--rev", &start]);
    s.put("pk/a", "1").await;
    s.put("pk/a", "2").await;
    s.txn(vec![put_op("pk/a", "3"), put_op("pk/b", "1")]).await;
    s.del("pk/a", false).await;
    s.put("pk/a", "again").await;
    s.del("pk/", true).await;
    s.put("pk/z", "END").await;
    live.wait_line("END").await;
    let mut history = s.watch(&["watch", "pk", "--prefix", "--prev-kv", "--rev", &start]);
    history.wait_line("END").await;
    vec![live.stop().await, history.stop().await]
}

/// `--rev N` from history (all writes done before the watch starts),
/// in the simple, fields and json formats.
async fn history(s: &Side<'_>, first_rev: i64) -> Vec<Transcript> {
    s.put("zz", "HISTORY-END").await;
    let first = first_rev.to_string();
    let mut out = Vec::new();
    for (args, last) in [
        (vec!["watch", "k1", "--rev", "2"], "END"),
        (
            vec!["watch", "", "--prefix", "--rev", &first],
            "HISTORY-END",
        ),
        (
            vec!["watch", "p/", "--prefix", "--rev", &first, "-w", "fields"],
            "\"Value\" : \"END-c\"",
        ),
        (vec!["watch", "p/a", "p/d", "--rev", "1"], "END-c"),
    ] {
        let mut w = s.watch(&args);
        w.wait_line(last).await;
        out.push(w.stop().await);
    }
    // JSON: one catch-up response, one line.
    let mut w = s.watch(&["watch", "k1", "--rev", "2", "-w", "json"]);
    w.wait_lines(1).await;
    out.push(w.stop().await);
    out
}

/// `-w json` live: one write at a time (waiting for its line), so every
/// revision is one response on both servers.
async fn json_live(s: &Side<'_>) -> Vec<Transcript> {
    let rev = s.next_rev().await;
    let mut w = s.watch(&[
        "watch",
        "j/",
        "--prefix",
        "--prev-kv",
        "--rev",
        &rev,
        "-w",
        "json",
    ]);
    s.put("j/a", "1").await;
    w.wait_lines(1).await;
    s.txn(vec![
        put_op("j/a", "2"),
        put_op("j/b", "1"),
        put_op("x", "y"),
    ])
    .await;
    w.wait_lines(2).await;
    s.del("j/", true).await;
    w.wait_lines(3).await;
    vec![w.stop().await]
}

/// `watch -i`: commands on stdin, including invalid ones. Watched keys are
/// disjoint and writes go one at a time, so the output order is fixed.
async fn interactive(s: &Side<'_>) -> Vec<Transcript> {
    let rev = s.next_rev().await;
    let mut w = s.watch(&["watch", "-i"]);
    w.send(&format!("watch ia --rev {rev}\n")).await;
    w.send(&format!("watch ib --prefix --rev {rev}\n")).await;
    w.send("bogus command\n").await;
    w.send("watch\n").await;
    w.send(&format!("watch ic --prev-kv --rev {rev}\n")).await;
    w.send(&format!("watch id if --rev {rev}\n")).await;
    let mut n = 0;
    for (key, value) in [
        ("ia", "1"),
        ("ib/x", "2"),
        ("ic", "3"),
        ("ie", "4"),
        ("ia", "5"),
        ("ic", "6"),
        ("ib", "7"),
    ] {
        s.put(key, value).await;
        n += if key == "ic" && value == "6" { 5 } else { 3 };
        w.wait_lines(n).await;
    }
    s.del("ia", false).await;
    n += 3;
    w.wait_lines(n).await;
    // A watch added later, from history: sees ia's whole history.
    w.send("watch ia --rev 1\n").await;
    n += 3 * 3;
    w.wait_lines(n).await;
    vec![w.stop().await]
}

/// `watch KEY -- sh -c ...`: the command runs once per event with the
/// ETCD_WATCH_* variables; writes go one at a time.
async fn exec(s: &Side<'_>) -> Vec<Transcript> {
    let rev = s.next_rev().await;
    let mut w = s.watch(&[
        "watch",
        "ex",
        "--prefix",
        "--rev",
        &rev,
        "--",
        "sh",
        "-c",
        EXEC_SCRIPT,
    ]);
    s.put("ex/a", "v 1").await;
    w.wait_lines(4).await;
    s.txn(vec![put_op("ex/b", "two"), put_op("ex/a", "\"q\"")])
        .await;
    w.wait_lines(4 + 8).await;
    s.del("ex/a", false).await;
    w.wait_lines(4 + 8 + 4).await;
    vec![w.stop().await]
}

/// A watch at a compacted revision: etcdctl prints the cancel and exits;
/// a watch exactly at the compaction revision still works.
async fn compacted(s: &Side<'_>) -> Vec<Transcript> {
    s.put("cmp", "1").await;
    let at = s.put("cmp", "END").await;
    s.compact(at).await;
    let mut out = Vec::new();
    out.push(s.watch(&["watch", "cmp", "--rev", "2"]).exited().await);
    out.push(
        s.watch(&["watch", "cmp", "--rev", "2", "-w", "json"])
            .exited()
            .await,
    );
    let before = (at - 1).to_string();
    out.push(
        s.watch(&["watch", "", "--prefix", "--rev", &before])
            .exited()
            .await,
    );
    let mut w = s.watch(&["watch", "cmp", "--rev", &at.to_string()]);
    w.wait_line("END").await;
    out.push(w.stop().await);
    out
}

/// Runs a scenario on both sides at once and records the differences.
macro_rules! compare {
    ($report:expr, $name:expr, $e:expr, $b:expr, $f:expr) => {{
        let (et, bt) = tokio::join!($f($e), $f($b));
        $report.check($name, $e.srv, $b.srv, et, bt);
    }};
}

#[derive(Default)]
struct Report {
    mismatches: Vec<String>,
    transcript: String,
}

impl Report {
    fn check(
        &mut self,
        name: &str,
        etcd: &ServerProcess,
        ballast: &ServerProcess,
        e: Vec<Transcript>,
        b: Vec<Transcript>,
    ) {
        assert_eq!(e.len(), b.len());
        for (i, (e, b)) in e.iter().zip(&b).enumerate() {
            // The scenario itself must hold against etcd.
            assert!(
                e.timeouts.is_empty(),
                "scenario {name} #{i} does not hold against etcd:\n{}",
                e.show()
            );
            assert!(
                !e.stdout.is_empty() || !e.stderr.is_empty(),
                "scenario {name} #{i}: etcd printed nothing:\n{}",
                e.show()
            );
            let (em, bm) = (e.masked(etcd), b.masked(ballast));
            let _ = writeln!(self.transcript, "=== {name} #{i}\n{}\n", em.show());
            if em != bm {
                self.mismatches.push(format!(
                    "=== scenario {name} #{i}\n--- etcd (masked) ---\n{}\n--- ballast (masked) ---\n{}\n",
                    em.show(),
                    bm.show()
                ));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_matches_etcd() {
    let (etcd, ballast) = tokio::join!(Etcd::start(), Ballast::start());
    let (e, b) = tokio::join!(Side::new(&etcd), Side::new(&ballast));
    let mut report = Report::default();

    compare!(report, "plain watch KEY", &e, &b, plain_key);
    let first_rev = e.revision().await + 1;
    compare!(
        report,
        "live key/prefix/range",
        &e,
        &b,
        live_key_prefix_range
    );
    compare!(report, "--prev-kv", &e, &b, prev_kv);
    let (eh, bh) = tokio::join!(history(&e, first_rev), history(&b, first_rev));
    report.check("--rev history", &etcd, &ballast, eh, bh);
    compare!(report, "-w json live", &e, &b, json_live);
    compare!(report, "interactive", &e, &b, interactive);
    compare!(report, "exec", &e, &b, exec);
    compare!(report, "compacted", &e, &b, compacted);

    let (re, rb) = tokio::join!(e.revision(), b.revision());
    assert_eq!(re, rb, "both servers end at the same revision");

    if let Ok(path) = std::env::var("BALLAST_WATCH_ETCDCTL_TRANSCRIPT") {
        std::fs::write(path, &report.transcript).expect("write transcript");
    }
    assert!(
        report.mismatches.is_empty(),
        "{} etcdctl watch runs differ from etcd:\n{}",
        report.mismatches.len(),
        report.mismatches.join("\n")
    );
}
