//! Workloads: what one client sends, one operation at a time. The runner
//! owns concurrency, pacing, stopping and measuring, so a new workload is one
//! module implementing [`Workload`] plus its subcommand in `main.rs`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use ballast_proto::etcdserverpb::kv_client::KvClient;
use ballast_proto::etcdserverpb::watch_client::WatchClient;
use ballast_proto::etcdserverpb::watch_request::RequestUnion;
use ballast_proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use bytes::Bytes;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::keys::KeySpace;

pub mod lease_keepalive;
pub mod put;
pub mod range;
pub mod txn_mixed;
pub mod txn_put;
pub mod watch_fanout;
pub mod watch_latency;

/// A successful operation, as the workload saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Done, with something worth counting in the report (e.g. a txn whose
    /// compare failed); the text names it there.
    Noted(&'static str),
}

pub trait Workload: Send + Sync + 'static {
    /// One client's state (its gRPC clients, streams, ...).
    type Client: Send + 'static;

    /// The name in reports, with the variant if there is one (`range-serializable`).
    fn name(&self) -> String;

    /// Runs before the clock starts, e.g. writing the keys a read workload
    /// reads, `concurrency` requests at a time over `channels`.
    fn prepare(
        &self,
        channels: &[Channel],
        concurrency: usize,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        let _ = (channels, concurrency);
        async { Ok(()) }
    }

    /// The state of a client that sends over `channel`.
    fn client(&self, channel: Channel) -> Self::Client;

    /// One measured operation: the `index`-th of the run (counting every client).
    fn request(
        &self,
        client: &mut Self::Client,
        index: u64,
    ) -> impl Future<Output = Result<Outcome, Status>> + Send;

    /// Runs after the last operation completed, outside the measured
    /// duration; a workload measuring event delivery waits for it here.
    fn finish(&self) -> impl Future<Output = anyhow::Result<Option<Fanout>>> + Send {
        async { Ok(None) }
    }
}

/// What a fan-out workload measured after its operations: events delivered
/// to its watchers, from the first put to the last delivery.
#[derive(Debug, Clone, Copy)]
pub struct Fanout {
    pub watchers: u64,
    pub events_delivered: u64,
    /// Successful puts times watchers.
    pub events_expected: u64,
    /// From the first put sent to the last event received.
    pub elapsed: std::time::Duration,
}

/// One watch stream: its request half (kept open for as long as the stream
/// is used; dropping it ends the stream) and its responses.
pub struct WatchStream {
    pub requests: mpsc::Sender<WatchRequest>,
    pub responses: Streaming<WatchResponse>,
}

/// The request half of a bidirectional stream (watch, lease keep-alive) as
/// tonic takes it (tonic's own `tokio_stream`, so that this crate needs no
/// stream crate of its own).
struct Requests<T>(mpsc::Receiver<T>);

impl<T> tonic::codegen::tokio_stream::Stream for Requests<T> {
    type Item = T;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// The end of the range of every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    // Every byte is 0xff: to the end of the key space.
    Bytes::from_static(b"\0")
}

/// Opens one watch stream over `channel` with a watcher per prefix, and
/// waits until the server confirmed every one (`created`).
pub async fn open_watch(channel: Channel, prefixes: &[Bytes]) -> anyhow::Result<WatchStream> {
    let (requests, receiver) = mpsc::channel(prefixes.len().max(1));
    for prefix in prefixes {
        let create = WatchCreateRequest {
            key: prefix.clone(),
            range_end: prefix_end(prefix),
            ..Default::default()
        };
        requests
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create)),
            })
            .await
            .context("queueing a watch create request")?;
    }
    let mut responses = WatchClient::new(channel)
        .watch(Requests(receiver))
        .await
        .context("opening a watch stream")?
        .into_inner();
    let mut created = 0;
    while created < prefixes.len() {
        let Some(response) = responses
            .message()
            .await
            .context("waiting for watchers to be created")?
        else {
            bail!("the watch stream ended before its watchers were created");
        };
        if response.canceled {
            bail!(
                "watch {} canceled: {}",
                response.watch_id,
                response.cancel_reason
            );
        }
        if response.created {
            created += 1;
        }
    }
    Ok(WatchStream {
        requests,
        responses,
    })
}

/// Writes `value` under every key of `keys`, `concurrency` puts at a time
/// spread over `channels`; for workloads that read what they expect to exist.
pub async fn fill(
    channels: &[Channel],
    concurrency: usize,
    keys: &KeySpace,
    value: &Bytes,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let mut kv = KvClient::new(channels[i % channels.len()].clone());
        let (next, keys, value) = (next.clone(), keys.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= keys.size() {
                    return Ok::<_, Status>(());
                }
                let request = PutRequest {
                    key: keys.key(n),
                    value: value.clone(),
                    ..Default::default()
                };
                kv.put(request).await?;
            }
        }));
    }
    for task in tasks {
        task.await?
            .map_err(|status| anyhow::anyhow!("filling the key space: {status}"))?;
    }
    Ok(())
}
