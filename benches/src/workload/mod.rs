//! Workloads: what one client sends, one operation at a time. The runner
//! owns concurrency, pacing, stopping and measuring, so a new workload is one
//! module implementing [`Workload`] plus its subcommand in `main.rs`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ballast_proto::etcdserverpb::PutRequest;
use ballast_proto::etcdserverpb::kv_client::KvClient;
use bytes::Bytes;
use tonic::Status;
use tonic::transport::Channel;

use crate::keys::KeySpace;

pub mod put;
pub mod range;
pub mod txn_mixed;
pub mod txn_put;

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
