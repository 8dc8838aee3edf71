//! Escrow counters in the writer: tending the bounded fields this region holds rights in.
//!
//! A decrement is checked against this region's rights where every other operation is made
//! ([`mrr_core::Doc::ops_delta`]); what this module adds is what moves rights. At the end of
//! every group ([`crate::GroupCommit::build`]) the engine tends the counters that need it now
//! — an ask for this region's rights arrived, or this region's buyers were refused — and, every
//! [`SWEEP_MS`], every counter touched recently: it answers asks, tops up regions expected to
//! run short, and asks the richest holder when this region is short ([`Escrow::tend`]). What
//! it decides is written as a change of this region's own to the record (its entries of the
//! counter, no value), applied and replicated like any other write, and persisted before the
//! group returns (`CommitBatch::must_sync`).
//!
//! Demand is measured here, per counter, from the consumption this region sees: its own
//! decrements and refusals as they happen, other regions' as their changes arrive. The samples
//! live in memory only (a restart starts measuring again; rights are in the records).
//!
//! Not here: the counter's laws (`mrr_core::escrow`); anything that could give away rights
//! this region does not hold — every transfer goes through [`Escrow::transfer`], which checks
//! this region's own exact view.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use mrr_core::escrow::{Escrow, Outlook};
use mrr_core::{Change, Doc, Key, Lane, Metadata, Op, RegionName, Stream, Version};
use mrr_storage::{Store, StoreError};

use super::Engine;
use crate::pending::Pending;

/// How often every recently touched counter is tended, in the groups that run.
pub const SWEEP_MS: u64 = 100;
/// Demand samples are taken at most this often per counter.
const SAMPLE_MS: u64 = 50;
/// Rates are measured over this window.
const RATE_WINDOW_MS: u64 = 2_000;
/// Rights are planned to cover this much of each region's demand ahead: several round trips
/// between regions, so a region topped up does not run dry before the next top-up arrives.
const DEMAND_HORIZON_MS: u64 = 1_000;
/// An ask left unanswered this long makes its holder one to avoid (cut off, or down) when
/// asking again.
const ASK_UNANSWERED_MS: u64 = 2_000;
/// A counter untouched this long is no longer tended.
const IDLE_MS: u64 = 60_000;
/// Counters tended at most; beyond, the least recently touched is forgotten (its rights stay
/// where they are, in the record).
const TRACKED_MAX: usize = 1_024;

#[derive(Debug, Default)]
pub(crate) struct Tracker {
    counters: BTreeMap<(Key, String), Track>,
    next_sweep_ms: u64,
}

#[derive(Debug, Default)]
struct Track {
    samples: VecDeque<Sample>,
    /// Units this region's buyers were refused, in all (its unmet demand).
    refused_total: u64,
    /// Units refused since the last tending (what to ask for at least).
    short: u64,
    /// Tend at the end of this group.
    dirty: bool,
    active_ms: u64,
    /// When this region first asked each holder, for asks still outstanding.
    asked_at_ms: BTreeMap<RegionName, u64>,
}

#[derive(Debug)]
struct Sample {
    at_ms: u64,
    consumed: BTreeMap<RegionName, u64>,
    refused_total: u64,
}

impl Tracker {
    fn track(&mut self, key: &Key, field: &str, now_ms: u64) -> &mut Track {
        let id = (key.clone(), field.to_owned());
        if !self.counters.contains_key(&id) && self.counters.len() >= TRACKED_MAX {
            let oldest = self.counters.iter().min_by_key(|(_, t)| t.active_ms).map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.counters.remove(&oldest);
            }
        }
        let t = self.counters.entry(id).or_default();
        t.active_ms = t.active_ms.max(now_ms);
        t
    }

    /// A write of this region or a peer's changed the counter; `urgent`: tend it in this group.
    pub(crate) fn touched(&mut self, key: &Key, field: &str, now_ms: u64, urgent: bool) {
        let t = self.track(key, field, now_ms);
        t.dirty |= urgent;
    }

    /// This region's buyers were refused `units` for lack of rights.
    pub(crate) fn refused(&mut self, key: &Key, field: &str, units: u64, now_ms: u64) {
        let t = self.track(key, field, now_ms);
        t.refused_total = t.refused_total.saturating_add(units);
        t.short = t.short.saturating_add(units);
        t.dirty = true;
    }

    /// Whether the end of a group at `now_ms` has tending to do.
    pub(crate) fn due(&self, now_ms: u64) -> bool {
        !self.counters.is_empty() && (now_ms >= self.next_sweep_ms || self.counters.values().any(|t| t.dirty))
    }

    /// The counters to tend now: the urgent ones, or every one on a sweep (idle ones dropped).
    fn take_due(&mut self, now_ms: u64) -> Vec<(Key, String)> {
        if now_ms >= self.next_sweep_ms {
            self.next_sweep_ms = now_ms + SWEEP_MS;
            self.counters.retain(|_, t| now_ms.saturating_sub(t.active_ms) < IDLE_MS);
            return self.counters.keys().cloned().collect();
        }
        self.counters.iter().filter(|(_, t)| t.dirty).map(|(k, _)| k.clone()).collect()
    }
}

