//! etcd's v3lock service, built as etcd builds it on clientv3's mutex:
//! a key per lease under `<name>/`, the lock going to the oldest key.

use std::sync::Arc;

use ballast_proto::etcdserverpb::DeleteRangeRequest;
use ballast_proto::etcdserverpb::range_request::SortOrder;
use ballast_proto::v3lockpb::lock_server::Lock;
use ballast_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use bytes::Bytes;
use tonic::{Request, Response, Status};

use super::Header;
use super::recipes::{
    GiveUpOnDrop, by_create, create_revision_is, get_key, get_op, lease_or_session, owner_key,
    prefix, put_op, txn, txn_range, unknown, wait_deletes,
};
use crate::raft::RaftNode;

/// etcd 3.5's answer when the lock's own key vanished while it waited.
const SESSION_EXPIRED: &str = "mutex: session is expired";

pub struct LockService {
    node: Arc<RaftNode>,
    header: Header,
}

impl LockService {
    pub fn new(node: Arc<RaftNode>, header: Header) -> Self {
        Self { node, header }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        self.node.refuse_if_learner()?;
        let request = request.into_inner();
        let lease = lease_or_session(&self.node, request.lease).await?;
        let prefix = prefix(&request.name);
        let key = owner_key(&request.name, lease);
        let owner = by_create(&prefix, SortOrder::Ascend, 0);
        // Take a place in line unless this lease holds one already.
        let acquired = self
            .node
            .txn(txn(
                create_revision_is(&key, 0),
                vec![put_op(&key, Bytes::new(), lease), get_op(owner.clone())],
                vec![get_op(get_key(&key)), get_op(owner)],
            ))
            .await
            .map_err(unknown)?;
        let my_revision = if acquired.succeeded {
            acquired.header.as_ref().map_or(0, |h| h.revision)
        } else {
            txn_range(&acquired, 0)
                .kvs
                .first()
                .map_or(0, |kv| kv.create_revision)
        };
        let first = txn_range(&acquired, 1).kvs.first();
        let mut header = acquired.header;
        if first.is_some_and(|kv| kv.create_revision != my_revision) {
            let give_up = GiveUpOnDrop::new(self.node.clone(), key.clone());
            wait_deletes(&self.node, &prefix, my_revision - 1)
                .await
                .map_err(unknown)?;
            give_up.disarm();
            // Its own key may have gone with its lease while it waited.
            let mine = self.node.range(get_key(&key)).await.map_err(unknown)?;
            if mine.kvs.is_empty() {
                return Err(unknown(SESSION_EXPIRED));
            }
            header = mine.header;
        }
        let mut response = LockResponse { header, key };
        self.header.fill(&mut response.header);
        Ok(Response::new(response))
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        self.node.refuse_if_learner()?;
        let deleted = self
            .node
            .delete_range(DeleteRangeRequest {
                key: request.into_inner().key,
                ..Default::default()
            })
            .await
            .map_err(unknown)?;
        let mut response = UnlockResponse {
            header: deleted.header,
        };
        self.header.fill(&mut response.header);
        Ok(Response::new(response))
    }
}
