//! Leases under faults: each grant attaches one unique key to a fresh lease
//! that the harness then keeps alive, lets expire, or revokes; reads list
//! the keys present. The keep-alives run as tasks of their own until the
//! runner stops them before the final reads, and log every answer
//! (`crate::checker::lease::KeptLease`) instead of filling the history.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Client, GetOptions, PutOptions, ResponseHeader};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Completion, Invocation};
use crate::checker::lease::{KeepAlive, KeptLease};
use crate::client::{Recorder, connect, describe};

pub const KEY_PREFIX: &str = "jepsen/l/";
pub const TTL_S: i64 = 3;
const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);
/// Past this a keep-alive counts as failed and the next goes elsewhere.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// Each kept lease costs two keep-alives a second for the rest of the run.
const MAX_KEPT: usize = 32;
const KEEP_PROBABILITY: f64 = 0.04;

pub struct LeaseGenerator {
    urls: Vec<String>,
    recorder: Recorder,
    next_key: AtomicU64,
    keep_invoked: AtomicUsize,
    /// Leases granted in mode "revoke" and not yet picked, oldest first.
    to_revoke: Mutex<VecDeque<(i64, String)>>,
    keepers: Mutex<Vec<JoinHandle<KeptLease>>>,
    stop: watch::Sender<bool>,
}

impl LeaseGenerator {
    pub fn new(urls: &[String], recorder: &Recorder) -> LeaseGenerator {
        LeaseGenerator {
            urls: urls.to_vec(),
            recorder: recorder.clone(),
            next_key: AtomicU64::new(0),
            keep_invoked: AtomicUsize::new(0),
            to_revoke: Mutex::new(VecDeque::new()),
            keepers: Mutex::new(Vec::new()),
            stop: watch::Sender::new(false),
        }
    }

    pub fn next(&self, rng: &mut ChaCha8Rng) -> Invocation {
        let roll = rng.random_range(0..4);
        if roll == 0 {
            let number = self.next_key.fetch_add(1, Ordering::Relaxed);
            let keep = rng.random_bool(KEEP_PROBABILITY)
                && self.keep_invoked.fetch_add(1, Ordering::Relaxed) < MAX_KEPT;
            let mode = match (keep, rng.random_bool(0.5)) {
                (true, _) => "keep",
                (false, true) => "expire",
                (false, false) => "revoke",
            };
            return Invocation {
                f: "grant",
                value: json!({"key": format!("{KEY_PREFIX}{number}"), "mode": mode, "ttl": TTL_S}),
            };
        }
        if roll == 1
            && let Some((lease, key)) = self.to_revoke.lock().expect("revoke queue").pop_front()
        {
            return Invocation {
                f: "revoke",
                value: json!({"lease": lease, "key": key}),
            };
        }
        Invocation {
            f: "read",
            value: Value::Null,
        }
    }

    /// Stops every keep-alive task and returns their logs.
    pub async fn stop_keepalives(&self) -> Vec<KeptLease> {
        self.stop.send_replace(true);
        let keepers = std::mem::take(&mut *self.keepers.lock().expect("keepers"));
        let mut logs = Vec::new();
        for keeper in keepers {
            if let Ok(log) = keeper.await {
                logs.push(log);
            }
        }
        logs
    }

    fn keep_alive(&self, client: Client, lease: i64, key: &str, ttl: i64) {
        let keeper = Keeper {
            client: Some(client),
            urls: self.urls.clone(),
            next_member: lease.unsigned_abs() as usize,
            recorder: self.recorder.clone(),
            stop: self.stop.subscribe(),
            log: KeptLease {
                lease,
                key: key.to_string(),
                ttl,
                keepalives: Vec::new(),
            },
        };
        let task = tokio::spawn(keeper.run());
        self.keepers.lock().expect("keepers").push(task);
    }
}

fn term(header: Option<&ResponseHeader>) -> u64 {
    header.map_or(0, |h| h.raft_term())
}

