//! The task behind one watch stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ballast_proto::etcdserverpb::watch_request::RequestUnion;
use ballast_proto::etcdserverpb::{
    ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse,
};
use ballast_proto::mvccpb::Event;
use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, MissedTickBehavior};
use tonic::Status;

use super::watcher::Watcher;
use super::{WatchConfig, WatchCounters};
use crate::errors::{EtcdError, WATCH_DUPLICATE_ID, WATCH_EMPTY_RANGE};
use crate::mvcc::{Changes, KeyRange, Store};

/// Revisions read from storage per catch-up step, bounding memory.
const CATCH_UP_REVISIONS: i64 = 1000;
/// Requests read ahead of the stream task.
const REQUEST_BUFFER: usize = 64;

/// The client went away; the stream ends.
struct Gone;

type Out = mpsc::Sender<Result<WatchResponse, Status>>;

pub fn spawn<S>(
    store: Arc<Store>,
    config: WatchConfig,
    counters: Arc<WatchCounters>,
    mut requests: S,
    out: Out,
) where
    S: Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
{
    let (request_tx, request_rx) = mpsc::channel(REQUEST_BUFFER);
    // Reads requests until the client stops sending; the responses go on
    // (a half-closed stream keeps its watchers, as in etcd).
    tokio::spawn(async move {
        while let Some(Ok(request)) = requests.next().await {
            if request_tx.send(request).await.is_err() {
                return;
            }
        }
    });
    let (feed, seen_rev) = store.subscribe_at();
    let stream = WatchStream {
        store,
        config,
        counters,
        feed,
        out,
        watchers: BTreeMap::new(),
        next_id: 0,
        seen_rev,
        progress_requested: false,
    };
    tokio::spawn(stream.run(request_rx));
}

struct WatchStream {
    store: Arc<Store>,
    config: WatchConfig,
    counters: Arc<WatchCounters>,
    feed: broadcast::Receiver<Changes>,
    out: Out,
    watchers: BTreeMap<i64, Watcher>,
    /// The next server-assigned watch id; ids start at 0 per stream, as in etcd.
    next_id: i64,
    /// Every change up to this revision has been taken from the feed or storage.
    seen_rev: i64,
    /// A WatchProgressRequest waits for an answer.
    progress_requested: bool,
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

impl WatchStream {
    async fn run(mut self, mut requests: mpsc::Receiver<WatchRequest>) {
        self.counters.streams.fetch_add(1, Ordering::Relaxed);
        let _ = self.serve(&mut requests).await;
        self.counters.streams.fetch_sub(1, Ordering::Relaxed);
        self.counters
            .watchers
            .fetch_sub(self.watchers.len() as i64, Ordering::Relaxed);
    }

    async fn serve(&mut self, requests: &mut mpsc::Receiver<WatchRequest>) -> Result<(), Gone> {
        let period = self.config.progress_notify_interval;
        let mut progress_ticker = tokio::time::interval_at(Instant::now() + period, period);
        progress_ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut requests_open = true;
        loop {
            self.catch_up().await?;
            if self.progress_requested {
                self.answer_progress_request().await?;
            }
            tokio::select! {
                request = requests.recv(), if requests_open => match request {
                    Some(request) => self.handle(request).await?,
                    None => requests_open = false,
                },
                changes = self.feed.recv() => match changes {
                    Ok(changes) => self.deliver(&changes).await?,
                    Err(RecvError::Lagged(_)) => self.resubscribe(),
                    Err(RecvError::Closed) => return Ok(()),
                },
                _ = progress_ticker.tick() => self.notify_progress().await?,
                _ = self.out.closed() => return Err(Gone),
            }
        }
    }

    /// After falling behind the feed: a new subscription, and everything up
    /// to where it starts is caught up from storage. In the middle of a
    /// commit of many revisions the store's revision is still the previous
    /// commit's, behind revisions the feed has already dropped: taking it
    /// as the position would skip them.
    fn resubscribe(&mut self) {
        let (feed, from) = self.store.subscribe_at();
        self.feed = feed;
        self.seen_rev = self.seen_rev.max(from);
    }

    async fn send(&self, response: WatchResponse) -> Result<(), Gone> {
        self.out.send(Ok(response)).await.map_err(|_| Gone)
    }

