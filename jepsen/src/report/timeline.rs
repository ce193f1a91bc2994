//! The timeline: one column per process (the nemesis first), one box per
//! operation from its invocation to its completion, coloured by outcome,
//! with the details in a tooltip. Plain HTML and CSS.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write;

use serde_json::Value;

use super::{NANOS_PER_MILLI, NANOS_PER_SECOND, esc};
use crate::history::{Op, OpType, Pair, Process};

/// Histories with more client ops than this show only a window of time.
const FULL_TIMELINE_MAX_OPS: usize = 2_000;
const CONTEXT_NS: u64 = 5_000_000_000;
/// The window when there is no anomaly to centre on.
const DEFAULT_WINDOW_NS: u64 = 10_000_000_000;
const MAX_HEIGHT_PX: f64 = 8_000.0;
const MAX_BOXES: usize = 10_000;
const COLUMN_PX: usize = 40;
const GUTTER_PX: usize = 50;
const HEAD_PX: f64 = 20.0;
const TOOLTIP_VALUE_CHARS: usize = 200;

/// The time range the timeline covers, in nanoseconds since the start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Window {
    pub from: u64,
    pub to: u64,
}

pub(super) struct Timeline {
    pub html: String,
    /// The completion indexes of the client ops drawn (their box ids).
    pub shown: HashSet<u64>,
}

/// The whole history when it is small; else ±5 s around the first anomaly's
/// ops (at most 10 s of them), or the first 10 s when there is no anomaly.
pub(super) fn window(history: &[Op], client_ops: usize, anomaly_ops: Option<&[u64]>) -> Window {
    let end = history.last().map_or(0, |op| op.time);
    if client_ops <= FULL_TIMELINE_MAX_OPS {
        return Window { from: 0, to: end };
    }
    let times: Vec<u64> = anomaly_ops
        .unwrap_or_default()
        .iter()
        .filter_map(|index| {
            let position = history.binary_search_by_key(index, |op| op.index).ok()?;
            Some(history[position].time)
        })
        .collect();
    match (times.iter().min(), times.iter().max()) {
        (Some(&first), Some(&last)) => Window {
            from: first.saturating_sub(CONTEXT_NS),
            to: (last.min(first + 2 * CONTEXT_NS) + CONTEXT_NS).min(end),
        },
        _ => Window {
            from: 0,
            to: DEFAULT_WINDOW_NS.min(end),
        },
    }
}

