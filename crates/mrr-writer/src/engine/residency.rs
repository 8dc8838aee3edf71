//! Erasing what a record that left this region leaves behind in its logs.
//!
//! When a move places a record elsewhere, the record's copy goes in the same commit
//! ([`Engine::store_record`]) and a [`Departure`] is noted: this region's changelog still holds
//! the content of the changes it wrote or applied while it held the record (under its clear
//! name), its conflict log the entries it logged, its dead-letter queue the letters. A
//! collection pass ([`Collect`], a request of a group like any other, so that what it erases
//! and the notes' progress commit together) erases them once the move is in the stable point:
//! conflict entries and dead letters go, and each changelog entry below the point is rewritten
//! as its marker — sealed name, no content, the same leaf of its stream's chain, so relays
//! still prove it. No region will ask this one for it any more, nor need it relayed
//! ([`mrr_core::stability`] says why). Entries above the point wait for a later pass.
//!
//! Bounded: a pass reads at most [`SCAN_CHANGES_MAX`] changelog entries and resumes where it
//! stopped (`Departure::erased`). The conflict log and dead-letter queue are read whole, once
//! per departure (both are bounded by their retention).
//!
//! Not here: deciding what is safe (`mrr_core::stability`), records (the register stays, and
//! the copy went when the record left), and anything of records placed here.

use std::collections::BTreeMap;

use mrr_core::placement::{self, Departure};
use mrr_core::{Key, VersionVector};
use mrr_storage::{Store, StoreError};

use super::Engine;
use crate::pending::Pending;

/// Changelog entries one pass reads at most.
pub const SCAN_CHANGES_MAX: usize = 4096;

/// Entries read per store call.
const PAGE: usize = 256;

/// What a collection pass may erase below.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collect {
    /// The stable point: a departure's move and each entry erased must be in it.
    pub stable: VersionVector,
    /// The truncation point (at or above `stable`; [`mrr_core::stability`]): the changelog may
    /// be truncated below it.
    pub truncate: VersionVector,
}

impl Collect {
    /// Both points at `stable` (no member is lagging).
    pub fn at(stable: VersionVector) -> Self {
        Self { truncate: stable.clone(), stable }
    }
}

/// What one pass erased, and what is left.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub changes_erased: u64,
    pub conflicts_erased: u64,
    pub dead_letters_erased: u64,
    /// Departures erased completely by this pass.
    pub departures_done: u64,
    /// Departures with something left to erase, now or later.
    pub departures_left: u64,
    /// Changelog entries retention truncated below the point ([`super::retention`]).
    pub changes_truncated: u64,
    /// Tombstones retention collected below the point.
    pub tombstones_collected: u64,
    /// Tombstones of held records left after a whole sweep, when this pass ended one.
    pub tombstones_held: Option<u64>,
    /// Whether this pass stopped at a bound with more it could collect now.
    pub more: bool,
}

impl Engine {
    /// Where the record `key` left this region (by `change`, which placed it elsewhere), note
    /// the departure; for a newer move that leaves it elsewhere, note the move that decides now.
    /// A move that names this region without deciding (an older one than the key's) may have
    /// sent pieces of a `custom` history ahead of itself, kept whole here for a placement that
    /// never came: noted too, so that they are erased the same way.
    pub(super) fn note_departure(
        &self,
        pending: &mut Pending,
        store: &dyn Store,
        key: &Key,
        change: &mrr_core::Change,
        held_before: bool,
        decided: bool,
    ) -> Result<(), StoreError> {
        let named = change.moves && placement::places(&change.metadata, &self.local);
        if !(held_before || named || decided) {
            return Ok(());
        }
        let sealed = self.policies.sealer.seal(key);
        let note = match Self::noted(pending, store, &sealed)? {
            Some(mut d) => {
                if held_before || named {
                    d.upto.join(&self.upto(pending, change));
                }
                if decided {
                    d.moved_by = change.id();
                }
                d
            }
            None if held_before || named => Departure::new(key.clone(), change.id(), self.upto(pending, change)),
            // Never held here: its changes here are markers already.
            None => return Ok(()),
        };
        pending.departures.insert(sealed, Some(note));
        Ok(())
    }

    /// A change of `key` this region keeps whole though the record left (an answer to a want
    /// for content it wrote before): under the departure's note too, if there is one.
    pub(super) fn extend_departure(
        &self,
        pending: &mut Pending,
        store: &dyn Store,
        key: &Key,
        id: &mrr_core::ChangeId,
    ) -> Result<(), StoreError> {
        let sealed = self.policies.sealer.seal(key);
        if let Some(mut d) = Self::noted(pending, store, &sealed)? {
            d.upto.raise(&id.stream(), id.seq);
            pending.departures.insert(sealed, Some(d));
        }
        Ok(())
    }

