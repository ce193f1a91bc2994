//! Watch guarantees under load, through the raw tonic clients of
//! ballast-proto: fan-out to 1,000 watchers, a stalled watcher (with and
//! without a compaction while it stalls), WatchProgressRequest semantics
//! (etcd 3.5: watch_id -1, a revision that is a bookmark), periodic progress
//! notifications, and fragmentation of oversized revisions (also compared
//! with etcd 3.4's split).
//!
//! No sleep is used as synchronisation: every wait is for a response, with a
//! deadline that only guards against hangs.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ballast_proto::etcdserverpb::kv_client::KvClient;
use ballast_proto::etcdserverpb::watch_client::WatchClient;
use ballast_proto::etcdserverpb::watch_request::RequestUnion;
use ballast_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse, request_op,
};
use ballast_proto::mvccpb::Event;
use ballast_proto::mvccpb::event::EventType;
use common::{Ballast, Etcd, ServerProcess, guarded, prefix_end};
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

/// Deadline for a whole delivery phase (a hang guard for slow debug builds,
/// not a performance assertion).
const DELIVERY_DEADLINE: Duration = Duration::from_secs(300);
/// Deadline for a single expected response.
const RESPONSE_WAIT: Duration = Duration::from_secs(20);

/// One watch stream: requests through `tx`, responses read from `rx`.
struct RawStream {
    tx: mpsc::UnboundedSender<WatchRequest>,
    rx: Streaming<WatchResponse>,
}

impl RawStream {
    /// Opens a stream on its own connection, sending `first` before the call
    /// (etcd answers the call only with its first response).
    async fn open(srv: &ServerProcess, first: WatchCreateRequest) -> RawStream {
        Self::open_on(srv.channel().await, first).await
    }

    /// Like [`RawStream::open`], on the given connection.
    async fn open_on(channel: Channel, first: WatchCreateRequest) -> RawStream {
        let mut client = WatchClient::new(channel);
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(create(first)).expect("queue create");
        let rx = guarded("watch call", client.watch(UnboundedReceiverStream::new(rx)))
            .await
            .expect("watch call")
            .into_inner();
        RawStream { tx, rx }
    }

    fn send(&self, r: WatchRequest) {
        self.tx.send(r).expect("request stream open");
    }

    /// The next response, within [`RESPONSE_WAIT`].
    async fn next(&mut self) -> WatchResponse {
        match tokio::time::timeout(RESPONSE_WAIT, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => panic!("watch stream ended"),
            Ok(Err(e)) => panic!("watch stream failed: {e}"),
            Err(_) => panic!("no watch response within {RESPONSE_WAIT:?}"),
        }
    }

    /// The next response must be a created one; returns its watch id.
    async fn created(&mut self) -> i64 {
        let r = self.next().await;
        assert!(
            r.created && !r.canceled,
            "expected a created response, got {}",
            brief(&r)
        );
        r.watch_id
    }

    /// Reads until a created response arrives and returns its watch id;
    /// responses for other watchers that come first go to `others`.
    async fn created_after(&mut self, others: &mut Vec<WatchResponse>) -> i64 {
        loop {
            let r = self.next().await;
            if r.created {
                assert!(!r.canceled, "create refused: {}", brief(&r));
                return r.watch_id;
            }
            others.push(r);
        }
    }
}

/// A response without its (possibly huge) event list.
fn brief(r: &WatchResponse) -> String {
    let revs: Vec<i64> = r.events.iter().map(rev_of).collect();
    let shown: Vec<i64> = revs.iter().copied().take(8).collect();
    format!(
        "{{watch_id: {}, created: {}, canceled: {}, compact_revision: {}, cancel_reason: {:?}, \
         fragment: {}, header revision: {:?}, {} events at revisions {shown:?}{}}}",
        r.watch_id,
        r.created,
        r.canceled,
        r.compact_revision,
        r.cancel_reason,
        r.fragment,
        r.header.as_ref().map(|h| h.revision),
        revs.len(),
        if revs.len() > shown.len() { "…" } else { "" }
    )
}

fn create(req: WatchCreateRequest) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(req)),
    }
}

