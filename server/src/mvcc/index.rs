//! The in-memory index from user keys to their histories (etcd's treeIndex).
//! Rebuilt from storage on start.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;

use super::key_index::{KeyAt, KeyIndex};
use crate::storage::revision::Revision;

/// A key range as etcd defines it: an empty `end` is the single key `start`,
/// `end == "\0"` is every key from `start` on, otherwise `[start, end)`.
#[derive(Debug, Clone, Copy)]
pub struct KeyRange<'a> {
    pub start: &'a [u8],
    pub end: &'a [u8],
}

impl<'a> KeyRange<'a> {
    pub fn new(start: &'a [u8], end: &'a [u8]) -> Self {
        Self { start, end }
    }

    pub fn is_single_key(&self) -> bool {
        self.end.is_empty()
    }

    /// Whether `key` falls in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        if self.is_single_key() {
            return key == self.start;
        }
        key >= self.start && (self.end == [0] || key < self.end)
    }

    /// A `[start, end)` that no key can fall in (a watch refuses it).
    pub fn is_empty_interval(&self) -> bool {
        !self.is_single_key() && self.end != [0] && self.end <= self.start
    }

    fn upper_bound(&self) -> Bound<&'a [u8]> {
        if self.end == [0] {
            Bound::Unbounded
        } else {
            Bound::Excluded(self.end)
        }
    }
}

#[derive(Debug, Default)]
pub struct TreeIndex {
    keys: BTreeMap<Bytes, KeyIndex>,
}

impl TreeIndex {
    pub fn put(&mut self, key: &Bytes, rev: Revision) {
        self.keys.entry(key.clone()).or_default().put(rev);
    }

    /// Adds a stored row while rebuilding the index from storage: the first
    /// row of a generation carries its creation revision and version.
    pub fn restore_put(&mut self, key: &Bytes, rev: Revision, created: i64, version: i64) {
        let ki = self.keys.entry(key.clone()).or_default();
        if ki.is_live() {
            ki.put(rev);
        } else {
            ki.restore(Revision::new(created, 0), rev, version);
        }
    }

    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> bool {
        self.keys.get_mut(key).is_some_and(|ki| ki.tombstone(rev))
    }

    pub fn get(&self, key: &[u8], at_rev: i64) -> Option<KeyAt> {
        self.keys.get(key)?.get(at_rev)
    }

    /// Keys in `range` that existed at `at_rev`, in key order.
    pub fn range(&self, range: KeyRange<'_>, at_rev: i64) -> Vec<(Bytes, KeyAt)> {
        if range.is_single_key() {
            return self
                .keys
                .get_key_value(range.start)
                .and_then(|(k, ki)| Some((k.clone(), ki.get(at_rev)?)))
                .into_iter()
                .collect();
        }
        if range.is_empty_interval() {
            return Vec::new();
        }
        self.keys
            .range::<[u8], _>((Bound::Included(range.start), range.upper_bound()))
            .filter_map(|(k, ki)| Some((k.clone(), ki.get(at_rev)?)))
            .collect()
    }

    /// Compacts every key at `at_rev`; returns the revisions at or below
    /// `at_rev` that must stay in storage.
    pub fn compact(&mut self, at_rev: i64) -> Vec<Revision> {
        let mut keep = Vec::new();
        self.keys.retain(|_, ki| !ki.compact(at_rev, &mut keep));
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn ranges_follow_etcd_conventions() {
        let mut index = TreeIndex::default();
        for (i, k) in ["a", "ab", "b", "c"].iter().enumerate() {
            index.put(&b(k), Revision::new(i as i64 + 2, 0));
        }
        let keys = |start: &str, end: &[u8]| -> Vec<Bytes> {
            index
                .range(KeyRange::new(start.as_bytes(), end), 10)
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(keys("a", b""), vec![b("a")]);
        assert_eq!(keys("a", b"b"), vec![b("a"), b("ab")]);
        assert_eq!(keys("ab", b"\0"), vec![b("ab"), b("b"), b("c")]);
        assert_eq!(keys("b", b"a"), Vec::<Bytes>::new());
        assert_eq!(keys("\0", b"\0").len(), 4);
        // At revision 3 only "a" and "ab" existed.
        assert_eq!(index.range(KeyRange::new(b"a", b"\0"), 3).len(), 2);
    }
}