impl Track {
    /// Each region's expected demand over the horizon, from the consumption seen over the
    /// rate window (this region's refusals count as its demand too), and whether this region
    /// was refused within the window.
    fn demand(&mut self, local: &RegionName, escrow: &Escrow, now_ms: u64) -> (BTreeMap<RegionName, u64>, bool) {
        if self.samples.back().is_none_or(|s| now_ms >= s.at_ms + SAMPLE_MS) {
            self.samples.push_back(Sample {
                at_ms: now_ms,
                consumed: escrow.consumed_all().clone(),
                refused_total: self.refused_total,
            });
        }
        // Keep one sample at or beyond the window's start, to measure from.
        while self.samples.len() > 2 && self.samples.get(1).is_some_and(|s| s.at_ms + RATE_WINDOW_MS <= now_ms) {
            self.samples.pop_front();
        }
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return (BTreeMap::new(), false);
        };
        let elapsed_ms = last.at_ms.saturating_sub(first.at_ms).max(SAMPLE_MS);
        let ahead = |units: u64| units.saturating_mul(DEMAND_HORIZON_MS).div_ceil(elapsed_ms);
        let mut demand = BTreeMap::new();
        for (region, now) in &last.consumed {
            let then = first.consumed.get(region).copied().unwrap_or(0);
            let mut units = now.saturating_sub(then);
            if region == local {
                units = units.saturating_add(last.refused_total.saturating_sub(first.refused_total));
            }
            if units > 0 {
                demand.insert(region.clone(), ahead(units));
            }
        }
        let refused = last.refused_total.saturating_sub(first.refused_total);
        if refused > 0 && !demand.contains_key(local) {
            demand.insert(local.clone(), ahead(refused));
        }
        (demand, refused > 0)
    }

    /// Holders this region asked long ago and that still have not answered; asks answered are
    /// forgotten.
    fn unanswered(&mut self, local: &RegionName, escrow: &Escrow, now_ms: u64) -> BTreeSet<RegionName> {
        self.asked_at_ms.retain(|holder, _| escrow.outstanding(local, holder) > 0);
        self.asked_at_ms
            .iter()
            .filter(|(_, at)| now_ms.saturating_sub(**at) >= ASK_UNANSWERED_MS)
            .map(|(h, _)| h.clone())
            .collect()
    }
}

impl Engine {
    /// Whether a group ending at `now_ms` should tend escrow counters.
    pub fn escrow_due(&self, now_ms: u64) -> bool {
        self.escrow.due(now_ms)
    }

    /// Tends the counters due (see the module header) into the group; returns how many changes
    /// it wrote. All or nothing: a read that fails leaves nothing of it in the group.
    pub fn tend_escrow(&mut self, pending: &mut Pending, store: &dyn Store) -> Result<usize, StoreError> {
        let due = self.escrow.take_due(pending.now_ms);
        pending.request(|pending| {
            let mut written = 0;
            for (key, field) in due {
                written += usize::from(self.tend_one(pending, store, &key, &field)?);
            }
            Ok(written)
        })
    }

