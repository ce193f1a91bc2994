//! Differential Watch test: the same seeded script against a real etcd 3.4
//! and against Ballast, through the raw tonic clients of ballast-proto.
//!
//! The script mixes writes (puts, deletes, txns writing several keys in one
//! revision, occasional physical compactions) with watch operations on a few
//! streams per server: creates with random key ranges (single key, prefix,
//! `"\0"` end, empty key, explicit and empty ranges), random start revisions
//! (0, past, exactly the compaction revision, compacted, current + 1,
//! future), prev_kv, NOPUT/NODELETE filters, fragment, client-chosen ids
//! (duplicates included), cancels (of live, compaction-cancelled and unknown
//! ids) and WatchProgressRequests.
//!
//! Compared per stream: the sequence of control responses (created, canceled,
//! compact_revision, cancel_reason, watch_id and header revision, except the
//! header revision of a compaction cancel, which `watch_etcdctl` covers), the
//! header revisions of progress responses (watch_id -1), and per watch the
//! flattened event sequence (kv and prev_kv), ignoring how events are split
//! into responses. Checked on each side: no event outside created..canceled,
//! revisions never go backwards, one revision's events never split across
//! responses unless fragmenting, header revision >= the events' revisions.
//!
//! One difference is accepted on purpose: a watch that starts exactly at the
//! compaction revision also gets the deletes at that revision from Ballast
//! (etcd 3.4 loses them, etcd-io/etcd#19179); see `WatchModel::ballast_view`.
//!
//! Timing never decides the outcome: before a compaction, a cancel, a
//! progress request and at the end, every live watcher must have received
//! every event up to the current revision (the expected count comes from a
//! whole-keyspace watcher on etcd); then Ballast must have exactly what etcd
//! delivered. Before a compaction, both must also have synced every watcher
//! created from the past (etcd: its slow-watcher gauge is 0; Ballast: it
//! answers a progress request), or the compaction could cancel one that was
//! merely not synced yet.
//!
//! Environment: `BALLAST_WATCH_DIFF_SEED` (default random, printed),
//! `BALLAST_WATCH_DIFF_OPS` (default 400), `BALLAST_WATCH_DIFF_VERBOSE` (print
//! every op as it runs).

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use ballast_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ballast_proto::etcdserverpb::kv_client::KvClient;
use ballast_proto::etcdserverpb::watch_create_request::FilterType;
use ballast_proto::etcdserverpb::watch_request::RequestUnion;
use ballast_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
    request_op,
};
use ballast_proto::mvccpb::Event;
use ballast_proto::mvccpb::event::EventType;
use common::{Ballast, Etcd, ServerProcess, guarded, prefix_end};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;

/// Keys that get written; `"\0"` so that the empty-key watch sees events.
const KEYS: &[&[u8]] = &[
    b"\x00", b"a", b"a/1", b"a/2", b"a/3", b"ab", b"b", b"b/1", b"b/2", b"c", b"\xff",
];
/// Prefixes watched ("\xff" has the prefix end "\0"; "x" matches nothing).
const PREFIXES: &[&[u8]] = &[b"a", b"a/", b"b/", b"b", b"c", b"\xff", b"x"];
const VALUES: &[&[u8]] = &[b"", b"v0", b"v1", b"v2", b"a-longer-value-0123456789"];
/// Key of the barrier watches (never written).
const BARRIER_KEY: &[u8] = b"~barrier";
/// Streams per server.
const STREAMS: usize = 3;
/// Bound on any single wait (a hang guard, not a timing assertion).
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// What a stream received, parsed as it arrives.
// ---------------------------------------------------------------------------

/// A created/canceled response.
#[derive(Debug, Clone, PartialEq)]
struct Control {
    watch_id: i64,
    created: bool,
    canceled: bool,
    compact_revision: i64,
    cancel_reason: String,
    /// None for compaction cancels (see the module docs).
    header_revision: Option<i64>,
}

/// A watch instance: its id and the how-many-th creation of that id on the stream.
type Instance = (i64, usize);

#[derive(Default, Debug)]
struct Log {
    controls: Vec<Control>,
    /// Header revisions of progress responses (watch_id -1).
    progress: Vec<i64>,
    instances: HashMap<i64, usize>,
    open: HashSet<Instance>,
    events: HashMap<Instance, Vec<Event>>,
    /// Per instance: revision of the last event and whether its response was a fragment.
    last: HashMap<Instance, (i64, bool)>,
    violations: Vec<String>,
    error: Option<String>,
    responses: usize,
}