fn progress_request() -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    }
}

fn prefix_watch(prefix: &str) -> WatchCreateRequest {
    WatchCreateRequest {
        key: prefix.as_bytes().to_vec().into(),
        range_end: prefix_end(prefix.as_bytes()).into(),
        ..Default::default()
    }
}

fn rev_of(e: &Event) -> i64 {
    e.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &[u8]) -> i64 {
    guarded(
        "put",
        kv.put(PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.to_vec().into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("put {key}: {e}"))
    .into_inner()
    .header
    .expect("header")
    .revision
}

async fn current_revision(kv: &mut KvClient<Channel>) -> i64 {
    guarded(
        "range",
        kv.range(RangeRequest {
            key: b"probe".to_vec().into(),
            ..Default::default()
        }),
    )
    .await
    .expect("range")
    .into_inner()
    .header
    .expect("header")
    .revision
}

/// `total` puts under `prefix` from `writers` concurrent clients, each on its
/// own connection, `batch` puts per request (one put, or a txn of `batch`
/// puts on distinct keys: one revision), values of at least `value_len`
/// bytes; panics unless every one succeeds. Returns the number of puts done.
async fn write_burst(
    srv: &ServerProcess,
    prefix: &str,
    total: usize,
    writers: usize,
    batch: usize,
    value_len: usize,
) -> usize {
    assert_eq!(total % batch, 0, "whole batches");
    let all_requests = total / batch;
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for w in 0..writers {
        let mut kv = KvClient::new(srv.channel().await);
        let requests = all_requests / writers + usize::from(w < all_requests % writers);
        let prefix = prefix.to_string();
        let done = done.clone();
        tasks.spawn(async move {
            for i in 0..requests {
                let put = |j: usize| PutRequest {
                    key: format!("{prefix}{w}/{}", (i * batch + j) % 64)
                        .into_bytes()
                        .into(),
                    value: format!("v{i}.{j}:{:>value_len$}", "").into_bytes().into(),
                    ..Default::default()
                };
                let result = if batch == 1 {
                    tokio::time::timeout(Duration::from_secs(60), kv.put(put(0)))
                        .await
                        .map(|r| r.map(|_| ()))
                } else {
                    let ops = (0..batch)
                        .map(|j| RequestOp {
                            request: Some(request_op::Request::RequestPut(put(j))),
                        })
                        .collect();
                    let txn = TxnRequest {
                        success: ops,
                        ..Default::default()
                    };
                    tokio::time::timeout(Duration::from_secs(60), kv.txn(txn))
                        .await
                        .map(|r| r.map(|_| ()))
                };
                match result {
                    Ok(Ok(())) => {
                        done.fetch_add(batch, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => panic!("writer {w}: write #{i} failed: {e}"),
                    Err(_) => panic!("writer {w}: write #{i} did not complete within 60 s"),
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("writer task");
    }
    done.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// Fan-out
// ---------------------------------------------------------------------------

/// Checks one watcher's events for a burst in which every revision in
/// `first..=last` carries exactly `batch` puts under the watched prefix:
/// exactly once, in revision order, no gap, and (as a txn's events are
/// atomic) every revision whole within one response.
struct Sequence {
    prefix: &'static [u8],
    next_rev: i64,
    in_rev: usize,
    batch: usize,
    last: i64,
    events: usize,
}

impl Sequence {
    fn new(prefix: &'static [u8], first: i64, last: i64, batch: usize) -> Self {
        Sequence {
            prefix,
            next_rev: first,
            in_rev: 0,
            batch,
            last,
            events: 0,
        }
    }

    fn response(&mut self, r: &WatchResponse) -> Result<(), String> {
        for ev in &r.events {
            let rev = rev_of(ev);
            if rev != self.next_rev || self.next_rev > self.last {
                return Err(format!(
                    "event #{} at revision {rev} where revision {} (event {} of {}) was due \
                     (duplicate, gap or disorder; last {})",
                    self.events + 1,
                    self.next_rev,
                    self.in_rev + 1,
                    self.batch,
                    self.last
                ));
            }
            if ev.r#type != EventType::Put as i32 {
                return Err(format!("not a put: {ev:?}"));
            }
            if !ev
                .kv
                .as_ref()
                .is_some_and(|kv| kv.key.starts_with(self.prefix))
            {
                return Err(format!("key outside the watched prefix: {ev:?}"));
            }
            self.events += 1;
            self.in_rev += 1;
            if self.in_rev == self.batch {
                self.in_rev = 0;
                self.next_rev += 1;
            }
        }
        if self.in_rev != 0 && !r.fragment {
            return Err(format!(
                "revision {} split across responses ({} of {} events in this one)",
                self.next_rev, self.in_rev, self.batch
            ));
        }
        Ok(())
    }

    fn done(&self) -> bool {
        self.next_rev > self.last
    }
}

/// Fan-out: 1,000 watchers on one prefix over 10 streams, then 10,000 puts
/// from concurrent writers (as txns of 10 puts: 1,000 revisions, which keeps
/// the 10 million event deliveries affordable in debug builds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_1000_watchers_10000_writes() {
    const STREAMS: usize = 10;
    const PER_STREAM: usize = 100;
    const WRITES: usize = 10_000;
    const BATCH: usize = 10;
    const WRITERS: usize = 16;
    let srv = Ballast::start().await;
    let mut kv = srv.kv_client().await;

    // 100 watchers per stream, all created (and acknowledged) before the
    // burst; created responses come before any event.
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let mut s = RawStream::open(&srv, prefix_watch("fan/")).await;
        let mut ids = vec![s.created().await];
        for _ in 1..PER_STREAM {
            s.send(create(prefix_watch("fan/")));
            ids.push(s.created().await);
        }
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), PER_STREAM, "distinct watch ids per stream");
        streams.push((s, ids));
    }
    let start = current_revision(&mut kv).await;
    let last = start + (WRITES / BATCH) as i64;

    // Every stream is read by its own task while the writers run.
    let mut readers = JoinSet::new();
    for (n, (mut s, ids)) in streams.into_iter().enumerate() {
        readers.spawn(async move {
            let mut expect: HashMap<i64, Sequence> = ids
                .iter()
                .map(|&id| (id, Sequence::new(b"fan/", start + 1, last, BATCH)))
                .collect();
            let mut done = 0;
            let deadline = Instant::now() + DELIVERY_DEADLINE;
            while done < PER_STREAM {
                let r = match tokio::time::timeout_at(deadline, s.rx.message()).await {
                    Ok(Ok(Some(r))) => r,
                    Ok(other) => panic!("stream {n}: ended: {other:?}"),
                    Err(_) => {
                        let behind: Vec<(i64, i64)> = expect
                            .iter()
                            .filter(|(_, e)| !e.done())
                            .map(|(id, e)| (*id, e.next_rev))
                            .take(5)
                            .collect();
                        panic!(
                            "stream {n}: {} of {PER_STREAM} watchers not done within \
                             {DELIVERY_DEADLINE:?}; e.g. (id, next revision) {behind:?}, last {last}",
                            PER_STREAM - done
                        );
                    }
                };
                assert!(
                    !r.created && !r.canceled && r.compact_revision == 0 && !r.events.is_empty(),
                    "stream {n}: unexpected response {}",
                    brief(&r)
                );
                let e = expect.get_mut(&r.watch_id).unwrap_or_else(|| {
                    panic!("stream {n}: response for unknown watch {}", r.watch_id)
                });
                let was_done = e.done();
                if let Err(msg) = e.response(&r) {
                    panic!("stream {n} watch {}: {msg}", r.watch_id);
                }
                if e.done() && !was_done {
                    done += 1;
                }
            }
            assert!(
                expect.values().all(|e| e.events == WRITES),
                "every watcher got every event"
            );
        });
    }
    let written = write_burst(&srv, "fan/", WRITES, WRITERS, BATCH, 0).await;
    assert_eq!(written, WRITES);
    assert_eq!(
        current_revision(&mut kv).await,
        last,
        "one revision per txn"
    );
    while let Some(r) = readers.join_next().await {
        r.expect("reader");
    }
}

// ---------------------------------------------------------------------------
// Stalled watcher
// ---------------------------------------------------------------------------

/// A connection whose HTTP/2 windows are the protocol's default 64 KiB
/// (tonic's are megabytes), so that a client that stops reading stalls the
/// server's stream after a few hundred responses, not tens of thousands.
async fn small_window_channel(srv: &ServerProcess) -> Channel {
    let ep = tonic::transport::Endpoint::from_shared(srv.endpoint())
        .expect("endpoint")
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect_timeout(Duration::from_secs(5));
    guarded("connect", ep.connect()).await.expect("connect")
}

/// Stalled watcher: 50,000 puts (as txns of 10 puts: 5,000 revisions) from
/// 64 concurrent clients while the watcher's client does not read at all;
/// every write succeeds, then the watcher gets all 50,000 events in order,
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_watcher_gets_everything_later() {
    const WRITES: usize = 50_000;
    const BATCH: usize = 10;
    const WRITERS: usize = 64;
    const VALUE: usize = 100;
    let srv = Ballast::start().await;
    let mut kv = srv.kv_client().await;
    let mut stalled =
        RawStream::open_on(small_window_channel(&srv).await, prefix_watch("stall/")).await;
    let id = stalled.created().await;
    let start = current_revision(&mut kv).await;

    // The client does not read the stream while the writes go through.
    let written = write_burst(&srv, "stall/", WRITES, WRITERS, BATCH, VALUE).await;
    assert_eq!(
        written, WRITES,
        "every write succeeded while a watcher stalled"
    );
    let last = current_revision(&mut kv).await;
    assert_eq!(last, start + (WRITES / BATCH) as i64);

    // Now it reads: every event, in order, exactly once.
    let mut seq = Sequence::new(b"stall/", start + 1, last, BATCH);
    let deadline = Instant::now() + DELIVERY_DEADLINE;
    let mut responses = 0;
    // Responses whose header is past their events: served from history.
    let mut from_history = 0;
    while !seq.done() {
        let r = match tokio::time::timeout_at(deadline, stalled.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => panic!(
                "stalled watcher at revision {} of {last} after {DELIVERY_DEADLINE:?}",
                seq.next_rev
            ),
        };
        responses += 1;
        let header = r.header.as_ref().map_or(0, |h| h.revision);
        if r.events.last().is_some_and(|e| rev_of(e) < header) {
            from_history += 1;
        }
        assert_eq!(r.watch_id, id, "{}", brief(&r));
        assert!(
            !r.canceled && r.compact_revision == 0,
            "unexpected cancel: {}",
            brief(&r)
        );
        if let Err(msg) = seq.response(&r) {
            panic!("response #{responses}: {msg}");
        }
    }
    assert_eq!(seq.events, WRITES);
    assert!(
        from_history > 0,
        "every response was live: the server never moved the stalled watcher to catch-up \
         (it kept sending from the live feed, so a stalled stream buffers without bound)"
    );
}

/// Stalled watcher whose next revision is compacted before it reads again:
/// after the events it was already sent, it gets `{compact_revision,
/// canceled}` and nothing more.
async fn stalled_then_compacted(srv: &ServerProcess) {
    // About 4.6 MB of events: far more than a stalled stream should buffer
    // (128 responses, a 64 KiB window, an HTTP/2 send buffer), so the
    // watcher's next revision is surely compacted.
    const WRITES: usize = 20_000;
    const BATCH: usize = 10;
    const WRITERS: usize = 64;
    const VALUE: usize = 200;
    let label = srv.kind().label();
    let mut kv = srv.kv_client().await;
    let mut stalled =
        RawStream::open_on(small_window_channel(srv).await, prefix_watch("stall/")).await;
    let id = stalled.created().await;
    let start = current_revision(&mut kv).await;

    let written = write_burst(srv, "stall/", WRITES, WRITERS, BATCH, VALUE).await;
    assert_eq!(written, WRITES);
    let compact_at = current_revision(&mut kv).await;
    guarded(
        "compact",
        kv.compact(CompactionRequest {
            revision: compact_at,
            physical: true,
        }),
    )
    .await
    .expect("compact");

    // Reads again: a contiguous prefix of the events, then the cancel.
    let mut seq = Sequence::new(b"stall/", start + 1, compact_at, BATCH);
    let deadline = Instant::now() + DELIVERY_DEADLINE;
    let cancel = loop {
        let r = match tokio::time::timeout_at(deadline, stalled.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(other) => panic!("{label}: stream ended: {other:?}"),
            Err(_) => panic!(
                "{label}: no cancel within {DELIVERY_DEADLINE:?}; the watcher got every event \
                 up to revision {} (compacted at {compact_at}) instead: the stalled stream \
                 was never moved off the live feed",
                seq.next_rev - 1
            ),
        };
        assert_eq!(r.watch_id, id, "{label}: {}", brief(&r));
        if r.canceled || r.compact_revision != 0 {
            break r;
        }
        if let Err(msg) = seq.response(&r) {
            panic!("{label}: before the cancel: {msg}");
        }
        // Past the compaction revision, no cancel can come any more.
        assert!(
            !seq.done(),
            "{label}: the stalled watcher got every event up to revision {compact_at} (the \
             compaction revision) and no cancel: the server kept the stalled stream on the \
             live feed, buffering its events, instead of moving it to catch-up"
        );
    };
    assert!(
        cancel.canceled && cancel.compact_revision == compact_at && cancel.events.is_empty(),
        "{label}: expected {{canceled, compact_revision: {compact_at}}}, got {}",
        brief(&cancel)
    );
    assert!(
        seq.next_rev < compact_at,
        "{label}: the watcher's next revision {} must be below the compaction {compact_at}",
        seq.next_rev
    );

    // Nothing more for it: a new watcher on the same stream sees a later
    // write, and the cancelled one never does.
    stalled.send(create(prefix_watch("stall/")));
    let fresh = stalled.created().await;
    assert_ne!(fresh, -1);
    let rev = put(&mut kv, "stall/after", b"x").await;
    loop {
        let r = stalled.next().await;
        assert_ne!(
            r.watch_id,
            id,
            "{label}: event for the cancelled watcher: {}",
            brief(&r)
        );
        if r.watch_id == fresh && r.events.iter().any(|e| rev_of(e) == rev) {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_watcher_compacted_meanwhile_is_cancelled() {
    let srv = Ballast::start().await;
    stalled_then_compacted(&srv).await;
}

/// The same scenario against etcd 3.4: the reference behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_watcher_compacted_meanwhile_is_cancelled_on_etcd() {
    let srv = Etcd::start().await;
    stalled_then_compacted(&srv).await;
}

// ---------------------------------------------------------------------------
// Progress requests (etcd 3.5 semantics) and notifications
// ---------------------------------------------------------------------------

/// Checks the Bookmarkable guarantee over a stream's responses in order:
/// a progress response (watch_id -1) has a non-zero revision >= every event
/// before it, and no later event has a revision <= it. Returns the progress
/// revisions.
fn check_bookmarks(responses: &[WatchResponse]) -> Vec<i64> {
    let mut max_event = 0;
    let mut bookmark = 0;
    let mut progress = Vec::new();
    for (i, r) in responses.iter().enumerate() {
        if r.watch_id == -1 && !r.created {
            let rev = r.header.as_ref().map_or(0, |h| h.revision);
            assert!(rev > 0, "response #{i}: progress response with revision 0");
            assert!(r.events.is_empty(), "response #{i}: progress with events");
            assert!(
                rev >= max_event,
                "response #{i}: progress revision {rev} below an event already delivered ({max_event})"
            );
            assert!(
                rev >= bookmark,
                "response #{i}: progress revisions went back"
            );
            bookmark = rev;
            progress.push(rev);
        }
        for e in &r.events {
            let rev = rev_of(e);
            assert!(
                rev > bookmark,
                "response #{i}: event at revision {rev} after a progress response at {bookmark}"
            );
            max_event = max_event.max(rev);
        }
    }
    progress
}

/// WatchProgressRequests while concurrent writes go on, on a stream with a
/// live watcher, one catching up from the first revision and an idle one:
/// every reply is a bookmark (Bookmarkable), and the last one, asked after
/// the writes, carries the final revision with every event before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_requests_are_bookmarks() {
    const PRELOAD: usize = 3_000;
    const WRITES: usize = 1_500;
    let srv = Ballast::start().await;
    let mut kv = srv.kv_client().await;
    let written = write_burst(&srv, "pb/", PRELOAD, 8, 10, 0).await;
    assert_eq!(written, PRELOAD);

    // A live watcher, one catching up from the first revision, and one on
    // keys that are never written, all on one stream.
    let mut responses = Vec::new();
    let mut s = RawStream::open(&srv, prefix_watch("pb/")).await;
    s.created().await;
    s.send(create(WatchCreateRequest {
        start_revision: 1,
        ..prefix_watch("pb/")
    }));
    s.created().await;
    s.send(create(prefix_watch("none/")));
    s.created_after(&mut responses).await;

    // A progress request after every tenth response, while the writes run.
    let writer = write_burst(&srv, "pb/live/", WRITES, 4, 1, 0);
    tokio::pin!(writer);
    let mut last_rev = None;
    let deadline = Instant::now() + DELIVERY_DEADLINE;
    loop {
        tokio::select! {
            written = &mut writer, if last_rev.is_none() => {
                assert_eq!(written, WRITES);
                last_rev = Some(current_revision(&mut kv).await);
                // One more request once everything is written: its answer
                // must cover the last write.
                s.send(progress_request());
            }
            m = tokio::time::timeout_at(deadline, s.rx.message()) => {
                let r = match m {
                    Ok(Ok(Some(r))) => r,
                    Ok(other) => panic!("stream ended: {other:?}"),
                    Err(_) => panic!("no final progress response within {DELIVERY_DEADLINE:?}"),
                };
                let is_progress = r.watch_id == -1 && !r.created;
                let rev = r.header.as_ref().map_or(0, |h| h.revision);
                responses.push(r);
                if let Some(last) = last_rev
                    && is_progress
                    && rev >= last
                {
                    break;
                }
                if last_rev.is_none() && responses.len() % 10 == 0 {
                    s.send(progress_request());
                }
            }
        }
    }
    let progress = check_bookmarks(&responses);
    let last = last_rev.expect("writer finished");
    assert_eq!(
        *progress.last().unwrap(),
        last,
        "the final progress response carries the current revision"
    );
    // Both pb/ watchers got every event, live and from history.
    let events: usize = responses.iter().map(|r| r.events.len()).sum();
    assert_eq!(events, 2 * (PRELOAD + WRITES) - PRELOAD, "{progress:?}");
    println!(
        "progress_requests_are_bookmarks: {} progress responses, {} responses in all",
        progress.len(),
        responses.len()
    );
}

/// A WatchProgressRequest on a stream with a watcher whose start revision is
/// in the future: such a watcher is synced (etcd 3.5.13 puts it in the
/// synced group, `watchable_store.go watch`), so the request is answered at
/// once with the current revision, a bookmark that stays true when the
/// future watcher's event comes later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_request_counts_a_future_start_revision_as_synced() {
    let srv = Ballast::start().await;
    let mut kv = srv.kv_client().await;
    put(&mut kv, "fut/seed", b"0").await;
    let r = current_revision(&mut kv).await;
    let start = r + 4;
    let mut s = RawStream::open(&srv, prefix_watch("now/")).await;
    let live = s.created().await;
    s.send(create(WatchCreateRequest {
        key: b"fut".to_vec().into(),
        start_revision: start,
        ..Default::default()
    }));
    let future = s.created().await;
    s.send(progress_request());
    let reply = s.next().await;
    assert!(
        reply.watch_id == -1 && !reply.created && reply.events.is_empty(),
        "a progress reply first: {}",
        brief(&reply)
    );
    assert_eq!(reply.header.as_ref().map_or(0, |h| h.revision), r);

    let mut responses = vec![reply];
    for i in 1..=3 {
        put(&mut kv, &format!("now/{i}"), b"v").await;
    }
    let at_start = put(&mut kv, "fut", b"v").await;
    assert_eq!(at_start, start);
    let mut live_events = 0;
    loop {
        let resp = s.next().await;
        if resp.watch_id == live {
            live_events += resp.events.len();
        }
        let done = resp.watch_id == future;
        if done {
            assert_eq!(resp.events.len(), 1);
            assert_eq!(rev_of(&resp.events[0]), start);
        }
        responses.push(resp);
        if done {
            break;
        }
    }
    assert_eq!(live_events, 3);
    check_bookmarks(&responses);
}

/// `--experimental-watch-progress-notify-interval=200ms`: an idle synced
/// watcher with progress_notify gets empty responses with the current
/// revision; one without it, on the same stream (so on the same ticks),
/// gets none.
async fn periodic_progress_notifications(srv: &ServerProcess) {
    let mut kv = srv.kv_client().await;
    let rev = put(&mut kv, "pn/other", b"v").await;
    let mut s = RawStream::open(
        srv,
        WatchCreateRequest {
            progress_notify: true,
            ..prefix_watch("pn/a")
        },
    )
    .await;
    let notified = s.created().await;
    s.send(create(prefix_watch("pn/b")));
    let silent = s.created().await;

    // Two notifications for the watcher that asked; the other one on the
    // same stream (same ticks) must get none meanwhile.
    let mut seen = 0;
    while seen < 2 {
        let r = s.next().await;
        assert_ne!(
            r.watch_id,
            silent,
            "a watcher without progress_notify got {}",
            brief(&r)
        );
        assert_eq!(r.watch_id, notified, "{}", brief(&r));
        assert!(
            r.events.is_empty() && !r.created && !r.canceled && r.compact_revision == 0,
            "not a progress notification: {}",
            brief(&r)
        );
        assert_eq!(
            r.header.as_ref().map(|h| h.revision),
            Some(rev),
            "a progress notification carries the current revision"
        );
        seen += 1;
    }
    // After a write elsewhere, the notifications carry the new revision.
    let later = put(&mut kv, "pn/other", b"w").await;
    loop {
        let r = s.next().await;
        assert_ne!(r.watch_id, silent, "{}", brief(&r));
        assert!(r.events.is_empty(), "{}", brief(&r));
        let h = r.header.as_ref().map_or(0, |h| h.revision);
        assert!(h == rev || h == later, "{}", brief(&r));
        if h == later {
            break;
        }
    }
}

const NOTIFY_INTERVAL: &str = "--experimental-watch-progress-notify-interval=200ms";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_progress_notifications_only_with_progress_notify() {
    let srv = Ballast::start_with_args(&[NOTIFY_INTERVAL]).await;
    periodic_progress_notifications(&srv).await;
}

/// The same against etcd 3.4: the reference behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_progress_notifications_on_etcd() {
    let srv = Etcd::start_with_args(&[NOTIFY_INTERVAL]).await;
    periodic_progress_notifications(&srv).await;
}

// ---------------------------------------------------------------------------
// Fragmentation
// ---------------------------------------------------------------------------

/// Keys, each with a value of about 90 KB (under the 100000-byte request
/// limit the servers get here).
const FRAG_KEYS: usize = 20;
const FRAG_VALUE: usize = 90_000;
const MAX_REQUEST: &str = "--max-request-bytes=100000";

/// Sets up `FRAG_KEYS` big values, then watches a prefix delete (one
/// revision whose events with prev_kv total ~1.8 MB) with fragment=true and
/// without. Returns the responses of the fragmenting watcher for that
/// revision and the single response of the other.
async fn fragment_scenario(srv: &ServerProcess) -> (Vec<WatchResponse>, WatchResponse, i64) {
    let mut kv = srv.kv_client().await;
    for i in 0..FRAG_KEYS {
        let value = vec![b'a' + (i % 26) as u8; FRAG_VALUE];
        put(&mut kv, &format!("frag/{i:02}"), &value).await;
    }
    // A txn writing several keys in one revision (~80 KB: not split).
    let small: Vec<RequestOp> = (0..4)
        .map(|i| RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: format!("frag/small{i}").into_bytes().into(),
                value: vec![b's'; 20_000].into(),
                ..Default::default()
            })),
        })
        .collect();
    let watch = |fragment| WatchCreateRequest {
        prev_kv: true,
        fragment,
        ..prefix_watch("frag/")
    };
    let mut s = RawStream::open(srv, watch(true)).await;
    let fragmented = s.created().await;
    s.send(create(watch(false)));
    let whole = s.created().await;
    guarded(
        "txn",
        kv.txn(TxnRequest {
            success: small,
            ..Default::default()
        }),
    )
    .await
    .expect("txn of small puts");
    let del_rev = guarded(
        "delete",
        kv.delete_range(DeleteRangeRequest {
            key: b"frag/".to_vec().into(),
            range_end: prefix_end(b"frag/").into(),
            ..Default::default()
        }),
    )
    .await
    .expect("delete")
    .into_inner()
    .header
    .expect("header")
    .revision;
    let mut parts = Vec::new();
    let mut single = None;
    while parts.last().is_none_or(|p: &WatchResponse| p.fragment) || single.is_none() {
        let r = s.next().await;
        if r.events.iter().all(|e| rev_of(e) != del_rev) {
            continue; // the txn's revision
        }
        if r.watch_id == fragmented {
            parts.push(r);
        } else {
            assert_eq!(r.watch_id, whole);
            single = Some(r);
        }
    }
    (parts, single.expect("whole response"), del_rev)
}

