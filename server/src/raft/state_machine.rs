//! openraft's state machine: applies committed commands to the MVCC store.
//!
//! Each `apply` call is one atomic sled batch that also records the applied
//! log id and membership, so a restart never applies an entry twice; what
//! sled lost in a crash is re-applied from the log.
//!
//! Snapshots are files in `member/snap/` (see `storage::snapshot`): built
//! by streaming the store's rows while applies go on, sent to peers in
//! chunks straight from the file, and installed from the received file.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
};
use serde::Deserialize;

use super::types::{
    Attributes, Command, CommandResponse, Entry, LogId, Member, StorageError, StoredMembership,
    TypeConfig, io_error,
};
use crate::mvcc::Store;
use crate::storage::snapshot::{SnapshotReader, SnapshotWriter};

const META_APPLIED: &str = "applied";
const META_MEMBERSHIP: &str = "membership";
const META_ATTRIBUTES: &str = "attributes";
/// The latest snapshot, built here or received from the leader.
const CURRENT_SNAPSHOT: &str = "current.snap";
/// A snapshot being received from the leader, chunk by chunk.
const RECEIVING_SNAPSHOT: &str = "receiving.snap";

type Meta = SnapshotMeta<u64, Member>;

/// The name and client URLs each member published.
pub fn attributes(store: &Store) -> std::io::Result<BTreeMap<u64, Attributes>> {
    Ok(read_meta(store, META_ATTRIBUTES)?.unwrap_or_default())
}

fn sm_error(verb: ErrorVerb) -> impl Fn(std::io::Error) -> StorageError {
    move |e| io_error(ErrorSubject::StateMachine, verb, e)
}

fn snapshot_error(verb: ErrorVerb) -> impl Fn(std::io::Error) -> StorageError {
    move |e| io_error(ErrorSubject::Snapshot(None), verb, e)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> std::io::Result<T> {
    postcard::from_bytes(bytes).map_err(std::io::Error::other)
}

/// The snapshot files of one member. Builds and installs take `busy`, so
/// that `current.snap` always holds the snapshot last made or installed.
struct SnapshotFiles {
    dir: PathBuf,
    busy: Mutex<()>,
}

impl SnapshotFiles {
    fn current(&self) -> PathBuf {
        self.dir.join(CURRENT_SNAPSHOT)
    }

    fn receiving(&self) -> PathBuf {
        self.dir.join(RECEIVING_SNAPSHOT)
    }

    /// Builds a snapshot of the store's last applied state into
    /// `current.snap`; returns its meta and the file, for sending.
    fn build(&self, store: &Store) -> std::io::Result<(Meta, std::fs::File)> {
        let _busy = self.busy.lock().expect("snapshot files lock poisoned");
        let snapshot = store.begin_snapshot()?;
        let last_log_id: Option<LogId> = snapshot
            .meta(META_APPLIED)
            .map(decode)
            .transpose()?
            .flatten();
        let last_membership: StoredMembership = snapshot
            .meta(META_MEMBERSHIP)
            .map(decode)
            .transpose()?
            .unwrap_or_default();
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}", id.leader_id.term, id.index),
            None => "0-0".to_string(),
        };
        let meta = Meta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        // The log may be purged up to this snapshot once it returns, so the
        // state it covers must be durable first.
        store.db().flush_durable()?;
        let path = self.current();
        let header = postcard::to_stdvec(&meta).map_err(std::io::Error::other)?;
        let mut writer = SnapshotWriter::create(&path, &header)?;
        snapshot.write_to(&mut writer)?;
        Ok((meta, writer.finish(&path)?))
    }

    /// The latest snapshot's meta and file, if there is one.
    fn current_snapshot(&self) -> std::io::Result<Option<(Meta, std::fs::File)>> {
        let path = self.current();
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = decode(SnapshotReader::from_file(file.try_clone()?, &path)?.meta())?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Some((meta, file)))
    }

    /// Checks the received snapshot, makes it the current one, and replaces
    /// the store's state with it.
    fn install(&self, store: &Store, meta: &Meta, data: std::fs::File) -> std::io::Result<()> {
        let _busy = self.busy.lock().expect("snapshot files lock poisoned");
        let current = self.make_current(store, meta, data)?;
        store.install(&mut SnapshotReader::open(&current)?)
    }

    /// Checks the received snapshot and makes it `current.snap`, with the
    /// store marked as installing first: from then on a crash makes
    /// [`StateMachine::open`] install it, so the member never starts with a
    /// snapshot newer than its state. `data` is normally `receiving.snap`,
    /// as [`RaftStateMachine::begin_receiving_snapshot`] opened it; any
    /// other file is copied there first.
    fn make_current(
        &self,
        store: &Store,
        meta: &Meta,
        mut data: std::fs::File,
    ) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let received = self.receiving();
        let is_received = std::fs::metadata(&received)
            .is_ok_and(|at_path| at_path.ino() == data.metadata().map(|m| m.ino()).unwrap_or(0));
        if !is_received {
            data.seek(SeekFrom::Start(0))?;
            let mut copy = std::fs::File::create(&received)?;
            std::io::copy(&mut data, &mut copy)?;
        }
        drop(data);
        // The chunks were written without syncs.
        std::fs::File::open(&received)?.sync_all()?;
        SnapshotReader::verify(&received)?;
        let described: Meta = decode(SnapshotReader::open(&received)?.meta())?;
        if described.last_log_id != meta.last_log_id {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the received snapshot is not the one announced",
            ));
        }
        store.mark_installing()?;
        let current = self.current();
        std::fs::rename(&received, &current)?;
        crate::storage::wal::sync_dir(&self.dir)?;
        Ok(current)
    }
}

