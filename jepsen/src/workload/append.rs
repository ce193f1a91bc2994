//! Elle's transactional workloads. list-append (`append`): each key holds a
//! list, appends are unique per key, and a transaction that writes first
//! reads the keys it writes and then commits guarded by their mod
//! revisions, as jepsen-io/etcd's append workload does. rw-register (`wr`):
//! one Txn of gets and puts in order, no guards.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::{Completion, Invocation};

const ACTIVE_KEYS: usize = 3;
const WRITES_PER_KEY: u64 = 32;
const MAX_TXN_LENGTH: usize = 4;
pub const KEY_PREFIX: &str = "jepsen/a/";

pub struct AppendGenerator {
    registers: bool,
    keys: Mutex<KeyPool>,
}

struct KeyPool {
    active: Vec<u64>,
    next_key: u64,
    /// Per active key: the number of writes issued, which is also the next
    /// unique element.
    writes: BTreeMap<u64, u64>,
}

impl AppendGenerator {
    /// `registers` selects rw-register (`wr`) instead of list-append.
    pub fn new(registers: bool) -> AppendGenerator {
        AppendGenerator {
            registers,
            keys: Mutex::new(KeyPool {
                active: (0..ACTIVE_KEYS as u64).collect(),
                next_key: ACTIVE_KEYS as u64,
                writes: BTreeMap::new(),
            }),
        }
    }

    pub fn registers(&self) -> bool {
        self.registers
    }

    pub fn next(&self, rng: &mut ChaCha8Rng) -> Invocation {
        let mut pool = self.keys.lock().expect("key pool");
        let length = rng.random_range(1..=MAX_TXN_LENGTH);
        let mut written = BTreeSet::new();
        let mut mops = Vec::with_capacity(length);
        for _ in 0..length {
            let slot = rng.random_range(0..pool.active.len());
            let key = pool.active[slot];
            // etcd refuses a Txn that puts one key twice, so a wr txn
            // writes each key at most once.
            let may_write = !self.registers || !written.contains(&key);
            if may_write && rng.random_bool(0.5) {
                let count = pool.writes.entry(key).or_insert(0);
                *count += 1;
                let element = *count;
                written.insert(key);
                let verb = if self.registers { "w" } else { "append" };
                mops.push(json!([verb, key, element]));
                if element >= WRITES_PER_KEY {
                    pool.writes.remove(&key);
                    let fresh = pool.next_key;
                    pool.next_key += 1;
                    pool.active[slot] = fresh;
                }
            } else {
                mops.push(json!(["r", key, null]));
            }
        }
        Invocation {
            f: "txn",
            value: Value::Array(mops),
        }
    }
}

fn etcd_key(key: u64) -> String {
    format!("{KEY_PREFIX}{key}")
}

/// A list as stored: elements separated by spaces.
fn decode_list(text: &str) -> Vec<u64> {
    text.split_whitespace()
        .filter_map(|e| e.parse().ok())
        .collect()
}

