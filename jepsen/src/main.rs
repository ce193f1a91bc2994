//! `ballast-jepsen`: runs Jepsen-style tests against Ballast or etcd on one
//! Linux machine, checks histories, and writes reports.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use ballast_jepsen::checker::Verdict;
use ballast_jepsen::checker::linear;
use ballast_jepsen::db::Target;
use ballast_jepsen::nemesis::NemesisName;
use ballast_jepsen::runner::{self, TestOptions};
use ballast_jepsen::workload::WorkloadName;
use ballast_jepsen::{check, report, sandbox};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ballast-jepsen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one test per workload and checks it. Exit code: 0 valid,
    /// 1 invalid, 2 unknown.
    Test(TestArgs),
    /// Runs a matrix of workloads and nemeses against each target in turn,
    /// then writes compare.html and summary.md side by side.
    TestAll(TestAllArgs),
    /// Rewrites a test-all directory's summary.md and comparisons from its
    /// runs.
    ReportMatrix { dir: PathBuf },
    /// Checks a run directory again (or, with --format porcupine-etcd, one
    /// of porcupine's Jepsen etcd logs) and rewrites its report.
    Check {
        path: PathBuf,
        #[arg(long, value_enum, default_value = "run")]
        format: CheckFormat,
    },
    /// Rewrites a run directory's index.html from its files.
    Report { dir: PathBuf },
    /// Writes compare.html: two runs side by side (Ballast and etcd).
    Compare {
        a: PathBuf,
        b: PathBuf,
        #[arg(long, default_value = "compare.html")]
        out: PathBuf,
    },
    /// Removes the namespaces and processes a crashed run left.
    Clean,
}

#[derive(Args)]
struct TestAllArgs {
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ballast,etcd"
    )]
    target: Vec<Target>,
    /// The Ballast binary; by default `ballast` next to this program.
    #[arg(long)]
    ballast_binary: Option<PathBuf>,
    /// Seconds of load with faults per run.
    #[arg(long, default_value_t = 120)]
    time: u64,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value = "runs/matrix")]
    out: PathBuf,
}

/// The matrix: every workload that must pass on a correct store, every
/// nemesis, and all of them at once. (`lock-set` is left out: it is
/// expected to fail everywhere.)
const MATRIX: [(WorkloadName, &[NemesisName]); 9] = [
    (
        WorkloadName::Register,
        &[NemesisName::Partition, NemesisName::Kill],
    ),
    (
        WorkloadName::Append,
        &[NemesisName::Kill, NemesisName::Pause],
    ),
    (
        WorkloadName::Wr,
        &[NemesisName::Partition, NemesisName::Pause],
    ),
    (WorkloadName::Set, &[NemesisName::Pause, NemesisName::Kill]),
    (
        WorkloadName::Watch,
        &[NemesisName::Partition, NemesisName::Compact],
    ),
    (
        WorkloadName::Register,
        &[NemesisName::Member, NemesisName::Loss],
    ),
    (
        WorkloadName::LockFencedSet,
        &[NemesisName::Partition, NemesisName::Pause],
    ),
    (
        WorkloadName::Lease,
        &[NemesisName::Pause, NemesisName::Partition],
    ),
    (
        WorkloadName::Append,
        &[
            NemesisName::Partition,
            NemesisName::Kill,
            NemesisName::Pause,
            NemesisName::Loss,
            NemesisName::Member,
            NemesisName::Compact,
            NemesisName::Clock,
        ],
    ),
];

#[derive(Clone, Copy, clap::ValueEnum)]
enum CheckFormat {
    /// A ballast-jepsen run directory.
    Run,
    /// A Jepsen etcd register log as porcupine publishes them.
    PorcupineEtcd,
}

