//! The real etcdctl 3.4 against Ballast and against a real etcd 3.4: the same
//! session on both, compared on stdout, stderr and exit code after masking
//! what legitimately differs (cluster/member ids, raft term, endpoint URLs,
//! timestamps). `endpoint status` and `member list` are compared on their
//! deterministic parts and checked for shape otherwise.

mod common;

use std::fmt::Write as _;
use std::process::Stdio;

use common::{Ballast, ETCDCTL_BIN, Etcd, MEMBER_NAME, RPC_TIMEOUT, ServerProcess};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// One etcdctl invocation: its arguments (after `--endpoints`), optional
/// stdin, and the exit code it must have against etcd (checks the session
/// itself exercises what it means to).
struct Step {
    args: Vec<String>,
    stdin: Option<String>,
    expect_exit: i32,
}

fn step(args: &[&str]) -> Step {
    Step {
        args: args.iter().map(|s| s.to_string()).collect(),
        stdin: None,
        expect_exit: 0,
    }
}

fn step_err(args: &[&str], code: i32) -> Step {
    Step {
        expect_exit: code,
        ..step(args)
    }
}

fn txn(args: &[&str], stdin: &str) -> Step {
    Step {
        stdin: Some(stdin.to_string()),
        ..step(args)
    }
}

fn txn_err(args: &[&str], stdin: &str, code: i32) -> Step {
    Step {
        stdin: Some(stdin.to_string()),
        expect_exit: code,
        ..step(args)
    }
}

