use ballast_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ballast_proto::etcdserverpb::{Compare, RequestOp};

use super::*;

fn open(dir: &std::path::Path) -> Store {
    Store::open(StateDb::open(dir).unwrap()).unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put(key: &str, value: &str) -> WriteRequest {
    WriteRequest::Put(PutRequest {
        key: b(key),
        value: b(value),
        ..Default::default()
    })
}

fn apply(store: &Store, requests: &[WriteRequest]) -> Vec<Result<WriteResponse, EtcdError>> {
    let mut applier = store.applier();
    let results = requests.iter().map(|r| applier.execute(r)).collect();
    applier.commit().unwrap();
    results
}

fn get(store: &Store, key: &str, revision: i64) -> Result<RangeResponse, EtcdError> {
    store.range(&RangeRequest {
        key: b(key),
        revision,
        ..Default::default()
    })
}

#[test]
fn revisions_versions_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.revision(), 1);
    apply(&store, &[put("a", "1"), put("a", "2"), put("b", "1")]);
    assert_eq!(store.revision(), 4);
    let kv = &get(&store, "a", 0).unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));

    let delete_nothing = WriteRequest::DeleteRange(DeleteRangeRequest {
        key: b("zzz"),
        ..Default::default()
    });
    let result = apply(&store, &[delete_nothing]);
    assert!(matches!(&result[0], Ok(WriteResponse::DeleteRange(r)) if r.deleted == 0));
    assert_eq!(store.revision(), 4, "a delete of nothing takes no revision");

    let delete_a = WriteRequest::DeleteRange(DeleteRangeRequest {
        key: b("a"),
        ..Default::default()
    });
    apply(&store, &[delete_a, put("a", "3")]);
    let kv = &get(&store, "a", 0).unwrap().kvs[0];
    assert_eq!(
        (kv.create_revision, kv.version),
        (6, 1),
        "re-creation starts a new generation"
    );
    assert_eq!(get(&store, "a", 5).unwrap().kvs.len(), 0);
    assert_eq!(get(&store, "a", 3).unwrap().kvs[0].value, b("2"));
    assert_eq!(get(&store, "a", 7), Err(EtcdError::FutureRevision));
}

#[test]
fn txn_is_one_revision_and_sub_responses_carry_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    apply(&store, &[put("k", "v")]);
    let op = |request| RequestOp {
        request: Some(request),
    };
    let txn = TxnRequest {
        compare: vec![Compare {
            key: b("k"),
            target: CompareTarget::Value as i32,
            result: CompareResult::Equal as i32,
            target_union: Some(TargetUnion::Value(b("v"))),
            ..Default::default()
        }],
        success: vec![
            op(Request::RequestPut(PutRequest {
                key: b("x"),
                value: b("1"),
                ..Default::default()
            })),
            op(Request::RequestRange(RangeRequest {
                key: b("x"),
                ..Default::default()
            })),
        ],
        failure: vec![],
    };
    let result = apply(&store, &[WriteRequest::Txn(txn)]);
    let Ok(WriteResponse::Txn(response)) = &result[0] else {
        panic!("txn failed: {result:?}");
    };
    assert!(response.succeeded);
    assert_eq!(response.header.as_ref().unwrap().revision, 3);
    let Some(Response::ResponsePut(put)) = &response.responses[0].response else {
        panic!()
    };
    assert_eq!(put.header.as_ref().unwrap().revision, 3);
    let Some(Response::ResponseRange(range)) = &response.responses[1].response else {
        panic!()
    };
    assert_eq!(range.kvs[0].value, b("1"), "a txn reads its own writes");
    assert_eq!(store.revision(), 3);
}

/// A read-only txn is a read: it runs while other readers hold the
/// store, instead of waiting for the write lock as an applier does.
#[test]
fn a_read_only_txn_runs_beside_other_readers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    apply(&store, &[put("k", "v")]);
    let reader = store.read();
    let (done, finished) = std::sync::mpsc::channel();
    let txn_store = store.clone();
    std::thread::spawn(move || {
        let txn = TxnRequest {
            success: vec![RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key: b("k"),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        let _ = done.send(txn_store.read_only_txn(&txn));
    });
    let response = finished
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("a read-only txn waited for the write lock")
        .unwrap();
    drop(reader);
    let Some(Response::ResponseRange(range)) = &response.responses[0].response else {
        panic!("{response:?}")
    };
    assert_eq!(range.kvs[0].value, b("v"));
    assert_eq!(response.header.unwrap().revision, 2);
}

/// A subscription taken while a commit of many revisions is being
/// published (as when a member applies a backlog) must start exactly
/// where the feed continues: the first revision it receives after its
/// starting point is the next one.
#[test]
fn a_subscription_during_a_long_commit_misses_no_revision() {
    const PER_COMMIT: usize = 300;
    const WANTED_MID_COMMIT: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let requests: Vec<WriteRequest> = (0..PER_COMMIT)
                .map(|i| put(&format!("k{i}"), "v"))
                .collect();
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    return true;
                }
                apply(&store, &requests);
            }
            false
        })
    };
    let mut mid_commit = 0;
    while mid_commit < WANTED_MID_COMMIT && !writer.is_finished() {
        let (mut feed, from) = store.subscribe_at();
        let first_new = loop {
            match feed.try_recv() {
                Ok(changes) if event_revision(&changes[0]) > from => {
                    break Some(event_revision(&changes[0]));
                }
                Ok(_) => continue,
                Err(broadcast::error::TryRecvError::Empty) if !writer.is_finished() => {
                    std::thread::yield_now();
                }
                Err(_) => break None,
            }
        };
        let Some(first_new) = first_new else { continue };
        assert_eq!(first_new, from + 1, "revisions after {from} skipped");
        if (from - 1) % PER_COMMIT as i64 != 0 {
            mid_commit += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(
        writer.join().unwrap(),
        "only {mid_commit} subscriptions fell inside a commit"
    );
}

#[test]
fn compaction_survives_restart_with_versions_intact() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        apply(
            &store,
            &[put("a", "1"), put("a", "2"), put("a", "3"), put("b", "1")],
        );
        let compact = WriteRequest::Compact(CompactionRequest {
            revision: 4,
            physical: true,
        });
        assert!(apply(&store, std::slice::from_ref(&compact))[0].is_ok());
        assert_eq!(apply(&store, &[compact])[0], Err(EtcdError::Compacted));
        assert_eq!(get(&store, "a", 3), Err(EtcdError::Compacted));
        assert_eq!(get(&store, "a", 4).unwrap().kvs[0].version, 3);
        store.db().flush_durable().unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.revision(), 5);
    assert_eq!(store.compact_revision(), 4);
    apply(&store, &[put("a", "4")]);
    let kv = &get(&store, "a", 0).unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.version), (2, 4));
}

