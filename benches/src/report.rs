//! The result of a run, as text for people or as one JSON line for scripts.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::options::Options;
use crate::runner::Measurement;

#[derive(Debug, Serialize)]
pub struct Report {
    pub workload: String,
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    pub key_size: usize,
    pub val_size: usize,
    pub key_space_size: u64,
    /// Requests/s cap; 0 when unpaced.
    pub rate: u64,
    /// Successful operations.
    pub requests: u64,
    pub errors: u64,
    pub duration_secs: f64,
    /// Successful operations per second.
    pub requests_per_sec: f64,
    pub latency_ms: Latency,
    pub errors_by_message: BTreeMap<String, u64>,
    /// Successful operations the workload flagged (e.g. txn compares that failed).
    pub notes: BTreeMap<String, u64>,
    /// Event delivery to watchers (watch-fanout only).
    #[serde(flatten)]
    pub fanout: Option<FanoutReport>,
}

/// Events delivered to watchers, from the first put sent to the last event received.
#[derive(Debug, Serialize)]
pub struct FanoutReport {
    pub watchers: u64,
    pub events_delivered: u64,
    /// Successful puts times watchers.
    pub events_expected: u64,
    pub fanout_duration_secs: f64,
    pub events_per_sec: f64,
}

/// Latency of successful operations, in milliseconds; all zero if none succeeded.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
    pub max: f64,
}

fn millis(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

impl Report {
    pub fn new(workload: String, options: &Options, measurement: &Measurement) -> Self {
        let h = &measurement.latency;
        let quantile = |q: f64| millis(h.value_at_quantile(q));
        let seconds = measurement.elapsed.as_secs_f64();
        let latency = if h.is_empty() {
            Latency {
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p99_9: 0.0,
                max: 0.0,
            }
        } else {
            Latency {
                mean: h.mean() / 1000.0,
                p50: quantile(0.50),
                p90: quantile(0.90),
                p99: quantile(0.99),
                p99_9: quantile(0.999),
                max: millis(h.max()),
            }
        };
        Report {
            workload,
            endpoints: options.endpoints.clone(),
            conns: options.conns,
            clients: options.clients,
            key_size: options.key_size,
            val_size: options.val_size,
            key_space_size: options.key_space_size,
            rate: options.rate,
            requests: measurement.succeeded(),
            errors: measurement.failed(),
            duration_secs: seconds,
            requests_per_sec: if seconds > 0.0 {
                measurement.succeeded() as f64 / seconds
            } else {
                0.0
            },
            latency_ms: latency,
            errors_by_message: measurement.errors.clone(),
            notes: measurement.notes.clone(),
            fanout: measurement.fanout.map(|f| {
                let secs = f.elapsed.as_secs_f64();
                FanoutReport {
                    watchers: f.watchers,
                    events_delivered: f.events_delivered,
                    events_expected: f.events_expected,
                    fanout_duration_secs: secs,
                    events_per_sec: if secs > 0.0 {
                        f.events_delivered as f64 / secs
                    } else {
                        0.0
                    },
                }
            }),
        }
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("a report serializes")
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let l = &self.latency_ms;
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "Workload: {} ({} clients over {} connections to {})",
            self.workload,
            self.clients,
            self.conns,
            self.endpoints.join(",")
        );
        let _ = writeln!(out, "Summary:");
        let _ = writeln!(
            out,
            "  Requests:     {} ok, {} errors",
            self.requests, self.errors
        );
        let _ = writeln!(out, "  Duration:     {:.4} s", self.duration_secs);
        let _ = writeln!(out, "  Requests/sec: {:.1}", self.requests_per_sec);
        let _ = writeln!(out, "Latency (ms):");
        for (name, value) in [
            ("mean", l.mean),
            ("p50", l.p50),
            ("p90", l.p90),
            ("p99", l.p99),
            ("p99.9", l.p99_9),
            ("max", l.max),
        ] {
            let _ = writeln!(out, "  {name:<6} {value:>10.3}");
        }
        if let Some(f) = &self.fanout {
            let _ = writeln!(out, "Fan-out ({} watchers):", f.watchers);
            let _ = writeln!(
                out,
                "  Events:       {} of {} delivered",
                f.events_delivered, f.events_expected
            );
            let _ = writeln!(
                out,
                "  Duration:     {:.4} s (first put to last event)",
                f.fanout_duration_secs
            );
            let _ = writeln!(out, "  Events/sec:   {:.1}", f.events_per_sec);
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "Notes:");
            for (note, count) in &self.notes {
                let _ = writeln!(out, "  {count:>8}  {note}");
            }
        }
        if !self.errors_by_message.is_empty() {
            let _ = writeln!(out, "Errors:");
            for (message, count) in &self.errors_by_message {
                let _ = writeln!(out, "  {count:>8}  {message}");
            }
        }
        out
    }
}
