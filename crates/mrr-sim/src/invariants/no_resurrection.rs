//! No deleted record comes back, and more generally no record goes back in time: in every
//! region the version stored for a key only ever increases while the region holds it, so a
//! tombstone is replaced only by a newer write, never by an older put delivered late or twice.
//! A region the record is not placed in shows nothing; when a move places it there again, it
//! starts from the move's state (the newer writes it knew only as markers follow).

use std::collections::BTreeMap;

use mrr_core::{Key, Version};
use mrr_storage::CommitBatch;

use super::Invariant;

#[derive(Debug)]
pub struct NoResurrection {
    names: Vec<mrr_core::RegionName>,
    versions: Vec<BTreeMap<Key, (Version, bool)>>,
}

impl NoResurrection {
    pub fn new(names: Vec<mrr_core::RegionName>) -> Self {
        Self { versions: vec![BTreeMap::new(); names.len()], names }
    }
}

impl Invariant for NoResurrection {
    fn name(&self) -> &'static str {
        "no_resurrection"
    }

    fn on_commit(&mut self, node: usize, batch: &CommitBatch, _: &mrr_core::VersionVector) -> Result<(), String> {
        for (key, record) in &batch.records {
            if !mrr_core::placement::places(&record.metadata, &self.names[node]) {
                self.versions[node].remove(key);
                continue;
            }
            if let Some((before, was_tombstone)) = self.versions[node].get(key) {
                if record.version < *before {
                    let what = if *was_tombstone { "deleted record resurrected" } else { "record rolled back" };
                    return Err(format!("r{node}: {what}: {key} went from {before} to {}", record.version));
                }
            }
            self.versions[node].insert(key.clone(), (record.version.clone(), record.is_tombstone()));
        }
        Ok(())
    }

    fn on_corrupt(&mut self, node: usize, key: &Key) {
        self.versions[node].remove(key);
    }

    fn on_power_loss(&mut self, node: usize, _durable: &mrr_core::VersionVector) {
        // Unpersisted record states are legitimately gone; the watch restarts from what the
        // region rebuilds.
        self.versions[node].clear();
    }
}