/// fragment=true: a ~1.8 MB revision arrives in several responses, all but
/// the last marked as fragments, rejoining to exactly what a watcher without
/// fragment gets in one response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_revision_rejoins() {
    let srv = Ballast::start_with_args(&[MAX_REQUEST]).await;
    let (parts, whole, rev) = fragment_scenario(&srv).await;
    assert!(
        parts.len() > 1,
        "a {} byte revision must be split, got one response",
        whole.encoded_len()
    );
    for (i, p) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        assert_eq!(
            p.fragment,
            !last,
            "fragment flag of part {i} of {}",
            parts.len()
        );
        assert!(!p.events.is_empty(), "empty fragment {i}");
        assert!(p.events.iter().all(|e| rev_of(e) == rev));
    }
    assert!(!whole.fragment, "no fragments without fragment=true");
    let rejoined: Vec<Event> = parts.iter().flat_map(|p| p.events.clone()).collect();
    assert_eq!(rejoined.len(), FRAG_KEYS + 4, "every deleted key");
    assert_eq!(
        rejoined, whole.events,
        "fragments rejoin to the full revision"
    );
    for (i, e) in rejoined.iter().enumerate() {
        assert_eq!(e.r#type, EventType::Delete as i32);
        let prev = e.prev_kv.as_ref().expect("prev_kv");
        assert_eq!(Some(&prev.key), e.kv.as_ref().map(|kv| &kv.key));
        if i < FRAG_KEYS {
            assert_eq!(prev.value.len(), FRAG_VALUE);
        }
    }
}

/// The same scenario on etcd 3.4 with the same `--max-request-bytes`:
/// responses must be split at the same places (etcd splits at
/// max-request-bytes + 512 KiB of gRPC overhead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragment_split_matches_etcd() {
    let (etcd, ballast) = tokio::join!(
        Etcd::start_with_args(&[MAX_REQUEST]),
        Ballast::start_with_args(&[MAX_REQUEST])
    );
    let ((ep, _, _), (bp, _, _)) =
        tokio::join!(fragment_scenario(&etcd), fragment_scenario(&ballast));
    let shape = |parts: &[WatchResponse]| -> Vec<(usize, bool)> {
        parts.iter().map(|p| (p.events.len(), p.fragment)).collect()
    };
    assert_eq!(
        shape(&bp),
        shape(&ep),
        "fragments as (events, fragment flag): ballast vs etcd; etcd's part sizes {:?}",
        ep.iter().map(|p| p.encoded_len()).collect::<Vec<_>>()
    );
}
