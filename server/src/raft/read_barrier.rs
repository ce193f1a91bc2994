//! Linearizable reads: one read-index round (`ensure_linearizable`) serves
//! every read that arrived before the round started. Reads that arrive during
//! a round wait for the next one, which keeps them linearizable.
//! The task ends when the last [`ReadBarrier`] handle is dropped.

use tokio::sync::{mpsc, oneshot};

use super::types::Raft;
use crate::errors::EtcdError;

type Waiter = oneshot::Sender<Result<(), EtcdError>>;

#[derive(Clone)]
pub struct ReadBarrier {
    tx: mpsc::UnboundedSender<Waiter>,
}

impl ReadBarrier {
    pub fn start(raft: Raft) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx));
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

async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<Waiter>) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(waiter) = rx.try_recv() {
            waiters.push(waiter);
        }
        let result = raft
            .ensure_linearizable()
            .await
            .map(|_| ())
            .map_err(|e| super::read_error(&e));
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}
