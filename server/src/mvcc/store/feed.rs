//! The change feed: every committed revision's events, in order, for watch
//! streams and recipes; history older than the feed is read from storage.

use super::*;

impl Store {
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
}
