//! Watch validation: etcd's robustness rules for watch streams, checked
//! against a replay, the committed sequence of events that every member
//! agrees on after healing.
//!
//! The runner records every watch stream it opens (`watches.json`, a list of
//! [`RecordedWatch`]); a reconnect or resume is a new recorded watch with its
//! own start revision. The replay is built by [`merge_replays`] from each
//! member's full event history read after the faults healed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Map, json};

use super::{Anomaly, CheckResult, Verdict};

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub key: String,
    pub value: String,
    pub mod_revision: i64,
    pub create_revision: i64,
    pub version: i64,
    /// Present iff the watch asked for `prev_kv` and etcd returned one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_value: Option<String>,
}

impl WatchEvent {
    /// The same committed change: every field but `prev_value`, which depends
    /// on the request rather than on the change.
    fn same_change(&self, other: &WatchEvent) -> bool {
        self.kind == other.kind
            && self.key == other.key
            && self.value == other.value
            && self.mod_revision == other.mod_revision
            && self.create_revision == other.create_revision
            && self.version == other.version
    }
}

impl fmt::Display for WatchEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            EventKind::Put => write!(
                f,
                "put {:?}={:?} at revision {} (created at {}, version {})",
                self.key, self.value, self.mod_revision, self.create_revision, self.version
            )?,
            EventKind::Delete => {
                write!(f, "delete {:?} at revision {}", self.key, self.mod_revision)?
            }
        }
        match &self.prev_value {
            Some(prev) => write!(f, " with previous value {prev:?}"),
            None => Ok(()),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct WatchRequestSpec {
    pub key: String,
    /// `""` watches the single key, `"\0"` every key from `key` on, anything
    /// else the range `[key, range_end)` as etcd defines it.
    pub range_end: String,
    /// 0 means "from now".
    pub start_revision: i64,
    pub prev_kv: bool,
}

impl WatchRequestSpec {
    pub fn matches(&self, key: &str) -> bool {
        match self.range_end.as_str() {
            "" => key == self.key,
            "\0" => key >= self.key.as_str(),
            end => key >= self.key.as_str() && key < end,
        }
    }
}

impl fmt::Display for WatchRequestSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.range_end.as_str() {
            "" => write!(f, "key {:?}", self.key)?,
            "\0" => write!(f, "keys from {:?}", self.key)?,
            end => write!(f, "keys [{:?}, {:?})", self.key, end)?,
        }
        write!(f, " from start revision {}", self.start_revision)?;
        if self.prev_kv {
            f.write_str(" with prev_kv")?;
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct WatchResponseRecord {
    /// Nanoseconds since the run started.
    pub time: u64,
    pub header_revision: i64,
    /// An empty response the client asked for or got as progress.
    pub progress_notify: bool,
    pub compact_revision: i64,
    pub canceled: bool,
    pub events: Vec<WatchEvent>,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct RecordedWatch {
    pub watcher: String,
    pub node: String,
    pub request: WatchRequestSpec,
    pub responses: Vec<WatchResponseRecord>,
}

/// Merges each member's full event history (read after healing, sorted by
/// revision) into the replay. Wherever two members' histories overlap in
/// revisions they must hold identical events at each revision; the replay is
/// their union. The first disagreement is a "replay-divergence".
pub fn merge_replays(per_member: &[(String, Vec<WatchEvent>)]) -> Result<Vec<WatchEvent>, Anomaly> {
    let divergence = |explanation: String| Anomaly {
        kind: "replay-divergence".into(),
        explanation,
        ops: Vec::new(),
    };
    let mut grouped: Vec<(&str, BTreeMap<i64, Vec<&WatchEvent>>)> = Vec::new();
    for (member, events) in per_member {
        if let Some(step) = events
            .windows(2)
            .find(|w| w[1].mod_revision < w[0].mod_revision)
        {
            return Err(divergence(format!(
                "Member {member}'s event history goes back from revision {} to {}: {} came after {}.",
                step[0].mod_revision, step[1].mod_revision, step[1], step[0]
            )));
        }
        let mut by_revision: BTreeMap<i64, Vec<&WatchEvent>> = BTreeMap::new();
        for event in events {
            by_revision
                .entry(event.mod_revision)
                .or_default()
                .push(event);
        }
        grouped.push((member, by_revision));
    }
    for (position, (member, history)) in grouped.iter().enumerate() {
        for (other_member, other) in &grouped[position + 1..] {
            if let Some((revision, mine, theirs)) = first_disagreement(history, other) {
                return Err(divergence(format!(
                    "Members {member} and {other_member} disagree at revision {revision}: \
                     {member} has {}, {other_member} has {}.",
                    list_events(&mine),
                    list_events(&theirs)
                )));
            }
        }
    }
    // The longest history supplies every revision it has, so its prev values win.
    grouped.sort_by_key(|(_, history)| {
        std::cmp::Reverse(history.values().map(Vec::len).sum::<usize>())
    });
    let mut merged: BTreeMap<i64, &Vec<&WatchEvent>> = BTreeMap::new();
    for (_, history) in &grouped {
        for (revision, events) in history {
            merged.entry(*revision).or_insert(events);
        }
    }
    Ok(merged
        .into_values()
        .flatten()
        .map(|event| (*event).clone())
        .collect())
}

type EventsAt<'a> = BTreeMap<i64, Vec<&'a WatchEvent>>;

/// The first revision, within the range both histories cover, at which they
/// hold different events.
fn first_disagreement<'a>(
    mine: &EventsAt<'a>,
    theirs: &EventsAt<'a>,
) -> Option<(i64, Vec<&'a WatchEvent>, Vec<&'a WatchEvent>)> {
    let span = |h: &EventsAt| Some((*h.keys().next()?, *h.keys().next_back()?));
    let ((my_first, my_last), (their_first, their_last)) = (span(mine)?, span(theirs)?);
    let (low, high) = (my_first.max(their_first), my_last.min(their_last));
    if low > high {
        return None;
    }
    let revisions: std::collections::BTreeSet<i64> = mine
        .range(low..=high)
        .chain(theirs.range(low..=high))
        .map(|(r, _)| *r)
        .collect();
    revisions.into_iter().find_map(|revision| {
        let (a, b) = (mine.get(&revision).cloned(), theirs.get(&revision).cloned());
        let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
        let agree = a.len() == b.len()
            && a.iter().zip(&b).all(|(x, y)| {
                x.same_change(y)
                    && (x.prev_value.is_none()
                        || y.prev_value.is_none()
                        || x.prev_value == y.prev_value)
            });
        (!agree).then_some((revision, a, b))
    })
}

fn list_events(events: &[&WatchEvent]) -> String {
    if events.is_empty() {
        return "no event".into();
    }
    events
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks every recorded watch against the replay. `written_values` holds
/// every value some invoked op tried to write; `compacted_below` is the
/// highest revision the run compacted at (0 if none): at and below it the
/// replay may lack events and a watch may be canceled for compaction.
pub fn check_watches(
    watches: &[RecordedWatch],
    replay: &[WatchEvent],
    written_values: &HashSet<String>,
    compacted_below: i64,
) -> CheckResult {
    let started = Instant::now();
    let replay = Replay::new(replay, compacted_below);
    let mut anomalies = Vec::new();
    let phantoms: Vec<&&WatchEvent> = replay
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Put && !written_values.contains(&e.value))
        .collect();
    if let Some(first) = phantoms.first() {
        anomalies.push(Anomaly {
            kind: "watch-phantom".into(),
            explanation: format!(
                "The replay (the members' agreed history) holds {} event(s) whose value no op \
                 wrote; the first: {first}.",
                phantoms.len()
            ),
            ops: Vec::new(),
        });
    }
    for watch in watches {
        anomalies.extend(check_watch(watch, &replay, written_values));
    }

    let responses = watches.iter().flat_map(|w| &w.responses);
    let mut stats = Map::new();
    stats.insert("watches".into(), json!(watches.len()));
    stats.insert("responses".into(), json!(responses.clone().count()));
    stats.insert(
        "events_received".into(),
        json!(responses.clone().map(|r| r.events.len()).sum::<usize>()),
    );
    stats.insert(
        "progress_notifies".into(),
        json!(responses.clone().filter(|r| r.progress_notify).count()),
    );
    stats.insert(
        "compaction_cancels".into(),
        json!(
            responses
                .filter(|r| r.canceled && r.compact_revision > 0)
                .count()
        ),
    );
    stats.insert("replay_events".into(), json!(replay.events.len()));
    stats.insert("compacted_below".into(), json!(compacted_below));
    let verdict = if !anomalies.is_empty() {
        Verdict::Invalid
    } else if watches.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Valid
    };
    CheckResult {
        checker: "watch".into(),
        verdict,
        anomalies,
        stats,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

/// The replay, indexed for the questions the rules ask.
struct Replay<'a> {
    /// Sorted by revision.
    events: Vec<&'a WatchEvent>,
    by_key: HashMap<&'a str, Vec<&'a WatchEvent>>,
    compacted_below: i64,
}

#[derive(Clone, Copy)]
enum KeyState<'a> {
    Absent,
    Present(&'a WatchEvent),
    /// Compaction may have removed the event that set it.
    Unknown,
}

impl<'a> Replay<'a> {
    fn new(events: &'a [WatchEvent], compacted_below: i64) -> Self {
        let mut events: Vec<&WatchEvent> = events.iter().collect();
        events.sort_by_key(|e| e.mod_revision);
        let mut by_key: HashMap<&str, Vec<&WatchEvent>> = HashMap::new();
        for event in &events {
            by_key.entry(event.key.as_str()).or_default().push(event);
        }
        Replay {
            events,
            by_key,
            compacted_below,
        }
    }

    /// Whether compaction may have taken this revision's events out of the replay.
    fn may_lack(&self, revision: i64) -> bool {
        revision <= self.compacted_below
    }

    /// The key's state just before `revision`, that is at `revision - 1`.
    fn state_before(&self, key: &str, revision: i64) -> KeyState<'a> {
        let history = self.by_key.get(key).map_or(&[][..], Vec::as_slice);
        let earlier = history.partition_point(|e| e.mod_revision < revision);
        match earlier.checked_sub(1).map(|last| history[last]) {
            Some(event) if event.kind == EventKind::Put => KeyState::Present(event),
            Some(_) => KeyState::Absent,
            None if self.compacted_below > 0 => KeyState::Unknown,
            None => KeyState::Absent,
        }
    }

    /// The replay's events within `[from, to]` that the request matches.
    fn matching<'r>(
        &'r self,
        request: &'r WatchRequestSpec,
        from: i64,
        to: i64,
    ) -> impl Iterator<Item = &'a WatchEvent> + 'r {
        let start = self.events.partition_point(|e| e.mod_revision < from);
        self.events[start..]
            .iter()
            .take_while(move |e| e.mod_revision <= to)
            .filter(move |e| request.matches(&e.key))
            .copied()
    }
}

