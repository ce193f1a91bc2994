//! The MVCC store: the in-memory key index over the revision-ordered rows of
//! the state database.
//!
//! Readers share a `RwLock` with the single applier: a read sees either all or
//! none of an applied batch. The applier holds the write lock for one Raft
//! batch and writes it to sled as one atomic batch on commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ballast_proto::etcdserverpb::request_op::Request;
use ballast_proto::etcdserverpb::response_op::Response;
use ballast_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseCheckpointRequest, LeaseCheckpointResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use ballast_proto::mvccpb::event::EventType;
use ballast_proto::mvccpb::{Event, KeyValue};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::compactor::{Compactor, META_COMPACTED_REVISION};
use super::index::{KeyRange, TreeIndex};
use super::lease::{Lease, LeaseChange, LeaseTable, MAX_LEASE_TTL};
use super::range::{ReadView, range, range_keys};
use super::txn::{branch, check_path, check_range, compare_path, is_read_only, read_only_txn};
use crate::errors::EtcdError;
use crate::storage::db::{LeaseRow, Row, StateBatch, StateDb};
use crate::storage::revision::Revision;
use crate::storage::snapshot::{Pair, SnapshotReader, SnapshotWriter};

const META_REVISION: &str = "revision";
const META_COMPACT_REVISION: &str = "compact_revision";
/// Set while a snapshot replaces the state: found on open, the state is
/// partial and the snapshot must be installed again.
const OWN_INSTALLING: &str = "installing";

/// A request that goes through Raft and changes the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WriteRequest {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    /// The id is set (non-zero) and the TTL raised to the minimum before proposing.
    LeaseGrant(LeaseGrantRequest),
    LeaseRevoke(LeaseRevokeRequest),
    LeaseCheckpoint(LeaseCheckpointRequest),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WriteResponse {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseCheckpoint(LeaseCheckpointResponse),
}

struct State {
    index: TreeIndex,
    /// The revision of the last change; 1 for an empty store, as in etcd.
    revision: i64,
    /// -1 until the first compaction, as in etcd.
    compact_revision: i64,
    leases: LeaseTable,
}

/// The state as stored, and the physical compaction it still needs.
struct Loaded {
    state: State,
    /// Compactions up to this revision have deleted all their rows.
    compacted: i64,
    /// Rows to keep when deleting those below the compact revision, if the
    /// last compaction's rows are not all deleted yet.
    unfinished: Option<std::collections::HashSet<Revision>>,
}

/// The changes of one revision, as watch events in sub-revision order.
pub type Changes = Arc<Vec<Event>>;

/// Revisions kept for subscribers that fall behind; one further behind lags
/// and catches up from storage.
const CHANGE_FEED_CAPACITY: usize = 1024;

/// Lease changes kept for the leader's expiry clock; one that lags reloads
/// every lease from the store.
const LEASE_FEED_CAPACITY: usize = 4096;

pub struct Store {
    db: StateDb,
    state: RwLock<State>,
    feed: broadcast::Sender<Changes>,
    lease_feed: broadcast::Sender<LeaseChange>,
    /// The revision of the last committed batch, readable without the lock
    /// (every response header carries it). Set after the batch is in the
    /// feed, so whoever reads R finds every change up to R there.
    committed_revision: AtomicI64,
    /// The revision of the last change handed to the feed, set just before
    /// its message is sent: a subscriber that reads R after subscribing
    /// receives every change after R, and finds every one up to R stored.
    feed_revision: AtomicI64,
    /// The compact revision, readable without the lock.
    compacted_revision: AtomicI64,
    compactor: Compactor,
}

/// A snapshot in progress: the small state read at one applied batch, with
/// the rows at or below its revision pinned until it is written.
pub struct StoreSnapshot<'a> {
    db: &'a StateDb,
    small: Vec<Pair>,
    revision: i64,
    _pin: super::compactor::Pin<'a>,
}

