//! Peer transport. A one-member cluster never sends a Raft RPC; the peer gRPC
//! service arrives with multi-member clusters (issue 3), and until then every
//! peer is unreachable.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::types::{Member, TypeConfig};

type RpcResult<T, E = RaftError<u64>> = Result<T, RPCError<u64, Member, E>>;

pub struct NoPeers;

pub struct NoPeer;

fn unreachable<E: std::error::Error>() -> RPCError<u64, Member, E> {
    let reason = std::io::Error::other("peer transport is not available in a one-member cluster");
    RPCError::Unreachable(Unreachable::new(&reason))
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeer;

    async fn new_client(&mut self, _target: u64, _node: &Member) -> NoPeer {
        NoPeer
    }
}

impl RaftNetwork<TypeConfig> for NoPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        Err(unreachable())
    }
}
