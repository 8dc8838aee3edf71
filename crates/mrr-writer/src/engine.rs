//! The writer's decisions, separate from its thread: given requests and the current records,
//! produce the commit batch and the replies. Deterministic given the physical time passed in,
//! so the simulator runs the same code the server does.
//!
//! Each request is all-or-nothing within a group: its reads happen before any of its effects,
//! so a read error leaves the group's pending state as it was.

use std::collections::BTreeMap;

use mrr_core::merge::{LastWriterWins, MergeStrategy, Resolution};
use mrr_core::session::{admit_incoming, Incoming};
use mrr_core::{Change, Hlc, Key, Op, Record, RegionName, Version, VersionVector};
use mrr_storage::{CommitBatch, RecoveredState, Store, StoreError};

use crate::{Committed, LocalOp, Refusal};

/// What happened to a batch of remote changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteOutcome {
    /// Changes admitted (whether their state won the merge or lost it).
    pub applied: usize,
    pub duplicates: usize,
    /// Keys of admitted changes whose state lost to a newer version already here.
    pub superseded: Vec<Key>,
    /// Positions (in the request) of the changes admitted, duplicates excluded.
    pub admitted: Vec<usize>,
    /// Set when the writer stopped before the end of the batch; later changes were not looked at.
    pub refused: Option<Refusal>,
    /// The applied version vector after this batch (cumulative ack for the sender).
    pub vv: VersionVector,
}

#[derive(Debug)]
pub struct Engine {
    local: RegionName,
    hlc: Hlc,
    applied: VersionVector,
}

/// The state of one group commit under construction.
#[derive(Debug)]
pub struct Pending {
    overlay: BTreeMap<Key, Record>,
    changes: Vec<Change>,
    vv: VersionVector,
}

impl Engine {
    pub fn new(local: RegionName, recovered: RecoveredState, max_skew_ms: u64) -> Self {
        Self { local, hlc: Hlc::new(recovered.hlc_high_water, max_skew_ms), applied: recovered.vv }
    }

    pub fn local(&self) -> &RegionName {
        &self.local
    }

    pub fn applied(&self) -> &VersionVector {
        &self.applied
    }

    pub fn begin(&self) -> Pending {
        Pending { overlay: BTreeMap::new(), changes: Vec::new(), vv: self.applied.clone() }
    }

    /// The batch to commit, or `None` when the group changed nothing.
    pub fn finish(&self, pending: Pending) -> Option<CommitBatch> {
        if pending.changes.is_empty() {
            return None;
        }
        let mut vv = VersionVector::new();
        for c in &pending.changes {
            vv.raise(&c.origin, pending.vv.get(&c.origin));
        }
        Some(CommitBatch {
            records: pending.overlay.into_iter().collect(),
            changes: pending.changes,
            vv,
            hlc_high_water: self.hlc.last(),
        })
    }

    /// Makes a landed commit the new applied state.
    pub fn committed(&mut self, batch: &CommitBatch) {
        self.applied.join(&batch.vv);
    }