impl StoreSnapshot<'_> {
    /// Replicated metadata `name` as of the snapshot.
    pub fn meta(&self, name: &str) -> Option<&[u8]> {
        let key = crate::storage::db::meta_key(name);
        self.small
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// Streams the rows, then the small state, into `writer`. Applies go on
    /// meanwhile: rows are never changed once written, and newer ones are
    /// past the snapshot's revision.
    pub fn write_to(self, writer: &mut SnapshotWriter) -> std::io::Result<()> {
        for pair in self.db.row_pairs(Revision::new(self.revision + 1, 0)) {
            let (key, value) = pair?;
            writer.push(&key, &value)?;
        }
        for (key, value) in &self.small {
            writer.push(key, value)?;
        }
        Ok(())
    }
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

fn read_i64(db: &StateDb, name: &str) -> std::io::Result<Option<i64>> {
    Ok(db
        .meta(name)?
        .and_then(|v| v.as_ref().try_into().ok().map(i64::from_be_bytes)))
}

impl Store {
    /// Opens the store and rebuilds the key index from the stored rows.
    pub fn open(db: StateDb) -> std::io::Result<Self> {
        let loaded = load_state(&db)?;
        let compactor = Compactor::start(db.clone(), loaded.compacted)?;
        if let Some(keep) = loaded.unfinished {
            compactor.schedule(loaded.state.compact_revision, keep);
        }
        Ok(Self {
            db,
            committed_revision: AtomicI64::new(loaded.state.revision),
            feed_revision: AtomicI64::new(loaded.state.revision),
            compacted_revision: AtomicI64::new(loaded.state.compact_revision),
            state: RwLock::new(loaded.state),
            feed: broadcast::channel(CHANGE_FEED_CAPACITY).0,
            lease_feed: broadcast::channel(LEASE_FEED_CAPACITY).0,
            compactor,
        })
    }

    /// Starts a snapshot of the state as of the last applied batch. Holding
    /// it stops physical compaction, not applies.
    pub fn begin_snapshot(&self) -> std::io::Result<StoreSnapshot<'_>> {
        let pin = self.compactor.pin();
        let state = self.read();
        let small = self.db.small_pairs()?;
        Ok(StoreSnapshot {
            db: &self.db,
            small,
            revision: state.revision,
            _pin: pin,
        })
    }

    /// Whether a snapshot install was cut short (a crash): the state is
    /// partial until the snapshot is installed again.
    pub fn install_interrupted(&self) -> std::io::Result<bool> {
        Ok(self.db.own_meta(OWN_INSTALLING)?.is_some())
    }

    /// Replaces the whole state with a snapshot's, in bounded batches, and
    /// makes it durable. Readers wait until it is done; a crash part-way is
    /// seen by [`Store::install_interrupted`].
    pub fn install(&self, snapshot: &mut SnapshotReader) -> std::io::Result<()> {
        let pin = self.compactor.pin();
        let mut state = self.state.write().expect("store lock poisoned");
        let mut marker = StateBatch::default();
        marker.put_own_meta(OWN_INSTALLING, b"");
        self.db.apply(marker)?;
        self.db.flush_durable()?;
        self.db.clear_replicated()?;
        while let Some(pairs) = snapshot.next_batch()? {
            self.db.insert_pairs(pairs)?;
        }
        let mut done = StateBatch::default();
        done.remove_own_meta(OWN_INSTALLING);
        self.db.apply(done)?;
        self.db.flush_durable()?;
        let loaded = load_state(&self.db)?;
        self.compactor.reset(&pin, loaded.compacted);
        drop(pin);
        if let Some(keep) = loaded.unfinished {
            self.compactor.schedule(loaded.state.compact_revision, keep);
        }
        *state = loaded.state;
        self.compacted_revision
            .store(state.compact_revision, Ordering::Release);
        self.committed_revision
            .store(state.revision, Ordering::Release);
        self.feed_revision.store(state.revision, Ordering::Release);
        // An empty batch tells subscribers the state was replaced without
        // events: they catch up from storage.
        let _ = self.feed.send(Arc::new(Vec::new()));
        Ok(())
    }

    /// Waits until the rows made unreachable by compactions up to `at` are
    /// deleted from storage (a Compact request with `physical` set).
    pub fn wait_compacted(&self, at: i64) -> std::io::Result<()> {
        self.compactor.wait_finished(at)
    }

    pub fn db(&self) -> &StateDb {
        &self.db
    }

    pub fn revision(&self) -> i64 {
        self.committed_revision.load(Ordering::Acquire)
    }

    pub fn compact_revision(&self) -> i64 {
        self.compacted_revision.load(Ordering::Acquire)
    }

    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        let state = self.read();
        range(
            &StateView {
                state: &state,
                db: &self.db,
                pending: None,
                revision: state.revision,
            },
            req,
        )
    }

    /// Serves a txn that writes nothing, at the current revision.
    pub fn read_only_txn(&self, req: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        let state = self.read();
        read_only_txn(
            &StateView {
                state: &state,
                db: &self.db,
                pending: None,
                revision: state.revision,
            },
            req,
        )
    }

    pub fn is_read_only(req: &TxnRequest) -> bool {
        is_read_only(req)
    }

    /// A hash of the history up to `revision` (0: the current one), equal on
    /// every member that applied the same log, as etcd's HashKV. Returns the
    /// hash, the compact revision and the revision hashed.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), EtcdError> {
        let (current, compacted) = {
            let state = self.read();
            (state.revision, state.compact_revision)
        };
        let revision = if revision <= 0 { current } else { revision };
        if revision > current {
            return Err(EtcdError::FutureRevision);
        }
        if revision < compacted {
            return Err(EtcdError::Compacted);
        }
        // Members delete compacted rows at their own pace: hash only once
        // they are gone, and with no deletion running.
        self.compactor
            .wait_finished(compacted)
            .map_err(|_| EtcdError::Stopped)?;
        let _pin = self.compactor.pin();
        if self.compact_revision() != compacted {
            return Err(EtcdError::Compacted);
        }
        let hash = self
            .db
            .hash_rows(Revision::new(revision + 1, 0))
            .map_err(|_| EtcdError::Stopped)?;
        Ok((hash, compacted, revision))
    }

    /// Lease grants and revokes committed after this call.
    pub fn subscribe_leases(&self) -> broadcast::Receiver<LeaseChange> {
        self.lease_feed.subscribe()
    }

    pub fn lease(&self, id: i64) -> Option<Lease> {
        self.read().leases.get(id).cloned()
    }

    /// A lease's granted and checkpointed remaining TTL, without its keys.
    pub fn lease_ttls(&self, id: i64) -> Option<(i64, i64)> {
        self.read()
            .leases
            .get(id)
            .map(|lease| (lease.ttl, lease.remaining_ttl))
    }

    /// Every lease: id, granted TTL and checkpointed remaining TTL.
    pub fn leases(&self) -> Vec<(i64, i64, i64)> {
        self.read()
            .leases
            .iter()
            .map(|(id, lease)| (id, lease.ttl, lease.remaining_ttl))
            .collect()
    }

    /// Every batch of changes committed after this call, in revision order;
    /// an empty batch means a snapshot replaced the state. Subscribe before
    /// reading [`Store::revision`] so that no change falls between.
    pub fn subscribe(&self) -> broadcast::Receiver<Changes> {
        self.feed.subscribe()
    }

    /// Subscribes to the feed and tells where the subscription starts: every
    /// change after the returned revision arrives on the receiver, and every
    /// change up to it is already stored ([`Store::changes`]). Unlike
    /// [`Store::revision`] this holds in the middle of a commit of many
    /// revisions, whose changes the feed carries one revision at a time.
    pub fn subscribe_at(&self) -> (broadcast::Receiver<Changes>, i64) {
        let feed = self.feed.subscribe();
        (feed, self.feed_revision.load(Ordering::Acquire))
    }

    /// The stored changes with revisions in `from..=to`, as watch events.
    /// Fails if history from `from` on has been compacted away.
    pub fn changes(&self, from: i64, to: i64) -> Result<Vec<Event>, EtcdError> {
        let state = self.read();
        if from < state.compact_revision {
            return Err(EtcdError::Compacted);
        }
        Ok(self
            .db
            .rows(Revision::new(from, 0), Revision::new(to + 1, 0))
            .map(|row| row_event(row.expect("state db read failed")))
            .collect())
    }

    /// The value `key` had just before revision `rev` (a watch event's prev_kv).
    pub fn previous(&self, key: &Bytes, rev: i64) -> Option<KeyValue> {
        let req = RangeRequest {
            key: key.clone(),
            revision: rev - 1,
            ..Default::default()
        };
        self.range(&req).ok()?.kvs.into_iter().next()
    }

    /// Starts applying a batch of write requests; readers wait until it ends.
    pub fn applier(&self) -> Applier<'_> {
        Applier {
            committed_revision: &self.committed_revision,
            feed_revision: &self.feed_revision,
            compacted_revision: &self.compacted_revision,
            compactor: &self.compactor,
            planned_compaction: None,
            feed: &self.feed,
            lease_feed: &self.lease_feed,
            lease_changes: Vec::new(),
            events: Vec::new(),
            db: &self.db,
            state: self.state.write().expect("store lock poisoned"),
            batch: StateBatch::default(),
            pending: HashMap::new(),
            begin_revision: 0,
            changes: 0,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().expect("store lock poisoned")
    }
}

