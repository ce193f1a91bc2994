//! The v3lock and v3election services, through the etcd-client crate,
//! against the real etcd 3.4 and Ballast: the same sequence of locks,
//! campaigns, proclamations and resignations must give the same answers
//! (lease ids and key names masked, revisions relative to the start).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Ballast, Etcd};
use etcd_client::{Client, LeaderKey, LockOptions, ProclaimOptions, ResignOptions};

/// A hang guard for calls that must finish (not a timing assertion).
const GUARD: Duration = Duration::from_secs(30);

async fn guarded<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, call)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish"))
}

struct Recorder {
    lines: Vec<String>,
    names: BTreeMap<String, String>,
    base: i64,
}

impl Recorder {
    /// `text` with every lease id (hex or decimal) seen so far replaced by its name.
    fn mask(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (id, name) in &self.names {
            text = text.replace(id.as_str(), name);
        }
        text
    }

    fn lease(&mut self, id: i64) {
        let name = format!("lease{}", self.names.len() / 2);
        self.names.insert(format!("{id:x}"), name.clone());
        self.names.insert(id.to_string(), name);
    }

    fn push(&mut self, line: String) {
        let masked = self.mask(&line);
        self.lines.push(masked);
    }

    fn rev(&self, revision: i64) -> i64 {
        revision - self.base
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

/// Waits until `watch` shows a put of a key-value matching `wanted`.
async fn put_seen(
    watch: &mut etcd_client::WatchStream,
    wanted: impl Fn(&etcd_client::KeyValue) -> bool,
) {
    guarded("a put in line", async {
        loop {
            let response = watch.message().await.unwrap().unwrap();
            if response
                .events()
                .iter()
                .any(|e| e.kv().is_some_and(&wanted))
            {
                return;
            }
        }
    })
    .await
}

async fn session(client: &mut Client) -> Vec<String> {
    let base = client
        .put("base", "", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut r = Recorder {
        lines: Vec::new(),
        names: BTreeMap::new(),
        base,
    };
    let first = client.lease_grant(60, None).await.unwrap().id();
    let second = client.lease_grant(60, None).await.unwrap().id();
    r.lease(first);
    r.lease(second);

    // Locks: the first holder, a waiter that gets it on unlock.
    let held = client
        .lock("mylock", Some(LockOptions::new().with_lease(first)))
        .await
        .unwrap();
    r.push(format!(
        "lock: key {} rev {}",
        String::from_utf8_lossy(held.key()),
        r.rev(held.header().unwrap().revision())
    ));
    let again = client
        .lock("mylock", Some(LockOptions::new().with_lease(first)))
        .await
        .unwrap();
    r.push(format!(
        "lock again with the same lease: key {}",
        String::from_utf8_lossy(again.key())
    ));
    let mut queue = client
        .watch(
            "mylock/",
            Some(etcd_client::WatchOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let mut waiter_client = client.clone();
    let waiter = tokio::spawn(async move {
        waiter_client
            .lock("mylock", Some(LockOptions::new().with_lease(second)))
            .await
    });
    // The waiter's key is in line before the holder unlocks.
    let waiter_key = format!("mylock/{second:x}");
    put_seen(&mut queue, |kv| kv.key() == waiter_key.as_bytes()).await;
    let unlocked = client.unlock(held.key()).await.unwrap();
    r.push(format!(
        "unlock: rev {}",
        r.rev(unlocked.header().unwrap().revision())
    ));
    let got = guarded("the waiting lock", waiter).await.unwrap().unwrap();
    r.push(format!(
        "waiter got it: key {} rev {}",
        String::from_utf8_lossy(got.key()),
        r.rev(got.header().unwrap().revision())
    ));
    client.unlock(got.key()).await.unwrap();
    let missing = client
        .lock("mylock", Some(LockOptions::new().with_lease(0x4242)))
        .await
        .unwrap_err();
    r.push(format!(
        "lock with a missing lease: {}",
        error_line(missing)
    ));
    let nothing = client.unlock("no/such/key").await.unwrap();
    r.push(format!(
        "unlock of nothing: rev {}",
        r.rev(nothing.header().unwrap().revision())
    ));

    // Elections.
    let none = client.leader("el").await.unwrap_err();
    r.push(format!("leader of an empty election: {}", error_line(none)));
    let won = client.campaign("el", "v1", first).await.unwrap();
    let leader = won.leader().unwrap().clone();
    r.push(format!(
        "campaign: key {} rev {} lease {} header rev {}",
        leader.key_str().unwrap(),
        r.rev(leader.rev()),
        leader.lease(),
        r.rev(won.header().unwrap().revision())
    ));
    let current = client.leader("el").await.unwrap();
    r.push(format!(
        "leader: {}",
        current.kv().unwrap().value_str().unwrap()
    ));
    let proclaimed = client
        .proclaim(
            "v2",
            Some(ProclaimOptions::new().with_leader(leader.clone())),
        )
        .await
        .unwrap();
    r.push(format!(
        "proclaim: rev {}",
        r.rev(proclaimed.header().unwrap().revision())
    ));
    let stale = LeaderKey::new()
        .with_name("el")
        .with_key(leader.key())
        .with_rev(1)
        .with_lease(first);
    let refused = client
        .proclaim(
            "v3",
            Some(ProclaimOptions::new().with_leader(stale.clone())),
        )
        .await
        .unwrap_err();
    r.push(format!(
        "proclaim as a stale leader: {}",
        error_line(refused)
    ));
    let mut observer = client.observe("el").await.unwrap();
    let seen = guarded("observe", observer.message())
        .await
        .unwrap()
        .unwrap();
    r.push(format!(
        "observe: {}",
        seen.kv().unwrap().value_str().unwrap()
    ));

    let mut candidates = client
        .watch("el/", Some(etcd_client::WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut candidate_client = client.clone();
    let candidate =
        tokio::spawn(async move { candidate_client.campaign("el", "c2", second).await });
    // The second candidate's key is in line before the leader resigns.
    put_seen(&mut candidates, |kv| kv.value() == b"c2").await;
    let ignored = client
        .resign(Some(ResignOptions::new().with_leader(stale)))
        .await
        .unwrap();
    r.push(format!(
        "resign as a stale leader: rev {}",
        r.rev(ignored.header().unwrap().revision())
    ));
    client
        .resign(Some(ResignOptions::new().with_leader(leader)))
        .await
        .unwrap();
    let next = guarded("the second campaign", candidate)
        .await
        .unwrap()
        .unwrap();
    r.push(format!(
        "second campaign won: key {}",
        next.leader().unwrap().key_str().unwrap()
    ));
    let seen = guarded("observe", observer.message())
        .await
        .unwrap()
        .unwrap();
    r.push(format!(
        "observe: {}",
        seen.kv().unwrap().value_str().unwrap()
    ));
    r.lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_and_election_match_etcd() {
    let (etcd, ballast) = tokio::join!(Etcd::start(), Ballast::start());
    let mut etcd_client = Client::connect([etcd.endpoint()], None).await.unwrap();
    let mut ballast_client = Client::connect([ballast.endpoint()], None).await.unwrap();
    let expected = guarded("etcd session", session(&mut etcd_client)).await;
    let got = guarded("ballast session", session(&mut ballast_client)).await;
    for (i, (e, b)) in expected.iter().zip(&got).enumerate() {
        assert_eq!(
            b, e,
            "step {i} differs\netcd:    {expected:#?}\nballast: {got:#?}"
        );
    }
    assert_eq!(
        got.len(),
        expected.len(),
        "etcd: {expected:#?}\nballast: {got:#?}"
    );
}