fn compact(revision: i64) -> WriteRequest {
    WriteRequest::Compact(CompactionRequest {
        revision,
        physical: true,
    })
}

fn stored_revisions(store: &Store) -> Vec<i64> {
    store
        .db()
        .all_rows()
        .map(|row| row.unwrap().rev.main)
        .collect()
}

fn all_keys(store: &Store) -> RangeResponse {
    store
        .range(&RangeRequest {
            key: b("\0"),
            range_end: b("\0"),
            ..Default::default()
        })
        .unwrap()
}

#[test]
fn compaction_deletes_unreachable_rows_off_the_apply_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    apply(&store, &[put("a", "1"), put("a", "2"), put("b", "1")]);
    let pin = store.compactor.pin();
    apply(&store, &[compact(3)]);
    assert_eq!(get(&store, "a", 2), Err(EtcdError::Compacted));
    assert_eq!(
        stored_revisions(&store),
        vec![2, 3, 4],
        "no row is deleted while pinned"
    );
    drop(pin);
    store.wait_compacted(3).unwrap();
    assert_eq!(stored_revisions(&store), vec![3, 4]);
    assert_eq!(
        store
            .db()
            .meta(META_COMPACTED_REVISION)
            .unwrap()
            .unwrap()
            .as_ref(),
        3i64.to_be_bytes()
    );
}

#[test]
fn a_compaction_cut_short_is_finished_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        apply(&store, &[put("a", "1"), put("a", "2"), put("a", "3")]);
        let _pin = store.compactor.pin();
        apply(&store, &[compact(4)]);
        store.db().flush_durable().unwrap();
        assert_eq!(stored_revisions(&store), vec![2, 3, 4]);
    }
    let store = open(dir.path());
    store.wait_compacted(4).unwrap();
    assert_eq!(stored_revisions(&store), vec![4]);
    let kv = &get(&store, "a", 0).unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.version), (2, 3));
}

#[test]
fn a_snapshot_streams_while_applies_go_on_and_installs_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let leader = open(&dir.path().join("leader"));
    apply(&leader, &[put("a", "1"), put("b", "1"), put("a", "2")]);
    apply(&leader, &[compact(3)]);
    leader.wait_compacted(3).unwrap();
    apply(&leader, &[put("c", "1")]);
    let expected = all_keys(&leader);
    let hash = leader.hash_kv(0).unwrap();

    let path = dir.path().join("current.snap");
    let snapshot = leader.begin_snapshot().unwrap();
    // Applies and compactions go on while the rows are streamed.
    apply(&leader, &[put("a", "3"), put("d", "1"), compact(6)]);
    let mut writer = SnapshotWriter::create(&path, b"meta").unwrap();
    snapshot.write_to(&mut writer).unwrap();
    writer.finish(&path).unwrap();
    leader.wait_compacted(6).unwrap();

    let follower = open(&dir.path().join("follower"));
    apply(&follower, &[put("stale", "1")]);
    let mut feed = follower.subscribe();
    follower
        .install(&mut SnapshotReader::open(&path).unwrap())
        .unwrap();
    assert!(
        feed.try_recv().unwrap().is_empty(),
        "subscribers hear that the state was replaced"
    );
    assert!(!follower.install_interrupted().unwrap());
    assert_eq!(follower.revision(), 5);
    assert_eq!(follower.compact_revision(), 3);
    assert_eq!(all_keys(&follower), expected);
    assert_eq!(follower.hash_kv(0).unwrap(), hash);
    assert_eq!(get(&follower, "a", 2), Err(EtcdError::Compacted));
    apply(&follower, &[put("a", "3")]);
    let kv = &get(&follower, "a", 0).unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 6, 3));
}
