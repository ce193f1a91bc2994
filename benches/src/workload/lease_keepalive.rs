//! `lease-keepalive`: keep-alive round trips, in the spirit of etcd's
//! `benchmark lease-keepalive`. Before the clock starts each client grants
//! its own lease and opens its own LeaseKeepAlive stream, on the connection
//! the runner gives it; one operation sends a keep-alive for that lease on
//! that stream and waits for the answer. The leases are revoked after the
//! run, outside the measured duration.

use std::collections::VecDeque;
use std::sync::Mutex;

use anyhow::{Context, ensure};
use ballast_proto::etcdserverpb::lease_client::LeaseClient;
use ballast_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
};
use clap::Args;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use super::{Fanout, Outcome, Requests, Workload};

#[derive(Args, Debug, Clone)]
pub struct LeaseKeepaliveArgs {
    /// TTL of each client's lease, in seconds. Each client must send a
    /// keep-alive within it (with --rate, one every clients/rate seconds),
    /// or its lease expires and its keep-alives count as errors.
    #[arg(long, default_value_t = 30)]
    pub ttl: i64,
}

pub struct LeaseKeepalive {
    ttl: i64,
    /// Made by `prepare`, one per client in the order the runner asks for them.
    ready: Mutex<VecDeque<KeepaliveClient>>,
    /// Every lease granted, with a client of its connection: the runner
    /// drops its clients when their loops end, and `finish` revokes these.
    granted: Mutex<Vec<(LeaseClient<Channel>, i64)>>,
}

/// One client's lease and the keep-alive stream that renews it (dropping
/// `requests` ends the stream).
pub struct KeepaliveClient {
    id: i64,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
}

impl LeaseKeepalive {
    pub fn new(args: LeaseKeepaliveArgs) -> anyhow::Result<Self> {
        ensure!(args.ttl >= 1, "--ttl must be at least 1");
        Ok(Self {
            ttl: args.ttl,
            ready: Mutex::new(VecDeque::new()),
            granted: Mutex::new(Vec::new()),
        })
    }
}

impl KeepaliveClient {
    /// Opens a keep-alive stream for lease `id`. A first keep-alive is queued
    /// before the stream opens and answered here: etcd sends the stream's
    /// headers with its first answer, and opening the stream waits for them.
    async fn open(mut lease: LeaseClient<Channel>, id: i64) -> anyhow::Result<Self> {
        let (requests, receiver) = mpsc::channel(1);
        requests
            .send(LeaseKeepAliveRequest { id })
            .await
            .context("queueing the first keep-alive")?;
        let responses = lease
            .lease_keep_alive(Requests(receiver))
            .await
            .context("opening a keep-alive stream")?
            .into_inner();
        let mut client = Self {
            id,
            requests,
            responses,
        };
        client
            .answer()
            .await
            .context("waiting for the first keep-alive's answer")?;
        Ok(client)
    }

    /// Sends one keep-alive and waits for its answer; with one in flight per
    /// stream, the next message on the stream is that answer.
    async fn keep_alive(&mut self) -> Result<Outcome, Status> {
        self.requests
            .send(LeaseKeepAliveRequest { id: self.id })
            .await
            .map_err(|_| Status::unavailable("the keep-alive stream is closed"))?;
        self.answer().await
    }

    async fn answer(&mut self) -> Result<Outcome, Status> {
        let Some(response) = self.responses.message().await? else {
            return Err(Status::unavailable("the keep-alive stream ended"));
        };
        // The server answers a keep-alive for a lease it no longer has with TTL 0.
        if response.ttl <= 0 {
            return Err(Status::not_found("lease expired"));
        }
        Ok(Outcome::Done)
    }
}

impl Workload for LeaseKeepalive {
    type Client = KeepaliveClient;

    fn name(&self) -> String {
        "lease-keepalive".to_string()
    }

    /// Grants every client's lease and opens its stream before the clock
    /// starts, on the connection the runner gives that client (client i,
    /// connection i mod n).
    async fn prepare(&self, channels: &[Channel], concurrency: usize) -> anyhow::Result<()> {
        let mut ready = VecDeque::with_capacity(concurrency);
        let mut granted = Vec::with_capacity(concurrency);
        for i in 0..concurrency {
            let mut lease = LeaseClient::new(channels[i % channels.len()].clone());
            let grant = LeaseGrantRequest {
                ttl: self.ttl,
                id: 0,
            };
            let id = lease
                .lease_grant(grant)
                .await
                .with_context(|| format!("granting client {i}'s lease"))?
                .into_inner()
                .id;
            granted.push((lease.clone(), id));
            let client = KeepaliveClient::open(lease, id)
                .await
                .with_context(|| format!("keeping client {i}'s lease alive"))?;
            ready.push_back(client);
        }
        *self.ready.lock().expect("not poisoned") = ready;
        *self.granted.lock().expect("not poisoned") = granted;
        Ok(())
    }

    fn client(&self, _channel: Channel) -> Self::Client {
        self.ready
            .lock()
            .expect("not poisoned")
            .pop_front()
            .expect("prepare opened a stream per client")
    }

    async fn request(&self, client: &mut Self::Client, _index: u64) -> Result<Outcome, Status> {
        client.keep_alive().await
    }

    /// Revokes every lease. A failure is only reported: the measurement is
    /// complete by now, and a lease that expired during the run (its
    /// keep-alives counted as errors) is no longer there to revoke.
    async fn finish(&self) -> anyhow::Result<Option<Fanout>> {
        let granted = std::mem::take(&mut *self.granted.lock().expect("not poisoned"));
        let leases = granted.len();
        let (mut failed, mut first_failure) = (0, None);
        for (mut lease, id) in granted {
            if let Err(status) = lease.lease_revoke(LeaseRevokeRequest { id }).await {
                failed += 1;
                first_failure.get_or_insert(status);
            }
        }
        if let Some(status) = first_failure {
            eprintln!(
                "lease-keepalive: {failed} of {leases} leases not revoked, first: {:?}: {}",
                status.code(),
                status.message()
            );
        }
        Ok(None)
    }
}