/// The etcdctl session. Revisions in it assume a fresh store (revision 1).
fn session() -> Vec<Step> {
    vec![
        step(&["put", "k1", "v1"]),                            // rev 2
        step(&["put", "k1", "v2", "--prev-kv"]),               // rev 3
        step(&["put", "k2", "v2"]),                            // rev 4
        step(&["put", "k10", "v10"]),                          // rev 5
        step(&["put", "foo/a", "A"]),                          // rev 6
        step(&["put", "foo/b", "B"]),                          // rev 7
        step(&["put", "zz", "last"]),                          // rev 8
        step(&["put", "k1", "v3", "--prev-kv", "-w", "json"]), // rev 9
        step(&["put", "k1", "--ignore-value"]),                // rev 10
        step_err(&["put", "nosuch", "--ignore-value"], 1),
        step(&["get", "k1"]),
        step(&["get", "k1", "-w", "json"]),
        step(&["get", "k", "--prefix"]),
        step(&["get", "k2", "--from-key"]),
        step(&["get", "k1", "k2"]),
        step(&["get", "k", "--prefix", "--limit", "1"]),
        step(&["get", "k", "--prefix", "--limit", "1", "-w", "json"]),
        step(&[
            "get",
            "k",
            "--prefix",
            "--limit",
            "2",
            "--sort-by=MODIFY",
            "--order=DESCEND",
            "-w",
            "json",
        ]),
        step(&["get", "k1", "--rev", "2"]),
        step(&["get", "k1", "--rev", "3", "-w", "json"]),
        step(&["get", "k", "--prefix", "--rev", "4"]),
        step(&["get", "", "--prefix", "--keys-only"]),
        step(&["get", "", "--from-key", "--keys-only", "-w", "json"]),
        step(&[
            "get",
            "k",
            "--prefix",
            "--sort-by=MODIFY",
            "--order=DESCEND",
        ]),
        step(&["get", "k", "--prefix", "--sort-by=VALUE", "--order=ASCEND"]),
        step(&["get", "k", "--prefix", "--sort-by=CREATE"]),
        step(&["get", "k", "--prefix", "--sort-by=KEY", "--order=DESCEND"]),
        step(&[
            "get",
            "",
            "--prefix",
            "--sort-by=VERSION",
            "--order=DESCEND",
            "-w",
            "json",
        ]),
        step(&["get", "k", "--prefix", "--print-value-only"]),
        step(&["get", "k", "--prefix", "-w", "fields"]),
        step(&["get", "k", "--prefix", "--consistency=s"]),
        step(&["get", "foo", "--prefix", "--hex"]),
        step(&["get", "nosuch"]),
        step(&["get", "nosuch", "-w", "json"]),
        step(&["del", "nosuch"]),
        step(&["del", "k2"]),                             // rev 11
        step(&["del", "foo", "--prefix", "--prev-kv"]),   // rev 12
        step(&["del", "k10", "--prev-kv", "-w", "json"]), // rev 13
        txn(
            &["txn", "-i"],
            "mod(\"k1\") > \"0\"\nvalue(\"k1\") = \"v3\"\n\nput k1 v4\nget k1\n\nput k1 bad\n\n",
        ),
        txn(
            &["txn", "-i"],
            "ver(\"k1\") = \"1\"\n\nput k1 nope\n\nget k1\ndel zz\n\n",
        ),
        txn(
            &["txn", "-i", "-w", "json"],
            "create(\"k1\") > \"0\"\n\nput k1 v5\nput kx vx\n\n\n",
        ),
        txn(
            &["txn", "-i"],
            "mod(\"k1\") = \"0\"\n\nput newkey nv\n\nget newkey\n\n",
        ),
        txn(
            &["txn", "-i", "-w", "json"],
            "mod(\"k1\") < \"3\"\n\nput k1 no\n\nget k1\nget k --prefix\ndel nosuch\n\n",
        ),
        txn(
            &["txn", "-i"],
            "value(\"k1\") != \"zz\"\nver(\"k1\") < \"100\"\n\nput kx vv --prev-kv\nget k --prefix\n\n\n",
        ),
        txn(
            &["txn", "-i"],
            "create(\"missing\") = \"0\"\n\ndel k1\n\n\n",
        ),
        txn_err(
            &["txn", "-i"],
            "create(\"missing\") = \"0\"\n\nput k1 a\nput k1 b\n\n\n",
            1,
        ),
        txn(
            &["txn", "-i", "-w", "json"],
            "value(\"missing\") = \"\"\n\nput a 1\n\nput b 2\n\n",
        ),
        step(&["get", "", "--prefix"]),
        step(&["get", "", "--prefix", "-w", "json"]),
        step(&["compaction", "5"]),
        step(&["compaction", "7", "--physical"]),
        step_err(&["get", "k1", "--rev", "4"], 1),
        step(&["get", "k1", "--rev", "7"]),
        step(&["get", "", "--prefix", "--rev", "16"]),
        step_err(&["get", "k1", "--rev", "1000"], 1),
        step_err(&["compaction", "6"], 1),
        step_err(&["compaction", "7"], 1),
        step_err(&["compaction", "1000"], 1),
        step_err(&["put", "", "v"], 1),
        step_err(&["get", ""], 1),
        step(&["put", "last", "one", "-w", "json"]),
        step(&["get", "", "--from-key", "-w", "fields"]),
        step(&["del", "k", "--from-key", "--prev-kv"]),
        step(&["del", "", "--from-key", "-w", "json"]),
        step(&["get", "", "--prefix", "-w", "json"]),
        step(&[
            "get", "", "--prefix", "--rev", "16", "--limit", "2", "-w", "json",
        ]),
        step(&["endpoint", "health"]),
        step(&["endpoint", "health", "-w", "json"]),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct Run {
    cmd: String,
    exit: i32,
    stdout: String,
    stderr: String,
}

async fn etcdctl(srv: &ServerProcess, args: &[String], stdin: Option<&str>) -> Run {
    etcdctl_at(&srv.endpoint(), args, stdin).await
}

/// Runs etcdctl with `--endpoints=<endpoint>` (and ETCDCTL_API=3).
async fn etcdctl_at(endpoint: &str, args: &[String], stdin: Option<&str>) -> Run {
    let mut cmd = tokio::process::Command::new(ETCDCTL_BIN);
    cmd.arg(format!("--endpoints={endpoint}"))
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str()
            && k.starts_with("ETCDCTL_")
            && k != "ETCDCTL_API"
        {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {ETCDCTL_BIN}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(input.as_bytes())
            .await
            .expect("write etcdctl stdin");
        drop(pipe);
    }
    let out = tokio::time::timeout(RPC_TIMEOUT * 2, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("etcdctl {args:?} did not finish"))
        .expect("wait for etcdctl");
    Run {
        cmd: format!(
            "etcdctl {}{}",
            args.join(" "),
            if stdin.is_some() { " <<stdin" } else { "" }
        ),
        exit: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Replaces the server's own addresses with placeholders.
fn mask_urls(text: &str, srv: &ServerProcess) -> String {
    text.replace(&srv.endpoint(), "<CLIENT_URL>")
        .replace(&srv.peer_url(), "<PEER_URL>")
        .replace(&srv.host_port(), "<CLIENT_ADDR>")
}

/// Masks ids, raft terms, timestamps and latencies in JSON values, keeping
/// the keys (so a field present on one side only still shows up).
fn mask_json(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                match k.as_str() {
                    "cluster_id" | "member_id" | "raft_term" => *val = Value::String("<ID>".into()),
                    "ts" => *val = Value::String("<TS>".into()),
                    "target" => *val = Value::String("<TARGET>".into()),
                    "took" => *val = Value::String("<TOOK>".into()),
                    _ => mask_json(val),
                }
            }
        }
        Value::Array(xs) => xs.iter_mut().for_each(mask_json),
        _ => {}
    }
}

fn mask_line(line: &str) -> String {
    let t = line.trim_start();
    if (t.starts_with('{') || t.starts_with('['))
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
    if let Some(i) = line.find("took = ") {
        return format!("{}took = <TOOK>", &line[..i]);
    }
    line.to_string()
}

fn mask_output(text: &str, srv: &ServerProcess) -> String {
    let text = mask_urls(text, srv);
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        out.push_str(&mask_line(body));
        out.push_str(nl);
    }
    out
}

