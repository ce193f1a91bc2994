//! No acknowledged write is lost under kill -9: concurrent puts through
//! etcd-client, SIGKILL while puts are in flight, restart on the same data
//! dir, and every put that returned Ok must be there with its value. Three
//! kill cycles on the same data dir; all earlier acknowledged writes are
//! re-checked after every restart.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Ballast, RPC_TIMEOUT};
use etcd_client::{Client, GetOptions};
use tokio::sync::Notify;

const WRITERS: usize = 8;
const CYCLES: usize = 3;
/// Acknowledged puts per cycle before the kill.
const ACKS_BEFORE_KILL: usize = 300;

fn value_for(key: &str) -> String {
    format!("value-of:{key}:{}", key.len())
}

struct Shared {
    acked: AtomicUsize,
    enough: Notify,
    stop: AtomicBool,
}

/// Puts unique keys until told to stop or the server goes away; returns
/// the keys whose put returned Ok.
async fn writer(mut client: Client, cycle: usize, id: usize, shared: Arc<Shared>) -> Vec<String> {
    let mut acked = Vec::new();
    let mut i = 0usize;
    while !shared.stop.load(Ordering::SeqCst) {
        let key = format!("crash/{cycle}/{id}/{i:06}");
        i += 1;
        // The timeout only guards against hanging forever on a dead
        // connection; such a put counts as not acknowledged.
        match tokio::time::timeout(RPC_TIMEOUT, client.put(key.as_str(), value_for(&key), None))
            .await
        {
            Ok(Ok(_)) => {
                acked.push(key);
                if shared.acked.fetch_add(1, Ordering::SeqCst) + 1 == ACKS_BEFORE_KILL {
                    shared.enough.notify_one();
                }
            }
            // The server was killed (or the put failed): stop writing.
            Ok(Err(_)) | Err(_) => break,
        }
    }
    acked
}

/// Reads every key under `crash/` and checks all acknowledged puts.
async fn verify(client: &mut Client, acked: &BTreeMap<String, usize>, cycle: usize) {
    let r = tokio::time::timeout(
        RPC_TIMEOUT,
        client.get("crash/", Some(GetOptions::new().with_prefix())),
    )
    .await
    .expect("get crash/ timed out")
    .expect("get crash/");
    let present: BTreeMap<String, Vec<u8>> = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            )
        })
        .collect();
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for key in acked.keys() {
        match present.get(key) {
            None => missing.push(key.clone()),
            Some(v) if v[..] != *value_for(key).as_bytes() => {
                wrong.push((key.clone(), String::from_utf8_lossy(v).into_owned()))
            }
            Some(_) => {}
        }
    }
    assert!(
        missing.is_empty() && wrong.is_empty(),
        "after restart #{cycle}: {} acknowledged puts missing (first: {:?}), {} with a wrong value (first: {:?}); {} acknowledged in total, {} keys present",
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>(),
        wrong.len(),
        wrong.iter().take(5).collect::<Vec<_>>(),
        acked.len(),
        present.len()
    );
    // Unacknowledged puts may or may not have survived, but nothing else may appear.
    for (key, v) in &present {
        assert_eq!(
            v[..],
            *value_for(key).as_bytes(),
            "key {key} has a value nobody wrote"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_puts_survive_kill9() {
    let mut server = Ballast::start().await;
    // key -> cycle in which it was acknowledged
    let mut acked: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_revision = 0i64;

    for cycle in 0..CYCLES {
        let client = server.etcd_client().await;
        let shared = Arc::new(Shared {
            acked: AtomicUsize::new(0),
            enough: Notify::new(),
            stop: AtomicBool::new(false),
        });
        let tasks: Vec<_> = (0..WRITERS)
            .map(|id| tokio::spawn(writer(client.clone(), cycle, id, shared.clone())))
            .collect();

        // Wait for enough acknowledged puts (bounded, in case the server stalls).
        let waited = tokio::time::timeout(Duration::from_secs(120), shared.enough.notified()).await;
        if waited.is_err() {
            shared.stop.store(true, Ordering::SeqCst);
            panic!(
                "cycle {cycle}: only {} puts acknowledged in 120 s\n{}",
                shared.acked.load(Ordering::SeqCst),
                server.stderr_tail(60)
            );
        }

        // Kill while the writers are still going.
        server.kill9();
        shared.stop.store(true, Ordering::SeqCst);
        let mut this_cycle = 0;
        for t in tasks {
            let keys = tokio::time::timeout(Duration::from_secs(120), t)
                .await
                .expect("writer did not stop after the kill")
                .expect("writer task panicked");
            this_cycle += keys.len();
            for k in keys {
                acked.insert(k, cycle);
            }
        }
        assert!(
            this_cycle >= ACKS_BEFORE_KILL,
            "cycle {cycle}: {this_cycle} acknowledged"
        );
        drop(client);

        server.restart().await;
        let mut client = server.etcd_client().await;
        verify(&mut client, &acked, cycle).await;

        // The revision never goes backwards across a crash.
        let st = client.status().await.expect("status after restart");
        let rev = st.header().expect("status header").revision();
        assert!(
            rev >= last_revision,
            "revision went backwards across the crash: {last_revision} -> {rev}"
        );
        assert!(
            rev > acked.len() as i64,
            "revision {rev} is below the number of acknowledged puts {}",
            acked.len()
        );
        last_revision = rev;
        println!(
            "crash cycle {cycle}: {this_cycle} puts acknowledged before/around the kill, {} in total, revision {rev}",
            acked.len()
        );
    }
}
