//! The readable side of a run: `index.html` for one run directory,
//! `compare.html` for two runs (or a matrix of pairs) and a markdown summary
//! for the docs. Every page is one self-contained file: inline CSS and SVG,
//! nothing fetched from elsewhere.

mod compare;
mod plots;
mod timeline;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

use crate::checker::{CheckResult, Verdict};
use crate::history::{self, Op, OpType, Pair, Process};
use crate::results::{
    CONFIG_FILE, HISTORY_FILE, MemberState, REPORT_FILE, RESULTS_FILE, RunConfig, RunResults,
    read_json,
};

pub use compare::{write_compare, write_compare_many};

const NANOS_PER_SECOND: f64 = 1e9;
const NANOS_PER_MILLI: f64 = 1e6;
/// Anomalies explained in full per checker; the rest are in results.json.
const ANOMALIES_SHOWN: usize = 50;

/// One run directory, read back.
struct Run {
    dir: PathBuf,
    config: RunConfig,
    results: RunResults,
    history: Vec<Op>,
}

impl Run {
    fn load(dir: &Path) -> anyhow::Result<Run> {
        Ok(Run {
            dir: dir.to_path_buf(),
            config: read_json(&dir.join(CONFIG_FILE))?,
            results: read_json(&dir.join(RESULTS_FILE))?,
            history: history::read_jsonl(&dir.join(HISTORY_FILE))?,
        })
    }

    /// Seconds from the start of the run to its last recorded op.
    fn span_s(&self) -> f64 {
        self.history.last().map_or(0.0, |op| op.time as f64) / NANOS_PER_SECOND
    }

    fn title(&self) -> String {
        format!(
            "{} {}, {}, {}, seed {}",
            self.config.target,
            self.config.target_version,
            self.config.workload,
            nemeses_label(&self.config),
            self.config.seed
        )
    }
}

/// A stretch of time during which one fault was in force: from a `start-X`
/// completion to the next `stop-X` completion, or to the end of the history.
struct FaultWindow {
    kind: String,
    label: String,
    start: u64,
    end: u64,
    /// Whether a `stop-X` ended it (rather than the end of the history).
    healed: bool,
}

/// An instantaneous nemesis action such as a compaction or a defrag.
struct AdminAction {
    kind: String,
    at: u64,
}

const ADMIN_ACTIONS: [&str; 2] = ["compact", "defrag"];

struct Faults {
    windows: Vec<FaultWindow>,
    actions: Vec<AdminAction>,
}

impl Faults {
    fn from_history(history: &[Op]) -> Faults {
        let end = history.last().map_or(0, |op| op.time);
        let mut open: BTreeMap<&str, (u64, String)> = BTreeMap::new();
        let mut windows = Vec::new();
        let mut actions = Vec::new();
        let completions = history
            .iter()
            .filter(|op| op.process == Process::Nemesis && !op.is_invoke());
        for op in completions {
            if let Some(kind) = op.f.strip_prefix("start-") {
                open.entry(kind)
                    .or_insert_with(|| (op.time, describe(&op.value, kind)));
            } else if let Some(kind) = op.f.strip_prefix("stop-") {
                if let Some((start, label)) = open.remove(kind) {
                    windows.push(FaultWindow {
                        kind: kind.to_string(),
                        label,
                        start,
                        end: op.time,
                        healed: true,
                    });
                }
            } else if ADMIN_ACTIONS.contains(&op.f.as_str()) {
                actions.push(AdminAction {
                    kind: op.f.clone(),
                    at: op.time,
                });
            }
        }
        windows.extend(open.into_iter().map(|(kind, (start, label))| FaultWindow {
            kind: kind.to_string(),
            label,
            start,
            end,
            healed: false,
        }));
        windows.sort_by_key(|w| w.start);
        Faults { windows, actions }
    }

    fn active_at(&self, time: u64) -> bool {
        self.windows.iter().any(|w| w.start <= time && time < w.end)
    }
}

/// A nemesis value as a label: its description string, or its JSON.
fn describe(value: &Value, fallback: &str) -> String {
    match value {
        Value::String(text) if !text.is_empty() => text.clone(),
        Value::Null => fallback.to_string(),
        other => other.to_string(),
    }
}

fn latency_ns(pair: &Pair) -> Option<u64> {
    (!std::ptr::eq(pair.invoke, pair.complete)).then(|| pair.complete.time - pair.invoke.time)
}

