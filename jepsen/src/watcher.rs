//! The watch workload's watchers, as etcd's robustness tests collect
//! watches: one recorder per member on the whole test prefix from the first
//! test revision, with prev_kv and a progress request every 100 ms,
//! resuming after each error from the revision after the last one it
//! confirmed; plus short-lived watchers from random recent revisions. After
//! healing, each member's whole event history is read again: the replay.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchResponse};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

use crate::checker::watch::{
    EventKind, RecordedWatch, WatchEvent, WatchRequestSpec, WatchResponseRecord,
};
use crate::client::{Recorder, connect};
use crate::workload::watch::KEY_PREFIX;

const PROGRESS_EVERY: Duration = Duration::from_millis(100);
const RANDOM_WATCH_EVERY: Duration = Duration::from_secs(2);
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);
/// A watch that hears nothing (not even an answer to its progress
/// requests) this long is closed and resumed, so a stuck stream cannot
/// hang the run.
const IDLE_LIMIT: Duration = Duration::from_secs(10);

fn prefix_end() -> String {
    let mut end = KEY_PREFIX.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    String::from_utf8(end).expect("ASCII prefix")
}

/// Shared between the watchers and the nemesis.
pub struct WatchState {
    pub first_revision: i64,
    /// Per member, the highest revision its recorder has confirmed.
    confirmed: Vec<AtomicI64>,
    /// The nemesis compacts no higher than the lowest confirmed revision.
    pub compact_ceiling: Arc<AtomicI64>,
    /// Set once the final revision is known: recorders stop there.
    final_revision: AtomicI64,
    /// When the watchers give up reaching the final revision.
    finish_by: OnceLock<Instant>,
}

impl WatchState {
    pub fn new(first_revision: i64, members: usize, compact_ceiling: Arc<AtomicI64>) -> Self {
        compact_ceiling.store(first_revision - 1, Ordering::SeqCst);
        WatchState {
            first_revision,
            confirmed: (0..members)
                .map(|_| AtomicI64::new(first_revision - 1))
                .collect(),
            compact_ceiling,
            final_revision: AtomicI64::new(i64::MAX),
            finish_by: OnceLock::new(),
        }
    }

    fn confirm(&self, member: usize, revision: i64) {
        self.confirmed[member].fetch_max(revision, Ordering::SeqCst);
        let lowest = self
            .confirmed
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .min()
            .unwrap_or(0);
        self.compact_ceiling.store(lowest, Ordering::SeqCst);
    }

    /// Tells the watchers to finish once they reach `revision`.
    pub fn finish_at(&self, revision: i64) {
        self.final_revision.store(revision, Ordering::SeqCst);
        let _ = self.finish_by.set(Instant::now() + FINISH_TIMEOUT);
    }

    /// Whether a watcher that confirmed `revision` is done: the run is
    /// over and it reached the final revision, or ran out of time.
    fn done_at(&self, revision: i64) -> bool {
        self.finish_by.get().is_some_and(|&by| {
            revision >= self.final_revision.load(Ordering::SeqCst) || Instant::now() > by
        })
    }
}

fn event_of(event: &etcd_client::Event) -> Option<WatchEvent> {
    let kv = event.kv()?;
    let kind = match event.event_type() {
        EventType::Put => EventKind::Put,
        EventType::Delete => EventKind::Delete,
    };
    Some(WatchEvent {
        kind,
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        mod_revision: kv.mod_revision(),
        create_revision: kv.create_revision(),
        version: kv.version(),
        prev_value: event
            .prev_kv()
            .map(|p| String::from_utf8_lossy(p.value()).into_owned()),
    })
}

fn record_of(response: &WatchResponse, time: u64) -> WatchResponseRecord {
    WatchResponseRecord {
        time,
        header_revision: response.header().map_or(0, |h| h.revision()),
        progress_notify: response.events().is_empty() && !response.canceled(),
        compact_revision: response.compact_revision(),
        canceled: response.canceled(),
        events: response.events().iter().filter_map(event_of).collect(),
    }
}

/// The highest revision a response confirms: its last event, or for a
/// progress notification (when trusted) its header revision.
fn confirmed_by(record: &WatchResponseRecord, trust_progress: bool) -> Option<i64> {
    if let Some(last) = record.events.last() {
        Some(last.mod_revision)
    } else if record.progress_notify && trust_progress {
        Some(record.header_revision)
    } else {
        None
    }
}

/// One watch from `start` until `stop` says so, the stream fails, or it is
/// canceled. Returns the record and the highest revision it confirmed.
/// Where and how one watch is opened.
struct WatchPlan<'a> {
    url: &'a str,
    watcher: String,
    node: &'a str,
    start: i64,
    prev_kv: bool,
    /// Whether a progress notification counts as "everything up to its
    /// revision was delivered". The replay does not trust it: etcd 3.4
    /// before 3.4.25 (etcd#15220) can notify progress past events an
    /// unsynced watcher has not been sent yet.
    trust_progress: bool,
}

