//! The peer transport, server side: hands openraft's RPCs to the local Raft
//! and proposes writes that followers forward. Refuses messages meant for
//! another member or cluster (a misrouted peer is how split brains start).

use ballast_proto::ballastraftpb::raft_server::Raft as PeerRaft;
use ballast_proto::ballastraftpb::{PeerReply, PeerRequest};
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use super::LeaseLeaderSlot;
use super::election_pause::ElectionPause;
use super::leases::{LeaseAnswer, LeaseCall};
use super::membership::Membership;
use super::peer_messages::{MemberChange, MemberChanged, Notice};
use super::types::{Command, CommandResponse, LogId, Raft, TypeConfig};
use crate::errors::EtcdError;

pub struct PeerService {
    raft: Raft,
    membership: Membership,
    lease_leader: LeaseLeaderSlot,
    election_pause: ElectionPause,
    member_id: u64,
    cluster_id: u64,
}

impl PeerService {
    pub fn new(
        raft: Raft,
        membership: Membership,
        lease_leader: LeaseLeaderSlot,
        election_pause: ElectionPause,
        member_id: u64,
        cluster_id: u64,
    ) -> Self {
        Self {
            raft,
            membership,
            lease_leader,
            election_pause,
            member_id,
            cluster_id,
        }
    }

    fn open<T: DeserializeOwned>(&self, request: Request<PeerRequest>) -> Result<T, Status> {
        let request = request.into_inner();
        if request.target_member_id != self.member_id || request.cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(format!(
                "message for member {:x} of cluster {:x} reached member {:x} of cluster {:x}",
                request.target_member_id, request.cluster_id, self.member_id, self.cluster_id
            )));
        }
        postcard::from_bytes(&request.payload).map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

fn reply<T: Serialize>(value: &T) -> Result<Response<PeerReply>, Status> {
    let payload = postcard::to_stdvec(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(PeerReply {
        payload: payload.into(),
    }))
}

#[tonic::async_trait]
impl PeerRaft for PeerService {
    async fn append_entries(
        &self,
        request: Request<PeerRequest>,
    ) -> Result<Response<PeerReply>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = self.open(request)?;
        let response = self.raft.append_entries(rpc).await;
        if let Ok(
            AppendEntriesResponse::Success
            | AppendEntriesResponse::PartialSuccess(_)
            | AppendEntriesResponse::Conflict,
        ) = response
        {
            self.election_pause.leader_heard();
        }
        reply(&response)
    }

    async fn vote(&self, request: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        let rpc: VoteRequest<u64> = self.open(request)?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<PeerRequest>,
    ) -> Result<Response<PeerReply>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = self.open(request)?;
        let _chunk = self.election_pause.chunk_started(rpc.done);
        reply(&self.raft.install_snapshot(rpc).await)
    }

    async fn propose(&self, request: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        let command: Command = self.open(request)?;
        let result: Result<CommandResponse, EtcdError> = match self.raft.client_write(command).await
        {
            Ok(written) => Ok(written.data),
            // Leadership moved while the request travelled: the client retries.
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(EtcdError::LeaderChanged)
            }
            Err(e) => Err(super::write_error(&e)),
        };
        reply(&result)
    }

    async fn read_index(
        &self,
        request: Request<PeerRequest>,
    ) -> Result<Response<PeerReply>, Status> {
        let () = self.open(request)?;
        // The follower waits for its own apply; the leader's need not wait.
        let result: Result<Option<LogId>, EtcdError> = self
            .raft
            .get_read_log_id()
            .await
            .map(|(read_log_id, _applied)| read_log_id)
            .map_err(|e| super::read_error(&e));
        reply(&result)
    }

    async fn change_members(
        &self,
        request: Request<PeerRequest>,
    ) -> Result<Response<PeerReply>, Status> {
        let change: MemberChange = self.open(request)?;
        let result: Result<MemberChanged, EtcdError> = self.membership.change(change).await;
        reply(&result)
    }

    async fn cluster_info(
        &self,
        _request: Request<PeerRequest>,
    ) -> Result<Response<PeerReply>, Status> {
        reply(&self.membership.cluster_info())
    }

    async fn notify(&self, request: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        let notice: Notice = self.open(request)?;
        self.membership.notice(notice);
        reply(&())
    }

    async fn lease(&self, request: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        let call: LeaseCall = self.open(request)?;
        let result: Result<LeaseAnswer, EtcdError> = match self.lease_leader.get() {
            Some(leader) => leader.answer(call).await,
            None => Err(EtcdError::NotLeader),
        };
        reply(&result)
    }
}
