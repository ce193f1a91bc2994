//! Clusters of `ballast` processes on loopback, bootstrapped with etcd's flags.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::Client;
use tempfile::TempDir;

use super::free_port;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}

/// A cluster of `ballast` processes bootstrapped with etcd's flags.
pub struct Cluster {
    pub members: Vec<Member>,
    initial_cluster: String,
    _dir: TempDir,
}

impl Cluster {
    pub async fn start(size: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let members: Vec<Member> = (1..=size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data_dir: dir.path().join(format!("m{i}")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            members,
            initial_cluster,
            _dir: dir,
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
        let member = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .expect("member log");
        let peer_url = format!("http://127.0.0.1:{}", member.peer_port);
        let child = Command::new(env!("CARGO_BIN_EXE_ballast"))
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &member.endpoint()])
            .args(["--advertise-client-urls", &member.endpoint()])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ballast");
        self.members[i].child = Some(child);
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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
