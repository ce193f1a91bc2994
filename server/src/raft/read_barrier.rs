//! Linearizable reads: one read-index round serves every read that arrived
//! before the round started. Reads that arrive during a round wait for the
//! next one, which keeps them linearizable. A round takes the read index (on
//! a follower, from the leader), then waits until the local apply reaches
//! it; the next round starts as soon as the index is known, so a round whose
//! apply is slow or stuck holds up no other. A round that has not finished
//! within the request timeout fails with `etcdserver: request timed out`.
//! The task ends when the last [`ReadBarrier`] handle is dropped.

use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::{mpsc, oneshot};

use super::network::Forwarded;
use super::proposer::Submitter;
use crate::errors::EtcdError;

type Waiter = oneshot::Sender<Result<(), EtcdError>>;

/// Attempts at finding a leader before a read fails with `no leader`.
const LEADER_ATTEMPTS: usize = 3;

#[derive(Clone)]
pub struct ReadBarrier {
    tx: mpsc::UnboundedSender<Waiter>,
}

impl ReadBarrier {
    pub fn start(submitter: Submitter) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(submitter, rx));
        Self { tx }
    }

    /// Returns once the local state machine has applied everything committed
    /// before this call.
    pub async fn wait(&self) -> Result<(), EtcdError> {
        let (waiter, done) = oneshot::channel();
        self.tx.send(waiter).map_err(|_| EtcdError::Stopped)?;
        done.await.map_err(|_| EtcdError::Stopped)?
    }
}

async fn run(submitter: Submitter, mut rx: mpsc::UnboundedReceiver<Waiter>) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(waiter) = rx.try_recv() {
            waiters.push(waiter);
        }
        let (indexed, index_known) = oneshot::channel();
        let submitter = submitter.clone();
        tokio::spawn(async move {
            let round = read_round(&submitter, indexed);
            let result = tokio::time::timeout(submitter.request_timeout, round)
                .await
                .unwrap_or(Err(EtcdError::Timeout));
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
        });
        // Dropped unsent when the round ends without an index: the next
        // round may start then too.
        let _ = index_known.await;
    }
}

/// Takes the read index, tells `indexed`, and waits until the local state
/// machine has applied it.
async fn read_round(submitter: &Submitter, indexed: oneshot::Sender<()>) -> Result<(), EtcdError> {
    let raft = &submitter.raft;
    for _ in 0..LEADER_ATTEMPTS {
        let index = match raft.get_read_log_id().await {
            Ok((read_log_id, _applied)) => read_log_id,
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(to))) => {
                let (Some(leader), Some(member)) = (to.leader_id, to.leader_node) else {
                    submitter.wait_for_leader().await;
                    continue;
                };
                match submitter.peers.peer(leader, &member).read_index().await {
                    Ok(index) => index,
                    Err(Forwarded::Failed(error)) => return Err(error),
                    Err(Forwarded::NotSent) => {
                        submitter.wait_for_leader_other_than(leader).await;
                        continue;
                    }
                }
            }
            Err(e) => return Err(super::read_error(&e)),
        };
        let _ = indexed.send(());
        raft.wait(None)
            .applied_index_at_least(index.map(|id| id.index), "read index")
            .await
            .map_err(|_| EtcdError::Stopped)?;
        return Ok(());
    }
    Err(EtcdError::NoLeader)
}
