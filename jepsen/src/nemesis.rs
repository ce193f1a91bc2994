//! Faults, scheduled from the run's seed: every interval the nemesis picks
//! one of the enabled faults, starts it, lets it act for an interval, heals
//! it, and waits an interval. At the end everything is healed.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, CompactionOptions};
use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tokio::time::Instant;

use crate::client::{Recorder, connect, describe};
use crate::db::{Cluster, EXPECTED_FAILURES_BEGIN, EXPECTED_FAILURES_END, Target};
use crate::history::{MEMBERS_STARTED, OpType, Process};
use crate::sandbox::Sandbox;

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NemesisName {
    /// Network partitions: one node, majority/minority, majorities ring,
    /// the leader alone, a bridge.
    Partition,
    /// kill -9 of one node, a majority, all, or the leader; restarted when
    /// healed.
    Kill,
    /// SIGSTOP of one node, a majority, or the leader; SIGCONT when healed.
    Pause,
    /// 20% packet loss between members.
    Loss,
    /// A member removed (its data dir wiped) and added again.
    Member,
    /// Compaction to the current revision, physical.
    Compact,
    /// A member restarted under libfaketime with its clock moved and sped
    /// up (Ballast only: etcd's Go runtime reads the clock without libc).
    Clock,
    /// A minority member stopped, bits flipped in or bytes cut from one of
    /// its WAL or snapshot files, and started again.
    Corrupt,
}

impl NemesisName {
    pub fn name(self) -> &'static str {
        match self {
            NemesisName::Partition => "partition",
            NemesisName::Kill => "kill",
            NemesisName::Pause => "pause",
            NemesisName::Loss => "loss",
            NemesisName::Member => "member",
            NemesisName::Compact => "compact",
            NemesisName::Clock => "clock",
            NemesisName::Corrupt => "corrupt",
        }
    }
}

/// A fault in force, and what healing it takes.
enum Active {
    Network(NemesisName),
    Killed(Vec<usize>),
    Paused(Vec<usize>),
    Removed(usize),
    Clock(usize),
    Corrupted(usize),
}

pub struct Nemesis {
    pub cluster: Arc<Mutex<Cluster>>,
    pub sandbox: Arc<Sandbox>,
    pub recorder: Recorder,
    pub rng: ChaCha8Rng,
    pub enabled: Vec<NemesisName>,
    pub interval: Duration,
    /// Compaction never goes above this revision (the watch workload keeps
    /// it below what every recorder has confirmed).
    pub compact_ceiling: Arc<AtomicI64>,
}

impl Nemesis {
    /// Runs faults until `until`, then heals everything.
    pub async fn run(mut self, until: Instant) {
        let mut active = None;
        if !self.enabled.is_empty() {
            self.sleep_until_or(until, self.interval).await;
            while Instant::now() < until {
                let kind = self.enabled[self.rng.random_range(0..self.enabled.len())];
                if kind == NemesisName::Compact {
                    self.compact().await;
                } else {
                    active = self.start(kind).await;
                    self.sleep_until_or(until, self.interval).await;
                    if let Some(fault) = active.take() {
                        self.stop(fault).await;
                    }
                }
                self.sleep_until_or(until, self.interval).await;
            }
        }
        if let Some(fault) = active {
            self.stop(fault).await;
        }
        self.heal_all().await;
    }

    async fn sleep_until_or(&self, until: Instant, interval: Duration) {
        tokio::time::sleep_until(until.min(Instant::now() + interval)).await;
    }

    fn log(&self, kind: OpType, f: &str, value: Value) {
        self.recorder
            .record(kind, Process::Nemesis, f, value, None, None);
    }

    /// Records that member processes started again (see
    /// [`MEMBERS_STARTED`]).
    fn log_started(&self, nodes: &[usize]) {
        if !nodes.is_empty() {
            self.log(OpType::Info, MEMBERS_STARTED, Value::String(names(nodes)));
        }
    }

    fn members(&self) -> Vec<usize> {
        (1..=self.sandbox.members()).collect()
    }

    async fn start(&mut self, kind: NemesisName) -> Option<Active> {
        let f = format!("start-{}", kind.name());
        self.log(OpType::Invoke, &f, Value::Null);
        let (description, active) = match kind {
            NemesisName::Partition => self.partition().await,
            NemesisName::Loss => self.loss(),
            NemesisName::Kill => self.kill().await,
            NemesisName::Pause => self.pause().await,
            NemesisName::Member => self.remove_member().await,
            NemesisName::Clock => self.skew_clock(),
            NemesisName::Corrupt => self.corrupt(),
            NemesisName::Compact => unreachable!("compaction is instantaneous"),
        };
        self.log(OpType::Info, &f, Value::String(description));
        active
    }