    async fn handle(&mut self, request: WatchRequest) -> Result<(), Gone> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.remove(cancel.watch_id).is_some() {
                    self.send(WatchResponse {
                        header: header(self.store.revision()),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_requested = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, mut create: WatchCreateRequest) -> Result<(), Gone> {
        // etcd's normalisation: an empty key means "from the first key".
        if create.key.is_empty() {
            create.key = vec![0u8].into();
        }
        let revision = self.store.revision();
        let refuse = |reason: &str| WatchResponse {
            header: header(revision),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        };
        if KeyRange::new(&create.key, &create.range_end).is_empty_interval() {
            return self.send(refuse(WATCH_EMPTY_RANGE)).await;
        }
        let id = if create.watch_id != 0 {
            if self.watchers.contains_key(&create.watch_id) {
                return self.send(refuse(WATCH_DUPLICATE_ID)).await;
            }
            create.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let start = if create.start_revision == 0 {
            revision + 1
        } else {
            create.start_revision
        };
        self.send(WatchResponse {
            header: header(revision),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await?;
        self.watchers.insert(id, Watcher::new(id, &create, start));
        self.counters.watchers.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn remove(&mut self, id: i64) -> Option<Watcher> {
        let removed = self.watchers.remove(&id);
        if removed.is_some() {
            self.counters.watchers.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Sends the changes of one feed batch to every synced watcher, one
    /// response per revision, as etcd notifies once per write.
    async fn deliver(&mut self, changes: &Changes) -> Result<(), Gone> {
        if changes.is_empty() {
            // A snapshot replaced the store: every watcher catches up from
            // storage, as after a lag.
            self.seen_rev = self.store.revision();
            return Ok(());
        }
        let Some(last) = changes
            .last()
            .and_then(|e| e.kv.as_ref())
            .map(|kv| kv.mod_revision)
        else {
            return Ok(());
        };
        if last <= self.seen_rev {
            return Ok(());
        }
        let synced_from = self.seen_rev;
        for events in changes.chunk_by(|a, b| revision(a) == revision(b)) {
            let rev = revision(&events[0]);
            if rev <= synced_from {
                continue;
            }
            let ids: Vec<i64> = self
                .watchers
                .values()
                .filter(|w| w.is_active() && w.next_rev > synced_from && w.next_rev <= rev)
                .map(|w| w.id)
                .collect();
            for id in ids {
                self.send_events(id, events, rev).await?;
                if let Some(watcher) = self.watchers.get_mut(&id) {
                    watcher.next_rev = rev + 1;
                }
            }
        }
        self.seen_rev = last;
        Ok(())
    }

    /// Brings every watcher that is behind `seen_rev` up to it from storage,
    /// cancelling those whose next revision has been compacted away.
    async fn catch_up(&mut self) -> Result<(), Gone> {
        loop {
            let Some(from) = self
                .watchers
                .values()
                .filter(|w| w.is_active() && w.next_rev <= self.seen_rev)
                .map(|w| w.next_rev)
                .min()
            else {
                return Ok(());
            };
            let behind = self
                .watchers
                .values()
                .filter(|w| w.is_active() && w.next_rev <= self.seen_rev)
                .count() as i64;
            self.counters
                .catching_up
                .fetch_add(behind, Ordering::Relaxed);
            let result = self.catch_up_step(from).await;
            self.counters
                .catching_up
                .fetch_sub(behind, Ordering::Relaxed);
            result?;
        }
    }

    async fn catch_up_step(&mut self, from: i64) -> Result<(), Gone> {
        let to = self.seen_rev.min(from + CATCH_UP_REVISIONS - 1);
        let store = self.store.clone();
        let history = tokio::task::spawn_blocking(move || store.changes(from, to))
            .await
            .expect("reading history panicked");
        let events = match history {
            Ok(events) => events,
            Err(EtcdError::Compacted) => return self.cancel_compacted().await,
            Err(e) => unreachable!("reading history failed: {e}"),
        };
        let ids: Vec<i64> = self
            .watchers
            .values()
            .filter(|w| w.is_active() && w.next_rev <= to)
            .map(|w| w.id)
            .collect();
        for id in ids {
            let next_rev = self.watchers[&id].next_rev;
            let pending: Vec<Event> = events
                .iter()
                .filter(|e| revision(e) >= next_rev)
                .cloned()
                .collect();
            self.send_events(id, &pending, self.seen_rev).await?;
            if let Some(watcher) = self.watchers.get_mut(&id) {
                watcher.next_rev = to + 1;
            }
        }
        Ok(())
    }

    /// A watcher whose next revision was compacted is told so and gets
    /// nothing more, as etcd does (`compact_revision` set, canceled, and a
    /// header without a revision); its id stays taken until the client
    /// cancels it.
    async fn cancel_compacted(&mut self) -> Result<(), Gone> {
        let compacted = self.store.compact_revision();
        let ids: Vec<i64> = self
            .watchers
            .values()
            .filter(|w| w.is_active() && w.next_rev < compacted)
            .map(|w| w.id)
            .collect();
        for id in ids {
            if let Some(watcher) = self.watchers.get_mut(&id) {
                watcher.compacted = true;
            }
            self.send(WatchResponse {
                header: header(0),
                watch_id: id,
                canceled: true,
                compact_revision: compacted,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    /// Sends the events of `events` that watcher `id` wants, if any.
    async fn send_events(&mut self, id: i64, events: &[Event], revision: i64) -> Result<(), Gone> {
        let Some(watcher) = self.watchers.get(&id) else {
            return Ok(());
        };
        let mut wanted: Vec<Event> = events
            .iter()
            .filter(|e| watcher.wants(e))
            .cloned()
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        if watcher.prev_kv {
            let store = self.store.clone();
            wanted = tokio::task::spawn_blocking(move || {
                for event in &mut wanted {
                    let kv = event.kv.as_ref().expect("events carry a kv");
                    event.prev_kv = store.previous(&kv.key, kv.mod_revision);
                }
                wanted
            })
            .await
            .expect("reading previous values panicked");
        }
        let response = WatchResponse {
            header: header(revision),
            watch_id: id,
            events: wanted,
            ..Default::default()
        };
        let fragment = watcher.fragment;
        if let Some(watcher) = self.watchers.get_mut(&id) {
            watcher.had_events = true;
        }
        for part in fragments(response, fragment, self.config.max_response_bytes) {
            self.send(part).await?;
        }
        Ok(())
    }

    /// Answers a WatchProgressRequest once every watcher on the stream is
    /// synced: the answer promises no later event at or below its revision.
    /// A watcher waiting for a future start revision is synced, as in etcd
    /// 3.5.13 (`watchable_store.go` puts it in the synced group).
    async fn answer_progress_request(&mut self) -> Result<(), Gone> {
        let current = self.store.revision();
        self.drain_feed().await?;
        if self.seen_rev < current || self.watchers.values().any(|w| !self.is_synced(w)) {
            return Ok(());
        }
        self.progress_requested = false;
        self.send(WatchResponse {
            header: header(self.seen_rev),
            watch_id: -1,
            ..Default::default()
        })
        .await
    }

    /// Whether `watcher` has been sent every event up to the stream's
    /// position (a cancelled one has nothing more to be sent).
    fn is_synced(&self, watcher: &Watcher) -> bool {
        !watcher.is_active() || watcher.next_rev > self.seen_rev
    }

    /// Takes every batch already in the feed, so that `seen_rev` is current.
    async fn drain_feed(&mut self) -> Result<(), Gone> {
        loop {
            match self.feed.try_recv() {
                Ok(changes) => self.deliver(&changes).await?,
                Err(TryRecvError::Lagged(_)) => {
                    self.resubscribe();
                    self.catch_up().await?;
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => return Ok(()),
            }
        }
    }

    /// The periodic progress notification: synced watchers with
    /// progress_notify that had no events since the last one hear the revision.
    async fn notify_progress(&mut self) -> Result<(), Gone> {
        self.drain_feed().await?;
        let due: Vec<i64> = self
            .watchers
            .values()
            .filter(|w| w.is_active() && w.progress_notify && !w.had_events && self.is_synced(w))
            .map(|w| w.id)
            .collect();
        for watcher in self.watchers.values_mut() {
            watcher.had_events = false;
        }
        for id in due {
            self.send(WatchResponse {
                header: header(self.seen_rev),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }
}

fn revision(event: &Event) -> i64 {
    event.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

/// Splits a response over `max_bytes` into fragments when the watcher asked
/// for them, as etcd's `sendFragments`: every part but the last is marked.
fn fragments(response: WatchResponse, fragment: bool, max_bytes: usize) -> Vec<WatchResponse> {
    if !fragment || response.encoded_len() < max_bytes || response.events.len() < 2 {
        return vec![response];
    }
    let mut parts = Vec::new();
    let mut events = response.events.into_iter().peekable();
    let empty = WatchResponse {
        events: Vec::new(),
        fragment: true,
        ..response
    };
    while events.peek().is_some() {
        let mut part = empty.clone();
        while let Some(event) = events.peek() {
            part.events.push(event.clone());
            if part.events.len() > 1 && part.encoded_len() >= max_bytes {
                part.events.pop();
                break;
            }
            events.next();
        }
        part.fragment = events.peek().is_some();
        parts.push(part);
    }
    parts
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ballast_proto::etcdserverpb::PutRequest;
    use ballast_proto::mvccpb::KeyValue;

    use super::*;
    use crate::mvcc::WriteRequest;
    use crate::storage::db::StateDb;
    use crate::watch::WatchHub;

    /// A member that applies a backlog commits far more revisions at once
    /// than the feed holds, and the stream falls behind the feed while the
    /// commit is still publishing them. Its synced watcher must still get
    /// every revision exactly once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_larger_than_the_feed_reaches_a_synced_watcher_whole() {
        const REVISIONS: i64 = 20_000;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(StateDb::open(dir.path()).unwrap()).unwrap());
        let hub = WatchHub::new(
            store.clone(),
            WatchConfig {
                progress_notify_interval: Duration::from_secs(3600),
                max_response_bytes: 1 << 20,
            },
        );
        let (requests, request_rx) = mpsc::unbounded_channel();
        let (out, mut responses) = mpsc::channel(16);
        hub.serve(
            tokio_stream::wrappers::UnboundedReceiverStream::new(request_rx),
            out,
        );
        requests
            .send(Ok(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: vec![0].into(),
                    range_end: vec![0].into(),
                    ..Default::default()
                })),
            }))
            .unwrap();
        let created = responses.recv().await.unwrap().unwrap();
        assert!(created.created);

        let writer = store.clone();
        tokio::task::spawn_blocking(move || {
            let mut applier = writer.applier();
            for i in 0..REVISIONS {
                let put = WriteRequest::Put(PutRequest {
                    key: format!("k{i}").into_bytes().into(),
                    value: b"v".to_vec().into(),
                    ..Default::default()
                });
                applier.execute(&put).unwrap();
            }
            applier.commit().unwrap();
        });

        let mut revisions = Vec::new();
        while revisions.last() != Some(&(REVISIONS + 1)) {
            let response = tokio::time::timeout(Duration::from_secs(30), responses.recv())
                .await
                .expect("no watch response within 30 s")
                .unwrap()
                .unwrap();
            revisions.extend(response.events.iter().map(revision));
        }
        let first_wrong = (2..)
            .zip(&revisions)
            .find(|(expected, got)| *expected != **got);
        assert_eq!(
            (revisions.len() as i64, first_wrong),
            (REVISIONS, None),
            "revisions received, and the first (expected, got) out of place"
        );
    }

    #[test]
    fn large_responses_split_into_marked_fragments() {
        let event = |i: u8| Event {
            kv: Some(KeyValue {
                key: vec![b'k', i].into(),
                value: vec![0u8; 100].into(),
                mod_revision: 5,
                ..Default::default()
            }),
            ..Default::default()
        };
        let response = WatchResponse {
            watch_id: 3,
            events: (0..10).map(event).collect(),
            ..Default::default()
        };
        let parts = fragments(response.clone(), true, 350);
        assert!(parts.len() > 1);
        assert!(parts[..parts.len() - 1].iter().all(|p| p.fragment));
        assert!(!parts.last().unwrap().fragment);
        let rejoined: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(rejoined, response.events);
        assert_eq!(fragments(response.clone(), false, 350), vec![response]);
    }
}
