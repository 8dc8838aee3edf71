//! Fold: a `custom` topic's record as a function of its changes taken in version order.
//!
//! A user handler need not be commutative, so regions that apply the same writes in different
//! orders could diverge. Instead, every region folds a key's changes in one order — version
//! order — and when a change arrives that belongs before changes already folded, re-folds from
//! its position (each [`FoldEntry`] keeps the state after it, so a re-fold starts there, not at
//! the beginning). A change its writer made after seeing everything folded before it replaces
//! the state (an update, not a conflict); only a concurrent one goes through the handler. A
//! handler error leaves the state as it was and marks the change failed (a dead letter); the
//! same error happens in every region, because handlers are deterministic.
//!
//! This module is one pure step; the writer's engine reads and writes the entries.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::change::{ChangeId, Replay};
use crate::policy::Resolver;
use crate::record::Metadata;
use crate::version::Version;
use crate::vv::VersionVector;

/// The change that produced a fold state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub id: ChangeId,
    pub version: Version,
    pub deps: VersionVector,
    pub metadata: Metadata,
}

/// The record after a fold step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldState {
    /// JSON object bytes; `None` before the first write or after a delete.
    pub value: Option<Vec<u8>>,
    /// Per origin, the highest sequence folded into `value`: a change whose `deps` cover this
    /// saw the whole state.
    pub folded: VersionVector,
    pub head: Option<Head>,
}

/// What a step did with its change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The change's content became the state. `over` is set when it overwrote a concurrent
    /// write (a delete against a concurrent write, or a write against a concurrent delete).
    Applied { over: Option<Head> },
    /// The handler merged the change into the concurrent state `with`.
    Merged { with: Head },
    /// The handler failed; the state is unchanged. `replayed_by` is the replay that later
    /// applied this change's content, if any.
    Failed { reason: String, replayed_by: Option<Replay> },
    /// A replay whose target was already applied (by itself or an earlier replay).
    ReplaySkipped,
}

/// One change of a `custom` key, with the result of the latest fold through it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldEntry {
    pub id: ChangeId,
    pub version: Version,
    pub deps: VersionVector,
    /// JSON object bytes; `None` for a delete.
    pub value: Option<Vec<u8>>,
    pub metadata: Metadata,
    pub replay_of: Option<Replay>,
    pub after: FoldState,
    pub outcome: Outcome,
}

impl FoldEntry {
    pub fn head(&self) -> Head {
        Head {
            id: self.id.clone(),
            version: self.version.clone(),
            deps: self.deps.clone(),
            metadata: self.metadata.clone(),
        }
    }

    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Failed { .. })
    }
}

fn object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("stored value is not a JSON object".into()),
        Err(e) => Err(format!("stored value is not JSON: {e}")),
    }
}

/// Folds `entry` onto `before`; writes the result into `entry.after` and `entry.outcome`.
pub fn step(resolver: &dyn Resolver, before: &FoldState, entry: &mut FoldEntry) {
    let saw_everything = entry.deps.dominates(&before.folded);
    let concurrent_head = if saw_everything { None } else { before.head.clone() };
    let mut folded = before.folded.clone();
    folded.raise(&entry.id.stream(), entry.id.seq);
    let applied = |value: Option<Vec<u8>>| FoldState { value, folded: folded.clone(), head: Some(entry.head()) };
    let (after, outcome) = match (&before.value, &entry.value) {
        (Some(current), Some(incoming)) if !saw_everything => {
            match object(current).and_then(|c| Ok((c, object(incoming)?))).and_then(|(c, i)| resolver.resolve(&c, &i)) {
                Ok(merged) => {
                    let with = before.head.clone().unwrap_or_else(|| entry.head());
                    (applied(Some(Value::Object(merged).to_string().into_bytes())), Outcome::Merged { with })
                }
                Err(reason) => (before.clone(), Outcome::Failed { reason, replayed_by: None }),
            }
        }
        (current, incoming) => {
            // An update of a state its writer saw, a first write, or a delete/write race: the
            // later version stands, and a race is reported.
            let over = concurrent_head.filter(|_| current.is_some() != incoming.is_some());
            (applied(incoming.clone()), Outcome::Applied { over })
        }
    };
    entry.after = after;
    entry.outcome = outcome;
}

/// A handler for tests of the fold and of what drives it (the writer's engine).
#[cfg(any(test, feature = "test-support"))]
pub mod testing {
    use serde_json::{Map, Value};

    use crate::policy::Resolver;

    /// Deliberately not commutative: appends the incoming `log` to the current one. Refuses an
    /// incoming `log` containing `!`, to exercise handler failures.
    #[derive(Debug)]
    pub struct Append;

    impl Resolver for Append {
        fn resolve(&self, c: &Map<String, Value>, i: &Map<String, Value>) -> Result<Map<String, Value>, String> {
            let s = |m: &Map<String, Value>| m.get("log").and_then(Value::as_str).unwrap_or_default().to_owned();
            if s(i).contains('!') {
                return Err("refuses '!'".into());
            }
            let mut out = c.clone();
            out.insert("log".into(), Value::from(s(c) + &s(i)));
            Ok(out)
        }