    fn tend_one(
        &mut self,
        pending: &mut Pending,
        store: &dyn Store,
        key: &Key,
        field: &str,
    ) -> Result<bool, StoreError> {
        let reads = self.prefetch(pending, store, std::iter::once(key))?;
        let now_ms = pending.now_ms;
        let record = self.current(pending, &reads, key);
        let held = record.as_ref().filter(|r| mrr_core::placement::places(&r.metadata, &self.local));
        let Some((record, escrow)) = held.and_then(|r| Some((r, r.doc.as_ref()?.escrow(field)?.clone()))) else {
            // Not a counter this region holds (any more): nothing to tend.
            self.escrow.counters.remove(&(key.clone(), field.to_owned()));
            return Ok(false);
        };
        let local = self.local.clone();
        let Some(track) = self.escrow.counters.get_mut(&(key.clone(), field.to_owned())) else { return Ok(false) };
        let (demand, starved) = track.demand(&local, &escrow, now_ms);
        let avoid = track.unanswered(&local, &escrow, now_ms);
        // Refusals since the last sample count too.
        let starved = starved || track.short > 0;
        let plan = escrow.tend(&local, &Outlook { demand: &demand, short: track.short, starved, avoid: &avoid });
        track.short = 0;
        track.dirty = false;
        if plan.is_empty() {
            return Ok(false);
        }
        let mut after = escrow;
        for (to, units) in &plan.gives {
            // `tend` gives only from what `local` holds; a refusal here would be a bug in it,
            // and giving less is always safe.
            if let Err(e) = after.transfer(&local, to, *units) {
                tracing::error!(%key, field, to = %to, units, error = %e, "escrow transfer refused; not made");
            }
        }
        if let Some((holder, units)) = &plan.ask {
            if matches!(after.ask(&local, holder, *units), Ok(true)) {
                track.asked_at_ms.entry(holder.clone()).or_insert(now_ms);
            }
        }
        let metadata =
            Metadata { regions: record.metadata.regions.clone(), sync_flags: record.metadata.sync_flags.clone() };
        // Rights and asks travel on the urgent lane whatever the record's lane: they are a few
        // bytes each, and a sale waits on them, so they must not queue behind the record's own
        // decrements (a window cut on a slow link left eu-central's transfers seconds behind,
        // and it sold almost nothing). Overtaking is safe: the delta is this region's whole
        // row of the counter, joined by maximum.
        let stream = Stream::new(local.clone(), Lane::Urgent);
        let delta = Doc::escrow_delta(field, &after, &local);
        let change = self.own_change(pending, stream, key.clone(), Op::Merge { delta }, metadata, Vec::new());
        self.apply_change(pending, store, &reads, change)?;
        Ok(true)
    }

    /// A change of this region's own on `stream`, with the next sequence and a new version;
    /// the caller applies or logs it.
    pub(super) fn own_change(
        &mut self,
        pending: &mut Pending,
        stream: Stream,
        key: Key,
        op: Op,
        metadata: Metadata,
        carried: Vec<Change>,
    ) -> Change {
        debug_assert!(stream.origin == self.local);
        let seq = pending.vv.get(&stream) + 1;
        let change = Change {
            origin: self.local.clone(),
            lane: stream.lane,
            seq,
            key,
            op,
            metadata,
            version: Version { ts: self.hlc.now(pending.now_ms), region: self.local.clone() },
            deps: pending.vv.clone(),
            replay_of: None,
            moves: false,
            carried,
            proof: Default::default(),
        };
        pending.vv.advance(&stream, seq);
        change
    }

    /// Notes a change's effect on the bounded fields of `key` (a peer's or this region's):
    /// `delta` is what it wrote, `doc` the record after it. Urgent when the record now asks
    /// this region for rights it has not granted.
    pub(super) fn escrow_touched(&mut self, key: &Key, delta: &Doc, doc: Option<&Doc>, now_ms: u64) {
        for (field, _) in delta.escrow_fields() {
            let urgent = doc.and_then(|d| d.escrow(field)).is_some_and(|e| e.asks_of(&self.local));
            self.escrow.touched(key, field, now_ms, urgent);
        }
    }

