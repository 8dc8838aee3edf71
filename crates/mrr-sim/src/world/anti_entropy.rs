//! Anti-entropy in the simulation: bad disks and repair runs, through the shipped code.
//!
//! A *corruption* ([`FaultEvent::Corrupt`]) writes a region's disk behind its writer: one held
//! record is lost, or (with three regions or more and no wipe, so that a majority of good
//! copies can tell) its copy changes under the same version. A *repair run* ([`FaultEvent::Repair`], and one from every region
//! once the cluster has converged) compares the runner with every peer that is up, exactly as
//! `mrr_replication::repair` does: trees, entries of the buckets that differ, the majority of
//! copies, then each side's states go into the other's writer queue as `Work::Repair`. The
//! queue is the real one, so a state read now is joined a commit later, while replication goes
//! on: runs in the middle of the fault phase are what check that in-flight changes are never
//! taken for faults. Every `Repaired` verdict must name a key some corruption planted
//! (`anti_entropy` invariant); after the final runs the `convergence` invariant must hold.
//!
//! What differs from the runtime: both sides' views are read at the same instant (the real
//! runner reads the peer's a round trip later), and the exchange carries no network delay.
//! Corruptions are not planted under `--placement`.

use std::collections::BTreeMap;

use mrr_core::{placement, Key, RegionName};
use mrr_storage::{CommitBatch, Store, StoreView};
use mrr_writer::repair::{self as join, Difference, Offer, Offers, Scope, Verdict};
use mrr_writer::Work;

use super::{Step, Then, Violation, World, TOPIC};

impl World {
    /// Whether `node` runs and holds a data directory it serves from.
    fn serving(&self, node: usize) -> bool {
        let n = &self.nodes[node];
        n.writer.is_some() && !n.wiped && !n.rejoining && !n.restart_pending
    }

