//! Leases against the real etcd and on a Ballast cluster: the deterministic
//! answers match etcd 3.4's (ids masked, TTLs within the second they tick
//! in), expiry deletes the attached keys in one revision with delete events,
//! and leases kept alive through a follower survive a leader kill -9.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::cluster::Cluster;
use common::{Ballast, Etcd};
use etcd_client::{
    Client, Compare, CompareOp, EventType, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions,
    Txn, TxnOp, WatchOptions,
};

/// A hang guard for calls and waits that must finish (not a timing assertion).
const GUARD: Duration = Duration::from_secs(60);

async fn guarded<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, call)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish"))
}

/// What a server answered, with lease ids replaced by names.
struct Transcript {
    lines: Vec<String>,
    names: BTreeMap<i64, String>,
}

impl Transcript {
    fn name(&mut self, id: i64) -> String {
        let next = format!("lease{}", self.names.len());
        self.names.entry(id).or_insert(next).clone()
    }

    fn push(&mut self, line: String) {
        self.lines.push(line);
    }
}

fn error_line(e: etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            format!("error {:?} {}", status.code(), status.message())
        }
        other => format!("error {other}"),
    }
}

async fn lease_session(client: &mut Client) -> Vec<String> {
    let mut t = Transcript {
        lines: Vec::new(),
        names: BTreeMap::new(),
    };
    for ttl in [0, 1, 3, 9_000_000_000] {
        let granted = client.lease_grant(ttl, None).await.unwrap();
        t.push(format!("grant {ttl}: ttl {}", granted.ttl()));
    }
    let too_large = client.lease_grant(9_000_000_001, None).await.unwrap_err();
    t.push(format!("grant too large: {}", error_line(too_large)));
    let chosen = client
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x1234)))
        .await
        .unwrap();
    t.push(format!(
        "grant chosen id: {:x} ttl {}",
        chosen.id(),
        chosen.ttl()
    ));
    let again = client
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x1234)))
        .await
        .unwrap_err();
    t.push(format!("grant same id: {}", error_line(again)));

    let lease = client.lease_grant(600, None).await.unwrap().id();
    let name = t.name(lease);
    let with_lease = || Some(PutOptions::new().with_lease(lease));
    for key in ["k0", "k1", "k2"] {
        let put = client.put(key, "v", with_lease()).await.unwrap();
        t.push(format!(
            "put {key} with {name}: rev {}",
            put.header().unwrap().revision()
        ));
    }
    client.put("k0", "v2", None).await.unwrap();
    client
        .put("k1", "v2", Some(PutOptions::new().with_ignore_lease()))
        .await
        .unwrap();
    for key in ["k0", "k1"] {
        let kv = client.get(key, None).await.unwrap().kvs()[0].clone();
        let attached = if kv.lease() == 0 {
            "none".to_string()
        } else {
            t.name(kv.lease())
        };
        t.push(format!(
            "{key} lease: {attached} value {}",
            kv.value_str().unwrap()
        ));
    }
    let missing = client
        .put("kx", "v", Some(PutOptions::new().with_lease(999)))
        .await
        .unwrap_err();
    t.push(format!("put with a missing lease: {}", error_line(missing)));
    let untaken = Txn::new()
        .when([Compare::version("k1", CompareOp::Greater, 0)])
        .and_then([TxnOp::put("kt", "v", None)])
        .or_else([TxnOp::put(
            "kt",
            "v",
            Some(PutOptions::new().with_lease(999)),
        )]);
    let txn = client.txn(untaken).await.unwrap();
    t.push(format!(
        "txn, missing lease in the branch not taken: {}",
        txn.succeeded()
    ));
    let taken = Txn::new()
        .when([Compare::version("k1", CompareOp::Greater, 0)])
        .and_then([TxnOp::put(
            "kt",
            "v",
            Some(PutOptions::new().with_lease(999)),
        )]);
    let failed = client.txn(taken).await.unwrap_err();
    t.push(format!(
        "txn, missing lease in the branch taken: {}",
        error_line(failed)
    ));
    let compare_lease = Txn::new()
        .when([Compare::lease("k1", CompareOp::Equal, lease)])
        .and_then([TxnOp::get("k1", None)]);
    let txn = client.txn(compare_lease).await.unwrap();
    t.push(format!("txn compare lease: {}", txn.succeeded()));

    let ttl = client
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    let keys: BTreeSet<String> = ttl
        .keys()
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    t.push(format!(
        "timetolive {name}: granted {}, remaining within the grant's last 2 s: {}, keys {keys:?}",
        ttl.granted_ttl(),
        (598..=600).contains(&ttl.ttl())
    ));
    let unknown = client.lease_time_to_live(0x4242, None).await.unwrap();
    t.push(format!(
        "timetolive unknown: ttl {} granted {}",
        unknown.ttl(),
        unknown.granted_ttl()
    ));
    let listed: BTreeSet<i64> = client
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    t.push(format!(
        "leases list the long ones: {}",
        listed.contains(&lease) && listed.contains(&0x1234)
    ));

    let (mut keeper, mut answers) = client.lease_keep_alive(lease).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let answer = answers.message().await.unwrap().unwrap();
    t.push(format!("keep-alive {name}: ttl {}", answer.ttl()));
    // etcd-client turns the TTL 0 answer for an unknown lease into an error.
    let unknown = client
        .lease_keep_alive(0x4242)
        .await
        .map(|_| ())
        .unwrap_err();
    t.push(format!("keep-alive unknown: {unknown}"));

    let before = client
        .get("k1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let revoked = client.lease_revoke(lease).await.unwrap();
    t.push(format!(
        "revoke {name}: revision +{}",
        revoked.header().unwrap().revision() - before
    ));
    let left = client
        .get("k", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let left: Vec<&str> = left.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
    t.push(format!("keys left: {left:?}"));
    let twice = client.lease_revoke(lease).await.unwrap_err();
    t.push(format!("revoke again: {}", error_line(twice)));
    let keyless = client.lease_grant(60, None).await.unwrap().id();
    let before = client
        .get("k0", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let revoked = client.lease_revoke(keyless).await.unwrap();
    t.push(format!(
        "revoke keyless: revision +{}",
        revoked.header().unwrap().revision() - before
    ));
    t.lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_answers_match_etcd() {
    let (etcd, ballast) = tokio::join!(Etcd::start(), Ballast::start());
    let mut etcd_client = Client::connect([etcd.endpoint()], None).await.unwrap();
    let mut ballast_client = Client::connect([ballast.endpoint()], None).await.unwrap();
    let expected = guarded("etcd session", lease_session(&mut etcd_client)).await;
    let got = guarded("ballast session", lease_session(&mut ballast_client)).await;
    for (i, (e, b)) in expected.iter().zip(&got).enumerate() {
        assert_eq!(
            b, e,
            "step {i} differs (etcd first)\netcd:    {expected:#?}\nballast: {got:#?}"
        );
    }
    assert_eq!(got.len(), expected.len());
}

/// Waits for the delete events of `keys` keys on a watch of `prefix`.
async fn expiry_events(client: &mut Client, prefix: &str, keys: usize) -> Vec<(String, i64)> {
    let mut stream = client
        .watch(prefix, Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut deleted = Vec::new();
    while deleted.len() < keys {
        let response = stream.message().await.unwrap().expect("watch ended");
        for event in response.events() {
            if event.event_type() == EventType::Delete {
                let kv = event.kv().unwrap();
                deleted.push((kv.key_str().unwrap().to_string(), kv.mod_revision()));
            }
        }
    }
    deleted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_deletes_attached_keys_in_one_revision() {
    let (etcd, ballast) = tokio::join!(Etcd::start(), Ballast::start());
    let mut results = Vec::new();
    for endpoint in [etcd.endpoint(), ballast.endpoint()] {
        let mut client = Client::connect([endpoint], None).await.unwrap();
        let lease = client.lease_grant(2, None).await.unwrap().id();
        let mut watching = client.clone();
        let events = tokio::spawn(async move { expiry_events(&mut watching, "e/", 2).await });
        for key in ["e/b", "e/a"] {
            client
                .put(key, "v", Some(PutOptions::new().with_lease(lease)))
                .await
                .unwrap();
        }
        let deleted = guarded("expiry", events).await.unwrap();
        let gone = client.lease_time_to_live(lease, None).await.unwrap().ttl();
        results.push((
            deleted.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            deleted[0].1 == deleted[1].1,
            gone,
        ));
    }
    assert_eq!(results[1], results[0], "ballast (second) differs from etcd");
    assert_eq!(
        results[1],
        (vec!["e/a".to_string(), "e/b".to_string()], true, -1)
    );
}

/// Keeps `lease` alive through `client` until `stop`, reopening the stream
/// after errors as clientv3 does.
async fn keep_alive(client: Client, lease: i64, stop: Arc<AtomicBool>) {
    let mut client = client;
    while !stop.load(Ordering::SeqCst) {
        let Ok((mut keeper, mut answers)) = client.lease_keep_alive(lease).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        while !stop.load(Ordering::SeqCst) {
            if keeper.keep_alive().await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(5), answers.message()).await {
                Ok(Ok(Some(answer))) => assert!(answer.ttl() > 0, "lease {lease:x} expired"),
                _ => break,
            }
            // clientv3 renews every TTL/3; this keeps well inside it.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn count(client: &mut Client, prefix: &str) -> i64 {
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    client.get(prefix, Some(options)).await.unwrap().count()
}

/// A new lease of `ttl` seconds with `key` attached.
async fn lease_with_key(client: &mut Client, ttl: i64, key: &str) -> i64 {
    let lease = client.lease_grant(ttl, None).await.unwrap().id();
    client
        .put(key, "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    lease
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kept_alive_leases_survive_a_leader_kill() {
    const KEPT: usize = 100;
    const IDLE: usize = 10;
    const TTL: i64 = 10;
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut client = cluster.client(follower).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut kept = Vec::new();
    let mut keepers = Vec::new();
    for i in 0..KEPT {
        let lease = lease_with_key(&mut client, TTL, &format!("kept/{i:03}")).await;
        kept.push(lease);
        keepers.push(tokio::spawn(keep_alive(
            client.clone(),
            lease,
            stop.clone(),
        )));
    }
    let mut idle = Vec::new();
    for i in 0..IDLE {
        idle.push(lease_with_key(&mut client, TTL, &format!("idle/{i}")).await);
    }

    let mut watching = client.clone();
    let idle_expired =
        tokio::spawn(async move { expiry_events(&mut watching, "idle/", IDLE).await });
    cluster.kill9(leader);
    // The leases nobody keeps alive expire a TTL (plus an election timeout)
    // after the new leader takes over; the others must live on meanwhile.
    guarded("idle leases expiring", idle_expired).await.unwrap();
    for lease in &kept {
        let ttl = client.lease_time_to_live(*lease, None).await.unwrap().ttl();
        assert!(
            ttl > 0,
            "kept-alive lease {lease:x} expired\n{}",
            cluster.logs()
        );
    }
    let kept_keys = count(&mut client, "kept/").await;
    assert_eq!(kept_keys, KEPT as i64);
    for lease in &idle {
        let ttl = client.lease_time_to_live(*lease, None).await.unwrap().ttl();
        assert_eq!(
            ttl, -1,
            "lease {lease:x} not kept alive should have expired"
        );
    }
    let idle_keys = count(&mut client, "idle/").await;
    assert_eq!(idle_keys, 0);
    stop.store(true, Ordering::SeqCst);
    for keeper in keepers {
        guarded("keeper", keeper).await.unwrap();
    }
}
