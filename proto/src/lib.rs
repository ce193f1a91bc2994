//! etcd v3 wire types and gRPC services for Ballast.
//!
//! Generated at build time from the `.proto` files in `protos/` with prost and
//! tonic. Message, field and enum numbering matches etcd's API so that stock
//! etcd clients interoperate. Every generated message, enum and oneof also
//! derives `serde::Serialize`/`Deserialize`, and `bytes` fields use
//! [`bytes::Bytes`].

/// Key-value and watch-event types (`mvccpb`).
#[allow(clippy::all)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// Persisted user, role and permission records (`authpb`).
#[allow(clippy::all)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// The etcd v3 client API (`etcdserverpb`): KV, Watch, Lease, Cluster,
/// Maintenance and Auth services.
#[allow(clippy::all)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// The distributed lock service (`v3lockpb`).
#[allow(clippy::all)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// The leader election service (`v3electionpb`).
#[allow(clippy::all)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// Ballast's peer protocol between members (`ballastraftpb`).
#[allow(clippy::all)]
pub mod ballastraftpb {
    tonic::include_proto!("ballastraftpb");
}

/// Encoded `FileDescriptorSet` of all the protos above, e.g. for gRPC
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
