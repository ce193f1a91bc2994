//! openraft's log storage on our write-ahead log.
//!
//! Entries are postcard-encoded in WAL records. The vote and the last purged
//! log id live in a small state file replaced atomically. The handle is
//! cheap to clone; clones share the log (openraft reads through clones).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader, Vote};
use serde::{Deserialize, Serialize};

use super::types::{Entry, LogId, StorageError, TypeConfig, io_error};
use crate::storage::wal::{HintFile, StateFile, Syncer, Wal};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct LogMeta {
    vote: Option<Vote<u64>>,
    last_purged: Option<LogId>,
}

struct Inner {
    wal: Wal,
    state_file: StateFile,
    committed_file: HintFile,
    meta: LogMeta,
    last_log_id: Option<LogId>,
    /// Committed for certain, whatever the hint file says.
    committed_floor: Option<LogId>,
}

#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
    syncer: Syncer,
    /// The last committed index openraft reported (Status.raftIndex).
    committed_index: Arc<AtomicU64>,
}

fn decode(bytes: &[u8]) -> std::io::Result<Entry> {
    postcard::from_bytes(bytes).map_err(std::io::Error::other)
}

fn log_read_error(e: std::io::Error) -> StorageError {
    io_error(ErrorSubject::Logs, ErrorVerb::Read, e)
}

impl LogStore {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let state_file = StateFile::new(dir.join("raft.state"));
        let committed_file = HintFile::open(&dir.join("committed.hint"))?;
        let meta: LogMeta = match state_file.load()? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(std::io::Error::other)?,
            None => LogMeta::default(),
        };
        let keep_from = meta.last_purged.map_or(0, |purged| purged.index + 1);
        let mut wal = Wal::open(dir, keep_from)?;
        if let Some(purged) = meta.last_purged {
            wal.purge(purged.index)?;
        }
        let last_log_id = match wal.is_empty() {
            true => meta.last_purged,
            false => {
                let bytes = wal.read(wal.next_index() - 1)?.expect("last record exists");
                let entry: Entry = postcard::from_bytes(&bytes).map_err(std::io::Error::other)?;
                Some(entry.log_id)
            }
        };
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                wal,
                state_file,
                committed_file,
                committed_floor: meta.last_purged,
                meta,
                last_log_id,
            })),
            syncer: Syncer::start()?,
            committed_index: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Raises what [`RaftLogStorage::read_committed`] answers to at least
    /// `known` (the state machine's applied or snapshot log id): the hint
    /// file is not synced, and openraft refuses to start with a snapshot
    /// past its committed log id.
    pub fn raise_committed(&self, known: Option<LogId>) {
        let mut inner = self.lock();
        inner.committed_floor = inner.committed_floor.max(known);
    }

    /// The committed index as openraft reports it, for status readers.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed_index.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("log store lock poisoned")
    }

    /// Runs `work` on the log under its lock right here when the lock is
    /// free, for work that only reads or writes the page cache (no sync);
    /// otherwise on a blocking thread, so the runtime never waits for a
    /// sync or a rename running elsewhere. A thread hop on every append
    /// and read cost a quarter of single-client put throughput.
    async fn unsynced<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Inner) -> T + Send + 'static,
    ) -> T {
        let work = match self.inner.try_lock() {
            Ok(mut inner) => return work(&mut inner),
            Err(_) => work,
        };
        self.blocking(work).await
    }

    /// Runs `work` on the log under its lock, on a blocking thread: syncs,
    /// renames and whatever waits for them stay off the runtime's workers
    /// (openraft calls the log store from its core task).
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Inner) -> T + Send + 'static,
    ) -> T {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            work(&mut inner.lock().expect("log store lock poisoned"))
        })
        .await
        .expect("log store task panicked")
    }
}

impl Inner {
    fn store_meta(&self) -> std::io::Result<()> {
        let bytes = postcard::to_stdvec(&self.meta).map_err(std::io::Error::other)?;
        self.state_file.store(&bytes)
    }
}

/// Most entry bytes in one AppendEntries (at least one entry is sent):
/// openraft 0.9 gives each one a heartbeat interval to be sent, appended and
/// synced by the follower, and gives up on it after that. Without a budget a
/// follower behind by many large entries was sent all of them at once, again
/// and again, and never caught up.
const REPLICATION_BATCH_BYTES: usize = 1024 * 1024;

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let range = (range.start_bound().cloned(), range.end_bound().cloned());
        self.unsynced(move |inner| inner.read_entries(range, usize::MAX))
            .await
            .map_err(log_read_error)
    }

    /// What replication sends: the entries from `start` that fit the byte budget.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.unsynced(move |inner| inner.read_entries(start..end, REPLICATION_BATCH_BYTES))
            .await
            .map_err(log_read_error)
    }
}

impl Inner {
    /// Writes `entries` at the end of the log; returns the file to sync.
    fn append_entries(
        &mut self,
        entries: &[Entry],
    ) -> Result<Option<Arc<std::fs::File>>, Box<StorageError>> {
        let mut file = None;
        for entry in entries {
            let bytes = postcard::to_stdvec(entry)
                .map_err(|e| Box::new(io_error(ErrorSubject::Logs, ErrorVerb::Write, e)))?;
            let written = self.wal.append(entry.log_id.index, &bytes).map_err(|e| {
                Box::new(io_error(
                    ErrorSubject::Log(entry.log_id),
                    ErrorVerb::Write,
                    e,
                ))
            })?;
            self.last_log_id = Some(entry.log_id);
            file = Some(written);
        }
        Ok(file)
    }

