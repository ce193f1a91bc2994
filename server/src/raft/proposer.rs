//! Packs concurrent write requests into Raft entries.
//!
//! openraft 0.9 appends and fsyncs once per `client_write`, so throughput
//! comes from requests per entry: the proposer takes every request queued
//! while earlier proposals are in flight and proposes them as one command.
//! On a follower the command goes to the leader as one forwarded batch.
//! The task ends when the last [`Proposer`] handle is dropped.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::network::{Forwarded, PeerNetwork};
use super::types::{Command, CommandResponse, Raft};
use crate::errors::EtcdError;
use crate::mvcc::{WriteRequest, WriteResponse};

/// Most requests in one entry.
const MAX_BATCH: usize = 1024;
/// Most request bytes in one entry (a larger request gets an entry of its
/// own). openraft 0.9 gives each AppendEntries one heartbeat interval to be
/// sent, appended and synced by the follower, so an entry must stay small
/// enough to travel alone in that time.
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Proposals in flight at once: lets one batch apply while the next is logged.
const IN_FLIGHT: usize = 2;
/// Requests waiting for a proposal; more wait for room (backpressure on
/// the handlers) rather than growing memory without bound.
const QUEUE: usize = 16 * 1024;
/// Attempts at finding a leader before a client hears `no leader`.
const LEADER_ATTEMPTS: usize = 3;

type Reply = oneshot::Sender<Result<WriteResponse, EtcdError>>;

#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<(WriteRequest, Reply)>,
}

impl Proposer {
    pub fn start(submitter: Submitter) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(submitter, rx));
        Self { tx }
    }

    pub async fn propose(&self, request: WriteRequest) -> Result<WriteResponse, EtcdError> {
        let (reply, response) = oneshot::channel();
        self.tx
            .send((request, reply))
            .await
            .map_err(|_| EtcdError::Stopped)?;
        response.await.map_err(|_| EtcdError::Stopped)?
    }
}

/// Gets a command committed: through the local Raft on the leader, forwarded
/// to the leader on a follower.
#[derive(Clone)]
pub struct Submitter {
    pub raft: Raft,
    pub peers: PeerNetwork,
    /// How long to wait for a leader to appear before trying again.
    pub leader_wait: Duration,
    /// How long a proposal may wait to commit (a leader cut off from its
    /// quorum commits nothing), as etcd's request timeout.
    pub request_timeout: Duration,
}

impl Submitter {
    pub async fn submit(&self, command: Command) -> Result<CommandResponse, EtcdError> {
        for _ in 0..LEADER_ATTEMPTS {
            let written = tokio::time::timeout(
                self.request_timeout,
                self.raft.client_write(command.clone()),
            )
            .await
            .map_err(|_| EtcdError::Timeout)?;
            match written {
                Ok(written) => return Ok(written.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to))) => {
                    match (to.leader_id, to.leader_node) {
                        (Some(leader), Some(member)) => {
                            match self.peers.peer(leader, &member).propose(&command).await {
                                Ok(response) => return Ok(response),
                                Err(Forwarded::Failed(error)) => return Err(error),
                                Err(Forwarded::NotSent) => {
                                    self.wait_for_leader_other_than(leader).await
                                }
                            }
                        }
                        _ => self.wait_for_leader().await,
                    }
                }
                Err(e) => return Err(super::write_error(&e)),
            }
        }
        Err(EtcdError::NoLeader)
    }

    pub async fn wait_for_leader(&self) {
        let _ = self
            .raft
            .wait(Some(self.leader_wait))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await;
    }

    /// Waits until a member other than the unreachable `leader` leads, as
    /// etcd holds a proposal until there is a leader to take it.
    pub async fn wait_for_leader_other_than(&self, leader: u64) {
        let _ = self
            .raft
            .wait(Some(self.leader_wait))
            .metrics(
                |m| m.current_leader.is_some_and(|current| current != leader),
                "a new leader",
            )
            .await;
    }
}

fn request_bytes(request: &WriteRequest) -> usize {
    use prost::Message;
    match request {
        WriteRequest::Put(r) => r.encoded_len(),
        WriteRequest::DeleteRange(r) => r.encoded_len(),
        WriteRequest::Txn(r) => r.encoded_len(),
        WriteRequest::Compact(r) => r.encoded_len(),
        WriteRequest::LeaseGrant(r) => r.encoded_len(),
        WriteRequest::LeaseRevoke(r) => r.encoded_len(),
        WriteRequest::LeaseCheckpoint(r) => r.encoded_len(),
    }
}

async fn run(submitter: Submitter, mut rx: mpsc::Receiver<(WriteRequest, Reply)>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut carried = None;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // A request whose client went away (its reply closed) is not proposed.
        let first = loop {
            let next = match carried.take() {
                Some(next) => next,
                None => match rx.recv().await {
                    Some(next) => next,
                    None => return,
                },
            };
            if !next.1.is_closed() {
                break next;
            }
        };
        let mut bytes = request_bytes(&first.0);
        let mut requests = vec![first.0];
        let mut replies = vec![first.1];
        while requests.len() < MAX_BATCH {
            let Ok((request, reply)) = rx.try_recv() else {
                break;
            };
            if reply.is_closed() {
                continue;
            }
            bytes += request_bytes(&request);
            if bytes > MAX_BATCH_BYTES {
                carried = Some((request, reply));
                break;
            }
            requests.push(request);
            replies.push(reply);
        }
        let submitter = submitter.clone();
        tokio::spawn(async move {
            let outcome = submitter.submit(Command::Writes(requests)).await;
            drop(permit);
            match outcome {
                Ok(response) => {
                    for (reply, result) in replies.into_iter().zip(response.results) {
                        let _ = reply.send(result);
                    }
                }
                Err(error) => {
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}
