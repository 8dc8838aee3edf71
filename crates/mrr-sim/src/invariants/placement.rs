//! Records live only where they are placed: at every commit, a region outside a record's
//! placement holds no value or document for it and names it only by its sealed name
//! (`mrr_core::seal`), and a change it received from elsewhere outside the change's placement
//! is a marker (no content) under the sealed name, also where the record is held (placed here
//! by a move the change's writer had not seen). A change's own origin keeps its content in its
//! changelog even when the write moved the record away: it is what it ships.

use mrr_core::placement::places;
use mrr_core::seal::is_sealed;
use mrr_core::RegionName;
use mrr_storage::CommitBatch;

use super::Invariant;

#[derive(Debug)]
pub struct Placement {
    names: Vec<RegionName>,
}

impl Placement {
    pub fn new(names: Vec<RegionName>) -> Self {
        Self { names }
    }
}

impl Invariant for Placement {
    fn name(&self) -> &'static str {
        "placement"
    }

    fn on_commit(&mut self, node: usize, batch: &CommitBatch, _: &mrr_core::VersionVector) -> Result<(), String> {
        let here = &self.names[node];
        for (key, record) in &batch.records {
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
