//! One test run: a sandbox and a cluster, workers and the nemesis for the
//! time limit, healing, a recovery window, final reads, and the members'
//! end state. The checking is in `crate::check`, so that `check DIR` gives
//! the same answer later.

use std::path::PathBuf;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

use crate::checker::watch::{RecordedWatch, WatchEvent};
use crate::client::{REQUEST_TIMEOUT, Recorder, connect};
use crate::db::{Cluster, ClusterOptions, Target};
use crate::history::{OpType, Process};
use crate::nemesis::{Nemesis, NemesisName};
use crate::results::{self, MemberState, RunConfig};
use crate::sandbox::{self, Sandbox};
use crate::watcher::{self, WatchState};
use crate::workload::{Completion, Generator, Invocation, WorkloadName};

pub const MEMBERS_FILE: &str = "members.json";
/// The lease workload's keep-alive logs (`crate::checker::lease::KeptLease`).
pub const LEASES_FILE: &str = "leases.json";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const FINAL_READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct TestOptions {
    pub target: Target,
    pub binary: PathBuf,
    pub workload: WorkloadName,
    pub nemeses: Vec<NemesisName>,
    pub time_limit: Duration,
    pub nodes: usize,
    pub rate: f64,
    pub concurrency: usize,
    pub seed: u64,
    pub out: PathBuf,
    pub nemesis_interval: Duration,
    pub recovery: Duration,
    pub snapshot_count: u64,
    pub command: String,
}

/// Runs the test and leaves its history, config and member states in
/// `options.out`. Needs root; refuses to run outside its sandbox.
pub fn run(options: &TestOptions) -> anyhow::Result<()> {
    if let Some(reason) = sandbox::unavailable_reason() {
        bail!("cannot run: {reason}");
    }
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    let tag = format!("{:x}{:04x}", std::process::id(), options.seed & 0xffff);
    let sandbox = Arc::new(Sandbox::create(&tag, options.nodes)?);
    // The run lives on its own thread: it enters the sandbox before its
    // runtime starts, so every socket the run opens is inside it.
    let outcome = std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<()> {
                sandbox.enter()?;
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                runtime.block_on(execute(Arc::clone(&sandbox), options))
            })
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the run panicked")))
    });
    // The run's own error matters more than a failed teardown.
    let teardown = sandbox.destroy();
    outcome?;
    teardown
}

