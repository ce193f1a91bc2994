//! Every error a client can see, with etcd's gRPC code and exact message text.
//!
//! Go clients recognise an etcd error only by its text (clientv3's
//! `rpctypes.ErrorDesc`), and kube-apiserver maps the compacted error to
//! 410 Gone by equality, so these strings are part of the wire contract.

use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum EtcdError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    /// grpc-go's own refusal, which etcd's clients see before etcd does.
    #[error("grpc: received message larger than max ({len} vs. {max})")]
    MessageTooLarge { len: usize, max: usize },
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: given member URLs are invalid")]
    InvalidPeerUrls,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
}

/// Watch cancel reasons, sent in `cancel_reason` rather than as a status.
pub const WATCH_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
pub const WATCH_EMPTY_RANGE: &str = "mvcc: watcher range is empty";

impl EtcdError {
    pub fn code(&self) -> Code {
        use EtcdError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | InvalidSortOption | RequestTooLarge => Code::InvalidArgument,
            Compacted | FutureRevision | LeaseTtlTooLarge => Code::OutOfRange,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            NoLeader | LeaderChanged | Timeout | Stopped | NotSupportedForLearner => {
                Code::Unavailable
            }
            TooManyRequests | MessageTooLarge { .. } => Code::ResourceExhausted,
            // etcd has no gRPC mapping for it, so clients see its raw text as Unknown.
            LeaderTransferTimeout => Code::Unknown,
            InvalidPeerUrls => Code::InvalidArgument,
            LeaseExists
            | PeerUrlExists
            | NotEnoughStartedMembers
            | MemberNotLearner
            | LearnerNotReady
            | TooManyLearners
            | NotLeader
            | BadLeaderTransferee => Code::FailedPrecondition,
        }
    }
}

impl From<EtcdError> for Status {
    fn from(err: EtcdError) -> Self {
        Status::new(err.code(), err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacted_error_is_exactly_what_kube_apiserver_matches() {
        let status = Status::from(EtcdError::Compacted);
        assert_eq!(status.code(), Code::OutOfRange);
        assert_eq!(
            status.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
    }
}
