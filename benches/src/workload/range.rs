//! `range`: one Range per operation, of a given key (or key range) or of a
//! key from the key space, which is then written once before the run.

use ballast_proto::etcdserverpb::RangeRequest;
use ballast_proto::etcdserverpb::kv_client::KvClient;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use tonic::Status;
use tonic::transport::Channel;

use super::{Outcome, Workload, fill};
use crate::keys::KeySpace;

#[derive(Args, Debug, Clone)]
pub struct RangeArgs {
    /// Key to read every time; without it each read picks a key from the key space.
    pub key: Option<String>,

    /// End of the range (exclusive) when a key is given.
    #[arg(long, requires = "key")]
    pub end: Option<String>,

    /// l: linearizable (a quorum read); s: serializable (the member's own state).
    #[arg(long, value_enum, default_value_t = Consistency::L)]
    pub consistency: Consistency,

    /// Most keys returned per read; 0 for no limit.
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable.
    L,
    /// Serializable.
    S,
}

impl Consistency {
    pub fn serializable(self) -> bool {
        self == Consistency::S
    }

    pub fn label(self) -> &'static str {
        match self {
            Consistency::L => "linearizable",
            Consistency::S => "serializable",
        }
    }
}

pub struct Range {
    /// The key and range end every read asks for, when a key was given.
    fixed: Option<(Bytes, Bytes)>,
    consistency: Consistency,
    limit: i64,
    keys: KeySpace,
    value: Bytes,
}

impl Range {
    pub fn new(args: RangeArgs, keys: KeySpace, value: Bytes) -> Self {
        let fixed = args
            .key
            .map(|key| (Bytes::from(key), Bytes::from(args.end.unwrap_or_default())));
        Self {
            fixed,
            consistency: args.consistency,
            limit: args.limit,
            keys,
            value,
        }
    }
}

impl Workload for Range {
    type Client = KvClient<Channel>;

    fn name(&self) -> String {
        format!("range-{}", self.consistency.label())
    }

    async fn prepare(&self, channels: &[Channel], concurrency: usize) -> anyhow::Result<()> {
        // A given key is read as it is; generated keys must exist, or every
        // read would measure an empty answer.
        if self.fixed.is_some() {
            return Ok(());
        }
        fill(channels, concurrency, &self.keys, &self.value).await
    }

    fn client(&self, channel: Channel) -> Self::Client {
        KvClient::new(channel)
    }

    async fn request(&self, kv: &mut Self::Client, index: u64) -> Result<Outcome, Status> {
        let (key, range_end) = match &self.fixed {
            Some((key, end)) => (key.clone(), end.clone()),
            None => (self.keys.key_for(index), Bytes::new()),
        };
        let request = RangeRequest {
            key,
            range_end,
            limit: self.limit,
            serializable: self.consistency.serializable(),
            ..Default::default()
        };
        kv.range(request).await?;
        Ok(Outcome::Done)
    }
}
