//! Multi-version concurrency control over the state database, with etcd's
//! semantics: revisions, key generations, range/txn evaluation, compaction.
//! No Raft and no I/O policy here: the Raft state machine drives [`Store`].

mod compactor;
mod index;
mod key_index;
mod lease;
mod range;
mod store;
mod txn;

pub use index::KeyRange;
pub use lease::{Lease, LeaseChange, MAX_LEASE_TTL};
pub use store::{Applier, Changes, Store, StoreSnapshot, WriteRequest, WriteResponse};

pub use crate::storage::revision::Revision;