fn class_of(kind: OpType) -> &'static str {
    match kind {
        OpType::Invoke => "invoke",
        OpType::Ok => "ok",
        OpType::Fail => "fail",
        OpType::Info => "info",
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(TOOLTIP_VALUE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

fn tooltip(invoke: &Op, complete: &Op, outcome: OpType) -> String {
    let mut text = format!(
        "process {} {} {}",
        invoke.process,
        invoke.f,
        short(&invoke.value)
    );
    if std::ptr::eq(invoke, complete) {
        text.push_str("\nnever completed (counts as info)");
    } else {
        let latency_ms = (complete.time - invoke.time) as f64 / NANOS_PER_MILLI;
        let _ = write!(
            text,
            "\n{} {} after {latency_ms:.2} ms",
            class_of(outcome),
            short(&complete.value)
        );
    }
    if let Some(error) = &complete.error {
        let _ = write!(text, "\nerror: {error}");
    }
    if let Some(node) = &invoke.node {
        let _ = write!(text, "\nnode: {node}");
    }
    let _ = write!(text, "\nindex {}–{}", invoke.index, complete.index);
    text
}

/// Nemesis actions: each invocation with the next completion of the same f.
fn nemesis_pairs(history: &[Op]) -> Vec<(&Op, &Op)> {
    let mut open: Vec<&Op> = Vec::new();
    let mut result = Vec::new();
    for op in history.iter().filter(|op| op.process == Process::Nemesis) {
        if op.is_invoke() {
            open.push(op);
        } else if let Some(at) = open.iter().position(|invoke| invoke.f == op.f) {
            result.push((open.remove(at), op));
        }
    }
    result.extend(open.into_iter().map(|invoke| (invoke, invoke)));
    result
}

pub(super) fn render(
    history: &[Op],
    pairs: &[Pair],
    highlighted: &HashSet<u64>,
    window: Window,
) -> Timeline {
    let span_ns = (window.to - window.from).max(1);
    let px_per_ns = (1.0 / NANOS_PER_MILLI).min(MAX_HEIGHT_PX / span_ns as f64);
    let y = |time: u64| HEAD_PX + time.saturating_sub(window.from) as f64 * px_per_ns;
    let visible = |start: u64, end: u64| start <= window.to && end >= window.from;
    let end_of = |invoke: &Op, complete: &Op| {
        if std::ptr::eq(invoke, complete) {
            window.to
        } else {
            complete.time
        }
    };

    let nemesis = nemesis_pairs(history);
    let mut columns: Vec<Process> = Vec::new();
    if !nemesis.is_empty() {
        columns.push(Process::Nemesis);
    }
    columns.extend(
        pairs
            .iter()
            .map(|p| p.invoke.process)
            .collect::<BTreeSet<_>>(),
    );
    let column_of: HashMap<Process, usize> =
        columns.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    let left =
        |process: Process| GUTTER_PX + COLUMN_PX * column_of.get(&process).copied().unwrap_or(0);

    let mut html = String::new();
    let height = y(window.to) + 10.0;
    let _ = write!(
        html,
        "<p>From {:.1} s to {:.1} s; hover a box for its details.</p>\n\
         <div class=\"timeline\"><div style=\"position:relative;height:{height:.0}px;width:{}px\">\n\
         <div class=\"tl-head\">",
        window.from as f64 / NANOS_PER_SECOND,
        window.to as f64 / NANOS_PER_SECOND,
        GUTTER_PX + COLUMN_PX * columns.len()
    );
    for &process in &columns {
        let _ = write!(
            html,
            "<span style=\"position:absolute;left:{}px\">{}</span>",
            left(process),
            if process == Process::Nemesis {
                "nem".to_string()
            } else {
                process.to_string()
            }
        );
    }
    html.push_str("</div>\n");
    let tick_ns = ((40.0 / px_per_ns / NANOS_PER_SECOND).ceil() as u64).max(1) * 1_000_000_000;
    let mut tick = window.from.div_ceil(tick_ns) * tick_ns;
    while tick <= window.to {
        let _ = writeln!(
            html,
            "<div class=\"tl-tick\" style=\"top:{:.0}px\">{} s</div>",
            y(tick),
            tick / 1_000_000_000
        );
        tick += tick_ns;
    }

    let mut boxes = 0;
    for (invoke, complete) in nemesis {
        let end = end_of(invoke, complete);
        if visible(invoke.time, end) && boxes < MAX_BOXES {
            boxes += 1;
            let _ = writeln!(
                html,
                "<div class=\"op info\" style=\"left:{}px;top:{:.1}px;height:{:.1}px\" title=\"{}\"></div>",
                left(Process::Nemesis),
                y(invoke.time),
                y(end) - y(invoke.time),
                esc(&format!(
                    "{}: {}",
                    invoke.f,
                    super::describe(&complete.value, "")
                ))
            );
        }
    }
    let mut shown = HashSet::new();
    for pair in pairs {
        let end = end_of(pair.invoke, pair.complete);
        if !visible(pair.invoke.time, end) {
            continue;
        }
        if boxes == MAX_BOXES {
            let _ = writeln!(
                html,
                "<p>Only the first {MAX_BOXES} operations are drawn.</p>"
            );
            break;
        }
        boxes += 1;
        let outcome = pair.outcome();
        let marked =
            highlighted.contains(&pair.invoke.index) || highlighted.contains(&pair.complete.index);
        shown.insert(pair.complete.index);
        let _ = writeln!(
            html,
            "<div class=\"op {}{}\" id=\"op-{}\" style=\"left:{}px;top:{:.1}px;height:{:.1}px\" title=\"{}\"></div>",
            // An op never completed keeps the invocation's colour.
            class_of(pair.complete.kind),
            if marked { " hl" } else { "" },
            pair.complete.index,
            left(pair.invoke.process),
            y(pair.invoke.time),
            y(end) - y(pair.invoke.time),
            esc(&tooltip(pair.invoke, pair.complete, outcome))
        );
    }
    html.push_str("</div></div>\n");
    Timeline { html, shown }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(index: u64, time_s: u64, kind: OpType) -> Op {
        Op {
            index,
            time: time_s * 1_000_000_000,
            kind,
            process: Process::Client(0),
            f: "read".into(),
            value: Value::Null,
            error: None,
            node: None,
        }
    }

    #[test]
    fn a_large_history_is_windowed_around_the_first_anomaly() {
        let history: Vec<Op> = (0..60).map(|i| op(i, i, OpType::Ok)).collect();
        let around = window(&history, FULL_TIMELINE_MAX_OPS + 1, Some(&[30, 32]));
        assert_eq!(
            around,
            Window {
                from: 25_000_000_000,
                to: 37_000_000_000
            }
        );
        let first = window(&history, FULL_TIMELINE_MAX_OPS + 1, None);
        assert_eq!(
            first,
            Window {
                from: 0,
                to: 10_000_000_000
            }
        );
        let whole = window(&history, 10, Some(&[30]));
        assert_eq!(
            whole,
            Window {
                from: 0,
                to: 59_000_000_000
            }
        );
    }

    #[test]
    fn only_ops_inside_the_window_are_drawn_and_anomalies_are_marked() {
        let history = vec![
            op(0, 0, OpType::Invoke),
            op(1, 1, OpType::Ok),
            op(2, 20, OpType::Invoke),
            op(3, 21, OpType::Fail),
        ];
        let pairs = crate::history::pairs(&history);
        let highlighted = HashSet::from([3]);
        let timeline = render(
            &history,
            &pairs,
            &highlighted,
            Window {
                from: 15_000_000_000,
                to: 25_000_000_000,
            },
        );
        assert_eq!(timeline.shown, HashSet::from([3]));
        assert!(timeline.html.contains("class=\"op fail hl\" id=\"op-3\""));
        assert!(!timeline.html.contains("id=\"op-1\""));
    }
}