    /// Notes that this region refused a decrement of `key.field` by `units`.
    pub(super) fn escrow_refused(&mut self, key: &Key, field: &str, units: u64, now_ms: u64) {
        self.escrow.refused(key, field, units, now_ms);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mrr_core::{FieldOp, Policies, Rule};
    use mrr_storage::{MemStore, Store};
    use serde_json::json;

    use crate::{Answer, DurableRule, GroupCommit, LocalOp, Rejection, Work, WriteError};

    use super::*;

    struct At(u64);
    impl mrr_core::PhysicalClock for At {
        fn now_ms(&self) -> u64 {
            self.0
        }
    }

    /// One region: its writer, its store, and the changes it made that a peer has not taken.
    struct Region {
        core: GroupCommit,
        store: MemStore,
        rule: DurableRule,
        outbox: Vec<Change>,
    }

    fn region(name: &str) -> Region {
        let bounded = [("inventory".to_owned(), [("available".to_owned(), 0)].into_iter().collect())];
        let policies = Policies::new(Rule::Timestamp, [("inventory".to_owned(), Rule::Merge)].into_iter().collect())
            .with_bounded(bounded.into_iter().collect());
        let local = RegionName::new(name).expect("valid");
        let engine = Engine::new(local, Default::default(), 200, Arc::new(policies));
        Region {
            core: GroupCommit::new(engine, 100),
            store: MemStore::new(),
            rule: DurableRule::new(false, Default::default()),
            outbox: Vec::new(),
        }
    }

    impl Region {
        /// Runs one group at `now_ms`; returns its answers and whether its batch was synced.
        fn group(&mut self, work: Vec<Work>, now_ms: u64) -> (Vec<Answer>, bool) {
            let built = self.core.build(&self.store, work, &At(now_ms));
            let synced = built.batch().is_some_and(|b| b.must_sync);
            let commit = built.batch().map_or(Ok(()), |b| self.store.commit(b));
            let settled = self.core.settle(built, commit, &self.store, &mut self.rule);
            let local = self.core.engine().local().clone();
            if let Some(b) = settled.committed {
                self.outbox.extend(b.changes.into_iter().filter(|c| c.origin == local));
            }
            (settled.answers, synced)
        }

        fn incr(&mut self, by: i64, now_ms: u64) -> Result<(), WriteError> {
            let key = Key::new("inventory", "mug");
            let op = LocalOp::Ops { key, ops: vec![FieldOp::Incr { field: "available".into(), by }] };
            match self.group(vec![Work::Local(vec![op])], now_ms).0.pop() {
                Some(Answer::Local(out)) => out.map(|_| ()),
                other => unreachable!("a local answer, got {other:?}"),
            }
        }

        /// Delivers everything `from` made since the last delivery, as one batch.
        fn receive(&mut self, from: &mut Region, now_ms: u64) {
            let changes = std::mem::take(&mut from.outbox);
            if !changes.is_empty() {
                self.group(vec![Work::Remote(changes)], now_ms);
            }
        }

        fn value(&self) -> serde_json::Value {
            let rec = self.store.get(&Key::new("inventory", "mug")).expect("read").expect("exists");
            serde_json::from_slice(rec.value.as_deref().expect("a value")).expect("JSON")
        }
    }

    #[test]
    fn a_refused_decrement_asks_and_the_holder_answers_in_one_round_trip() {
        let (mut tokyo, mut frankfurt) = (region("ap-northeast"), region("eu-central"));
        tokyo.incr(10, 1_000).expect("an increment makes rights where it is made");
        frankfurt.receive(&mut tokyo, 1_050);
        assert_eq!(frankfurt.value(), json!({"available": 10}));
        // Frankfurt holds no rights: refused, and the same group writes an ask.
        let refused = frankfurt.incr(-3, 1_100);
        assert!(
            matches!(refused, Err(WriteError::Rejected(Rejection::InsufficientRights { held: 0, asked: 3, .. }))),
            "{refused:?}"
        );
        assert_eq!(frankfurt.outbox.len(), 1, "the ask");
        // Tokyo answers in the group that applies the ask; the transfer is persisted first.
        let before = tokyo.outbox.len();
        let (_, synced) = {
            let changes = std::mem::take(&mut frankfurt.outbox);
            tokyo.group(vec![Work::Remote(changes)], 1_150)
        };
        assert_eq!(tokyo.outbox.len(), before + 1, "the answer");
        assert!(synced, "a transfer is on disk before it can be sent");
        frankfurt.receive(&mut tokyo, 1_200);
        frankfurt.incr(-3, 1_250).expect("rights arrived");
        tokyo.receive(&mut frankfurt, 1_300);
        assert_eq!(tokyo.value(), json!({"available": 7}));
        assert_eq!(frankfurt.value(), json!({"available": 7}));
        // Never below the bound: Tokyo cannot sell more than it kept.
        let kept = tokyo.store.get(&Key::new("inventory", "mug")).expect("read").expect("exists");
        let e = kept.doc.as_ref().and_then(|d| d.escrow("available")).expect("a counter").clone();
        let held = e.rights(tokyo.core.engine().local());
        assert!(tokyo.incr(-i64::try_from(held + 1).expect("small"), 1_350).is_err());
        tokyo.incr(-i64::try_from(held).expect("small"), 1_400).expect("what it holds");
    }

    #[test]
    fn bounded_fields_refuse_writes_other_than_incr() {
        let mut tokyo = region("ap-northeast");
        let key = Key::new("inventory", "mug");
        let put =
            LocalOp::Put { key: key.clone(), value: br#"{"available":5}"#.to_vec(), metadata: Metadata::default() };
        let patch = LocalOp::Patch { key: key.clone(), fields: br#"{"available":null}"#.to_vec(), metadata: None };
        let set =
            LocalOp::Ops { key: key.clone(), ops: vec![FieldOp::Set { field: "available".into(), value: json!(1) }] };
        for op in [put, patch, set] {
            match tokyo.group(vec![Work::Local(vec![op])], 1_000).0.pop() {
                Some(Answer::Local(Err(WriteError::Rejected(Rejection::BoundedField { field, .. })))) => {
                    assert_eq!(field, "available")
                }
                other => unreachable!("refused, got {other:?}"),
            }
        }
        assert!(tokyo.store.get(&key).expect("read").is_none(), "nothing applied");
        let other =
            LocalOp::Put { key: key.clone(), value: br#"{"name":"mug"}"#.to_vec(), metadata: Metadata::default() };
        assert!(matches!(tokyo.group(vec![Work::Local(vec![other])], 1_100).0.pop(), Some(Answer::Local(Ok(_)))));
    }
}
