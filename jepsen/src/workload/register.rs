//! Per-key versioned registers, as jepsen-io/etcd's register workload: reads,
//! blind writes and compare-and-sets on a few keys at a time, each key
//! retired after a bounded number of operations so that every key's history
//! stays small enough for the linearizability search.

use std::sync::atomic::{AtomicU64, Ordering};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::{Completion, Invocation};

const OPS_PER_KEY: u64 = 200;
const VALUES: i64 = 5;
pub const KEY_PREFIX: &str = "jepsen/r/";

#[derive(Default)]
pub struct RegisterGenerator {
    issued: AtomicU64,
}

impl RegisterGenerator {
    pub fn final_reads(&self) -> Vec<Invocation> {
        let keys = self.issued.load(Ordering::Relaxed).div_ceil(OPS_PER_KEY);
        (0..keys)
            .map(|k| Invocation {
                f: "read",
                value: json!({ "key": format!("{KEY_PREFIX}{k}") }),
            })
            .collect()
    }

    pub fn next(&self, rng: &mut ChaCha8Rng) -> Invocation {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let key = format!("{KEY_PREFIX}{}", n / OPS_PER_KEY);
        match rng.random_range(0..4) {
            0 | 1 => Invocation {
                f: "read",
                value: json!({ "key": key }),
            },
            2 => Invocation {
                f: "write",
                value: json!({ "key": key, "value": rng.random_range(0..VALUES) }),
            },
            _ => Invocation {
                f: "cas",
                value: json!({
                    "key": key,
                    "from": rng.random_range(0..VALUES),
                    "to": rng.random_range(0..VALUES),
                }),
            },
        }
    }
}

fn field(value: &Value, name: &str) -> i64 {
    value[name].as_i64().unwrap_or_default()
}

pub async fn execute(client: &mut Client, invocation: &Invocation) -> Completion {
    let value = &invocation.value;
    let key = value["key"].as_str().unwrap_or_default().to_string();
    match invocation.f {
        "read" => match client.get(key.as_str(), None).await {
            Ok(response) => {
                let (current, version) = match response.kvs().first() {
                    Some(kv) => (
                        kv.value_str().ok().and_then(|v| v.parse::<i64>().ok()),
                        kv.version(),
                    ),
                    None => (None, 0),
                };
                Completion::ok(json!({ "key": key, "value": current, "version": version }))
            }
            Err(e) => Completion::failed(value.clone(), &e, false),
        },
        "write" => {
            let new = field(value, "value");
            let options = PutOptions::new().with_prev_key();
            match client
                .put(key.as_str(), new.to_string(), Some(options))
                .await
            {
                Ok(response) => {
                    let version = response.prev_key().map_or(0, |kv| kv.version()) + 1;
                    Completion::ok(json!({ "key": key, "value": new, "version": version }))
                }
                Err(e) => Completion::failed(value.clone(), &e, true),
            }
        }
        _ => {
            let (from, to) = (field(value, "from"), field(value, "to"));
            let txn = Txn::new()
                .when([Compare::value(
                    key.as_str(),
                    CompareOp::Equal,
                    from.to_string(),
                )])
                .and_then([TxnOp::put(
                    key.as_str(),
                    to.to_string(),
                    Some(PutOptions::new().with_prev_key()),
                )]);
            match client.txn(txn).await {
                Ok(response) if response.succeeded() => {
                    let version = match response.op_responses().first() {
                        Some(TxnOpResponse::Put(put)) => {
                            Some(put.prev_key().map_or(0, |kv| kv.version()) + 1)
                        }
                        _ => None,
                    };
                    Completion::ok(
                        json!({ "key": key, "from": from, "to": to, "version": version }),
                    )
                }
                Ok(_) => Completion::compare_failed(value.clone()),
                Err(e) => Completion::failed(value.clone(), &e, true),
            }
        }
    }
}
