//! Consensus: openraft wrapped so that the rest of the server sees a
//! [`RaftNode`] that writes through Raft and reads linearizably.
//! A later openraft upgrade touches this module only.

mod bootstrap;
mod election_pause;
mod election_switch;
mod leases;
mod log_store;
mod membership;
mod network;
mod peer_messages;
mod peer_service;
mod proposer;
mod read_barrier;
mod state_machine;
mod types;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ballast_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{RaftMetrics, SnapshotPolicy};

pub use bootstrap::Identity;
pub use leases::{LeaderLeases, LeaseAnswer, LeaseCall};
pub use log_store::LogStore;
pub use peer_messages::{MemberChange, MemberChanged, MemberInfo};
pub use state_machine::StateMachine;
pub use types::{Member, Raft, TypeConfig};

use ballast_proto::ballastraftpb::raft_server::RaftServer;
use election_pause::ElectionPause;
use membership::Membership;
use network::PeerNetwork;
use peer_service::PeerService;
use proposer::Submitter;
use tonic::transport::server::TcpIncoming;
use types::{Attributes, Command};

use crate::config::{Config, host_port, url_list};
use crate::errors::EtcdError;
use crate::mvcc::{Store, WriteRequest, WriteResponse};
use crate::storage::db::{StateBatch, StateDb};
use proposer::Proposer;
use read_barrier::ReadBarrier;

const META_IDENTITY: &str = "identity";
/// Log entries kept behind a snapshot, as etcd's SnapshotCatchUpEntries.
const SNAPSHOT_CATCH_UP_ENTRIES: u64 = 5000;
/// openraft's deadline for each snapshot chunk RPC. The last chunk answers
/// only once the follower has installed the whole snapshot, minutes for a
/// large store; openraft's 200 ms default made the leader give up on every
/// large install and send the snapshot again. Peer pings still end the RPC
/// in seconds if the follower goes silent.
const SNAPSHOT_INSTALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Pause before asking the leader's lessor again, as etcd's renew loop.
const LEASE_RETRY_INTERVAL: Duration = Duration::from_millis(50);
/// Pause before publishing this member's attributes again.
const PUBLISH_RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// Attempts at finding a leader for a membership change.
const LEADER_ATTEMPTS: usize = 3;

/// Status figures for Maintenance.Status.
#[derive(Debug, Clone, Copy)]
pub struct RaftStatus {
    pub leader: u64,
    pub term: u64,
    /// The committed index (etcd's raftIndex).
    pub committed_index: u64,
    pub applied_index: u64,
}

/// One member: its Raft instance, the store it applies to, and the tasks that
/// batch writes and reads. Dropping it stops those tasks; call
/// [`RaftNode::shutdown`] to stop Raft itself.
pub struct RaftNode {
    raft: Raft,
    store: Arc<Store>,
    proposer: Proposer,
    reads: ReadBarrier,
    submitter: Submitter,
    membership: Membership,
    lease_leader: LeaseLeaderSlot,
    request_timeout: Duration,
    identity: Identity,
    stop_peers: tokio::sync::watch::Sender<bool>,
    committed_index: Arc<std::sync::atomic::AtomicU64>,
    peer_server:
        std::sync::Mutex<Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>>,
}

/// Where the lease service registers its leader side (set once at start).
pub type LeaseLeaderSlot = Arc<std::sync::OnceLock<Arc<dyn LeaderLeases>>>;

/// Serves the peer protocol on `--listen-peer-urls` until told to stop.
async fn serve_peers(
    config: &Config,
    raft: &Raft,
    membership: &Membership,
    lease_leader: &LeaseLeaderSlot,
    identity: &Identity,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>> {
    let urls = url_list(&config.listen_peer_urls);
    let url = urls
        .first()
        .ok_or_else(|| anyhow::anyhow!("--listen-peer-urls is empty"))?;
    let listener = tokio::net::TcpListener::bind(host_port(url)?).await?;
    let service = RaftServer::new(PeerService::new(
        raft.clone(),
        membership.clone(),
        lease_leader.clone(),
        ElectionPause::new(
            membership.election_switch(),
            Duration::from_millis(config.election_timeout),
        ),
        identity.member_id,
        identity.cluster_id,
    ))
    .max_decoding_message_size(network::MAX_PEER_MESSAGE_BYTES)
    .max_encoding_message_size(network::MAX_PEER_MESSAGE_BYTES);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Ok(tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }),
    ))
}

