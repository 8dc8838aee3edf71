//! Retention below the stable point: the changelog is truncated and (behind
//! [`COLLECT_TOMBSTONES`], off for now) tombstones are collected.
//!
//! Below the stable point ([`mrr_core::stability`]) every member region has durably applied
//! every change, and every change this region applies from now on has seen them all. Then:
//!
//! - **Changelog.** A peer resumes from what it has durably applied, at or above the point, so
//!   no stream is read from below it again. A relay still needs a checkpoint at or before a
//!   peer's position to prove what it sends ([`mrr_core::provenance::read_relayed`]): each
//!   stream is cut just before the last checkpoint at or below the point (the *anchor*). Two
//!   kinds of entry are kept past that:
//!   - the [`Op::History`] pieces just before the anchor, which a `custom` move at or after it
//!     may still fold in where it places the record ([`Engine::pieces_ahead`]);
//!   - content of this region's own writes that another region may still ask for with a want.
//!     A region comes to lack a change `c` only by applying a move that had not seen `c` and
//!     places the record there; once the move that decides the record's placement here is
//!     below the point, every such move is applied everywhere and its wants are answered (the
//!     argument of [`mrr_core::stability`]). So an own write is kept while the move that
//!     places its record here is above the point, and a stream's truncation stops there.
//!     A move above the point is recognised by its timestamp: a stream's versions grow with
//!     its sequence, so a move older than the oldest change above the point of every stream
//!     this region has applied is below the point.
//!
//!   The changelog is cut up to the *truncation point* ([`Collect::truncate`]), which is the
//!   stable point unless a member is lagging (away past the retention window,
//!   [`mrr_core::stability`]); then it is the point over the others. Past the stable point an
//!   own write is kept unless it was placed everywhere (`may_be_wanted`), and
//!   nothing but the changelog is collected there.
//! - **Tombstones.** A deleted record under `timestamp` (whole-record last-writer-wins) keeps
//!   its tombstone so that an older concurrent put cannot bring it back. Below the point none
//!   can arrive: every later change has seen the delete, so its version is newer. The
//!   tombstone goes with its sealed-name index entry, once the move that placed it here is
//!   below the point too and it lacks nothing. `merge` documents (their delete floors and
//!   escrow rights) and `custom` fold histories are not collected here, nor strong records
//!   (their updates compare versions), nor placement registers (they answer where a record
//!   lives).
//!
//! Bounded: a pass reads at most [`SCAN_CHANGES_MAX`] changelog entries and
//! [`SWEEP_RECORDS_MAX`] records; the record sweep resumes where it stopped and starts over at
//! the end of the keyspace.
//!
//! Not here: deciding the point (`mrr_core::stability`), what a record that left this region
//! left behind (`residency`), and how often a pass runs (the replication runtime).

use mrr_core::change::Op;
use mrr_core::{placement, seal, Key, Record, Stream, Timestamp, VersionVector};
use mrr_storage::{Store, StoreError};

use super::residency::{Collect, SCAN_CHANGES_MAX};
use super::Engine;
use crate::pending::Pending;

/// Whether retention collects tombstones. Off: the simulator found two ways a collected
/// tombstone makes regions differ, both under placement. A region writing over a tombstone
/// that still lacks content makes no move, so a region that collected its copy and one that
/// did not end with different `placed_by` (`--placement --durability buffered`, seed 5065); and
/// a region that collected a tombstone and then applies a move placing the record elsewhere
/// notes no departure, so its changelog keeps the record's content in clear
/// (`--placement --regions 5`, seed 5133). Both need this region to know, after collecting,
/// that it held the record; until then tombstones stay.
pub const COLLECT_TOMBSTONES: bool = false;

/// Records one pass's tombstone sweep reads at most.
pub const SWEEP_RECORDS_MAX: usize = 4096;

/// Entries read per store call.
const PAGE: usize = 256;

