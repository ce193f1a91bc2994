//! Faults on a three-member loopback cluster: a minority cut off by the
//! peer-link proxy commits nothing and serves no linearizable read while the
//! majority goes on, then rejoins; a restarted follower catches up, and a
//! member added after the log was compacted catches up by snapshot.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use etcd_client::{Client, GetOptions};

/// A hang guard for calls that must finish (not a timing assertion).
const CALL_GUARD: Duration = Duration::from_secs(60);
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

async fn guarded<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(CALL_GUARD, call)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish"))
}

async fn hashes_at(cluster: &Cluster, revision: i64) -> Vec<u32> {
    let mut hashes = Vec::new();
    for i in 0..cluster.members.len() {
        let mut client = cluster.client(i).await;
        // A linearizable read first, so the member has applied `revision`.
        guarded("read", client.get("any", None))
            .await
            .expect("read");
        let hash = guarded("hash_kv", client.hash_kv(revision))
            .await
            .expect("hash_kv");
        hashes.push(hash.hash());
    }
    hashes
}

async fn count(client: &mut Client, prefix: &str, serializable: bool) -> usize {
    let mut options = GetOptions::new().with_prefix();
    if serializable {
        options = options.with_serializable();
    }
    guarded("get", client.get(prefix, Some(options)))
        .await
        .expect("get")
        .kvs()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolated_leader_commits_nothing_and_rejoins() {
    let cluster = Cluster::start_with(3, &[], true).await;
    let proxies = cluster.proxies.as_ref().expect("partitionable cluster");
    let old_leader = cluster.leader().await;
    let mut isolated = cluster.client(old_leader).await;
    isolated.put("before", "v", None).await.expect("put");
    let majority: Vec<usize> = (0..3).filter(|i| *i != old_leader).collect();
    let mut majority_client = cluster.client(majority[0]).await;

    proxies.isolate(old_leader);

    // The majority elects a leader and keeps serving. A write in flight
    // when the leader was cut off may fail with etcd's unavailable errors;
    // a client that retries succeeds once the majority has a leader.
    let deadline = tokio::time::Instant::now() + CALL_GUARD;
    for i in 0..10 {
        loop {
            let put = majority_client.put(format!("during/{i}"), "v", None);
            match guarded("majority put", put).await {
                Ok(_) => break,
                Err(etcd_client::Error::GRpcStatus(status))
                    if status.code() == tonic::Code::Unavailable
                        && tokio::time::Instant::now() < deadline =>
                {
                    // A client's retry backoff, as clientv3's.
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
                Err(e) => panic!("the majority should commit writes: {e}\n{}", cluster.logs()),
            }
        }
    }
    assert_eq!(count(&mut majority_client, "during/", false).await, 10);

    // The cut-off member commits nothing and serves no linearizable read.
    let refused = guarded("minority put", isolated.put("during/minority", "v", None)).await;
    assert!(refused.is_err(), "the minority committed a write");
    let read = guarded("minority read", isolated.get("during/", None)).await;
    assert!(read.is_err(), "the minority served a linearizable read");
    assert_eq!(
        count(&mut isolated, "during/", true).await,
        0,
        "a serializable read on the minority is local and stale"
    );

    proxies.heal();
    let mut rejoined = false;
    for _ in 0..100 {
        let read = guarded(
            "read after heal",
            isolated.get("during/", Some(GetOptions::new().with_prefix())),
        )
        .await;
        if let Ok(read) = read {
            assert_eq!(
                read.kvs().len(),
                10,
                "the rejoined member sees the majority's writes"
            );
            rejoined = true;
            break;
        }
    }
    assert!(
        rejoined,
        "the isolated member did not rejoin\n{}",
        cluster.logs()
    );
    let revision = guarded("put", majority_client.put("after", "v", None))
        .await
        .expect("put")
        .header()
        .unwrap()
        .revision();
    let hashes = hashes_at(&cluster, revision).await;
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "members differ after the partition healed: {hashes:?}"
    );
    assert_eq!(
        count(&mut majority_client, "during/minority", false).await,
        0,
        "the write refused on the minority must not appear"
    );
}

async fn put_many(client: &mut Client, prefix: &str, n: usize) -> i64 {
    let mut revision = 0;
    for i in 0..n {
        revision = guarded(
            "put",
            client.put(format!("{prefix}{i:04}"), format!("{i}"), None),
        )
        .await
        .expect("put")
        .header()
        .unwrap()
        .revision();
    }
    revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_follower_and_new_member_catch_up() {
    let mut cluster = Cluster::start_with(3, &["--snapshot-count", "100"], false).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    cluster.kill9(follower);
    let mut client = cluster.client(leader).await;
    put_many(&mut client, "down/", 400).await;
    cluster.spawn(follower);
    let mut restarted = cluster.client(follower).await;
    assert_eq!(count(&mut restarted, "down/", false).await, 400);

    // With every member up the leader snapshots every 100 entries and
    // drops the log behind it, so a new member can only start from a snapshot.
    let revision = put_many(&mut client, "up/", 300).await;
    let new = cluster.new_member();
    let peer_url = cluster.members[new].peer_url().to_string();
    guarded("member add", client.member_add([peer_url], None))
        .await
        .expect("member add");
    cluster.spawn_joining(new);
    let mut joined = cluster.client(new).await;
    assert_eq!(count(&mut joined, "down/", false).await, 400);
    assert_eq!(count(&mut joined, "up/", false).await, 300);
    assert!(
        cluster
            .log(new)
            .contains("installed snapshot from the leader"),
        "the new member caught up without a snapshot\n{}",
        cluster.logs()
    );
    let hashes = hashes_at(&cluster, revision).await;
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "members differ: {hashes:?}"
    );
}

/// Issue 12, item 5: a follower that got the leader's read index but then
/// hears nothing from the leader (every link into it cut, its own links out
/// left open) can never apply up to that index. Its linearizable read fails
/// with etcd's `request timed out` once the request timeout has passed,
/// instead of waiting forever; a read after the links heal succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_cut_off_after_its_read_index_times_out() {
    // A long election timeout keeps the cut-off follower from campaigning
    // between the write and the read.
    let cluster = Cluster::start_with(3, &["--election-timeout", "3000"], true).await;
    let proxies = cluster.proxies.as_ref().expect("partitionable cluster");
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut on_follower = cluster.client(follower).await;
    let mut on_leader = cluster.client(leader).await;
    on_follower
        .put("read-index/before", "v", None)
        .await
        .expect("put");

    proxies.cut_into(follower);
    on_leader
        .put("read-index/after", "v", None)
        .await
        .expect("put on the majority");
    let error = guarded(
        "read on the cut-off follower",
        on_follower.get("read-index/after", None),
    )
    .await
    .expect_err("the follower cannot apply the leader's read index");
    assert!(
        error.to_string().contains("etcdserver: request timed out"),
        "{error}"
    );

    proxies.heal();
    let got = guarded("read after heal", async {
        loop {
            match on_follower.get("read-index/after", None).await {
                Ok(response) => return response,
                Err(_) => tokio::time::sleep(RETRY_BACKOFF).await,
            }
        }
    })
    .await;
    assert_eq!(got.kvs().len(), 1);
}
