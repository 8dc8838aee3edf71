//! Anti-entropy in the writer: joining a peer's copy of a record into this region's.
//!
//! A peer found a key held differently ([`crate::repair`]) and offers its state. The state is
//! turned back into the content changes it is made of (the record's own write under
//! `timestamp`, its document as one delta under `merge`, its fold history under `custom`) and
//! applied with [`Engine::apply_content`], the same idempotent join that merges replicated
//! changes: what this region already holds changes nothing, a newer write wins, a document
//! takes the union of both. So a repair never undoes a write; at worst it changes nothing.
//!
//! What is not joined: a state holding a change this region has not applied yet (in flight:
//! replication brings it, with its conflict-log entry and its place in the changelog); a key
//! whose copies place it in different regions (a move settles that; copies that agree on the
//! regions take the newer of their deciding moves); and, under `timestamp`, two different
//! copies of the same change, unless the offer says the sender found its copy held by a
//! majority ([`Offer::replace`]). Under `merge` and `custom` the value is made from the
//! document or the fold history, which the join restores; a corrupted document or history
//! itself is past what a join can tell. A repair writes records only: no change, no vector,
//! nothing to replicate.

use std::collections::BTreeSet;

use mrr_core::fold::FoldEntry;
use mrr_core::{placement, seal, Change, ChangeId, Key, Op, Record, Rule, VersionVector};
use mrr_storage::{Store, StoreError};

use super::{Engine, Reads};
use crate::pending::Pending;
use crate::repair::{fingerprint, Offer, Offers, Verdict};

impl Engine {
    /// Joins each offered state into this region's copy of its key; one verdict per offer, in
    /// order. All of it applies, or (on a storage error) nothing.
    pub fn repair(
        &mut self,
        pending: &mut Pending,
        store: &dyn Store,
        offers: Offers,
    ) -> Result<Vec<(Key, Verdict)>, StoreError> {
        let Offers { applied, offers } = offers;
        pending.request(|pending| {
            let mut reads = self.prefetch(pending, store, offers.iter().map(|o| &o.key))?;
            let mut verdicts = Vec::with_capacity(offers.len());
            for offer in offers {
                let key = offer.key.clone();
                let verdict = self.repair_one(pending, store, &mut reads, offer, &applied)?;
                verdicts.push((key, verdict));
            }
            Ok(verdicts)
        })
    }

