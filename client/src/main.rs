//! `ballastctl`: a command-line client for Ballast and etcd that behaves like
//! etcdctl 3.4 (API v3) for the commands it implements, with the same flags,
//! output formats, error messages and exit codes, so that scripts and tests
//! can use either tool.

mod ctl;

use std::future::Future;
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use ballast_client::{Client, ConnectError, Status};
use clap::{Args, Parser, Subcommand};
use tonic::Code;

use ctl::args::{DelArgs, GetArgs, PutArgs};
use ctl::printer::{Format, Printer};
use ctl::{CtlError, EXIT_BAD_ARGS, EXIT_BAD_CONNECTION, EXIT_ERROR, go, txn};

/// A command line client for Ballast and etcd v3, compatible with etcdctl.
#[derive(Parser, Debug)]
#[command(name = "ballastctl", version)]
struct Cli {
    /// gRPC endpoints, tried in order
    #[arg(
        long,
        global = true,
        env = "ETCDCTL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    endpoints: Vec<String>,
    /// set the output format
    #[arg(
        short = 'w',
        long,
        global = true,
        env = "ETCDCTL_WRITE_OUT",
        value_enum,
        default_value = "simple"
    )]
    write_out: Format,
    /// print byte strings as hex encoded strings
    #[arg(long, global = true, env = "ETCDCTL_HEX")]
    hex: bool,
    /// dial timeout for client connections
    #[arg(
        long,
        global = true,
        env = "ETCDCTL_DIAL_TIMEOUT",
        default_value = "2s",
        value_parser = go::parse_duration
    )]
    dial_timeout: Duration,
    /// timeout for short running command (excluding dial timeout)
    #[arg(
        long,
        global = true,
        env = "ETCDCTL_COMMAND_TIMEOUT",
        default_value = "5s",
        value_parser = go::parse_duration
    )]
    command_timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Gets the key or a range of keys
    Get(GetArgs),
    /// Puts the given key into the store
    Put(PutArgs),
    /// Removes the specified key or range of keys [key, range_end)
    Del(DelArgs),
    /// Txn processes all the requests in one transaction, read from stdin
    Txn(TxnArgs),
    /// Compacts the event history in etcd
    Compaction(CompactionArgs),
    /// Endpoint related commands
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Membership related commands
    #[command(subcommand)]
    Member(MemberCommand),
}

#[derive(Args, Debug)]
struct TxnArgs {
    /// Input transaction in interactive mode
    #[arg(short, long)]
    interactive: bool,
}

#[derive(Args, Debug)]
struct CompactionArgs {
    /// Revision up to which history is discarded
    #[arg(allow_negative_numbers = true)]
    revision: String,
    /// 'true' to wait for compaction to physically remove all old revisions
    #[arg(long)]
    physical: bool,
}

#[derive(Subcommand, Debug)]
enum EndpointCommand {
    /// Prints out the status of endpoints specified in `--endpoints` flag
    Status,
}

#[derive(Subcommand, Debug)]
enum MemberCommand {
    /// Lists all members in the cluster
    List,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version go to stdout and succeed; usage errors exit
            // with etcdctl's ExitBadArgs.
            return if e.use_stderr() {
                ExitCode::from(EXIT_BAD_ARGS)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let mut out = Vec::new();
    let result = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(cli, &mut out)),
        Err(e) => Err(CtlError::new(EXIT_ERROR, e.to_string())),
    };
    // Output gathered before a failure (e.g. the statuses that could be
    // fetched) is still printed, as etcdctl prints it.
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_all(&out).and_then(|()| stdout.flush());
    let result = result.and(written.map_err(|e| CtlError::new(EXIT_ERROR, e.to_string())));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(message) = e.message {
                eprintln!("Error: {message}");
            }
            ExitCode::from(e.code)
        }
    }
}

