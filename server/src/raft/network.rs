//! The peer transport, client side: openraft's RPCs and forwarded client
//! requests to other members over gRPC (`ballastraftpb.Raft`), payloads
//! postcard-encoded. One lazily connected channel per peer, shared by clones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ballast_proto::ballastraftpb::PeerRequest;
use ballast_proto::ballastraftpb::raft_client::RaftClient;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use super::leases::{LeaseAnswer, LeaseCall};
use super::peer_messages::{ClusterInfo, MemberChange, MemberChanged, Notice};

use super::types::{Command, CommandResponse, LogId, Member, TypeConfig};
use crate::errors::EtcdError;

/// Peer messages may carry snapshot chunks and batches of large requests.
pub const MAX_PEER_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// How long a forwarded request may take before the client hears a timeout.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// A snapshot chunk other than the last is only written to a file on the
/// follower; the last one waits for the whole install (openraft's
/// `install_snapshot_timeout`).
const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings on peer connections, so that an RPC to a member that went
/// silent (a cut link, a frozen host) fails in seconds even when its own
/// deadline is long, as a snapshot install's is.
const PEER_PING_INTERVAL: Duration = Duration::from_secs(1);
const PEER_PING_TIMEOUT: Duration = Duration::from_secs(3);

type RpcResult<T, E = RaftError<u64>> = Result<T, RPCError<u64, Member, E>>;

#[derive(Clone)]
pub struct PeerNetwork {
    cluster_id: u64,
    /// One channel per member and peer URL (MemberUpdate may change the URL).
    channels: Arc<Mutex<HashMap<(u64, String), Channel>>>,
    /// While true, the leader sends no AppendEntries (leader transfer).
    replication_held: Arc<watch::Sender<bool>>,
    /// The address peer connections leave from, if bound.
    source_address: Option<std::net::IpAddr>,
}

pub struct Peer {
    target: u64,
    cluster_id: u64,
    client: Option<RaftClient<Channel>>,
    replication_held: watch::Receiver<bool>,
}

/// Why a request forwarded to the leader got no result.
#[derive(Debug)]
pub enum Forwarded {
    /// It never reached the leader (it is down): safe to retry with the next leader.
    NotSent,
    /// It may have reached the leader; the client decides whether to retry.
    Failed(EtcdError),
}

/// Whether the call failed while connecting, so the peer never saw the
/// request: the transport's cause is a refused or unroutable connection.
/// A reset or a timeout may come after the request left, so they do not count.
fn is_connect_error(status: &tonic::Status) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::AddrNotAvailable
            );
        }
        cause = error.source();
    }
    false
}

/// A peer call that failed before the peer answered.
#[derive(Debug)]
enum CallError {
    Unreachable(tonic::Status),
    Failed(tonic::Status),
}

impl PeerNetwork {
    pub fn new(cluster_id: u64, source_address: Option<std::net::IpAddr>) -> Self {
        Self {
            cluster_id,
            channels: Arc::default(),
            replication_held: Arc::new(watch::channel(false).0),
            source_address,
        }
    }

    pub fn hold_replication(&self, held: bool) {
        self.replication_held.send_replace(held);
    }

    /// Asks whichever member serves on `peer_urls` for the cluster it belongs to.
    pub async fn cluster_info(
        peer_urls: &[String],
        timeout: Duration,
    ) -> Result<ClusterInfo, tonic::Status> {
        let url = peer_urls
            .first()
            .ok_or_else(|| tonic::Status::invalid_argument("member has no peer URL"))?;
        let call = async {
            let channel = Endpoint::from_shared(url.clone())
                .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
                .connect_timeout(timeout)
                .connect()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let request = PeerRequest {
                target_member_id: 0,
                cluster_id: 0,
                payload: postcard::to_stdvec(&())
                    .expect("peer messages encode")
                    .into(),
            };
            let reply = RaftClient::new(channel).cluster_info(request).await?;
            postcard::from_bytes(&reply.into_inner().payload)
                .map_err(|e| tonic::Status::internal(e.to_string()))
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("no answer from peer"))?
    }