/// Per rule, the first violation found in one watch and how many there were.
#[derive(Default)]
struct Findings(BTreeMap<&'static str, (String, usize)>);

impl Findings {
    fn note(&mut self, kind: &'static str, detail: impl FnOnce() -> String) {
        self.0.entry(kind).or_insert_with(|| (detail(), 0)).1 += 1;
    }
}

fn check_watch(
    watch: &RecordedWatch,
    replay: &Replay,
    written_values: &HashSet<String>,
) -> Vec<Anomaly> {
    let request = &watch.request;
    let mut found = Findings::default();
    let mut last_event_revision: Option<i64> = None;
    let mut last_response_revision: Option<i64> = None;
    let mut last_progress: Option<i64> = None;
    let mut last_header: Option<i64> = None;
    let mut seen: HashSet<(i64, &str)> = HashSet::new();
    for response in &watch.responses {
        let header = response.header_revision;
        // A header revision of 0 means the response carried no header.
        if header != 0 {
            if let Some(previous) = last_header.filter(|&previous| header < previous) {
                found.note("watch-header-revision", || {
                    format!("the header revision went back from {previous} to {header}")
                });
            }
            if let Some(event) = response.events.iter().find(|e| e.mod_revision > header) {
                found.note("watch-header-revision", || {
                    format!("a response with header revision {header} carried {event}")
                });
            }
            last_header = Some(header);
        }
        if let (Some(first), Some(previous)) = (response.events.first(), last_response_revision)
            && first.mod_revision == previous
        {
            found.note("watch-atomic", || {
                format!("revision {previous} was split across two responses; the second began with {first}")
            });
        }
        for event in &response.events {
            let revision = event.mod_revision;
            if !request.matches(&event.key) {
                found.note("watch-filter", || {
                    format!("received {event}, which the request does not match")
                });
            }
            if let Some(last) = last_event_revision.filter(|&last| revision < last) {
                found.note("watch-ordered", || {
                    format!("received {event} after an event at revision {last}")
                });
            }
            last_event_revision = Some(revision);
            if !seen.insert((revision, event.key.as_str())) {
                found.note("watch-unique", || format!("received {event} twice"));
            }
            if let Some(progress) = last_progress.filter(|&progress| revision <= progress) {
                found.note("watch-bookmarkable", || {
                    format!("received {event} after a progress notification at revision {progress}")
                });
            }
            if event.kind == EventKind::Put && !written_values.contains(&event.value) {
                found.note("watch-phantom", || {
                    format!("received {event}, whose value no op wrote")
                });
            }
            check_against_state(event, request, replay, &mut found);
        }
        last_response_revision = response
            .events
            .last()
            .map(|e| e.mod_revision)
            .or(last_response_revision);
        if response.progress_notify {
            if let Some(previous) = last_progress.filter(|&previous| header < previous) {
                found.note("watch-bookmarkable", || {
                    format!(
                        "a progress notification went back from revision {previous} to {header}"
                    )
                });
            }
            if let Some(last) = last_event_revision.filter(|&last| header < last) {
                found.note("watch-bookmarkable", || {
                    format!("a progress notification at revision {header} followed an event at revision {last}")
                });
            }
            last_progress = Some(header);
        }
    }
    check_resumable(watch, replay, &mut found);
    check_reliable(watch, replay, &mut found);
    found
        .0
        .into_iter()
        .map(|(kind, (detail, count))| {
            let more = match count {
                1 => String::new(),
                n => format!(" ({} more like it in this watch)", n - 1),
            };
            Anomaly {
                kind: kind.into(),
                explanation: format!(
                    "Watcher {} on {}, watching {}: {detail}{more}.",
                    watch.watcher, watch.node, watch.request
                ),
                ops: Vec::new(),
            }
        })
        .collect()
}

/// IsCreate and PrevKV: the event against the key's replay state just before it.
fn check_against_state(
    event: &WatchEvent,
    request: &WatchRequestSpec,
    replay: &Replay,
    found: &mut Findings,
) {
    let revision = event.mod_revision;
    let state = replay.state_before(&event.key, revision);
    let before = || match &state {
        KeyState::Present(put) => format!(
            "the replay has {:?}={:?} (from revision {})",
            put.key, put.value, put.mod_revision
        ),
        KeyState::Absent => format!("the replay has no key {:?}", event.key),
        KeyState::Unknown => "the replay cannot tell".into(),
    };
    let existed = match state {
        KeyState::Present(_) => Some(true),
        KeyState::Absent => Some(false),
        KeyState::Unknown => None,
    };
    match (event.kind, existed) {
        (EventKind::Put, Some(existed)) if existed == (event.create_revision == revision) => {
            let claim = if existed { "creates" } else { "updates" };
            found.note("watch-is-create", || {
                format!(
                    "{event} {claim} the key, but at revision {} {}",
                    revision - 1,
                    before()
                )
            });
        }
        (EventKind::Delete, Some(false)) => found.note("watch-is-create", || {
            format!(
                "{event} deletes a key that did not exist at revision {}",
                revision - 1
            )
        }),
        _ => {}
    }
    let expected_prev = match state {
        KeyState::Present(put) => Some(put.value.as_str()),
        KeyState::Absent => None,
        KeyState::Unknown => return,
    };
    match (&event.prev_value, request.prev_kv) {
        (Some(_), false) => found.note("watch-prev-kv", || {
            format!("{event} carries a previous value though prev_kv was not requested")
        }),
        (Some(prev), true) if expected_prev != Some(prev.as_str()) => {
            found.note("watch-prev-kv", || {
                format!(
                    "{event} has the wrong previous value: at revision {} {}",
                    revision - 1,
                    before()
                )
            })
        }
        (None, true) if expected_prev.is_some() && !replay.may_lack(revision - 1) => {
            found.note("watch-prev-kv", || {
                format!(
                    "{event} lacks its previous value: at revision {} {}",
                    revision - 1,
                    before()
                )
            })
        }
        _ => {}
    }
}

type EventsById<'a> = HashMap<(i64, &'a str), &'a WatchEvent>;