fn load_state(db: &StateDb) -> std::io::Result<Loaded> {
    let mut index = TreeIndex::default();
    let mut revision = read_i64(db, META_REVISION)?.unwrap_or(1);
    // Each key's lease is the one its latest version names.
    let mut key_leases = HashMap::new();
    for row in db.all_rows() {
        let row = row?;
        if row.tombstone {
            index.tombstone(&row.kv.key, row.rev);
            key_leases.remove(&row.kv.key);
        } else {
            index.restore_put(&row.kv.key, row.rev, row.kv.create_revision, row.kv.version);
            if row.kv.lease == 0 {
                key_leases.remove(&row.kv.key);
            } else {
                key_leases.insert(row.kv.key.clone(), row.kv.lease);
            }
        }
        revision = revision.max(row.rev.main);
    }
    let lease_rows = db.leases().collect::<std::io::Result<Vec<LeaseRow>>>()?;
    let compact_revision = read_i64(db, META_COMPACT_REVISION)?.unwrap_or(-1);
    let compacted = read_i64(db, META_COMPACTED_REVISION)?.unwrap_or(-1);
    // Rows a compaction had not deleted yet are indexed again above; the
    // index drops them once more, and the compactor deletes them.
    let unfinished = (compacted < compact_revision)
        .then(|| index.compact(compact_revision).into_iter().collect());
    Ok(Loaded {
        state: State {
            index,
            revision,
            compact_revision,
            leases: LeaseTable::restore(lease_rows, key_leases),
        },
        compacted,
        unfinished,
    })
}

