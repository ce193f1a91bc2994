//! A member that falls behind catches up whole: its watchers get every
//! revision it applies from a backlog, and it catches up after large values.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use etcd_client::{Client, WatchOptions};
use tokio::task::JoinSet;

/// Hang guard for a whole phase, not a performance bound.
const PHASE_DEADLINE: Duration = Duration::from_secs(120);

/// Puts `count` values of `value_len` bytes under `prefix` from `writers`
/// concurrent clients spread over `members`; returns the last revision.
async fn write_load(
    cluster: &Cluster,
    members: &[usize],
    writers: usize,
    count: usize,
    prefix: &str,
    value_len: usize,
) -> i64 {
    let mut tasks = JoinSet::new();
    for w in 0..writers {
        let mut client = cluster.client(members[w % members.len()]).await;
        let prefix = prefix.to_string();
        tasks.spawn(async move {
            let mut last = 0;
            for j in (w..count).step_by(writers) {
                let response = client
                    .put(format!("{prefix}{j:06}"), vec![b'v'; value_len], None)
                    .await
                    .expect("put");
                last = last.max(response.header().expect("header").revision());
            }
            last
        });
    }
    let mut last = 0;
    while let Some(result) = tasks.join_next().await {
        last = last.max(result.expect("writer"));
    }
    last
}

/// Issue 12, item 1: a follower is paused while 6,000 revisions are written
/// through the others, so once resumed it applies them as a backlog, far
/// more at once than its change feed holds. A watcher on it must get every
/// revision exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_applying_a_backlog_sends_its_watcher_every_revision() {
    const WRITES: usize = 6000;
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let others = [leader, (leader + 2) % 3];
    let mut watching = cluster.client(follower).await;
    let start = watching
        .status()
        .await
        .expect("status")
        .header()
        .unwrap()
        .revision()
        + 1;
    let mut stream = watching
        .watch(
            "",
            Some(
                WatchOptions::new()
                    .with_all_keys()
                    .with_start_revision(start),
            ),
        )
        .await
        .expect("watch");
    let created = stream.message().await.expect("watch").expect("created");
    assert!(created.created());

    cluster.pause(follower);
    let last = write_load(&cluster, &others, 50, WRITES, "backlog/", 256).await;
    cluster.resume(follower);
    assert_eq!(last, start + WRITES as i64 - 1);

    let mut revisions = Vec::with_capacity(WRITES);
    let collect = async {
        while revisions.last() != Some(&last) {
            let response = stream.message().await.expect("watch").expect("stream open");
            assert!(!response.canceled(), "watch canceled: {response:?}");
            revisions.extend(
                response
                    .events()
                    .iter()
                    .map(|e| e.kv().unwrap().mod_revision()),
            );
        }
    };
    tokio::time::timeout(PHASE_DEADLINE, collect)
        .await
        .unwrap_or_else(|_| panic!("watcher stalled\n{}", cluster.logs()));
    let first_wrong = (start..)
        .zip(&revisions)
        .find(|(expected, got)| *expected != **got);
    assert_eq!(
        (revisions.len(), first_wrong),
        (WRITES, None),
        "revisions received, and the first (expected, got) out of place"
    );
}

/// HashKV at `revision` on member `i`, or None while it cannot answer.
async fn hash_at(cluster: &Cluster, i: usize, revision: i64) -> Option<u32> {
    let endpoint = cluster.members[i].endpoint();
    let mut client = Client::connect([endpoint], None).await.ok()?;
    Some(client.hash_kv(revision).await.ok()?.hash())
}

/// Issue 12, item 2: a follower is killed; 32 writers put 64 values of
/// 1.4 MB through the others; restarted, it catches up by log and hashes as
/// the leader does within 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_member_catches_up_after_large_values() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    cluster.kill9(follower);
    let others = [leader, (leader + 2) % 3];
    let last = write_load(&cluster, &others, 32, 64, "large/", 1_400_000).await;
    let expected = hash_at(&cluster, leader, last)
        .await
        .expect("hash on the leader");

    cluster.spawn(follower);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if hash_at(&cluster, follower, last).await == Some(expected) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "member {follower} has not caught up within 30 s\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