    /// A bad disk at `node`: one of its records (chosen by `pick`) lost, or changed under its
    /// version.
    pub(super) fn corrupt(&mut self, node: usize, pick: u64) -> Step {
        if self.cfg.placement || !self.serving(node) {
            return Ok(());
        }
        // A disk that fails the read finding a record to corrupt corrupts nothing this time.
        let Ok(scanned) = self.nodes[node].store.scan(TOPIC, None, usize::MAX) else { return Ok(()) };
        let held: Vec<(Key, mrr_core::Record)> = scanned
            .into_iter()
            // One bad copy per key: two regions' corrupted copies could outvote the good one.
            .filter(|(k, r)| r.lacking.is_empty() && !self.planted.contains(k))
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        let (key, mut record) = held[(pick / 2) as usize % held.len()].clone();
        // A document's value is materialised from its CRDT state, which the join restores; a
        // lost document is not planted: counters are per-region running totals, so the
        // region's own increments after the loss would start again from zero, and no join
        // can tell them from the ones it lost (a bad disk a region writes on is past repair).
        let document = matches!(self.cfg.strategy, crate::Strategy::Merge | crate::Strategy::Escrow);
        // A changed copy of a whole record needs a majority of good ones: not with two
        // regions, nor where a wipe may install a snapshot of it elsewhere (two bad copies
        // would outvote one).
        let lose = !document && (pick % 2 == 0 || self.cfg.regions < 3 || self.cfg.wipes > 0);
        let batch = if lose {
            CommitBatch { records_removed: vec![key.clone()], ..Default::default() }
        } else {
            record.value = Some(br#"{"planted":"a bad disk"}"#.to_vec());
            CommitBatch { records: vec![(key.clone(), record)], ..Default::default() }
        };
        // Straight to the disk, as a failing disk would: no writer, no invariant sees it.
        if self.nodes[node].store.commit(&batch).is_ok() {
            for inv in &mut self.invariants {
                inv.on_corrupt(node, &key);
            }
            self.planted.insert(key);
            self.corruptions += 1;
        }
        Ok(())
    }

    /// A repair run from `runner` with every peer that serves. A disk that fails a read ends
    /// the run, as a failed call does in the runtime: the next run finds the keys again.
    pub(super) fn repair_run(&mut self, runner: usize) -> Step {
        if !self.serving(runner) {
            return Ok(());
        }
        self.repair_runs += 1;
        match self.compare(runner) {
            Ok(offers) => {
                for (node, offers) in offers {
                    self.offer(node, offers);
                }
            }
            Err(_) => self.repair_runs_failed += 1,
        }
        Ok(())
    }

    /// What a run from `runner` offers to whom: trees, entries, the majority of copies, states.
    fn compare(&self, runner: usize) -> Result<Vec<(usize, Offers)>, join::RepairError> {
        let Some(policies) = self.nodes[runner].engine().map(|e| e.policies().clone()) else { return Ok(Vec::new()) };
        let local = self.names[runner].clone();
        let mine = self.nodes[runner].store.view()?;
        let mut compared: Vec<(usize, Vec<Difference>, std::sync::Arc<dyn StoreView>)> = Vec::new();
        for peer in (0..self.nodes.len()).filter(|p| *p != runner && self.serving(*p)) {
            let theirs = self.nodes[peer].store.view()?;
            let ours_scope = Scope { local: local.clone(), peer: self.names[peer].clone(), topics: Default::default() };
            let their_scope =
                Scope { local: self.names[peer].clone(), peer: local.clone(), topics: Default::default() };
            let (a, b) = (join::tree(&*mine, &policies, &ours_scope)?, join::tree(&*theirs, &policies, &their_scope)?);
            let buckets: std::collections::BTreeSet<u32> = a.differing(&b)?.into_iter().collect();
            let diffs = if buckets.is_empty() {
                Vec::new()
            } else {
                join::diff(
                    &join::entries(&*mine, &policies, &ours_scope, &buckets)?,
                    &join::entries(&*theirs, &policies, &their_scope, &buckets)?,
                )
            };
            compared.push((peer, diffs, theirs));
        }
        let reached: Vec<(RegionName, &[Difference])> =
            compared.iter().map(|(p, d, _)| (self.names[*p].clone(), d.as_slice())).collect();
        let mut placements = BTreeMap::new();
        for (_, diffs) in &reached {
            for d in diffs.iter().filter(|d| d.same_version()) {
                if let Some(r) = mine.get(&d.key)? {
                    placements.insert(d.key.clone(), r.metadata);
                }
            }
        }
        let placed_in = |k: &Key, p: &RegionName| placements.get(k).is_some_and(|m| placement::places(m, p));
        let settlement = join::settle(&local, &reached, &placed_in);
        let mine_applied = mine.recover()?.vv;
        let mut out = Vec::new();
        for (peer, diffs, theirs) in &compared {
            if diffs.is_empty() {
                continue;
            }
            let peer_name = &self.names[*peer];
            let (mut to_peer, mut to_runner) = (Vec::new(), Vec::new());
            for d in diffs {
                if d.mine.is_some() {
                    if let Some(state) = join::state_of(&*mine, &d.key)? {
                        let replace = settlement.give_to.contains(&(peer_name.clone(), d.key.clone()));
                        to_peer.push(Offer { key: d.key.clone(), state, replace });
                    }
                }
                let minority = settlement.give_to.contains(&(peer_name.clone(), d.key.clone()));
                if d.theirs.is_some() && !minority {
                    if let Some(state) = join::state_of(&**theirs, &d.key)? {
                        let replace = settlement.take_from.get(&d.key) == Some(peer_name);
                        to_runner.push(Offer { key: d.key.clone(), state, replace });
                    }
                }
            }
            out.push((*peer, Offers { applied: mine_applied.clone(), offers: to_peer }));
            out.push((runner, Offers { applied: theirs.recover()?.vv, offers: to_runner }));
        }
        Ok(out)
    }

    fn offer(&mut self, node: usize, offers: Offers) {
        if offers.offers.is_empty() {
            return;
        }
        self.nodes[node].queue.push_back((Work::Repair(offers), Then::Repair));
        self.start_commit(node);
    }

    /// What a node's writer did with offered states: a repair of a key no corruption planted
    /// is a false alarm (a change in flight taken for a fault).
    pub(super) fn repaired(&mut self, node: usize, verdicts: &[(Key, Verdict)]) -> Step {
        for (key, verdict) in verdicts {
            if *verdict != Verdict::Repaired {
                continue;
            }
            if !self.planted.contains(key) {
                return Err(Violation {
                    seed: self.seed,
                    invariant: "anti_entropy",
                    at_ms: self.now,
                    detail: format!(
                        "{} repaired {key}, which no corruption touched: a change in flight was taken for a fault",
                        self.names[node]
                    ),
                });
            }
            self.records_repaired += 1;
        }
        Ok(())
    }
}
