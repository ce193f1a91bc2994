//! The replicated part of leases: which exist, their TTLs, and which keys
//! are attached. Changed only by applied Raft entries, so it is the same on
//! every member; deadlines and expiry live with the leader (`crate::lease`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;

use crate::storage::db::LeaseRow;

/// etcd's largest lease TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ttl: i64,
    /// The remaining TTL last checkpointed through Raft (0: none).
    pub remaining_ttl: i64,
    pub keys: BTreeSet<Bytes>,
}

/// A lease change a commit published, for the leader's expiry clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseChange {
    Granted { id: i64, ttl: i64 },
    Revoked { id: i64 },
}

#[derive(Default)]
pub struct LeaseTable {
    leases: BTreeMap<i64, Lease>,
    /// The lease each attached key belongs to.
    key_lease: HashMap<Bytes, i64>,
}

impl LeaseTable {
    /// The table as stored: lease rows, and each key's latest lease.
    pub fn restore(rows: Vec<LeaseRow>, key_leases: HashMap<Bytes, i64>) -> Self {
        let mut table = Self {
            leases: rows
                .into_iter()
                .map(|row| {
                    let lease = Lease {
                        ttl: row.ttl,
                        remaining_ttl: row.remaining_ttl,
                        keys: BTreeSet::new(),
                    };
                    (row.id, lease)
                })
                .collect(),
            key_lease: HashMap::new(),
        };
        for (key, id) in key_leases {
            table.attach(id, key);
        }
        table
    }

    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (i64, &Lease)> {
        self.leases.iter().map(|(id, lease)| (*id, lease))
    }

    pub fn grant(&mut self, id: i64, ttl: i64) {
        self.leases.insert(
            id,
            Lease {
                ttl,
                remaining_ttl: 0,
                keys: BTreeSet::new(),
            },
        );
    }

    /// Removes the lease and returns its keys, sorted (so that every member
    /// deletes them in the same order).
    pub fn revoke(&mut self, id: i64) -> Option<BTreeSet<Bytes>> {
        let lease = self.leases.remove(&id)?;
        for key in &lease.keys {
            self.key_lease.remove(key);
        }
        Some(lease.keys)
    }

    pub fn checkpoint(&mut self, id: i64, remaining_ttl: i64) -> Option<&Lease> {
        let lease = self.leases.get_mut(&id)?;
        lease.remaining_ttl = remaining_ttl;
        Some(lease)
    }

    /// Records that `key` now belongs to lease `id` (0: to none).
    pub fn attach(&mut self, id: i64, key: Bytes) {
        self.detach(&key);
        if id == 0 {
            return;
        }
        // A key naming a lease that is gone stays unattached, as in etcd.
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.keys.insert(key.clone());
            self.key_lease.insert(key, id);
        }
    }

    pub fn detach(&mut self, key: &Bytes) {
        // Every put and delete passes here; most stores attach nothing.
        if self.key_lease.is_empty() {
            return;
        }
        if let Some(old) = self.key_lease.remove(key)
            && let Some(lease) = self.leases.get_mut(&old)
        {
            lease.keys.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn keys_move_between_leases_and_go_with_a_revoke() {
        let mut table = LeaseTable::default();
        table.grant(1, 10);
        table.grant(2, 10);
        table.attach(1, b("b"));
        table.attach(1, b("a"));
        table.attach(2, b("c"));
        table.attach(2, b("a"));
        assert_eq!(table.get(1).unwrap().keys, BTreeSet::from([b("b")]));
        table.attach(0, b("c"));
        assert!(table.get(2).unwrap().keys.contains(&b("a")));
        assert!(!table.get(2).unwrap().keys.contains(&b("c")));
        assert_eq!(table.revoke(2), Some(BTreeSet::from([b("a")])));
        assert_eq!(table.revoke(2), None);
        table.attach(3, b("x"));
        assert!(
            table.get(3).is_none(),
            "attaching to a missing lease is a no-op"
        );
    }

    #[test]
    fn restore_reattaches_keys_to_existing_leases_only() {
        let rows = vec![LeaseRow {
            id: 7,
            ttl: 30,
            remaining_ttl: 12,
        }];
        let keys = HashMap::from([(b("k"), 7), (b("orphan"), 8)]);
        let table = LeaseTable::restore(rows, keys);
        let lease = table.get(7).unwrap();
        assert_eq!((lease.ttl, lease.remaining_ttl), (30, 12));
        assert_eq!(lease.keys, BTreeSet::from([b("k")]));
        assert!(!table.contains(8));
    }
}
