//! Membership changes (etcd's MemberAdd/Remove/Update/Promote), leader
//! transfer, and what a member is told by the leader about itself.
//!
//! Changes run on the leader; a follower forwards them. openraft changes
//! membership by joint consensus and only promotes learners, so adding a
//! voter is add-learner followed by promote, both through Raft.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::{ChangeMembers, Membership as RaftMembership};
use tokio::sync::watch;

use super::bootstrap;
use super::election_switch::ElectionSwitch;
use super::network::PeerNetwork;
use super::peer_messages::{ClusterInfo, MemberChange, MemberChanged, MemberInfo, Notice};
use super::state_machine;
use super::types::{Member, Raft};
use crate::errors::EtcdError;
use crate::mvcc::Store;

/// A learner is ready for promotion once it holds this share of the leader's log, as in etcd.
const LEARNER_READY_PERCENT: u64 = 90;
/// etcd allows one learner at a time.
const MAX_LEARNERS: usize = 1;

/// Membership state and actions shared by the client API and the peer service.
#[derive(Clone)]
pub struct Membership {
    raft: Raft,
    store: Arc<Store>,
    peers: PeerNetwork,
    member_id: u64,
    cluster_id: u64,
    /// How long a peer may take to answer before it counts as not started.
    probe_timeout: Duration,
    /// How long a leader transfer may take.
    transfer_timeout: Duration,
    /// How long a follower refuses votes after hearing from its leader
    /// (openraft's leader lease: the longest election timeout).
    leader_lease: Duration,
    elections: ElectionSwitch,
    removed: Arc<watch::Sender<bool>>,
}

fn valid_peer_urls(peer_urls: &[String]) -> Result<(), EtcdError> {
    let valid = |url: &String| {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        rest.and_then(|host_port| host_port.rsplit_once(':'))
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
    };
    if peer_urls.is_empty() || !peer_urls.iter().all(valid) {
        return Err(EtcdError::InvalidPeerUrls);
    }
    Ok(())
}

/// etcd's id for an added member: its peer URLs and the time of the request.
fn new_member_id(peer_urls: &[String]) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    bootstrap::member_id(peer_urls, &now.to_string())
}

fn change_error(
    e: openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, Member>>,
) -> EtcdError {
    match e {
        openraft::error::RaftError::APIError(
            openraft::error::ClientWriteError::ForwardToLeader(_),
        ) => EtcdError::LeaderChanged,
        other => super::write_error(&other),
    }
}

impl Membership {
    pub fn new(
        raft: Raft,
        store: Arc<Store>,
        peers: PeerNetwork,
        member_id: u64,
        cluster_id: u64,
        election_timeout: Duration,
    ) -> Self {
        let elections = ElectionSwitch::new(raft.clone());
        Self {
            raft,
            store,
            peers,
            member_id,
            cluster_id,
            probe_timeout: election_timeout,
            transfer_timeout: election_timeout * 6,
            leader_lease: election_timeout,
            elections,
            removed: Arc::new(watch::channel(false).0),
        }
    }

