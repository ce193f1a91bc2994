//! Txn evaluation: compares, the branch path through nested txns, and the
//! checks that must pass before a txn changes anything.

use ballast_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ballast_proto::etcdserverpb::request_op::Request;
use ballast_proto::etcdserverpb::response_op::Response;
use ballast_proto::etcdserverpb::{
    Compare, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use ballast_proto::mvccpb::KeyValue;

use super::index::KeyRange;
use super::range::{ReadView, range, range_keys};
use crate::errors::EtcdError;

/// The branch each txn takes, depth first: the outer txn, then the nested txns
/// of the branch it takes, in order. All compares see the state before the txn.
pub(super) fn compare_path(view: &impl ReadView, txn: &TxnRequest) -> Vec<bool> {
    let mut path = Vec::new();
    push_path(view, txn, &mut path);
    path
}

fn push_path(view: &impl ReadView, txn: &TxnRequest, path: &mut Vec<bool>) {
    let succeeded = txn.compare.iter().all(|c| compare_holds(view, c));
    path.push(succeeded);
    for op in branch(txn, succeeded) {
        if let Some(Request::RequestTxn(nested)) = &op.request {
            push_path(view, nested, path);
        }
    }
}

pub(super) fn branch(txn: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &txn.success
    } else {
        &txn.failure
    }
}

fn compare_holds(view: &impl ReadView, compare: &Compare) -> bool {
    let Ok(result) = range_keys(
        view,
        KeyRange::new(&compare.key, &compare.range_end),
        0,
        0,
        false,
    ) else {
        return false;
    };
    if result.kvs.is_empty() {
        // A missing key compares as zeros, except that there is no value to compare.
        return compare.target() != CompareTarget::Value
            && compare_kv(compare, &KeyValue::default());
    }
    result.kvs.iter().all(|kv| compare_kv(compare, kv))
}

fn compare_kv(compare: &Compare, kv: &KeyValue) -> bool {
    let int_target = |actual: i64| {
        let expected = match compare.target_union {
            Some(TargetUnion::Version(v)) if compare.target() == CompareTarget::Version => v,
            Some(TargetUnion::CreateRevision(v)) if compare.target() == CompareTarget::Create => v,
            Some(TargetUnion::ModRevision(v)) if compare.target() == CompareTarget::Mod => v,
            Some(TargetUnion::Lease(v)) if compare.target() == CompareTarget::Lease => v,
            _ => 0,
        };
        actual.cmp(&expected)
    };
    let ordering = match compare.target() {
        CompareTarget::Version => int_target(kv.version),
        CompareTarget::Create => int_target(kv.create_revision),
        CompareTarget::Mod => int_target(kv.mod_revision),
        CompareTarget::Lease => int_target(kv.lease),
        CompareTarget::Value => {
            let expected: &[u8] = match &compare.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_ref().cmp(expected)
        }
    };
    match compare.result() {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::NotEqual => ordering.is_ne(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
    }
}

/// Whether no branch at any depth writes.
pub(super) fn is_read_only(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .all(|op| match &op.request {
            Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => false,
            Some(Request::RequestTxn(nested)) => is_read_only(nested),
            _ => true,
        })
}

/// Calls `check` on every non-txn op along `path`, in order.
pub(super) fn check_path(
    txn: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
    check: &mut impl FnMut(&RequestOp) -> Result<(), EtcdError>,
) -> Result<(), EtcdError> {
    let succeeded = path[*pos];
    *pos += 1;
    for op in branch(txn, succeeded) {
        match &op.request {
            Some(Request::RequestTxn(nested)) => check_path(nested, path, pos, check)?,
            _ => check(op)?,
        }
    }
    Ok(())
}

/// A Range inside a txn may not read a compacted or future revision.
pub(super) fn check_range(view: &impl ReadView, op: &RequestOp) -> Result<(), EtcdError> {
    let Some(Request::RequestRange(range)) = &op.request else {
        return Ok(());
    };
    match range.revision {
        0 => Ok(()),
        rev if rev > view.revision() => Err(EtcdError::FutureRevision),
        rev if rev < view.compact_revision() => Err(EtcdError::Compacted),
        _ => Ok(()),
    }
}

/// Serves a txn that writes nothing (see [`is_read_only`]) from `view`, as
/// the applier would, with the header at the view's revision.
pub(super) fn read_only_txn(
    view: &impl ReadView,
    txn: &TxnRequest,
) -> Result<TxnResponse, EtcdError> {
    let path = compare_path(view, txn);
    check_path(txn, &path, &mut 0, &mut |op| check_range(view, op))?;
    let mut response = read_branches(view, txn, &path, &mut 0);
    response.header = Some(ResponseHeader {
        revision: view.revision(),
        ..Default::default()
    });
    Ok(response)
}

fn read_branches(
    view: &impl ReadView,
    txn: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
) -> TxnResponse {
    let succeeded = path[*pos];
    *pos += 1;
    let responses = branch(txn, succeeded)
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestRange(req)) => Some(Response::ResponseRange(
                range(view, req).expect("txn ranges are checked before they are read"),
            )),
            Some(Request::RequestTxn(nested)) => Some(Response::ResponseTxn(read_branches(
                view, nested, path, pos,
            ))),
            Some(Request::RequestPut(_) | Request::RequestDeleteRange(_)) => {
                unreachable!("a read-only txn writes nothing")
            }
            None => None,
        })
        .map(|response| ResponseOp {
            response: Some(response),
        })
        .collect();
    // etcd gives nested txn responses an empty header; the caller fills the outer one.
    TxnResponse {
        header: Some(ResponseHeader::default()),
        succeeded,
        responses,
    }
}
