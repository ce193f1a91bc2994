//! `compare.html`: two runs side by side (typically Ballast and etcd with the
//! same workload, nemeses and seed), or a matrix of such pairs.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hdrhistogram::Histogram;

use super::{
    Faults, NANOS_PER_MILLI, NANOS_PER_SECOND, Run, anomaly_summary, availability, esc, latency_ns,
    nemeses_label, page, percent, verdict_badge,
};
use crate::checker::Verdict;
use crate::history::{self, OpType};
use crate::results::REPORT_FILE;

/// What a defect touches, to tell which ones a failed workload may have met.
#[derive(Clone, Copy, PartialEq)]
enum Area {
    Kv,
    Watch,
    Lease,
}

/// etcd's robustness track record as it bears on 3.4.23: issue, what, fixed
/// in, whether Debian's etcd 3.4.23-4 (no backports) still has it, and what
/// it touches.
#[rustfmt::skip]
const KNOWN_ETCD_DEFECTS: [(u32, &str, &str, &str, Area); 15] = [
    (13766, "3.5.0–3.5.2: inconsistent revision and data after a crash under load; applied index not atomic with the backend", "3.5.3 (#13908)", "no (3.5 only)", Area::Kv),
    (14370, "Single-node cluster loses an acknowledged write on crash", "3.5.5", "not stated", Area::Kv),
    (14685, "Crash during defrag → inconsistent revision", "—", "unfixed anywhere", Area::Kv),
    (15220, "Progress notification not synchronised with the event stream", "3.4.25 / 3.5.8", "yes", Area::Watch),
    (15271, "Watch \"travels back in time\" after a partition, when a reconnecting member restores a leader snapshot", "#15492, 3.5 backport #15515", "probably", Area::Watch),
    (17247, "Duplicated watch event from TXN caching", "main only", "not stated", Area::Watch),
    (17507, "No reply to a progress request on a new or unsynced watch until an event arrives (a regression from the #15220 fix)", "3.4.31 / 3.5.13", "no", Area::Watch),
    (17529, "Events lost under watch-stream starvation", "—", "unfixed anywhere", Area::Watch),
    (17780, "Revision decreases after a crash during compaction", "3.4.32 / 3.5.14", "yes", Area::Kv),
    (18089, "Watch drops a delete event when compacting on the delete", "3.4.34 / 3.5.16 (tombstone kept)", "yes", Area::Watch),
    (18667, "Inconsistency reading a compacted revision inside a TXN", "—", "unfixed anywhere", Area::Kv),
    (19179, "Missing delete event for a watch opened at the compaction revision", "3.4.36 / 3.5.18", "yes", Area::Watch),
    (20221, "Watch on a future revision returns old events or notifications", "3.4.38 / 3.5.22", "yes", Area::Watch),
    (20418, "Stale reads caused by process pausing (found by Antithesis)", "3.4.42 / 3.5.28", "yes", Area::Kv),
    (15247, "All leases revoked when a stuck leader thinks it is still leader (slow fdatasync or CPU); fix: ignore an old leader's revoke", "3.4.31 / 3.5.13", "yes", Area::Lease),
];

fn workload_areas(workload: &str) -> &'static [Area] {
    if workload.contains("watch") {
        &[Area::Watch]
    } else if workload.contains("lock") {
        &[Area::Lease, Area::Kv]
    } else {
        &[Area::Kv]
    }
}

/// How long after a heal the first client op succeeded.
struct Recovery {
    kind: String,
    healed_at: u64,
    after: Option<u64>,
}

/// The figures a comparison shows for one run.
struct Figures {
    ok_per_s: f64,
    /// p50, p99, p999 in ms of ok ops, over the run and during faults.
    overall: Option<[f64; 3]>,
    during_faults: Option<[f64; 3]>,
    availability: (Option<f64>, Option<f64>),
    recoveries: Vec<Recovery>,
}

fn quantiles(latencies_ns: impl Iterator<Item = u64>) -> anyhow::Result<Option<[f64; 3]>> {
    // Microseconds, up to an hour; anything longer is counted as an hour.
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .context("creating a latency histogram")?;
    for latency in latencies_ns {
        histogram.saturating_record((latency / 1_000).max(1));
    }
    if histogram.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        [0.5, 0.99, 0.999].map(|q| histogram.value_at_quantile(q) as f64 / 1_000.0),
    ))
}

