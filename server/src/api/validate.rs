//! Request checks done before anything is proposed, as etcd's v3rpc layer
//! does them (`checkRangeRequest`, `checkPutRequest`, `checkTxnRequest`,
//! `checkIntervals`). A rejected request changes nothing.

use std::collections::HashSet;

use ballast_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use ballast_proto::etcdserverpb::request_op::Request;
use ballast_proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use bytes::Bytes;
use prost::Message;

use crate::errors::EtcdError;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_txn_ops: usize,
    pub max_request_bytes: usize,
    /// What etcd adds to a request to make its Raft entry (see [`Limits::new`]).
    raft_header_bytes: usize,
}

impl Limits {
    /// etcd measures the Raft entry it would propose: the request as one
    /// length-delimited field of an `InternalRaftRequest`, after a header
    /// field holding the request id. That id is the member id's low 16 bits
    /// above 48 bits of clock and counter (`idutil.Generator`), so its
    /// varint length, and etcd's limit to the byte, depends on the member.
    pub fn new(max_txn_ops: usize, max_request_bytes: usize, member_id: u64) -> Self {
        // The clock part has bit 47 set until 2039.
        let request_id = ((member_id & 0xffff) << 48) | (1 << 47);
        // Field 100's tag (2 bytes), the header's length (1), the id's tag (1).
        let raft_header_bytes = 4 + prost::encoding::encoded_len_varint(request_id);
        Self {
            max_txn_ops,
            max_request_bytes,
            raft_header_bytes,
        }
    }

    /// A message over gRPC's limit (`--max-request-bytes` plus 512 KiB) is
    /// refused with grpc-go's status, as etcd's gRPC server refuses it.
    pub fn check_message(&self, request: &impl Message) -> Result<(), EtcdError> {
        let (len, max) = (
            request.encoded_len(),
            self.max_request_bytes + super::GRPC_OVERHEAD_BYTES,
        );
        if len > max {
            return Err(EtcdError::MessageTooLarge { len, max });
        }
        Ok(())
    }

    /// A request that would make a Raft entry over `--max-request-bytes` is refused.
    pub fn check_size(&self, request: &impl Message) -> Result<(), EtcdError> {
        let len = request.encoded_len();
        let entry = self.raft_header_bytes + 1 + prost::length_delimiter_len(len) + len;
        if entry > self.max_request_bytes {
            return Err(EtcdError::RequestTooLarge);
        }
        Ok(())
    }
}

pub fn check_range(req: &RangeRequest) -> Result<(), EtcdError> {
    if req.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if SortOrder::try_from(req.sort_order).is_err()
        || SortTarget::try_from(req.sort_target).is_err()
    {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

pub fn check_put(req: &PutRequest) -> Result<(), EtcdError> {
    if req.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(req: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if req.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// The op-count limit applies per txn level, shrinking with depth as in etcd.
pub fn check_txn(req: &TxnRequest, max_txn_ops: usize) -> Result<(), EtcdError> {
    let ops = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if ops > max_txn_ops {
        return Err(EtcdError::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(Request::RequestRange(r)) => check_range(r)?,
            Some(Request::RequestPut(r)) => check_put(r)?,
            Some(Request::RequestDeleteRange(r)) => check_delete(r)?,
            Some(Request::RequestTxn(r)) => check_txn(r, max_txn_ops - ops)?,
            None => return Err(EtcdError::KeyNotFound),
        }
    }
    Ok(())
}

/// A deleted interval `[start, end)`; a single key is `[key, key + "\0")`.
struct Interval {
    start: Bytes,
    end: Bytes,
}

impl Interval {
    fn of_delete(req: &DeleteRangeRequest) -> Self {
        let end = if req.range_end.is_empty() {
            point_end(&req.key)
        } else {
            req.range_end.clone()
        };
        Self {
            start: req.key.clone(),
            end,
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        // Lexicographic, as etcd's interval tree: a range_end of "\0" sorts
        // below every key, so such a delete conflicts with no put here.
        self.start.as_ref() < point_end(key).as_ref() && key < self.end.as_ref()
    }
}

fn point_end(key: &[u8]) -> Bytes {
    let mut end = key.to_vec();
    end.push(0);
    end.into()
}

/// Rejects a branch that writes one key twice: two puts, or a put inside a
/// deleted interval, also across nested txns (their two branches exclude each other).
pub fn check_intervals(ops: &[RequestOp]) -> Result<(), EtcdError> {
    collect_writes(ops).map(|_| ())
}

fn collect_writes(ops: &[RequestOp]) -> Result<(HashSet<Bytes>, Vec<Interval>), EtcdError> {
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(Interval::of_delete(d)),
            _ => None,
        })
        .collect();
    let conflicts = |dels: &[Interval], key: &[u8]| dels.iter().any(|d| d.contains(key));
    let mut puts: HashSet<Bytes> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(nested)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = collect_writes(&nested.success)?;
        let (puts_else, dels_else) = collect_writes(&nested.failure)?;
        for key in &puts_then {
            if puts.contains(key) || conflicts(&dels, key) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(key.clone());
        }
        for key in &puts_else {
            if (puts.contains(key) && !puts_then.contains(key)) || conflicts(&dels, key) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(key.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(put)) = &op.request else {
            continue;
        };
        if puts.contains(&put.key) || conflicts(&dels, &put.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(put.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                ..Default::default()
            })),
        }
    }

    fn del(key: &str, end: &[u8]) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                range_end: Bytes::copy_from_slice(end),
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                success,
                failure,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn duplicate_writes_are_found() {
        assert!(check_intervals(&[put("a"), put("b")]).is_ok());
        assert_eq!(
            check_intervals(&[put("a"), put("a")]),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(
            check_intervals(&[del("a", b"c"), put("b")]),
            Err(EtcdError::DuplicateKey)
        );
        assert!(check_intervals(&[del("a", b"c"), put("c")]).is_ok());
        assert!(check_intervals(&[del("a", b"c"), del("b", b"d")]).is_ok());
        // etcd's interval tree treats a "\0" end literally.
        assert!(check_intervals(&[del("a", b"\0"), put("b")]).is_ok());
        // Then and else branches of a nested txn exclude each other.
        assert!(check_intervals(&[txn(vec![put("a")], vec![put("a")])]).is_ok());
        assert_eq!(
            check_intervals(&[txn(vec![put("a")], vec![]), put("a")]),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(
            check_intervals(&[del("a", b""), txn(vec![put("a")], vec![])]),
            Err(EtcdError::DuplicateKey)
        );
    }

    #[test]
    fn op_limit_shrinks_with_depth() {
        let inner = TxnRequest {
            success: vec![put("x"), put("y")],
            ..Default::default()
        };
        let outer = TxnRequest {
            success: vec![RequestOp {
                request: Some(Request::RequestTxn(inner)),
            }],
            ..Default::default()
        };
        assert!(check_txn(&outer, 3).is_ok());
        assert_eq!(check_txn(&outer, 2), Err(EtcdError::TooManyOps));
    }
}
