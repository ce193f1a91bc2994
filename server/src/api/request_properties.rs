//! Property tests: arbitrary requests, through the same checks the handlers
//! run and then the applier or the read path, never panic. A panic in apply
//! would crash every member at once and again on every replay of the log.
//! After the run, the store reopened from disk holds what was applied.

use ballast_proto::etcdserverpb::compare::TargetUnion;
use ballast_proto::etcdserverpb::request_op::Request;
use ballast_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseCheckpoint, LeaseCheckpointRequest,
    LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use bytes::Bytes;
use proptest::prelude::*;

use super::validate;
use crate::mvcc::{MAX_LEASE_TTL, Store, WriteRequest};
use crate::storage::db::StateDb;

const MAX_TXN_OPS: usize = 128;

fn bytes_from(options: &'static [&'static [u8]]) -> impl Strategy<Value = Bytes> {
    prop::sample::select(options).prop_map(Bytes::from_static)
}

fn key() -> impl Strategy<Value = Bytes> {
    bytes_from(&[b"", b"a", b"ab", b"b", b"\0", b"\xff"])
}

fn range_end() -> impl Strategy<Value = Bytes> {
    bytes_from(&[b"", b"", b"\0", b"a", b"b", b"c", b"\xff"])
}

/// Edge values first: zero, signs and the extremes, then anything.
fn int() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(-1),
        Just(i64::MAX),
        Just(i64::MIN),
        Just(i64::MAX - 1),
        -3i64..40,
        any::<i64>(),
    ]
}

fn enum_value() -> impl Strategy<Value = i32> {
    prop_oneof![0i32..6, any::<i32>()]
}

/// Fields that are usually left unset, so that combinations of set ones
/// with a plain request (no sort, no filter) come up often.
fn unset_or_int() -> impl Strategy<Value = i64> {
    prop_oneof![4 => Just(0i64), 1 => int()]
}

fn unset_or_enum() -> impl Strategy<Value = i32> {
    prop_oneof![2 => Just(0i32), 1 => enum_value()]
}

fn range_request() -> impl Strategy<Value = RangeRequest> {
    (
        (key(), range_end(), int(), unset_or_int()),
        (unset_or_enum(), unset_or_enum(), any::<[bool; 3]>()),
        (
            unset_or_int(),
            unset_or_int(),
            unset_or_int(),
            unset_or_int(),
        ),
    )
        .prop_map(
            |(
                (key, range_end, limit, revision),
                (sort_order, sort_target, [keys_only, count_only, serializable]),
                (min_mod_revision, max_mod_revision, min_create_revision, max_create_revision),
            )| RangeRequest {
                key,
                range_end,
                limit,
                revision,
                sort_order,
                sort_target,
                serializable,
                keys_only,
                count_only,
                min_mod_revision,
                max_mod_revision,
                min_create_revision,
                max_create_revision,
            },
        )
}

fn put_request() -> impl Strategy<Value = PutRequest> {
    (
        key(),
        bytes_from(&[b"", b"v", b"w"]),
        int(),
        any::<[bool; 3]>(),
    )
        .prop_map(
            |(key, value, lease, [prev_kv, ignore_value, ignore_lease])| PutRequest {
                key,
                value,
                lease,
                prev_kv,
                ignore_value,
                ignore_lease,
            },
        )
}

fn delete_request() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn compare() -> impl Strategy<Value = Compare> {
    let target_union = prop_oneof![
        Just(None),
        int().prop_map(|v| Some(TargetUnion::Version(v))),
        int().prop_map(|v| Some(TargetUnion::CreateRevision(v))),
        int().prop_map(|v| Some(TargetUnion::ModRevision(v))),
        int().prop_map(|v| Some(TargetUnion::Lease(v))),
        bytes_from(&[b"", b"v"]).prop_map(|v| Some(TargetUnion::Value(v))),
    ];
    (enum_value(), enum_value(), key(), range_end(), target_union).prop_map(
        |(result, target, key, range_end, target_union)| Compare {
            result,
            target,
            key,
            range_end,
            target_union,
        },
    )
}

fn txn_request() -> impl Strategy<Value = TxnRequest> {
    let leaf = prop_oneof![
        range_request().prop_map(|r| Some(Request::RequestRange(r))),
        put_request().prop_map(|r| Some(Request::RequestPut(r))),
        delete_request().prop_map(|r| Some(Request::RequestDeleteRange(r))),
        Just(None),
    ]
    .prop_map(|request| RequestOp { request });
    let txn = |ops: BoxedStrategy<RequestOp>| {
        (
            prop::collection::vec(compare(), 0..3),
            prop::collection::vec(ops.clone(), 0..4),
            prop::collection::vec(ops, 0..4),
        )
            .prop_map(|(compare, success, failure)| TxnRequest {
                compare,
                success,
                failure,
            })
    };
    leaf.prop_recursive(2, 24, 4, move |inner| {
        txn(inner.clone().boxed()).prop_map(|nested| RequestOp {
            request: Some(Request::RequestTxn(nested)),
        })
    })
    .boxed()
    .prop_flat_map(move |_| {
        let leaf_or_txn = prop_oneof![
            range_request().prop_map(|r| Some(Request::RequestRange(r))),
            put_request().prop_map(|r| Some(Request::RequestPut(r))),
            delete_request().prop_map(|r| Some(Request::RequestDeleteRange(r))),
            Just(None),
        ]
        .prop_map(|request| RequestOp { request })
        .boxed();
        txn(leaf_or_txn)
    })
}

