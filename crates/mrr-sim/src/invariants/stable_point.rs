//! The stable point is stable ([`mrr_core::stability`]): it never passes what a region has
//! durably applied, and no change a region applies after its point moved lacks anything below
//! the point in its causal past. The second is what retention relies on: whatever a region
//! collects below its stable point, no change that had not seen it can arrive later.

use mrr_core::strong::STRONG_ORIGIN;
use mrr_core::{RegionName, VersionVector};
use mrr_storage::CommitBatch;

use super::Invariant;

#[derive(Debug)]
pub struct StablePoint {
    names: Vec<RegionName>,
    /// Each region's stable point as it last reported it.
    stable: Vec<VersionVector>,
}

impl StablePoint {
    pub fn new(names: Vec<RegionName>) -> Self {
        let stable = vec![VersionVector::new(); names.len()];
        Self { names, stable }
    }
}

/// `r0:4 r0.urgent:3 ...`: stream and sequence, as a reader compares them.
fn text(vv: &VersionVector) -> String {
    vv.iter().map(|(s, n)| format!("{s}:{n}")).collect::<Vec<_>>().join(" ")
}

impl Invariant for StablePoint {
    fn name(&self) -> &'static str {
        "stable_point"
    }

    fn on_stable(
        &mut self,
        node: usize,
        stable: &VersionVector,
        durables: &[Option<VersionVector>],
    ) -> Result<(), String> {
        for (j, durable) in durables.iter().enumerate().filter_map(|(j, d)| d.as_ref().map(|d| (j, d))) {
            if !durable.dominates(stable) {
                return Err(format!(
                    "r{node}'s stable point [{}] passes what r{j} has durably applied: [{}]",
                    text(stable),
                    text(durable)
                ));
            }
        }
        self.stable[node] = stable.clone();
        Ok(())
    }

    fn on_commit(&mut self, node: usize, batch: &CommitBatch, _applied: &VersionVector) -> Result<(), String> {
        let stable = &self.stable[node];
        let local = &self.names[node];
        for c in batch.changes.iter().filter(|c| &c.origin != local && c.origin.as_str() != STRONG_ORIGIN) {
            if !c.deps.dominates(stable) {
                return Err(format!(
                    "r{node} applied {} after its stable point reached [{}], but its causal past lacks some of it: [{}]",
                    c.id(),
                    text(stable),
                    text(&c.deps)
                ));
            }
        }
        Ok(())
    }

    fn on_restart(&mut self, node: usize, _recovered: &VersionVector) -> Result<(), String> {
        // The simulated node starts its point again from nothing (it keeps no persisted one).
        self.stable[node] = VersionVector::new();
        Ok(())
    }
}
