//! Helpers shared by the integration tests: free loopback ports and handles
//! for `ballast` and real `etcd` processes.
//!
//! Every process runs in its own temporary directory (data dir plus one
//! stdout/stderr log pair per start), on its own loopback ports, so tests can
//! run in parallel. A handle kills its process on drop; if the test is
//! panicking at that moment, the tail of the process's stderr is printed and
//! the directory is kept for inspection.

#![allow(dead_code)]

pub mod cluster;
pub mod power_fs;
pub mod proxy;

use std::collections::HashSet;
use std::fs::File;
use std::net::TcpListener;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ballast_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ballast_proto::etcdserverpb::{StatusRequest, StatusResponse};
use tempfile::TempDir;

/// How long a server may take to become ready before the test gives up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for a single RPC in the tests (a hang guard, not a timing assertion).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// The member name every test server gets.
pub const MEMBER_NAME: &str = "n1";

/// Path of the real etcd used as the reference implementation.
pub const ETCD_BIN: &str = "/usr/bin/etcd";
/// Path of the real etcdctl.
pub const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";

/// A free TCP port on 127.0.0.1. Ports handed out by this process are never
/// handed out twice, so parallel tests in one binary cannot collide.
pub fn free_port() -> u16 {
    static USED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
    let used = used.get_or_insert_with(HashSet::new);
    // Below Linux's ephemeral range (32768 up): a port from that range can
    // be taken by some outgoing connection before the member binds it.
    loop {
        let random = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            std::time::Instant::now(),
        );
        let port = 15_000 + (random % 17_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && used.insert(port) {
            return port;
        }
    }
}

/// Which server binary a [`ServerProcess`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ballast,
    Etcd,
}

impl Kind {
    pub fn binary(self) -> PathBuf {
        match self {
            Kind::Ballast => PathBuf::from(env!("CARGO_BIN_EXE_ballast")),
            Kind::Etcd => PathBuf::from(ETCD_BIN),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Ballast => "ballast",
            Kind::Etcd => "etcd",
        }
    }
}

/// A running (or killed) single-member server process.
pub struct ServerProcess {
    kind: Kind,
    name: String,
    /// Owns the temporary directory (logs, and the data dir unless an
    /// existing one was given).
    dir: TempDir,
    data_dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    /// Number of times the process was started; names the log files.
    starts: u32,
    /// Flags appended after the standard ones (e.g. `--max-request-bytes=…`).
    extra_args: Vec<String>,
}

impl ServerProcess {
    /// Starts a server of `kind` with a fresh data dir in a fresh tempdir and
    /// waits until it is ready.
    pub async fn start(kind: Kind) -> Self {
        Self::start_with_args(kind, &[]).await
    }

    /// Like [`ServerProcess::start`], with `extra_args` appended to the
    /// standard flags (kept for restarts).
    pub async fn start_with_args(kind: Kind, extra_args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-test-", kind.label()))
            .tempdir()
            .expect("create tempdir");
        let data_dir = dir.path().join("data");
        let extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        Self::launch(kind, dir, data_dir, free_port(), free_port(), extra_args).await
    }

    /// Starts a server of `kind` on an existing data dir (which it may have
    /// created earlier with the given ports), with logs in a fresh tempdir.
    pub async fn start_on(kind: Kind, data_dir: &Path, client_port: u16, peer_port: u16) -> Self {
        Self::start_on_with_args(kind, data_dir, client_port, peer_port, &[]).await
    }

    /// Like [`ServerProcess::start_on`], with `extra_args` appended to the
    /// standard flags.
    pub async fn start_on_with_args(
        kind: Kind,
        data_dir: &Path,
        client_port: u16,
        peer_port: u16,
        extra_args: &[&str],
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-test-", kind.label()))
            .tempdir()
            .expect("create tempdir");
        Self::launch(
            kind,
            dir,
            data_dir.to_path_buf(),
            client_port,
            peer_port,
            extra_args.iter().map(|a| a.to_string()).collect(),
        )
        .await
    }