/// The fraction of client ops that succeeded, among those invoked during a
/// fault and among the others; None where there were no ops.
fn availability(pairs: &[Pair], faults: &Faults) -> (Option<f64>, Option<f64>) {
    let mut counts = [(0u64, 0u64); 2];
    for pair in pairs {
        let slot = &mut counts[usize::from(faults.active_at(pair.invoke.time))];
        slot.0 += u64::from(pair.outcome() == OpType::Ok);
        slot.1 += 1;
    }
    let fraction = |(ok, all): (u64, u64)| (all > 0).then(|| ok as f64 / all as f64);
    (fraction(counts[1]), fraction(counts[0]))
}

/// Escapes text for HTML content and quoted attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Valid => "valid",
        Verdict::Invalid => "invalid",
        Verdict::Unknown => "unknown",
    }
}

fn verdict_badge(verdict: Verdict) -> String {
    let name = verdict_name(verdict);
    format!("<span class=\"verdict {name}\">{name}</span>")
}

fn nemeses_label(config: &RunConfig) -> String {
    if config.nemeses.is_empty() {
        "none".to_string()
    } else {
        config.nemeses.join("+")
    }
}

/// Anomaly counts by kind, as "G1c ×2, lost ×1", over some checkers.
fn anomaly_summary<'a>(checkers: impl IntoIterator<Item = &'a CheckResult>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for anomaly in checkers.into_iter().flat_map(|c| &c.anomalies) {
        *counts.entry(anomaly.kind.as_str()).or_insert(0) += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
    parts.join(", ")
}

