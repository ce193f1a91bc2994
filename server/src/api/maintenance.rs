//! The Maintenance service: Status, HashKV and MoveLeader; the rest answers `Unimplemented`.

use std::sync::Arc;

use ballast_proto::etcdserverpb::maintenance_server::Maintenance;
use ballast_proto::etcdserverpb::{
    HashKvRequest, HashKvResponse, MoveLeaderRequest, MoveLeaderResponse, StatusRequest,
    StatusResponse,
};
use tonic::{Request, Response, Status};

use super::Header;
use crate::config::ETCD_API_VERSION;
use crate::raft::RaftNode;

pub struct MaintenanceService {
    node: Arc<RaftNode>,
    header: Header,
}

impl MaintenanceService {
    pub fn new(node: Arc<RaftNode>, header: Header) -> Self {
        Self { node, header }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let status = self.node.status();
        let db_size = self.node.db_size() as i64;
        let mut response = StatusResponse {
            version: ETCD_API_VERSION.to_string(),
            db_size,
            db_size_in_use: db_size,
            leader: status.leader,
            raft_index: status.committed_index,
            raft_term: status.term,
            raft_applied_index: status.applied_index,
            is_learner: self.node.is_learner(),
            ..Default::default()
        };
        self.header.fill(&mut response.header);
        Ok(Response::new(response))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.node
            .move_leader(request.into_inner().target_id)
            .await?;
        let mut response = MoveLeaderResponse::default();
        self.header.fill(&mut response.header);
        Ok(Response::new(response))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let (hash, compact_revision, hash_revision) =
            self.node.hash_kv(request.into_inner().revision).await?;
        let mut response = HashKvResponse {
            hash,
            compact_revision,
            hash_revision,
            ..Default::default()
        };
        self.header.fill(&mut response.header);
        Ok(Response::new(response))
    }
}
