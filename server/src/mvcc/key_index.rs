//! One key's history: its generations of revisions, as etcd's keyIndex.
//!
//! A generation starts when the key is created and ends with the tombstone
//! revision that deleted it; the last generation is the open one (empty when
//! the key is currently deleted).

use crate::storage::revision::Revision;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Generation {
    /// Number of revisions ever put in this generation (survives compaction).
    version: i64,
    created: Revision,
    revs: Vec<Revision>,
}

/// What the index knows about a key at a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAt {
    pub modified: Revision,
    pub created: Revision,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIndex {
    generations: Vec<Generation>,
}

impl Default for KeyIndex {
    fn default() -> Self {
        Self {
            generations: vec![Generation::default()],
        }
    }
}

impl KeyIndex {
    pub fn put(&mut self, rev: Revision) {
        let generation = self.generations.last_mut().expect("always one generation");
        if generation.revs.is_empty() {
            generation.created = rev;
        }
        generation.revs.push(rev);
        generation.version += 1;
    }

    /// Starts the key's history at a stored row, after a restart or a
    /// compaction removed the older rows of its generation.
    pub fn restore(&mut self, created: Revision, modified: Revision, version: i64) {
        let generation = self.generations.last_mut().expect("always one generation");
        *generation = Generation {
            version,
            created,
            revs: vec![modified],
        };
    }

    /// Whether the key currently exists (its open generation has revisions).
    pub fn is_live(&self) -> bool {
        self.generations.last().is_some_and(|g| !g.revs.is_empty())
    }

    /// Ends the open generation with `rev`. Returns false if the key does not exist.
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        if self.generations.last().is_none_or(|g| g.revs.is_empty()) {
            return false;
        }
        self.put(rev);
        self.generations.push(Generation::default());
        true
    }

    /// The key's state at `at_rev`, or None if it did not exist then.
    pub fn get(&self, at_rev: i64) -> Option<KeyAt> {
        let generation = self.find_generation(at_rev)?;
        let newer = generation
            .revs
            .iter()
            .rev()
            .take_while(|r| r.main > at_rev)
            .count();
        let idx = generation.revs.len().checked_sub(newer + 1)?;
        Some(KeyAt {
            modified: generation.revs[idx],
            created: generation.created,
            version: generation.version - newer as i64,
        })
    }

    fn find_generation(&self, at_rev: i64) -> Option<&Generation> {
        let last = self.generations.len() - 1;
        for (i, generation) in self.generations.iter().enumerate().rev() {
            let Some(first) = generation.revs.first() else {
                continue;
            };
            if i != last
                && generation
                    .revs
                    .last()
                    .is_some_and(|tomb| tomb.main <= at_rev)
            {
                return None;
            }
            if first.main <= at_rev {
                return Some(generation);
            }
        }
        None
    }

    /// Drops history below `at_rev`, keeping what a read at `at_rev` needs.
    /// Revisions kept at or below `at_rev` are added to `keep`.
    /// Returns true if the key has no history left.
    pub fn compact(&mut self, at_rev: i64, keep: &mut Vec<Revision>) -> bool {
        let last = self.generations.len() - 1;
        // Generations whose tombstone is at or below at_rev are gone entirely.
        let first_live = self
            .generations
            .iter()
            .position(|g| g.revs.last().is_none_or(|tomb| tomb.main > at_rev))
            .unwrap_or(last);
        self.generations.drain(..first_live.min(last));
        let generation = &mut self.generations[0];
        if let Some(newest_old) = generation.revs.iter().rposition(|r| r.main <= at_rev) {
            generation.revs.drain(..newest_old);
            keep.push(generation.revs[0]);
        }
        self.generations.len() == 1 && self.generations[0].revs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    #[test]
    fn versions_and_generations() {
        let mut ki = KeyIndex::default();
        ki.put(rev(2));
        ki.put(rev(4));
        assert!(ki.tombstone(rev(6)));
        ki.put(rev(8));

        assert_eq!(ki.get(1), None);
        let at3 = ki.get(3).unwrap();
        assert_eq!(
            (at3.modified, at3.created, at3.version),
            (rev(2), rev(2), 1)
        );
        let at5 = ki.get(5).unwrap();
        assert_eq!(
            (at5.modified, at5.created, at5.version),
            (rev(4), rev(2), 2)
        );
        assert_eq!(ki.get(6), None);
        assert_eq!(ki.get(7), None);
        let at9 = ki.get(9).unwrap();
        assert_eq!(
            (at9.modified, at9.created, at9.version),
            (rev(8), rev(8), 1)
        );
    }

    #[test]
    fn tombstone_of_missing_key_is_refused() {
        let mut ki = KeyIndex::default();
        assert!(!ki.tombstone(rev(2)));
        ki.put(rev(3));
        assert!(ki.tombstone(rev(4)));
        assert!(!ki.tombstone(rev(5)));
    }

    #[test]
    fn compaction_keeps_the_state_at_the_compacted_revision() {
        let mut ki = KeyIndex::default();
        ki.put(rev(2));
        ki.put(rev(4));
        ki.tombstone(rev(6));
        ki.put(rev(8));
        ki.put(rev(10));

        let mut keep = Vec::new();
        assert!(!ki.compact(5, &mut keep));
        assert_eq!(keep, vec![rev(4)]);
        assert_eq!(ki.get(5).unwrap().modified, rev(4));
        assert_eq!(ki.get(5).unwrap().version, 2);

        keep.clear();
        assert!(!ki.compact(9, &mut keep));
        assert_eq!(keep, vec![rev(8)]);
        assert_eq!(ki.get(9).unwrap().modified, rev(8));
        assert_eq!(ki.get(11).unwrap().version, 2);
    }

    #[test]
    fn compaction_past_a_deletion_forgets_the_key() {
        let mut ki = KeyIndex::default();
        ki.put(rev(2));
        ki.tombstone(rev(3));
        let mut keep = Vec::new();
        assert!(ki.compact(3, &mut keep));
        assert!(keep.is_empty());
        assert!(!ki.is_live());
        assert_eq!(ki.get(3), None);
    }
}
