//! Merge: which state of a key survives when two writes meet.
//!
//! Every strategy obeys the laws written on [`MergeStrategy`]; they are what make regions
//! converge whatever order, duplication or relay path delivered the writes. This module decides;
//! it never stores, and never drops a loser silently (callers record what lost).

use crate::record::Record;

/// The outcome of merging an incoming state into the current one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The current state stays; the incoming write lost (or was already applied).
    KeepCurrent,
    /// The incoming state replaces the current one.
    TakeIncoming,
}

/// A conflict strategy.
///
/// Laws, for any records `a`, `b`, `c` of one key, writing `m(x, y)` for the record that survives:
/// - commutative: `m(a, b) == m(b, a)`
/// - associative: `m(m(a, b), c) == m(a, m(b, c))`
/// - idempotent: `m(a, a) == a`
///
/// Together they make the final state a function of the *set* of writes a region has applied,
/// which is exactly what convergence needs.
pub trait MergeStrategy {
    fn resolve(&self, current: &Record, incoming: &Record) -> Resolution;

    /// The surviving record, for law checking and callers that want the state itself.
    fn merge<'a>(&self, current: &'a Record, incoming: &'a Record) -> &'a Record {
        match self.resolve(current, incoming) {
            Resolution::KeepCurrent => current,
            Resolution::TakeIncoming => incoming,
        }
    }
}

/// `conflict_strategy: timestamp`: the whole record with the greater version wins; deletes are
/// tombstones and compete like any write.
#[derive(Clone, Copy, Debug, Default)]
pub struct LastWriterWins;

impl MergeStrategy for LastWriterWins {
    fn resolve(&self, current: &Record, incoming: &Record) -> Resolution {
        if crate::planted::active(crate::planted::Bug::IgnoreRegionTieBreak) {
            return if incoming.version.ts > current.version.ts {
                Resolution::TakeIncoming
            } else {
                Resolution::KeepCurrent
            };
        }
        if incoming.version > current.version {
            Resolution::TakeIncoming
        } else {
            Resolution::KeepCurrent
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Timestamp;
    use crate::record::Metadata;
    use crate::region::RegionName;
    use crate::version::Version;
    use proptest::prelude::*;

    fn record() -> impl Strategy<Value = Record> {
        (0u64..5, 0u32..3, 0usize..3).prop_map(|(w, l, r)| {
            let region = RegionName::new(["ap-northeast", "eu-central", "us-west"][r]).expect("valid");
            // Values are a function of the version: one version is one write.
            Record {
                value: (w % 3 != 0).then(|| format!("{{\"w\":{w},\"l\":{l},\"r\":{r}}}").into_bytes()),
                metadata: Metadata::default(),
                version: Version { ts: Timestamp::new(w, l), region: region.clone() },
                origin: region,
                lane: crate::Lane::Normal,
                seq: w * 10 + u64::from(l),
                deps: Default::default(),
                doc: None,
                placed_by: None,
                lacking: Default::default(),
            }
        })
    }

    proptest! {
        #[test]
        fn lww_is_commutative(a in record(), b in record()) {
            let m = LastWriterWins;
            prop_assert_eq!(m.merge(&a, &b), m.merge(&b, &a));
        }

        #[test]
        fn lww_is_associative(a in record(), b in record(), c in record()) {
            let m = LastWriterWins;
            prop_assert_eq!(m.merge(m.merge(&a, &b), &c), m.merge(&a, m.merge(&b, &c)));
        }

        #[test]
        fn lww_is_idempotent(a in record()) {
            prop_assert_eq!(LastWriterWins.merge(&a, &a), &a);
        }

        /// Applying any permutation of the same writes leaves the same survivor.
        #[test]
        fn lww_order_does_not_matter(writes in proptest::collection::vec(record(), 1..12), seed in any::<u64>()) {
            let fold = |ws: &[Record]| {
                let mut cur = ws[0].clone();
                for w in &ws[1..] { cur = LastWriterWins.merge(&cur, w).clone(); }
                cur
            };
            let forward = fold(&writes);
            let mut shuffled = writes.clone();
            // Deterministic shuffle from the seed.
            let n = shuffled.len();
            for i in (1..n).rev() { shuffled.swap(i, (seed as usize ^ i.wrapping_mul(2654435761)) % (i + 1)); }
            let max = writes.iter().max_by(|a, b| a.version.cmp(&b.version)).cloned();
            prop_assert_eq!(Some(&forward), max.as_ref());
            prop_assert_eq!(fold(&shuffled), forward);
        }
    }
}