    async fn launch(
        kind: Kind,
        dir: TempDir,
        data_dir: PathBuf,
        client_port: u16,
        peer_port: u16,
        extra_args: Vec<String>,
    ) -> Self {
        let mut p = ServerProcess {
            kind,
            name: MEMBER_NAME.to_string(),
            dir,
            data_dir,
            client_port,
            peer_port,
            child: None,
            starts: 0,
            extra_args,
        };
        p.spawn();
        p.wait_ready().await;
        p
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://127.0.0.1:<client port>`, the gRPC endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `127.0.0.1:<client port>` (what etcd-client also accepts).
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:<peer port>`.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The tempdir holding the logs (and usually the data dir).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    fn args(&self) -> Vec<String> {
        let client = self.endpoint();
        let peer = self.peer_url();
        let mut args: Vec<String> = vec![
            "--name".into(),
            self.name.clone(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--listen-client-urls".into(),
            client.clone(),
            "--advertise-client-urls".into(),
            client,
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer.clone(),
            "--initial-cluster".into(),
            format!("{}={}", self.name, peer),
        ];
        args.extend(self.extra_args.iter().cloned());
        args
    }

    fn stderr_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("stderr.{start}.log"))
    }

    fn stdout_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("stdout.{start}.log"))
    }

    /// The stderr log of the current (latest) start.
    pub fn stderr_log(&self) -> PathBuf {
        self.stderr_path(self.starts)
    }

    fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "{} is already running",
            self.kind.label()
        );
        self.starts += 1;
        let stderr = File::create(self.stderr_path(self.starts)).expect("create stderr log");
        let stdout = File::create(self.stdout_path(self.starts)).expect("create stdout log");
        let mut cmd = Command::new(self.kind.binary());
        cmd.args(self.args())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        // Keep etcd-style ETCD_* variables from configuring the servers behind our back.
        for (k, _) in std::env::vars_os() {
            if let Some(k) = k.to_str()
                && k.starts_with("ETCD_")
            {
                cmd.env_remove(k);
            }
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "spawn {} ({}): {e}",
                self.kind.label(),
                self.kind.binary().display()
            )
        });
        self.child = Some(child);
    }

    /// Polls Maintenance.Status until it answers with a leader, or panics
    /// (with the server's stderr) after [`READY_TIMEOUT`] or if the process exits.
    pub async fn wait_ready(&mut self) -> StatusResponse {
        let deadline = Instant::now() + READY_TIMEOUT;
        let endpoint = self.endpoint();
        let mut last_err = String::from("no attempt yet");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "{} exited before becoming ready ({status}); last error: {last_err}\n--- stderr ({}) ---\n{}",
                        self.kind.label(),
                        self.stderr_log().display(),
                        self.stderr_tail(80)
                    );
                }
            } else {
                panic!("wait_ready on a {} that is not running", self.kind.label());
            }
            match try_status(&endpoint).await {
                Ok(resp) if resp.leader != 0 => return resp,
                Ok(resp) => last_err = format!("status answered without a leader: {resp:?}"),
                Err(e) => last_err = e,
            }
            if Instant::now() > deadline {
                panic!(
                    "{} at {endpoint} not ready after {READY_TIMEOUT:?}; last error: {last_err}\n--- stderr ({}) ---\n{}",
                    self.kind.label(),
                    self.stderr_log().display(),
                    self.stderr_tail(80)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL (std's `Child::kill` sends SIGKILL on Unix) and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; panics if the process does not exit
    /// within [`STOP_TIMEOUT`] (it is then SIGKILLed) or exits with a failure
    /// status caused by anything but the signal.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().to_string();
        let st = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill -TERM");
        assert!(st.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_status)) => return,
                Ok(None) => {}
                Err(e) => panic!("waiting for {}: {e}", self.kind.label()),
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM\n--- stderr ---\n{}",
                    self.kind.label(),
                    self.stderr_tail(80)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the process again on the same data dir and ports and waits
    /// until it is ready. The previous process must have been killed or stopped.
    pub async fn restart(&mut self) -> StatusResponse {
        assert!(
            self.child.is_none(),
            "restart: {} is still running; kill9() or stop() it first",
            self.kind.label()
        );
        self.spawn();
        self.wait_ready().await
    }

    /// The last `lines` lines of the current stderr log.
    pub fn stderr_tail(&self, lines: usize) -> String {
        tail_of(&self.stderr_log(), lines)
    }

    /// All stderr logs of all starts, concatenated (for failure messages).
    pub fn all_stderr_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for s in 1..=self.starts {
            out.push_str(&format!(
                "--- {} stderr, start #{s} ({}) ---\n",
                self.kind.label(),
                self.stderr_path(s).display()
            ));
            out.push_str(&tail_of(&self.stderr_path(s), lines));
            out.push('\n');
        }
        out
    }

    /// A raw KV client (ballast-proto's tonic client).
    pub async fn kv_client(
        &self,
    ) -> ballast_proto::etcdserverpb::kv_client::KvClient<tonic::transport::Channel> {
        ballast_proto::etcdserverpb::kv_client::KvClient::new(self.channel().await)
    }

    pub async fn maintenance_client(&self) -> MaintenanceClient<tonic::transport::Channel> {
        MaintenanceClient::new(self.channel().await)
    }

    /// A raw Watch client (ballast-proto's tonic client).
    pub async fn watch_client(
        &self,
    ) -> ballast_proto::etcdserverpb::watch_client::WatchClient<tonic::transport::Channel> {
        ballast_proto::etcdserverpb::watch_client::WatchClient::new(self.channel().await)
    }

    pub async fn cluster_client(
        &self,
    ) -> ballast_proto::etcdserverpb::cluster_client::ClusterClient<tonic::transport::Channel> {
        ballast_proto::etcdserverpb::cluster_client::ClusterClient::new(self.channel().await)
    }

    /// A connected tonic channel to the client endpoint.
    pub async fn channel(&self) -> tonic::transport::Channel {
        let ep = tonic::transport::Endpoint::from_shared(self.endpoint())
            .expect("endpoint uri")
            .connect_timeout(Duration::from_secs(5));
        tokio::time::timeout(RPC_TIMEOUT, ep.connect())
            .await
            .unwrap_or_else(|_| panic!("connect to {} timed out", self.endpoint()))
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.endpoint()))
    }

    /// A client of the real `etcd-client` crate.
    pub async fn etcd_client(&self) -> etcd_client::Client {
        let opts = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
        tokio::time::timeout(
            RPC_TIMEOUT,
            etcd_client::Client::connect([self.endpoint()], Some(opts)),
        )
        .await
        .unwrap_or_else(|_| panic!("etcd-client connect to {} timed out", self.endpoint()))
        .unwrap_or_else(|e| panic!("etcd-client connect to {}: {e}", self.endpoint()))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("{}", self.all_stderr_tails(60));
            self.dir.disable_cleanup(true);
            eprintln!(
                "--- {} test directory kept at {} (data dir {}) ---",
                self.kind.label(),
                self.dir.path().display(),
                self.data_dir.display()
            );
        }
    }
}

async fn try_status(endpoint: &str) -> Result<StatusResponse, String> {
    let ep = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2));
    let attempt = async {
        let channel = ep.connect().await.map_err(|e| format!("connect: {e}"))?;
        let mut client = MaintenanceClient::new(channel);
        client
            .status(StatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| format!("status: {:?}: {}", s.code(), s.message()))
    };
    match tokio::time::timeout(Duration::from_secs(3), attempt).await {
        Ok(r) => r,
        Err(_) => Err("status attempt timed out".into()),
    }
}

/// Strips ANSI colour escapes (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Backtrace frames and their locations: noise in a failure message.
fn is_backtrace_line(line: &str) -> bool {
    let t = line.trim_start();
    let frame = t
        .split_once(": ")
        .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    frame || t.starts_with("at /") || t.starts_with("at ./")
}

/// An excerpt of a log for failure messages: every panic message (the line
/// with "panicked at" and the one after it), then the last `lines` lines
/// without backtrace frames; ANSI colours stripped.
fn tail_of(path: &Path, lines: usize) -> String {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return format!("<cannot read {}: {e}>", path.display()),
    };
    let text = strip_ansi(&String::from_utf8_lossy(&bytes));
    let all: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for (i, line) in all.iter().enumerate() {
        if line.contains("panicked at") {
            out.push_str("[panic] ");
            out.push_str(line);
            out.push('\n');
            if let Some(next) = all.get(i + 1) {
                out.push_str("[panic] ");
                out.push_str(next);
                out.push('\n');
            }
        }
    }
    let kept: Vec<&str> = all
        .iter()
        .copied()
        .filter(|l| !is_backtrace_line(l))
        .collect();
    let from = kept.len().saturating_sub(lines);
    out.push_str(&kept[from..].join("\n"));
    out
}

/// Handle of a `ballast` process. Derefs to [`ServerProcess`].
pub struct Ballast(pub ServerProcess);

impl Ballast {
    /// Fresh data dir in a fresh tempdir; waits until ready.
    pub async fn start() -> Self {
        Ballast(ServerProcess::start(Kind::Ballast).await)
    }

    /// Fresh data dir, with `extra_args` appended to the standard flags.
    pub async fn start_with_args(extra_args: &[&str]) -> Self {
        Ballast(ServerProcess::start_with_args(Kind::Ballast, extra_args).await)
    }

    /// On an existing data dir (created earlier with these ports).
    pub async fn start_on(data_dir: &Path, client_port: u16, peer_port: u16) -> Self {
        Ballast(ServerProcess::start_on(Kind::Ballast, data_dir, client_port, peer_port).await)
    }

    /// On `data_dir`, with `extra_args` appended to the standard flags.
    pub async fn start_on_with_args(
        data_dir: &Path,
        client_port: u16,
        peer_port: u16,
        extra_args: &[&str],
    ) -> Self {
        Ballast(
            ServerProcess::start_on_with_args(
                Kind::Ballast,
                data_dir,
                client_port,
                peer_port,
                extra_args,
            )
            .await,
        )
    }
}

impl Deref for Ballast {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.0
    }
}

impl DerefMut for Ballast {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.0
    }
}

/// Handle of a real etcd 3.4 process. Derefs to [`ServerProcess`].
pub struct Etcd(pub ServerProcess);

impl Etcd {
    /// Fresh data dir in a fresh tempdir; waits until ready.
    pub async fn start() -> Self {
        Etcd(ServerProcess::start(Kind::Etcd).await)
    }

    /// Fresh data dir, with `extra_args` appended to the standard flags.
    pub async fn start_with_args(extra_args: &[&str]) -> Self {
        Etcd(ServerProcess::start_with_args(Kind::Etcd, extra_args).await)
    }

    pub async fn start_on(data_dir: &Path, client_port: u16, peer_port: u16) -> Self {
        Etcd(ServerProcess::start_on(Kind::Etcd, data_dir, client_port, peer_port).await)
    }
}

impl Deref for Etcd {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.0
    }
}

impl DerefMut for Etcd {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.0
    }
}

/// An etcdctl command with `--endpoints=<endpoint>`, ETCDCTL_API=3, no
/// other ETCDCTL_*/ETCD_* variables from the environment, and piped output.
pub fn etcdctl_command(
    endpoint: &str,
    args: &[impl AsRef<std::ffi::OsStr>],
    stdin: Stdio,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(ETCDCTL_BIN);
    cmd.arg(format!("--endpoints={endpoint}"))
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str()
            && (k.starts_with("ETCDCTL_") || k.starts_with("ETCD_"))
            && k != "ETCDCTL_API"
        {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A child's stdout as lines on a channel, and its whole stderr once it
/// ends; both pipes must have been requested.
pub fn read_output(
    child: &mut tokio::process::Child,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<String>,
    tokio::task::JoinHandle<String>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let stdout = child.stdout.take().expect("stdout pipe");
    let mut stderr = child.stderr.take().expect("stderr pipe");
    let (tx, lines_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let stderr = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    });
    (lines_rx, stderr)
}

/// `prefixEnd` as clientv3 computes it: the key with its last non-0xff byte
/// incremented and the trailing 0xff bytes dropped; `"\0"` if the key is all 0xff.
pub fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().unwrap() = last + 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// Runs `fut` with the [`RPC_TIMEOUT`] hang guard.
pub async fn guarded<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(RPC_TIMEOUT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {RPC_TIMEOUT:?}"),
    }
}
