//! etcd's Lock service guarding a set, as jepsen-io/etcd's lock-set and
//! lock-etcd-set. Each add grants a lease kept alive in the background,
//! takes the lock `jepsen/lock` with it, reads the set, sleeps up to a
//! second, writes the set with its element, then unlocks and revokes the
//! lease. The plain variant keeps the set in memory: a holder whose lease
//! expired while it was cut off or paused still writes, over its
//! successor's adds, so a lock alone is unsafe. The fenced variant keeps the
//! set in etcd and writes only if its lock key still exists.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, LockOptions, Txn, TxnOp};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};
use tonic::Code;

use super::set::SetGenerator;
use super::{Completion, Invocation};
use crate::client::describe;

pub const LOCK_NAME: &str = "jepsen/lock";
/// The fenced variant's set, a JSON array of integers.
pub const SET_KEY: &str = "jepsen/lock-set";
const LEASE_TTL_S: i64 = 2;
const KEEP_ALIVE_PERIOD: Duration = Duration::from_millis(500);
/// Granting the lease and taking the lock; with the critical section's
/// bounds below an add ends within 13 s, before the runner's own timeout.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(8);
const STEP_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_HOLD_MS: u64 = 1_000;

pub struct LockGenerator {
    elements: SetGenerator,
    fenced: bool,
    /// The plain variant's set, shared by every worker of the run.
    memory: Mutex<BTreeSet<i64>>,
}

/// A lease being kept alive and, once acquired, the lock key it owns.
struct Held {
    lease: i64,
    key: Option<Vec<u8>>,
    keeper: JoinHandle<()>,
}

impl LockGenerator {
    pub fn new(fenced: bool) -> LockGenerator {
        LockGenerator {
            elements: SetGenerator::default(),
            fenced,
            memory: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn next(&self, rng: &mut ChaCha8Rng) -> Invocation {
        self.elements.next(rng)
    }

    pub async fn execute(&self, client: &mut Client, invocation: &Invocation) -> Completion {
        let value = invocation.value.clone();
        if invocation.f == "read" {
            if !self.fenced {
                return Completion::ok(json!(self.memory.lock().expect("in-memory set").clone()));
            }
            return match timeout(STEP_TIMEOUT, read_set(client)).await {
                Ok(Ok(set)) => Completion::ok(json!(set)),
                Ok(Err(why)) => Completion::refused(value, &why),
                Err(_) => Completion::refused(value, "timed out"),
            };
        }
        let element = value.as_i64().unwrap_or_default();
        let mut held = match grant_lease(client).await {
            Ok(held) => held,
            Err(why) => return Completion::refused(value, &why),
        };
        let completion = match take_lock(client, held.lease).await {
            Err(why) => Completion::refused(value, &why),
            Ok(key) if self.fenced => {
                let completion = add_fenced(client, &key, element, value).await;
                held.key = Some(key);
                completion
            }
            Ok(key) => {
                held.key = Some(key);
                let mut copy = self.memory.lock().expect("in-memory set").clone();
                hold_a_while().await;
                copy.insert(element);
                *self.memory.lock().expect("in-memory set") = copy;
                Completion::ok(value)
            }
        };
        release(client, held);
        completion
    }
}

async fn grant_lease(client: &mut Client) -> Result<Held, String> {
    let lease = match timeout(STEP_TIMEOUT, client.lease_grant(LEASE_TTL_S, None)).await {
        Ok(Ok(response)) => response.id(),
        Ok(Err(e)) => return Err(format!("lease grant: {}", describe(&e))),
        Err(_) => return Err("lease grant timed out".into()),
    };
    Ok(Held {
        lease,
        key: None,
        keeper: tokio::spawn(keep_alive(client.clone(), lease)),
    })
}

async fn keep_alive(mut client: Client, lease: i64) {
    let Ok((mut keeper, mut answers)) = client.lease_keep_alive(lease).await else {
        return;
    };
    let mut ticks = tokio::time::interval(KEEP_ALIVE_PERIOD);
    loop {
        tokio::select! {
            _ = ticks.tick() => if keeper.keep_alive().await.is_err() { return },
            answer = answers.message() => if !matches!(answer, Ok(Some(_))) { return },
        }
    }
}

/// Lock requests past the client's request timeout are cancelled, and the
/// server gives up the waiting key; asking again with the same lease just
/// queues again.
async fn take_lock(client: &mut Client, lease: i64) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + ACQUIRE_TIMEOUT;
    loop {
        let options = LockOptions::new().with_lease(lease);
        match timeout_at(deadline, client.lock(LOCK_NAME, Some(options))).await {
            Ok(Ok(response)) => return Ok(response.key().to_vec()),
            Ok(Err(etcd_client::Error::GRpcStatus(status)))
                if matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded)
                    && Instant::now() < deadline => {}
            Ok(Err(e)) => return Err(format!("lock: {}", describe(&e))),
            Err(_) => return Err("timed out waiting for the lock".into()),
        }
    }
}

async fn hold_a_while() {
    let pause = rand::rng().random_range(0..=MAX_HOLD_MS);
    tokio::time::sleep(Duration::from_millis(pause)).await;
}

async fn read_set(client: &mut Client) -> Result<BTreeSet<i64>, String> {
    let response = client.get(SET_KEY, None).await.map_err(|e| describe(&e))?;
    match response.kvs().first() {
        None => Ok(BTreeSet::new()),
        Some(kv) => serde_json::from_slice(kv.value()).map_err(|e| format!("not a set: {e}")),
    }
}

/// Writes the set only while the lock key exists, that is while the lease
/// that took the lock is alive.
async fn add_fenced(client: &mut Client, key: &[u8], element: i64, value: Value) -> Completion {
    let mut set = match timeout(STEP_TIMEOUT, read_set(client)).await {
        Ok(Ok(set)) => set,
        Ok(Err(why)) => return Completion::refused(value, &why),
        Err(_) => return Completion::refused(value, "read timed out"),
    };
    hold_a_while().await;
    set.insert(element);
    let txn = Txn::new()
        .when([Compare::version(key, CompareOp::Greater, 0)])
        .and_then([TxnOp::put(SET_KEY, json!(set).to_string(), None)]);
    match timeout(STEP_TIMEOUT, client.txn(txn)).await {
        Ok(Ok(response)) if response.succeeded() => Completion::ok(value),
        Ok(Ok(_)) => Completion::refused(value, "lock lost before the write"),
        Ok(Err(e)) => Completion::failed(value, &e, true),
        Err(_) => Completion {
            kind: crate::history::OpType::Info,
            value,
            error: Some("write timed out".into()),
        },
    }
}

/// Stops the keep-alives, then unlocks and revokes in the background: the
/// add's fate is already known, and the lease expires anyway if they fail.
fn release(client: &Client, held: Held) {
    held.keeper.abort();
    let mut client = client.clone();
    tokio::spawn(async move {
        if let Some(key) = held.key {
            let _ = client.unlock(key).await;
        }
        let _ = client.lease_revoke(held.lease).await;
    });
}