    /// The stored entries in `range`, stopping before the one that would
    /// take their encoded size past `max_bytes` (the first is always read).
    fn read_entries(
        &self,
        range: impl RangeBounds<u64>,
        max_bytes: usize,
    ) -> std::io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        }
        .max(self.wal.first_index());
        let end = match range.end_bound() {
            Bound::Included(i) => i + 1,
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        }
        .min(self.wal.next_index());
        let mut entries = Vec::new();
        let mut total = 0usize;
        for index in start..end {
            let Some(bytes) = self.wal.read(index)? else {
                break;
            };
            total = total.saturating_add(bytes.len());
            if total > max_bytes && !entries.is_empty() {
                break;
            }
            entries.push(decode(&bytes)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.lock();
        Ok(LogState {
            last_purged_log_id: inner.meta.last_purged,
            last_log_id: inner.last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let vote = *vote;
        self.blocking(move |inner| {
            inner.meta.vote = Some(vote);
            inner.store_meta()
        })
        .await
        .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        Ok(self.lock().meta.vote)
    }

    /// Remembered so that a restart re-applies what sled had not flushed
    /// before serving; a stale value only shortens that re-apply.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(id) = committed {
            self.committed_index.fetch_max(id.index, Ordering::Relaxed);
        }
        let bytes = postcard::to_stdvec(&committed)
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.unsynced(move |inner| inner.committed_file.store(&bytes))
            .await
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let inner = self.lock();
        let bytes = inner
            .committed_file
            .load()
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Read, e))?;
        let hinted: Option<LogId> = match bytes {
            Some(bytes) => postcard::from_bytes(&bytes)
                .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Read, e))?,
            None => None,
        };
        Ok(hinted.max(inner.committed_floor))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // A new segment syncs the previous one and the directory: that
        // append goes to a blocking thread, the others are page-cache writes.
        let inline = match self.inner.try_lock() {
            Ok(mut inner) if !inner.wal.starts_segment() => Some(inner.append_entries(&entries)),
            _ => None,
        };
        let file = match inline {
            Some(appended) => appended,
            None => {
                self.blocking(move |inner| inner.append_entries(&entries))
                    .await
            }
        }
        .map_err(|e| *e)?;
        match file {
            Some(file) => self.syncer.sync(
                file,
                Box::new(move |result| callback.log_io_completed(result)),
            ),
            None => callback.log_io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |inner| {
            inner
                .wal
                .truncate(log_id.index)
                .map_err(|e| Box::new(io_error(ErrorSubject::Logs, ErrorVerb::Delete, e)))?;
            inner.last_log_id = match inner.wal.is_empty() {
                true => inner.meta.last_purged,
                false => {
                    let last = inner.wal.next_index() - 1;
                    let bytes = inner
                        .wal
                        .read(last)
                        .map_err(|e| Box::new(io_error(ErrorSubject::Logs, ErrorVerb::Read, e)))?
                        .expect("last record exists");
                    Some(
                        decode(&bytes)
                            .map_err(|e| Box::new(log_read_error(e)))?
                            .log_id,
                    )
                }
            };
            Ok::<_, Box<StorageError>>(())
        })
        .await
        .map_err(|e| *e)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |inner| {
            // Durable first: after a crash, records at or below it are skipped.
            inner.meta.last_purged = Some(log_id);
            inner
                .store_meta()
                .map_err(|e| Box::new(io_error(ErrorSubject::Store, ErrorVerb::Write, e)))?;
            if inner
                .last_log_id
                .is_none_or(|last| last.index < log_id.index)
            {
                inner.last_log_id = Some(log_id);
            }
            inner
                .wal
                .purge(log_id.index)
                .map_err(|e| Box::new(io_error(ErrorSubject::Logs, ErrorVerb::Delete, e)))
        })
        .await
        .map_err(|e| *e)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// While the log is busy (here: its lock held by another thread, as
    /// during a long sync or read), a log store call must wait off the
    /// runtime's thread: on a single-threaded runtime another task still
    /// runs. Before, the call took the lock on the runtime thread and
    /// stalled everything until the log was free.
    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_log_does_not_block_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let (held_tx, held) = mpsc::channel();
        let (other_ran_tx, other_ran) = mpsc::channel::<()>();
        let busy = {
            let store = store.clone();
            std::thread::spawn(move || {
                let _inner = store.lock();
                held_tx.send(()).unwrap();
                // A hang guard: with the lock taken on the runtime thread,
                // nothing else runs until it is released.
                other_ran.recv_timeout(Duration::from_secs(10)).is_ok()
            })
        };
        held.recv().unwrap();
        let mut voter = store.clone();
        let vote = tokio::spawn(async move { voter.save_vote(&Vote::new(1, 1)).await });
        let other = tokio::spawn(async { "ran" });
        assert_eq!(other.await.unwrap(), "ran");
        let _ = other_ran_tx.send(());
        vote.await.unwrap().unwrap();
        assert!(
            busy.join().unwrap(),
            "another task ran only after the log was free"
        );
        let mut reopened = LogStore::open(dir.path()).unwrap();
        assert_eq!(reopened.read_vote().await.unwrap(), Some(Vote::new(1, 1)));
    }
}
