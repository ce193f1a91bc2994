//! Linearizable reads: one read-index round serves every read that arrived
//! before the round started. Reads that arrive during a round wait for the
//! next one, which keeps them linearizable. On a follower the round asks the
//! leader for its read index and waits until the local apply reaches it.
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
        let result = read_round(&submitter).await;
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

async fn read_round(submitter: &Submitter) -> Result<(), EtcdError> {
    let raft = &submitter.raft;
    for _ in 0..LEADER_ATTEMPTS {
        match raft.ensure_linearizable().await {
            Ok(_) => return Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(to))) => {
                let (Some(leader), Some(member)) = (to.leader_id, to.leader_node) else {
                    submitter.wait_for_leader().await;
                    continue;
                };
                let index = match submitter.peers.peer(leader, &member).read_index().await {
                    Ok(index) => index,
                    Err(Forwarded::Failed(error)) => return Err(error),
                    Err(Forwarded::NotSent) => {
                        submitter.wait_for_leader_other_than(leader).await;
                        continue;
                    }
                };
                raft.wait(None)
                    .applied_index_at_least(index.map(|id| id.index), "leader's read index")
                    .await
                    .map_err(|_| EtcdError::Stopped)?;
                return Ok(());
            }
            Err(e) => return Err(super::read_error(&e)),
        }
    }
    Err(EtcdError::NoLeader)
}