async fn execute(sandbox: Arc<Sandbox>, options: &TestOptions) -> anyhow::Result<()> {
    let cluster_options = ClusterOptions {
        target: options.target,
        binary: options.binary.clone(),
        snapshot_count: options.snapshot_count,
        environment: Vec::new(),
    };
    let cluster = Arc::new(Mutex::new(Cluster::new(
        &sandbox,
        cluster_options,
        &options.out,
    )));
    tokio::task::block_in_place(|| cluster.lock().expect("cluster").start_all())?;
    let urls: Vec<String> = (1..=options.nodes)
        .map(|m| cluster.lock().expect("cluster").client_url(m))
        .collect();
    let version = wait_ready(&urls).await?;
    let started_at_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    let recorder = Recorder::new();
    let generator = Arc::new(Generator::new(options.workload, &urls, &recorder));
    let deadline = Instant::now() + options.time_limit;
    let compact_ceiling = Arc::new(AtomicI64::new(i64::MAX));

    // Read before any worker starts: every put of the run must come after
    // the first revision the watchers and the replay start from.
    let watch_state = match options.workload {
        WorkloadName::Watch => {
            let first = current_revision(&urls[0]).await? + 1;
            Some(Arc::new(WatchState::new(
                first,
                options.nodes,
                Arc::clone(&compact_ceiling),
            )))
        }
        _ => None,
    };
    let mut workers = Vec::new();
    for index in 0..options.concurrency {
        let node = index % options.nodes + 1;
        let worker = Worker {
            index,
            concurrency: options.concurrency,
            node: format!("n{node}"),
            url: urls[node - 1].clone(),
            generator: Arc::clone(&generator),
            recorder: recorder.clone(),
            rng: ChaCha8Rng::seed_from_u64(
                options.seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9),
            ),
            mean_pause: Duration::from_secs_f64(options.concurrency as f64 / options.rate),
        };
        workers.push(tokio::spawn(worker.run(deadline)));
    }
    let mut recorders = Vec::new();
    let mut random_watchers = None;
    if let Some(state) = &watch_state {
        for (member, url) in urls.iter().enumerate() {
            recorders.push(tokio::spawn(watcher::record_member(
                member,
                url.clone(),
                Arc::clone(state),
                recorder.clone(),
            )));
        }
        random_watchers = Some(tokio::spawn(watcher::random_watchers(
            urls.clone(),
            Arc::clone(state),
            recorder.clone(),
            options.seed,
            deadline,
        )));
    }
    let nemesis = Nemesis {
        cluster: Arc::clone(&cluster),
        sandbox: Arc::clone(&sandbox),
        recorder: recorder.clone(),
        rng: ChaCha8Rng::seed_from_u64(options.seed),
        enabled: options.nemeses.clone(),
        interval: options.nemesis_interval,
        compact_ceiling: Arc::clone(&compact_ceiling),
    };
    let nemesis = tokio::spawn(nemesis.run(deadline));
    for worker in workers {
        worker.await?;
    }
    nemesis.await?;
    tokio::time::sleep(options.recovery).await;
    if let Some(kept) = generator.stop_keepalives().await {
        results::write_json(&options.out.join(LEASES_FILE), &kept)?;
    }

    let reads = generator.final_reads();
    final_reads(&generator, &reads, &urls, &recorder, options.concurrency).await;
    let members = member_states(&urls).await;
    if let Some(state) = &watch_state {
        let mut watches = Vec::new();
        let final_revision = members.iter().map(|m| m.revision).max().unwrap_or(0);
        state.finish_at(final_revision);
        for task in recorders {
            watches.extend(task.await?);
        }
        if let Some(task) = random_watchers {
            watches.extend(task.await?);
        }
        let compacted = members
            .iter()
            .map(|m| m.compact_revision)
            .max()
            .unwrap_or(0);
        let from = state.first_revision.max(compacted);
        let mut replays = Vec::new();
        for (member, url) in urls.iter().enumerate() {
            let node = format!("n{}", member + 1);
            let events = watcher::replay(url, &node, from, final_revision, &recorder).await;
            replays.push((node, events));
        }
        let record = WatchRecord {
            first_revision: state.first_revision,
            final_revision,
            watches,
            replays,
        };
        results::write_json(&options.out.join(results::WATCHES_FILE), &record)?;
    }
    let crashed = cluster.lock().expect("cluster").exited();
    tokio::task::block_in_place(|| cluster.lock().expect("cluster").stop_all());

    let config = RunConfig {
        target: options.target.name().into(),
        target_version: version,
        workload: options.workload.name().into(),
        nemeses: options
            .nemeses
            .iter()
            .map(|n| n.name().to_string())
            .collect(),
        seed: options.seed,
        time_limit_s: options.time_limit.as_secs(),
        nodes: options.nodes,
        rate: options.rate,
        concurrency: options.concurrency,
        nemesis_interval_s: options.nemesis_interval.as_secs_f64(),
        started_at_unix_s,
        command: options.command.clone(),
    };
    let out = &options.out;
    results::write_json(&out.join(results::CONFIG_FILE), &config)?;
    crate::history::write_jsonl(&out.join(results::HISTORY_FILE), &recorder.take())?;
    results::write_json(&out.join(MEMBERS_FILE), &(members, crashed))?;
    Ok(())
}

async fn current_revision(url: &str) -> anyhow::Result<i64> {
    let mut client = connect(url).await?;
    let response = client.get("jepsen/ready", None).await?;
    Ok(response.header().map_or(0, |h| h.revision()))
}

/// What the watch workload's watchers saw, and each member's history
/// read after healing: `watches.json`.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct WatchRecord {
    pub first_revision: i64,
    pub final_revision: i64,
    pub watches: Vec<RecordedWatch>,
    pub replays: Vec<(String, Vec<WatchEvent>)>,
}