fn figures(run: &Run) -> anyhow::Result<Figures> {
    let pairs = history::pairs(&run.history);
    let faults = Faults::from_history(&run.history);
    let ok: Vec<(u64, u64)> = pairs
        .iter()
        .filter(|p| p.outcome() == OpType::Ok)
        .filter_map(|p| Some((p.invoke.time, latency_ns(p)?)))
        .collect();
    let mut ok_completions: Vec<u64> = ok.iter().map(|(start, latency)| start + latency).collect();
    ok_completions.sort_unstable();
    let recoveries = faults
        .windows
        .iter()
        .filter(|w| w.healed)
        .map(|w| {
            let next = ok_completions.partition_point(|&t| t < w.end);
            Recovery {
                kind: w.kind.clone(),
                healed_at: w.end,
                after: ok_completions.get(next).map(|t| t - w.end),
            }
        })
        .collect();
    Ok(Figures {
        ok_per_s: ok.len() as f64 / run.span_s().max(f64::EPSILON),
        overall: quantiles(ok.iter().map(|(_, latency)| *latency))?,
        during_faults: quantiles(
            ok.iter()
                .filter(|(start, _)| faults.active_at(*start))
                .map(|(_, latency)| *latency),
        )?,
        availability: availability(&pairs, &faults),
        recoveries,
    })
}

fn quantiles_text(quantiles: Option<[f64; 3]>) -> String {
    quantiles.map_or("–".to_string(), |[p50, p99, p999]| {
        format!("{p50:.2} / {p99:.2} / {p999:.2}")
    })
}

/// A link to a run's own report, relative to the comparison page when the
/// run lies beneath it.
fn report_link(run_dir: &Path, out: &Path) -> String {
    let base = out.parent().unwrap_or(Path::new(""));
    let target = run_dir.join(REPORT_FILE);
    let relative = target.strip_prefix(base).unwrap_or(&target);
    format!(
        "<a href=\"{}\">report</a>",
        esc(&relative.display().to_string())
    )
}

