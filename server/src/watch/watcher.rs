//! One watcher: what it watches and how far it has been sent.

use ballast_proto::etcdserverpb::WatchCreateRequest;
use ballast_proto::etcdserverpb::watch_create_request::FilterType;
use ballast_proto::mvccpb::Event;
use ballast_proto::mvccpb::event::EventType;
use bytes::Bytes;

use crate::mvcc::KeyRange;

#[derive(Debug)]
pub struct Watcher {
    pub id: i64,
    key: Bytes,
    range_end: Bytes,
    skip_puts: bool,
    skip_deletes: bool,
    pub prev_kv: bool,
    pub progress_notify: bool,
    pub fragment: bool,
    /// The next revision this watcher must be sent.
    pub next_rev: i64,
    /// Whether it was sent events since the last periodic progress notification.
    pub had_events: bool,
    /// Cancelled because its next revision was compacted away. It gets nothing
    /// more, but keeps its id until the client cancels it, as in etcd.
    pub compacted: bool,
}

impl Watcher {
    /// A watcher for `req` (already normalised) starting at `start_rev`.
    pub fn new(id: i64, req: &WatchCreateRequest, start_rev: i64) -> Self {
        Self {
            id,
            key: req.key.clone(),
            range_end: req.range_end.clone(),
            skip_puts: req.filters.contains(&(FilterType::Noput as i32)),
            skip_deletes: req.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: req.prev_kv,
            progress_notify: req.progress_notify,
            fragment: req.fragment,
            next_rev: start_rev,
            had_events: false,
            compacted: false,
        }
    }

    /// Whether it still receives events.
    pub fn is_active(&self) -> bool {
        !self.compacted
    }

    pub fn range(&self) -> KeyRange<'_> {
        KeyRange::new(&self.key, &self.range_end)
    }

    /// Whether the watcher wants `event` (its key range and filters).
    pub fn wants(&self, event: &Event) -> bool {
        let Some(kv) = &event.kv else {
            return false;
        };
        let skipped = if event.r#type == EventType::Delete as i32 {
            self.skip_deletes
        } else {
            self.skip_puts
        };
        !skipped && self.range().contains(&kv.key)
    }
}