/// On loopback, where members of one host would all connect from
/// 127.0.0.1, peer connections leave from the address the member listens
/// on, so each member's traffic can be told apart (firewalls, fault
/// injection in tests). Elsewhere the kernel picks the route's address.
fn peer_source_address(config: &Config) -> Option<std::net::IpAddr> {
    let url = url_list(&config.listen_peer_urls).into_iter().next()?;
    let address: std::net::SocketAddr = host_port(&url).ok()?.parse().ok()?;
    address.ip().is_loopback().then_some(address.ip())
}

fn write_error(e: &RaftError<u64, ClientWriteError<u64, Member>>) -> EtcdError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => EtcdError::NoLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(_)) => EtcdError::Timeout,
        RaftError::Fatal(_) => EtcdError::Stopped,
    }
}

fn read_error(e: &RaftError<u64, CheckIsLeaderError<u64, Member>>) -> EtcdError {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)) => EtcdError::NoLeader,
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)) => EtcdError::Timeout,
        RaftError::Fatal(_) => EtcdError::Stopped,
    }
}

impl RaftNode {
    /// Opens (or bootstraps) the member in `--data-dir` and waits until it
    /// can serve: it leads and has applied everything in its log.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        let member_dir = config.data_dir().join("member");
        std::fs::create_dir_all(&member_dir)?;
        let db_dir = member_dir.join("db");
        let store = Arc::new(
            tokio::task::spawn_blocking(move || Store::open(StateDb::open(&db_dir)?)).await??,
        );
        let identity = match store.db().own_meta(META_IDENTITY)? {
            Some(bytes) => postcard::from_bytes(&bytes)?,
            None => {
                let identity = if config.initial_cluster_state == "existing" {
                    bootstrap::join(
                        &config.initial_cluster(),
                        &url_list(&config.initial_advertise_peer_urls),
                        Duration::from_millis(config.election_timeout * 5),
                    )
                    .await?
                } else {
                    bootstrap::identity(
                        &config.name,
                        &config.initial_cluster(),
                        &config.initial_cluster_token,
                    )?
                };
                let mut batch = StateBatch::default();
                batch.put_own_meta(META_IDENTITY, &postcard::to_stdvec(&identity)?);
                store.db().apply(batch)?;
                store.db().flush_durable()?;
                identity
            }
        };

