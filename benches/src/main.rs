//! `ballast-bench`: a load generator for any etcd v3 endpoint (Ballast or
//! etcd itself), in the spirit of etcd's `tools/benchmark`.
//!
//! ```text
//! ballast-bench --endpoints 127.0.0.1:2379 --conns 10 --clients 100 \
//!     --total 100000 --val-size 256 --key-space-size 100000 put
//! ballast-bench --clients 100 --key-space-size 1000 range --consistency s
//! ```

mod chart;
mod conn;
mod keys;
mod options;
mod report;
mod runner;
mod workload;

use clap::{Parser, Subcommand};

use keys::KeySpace;
use options::Options;
use report::Report;
use workload::Workload;
use workload::lease_keepalive::{LeaseKeepalive, LeaseKeepaliveArgs};
use workload::put::Put;
use workload::range::{Range, RangeArgs};
use workload::txn_mixed::{TxnMixed, TxnMixedArgs};
use workload::txn_put::{TxnPut, TxnPutArgs};
use workload::watch_fanout::{WatchFanout, WatchFanoutArgs};
use workload::watch_latency::WatchLatency;

#[derive(Parser, Debug)]
#[command(
    name = "ballast-bench",
    version,
    about = "Load generator for etcd v3 endpoints"
)]
struct Cli {
    #[command(flatten)]
    options: Options,

    #[command(subcommand)]
    workload: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Put a key of the key space per request.
    Put,
    /// Range a given key, or a key of the key space (written once first).
    Range(RangeArgs),
    /// A Txn of --txn-ops puts per request, without compares.
    TxnPut(TxnPutArgs),
    /// kube-apiserver's update: Range, then Txn(If ModRevision(k) == rev Then Put Else Range).
    TxnMixed(TxnMixedArgs),
    /// Put-to-event latency: each client puts under its own watched prefix and waits for the event.
    WatchLatency,
    /// Puts under one prefix that --watchers watchers watch; also reports events delivered per second.
    WatchFanout(WatchFanoutArgs),
    /// Keep-alive round trips: each client renews its own lease on its own keep-alive stream.
    LeaseKeepalive(LeaseKeepaliveArgs),
    /// Draws Ballast / etcd ratios (a file of `label<TAB>throughput<TAB>p99` lines) as an SVG chart; sends no requests.
    Chart(chart::ChartArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Chart(args) = &cli.workload {
        return chart::draw(args);
    }
    let options = cli.options;
    options.validate()?;
    let keys = KeySpace::new(&options);
    let value = keys::value(options.val_size);
    match cli.workload {
        Command::Put => bench(Put::new(keys, value), &options).await,
        Command::Range(args) => bench(Range::new(args, keys, value), &options).await,
        Command::TxnPut(args) => bench(TxnPut::new(args, keys, value)?, &options).await,
        Command::TxnMixed(args) => bench(TxnMixed::new(args, keys, value), &options).await,
        Command::WatchLatency => bench(WatchLatency::new(keys, value), &options).await,
        Command::WatchFanout(args) => bench(WatchFanout::new(args, keys, value)?, &options).await,
        Command::LeaseKeepalive(args) => bench(LeaseKeepalive::new(args)?, &options).await,
        Command::Chart(_) => unreachable!("drawn above"),
    }
}

async fn bench<W: Workload>(workload: W, options: &Options) -> anyhow::Result<()> {
    let channels = conn::connect(options).await?;
    let name = workload.name();
    let measurement = runner::run(workload, &channels, options).await?;
    let report = Report::new(name, options, &measurement);
    if options.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    Ok(())
}