fn rev_of(e: &Event) -> i64 {
    e.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

impl Log {
    fn push(&mut self, r: WatchResponse) {
        self.responses += 1;
        let n = self.responses;
        let hdr = r.header.as_ref().map_or(0, |h| h.revision);
        if r.created || r.canceled || r.compact_revision != 0 {
            if !r.events.is_empty() {
                self.violations.push(format!(
                    "response #{n}: control response with events: {r:?}"
                ));
            }
            self.controls.push(Control {
                watch_id: r.watch_id,
                created: r.created,
                canceled: r.canceled,
                compact_revision: r.compact_revision,
                cancel_reason: r.cancel_reason.clone(),
                header_revision: (r.compact_revision == 0).then_some(hdr),
            });
            if r.watch_id >= 0 {
                if r.created && r.canceled {
                    self.violations.push(format!(
                        "response #{n}: created and canceled with a real watch id: {r:?}"
                    ));
                } else if r.created {
                    let inst = self.instances.entry(r.watch_id).or_default();
                    *inst += 1;
                    let key = (r.watch_id, *inst);
                    self.open.insert(key);
                    self.events.entry(key).or_default();
                } else if let Some(&inst) = self.instances.get(&r.watch_id) {
                    self.open.remove(&(r.watch_id, inst));
                }
            }
            return;
        }
        if r.watch_id == -1 {
            if !r.events.is_empty() {
                self.violations
                    .push(format!("response #{n}: watch_id -1 with events: {r:?}"));
            }
            self.progress.push(hdr);
            return;
        }
        let Some(&inst) = self.instances.get(&r.watch_id) else {
            self.violations.push(format!(
                "response #{n}: response for watch id {} before its created response: {r:?}",
                r.watch_id
            ));
            return;
        };
        let key = (r.watch_id, inst);
        if !self.open.contains(&key) {
            self.violations.push(format!(
                "response #{n}: response for watch id {} after it was canceled: {r:?}",
                r.watch_id
            ));
            return;
        }
        if r.events.is_empty() {
            self.violations.push(format!(
                "response #{n}: empty response for watch {} (no progress notification expected): {r:?}",
                r.watch_id
            ));
            return;
        }
        let (last_rev, last_fragment) = self.last.get(&key).copied().unwrap_or((0, false));
        let first = rev_of(&r.events[0]);
        if first < last_rev || (first == last_rev && !last_fragment) {
            self.violations.push(format!(
                "response #{n}: watch {} got revision {first} after revision {last_rev} \
                 (previous response fragment={last_fragment})",
                r.watch_id
            ));
        }
        if r.events.windows(2).any(|w| rev_of(&w[0]) > rev_of(&w[1])) {
            self.violations.push(format!(
                "response #{n}: events out of revision order within a response: {r:?}"
            ));
        }
        let last = rev_of(r.events.last().expect("events"));
        if hdr < last {
            self.violations.push(format!(
                "response #{n}: header revision {hdr} below event revision {last}"
            ));
        }
        self.last.insert(key, (last, r.fragment));
        self.events.entry(key).or_default().extend(r.events);
    }

    fn creates(&self) -> usize {
        self.controls.iter().filter(|c| c.created).count()
    }

    fn events_of(&self, inst: Instance) -> &[Event] {
        self.events.get(&inst).map_or(&[], |v| v.as_slice())
    }

    fn has_compaction_cancel(&self, id: i64, after: usize) -> bool {
        self.controls[after..]
            .iter()
            .any(|c| c.watch_id == id && c.compact_revision != 0)
    }
}

/// One watch stream: requests go in through `tx`, responses land in `log`.
struct WStream {
    tx: mpsc::UnboundedSender<WatchRequest>,
    log: watch::Receiver<Log>,
}

impl WStream {
    async fn open(srv: &ServerProcess) -> WStream {
        let mut client = srv.watch_client().await;
        let (tx, rx) = mpsc::unbounded_channel();
        let (log_tx, log) = watch::channel(Log::default());
        // The call itself runs in the task: etcd sends the response headers
        // only with its first response, which needs a request first.
        tokio::spawn(async move {
            match client.watch(UnboundedReceiverStream::new(rx)).await {
                Ok(resp) => {
                    let mut s = resp.into_inner();
                    loop {
                        match s.message().await {
                            Ok(Some(r)) => log_tx.send_modify(|l| l.push(r)),
                            Ok(None) => {
                                log_tx.send_modify(|l| l.error = Some("stream ended".into()));
                                return;
                            }
                            Err(e) => {
                                log_tx
                                    .send_modify(|l| l.error = Some(format!("stream error: {e}")));
                                return;
                            }
                        }
                    }
                }
                Err(e) => log_tx.send_modify(|l| l.error = Some(format!("watch call: {e}"))),
            }
        });
        WStream { tx, log }
    }

    fn send(&self, r: RequestUnion) {
        self.tx
            .send(WatchRequest {
                request_union: Some(r),
            })
            .expect("stream task alive");
    }

    /// Waits (bounded) until `pred` holds; false on timeout.
    async fn wait(&self, pred: impl FnMut(&Log) -> bool) -> bool {
        let mut rx = self.log.clone();
        matches!(
            tokio::time::timeout(WAIT, rx.wait_for(pred)).await,
            Ok(Ok(_))
        )
    }

    fn with<T>(&self, f: impl FnOnce(&Log) -> T) -> T {
        f(&self.log.borrow())
    }
}

struct Side {
    label: &'static str,
    kv: KvClient<Channel>,
    streams: Vec<WStream>,
}

impl Side {
    async fn new(srv: &ServerProcess) -> Side {
        let mut streams = Vec::new();
        for _ in 0..STREAMS {
            streams.push(WStream::open(srv).await);
        }
        Side {
            label: srv.kind().label(),
            kv: srv.kv_client().await,
            streams,
        }
    }
}

// ---------------------------------------------------------------------------
// The script.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(i64),
    Create(usize, WatchCreateRequest),
    Cancel(usize, i64),
    Progress(usize),
}