        fn fingerprint(&self) -> String {
            "append".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Append;
    use super::*;
    use crate::hlc::Timestamp;
    use crate::region::RegionName;
    use proptest::prelude::*;

    fn region(i: usize) -> RegionName {
        RegionName::new(["ap-northeast", "eu-central", "us-west"][i]).expect("valid")
    }

    fn entry(ts: u64, r: usize, seq: u64, deps: VersionVector, log: Option<&str>) -> FoldEntry {
        FoldEntry {
            id: ChangeId { origin: region(r), lane: crate::Lane::Normal, seq },
            version: Version { ts: Timestamp::new(ts, 0), region: region(r) },
            deps,
            value: log.map(|l| format!("{{\"log\":\"{l}\"}}").into_bytes()),
            metadata: Metadata::default(),
            replay_of: None,
            after: FoldState::default(),
            outcome: Outcome::ReplaySkipped,
        }
    }

    /// Folds entries in version order, as the engine does after any arrival order.
    fn fold(mut entries: Vec<FoldEntry>) -> (Option<String>, Vec<Outcome>) {
        entries.sort_by(|a, b| a.version.cmp(&b.version));
        let mut state = FoldState::default();
        for e in &mut entries {
            step(&Append, &state, e);
            state = e.after.clone();
        }
        let value = state.value.map(|v| String::from_utf8_lossy(&v).into_owned());
        (value, entries.into_iter().map(|e| e.outcome).collect())
    }

    #[test]
    fn updates_replace_and_concurrent_writes_merge() {
        let a1 = entry(1, 0, 1, VersionVector::new(), Some("a"));
        let deps: VersionVector = [(crate::Stream::normal(region(0)), 1)].into_iter().collect();
        let b1 = entry(2, 1, 1, deps.clone(), Some("b"));
        let c1 = entry(3, 2, 1, deps, Some("c"));
        let (value, outcomes) = fold(vec![c1, a1, b1]);
        // b saw a: replaces. c saw a but not b: merged.
        assert_eq!(value.as_deref(), Some("{\"log\":\"bc\"}"));
        assert!(matches!(outcomes[1], Outcome::Applied { over: None }));
        assert!(matches!(&outcomes[2], Outcome::Merged { with } if with.id.origin == region(1)));
    }

    #[test]
    fn a_failing_handler_leaves_the_state_and_marks_the_change() {
        let a1 = entry(1, 0, 1, VersionVector::new(), Some("a"));
        let b1 = entry(2, 1, 1, VersionVector::new(), Some("b!"));
        let (value, outcomes) = fold(vec![a1, b1]);
        assert_eq!(value.as_deref(), Some("{\"log\":\"a\"}"));
        assert!(matches!(&outcomes[1], Outcome::Failed { reason, .. } if reason.contains("refuses")));
    }

    /// Arrival in any order, as the engine handles it: insert each change at its version
    /// position and re-fold from there, starting from the stored state of the entry before.
    fn incremental(arrivals: Vec<FoldEntry>) -> (Option<String>, Vec<Outcome>) {
        let mut folded: Vec<FoldEntry> = Vec::new();
        for e in arrivals {
            let at = folded.partition_point(|x| x.version < e.version);
            folded.insert(at, e);
            for i in at..folded.len() {
                let before = if i == 0 { FoldState::default() } else { folded[i - 1].after.clone() };
                step(&Append, &before, &mut folded[i]);
            }
        }
        let value = folded.last().and_then(|e| e.after.value.clone()).map(|v| String::from_utf8_lossy(&v).into_owned());
        (value, folded.into_iter().map(|e| e.outcome).collect())
    }

    proptest! {
        /// Whatever the arrival order, re-folding from the insertion point gives what folding
        /// all changes in version order gives, though the handler is not commutative.
        #[test]
        fn arrival_order_does_not_matter(
            writes in proptest::collection::vec((0usize..3, any::<bool>(), 0u8..4), 1..10),
            seed in any::<u64>(),
        ) {
            let mut seqs = [0u64; 3];
            let mut known = [VersionVector::new(), VersionVector::new(), VersionVector::new()];
            let mut all = Vec::new();
            for (i, (r, sees_all, l)) in writes.iter().enumerate() {
                if *sees_all {
                    let everyone = known.iter().fold(VersionVector::new(), |mut acc, k| { acc.join(k); acc });
                    known[*r] = everyone;
                }
                seqs[*r] += 1;
                let log = ["x", "y", "z", "w!"][*l as usize];
                all.push(entry(i as u64 + 1, *r, seqs[*r], known[*r].clone(), (*l != 3 || i % 2 == 0).then_some(log)));
                known[*r].raise(&crate::Stream::normal(region(*r)), seqs[*r]);
            }
            let forward = fold(all.clone());
            let n = all.len();
            for i in (1..n).rev() { all.swap(i, (seed as usize ^ i.wrapping_mul(2654435761)) % (i + 1)); }
            prop_assert_eq!(incremental(all), forward);
        }
    }
}