pub struct StateMachine {
    store: Arc<Store>,
    files: Arc<SnapshotFiles>,
    applied: Option<LogId>,
    membership: StoredMembership,
}

fn read_meta<T: for<'de> Deserialize<'de>>(
    store: &Store,
    name: &str,
) -> std::io::Result<Option<T>> {
    store
        .db()
        .meta(name)?
        .map(|bytes| decode(&bytes))
        .transpose()
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl StateMachine {
    /// Opens the state machine over `store`; finishes a snapshot install
    /// that a crash cut short.
    pub fn open(store: Arc<Store>, snapshot_dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&snapshot_dir)?;
        let files = SnapshotFiles {
            dir: snapshot_dir,
            busy: Mutex::new(()),
        };
        remove_if_present(&files.current().with_extension("tmp"))?;
        if store.install_interrupted()? {
            // Marked before the received file became current: if it is
            // still there, the crash came before the rename.
            if SnapshotReader::verify(&files.receiving()).is_ok() {
                std::fs::rename(files.receiving(), files.current())?;
                crate::storage::wal::sync_dir(&files.dir)?;
            }
            tracing::warn!("a snapshot install was interrupted; installing it again");
            store.install(&mut SnapshotReader::open(&files.current())?)?;
        }
        remove_if_present(&files.receiving())?;
        let applied = read_meta::<Option<LogId>>(&store, META_APPLIED)?.flatten();
        let membership = read_meta(&store, META_MEMBERSHIP)?.unwrap_or_default();
        Ok(Self {
            store,
            files: Arc::new(files),
            applied,
            membership,
        })
    }

    /// The last entry known committed from this member's own durable state:
    /// only committed entries are applied or put in a snapshot. The log's
    /// committed hint is not synced, so after a power loss it can lag both.
    pub fn known_committed(&self) -> std::io::Result<Option<LogId>> {
        let snapshot = self
            .files
            .current_snapshot()?
            .and_then(|(meta, _)| meta.last_log_id);
        Ok(self.applied.max(snapshot))
    }
}

/// Most write requests applied under the store's write lock at once.
const APPLY_CHUNK_REQUESTS: usize = 1024;

