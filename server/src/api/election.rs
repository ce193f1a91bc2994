//! etcd's v3election service, built as etcd builds it on clientv3's
//! election recipe: candidates are keys under `<name>/`, the leader is the
//! oldest, and a proclamation is a put guarded by the leader key's create
//! revision.

use std::pin::Pin;
use std::sync::Arc;

use ballast_proto::etcdserverpb::ResponseHeader;
use ballast_proto::etcdserverpb::range_request::SortOrder;
use ballast_proto::mvccpb::KeyValue;
use ballast_proto::mvccpb::event::EventType;
use ballast_proto::v3electionpb::election_server::Election;
use ballast_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use bytes::Bytes;
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Header;
use super::recipes::{
    GiveUpOnDrop, by_create, create_revision_is, delete_op, get_key, get_op, lease_or_session,
    owner_key, prefix, put_op, txn, txn_range, unknown, wait_deletes,
};
use crate::errors::EtcdError;
use crate::raft::RaftNode;

const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";
const LEADER_MISSING: &str = "\"leader\" field must be provided";
/// Leader changes buffered per Observe stream before it waits for the client.
const OBSERVE_BUFFER: usize = 16;

pub struct ElectionService {
    node: Arc<RaftNode>,
    header: Header,
}

impl ElectionService {
    pub fn new(node: Arc<RaftNode>, header: Header) -> Self {
        Self { node, header }
    }

    /// Puts `value` under the leader key if it still leads.
    async fn proclaim_as(
        &self,
        leader: &LeaderKey,
        value: Bytes,
    ) -> Result<Option<ResponseHeader>, Status> {
        let proclaimed = self
            .node
            .txn(txn(
                create_revision_is(&leader.key, leader.rev),
                vec![put_op(&leader.key, value, leader.lease)],
                vec![],
            ))
            .await
            .map_err(unknown)?;
        if !proclaimed.succeeded {
            return Err(unknown(NOT_LEADER));
        }
        Ok(proclaimed.header)
    }

    async fn resign_as(&self, leader: &LeaderKey) -> Result<Option<ResponseHeader>, Status> {
        let resigned = self
            .node
            .txn(txn(
                create_revision_is(&leader.key, leader.rev),
                vec![delete_op(&leader.key)],
                vec![],
            ))
            .await
            .map_err(unknown)?;
        Ok(resigned.header)
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        self.node.refuse_if_learner()?;
        let request = request.into_inner();
        let lease = lease_or_session(&self.node, request.lease).await?;
        let prefix = prefix(&request.name);
        let key = owner_key(&request.name, lease);
        let entered = self
            .node
            .txn(txn(
                create_revision_is(&key, 0),
                vec![put_op(&key, request.value.clone(), lease)],
                vec![get_op(get_key(&key))],
            ))
            .await
            .map_err(unknown)?;
        let mut leader = LeaderKey {
            name: request.name,
            key: key.clone(),
            rev: entered.header.as_ref().map_or(0, |h| h.revision),
            lease,
        };
        if !entered.succeeded {
            // This lease campaigns already: keep its place, with the new value.
            let existing = txn_range(&entered, 0)
                .kvs
                .first()
                .cloned()
                .unwrap_or_default();
            leader.rev = existing.create_revision;
            if existing.value != request.value
                && let Err(error) = self.proclaim_as(&leader, request.value).await
            {
                let _ = self.resign_as(&leader).await;
                return Err(error);
            }
        }
        let give_up = GiveUpOnDrop::new(self.node.clone(), key);
        wait_deletes(&self.node, &prefix, leader.rev - 1)
            .await
            .map_err(unknown)?;
        give_up.disarm();
        let mut response = CampaignResponse {
            header: entered.header,
            leader: Some(leader),
        };
        self.header.fill(&mut response.header);
        Ok(Response::new(response))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        self.node.refuse_if_learner()?;
        let request = request.into_inner();
        let leader = request.leader.ok_or_else(|| unknown(LEADER_MISSING))?;
        let mut response = ProclaimResponse {
            header: self.proclaim_as(&leader, request.value).await?,
        };
        self.header.fill(&mut response.header);
        Ok(Response::new(response))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        self.node.refuse_if_learner()?;
        let name = request.into_inner().name;
        let current = self
            .node
            .range(by_create(&prefix(&name), SortOrder::Ascend, 0))
            .await
            .map_err(unknown)?;
        let Some(kv) = current.kvs.into_iter().next() else {
            return Err(unknown(NO_LEADER));
        };
        let mut response = LeaderResponse {
            header: current.header,
            kv: Some(kv),
        };
        self.header.fill(&mut response.header);
        Ok(Response::new(response))
    }

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        self.node.refuse_if_learner()?;
        let name = request.into_inner().name;
        let (out, responses) = mpsc::channel(OBSERVE_BUFFER);
        let node = self.node.clone();
        let header = self.header.clone();
        tokio::spawn(async move {
            if let Err(error) = observe(&node, &header, &prefix(&name), &out).await {
                let _ = out.send(Err(unknown(error))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(responses))))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        self.node.refuse_if_learner()?;
        let leader = request
            .into_inner()
            .leader
            .ok_or_else(|| unknown(LEADER_MISSING))?;
        let mut response = ResignResponse {
            header: self.resign_as(&leader).await?,
        };
        self.header.fill(&mut response.header);
        Ok(Response::new(response))
    }
}

