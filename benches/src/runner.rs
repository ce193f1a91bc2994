//! Runs a workload: `--clients` request loops over the connections, paced
//! by `--rate`, until `--total` requests were issued or `--duration` passed.
//! Each loop keeps its own histogram and error counts (no shared lock on
//! the request path); they are merged when the loops end.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use tonic::transport::Channel;

use crate::options::{Limit, Options};
use crate::workload::{Fanout, Outcome, Workload};

/// Latencies are recorded in microseconds, from 1 µs to an hour, to three
/// significant digits.
const HISTOGRAM_MAX_MICROS: u64 = 3_600_000_000;
const HISTOGRAM_DIGITS: u8 = 3;
const PROGRESS_TICK: Duration = Duration::from_millis(100);

/// What a run measured.
pub struct Measurement {
    /// Latency of every successful operation, in microseconds.
    pub latency: Histogram<u64>,
    /// Failed operations by gRPC code and message.
    pub errors: BTreeMap<String, u64>,
    /// Successful operations the workload flagged, by what it flagged.
    pub notes: BTreeMap<String, u64>,
    /// From the first request sent to the last response received.
    pub elapsed: Duration,
    /// Event delivery to watchers, for the workloads that measure it.
    pub fanout: Option<Fanout>,
}

impl Measurement {
    pub fn succeeded(&self) -> u64 {
        self.latency.len()
    }

    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// One request loop's counts.
struct Tally {
    latency: Histogram<u64>,
    errors: HashMap<String, u64>,
    notes: HashMap<&'static str, u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_MICROS, HISTOGRAM_DIGITS)
        .expect("valid histogram bounds")
}

/// Shared by the request loops of one run.
struct Schedule {
    start: Instant,
    limit: Limit,
    /// Requests per second, 0 for unpaced.
    rate: u64,
    /// Index of the next request to issue.
    issued: AtomicU64,
    completed: AtomicU64,
}

impl Schedule {
    /// The index of the next request, once it may be sent; `None` when the
    /// run is over.
    async fn next(&self) -> Option<u64> {
        let index = self.issued.fetch_add(1, Ordering::Relaxed);
        match self.limit {
            Limit::Total(total) if index >= total => return None,
            Limit::Duration(duration) if self.start.elapsed() >= duration => return None,
            _ => {}
        }
        if self.rate > 0 {
            // Request i is due i/rate seconds into the run, whichever loop sends it.
            let due = self.start + Duration::from_secs_f64(index as f64 / self.rate as f64);
            tokio::time::sleep_until(due.into()).await;
            if let Limit::Duration(duration) = self.limit
                && self.start.elapsed() >= duration
            {
                return None;
            }
        }
        Some(index)
    }
}

pub async fn run<W: Workload>(
    workload: W,
    channels: &[Channel],
    options: &Options,
) -> anyhow::Result<Measurement> {
    workload
        .prepare(channels, options.clients)
        .await
        .context("preparing the workload")?;
    let workload = Arc::new(workload);
    let schedule = Arc::new(Schedule {
        start: Instant::now(),
        limit: options.limit(),
        rate: options.rate,
        issued: AtomicU64::new(0),
        completed: AtomicU64::new(0),
    });
    let progress = progress_bar(schedule.clone());

    let mut loops = Vec::with_capacity(options.clients);
    for i in 0..options.clients {
        let client = workload.client(channels[i % channels.len()].clone());
        loops.push(tokio::spawn(request_loop(
            workload.clone(),
            client,
            schedule.clone(),
        )));
    }
    let mut latency = histogram();
    let mut errors = BTreeMap::new();
    let mut notes = BTreeMap::new();
    for handle in loops {
        let tally = handle.await.context("a request loop panicked")?;
        latency
            .add(&tally.latency)
            .expect("histograms with equal bounds merge");
        for (message, count) in tally.errors {
            *errors.entry(message).or_default() += count;
        }
        for (note, count) in tally.notes {
            *notes.entry(note.to_string()).or_default() += count;
        }
    }
    let elapsed = schedule.start.elapsed();
    // Awaiting the aborted task makes sure the bar is cleared before the report.
    progress.abort();
    let _ = progress.await;
    let fanout = workload.finish().await.context("finishing the workload")?;
    Ok(Measurement {
        latency,
        errors,
        notes,
        elapsed,
        fanout,
    })
}

async fn request_loop<W: Workload>(
    workload: Arc<W>,
    mut client: W::Client,
    schedule: Arc<Schedule>,
) -> Tally {
    let mut tally = Tally {
        latency: histogram(),
        errors: HashMap::new(),
        notes: HashMap::new(),
    };
    while let Some(index) = schedule.next().await {
        let sent = Instant::now();
        let result = workload.request(&mut client, index).await;
        let micros = sent.elapsed().as_micros().max(1);
        match result {
            Ok(outcome) => {
                tally
                    .latency
                    .saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
                if let Outcome::Noted(note) = outcome {
                    *tally.notes.entry(note).or_default() += 1;
                }
            }
            Err(status) => {
                let message = format!("{:?}: {}", status.code(), status.message());
                *tally.errors.entry(message).or_default() += 1;
            }
        }
        schedule.completed.fetch_add(1, Ordering::Relaxed);
    }
    tally
}

/// Draws progress on stderr while the run lasts, only if stderr is a
/// terminal (so logs and `--json` pipelines stay clean).
fn progress_bar(schedule: Arc<Schedule>) -> tokio::task::JoinHandle<()> {
    let task = async move {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let (bar, template) = match schedule.limit {
            Limit::Total(total) => (
                ProgressBar::new(total),
                "{bar:40} {pos}/{len} requests, eta {eta}",
            ),
            Limit::Duration(duration) => (
                ProgressBar::new(duration.as_millis() as u64),
                "{bar:40} {elapsed} of {msg}",
            ),
        };
        bar.set_style(ProgressStyle::with_template(template).expect("valid progress template"));
        if let Limit::Duration(duration) = schedule.limit {
            bar.set_message(format!("{}s", duration.as_secs_f64()));
        }
        // The bar is cleared when this task is aborted at the end of the run.
        let _clear = ClearOnDrop(bar.clone());
        let mut tick = tokio::time::interval(PROGRESS_TICK);
        loop {
            tick.tick().await;
            bar.set_position(match schedule.limit {
                Limit::Total(_) => schedule.completed.load(Ordering::Relaxed),
                Limit::Duration(_) => schedule.start.elapsed().as_millis() as u64,
            });
        }
    };
    tokio::spawn(task)
}

struct ClearOnDrop(ProgressBar);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