/// A stream's stretch a pass may truncate: from its log floor to the truncation point, with
/// the stable point in between.
#[derive(Clone, Copy, Debug)]
struct Range {
    floor: u64,
    stable: u64,
    upto: u64,
}

/// What one retention pass collected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retained {
    /// Changelog entries truncated.
    pub changes_truncated: u64,
    pub tombstones_collected: u64,
    /// At the end of a whole sweep of the records: the tombstones it left (not yet below the
    /// point, or of rules retention does not collect).
    pub tombstones_held: Option<u64>,
    /// Whether the pass stopped at a bound with more it could collect now.
    pub more: bool,
}

/// Where the record sweep resumes, kept by the engine between passes (in memory: a restart
/// sweeps from the start again).
#[derive(Clone, Debug, Default)]
pub(super) struct Sweep {
    after: Option<Key>,
    /// Tombstones this sweep passed over so far.
    held: u64,
}

impl Engine {
    /// One retention pass below `stable` (see the module header).
    pub(super) fn retain(
        &mut self,
        pending: &mut Pending,
        store: &dyn Store,
        collect: &Collect,
    ) -> Result<Retained, StoreError> {
        let stable = &collect.stable;
        debug_assert!(collect.truncate.dominates(stable), "the truncation point is never below the stable point");
        let mut out = Retained::default();
        let young = self.oldest_unstable(pending, store, stable)?;
        let floors = store.log_floors()?;
        let mut budget = SCAN_CHANGES_MAX;
        for (stream, upto) in collect.truncate.iter() {
            let floor = floors.get(stream);
            if upto <= floor {
                continue;
            }
            let range = Range { floor, stable: stable.get(stream), upto };
            let (cut, stopped) = self.cut_point(pending, store, stream, range, young, &mut budget)?;
            out.more |= stopped && budget == 0;
            if cut > floor {
                pending.log_truncated.insert(stream.clone(), cut);
                out.changes_truncated += cut - floor;
                // A departure's rewrite of an entry that goes now would write it back.
                pending.rewritten.retain(|id, _| !(id.stream() == *stream && id.seq <= cut));
            }
        }
        let (collected, sweep_more) = self.sweep_tombstones(pending, store, stable, young)?;
        out.tombstones_collected = collected;
        if !sweep_more {
            out.tombstones_held = Some(std::mem::take(&mut self.sweep.held));
        }
        out.more |= sweep_more;
        Ok(out)
    }

    /// The sequence up to which `stream` may be cut (entries `floor < seq <= cut` go), reading
    /// from `floor` to at most `upto`; and whether the read stopped at the budget.
    fn cut_point(
        &self,
        pending: &Pending,
        store: &dyn Store,
        stream: &Stream,
        Range { floor, stable, upto }: Range,
        young: Option<Timestamp>,
        budget: &mut usize,
    ) -> Result<(u64, bool), StoreError> {
        let own = stream.origin == self.local;
        let mut cut = floor;
        // Where the run of `History` pieces just before the entry being read began.
        let mut pieces_from: Option<u64> = None;
        let mut after = floor;
        while after < upto {
            if *budget == 0 {
                return Ok((cut, true));
            }
            let page = store.changes_after(stream, after, PAGE.min(*budget))?;
            let Some(last) = page.last().map(|c| c.seq) else { break };
            for change in &page {
                if change.seq > upto {
                    return Ok((cut, false));
                }
                *budget -= 1;
                if own && self.may_be_wanted(pending, store, change, change.seq > stable, young)? {
                    return Ok((cut, false));
                }
                if change.proof.checkpoint.is_some() {
                    cut = pieces_from.unwrap_or(change.seq).saturating_sub(1).max(cut);
                }
                pieces_from = match (&change.op, pieces_from) {
                    (Op::History, Some(from)) => Some(from),
                    (Op::History, None) => Some(change.seq),
                    _ => None,
                };
            }
            after = last;
        }
        Ok((cut, false))
    }