struct StateView<'a> {
    state: &'a State,
    db: &'a StateDb,
    pending: Option<&'a HashMap<Revision, Row>>,
    revision: i64,
}

impl ReadView for StateView<'_> {
    fn revision(&self) -> i64 {
        self.revision
    }

    fn compact_revision(&self) -> i64 {
        self.state.compact_revision
    }

    fn index(&self) -> &TreeIndex {
        &self.state.index
    }

    fn load(&self, rev: Revision) -> KeyValue {
        if let Some(row) = self.pending.and_then(|p| p.get(&rev)) {
            return row.kv.clone();
        }
        // The index only points at stored rows; a missing or unreadable one
        // means the database is damaged, and serving on would return wrong data.
        self.db
            .get_row(rev)
            .expect("state db read failed")
            .expect("indexed revision missing from the state db")
            .kv
    }
}

/// Applies write requests with etcd's semantics; see [`Store::applier`].
/// Each request either fails with nothing changed or takes one revision.
pub struct Applier<'a> {
    committed_revision: &'a AtomicI64,
    feed_revision: &'a AtomicI64,
    compacted_revision: &'a AtomicI64,
    compactor: &'a Compactor,
    /// A compaction in this batch: the revision and the rows to keep, handed
    /// to the compactor once the batch is stored.
    planned_compaction: Option<(i64, std::collections::HashSet<Revision>)>,
    feed: &'a broadcast::Sender<Changes>,
    lease_feed: &'a broadcast::Sender<LeaseChange>,
    /// The batch's lease grants and revokes, published once committed.
    lease_changes: Vec<LeaseChange>,
    /// The batch's changes, published once committed.
    events: Vec<Event>,
    db: &'a StateDb,
    state: RwLockWriteGuard<'a, State>,
    batch: StateBatch,
    /// Rows written by this batch, readable before the batch is committed.
    pending: HashMap<Revision, Row>,
    begin_revision: i64,
    changes: i64,
}

