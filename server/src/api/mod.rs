//! The etcd v3 gRPC services. Handlers are thin: check the request, call the
//! Raft node, map the error, fill the header.

mod cluster;
mod election;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod recipes;
#[cfg(test)]
mod request_properties;
mod validate;
mod watch;

use std::sync::Arc;

use ballast_proto::etcdserverpb::ResponseHeader;
use ballast_proto::etcdserverpb::cluster_server::ClusterServer;
use ballast_proto::etcdserverpb::kv_server::KvServer;
use ballast_proto::etcdserverpb::lease_server::LeaseServer;
use ballast_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use ballast_proto::etcdserverpb::watch_server::WatchServer;
use ballast_proto::v3electionpb::election_server::ElectionServer;
use ballast_proto::v3lockpb::lock_server::LockServer;
use tonic::service::Routes;

pub use validate::Limits;

use crate::raft::RaftNode;
use crate::watch::WatchHub;

/// gRPC itself refuses messages this much over `--max-request-bytes`, as etcd does.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// How many times gRPC's limit tonic decodes for the KV handlers to refuse.
const KV_DECODE_HEADROOM: usize = 8;

/// Fills response headers the way etcd's `header.fill` does.
#[derive(Clone)]
struct Header {
    node: Arc<RaftNode>,
}

impl Header {
    fn fill(&self, header: &mut Option<ResponseHeader>) {
        let header = self.fill_without_revision(header);
        if header.revision == 0 {
            header.revision = self.node.revision();
        }
    }

    /// Cluster RPCs answer without a revision in etcd.
    fn fill_without_revision<'h>(
        &self,
        header: &'h mut Option<ResponseHeader>,
    ) -> &'h mut ResponseHeader {
        let header = header.get_or_insert_with(ResponseHeader::default);
        header.cluster_id = self.node.cluster_id();
        header.member_id = self.node.member_id();
        header.raft_term = self.node.term();
        header
    }
}

/// Every client-facing service. Auth, which Ballast does not serve yet, is
/// absent, so its RPCs answer `Unimplemented`.
pub fn routes(
    node: Arc<RaftNode>,
    watch_hub: WatchHub,
    limits: Limits,
    min_lease_ttl: i64,
) -> Routes {
    let header = Header { node: node.clone() };
    let max_message = limits.max_request_bytes + GRPC_OVERHEAD_BYTES;
    Routes::new(
        // The KV handlers refuse messages over `max_message` themselves, with
        // grpc-go's status (tonic's own differs in code and text); tonic
        // stops only what is far larger.
        KvServer::new(kv::KvService::new(node.clone(), header.clone(), limits))
            .max_decoding_message_size(max_message.saturating_mul(KV_DECODE_HEADROOM)),
    )
    .add_service(MaintenanceServer::new(
        maintenance::MaintenanceService::new(node.clone(), header.clone()),
    ))
    .add_service(ClusterServer::new(cluster::ClusterService::new(
        node.clone(),
        header.clone(),
    )))
    .add_service(LeaseServer::new(lease::LeaseService::new(
        node.clone(),
        header.clone(),
        min_lease_ttl,
    )))
    .add_service(LockServer::new(lock::LockService::new(
        node.clone(),
        header.clone(),
    )))
    .add_service(ElectionServer::new(election::ElectionService::new(
        node,
        header.clone(),
    )))
    .add_service(WatchServer::new(watch::WatchService::new(
        watch_hub, header,
    )))
}