/// The rows of the side-by-side table for one run, as HTML.
fn metrics(run: &Run, figures: &Figures, out: &Path) -> [(&'static str, String); 12] {
    let counts = &run.results.op_counts;
    let (during, outside) = figures.availability;
    [
        ("verdict", verdict_badge(run.results.verdict)),
        ("workload", esc(&run.config.workload)),
        ("nemeses", esc(&nemeses_label(&run.config))),
        ("seed", run.config.seed.to_string()),
        ("anomalies", esc(&anomaly_summary(&run.results.checkers))),
        (
            "client ops ok / fail / info",
            format!("{} / {} / {}", counts.ok, counts.fail, counts.info),
        ),
        ("ok ops/s", format!("{:.1}", figures.ok_per_s)),
        (
            "ok latency p50 / p99 / p999 (ms)",
            quantiles_text(figures.overall),
        ),
        (
            "… invoked during faults",
            quantiles_text(figures.during_faults),
        ),
        (
            "availability during / outside faults",
            format!("{} / {}", percent(during), percent(outside)),
        ),
        (
            "crash log lines",
            run.results.crash_log_lines.len().to_string(),
        ),
        ("run", report_link(&run.dir, out)),
    ]
}

/// Writes `out`, comparing the runs in `a` and `b`.
pub fn write_compare(a: &Path, b: &Path, out: &Path) -> anyhow::Result<()> {
    let runs = [Run::load(a)?, Run::load(b)?];
    let figures = [figures(&runs[0])?, figures(&runs[1])?];
    let mut body = String::new();
    let names = runs
        .each_ref()
        .map(|r| esc(&format!("{} {}", r.config.target, r.config.target_version)));
    writeln!(body, "<h1>{} vs {}</h1>", names[0], names[1])?;
    let setup = |r: &Run| {
        (
            r.config.workload.clone(),
            r.config.nemeses.clone(),
            r.config.seed,
        )
    };
    if setup(&runs[0]) != setup(&runs[1]) {
        writeln!(
            body,
            "<p class=\"unknown\">The runs differ in workload, nemeses or seed: {} and {}.</p>",
            esc(&runs[0].title()),
            esc(&runs[1].title())
        )?;
    }

    writeln!(
        body,
        "<table><tr><th></th><th>{}</th><th>{}</th></tr>",
        names[0], names[1]
    )?;
    let rows = [0, 1].map(|i| metrics(&runs[i], &figures[i], out));
    for ((name, left), (_, right)) in rows[0].iter().zip(&rows[1]) {
        writeln!(
            body,
            "<tr><th>{name}</th><td>{left}</td><td>{right}</td></tr>"
        )?;
    }
    writeln!(body, "</table>")?;

    checkers_side_by_side(&mut body, &runs, &names)?;
    writeln!(
        body,
        "<h2>Recovery after each heal</h2>\n<div class=\"side\">"
    )?;
    for (name, figures) in names.iter().zip(&figures) {
        writeln!(
            body,
            "<table><tr><th colspan=\"3\">{name}</th></tr>\
             <tr><th>fault</th><th>healed at</th><th>first ok op after</th></tr>"
        )?;
        for recovery in &figures.recoveries {
            writeln!(
                body,
                "<tr><td>{}</td><td>{:.1} s</td><td>{}</td></tr>",
                esc(&recovery.kind),
                recovery.healed_at as f64 / NANOS_PER_SECOND,
                recovery.after.map_or("never".to_string(), |ns| format!(
                    "{:.0} ms",
                    ns as f64 / NANOS_PER_MILLI
                ))
            )?;
        }
        writeln!(body, "</table>")?;
    }
    writeln!(body, "</div>")?;
    known_defects(&mut body, &runs)?;
    let title = format!("{} vs {}", runs[0].title(), runs[1].title());
    std::fs::write(out, page(&title, &body)).with_context(|| format!("writing {}", out.display()))
}

fn checkers_side_by_side(
    out: &mut String,
    runs: &[Run; 2],
    names: &[String; 2],
) -> anyhow::Result<()> {
    let mut checkers: Vec<&str> = Vec::new();
    for checker in runs.iter().flat_map(|r| &r.results.checkers) {
        if !checkers.contains(&checker.checker.as_str()) {
            checkers.push(&checker.checker);
        }
    }
    writeln!(
        out,
        "<h2>Checkers</h2>\n<table><tr><th>checker</th><th>{}</th><th>{}</th></tr>",
        names[0], names[1]
    )?;
    for name in checkers {
        let cell = |run: &Run| match run.results.checkers.iter().find(|c| c.checker == name) {
            Some(c) => format!(
                "{} {}",
                verdict_badge(c.verdict),
                esc(&anomaly_summary([c]))
            ),
            None => "not run".to_string(),
        };
        writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            cell(&runs[0]),
            cell(&runs[1])
        )?;
    }
    writeln!(out, "</table>")?;
    Ok(())
}

fn known_defects(out: &mut String, runs: &[Run]) -> anyhow::Result<()> {
    writeln!(
        out,
        "<h2>Known etcd 3.4.23 defects</h2>\n<p>Debian ships etcd 3.4.23-4 without backports; \
         these etcd issues may make an etcd run fail without any fault of the harness.</p>"
    )?;
    let failed_etcd = runs
        .iter()
        .find(|r| r.config.target == "etcd" && r.results.verdict == Verdict::Invalid);
    let candidate_areas = failed_etcd.map_or(&[][..], |r| workload_areas(&r.config.workload));
    if let Some(run) = failed_etcd {
        writeln!(
            out,
            "<p class=\"unknown\">The etcd run ({}) is invalid. The rows marked \"candidate\" are \
             known defects of its version that touch this workload: check the anomalies against \
             them before suspecting the harness.</p>",
            esc(&run.title())
        )?;
    }
    writeln!(
        out,
        "<table><tr><th>issue</th><th>what</th><th>fixed in</th><th>in 3.4.23</th><th></th></tr>"
    )?;
    for &(issue, what, fixed_in, in_3_4_23, area) in &KNOWN_ETCD_DEFECTS {
        let present = matches!(in_3_4_23, "yes" | "probably" | "unfixed anywhere");
        let candidate = present && candidate_areas.contains(&area);
        writeln!(
            out,
            "<tr{}><td>etcd#{issue}</td><td>{}</td><td>{}</td><td>{in_3_4_23}</td><td>{}</td></tr>",
            if candidate { " class=\"unknown\"" } else { "" },
            esc(what),
            esc(fixed_in),
            if candidate { "candidate" } else { "" }
        )?;
    }
    writeln!(out, "</table>")?;
    Ok(())
}

