//! `txn-put`: one Txn without compares whose success branch puts
//! `--txn-ops` distinct keys (consecutive numbers of the key space).

use ballast_proto::etcdserverpb::kv_client::KvClient;
use ballast_proto::etcdserverpb::request_op::Request;
use ballast_proto::etcdserverpb::{PutRequest, RequestOp, TxnRequest};
use bytes::Bytes;
use clap::Args;
use tonic::Status;
use tonic::transport::Channel;

use super::{Outcome, Workload};
use crate::keys::KeySpace;

#[derive(Args, Debug, Clone)]
pub struct TxnPutArgs {
    /// Puts per transaction; must not exceed the key space, since a txn may
    /// not write one key twice (nor more than the server's --max-txn-ops).
    #[arg(long, default_value_t = 1)]
    pub txn_ops: u64,
}

pub struct TxnPut {
    ops: u64,
    keys: KeySpace,
    value: Bytes,
}

impl TxnPut {
    pub fn new(args: TxnPutArgs, keys: KeySpace, value: Bytes) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (1..=keys.size()).contains(&args.txn_ops),
            "--txn-ops must be between 1 and the key space size ({})",
            keys.size()
        );
        Ok(Self {
            ops: args.txn_ops,
            keys,
            value,
        })
    }
}

impl Workload for TxnPut {
    type Client = KvClient<Channel>;

    fn name(&self) -> String {
        "txn-put".to_string()
    }

    fn client(&self, channel: Channel) -> Self::Client {
        KvClient::new(channel)
    }

    async fn request(&self, kv: &mut Self::Client, index: u64) -> Result<Outcome, Status> {
        let first = self.keys.pick(index);
        let success = (0..self.ops)
            .map(|i| RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: self.keys.key((first + i) % self.keys.size()),
                    value: self.value.clone(),
                    ..Default::default()
                })),
            })
            .collect();
        let request = TxnRequest {
            success,
            ..Default::default()
        };
        kv.txn(request).await?;
        Ok(Outcome::Done)
    }
}
