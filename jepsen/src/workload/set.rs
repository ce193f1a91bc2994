//! A set in one key, as jepsen-io/etcd's set workload: each add is a
//! compare-and-set loop on the key's mod revision (safe to retry because a
//! failed compare changed nothing); reads return the whole set.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::{Completion, Invocation};

pub const KEY: &str = "jepsen/set";
const ATTEMPTS: usize = 10;

#[derive(Default)]
pub struct SetGenerator {
    next_element: AtomicI64,
}

impl SetGenerator {
    pub fn next(&self, rng: &mut ChaCha8Rng) -> Invocation {
        if rng.random_bool(0.5) {
            Invocation {
                f: "read",
                value: Value::Null,
            }
        } else {
            Invocation {
                f: "add",
                value: json!(self.next_element.fetch_add(1, Ordering::Relaxed)),
            }
        }
    }
}

fn decode(text: &str) -> Vec<i64> {
    text.split_whitespace()
        .filter_map(|e| e.parse().ok())
        .collect()
}

pub async fn execute(client: &mut Client, invocation: &Invocation) -> Completion {
    let value = &invocation.value;
    if invocation.f == "read" {
        return match client.get(KEY, None).await {
            Ok(response) => Completion::ok(json!(
                response
                    .kvs()
                    .first()
                    .map(|kv| decode(kv.value_str().unwrap_or_default()))
                    .unwrap_or_default()
            )),
            Err(e) => Completion::failed(value.clone(), &e, false),
        };
    }
    let element = value.as_i64().unwrap_or_default();
    for _ in 0..ATTEMPTS {
        let (mut set, guard) = match client.get(KEY, None).await {
            Ok(response) => match response.kvs().first() {
                Some(kv) => (
                    decode(kv.value_str().unwrap_or_default()),
                    Compare::mod_revision(KEY, CompareOp::Equal, kv.mod_revision()),
                ),
                None => (Vec::new(), Compare::version(KEY, CompareOp::Equal, 0)),
            },
            // Every earlier attempt's compare failed, so nothing was written.
            Err(e) => return Completion::failed(value.clone(), &e, false),
        };
        set.push(element);
        let text = set.iter().map(i64::to_string).collect::<Vec<_>>().join(" ");
        let txn = Txn::new()
            .when([guard])
            .and_then([TxnOp::put(KEY, text, None)]);
        match client.txn(txn).await {
            Ok(response) if response.succeeded() => return Completion::ok(value.clone()),
            Ok(_) => {
                let pause = rand::rng().random_range(0..50);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Err(e) => return Completion::failed(value.clone(), &e, true),
        }
    }
    Completion::refused(value.clone(), "gave up after repeated compare failures")
}
