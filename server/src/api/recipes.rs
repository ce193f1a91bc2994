//! What etcd's v3lock and v3election services build on (clientv3's
//! concurrency recipes): one key per lease under `<name>/`, owners ordered by
//! create revision, and waiting for the deletion of the key just ahead.
//! They run as any client would, through the Raft node and its store.

use std::sync::Arc;

use ballast_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ballast_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use ballast_proto::etcdserverpb::request_op::Request;
use ballast_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RangeResponse,
    RequestOp, TxnRequest, TxnResponse,
};
use ballast_proto::mvccpb::KeyValue;
use ballast_proto::mvccpb::event::EventType;
use bytes::Bytes;
use tokio::sync::broadcast;
use tonic::Status;

use super::lease::lease_ids;
use crate::errors::EtcdError;
use crate::mvcc::{WriteRequest, WriteResponse};
use crate::raft::RaftNode;

/// The TTL of the lease a lock or campaign without one gets (clientv3's
/// default session TTL); nobody keeps it alive, as in etcd.
const SESSION_TTL: i64 = 60;

/// The lock and election services answer every error as etcd's do: code
/// Unknown with the error's text (their in-process client loses the code).
pub fn unknown(error: impl std::fmt::Display) -> Status {
    Status::unknown(error.to_string())
}

/// `<name>/<lease in lowercase hex>`, as clientv3 names a session's key.
pub fn owner_key(name: &[u8], lease: i64) -> Bytes {
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    let mut key = prefix(name).to_vec();
    key.extend_from_slice(hex.as_bytes());
    key.into()
}

pub fn prefix(name: &[u8]) -> Bytes {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix.into()
}

/// The end of the range of keys starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end.into();
        }
    }
    Bytes::from_static(b"\0")
}

pub fn create_revision_is(key: &Bytes, revision: i64) -> Compare {
    Compare {
        key: key.clone(),
        target: CompareTarget::Create as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::CreateRevision(revision)),
        ..Default::default()
    }
}

pub fn put_op(key: &Bytes, value: Bytes, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key.clone(),
            value,
            lease,
            ..Default::default()
        })),
    }
}

pub fn get_op(request: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(request)),
    }
}

pub fn delete_op(key: &Bytes) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.clone(),
            ..Default::default()
        })),
    }
}

pub fn get_key(key: &Bytes) -> RangeRequest {
    RangeRequest {
        key: key.clone(),
        ..Default::default()
    }
}

/// The key under `prefix` created first (the owner), or last before
/// `max_create_revision` (the one to wait for).
pub fn by_create(prefix: &Bytes, order: SortOrder, max_create_revision: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.clone(),
        range_end: prefix_end(prefix),
        sort_order: order as i32,
        sort_target: SortTarget::Create as i32,
        limit: 1,
        max_create_revision,
        ..Default::default()
    }
}

/// The range response inside a txn's `index`th response.
pub fn txn_range(txn: &TxnResponse, index: usize) -> &RangeResponse {
    use ballast_proto::etcdserverpb::response_op::Response;
    match txn.responses.get(index).and_then(|r| r.response.as_ref()) {
        Some(Response::ResponseRange(range)) => range,
        other => unreachable!("txn answered {other:?} where a range was asked"),
    }
}

/// The request's lease, or for lease 0 the session lease clientv3 would
/// grant (and nobody keeps alive), as etcd's services do.
pub async fn lease_or_session(node: &RaftNode, lease: i64) -> Result<i64, Status> {
    if lease != 0 {
        return Ok(lease);
    }
    let grant = WriteRequest::LeaseGrant(LeaseGrantRequest {
        ttl: SESSION_TTL,
        id: lease_ids(node.member_id()).next(),
    });
    match node.write(grant).await.map_err(unknown)? {
        WriteResponse::LeaseGrant(granted) => Ok(granted.id),
        other => unreachable!("a grant is answered by {other:?}"),
    }
}

/// Waits until no key under `prefix` created at or before
/// `max_create_revision` remains, as clientv3's waitDeletes: each waiter
/// watches only the key just ahead of it. Returns the revision it saw last.
pub async fn wait_deletes(
    node: &Arc<RaftNode>,
    prefix: &Bytes,
    max_create_revision: i64,
) -> Result<(), EtcdError> {
    loop {
        // Subscribe before reading, so that no delete falls in between.
        let mut changes = node.store().subscribe();
        let ahead = node
            .range(by_create(prefix, SortOrder::Descend, max_create_revision))
            .await?;
        let Some(kv) = ahead.kvs.first() else {
            return Ok(());
        };
        wait_delete(node, &mut changes, kv).await?;
    }
}

/// Waits for `kv`'s key to be deleted (or replaced by a new generation).
async fn wait_delete(
    node: &Arc<RaftNode>,
    changes: &mut broadcast::Receiver<crate::mvcc::Changes>,
    kv: &KeyValue,
) -> Result<(), EtcdError> {
    loop {
        match changes.recv().await {
            Ok(events) if !events.is_empty() => {
                let deleted = events.iter().any(|event| {
                    event.r#type == EventType::Delete as i32
                        && event.kv.as_ref().is_some_and(|e| e.key == kv.key)
                });
                if deleted {
                    return Ok(());
                }
            }
            // Fell behind the feed, or a snapshot replaced the state (an
            // empty batch): look at the key itself.
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                *changes = node.store().subscribe();
                let now = node.range(get_key(&kv.key)).await?;
                if now
                    .kvs
                    .first()
                    .is_none_or(|current| current.create_revision != kv.create_revision)
                {
                    return Ok(());
                }
            }
            Err(broadcast::error::RecvError::Closed) => return Err(EtcdError::Stopped),
        }
    }
}

/// Deletes `key` when dropped unless disarmed: a lock or campaign whose
/// client went away gives up its place, as etcd's does on cancel.
pub struct GiveUpOnDrop {
    node: Arc<RaftNode>,
    key: Option<Bytes>,
}

impl GiveUpOnDrop {
    pub fn new(node: Arc<RaftNode>, key: Bytes) -> Self {
        Self {
            node,
            key: Some(key),
        }
    }

    pub fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for GiveUpOnDrop {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let node = self.node.clone();
            tokio::spawn(async move {
                let request = DeleteRangeRequest {
                    key,
                    ..Default::default()
                };
                if let Err(error) = node.delete_range(request).await {
                    tracing::warn!(%error, "giving up a lock or campaign key failed");
                }
            });
        }
    }
}

/// A txn of `compare`, then `success` or `failure`.
pub fn txn(compare: Compare, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare: vec![compare],
        success,
        failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_named_as_clientv3_names_them() {
        assert_eq!(
            owner_key(b"mylock", 0x390da209387cac04),
            Bytes::from_static(b"mylock/390da209387cac04")
        );
        assert_eq!(owner_key(b"", 0x1a), Bytes::from_static(b"/1a"));
        assert_eq!(owner_key(b"n", -7), Bytes::from_static(b"n/-7"));
        assert_eq!(prefix_end(b"a/"), Bytes::from_static(b"a0"));
    }
}
