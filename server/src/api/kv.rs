//! The KV service.

use std::sync::Arc;

use ballast_proto::etcdserverpb::kv_server::Kv;
use ballast_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use tonic::{Request, Response, Status};

use super::Header;
use super::validate::{self, Limits};
use crate::mvcc::Store;
use crate::raft::RaftNode;

pub struct KvService {
    node: Arc<RaftNode>,
    header: Header,
    limits: Limits,
}

impl KvService {
    pub fn new(node: Arc<RaftNode>, header: Header, limits: Limits) -> Self {
        Self {
            node,
            header,
            limits,
        }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let request = request.into_inner();
        self.limits.check_message(&request)?;
        if !request.serializable {
            self.node.refuse_if_learner()?;
        }
        validate::check_range(&request)?;
        let mut response = self.node.range(request).await?;
        self.header.fill(&mut response.header);
        Ok(Response::new(response))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.node.refuse_if_learner()?;
        let request = request.into_inner();
        self.limits.check_message(&request)?;
        validate::check_put(&request)?;
        self.limits.check_size(&request)?;
        let mut response = self.node.put(request).await?;
        self.header.fill(&mut response.header);
        Ok(Response::new(response))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        self.node.refuse_if_learner()?;
        let request = request.into_inner();
        self.limits.check_message(&request)?;
        validate::check_delete(&request)?;
        self.limits.check_size(&request)?;
        let mut response = self.node.delete_range(request).await?;
        self.header.fill(&mut response.header);
        Ok(Response::new(response))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.node.refuse_if_learner()?;
        let request = request.into_inner();
        self.limits.check_message(&request)?;
        validate::check_txn(&request, self.limits.max_txn_ops)?;
        validate::check_intervals(&request.success)?;
        validate::check_intervals(&request.failure)?;
        // etcd serves a txn that writes nothing without Raft, so the limit
        // on Raft entries does not apply to it.
        if !Store::is_read_only(&request) {
            self.limits.check_size(&request)?;
        }
        let mut response = self.node.txn(request).await?;
        self.header.fill(&mut response.header);
        Ok(Response::new(response))
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        self.node.refuse_if_learner()?;
        let mut response = self.node.compact(request.into_inner()).await?;
        self.header.fill(&mut response.header);
        Ok(Response::new(response))
    }
}
