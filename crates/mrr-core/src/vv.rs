//! Version vectors: per stream (origin region and lane), the highest contiguous sequence number
//! applied.
//!
//! A version vector is at once the replication cursor (send me everything after this), the
//! duplicate filter (anything at or below is already applied) and the summary two regions
//! compare to know they hold the same history.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::lane::Stream;
use crate::region::RegionName;

/// Ordered by stream so that iteration, encoding and digests are deterministic. Serialised as
/// a list of entries (a map keyed by a struct has no JSON form).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "Vec<(Stream, u64)>", from = "Vec<(Stream, u64)>")]
pub struct VersionVector {
    entries: BTreeMap<Stream, u64>,
}

impl From<VersionVector> for Vec<(Stream, u64)> {
    fn from(vv: VersionVector) -> Self {
        vv.entries.into_iter().collect()
    }
}

impl From<Vec<(Stream, u64)>> for VersionVector {
    fn from(entries: Vec<(Stream, u64)>) -> Self {
        entries.into_iter().collect()
    }
}

/// How a change with `(stream, seq)` relates to what has been applied.
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

    /// Whether no stream has an entry above 0.
    pub fn is_empty(&self) -> bool {
        self.iter().all(|(_, seq)| seq == 0)
    }

    pub fn get(&self, stream: &Stream) -> u64 {
        self.entries.get(stream).copied().unwrap_or(0)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Stream, u64)> {
        self.entries.iter().map(|(r, s)| (r, *s))
    }

    /// The entries of `origin`'s streams only.
    pub fn of_origin(&self, origin: &RegionName) -> VersionVector {
        self.iter().filter(|(s, _)| &s.origin == origin).map(|(s, n)| (s.clone(), n)).collect()
    }

    pub fn admit(&self, stream: &Stream, seq: u64) -> Admission {
        let have = self.get(stream);
        if seq <= have {
            Admission::Duplicate
        } else if seq == have + 1 {
            Admission::Next
        } else {
            Admission::Gap { expected: have + 1 }
        }
    }

    /// Records that `seq` of `stream` is applied. Must be the next contiguous one.
    pub fn advance(&mut self, stream: &Stream, seq: u64) {
        let have = self.get(stream);
        assert_eq!(seq, have + 1, "version vector for {stream} must advance contiguously");
        self.entries.insert(stream.clone(), seq);
    }

    /// Sets an entry to at least `seq` (used to raise cursors from cumulative acks).
    pub fn raise(&mut self, stream: &Stream, seq: u64) {
        let entry = self.entries.entry(stream.clone()).or_insert(0);
        *entry = (*entry).max(seq);
    }

    /// Pointwise maximum.
    pub fn join(&mut self, other: &VersionVector) {
        for (origin, seq) in other.iter() {
            self.raise(origin, seq);
        }
    }

    /// Pointwise minimum: a stream missing from either is at 0, so it is left out.
    pub fn meet(&self, other: &VersionVector) -> VersionVector {
        self.iter()
            .filter_map(|(s, n)| Some((s.clone(), n.min(other.entries.get(s).copied()?))))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Whether every entry of `other` is covered by `self`.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.iter().all(|(o, s)| self.get(o) >= s)
    }

    /// Changes in `self` not covered by `other`, summed over streams.
    pub fn count_ahead_of(&self, other: &VersionVector) -> u64 {
        self.iter().map(|(o, s)| s.saturating_sub(other.get(o))).sum()
    }
}

impl FromIterator<(Stream, u64)> for VersionVector {
    fn from_iter<T: IntoIterator<Item = (Stream, u64)>>(iter: T) -> Self {
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

    fn r(s: &str) -> Stream {
        Stream::parse(s).expect("valid")
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

    #[test]
    fn lanes_of_one_origin_are_separate_streams() {
        let mut vv = VersionVector::new();
        vv.advance(&r("a.urgent"), 1);
        assert_eq!(vv.admit(&r("a"), 1), Admission::Next, "the normal lane has its own sequence");
        vv.advance(&r("a"), 1);
        vv.advance(&r("a"), 2);
        vv.advance(&r("b"), 1);
        let a = RegionName::new("a").expect("valid");
        assert_eq!(vv.of_origin(&a), [(r("a"), 2), (r("a.urgent"), 1)].into_iter().collect());
        let json = serde_json::to_string(&vv).expect("a vector has a JSON form");
        assert_eq!(serde_json::from_str::<VersionVector>(&json).expect("round trip"), vv);
    }
}