    /// The departure note of a sealed name, as the group leaves it.
    fn noted(pending: &Pending, store: &dyn Store, sealed: &Key) -> Result<Option<Departure>, StoreError> {
        match pending.departures.get(sealed) {
            Some(noted) => Ok(noted.clone()),
            None => store.departure(sealed),
        }
    }

    /// Everything this region has applied, `change` included, outside the strong stream (which
    /// never holds such a record: strong records live everywhere).
    fn upto(&self, pending: &Pending, change: &mrr_core::Change) -> VersionVector {
        let mut upto: VersionVector = pending
            .vv
            .iter()
            .filter(|(s, _)| s.origin.as_str() != mrr_core::strong::STRONG_ORIGIN)
            .map(|(s, seq)| (s.clone(), seq))
            .collect();
        upto.raise(&change.stream(), change.seq);
        upto
    }

    /// One collection pass (see the module header).
    pub(crate) fn collect(
        &mut self,
        pending: &mut Pending,
        store: &dyn Store,
        collect: &Collect,
    ) -> Result<Collected, StoreError> {
        let mut out = Collected::default();
        let mut notes: BTreeMap<Key, Departure> = store.departures()?.into_iter().collect();
        for (sealed, note) in pending.departures.iter() {
            match note {
                Some(d) => notes.insert(sealed.clone(), d.clone()),
                None => notes.remove(sealed),
            };
        }
        let mut budget = SCAN_CHANGES_MAX;
        let mut departures_more = false;
        for (sealed, mut d) in notes {
            if !d.moved_by.seen_by(&collect.stable) {
                out.departures_left += 1;
                continue;
            }
            if budget == 0 {
                departures_more = true;
                out.departures_left += 1;
                continue;
            }
            let before = d.clone();
            if !d.logs_erased {
                self.erase_logs(pending, store, &d.key, &mut out)?;
                d.logs_erased = true;
            }
            for (stream, upto) in before.upto.iter() {
                let to = upto.min(collect.stable.get(stream));
                let mut from = d.erased.get(stream);
                while from < to && budget > 0 {
                    let asked = PAGE.min(budget);
                    let page = store.changes_after(stream, from, asked)?;
                    let read_all = page.len() < asked;
                    for change in page {
                        if change.seq > to {
                            from = to;
                            break;
                        }
                        budget -= 1;
                        from = change.seq;
                        if change.key == d.key {
                            let marker = placement::to_marker(&change, &self.policies.sealer);
                            pending.rewritten.insert(change.id(), marker);
                            out.changes_erased += 1;
                        }
                    }
                    if read_all {
                        // Nothing stored beyond what was read.
                        from = to;
                    }
                }
                d.erased.raise(stream, from);
            }
            if d.done() {
                pending.departures.insert(sealed, None);
                out.departures_done += 1;
            } else {
                if d != before {
                    pending.departures.insert(sealed, Some(d));
                }
                out.departures_left += 1;
            }
        }
        // Out of budget with a departure left: the next pass may go on at once.
        departures_more |= budget == 0 && out.departures_left > 0;
        let retained = self.retain(pending, store, collect)?;
        out.changes_truncated = retained.changes_truncated;
        out.tombstones_collected = retained.tombstones_collected;
        out.tombstones_held = retained.tombstones_held;
        out.more = departures_more || retained.more;
        Ok(out)
    }

    /// Erases the conflict-log entries and dead letters of `key`.
    fn erase_logs(
        &self,
        pending: &mut Pending,
        store: &dyn Store,
        key: &Key,
        out: &mut Collected,
    ) -> Result<(), StoreError> {
        let mut after = None;
        loop {
            let page = store.conflicts_after(0, after.as_ref(), PAGE)?;
            let Some(last) = page.last() else { break };
            after = Some(mrr_storage::ConflictCursor::of(last));
            for entry in page.iter().filter(|e| e.key == *key) {
                pending.conflicts_removed.add(entry.ident());
                out.conflicts_erased += 1;
            }
        }
        let mut after = None;
        loop {
            let page = store.dead_letters_after(after.as_ref(), PAGE)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for letter in page.iter().filter(|l| l.key == *key) {
                pending.cleared.add(letter.id.clone());
                out.dead_letters_erased += 1;
            }
        }
        Ok(())
    }
}
