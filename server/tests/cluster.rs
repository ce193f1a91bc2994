//! Three-member clusters on loopback: any member serves any request, and
//! kill -9 of the leader under write load loses no acknowledged write.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::cluster::Cluster;
use etcd_client::{Client, GetOptions};
use tokio::sync::Notify;

const RPC_TIMEOUT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_member_serves_reads_and_writes() {
    let cluster = Cluster::start(3).await;
    for i in 0..3 {
        let mut client = cluster.client(i).await;
        client
            .put(format!("via/{i}"), format!("member {i}"), None)
            .await
            .expect("put through any member");
    }
    let mut leaders = 0;
    for i in 0..3 {
        let mut client = cluster.client(i).await;
        let got = client
            .get("via/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("linearizable get on any member");
        let values: Vec<&str> = got.kvs().iter().map(|kv| kv.value_str().unwrap()).collect();
        assert_eq!(values, ["member 0", "member 1", "member 2"], "member {i}");
        let status = client.status().await.expect("status");
        if status.leader() == status.header().unwrap().member_id() {
            leaders += 1;
        }
        let members = client.member_list().await.expect("member list");
        assert_eq!(members.members().len(), 3);
        for member in members.members() {
            assert_eq!(
                member.client_urls().len(),
                1,
                "client URLs published: {member:?}"
            );
        }
    }
    assert_eq!(leaders, 1, "exactly one member leads");
}

/// 100 clients over 10 connections, as the write load.
const WRITERS: usize = 100;
const CONNECTIONS: usize = 10;
const ACKS_BEFORE_KILL: usize = 500;
const ACKS_AFTER_KILL: usize = 500;

struct Progress {
    acked: AtomicUsize,
    reached: Notify,
    target: AtomicUsize,
    stop: AtomicBool,
}

async fn writer(mut client: Client, id: usize, progress: Arc<Progress>) -> Vec<String> {
    let mut acked = Vec::new();
    let mut i = 0;
    while !progress.stop.load(Ordering::SeqCst) {
        let key = format!("load/{id:03}/{i:06}");
        i += 1;
        let put = client.put(key.as_str(), key.as_str(), None);
        // A put that fails or times out is not acknowledged; keep going, as
        // a client would, so that writes continue after the failover.
        if let Ok(Ok(_)) = tokio::time::timeout(RPC_TIMEOUT, put).await {
            acked.push(key);
            let total = progress.acked.fetch_add(1, Ordering::SeqCst) + 1;
            if total == progress.target.load(Ordering::SeqCst) {
                progress.reached.notify_one();
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill9_under_load_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let progress = Arc::new(Progress {
        acked: AtomicUsize::new(0),
        reached: Notify::new(),
        target: AtomicUsize::new(ACKS_BEFORE_KILL),
        stop: AtomicBool::new(false),
    });
    // Writers talk to the followers, which forward to whoever leads.
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let mut connections = Vec::new();
    for c in 0..CONNECTIONS {
        connections.push(cluster.client(followers[c % followers.len()]).await);
    }
    let mut tasks = Vec::new();
    for id in 0..WRITERS {
        let client = connections[id % CONNECTIONS].clone();
        tasks.push(tokio::spawn(writer(client, id, progress.clone())));
    }
    let wait = |progress: Arc<Progress>| async move {
        tokio::time::timeout(Duration::from_secs(120), progress.reached.notified()).await
    };
    assert!(
        wait(progress.clone()).await.is_ok(),
        "writes did not start\n{}",
        cluster.logs()
    );

    let before_kill = progress.acked.load(Ordering::SeqCst);
    progress
        .target
        .store(before_kill + ACKS_AFTER_KILL, Ordering::SeqCst);
    cluster.kill9(leader);
    assert!(
        wait(progress.clone()).await.is_ok(),
        "writes did not continue after the leader was killed\n{}",
        cluster.logs()
    );
    progress.stop.store(true, Ordering::SeqCst);
    let mut acked: BTreeMap<String, ()> = BTreeMap::new();
    for task in tasks {
        for key in task.await.expect("writer") {
            acked.insert(key, ());
        }
    }

    cluster.spawn(leader);
    for i in 0..3 {
        let mut client = cluster.client(i).await;
        let got = client
            .get("load/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("read everything back");
        let present: BTreeMap<String, String> = got
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_string(),
                    kv.value_str().unwrap().to_string(),
                )
            })
            .collect();
        let missing: Vec<&String> = acked.keys().filter(|k| !present.contains_key(*k)).collect();
        assert!(
            missing.is_empty(),
            "member {i} lacks {} of {} acknowledged writes, e.g. {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(5)]
        );
        for (key, value) in &present {
            assert_eq!(key, value, "member {i} holds a value nobody wrote");
        }
    }
    println!(
        "leader failover: {} writes acknowledged ({before_kill} before the kill), all present on every member",
        acked.len()
    );
}

/// Events of a watch on `client` from `start`, until `last` has been seen.
async fn watch_until(client: &mut Client, start: i64, last: i64, seen: &mut Vec<i64>) {
    let options = etcd_client::WatchOptions::new()
        .with_prefix()
        .with_start_revision(start);
    let mut stream = client.watch("w/", Some(options)).await.expect("watch");
    while seen.last().is_none_or(|rev| *rev < last) {
        let response = tokio::time::timeout(RPC_TIMEOUT, stream.message())
            .await
            .expect("watch events keep coming")
            .expect("watch stream")
            .expect("watch stream open");
        assert!(!response.canceled(), "watch cancelled: {response:?}");
        seen.extend(
            response
                .events()
                .iter()
                .map(|e| e.kv().unwrap().mod_revision()),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_on_a_follower_through_a_leader_failover_has_no_gap() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let watched = (leader + 1) % 3;
    let writer_member = (leader + 2) % 3;
    let mut watch_client = cluster.client(watched).await;
    let start = watch_client
        .status()
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
        + 1;

    let mut writes = cluster.client(writer_member).await;
    let mut put = async |i: usize| -> i64 {
        loop {
            // A put may fail while there is no leader; the client retries.
            if let Ok(Ok(response)) =
                tokio::time::timeout(RPC_TIMEOUT, writes.put(format!("w/{i:04}"), "v", None)).await
            {
                return response.header().unwrap().revision();
            }
        }
    };
    let mut seen = Vec::new();
    let mut last = 0;
    for i in 0..100 {
        last = put(i).await;
    }
    watch_until(&mut watch_client, start, last, &mut seen).await;

    cluster.kill9(leader);
    for i in 100..200 {
        last = put(i).await;
    }
    // Reconnect from the last revision seen + 1, as clients resume.
    let resume = seen.last().unwrap() + 1;
    watch_until(&mut watch_client, resume, last, &mut seen).await;

    let expected: Vec<i64> = (start..=last).collect();
    assert_eq!(
        seen, expected,
        "every revision exactly once, in order, across the failover"
    );
}