    pub fn peer(&self, target: u64, member: &Member) -> Peer {
        let client = self.channel(target, member).map(|channel| {
            RaftClient::new(channel)
                .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES)
        });
        Peer {
            target,
            cluster_id: self.cluster_id,
            client,
            replication_held: self.replication_held.subscribe(),
        }
    }

    fn channel(&self, target: u64, member: &Member) -> Option<Channel> {
        let url = member.peer_urls.first()?;
        let mut channels = self.channels.lock().expect("peer channel lock poisoned");
        let key = (target, url.clone());
        if let Some(channel) = channels.get(&key) {
            return Some(channel.clone());
        }
        let channel = Endpoint::from_shared(url.clone())
            .ok()?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(PEER_PING_INTERVAL)
            .keep_alive_timeout(PEER_PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .local_address(self.source_address)
            .connect_lazy();
        channels.retain(|(id, _), _| *id != target);
        channels.insert(key, channel.clone());
        Some(channel)
    }
}

impl Peer {
    fn request<T: Serialize>(&self, message: &T) -> PeerRequest {
        PeerRequest {
            target_member_id: self.target,
            cluster_id: self.cluster_id,
            payload: postcard::to_stdvec(message)
                .expect("peer messages encode")
                .into(),
        }
    }

    fn client(&self) -> Result<RaftClient<Channel>, CallError> {
        self.client.clone().ok_or_else(|| {
            CallError::Unreachable(tonic::Status::unavailable("member has no peer URL"))
        })
    }

    /// Decodes a reply payload; a garbled one is a failed call.
    fn decode<T: DeserializeOwned>(
        reply: tonic::Response<ballast_proto::ballastraftpb::PeerReply>,
    ) -> Result<T, CallError> {
        postcard::from_bytes(&reply.into_inner().payload)
            .map_err(|e| CallError::Failed(tonic::Status::internal(e.to_string())))
    }