#[derive(Debug, Clone)]
enum Call {
    Range(RangeRequest),
    Write(WriteRequest),
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        range_request().prop_map(Call::Range),
        put_request().prop_map(|r| Call::Write(WriteRequest::Put(r))),
        delete_request().prop_map(|r| Call::Write(WriteRequest::DeleteRange(r))),
        txn_request().prop_map(|r| Call::Write(WriteRequest::Txn(r))),
        (int(), any::<bool>()).prop_map(|(revision, physical)| Call::Write(WriteRequest::Compact(
            CompactionRequest { revision, physical }
        ))),
        (int(), int()).prop_map(|(ttl, id)| Call::Write(WriteRequest::LeaseGrant(
            LeaseGrantRequest { ttl, id }
        ))),
        int().prop_map(|id| Call::Write(WriteRequest::LeaseRevoke(LeaseRevokeRequest { id }))),
        prop::collection::vec((int(), int()), 0..3).prop_map(|checkpoints| Call::Write(
            WriteRequest::LeaseCheckpoint(LeaseCheckpointRequest {
                checkpoints: checkpoints
                    .into_iter()
                    .map(|(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                    .collect(),
            })
        )),
    ]
}

/// The checks the gRPC handlers run before a request reaches Raft.
fn handler_checks(request: &mut WriteRequest) -> bool {
    match request {
        WriteRequest::Put(put) => validate::check_put(put).is_ok(),
        WriteRequest::DeleteRange(delete) => validate::check_delete(delete).is_ok(),
        WriteRequest::Txn(txn) => {
            validate::check_txn(txn, MAX_TXN_OPS).is_ok()
                && validate::check_intervals(&txn.success).is_ok()
                && validate::check_intervals(&txn.failure).is_ok()
        }
        // The lease handler refuses long TTLs and assigns an id when asked
        // for any (a grant's id is never 0 in the log).
        WriteRequest::LeaseGrant(grant) => {
            if grant.id == 0 {
                grant.id = 1;
            }
            grant.ttl <= MAX_LEASE_TTL
        }
        WriteRequest::Compact(_)
        | WriteRequest::LeaseRevoke(_)
        | WriteRequest::LeaseCheckpoint(_) => true,
    }
}

fn everything(store: &Store) -> Vec<ballast_proto::mvccpb::KeyValue> {
    store
        .range(&RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            ..Default::default()
        })
        .expect("read everything")
        .kvs
}

/// Opens the state db again once the previous handle's last sled thread
/// has let go of its file lock (sled releases it after the handle drops).
fn reopen(dir: &std::path::Path) -> StateDb {
    let mut attempts = 0;
    loop {
        match StateDb::open(dir) {
            Ok(db) => return db,
            Err(e) if attempts < 500 && e.to_string().contains("could not acquire lock") => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("reopen the state db: {e}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_requests_never_panic(calls in prop::collection::vec(call(), 1..16)) {
        let dir = tempfile::tempdir().unwrap();
        let before_reopen = {
            let store = Store::open(StateDb::open(dir.path()).unwrap()).unwrap();
            for call in calls {
                match call {
                    Call::Range(range) => {
                        if validate::check_range(&range).is_ok() {
                            let _ = store.range(&range);
                        }
                    }
                    Call::Write(WriteRequest::Txn(txn)) if Store::is_read_only(&txn) => {
                        let mut request = WriteRequest::Txn(txn);
                        if handler_checks(&mut request) {
                            let WriteRequest::Txn(txn) = request else { unreachable!() };
                            let _ = store.read_only_txn(&txn);
                        }
                    }
                    Call::Write(mut request) => {
                        if handler_checks(&mut request) {
                            let mut applier = store.applier();
                            let _ = applier.execute(&request);
                            applier.commit().unwrap();
                        }
                    }
                }
            }
            let state = (store.revision(), store.compact_revision(), everything(&store));
            store.db().flush_durable().unwrap();
            state
        };
        let reopened = Store::open(reopen(dir.path())).unwrap();
        prop_assert_eq!(
            (reopened.revision(), reopened.compact_revision(), everything(&reopened)),
            before_reopen
        );
    }
}
