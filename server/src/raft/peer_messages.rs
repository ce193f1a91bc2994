//! The membership messages members exchange over the peer protocol, shared
//! by the side that sends them (`network`) and the side that acts on them
//! (`membership`), so that neither imports the other for its types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::types::Member;

/// A membership change, carried out by the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MemberChange {
    Add {
        peer_urls: Vec<String>,
        is_learner: bool,
    },
    Remove {
        id: u64,
    },
    Update {
        id: u64,
        peer_urls: Vec<String>,
    },
    Promote {
        id: u64,
    },
}

/// A member as the Cluster API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// The outcome of a change: the added member, if any, and the new member list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberChanged {
    pub added: Option<MemberInfo>,
    pub members: Vec<MemberInfo>,
}

/// What a member joining with `--initial-cluster-state existing` learns from a peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub cluster_id: u64,
    pub members: BTreeMap<u64, Member>,
}

/// What the leader tells a member about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Notice {
    /// Do not campaign for this long (zero: campaign again), so that the
    /// member a leader transfer chose wins the election.
    HoldElections { millis: u64 },
    /// Campaign now: the leader transfer chose this member.
    Campaign,
    /// The member was removed from the cluster and must stop.
    Removed,
}
