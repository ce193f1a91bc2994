//! `ballastctl` must print what `etcdctl` 3.4 prints.
//!
//! The same command sequence runs twice: with etcdctl against a fresh real
//! etcd, then with ballastctl against another fresh etcd on the same ports
//! with the same member name. etcd derives member and cluster IDs from those,
//! so both servers report the same IDs, terms and revisions, and every
//! step's stdout, `Error:` lines and exit code must match byte for byte.

use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ballast_client::{Client, GetOptions};

const ETCD: &str = "/usr/bin/etcd";
const ETCDCTL: &str = "/usr/bin/etcdctl";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Polling interval while waiting for etcd; readiness itself is observed.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// A single-member etcd in its own temporary directory, killed on drop.
struct Etcd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Etcd {
    fn start(client_port: u16, peer_port: u16) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("ballastctl-cli-")
            .tempdir()
            .expect("tempdir");
        let log = File::create(dir.path().join("etcd.log")).expect("create etcd.log");
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new(ETCD)
            .arg("--name=n1")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=n1={peer_url}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        let mut etcd = Etcd { child, dir };
        etcd.wait_ready(&client_url, &peer_url);
        etcd
    }

    /// Waits until this etcd (not some other process that happens to hold
    /// the port) lists itself as member and serves a linearizable read.
    fn wait_ready(&mut self, client_url: &str, peer_url: &str) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait etcd") {
                panic!(
                    "etcd exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            let ready = runtime.block_on(async {
                let attempt = async {
                    let client = Client::connect(&[client_url], Duration::from_secs(1))
                        .await
                        .ok()?;
                    let members = client.member_list().await.ok()?;
                    let ours = members.members.iter().any(|m| m.peer_ur_ls == [peer_url]);
                    client.get("health", GetOptions::default()).await.ok()?;
                    Some(ours)
                };
                tokio::time::timeout(Duration::from_secs(2), attempt)
                    .await
                    .ok()
                    .flatten()
            });
            match ready {
                Some(true) => return,
                Some(false) => panic!("another server answers on {client_url}"),
                None if Instant::now() > deadline => {
                    panic!("etcd not ready after {READY_TIMEOUT:?}:\n{}", self.log())
                }
                None => std::thread::sleep(POLL_INTERVAL),
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One command line, with the standard input it gets.
struct Step {
    /// `None` for the live etcd alone.
    endpoints: Option<String>,
    args: Vec<String>,
    stdin: &'static str,
    /// etcd's database file grows with the timing of its background commits,
    /// so `endpoint status` output is compared with the sizes masked.
    mask_db_size: bool,
}

fn step(args: &[&str]) -> Step {
    Step {
        endpoints: None,
        args: args.iter().map(|a| a.to_string()).collect(),
        stdin: "",
        mask_db_size: false,
    }
}

fn step_with_input(args: &[&str], stdin: &'static str) -> Step {
    Step {
        stdin,
        ..step(args)
    }
}

fn status_step(endpoints: Option<&str>, args: &[&str]) -> Step {
    Step {
        endpoints: endpoints.map(str::to_string),
        mask_db_size: true,
        ..step(args)
    }
}

/// What is compared: stdout, the error lines of stderr (etcdctl also logs
/// retries there as JSON) and the exit code.
#[derive(Debug, PartialEq)]
struct Outcome {
    stdout: String,
    errors: Vec<String>,
    code: Option<i32>,
}

fn run(tool: &Path, live: &str, step: &Step) -> Outcome {
    let mut command = Command::new(tool);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ETCDCTL_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .env("ETCDCTL_API", "3")
        .arg(format!(
            "--endpoints={}",
            step.endpoints.as_deref().unwrap_or(live)
        ))
        .args(&step.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", tool.display()));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(step.stdin.as_bytes())
        .expect("write stdin");
    let output = child.wait_with_output().expect("wait for command");
    // Lossy, so that a mismatch in binary output still shows readably.
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    Outcome {
        stdout: if step.mask_db_size {
            mask_db_size(&stdout)
        } else {
            stdout
        },
        errors: String::from_utf8_lossy(&output.stderr)
            .lines()
            .filter(|l| l.starts_with("Error:") || l.starts_with("Failed to get"))
            .map(str::to_string)
            .collect(),
        code: output.status.code(),
    }
}

/// The sequence, written against etcd's data as it evolves: revisions in
/// `--rev` and `compaction` refer to the writes above them.
fn steps(dead: &str, live: &str) -> Vec<Step> {
    let both = format!("{dead},{live}");
    vec![
        step(&["put", "foo", "bar"]),
        step(&["put", "foo2", "hello world"]),
        step(&["put", "foo", "baz", "--prev-kv"]),
        step(&["put", "foo", "qux", "--prev-kv", "-w", "json"]),
        step(&["put", "--", "dash", "-v"]),
        step(&["put", "foo", "bar", "--prev-kv", "--hex"]),
        step_with_input(&["put", "piped"], "from stdin\n"),
        step(&["put", "k", "v", "--lease=zz"]),
        step(&["put", "k", "v", "--lease=1"]),
        step(&["put", "k", "v", "--ignore-value"]),
        step(&["get", "foo"]),
        step(&["get", "foo", "-w", "json"]),
        step(&["get", "f", "--prefix"]),
        step(&["get", "f", "--prefix", "--keys-only", "-w", "json"]),
        step(&["get", "", "--prefix", "--keys-only"]),
        step(&["get", "a", "--from-key", "--print-value-only"]),
        step(&["get", "foo", "--hex"]),
        step(&["get", "foo", "--rev", "2"]),
        step(&[
            "get",
            "a",
            "z",
            "--sort-by=MODIFY",
            "--order=DESCEND",
            "--limit=1",
            "-w",
            "json",
        ]),
        step(&["get", "a", "z", "--sort-by=value", "--order=ascend"]),
        step(&["get", "foo", "--consistency=s"]),
        step(&["get", "piped"]),
        step(&["get", "foo", "--rev", "1000"]),
        step(&["get", "foo", "-w", "table"]),
        step(&["get", "foo", "--print-value-only", "-w", "json"]),
        step(&["get", "foo", "--sort-by=bogus"]),
        step(&["get", "foo", "--consistency=x"]),
        step(&["get", "a", "--prefix", "--from-key"]),
        step(&["get", "a", "b", "--prefix"]),
        step_with_input(
            &["txn"],
            "mod(\"foo\") > \"0\"\nvalue(\"foo\") = \"bar\"\n\nput foo new --prev-kv\nget foo\ndel nope\nget f --prefix --keys-only\n\nput a b\n\n",
        ),
        step_with_input(
            &["txn", "-w", "json"],
            "ver(\"foo\") = \"1\"\nc(\"foo\") < \"100\"\n\nput never x\n\nput \"bin key\" \"a\\x00b\\\"c\"\nget \"bin key\"\ndel foo2 --prev-kv\n\n",
        ),
        step_with_input(
            &["txn", "-i"],
            "m(\"foo\") != \"0\"\n\nget foo --print-value-only\n\n\n",
        ),
        step_with_input(&["txn"], "mod(\"foo\")>\"0\"\n\n\n\n"),
        step_with_input(&["txn"], "mod(\"foo\") > \"x\"\n\n\n\n"),
        step_with_input(&["txn"], "size(\"foo\") > \"1\"\n\n\n\n"),
        step_with_input(&["txn"], "\n\nput\n\n\n"),
        step_with_input(&["txn"], "\n\nput foo\n\n\n"),
        step_with_input(&["txn"], "\n\nget a --prefix --from-key\n\n\n"),
        step_with_input(&["txn"], "\n\nput foo x\n"),
        step(&["del", "nothing"]),
        step(&["del", "nothing", "-w", "json"]),
        step(&["del", "piped", "--prev-kv"]),
        step(&["del", "f", "--prefix", "--prev-kv", "-w", "json"]),
        step(&["del", "a", "--prefix", "--from-key"]),
        step(&["compaction", "5"]),
        step(&["get", "foo", "--rev", "2"]),
        step(&["compaction", "5"]),
        step(&["compaction", "abc"]),
        step(&["compaction", "9", "--physical"]),
        step(&["member", "list"]),
        step(&["member", "list", "-w", "json"]),
        step(&["member", "list", "-w", "table"]),
        status_step(None, &["endpoint", "status"]),
        status_step(None, &["endpoint", "status", "-w", "table"]),
        status_step(None, &["endpoint", "status", "-w", "json"]),
        // An unreachable endpoint: skipped when another answers, an error
        // when it is the only one (etcdctl waits out the command timeout).
        Step {
            endpoints: Some(both.clone()),
            ..step(&["get", "foo"])
        },
        Step {
            endpoints: Some(dead.to_string()),
            ..step(&["get", "foo", "--command-timeout=1s"])
        },
        status_step(Some(&both), &["endpoint", "status", "--command-timeout=1s"]),
    ]
}

/// Replaces the database sizes in `endpoint status` output (simple, table
/// or JSON) with placeholders.
fn mask_db_size(stdout: &str) -> String {
    if let Ok(mut statuses) = serde_json::from_str::<serde_json::Value>(stdout) {
        for entry in statuses.as_array_mut().into_iter().flatten() {
            if let Some(status) = entry.get_mut("Status").and_then(|s| s.as_object_mut()) {
                status.remove("dbSize");
                status.remove("dbSizeInUse");
            }
        }
        return format!("{statuses}\n");
    }
    let mut masked = String::new();
    for line in stdout.lines() {
        let line = if line.starts_with('+') || line.contains("DB SIZE") {
            line.to_string()
        } else if line.starts_with('|') {
            let mut cells: Vec<String> = line.split('|').map(str::to_string).collect();
            cells[4] = "*".repeat(cells[4].len());
            cells.join("|")
        } else {
            let mut fields: Vec<&str> = line.split(", ").collect();
            fields[3] = "*";
            fields.join(", ")
        };
        masked.push_str(&line);
        masked.push('\n');
    }
    masked
}

#[test]
fn ballastctl_prints_what_etcdctl_prints() {
    for binary in [ETCD, ETCDCTL] {
        if !Path::new(binary).exists() {
            eprintln!("skipping: {binary} is not installed");
            return;
        }
    }
    let (client_port, peer_port) = (free_port(), free_port());
    let live = format!("127.0.0.1:{client_port}");
    let dead = format!("127.0.0.1:{}", free_port());
    let steps = steps(&dead, &live);

    let run_all = |tool: &Path| -> Vec<Outcome> {
        let _etcd = Etcd::start(client_port, peer_port);
        steps.iter().map(|s| run(tool, &live, s)).collect()
    };
    let expected = run_all(Path::new(ETCDCTL));
    let actual = run_all(Path::new(env!("CARGO_BIN_EXE_ballastctl")));

    let mut mismatches = Vec::new();
    for ((step, want), got) in steps.iter().zip(&expected).zip(&actual) {
        if want != got {
            mismatches.push(format!(
                "`{}` (endpoints {}, stdin {:?}):\n  etcdctl:    {want:?}\n  ballastctl: {got:?}",
                step.args.join(" "),
                step.endpoints.as_deref().unwrap_or(&live),
                step.stdin
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} steps differ:\n{}",
        mismatches.len(),
        steps.len(),
        mismatches.join("\n")
    );
    // Guard against a vacuous pass, e.g. both tools failing to connect.
    let get_foo = steps
        .iter()
        .position(|s| s.endpoints.is_none() && s.args == ["get", "foo"]);
    assert_eq!(
        expected[get_foo.expect("a plain `get foo` step")].stdout,
        "foo\nbar\n"
    );
}