fn mask_run(run: &Run, srv: &ServerProcess) -> Run {
    Run {
        cmd: run.cmd.clone(),
        exit: run.exit,
        stdout: mask_output(&run.stdout, srv),
        stderr: mask_output(&run.stderr, srv),
    }
}

fn show(run: &Run) -> String {
    format!(
        "exit {}\n--- stdout ---\n{}--- stderr ---\n{}",
        run.exit, run.stdout, run.stderr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_session_matches_etcd() {
    let (etcd, ballast) = tokio::join!(Etcd::start(), Ballast::start());

    let mut mismatches = String::new();
    let mut n_mismatches = 0;
    // BALLAST_ETCDCTL_TRANSCRIPT=<path>: also write both masked transcripts
    // to <path>.etcd and <path>.ballast (for diffing by hand).
    let transcript_path = std::env::var("BALLAST_ETCDCTL_TRANSCRIPT").ok();
    let (mut etcd_log, mut ballast_log) = (String::new(), String::new());
    for (i, st) in session().iter().enumerate() {
        let (e, b) = tokio::join!(
            etcdctl(&etcd, &st.args, st.stdin.as_deref()),
            etcdctl(&ballast, &st.args, st.stdin.as_deref())
        );
        assert_eq!(
            e.exit,
            st.expect_exit,
            "session step #{i} `{}` against etcd exits {} (expected {}): the session is wrong\n{}",
            e.cmd,
            e.exit,
            st.expect_exit,
            show(&e)
        );
        let (em, bm) = (mask_run(&e, &etcd), mask_run(&b, &ballast));
        for (log, run) in [(&mut etcd_log, &em), (&mut ballast_log, &bm)] {
            let stdin = st
                .stdin
                .as_deref()
                .map(|s| format!("--- stdin ---\n{s}"))
                .unwrap_or_default();
            let _ = writeln!(log, "=== #{i} $ {}\n{stdin}{}", run.cmd, show(run));
        }
        if em != bm {
            n_mismatches += 1;
            let _ = writeln!(
                mismatches,
                "=== step #{i}: {}\n--- etcd (masked) ---\n{}\n--- ballast (masked) ---\n{}\n",
                e.cmd,
                show(&em),
                show(&bm)
            );
        }
    }
    if let Some(path) = transcript_path {
        std::fs::write(format!("{path}.etcd"), &etcd_log).expect("write etcd transcript");
        std::fs::write(format!("{path}.ballast"), &ballast_log).expect("write ballast transcript");
    }
    assert!(
        n_mismatches == 0,
        "{n_mismatches} etcdctl steps differ from etcd (later ones may follow from earlier ones):\n{mismatches}"
    );
}

// ---------------------------------------------------------------------------
// endpoint status / member list
// ---------------------------------------------------------------------------

/// Ids a server reports about itself, from `endpoint status -w json`.
struct SelfIds {
    member_id: u64,
}

fn parse_json(run: &Run, what: &str) -> Value {
    assert_eq!(run.exit, 0, "{what}: {}", show(run));
    serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", show(run)))
}

/// `endpoint status -w json`: shape, plus consistency between fields.
/// Returns the masked value for comparison with the other server.
fn check_status_json(srv: &ServerProcess, endpoint: &str, run: &Run) -> (SelfIds, Value) {
    let label = srv.kind().label();
    let v = parse_json(run, &format!("{label}: endpoint status -w json"));
    let arr = v
        .as_array()
        .unwrap_or_else(|| panic!("{label}: status json is not an array: {v}"));
    assert_eq!(arr.len(), 1, "{label}: one endpoint: {v}");
    let ep = &arr[0];
    assert_eq!(
        ep["Endpoint"],
        Value::String(endpoint.into()),
        "{label}: Endpoint"
    );
    let st = &ep["Status"];
    let h = &st["header"];
    let member_id = h["member_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("{label}: header.member_id: {v}"));
    assert_ne!(member_id, 0);
    assert_ne!(
        h["cluster_id"].as_u64().unwrap_or(0),
        0,
        "{label}: header.cluster_id: {v}"
    );
    assert_ne!(
        h["raft_term"].as_u64().unwrap_or(0),
        0,
        "{label}: header.raft_term: {v}"
    );
    assert_eq!(
        st["leader"].as_u64(),
        Some(member_id),
        "{label}: leader is the member itself: {v}"
    );
    let version = st["version"]
        .as_str()
        .unwrap_or_else(|| panic!("{label}: version: {v}"));
    match srv.kind() {
        common::Kind::Etcd => assert!(version.starts_with("3.4."), "etcd version {version}"),
        common::Kind::Ballast => assert!(
            version.starts_with("3.5."),
            "ballast must report an etcd 3.5 version, got {version}"
        ),
    }
    for k in [
        "raftIndex",
        "raftTerm",
        "raftAppliedIndex",
        "dbSize",
        "dbSizeInUse",
    ] {
        assert!(
            st[k].as_u64().unwrap_or(0) > 0,
            "{label}: Status.{k} must be > 0: {v}"
        );
    }
    assert!(
        st["raftAppliedIndex"].as_u64() <= st["raftIndex"].as_u64(),
        "{label}: applied index beyond the committed index: {v}"
    );
    // Masked: numbers whose values legitimately differ.
    let mut masked = v.clone();
    mask_json(&mut masked);
    if let Some(s) = masked[0]["Status"].as_object_mut() {
        for k in [
            "version",
            "dbSize",
            "dbSizeInUse",
            "leader",
            "raftIndex",
            "raftTerm",
            "raftAppliedIndex",
        ] {
            if s.contains_key(k) {
                s.insert(k.to_string(), Value::String(format!("<{k}>")));
            }
        }
    }
    masked[0]["Endpoint"] = Value::String("<CLIENT_URL>".into());
    (SelfIds { member_id }, masked)
}

/// `endpoint status` (simple): `endpoint, id, version, db size, is leader,
/// is learner, raft term, raft index, raft applied index, errors`.
fn check_status_cells(
    srv: &ServerProcess,
    endpoint: &str,
    cells: &[String],
    ids: &SelfIds,
    what: &str,
) -> Vec<String> {
    let label = srv.kind().label();
    assert_eq!(cells.len(), 10, "{label} {what}: 10 columns: {cells:?}");
    assert_eq!(cells[0], endpoint, "{label} {what}: endpoint");
    assert_eq!(
        cells[1],
        format!("{:x}", ids.member_id),
        "{label} {what}: member id (hex)"
    );
    let size_ok = cells[3]
        .split_once(' ')
        .map(|(n, unit)| n.parse::<f64>().is_ok() && ["B", "kB", "MB", "GB"].contains(&unit))
        .unwrap_or(false);
    assert!(size_ok, "{label} {what}: db size {:?}", cells[3]);
    assert_eq!(cells[4], "true", "{label} {what}: is leader");
    assert_eq!(cells[5], "false", "{label} {what}: is learner");
    for (i, name) in [
        (6, "raft term"),
        (7, "raft index"),
        (8, "raft applied index"),
    ] {
        let n: u64 = cells[i]
            .parse()
            .unwrap_or_else(|_| panic!("{label} {what}: {name} {:?}", cells[i]));
        assert!(n > 0, "{label} {what}: {name} is 0");
    }
    assert_eq!(cells[9], "", "{label} {what}: errors");
    let mut m = cells.to_vec();
    for i in [0, 1, 2, 3, 6, 7, 8] {
        m[i] = format!("<{i}>");
    }
    m
}

fn simple_cells(line: &str) -> Vec<String> {
    line.trim_end_matches('\n')
        .split(", ")
        .map(|s| s.trim().to_string())
        .collect()
}

/// Rows of an etcdctl table (header row first), cells trimmed.
fn table_rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// `endpoint status` in json, simple and table form: shape checks, then the
/// masked outputs for comparison with the other server.
async fn endpoint_status(srv: &ServerProcess, endpoint: &str) -> Vec<(String, String)> {
    let label = srv.kind().label();
    let mut out = Vec::new();

    // endpoint status -w json
    let r = etcdctl_at(
        endpoint,
        &owned(&["endpoint", "status", "-w", "json"]),
        None,
    )
    .await;
    let (ids, masked) = check_status_json(srv, endpoint, &r);
    out.push(("endpoint status -w json".into(), masked.to_string()));

    // endpoint status (simple)
    let r = etcdctl_at(endpoint, &owned(&["endpoint", "status"]), None).await;
    assert_eq!(r.exit, 0, "{label}: endpoint status: {}", show(&r));
    assert_eq!(r.stderr, "", "{label}: endpoint status stderr");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{label}: endpoint status prints one line: {}",
        show(&r)
    );
    let cells = check_status_cells(
        srv,
        endpoint,
        &simple_cells(lines[0]),
        &ids,
        "endpoint status",
    );
    out.push(("endpoint status".into(), cells.join(", ")));

    // endpoint status -w table
    let r = etcdctl_at(
        endpoint,
        &owned(&["endpoint", "status", "-w", "table"]),
        None,
    )
    .await;
    assert_eq!(r.exit, 0, "{label}: endpoint status -w table: {}", show(&r));
    let rows = table_rows(&r.stdout);
    assert_eq!(rows.len(), 2, "{label}: header + one row: {}", r.stdout);
    let cells = check_status_cells(srv, endpoint, &rows[1], &ids, "endpoint status -w table");
    out.push((
        "endpoint status -w table (header)".into(),
        rows[0].join(" | "),
    ));
    out.push(("endpoint status -w table (row)".into(), cells.join(" | ")));
    out
}

/// `member list` in json, simple and table form.
async fn member_list(srv: &ServerProcess) -> Vec<(String, String)> {
    let label = srv.kind().label();
    let mut out = Vec::new();

    // member list -w json (first: it tells the member id)
    let r = etcdctl(srv, &owned(&["member", "list", "-w", "json"]), None).await;
    let v = parse_json(&r, &format!("{label}: member list -w json"));
    let member_id = v["header"]["member_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("{label}: header.member_id: {v}"));
    assert_ne!(member_id, 0, "{label}: header.member_id");
    assert_ne!(
        v["header"]["cluster_id"].as_u64().unwrap_or(0),
        0,
        "{label}: header.cluster_id: {v}"
    );
    let members = v["members"]
        .as_array()
        .unwrap_or_else(|| panic!("{label}: members: {v}"));
    assert_eq!(members.len(), 1, "{label}: one member: {v}");
    let m = &members[0];
    assert_eq!(
        m["ID"].as_u64(),
        Some(member_id),
        "{label}: member ID == header member_id: {v}"
    );
    assert_eq!(
        m["name"],
        Value::String(MEMBER_NAME.into()),
        "{label}: name"
    );
    assert_eq!(
        m["peerURLs"],
        serde_json::json!([srv.peer_url()]),
        "{label}: peerURLs"
    );
    assert_eq!(
        m["clientURLs"],
        serde_json::json!([srv.endpoint()]),
        "{label}: clientURLs"
    );
    let mut masked: Value = serde_json::from_str(&mask_urls(r.stdout.trim(), srv)).expect("json");
    mask_json(&mut masked);
    masked["members"][0]["ID"] = Value::String("<ID>".into());
    out.push(("member list -w json".into(), masked.to_string()));

    // member list (simple): id, status, name, peer urls, client urls, is learner
    let id_hex = format!("{member_id:x}");
    let r = etcdctl(srv, &owned(&["member", "list"]), None).await;
    assert_eq!(r.exit, 0, "{label}: member list: {}", show(&r));
    let cells = simple_cells(r.stdout.trim_end());
    assert_eq!(
        cells,
        [
            id_hex.clone(),
            "started".into(),
            MEMBER_NAME.into(),
            srv.peer_url(),
            srv.endpoint(),
            "false".into()
        ],
        "{label}: member list"
    );
    out.push((
        "member list".into(),
        mask_urls(&r.stdout.replace(&id_hex, "<ID>"), srv),
    ));
    out.push(("member list (stderr)".into(), r.stderr.clone()));

    // member list -w table
    let r = etcdctl(srv, &owned(&["member", "list", "-w", "table"]), None).await;
    assert_eq!(r.exit, 0, "{label}: member list -w table: {}", show(&r));
    let rows = table_rows(&r.stdout);
    assert_eq!(rows.len(), 2, "{label}: header + one row: {}", r.stdout);
    assert_eq!(rows[1][0], id_hex, "{label}: member list table id");
    let row: Vec<String> = rows[1]
        .iter()
        .map(|c| mask_urls(&c.replace(&id_hex, "<ID>"), srv))
        .collect();
    out.push(("member list -w table (header)".into(), rows[0].join(" | ")));
    out.push(("member list -w table (row)".into(), row.join(" | ")));
    out
}

/// Starts etcd and Ballast, writes one key to each (so raft index and db
/// are past their initial state).
async fn servers_with_one_write() -> (Etcd, Ballast) {
    let (etcd, ballast) = tokio::join!(Etcd::start(), Ballast::start());
    for srv in [&*etcd, &*ballast] {
        let r = etcdctl(srv, &owned(&["put", "k", "v"]), None).await;
        assert_eq!(
            (r.exit, r.stdout.as_str()),
            (0, "OK\n"),
            "{}: put: {}",
            srv.kind().label(),
            show(&r)
        );
    }
    (etcd, ballast)
}

fn compare_masked(what: &str, e: &[(String, String)], b: &[(String, String)]) {
    let mut diffs = String::new();
    for ((name, ev), (_, bv)) in e.iter().zip(b.iter()) {
        if ev != bv {
            let _ = writeln!(diffs, "=== {name}\n etcd:    {ev}\n ballast: {bv}");
        }
    }
    assert!(diffs.is_empty(), "masked {what} differs:\n{diffs}");
}

/// `endpoint status` with `--endpoints=127.0.0.1:P`. etcdctl 3.4 dials
/// `http://` endpoints for per-endpoint calls with the whole URL as the
/// HTTP/2 authority, which the h2 crate refuses; see docs/COMPATIBILITY.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_endpoint_status() {
    let (etcd, ballast) = servers_with_one_write().await;
    let (etcd_ep, ballast_ep) = (etcd.host_port(), ballast.host_port());
    let (e, b) = tokio::join!(
        endpoint_status(&etcd, &etcd_ep),
        endpoint_status(&ballast, &ballast_ep)
    );
    compare_masked("endpoint status", &e, &b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_member_list() {
    let (etcd, ballast) = servers_with_one_write().await;
    let (e, b) = tokio::join!(member_list(&etcd), member_list(&ballast));
    compare_masked("member list", &e, &b);
}
