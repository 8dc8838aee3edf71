//! Records live only where they are placed: at every commit, a region outside a record's
//! placement holds no value or document for it and names it only by its sealed name
//! (`mrr_core::seal`), and a change it received from elsewhere outside the change's placement
//! is a marker (no content) under the sealed name, also where the record is held (placed here
//! by a move the change's writer had not seen). A change's own origin keeps its content in its
//! changelog even when the write moved the record away: it is what it ships.
//!
//! And a region lacks only what it has asked for: every change a record lacks is named by a
//! want of the region's own, committed with the lack or before. Erasing what a move-out left
//! behind counts on it (`mrr_core::stability`): the want is what reaches the origin before the
//! origin can take a beacon that would let it erase the content.

use mrr_core::placement::places;
use mrr_core::seal::is_sealed;
use std::collections::BTreeSet;

use mrr_core::{ChangeId, Op, RegionName};
use mrr_storage::CommitBatch;

use super::Invariant;

#[derive(Debug)]
pub struct Placement {
    names: Vec<RegionName>,
    /// Per region, every change it has asked for with a want.
    asked: Vec<BTreeSet<ChangeId>>,
}

impl Placement {
    pub fn new(names: Vec<RegionName>) -> Self {
        let asked = names.iter().map(|_| BTreeSet::new()).collect();
        Self { names, asked }
    }
}

impl Invariant for Placement {
    fn name(&self) -> &'static str {
        "placement"
    }

    fn on_commit(&mut self, node: usize, batch: &CommitBatch, _: &mrr_core::VersionVector) -> Result<(), String> {
        let here = &self.names[node];
        for change in batch.changes.iter().filter(|c| c.origin == *here) {
            if let Op::Want { ids } = &change.op {
                self.asked[node].extend(ids.iter().cloned());
            }
        }
        for (key, record) in &batch.records {
            if let Some(id) = record.lacking.iter().find(|id| !self.asked[node].contains(id)) {
                return Err(format!("{here} lacks {id} of {key} without having asked for it"));
            }
            let placed = places(&record.metadata, here);
            if !placed && (record.value.is_some() || record.doc.is_some()) {
                return Err(format!("{here} stores content of {key}, placed in {:?}", record.metadata.regions));
            }
            if placed == is_sealed(key) {
                return Err(format!(
                    "{here} stores {key} (placed in {:?}) under the wrong name: held records by name, others sealed",
                    record.metadata.regions
                ));
            }
        }
        for change in &batch.changes {
            if change.origin == *here || places(&change.metadata, here) {
                continue;
            }
            if change.has_content() {
                return Err(format!(
                    "{here} received content of {} ({}), placed in {:?}",
                    change.id(),
                    change.key,
                    change.metadata.regions
                ));
            }
            if !is_sealed(&change.key) {
                return Err(format!(
                    "{here} keeps {} naming {} in clear, placed in {:?}",
                    change.id(),
                    change.key,
                    change.metadata.regions
                ));
            }
        }
        Ok(())
    }
}