    async fn stop(&mut self, fault: Active) {
        let f = match &fault {
            Active::Network(kind) => format!("stop-{}", kind.name()),
            Active::Killed(_) => "stop-kill".into(),
            Active::Paused(_) => "stop-pause".into(),
            Active::Removed(_) => "stop-member".into(),
            Active::Clock(_) => "stop-clock".into(),
            Active::Corrupted(_) => "stop-corrupt".into(),
        };
        self.log(OpType::Invoke, &f, Value::Null);
        let description = match fault {
            Active::Network(_) => {
                self.heal_network();
                "healed the network".to_string()
            }
            Active::Killed(nodes) => self.restart(&nodes),
            Active::Paused(nodes) => {
                let mut cluster = self.cluster.lock().expect("cluster");
                for &n in &nodes {
                    let _ = cluster.resume(n);
                }
                format!("resumed {}", names(&nodes))
            }
            Active::Removed(node) => self.add_member(node).await,
            Active::Clock(node) => {
                let mut cluster = self.cluster.lock().expect("cluster");
                cluster.set_environment(node, Vec::new());
                let _ = tokio::task::block_in_place(|| cluster.kill(node));
                drop(cluster);
                format!(
                    "clock of n{node} back to real time: {}",
                    self.restart(&[node])
                )
            }
            Active::Corrupted(node) => self.recover_corrupted(node).await,
        };
        self.log(OpType::Info, &f, Value::String(description));
    }

    async fn partition(&mut self) -> (String, Option<Active>) {
        let mut nodes = self.members();
        nodes.shuffle(&mut self.rng);
        let n = nodes.len();
        let majority = n / 2 + 1;
        // For each node, the nodes it hears from.
        let mut hears: Vec<(usize, Vec<usize>)> = Vec::new();
        let shape = match self.rng.random_range(0..5) {
            0 => "one",
            1 => "majority",
            // A ring needs at least 4 nodes: with 3, every symmetric ring
            // of majorities is the whole cluster.
            2 if n >= 4 => "majorities-ring",
            2 | 3 => "leader",
            _ => "bridge",
        };
        let components = |groups: &[Vec<usize>]| -> Vec<(usize, Vec<usize>)> {
            groups
                .iter()
                .flat_map(|g| g.iter().map(|&m| (m, g.clone())))
                .collect()
        };
        match shape {
            "one" => hears = components(&[nodes[..1].to_vec(), nodes[1..].to_vec()]),
            "majority" => {
                hears = components(&[nodes[..majority].to_vec(), nodes[majority..].to_vec()])
            }
            "majorities-ring" => {
                // Each node hears a majority centred on itself in a ring, so
                // no two nodes hear the same majority. Centred windows keep
                // the relation symmetric, which TCP needs: a link works
                // only if both ends hear each other.
                for (i, &m) in nodes.iter().enumerate() {
                    let view = (0..majority)
                        .map(|k| nodes[(i + n - majority / 2 + k) % n])
                        .collect();
                    hears.push((m, view));
                }
            }
            "leader" => {
                let leader = self.leader().await.unwrap_or(nodes[0]);
                let rest: Vec<usize> = nodes.iter().copied().filter(|&m| m != leader).collect();
                hears = components(&[vec![leader], rest]);
            }
            _ => {
                let (left, rest) = nodes.split_at((n - 1) / 2);
                let (bridge, right) = rest.split_at(1);
                for &m in left {
                    hears.push((m, [left, bridge].concat()));
                }
                for &m in right {
                    hears.push((m, [right, bridge].concat()));
                }
                hears.push((bridge[0], nodes.clone()));
            }
        }
        hears.sort();
        let mut parts = Vec::new();
        for (member, view) in &hears {
            let blocked: Vec<usize> = nodes
                .iter()
                .copied()
                .filter(|m| !view.contains(m))
                .collect();
            if blocked.is_empty() {
                continue;
            }
            self.drop_from(*member, &blocked, None);
            parts.push(format!("n{member} drops {}", names(&blocked)));
        }
        (
            format!("partition {shape}: {}", parts.join("; ")),
            Some(Active::Network(NemesisName::Partition)),
        )
    }

    fn loss(&mut self) -> (String, Option<Active>) {
        let members = self.members();
        for &m in &members {
            let others: Vec<usize> = members.iter().copied().filter(|&o| o != m).collect();
            self.drop_from(m, &others, Some(20));
        }
        (
            "loss: 20% of packets between members dropped".into(),
            Some(Active::Network(NemesisName::Loss)),
        )
    }