fn request_count(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(Command::Writes(requests)) => requests.len(),
        _ => 1,
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
            let mut responses = Vec::with_capacity(entries.len());
            let mut entries = entries.into_iter().peekable();
            // A backlog is applied in chunks, each one sled batch under the
            // write lock: reads get in between, and each chunk records its
            // own applied log id.
            while entries.peek().is_some() {
                let mut applier = store.applier();
                let mut attributes_changed = false;
                let mut requests = 0;
                let mut chunk_last = None;
                while let Some(entry) = entries.next_if(|entry| {
                    chunk_last.is_none() || requests + request_count(entry) <= APPLY_CHUNK_REQUESTS
                }) {
                    requests += request_count(&entry);
                    chunk_last = Some(entry.log_id);
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
                let applied = postcard::to_stdvec(&chunk_last).map_err(std::io::Error::other)?;
                let members = postcard::to_stdvec(&membership).map_err(std::io::Error::other)?;
                applier.put_meta(META_APPLIED, &applied);
                applier.put_meta(META_MEMBERSHIP, &members);
                if attributes_changed {
                    let published = postcard::to_stdvec(&attributes_by_member)
                        .map_err(std::io::Error::other)?;
                    applier.put_meta(META_ATTRIBUTES, &published);
                }
                applier.commit()?;
            }
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
            files: self.files.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let file = tokio::fs::File::create(self.files.receiving())
            .await
            .map_err(snapshot_error(ErrorVerb::Write))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        snapshot
            .sync_all()
            .await
            .map_err(snapshot_error(ErrorVerb::Write))?;
        let data = snapshot.into_std().await;
        let store = self.store.clone();
        let files = self.files.clone();
        let announced = meta.clone();
        tokio::task::spawn_blocking(move || files.install(&store, &announced, data))
            .await
            .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Write, e))?
            .map_err(sm_error(ErrorVerb::Write))?;
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot from the leader");
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let files = self.files.clone();
        let current = tokio::task::spawn_blocking(move || files.current_snapshot())
            .await
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?
            .map_err(snapshot_error(ErrorVerb::Read))?;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}

/// Builds a snapshot off the apply path: applies wait only while the small
/// state is read.
pub struct SnapshotBuilder {
    store: Arc<Store>,
    files: Arc<SnapshotFiles>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let store = self.store.clone();
        let files = self.files.clone();
        let (meta, file) = tokio::task::spawn_blocking(move || files.build(&store))
            .await
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?
            .map_err(snapshot_error(ErrorVerb::Write))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

#[cfg(test)]
mod tests {
    use ballast_proto::etcdserverpb::{PutRequest, RangeRequest};
    use bytes::Bytes;

    use super::*;
    use crate::mvcc::WriteRequest;
    use crate::storage::db::StateDb;

    fn open_store(dir: &Path) -> Arc<Store> {
        Arc::new(Store::open(StateDb::open(dir).unwrap()).unwrap())
    }

    fn put_all(store: &Store, keys: &[&str]) {
        let mut applier = store.applier();
        for key in keys {
            let put = WriteRequest::Put(PutRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::from_static(b"value"),
                ..Default::default()
            });
            applier.execute(&put).unwrap();
        }
        applier.commit().unwrap();
    }

