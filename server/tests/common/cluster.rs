//! Clusters of `ballast` processes on loopback, bootstrapped with etcd's flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use etcd_client::Client;
use tempfile::TempDir;

use super::free_port;
use super::proxy::{PeerProxies, member_address};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Member {
    name: String,
    client_port: u16,
    /// The peer URL the member listens on.
    listen_peer_url: String,
    /// The peer URL other members reach it by (a proxy when partitionable).
    peer_url: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> &str {
        &self.peer_url
    }
}

/// A cluster of `ballast` processes bootstrapped with etcd's flags.
pub struct Cluster {
    pub members: Vec<Member>,
    initial_cluster: String,
    /// Flags every member gets after the standard ones.
    extra_args: Vec<String>,
    /// The peer-link proxies of a partitionable cluster.
    pub proxies: Option<PeerProxies>,
    dir: TempDir,
}

impl Cluster {
    pub async fn start(size: usize) -> Self {
        Self::start_with(size, &[], false).await
    }

    /// A cluster whose members get `extra_args`, with its peer links
    /// running through [`PeerProxies`] if `partitionable`.
    pub async fn start_with(size: usize, extra_args: &[&str], partitionable: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut proxy_ports = Vec::new();
        let mut targets: Vec<SocketAddr> = Vec::new();
        let members: Vec<Member> = (1..=size)
            .map(|i| {
                let peer_port = free_port();
                let listen_peer_url = if partitionable {
                    let target = SocketAddr::new(member_address(i - 1), free_port());
                    targets.push(target);
                    proxy_ports.push(peer_port);
                    format!("http://{target}")
                } else {
                    format!("http://127.0.0.1:{peer_port}")
                };
                Member {
                    name: format!("m{i}"),
                    client_port: free_port(),
                    listen_peer_url,
                    peer_url: format!("http://127.0.0.1:{peer_port}"),
                    data_dir: dir.path().join(format!("m{i}")),
                    log: dir.path().join(format!("m{i}.log")),
                    child: None,
                }
            })
            .collect();
        let proxies = if partitionable {
            Some(PeerProxies::start(&proxy_ports, &targets).await)
        } else {
            None
        };
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            members,
            initial_cluster,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            proxies,
            dir,
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        for i in 0..size {
            cluster.client(i).await;
        }
        cluster
    }

    pub fn spawn(&mut self, i: usize) {
        let initial_cluster = self.initial_cluster.clone();
        self.launch(i, &initial_cluster, "new");
    }

    fn launch(&mut self, i: usize, initial_cluster: &str, state: &str) {
        let member = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .expect("member log");
        let child = Command::new(env!("CARGO_BIN_EXE_ballast"))
            // A member's panic message, not a backtrace, belongs in the log tail.
            .env("RUST_BACKTRACE", "0")
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &member.endpoint()])
            .args(["--advertise-client-urls", &member.endpoint()])
            .args(["--listen-peer-urls", &member.listen_peer_url])
            .args(["--initial-advertise-peer-urls", &member.peer_url])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ballast");
        self.members[i].child = Some(child);
    }

    /// A new member's slot (not started): its peer URL is what `member add` takes.
    pub fn new_member(&mut self) -> usize {
        let i = self.members.len() + 1;
        let peer_port = free_port();
        self.members.push(Member {
            name: format!("m{i}"),
            client_port: free_port(),
            listen_peer_url: format!("http://127.0.0.1:{peer_port}"),
            peer_url: format!("http://127.0.0.1:{peer_port}"),
            data_dir: self.dir.path().join(format!("m{i}")),
            log: self.dir.path().join(format!("m{i}.log")),
            child: None,
        });
        i - 1
    }

    /// Starts member `i` with `--initial-cluster-state existing`, listing
    /// every running member and itself, as `etcdctl member add` prints.
    pub fn spawn_joining(&mut self, i: usize) {
        let initial_cluster = self
            .members
            .iter()
            .enumerate()
            .filter(|(j, m)| *j == i || m.child.is_some())
            .map(|(_, m)| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        self.launch(i, &initial_cluster, "existing");
    }

    /// Waits for member `i` to exit on its own.
    pub async fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let child = self.members[i].child.as_mut()?;
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.members[i].child = None;
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops member `i` in place (SIGSTOP): it keeps its connections but
    /// answers nothing until [`Cluster::resume`].
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.members[i].child.as_ref().expect("member running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Everything member `i` logged.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let text = std::fs::read_to_string(&m.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                format!(
                    "--- {} ---\n{}",
                    m.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A client of member `i`, once it answers Status (it opens its client
    /// port only when it can serve).
    pub async fn client(&self, i: usize) -> Client {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(mut client) = Client::connect([self.members[i].endpoint()], None).await
                && client.status().await.is_ok()
            {
                return client;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "member {i} not serving after {READY_TIMEOUT:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The index of the member that reports itself as leader.
    pub async fn leader(&self) -> usize {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            let status = self.client(i).await.status().await.expect("status");
            if status.leader() == status.header().expect("header").member_id() {
                return i;
            }
        }
        panic!("no member reports itself leader\n{}", self.logs());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
    }
}