/// Waits until every member serves a linearizable read; returns the
/// server's version as its Status reports it.
async fn wait_ready(urls: &[String]) -> anyhow::Result<String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut version = String::new();
    for url in urls {
        loop {
            let attempt = async {
                let mut client = connect(url).await?;
                client.get("jepsen/ready", None).await?;
                Ok::<_, etcd_client::Error>(client.status().await?.version().to_string())
            };
            match attempt.await {
                Ok(v) => {
                    version = v;
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    bail!("{url} not ready after {READY_TIMEOUT:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    Ok(version)
}

struct Worker {
    index: usize,
    concurrency: usize,
    node: String,
    url: String,
    generator: Arc<Generator>,
    recorder: Recorder,
    rng: ChaCha8Rng,
    mean_pause: Duration,
}

impl Worker {
    async fn run(mut self, deadline: Instant) {
        let mut process = self.index as u64;
        let mut client = None;
        loop {
            let pause = self.mean_pause.mul_f64(self.rng.random_range(0.0..2.0));
            if Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            let invocation = self.generator.next(&mut self.rng);
            if client.is_none() {
                client = connect(&self.url).await.ok();
            }
            let completion = perform(
                &self.generator,
                client.as_mut(),
                &invocation,
                &self.recorder,
                process,
                &self.node,
            )
            .await;
            // A process whose last operation's fate is unknown may still be
            // running it: Jepsen retires it and continues under a new id.
            if completion.kind == OpType::Info {
                process += self.concurrency as u64;
            }
        }
    }
}

async fn perform(
    generator: &Generator,
    client: Option<&mut etcd_client::Client>,
    invocation: &Invocation,
    recorder: &Recorder,
    process: u64,
    node: &str,
) -> Completion {
    let process_id = Process::Client(process);
    recorder.record(
        OpType::Invoke,
        process_id,
        invocation.f,
        invocation.value.clone(),
        None,
        Some(node),
    );
    let completion = match client {
        None => Completion::refused(invocation.value.clone(), "could not connect"),
        Some(client) => {
            // The set workload's add may take several round trips.
            match tokio::time::timeout(3 * REQUEST_TIMEOUT, generator.execute(client, invocation))
                .await
            {
                Ok(completion) => completion,
                Err(_) => Completion {
                    kind: OpType::Info,
                    value: invocation.value.clone(),
                    error: Some("timed out".into()),
                },
            }
        }
    };
    recorder.record(
        completion.kind,
        process_id,
        invocation.f,
        completion.value.clone(),
        completion.error.clone(),
        Some(node),
    );
    completion
}

/// Each final read on each member, retried until it succeeds or the
/// deadline passes. Reads change nothing, so retrying them is safe.
async fn final_reads(
    generator: &Generator,
    reads: &[Invocation],
    urls: &[String],
    recorder: &Recorder,
    first_process: usize,
) {
    let deadline = Instant::now() + FINAL_READ_TIMEOUT;
    let mut process = first_process as u64 + 1_000_000;
    for (member, url) in urls.iter().enumerate() {
        let node = format!("n{}", member + 1);
        for read in reads {
            loop {
                let mut client = connect(url).await.ok();
                let done =
                    perform(generator, client.as_mut(), read, recorder, process, &node).await;
                process += 1;
                if done.kind == OpType::Ok || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Every member's revision, compact revision and HashKV at the lowest
/// revision any member reports.
async fn member_states(urls: &[String]) -> Vec<MemberState> {
    let mut revisions = Vec::new();
    for url in urls {
        let revision = async {
            let mut client = connect(url).await?;
            client.get("jepsen/ready", None).await?;
            let status = client.status().await?;
            Ok::<_, etcd_client::Error>(status.header().map_or(0, |h| h.revision()))
        };
        revisions.push(revision.await);
    }
    let common = revisions
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .copied()
        .min()
        .unwrap_or(0);
    let mut states = Vec::new();
    for (member, (url, revision)) in urls.iter().zip(revisions).enumerate() {
        let name = format!("n{}", member + 1);
        let hashed = async {
            let mut client = connect(url).await?;
            client.hash_kv(common).await
        };
        let state = match (revision, hashed.await) {
            (Ok(revision), Ok(hash)) => MemberState {
                name,
                revision,
                compact_revision: hash.compact_version(),
                hash: Some(hash.hash()),
                error: None,
            },
            (Err(e), _) | (_, Err(e)) => MemberState {
                name,
                revision: 0,
                compact_revision: 0,
                hash: None,
                error: Some(crate::client::describe(&e)),
            },
        };
        states.push(state);
    }
    states
}