fn encode_list(list: &[u64]) -> String {
    list.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

struct Mop {
    verb: String,
    key: u64,
    element: u64,
}

fn parse_mops(value: &Value) -> Vec<Mop> {
    value
        .as_array()
        .map(|mops| {
            mops.iter()
                .map(|mop| Mop {
                    verb: mop[0].as_str().unwrap_or_default().to_string(),
                    key: mop[1].as_u64().unwrap_or_default(),
                    element: mop[2].as_u64().unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs one transaction; `registers` selects rw-register (`wr`).
pub async fn execute(client: &mut Client, invocation: &Invocation, registers: bool) -> Completion {
    let mops = parse_mops(&invocation.value);
    let value = &invocation.value;
    if registers {
        return execute_registers(client, &mops, value).await;
    }
    let written: BTreeSet<u64> = mops
        .iter()
        .filter(|m| m.verb == "append")
        .map(|m| m.key)
        .collect();
    if written.is_empty() {
        return read_only(client, &mops, value).await;
    }
    // Step 1: the current lists and mod revisions of the keys to write.
    let reads = Txn::new().and_then(
        written
            .iter()
            .map(|&k| TxnOp::get(etcd_key(k), None))
            .collect::<Vec<_>>(),
    );
    let response = match client.txn(reads).await {
        Ok(response) => response,
        Err(e) => return Completion::failed(value.clone(), &e, false),
    };
    let mut lists: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut guards = Vec::new();
    for (&key, op) in written.iter().zip(response.op_responses()) {
        let TxnOpResponse::Get(get) = op else {
            return Completion::refused(value.clone(), "unexpected txn response");
        };
        match get.kvs().first() {
            Some(kv) => {
                lists.insert(key, decode_list(kv.value_str().unwrap_or_default()));
                guards.push(Compare::mod_revision(
                    etcd_key(key),
                    CompareOp::Equal,
                    kv.mod_revision(),
                ));
            }
            None => {
                lists.insert(key, Vec::new());
                guards.push(Compare::version(etcd_key(key), CompareOp::Equal, 0));
            }
        }
    }
    // Step 2: the micro-operations, guarded. Reads of written keys are known
    // from step 1 (the guards make them current); other reads go in the Txn.
    let mut completed = Vec::with_capacity(mops.len());
    let mut remote_reads = Vec::new();
    let mut ops = Vec::new();
    for (position, mop) in mops.iter().enumerate() {
        match (mop.verb.as_str(), lists.get_mut(&mop.key)) {
            ("append", Some(list)) => {
                list.push(mop.element);
                completed.push(json!(["append", mop.key, mop.element]));
            }
            (_, Some(list)) => completed.push(json!(["r", mop.key, list.clone()])),
            _ => {
                remote_reads.push(position);
                ops.push(TxnOp::get(etcd_key(mop.key), None));
                completed.push(Value::Null);
            }
        }
    }
    for (key, list) in &lists {
        ops.push(TxnOp::put(etcd_key(*key), encode_list(list), None));
    }
    match client.txn(Txn::new().when(guards).and_then(ops)).await {
        Ok(response) if response.succeeded() => {
            for (&position, op) in remote_reads.iter().zip(response.op_responses()) {
                completed[position] = json!(["r", mops[position].key, list_of(&op)]);
            }
            Completion::ok(Value::Array(completed))
        }
        Ok(_) => Completion::refused(value.clone(), "guard failed: a key changed"),
        Err(e) => Completion::failed(value.clone(), &e, true),
    }
}

fn list_of(op: &TxnOpResponse) -> Vec<u64> {
    match op {
        TxnOpResponse::Get(get) => get
            .kvs()
            .first()
            .map(|kv| decode_list(kv.value_str().unwrap_or_default()))
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

async fn read_only(client: &mut Client, mops: &[Mop], value: &Value) -> Completion {
    let txn = Txn::new().and_then(
        mops.iter()
            .map(|m| TxnOp::get(etcd_key(m.key), None))
            .collect::<Vec<_>>(),
    );
    match client.txn(txn).await {
        Ok(response) => Completion::ok(Value::Array(
            mops.iter()
                .zip(response.op_responses())
                .map(|(m, op)| json!(["r", m.key, list_of(&op)]))
                .collect(),
        )),
        Err(e) => Completion::failed(value.clone(), &e, false),
    }
}

async fn execute_registers(client: &mut Client, mops: &[Mop], value: &Value) -> Completion {
    let ops: Vec<TxnOp> = mops
        .iter()
        .map(|m| match m.verb.as_str() {
            "w" => TxnOp::put(etcd_key(m.key), m.element.to_string(), None),
            _ => TxnOp::get(etcd_key(m.key), None),
        })
        .collect();
    match client.txn(Txn::new().and_then(ops)).await {
        Ok(response) => Completion::ok(Value::Array(
            mops.iter()
                .zip(response.op_responses())
                .map(|(m, op)| match (m.verb.as_str(), op) {
                    ("w", _) => json!(["w", m.key, m.element]),
                    (_, TxnOpResponse::Get(get)) => {
                        let read = get
                            .kvs()
                            .first()
                            .and_then(|kv| kv.value_str().ok()?.parse::<u64>().ok());
                        json!(["r", m.key, read])
                    }
                    _ => json!(["r", m.key, null]),
                })
                .collect(),
        )),
        Err(e) => Completion::failed(value.clone(), &e, true),
    }
}