async fn run(cli: Cli, out: &mut Vec<u8>) -> Result<(), CtlError> {
    let ctx = Context {
        // Blanks are dropped, so that e.g. a trailing comma is harmless.
        endpoints: cli
            .endpoints
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect(),
        dial_timeout: cli.dial_timeout,
        command_timeout: cli.command_timeout,
    };
    let mut printer = Printer {
        format: cli.write_out,
        hex: cli.hex,
        value_only: false,
    };
    match cli.command {
        Command::Get(args) => {
            let (key, options) = args.request()?;
            let client = ctx.connect().await?;
            let response = ctx.call(client.get(key, options)).await?;
            // etcdctl checks these after the request, so a failing request
            // reports its own error first.
            if args.count_only && printer.format != Format::Json {
                return Err(CtlError::new(
                    EXIT_BAD_ARGS,
                    "--count-only is only for `--write-out=json`",
                ));
            }
            if args.print_value_only {
                if printer.format != Format::Simple {
                    return Err(CtlError::new(
                        EXIT_BAD_ARGS,
                        "print-value-only is only for `--write-out=simple`",
                    ));
                }
                printer.value_only = true;
            }
            printer.get(out, &response)
        }
        Command::Put(args) => {
            let (key, value, options) = args.request(read_stdin)?;
            let client = ctx.connect().await?;
            let response = ctx.call(client.put(key, value, options)).await?;
            printer.put(out, &response)
        }
        Command::Del(args) => {
            let (key, options) = args.request()?;
            let client = ctx.connect().await?;
            let response = ctx.call(client.delete(key, options)).await?;
            printer.del(out, &response)
        }
        Command::Txn(args) => {
            let request = txn::read(
                &mut std::io::stdin().lock(),
                args.interactive,
                &mut std::io::stdout(),
            )?;
            let client = ctx.connect().await?;
            // etcdctl runs transactions without a command timeout.
            let response = client.txn(request).await.map_err(rpc_error)?;
            printer.txn(out, &response)
        }
        Command::Compaction(args) => {
            let revision =
                go::parse_int(&args.revision, 10).map_err(|e| CtlError::new(EXIT_ERROR, e))?;
            let client = ctx.connect().await?;
            ctx.call(client.compact(revision, args.physical)).await?;
            out.extend_from_slice(format!("compacted revision {revision}\n").as_bytes());
            Ok(())
        }
        Command::Endpoint(EndpointCommand::Status) => endpoint_status(&ctx, &printer, out).await,
        Command::Member(MemberCommand::List) => {
            let client = ctx.connect().await?;
            let response = ctx.call(client.member_list()).await?;
            printer.member_list(out, &response);
            Ok(())
        }
    }
}

/// Queries every endpoint on its own; failures are reported as they happen
/// and make the command fail after the other statuses are printed.
async fn endpoint_status(
    ctx: &Context,
    printer: &Printer,
    out: &mut Vec<u8>,
) -> Result<(), CtlError> {
    let mut statuses = Vec::new();
    let mut failed = false;
    for endpoint in &ctx.endpoints {
        let status = async {
            let client = connect(std::slice::from_ref(endpoint), ctx.dial_timeout).await?;
            ctx.call(client.status()).await
        };
        match status.await {
            Ok(status) => statuses.push((endpoint.clone(), status)),
            Err(e) => {
                failed = true;
                let reason = e.message.unwrap_or_default();
                eprintln!("Failed to get the status of endpoint {endpoint} ({reason})");
            }
        }
    }
    printer.endpoint_status(out, &statuses);
    if failed {
        Err(CtlError::silent(EXIT_ERROR))
    } else {
        Ok(())
    }
}

struct Context {
    endpoints: Vec<String>,
    dial_timeout: Duration,
    command_timeout: Duration,
}

impl Context {
    async fn connect(&self) -> Result<Client, CtlError> {
        connect(&self.endpoints, self.dial_timeout).await
    }

    /// Runs one request under the command timeout.
    async fn call<T>(
        &self,
        request: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, CtlError> {
        match tokio::time::timeout(self.command_timeout, request).await {
            Ok(response) => response.map_err(rpc_error),
            Err(_) => Err(deadline_exceeded()),
        }
    }
}

async fn connect(endpoints: &[String], dial_timeout: Duration) -> Result<Client, CtlError> {
    Client::connect(endpoints, dial_timeout)
        .await
        .map_err(|e| match e {
            // etcdctl keeps retrying unreachable endpoints until its deadline
            // and then reports just that.
            ConnectError::Unreachable(_) => deadline_exceeded(),
            ConnectError::NoEndpoints => {
                CtlError::new(EXIT_BAD_CONNECTION, "etcdclient: no available endpoints")
            }
            ConnectError::InvalidEndpoint { .. } => CtlError::new(EXIT_ERROR, e.to_string()),
        })
}

fn deadline_exceeded() -> CtlError {
    CtlError::new(EXIT_ERROR, "context deadline exceeded")
}

/// etcd's clientv3 reports etcd's own errors by their message alone and any
/// other gRPC error the way grpc-go formats it.
fn rpc_error(status: Status) -> CtlError {
    let message = status.message();
    if message.starts_with("etcdserver: ") {
        return CtlError::new(EXIT_ERROR, message);
    }
    let code = match status.code() {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    };
    CtlError::new(
        EXIT_ERROR,
        format!("rpc error: code = {code} desc = {message}"),
    )
}

/// The value of `put` when none is given on the command line.
fn read_stdin() -> Option<Vec<u8>> {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).ok()?;
    Some(input)
}
