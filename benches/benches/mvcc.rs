//! The MVCC store's hot paths through its public API: applying a batch of
//! puts (what the Raft state machine does per entry), ranges of 1 and 100
//! keys, and a txn with a compare and a put. The state database is a real
//! sled database in a temporary directory, as in the server.

use std::hint::black_box;

use ballast_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ballast_proto::etcdserverpb::request_op::Request;
use ballast_proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use ballast_server::mvcc::{Store, WriteRequest, WriteResponse};
use ballast_server::storage::db::StateDb;
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tempfile::TempDir;

/// Keys preloaded for the read benchmarks, and the key space writes cycle over.
const KEYS: u64 = 10_000;
const VALUE_BYTES: usize = 256;

fn key(n: u64) -> Bytes {
    Bytes::from(format!("/registry/pods/default/pod-{:08}", n % KEYS))
}

fn put(n: u64) -> WriteRequest {
    WriteRequest::Put(PutRequest {
        key: key(n),
        value: Bytes::from(vec![b'v'; VALUE_BYTES]),
        ..Default::default()
    })
}

fn open() -> (TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = StateDb::open(dir.path()).expect("open state db");
    (dir, Store::open(db).expect("open store"))
}

/// Applies `requests` as one batch, as the state machine applies one entry.
fn apply(store: &Store, requests: impl IntoIterator<Item = WriteRequest>) {
    let mut applier = store.applier();
    for request in requests {
        black_box(applier.execute(&request).expect("write applies"));
    }
    applier.commit().expect("commit");
}

/// A store holding every key of the key space once.
fn loaded() -> (TempDir, Store) {
    let (dir, store) = open();
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(1000) {
        apply(&store, chunk.iter().map(|&n| put(n)));
    }
    (dir, store)
}

fn put_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("mvcc/apply_put_batch");
    for size in [1u64, 64, 1024] {
        let (_dir, store) = open();
        let mut next = 0u64;
        group.throughput(Throughput::Elements(size));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            b.iter(|| {
                apply(&store, (next..next + size).map(put));
                next += size;
            });
        });
    }
    group.finish();
}

fn range(c: &mut Criterion) {
    let (_dir, store) = loaded();
    let mut group = c.benchmark_group("mvcc/range");
    for width in [1u64, 100] {
        // A stride coprime with the key space visits keys all over the index.
        let mut n = 0u64;
        group.throughput(Throughput::Elements(width));
        group.bench_with_input(BenchmarkId::new("keys", width), &width, |b, &width| {
            b.iter(|| {
                n = (n + 7919) % (KEYS - width);
                let request = RangeRequest {
                    key: key(n),
                    // Empty for a single key; otherwise the key `width` further on.
                    range_end: if width == 1 {
                        Bytes::new()
                    } else {
                        key(n + width)
                    },
                    ..Default::default()
                };
                let response = store.range(&request).expect("range");
                debug_assert_eq!(response.kvs.len() as u64, width);
                black_box(response);
            });
        });
    }
    group.finish();
}

fn txn_compare_put(c: &mut Criterion) {
    let (_dir, store) = loaded();
    let mut n = 0u64;
    c.bench_function("mvcc/txn_compare_put", |b| {
        b.iter(|| {
            n = (n + 7919) % KEYS;
            // kube-apiserver's update: write only if nobody changed the key
            // since it was read (mod_revision is at least 1 for any stored key).
            let txn = TxnRequest {
                compare: vec![Compare {
                    key: key(n),
                    target: CompareTarget::Mod as i32,
                    result: CompareResult::Greater as i32,
                    target_union: Some(TargetUnion::ModRevision(0)),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: key(n),
                        value: Bytes::from_static(b"updated"),
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            };
            let mut applier = store.applier();
            let response = applier.execute(&WriteRequest::Txn(txn)).expect("txn");
            debug_assert!(matches!(&response, WriteResponse::Txn(t) if t.succeeded));
            applier.commit().expect("commit");
            black_box(response);
        });
    });
}

criterion_group!(benches, put_batch, range, txn_compare_put);
criterion_main!(benches);