type Observed = mpsc::Sender<Result<LeaderResponse, Status>>;

/// Streams the current leader and each of its proclamations; when it goes,
/// the next one, as clientv3's Observe. Ends when the client goes away.
async fn observe(
    node: &Arc<RaftNode>,
    header: &Header,
    prefix: &Bytes,
    out: &Observed,
) -> Result<(), EtcdError> {
    let send = |kv: KeyValue, revision: i64| {
        let mut response = LeaderResponse {
            header: Some(ResponseHeader {
                revision,
                ..Default::default()
            }),
            kv: Some(kv),
        };
        header.fill(&mut response.header);
        out.send(Ok(response))
    };
    loop {
        let mut changes = node.store().subscribe();
        let current = node.range(by_create(prefix, SortOrder::Ascend, 0)).await?;
        let leader = match current.kvs.into_iter().next() {
            Some(kv) => {
                let revision = current.header.map_or(0, |h| h.revision);
                if send(kv.clone(), revision).await.is_err() {
                    return Ok(());
                }
                kv
            }
            // No candidate yet: the first one put under the prefix leads.
            None => match next_event(&mut changes, out, |e| {
                e.r#type == EventType::Put as i32
                    && e.kv.as_ref().is_some_and(|kv| kv.key.starts_with(prefix))
            })
            .await
            {
                Some(kv) => {
                    if send(kv.clone(), kv.mod_revision).await.is_err() {
                        return Ok(());
                    }
                    kv
                }
                None => continue,
            },
        };
        // Follow the leader's key until it is deleted.
        loop {
            let event = next_event(&mut changes, out, |e| {
                e.kv.as_ref().is_some_and(|kv| kv.key == leader.key)
            })
            .await;
            let Some(kv) = event else {
                break;
            };
            if kv.create_revision == 0 || kv.version == 0 {
                break;
            }
            if send(kv.clone(), kv.mod_revision).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// The key-value of the next change matching `wanted`; for a delete, a
/// tombstone (version 0). None if the feed lagged or the state was replaced
/// by a snapshot (the caller re-reads), or
/// the client went away (the next send ends the stream).
async fn next_event(
    changes: &mut broadcast::Receiver<crate::mvcc::Changes>,
    out: &Observed,
    wanted: impl Fn(&ballast_proto::mvccpb::Event) -> bool,
) -> Option<KeyValue> {
    loop {
        let events = tokio::select! {
            // An empty batch: a snapshot replaced the state; re-read, as after a lag.
            events = changes.recv() => events.ok().filter(|events| !events.is_empty())?,
            () = out.closed() => return None,
        };
        if let Some(event) = events.iter().find(|e| wanted(e)) {
            return event.kv.clone();
        }
    }
}
