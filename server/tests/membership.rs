//! Membership changes and leader transfer on a loopback cluster, through
//! the etcd-client crate and the real etcdctl: members added at runtime
//! join and serve, learners serve nothing but serializable reads until
//! promoted, removed members stop, and move-leader moves the leader.

mod common;

use std::process::Command;
use std::time::Duration;

use common::ETCDCTL_BIN;
use common::cluster::Cluster;
use etcd_client::{Client, GetOptions, MemberAddOptions};

const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

async fn member_ids(client: &mut Client) -> Vec<(u64, String, bool)> {
    client
        .member_list()
        .await
        .expect("member list")
        .members()
        .iter()
        .map(|m| (m.id(), m.name().to_string(), m.is_learner()))
        .collect()
}

async fn serializable_count(client: &mut Client, prefix: &str) -> usize {
    client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await
        .expect("serializable get")
        .kvs()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn added_member_joins_and_serves_and_removed_member_stops() {
    let mut cluster = Cluster::start(3).await;
    let mut client = cluster.client(1).await;
    for i in 0..20 {
        client.put(format!("before/{i}"), "v", None).await.unwrap();
    }

    let new = cluster.new_member();
    let peer_url = cluster.members[new].peer_url().to_string();
    let added = client
        .member_add([peer_url.clone()], None)
        .await
        .expect("member add through a follower");
    let new_id = added.member().expect("added member").id();
    assert_eq!(added.member().unwrap().name(), "", "not started yet");
    assert_eq!(added.member_list().len(), 4);

    let duplicate = client.member_add([peer_url], None).await.unwrap_err();
    assert!(
        duplicate
            .to_string()
            .contains("etcdserver: Peer URLs already exists"),
        "{duplicate}"
    );

    cluster.spawn_joining(new);
    let mut joined = cluster.client(new).await;
    assert_eq!(serializable_count(&mut joined, "before/").await, 20);
    joined
        .put("after/joined", "v", None)
        .await
        .expect("the new member serves writes");
    // Linearizable: a serializable read on member 1 may run before it applies.
    let after = client
        .get("after/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("linearizable get");
    assert_eq!(
        after.kvs().len(),
        1,
        "write through the new member reached the others"
    );
    let members = member_ids(&mut client).await;
    assert_eq!(members.len(), 4);
    assert!(members.contains(&(new_id, format!("m{}", new + 1), false)));

    let removed = client.member_remove(new_id).await.expect("member remove");
    assert_eq!(removed.members().len(), 3);
    let status = cluster.wait_exit(new, EXIT_TIMEOUT).await;
    assert!(
        status.is_some_and(|s| !s.success()),
        "the removed member should stop with an error, got {status:?}\n{}",
        cluster.logs()
    );
    assert!(
        cluster
            .log(new)
            .contains("permanently removed from the cluster"),
        "{}",
        cluster.logs()
    );
    assert_eq!(member_ids(&mut client).await.len(), 3);
    client
        .put("after/removed", "v", None)
        .await
        .expect("the cluster still serves");

    let missing = client.member_remove(new_id).await.unwrap_err();
    assert!(
        missing.to_string().contains("etcdserver: member not found"),
        "{missing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn learner_serves_serializable_reads_until_promoted() {
    let mut cluster = Cluster::start(3).await;
    let mut client = cluster.client(0).await;
    client.put("seed", "v", None).await.unwrap();
    let new = cluster.new_member();
    let peer_url = cluster.members[new].peer_url().to_string();
    let added = client
        .member_add([peer_url], Some(MemberAddOptions::new().with_is_learner()))
        .await
        .expect("add learner");
    let learner_id = added.member().unwrap().id();
    assert!(added.member().unwrap().is_learner());

    cluster.spawn_joining(new);
    let mut learner = cluster.client(new).await;
    let status = learner.status().await.expect("status on a learner");
    assert!(status.is_learner());
    let refused = learner.put("k", "v", None).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("etcdserver: rpc not supported for learner"),
        "{refused}"
    );
    // The learner catches up through replication; its serializable reads see it.
    let mut seen = 0;
    for _ in 0..200 {
        seen = serializable_count(&mut learner, "seed").await;
        if seen == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, 1, "learner did not catch up\n{}", cluster.logs());

    let promoted = client.member_promote(learner_id).await.expect("promote");
    assert!(promoted.members().iter().all(|m| !m.is_learner()));
    learner
        .put("k", "v", None)
        .await
        .expect("a promoted learner serves writes");
    let again = client.member_promote(learner_id).await.unwrap_err();
    assert!(
        again
            .to_string()
            .contains("etcdserver: can only promote a learner member"),
        "{again}"
    );
}

fn etcdctl(endpoints: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(ETCDCTL_BIN)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .output()
        .expect("run etcdctl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_move_leader_and_cluster_status() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let target = (leader + 1) % 3;
    let target_id = cluster
        .client(target)
        .await
        .status()
        .await
        .unwrap()
        .header()
        .unwrap()
        .member_id();

    // `--cluster` dials every member's published client URL (http://...).
    let (ok, table, stderr) = etcdctl(
        &cluster.members[0].endpoint(),
        &["endpoint", "status", "-w", "table", "--cluster"],
    );
    assert!(ok, "{stderr}");
    let leaders = table
        .lines()
        .filter(|l| l.contains("|      true |"))
        .count();
    assert_eq!(leaders, 1, "{table}");
    assert_eq!(table.matches("http://127.0.0.1:").count(), 3, "{table}");

    let follower = cluster.members[target].endpoint();
    let (ok, _, stderr) = etcdctl(&follower, &["move-leader", &format!("{target_id:x}")]);
    assert!(!ok);
    assert!(stderr.contains("no leader endpoint given"), "{stderr}");

    let all: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    let (ok, stdout, stderr) = etcdctl(&all.join(","), &["move-leader", &format!("{target_id:x}")]);
    assert!(ok, "{stdout}{stderr}\n{}", cluster.logs());
    assert!(stdout.contains("Leadership transferred"), "{stdout}");
    assert_eq!(cluster.leader().await, target);

    let mut client = cluster.client(leader).await;
    let refused = client
        .move_leader(target_id)
        .await
        .expect_err("a follower cannot move the leader");
    assert!(
        refused.to_string().contains("etcdserver: not leader"),
        "{refused}"
    );
    let revision = client
        .put("k", "after move", None)
        .await
        .expect("put")
        .header()
        .unwrap()
        .revision();
    for i in 0..3 {
        // A linearizable read makes the member apply everything committed.
        cluster.client(i).await.get("k", None).await.unwrap();
    }
    let (ok, hashes, stderr) = etcdctl(
        &all.join(","),
        &[
            "endpoint",
            "hashkv",
            "-w",
            "json",
            &format!("--rev={revision}"),
        ],
    );
    assert!(ok, "{stderr}");
    let hashes: serde_json::Value = serde_json::from_str(&hashes).unwrap();
    let distinct: std::collections::BTreeSet<String> = hashes
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["HashKV"]["hash"].to_string())
        .collect();
    assert_eq!(
        distinct.len(),
        1,
        "HashKV differs between members: {hashes}"
    );
}
