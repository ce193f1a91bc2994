//! `put`: one Put of a key from the key space per operation.

use ballast_proto::etcdserverpb::PutRequest;
use ballast_proto::etcdserverpb::kv_client::KvClient;
use bytes::Bytes;
use tonic::Status;
use tonic::transport::Channel;

use super::{Outcome, Workload};
use crate::keys::KeySpace;

pub struct Put {
    keys: KeySpace,
    value: Bytes,
}

impl Put {
    pub fn new(keys: KeySpace, value: Bytes) -> Self {
        Self { keys, value }
    }
}

impl Workload for Put {
    type Client = KvClient<Channel>;

    fn name(&self) -> String {
        "put".to_string()
    }

    fn client(&self, channel: Channel) -> Self::Client {
        KvClient::new(channel)
    }

    async fn request(&self, kv: &mut Self::Client, index: u64) -> Result<Outcome, Status> {
        let request = PutRequest {
            key: self.keys.key_for(index),
            value: self.value.clone(),
            ..Default::default()
        };
        kv.put(request).await?;
        Ok(Outcome::Done)
    }
}
