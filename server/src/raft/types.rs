//! openraft's type configuration and the commands Ballast replicates.

use serde::{Deserialize, Serialize};

use crate::errors::EtcdError;
use crate::mvcc::{WriteRequest, WriteResponse};

/// What openraft knows of a member. Identical on every member from the
/// bootstrap flags, or from MemberAdd (with an empty name); the name and
/// client URLs are published once the member runs
/// ([`Command::PublishAttributes`]), as etcd publishes member attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub peer_urls: Vec<String>,
}

/// One Raft entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Client write requests the proposer packed together.
    Writes(Vec<WriteRequest>),
    /// A member announces its name and the client URLs it serves on.
    PublishAttributes {
        member_id: u64,
        attributes: Attributes,
    },
}

/// What a running member publishes about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attributes {
    pub name: String,
    pub client_urls: Vec<String>,
}

/// One result per request of a [`Command`], in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CommandResponse {
    pub results: Vec<Result<WriteResponse, EtcdError>>,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = Member,
        SnapshotData = tokio::fs::File,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type StorageError = openraft::StorageError<u64>;
pub type StoredMembership = openraft::StoredMembership<u64, Member>;

/// openraft's storage error for an I/O failure on `subject`.
pub fn io_error(
    subject: openraft::ErrorSubject<u64>,
    verb: openraft::ErrorVerb,
    e: impl std::fmt::Display,
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::error(e)).into()
}