pub async fn execute(
    generator: &LeaseGenerator,
    client: &mut Client,
    invocation: &Invocation,
) -> Completion {
    let value = &invocation.value;
    match invocation.f {
        "read" => {
            let options = GetOptions::new().with_prefix().with_keys_only();
            match client.get(KEY_PREFIX, Some(options)).await {
                Ok(response) => {
                    let keys: Vec<String> = response
                        .kvs()
                        .iter()
                        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                        .collect();
                    let revision = response.header().map_or(0, |h| h.revision());
                    let term = term(response.header());
                    Completion::ok(json!({"keys": keys, "revision": revision, "term": term}))
                }
                Err(e) => Completion::failed(value.clone(), &e, false),
            }
        }
        "revoke" => {
            let lease = value["lease"].as_i64().unwrap_or_default();
            match client.lease_revoke(lease).await {
                Ok(response) => {
                    let mut done = value.clone();
                    done["term"] = json!(term(response.header()));
                    Completion::ok(done)
                }
                Err(e) => Completion::failed(value.clone(), &e, true),
            }
        }
        _ => grant(generator, client, value).await,
    }
}

/// LeaseGrant, then a put of the key with that lease.
async fn grant(generator: &LeaseGenerator, client: &mut Client, value: &Value) -> Completion {
    let key = value["key"].as_str().unwrap_or_default();
    let granted = match client.lease_grant(TTL_S, None).await {
        Ok(granted) => granted,
        Err(e) => return Completion::failed(value.clone(), &e, true),
    };
    let mut done = value.clone();
    done["lease"] = json!(granted.id());
    done["ttl"] = json!(granted.ttl());
    let options = PutOptions::new().with_lease(granted.id());
    match client.put(key, "", Some(options)).await {
        Ok(response) => {
            match value["mode"].as_str() {
                Some("keep") => {
                    generator.keep_alive(client.clone(), granted.id(), key, granted.ttl())
                }
                Some("revoke") => generator
                    .to_revoke
                    .lock()
                    .expect("revoke queue")
                    .push_back((granted.id(), key.to_string())),
                _ => {}
            }
            done["term"] = json!(term(response.header()));
            Completion::ok(done)
        }
        Err(e) => Completion::failed(done, &e, true),
    }
}

/// Keeps one lease alive through the worker's member, and after an error
/// through the next member in turn, until stopped or told the lease is gone.
struct Keeper {
    client: Option<Client>,
    urls: Vec<String>,
    next_member: usize,
    recorder: Recorder,
    stop: watch::Receiver<bool>,
    log: KeptLease,
}

impl Keeper {
    async fn run(mut self) -> KeptLease {
        let mut stream = None;
        let mut tick = tokio::time::interval(KEEPALIVE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = self.stop.changed() => if changed.is_err() {
                    return self.log;
                }
            }
            if *self.stop.borrow() {
                return self.log;
            }
            let sent = self.recorder.elapsed_ns();
            let answer = tokio::time::timeout(KEEPALIVE_TIMEOUT, self.renew(&mut stream)).await;
            let received = self.recorder.elapsed_ns();
            let (ttl, term, error) = match answer {
                Ok(Ok((ttl, term))) => (ttl, term, None),
                Ok(Err(e)) => (-1, 0, Some(describe(&e))),
                Err(_) => (-1, 0, Some("timed out".to_string())),
            };
            let gone = ttl == 0;
            if error.is_some() {
                stream = None;
                self.client = None;
            }
            self.log.keepalives.push(KeepAlive {
                sent,
                received,
                ttl,
                term,
                error,
            });
            if gone {
                return self.log;
            }
        }
    }

    /// One keep-alive: the TTL answered and the answering member's term.
    /// Opening the stream sends the first keep-alive, and the client keeps
    /// its answer to itself: it fails if the lease is gone, and otherwise
    /// the lease got its granted TTL again, in a term not told.
    async fn renew(
        &mut self,
        stream: &mut Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
    ) -> Result<(i64, u64), etcd_client::Error> {
        if let Some((keeper, responses)) = stream {
            keeper.keep_alive().await?;
            let response = responses.message().await?.ok_or_else(|| {
                etcd_client::Error::LeaseKeepAliveError("keep-alive stream closed".into())
            })?;
            return Ok((response.ttl(), term(response.header())));
        }
        let client = match &mut self.client {
            Some(client) => client,
            None => {
                let url = &self.urls[self.next_member % self.urls.len()];
                self.next_member += 1;
                self.client.insert(connect(url).await?)
            }
        };
        match client.lease_keep_alive(self.log.lease).await {
            Ok(opened) => {
                *stream = Some(opened);
                Ok((self.log.ttl, 0))
            }
            Err(etcd_client::Error::LeaseKeepAliveError(message))
                if message == "lease not found" =>
            {
                Ok((0, 0))
            }
            Err(e) => Err(e),
        }
    }
}
