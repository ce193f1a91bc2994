//! `txn-mixed`: kube-apiserver's optimistic update. Each operation reads a
//! key, then writes it back in a Txn guarded by the mod_revision it read:
//! `If(ModRevision(k) == rev) Then(Put k) Else(Range k)`. The key space is
//! written once before the run, so operations are updates of existing
//! objects, as most of kube-apiserver's writes are (a key that is missing
//! reads as revision 0, which the same compare turns into a create).
//! Clients that race on a key take the Else branch; those are counted, not
//! retried, so every operation is exactly one read and one txn.

use ballast_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ballast_proto::etcdserverpb::kv_client::KvClient;
use ballast_proto::etcdserverpb::request_op::Request;
use ballast_proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use bytes::Bytes;
use clap::Args;
use tonic::Status;
use tonic::transport::Channel;

use super::range::Consistency;
use super::{Outcome, Workload, fill};
use crate::keys::KeySpace;

/// How a failed compare is named in the report.
const CONFLICT: &str = "compare failed (else branch taken)";

#[derive(Args, Debug, Clone)]
pub struct TxnMixedArgs {
    /// Consistency of the read before the txn (l or s).
    #[arg(long, value_enum, default_value_t = Consistency::L)]
    pub consistency: Consistency,
}

pub struct TxnMixed {
    serializable: bool,
    keys: KeySpace,
    value: Bytes,
}

impl TxnMixed {
    pub fn new(args: TxnMixedArgs, keys: KeySpace, value: Bytes) -> Self {
        Self {
            serializable: args.consistency.serializable(),
            keys,
            value,
        }
    }
}

impl Workload for TxnMixed {
    type Client = KvClient<Channel>;

    fn name(&self) -> String {
        "txn-mixed".to_string()
    }

    async fn prepare(&self, channels: &[Channel], concurrency: usize) -> anyhow::Result<()> {
        fill(channels, concurrency, &self.keys, &self.value).await
    }

    fn client(&self, channel: Channel) -> Self::Client {
        KvClient::new(channel)
    }

    async fn request(&self, kv: &mut Self::Client, index: u64) -> Result<Outcome, Status> {
        let key = self.keys.key_for(index);
        let read = RangeRequest {
            key: key.clone(),
            serializable: self.serializable,
            ..Default::default()
        };
        let current = kv.range(read).await?.into_inner();
        let mod_revision = current.kvs.first().map_or(0, |kv| kv.mod_revision);
        let txn = TxnRequest {
            compare: vec![Compare {
                key: key.clone(),
                target: CompareTarget::Mod as i32,
                result: CompareResult::Equal as i32,
                target_union: Some(TargetUnion::ModRevision(mod_revision)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.clone(),
                    value: self.value.clone(),
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key,
                    ..Default::default()
                })),
            }],
        };
        let response = kv.txn(txn).await?.into_inner();
        Ok(if response.succeeded {
            Outcome::Done
        } else {
            Outcome::Noted(CONFLICT)
        })
    }
}