    fn status_error(status: tonic::Status) -> CallError {
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                CallError::Unreachable(status)
            }
            _ => CallError::Failed(status),
        }
    }

    /// Asks the leader to propose `command`; used when this member is a follower.
    pub async fn propose(&self, command: &Command) -> Result<CommandResponse, Forwarded> {
        let request = self.request(command);
        let call = async {
            let reply = self
                .client()?
                .propose(request)
                .await
                .map_err(Self::status_error)?;
            Self::decode::<Result<CommandResponse, EtcdError>>(reply)
        };
        match tokio::time::timeout(FORWARD_TIMEOUT, call).await {
            Ok(Ok(result)) => result.map_err(Forwarded::Failed),
            Ok(Err(CallError::Unreachable(status))) if is_connect_error(&status) => {
                Err(Forwarded::NotSent)
            }
            Ok(Err(error)) => {
                tracing::warn!(?error, "forwarding a proposal failed");
                Err(Forwarded::Failed(EtcdError::LeaderChanged))
            }
            Err(_) => Err(Forwarded::Failed(EtcdError::Timeout)),
        }
    }

    /// The leader's read index: once this member has applied it, a local
    /// read is linearizable. Asking again is always safe.
    pub async fn read_index(&self) -> Result<Option<LogId>, Forwarded> {
        let request = self.request(&());
        let call = async {
            let reply = self
                .client()?
                .read_index(request)
                .await
                .map_err(Self::status_error)?;
            Self::decode::<Result<Option<LogId>, EtcdError>>(reply)
        };
        match tokio::time::timeout(FORWARD_TIMEOUT, call).await {
            Ok(Ok(result)) => result.map_err(Forwarded::Failed),
            Ok(Err(_)) => Err(Forwarded::NotSent),
            Err(_) => Err(Forwarded::Failed(EtcdError::Timeout)),
        }
    }

    /// Asks the leader to carry out a membership change.
    pub async fn change_members(&self, change: &MemberChange) -> Result<MemberChanged, Forwarded> {
        let request = self.request(change);
        let call = async {
            let reply = self
                .client()?
                .change_members(request)
                .await
                .map_err(Self::status_error)?;
            Self::decode::<Result<MemberChanged, EtcdError>>(reply)
        };
        match tokio::time::timeout(FORWARD_TIMEOUT, call).await {
            Ok(Ok(result)) => result.map_err(Forwarded::Failed),
            Ok(Err(CallError::Unreachable(status))) if is_connect_error(&status) => {
                Err(Forwarded::NotSent)
            }
            Ok(Err(_)) => Err(Forwarded::Failed(EtcdError::LeaderChanged)),
            Err(_) => Err(Forwarded::Failed(EtcdError::Timeout)),
        }
    }

    /// Asks the leader to answer a lease call.
    pub async fn lease_call(&self, call: &LeaseCall) -> Result<LeaseAnswer, Forwarded> {
        let request = self.request(call);
        let call = async {
            let reply = self
                .client()?
                .lease(request)
                .await
                .map_err(Self::status_error)?;
            Self::decode::<Result<LeaseAnswer, EtcdError>>(reply)
        };
        match tokio::time::timeout(FORWARD_TIMEOUT, call).await {
            Ok(Ok(result)) => result.map_err(Forwarded::Failed),
            // Renewing again or asking again is harmless: retry with the next leader.
            Ok(Err(_)) => Err(Forwarded::NotSent),
            Err(_) => Err(Forwarded::Failed(EtcdError::Timeout)),
        }
    }

    /// Tells the member something about itself; best effort.
    pub async fn notify(&self, notice: &Notice) -> Result<(), tonic::Status> {
        let request = self.request(notice);
        let client = self.client.clone();
        let call = async move {
            let mut client =
                client.ok_or_else(|| tonic::Status::unavailable("member has no peer URL"))?;
            client.notify(request).await.map(|_| ())
        };
        tokio::time::timeout(FORWARD_TIMEOUT, call)
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("no answer from peer"))?
    }

    async fn raft_call<Req, Resp, E>(
        &mut self,
        message: &Req,
        deadline: Duration,
        send: impl AsyncFnOnce(
            RaftClient<Channel>,
            PeerRequest,
        ) -> Result<
            tonic::Response<ballast_proto::ballastraftpb::PeerReply>,
            tonic::Status,
        >,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let request = self.request(message);
        let call = async {
            let reply = send(self.client()?, request)
                .await
                .map_err(Self::status_error)?;
            Self::decode::<Result<Resp, E>>(reply)
        };
        let outcome = tokio::time::timeout(deadline, call).await;
        match outcome {
            Ok(Ok(Ok(response))) => Ok(response),
            Ok(Ok(Err(remote))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, remote)))
            }
            Ok(Err(CallError::Unreachable(status))) => {
                Err(RPCError::Unreachable(Unreachable::new(&status)))
            }
            Ok(Err(CallError::Failed(status))) => {
                Err(RPCError::Network(NetworkError::new(&status)))
            }
            Err(elapsed) => Err(RPCError::Network(NetworkError::new(&elapsed))),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &Member) -> Peer {
        self.peer(target, node)
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        if *self.replication_held.borrow() {
            let mut held = self.replication_held.clone();
            let _ = tokio::time::timeout(option.hard_ttl(), held.wait_for(|held| !*held)).await;
            return Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other("replication held for a leader transfer"),
            )));
        }
        self.raft_call(&rpc, option.hard_ttl(), async |mut client, request| {
            client.append_entries(request).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        let deadline = if rpc.done {
            option.hard_ttl()
        } else {
            option.hard_ttl().min(SNAPSHOT_CHUNK_TIMEOUT)
        };
        self.raft_call(&rpc, deadline, async |mut client, request| {
            client.install_snapshot(request).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        self.raft_call(&rpc, option.hard_ttl(), async |mut client, request| {
            client.vote(request).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused connection is recognised by its cause, not by words in
    /// the message: a status that only says "connect" was maybe sent.
    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error_by_its_cause() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_lazy();
        let status = RaftClient::new(channel)
            .read_index(PeerRequest::default())
            .await
            .expect_err("nothing listens");
        assert!(is_connect_error(&status), "{status:?}");
        assert!(!is_connect_error(&tonic::Status::unavailable(
            "error reading a body from connection"
        )));
    }
}