        let raft_config = openraft::Config {
            cluster_name: config.initial_cluster_token.clone(),
            heartbeat_interval: config.heartbeat_interval,
            // openraft's followers refuse votes for election_timeout_max
            // after the last heartbeat (its leader lease), so a candidate
            // whose timer fires earlier is refused and tries again one
            // timeout later. Ending the range at --election-timeout makes
            // the second try come within two election timeouts of the
            // leader's loss, as etcd's failover does.
            election_timeout_min: config.election_timeout / 2,
            election_timeout_max: config.election_timeout,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count),
            // etcd keeps 5000 entries behind a snapshot for slow followers;
            // fewer when snapshots are more frequent than that.
            max_in_snapshot_log_to_keep: config.snapshot_count.min(SNAPSHOT_CATCH_UP_ENTRIES),
            purge_batch_size: config.snapshot_count.clamp(1, 1024),
            install_snapshot_timeout: SNAPSHOT_INSTALL_TIMEOUT.as_millis() as u64,
            ..Default::default()
        }
        .validate()?;
        let log_store = LogStore::open(&member_dir.join("wal"))?;
        let committed_index = log_store.committed_index();
        let state_machine = StateMachine::open(store.clone(), member_dir.join("snap"))?;
        log_store.raise_committed(state_machine.known_committed()?);
        let peers = PeerNetwork::new(identity.cluster_id, peer_source_address(config));
        let raft = Raft::new(
            identity.member_id,
            Arc::new(raft_config),
            peers.clone(),
            log_store,
            state_machine,
        )
        .await?;
        let membership = Membership::new(
            raft.clone(),
            store.clone(),
            peers.clone(),
            identity.member_id,
            identity.cluster_id,
            Duration::from_millis(config.election_timeout),
        );
        let lease_leader = LeaseLeaderSlot::default();
        let (stop_peers, peers_stopped) = tokio::sync::watch::channel(false);
        let peer_server = serve_peers(
            config,
            &raft,
            &membership,
            &lease_leader,
            &identity,
            peers_stopped,
        )
        .await?;
        if !identity.initial_members.is_empty() && !raft.is_initialized().await? {
            match raft.initialize(identity.initial_members.clone()).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let submitter = Submitter {
            raft: raft.clone(),
            peers,
            leader_wait: Duration::from_millis(config.election_timeout * 3),
            // etcd's: 5 s plus two election timeouts.
            request_timeout: Duration::from_millis(5000 + 2 * config.election_timeout),
        };
        let node = Self {
            proposer: Proposer::start(submitter.clone()),
            reads: ReadBarrier::start(submitter.clone()),
            request_timeout: submitter.request_timeout,
            submitter,
            membership,
            lease_leader,
            raft,
            store,
            identity,
            stop_peers,
            peer_server: std::sync::Mutex::new(Some(peer_server)),
            committed_index,
        };
        node.wait_until_serving().await?;
        node.publish_attributes(Attributes {
            name: config.name.clone(),
            client_urls: url_list(&config.advertise_client_urls),
        })
        .await?;
        Ok(node)
    }

    /// Announces this member's name and client URLs through Raft, as etcd
    /// publishes its attributes, unless the cluster already has them.
    async fn publish_attributes(&self, attributes: Attributes) -> anyhow::Result<()> {
        let store = self.store.clone();
        let known =
            tokio::task::spawn_blocking(move || state_machine::attributes(&store)).await??;
        if known.get(&self.identity.member_id) == Some(&attributes) {
            return Ok(());
        }
        // A leader change while members start is common; publishing twice
        // is harmless, so retry until it lands, as etcd's publish loop does.
        loop {
            let command = Command::PublishAttributes {
                member_id: self.identity.member_id,
                attributes: attributes.clone(),
            };
            match self.submitter.submit(command).await {
                Ok(_) => return Ok(()),
                Err(EtcdError::Stopped) => return Err(EtcdError::Stopped.into()),
                Err(e) => {
                    tracing::warn!(error = %e, "publishing member attributes failed; retrying");
                    tokio::time::sleep(PUBLISH_RETRY_INTERVAL).await;
                }
            }
        }
    }

    async fn wait_until_serving(&self) -> anyhow::Result<()> {
        let mut metrics = self.raft.metrics();
        loop {
            if metrics.borrow().current_leader.is_some() && self.reads.wait().await.is_ok() {
                return Ok(());
            }
            metrics.changed().await?;
        }
    }

    /// The store this member applies to (for the watch hub's reads).
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    pub fn member_id(&self) -> u64 {
        self.identity.member_id
    }

    pub fn cluster_id(&self) -> u64 {
        self.identity.cluster_id
    }

    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    pub fn revision(&self) -> i64 {
        self.store.revision()
    }

    /// etcd's HashKV for this member's store, read off the runtime.
    pub async fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), EtcdError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.hash_kv(revision))
            .await
            .map_err(|_| EtcdError::Stopped)?
    }

    pub fn db_size(&self) -> u64 {
        self.store.db().size_on_disk()
    }

    pub fn status(&self) -> RaftStatus {
        let metrics = self.raft.metrics();
        let m: &RaftMetrics<u64, Member> = &metrics.borrow();
        let applied_index = m.last_applied.map_or(0, |id| id.index);
        RaftStatus {
            leader: m.current_leader.unwrap_or(0),
            term: m.current_term,
            committed_index: self
                .committed_index
                .load(Ordering::Relaxed)
                .max(applied_index),
            applied_index,
        }
    }

    /// Every member with what it published, as the replicated state has them.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.membership.list()
    }

    pub fn is_learner(&self) -> bool {
        self.membership.is_learner()
    }

    /// A learner serves Status and serializable ranges only, as in etcd.
    pub fn refuse_if_learner(&self) -> Result<(), EtcdError> {
        if self.is_learner() {
            return Err(EtcdError::NotSupportedForLearner);
        }
        Ok(())
    }

    /// The leader as this member knows it, with its peer URLs.
    fn leader(&self) -> (Option<u64>, Option<Member>) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader;
        let member = leader.and_then(|id| m.membership_config.membership().get_node(&id).cloned());
        (leader, member)
    }

    /// Carries out a membership change on the leader, forwarding it there
    /// from a follower.
    pub async fn change_members(&self, change: MemberChange) -> Result<MemberChanged, EtcdError> {
        for _ in 0..LEADER_ATTEMPTS {
            let (leader, member) = self.leader();
            match (leader, member) {
                (Some(leader), _) if leader == self.identity.member_id => {
                    return self.membership.change(change).await;
                }
                (Some(leader), Some(member)) => {
                    match self
                        .submitter
                        .peers
                        .peer(leader, &member)
                        .change_members(&change)
                        .await
                    {
                        Ok(changed) => return Ok(changed),
                        Err(network::Forwarded::Failed(error)) => return Err(error),
                        Err(network::Forwarded::NotSent) => {
                            self.submitter.wait_for_leader_other_than(leader).await
                        }
                    }
                }
                _ => self.submitter.wait_for_leader().await,
            }
        }
        Err(EtcdError::NoLeader)
    }

    /// Returns once this member has applied everything committed before the call.
    pub async fn read_barrier(&self) -> Result<(), EtcdError> {
        self.reads.wait().await
    }

    /// Proposes `request` and waits for its result, unless this member's apply is too far behind its
    /// commit (etcd's `too many requests`, refused before anything is proposed).
    pub async fn write(&self, request: WriteRequest) -> Result<WriteResponse, EtcdError> {
        let status = self.status();
        refuse_if_apply_behind(status.committed_index, status.applied_index)?;
        self.proposer.propose(request).await
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.identity.member_id)
    }

    /// Resolves when this member starts or stops leading (`was_leader` is
    /// what it did); false once Raft shuts down.
    pub async fn leadership_changed(&self, was_leader: bool) -> bool {
        let me = self.identity.member_id;
        self.raft
            .wait(None)
            .metrics(
                |m| (m.current_leader == Some(me)) != was_leader,
                "leadership changed",
            )
            .await
            .is_ok()
    }

    /// Proposes `request` only if this member leads, never forwarding it: a
    /// deposed leader's lease revokes must not commit through the new one.
    pub async fn write_as_leader(&self, request: WriteRequest) -> Result<WriteResponse, EtcdError> {
        let command = Command::Writes(vec![request]);
        let written = tokio::time::timeout(self.request_timeout, self.raft.client_write(command))
            .await
            .map_err(|_| EtcdError::Timeout)?;
        match written {
            Ok(written) => written
                .data
                .results
                .into_iter()
                .next()
                .expect("one result per request"),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(EtcdError::NotLeader)
            }
            Err(e) => Err(write_error(&e)),
        }
    }

    /// Confirms with a quorum that this member still leads and has applied
    /// everything committed; `etcdserver: not leader` otherwise.
    pub async fn confirm_leadership(&self) -> Result<(), EtcdError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(EtcdError::NotLeader)
            }
            Err(e) => Err(read_error(&e)),
        }
    }

    /// Registers the lease service's leader side, for local and forwarded calls.
    pub fn serve_leases(&self, leader: Arc<dyn LeaderLeases>) {
        let _ = self.lease_leader.set(leader);
    }

    /// Has the leader answer a lease call: locally on the leader, forwarded
    /// from a follower; waits for a leader up to the request timeout.
    pub async fn lease_call(&self, call: LeaseCall) -> Result<LeaseAnswer, EtcdError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        while tokio::time::Instant::now() < deadline {
            let (leader, member) = self.leader();
            match (leader, member) {
                (Some(leader), _) if leader == self.identity.member_id => {
                    let local = self.lease_leader.get().ok_or(EtcdError::NotLeader);
                    match local?.answer(call.clone()).await {
                        // Still becoming the primary lessor, or just lost
                        // leadership: ask again shortly, as etcd does.
                        Err(EtcdError::NotLeader) => {
                            tokio::time::sleep(LEASE_RETRY_INTERVAL).await;
                        }
                        answered => return answered,
                    }
                }
                (Some(leader), Some(member)) => {
                    match self
                        .submitter
                        .peers
                        .peer(leader, &member)
                        .lease_call(&call)
                        .await
                    {
                        Ok(answer) => return Ok(answer),
                        Err(network::Forwarded::Failed(EtcdError::NotLeader))
                        | Err(network::Forwarded::NotSent) => {
                            self.submitter.wait_for_leader_other_than(leader).await
                        }
                        Err(network::Forwarded::Failed(error)) => return Err(error),
                    }
                }
                _ => self.submitter.wait_for_leader().await,
            }
        }
        Err(EtcdError::Timeout)
    }

    /// Hands leadership to `target`; only the leader may.
    pub async fn move_leader(&self, target: u64) -> Result<(), EtcdError> {
        self.membership.move_leader(target).await
    }

    /// Resolves once this member has been removed from the cluster.
    pub async fn removed(&self) {
        self.membership.removed().await
    }

    pub async fn put(&self, request: PutRequest) -> Result<PutResponse, EtcdError> {
        match self.write(WriteRequest::Put(request)).await? {
            WriteResponse::Put(response) => Ok(response),
            other => unreachable!("put answered with {other:?}"),
        }
    }

    pub async fn delete_range(
        &self,
        request: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, EtcdError> {
        match self.write(WriteRequest::DeleteRange(request)).await? {
            WriteResponse::DeleteRange(response) => Ok(response),
            other => unreachable!("delete answered with {other:?}"),
        }
    }

    /// A txn that may write goes through Raft; one that cannot is read locally.
    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, EtcdError> {
        if Store::is_read_only(&request) {
            return self.read_only_txn(request).await;
        }
        match self.write(WriteRequest::Txn(request)).await? {
            WriteResponse::Txn(response) => Ok(response),
            other => unreachable!("txn answered with {other:?}"),
        }
    }

    pub async fn compact(
        &self,
        request: CompactionRequest,
    ) -> Result<CompactionResponse, EtcdError> {
        let (at, physical) = (request.revision, request.physical);
        let response = match self.write(WriteRequest::Compact(request)).await? {
            WriteResponse::Compact(response) => response,
            other => unreachable!("compact answered with {other:?}"),
        };
        // etcd answers a physical compaction once this member has deleted
        // the compacted rows.
        if physical {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.wait_compacted(at))
                .await
                .map_err(|_| EtcdError::Stopped)?
                .map_err(|_| EtcdError::Stopped)?;
        }
        Ok(response)
    }

    pub async fn range(&self, request: RangeRequest) -> Result<RangeResponse, EtcdError> {
        if !request.serializable {
            self.reads.wait().await?;
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.range(&request))
            .await
            .map_err(|_| EtcdError::Stopped)?
    }

    async fn read_only_txn(&self, request: TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.reads.wait().await?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.read_only_txn(&request))
            .await
            .map_err(|_| EtcdError::Stopped)?
    }

    pub async fn shutdown(&self) {
        if let Err(e) = tokio::time::timeout(Duration::from_secs(5), self.raft.shutdown()).await {
            tracing::warn!(error = %e, "raft did not stop in time");
        }
        let _ = self.stop_peers.send(true);
        let server = self
            .peer_server
            .lock()
            .expect("peer server lock poisoned")
            .take();
        if let Some(server) = server {
            let _ = server.await;
        }
    }
}

/// etcd's `maxGapBetweenApplyAndCommitIndex`: past this many committed but
/// unapplied entries a member takes no new requests, so that its queue of
/// work stays bounded.
const MAX_APPLY_BACKLOG: u64 = 5000;

fn refuse_if_apply_behind(committed: u64, applied: u64) -> Result<(), EtcdError> {
    if committed > applied.saturating_add(MAX_APPLY_BACKLOG) {
        return Err(EtcdError::TooManyRequests);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_far_behind_in_applying_refuses_writes() {
        assert_eq!(refuse_if_apply_behind(5000, 0), Ok(()));
        assert_eq!(
            refuse_if_apply_behind(5001, 0),
            Err(EtcdError::TooManyRequests)
        );
        let status = tonic::Status::from(EtcdError::TooManyRequests);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.message(), "etcdserver: too many requests");
    }
}
