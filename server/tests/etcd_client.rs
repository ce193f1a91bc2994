//! Integration tests through the real `etcd-client` crate against a spawned
//! Ballast: KV options, kube-apiserver's txn shapes, compaction and the exact
//! error texts/codes clients match on, limits, Status and MemberList, response
//! headers, and durability across a clean restart.

mod common;

use common::{Ballast, MEMBER_NAME, guarded};
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, PutOptions,
    ResponseHeader, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use tonic::Code;

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
const EMPTY_KEY: &str = "etcdserver: key is not provided";
const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
const TOO_LARGE: &str = "etcdserver: request is too large";
const VALUE_PROVIDED: &str = "etcdserver: value is provided";
const KEY_NOT_FOUND: &str = "etcdserver: key not found";

/// The ids every header must carry, learned from the first response.
#[derive(Clone, Copy, Debug)]
struct Ids {
    cluster_id: u64,
    member_id: u64,
}

impl Ids {
    async fn learn(client: &mut Client) -> Ids {
        let st = guarded("status", client.status()).await.expect("status");
        let h = st.header().expect("status header");
        assert_ne!(h.cluster_id(), 0, "status header cluster_id");
        assert_ne!(h.member_id(), 0, "status header member_id");
        assert_ne!(h.raft_term(), 0, "status header raft_term");
        Ids {
            cluster_id: h.cluster_id(),
            member_id: h.member_id(),
        }
    }

    /// Asserts a top-level response header: the same non-zero ids, a
    /// non-zero raft term and the expected revision.
    #[track_caller]
    fn check(&self, h: Option<&ResponseHeader>, revision: i64, what: &str) {
        let h = h.unwrap_or_else(|| panic!("{what}: response has no header"));
        assert_eq!(h.cluster_id(), self.cluster_id, "{what}: header cluster_id");
        assert_eq!(h.member_id(), self.member_id, "{what}: header member_id");
        assert_ne!(h.raft_term(), 0, "{what}: header raft_term");
        assert_eq!(h.revision(), revision, "{what}: header revision");
    }
}

/// The gRPC code and message of an etcd-client error.
#[track_caller]
fn grpc_error(e: etcd_client::Error) -> (Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status error, got {other:?}"),
    }
}

#[track_caller]
fn expect_error<T: std::fmt::Debug>(
    r: Result<T, etcd_client::Error>,
    code: Code,
    message: &str,
    what: &str,
) {
    match r {
        Ok(v) => panic!("{what}: expected error {code:?} {message:?}, got Ok({v:?})"),
        Err(e) => assert_eq!(grpc_error(e), (code, message.to_string()), "{what}"),
    }
}

fn kv_summary(kvs: &[KeyValue]) -> Vec<(String, String, i64, i64, i64)> {
    kvs.iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
            )
        })
        .collect()
}

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

