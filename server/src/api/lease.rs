//! The Lease service. Grant and revoke go through Raft; keep-alive and
//! time-to-live are answered by the leader (a follower forwards them);
//! the lease list is local, as in etcd.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use ballast_proto::etcdserverpb::lease_server::Lease;
use ballast_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Header;
use crate::errors::EtcdError;
use crate::mvcc::{MAX_LEASE_TTL, WriteRequest, WriteResponse};
use crate::raft::{LeaseAnswer, LeaseCall, RaftNode};

/// Ids tried for a grant that asked for any id.
const GRANT_ATTEMPTS: usize = 3;
/// Keep-alive responses buffered per stream before the stream waits for the client.
const RESPONSE_BUFFER: usize = 16;

/// etcd's id generator: the member's low 16 bits, then a counter started
/// from the clock, so ids from different members and restarts do not meet.
pub struct IdGenerator {
    prefix: u64,
    counter: AtomicU64,
}

impl IdGenerator {
    fn new(member_id: u64) -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self {
            prefix: (member_id & 0xffff) << 48,
            counter: AtomicU64::new((millis & ((1 << 40) - 1)) << 8),
        }
    }

    /// A positive, non-zero id.
    pub fn next(&self) -> i64 {
        loop {
            let suffix = self.counter.fetch_add(1, Ordering::Relaxed) & ((1 << 48) - 1);
            let id = ((self.prefix | suffix) & (i64::MAX as u64)) as i64;
            if id != 0 {
                return id;
            }
        }
    }
}

/// The process's lease id generator, shared by every listener and service
/// that grants leases, so that generated ids never meet.
pub fn lease_ids(member_id: u64) -> &'static IdGenerator {
    static IDS: OnceLock<IdGenerator> = OnceLock::new();
    IDS.get_or_init(|| IdGenerator::new(member_id))
}

pub struct LeaseService {
    node: Arc<RaftNode>,
    header: Header,
    min_ttl: i64,
}

impl LeaseService {
    pub fn new(node: Arc<RaftNode>, header: Header, min_ttl: i64) -> Self {
        Self {
            node,
            header,
            min_ttl,
        }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        self.node.refuse_if_learner()?;
        let mut request = request.into_inner();
        if request.ttl > MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTtlTooLarge.into());
        }
        request.ttl = request.ttl.max(self.min_ttl);
        let generated = request.id == 0;
        let mut attempts = 0;
        let mut response = loop {
            if generated {
                request.id = lease_ids(self.node.member_id()).next();
            }
            match self.node.write(WriteRequest::LeaseGrant(request)).await {
                Ok(WriteResponse::LeaseGrant(response)) => break response,
                Ok(other) => unreachable!("a grant is answered by {other:?}"),
                // A generated id may meet one another listener or an earlier
                // run handed out; the client asked for any id, so pick another.
                Err(EtcdError::LeaseExists) if generated && attempts < GRANT_ATTEMPTS => {
                    attempts += 1;
                }
                Err(error) => return Err(error.into()),
            }
        };
        self.header.fill(&mut response.header);
        Ok(Response::new(response))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        self.node.refuse_if_learner()?;
        let WriteResponse::LeaseRevoke(mut response) = self
            .node
            .write(WriteRequest::LeaseRevoke(request.into_inner()))
            .await?
        else {
            unreachable!("a revoke is answered by a revoke");
        };
        self.header.fill(&mut response.header);
        Ok(Response::new(response))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        self.node.refuse_if_learner()?;
        let mut requests = request.into_inner();
        let (out, responses) = mpsc::channel(RESPONSE_BUFFER);
        let node = self.node.clone();
        let header = self.header.clone();
        tokio::spawn(async move {
            while let Some(Ok(request)) = requests.next().await {
                // The header is taken before renewing, so a client never sees
                // a keep-alive succeed at a revision after the lease's revoke.
                let mut response = LeaseKeepAliveResponse {
                    id: request.id,
                    ..Default::default()
                };
                header.fill(&mut response.header);
                match node.lease_call(LeaseCall::Renew { id: request.id }).await {
                    Ok(LeaseAnswer::Renewed { ttl }) => response.ttl = ttl,
                    Ok(other) => unreachable!("a renew is answered by {other:?}"),
                    Err(error) => {
                        let _ = out.send(Err(error.into())).await;
                        return;
                    }
                }
                if out.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(responses))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.node.refuse_if_learner()?;
        let request = request.into_inner();
        let call = LeaseCall::TimeToLive {
            id: request.id,
            keys: request.keys,
        };
        let LeaseAnswer::TimeToLive {
            ttl,
            granted_ttl,
            keys,
        } = self.node.lease_call(call).await?
        else {
            unreachable!("a time-to-live call is answered by a time to live");
        };
        let mut response = LeaseTimeToLiveResponse {
            id: request.id,
            ttl,
            granted_ttl,
            keys,
            ..Default::default()
        };
        self.header.fill(&mut response.header);
        Ok(Response::new(response))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.node.refuse_if_learner()?;
        let mut response = LeaseLeasesResponse {
            leases: self
                .node
                .store()
                .leases()
                .into_iter()
                .map(|(id, _, _)| LeaseStatus { id })
                .collect(),
            ..Default::default()
        };
        self.header.fill(&mut response.header);
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_positive_distinct_and_carry_the_member() {
        let ids = IdGenerator::new(0x8e9e05c52164694d);
        let a = ids.next();
        let b = ids.next();
        assert!(a > 0 && b > a);
        assert_eq!((a as u64) >> 48, 0x694d & 0x7fff);
    }
}
