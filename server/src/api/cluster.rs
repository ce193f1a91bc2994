//! The Cluster service: MemberList now; membership changes arrive with
//! multi-member clusters and answer `Unimplemented` until then.

use std::sync::Arc;

use ballast_proto::etcdserverpb::cluster_server::Cluster;
use ballast_proto::etcdserverpb::{Member, MemberListRequest, MemberListResponse};
use tonic::{Request, Response, Status};

use super::Header;
use crate::raft::RaftNode;

pub struct ClusterService {
    node: Arc<RaftNode>,
    header: Header,
}

impl ClusterService {
    pub fn new(node: Arc<RaftNode>, header: Header) -> Self {
        Self { node, header }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        _request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let members = self
            .node
            .members()
            .into_iter()
            .map(|(id, member, client_urls)| Member {
                id,
                name: member.name,
                peer_ur_ls: member.peer_urls,
                client_ur_ls: client_urls,
                is_learner: false,
            })
            .collect();
        let mut response = MemberListResponse {
            members,
            ..Default::default()
        };
        self.header.fill_without_revision(&mut response.header);
        Ok(Response::new(response))
    }
}