#[derive(Args, Clone)]
struct TestArgs {
    #[arg(long, value_enum, default_value = "ballast")]
    target: Target,
    /// The server binary; by default `ballast` next to this program, or
    /// `etcd` on the PATH.
    #[arg(long)]
    binary: Option<PathBuf>,
    #[arg(long, value_enum, value_delimiter = ',', default_value = "register")]
    workload: Vec<WorkloadName>,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "partition,kill"
    )]
    nemesis: Vec<NemesisName>,
    /// Seconds of load with faults.
    #[arg(long, default_value_t = 60)]
    time: u64,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Operations per second over all workers.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Workers; default twice the nodes.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Seconds between nemesis actions.
    #[arg(long, default_value_t = 5.0)]
    nemesis_interval: f64,
    /// Seconds between healing and the final reads.
    #[arg(long, default_value_t = 10)]
    recovery: u64,
    #[arg(long, default_value_t = 100)]
    snapshot_count: u64,
    /// The schedule's seed; random when not given (and printed).
    #[arg(long)]
    seed: Option<u64>,
    /// The run directory (one workload), or the parent of one directory
    /// per workload; default runs/<time>-<target>-<workload>-<nemeses>.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Test(args) => test(&args),
        Command::TestAll(args) => test_all(&args),
        Command::Check { path, format } => check_path(&path, format),
        Command::ReportMatrix { dir } => report_matrix(&dir),
        Command::Report { dir } => report::write_index(&dir).map(|path| {
            eprintln!("ballast-jepsen: wrote {}", path.display());
            Verdict::Valid
        }),
        Command::Compare { a, b, out } => report::write_compare(&a, &b, &out).map(|()| {
            eprintln!("ballast-jepsen: wrote {}", out.display());
            Verdict::Valid
        }),
        Command::Clean => clean(),
    };
    match result {
        Ok(verdict) => ExitCode::from(verdict.exit_code() as u8),
        Err(e) => {
            eprintln!("ballast-jepsen: {e:#}");
            ExitCode::from(3)
        }
    }
}

fn default_binary(target: Target) -> anyhow::Result<PathBuf> {
    match target {
        Target::Etcd => Ok(PathBuf::from("etcd")),
        Target::Ballast => {
            let me = std::env::current_exe()?;
            let sibling = me.with_file_name("ballast");
            anyhow::ensure!(
                sibling.exists(),
                "no ballast binary next to {}; build it or pass --binary",
                me.display()
            );
            Ok(sibling)
        }
    }
}

fn test(args: &TestArgs) -> anyhow::Result<Verdict> {
    let binary = match &args.binary {
        Some(binary) => binary.clone(),
        None => default_binary(args.target)?,
    };
    let seed = args.seed.unwrap_or_else(rand::random);
    let nemeses: Vec<&str> = args.nemesis.iter().map(|n| n.name()).collect();
    let mut verdict = Verdict::Valid;
    for &workload in &args.workload {
        let name = format!(
            "{}-{}-{}",
            args.target.name(),
            workload.name(),
            nemeses.join("+")
        );
        let out = match (&args.out, args.workload.len()) {
            (Some(out), 1) => out.clone(),
            (Some(out), _) => out.join(&name),
            (None, _) => Path::new("runs").join(format!("{}-{name}", timestamp())),
        };
        let options = TestOptions {
            target: args.target,
            binary: binary.clone(),
            workload,
            nemeses: args.nemesis.clone(),
            time_limit: Duration::from_secs(args.time),
            nodes: args.nodes,
            rate: args.rate,
            concurrency: args.concurrency.unwrap_or(2 * args.nodes),
            seed,
            out: out.clone(),
            nemesis_interval: Duration::from_secs_f64(args.nemesis_interval),
            recovery: Duration::from_secs(args.recovery),
            snapshot_count: args.snapshot_count,
            command: rerun_command(args, workload, seed),
        };
        eprintln!(
            "ballast-jepsen: {name}, seed {seed}, into {}",
            out.display()
        );
        runner::run(&options).with_context(|| format!("running {name}"))?;
        let results = check::check_dir(&out)?;
        let index = report::write_index(&out)?;
        eprintln!(
            "ballast-jepsen: {name}: {:?} ({})",
            results.verdict,
            index.display()
        );
        verdict = verdict.and(results.verdict);
    }
    Ok(verdict)
}

fn test_all(args: &TestAllArgs) -> anyhow::Result<Verdict> {
    let mut verdict = Verdict::Valid;
    let mut dirs: Vec<Vec<PathBuf>> = Vec::new();
    for &target in &args.target {
        let binary = match (target, &args.ballast_binary) {
            (Target::Ballast, Some(binary)) => binary.clone(),
            _ => default_binary(target)?,
        };
        let mut target_dirs = Vec::new();
        for (workload, nemeses) in MATRIX {
            let name = run_name(target, workload, nemeses);
            let out = args.out.join(&name);
            let test_args = TestArgs {
                target,
                binary: Some(binary.clone()),
                workload: vec![workload],
                nemesis: nemeses.to_vec(),
                time: args.time,
                nodes: args.nodes,
                rate: args.rate,
                concurrency: None,
                nemesis_interval: 5.0,
                recovery: 10,
                snapshot_count: 100,
                seed: Some(args.seed),
                out: Some(out.clone()),
            };
            match test(&test_args) {
                Ok(run_verdict) => verdict = verdict.and(run_verdict),
                Err(e) => {
                    eprintln!("ballast-jepsen: {name}: {e:#}");
                    verdict = verdict.and(Verdict::Unknown);
                }
            }
            target_dirs.push(out);
        }
        dirs.push(target_dirs);
    }
    write_matrix_reports(&args.out, &dirs)?;
    eprintln!("ballast-jepsen: matrix in {}", args.out.display());
    Ok(verdict)
}