    fn keys(store: &Store) -> Vec<String> {
        let all = RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            ..Default::default()
        };
        let response = store.range(&all).unwrap();
        response
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    }

    /// A backlog of 20,000 single-put entries given to one `apply` call is
    /// applied in chunks: a reader running meanwhile gets in between them
    /// and sees revisions part-way, where one batch would have held the
    /// write lock for all of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_backlog_is_applied_in_chunks_that_reads_get_between() {
        const ENTRIES: u64 = 20_000;
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(&dir.path().join("db"));
        let mut state_machine = StateMachine::open(store.clone(), dir.path().join("snap")).unwrap();
        let entries: Vec<Entry> = (1..=ENTRIES)
            .map(|index| Entry {
                log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(Command::Writes(vec![WriteRequest::Put(
                    PutRequest {
                        key: Bytes::from(format!("k{index}")),
                        value: Bytes::from_static(b"v"),
                        ..Default::default()
                    },
                )])),
            })
            .collect();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (store, done) = (store.clone(), done.clone());
            std::thread::spawn(move || {
                let mut seen = std::collections::BTreeSet::new();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let one = RangeRequest {
                        key: Bytes::from_static(b"k1"),
                        ..Default::default()
                    };
                    seen.insert(store.range(&one).unwrap().header.unwrap().revision);
                }
                seen
            })
        };
        let responses = state_machine.apply(entries).await.unwrap();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = reader.join().unwrap();
        assert_eq!(responses.len() as u64, ENTRIES);
        assert_eq!(store.revision(), ENTRIES as i64 + 1);
        let part_way = seen
            .iter()
            .filter(|rev| **rev > 1 && **rev <= ENTRIES as i64)
            .count();
        assert!(part_way > 0, "reads saw only {seen:?}");
    }

    /// A crash after the received snapshot became `current.snap` but before
    /// the store started replacing its state: on open the snapshot is
    /// installed, not left beside an older state (whose log behind the
    /// snapshot the leader no longer has), and the member starts with the
    /// snapshot's state.
    #[test]
    fn a_crash_between_receiving_and_installing_installs_on_open() {
        let leader_dir = tempfile::tempdir().unwrap();
        let leader = open_store(&leader_dir.path().join("db"));
        put_all(&leader, &["a", "b", "c"]);
        let leader_files = SnapshotFiles {
            dir: leader_dir.path().join("snap"),
            busy: Mutex::new(()),
        };
        std::fs::create_dir_all(&leader_files.dir).unwrap();
        let (meta, _) = leader_files.build(&leader).unwrap();

        let member_dir = tempfile::tempdir().unwrap();
        let snap_dir = member_dir.path().join("snap");
        {
            let member = open_store(&member_dir.path().join("db"));
            put_all(&member, &["old-key"]);
            let files = SnapshotFiles {
                dir: snap_dir.clone(),
                busy: Mutex::new(()),
            };
            std::fs::create_dir_all(&snap_dir).unwrap();
            std::fs::copy(leader_files.current(), files.receiving()).unwrap();
            let received = std::fs::File::open(files.receiving()).unwrap();
            // The crash: the store is gone before it could take the write lock.
            files.make_current(&member, &meta, received).unwrap();
        }

        let member = open_store(&member_dir.path().join("db"));
        let state_machine = StateMachine::open(member.clone(), snap_dir).unwrap();
        assert_eq!(keys(&member), ["a", "b", "c"]);
        assert_eq!(state_machine.applied, meta.last_log_id);
    }

    /// A crash in the middle of an install (here: the file ends early, after
    /// the store was cleared) leaves a partial state; opening the state
    /// machine installs `current.snap` again before anything is served.
    #[test]
    fn install_cut_short_is_redone_on_open() {
        let leader_dir = tempfile::tempdir().unwrap();
        let leader = open_store(&leader_dir.path().join("db"));
        let leader_keys: Vec<String> = (0..5000).map(|i| format!("key-{i:05}")).collect();
        let key_refs: Vec<&str> = leader_keys.iter().map(String::as_str).collect();
        put_all(&leader, &key_refs);
        let leader_files = SnapshotFiles {
            dir: leader_dir.path().join("snap"),
            busy: Mutex::new(()),
        };
        std::fs::create_dir_all(&leader_files.dir).unwrap();
        leader_files.build(&leader).unwrap();

        let member_dir = tempfile::tempdir().unwrap();
        let snap_dir = member_dir.path().join("snap");
        std::fs::create_dir_all(&snap_dir).unwrap();
        let current = snap_dir.join(CURRENT_SNAPSHOT);
        std::fs::copy(leader_files.current(), &current).unwrap();
        let torn = member_dir.path().join("torn.snap");
        let whole = std::fs::read(&current).unwrap();
        std::fs::write(&torn, &whole[..whole.len() * 2 / 3]).unwrap();
        {
            let member = open_store(&member_dir.path().join("db"));
            put_all(&member, &["old-key"]);
            let cut_short = member.install(&mut SnapshotReader::open(&torn).unwrap());
            assert!(cut_short.is_err(), "a torn snapshot must not install");
            assert!(member.install_interrupted().unwrap());
        }

        let member = open_store(&member_dir.path().join("db"));
        StateMachine::open(member.clone(), snap_dir).unwrap();
        assert!(!member.install_interrupted().unwrap());
        assert_eq!(keys(&member), leader_keys);
        assert_eq!(member.revision(), leader.revision());
    }
}
