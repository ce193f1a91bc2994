//! `watch-latency`: put-to-event latency. Each client owns a watch stream
//! with one watcher on its own prefix, and a KV client; one operation puts
//! a key under that prefix and waits for the key's event on the stream, so
//! its latency runs from sending the put to receiving the event.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use ballast_proto::etcdserverpb::PutRequest;
use ballast_proto::etcdserverpb::kv_client::KvClient;
use bytes::{BufMut, Bytes, BytesMut};
use tonic::Status;
use tonic::transport::Channel;

use super::{Outcome, WatchStream, Workload, open_watch};
use crate::keys::KeySpace;

/// How long one operation waits for its event before counting an error.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct WatchLatency {
    keys: KeySpace,
    value: Bytes,
    /// Made by `prepare`, one per client in the order the runner asks for them.
    ready: Mutex<VecDeque<LatencyClient>>,
}

pub struct LatencyClient {
    prefix: Bytes,
    kv: KvClient<Channel>,
    watch: WatchStream,
}

impl WatchLatency {
    pub fn new(keys: KeySpace, value: Bytes) -> Self {
        Self {
            keys,
            value,
            ready: Mutex::new(VecDeque::new()),
        }
    }
}

/// Client `i`'s prefix.
fn prefix(client: usize) -> Bytes {
    Bytes::from(format!("bench/watch-latency/{client}/"))
}

impl Workload for WatchLatency {
    type Client = LatencyClient;

    fn name(&self) -> String {
        "watch-latency".to_string()
    }

    /// Opens every client's watch stream before the clock starts, on the
    /// connection the runner gives that client (client i, connection i mod n).
    async fn prepare(&self, channels: &[Channel], concurrency: usize) -> anyhow::Result<()> {
        let mut ready = VecDeque::with_capacity(concurrency);
        for i in 0..concurrency {
            let channel = channels[i % channels.len()].clone();
            let prefix = prefix(i);
            let watch = open_watch(channel.clone(), std::slice::from_ref(&prefix))
                .await
                .with_context(|| format!("watching for client {i}"))?;
            ready.push_back(LatencyClient {
                prefix,
                kv: KvClient::new(channel),
                watch,
            });
        }
        *self.ready.lock().expect("not poisoned") = ready;
        Ok(())
    }

    fn client(&self, _channel: Channel) -> Self::Client {
        self.ready
            .lock()
            .expect("not poisoned")
            .pop_front()
            .expect("prepare opened a stream per client")
    }

    async fn request(&self, client: &mut Self::Client, index: u64) -> Result<Outcome, Status> {
        let suffix = self.keys.key_for(index);
        let mut key = BytesMut::with_capacity(client.prefix.len() + suffix.len());
        key.put_slice(&client.prefix);
        key.put_slice(&suffix);
        let key = key.freeze();
        let request = PutRequest {
            key: key.clone(),
            value: self.value.clone(),
            ..Default::default()
        };
        let revision = client
            .kv
            .put(request)
            .await?
            .into_inner()
            .header
            .map_or(0, |header| header.revision);
        let wait = async {
            loop {
                let Some(response) = client.watch.responses.message().await? else {
                    return Err(Status::unavailable("the watch stream ended"));
                };
                if response.canceled {
                    return Err(Status::aborted(format!(
                        "watch canceled: {}",
                        response.cancel_reason
                    )));
                }
                let seen = response.events.iter().any(|event| {
                    event
                        .kv
                        .as_ref()
                        .is_some_and(|kv| kv.key == key && kv.mod_revision >= revision)
                });
                if seen {
                    return Ok(Outcome::Done);
                }
            }
        };
        tokio::time::timeout(EVENT_TIMEOUT, wait)
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("no event within 10 s of the put")))
    }
}
