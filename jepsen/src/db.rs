//! The cluster under test: Ballast or etcd members, each started in its own
//! network namespace through the same code with the same etcd flags, so the
//! two targets differ only in the binary.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::sandbox::Sandbox;

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Ballast,
    Etcd,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Ballast => "ballast",
            Target::Etcd => "etcd",
        }
    }
}

/// How each member is started, besides its identity.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub target: Target,
    pub binary: PathBuf,
    /// Raft snapshots every this many entries: small, so that snapshot
    /// installation on a member that fell behind is exercised.
    pub snapshot_count: u64,
    /// Extra environment per member (libfaketime's, for clock faults).
    /// Environment rather than a wrapper command, so that the process the
    /// harness signals is the server itself.
    pub environment: Vec<Vec<(String, String)>>,
}

pub struct Member {
    pub index: usize,
    pub name: String,
    pub data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

pub struct Cluster {
    options: ClusterOptions,
    sandbox_member_namespaces: Vec<String>,
    addresses: Vec<String>,
    members: Vec<Member>,
    /// Members currently in the cluster's membership (a removed member
    /// rejoins with the others as its `--initial-cluster`).
    initial_cluster: Vec<usize>,
    crashes: Vec<String>,
}

/// Brackets, in a member's log, a start on deliberately damaged files:
/// refusing to start there (even with a fatal log line) is correct.
pub const EXPECTED_FAILURES_BEGIN: &str = "ballast-jepsen: starting on damaged files";
pub const EXPECTED_FAILURES_END: &str = "ballast-jepsen: damaged start over";

impl Cluster {
    pub fn new(sandbox: &Sandbox, options: ClusterOptions, run_dir: &Path) -> Cluster {
        let members = (1..=sandbox.members())
            .map(|index| Member {
                index,
                name: format!("n{index}"),
                data_dir: run_dir.join("data").join(format!("n{index}")),
                log: run_dir.join(format!("n{index}.log")),
                child: None,
                paused: false,
            })
            .collect();
        Cluster {
            options,
            sandbox_member_namespaces: (1..=sandbox.members())
                .map(|m| sandbox.member_namespace(m))
                .collect(),
            addresses: (1..=sandbox.members())
                .map(|m| sandbox.member_address(m).to_string())
                .collect(),
            members,
            initial_cluster: (1..=sandbox.members()).collect(),
            crashes: Vec::new(),
        }
    }

    pub fn target(&self) -> Target {
        self.options.target
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    pub fn member(&self, index: usize) -> &Member {
        &self.members[index - 1]
    }

    pub fn client_url(&self, index: usize) -> String {
        format!("http://{}:{CLIENT_PORT}", self.addresses[index - 1])
    }

    pub fn peer_url(&self, index: usize) -> String {
        format!("http://{}:{PEER_PORT}", self.addresses[index - 1])
    }

    pub fn logs(&self) -> Vec<PathBuf> {
        self.members.iter().map(|m| m.log.clone()).collect()
    }

    pub fn is_running(&self, index: usize) -> bool {
        self.members[index - 1].child.is_some()
    }

    pub fn is_paused(&self, index: usize) -> bool {
        self.members[index - 1].paused
    }

    /// Starts every member of a new cluster.
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for index in 1..=self.size() {
            self.start(index, "new")?;
        }
        Ok(())
    }

    /// Starts a member again on its data dir after a kill.
    pub fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        self.start(index, "existing")
    }

    /// Extra environment for the member from its next start on.
    pub fn set_environment(&mut self, index: usize, environment: Vec<(String, String)>) {
        if self.options.environment.len() < self.size() {
            self.options.environment.resize(self.size(), Vec::new());
        }
        self.options.environment[index - 1] = environment;
    }

    /// Whether the member exited by itself since it was started; reaps it.
    pub fn has_exited(&mut self, index: usize) -> Option<String> {
        let member = &mut self.members[index - 1];
        let status = member.child.as_mut()?.try_wait().ok()??;
        member.child = None;
        Some(status.to_string())
    }

    /// Members taken out of the membership and not added back.
    pub fn removed_members(&self) -> Vec<usize> {
        (1..=self.size())
            .filter(|m| !self.initial_cluster.contains(m))
            .collect()
    }

    pub fn set_membership(&mut self, members: Vec<usize>) {
        self.initial_cluster = members;
    }