/// summary.md for every run, and when there are two targets, compare.html
/// with a row per pair and a compare-<run>.html per pair.
fn write_matrix_reports(out: &Path, dirs: &[Vec<PathBuf>]) -> anyhow::Result<()> {
    let finished: Vec<PathBuf> = dirs
        .iter()
        .flatten()
        .filter(|d| d.join("results.json").exists())
        .cloned()
        .collect();
    std::fs::write(out.join("summary.md"), report::summary_markdown(&finished)?)?;
    if let [first, second] = dirs {
        let pairs: Vec<(PathBuf, PathBuf)> = first
            .iter()
            .cloned()
            .zip(second.iter().cloned())
            .filter(|(a, b)| a.join("results.json").exists() && b.join("results.json").exists())
            .collect();
        report::write_compare_many(&pairs, &out.join("compare.html"))?;
        for (a, b) in &pairs {
            let name = b.file_name().map(|n| n.to_string_lossy().into_owned());
            let page = out.join(format!("compare-{}.html", name.unwrap_or_default()));
            report::write_compare(a, b, &page)?;
        }
    }
    Ok(())
}

/// Rewrites a matrix's summary and comparisons from the run directories in
/// it (after `check` of some of them, or a rerun of one).
fn report_matrix(dir: &Path) -> anyhow::Result<Verdict> {
    let targets = [Target::Ballast, Target::Etcd];
    let dirs: Vec<Vec<PathBuf>> = targets
        .iter()
        .map(|target| {
            MATRIX
                .iter()
                .map(|(workload, nemeses)| dir.join(run_name(*target, *workload, nemeses)))
                .collect()
        })
        .collect();
    write_matrix_reports(dir, &dirs)?;
    eprintln!(
        "ballast-jepsen: rewrote the matrix reports in {}",
        dir.display()
    );
    Ok(Verdict::Valid)
}

fn run_name(target: Target, workload: WorkloadName, nemeses: &[NemesisName]) -> String {
    let names: Vec<&str> = nemeses.iter().map(|n| n.name()).collect();
    format!("{}-{}-{}", target.name(), workload.name(), names.join("+"))
}

fn check_path(path: &Path, format: CheckFormat) -> anyhow::Result<Verdict> {
    let verdict = match format {
        CheckFormat::Run => {
            let results = check::check_dir(path)?;
            report::write_index(path)?;
            for checker in &results.checkers {
                eprintln!("{}: {:?}", checker.checker, checker.verdict);
            }
            results.verdict
        }
        CheckFormat::PorcupineEtcd => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let history = linear::parse_porcupine_etcd(&text)?;
            let result = linear::check_register(&history, Duration::from_secs(300));
            for anomaly in &result.anomalies {
                eprintln!("{}", anomaly.explanation);
            }
            result.verdict
        }
    };
    println!("{}", format!("{verdict:?}").to_lowercase());
    Ok(verdict)
}

fn rerun_command(args: &TestArgs, workload: WorkloadName, seed: u64) -> String {
    let nemeses: Vec<&str> = args.nemesis.iter().map(|n| n.name()).collect();
    format!(
        "ballast-jepsen test --target {} --workload {} --nemesis {} --time {} --nodes {} --rate {} --seed {seed}",
        args.target.name(),
        workload.name(),
        nemeses.join(","),
        args.time,
        args.nodes,
        args.rate
    )
}

fn timestamp() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    seconds.to_string()
}

fn clean() -> anyhow::Result<Verdict> {
    let removed = sandbox::clean_all()?;
    if removed.is_empty() {
        eprintln!("ballast-jepsen: nothing to clean");
    } else {
        eprintln!("ballast-jepsen: removed {}", removed.join(", "));
    }
    Ok(Verdict::Valid)
}