/// What the script knows about one watch (etcd's semantics).
#[derive(Debug, Clone)]
struct WatchModel {
    stream: usize,
    inst: Instance,
    req: WatchCreateRequest,
    /// The first revision it must see.
    start: i64,
    /// Set when it started exactly at the compaction revision C: etcd's
    /// physical compaction dropped the tombstones at C, so deletes at C are not
    /// delivered.
    skip_deletes_at: Option<i64>,
    /// Still receiving events.
    live: bool,
}

impl WatchModel {
    /// Ballast's events with its one deliberate difference taken out: it
    /// keeps the tombstones at the compaction revision (see `Store::compact`),
    /// so a watch starting exactly there also gets those deletes, which etcd
    /// 3.4 has physically compacted away (etcd-io/etcd#19179, "missing delete
    /// event for watch opened at the compaction revision").
    fn ballast_view(&self, events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|e| {
                !(e.r#type == EventType::Delete as i32 && self.skip_deletes_at == Some(rev_of(e)))
            })
            .cloned()
            .collect()
    }

    fn wants(&self, e: &Event) -> bool {
        let Some(kv) = &e.kv else { return false };
        let rev = kv.mod_revision;
        if rev < self.start {
            return false;
        }
        let is_delete = e.r#type == EventType::Delete as i32;
        if is_delete && self.skip_deletes_at == Some(rev) {
            return false;
        }
        let filtered = if is_delete {
            self.req.filters.contains(&(FilterType::Nodelete as i32))
        } else {
            self.req.filters.contains(&(FilterType::Noput as i32))
        };
        !filtered && in_range(&self.req.key, &self.req.range_end, &kv.key)
    }
}

/// Watch range semantics (etcd's normalisation of the empty key included).
fn in_range(key: &[u8], range_end: &[u8], k: &[u8]) -> bool {
    let key: &[u8] = if key.is_empty() { &[0] } else { key };
    match range_end {
        [] => k == key,
        [0] => k >= key,
        end => k >= key && k < end,
    }
}

struct Gen {
    rng: StdRng,
    /// Current revision (both servers agree, checked on every write).
    rev: i64,
    compact_rev: i64,
    /// Per stream: ids etcd holds (live or compaction-cancelled, not yet cancelled).
    occupied: Vec<BTreeSet<i64>>,
    watches: Vec<WatchModel>,
}

