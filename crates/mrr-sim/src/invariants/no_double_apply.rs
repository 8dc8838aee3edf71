//! No change is applied twice: a region's changelog never receives the same `(origin, seq)`
//! a second time, whatever duplication, reconnects or relays delivered.

use std::collections::BTreeSet;

use mrr_core::Stream;
use mrr_storage::CommitBatch;

use super::Invariant;

#[derive(Debug)]
pub struct NoDoubleApply {
    applied: Vec<BTreeSet<(Stream, u64)>>,
}

impl NoDoubleApply {
    pub fn new(regions: usize) -> Self {
        Self { applied: vec![BTreeSet::new(); regions] }
    }
}

impl Invariant for NoDoubleApply {
    fn name(&self) -> &'static str {
        "no_change_applied_twice"
    }

    fn on_commit(&mut self, node: usize, batch: &CommitBatch, _: &mrr_core::VersionVector) -> Result<(), String> {
        for c in &batch.changes {
            if !self.applied[node].insert((c.stream(), c.seq)) {
                return Err(format!("r{node} applied {} twice", c.id()));
            }
        }
        Ok(())
    }

    fn on_power_loss(&mut self, node: usize, durable: &mrr_core::VersionVector) {
        // Lost commits will be applied again (remote ones re-received, own sequence numbers
        // reused by new writes); that is not a double apply.
        self.applied[node].retain(|(stream, seq)| *seq <= durable.get(stream));
    }
}