    /// Drops, in `member`'s namespace, packets from the given peers (all of
    /// them, or `percent` of them at random). Client traffic from the
    /// harness is never dropped.
    fn drop_from(&self, member: usize, peers: &[usize], percent: Option<u8>) {
        let addresses = peers
            .iter()
            .map(|&p| self.sandbox.member_address(p).to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let sample = percent.map_or(String::new(), |p| format!("numgen random mod 100 < {p} "));
        let script = format!(
            "add table inet jepsen; \
             add chain inet jepsen input {{ type filter hook input priority 0; policy accept; }}; \
             add rule inet jepsen input ip saddr {{ {addresses} }} {sample}drop"
        );
        if let Err(e) = tokio::task::block_in_place(|| self.sandbox.nft(member, &script)) {
            self.log(OpType::Info, "nemesis-error", Value::String(e.to_string()));
        }
    }

    fn heal_network(&self) {
        for m in self.members() {
            let _ = tokio::task::block_in_place(|| self.sandbox.nft(m, "flush ruleset"));
        }
    }

    fn targets(&mut self, leader: Option<usize>, allow_all: bool) -> (String, Vec<usize>) {
        let mut nodes = self.members();
        nodes.shuffle(&mut self.rng);
        let majority = nodes.len() / 2 + 1;
        let choices = if allow_all { 4 } else { 3 };
        match self.rng.random_range(0..choices) {
            0 => ("one".into(), nodes[..1].to_vec()),
            1 => ("majority".into(), nodes[..majority].to_vec()),
            2 => ("leader".into(), vec![leader.unwrap_or(nodes[0])]),
            _ => ("all".into(), nodes),
        }
    }

    async fn kill(&mut self) -> (String, Option<Active>) {
        let leader = self.leader().await;
        let (shape, nodes) = self.targets(leader, true);
        let mut cluster = self.cluster.lock().expect("cluster");
        for &n in &nodes {
            let _ = tokio::task::block_in_place(|| cluster.kill(n));
        }
        (
            format!("kill {shape}: {}", names(&nodes)),
            Some(Active::Killed(nodes)),
        )
    }

    fn restart(&self, nodes: &[usize]) -> String {
        let mut cluster = self.cluster.lock().expect("cluster");
        let mut errors = Vec::new();
        let mut started = Vec::new();
        for &n in nodes {
            if cluster.is_running(n) {
                continue;
            }
            match tokio::task::block_in_place(|| cluster.restart(n)) {
                Ok(()) => started.push(n),
                Err(e) => errors.push(format!("n{n}: {e}")),
            }
        }
        self.log_started(&started);
        if errors.is_empty() {
            format!("restarted {}", names(nodes))
        } else {
            format!("restart failed: {}", errors.join("; "))
        }
    }

    async fn pause(&mut self) -> (String, Option<Active>) {
        let leader = self.leader().await;
        let (shape, nodes) = self.targets(leader, false);
        let mut cluster = self.cluster.lock().expect("cluster");
        for &n in &nodes {
            let _ = cluster.pause(n);
        }
        (
            format!("pause {shape}: {}", names(&nodes)),
            Some(Active::Paused(nodes)),
        )
    }

    fn skew_clock(&mut self) -> (String, Option<Active>) {
        if self.cluster.lock().expect("cluster").target() == Target::Etcd {
            return (
                "clock: n/a for etcd (Go reads the clock without libc, so libfaketime cannot move it)".into(),
                None,
            );
        }
        if !Path::new(LIBFAKETIME).exists() {
            return (
                format!("clock: {LIBFAKETIME} is not installed (package libfaketime)"),
                None,
            );
        }
        let node = self.rng.random_range(1..=self.sandbox.members());
        let offset =
            self.rng.random_range(10..=300) * if self.rng.random_bool(0.5) { 1 } else { -1 };
        let rate = if self.rng.random_bool(0.5) { "1" } else { "2" };
        let spec = format!("{offset:+} x{rate}");
        let mut cluster = self.cluster.lock().expect("cluster");
        cluster.set_environment(
            node,
            vec![
                ("LD_PRELOAD".into(), LIBFAKETIME.into()),
                ("FAKETIME".into(), spec),
            ],
        );
        let _ = tokio::task::block_in_place(|| cluster.kill(node));
        drop(cluster);
        let restarted = self.restart(&[node]);
        (
            format!("clock of n{node} moved {offset:+} s, running x{rate}: {restarted}"),
            Some(Active::Clock(node)),
        )
    }

    /// Damages one WAL or snapshot file of one member of a minority while
    /// it is stopped, then starts it again.
    fn corrupt(&mut self) -> (String, Option<Active>) {
        let minority = (self.sandbox.members() - 1) / 2;
        if minority == 0 {
            return ("corrupt: no minority to damage".into(), None);
        }
        let node = self.rng.random_range(1..=self.sandbox.members());
        let mut cluster = self.cluster.lock().expect("cluster");
        let _ = tokio::task::block_in_place(|| cluster.kill(node));
        let data_dir = cluster.member(node).data_dir.clone();
        drop(cluster);
        let damage = damage_one_file(&data_dir, &mut self.rng)
            .unwrap_or_else(|e| format!("nothing damaged ({e})"));
        let _ = self
            .cluster
            .lock()
            .expect("cluster")
            .annotate_log(node, EXPECTED_FAILURES_BEGIN);
        let restarted = self.restart(&[node]);
        (
            format!("corrupt n{node}: {damage}; {restarted}"),
            Some(Active::Corrupted(node)),
        )
    }

    /// A member that refused to start on its damaged files is replaced as
    /// an operator would: removed, wiped, added back empty.
    async fn recover_corrupted(&mut self, node: usize) -> String {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let exited = {
            let mut cluster = self.cluster.lock().expect("cluster");
            let exited = cluster.has_exited(node);
            let _ = cluster.annotate_log(node, EXPECTED_FAILURES_END);
            exited
        };
        let Some(status) = exited else {
            return format!("n{node} runs on its damaged files");
        };
        let (removed, active) = self.remove_member_named(node).await;
        let added = match active {
            Some(Active::Removed(node)) => self.add_member(node).await,
            _ => String::new(),
        };
        format!("n{node} refused to start on its damaged files ({status}); {removed}; {added}")
    }

    /// Removes a member through another one, stops it and wipes its data.
    async fn remove_member(&mut self) -> (String, Option<Active>) {
        let members = self.members();
        let victim = members[self.rng.random_range(0..members.len())];
        self.remove_member_named(victim).await
    }

    async fn remove_member_named(&mut self, victim: usize) -> (String, Option<Active>) {
        let members = self.members();
        let Some(mut client) = self.client_other_than(victim).await else {
            return ("member remove: no member answered".into(), None);
        };
        let id = match client.member_list().await {
            Ok(list) => list
                .members()
                .iter()
                .find(|m| m.name() == format!("n{victim}"))
                .map(|m| m.id()),
            Err(e) => return (format!("member list failed: {}", describe(&e)), None),
        };
        let Some(id) = id else {
            return (format!("n{victim} is not a member"), None);
        };
        if let Err(e) = client.member_remove(id).await {
            // The answer may be lost while the removal was applied: the
            // membership says which.
            if self.is_member(victim).await != Some(false) {
                return (
                    format!("member remove n{victim} failed: {}", describe(&e)),
                    None,
                );
            }
        }
        let mut cluster = self.cluster.lock().expect("cluster");
        let _ = tokio::task::block_in_place(|| cluster.kill(victim));
        let wiped = tokio::task::block_in_place(|| cluster.wipe(victim));
        let remaining = members.into_iter().filter(|&m| m != victim).collect();
        cluster.set_membership(remaining);
        let note = wiped
            .err()
            .map_or(String::new(), |e| format!(" (wipe failed: {e})"));
        (
            format!("removed n{victim} and wiped its data{note}"),
            Some(Active::Removed(victim)),
        )
    }

    async fn add_member(&mut self, node: usize) -> String {
        let peer_url = self.cluster.lock().expect("cluster").peer_url(node);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(mut client) = self.client_other_than(node).await {
                match client.member_add([peer_url.as_str()], None).await {
                    Ok(_) => break,
                    // An earlier attempt whose answer was lost was applied.
                    Err(e) if describe(&e).contains("already exists") => break,
                    Err(e) if Instant::now() > deadline => {
                        return format!("member add n{node} failed: {}", describe(&e));
                    }
                    Err(_) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut cluster = self.cluster.lock().expect("cluster");
        cluster.set_membership(self.members());
        match tokio::task::block_in_place(|| cluster.restart(node)) {
            Ok(()) => {
                self.log_started(&[node]);
                format!("added n{node} back and restarted it with an empty data dir")
            }
            Err(e) => format!("n{node} added but did not start: {e}"),
        }
    }

    /// Whether the cluster's membership lists the node's peer URL; None
    /// when no member answers.
    async fn is_member(&self, node: usize) -> Option<bool> {
        let peer_url = self.cluster.lock().expect("cluster").peer_url(node);
        let mut client = self.client_other_than(node).await?;
        let list = client.member_list().await.ok()?;
        Some(
            list.members()
                .iter()
                .any(|m| m.peer_urls().contains(&peer_url)),
        )
    }

    async fn compact(&mut self) {
        self.log(OpType::Invoke, "compact", Value::Null);
        let members = self.members();
        let via = members[self.rng.random_range(0..members.len())];
        let description = match self.compact_via(via).await {
            Ok(revision) => format!("compacted to {revision} via n{via}"),
            Err(e) => format!("compaction via n{via} failed: {e}"),
        };
        self.log(OpType::Info, "compact", Value::String(description));
    }

    async fn compact_via(&self, via: usize) -> anyhow::Result<i64> {
        let url = self.cluster.lock().expect("cluster").client_url(via);
        let mut client = connect(&url).await?;
        let revision = client.status().await?.header().map_or(0, |h| h.revision());
        let target = revision.min(self.compact_ceiling.load(Ordering::SeqCst));
        if target <= 1 {
            anyhow::bail!("nothing to compact (revision {target})");
        }
        client
            .compact(target, Some(CompactionOptions::new().with_physical()))
            .await
            .map_err(|e| anyhow::anyhow!(describe(&e)))?;
        Ok(target)
    }

    /// The member every running member that answers names as leader.
    async fn leader(&self) -> Option<usize> {
        for m in self.members() {
            let url = self.cluster.lock().expect("cluster").client_url(m);
            let Ok(mut client) = connect(&url).await else {
                continue;
            };
            let Ok(status) = client.status().await else {
                continue;
            };
            let leader_id = status.leader();
            if let Ok(list) = client.member_list().await
                && let Some(member) = list.members().iter().find(|x| x.id() == leader_id)
            {
                return member.name().trim_start_matches('n').parse().ok();
            }
        }
        None
    }

    async fn client_other_than(&self, excluded: usize) -> Option<Client> {
        for m in self.members() {
            if m == excluded {
                continue;
            }
            let url = self.cluster.lock().expect("cluster").client_url(m);
            if let Ok(mut client) = connect(&url).await
                && client.status().await.is_ok()
            {
                return Some(client);
            }
        }
        None
    }

    /// Heals every fault: network rules removed, paused members resumed,
    /// stopped members started.
    pub async fn heal_all(&mut self) {
        self.log(OpType::Invoke, "heal", Value::Null);
        self.heal_network();
        let removed = self.cluster.lock().expect("cluster").removed_members();
        let mut readded = Vec::new();
        for node in removed {
            readded.push(self.add_member(node).await);
        }
        let stopped: Vec<usize> = {
            let mut cluster = self.cluster.lock().expect("cluster");
            cluster.exited();
            for m in self.members() {
                if cluster.is_paused(m) {
                    let _ = cluster.resume(m);
                }
            }
            self.members()
                .into_iter()
                .filter(|&m| !cluster.is_running(m))
                .collect()
        };
        let mut description = if stopped.is_empty() {
            "healed".to_string()
        } else {
            format!("healed; {}", self.restart(&stopped))
        };
        for note in readded {
            description.push_str("; ");
            description.push_str(&note);
        }
        self.log(OpType::Info, "heal", Value::String(description));
    }
}

/// Debian's libfaketime, preloaded into a member to move its clocks.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Flips bits in (p = 1e-4 per bit, at least one) or cuts up to 1 KiB from
/// the end of one random non-empty file under member/wal or member/snap.
fn damage_one_file(data_dir: &Path, rng: &mut ChaCha8Rng) -> anyhow::Result<String> {
    let mut files = Vec::new();
    for dir in ["member/wal", "member/snap"] {
        let Ok(entries) = std::fs::read_dir(data_dir.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let metadata = entry.metadata()?;
            if metadata.is_file() && metadata.len() > 0 {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no WAL or snapshot file");
    let file = &files[rng.random_range(0..files.len())];
    let mut bytes = std::fs::read(file)?;
    let what = if rng.random_bool(0.5) {
        let cut = rng.random_range(1..=bytes.len().min(1024));
        bytes.truncate(bytes.len() - cut);
        format!("cut {cut} bytes from the end of")
    } else {
        let bits = bytes.len() as u64 * 8;
        let flips = (bits / 10_000).clamp(1, 10_000);
        for _ in 0..flips {
            let bit = rng.random_range(0..bits);
            bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
        }
        format!("flipped {flips} bits in")
    };
    std::fs::write(file, &bytes)?;
    Ok(format!("{what} {}", file.display()))
}

fn names(nodes: &[usize]) -> String {
    nodes
        .iter()
        .map(|n| format!("n{n}"))
        .collect::<Vec<_>>()
        .join(",")
}