impl Gen {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.rng.random_range(0..xs.len())]
    }

    fn key(&mut self) -> Vec<u8> {
        self.pick(KEYS).to_vec()
    }

    fn value(&mut self) -> Vec<u8> {
        self.pick(VALUES).to_vec()
    }

    fn put_req(&mut self) -> PutRequest {
        PutRequest {
            key: self.key().into(),
            value: self.value().into(),
            ..Default::default()
        }
    }

    fn delete_req(&mut self) -> DeleteRangeRequest {
        let (key, range_end) = match self.rng.random_range(0..10) {
            0..6 => (self.key(), Vec::new()),
            6..9 => {
                let p = self.pick(PREFIXES).to_vec();
                let end = prefix_end(&p);
                (p, end)
            }
            _ => (self.key(), vec![0]),
        };
        DeleteRangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            prev_kv: self.chance(0.3),
        }
    }

    /// Puts and single-key deletes on distinct keys.
    fn branch(&mut self) -> Vec<RequestOp> {
        let n = self.rng.random_range(2..=4);
        let mut keys: Vec<Vec<u8>> = Vec::new();
        while keys.len() < n {
            let k = self.key();
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        keys.into_iter()
            .map(|k| {
                let request = if self.chance(0.7) {
                    request_op::Request::RequestPut(PutRequest {
                        key: k.into(),
                        value: self.value().into(),
                        ..Default::default()
                    })
                } else {
                    request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                        key: k.into(),
                        ..Default::default()
                    })
                };
                RequestOp {
                    request: Some(request),
                }
            })
            .collect()
    }

    fn txn_req(&mut self) -> TxnRequest {
        let compare = if self.chance(0.3) {
            vec![Compare {
                result: CompareResult::Greater as i32,
                target: CompareTarget::Version as i32,
                key: self.key().into(),
                target_union: Some(TargetUnion::Version(0)),
                ..Default::default()
            }]
        } else {
            Vec::new()
        };
        TxnRequest {
            compare,
            success: self.branch(),
            failure: self.branch(),
        }
    }

    fn create_req(&mut self, stream: usize) -> WatchCreateRequest {
        let (key, range_end): (Vec<u8>, Vec<u8>) = match self.rng.random_range(0..20) {
            0..5 => (self.key(), Vec::new()),
            5..10 => {
                let p = self.pick(PREFIXES).to_vec();
                let end = prefix_end(&p);
                (p, end)
            }
            10..12 => (self.key(), vec![0]),
            12 => (Vec::new(), Vec::new()),
            13 => (Vec::new(), vec![0]),
            14..18 => {
                let (a, b) = (self.key(), self.key());
                if a == b {
                    (a, b"zz".to_vec())
                } else {
                    (a.clone().min(b.clone()), a.max(b))
                }
            }
            // An empty range: key >= range_end.
            _ => {
                let (a, b) = (self.key(), self.key());
                let (lo, hi) = (a.clone().min(b.clone()), a.max(b));
                if lo == [0] {
                    (hi.clone(), hi)
                } else {
                    (hi, lo)
                }
            }
        };
        let r = self.rev;
        let c = self.compact_rev;
        let start_revision = match self.rng.random_range(0..100) {
            0..40 => 0,
            40..65 => self.rng.random_range(c.max(1)..=r),
            65..73 if c > 0 => c,
            73..83 if c > 1 => self.rng.random_range(1..c),
            83..90 => r + 1,
            90..100 => r + self.rng.random_range(2..=6),
            _ => 0,
        };
        let mut filters = Vec::new();
        match self.rng.random_range(0..20) {
            0..2 => filters.push(FilterType::Noput as i32),
            2..4 => filters.push(FilterType::Nodelete as i32),
            4 => {
                filters.push(FilterType::Noput as i32);
                filters.push(FilterType::Nodelete as i32);
            }
            _ => {}
        }
        let watch_id = match self.rng.random_range(0..20) {
            0..15 => 0,
            15..17 if !self.occupied[stream].is_empty() => {
                let ids: Vec<i64> = self.occupied[stream].iter().copied().collect();
                self.pick(&ids)
            }
            _ => self.rng.random_range(100..=106),
        };
        WatchCreateRequest {
            key: key.into(),
            range_end: range_end.into(),
            start_revision,
            progress_notify: self.chance(0.2),
            filters,
            prev_kv: self.chance(0.5),
            watch_id,
            fragment: self.chance(0.2),
        }
    }

    fn gen_op(&mut self) -> Op {
        let stream = self.rng.random_range(0..STREAMS);
        match self.rng.random_range(0..100) {
            0..30 => Op::Put(self.put_req()),
            30..42 => Op::Delete(self.delete_req()),
            42..65 => Op::Txn(self.txn_req()),
            65..80 => Op::Create(stream, self.create_req(stream)),
            80..87 => {
                let mut ids: Vec<i64> = self.occupied[stream].iter().copied().collect();
                ids.push(self.rng.random_range(0..=3));
                ids.push(-1);
                let id = self.pick(&ids);
                Op::Cancel(stream, id)
            }
            87..93 => Op::Progress(stream),
            93..97 if self.rev > self.compact_rev + 1 => {
                let lo = self.compact_rev + 1;
                Op::Compact(self.rng.random_range(lo..=self.rev))
            }
            _ => Op::Put(self.put_req()),
        }
    }
}

// ---------------------------------------------------------------------------
// Running it.
// ---------------------------------------------------------------------------

struct Run {
    seed: u64,
    script: Gen,
    etcd: Side,
    ballast: Side,
    /// Whole-keyspace watch on etcd: the event history, for expected counts.
    oracle: WStream,
    /// etcd's `host:port`, for its /metrics.
    etcd_url: String,
    op_index: usize,
    recent: Vec<String>,
}

/// Outcome of a write on one server: its revision or its error.
type WriteOutcome = Result<i64, String>;

async fn write(kv: &mut KvClient<Channel>, op: &Op) -> WriteOutcome {
    let status = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
    let header =
        |h: Option<ballast_proto::etcdserverpb::ResponseHeader>| h.expect("header").revision;
    match op {
        Op::Put(r) => guarded("put", kv.put(r.clone()))
            .await
            .map(|r| header(r.into_inner().header))
            .map_err(status),
        Op::Delete(r) => guarded("delete", kv.delete_range(r.clone()))
            .await
            .map(|r| header(r.into_inner().header))
            .map_err(status),
        Op::Txn(r) => guarded("txn", kv.txn(r.clone()))
            .await
            .map(|r| header(r.into_inner().header))
            .map_err(status),
        Op::Compact(rev) => guarded(
            "compact",
            kv.compact(CompactionRequest {
                revision: *rev,
                physical: true,
            }),
        )
        .await
        .map(|r| header(r.into_inner().header))
        .map_err(status),
        _ => unreachable!("not a write: {op:?}"),
    }
}

