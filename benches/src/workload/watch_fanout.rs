//! `watch-fanout`: `--watchers` watchers on one prefix, spread over
//! `--streams` watch streams (the streams over the connections), all
//! created before the clock starts. The measured operations are puts under
//! that prefix; afterwards the run waits until every watcher received every
//! event, and reports the fan-out throughput: events delivered per second
//! from the first put sent to the last event received.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use ballast_proto::etcdserverpb::PutRequest;
use ballast_proto::etcdserverpb::kv_client::KvClient;
use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use tokio::task::JoinHandle;
use tonic::Status;
use tonic::transport::Channel;

use super::{Fanout, Outcome, WatchStream, Workload, open_watch};
use crate::keys::KeySpace;

const PREFIX: &[u8] = b"bench/watch-fanout/";
/// How long delivery may make no progress after the last put before the
/// run gives up waiting and reports what arrived.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(5);

#[derive(Args, Debug, Clone)]
pub struct WatchFanoutArgs {
    /// Watchers on the prefix the puts write under.
    #[arg(long, default_value_t = 1000)]
    pub watchers: u64,

    /// Watch streams the watchers are spread over (the streams are spread
    /// over the connections).
    #[arg(long, default_value_t = 10)]
    pub streams: u64,
}

/// Shared between the workload and its stream readers.
#[derive(Default)]
struct Delivery {
    /// Events received, over every watcher.
    events: AtomicU64,
    /// Microseconds from `base` to the latest event received.
    last_micros: AtomicU64,
    /// Why a stream stopped early, if one did.
    failure: Mutex<Option<String>>,
}

pub struct WatchFanout {
    args: WatchFanoutArgs,
    keys: KeySpace,
    value: Bytes,
    base: Instant,
    first_put: OnceLock<Instant>,
    puts_ok: AtomicU64,
    delivery: Arc<Delivery>,
    readers: Mutex<Vec<JoinHandle<()>>>,
}

impl WatchFanout {
    pub fn new(args: WatchFanoutArgs, keys: KeySpace, value: Bytes) -> anyhow::Result<Self> {
        ensure!(args.watchers >= 1, "--watchers must be at least 1");
        ensure!(
            (1..=args.watchers).contains(&args.streams),
            "--streams must be between 1 and --watchers"
        );
        Ok(Self {
            args,
            keys,
            value,
            base: Instant::now(),
            first_put: OnceLock::new(),
            puts_ok: AtomicU64::new(0),
            delivery: Arc::default(),
            readers: Mutex::new(Vec::new()),
        })
    }
}

/// Counts the events of one stream as they arrive, keeping none of them.
async fn read(mut stream: WatchStream, delivery: Arc<Delivery>, base: Instant) {
    // Dropping the request half would end the stream.
    let _requests = stream.requests;
    let failure = loop {
        match stream.responses.message().await {
            Ok(Some(response)) => {
                if response.canceled {
                    break format!(
                        "watch {} canceled: {}",
                        response.watch_id, response.cancel_reason
                    );
                }
                if !response.events.is_empty() {
                    let micros = base.elapsed().as_micros() as u64;
                    delivery
                        .events
                        .fetch_add(response.events.len() as u64, Ordering::Relaxed);
                    delivery.last_micros.fetch_max(micros, Ordering::Relaxed);
                }
            }
            Ok(None) => break "a watch stream ended".to_string(),
            Err(status) => break format!("a watch stream failed: {status}"),
        }
    };
    delivery
        .failure
        .lock()
        .expect("not poisoned")
        .get_or_insert(failure);
}

impl Workload for WatchFanout {
    type Client = KvClient<Channel>;

    fn name(&self) -> String {
        "watch-fanout".to_string()
    }

    async fn prepare(&self, channels: &[Channel], _concurrency: usize) -> anyhow::Result<()> {
        let prefix = Bytes::from_static(PREFIX);
        let mut readers = Vec::with_capacity(self.args.streams as usize);
        for s in 0..self.args.streams {
            // Stream s gets an equal share of the watchers, the first ones one more.
            let share = self.args.watchers / self.args.streams
                + u64::from(s < self.args.watchers % self.args.streams);
            let prefixes = vec![prefix.clone(); share as usize];
            let channel = channels[s as usize % channels.len()].clone();
            let stream = open_watch(channel, &prefixes)
                .await
                .with_context(|| format!("creating the watchers of stream {s}"))?;
            readers.push(tokio::spawn(read(stream, self.delivery.clone(), self.base)));
        }
        *self.readers.lock().expect("not poisoned") = readers;
        Ok(())
    }

    fn client(&self, channel: Channel) -> Self::Client {
        KvClient::new(channel)
    }

    async fn request(&self, kv: &mut Self::Client, index: u64) -> Result<Outcome, Status> {
        let suffix = self.keys.key_for(index);
        let mut key = BytesMut::with_capacity(PREFIX.len() + suffix.len());
        key.put_slice(PREFIX);
        key.put_slice(&suffix);
        let request = PutRequest {
            key: key.freeze(),
            value: self.value.clone(),
            ..Default::default()
        };
        self.first_put.get_or_init(Instant::now);
        kv.put(request).await?;
        self.puts_ok.fetch_add(1, Ordering::Relaxed);
        Ok(Outcome::Done)
    }

    /// Waits until every watcher received an event per successful put, or
    /// until delivery stalls or a stream fails; then stops the readers.
    async fn finish(&self) -> anyhow::Result<Option<Fanout>> {
        let expected = self.puts_ok.load(Ordering::Relaxed) * self.args.watchers;
        let delivery = &self.delivery;
        let (mut seen, mut progress) = (delivery.events.load(Ordering::Relaxed), Instant::now());
        loop {
            let events = delivery.events.load(Ordering::Relaxed);
            if events >= expected {
                break;
            }
            if let Some(failure) = delivery.failure.lock().expect("not poisoned").as_ref() {
                eprintln!("watch-fanout: {failure}; {events} of {expected} events delivered");
                break;
            }
            if events != seen {
                (seen, progress) = (events, Instant::now());
            } else if progress.elapsed() >= STALL_TIMEOUT {
                eprintln!(
                    "watch-fanout: no event for {} s; {events} of {expected} events delivered",
                    STALL_TIMEOUT.as_secs()
                );
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        for reader in self.readers.lock().expect("not poisoned").drain(..) {
            reader.abort();
        }
        let last = self.base + Duration::from_micros(delivery.last_micros.load(Ordering::Relaxed));
        let elapsed = match self.first_put.get() {
            Some(first) => last.saturating_duration_since(*first),
            None => Duration::ZERO,
        };
        Ok(Some(Fanout {
            watchers: self.args.watchers,
            events_delivered: delivery.events.load(Ordering::Relaxed),
            events_expected: expected,
            elapsed,
        }))
    }
}