/// The events of `these` that `those` lacks or holds differently, by revision.
fn not_in<'a>(these: &EventsById<'a>, those: &EventsById<'a>) -> Vec<&'a WatchEvent> {
    let mut absent: Vec<&WatchEvent> = these
        .iter()
        .filter(|(id, event)| those.get(id).is_none_or(|other| !other.same_change(event)))
        .map(|(_, event)| *event)
        .collect();
    absent.sort_by(|a, b| (a.mod_revision, &a.key).cmp(&(b.mod_revision, &b.key)));
    absent
}

fn events_of(watch: &RecordedWatch) -> impl Iterator<Item = &WatchEvent> {
    watch.responses.iter().flat_map(|r| &r.events)
}

fn progress_revisions(watch: &RecordedWatch) -> impl Iterator<Item = i64> + '_ {
    watch
        .responses
        .iter()
        .filter(|r| r.progress_notify)
        .map(|r| r.header_revision)
}

/// Resumable: a watch from a past revision starts with the first matching
/// event at or after it, unless that revision was compacted.
fn check_resumable(watch: &RecordedWatch, replay: &Replay, found: &mut Findings) {
    let start = watch.request.start_revision;
    if start == 0 {
        return;
    }
    let compaction_cancel = watch
        .responses
        .iter()
        .find(|r| r.canceled && r.compact_revision > 0);
    if let Some(cancel) = compaction_cancel {
        if !replay.may_lack(start) {
            found.note("watch-resumable", || {
                format!(
                    "the watch was canceled as compacted at revision {}, but the run compacted only up to revision {}",
                    cancel.compact_revision, replay.compacted_below
                )
            });
        }
        return;
    }
    if replay.may_lack(start) {
        return;
    }
    let Some(first) = events_of(watch).next() else {
        return;
    };
    if let Some(expected) = replay.matching(&watch.request, start, i64::MAX).next()
        && !expected.same_change(first)
    {
        found.note("watch-resumable", || {
            format!("the first event was {first}, but the replay's first match is {expected}")
        });
    }
}

