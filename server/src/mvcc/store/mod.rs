//! The MVCC store: the in-memory key index over the revision-ordered rows of
//! the state database.
//!
//! Readers share a `RwLock` with the single applier: a read sees either all or
//! none of an applied batch. The applier holds the write lock for one Raft
//! batch and writes it to sled as one atomic batch on commit.
//!
//! One concern a file, as etcd's mvcc: this file holds the store and its
//! reads (kvstore), `applier.rs` the writes (kvstore_txn), `feed.rs` the
//! change feed watchers follow (watchable_store), `snapshot.rs` building and
//! installing Raft snapshots.

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

mod applier;
mod feed;
mod snapshot;

pub use applier::Applier;
pub use snapshot::StoreSnapshot;

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
        range(&self.committed_view(&state), req)
    }

    /// Serves a txn that writes nothing, at the current revision.
    pub fn read_only_txn(&self, req: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        let state = self.read();
        read_only_txn(&self.committed_view(&state), req)
    }

    /// A read of the committed state held by `state`.
    fn committed_view<'a>(&'a self, state: &'a State) -> StateView<'a> {
        StateView {
            state,
            db: &self.db,
            pending: None,
            revision: state.revision,
        }
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

    /// [`Store::lease_ttls`] if the store can be read without waiting; `None`
    /// while it is busy (an apply, or a snapshot install for minutes).
    pub fn try_lease_ttls(&self, id: i64) -> Option<Option<(i64, i64)>> {
        let state = self.state.try_read().ok()?;
        Some(
            state
                .leases
                .get(id)
                .map(|lease| (lease.ttl, lease.remaining_ttl)),
        )
    }

    /// Every lease: id, granted TTL and checkpointed remaining TTL.
    pub fn leases(&self) -> Vec<(i64, i64, i64)> {
        self.read()
            .leases
            .iter()
            .map(|(id, lease)| (id, lease.ttl, lease.remaining_ttl))
            .collect()
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

#[cfg(test)]
mod tests;
