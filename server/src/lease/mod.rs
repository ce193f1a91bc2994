//! Lease expiry, as etcd's primary lessor: only the leader keeps deadlines
//! and expires leases, by proposing revokes through Raft; followers never
//! delete on their own clock. Which leases exist, their TTLs and keys are
//! replicated state in the store (`mvcc::Lease`).
//!
//! On becoming leader (once everything of earlier terms is applied) every
//! lease gets `now + election timeout + remaining`, where remaining is the
//! last checkpointed remaining TTL, or the full TTL: a failover never
//! expires a lease kept alive on the old leader. Every
//! [`CHECKPOINT_INTERVAL`] the leader checkpoints remaining TTLs through
//! Raft, so a long lease does not start again from its full TTL after each
//! leader change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ballast_proto::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest, LeaseRevokeRequest};
use tokio::sync::{Semaphore, broadcast};
use tokio::time::Instant;

use crate::errors::EtcdError;
use crate::mvcc::{LeaseChange, Store, WriteRequest};
use crate::raft::{LeaderLeases, LeaseAnswer, LeaseCall, RaftNode};

/// How often the leader looks for expired leases and due checkpoints.
const TICK: Duration = Duration::from_millis(500);
/// Most leases the leader starts revoking per tick (etcd: 1000 a second).
const REVOKES_PER_TICK: usize = 500;
/// Revoke proposals in flight at once, as etcd.
const REVOKES_IN_FLIGHT: usize = 16;
/// How often remaining TTLs are checkpointed through Raft, as etcd.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);
/// Most checkpoints in one Raft entry, as etcd.
const CHECKPOINTS_PER_ENTRY: usize = 1000;

/// etcd's smallest lease TTL in seconds: 1.5 election timeouts, counted in
/// whole heartbeats and rounded up to a second.
pub fn min_ttl(heartbeat_ms: u64, election_timeout_ms: u64) -> i64 {
    let ticks = election_timeout_ms / heartbeat_ms.max(1);
    let millis = (3 * ticks / 2) * heartbeat_ms;
    millis.div_ceil(1000) as i64
}

#[derive(Default)]
struct Clock {
    /// The Raft term in which this member became the primary lessor and set
    /// every deadline; the deadlines count only while it leads in that term.
    primary_term: Option<u64>,
    deadlines: HashMap<i64, Instant>,
    /// Leases whose revoke was proposed, and when to propose it again if
    /// it has not applied by then.
    revoking: HashMap<i64, Instant>,
    next_checkpoint: Option<Instant>,
}

pub struct Lessor {
    node: Arc<RaftNode>,
    store: Arc<Store>,
    clock: Mutex<Clock>,
    /// Added to every deadline when a member starts leading.
    extend: Duration,
    /// When an unapplied revoke is proposed again (etcd's request timeout).
    revoke_retry: Duration,
    revokes_in_flight: Arc<Semaphore>,
    /// One promotion at a time: a second would reset renewed deadlines.
    promoting: tokio::sync::Mutex<()>,
}

impl Lessor {
    /// Starts the lessor of this member and registers its leader side with Raft.
    pub fn start(node: Arc<RaftNode>, election_timeout: Duration) -> Arc<Self> {
        let store = node.store();
        let lessor = Arc::new(Self {
            node: node.clone(),
            store,
            clock: Mutex::default(),
            extend: election_timeout,
            revoke_retry: Duration::from_secs(5) + 2 * election_timeout,
            revokes_in_flight: Arc::new(Semaphore::new(REVOKES_IN_FLIGHT)),
            promoting: tokio::sync::Mutex::new(()),
        });
        node.serve_leases(lessor.clone());
        tokio::spawn(lessor.clone().run());
        lessor
    }

