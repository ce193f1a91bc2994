//! Lease requests only the leader can answer (keep-alive, time-to-live):
//! the leader's lessor registers itself here, and a follower forwards.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::errors::EtcdError;

/// A lease request for the leader's lessor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaseCall {
    Renew { id: i64 },
    TimeToLive { id: i64, keys: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseAnswer {
    /// The lease's TTL, or 0 if it does not exist (or has expired).
    Renewed { ttl: i64 },
    /// Remaining and granted TTL (-1 and 0 if the lease does not exist).
    TimeToLive {
        ttl: i64,
        granted_ttl: i64,
        keys: Vec<Bytes>,
    },
}

/// The leader's side of lease requests; `Err(EtcdError::NotLeader)` when
/// this member does not lead (the caller then asks the leader).
#[tonic::async_trait]
pub trait LeaderLeases: Send + Sync + 'static {
    async fn answer(&self, call: LeaseCall) -> Result<LeaseAnswer, EtcdError>;
}