    /// Whether another region may still ask this one for the content of `change`, one of its
    /// own: a write with content whose record is placed by a move not yet below the point.
    ///
    /// Above the stable point (where only the truncation point reaches, a lagging member
    /// holding the stable one) that argument does not hold: a move the lagging member made and
    /// nobody has seen may still place the record in a region that holds `change` as a marker.
    /// There a write is kept unless it was placed everywhere: then every region got its content
    /// (no marker), the truncation point says every region but the lagging one has it, and no
    /// region erased it (erasure stays below the stable point), so no region can lack it.
    fn may_be_wanted(
        &self,
        pending: &Pending,
        store: &dyn Store,
        change: &mrr_core::Change,
        above_stable: bool,
        young: Option<Timestamp>,
    ) -> Result<bool, StoreError> {
        if !(change.writes() && change.has_content()) {
            return Ok(false);
        }
        if above_stable {
            return Ok(!placement::everywhere(&change.metadata.regions));
        }
        let record = match pending.overlay.get(&change.key) {
            Some(entry) => entry.clone(),
            None => mrr_storage::record_of(store, &self.policies.sealer, &change.key)?,
        };
        let placed_by = record.and_then(|r| r.placed_by);
        Ok(placed_by.is_some_and(|v| young.is_some_and(|young| v.ts >= young)))
    }

    /// The oldest timestamp of a change above `stable` this region has applied: every change
    /// older than it that this region applied is below the point. `None`: nothing applied is
    /// above it.
    fn oldest_unstable(
        &self,
        pending: &Pending,
        store: &dyn Store,
        stable: &VersionVector,
    ) -> Result<Option<Timestamp>, StoreError> {
        let mut oldest: Option<Timestamp> = None;
        for (stream, applied) in pending.vv.iter() {
            let from = stable.get(stream);
            if applied <= from {
                continue;
            }
            let first = match store.changes_after(stream, from, 1)?.into_iter().next() {
                Some(c) => Some(c.version.ts),
                // Applied in this very group, not in the store yet.
                None => pending.changes.iter().filter(|c| c.stream() == *stream).map(|c| c.version.ts).min(),
            };
            if let Some(ts) = first {
                oldest = Some(oldest.map_or(ts, |o| o.min(ts)));
            }
        }
        Ok(oldest)
    }

    /// Collects the tombstones below the point among the next records of the sweep; whether
    /// the sweep stopped at its bound.
    fn sweep_tombstones(
        &mut self,
        pending: &mut Pending,
        store: &dyn Store,
        stable: &VersionVector,
        young: Option<Timestamp>,
    ) -> Result<(u64, bool), StoreError> {
        let page = store.records_after(self.sweep.after.as_ref(), SWEEP_RECORDS_MAX)?;
        let full = page.len() == SWEEP_RECORDS_MAX;
        self.sweep.after = if full { page.last().map(|(k, _)| k.clone()) } else { None };
        let mut collected = 0;
        for (key, record) in page {
            // A record this group writes is judged by the next pass.
            if pending.overlay.contains_key(&key) || !self.collectable(&key, &record, stable, young) {
                if record.is_tombstone() && placement::places(&record.metadata, &self.local) {
                    self.sweep.held += 1;
                }
                continue;
            }
            pending.overlay.insert(key.clone(), None);
            pending.sealed_index.insert(self.policies.sealer.seal(&key), None);
            collected += 1;
        }
        Ok((collected, full))
    }

    fn collectable(&self, key: &Key, record: &Record, stable: &VersionVector, young: Option<Timestamp>) -> bool {
        // The same test that makes a write over it a creation (`Engine::recreates`).
        self.recreates(key, record)
            && !seal::is_sealed(key)
            && placement::places(&record.metadata, &self.local)
            && record.change_id().seen_by(stable)
            && record.placed_by.as_ref().is_none_or(|v| young.is_none_or(|young| v.ts < young))
    }
}
