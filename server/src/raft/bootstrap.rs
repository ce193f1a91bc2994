//! Member and cluster ids, derived from the bootstrap flags exactly as etcd
//! derives them, so the same flags give the same ids on every member.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use super::types::Member;
use crate::config::url_list;

/// Who this member is and which cluster it was bootstrapped into.
/// Stored on first start; later starts ignore the bootstrap flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub member_id: u64,
    pub cluster_id: u64,
    /// The membership a new cluster starts with; empty for a member that
    /// joined an existing cluster, which must never initialise one.
    pub initial_members: BTreeMap<u64, Member>,
}

fn sha1_u64(bytes: &[u8]) -> u64 {
    let digest = Sha1::digest(bytes);
    u64::from_be_bytes(digest[..8].try_into().expect("sha1 has 20 bytes"))
}

/// etcd's member id: sha1 of the sorted peer URLs and the cluster token.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut bytes = urls.concat().into_bytes();
    bytes.extend_from_slice(token.as_bytes());
    sha1_u64(&bytes)
}

/// etcd's cluster id: sha1 of the sorted member ids, big-endian.
pub fn cluster_id(member_ids: impl IntoIterator<Item = u64>) -> u64 {
    let mut ids: Vec<u64> = member_ids.into_iter().collect();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    sha1_u64(&bytes)
}

/// Parses `--initial-cluster` (`name=url,name=url`) into this member's
/// identity. Every member computes the same initial membership from the same
/// flags, which openraft requires of members that initialise together.
pub fn identity(name: &str, initial_cluster: &str, token: &str) -> anyhow::Result<Identity> {
    let mut peers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for item in url_list(initial_cluster) {
        let (member, url) = item
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--initial-cluster entry {item:?} is not name=url"))?;
        peers
            .entry(member.to_string())
            .or_default()
            .push(url.to_string());
    }
    if !peers.contains_key(name) {
        anyhow::bail!("couldn't find local name {name:?} in the initial cluster configuration");
    }
    let initial_members: BTreeMap<u64, Member> = peers
        .into_iter()
        .map(|(member_name, peer_urls)| {
            let id = member_id(&peer_urls, token);
            (
                id,
                Member {
                    name: member_name,
                    peer_urls,
                },
            )
        })
        .collect();
    let member_id = initial_members
        .iter()
        .find(|(_, m)| m.name == name)
        .map(|(id, _)| *id)
        .expect("local name is in the initial cluster");
    Ok(Identity {
        member_id,
        cluster_id: cluster_id(initial_members.keys().copied()),
        initial_members,
    })
}

/// Joins an existing cluster (`--initial-cluster-state existing`): asks the
/// other members listed in `--initial-cluster` for the cluster, and finds
/// this member in it by its advertised peer URLs, as etcd does after
/// `member add`.
pub async fn join(
    initial_cluster: &str,
    advertise_peer_urls: &[String],
    timeout: std::time::Duration,
) -> anyhow::Result<Identity> {
    let mut own_urls = advertise_peer_urls.to_vec();
    own_urls.sort();
    let mut last_error = None;
    for item in url_list(initial_cluster) {
        let Some((_, url)) = item.split_once('=') else {
            anyhow::bail!("--initial-cluster entry {item:?} is not name=url");
        };
        if own_urls.iter().any(|own| own == url) {
            continue;
        }
        let info =
            match super::network::PeerNetwork::cluster_info(&[url.to_string()], timeout).await {
                Ok(info) => info,
                Err(e) => {
                    last_error = Some(format!("{url}: {}", e.message()));
                    continue;
                }
            };
        let member_id = info
            .members
            .iter()
            .find(|(_, member)| {
                let mut urls = member.peer_urls.clone();
                urls.sort();
                urls == own_urls
            })
            .map(|(id, _)| *id)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no member of the existing cluster has peer URLs {own_urls:?}; add it with `etcdctl member add` first"
                )
            })?;
        return Ok(Identity {
            member_id,
            cluster_id: info.cluster_id,
            initial_members: BTreeMap::new(),
        });
    }
    anyhow::bail!(
        "could not get the existing cluster from any peer in --initial-cluster ({})",
        last_error.unwrap_or_else(|| "no other member listed".to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let a = identity("a", "a=http://127.0.0.1:1,b=http://127.0.0.1:2", "t").unwrap();
        let b = identity("b", "a=http://127.0.0.1:1,b=http://127.0.0.1:2", "t").unwrap();
        assert_eq!(a.cluster_id, b.cluster_id);
        assert_ne!(a.member_id, b.member_id);
        assert_eq!(a.initial_members.len(), 2);
        let other_token = identity("a", "a=http://127.0.0.1:1,b=http://127.0.0.1:2", "u").unwrap();
        assert_ne!(a.member_id, other_token.member_id);
    }

    #[test]
    fn etcd_default_member_id() {
        // etcd 3.4 started with default flags reports member 8e9e05c52164694d.
        let id = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
        assert_eq!(format!("{id:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id([id])), "cdf818194e3a8c32");
    }

    #[test]
    fn local_name_must_be_listed() {
        assert!(identity("c", "a=http://127.0.0.1:1", "t").is_err());
    }
}
