//! Packs concurrent write requests into Raft entries.
//!
//! openraft 0.9 appends and fsyncs once per `client_write`, so throughput
//! comes from requests per entry: the proposer takes every request queued
//! while earlier proposals are in flight and proposes them as one command.
//! The task ends when the last [`Proposer`] handle is dropped.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::types::{Command, Raft};
use crate::errors::EtcdError;
use crate::mvcc::{WriteRequest, WriteResponse};

/// Most requests in one entry; bounds entry size together with the request size limit.
const MAX_BATCH: usize = 1024;
/// Proposals in flight at once: lets one batch apply while the next is logged.
const IN_FLIGHT: usize = 2;

type Reply = oneshot::Sender<Result<WriteResponse, EtcdError>>;

#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<(WriteRequest, Reply)>,
}

impl Proposer {
    pub fn start(raft: Raft) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx));
        Self { tx }
    }

    pub async fn propose(&self, request: WriteRequest) -> Result<WriteResponse, EtcdError> {
        let (reply, response) = oneshot::channel();
        self.tx
            .send((request, reply))
            .map_err(|_| EtcdError::Stopped)?;
        response.await.map_err(|_| EtcdError::Stopped)?
    }
}

async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<(WriteRequest, Reply)>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut requests = vec![first.0];
        let mut replies = vec![first.1];
        while requests.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok((request, reply)) => {
                    requests.push(request);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let outcome = raft.client_write(Command { requests }).await;
            drop(permit);
            match outcome {
                Ok(written) => {
                    for (reply, result) in replies.into_iter().zip(written.data.results) {
                        let _ = reply.send(result);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "proposal failed");
                    let error = super::write_error(&e);
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}
