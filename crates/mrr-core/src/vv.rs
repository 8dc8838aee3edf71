//! Version vectors: per origin region, the highest contiguous sequence number applied.
//!
//! A version vector is at once the replication cursor (send me everything after this), the
//! duplicate filter (anything at or below is already applied) and the summary two regions
//! compare to know they hold the same history.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::region::RegionName;

/// Ordered by origin so that iteration, encoding and digests are deterministic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector {
    entries: BTreeMap<RegionName, u64>,
}

/// How a change with `(origin, seq)` relates to what has been applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// `seq` is the next one: apply it.
    Next,
    /// Already applied: drop it.
    Duplicate,
    /// Changes between are missing: the stream broke its contiguity promise.
    Gap { expected: u64 },
}

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, origin: &RegionName) -> u64 {
        self.entries.get(origin).copied().unwrap_or(0)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&RegionName, u64)> {
        self.entries.iter().map(|(r, s)| (r, *s))
    }

    pub fn admit(&self, origin: &RegionName, seq: u64) -> Admission {
        let have = self.get(origin);
        if seq <= have {
            Admission::Duplicate
        } else if seq == have + 1 {
            Admission::Next
        } else {
            Admission::Gap { expected: have + 1 }
        }
    }

    /// Records that `seq` from `origin` is applied. Must be the next contiguous one.
    pub fn advance(&mut self, origin: &RegionName, seq: u64) {
        let have = self.get(origin);
        assert_eq!(seq, have + 1, "version vector for {origin} must advance contiguously");
        self.entries.insert(origin.clone(), seq);
    }

    /// Sets an entry to at least `seq` (used to raise cursors from cumulative acks).
    pub fn raise(&mut self, origin: &RegionName, seq: u64) {
        let entry = self.entries.entry(origin.clone()).or_insert(0);
        *entry = (*entry).max(seq);
    }

    /// Pointwise maximum.
    pub fn join(&mut self, other: &VersionVector) {
        for (origin, seq) in other.iter() {
            self.raise(origin, seq);
        }
    }

    /// Whether every entry of `other` is covered by `self`.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.iter().all(|(o, s)| self.get(o) >= s)
    }

    /// Changes in `self` not covered by `other`, summed over origins.
    pub fn count_ahead_of(&self, other: &VersionVector) -> u64 {
        self.iter().map(|(o, s)| s.saturating_sub(other.get(o))).sum()
    }
}

impl FromIterator<(RegionName, u64)> for VersionVector {
    fn from_iter<T: IntoIterator<Item = (RegionName, u64)>>(iter: T) -> Self {
        let mut vv = Self::new();
        for (o, s) in iter {
            vv.raise(&o, s);
        }
        vv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RegionName {
        RegionName::new(s).expect("valid")
    }

    #[test]
    fn admission_classifies_next_duplicate_and_gap() {
        let mut vv = VersionVector::new();
        assert_eq!(vv.admit(&r("a"), 1), Admission::Next);
        assert_eq!(vv.admit(&r("a"), 2), Admission::Gap { expected: 1 });
        vv.advance(&r("a"), 1);
        assert_eq!(vv.admit(&r("a"), 1), Admission::Duplicate);
        assert_eq!(vv.admit(&r("a"), 2), Admission::Next);
    }

    #[test]
    #[should_panic(expected = "contiguously")]
    fn advance_refuses_gaps() {
        VersionVector::new().advance(&r("a"), 2);
    }

    #[test]
    fn join_and_dominance() {
        let a: VersionVector = [(r("a"), 3), (r("b"), 1)].into_iter().collect();
        let b: VersionVector = [(r("a"), 1), (r("c"), 4)].into_iter().collect();
        let mut j = a.clone();
        j.join(&b);
        assert!(j.dominates(&a) && j.dominates(&b));
        assert!(!a.dominates(&b));
        assert_eq!(j.count_ahead_of(&a), 4);
    }
}
