//! Workloads: what each worker asks of the cluster, how each request is
//! executed against one member, and what the final reads are.
//!
//! Value shapes in the history, per workload:
//! - register (`read`, `write`, `cas`): `{"key","value","version"}`,
//!   `{"key","value"}`, `{"key","from","to"}`; completions add what was
//!   observed.
//! - append and wr (`txn`): Elle's micro-operations,
//!   `[["append", k, v], ["r", k, [..]]]` and `[["w", k, v], ["r", k, v]]`.
//! - set, lock-set and lock-fenced-set (`add`, `read`): the element; the
//!   elements read.
//! - watch (`put`): `{"key","value"}`, completed with the revision.
//! - lease (`grant`, `revoke`, `read`): `{"key","mode","ttl"}` completed
//!   with `"lease"`, the granted `"ttl"` and the `"term"`;
//!   `{"lease","key"}` completed with the `"term"`; `null` completed with
//!   `{"keys","revision","term"}`.

pub mod append;
pub mod lease;
pub mod lock;
pub mod register;
pub mod set;
pub mod watch;

use etcd_client::Client;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::checker::lease::KeptLease;
use crate::client::Recorder;
use crate::history::OpType;

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadName {
    Register,
    Append,
    Wr,
    Set,
    LockSet,
    LockFencedSet,
    Watch,
    Lease,
}

impl WorkloadName {
    pub fn name(self) -> &'static str {
        match self {
            WorkloadName::Register => "register",
            WorkloadName::Append => "append",
            WorkloadName::Wr => "wr",
            WorkloadName::Set => "set",
            WorkloadName::LockSet => "lock-set",
            WorkloadName::LockFencedSet => "lock-fenced-set",
            WorkloadName::Watch => "watch",
            WorkloadName::Lease => "lease",
        }
    }
}

/// An operation a worker is about to send.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub f: &'static str,
    pub value: Value,
}

/// What became of it.
#[derive(Clone, Debug)]
pub struct Completion {
    pub kind: OpType,
    pub value: Value,
    pub error: Option<String>,
}

impl Completion {
    pub fn ok(value: Value) -> Completion {
        Completion {
            kind: OpType::Ok,
            value,
            error: None,
        }
    }

    /// A request that failed: definitely not applied when `writes` is
    /// false (a read) or when the error table says so.
    pub fn failed(value: Value, error: &etcd_client::Error, writes: bool) -> Completion {
        let kind = if writes {
            crate::client::classify_write_error(error)
        } else {
            OpType::Fail
        };
        Completion {
            kind,
            value,
            error: Some(crate::client::describe(error)),
        }
    }

    /// A compare that did not hold: the transaction did nothing, and what
    /// it compared was not as expected during its interval (no error, which
    /// the linearizability checker reads as that observation).
    pub fn compare_failed(value: Value) -> Completion {
        Completion {
            kind: OpType::Fail,
            value,
            error: None,
        }
    }

    /// A request that was refused or never sent: it did nothing.
    pub fn refused(value: Value, why: &str) -> Completion {
        Completion {
            kind: OpType::Fail,
            value,
            error: Some(why.to_string()),
        }
    }
}

/// Generates the next invocation. Shared by all workers; each worker brings
/// its own seeded random source.
pub enum Generator {
    Register(register::RegisterGenerator),
    Append(append::AppendGenerator),
    Set(set::SetGenerator),
    Lock(lock::LockGenerator),
    Watch(watch::WatchGenerator),
    Lease(lease::LeaseGenerator),
}

impl Generator {
    /// `urls` and `recorder` serve the work a workload does beside its
    /// workers' operations (the lease workload's keep-alives).
    pub fn new(workload: WorkloadName, urls: &[String], recorder: &Recorder) -> Generator {
        match workload {
            WorkloadName::Register => Generator::Register(register::RegisterGenerator::default()),
            WorkloadName::Append => Generator::Append(append::AppendGenerator::new(false)),
            WorkloadName::Wr => Generator::Append(append::AppendGenerator::new(true)),
            WorkloadName::Set => Generator::Set(set::SetGenerator::default()),
            WorkloadName::LockSet => Generator::Lock(lock::LockGenerator::new(false)),
            WorkloadName::LockFencedSet => Generator::Lock(lock::LockGenerator::new(true)),
            WorkloadName::Watch => Generator::Watch(watch::WatchGenerator::default()),
            WorkloadName::Lease => Generator::Lease(lease::LeaseGenerator::new(urls, recorder)),
        }
    }

    /// Sends one invocation through `client`; never retries a write.
    pub async fn execute(&self, client: &mut Client, invocation: &Invocation) -> Completion {
        match self {
            Generator::Register(_) => register::execute(client, invocation).await,
            Generator::Append(g) => append::execute(client, invocation, g.registers()).await,
            Generator::Set(_) => set::execute(client, invocation).await,
            Generator::Lock(g) => g.execute(client, invocation).await,
            Generator::Watch(_) => watch::execute(client, invocation).await,
            Generator::Lease(g) => lease::execute(g, client, invocation).await,
        }
    }

    /// Reads to run on every member after healing: they tell the checker
    /// what finally survived.
    pub fn final_reads(&self) -> Vec<Invocation> {
        match self {
            Generator::Register(g) => g.final_reads(),
            Generator::Set(_) | Generator::Lock(_) | Generator::Lease(_) => vec![Invocation {
                f: "read",
                value: Value::Null,
            }],
            Generator::Append(_) | Generator::Watch(_) => Vec::new(),
        }
    }

    pub fn next(&self, rng: &mut ChaCha8Rng) -> Invocation {
        match self {
            Generator::Register(g) => g.next(rng),
            Generator::Append(g) => g.next(rng),
            Generator::Set(g) => g.next(rng),
            Generator::Lock(g) => g.next(rng),
            Generator::Watch(g) => g.next(rng),
            Generator::Lease(g) => g.next(rng),
        }
    }

    /// Ends the work done beside the workers, before the final reads: the
    /// lease workload's keep-alives, whose logs it returns.
    pub async fn stop_keepalives(&self) -> Option<Vec<KeptLease>> {
        match self {
            Generator::Lease(g) => Some(g.stop_keepalives().await),
            _ => None,
        }
    }
}