    fn current(&self) -> RaftMembership<u64, Member> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone()
    }

    pub fn cluster_info(&self) -> ClusterInfo {
        ClusterInfo {
            cluster_id: self.cluster_id,
            members: self
                .current()
                .nodes()
                .map(|(id, member)| (*id, member.clone()))
                .collect(),
        }
    }

    /// Every member of `membership` with what it published.
    fn list_of(&self, membership: &RaftMembership<u64, Member>) -> Vec<MemberInfo> {
        let mut published = state_machine::attributes(&self.store).unwrap_or_default();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, member)| {
                let attributes = published.remove(id).unwrap_or_default();
                MemberInfo {
                    id: *id,
                    name: attributes.name,
                    peer_urls: member.peer_urls.clone(),
                    client_urls: attributes.client_urls,
                    is_learner: !voters.contains(id),
                }
            })
            .collect()
    }

    pub fn list(&self) -> Vec<MemberInfo> {
        self.list_of(&self.current())
    }

    /// Asked on every client request, so it reads the membership in place.
    pub fn is_learner(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        membership.get_node(&self.member_id).is_some()
            && !membership.voter_ids().any(|id| id == self.member_id)
    }

    /// Carries out `change`; only the leader may.
    pub async fn change(&self, change: MemberChange) -> Result<MemberChanged, EtcdError> {
        let membership = self.current();
        match change {
            MemberChange::Add {
                peer_urls,
                is_learner,
            } => self.add(&membership, peer_urls, is_learner).await,
            MemberChange::Remove { id } => self.remove(&membership, id).await,
            MemberChange::Update { id, peer_urls } => {
                let member = membership.get_node(&id).ok_or(EtcdError::MemberNotFound)?;
                valid_peer_urls(&peer_urls)?;
                Self::urls_unused(&membership, &peer_urls, Some(id))?;
                let updated = Member {
                    name: member.name.clone(),
                    peer_urls,
                };
                let written = self
                    .raft
                    .change_membership(
                        ChangeMembers::SetNodes(BTreeMap::from([(id, updated)])),
                        false,
                    )
                    .await
                    .map_err(change_error)?;
                Ok(self.changed(written.membership, None))
            }
            MemberChange::Promote { id } => {
                if membership.get_node(&id).is_none() {
                    return Err(EtcdError::MemberNotFound);
                }
                if membership.voter_ids().any(|voter| voter == id) {
                    return Err(EtcdError::MemberNotLearner);
                }
                if !self.learner_ready(id) {
                    return Err(EtcdError::LearnerNotReady);
                }
                let written = self
                    .raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(change_error)?;
                Ok(self.changed(written.membership, None))
            }
        }
    }

    fn changed(
        &self,
        membership: Option<RaftMembership<u64, Member>>,
        added: Option<u64>,
    ) -> MemberChanged {
        let members = self.list_of(&membership.unwrap_or_else(|| self.current()));
        MemberChanged {
            added: added.and_then(|id| members.iter().find(|m| m.id == id).cloned()),
            members,
        }
    }

    fn urls_unused(
        membership: &RaftMembership<u64, Member>,
        peer_urls: &[String],
        except: Option<u64>,
    ) -> Result<(), EtcdError> {
        let taken = membership
            .nodes()
            .filter(|(id, _)| Some(**id) != except)
            .any(|(_, m)| m.peer_urls.iter().any(|url| peer_urls.contains(url)));
        if taken {
            return Err(EtcdError::PeerUrlExists);
        }
        Ok(())
    }

    async fn add(
        &self,
        membership: &RaftMembership<u64, Member>,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> Result<MemberChanged, EtcdError> {
        valid_peer_urls(&peer_urls)?;
        Self::urls_unused(membership, &peer_urls, None)?;
        let voters: Vec<u64> = membership.voter_ids().collect();
        if is_learner {
            if membership.learner_ids().count() >= MAX_LEARNERS {
                return Err(EtcdError::TooManyLearners);
            }
        } else {
            // etcd's strict reconfiguration check: the members that run must
            // still form a quorum of the larger cluster.
            let started = self.started_voters(&voters, None).await;
            let size = voters.len() + 1;
            if !(started == 1 && size == 2) && started < size / 2 + 1 {
                return Err(EtcdError::NotEnoughStartedMembers);
            }
        }
        let id = new_member_id(&peer_urls);
        let member = Member {
            name: String::new(),
            peer_urls,
        };
        let mut written = self
            .raft
            .add_learner(id, member, false)
            .await
            .map_err(change_error)?;
        if !is_learner {
            written = self
                .raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(change_error)?;
        }
        Ok(self.changed(written.membership, Some(id)))
    }

    async fn remove(
        &self,
        membership: &RaftMembership<u64, Member>,
        id: u64,
    ) -> Result<MemberChanged, EtcdError> {
        let member = membership
            .get_node(&id)
            .cloned()
            .ok_or(EtcdError::MemberNotFound)?;
        let voters: Vec<u64> = membership.voter_ids().collect();
        let change = if voters.contains(&id) {
            let started = self.started_voters(&voters, Some(id)).await;
            if started < (voters.len() - 1) / 2 + 1 {
                return Err(EtcdError::NotEnoughStartedMembers);
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        let written = self
            .raft
            .change_membership(change, false)
            .await
            .map_err(change_error)?;
        if id == self.member_id {
            let _ = self.removed.send(true);
        } else {
            let peer = self.peers.peer(id, &member);
            tokio::spawn(async move { peer.notify(&Notice::Removed).await });
        }
        Ok(self.changed(written.membership, None))
    }

    /// Voters (other than `except`) that published their attributes and
    /// answer now, counting this member.
    async fn started_voters(&self, voters: &[u64], except: Option<u64>) -> usize {
        let published = state_machine::attributes(&self.store).unwrap_or_default();
        let membership = self.current();
        let mut started = 0;
        for id in voters.iter().filter(|id| Some(**id) != except) {
            let is_started = published.get(id).is_some_and(|a| !a.name.is_empty());
            if !is_started {
                continue;
            }
            if *id == self.member_id {
                started += 1;
                continue;
            }
            let Some(member) = membership.get_node(id) else {
                continue;
            };
            let probe = PeerNetwork::cluster_info(&member.peer_urls, self.probe_timeout);
            if probe.await.is_ok() {
                started += 1;
            }
        }
        started
    }

    fn learner_ready(&self, id: u64) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader_index = metrics.last_log_index.unwrap_or(0);
        let matched = metrics
            .replication
            .as_ref()
            .and_then(|replication| replication.get(&id).cloned().flatten())
            .map_or(0, |log_id| log_id.index);
        matched * 100 >= leader_index * LEARNER_READY_PERCENT
    }

    /// Hands leadership to `target`, as etcd's MoveLeader. openraft 0.9 has
    /// no leader transfer, and followers refuse votes while their leader
    /// lease runs, so: every other voter holds its elections, the leader
    /// stops replicating until the leases lapse, then the target campaigns.
    /// Writes wait for the new leader meanwhile.
    pub async fn move_leader(&self, target: u64) -> Result<(), EtcdError> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.member_id) {
            return Err(EtcdError::NotLeader);
        }
        if target == self.member_id {
            return Ok(());
        }
        let membership = metrics.membership_config.membership().clone();
        if !membership.voter_ids().any(|id| id == target) {
            return Err(EtcdError::BadLeaderTransferee);
        }
        self.raft
            .wait(Some(self.transfer_timeout))
            .metrics(
                |m| {
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&target).cloned().flatten())
                        .map(|id| id.index);
                    matched.is_some() && matched == m.last_log_index
                },
                "transferee caught up",
            )
            .await
            .map_err(|_| EtcdError::LeaderTransferTimeout)?;
        let others: Vec<(u64, Member)> = membership
            .nodes()
            .filter(|(id, _)| **id != self.member_id)
            .map(|(id, member)| (*id, member.clone()))
            .collect();
        let hold = Notice::HoldElections {
            millis: self.transfer_timeout.as_millis() as u64,
        };
        for (id, member) in &others {
            let _ = self.peers.peer(*id, member).notify(&hold).await;
        }
        self.peers.hold_replication(true);
        tokio::time::sleep(self.leader_lease + self.leader_lease / 10).await;
        let transferee = membership.get_node(&target).expect("target is a voter");
        let _ = self
            .peers
            .peer(target, transferee)
            .notify(&Notice::Campaign)
            .await;
        let moved = self
            .raft
            .wait(Some(self.transfer_timeout))
            .metrics(|m| m.current_leader == Some(target), "transferee leads")
            .await;
        self.peers.hold_replication(false);
        let release = Notice::HoldElections { millis: 0 };
        for (id, member) in &others {
            let _ = self.peers.peer(*id, member).notify(&release).await;
        }
        moved
            .map(|_| ())
            .map_err(|_| EtcdError::LeaderTransferTimeout)
    }

    /// Acts on what the leader said.
    pub fn notice(&self, notice: Notice) {
        match notice {
            Notice::Removed => {
                let _ = self.removed.send(true);
            }
            Notice::Campaign => {
                self.elections.hold_until(None);
                let raft = self.raft.clone();
                tokio::spawn(async move { raft.trigger().elect().await });
            }
            Notice::HoldElections { millis } => {
                let until = Instant::now() + Duration::from_millis(millis);
                self.elections.hold_until((millis > 0).then_some(until));
                if millis > 0 {
                    let elections = self.elections.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep_until(until.into()).await;
                        elections.release_hold(until);
                    });
                }
            }
        }
    }

    /// The switch that holds this member's elections, shared with the
    /// snapshot receiver's pause.
    pub fn election_switch(&self) -> ElectionSwitch {
        self.elections.clone()
    }

    /// Resolves once this member was removed from the cluster: told so by
    /// the leader, or seeing a membership without itself after it was in one.
    pub async fn removed(&self) {
        let mut removed = self.removed.subscribe();
        let mut metrics = self.raft.metrics();
        let mut was_member = false;
        loop {
            {
                let m = metrics.borrow_and_update();
                let is_member = m
                    .membership_config
                    .membership()
                    .get_node(&self.member_id)
                    .is_some();
                if was_member && !is_member {
                    return;
                }
                was_member |= is_member;
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return },
                _ = removed.wait_for(|removed| *removed) => return,
            }
        }
    }
}