    fn prefetch<'a>(
        pending: &Pending,
        store: &dyn Store,
        keys: impl Iterator<Item = &'a Key>,
    ) -> Result<BTreeMap<Key, Option<Record>>, StoreError> {
        let mut reads = BTreeMap::new();
        for key in keys {
            if !pending.overlay.contains_key(key) && !reads.contains_key(key) {
                reads.insert(key.clone(), store.get(key)?);
            }
        }
        Ok(reads)
    }

    fn current(pending: &Pending, reads: &BTreeMap<Key, Option<Record>>, key: &Key) -> Option<Record> {
        pending.overlay.get(key).cloned().or_else(|| reads.get(key).cloned().flatten())
    }

    pub fn apply_local(
        &mut self,
        pending: &mut Pending,
        store: &dyn Store,
        ops: Vec<LocalOp>,
        physical_ms: u64,
    ) -> Result<Vec<Committed>, StoreError> {
        let reads = Self::prefetch(
            pending,
            store,
            ops.iter().map(|op| match op {
                LocalOp::Put { key, .. } | LocalOp::Delete { key } => key,
            }),
        )?;
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            let (key, op, metadata) = match op {
                LocalOp::Put { key, value, metadata } => (key, Op::Put { value }, metadata),
                LocalOp::Delete { key } => {
                    // A tombstone keeps the placement of what it deletes.
                    let metadata = Self::current(pending, &reads, &key).map(|r| r.metadata).unwrap_or_default();
                    (key, Op::Delete, metadata)
                }
            };
            let seq = pending.vv.get(&self.local) + 1;
            let change = Change {
                origin: self.local.clone(),
                seq,
                key: key.clone(),
                op,
                metadata,
                version: Version { ts: self.hlc.now(physical_ms), region: self.local.clone() },
            };
            let record = change.to_record();
            if let Some(current) = Self::current(pending, &reads, &key) {
                // The HLC has observed every version stored here, so a local write is newest.
                assert_eq!(LastWriterWins.resolve(&current, &record), Resolution::TakeIncoming);
            }
            pending.vv.advance(&self.local, seq);
            pending.overlay.insert(key.clone(), record.clone());
            pending.changes.push(change);
            out.push(Committed { key, record });
        }
        Ok(out)
    }

    pub fn apply_remote(
        &mut self,
        pending: &mut Pending,
        store: &dyn Store,
        changes: Vec<Change>,
        physical_ms: u64,
    ) -> Result<RemoteOutcome, StoreError> {
        let reads = Self::prefetch(pending, store, changes.iter().map(|c| &c.key))?;
        let mut out = RemoteOutcome::default();
        for (position, change) in changes.into_iter().enumerate() {
            match admit_incoming(&self.local, &pending.vv, &change.origin, change.seq) {
                Incoming::Apply => {}
                Incoming::Duplicate => {
                    if mrr_core::planted::active(mrr_core::planted::Bug::DuplicatesBypassMerge) {
                        pending.overlay.insert(change.key.clone(), change.to_record());
                    }
                    out.duplicates += 1;
                    continue;
                }
                Incoming::Gap { expected } => {
                    out.refused = Some(Refusal::Gap { origin: change.origin, seq: change.seq, expected });
                    break;
                }
                Incoming::Loop => {
                    out.refused = Some(Refusal::Loop { origin: change.origin, seq: change.seq });
                    break;
                }
            }
            if let Err(skew) = self.hlc.observe(change.version.ts, physical_ms) {
                out.refused = Some(Refusal::ClockSkew { origin: change.origin, seq: change.seq, skew });
                break;
            }
            let incoming = change.to_record();
            let wins = match Self::current(pending, &reads, &change.key) {
                Some(current) => LastWriterWins.resolve(&current, &incoming) == Resolution::TakeIncoming,
                None => true,
            };
            if wins {
                pending.overlay.insert(change.key.clone(), incoming);
            } else {
                out.superseded.push(change.key.clone());
            }
            pending.vv.advance(&change.origin, change.seq);
            pending.changes.push(change);
            out.applied += 1;
            out.admitted.push(position);
        }
        out.vv = pending.vv.clone();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mrr_core::{Metadata, Timestamp};
    use mrr_storage::MemStore;

    fn r(s: &str) -> RegionName {
        RegionName::new(s).expect("valid")
    }

    fn put(id: &str, v: &str) -> LocalOp {
        LocalOp::Put { key: Key::new("users", id), value: v.as_bytes().to_vec(), metadata: Metadata::default() }
    }

    /// Runs one group through an engine and commits it to `store`.
    fn local(engine: &mut Engine, store: &MemStore, ops: Vec<LocalOp>, now: u64) -> Vec<Committed> {
        let mut p = engine.begin();
        let out = engine.apply_local(&mut p, store, ops, now).expect("apply");
        let batch = engine.finish(p).expect("batch");
        store.commit(&batch).expect("commit");
        engine.committed(&batch);
        out
    }

    fn remote(engine: &mut Engine, store: &MemStore, changes: Vec<Change>, now: u64) -> RemoteOutcome {
        let mut p = engine.begin();
        let out = engine.apply_remote(&mut p, store, changes, now).expect("apply");
        if let Some(batch) = engine.finish(p) {
            store.commit(&batch).expect("commit");
            engine.committed(&batch);
        }
        out
    }

    fn changes_of(store: &MemStore, origin: &str) -> Vec<Change> {
        store.changes_after(&r(origin), 0, 100).expect("changes")
    }

    #[test]
    fn local_writes_take_contiguous_seqs_and_increasing_versions() {
        let store = MemStore::new();
        let mut e = Engine::new(r("a"), RecoveredState::default(), 200);
        let out = local(&mut e, &store, vec![put("u1", "{}"), put("u1", "{\"x\":1}")], 1_000);
        assert_eq!(out.iter().map(|c| c.record.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(out[1].record.version > out[0].record.version);
        assert_eq!(store.get(&Key::new("users", "u1")).expect("get"), Some(out[1].record.clone()));
        assert_eq!(e.applied().get(&r("a")), 2);
    }

    #[test]
    fn remote_changes_converge_by_version_whatever_the_order() {
        let (sa, sb) = (MemStore::new(), MemStore::new());
        let mut a = Engine::new(r("a"), RecoveredState::default(), 200);
        let mut b = Engine::new(r("b"), RecoveredState::default(), 200);
        local(&mut a, &sa, vec![put("u1", "{\"from\":\"a\"}")], 1_000);
        local(&mut b, &sb, vec![put("u1", "{\"from\":\"b\"}")], 1_000);
        let out_b = remote(&mut b, &sb, changes_of(&sa, "a"), 1_000);
        let out_a = remote(&mut a, &sa, changes_of(&sb, "b"), 1_000);
        let key = Key::new("users", "u1");
        assert_eq!(sa.get(&key).expect("get"), sb.get(&key).expect("get"));
        // Same timestamp, so the region name breaks the tie: b wins on both sides.
        assert_eq!(out_a.superseded.len() + out_b.superseded.len(), 1);
        assert_eq!(sa.get(&key).expect("get").map(|r| r.origin), Some(r("b")));
    }

    #[test]
    fn duplicates_are_dropped_and_gaps_loops_and_skew_refused() {
        let (sa, sb) = (MemStore::new(), MemStore::new());
        let mut a = Engine::new(r("a"), RecoveredState::default(), 200);
        let mut b = Engine::new(r("b"), RecoveredState::default(), 200);
        local(&mut a, &sa, vec![put("u1", "{}"), put("u2", "{}"), put("u3", "{}")], 1_000);
        let all = changes_of(&sa, "a");

        let out = remote(&mut b, &sb, all[..2].to_vec(), 1_000);
        assert_eq!((out.applied, out.duplicates, out.refused.clone()), (2, 0, None));
        let out = remote(&mut b, &sb, all.clone(), 1_000);
        assert_eq!((out.applied, out.duplicates), (1, 2));
        assert_eq!(out.vv.get(&r("a")), 3);

        let mut gap = all[2].clone();
        gap.seq = 5;
        let out = remote(&mut b, &sb, vec![gap], 1_000);
        assert!(matches!(out.refused, Some(Refusal::Gap { expected: 4, .. })));

        let own = changes_of(&sb, "b");
        assert!(own.is_empty());
        local(&mut b, &sb, vec![put("u9", "{}")], 1_000);
        let out = remote(&mut b, &sb, changes_of(&sb, "b"), 1_000);
        assert!(matches!(out.refused, Some(Refusal::Loop { .. })));

        // A change stamped 1 s in the future is refused and leaves nothing behind.
        let mut c = Engine::new(r("c"), RecoveredState::default(), 200);
        let sc = MemStore::new();
        let out = remote(&mut c, &sc, all.clone(), 1_000 - 201);
        assert!(matches!(out.refused, Some(Refusal::ClockSkew { .. })));
        assert_eq!(out.applied, 0);
        assert_eq!(c.hlc.last(), Timestamp::ZERO, "refused timestamps never drag the clock");
    }

    #[test]
    fn restart_resumes_sequence_and_clock() {
        let store = MemStore::new();
        let mut e = Engine::new(r("a"), RecoveredState::default(), 200);
        let first = local(&mut e, &store, vec![put("u1", "{}")], 5_000);
        let mut e = Engine::new(r("a"), store.recover().expect("recover"), 200);
        let second = local(&mut e, &store, vec![put("u1", "{}")], 1_000);
        assert_eq!(second[0].record.seq, 2);
        assert!(second[0].record.version > first[0].record.version, "clock went back; versions did not");
    }
}