    fn start(&mut self, index: usize, state: &str) -> anyhow::Result<()> {
        if self.members[index - 1].child.is_some() {
            bail!("n{index} is already running");
        }
        let initial_cluster = self
            .initial_cluster
            .iter()
            .map(|&m| format!("n{m}={}", self.peer_url(m)))
            .collect::<Vec<_>>()
            .join(",");
        let member = &self.members[index - 1];
        std::fs::create_dir_all(member.data_dir.parent().unwrap_or(Path::new(".")))?;
        let log = open_log(&member.log)?;
        let environment = self
            .options
            .environment
            .get(index - 1)
            .cloned()
            .unwrap_or_default();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.sandbox_member_namespaces[index - 1]])
            .envs(environment)
            .arg(&self.options.binary)
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &self.client_url(index)])
            .args(["--advertise-client-urls", &self.client_url(index)])
            .args(["--listen-peer-urls", &self.peer_url(index)])
            .args(["--initial-advertise-peer-urls", &self.peer_url(index)])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "ballast-jepsen"])
            .args(["--snapshot-count", &self.options.snapshot_count.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("starting n{index}"))?;
        let member = &mut self.members[index - 1];
        member.child = Some(child);
        member.paused = false;
        Ok(())
    }

    /// kill -9. `ip netns exec` execs the server, so the child's pid is the
    /// server's own.
    pub fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        let member = &mut self.members[index - 1];
        if let Some(mut child) = member.child.take() {
            child.kill().with_context(|| format!("killing n{index}"))?;
            child.wait()?;
        }
        member.paused = false;
        Ok(())
    }

    pub fn pause(&mut self, index: usize) -> anyhow::Result<()> {
        self.signal(index, Signal::SIGSTOP)?;
        self.members[index - 1].paused = true;
        Ok(())
    }

    pub fn resume(&mut self, index: usize) -> anyhow::Result<()> {
        self.signal(index, Signal::SIGCONT)?;
        self.members[index - 1].paused = false;
        Ok(())
    }

    fn signal(&self, index: usize, signal: Signal) -> anyhow::Result<()> {
        let member = &self.members[index - 1];
        let Some(child) = &member.child else {
            return Ok(());
        };
        let pid = i32::try_from(child.id())?;
        kill(Pid::from_raw(pid), signal).with_context(|| format!("{signal} to n{index}"))
    }

    /// Removes a stopped member's data dir, as after a member is removed.
    pub fn wipe(&mut self, index: usize) -> anyhow::Result<()> {
        let member = &self.members[index - 1];
        if member.child.is_some() {
            bail!("n{index} must be stopped before its data dir is wiped");
        }
        match std::fs::remove_dir_all(&member.data_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Every member process that exited on its own (a crash) so far: name
    /// and exit status. Reaps them, so that healing starts them again.
    pub fn exited(&mut self) -> Vec<String> {
        for member in &mut self.members {
            if let Some(child) = &mut member.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.crashes
                    .push(format!("{} exited by itself: {status}", member.name));
                member.child = None;
            }
        }
        self.crashes.clone()
    }

    /// Writes a line of the harness's own into a member's log: marks where
    /// failures to start are expected (see `crash_lines`).
    pub fn annotate_log(&self, index: usize, line: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut log = open_log(&self.members[index - 1].log)?;
        writeln!(log, "{line}")?;
        Ok(())
    }

    /// Stops every member (resuming paused ones first so they can die).
    pub fn stop_all(&mut self) {
        for index in 1..=self.size() {
            let _ = self.resume(index);
            let _ = self.kill(index);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn open_log(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Log lines that show a member crashed, as Jepsen's crash checker greps
/// etcd's logs: fatal or panic levels, Go and Rust panics, signals.
pub fn crash_lines(logs: &[PathBuf]) -> Vec<String> {
    let mut found = Vec::new();
    for log in logs {
        let Ok(text) = std::fs::read_to_string(log) else {
            continue;
        };
        let name = log
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut expected = false;
        for line in text.lines() {
            if line == EXPECTED_FAILURES_BEGIN || line == EXPECTED_FAILURES_END {
                expected = line == EXPECTED_FAILURES_BEGIN;
                continue;
            }
            if expected {
                continue;
            }
            let crashed = line.contains("\"level\":\"fatal\"")
                || line.contains("\"level\":\"panic\"")
                || line.starts_with("panic:")
                || line.contains("panicked at")
                || line.starts_with("signal SIG");
            if crashed {
                found.push(format!("{name}: {line}"));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_lines_skip_only_starts_on_damaged_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("n2.log");
        let text = [
            "thread 'main' panicked at src/a.rs:1:1",
            EXPECTED_FAILURES_BEGIN,
            r#"{"level":"fatal","msg":"failed to read WAL"}"#,
            EXPECTED_FAILURES_END,
            r#"{"level":"info","msg":"ready"}"#,
            r#"{"level":"panic","msg":"bad"}"#,
        ]
        .join("\n");
        std::fs::write(&log, text).unwrap();
        let lines = crash_lines(&[log]);
        assert_eq!(
            lines,
            vec![
                "n2: thread 'main' panicked at src/a.rs:1:1".to_string(),
                r#"n2: {"level":"panic","msg":"bad"}"#.to_string(),
            ]
        );
    }
}