    fn clock(&self) -> std::sync::MutexGuard<'_, Clock> {
        self.clock.lock().expect("lease clock lock poisoned")
    }

    /// A lease's TTLs: read at once when the store is free (every
    /// keep-alive passes here), else on a blocking thread.
    async fn lease_ttls(&self, id: i64) -> Option<(i64, i64)> {
        match self.store.try_lease_ttls(id) {
            Some(ttls) => ttls,
            None => self.read_store(move |store| store.lease_ttls(id)).await,
        }
    }

    /// Reads the store on a blocking thread: its lock can be held for
    /// minutes (a snapshot install), which must not stall a runtime worker.
    async fn read_store<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> T {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || read(&store))
            .await
            .expect("reading leases panicked")
    }

    async fn run(self: Arc<Self>) {
        let mut changes = self.store.subscribe_leases();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leading = false;
        loop {
            tokio::select! {
                running = self.node.leadership_changed(leading) => {
                    if !running {
                        return;
                    }
                    leading = !leading;
                    // Deadlines of an earlier term never carry over.
                    self.demote();
                    if leading {
                        let _ = self.ensure_primary().await;
                    }
                }
                change = changes.recv() => match change {
                    Ok(change) => self.changed(change),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.resync().await,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    // A promotion that failed (no quorum yet) is tried again.
                    if leading {
                        let _ = self.ensure_primary().await;
                    }
                    self.expire();
                    self.checkpoint().await;
                }
            }
        }
    }

    /// Whether the deadlines are this leader's, of its current term.
    fn is_primary(&self, clock: &Clock) -> bool {
        self.node.is_leader() && clock.primary_term == Some(self.node.term())
    }

    /// Makes this member the primary lessor if it leads and is not yet.
    async fn ensure_primary(&self) -> Result<(), EtcdError> {
        if self.is_primary(&self.clock()) {
            return Ok(());
        }
        if !self.node.is_leader() {
            return Err(EtcdError::NotLeader);
        }
        let _promoting = self.promoting.lock().await;
        if self.is_primary(&self.clock()) {
            return Ok(());
        }
        self.promote().await
    }

    /// Sets every deadline once the leader has applied all earlier terms.
    async fn promote(&self) -> Result<(), EtcdError> {
        let term = self.node.term();
        tokio::time::timeout(self.revoke_retry, self.node.confirm_leadership())
            .await
            .map_err(|_| EtcdError::Timeout)??;
        let leases = self.read_store(Store::leases).await;
        let now = Instant::now();
        let mut clock = self.clock();
        // Leadership may have moved on while confirming.
        if !self.node.is_leader() || self.node.term() != term {
            return Err(EtcdError::NotLeader);
        }
        clock.primary_term = Some(term);
        clock.revoking.clear();
        let mut deadlines: HashMap<i64, Instant> = leases
            .into_iter()
            .map(|(id, ttl, remaining)| {
                let left = if remaining > 0 { remaining } else { ttl };
                (id, now + self.extend + secs(left))
            })
            .collect();
        // Granted after the read above.
        for (id, deadline) in clock.deadlines.drain() {
            deadlines.entry(id).or_insert(deadline);
        }
        clock.deadlines = deadlines;
        clock.next_checkpoint = Some(now + CHECKPOINT_INTERVAL);
        tracing::info!(
            leases = clock.deadlines.len(),
            "leading: lease deadlines set"
        );
        Ok(())
    }

    fn demote(&self) {
        *self.clock() = Clock::default();
    }

    fn changed(&self, change: LeaseChange) {
        let mut clock = self.clock();
        match change {
            // Recorded before this member is primary too: a promotion reads
            // the leases before it takes the clock, and keeps what arrived
            // meanwhile. Nothing expires until it is primary.
            LeaseChange::Granted { id, ttl } => {
                clock.deadlines.insert(id, Instant::now() + secs(ttl));
            }
            LeaseChange::Revoked { id } => {
                clock.deadlines.remove(&id);
                clock.revoking.remove(&id);
            }
        }
    }

    /// After missing lease changes: drop deadlines of leases that are gone,
    /// add the full TTL for ones that are new.
    async fn resync(&self) {
        let leases = self.read_store(Store::leases).await;
        let now = Instant::now();
        let mut clock = self.clock();
        if clock.primary_term.is_none() {
            return;
        }
        let mut deadlines = HashMap::with_capacity(leases.len());
        for (id, ttl, _) in leases {
            let deadline = clock.deadlines.get(&id).copied().unwrap_or(now + secs(ttl));
            deadlines.insert(id, deadline);
        }
        clock.deadlines = deadlines;
    }

    /// Proposes a revoke for each expired lease, after confirming leadership.
    fn expire(self: &Arc<Self>) {
        let now = Instant::now();
        let expired: Vec<i64> = {
            let clock = self.clock();
            if !self.is_primary(&clock) {
                return;
            }
            clock
                .deadlines
                .iter()
                .filter(|(id, deadline)| {
                    **deadline <= now && clock.revoking.get(id).is_none_or(|retry| *retry <= now)
                })
                .map(|(id, _)| *id)
                .take(REVOKES_PER_TICK)
                .collect()
        };
        if expired.is_empty() {
            return;
        }
        {
            let mut clock = self.clock();
            for id in &expired {
                clock.revoking.insert(*id, now + self.revoke_retry);
            }
        }
        let lessor = self.clone();
        tokio::spawn(async move {
            // A stalled old leader must not revoke leases kept alive on the new one.
            if lessor.node.confirm_leadership().await.is_err() {
                return;
            }
            for id in expired {
                let Ok(permit) = lessor.revokes_in_flight.clone().acquire_owned().await else {
                    return;
                };
                let lessor = lessor.clone();
                tokio::spawn(async move {
                    let revoke = WriteRequest::LeaseRevoke(LeaseRevokeRequest { id });
                    match lessor.node.write_as_leader(revoke).await {
                        Ok(_) => {}
                        // Revoked meanwhile (by a client): nothing left to expire.
                        Err(EtcdError::LeaseNotFound) => {
                            let mut clock = lessor.clock();
                            clock.deadlines.remove(&id);
                            clock.revoking.remove(&id);
                        }
                        Err(error) => {
                            tracing::warn!(lease = id, %error, "revoking an expired lease failed; will retry");
                        }
                    }
                    drop(permit);
                });
            }
        });
    }

    /// Every checkpoint interval, records the remaining TTL of each lease
    /// that outlives the interval (shorter ones cost nothing to restart).
    async fn checkpoint(&self) {
        let now = Instant::now();
        let due: Vec<(i64, Instant)> = {
            let mut clock = self.clock();
            if !self.is_primary(&clock) || clock.next_checkpoint.is_none_or(|next| next > now) {
                return;
            }
            clock.next_checkpoint = Some(now + CHECKPOINT_INTERVAL);
            clock.deadlines.iter().map(|(id, d)| (*id, *d)).collect()
        };
        let due = self
            .read_store(move |store| {
                due.into_iter()
                    .filter_map(|(id, deadline)| Some((id, deadline, store.lease_ttls(id)?.0)))
                    .collect::<Vec<_>>()
            })
            .await;
        let mut checkpoints = Vec::new();
        for (id, deadline, ttl) in due {
            let remaining = deadline.saturating_duration_since(now).as_secs_f64().ceil() as i64;
            if remaining > CHECKPOINT_INTERVAL.as_secs() as i64 && remaining < ttl {
                checkpoints.push(LeaseCheckpoint {
                    id,
                    remaining_ttl: remaining,
                });
            }
        }
        for chunk in checkpoints.chunks(CHECKPOINTS_PER_ENTRY) {
            let node = self.node.clone();
            let request = WriteRequest::LeaseCheckpoint(LeaseCheckpointRequest {
                checkpoints: chunk.to_vec(),
            });
            tokio::spawn(async move {
                if let Err(error) = node.write_as_leader(request).await {
                    tracing::warn!(%error, "checkpointing lease TTLs failed");
                }
            });
        }
    }

    /// Leads, is the primary lessor, and has applied everything committed
    /// (so a lease granted or revoked just before is seen).
    async fn ready_to_answer(&self) -> Result<(), EtcdError> {
        self.ensure_primary().await?;
        self.node.read_barrier().await?;
        if !self.node.is_leader() {
            return Err(EtcdError::NotLeader);
        }
        Ok(())
    }

    async fn renew(&self, id: i64) -> Result<LeaseAnswer, EtcdError> {
        self.ready_to_answer().await?;
        // Every keep-alive passes here: the TTLs only, not the lease's keys.
        let Some((ttl, remaining_ttl)) = self.lease_ttls(id).await else {
            return Ok(LeaseAnswer::Renewed { ttl: 0 });
        };
        {
            let clock = self.clock();
            if !self.is_primary(&clock) {
                return Err(EtcdError::NotLeader);
            }
            // Expired: its revoke is on the way.
            if clock
                .deadlines
                .get(&id)
                .is_some_and(|d| *d <= Instant::now())
            {
                return Ok(LeaseAnswer::Renewed { ttl: 0 });
            }
        }
        if remaining_ttl > 0 {
            // A renewed lease starts again from its full TTL, also after a failover.
            let clear = WriteRequest::LeaseCheckpoint(LeaseCheckpointRequest {
                checkpoints: vec![LeaseCheckpoint {
                    id,
                    remaining_ttl: 0,
                }],
            });
            self.node.write_as_leader(clear).await?;
        }
        let exists = self.lease_ttls(id).await.is_some();
        let mut clock = self.clock();
        if !self.is_primary(&clock) {
            return Err(EtcdError::NotLeader);
        }
        // A revoke may have applied while the checkpoint was written.
        if clock.revoking.contains_key(&id) || !exists {
            return Ok(LeaseAnswer::Renewed { ttl: 0 });
        }
        clock.deadlines.insert(id, Instant::now() + secs(ttl));
        Ok(LeaseAnswer::Renewed { ttl })
    }

    async fn time_to_live(&self, id: i64, keys: bool) -> Result<LeaseAnswer, EtcdError> {
        self.ready_to_answer().await?;
        let Some(lease) = self.read_store(move |store| store.lease(id)).await else {
            return Ok(LeaseAnswer::TimeToLive {
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            });
        };
        let clock = self.clock();
        if !self.is_primary(&clock) {
            return Err(EtcdError::NotLeader);
        }
        let remaining = clock.deadlines.get(&id).map_or(lease.ttl, |d| {
            d.saturating_duration_since(Instant::now()).as_secs() as i64
        });
        Ok(LeaseAnswer::TimeToLive {
            ttl: remaining,
            granted_ttl: lease.ttl,
            keys: if keys {
                lease.keys.into_iter().collect()
            } else {
                Vec::new()
            },
        })
    }
}

fn secs(seconds: i64) -> Duration {
    Duration::from_secs(seconds.max(0) as u64)
}

#[tonic::async_trait]
impl LeaderLeases for Lessor {
    async fn answer(&self, call: LeaseCall) -> Result<LeaseAnswer, EtcdError> {
        match call {
            LeaseCall::Renew { id } => self.renew(id).await,
            LeaseCall::TimeToLive { id, keys } => self.time_to_live(id, keys).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_ttl_is_etcds() {
        assert_eq!(min_ttl(100, 1000), 2);
        assert_eq!(min_ttl(250, 3000), 5);
        assert_eq!(min_ttl(10, 100), 1);
    }
}
