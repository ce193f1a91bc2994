//! The Cluster service: the member list and membership changes. Changes run
//! on the leader (a follower forwards them) and answer once committed.

use std::sync::Arc;

use ballast_proto::etcdserverpb::cluster_server::Cluster;
use ballast_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::Header;
use crate::raft::{MemberChange, MemberChanged, MemberInfo, RaftNode};

pub struct ClusterService {
    node: Arc<RaftNode>,
    header: Header,
}

impl ClusterService {
    pub fn new(node: Arc<RaftNode>, header: Header) -> Self {
        Self { node, header }
    }

    async fn change(&self, change: MemberChange) -> Result<MemberChanged, Status> {
        self.node.refuse_if_learner()?;
        Ok(self.node.change_members(change).await?)
    }
}

fn to_proto(member: MemberInfo) -> Member {
    Member {
        id: member.id,
        name: member.name,
        peer_ur_ls: member.peer_urls,
        client_ur_ls: member.client_urls,
        is_learner: member.is_learner,
    }
}

fn to_proto_list(members: Vec<MemberInfo>) -> Vec<Member> {
    members.into_iter().map(to_proto).collect()
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let request = request.into_inner();
        let changed = self
            .change(MemberChange::Add {
                peer_urls: request.peer_ur_ls,
                is_learner: request.is_learner,
            })
            .await?;
        let mut response = MemberAddResponse {
            member: changed.added.map(to_proto),
            members: to_proto_list(changed.members),
            ..Default::default()
        };
        self.header.fill_without_revision(&mut response.header);
        Ok(Response::new(response))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let id = request.into_inner().id;
        let changed = self.change(MemberChange::Remove { id }).await?;
        let mut response = MemberRemoveResponse {
            members: to_proto_list(changed.members),
            ..Default::default()
        };
        self.header.fill_without_revision(&mut response.header);
        Ok(Response::new(response))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let request = request.into_inner();
        let changed = self
            .change(MemberChange::Update {
                id: request.id,
                peer_urls: request.peer_ur_ls,
            })
            .await?;
        let mut response = MemberUpdateResponse {
            members: to_proto_list(changed.members),
            ..Default::default()
        };
        self.header.fill_without_revision(&mut response.header);
        Ok(Response::new(response))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let id = request.into_inner().id;
        let changed = self.change(MemberChange::Promote { id }).await?;
        let mut response = MemberPromoteResponse {
            members: to_proto_list(changed.members),
            ..Default::default()
        };
        self.header.fill_without_revision(&mut response.header);
        Ok(Response::new(response))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        self.node.refuse_if_learner()?;
        if request.into_inner().linearizable {
            self.node.read_barrier().await?;
        }
        let mut response = MemberListResponse {
            members: to_proto_list(self.node.members()),
            ..Default::default()
        };
        self.header.fill_without_revision(&mut response.header);
        Ok(Response::new(response))
    }
}