/// Reliable: within the revisions the watch covered, it received exactly the
/// replay's matching events.
fn check_reliable(watch: &RecordedWatch, replay: &Replay, found: &mut Findings) {
    let request = &watch.request;
    let first_event = events_of(watch).next().map(|e| e.mod_revision);
    let first_progress = progress_revisions(watch).next().map(|r| r + 1);
    let first_expected = match request.start_revision {
        0 => match first_event.into_iter().chain(first_progress).min() {
            Some(revision) => revision,
            None => return,
        },
        start => start,
    };
    let last_event = events_of(watch).map(|e| e.mod_revision).max();
    let Some(last) = last_event
        .into_iter()
        .chain(progress_revisions(watch))
        .max()
    else {
        return;
    };
    let from = first_expected.max(replay.compacted_below + 1);
    if from > last {
        return;
    }
    let expected: EventsById = replay
        .matching(request, from, last)
        .map(|e| ((e.mod_revision, e.key.as_str()), e))
        .collect();
    let received: EventsById = events_of(watch)
        .filter(|e| request.matches(&e.key) && (from..=last).contains(&e.mod_revision))
        .map(|e| ((e.mod_revision, e.key.as_str()), e))
        .collect();
    let (missing, extra) = (not_in(&expected, &received), not_in(&received, &expected));
    if missing.is_empty() && extra.is_empty() {
        return;
    }
    let first_of = |events: &[&WatchEvent]| events.first().map_or("none".into(), |e| e.to_string());
    found.note("watch-reliable", || {
        format!(
            "within revisions {from}..={last} the replay has {} matching event(s) and the watch received {}; \
             {} missing (first: {}), {} extra or different (first: {})",
            expected.len(),
            received.len(),
            missing.len(),
            first_of(&missing),
            extra.len(),
            first_of(&extra)
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, revision: i64, created: i64, version: i64) -> WatchEvent {
        WatchEvent {
            kind: EventKind::Put,
            key: key.into(),
            value: value.into(),
            mod_revision: revision,
            create_revision: created,
            version,
            prev_value: None,
        }
    }

    fn delete(key: &str, revision: i64) -> WatchEvent {
        WatchEvent {
            kind: EventKind::Delete,
            key: key.into(),
            value: String::new(),
            mod_revision: revision,
            create_revision: 0,
            version: 0,
            prev_value: None,
        }
    }

    fn with_prev(mut event: WatchEvent, prev: &str) -> WatchEvent {
        event.prev_value = Some(prev.into());
        event
    }

    /// Revision 2 creates a, 3 creates b, 4 updates a, 5 deletes b, and one
    /// transaction at 6 updates a and creates c.
    fn replay() -> Vec<WatchEvent> {
        vec![
            put("a", "1", 2, 2, 1),
            put("b", "2", 3, 3, 1),
            put("a", "3", 4, 2, 2),
            delete("b", 5),
            put("a", "4", 6, 2, 3),
            put("c", "5", 6, 6, 1),
        ]
    }

    /// The replay's events as a prev_kv watch sees them.
    fn with_prevs() -> Vec<WatchEvent> {
        let prevs = [None, None, Some("1"), Some("2"), Some("3"), None];
        replay()
            .into_iter()
            .zip(prevs)
            .map(|(event, prev)| match prev {
                Some(prev) => with_prev(event, prev),
                None => event,
            })
            .collect()
    }

    fn written() -> HashSet<String> {
        ["1", "2", "3", "4", "5"]
            .into_iter()
            .map(String::from)
            .collect()
    }

    fn events(header: i64, events: &[WatchEvent]) -> WatchResponseRecord {
        WatchResponseRecord {
            time: 0,
            header_revision: header,
            progress_notify: false,
            compact_revision: 0,
            canceled: false,
            events: events.to_vec(),
        }
    }

    fn progress(revision: i64) -> WatchResponseRecord {
        WatchResponseRecord {
            progress_notify: true,
            ..events(revision, &[])
        }
    }

    fn watch(range_end: &str, start: i64, responses: Vec<WatchResponseRecord>) -> RecordedWatch {
        RecordedWatch {
            watcher: "w1".into(),
            node: "n1".into(),
            request: WatchRequestSpec {
                key: "a".into(),
                range_end: range_end.into(),
                start_revision: start,
                prev_kv: true,
            },
            responses,
        }
    }

    /// A prev_kv watch on every key from revision 2 that got the replay in
    /// three responses and a progress notification.
    fn faithful() -> RecordedWatch {
        let e = with_prevs();
        watch(
            "\0",
            2,
            vec![
                events(3, &e[0..2]),
                events(5, &e[2..4]),
                events(6, &e[4..6]),
                progress(6),
            ],
        )
    }

    fn kinds_found(
        watches: &[RecordedWatch],
        replay: &[WatchEvent],
        compacted_below: i64,
    ) -> Vec<String> {
        let result = check_watches(watches, replay, &written(), compacted_below);
        let mut kinds: Vec<String> = result.anomalies.iter().map(|a| a.kind.clone()).collect();
        assert_eq!(
            result.verdict == Verdict::Valid,
            kinds.is_empty(),
            "{result:?}"
        );
        kinds.dedup();
        kinds
    }

    /// Changes one response's events of the faithful watch.
    fn faithful_with(response: usize, edit: impl FnOnce(&mut Vec<WatchEvent>)) -> RecordedWatch {
        let mut recorded = faithful();
        edit(&mut recorded.responses[response].events);
        recorded
    }

    #[test]
    fn faithful_watches_pass_every_rule() {
        let result = check_watches(&[faithful()], &replay(), &written(), 0);
        assert_eq!(result.verdict, Verdict::Valid, "{:?}", result.anomalies);
        assert_eq!(result.stats["events_received"], json!(6));
        let e = with_prevs();
        let from_now = watch(
            "\0",
            0,
            vec![progress(3), events(5, &e[2..4]), events(6, &e[4..6])],
        );
        let single_key = watch(
            "",
            3,
            vec![events(4, &e[2..3]), progress(5), events(6, &e[4..5])],
        );
        assert!(kinds_found(&[from_now, single_key], &replay(), 0).is_empty());
        assert_eq!(
            check_watches(&[], &replay(), &written(), 0).verdict,
            Verdict::Unknown
        );
    }

    #[test]
    fn filter_fires_on_an_event_outside_the_range() {
        let e = with_prevs();
        let single_key = watch(
            "",
            2,
            vec![
                events(3, &e[0..2]),
                events(4, &e[2..3]),
                events(6, &e[4..5]),
            ],
        );
        assert_eq!(kinds_found(&[single_key], &replay(), 0), ["watch-filter"]);
    }

    #[test]
    fn ordered_fires_when_a_revision_goes_back() {
        let e = with_prevs();
        let shuffled = watch(
            "\0",
            2,
            vec![
                events(4, &[e[0].clone(), e[2].clone()]),
                events(5, &[e[1].clone(), e[3].clone()]),
            ],
        );
        assert_eq!(kinds_found(&[shuffled], &replay(), 0), ["watch-ordered"]);
    }

    #[test]
    fn unique_fires_on_a_repeated_event() {
        let repeated = faithful_with(0, |events| events.push(events[1].clone()));
        assert_eq!(kinds_found(&[repeated], &replay(), 0), ["watch-unique"]);
    }

    #[test]
    fn atomic_fires_on_a_revision_split_across_responses() {
        let mut split = faithful();
        let c = split.responses[2].events.pop().unwrap();
        split.responses.insert(3, events(6, &[c]));
        assert_eq!(kinds_found(&[split], &replay(), 0), ["watch-atomic"]);
    }

    #[test]
    fn bookmarkable_fires_on_an_event_at_or_below_a_progress_notification() {
        let mut early_progress = faithful();
        early_progress.responses.insert(1, progress(4));
        assert_eq!(
            kinds_found(&[early_progress], &replay(), 0),
            ["watch-bookmarkable"]
        );
        // A progress notification below the last event also takes the header
        // revision back, since the events' response had a header at least as high.
        let mut lagging_progress = faithful();
        lagging_progress.responses.push(progress(5));
        assert_eq!(
            kinds_found(&[lagging_progress], &replay(), 0),
            ["watch-bookmarkable", "watch-header-revision"]
        );
    }

    #[test]
    fn resumable_fires_on_a_wrong_first_event_or_a_compaction_that_did_not_happen() {
        // Starting at 3, the watch skipped b's creation: Reliable sees the gap too.
        let e = with_prevs();
        let skipped = watch("\0", 3, vec![events(5, &e[2..4]), events(6, &e[4..6])]);
        assert_eq!(
            kinds_found(&[skipped], &replay(), 0),
            ["watch-reliable", "watch-resumable"]
        );
        let canceled = watch(
            "\0",
            3,
            vec![WatchResponseRecord {
                canceled: true,
                compact_revision: 4,
                ..events(6, &[])
            }],
        );
        assert_eq!(
            kinds_found(std::slice::from_ref(&canceled), &replay(), 0),
            ["watch-resumable"]
        );
        assert!(kinds_found(&[canceled], &replay(), 4).is_empty());
    }

    #[test]
    fn is_create_fires_when_an_update_claims_to_create() {
        let mut bad_replay = replay();
        bad_replay[2].create_revision = 4;
        let recorded = faithful_with(1, |events| events[0].create_revision = 4);
        assert_eq!(
            kinds_found(std::slice::from_ref(&recorded), &bad_replay, 0),
            ["watch-is-create"]
        );
        // After a compaction at 3 the replay lacks a's creation, so it cannot
        // tell whether the put at 4 created a.
        assert!(
            kinds_found(&[recorded], &bad_replay[2..], 3)
                .iter()
                .all(|kind| kind != "watch-is-create")
        );
    }

    #[test]
    fn reliable_fires_on_a_dropped_event() {
        let dropped = faithful_with(1, |events| {
            events.remove(1);
        });
        let result = check_watches(&[dropped], &replay(), &written(), 0);
        let kinds: Vec<&str> = result.anomalies.iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(kinds, ["watch-reliable"]);
        let explanation = &result.anomalies[0].explanation;
        assert!(
            explanation.contains("1 missing (first: delete \"b\" at revision 5"),
            "{explanation}"
        );
        assert!(explanation.contains("0 extra"), "{explanation}");
    }

    #[test]
    fn prev_kv_fires_on_a_wrong_or_missing_previous_value() {
        let wrong = faithful_with(1, |events| events[0].prev_value = Some("2".into()));
        assert_eq!(kinds_found(&[wrong], &replay(), 0), ["watch-prev-kv"]);
        let missing = faithful_with(2, |events| events[0].prev_value = None);
        assert_eq!(
            kinds_found(std::slice::from_ref(&missing), &replay(), 0),
            ["watch-prev-kv"]
        );
        // Allowed when compaction may have taken the previous value.
        assert!(kinds_found(&[missing], &replay(), 5).is_empty());
    }

    #[test]
    fn phantom_fires_on_a_value_nobody_wrote() {
        let mut bad_replay = replay();
        bad_replay[5].value = "99".into();
        let recorded = faithful_with(2, |events| events[1].value = "99".into());
        let result = check_watches(&[recorded], &bad_replay, &written(), 0);
        let kinds: Vec<&str> = result.anomalies.iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["watch-phantom", "watch-phantom"],
            "the replay's and the watch's"
        );
        assert!(result.anomalies[1].explanation.contains("\"c\"=\"99\""));
    }

    #[test]
    fn header_revision_fires_when_it_goes_back() {
        let mut recorded = faithful();
        recorded.responses[0].header_revision = 6;
        assert_eq!(
            kinds_found(&[recorded], &replay(), 0),
            ["watch-header-revision"]
        );
    }

    #[test]
    fn explanations_name_watcher_node_start_and_revision() {
        let wrong = faithful_with(1, |events| events[0].prev_value = Some("2".into()));
        let result = check_watches(&[wrong], &replay(), &written(), 0);
        let explanation = &result.anomalies[0].explanation;
        for part in [
            "Watcher w1 on n1",
            "start revision 2",
            "revision 4",
            "\"a\"=\"1\"",
        ] {
            assert!(
                explanation.contains(part),
                "{part} missing from {explanation}"
            );
        }
    }

    #[test]
    fn members_that_agree_merge_into_the_longest_history() {
        let full = replay();
        let members = vec![
            ("n1".to_string(), full[..4].to_vec()),
            ("n2".to_string(), with_prevs()),
            ("n3".to_string(), Vec::new()),
        ];
        assert_eq!(merge_replays(&members).unwrap(), with_prevs());
        let round_trip: Vec<WatchEvent> =
            serde_json::from_str(&serde_json::to_string(&full).unwrap()).unwrap();
        assert_eq!(round_trip, full);
    }

    #[test]
    fn members_that_disagree_are_a_replay_divergence() {
        let mut other = replay();
        other[2].value = "7".into();
        let members = vec![("n1".to_string(), replay()), ("n2".to_string(), other)];
        let anomaly = merge_replays(&members).unwrap_err();
        assert_eq!(anomaly.kind, "replay-divergence");
        for part in ["n1", "n2", "revision 4", "\"a\"=\"3\"", "\"a\"=\"7\""] {
            assert!(
                anomaly.explanation.contains(part),
                "{part} missing from {}",
                anomaly.explanation
            );
        }
        let mut gap = replay();
        gap.remove(1);
        let members = vec![("n1".to_string(), replay()), ("n2".to_string(), gap)];
        let anomaly = merge_replays(&members).unwrap_err();
        assert!(
            anomaly.explanation.contains("revision 3") && anomaly.explanation.contains("no event")
        );
    }
}