/// etcd's `etcd_debugging_mvcc_slow_watcher_total` (unsynced watchers), from /metrics.
async fn slow_watchers(host_port: &str) -> Result<i64, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(host_port)
        .await
        .map_err(|e| e.to_string())?;
    conn.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {host_port}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    guarded("GET /metrics", conn.read_to_string(&mut body))
        .await
        .map_err(|e| e.to_string())?;
    body.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_slow_watcher_total "))
        .ok_or_else(|| "no etcd_debugging_mvcc_slow_watcher_total in /metrics".to_string())?
        .trim()
        .parse::<f64>()
        .map(|v| v as i64)
        .map_err(|e| e.to_string())
}

fn show_events(events: &[Event]) -> String {
    let mut s = String::new();
    for e in events {
        let kind = if e.r#type == EventType::Delete as i32 {
            "DEL"
        } else {
            "PUT"
        };
        let kv = e.kv.clone().unwrap_or_default();
        let _ = write!(
            s,
            "\n    {kind} {:?}@{} c{} v{} val={:?}",
            String::from_utf8_lossy(&kv.key),
            kv.mod_revision,
            kv.create_revision,
            kv.version,
            String::from_utf8_lossy(&kv.value)
        );
        if let Some(p) = &e.prev_kv {
            let _ = write!(
                s,
                " prev={:?}@{} v{} val={:?}",
                String::from_utf8_lossy(&p.key),
                p.mod_revision,
                p.version,
                String::from_utf8_lossy(&p.value)
            );
        }
    }
    s
}

impl Run {
    fn fail(&self, what: &str, etcd: &str, ballast: &str) -> ! {
        let seed = self.seed;
        let mut history = String::new();
        for line in &self.recent {
            let _ = writeln!(history, "  {line}");
        }
        panic!(
            "watch differential mismatch at op #{} (seed {seed}; reproduce with \
             BALLAST_WATCH_DIFF_SEED={seed} BALLAST_WATCH_DIFF_OPS={}): {what}\n\
             recent ops:\n{history}--- etcd ---\n{etcd}\n--- ballast ---\n{ballast}\n",
            self.op_index,
            self.op_index + 1
        );
    }

    fn check_stream_health(&self) {
        for s in 0..STREAMS {
            let (ev, ee) = self.etcd.streams[s].with(|l| (l.violations.clone(), l.error.clone()));
            let (bv, be) =
                self.ballast.streams[s].with(|l| (l.violations.clone(), l.error.clone()));
            if !ev.is_empty() || ee.is_some() {
                panic!(
                    "seed {} op #{}: etcd stream {s} broke an invariant the test assumes (test bug?): {ev:#?} {ee:?}",
                    self.seed, self.op_index
                );
            }
            if !bv.is_empty() || be.is_some() {
                self.fail(
                    &format!("ballast stream {s} broke a watch invariant"),
                    "(no violation)",
                    &format!("{bv:#?}\nstream error: {be:?}"),
                );
            }
        }
    }

    /// Waits until both sides' stream `s` have more than `n` created responses.
    async fn wait_created(&self, s: usize, n: usize) {
        if !self.etcd.streams[s].wait(|l| l.creates() > n).await {
            panic!(
                "seed {} op #{}: etcd did not answer a create request on stream {s} (test bug?)",
                self.seed, self.op_index
            );
        }
        if !self.ballast.streams[s].wait(|l| l.creates() > n).await {
            let e = self.etcd.streams[s].with(|l| format!("{:#?}", l.controls));
            let b = self.ballast.streams[s].with(|l| format!("{:#?}", l.controls));
            self.fail(
                &format!("no answer to a create request on stream {s}"),
                &e,
                &b,
            );
        }
    }

    fn compare_controls(&self, s: usize, from: usize, what: &str) {
        self.compare_controls_to(s, from, usize::MAX, what);
    }

    /// Compares control responses `from..to` (clamped) of stream `s`.
    fn compare_controls_to(&self, s: usize, from: usize, to: usize, what: &str) {
        let slice =
            |l: &Log| l.controls[from.min(l.controls.len())..to.min(l.controls.len())].to_vec();
        let e = self.etcd.streams[s].with(slice);
        let b = self.ballast.streams[s].with(slice);
        if e != b {
            self.fail(
                &format!("{what}: control responses differ on stream {s}"),
                &format!("{e:#?}"),
                &format!("{b:#?}"),
            );
        }
    }