async fn watch_once(
    plan: WatchPlan<'_>,
    recorder: &Recorder,
    mut stop: impl FnMut(i64) -> bool,
    mut on_confirm: impl FnMut(i64),
) -> (RecordedWatch, Option<i64>) {
    let WatchPlan {
        url,
        watcher,
        node,
        start,
        prev_kv,
        trust_progress,
    } = plan;
    let request = WatchRequestSpec {
        key: KEY_PREFIX.to_string(),
        range_end: prefix_end(),
        start_revision: start,
        prev_kv,
    };
    let mut record = RecordedWatch {
        watcher,
        node: node.to_string(),
        request,
        responses: Vec::new(),
    };
    let mut confirmed = None;
    let Ok(mut client) = connect(url).await else {
        return (record, confirmed);
    };
    let mut options = WatchOptions::new().with_prefix().with_start_revision(start);
    if prev_kv {
        options = options.with_prev_key();
    }
    let Ok(mut stream) = client.watch(KEY_PREFIX, Some(options)).await else {
        return (record, confirmed);
    };
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if stop(confirmed.unwrap_or(start - 1))
                    || heard.elapsed() > IDLE_LIMIT
                    || stream.request_progress().await.is_err()
                {
                    break;
                }
            }
            message = tokio::time::timeout(crate::client::REQUEST_TIMEOUT, stream.message()) => {
                let Ok(Ok(Some(response))) = message else { break };
                heard = Instant::now();
                if response.created() && response.events().is_empty() {
                    continue;
                }
                let response_record = record_of(&response, recorder.elapsed_ns());
                if let Some(revision) = confirmed_by(&response_record, trust_progress) {
                    confirmed = Some(confirmed.map_or(revision, |c: i64| c.max(revision)));
                    on_confirm(revision);
                }
                let canceled = response_record.canceled;
                record.responses.push(response_record);
                if canceled {
                    break;
                }
            }
        }
    }
    (record, confirmed)
}

/// A member's recorder: watches from the first test revision to the final
/// one, resuming after every failure.
pub async fn record_member(
    member: usize,
    url: String,
    state: Arc<WatchState>,
    recorder: Recorder,
) -> Vec<RecordedWatch> {
    let node = format!("n{}", member + 1);
    let mut next = state.first_revision;
    let mut watches = Vec::new();
    loop {
        let stop = |confirmed: i64| state.done_at(confirmed);
        let plan = WatchPlan {
            url: &url,
            watcher: format!("{node}/recorder"),
            node: &node,
            start: next,
            prev_kv: true,
            trust_progress: true,
        };
        let (watch, confirmed) = watch_once(plan, &recorder, stop, |revision| {
            state.confirm(member, revision)
        })
        .await;
        if let Some(compacted) = watch.responses.last().filter(|r| r.canceled) {
            next = next.max(compacted.compact_revision);
        }
        if let Some(confirmed) = confirmed {
            next = next.max(confirmed + 1);
        }
        let got_anything = !watch.responses.is_empty();
        if got_anything {
            watches.push(watch);
        }
        if state.done_at(next - 1) {
            break;
        }
        if !got_anything {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    watches
}

/// Short watches from random recent (and a little future) revisions on
/// random members, until the load stops.
pub async fn random_watchers(
    urls: Vec<String>,
    state: Arc<WatchState>,
    recorder: Recorder,
    seed: u64,
    until: Instant,
) -> Vec<RecordedWatch> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5741_5443);
    let mut watches = Vec::new();
    let mut number = 0;
    while Instant::now() + RANDOM_WATCH_EVERY < until {
        tokio::time::sleep(RANDOM_WATCH_EVERY).await;
        let member = rng.random_range(0..urls.len());
        let current = state.confirmed[member].load(Ordering::SeqCst);
        let start = (current + rng.random_range(-100..=10)).max(state.first_revision);
        let lasts = Instant::now() + Duration::from_millis(rng.random_range(1000..3000));
        number += 1;
        let node = format!("n{}", member + 1);
        let plan = WatchPlan {
            url: &urls[member],
            watcher: format!("{node}/w{number}"),
            node: &node,
            start,
            prev_kv: rng.random_bool(0.5),
            trust_progress: true,
        };
        let (watch, _) = watch_once(plan, &recorder, |_| Instant::now() > lasts, |_| {}).await;
        watches.push(watch);
    }
    watches
}

/// A member's whole event history from `from` to `to`, read after healing.
pub async fn replay(
    url: &str,
    node: &str,
    from: i64,
    to: i64,
    recorder: &Recorder,
) -> Vec<WatchEvent> {
    let mut events: Vec<WatchEvent> = Vec::new();
    let mut next = from;
    let deadline = Instant::now() + FINISH_TIMEOUT;
    while next <= to && Instant::now() < deadline {
        let plan = WatchPlan {
            url,
            watcher: format!("{node}/replay"),
            node,
            start: next,
            prev_kv: true,
            trust_progress: false,
        };
        let stop = |confirmed: i64| confirmed >= to || Instant::now() > deadline;
        let (watch, confirmed) = watch_once(plan, recorder, stop, |_| {}).await;
        for response in watch.responses {
            events.extend(response.events.into_iter().filter(|e| e.mod_revision <= to));
        }
        match confirmed {
            Some(confirmed) => next = next.max(confirmed + 1),
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    events
}
