//! The watch workload's writers: puts of unique values to a few keys under
//! one prefix. The watchers that record what members deliver are in
//! `crate::watcher`.

use std::sync::atomic::{AtomicU64, Ordering};

use etcd_client::Client;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::{Completion, Invocation};

pub const KEY_PREFIX: &str = "jepsen/w/";
const KEYS: u64 = 5;

#[derive(Default)]
pub struct WatchGenerator {
    next_value: AtomicU64,
}

impl WatchGenerator {
    pub fn next(&self, rng: &mut ChaCha8Rng) -> Invocation {
        let value = self.next_value.fetch_add(1, Ordering::Relaxed);
        Invocation {
            f: "put",
            value: json!({
                "key": format!("{KEY_PREFIX}{}", rng.random_range(0..KEYS)),
                "value": format!("v{value}"),
            }),
        }
    }
}

pub async fn execute(client: &mut Client, invocation: &Invocation) -> Completion {
    let key = invocation.value["key"].as_str().unwrap_or_default();
    let value = invocation.value["value"].as_str().unwrap_or_default();
    match client.put(key, value, None).await {
        Ok(response) => {
            let revision = response.header().map_or(0, |h| h.revision());
            Completion::ok(json!({ "key": key, "value": value, "revision": revision }))
        }
        Err(e) => Completion::failed(invocation.value.clone(), &e, true),
    }
}