    fn repair_one(
        &mut self,
        pending: &mut Pending,
        store: &dyn Store,
        reads: &mut Reads,
        offer: Offer,
        offered_applied: &VersionVector,
    ) -> Result<Verdict, StoreError> {
        let Offer { key, state, replace } = offer;
        if seal::is_sealed(&key) || self.policies.is_strong(&key.topic) {
            return Ok(Verdict::Skipped);
        }
        let theirs = state.record;
        if !placement::places(&theirs.metadata, &self.local) {
            return Ok(Verdict::PlacementDiffers);
        }
        self.read_into(pending, store, reads, &key)?;
        let current = self.current(pending, reads, &key);
        if let Some(c) = &current {
            let held = placement::places(&c.metadata, &self.local);
            if !held || c.metadata.regions != theirs.metadata.regions {
                return Ok(Verdict::PlacementDiffers);
            }
            if !c.lacking.is_empty() {
                return Ok(Verdict::InFlight);
            }
        }
        let rule = self.policies.rule(&key.topic).clone();
        if !theirs.lacking.is_empty()
            || !holds_everything_of(&pending.vv, offered_applied, &rule, &theirs, &state.history)
        {
            return Ok(Verdict::InFlight);
        }
        let same_change = current.as_ref().is_some_and(|c| c.version == theirs.version && c.seq == theirs.seq);
        let changes = content_of(&key, &rule, &theirs, state.history.clone());
        let joined = if changes.is_empty() {
            current.clone()
        } else {
            let refs: Vec<&Change> = changes.iter().collect();
            let mut joined = self.apply_content(pending, store, current.clone(), &rule, &refs)?;
            // Both copies place the record in the same regions (checked above); the move that
            // did so is the newer one either knows of (a region that lost the record knows none).
            joined.metadata.regions.clone_from(&theirs.metadata.regions);
            let ours = current.as_ref().and_then(|c| c.placed_by.clone());
            if theirs.placed_by > ours && !pending.vv.dominates(offered_applied) {
                // A move's version names no change id: it may be one still on its way here.
                return Ok(Verdict::InFlight);
            }
            joined.placed_by = ours.max(theirs.placed_by.clone());
            joined.lacking = BTreeSet::new();
            Some(joined)
        };
        let unchanged = match (&joined, &current) {
            (Some(j), Some(c)) => fingerprint(&key, j) == fingerprint(&key, c),
            (None, None) => true,
            _ => false,
        };
        if !unchanged {
            if let Some(j) = joined {
                self.store_record(pending, reads, &key, j);
                return Ok(Verdict::Repaired);
            }
        }
        // The newer deciding move of the two is joined, never voted on: copies that differ
        // only there are not two copies of a change.
        let placed_by = current.as_ref().and_then(|c| c.placed_by.clone()).max(theirs.placed_by.clone());
        let theirs = Record { placed_by, ..theirs };
        let differs = current.as_ref().is_none_or(|c| fingerprint(&key, c) != fingerprint(&key, &theirs));
        // Only a whole record is one change's copy: a document's or a fold's head version
        // stays while changes below it (escrow bookkeeping, concurrent fields, earlier fold
        // entries) join in, and the join above already took everything the offer adds.
        if !(same_change && differs && matches!(rule, Rule::Timestamp)) {
            return Ok(Verdict::Covered);
        }
        if !replace {
            return Ok(Verdict::Unresolved);
        }
        // The same change in a different copy, and the sender's copy is the majority's.
        for entry in state.history {
            pending.history.insert((key.clone(), entry.version.clone()), entry);
        }
        self.store_record(pending, reads, &key, theirs);
        Ok(Verdict::Repaired)
    }
}

/// Whether every change `record` (and its fold history) is made of is in `applied`: this
/// region claims to hold them all, so holding the record differently is a fault to repair and
/// not a change still on its way. A whole record and fold entries name their changes. A
/// document does not name all of its: an OR-set remove leaves the tags it observed, a delete a
/// floor version, counters and escrow running totals; so a document is taken only from a
/// sender that had applied nothing this region has not (`offered_applied`).
fn holds_everything_of(
    applied: &VersionVector,
    offered_applied: &VersionVector,
    rule: &Rule,
    record: &Record,
    history: &[FoldEntry],
) -> bool {
    let seen = |id: &ChangeId| id.seq == 0 || id.seen_by(applied);
    if !seen(&record.change_id()) {
        return false;
    }
    match rule {
        Rule::Custom(_) => history.iter().all(|e| seen(&e.id)),
        Rule::Merge => record.doc.is_none() || applied.dominates(offered_applied),
        Rule::Timestamp => true,
    }
}

/// The content changes a state is made of, as the rule joins them.
fn content_of(key: &Key, rule: &Rule, record: &Record, history: Vec<FoldEntry>) -> Vec<Change> {
    let change = |origin, lane, seq, op, metadata, version, deps, replay_of| Change {
        origin,
        lane,
        seq,
        key: key.clone(),
        op,
        metadata,
        version,
        deps,
        replay_of,
        moves: false,
        carried: Vec::new(),
        proof: Default::default(),
    };
    let whole = |value: &Option<Vec<u8>>| match value {
        Some(v) => Op::Put { value: v.clone() },
        None => Op::Delete,
    };
    match rule {
        Rule::Custom(_) => history
            .into_iter()
            .map(|e| {
                let op = whole(&e.value);
                change(e.id.origin, e.id.lane, e.id.seq, op, e.metadata, e.version, e.deps, e.replay_of)
            })
            .collect(),
        Rule::Merge | Rule::Timestamp => {
            let op = match (&record.doc, rule) {
                (Some(doc), Rule::Merge) => Op::Merge { delta: doc.clone() },
                _ => whole(&record.value),
            };
            vec![change(
                record.origin.clone(),
                record.lane,
                record.seq,
                op,
                record.metadata.clone(),
                record.version.clone(),
                record.deps.clone(),
                None,
            )]
        }
    }
}

