//! openraft's state machine: applies committed commands to the MVCC store.
//!
//! Each `apply` call is one atomic sled batch that also records the applied
//! log id and membership, so a restart never applies an entry twice; what
//! sled lost in a crash is re-applied from the log.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
};
use serde::{Deserialize, Serialize};

use super::types::{
    Attributes, Command, CommandResponse, Entry, LogId, Member, StorageError, StoredMembership,
    TypeConfig, io_error,
};
use crate::mvcc::Store;
use crate::storage::db::meta_in_export;
use crate::storage::wal::StateFile;

const META_APPLIED: &str = "applied";
const META_MEMBERSHIP: &str = "membership";
const META_ATTRIBUTES: &str = "attributes";

/// The name and client URLs each member published.
pub fn attributes(store: &Store) -> std::io::Result<BTreeMap<u64, Attributes>> {
    Ok(read_meta(store, META_ATTRIBUTES)?.unwrap_or_default())
}

fn sm_error(verb: ErrorVerb) -> impl Fn(std::io::Error) -> StorageError {
    move |e| io_error(ErrorSubject::StateMachine, verb, e)
}

/// A snapshot as stored in `member/snap/` and sent to peers.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, Member>,
    data: Vec<u8>,
}

pub struct StateMachine {
    store: Arc<Store>,
    snapshot_file: Arc<StateFile>,
    applied: Option<LogId>,
    membership: StoredMembership,
}

fn read_meta<T: for<'de> Deserialize<'de>>(
    store: &Store,
    name: &str,
) -> std::io::Result<Option<T>> {
    match store.db().meta(name)? {
        Some(bytes) => postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(std::io::Error::other),
        None => Ok(None),
    }
}

impl StateMachine {
    pub fn open(store: Arc<Store>, snapshot_dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&snapshot_dir)?;
        let applied = read_meta::<Option<LogId>>(&store, META_APPLIED)?.flatten();
        let membership = read_meta(&store, META_MEMBERSHIP)?.unwrap_or_default();
        Ok(Self {
            store,
            snapshot_file: Arc::new(StateFile::new(snapshot_dir.join("current.snap"))),
            applied,
            membership,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        let store = self.store.clone();
        let mut membership = self.membership.clone();
        let (responses, membership) = tokio::task::spawn_blocking(move || {
            let mut attributes_by_member = attributes(&store)?;
            let mut attributes_changed = false;
            let mut applier = store.applier();
            let mut responses = Vec::with_capacity(entries.len());
            for entry in entries {
                let response = match entry.payload {
                    EntryPayload::Blank => CommandResponse::default(),
                    EntryPayload::Normal(Command::Writes(requests)) => CommandResponse {
                        results: requests.iter().map(|req| applier.execute(req)).collect(),
                    },
                    EntryPayload::Normal(Command::PublishAttributes {
                        member_id,
                        attributes,
                    }) => {
                        attributes_by_member.insert(member_id, attributes);
                        attributes_changed = true;
                        CommandResponse::default()
                    }
                    EntryPayload::Membership(config) => {
                        membership = StoredMembership::new(Some(entry.log_id), config);
                        CommandResponse::default()
                    }
                };
                responses.push(response);
            }
            let applied = postcard::to_stdvec(&Some(last)).map_err(std::io::Error::other)?;
            let members = postcard::to_stdvec(&membership).map_err(std::io::Error::other)?;
            applier.put_meta(META_APPLIED, &applied);
            applier.put_meta(META_MEMBERSHIP, &members);
            if attributes_changed {
                let published =
                    postcard::to_stdvec(&attributes_by_member).map_err(std::io::Error::other)?;
                applier.put_meta(META_ATTRIBUTES, &published);
            }
            applier.commit()?;
            Ok::<_, std::io::Error>((responses, membership))
        })
        .await
        .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Write, e))?
        .map_err(sm_error(ErrorVerb::Write))?;
        self.applied = Some(last);
        self.membership = membership;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            snapshot_file: self.snapshot_file.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = postcard::from_bytes(&data)
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        let store = self.store.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let snapshot_file = self.snapshot_file.clone();
        tokio::task::spawn_blocking(move || {
            store.replace(pairs)?;
            store.db().flush_durable()?;
            snapshot_file.store(&postcard::to_stdvec(&stored).map_err(std::io::Error::other)?)
        })
        .await
        .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Write, e))?
        .map_err(sm_error(ErrorVerb::Write))?;
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot from the leader");
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(bytes) = self
            .snapshot_file
            .load()
            .map_err(sm_error(ErrorVerb::Read))?
        else {
            return Ok(None);
        };
        let stored: StoredSnapshot = postcard::from_bytes(&bytes)
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

fn decode_meta<T: for<'de> Deserialize<'de>>(
    pairs: &[(Vec<u8>, Vec<u8>)],
    name: &str,
) -> std::io::Result<Option<T>> {
    meta_in_export(pairs, name)
        .map(|bytes| postcard::from_bytes(bytes).map_err(std::io::Error::other))
        .transpose()
}

/// Builds a full snapshot of the store off the apply path.
pub struct SnapshotBuilder {
    store: Arc<Store>,
    snapshot_file: Arc<StateFile>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let store = self.store.clone();
        let snapshot_file = self.snapshot_file.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let pairs = store.export()?;
            let data = postcard::to_stdvec(&pairs).map_err(std::io::Error::other)?;
            let last_log_id: Option<LogId> = decode_meta(&pairs, META_APPLIED)?.flatten();
            let last_membership: StoredMembership =
                decode_meta(&pairs, META_MEMBERSHIP)?.unwrap_or_default();
            let snapshot_id = match last_log_id {
                Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, data.len()),
                None => format!("0-0-{}", data.len()),
            };
            let stored = StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id,
                    last_membership,
                    snapshot_id,
                },
                data,
            };
            // The log may be purged up to this snapshot once it returns, so
            // the state it covers must be durable first.
            store.db().flush_durable()?;
            snapshot_file.store(&postcard::to_stdvec(&stored).map_err(std::io::Error::other)?)?;
            Ok::<_, std::io::Error>(stored)
        })
        .await
        .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?
        .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}