impl Applier<'_> {
    pub fn execute(&mut self, req: &WriteRequest) -> Result<WriteResponse, EtcdError> {
        self.begin();
        let result = match req {
            WriteRequest::Put(put) => self.put_request(put).map(WriteResponse::Put),
            WriteRequest::DeleteRange(del) => {
                Ok(WriteResponse::DeleteRange(self.delete_range(del)))
            }
            WriteRequest::Txn(txn) => self.txn(txn).map(WriteResponse::Txn),
            WriteRequest::Compact(compact) => self.compact(compact).map(WriteResponse::Compact),
            WriteRequest::LeaseGrant(grant) => {
                self.lease_grant(grant).map(WriteResponse::LeaseGrant)
            }
            WriteRequest::LeaseRevoke(revoke) => {
                self.lease_revoke(revoke).map(WriteResponse::LeaseRevoke)
            }
            WriteRequest::LeaseCheckpoint(checkpoint) => Ok(WriteResponse::LeaseCheckpoint(
                self.lease_checkpoint(checkpoint),
            )),
        };
        if self.changes > 0 {
            self.state.revision += 1;
        }
        result
    }

    /// Stores metadata (applied log id, membership) in the same atomic batch.
    pub fn put_meta(&mut self, name: &str, value: &[u8]) {
        self.batch.put_meta(name, value);
    }

    /// Writes the batch to the state database as one atomic batch, then
    /// publishes its changes (still under the lock, so in revision order).
    pub fn commit(mut self) -> std::io::Result<()> {
        let revision = self.state.revision.to_be_bytes();
        self.batch.put_meta(META_REVISION, &revision);
        self.db.apply(std::mem::take(&mut self.batch))?;
        if let Some((at, keep)) = self.planned_compaction.take() {
            self.compacted_revision.store(at, Ordering::Release);
            self.compactor.schedule(at, keep);
        }
        // One message per revision, so that the feed's capacity bounds how
        // many revisions a slow subscriber may fall behind before it lags.
        let events = std::mem::take(&mut self.events);
        for changes in events.chunk_by(|a, b| event_revision(a) == event_revision(b)) {
            // Before the send: the broadcast's lock orders it before any
            // later subscription, which then reads this revision or a newer one.
            self.feed_revision
                .store(event_revision(&changes[0]), Ordering::Release);
            // No subscriber is not an error: nobody watches.
            let _ = self.feed.send(Arc::new(changes.to_vec()));
        }
        self.feed_revision
            .store(self.state.revision, Ordering::Release);
        for change in std::mem::take(&mut self.lease_changes) {
            let _ = self.lease_feed.send(change);
        }
        self.committed_revision
            .store(self.state.revision, Ordering::Release);
        Ok(())
    }

    fn begin(&mut self) {
        self.begin_revision = self.state.revision;
        self.changes = 0;
    }

    /// The revision reads inside the current request see: the new one once
    /// the request has changed something.
    fn view(&self) -> StateView<'_> {
        StateView {
            state: &self.state,
            db: self.db,
            pending: Some(&self.pending),
            revision: self.begin_revision + i64::from(self.changes > 0),
        }
    }

    fn current(&self, key: &[u8]) -> Option<KeyValue> {
        let result = range_keys(&self.view(), KeyRange::new(key, &[]), 0, 0, false)
            .expect("reading the current revision cannot fail");
        result.kvs.into_iter().next()
    }

    fn put_request(&mut self, put: &PutRequest) -> Result<PutResponse, EtcdError> {
        // A top-level Put checks its lease before the key, a Put inside a txn after.
        check_lease(&self.state.leases, put)?;
        check_put(&self.view(), put)?;
        Ok(self.put(put))
    }

    fn put(&mut self, put: &PutRequest) -> PutResponse {
        let needs_current = put.ignore_value || put.ignore_lease || put.prev_kv;
        let current = if needs_current {
            self.current(&put.key)
        } else {
            None
        };
        let (value, lease) = match &current {
            Some(kv) if put.ignore_value || put.ignore_lease => (
                if put.ignore_value {
                    kv.value.clone()
                } else {
                    put.value.clone()
                },
                if put.ignore_lease {
                    kv.lease
                } else {
                    put.lease
                },
            ),
            _ => (put.value.clone(), put.lease),
        };
        let rev = self.next_revision();
        let (create_revision, version) = match self.state.index.get(&put.key, rev.main) {
            Some(at) => (at.created.main, at.version + 1),
            None => (rev.main, 1),
        };
        let kv = KeyValue {
            key: put.key.clone(),
            create_revision,
            mod_revision: rev.main,
            version,
            value,
            lease,
        };
        self.state.index.put(&put.key, rev);
        self.state.leases.attach(lease, put.key.clone());
        self.write_row(Row {
            rev,
            tombstone: false,
            kv,
        });
        PutResponse {
            header: header(rev.main),
            prev_kv: if put.prev_kv { current } else { None },
        }
    }

    fn delete_range(&mut self, del: &DeleteRangeRequest) -> DeleteRangeResponse {
        let range = KeyRange::new(&del.key, &del.range_end);
        let prev_kvs = if del.prev_kv {
            range_keys(&self.view(), range, 0, 0, false)
                .expect("reading the current revision cannot fail")
                .kvs
        } else {
            Vec::new()
        };
        let keys: Vec<Bytes> = self
            .state
            .index
            .range(range, self.view().revision())
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        for key in &keys {
            let rev = self.next_revision();
            self.state.index.tombstone(key, rev);
            self.state.leases.detach(key);
            let kv = KeyValue {
                key: key.clone(),
                mod_revision: rev.main,
                ..Default::default()
            };
            self.write_row(Row {
                rev,
                tombstone: true,
                kv,
            });
        }
        DeleteRangeResponse {
            header: header(self.begin_revision + i64::from(self.changes > 0)),
            deleted: keys.len() as i64,
            prev_kvs,
        }
    }

    fn txn(&mut self, txn: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        let view = self.view();
        let path = compare_path(&view, txn);
        if !is_read_only(txn) {
            check_path(txn, &path, &mut 0, &mut |op| match &op.request {
                Some(Request::RequestPut(put)) => check_put(&view, put),
                _ => Ok(()),
            })?;
        }
        check_path(txn, &path, &mut 0, &mut |op| check_range(&view, op))?;
        let mut response = self.apply_txn(txn, &path, &mut 0);
        response.header = header(self.begin_revision + i64::from(self.changes > 0));
        Ok(response)
    }

    fn apply_txn(&mut self, txn: &TxnRequest, path: &[bool], pos: &mut usize) -> TxnResponse {
        let succeeded = path[*pos];
        *pos += 1;
        let mut responses = Vec::new();
        for op in branch(txn, succeeded) {
            let response = match &op.request {
                Some(Request::RequestRange(req)) => Response::ResponseRange(
                    range(&self.view(), req).expect("txn ranges are checked before apply"),
                ),
                Some(Request::RequestPut(req)) => Response::ResponsePut(self.put(req)),
                Some(Request::RequestDeleteRange(req)) => {
                    Response::ResponseDeleteRange(self.delete_range(req))
                }
                Some(Request::RequestTxn(req)) => {
                    Response::ResponseTxn(self.apply_txn(req, path, pos))
                }
                None => continue,
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        // etcd gives nested txn responses an empty header; the outer one is filled in by the caller.
        TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded,
            responses,
        }
    }

    fn compact(&mut self, req: &CompactionRequest) -> Result<CompactionResponse, EtcdError> {
        let at = req.revision;
        if at <= self.state.compact_revision {
            return Err(EtcdError::Compacted);
        }
        if at > self.state.revision {
            return Err(EtcdError::FutureRevision);
        }
        // The index forgets the unreachable revisions now; the compactor
        // deletes their rows after this batch is stored. Rows at `at` itself
        // stay, tombstones included: a watch that starts at the compacted
        // revision still sees its delete events.
        let keep = self.state.index.compact(at).into_iter().collect();
        self.planned_compaction = Some((at, keep));
        self.state.compact_revision = at;
        self.batch
            .put_meta(META_COMPACT_REVISION, &at.to_be_bytes());
        Ok(CompactionResponse {
            header: header(self.state.revision),
        })
    }

    fn lease_grant(&mut self, grant: &LeaseGrantRequest) -> Result<LeaseGrantResponse, EtcdError> {
        if grant.ttl > MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTtlTooLarge);
        }
        if grant.id == 0 {
            return Err(EtcdError::LeaseNotFound);
        }
        if self.state.leases.contains(grant.id) {
            return Err(EtcdError::LeaseExists);
        }
        self.state.leases.grant(grant.id, grant.ttl);
        self.batch.put_lease(&LeaseRow {
            id: grant.id,
            ttl: grant.ttl,
            remaining_ttl: 0,
        });
        self.lease_changes.push(LeaseChange::Granted {
            id: grant.id,
            ttl: grant.ttl,
        });
        Ok(LeaseGrantResponse {
            header: header(self.state.revision),
            id: grant.id,
            ttl: grant.ttl,
            error: String::new(),
        })
    }

    /// Deletes every key of the lease in one revision, in key order, and the lease.
    fn lease_revoke(
        &mut self,
        revoke: &LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse, EtcdError> {
        let keys = self
            .state
            .leases
            .revoke(revoke.id)
            .ok_or(EtcdError::LeaseNotFound)?;
        for key in keys {
            self.delete_range(&DeleteRangeRequest {
                key,
                ..Default::default()
            });
        }
        self.batch.remove_lease(revoke.id);
        self.lease_changes
            .push(LeaseChange::Revoked { id: revoke.id });
        Ok(LeaseRevokeResponse {
            header: header(self.begin_revision + i64::from(self.changes > 0)),
        })
    }

    /// Records the remaining TTLs the leader measured; leases gone since are skipped.
    fn lease_checkpoint(&mut self, request: &LeaseCheckpointRequest) -> LeaseCheckpointResponse {
        for checkpoint in &request.checkpoints {
            if let Some(lease) = self
                .state
                .leases
                .checkpoint(checkpoint.id, checkpoint.remaining_ttl)
            {
                let row = LeaseRow {
                    id: checkpoint.id,
                    ttl: lease.ttl,
                    remaining_ttl: lease.remaining_ttl,
                };
                self.batch.put_lease(&row);
            }
        }
        LeaseCheckpointResponse {
            header: header(self.state.revision),
        }
    }

    fn next_revision(&mut self) -> Revision {
        let rev = Revision::new(self.begin_revision + 1, self.changes);
        self.changes += 1;
        rev
    }

    fn write_row(&mut self, row: Row) {
        self.batch.put_row(&row);
        self.events.push(row_event(row.clone()));
        self.pending.insert(row.rev, row);
    }
}

fn event_revision(event: &Event) -> i64 {
    event.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

fn row_event(row: Row) -> Event {
    let kind = if row.tombstone {
        EventType::Delete
    } else {
        EventType::Put
    };
    Event {
        r#type: kind as i32,
        kv: Some(row.kv),
        prev_kv: None,
    }
}

/// etcd's checks of a Put against the state before it: ignore_value and
/// ignore_lease need an existing key, and a lease must exist.
fn check_put(view: &StateView<'_>, put: &PutRequest) -> Result<(), EtcdError> {
    if put.ignore_value || put.ignore_lease {
        let existing = range_keys(view, KeyRange::new(&put.key, &[]), 0, 0, true)?;
        if existing.count == 0 {
            return Err(EtcdError::KeyNotFound);
        }
    }
    check_lease(&view.state.leases, put)
}

fn check_lease(leases: &LeaseTable, put: &PutRequest) -> Result<(), EtcdError> {
    if put.lease != 0 && !leases.contains(put.lease) {
        return Err(EtcdError::LeaseNotFound);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
}