#[cfg(test)]
mod tests {
    use mrr_storage::{CommitBatch, MemStore, Store};
    use serde_json::json;

    use super::super::tests::{engine, kv, local, r, sync, value};
    use super::*;
    use crate::repair::{state_of, State};
    use crate::LocalOp;

    fn state(store: &MemStore, key: &Key) -> State {
        state_of(&*store.view().expect("view"), key).expect("read").expect("held")
    }

    fn repair(e: &mut Engine, store: &MemStore, offers: Vec<Offer>) -> Vec<Verdict> {
        let mut p = e.begin(9_000);
        // The senders here hold nothing the receiver lacks, unless their states say so.
        let offers = Offers { applied: VersionVector::new(), offers };
        let out = e.repair(&mut p, store, offers).expect("repair");
        if let Some(batch) = e.finish(p) {
            assert!(batch.changes.is_empty() && batch.vv.is_empty(), "a repair writes records only");
            store.commit(&batch).expect("commit");
            e.committed(&batch);
        }
        out.into_iter().map(|(_, v)| v).collect()
    }

    fn offer(store: &MemStore, key: &Key, replace: bool) -> Offer {
        Offer { key: key.clone(), state: state(store, key), replace }
    }

    /// Writes `record` under `key` behind the engine's back: a bug or a bad disk.
    fn plant(store: &MemStore, key: &Key, record: Option<Record>) {
        let batch = match record {
            Some(r) => CommitBatch { records: vec![(key.clone(), r)], ..Default::default() },
            None => CommitBatch { records_removed: vec![key.clone()], ..Default::default() },
        };
        store.commit(&batch).expect("plant");
    }

    #[test]
    fn a_lost_write_is_joined_back_and_a_newer_one_is_never_undone() {
        let (sa, sb) = (MemStore::new(), MemStore::new());
        let (mut a, mut b) = (engine("a"), engine("b"));
        let key = Key::new("users", "u1");
        local(&mut a, &sa, vec![kv("users", "u1", json!({"v": 1}))], 1_000);
        sync(&sa, (&mut b, &sb), 1_000);
        let older = state(&sb, &key).record;
        local(&mut a, &sa, vec![kv("users", "u1", json!({"v": 2}))], 1_001);
        sync(&sa, (&mut b, &sb), 1_001);
        // b lost the second write, and then the record altogether.
        plant(&sb, &key, Some(older.clone()));
        assert_eq!(repair(&mut a, &sa, vec![offer(&sb, &key, false)]), [Verdict::Covered], "a is ahead");
        assert_eq!(value(&sa, "users", "u1"), Some(json!({"v": 2})));
        assert_eq!(repair(&mut b, &sb, vec![offer(&sa, &key, false)]), [Verdict::Repaired]);
        assert_eq!(state(&sb, &key), state(&sa, &key));
        plant(&sb, &key, None);
        assert_eq!(repair(&mut b, &sb, vec![offer(&sa, &key, false)]), [Verdict::Repaired]);
        assert_eq!(state(&sb, &key), state(&sa, &key));
        assert!(sb.conflicts().expect("log").is_empty(), "a repair of an update logs no conflict");
    }

    #[test]
    fn a_state_holding_a_change_not_applied_here_is_left_to_replication() {
        let (sa, sb) = (MemStore::new(), MemStore::new());
        let (mut a, mut b) = (engine("a"), engine("b"));
        let key = Key::new("users", "u1");
        local(&mut a, &sa, vec![kv("users", "u1", json!({"v": 1}))], 1_000);
        sync(&sa, (&mut b, &sb), 1_000);
        local(&mut a, &sa, vec![kv("users", "u1", json!({"v": 2}))], 1_001);
        assert_eq!(repair(&mut b, &sb, vec![offer(&sa, &key, false)]), [Verdict::InFlight]);
        assert_eq!(value(&sb, "users", "u1"), Some(json!({"v": 1})));
        // Once it arrives the copies agree, and nothing is left to repair.
        sync(&sa, (&mut b, &sb), 1_001);
        assert_eq!(repair(&mut b, &sb, vec![offer(&sa, &key, false)]), [Verdict::Covered]);
    }