/// Writes `out`, a matrix with one row per pair of runs (typically one per
/// workload and nemesis, Ballast first and etcd second): both verdicts and
/// throughputs, and links to each run's report.
pub fn write_compare_many(pairs: &[(PathBuf, PathBuf)], out: &Path) -> anyhow::Result<()> {
    let mut body = String::from(
        "<h1>Runs side by side</h1>\n<table><tr><th>workload</th><th>nemeses</th><th>seed</th>\
         <th>first target</th><th>verdict</th><th>ok ops/s</th><th>anomalies</th>\
         <th>second target</th><th>verdict</th><th>ok ops/s</th><th>anomalies</th></tr>\n",
    );
    for (a, b) in pairs {
        let runs = [Run::load(a)?, Run::load(b)?];
        write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td>",
            esc(&runs[0].config.workload),
            esc(&nemeses_label(&runs[0].config)),
            runs[0].config.seed
        )?;
        for run in &runs {
            write!(
                body,
                "<td>{} {}</td><td>{}</td><td>{:.1}</td><td>{}</td>",
                esc(&run.config.target),
                report_link(&run.dir, out),
                verdict_badge(run.results.verdict),
                figures(run)?.ok_per_s,
                esc(&anomaly_summary(&run.results.checkers))
            )?;
        }
        writeln!(body, "</tr>")?;
    }
    writeln!(body, "</table>")?;
    std::fs::write(out, page("Runs side by side", &body))
        .with_context(|| format!("writing {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::write_run;

    #[test]
    fn a_comparison_shows_both_runs_and_flags_etcd_defects_when_etcd_fails() {
        let temp = tempfile::tempdir().unwrap();
        let ballast = write_run(temp.path(), "ballast");
        let etcd = write_run(temp.path(), "etcd");
        let out = temp.path().join("compare.html");
        write_compare(&ballast, &etcd, &out).unwrap();
        let html = std::fs::read_to_string(&out).unwrap();
        assert!(html.contains("<h1>ballast 3.4.23 vs etcd 3.4.23</h1>"));
        assert!(html.contains(
            "<tr><th>verdict</th><td><span class=\"verdict valid\">valid</span></td>\
             <td><span class=\"verdict invalid\">invalid</span></td></tr>"
        ));
        assert!(html.contains("<td></td><td>stale ×1</td>"));
        // The partition heals at 3.0 s and the next ok op completes at 3.25 s.
        assert!(html.contains("<td>partition</td><td>3.0 s</td><td>250 ms</td>"));
        assert!(html.contains("href=\"ballast/index.html\""));
        // A register run meets the KV defects, not the watch ones.
        assert!(html.contains("<tr class=\"unknown\"><td>etcd#20418</td>"));
        assert!(html.contains("<tr><td>etcd#19179</td>"));
        assert!(!html.contains("http://") && !html.contains("https://"));
    }

    #[test]
    fn latency_quantiles_come_from_ok_ops() {
        let temp = tempfile::tempdir().unwrap();
        let run = Run::load(&write_run(temp.path(), "ballast")).unwrap();
        let figures = figures(&run).unwrap();
        // Ok ops: 5 ms, 50 ms and (during the kill) 100 ms.
        let [p50, _, p999] = figures.overall.unwrap();
        assert!(
            (p50 - 50.0).abs() < 0.1 && (p999 - 100.0).abs() < 0.1,
            "{p50} {p999}"
        );
        assert_eq!(figures.during_faults.map(|q| q[0].round()), Some(100.0));
        assert_eq!(figures.recoveries.len(), 1);
        assert!((figures.ok_per_s - 3.0 / 4.6).abs() < 1e-9);
    }

    #[test]
    fn the_matrix_has_a_row_per_pair() {
        let temp = tempfile::tempdir().unwrap();
        let pair = (
            write_run(temp.path(), "ballast"),
            write_run(temp.path(), "etcd"),
        );
        let out = temp.path().join("matrix.html");
        write_compare_many(&[pair.clone(), pair], &out).unwrap();
        let html = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            html.matches("<tr><td>register</td><td>partition+kill</td><td>42</td>")
                .count(),
            2
        );
        assert_eq!(
            html.matches("<span class=\"verdict invalid\">invalid</span>")
                .count(),
            2
        );
    }
}
