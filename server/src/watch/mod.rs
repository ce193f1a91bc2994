//! The watch hub: serves etcd watch streams from the store's change feed.
//!
//! Each stream runs one task that owns its watchers. A watcher is *synced*
//! when it has been sent everything up to the last change the stream took
//! from the feed; it then gets new changes straight from the feed. Any other
//! watcher (a start revision in the past, or a stream that fell behind the
//! feed because its client reads slowly) catches up from the revision-ordered
//! rows in storage first. Writers never wait for watchers: the feed is a
//! bounded broadcast, and a stream that lags behind it reads storage instead.

mod stream;
mod watcher;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use ballast_proto::etcdserverpb::{WatchRequest, WatchResponse};
use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;

use crate::mvcc::Store;

#[derive(Debug, Clone, Copy)]
pub struct WatchConfig {
    /// How often watchers with `progress_notify` hear the current revision
    /// when they had no events (`--experimental-watch-progress-notify-interval`).
    pub progress_notify_interval: Duration,
    /// Responses larger than this are split when the watcher asked for fragments.
    pub max_response_bytes: usize,
}

/// Watcher counts, for metrics.
#[derive(Debug, Default)]
pub struct WatchCounters {
    pub streams: AtomicI64,
    pub watchers: AtomicI64,
    /// Watchers currently reading history from storage instead of the feed.
    pub catching_up: AtomicI64,
}

impl WatchCounters {
    pub fn get(counter: &AtomicI64) -> i64 {
        counter.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
pub struct WatchHub {
    store: Arc<Store>,
    config: WatchConfig,
    counters: Arc<WatchCounters>,
}

impl WatchHub {
    pub fn new(store: Arc<Store>, config: WatchConfig) -> Self {
        Self {
            store,
            config,
            counters: Arc::default(),
        }
    }

    pub fn counters(&self) -> &WatchCounters {
        &self.counters
    }

    /// Serves one watch stream: reads `requests`, writes responses to `out`.
    /// The stream's task ends when the client goes away.
    pub fn serve<S>(&self, requests: S, out: mpsc::Sender<Result<WatchResponse, Status>>)
    where
        S: Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
    {
        stream::spawn(
            self.store.clone(),
            self.config,
            self.counters.clone(),
            requests,
            out,
        );
    }
}