    #[test]
    fn two_copies_of_one_change_are_left_alone_unless_the_majority_copy_is_offered() {
        let (sa, sb) = (MemStore::new(), MemStore::new());
        let (mut a, mut b) = (engine("a"), engine("b"));
        let key = Key::new("users", "u1");
        local(&mut a, &sa, vec![kv("users", "u1", json!({"v": 1}))], 1_000);
        sync(&sa, (&mut b, &sb), 1_000);
        let mut corrupted = state(&sb, &key).record;
        corrupted.value = Some(br#"{"v":7}"#.to_vec());
        plant(&sb, &key, Some(corrupted));
        assert_eq!(repair(&mut b, &sb, vec![offer(&sa, &key, false)]), [Verdict::Unresolved]);
        assert_eq!(value(&sb, "users", "u1"), Some(json!({"v": 7})), "no join can tell which copy is right");
        assert_eq!(repair(&mut b, &sb, vec![offer(&sa, &key, true)]), [Verdict::Repaired]);
        assert_eq!(state(&sb, &key), state(&sa, &key));
    }

    #[test]
    fn merge_documents_and_fold_histories_are_joined_by_their_own_rules() {
        let (sa, sb) = (MemStore::new(), MemStore::new());
        let (mut a, mut b) = (engine("a"), engine("b"));
        let doc = Key::new("profiles", "p");
        local(&mut a, &sa, vec![kv("profiles", "p", json!({"name": "Ann"}))], 1_000);
        sync(&sa, (&mut b, &sb), 1_000);
        let before = state(&sa, &doc).record;
        let patch = LocalOp::Patch { key: doc.clone(), fields: br#"{"city":"Oslo"}"#.to_vec(), metadata: None };
        local(&mut b, &sb, vec![patch], 1_001);
        sync(&sb, (&mut a, &sa), 1_001);
        plant(&sa, &doc, Some(before));
        assert_eq!(repair(&mut a, &sa, vec![offer(&sb, &doc, false)]), [Verdict::Repaired]);
        assert_eq!(value(&sa, "profiles", "p"), Some(json!({"name": "Ann", "city": "Oslo"})));
        assert_eq!(state(&sa, &doc).record, state(&sb, &doc).record);

        // `custom`: the record is the fold of its history; a copy that went wrong is folded
        // again from the history the offer carries.
        let log = Key::new("logs", "l");
        local(&mut a, &sa, vec![kv("logs", "l", json!({"lines": ["x"]}))], 1_002);
        local(&mut a, &sa, vec![kv("logs", "l", json!({"lines": ["y"]}))], 1_003);
        sync(&sa, (&mut b, &sb), 1_003);
        let mut wrong = state(&sb, &log).record;
        wrong.value = Some(br#"{"lines":["z"]}"#.to_vec());
        plant(&sb, &log, Some(wrong));
        assert_eq!(repair(&mut b, &sb, vec![offer(&sa, &log, false)]), [Verdict::Repaired]);
        assert_eq!(state(&sb, &log), state(&sa, &log));
    }

    #[test]
    fn copies_that_disagree_on_placement_are_left_to_moves() {
        let (sa, sb) = (MemStore::new(), MemStore::new());
        let (mut a, mut b) = (engine("a"), engine("b"));
        let key = Key::new("users", "u1");
        local(&mut a, &sa, vec![kv("users", "u1", json!({"v": 1}))], 1_000);
        sync(&sa, (&mut b, &sb), 1_000);
        let mut elsewhere = state(&sa, &key);
        elsewhere.record.metadata.regions = vec!["a".into(), "b".into()];
        let o = Offer { key: key.clone(), state: elsewhere, replace: false };
        assert_eq!(repair(&mut b, &sb, vec![o]), [Verdict::PlacementDiffers]);
        let _ = r("a");
    }
}
