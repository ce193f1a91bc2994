//! Raft snapshots of the store: built while applies go on, installed in
//! bounded batches behind a durable marker.

use super::*;

/// A snapshot in progress: the small state read at one applied batch, with
/// the rows at or below its revision pinned until it is written.
pub struct StoreSnapshot<'a> {
    db: &'a StateDb,
    small: Vec<Pair>,
    revision: i64,
    _pin: crate::mvcc::compactor::Pin<'a>,
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

impl Store {
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

    /// Marks, durably, that a snapshot is about to replace the state: until
    /// [`Store::install`] ends, [`Store::install_interrupted`] says so.
    pub fn mark_installing(&self) -> std::io::Result<()> {
        let mut marker = StateBatch::default();
        marker.put_own_meta(OWN_INSTALLING, b"");
        self.db.apply(marker)?;
        self.db.flush_durable()
    }

    /// Replaces the whole state with a snapshot's, in bounded batches, and
    /// makes it durable. Readers wait until it is done; a crash part-way is
    /// seen by [`Store::install_interrupted`].
    pub fn install(&self, snapshot: &mut SnapshotReader) -> std::io::Result<()> {
        let pin = self.compactor.pin();
        let mut state = self.state.write().expect("store lock poisoned");
        self.mark_installing()?;
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
}
