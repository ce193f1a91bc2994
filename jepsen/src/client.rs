//! Clients: one connection per worker, pinned to one member, no retries,
//! and one table that says what each error means for the history.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use serde_json::Value;
use tonic::Code;

use crate::history::{Op, OpType, Process};

/// A request's deadline. Past it the outcome is unknown: `info`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn connect(url: &str) -> Result<Client, etcd_client::Error> {
    let options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT);
    Client::connect([url], Some(options)).await
}

/// Whether a failed request certainly did not take effect (`Fail`) or may
/// have (`Info`). Reads never take effect, so any error fails them; this is
/// the table for requests that write. It follows jepsen-io/etcd's
/// classification: errors raised before the request reached Raft, or by a
/// check that refused it, are definite; lost connections and timeouts are not.
pub fn classify_write_error(error: &etcd_client::Error) -> OpType {
    match error {
        // tonic reports a refused connection as Unavailable: the request
        // was never sent.
        etcd_client::Error::GRpcStatus(status)
            if status.message().contains("tcp connect error") =>
        {
            OpType::Fail
        }
        etcd_client::Error::GRpcStatus(status) => classify_status(status.code(), status.message()),
        etcd_client::Error::TransportError(e) => {
            if format!("{e:?}").contains("Connection refused") {
                OpType::Fail
            } else {
                OpType::Info
            }
        }
        _ => OpType::Info,
    }
}

/// OutOfRange, FailedPrecondition and ResourceExhausted count as definite
/// because neither etcd nor Ballast answers them after a write was proposed:
/// they come from checks made before Raft (compacted revisions, limits,
/// `too many requests`). `unhealthy cluster` is refused before proposing too.
fn classify_status(code: Code, message: &str) -> OpType {
    match code {
        Code::NotFound
        | Code::InvalidArgument
        | Code::OutOfRange
        | Code::FailedPrecondition
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::ResourceExhausted => OpType::Fail,
        Code::Unknown if message.contains("raft: stopped") => OpType::Fail,
        Code::Unavailable if message.contains("etcdserver: unhealthy cluster") => OpType::Fail,
        _ => OpType::Info,
    }
}

/// Short text for the history: the gRPC code and message.
pub fn describe(error: &etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            format!("{:?}: {}", status.code(), status.message())
        }
        other => other.to_string(),
    }
}

/// The history being recorded: operations get their index and time here,
/// in the order they are recorded.
#[derive(Clone)]
pub struct Recorder {
    started: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            started: Instant::now(),
            ops: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn record(
        &self,
        kind: OpType,
        process: Process,
        f: &str,
        value: Value,
        error: Option<String>,
        node: Option<&str>,
    ) {
        let mut ops = self.ops.lock().expect("history lock");
        let op = Op {
            index: ops.len() as u64,
            time: self.elapsed_ns(),
            kind,
            process,
            f: f.to_string(),
            value,
            error,
            node: node.map(str::to_string),
        };
        ops.push(op);
    }

    pub fn take(&self) -> Vec<Op> {
        std::mem::take(&mut *self.ops.lock().expect("history lock"))
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_definite_and_lost_answers_are_not() {
        let table = [
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
                OpType::Fail,
            ),
            (
                Code::ResourceExhausted,
                "etcdserver: too many requests",
                OpType::Fail,
            ),
            (
                Code::Unavailable,
                "etcdserver: unhealthy cluster",
                OpType::Fail,
            ),
            (Code::Unknown, "raft: stopped", OpType::Fail),
            (
                Code::Unavailable,
                "etcdserver: leader changed",
                OpType::Info,
            ),
            (Code::Unknown, "etcdserver: leader changed", OpType::Info),
            (
                Code::DeadlineExceeded,
                "etcdserver: request timed out",
                OpType::Info,
            ),
        ];
        for (code, message, expected) in table {
            assert_eq!(
                classify_status(code, message),
                expected,
                "{code:?} {message}"
            );
        }
    }
}