async fn put(c: &mut Client, ids: &Ids, key: &str, value: &str, expect_rev: i64) {
    let r = guarded("put", c.put(key, value, None))
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
    ids.check(r.header(), expect_rev, &format!("put {key}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_put_get_with_options() {
    let server = Ballast::start().await;
    let mut c = server.etcd_client().await;
    let ids = Ids::learn(&mut c).await;

    // A fresh store is at revision 1; the first write makes revision 2.
    let r = c.put("foo", "bar", None).await.expect("put foo");
    ids.check(r.header(), 2, "first put");
    assert!(r.prev_key().is_none(), "prev_kv not requested");

    let r = c
        .put("foo", "baz", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put foo again");
    ids.check(r.header(), 3, "put with prev_kv");
    let prev = r.prev_key().expect("prev_kv of an existing key");
    assert_eq!((prev.key(), prev.value()), (&b"foo"[..], &b"bar"[..]));
    assert_eq!(
        (
            prev.create_revision(),
            prev.mod_revision(),
            prev.version(),
            prev.lease()
        ),
        (2, 2, 1, 0)
    );

    let r = c
        .put("new", "x", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put new");
    ids.check(r.header(), 4, "put new with prev_kv");
    assert!(r.prev_key().is_none(), "no prev_kv for a new key");

    put(&mut c, &ids, "foo/a", "1", 5).await;
    put(&mut c, &ids, "foo/b", "2", 6).await;
    put(&mut c, &ids, "fop", "3", 7).await;
    c.delete("new", None).await.expect("delete new"); // revision 8
    let rev = 8;

    // Single key.
    let r = c.get("foo", None).await.expect("get foo");
    ids.check(r.header(), rev, "get foo");
    assert_eq!(
        kv_summary(r.kvs()),
        vec![("foo".into(), "baz".into(), 2, 3, 2)]
    );
    assert_eq!((r.count(), r.more()), (1, false));

    // Missing key: empty, count 0, header still at the current revision.
    let r = c.get("nope", None).await.expect("get nope");
    ids.check(r.header(), rev, "get missing");
    assert!(r.kvs().is_empty());
    assert_eq!((r.count(), r.more()), (0, false));

    // Prefix.
    let r = c
        .get("foo", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get prefix");
    ids.check(r.header(), rev, "get prefix");
    assert_eq!(keys(r.kvs()), ["foo", "foo/a", "foo/b"]);
    assert_eq!(r.count(), 3);

    // From key.
    let r = c
        .get("foo/b", Some(GetOptions::new().with_from_key()))
        .await
        .expect("get from key");
    assert_eq!(keys(r.kvs()), ["foo/b", "fop"]);

    // All keys.
    let r = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("get all");
    assert_eq!(keys(r.kvs()), ["foo", "foo/a", "foo/b", "fop"]);

    // Explicit range [foo/a, fop).
    let r = c
        .get("foo/a", Some(GetOptions::new().with_range("fop")))
        .await
        .expect("get range");
    assert_eq!(keys(r.kvs()), ["foo/a", "foo/b"]);

    // Limit: `more` set, `count` is the total in the range.
    let r = c
        .get("foo", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await
        .expect("get limit");
    ids.check(r.header(), rev, "get limit");
    assert_eq!(keys(r.kvs()), ["foo", "foo/a"]);
    assert!(r.more(), "more must be set when the limit truncates");
    assert_eq!(r.count(), 3, "count ignores the limit");
    let r = c
        .get("foo", Some(GetOptions::new().with_prefix().with_limit(3)))
        .await
        .expect("get limit 3");
    assert_eq!(r.kvs().len(), 3);
    assert!(!r.more(), "limit == number of keys: no more");

    // Past revisions; the header carries the current revision.
    let r = c
        .get("foo", Some(GetOptions::new().with_revision(2)))
        .await
        .expect("get rev 2");
    ids.check(r.header(), rev, "get at revision 2");
    assert_eq!(
        kv_summary(r.kvs()),
        vec![("foo".into(), "bar".into(), 2, 2, 1)]
    );
    let r = c
        .get("new", Some(GetOptions::new().with_revision(7)))
        .await
        .expect("get deleted key in the past");
    assert_eq!(
        kv_summary(r.kvs()),
        vec![("new".into(), "x".into(), 4, 4, 1)]
    );
    let r = c
        .get(
            "foo",
            Some(GetOptions::new().with_prefix().with_revision(5)),
        )
        .await
        .expect("prefix at rev 5");
    assert_eq!(keys(r.kvs()), ["foo", "foo/a"]);

    // Sorting.
    let r = c
        .get(
            "foo",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Mod, SortOrder::Descend),
            ),
        )
        .await
        .expect("sort by mod desc");
    assert_eq!(keys(r.kvs()), ["foo/b", "foo/a", "foo"]);
    let r = c
        .get(
            "f",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Value, SortOrder::Ascend),
            ),
        )
        .await
        .expect("sort by value asc");
    assert_eq!(keys(r.kvs()), ["foo/a", "foo/b", "fop", "foo"]);
    let r = c
        .get(
            "f",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend),
            ),
        )
        .await
        .expect("sort by key desc");
    assert_eq!(keys(r.kvs()), ["fop", "foo/b", "foo/a", "foo"]);
    let r = c
        .get(
            "f",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Descend)
                    .with_limit(2),
            ),
        )
        .await
        .expect("sort by create desc, limit 2");
    assert_eq!(keys(r.kvs()), ["fop", "foo/b"]);
    assert!(r.more());
    assert_eq!(r.count(), 4);
    // Sorting by version with order NONE sorts ascending (etcd's default for non-key targets).
    let r = c
        .get(
            "f",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Version, SortOrder::None),
            ),
        )
        .await
        .expect("sort by version, order none");
    assert_eq!(keys(r.kvs()), ["foo/a", "foo/b", "fop", "foo"]);

    // Keys only: values stripped, everything else kept.
    let r = c
        .get(
            "foo",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .expect("keys only");
    assert_eq!(keys(r.kvs()), ["foo", "foo/a", "foo/b"]);
    assert!(
        r.kvs().iter().all(|kv| kv.value().is_empty()),
        "keys_only must strip values"
    );
    assert_eq!(r.kvs()[0].mod_revision(), 3);

    // Count only.
    let r = c
        .get("f", Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .expect("count only");
    ids.check(r.header(), rev, "count only");
    assert!(r.kvs().is_empty(), "count_only returns no kvs");
    assert_eq!(r.count(), 4);

    // Min/max revision filters do not change `count`.
    let r = c
        .get(
            "f",
            Some(GetOptions::new().with_prefix().with_min_mod_revision(6)),
        )
        .await
        .expect("min mod revision");
    assert_eq!(keys(r.kvs()), ["foo/b", "fop"]);
    assert_eq!(r.count(), 4, "count ignores min/max filters");
    let r = c
        .get(
            "f",
            Some(GetOptions::new().with_prefix().with_max_create_revision(5)),
        )
        .await
        .expect("max create revision");
    assert_eq!(keys(r.kvs()), ["foo", "foo/a"]);

    // Serializable read.
    let r = c
        .get("foo", Some(GetOptions::new().with_serializable()))
        .await
        .expect("serializable get");
    ids.check(r.header(), rev, "serializable get");
    assert_eq!(r.kvs()[0].value(), b"baz");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_with_prev_kv() {
    let server = Ballast::start().await;
    let mut c = server.etcd_client().await;
    let ids = Ids::learn(&mut c).await;

    for (i, k) in ["a", "ab", "abc", "b", "c"].iter().enumerate() {
        put(&mut c, &ids, k, &format!("v{i}"), 2 + i as i64).await;
    }
    // Revision is now 6.

    let r = c
        .delete(
            "a",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("delete prefix");
    ids.check(r.header(), 7, "delete prefix");
    assert_eq!(r.deleted(), 3);
    assert_eq!(
        kv_summary(r.prev_kvs()),
        vec![
            ("a".into(), "v0".into(), 2, 2, 1),
            ("ab".into(), "v1".into(), 3, 3, 1),
            ("abc".into(), "v2".into(), 4, 4, 1)
        ]
    );

    // Deleting nothing changes nothing: no new revision.
    let r = c
        .delete(
            "a",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("delete nothing");
    ids.check(r.header(), 7, "delete of nothing");
    assert_eq!(r.deleted(), 0);
    assert!(r.prev_kvs().is_empty());

    // Single key without prev_kv.
    let r = c.delete("b", None).await.expect("delete b");
    ids.check(r.header(), 8, "delete single");
    assert_eq!(r.deleted(), 1);
    assert!(r.prev_kvs().is_empty(), "prev_kvs only when asked");

    // From key.
    put(&mut c, &ids, "d", "v", 9).await;
    let r = c
        .delete(
            "c",
            Some(DeleteOptions::new().with_from_key().with_prev_key()),
        )
        .await
        .expect("delete from key");
    ids.check(r.header(), 10, "delete from key");
    assert_eq!(keys(r.prev_kvs()), ["c", "d"]);

    let r = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("get all");
    ids.check(r.header(), 10, "get all");
    assert!(r.kvs().is_empty());

    // Re-creating a deleted key starts a new generation.
    put(&mut c, &ids, "a", "again", 11).await;
    let r = c.get("a", None).await.expect("get a");
    assert_eq!(
        kv_summary(r.kvs()),
        vec![("a".into(), "again".into(), 11, 11, 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_kube_apiserver_shapes() {
    let server = Ballast::start().await;
    let mut c = server.etcd_client().await;
    let ids = Ids::learn(&mut c).await;
    let key = "/registry/pods/default/p1";

    // Create: If ModRevision(k) == 0 Then Put.
    let create = |v: &str| {
        Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, v, None)])
    };
    let r = c.txn(create("v1")).await.expect("create");
    assert!(r.succeeded(), "create of a missing key succeeds");
    ids.check(r.header(), 2, "create txn");
    let ops = r.op_responses();
    assert_eq!(ops.len(), 1);
    match &ops[0] {
        TxnOpResponse::Put(p) => {
            let h = p.header().expect("put sub-response header");
            assert_eq!(
                h.revision(),
                2,
                "kube-apiserver reads the new resourceVersion from the put's header"
            );
        }
        other => panic!("expected a put response, got {other:?}"),
    }

    // Create again: compare fails, no ops, nothing changes.
    let r = c.txn(create("v1-again")).await.expect("create again");
    assert!(!r.succeeded());
    assert!(r.op_responses().is_empty());
    ids.check(r.header(), 2, "failed create");

    // GuaranteedUpdate: If ModRevision(k) == rev Then Put Else Get.
    let update = |rev: i64, v: &str| {
        Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
            .and_then([TxnOp::put(key, v, None)])
            .or_else([TxnOp::get(key, None)])
    };
    let r = c.txn(update(2, "v2")).await.expect("update");
    assert!(r.succeeded());
    ids.check(r.header(), 3, "update");
    match &r.op_responses()[0] {
        TxnOpResponse::Put(p) => assert_eq!(p.header().expect("put header").revision(), 3),
        other => panic!("expected a put response, got {other:?}"),
    }

    // Stale update: the else branch returns the current object.
    let r = c.txn(update(2, "v3")).await.expect("stale update");
    assert!(!r.succeeded());
    ids.check(r.header(), 3, "stale update");
    match &r.op_responses()[0] {
        TxnOpResponse::Get(g) => {
            assert_eq!(g.header().expect("range header").revision(), 3);
            assert_eq!(
                kv_summary(g.kvs()),
                vec![(key.into(), "v2".into(), 2, 3, 2)]
            );
            assert_eq!(g.count(), 1);
        }
        other => panic!("expected a range response, got {other:?}"),
    }

    // Delete: If ModRevision(k) == rev Then Delete Else Get.
    let delete = |rev: i64| {
        Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
            .and_then([TxnOp::delete(key, None)])
            .or_else([TxnOp::get(key, None)])
    };
    let r = c.txn(delete(2)).await.expect("stale delete");
    assert!(!r.succeeded());
    match &r.op_responses()[0] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].mod_revision(), 3),
        other => panic!("expected a range response, got {other:?}"),
    }
    let r = c.txn(delete(3)).await.expect("delete");
    assert!(r.succeeded());
    ids.check(r.header(), 4, "delete txn");
    match &r.op_responses()[0] {
        TxnOpResponse::Delete(d) => {
            assert_eq!(d.deleted(), 1);
            assert_eq!(
                d.header()
                    .expect("delete_range sub-response header")
                    .revision(),
                4
            );
        }
        other => panic!("expected a delete response, got {other:?}"),
    }
    let r = c.get(key, None).await.expect("get after delete");
    assert!(r.kvs().is_empty());

    // Compaction bookkeeping as kube-apiserver does it:
    // If Version("compact_rev_key") == v Then Put Else Get.
    let compact_txn = |version: i64, rev: &str| {
        Txn::new()
            .when([Compare::version(
                "compact_rev_key",
                CompareOp::Equal,
                version,
            )])
            .and_then([TxnOp::put("compact_rev_key", rev, None)])
            .or_else([TxnOp::get("compact_rev_key", None)])
    };
    let r = c.txn(compact_txn(0, "4")).await.expect("compact txn");
    assert!(r.succeeded());
    ids.check(r.header(), 5, "compact txn");
    let r = c
        .txn(compact_txn(0, "5"))
        .await
        .expect("compact txn, lost race");
    assert!(!r.succeeded());
    match &r.op_responses()[0] {
        TxnOpResponse::Get(g) => assert_eq!(
            kv_summary(g.kvs()),
            vec![("compact_rev_key".into(), "4".into(), 5, 5, 1)]
        ),
        other => panic!("expected a range response, got {other:?}"),
    }

    // Other compare targets and results, with ranges.
    put(&mut c, &ids, "p/a", "1", 6).await;
    put(&mut c, &ids, "p/b", "2", 7).await;
    let t = Txn::new()
        .when([
            Compare::version("p/", CompareOp::Greater, 0).with_prefix(),
            Compare::create_revision("p/", CompareOp::Less, 8).with_prefix(),
            Compare::value("p/a", CompareOp::NotEqual, "2"),
            Compare::lease("p/a", CompareOp::Equal, 0),
        ])
        .and_then([
            TxnOp::get("p/", Some(GetOptions::new().with_prefix())),
            TxnOp::put("p/c", "3", None),
        ])
        .or_else([TxnOp::put("p/fail", "x", None)]);
    let r = c.txn(t).await.expect("multi-compare txn");
    assert!(r.succeeded(), "all compares hold");
    ids.check(r.header(), 8, "multi-compare txn");
    let ops = r.op_responses();
    match (&ops[0], &ops[1]) {
        (TxnOpResponse::Get(g), TxnOpResponse::Put(p)) => {
            assert_eq!(keys(g.kvs()), ["p/a", "p/b"]);
            assert_eq!(p.header().expect("put header").revision(), 8);
        }
        other => panic!("unexpected responses {other:?}"),
    }
    // One failing key in a range fails the compare; a value compare on a missing key is false.
    let t = Txn::new()
        .when([Compare::value("p/", CompareOp::Equal, "1").with_prefix()])
        .and_then([TxnOp::put("p/x", "1", None)]);
    assert!(!c.txn(t).await.expect("range value compare").succeeded());
    let t = Txn::new()
        .when([Compare::value("missing", CompareOp::NotEqual, "zzz")])
        .and_then([TxnOp::put("p/x", "1", None)]);
    let r = c.txn(t).await.expect("value compare on missing key");
    assert!(
        !r.succeeded(),
        "VALUE compares against a missing key are always false"
    );
    ids.check(r.header(), 8, "read-only txn");

    // Nested txn.
    let inner = Txn::new()
        .when([Compare::version("p/c", CompareOp::Equal, 1)])
        .and_then([TxnOp::put("p/d", "4", None)]);
    let t = Txn::new().and_then([TxnOp::get("p/a", None), TxnOp::txn(inner)]);
    let r = c.txn(t).await.expect("nested txn");
    assert!(r.succeeded());
    ids.check(r.header(), 9, "nested txn");
    match &r.op_responses()[1] {
        TxnOpResponse::Txn(inner) => {
            assert!(inner.succeeded());
            match &inner.op_responses()[0] {
                TxnOpResponse::Put(p) => assert_eq!(p.header().expect("put header").revision(), 9),
                other => panic!("expected a put response, got {other:?}"),
            }
        }
        other => panic!("expected a txn response, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_revision_errors() {
    let server = Ballast::start().await;
    let mut c = server.etcd_client().await;
    let ids = Ids::learn(&mut c).await;

    for i in 0..5 {
        put(&mut c, &ids, "x", &format!("v{i}"), 2 + i).await;
    }
    // Revision 6; "x" has versions at revisions 2..=6.

    let r = c
        .compact(4, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact 4");
    ids.check(r.header(), 6, "compact");

    expect_error(
        c.get("x", Some(GetOptions::new().with_revision(3))).await,
        Code::OutOfRange,
        COMPACTED,
        "read below the compaction revision",
    );
    expect_error(
        c.get("x", Some(GetOptions::new().with_revision(1))).await,
        Code::OutOfRange,
        COMPACTED,
        "read at revision 1 after compaction",
    );
    let r = c
        .get("x", Some(GetOptions::new().with_revision(4)))
        .await
        .expect("read at the compaction revision");
    ids.check(r.header(), 6, "read at compact revision");
    assert_eq!(
        kv_summary(r.kvs()),
        vec![("x".into(), "v2".into(), 2, 4, 3)]
    );
    let r = c
        .get("x", Some(GetOptions::new().with_revision(5)))
        .await
        .expect("read above the compaction revision");
    assert_eq!(r.kvs()[0].value(), b"v3");

    // Compacting again at or below the compaction revision.
    expect_error(
        c.compact(4, None).await,
        Code::OutOfRange,
        COMPACTED,
        "compact at the compacted revision",
    );
    expect_error(
        c.compact(2, None).await,
        Code::OutOfRange,
        COMPACTED,
        "compact below the compacted revision",
    );

    // Future revisions.
    expect_error(
        c.get("x", Some(GetOptions::new().with_revision(7))).await,
        Code::OutOfRange,
        FUTURE_REV,
        "read at a future revision",
    );
    expect_error(
        c.compact(100, None).await,
        Code::OutOfRange,
        FUTURE_REV,
        "compact to a future revision",
    );

    // A range inside a txn at a compacted revision fails the whole txn.
    let t = Txn::new().and_then([TxnOp::get("x", Some(GetOptions::new().with_revision(2)))]);
    expect_error(
        c.txn(t).await,
        Code::OutOfRange,
        COMPACTED,
        "txn range at a compacted revision",
    );
    let t = Txn::new().and_then([TxnOp::get("x", Some(GetOptions::new().with_revision(50)))]);
    expect_error(
        c.txn(t).await,
        Code::OutOfRange,
        FUTURE_REV,
        "txn range at a future revision",
    );

    // Compacting to the current revision is allowed; the latest value stays readable.
    let r = c.compact(6, None).await.expect("compact to current");
    ids.check(r.header(), 6, "compact to current");
    let r = c.get("x", None).await.expect("get after compaction");
    assert_eq!(
        kv_summary(r.kvs()),
        vec![("x".into(), "v4".into(), 2, 6, 5)]
    );
    let r = c
        .get("x", Some(GetOptions::new().with_revision(6)))
        .await
        .expect("get at compact rev");
    assert_eq!(r.kvs()[0].value(), b"v4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_validation_errors() {
    let server = Ballast::start().await;
    let mut c = server.etcd_client().await;
    let ids = Ids::learn(&mut c).await;

    // Empty keys.
    expect_error(
        c.put("", "v", None).await,
        Code::InvalidArgument,
        EMPTY_KEY,
        "put empty key",
    );
    expect_error(
        c.get("", None).await,
        Code::InvalidArgument,
        EMPTY_KEY,
        "get empty key",
    );
    expect_error(
        c.delete("", None).await,
        Code::InvalidArgument,
        EMPTY_KEY,
        "delete empty key",
    );
    let t = Txn::new()
        .when([Compare::version("", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("k", "v", None)]);
    expect_error(
        c.txn(t).await,
        Code::InvalidArgument,
        EMPTY_KEY,
        "txn compare on an empty key",
    );

    // Duplicate keys in one branch.
    let t = Txn::new().and_then([TxnOp::put("k", "1", None), TxnOp::put("k", "2", None)]);
    expect_error(
        c.txn(t).await,
        Code::InvalidArgument,
        DUPLICATE_KEY,
        "txn with two puts of one key",
    );
    let t = Txn::new().and_then([
        TxnOp::delete("a", Some(DeleteOptions::new().with_prefix())),
        TxnOp::put("ab", "1", None),
    ]);
    expect_error(
        c.txn(t).await,
        Code::InvalidArgument,
        DUPLICATE_KEY,
        "txn put inside a deleted range",
    );
    // The same key in the then and else branches is fine.
    let t = Txn::new()
        .and_then([TxnOp::put("k", "1", None)])
        .or_else([TxnOp::put("k", "2", None)]);
    let r = c.txn(t).await.expect("same key in both branches");
    ids.check(r.header(), 2, "txn same key in both branches");

    // Too many operations: 128 is the limit.
    let ops = |n: usize| {
        (0..n)
            .map(|i| TxnOp::put(format!("many/{i:03}"), "v", None))
            .collect::<Vec<_>>()
    };
    expect_error(
        c.txn(Txn::new().and_then(ops(129))).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
        "txn with 129 ops",
    );
    let r = c
        .txn(Txn::new().and_then(ops(128)))
        .await
        .expect("txn with 128 ops");
    ids.check(r.header(), 3, "txn with 128 ops: one revision");
    let r = c
        .get(
            "many/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count many/");
    assert_eq!(r.count(), 128);
    let compares: Vec<Compare> = (0..129)
        .map(|_| Compare::version("k", CompareOp::Greater, 0))
        .collect();
    expect_error(
        c.txn(Txn::new().when(compares)).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
        "txn with 129 compares",
    );

    // ignore_value misuse.
    expect_error(
        c.put("k", "v", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        VALUE_PROVIDED,
        "ignore_value with a value",
    );
    expect_error(
        c.put("missing", "", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        KEY_NOT_FOUND,
        "ignore_value on a missing key",
    );
    let r = c
        .put(
            "k",
            "",
            Some(PutOptions::new().with_ignore_value().with_prev_key()),
        )
        .await
        .expect("ignore_value");
    ids.check(r.header(), 4, "ignore_value put");
    assert_eq!(r.prev_key().expect("prev kv").value(), b"1");
    let r = c.get("k", None).await.expect("get k");
    assert_eq!(kv_summary(r.kvs()), vec![("k".into(), "1".into(), 2, 4, 2)]);
    let r = c
        .put("k", "2", Some(PutOptions::new().with_ignore_lease()))
        .await
        .expect("ignore_lease");
    ids.check(r.header(), 5, "ignore_lease put");
    let r = c.get("k", None).await.expect("get k");
    assert_eq!((r.kvs()[0].value(), r.kvs()[0].lease()), (&b"2"[..], 0));

    // Request too large: above --max-request-bytes (1.5 MiB) but below gRPC's
    // receive limit (1.5 MiB + 512 KiB).
    let big = vec![b'x'; 1_600_000];
    expect_error(
        c.put("big", big, None).await,
        Code::InvalidArgument,
        TOO_LARGE,
        "1.6 MB put",
    );
    let r = c.get("big", None).await.expect("get big");
    ids.check(r.header(), 5, "nothing written by the rejected put");
    assert!(r.kvs().is_empty());

    // Nothing above bumped the revision except the successful writes.
    let st = c.status().await.expect("status");
    ids.check(st.header(), 5, "status after errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_member_list() {
    let server = Ballast::start().await;
    let mut c = server.etcd_client().await;
    let ids = Ids::learn(&mut c).await;
    put(&mut c, &ids, "k", "v", 2).await;

    let st = c.status().await.expect("status");
    ids.check(st.header(), 2, "status");
    assert!(
        st.version().starts_with("3.5."),
        "status version {:?} must be an etcd 3.5 version",
        st.version()
    );
    assert_eq!(
        st.leader(),
        ids.member_id,
        "a single member is its own leader"
    );
    assert!(st.raft_index() > 0, "raft index {}", st.raft_index());
    assert!(st.raft_term() > 0, "raft term {}", st.raft_term());
    assert_eq!(
        st.raft_term(),
        st.header().unwrap().raft_term(),
        "status raft_term == header raft_term"
    );
    assert!(!st.is_learner());
    assert!(st.errors().is_empty(), "status errors: {:?}", st.errors());

    let ml = c.member_list().await.expect("member list");
    let h = ml.header().expect("member list header");
    assert_eq!(h.cluster_id(), ids.cluster_id);
    assert_eq!(h.member_id(), ids.member_id);
    assert_ne!(h.raft_term(), 0);
    let members = ml.members();
    assert_eq!(members.len(), 1, "one member: {members:?}");
    let m = &members[0];
    assert_eq!(m.id(), ids.member_id);
    assert_eq!(m.name(), MEMBER_NAME);
    assert_eq!(m.peer_urls(), [server.peer_url()]);
    assert_eq!(m.client_urls(), [server.endpoint()]);
    assert!(!m.is_learner());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_clean_restart() {
    let mut server = Ballast::start().await;
    let mut c = server.etcd_client().await;
    let ids = Ids::learn(&mut c).await;

    let mut rev = 1;
    for i in 0..30 {
        rev += 1;
        put(
            &mut c,
            &ids,
            &format!("key/{i:02}"),
            &format!("value-{i}"),
            rev,
        )
        .await;
    }
    for i in (0..30).step_by(3) {
        rev += 1;
        put(
            &mut c,
            &ids,
            &format!("key/{i:02}"),
            &format!("updated-{i}"),
            rev,
        )
        .await;
    }
    for i in (1..30).step_by(5) {
        rev += 1;
        let r = c.delete(format!("key/{i:02}"), None).await.expect("delete");
        ids.check(r.header(), rev, "delete");
    }
    let compact_at = rev - 5;
    c.compact(compact_at, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    let t = Txn::new()
        .when([Compare::mod_revision("txn/k", CompareOp::Equal, 0)])
        .and_then([
            TxnOp::put("txn/k", "a", None),
            TxnOp::put("txn/l", "b", None),
        ]);
    assert!(c.txn(t).await.expect("txn").succeeded());
    rev += 1;

    let before = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("get all before");
    ids.check(before.header(), rev, "get all before restart");
    let before_at_compact = c
        .get(
            "key/",
            Some(GetOptions::new().with_prefix().with_revision(compact_at)),
        )
        .await
        .expect("get at compact rev");
    drop(c);

    server.stop().await;
    server.restart().await;

    let mut c = server.etcd_client().await;
    let after = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("get all after");
    ids.check(
        after.header(),
        rev,
        "get all after restart (same ids, same revision)",
    );
    assert_eq!(
        kv_summary(after.kvs()),
        kv_summary(before.kvs()),
        "data after restart"
    );
    assert_eq!(after.count(), before.count());

    let at_compact = c
        .get(
            "key/",
            Some(GetOptions::new().with_prefix().with_revision(compact_at)),
        )
        .await
        .expect("get at compact rev");
    assert_eq!(
        kv_summary(at_compact.kvs()),
        kv_summary(before_at_compact.kvs()),
        "history at the compaction revision"
    );
    expect_error(
        c.get(
            "key/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_revision(compact_at - 1),
            ),
        )
        .await,
        Code::OutOfRange,
        COMPACTED,
        "compaction survives the restart",
    );

    // Writing continues from the same revision.
    put(&mut c, &ids, "after", "restart", rev + 1).await;
    let ml = c.member_list().await.expect("member list after restart");
    assert_eq!(ml.members().len(), 1);
    assert_eq!(ml.members()[0].id(), ids.member_id);
}