fn percent(fraction: Option<f64>) -> String {
    fraction.map_or("–".to_string(), |f| format!("{:.1}%", f * 100.0))
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0}\
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}\
pre{background:#f6f6f6;padding:6px;white-space:pre-wrap;margin:.3em 0}\
code{background:#f6f6f6;padding:0 3px}\
.verdict{padding:1px 8px;border-radius:3px;font-weight:bold}\
.valid{background:#b9efb9}.invalid,.bad{background:#f7b9b9}.unknown{background:#fddc9c}\
.side{display:flex;gap:2em;flex-wrap:wrap}\
.timeline{position:relative;overflow:auto;max-height:80vh;border:1px solid #ccc}\
.tl-head{position:sticky;top:0;background:#fff;z-index:3;height:20px;font-size:11px}\
.tl-tick{position:absolute;left:2px;font-size:10px;color:#666;border-top:1px solid #ddd;width:100%}\
.op{position:absolute;width:36px;min-height:2px;box-sizing:border-box;border:1px solid #fff}\
.op.invoke{background:#eeeeee}.op.ok{background:#6DB6FE}.op.info{background:#FFAA26}\
.op.fail{background:#FEB5DA}.op.hl{outline:3px solid #d00;z-index:2}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n",
        esc(title)
    )
}

/// Writes `dir/index.html` for the run in `dir` and returns its path.
pub fn write_index(dir: &Path) -> anyhow::Result<PathBuf> {
    let run = Run::load(dir)?;
    let path = dir.join(REPORT_FILE);
    std::fs::write(&path, index_html(&run)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn index_html(run: &Run) -> anyhow::Result<String> {
    let pairs = history::pairs(&run.history);
    let faults = Faults::from_history(&run.history);
    let mut body = String::new();
    header(&mut body, run)?;
    checker_table(&mut body, &run.results.checkers)?;
    writeln!(body, "<h2>Latency</h2>")?;
    body.push_str(&plots::latency_svg(&pairs, &faults, run.span_s())?);
    writeln!(body, "<h2>Throughput</h2>")?;
    body.push_str(&plots::throughput_svg(&pairs, &faults, run.span_s())?);
    fault_table(&mut body, &pairs, &faults)?;

    let highlighted: HashSet<u64> = run
        .results
        .checkers
        .iter()
        .flat_map(|c| &c.anomalies)
        .flat_map(|a| a.ops.iter().copied())
        .collect();
    let first_anomaly_ops = run
        .results
        .checkers
        .iter()
        .flat_map(|c| &c.anomalies)
        .find(|a| !a.ops.is_empty())
        .map(|a| a.ops.as_slice());
    let window = timeline::window(&run.history, pairs.len(), first_anomaly_ops);
    let timeline = timeline::render(&run.history, &pairs, &highlighted, window);
    anomaly_sections(&mut body, &run.results.checkers, &pairs, &timeline.shown)?;
    writeln!(body, "<h2 id=\"timeline\">Timeline</h2>")?;
    body.push_str(&timeline.html);
    convergence_table(&mut body, &run.results.members)?;
    writeln!(body, "<h2>Crash log lines</h2>")?;
    if run.results.crash_log_lines.is_empty() {
        writeln!(body, "<p>None.</p>")?;
    } else {
        writeln!(
            body,
            "<pre class=\"bad\">{}</pre>",
            esc(&run.results.crash_log_lines.join("\n"))
        )?;
    }
    Ok(page(&run.title(), &body))
}

fn header(out: &mut String, run: &Run) -> anyhow::Result<()> {
    let config = &run.config;
    let counts = &run.results.op_counts;
    writeln!(
        out,
        "<h1>{} {} {}</h1>\n<table>",
        esc(&config.target),
        esc(&config.target_version),
        verdict_badge(run.results.verdict)
    )?;
    let rows = [
        ("workload", esc(&config.workload)),
        ("nemeses", esc(&nemeses_label(config))),
        ("seed", config.seed.to_string()),
        (
            "duration",
            format!(
                "{:.1} s recorded (time limit {} s)",
                run.span_s(),
                config.time_limit_s
            ),
        ),
        (
            "cluster",
            format!(
                "{} nodes, rate {} op/s, concurrency {}, nemesis every {} s",
                config.nodes, config.rate, config.concurrency, config.nemesis_interval_s
            ),
        ),
        (
            "client ops",
            format!(
                "{} ok, {} fail, {} info",
                counts.ok, counts.fail, counts.info
            ),
        ),
        ("rerun", format!("<code>{}</code>", esc(&config.command))),
        ("directory", esc(&run.dir.display().to_string())),
    ];
    for (name, value) in rows {
        writeln!(out, "<tr><th>{name}</th><td>{value}</td></tr>")?;
    }
    writeln!(out, "</table>")?;
    Ok(())
}

fn checker_table(out: &mut String, checkers: &[CheckResult]) -> anyhow::Result<()> {
    writeln!(
        out,
        "<h2>Checkers</h2>\n<table><tr><th>checker</th><th>verdict</th><th>anomalies</th>\
         <th>elapsed</th><th>stats</th></tr>"
    )?;
    for checker in checkers {
        let stats: Vec<String> = checker
            .stats
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} ms</td><td>{}</td></tr>",
            esc(&checker.checker),
            verdict_badge(checker.verdict),
            esc(&anomaly_summary([checker])),
            checker.elapsed_ms,
            esc(&stats.join(", "))
        )?;
    }
    writeln!(out, "</table>")?;
    Ok(())
}

fn fault_table(out: &mut String, pairs: &[Pair], faults: &Faults) -> anyhow::Result<()> {
    let (during, outside) = availability(pairs, faults);
    writeln!(
        out,
        "<h2>Faults</h2>\n<p>Availability (ok fraction of client ops invoked): \
         during faults {}, outside faults {}.</p>",
        percent(during),
        percent(outside)
    )?;
    if faults.windows.is_empty() {
        return Ok(writeln!(out, "<p>No fault windows.</p>")?);
    }
    writeln!(
        out,
        "<table><tr><th>fault</th><th>from</th><th>to</th><th>description</th></tr>"
    )?;
    for w in &faults.windows {
        writeln!(
            out,
            "<tr><td>{}</td><td>{:.1} s</td><td>{:.1} s{}</td><td>{}</td></tr>",
            esc(&w.kind),
            w.start as f64 / NANOS_PER_SECOND,
            w.end as f64 / NANOS_PER_SECOND,
            if w.healed { "" } else { " (never healed)" },
            esc(&w.label)
        )?;
    }
    writeln!(out, "</table>")?;
    Ok(())
}

fn anomaly_sections(
    out: &mut String,
    checkers: &[CheckResult],
    pairs: &[Pair],
    shown: &HashSet<u64>,
) -> anyhow::Result<()> {
    // An anomaly names an op by either end of its pair; the timeline box is
    // named by the pair's completion.
    let box_of: HashMap<u64, u64> = pairs
        .iter()
        .flat_map(|p| {
            [
                (p.invoke.index, p.complete.index),
                (p.complete.index, p.complete.index),
            ]
        })
        .collect();
    writeln!(out, "<h2>Anomalies</h2>")?;
    let with_anomalies: Vec<&CheckResult> = checkers
        .iter()
        .filter(|c| !c.anomalies.is_empty())
        .collect();
    if with_anomalies.is_empty() {
        return Ok(writeln!(out, "<p>None.</p>")?);
    }
    for checker in with_anomalies {
        writeln!(out, "<h3>{}</h3>", esc(&checker.checker))?;
        for (number, anomaly) in checker.anomalies.iter().take(ANOMALIES_SHOWN).enumerate() {
            let links: Vec<String> = anomaly
                .ops
                .iter()
                .map(
                    |index| match box_of.get(index).filter(|b| shown.contains(b)) {
                        Some(target) => format!("<a href=\"#op-{target}\">{index}</a>"),
                        None => index.to_string(),
                    },
                )
                .collect();
            writeln!(
                out,
                "<div id=\"anomaly-{}-{number}\"><b>{}</b> ops: {}<pre>{}</pre></div>",
                esc(&checker.checker),
                esc(&anomaly.kind),
                links.join(" "),
                esc(&anomaly.explanation)
            )?;
        }
        if checker.anomalies.len() > ANOMALIES_SHOWN {
            writeln!(
                out,
                "<p>… and {} more in results.json.</p>",
                checker.anomalies.len() - ANOMALIES_SHOWN
            )?;
        }
    }
    Ok(())
}

/// The most common value of a column, the one the others are measured against.
fn most_common<T: Eq + std::hash::Hash + Copy>(values: impl Iterator<Item = T>) -> Option<T> {
    let mut counts: HashMap<T, usize> = HashMap::new();
    for value in values {
        *counts.entry(value).or_insert(0) += 1;
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(v, _)| v)
}

fn convergence_table(out: &mut String, members: &[MemberState]) -> anyhow::Result<()> {
    writeln!(out, "<h2>End-of-test convergence</h2>")?;
    if members.is_empty() {
        return Ok(writeln!(out, "<p>No member states recorded.</p>")?);
    }
    let revision = most_common(members.iter().map(|m| m.revision));
    let compact = most_common(members.iter().map(|m| m.compact_revision));
    let hash = most_common(members.iter().filter_map(|m| m.hash));
    let mark = |differs: bool| if differs { " class=\"bad\"" } else { "" };
    let converged = members.iter().all(|m| {
        m.error.is_none() && Some(m.revision) == revision && m.hash.is_some() && m.hash == hash
    });
    writeln!(
        out,
        "<p>{}</p>\n<table><tr><th>member</th><th>revision</th><th>compact revision</th>\
         <th>hash</th><th>error</th></tr>",
        if converged {
            "All members agree."
        } else {
            "<span class=\"verdict invalid\">Members disagree or did not answer.</span>"
        }
    )?;
    for m in members {
        writeln!(
            out,
            "<tr><td>{}</td><td{}>{}</td><td{}>{}</td><td{}>{}</td><td{}>{}</td></tr>",
            esc(&m.name),
            mark(Some(m.revision) != revision),
            m.revision,
            mark(Some(m.compact_revision) != compact),
            m.compact_revision,
            mark(m.hash.is_none() || m.hash != hash),
            m.hash.map_or("–".to_string(), |h| format!("{h:08x}")),
            mark(m.error.is_some()),
            esc(m.error.as_deref().unwrap_or(""))
        )?;
    }
    writeln!(out, "</table>")?;
    Ok(())
}

/// A markdown table with one row per run directory, for the docs.
pub fn summary_markdown(dirs: &[PathBuf]) -> anyhow::Result<String> {
    let cell = |text: &str| text.replace('|', "\\|");
    let mut out = String::from(
        "| target | workload | nemeses | seed | ok | fail | info | verdict | anomalies |\n\
         |---|---|---|---|---:|---:|---:|---|---|\n",
    );
    for dir in dirs {
        let config: RunConfig = read_json(&dir.join(CONFIG_FILE))?;
        let results: RunResults = read_json(&dir.join(RESULTS_FILE))?;
        let counts = &results.op_counts;
        let anomalies = anomaly_summary(&results.checkers);
        writeln!(
            out,
            "| {} {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&config.target),
            cell(&config.target_version),
            cell(&config.workload),
            cell(&nemeses_label(&config)),
            config.seed,
            counts.ok,
            counts.fail,
            counts.info,
            verdict_name(results.verdict),
            if anomalies.is_empty() {
                "–".to_string()
            } else {
                cell(&anomalies)
            }
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Anomaly;
    use crate::results::{OpCounts, write_json};
    use serde_json::json;

    const PARTITION: &str = "partition majorities-ring: n1 sees n2; n2 sees n3; n3 sees n1";

    fn op(index: u64, ms: u64, kind: OpType, process: Process, f: &str, value: Value) -> Op {
        Op {
            index,
            time: ms * 1_000_000,
            kind,
            process,
            f: f.into(),
            value,
            error: None,
            node: None,
        }
    }

    fn history() -> Vec<Op> {
        use OpType::*;
        let (c, n) = (Process::Client, Process::Nemesis);
        let mut ops = vec![
            op(0, 100, Invoke, c(0), "write", json!(1)),
            op(1, 105, Ok, c(0), "write", json!(1)),
            op(2, 1000, Invoke, n, "start-partition", Value::Null),
            op(3, 1010, Info, n, "start-partition", json!(PARTITION)),
            op(4, 1500, Invoke, c(1), "read", Value::Null),
            op(5, 2500, Info, c(1), "read", Value::Null),
            op(6, 1600, Invoke, c(2), "cas", json!([1, 2])),
            op(7, 1700, Fail, c(2), "cas", json!([1, 2])),
            op(8, 2000, Invoke, n, "compact", Value::Null),
            op(9, 2010, Info, n, "compact", json!("compact at revision 7")),
            op(10, 3000, Invoke, n, "stop-partition", Value::Null),
            op(
                11,
                3000,
                Info,
                n,
                "stop-partition",
                json!("fully connected"),
            ),
            op(12, 3200, Invoke, c(0), "read", Value::Null),
            op(13, 3250, Ok, c(0), "read", json!(1)),
            op(14, 3500, Invoke, c(3), "read", Value::Null),
            op(15, 4000, Invoke, n, "start-kill", Value::Null),
            op(16, 4010, Info, n, "start-kill", json!("kill n2")),
            op(17, 4500, Invoke, c(0), "write", json!(3)),
            op(18, 4600, Ok, c(0), "write", json!(3)),
        ];
        ops[5].error = Some("deadline exceeded".into());
        ops[7].error = Some("compare failed: 1 < 2".into());
        ops
    }

    fn member(name: &str, revision: i64, hash: u32) -> MemberState {
        MemberState {
            name: name.into(),
            revision,
            compact_revision: 7,
            hash: Some(hash),
            error: None,
        }
    }

    /// A run directory written with the crate's own writers; an etcd run
    /// gets a stale-read anomaly, a Ballast run passes.
    pub(super) fn write_run(dir: &Path, target: &str) -> PathBuf {
        let dir = dir.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        let invalid = target == "etcd";
        let anomalies = if invalid {
            vec![Anomaly {
                kind: "stale".into(),
                explanation: "the read at index 13 saw <nothing> & missed write 1".into(),
                ops: vec![13, 1],
            }]
        } else {
            vec![]
        };
        let verdict = if invalid {
            Verdict::Invalid
        } else {
            Verdict::Valid
        };
        let config = RunConfig {
            target: target.into(),
            target_version: "3.4.23".into(),
            workload: "register".into(),
            nemeses: vec!["partition".into(), "kill".into()],
            seed: 42,
            time_limit_s: 5,
            nodes: 3,
            rate: 100.0,
            concurrency: 4,
            nemesis_interval_s: 1.0,
            started_at_unix_s: 1_700_000_000,
            command: format!(
                "ballast-jepsen test --target {target} --seed 42 --nemesis 'partition,kill'"
            ),
        };
        let results = RunResults {
            verdict,
            checkers: vec![CheckResult {
                checker: "linearizable".into(),
                verdict,
                anomalies,
                stats: serde_json::Map::from_iter([("keys".to_string(), json!(1))]),
                elapsed_ms: 12,
            }],
            op_counts: OpCounts {
                ok: 3,
                fail: 1,
                info: 2,
            },
            members: vec![
                member("n1", 10, 0xabc),
                member("n2", 10, 0xabc),
                member("n3", 9, 0xdef),
            ],
            crash_log_lines: vec!["n2: panic: index out of range <3>".into()],
        };
        history::write_jsonl(&dir.join(HISTORY_FILE), &history()).unwrap();
        write_json(&dir.join(CONFIG_FILE), &config).unwrap();
        write_json(&dir.join(RESULTS_FILE), &results).unwrap();
        dir
    }

    #[test]
    fn fault_windows_run_from_start_to_stop_or_to_the_end() {
        let faults = Faults::from_history(&history());
        let windows: Vec<(&str, u64, u64, bool)> = faults
            .windows
            .iter()
            .map(|w| {
                (
                    w.kind.as_str(),
                    w.start / 1_000_000,
                    w.end / 1_000_000,
                    w.healed,
                )
            })
            .collect();
        assert_eq!(
            windows,
            vec![("partition", 1010, 3000, true), ("kill", 4010, 4600, false)]
        );
        assert_eq!(faults.windows[0].label, PARTITION);
        assert_eq!(faults.windows[1].label, "kill n2");
        let actions: Vec<(&str, u64)> = faults
            .actions
            .iter()
            .map(|a| (a.kind.as_str(), a.at / 1_000_000))
            .collect();
        assert_eq!(actions, vec![("compact", 2010)]);
    }

    #[test]
    fn availability_splits_ops_by_whether_a_fault_was_on_at_invocation() {
        let history = history();
        let (during, outside) =
            availability(&history::pairs(&history), &Faults::from_history(&history));
        // During the partition: an info read and a failed cas; outside: two
        // ok ops and a read that never completed; during the kill: an ok write.
        assert_eq!(during, Some(1.0 / 3.0));
        assert_eq!(outside, Some(2.0 / 3.0));
    }

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn the_index_is_one_self_contained_page_with_everything_in_it() {
        let temp = tempfile::tempdir().unwrap();
        let dir = write_run(temp.path(), "etcd");
        let path = write_index(&dir).unwrap();
        assert_eq!(path, dir.join(REPORT_FILE));
        let html = std::fs::read_to_string(&path).unwrap();
        assert!(html.contains("<span class=\"verdict invalid\">invalid</span>"));
        assert!(html.contains("saw &lt;nothing&gt; &amp; missed write 1"));
        assert!(!html.contains("<nothing>"));
        assert_eq!(html.matches("<svg").count(), 2);
        assert!(html.contains("partition majorities-ring"));
        assert!(html.contains("kill n2"));
        assert!(html.contains(">\ncompact\n</text>"));
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(!html.contains("<script") && !html.contains("<link"));
        // The anomaly links to its ops' boxes, which are highlighted.
        assert!(html.contains("<a href=\"#op-13\">13</a> <a href=\"#op-1\">1</a>"));
        assert!(html.contains("class=\"op ok hl\" id=\"op-13\""));
        assert!(html.contains("class=\"op fail\" id=\"op-7\""));
        assert!(html.contains("class=\"op invoke\" id=\"op-14\""));
        assert!(html.contains("compare failed: 1 &lt; 2"));
        // n3's revision and hash differ from the others'.
        assert!(html.contains("Members disagree"));
        assert!(html.contains("<td class=\"bad\">9</td><td>7</td><td class=\"bad\">00000def</td>"));
        assert!(html.contains("panic: index out of range &lt;3&gt;"));
        assert!(html.contains("during faults 33.3%, outside faults 66.7%"));
        assert!(html.contains("--target etcd --seed 42 --nemesis &#39;partition,kill&#39;"));
    }

    #[test]
    fn the_summary_has_a_row_per_run() {
        let temp = tempfile::tempdir().unwrap();
        let dirs = vec![
            write_run(temp.path(), "ballast"),
            write_run(temp.path(), "etcd"),
        ];
        let markdown = summary_markdown(&dirs).unwrap();
        let lines: Vec<&str> = markdown.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[2],
            "| ballast 3.4.23 | register | partition+kill | 42 | 3 | 1 | 2 | valid | – |"
        );
        assert_eq!(
            lines[3],
            "| etcd 3.4.23 | register | partition+kill | 42 | 3 | 1 | 2 | invalid | stale ×1 |"
        );
    }
}