    /// Before a compaction: every watcher has been moved past its catch-up
    /// on both sides, so that the compaction cannot cancel one that merely
    /// had not been synced yet (etcd syncs every 100 ms). etcd tells through
    /// its slow-watcher gauge; Ballast through progress requests, which it
    /// answers only once every watcher on the stream is synced (asked on
    /// streams without a watcher waiting for a future revision).
    async fn settle(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match slow_watchers(&self.etcd_url).await {
                Ok(0) => break,
                Ok(_) | Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => panic!(
                    "seed {} op #{}: etcd's unsynced watchers never reached 0: {other:?}",
                    self.seed, self.op_index
                ),
            }
        }
        for s in 0..STREAMS {
            self.progress(s, "settle before a compaction").await;
        }
    }

    /// Every live watcher has every event up to the current revision, on
    /// both sides, and Ballast's equal etcd's.
    async fn quiesce(&mut self) {
        let rev = self.script.rev;
        let oracle_inst = (0, 1);
        if !self
            .oracle
            .wait(|l| {
                l.events_of(oracle_inst)
                    .last()
                    .map_or(rev <= 1, |e| rev_of(e) >= rev)
            })
            .await
        {
            panic!(
                "seed {} op #{}: the oracle watch did not reach revision {rev}",
                self.seed, self.op_index
            );
        }
        let history: Vec<Event> = self.oracle.with(|l| l.events_of(oracle_inst).to_vec());
        for m in self.script.watches.iter().filter(|m| m.live) {
            let expected = history.iter().filter(|e| m.wants(e)).count();
            let s = m.stream;
            if !self.etcd.streams[s].with(|l| l.open.contains(&m.inst)) {
                panic!(
                    "seed {} op #{}: etcd closed watch {m:?}, which the script thinks is live (test bug?): {:#?}",
                    self.seed,
                    self.op_index,
                    self.etcd.streams[s].with(|l| l.controls.clone())
                );
            }
            if !self.etcd.streams[s]
                .wait(|l| l.events_of(m.inst).len() >= expected)
                .await
            {
                let got = self.etcd.streams[s].with(|l| show_events(l.events_of(m.inst)));
                let want: Vec<Event> = history.iter().filter(|e| m.wants(e)).cloned().collect();
                panic!(
                    "seed {} op #{}: etcd watch {m:?} did not get the {expected} events the model expects (test bug?); got:{got}\nexpected:{}\nhistory:{}",
                    self.seed,
                    self.op_index,
                    show_events(&want),
                    show_events(&history)
                );
            }
            let e = self.etcd.streams[s].with(|l| l.events_of(m.inst).to_vec());
            if e.len() != expected {
                panic!(
                    "seed {} op #{}: etcd watch {m:?} got {} events, the model expects {expected} (test bug?):{}",
                    self.seed,
                    self.op_index,
                    e.len(),
                    show_events(&e)
                );
            }
            let arrived = self.ballast.streams[s]
                .wait(|l| m.ballast_view(l.events_of(m.inst)).len() >= expected)
                .await;
            let b = self.ballast.streams[s].with(|l| m.ballast_view(l.events_of(m.inst)));
            if !arrived || e != b {
                self.fail(
                    &format!(
                        "events of watch {:?} on stream {s} differ (create request {:?}, start {})",
                        m.inst, m.req, m.start
                    ),
                    &show_events(&e),
                    &show_events(&b),
                );
            }
        }
        self.check_stream_health();
    }

    async fn step(&mut self, op: Op) {
        match &op {
            Op::Put(_) | Op::Delete(_) | Op::Txn(_) | Op::Compact(_) => {
                if let Op::Compact(_) = op {
                    self.quiesce().await;
                    self.settle().await;
                }
                let (e, b) = tokio::join!(
                    write(&mut self.etcd.kv, &op),
                    write(&mut self.ballast.kv, &op)
                );
                if e != b {
                    self.fail("write outcome", &format!("{e:?}"), &format!("{b:?}"));
                }
                if let Ok(rev) = e {
                    self.script.rev = self.script.rev.max(rev);
                    if let Op::Compact(at) = op {
                        self.script.compact_rev = at;
                    }
                }
            }
            Op::Create(s, req) => {
                self.create(*s, req.clone(), false).await;
            }
            Op::Cancel(s, id) => {
                self.quiesce().await;
                let s = *s;
                let from = self.etcd.streams[s].with(|l| l.controls.len());
                for side in [&self.etcd, &self.ballast] {
                    side.streams[s].send(RequestUnion::CancelRequest(WatchCancelRequest {
                        watch_id: *id,
                    }));
                }
                // A barrier: the created response of a new watch comes after
                // any answer to the cancel.
                let barrier = WatchCreateRequest {
                    key: BARRIER_KEY.to_vec().into(),
                    ..Default::default()
                };
                self.create(s, barrier, true).await;
                self.compare_controls(s, from, "cancel");
                let canceled = self.etcd.streams[s].with(|l| {
                    l.controls[from..]
                        .iter()
                        .any(|c| c.watch_id == *id && c.canceled && !c.created)
                });
                if canceled {
                    self.script.occupied[s].remove(id);
                    for m in &mut self.script.watches {
                        if m.stream == s && m.inst.0 == *id {
                            m.live = false;
                        }
                    }
                }
            }
            Op::Progress(s) => {
                self.quiesce().await;
                self.progress(*s, "progress request").await;
            }
        }
    }

    /// A WatchProgressRequest on stream `s` (both sides), unless a watcher
    /// there waits for a future revision: etcd 3.4 answers at once, 3.5+ (and
    /// Ballast) only once every watcher on the stream is synced and none
    /// starts in the future.
    async fn progress(&mut self, s: usize, what: &str) {
        let rev = self.script.rev;
        if self
            .script
            .watches
            .iter()
            .any(|m| m.stream == s && m.live && m.start > rev + 1)
        {
            return;
        }
        let from = self.etcd.streams[s].with(|l| l.progress.len());
        for side in [&self.etcd, &self.ballast] {
            side.streams[s].send(RequestUnion::ProgressRequest(WatchProgressRequest {}));
        }
        if !self.etcd.streams[s].wait(|l| l.progress.len() > from).await {
            panic!(
                "seed {} op #{}: etcd did not answer a progress request",
                self.seed, self.op_index
            );
        }
        let arrived = self.ballast.streams[s]
            .wait(|l| l.progress.len() > from)
            .await;
        let e = self.etcd.streams[s].with(|l| l.progress[from..].to_vec());
        let b = self.ballast.streams[s].with(|l| l.progress[from..].to_vec());
        if !arrived || e != b || e != [rev] {
            self.fail(
                &format!("{what}: progress response on stream {s} (current revision {rev})"),
                &format!("{e:?}"),
                &format!("{b:?}"),
            );
        }
    }

    /// Creates a watch on both sides, compares the answers (unless it is a
    /// barrier, whose caller compares) and records it.
    async fn create(&mut self, s: usize, req: WatchCreateRequest, barrier: bool) {
        let from = self.etcd.streams[s].with(|l| l.controls.len());
        let from_b = self.ballast.streams[s].with(|l| l.controls.len());
        // Everything before a create is settled, except before a barrier
        // (the answer to the cancel before it may still be on its way).
        if !barrier && from != from_b {
            self.compare_controls(s, 0, "before create");
        }
        let creates = self.etcd.streams[s].with(Log::creates);
        for side in [&self.etcd, &self.ballast] {
            side.streams[s].send(RequestUnion::CreateRequest(req.clone()));
        }
        self.wait_created(s, creates).await;
        // Up to the created response; what follows may still be on its way.
        let at = self.etcd.streams[s].with(|l| {
            from + l.controls[from..]
                .iter()
                .position(|c| c.created)
                .expect("a created response")
        });
        if !barrier {
            self.compare_controls_to(s, from, at + 1, "create");
        }
        let created = self.etcd.streams[s].with(|l| l.controls[at].clone());
        if created.watch_id < 0 || created.canceled {
            return;
        }
        let id = created.watch_id;
        let inst = self.etcd.streams[s].with(|l| (id, l.instances[&id]));
        self.script.occupied[s].insert(id);
        let start = if req.start_revision == 0 {
            self.script.rev + 1
        } else {
            req.start_revision
        };
        let c = self.script.compact_rev;
        let mut model = WatchModel {
            stream: s,
            inst,
            req,
            start,
            skip_deletes_at: (c > 0 && start == c).then_some(c),
            live: true,
        };
        if start < c {
            // Cancelled with compact_revision; the id stays taken (in etcd)
            // until the client cancels it.
            model.live = false;
            if !self.etcd.streams[s]
                .wait(|l| l.has_compaction_cancel(id, from))
                .await
            {
                panic!(
                    "seed {} op #{}: etcd did not cancel a compacted watch",
                    self.seed, self.op_index
                );
            }
            if !self.ballast.streams[s]
                .wait(|l| l.has_compaction_cancel(id, from))
                .await
            {
                let e = self.etcd.streams[s].with(|l| format!("{:#?}", &l.controls[from..]));
                let b = self.ballast.streams[s].with(|l| format!("{:#?}", &l.controls[from..]));
                self.fail(
                    "no compaction cancel for a compacted start revision",
                    &e,
                    &b,
                );
            }
            self.compare_controls(s, from, "compaction cancel");
        }
        self.script.watches.push(model);
    }

    /// The final comparison of everything both sides received.
    fn compare_all(&self) {
        for s in 0..STREAMS {
            self.compare_controls(s, 0, "final");
            let (ep, ee) = self.etcd.streams[s].with(|l| (l.progress.clone(), l.events.clone()));
            let (bp, be) = self.ballast.streams[s].with(|l| (l.progress.clone(), l.events.clone()));
            if ep != bp {
                self.fail(
                    &format!("progress responses on stream {s}"),
                    &format!("{ep:?}"),
                    &format!("{bp:?}"),
                );
            }
            let mut keys: Vec<&Instance> = ee.keys().chain(be.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let e = ee.get(k).map_or(&[][..], |v| v.as_slice());
                let b = be.get(k).map_or(&[][..], |v| v.as_slice());
                let b = match self
                    .script
                    .watches
                    .iter()
                    .find(|m| m.stream == s && m.inst == *k)
                {
                    Some(m) => m.ballast_view(b),
                    None => b.to_vec(),
                };
                if e != b {
                    self.fail(
                        &format!("final events of watch {k:?} on stream {s}"),
                        &show_events(e),
                        &show_events(&b),
                    );
                }
            }
        }
        self.check_stream_health();
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: impl FnOnce() -> T) -> T
where
    T::Err: std::fmt::Debug,
{
    match std::env::var(name) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={s:?}: {e:?}")),
        Err(_) => default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_differential_against_etcd() {
    let seed: u64 = env_or("BALLAST_WATCH_DIFF_SEED", rand::random);
    let n_ops: usize = env_or("BALLAST_WATCH_DIFF_OPS", || 400);
    // BALLAST_WATCH_DIFF_VERBOSE=1: print every op as it runs.
    let verbose = std::env::var_os("BALLAST_WATCH_DIFF_VERBOSE").is_some();
    println!(
        "watch differential: seed {seed} (BALLAST_WATCH_DIFF_SEED={seed} to reproduce), {n_ops} ops"
    );

    let (etcd_srv, ballast_srv) = tokio::join!(Etcd::start(), Ballast::start());
    let (etcd, ballast) = tokio::join!(Side::new(&etcd_srv), Side::new(&ballast_srv));
    let oracle = WStream::open(&etcd_srv).await;
    oracle.send(RequestUnion::CreateRequest(WatchCreateRequest {
        key: vec![0].into(),
        range_end: vec![0].into(),
        ..Default::default()
    }));
    assert!(
        oracle.wait(|l| !l.controls.is_empty()).await,
        "oracle watch created"
    );
    assert_eq!(etcd.label, "etcd");
    assert_eq!(ballast.label, "ballast");

    let mut run = Run {
        seed,
        script: Gen {
            rng: StdRng::seed_from_u64(seed),
            rev: 1,
            compact_rev: 0,
            occupied: vec![BTreeSet::new(); STREAMS],
            watches: Vec::new(),
        },
        etcd,
        ballast,
        oracle,
        etcd_url: etcd_srv.host_port(),
        op_index: 0,
        recent: Vec::new(),
    };
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    for i in 0..n_ops {
        run.op_index = i;
        let op = run.script.gen_op();
        let kind = match &op {
            Op::Put(_) => "put",
            Op::Delete(_) => "delete",
            Op::Txn(_) => "txn",
            Op::Compact(_) => "compact",
            Op::Create(..) => "create",
            Op::Cancel(..) => "cancel",
            Op::Progress(_) => "progress",
        };
        *counts.entry(kind).or_default() += 1;
        if verbose {
            println!(
                "#{i} (rev {}, compacted {}) {op:?}",
                run.script.rev, run.script.compact_rev
            );
        }
        run.recent
            .push(format!("#{i} (rev {}) {op:?}", run.script.rev));
        if run.recent.len() > 12 {
            run.recent.remove(0);
        }
        run.step(op).await;
        if i % 25 == 24 {
            run.quiesce().await;
        }
    }
    run.op_index = n_ops;
    run.quiesce().await;
    run.compare_all();

    let watches = run.script.watches.len();
    let compacted: usize = (0..STREAMS)
        .map(|s| {
            run.etcd.streams[s].with(|l| {
                l.controls
                    .iter()
                    .filter(|c| c.compact_revision != 0)
                    .count()
            })
        })
        .sum();
    let events: usize = (0..STREAMS)
        .map(|s| run.etcd.streams[s].with(|l| l.events.values().map(Vec::len).sum::<usize>()))
        .sum();
    let refused: usize = (0..STREAMS)
        .map(|s| {
            run.etcd.streams[s].with(|l| l.controls.iter().filter(|c| c.watch_id == -1).count())
        })
        .sum();
    let progress: usize = (0..STREAMS)
        .map(|s| run.etcd.streams[s].with(|l| l.progress.len()))
        .sum();
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort();
    println!(
        "watch differential: seed {seed}, ops {counts:?}, final revision {}, compacted at {}, \
         {watches} watches ({compacted} compaction-cancelled, {refused} refused), \
         {events} events delivered, {progress} progress responses: no mismatch",
        run.script.rev, run.script.compact_rev
    );
}
