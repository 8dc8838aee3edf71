//! Version vectors never go backwards: not from one commit to the next, and not across a crash
//! and restart — except, after a power loss under `durability: buffered`, back to exactly what
//! had been persisted, never further.

use mrr_core::VersionVector;
use mrr_storage::CommitBatch;

use super::Invariant;

#[derive(Debug)]
pub struct VvMonotonic {
    last: Vec<VersionVector>,
}

impl VvMonotonic {
    pub fn new(regions: usize) -> Self {
        Self { last: vec![VersionVector::new(); regions] }
    }

    fn check(&mut self, node: usize, now: &VersionVector, when: &str) -> Result<(), String> {
        if !now.dominates(&self.last[node]) {
            return Err(format!("r{node} version vector went back {when}: {:?} -> {now:?}", self.last[node]));
        }
        self.last[node] = now.clone();
        Ok(())
    }
}

impl Invariant for VvMonotonic {
    fn name(&self) -> &'static str {
        "version_vectors_never_go_backwards"
    }

    fn on_commit(&mut self, node: usize, _: &CommitBatch, applied: &VersionVector) -> Result<(), String> {
        self.check(node, applied, "at a commit")
    }

    fn on_restart(&mut self, node: usize, recovered: &VersionVector) -> Result<(), String> {
        self.check(node, recovered, "across a restart")
    }

    fn on_power_loss(&mut self, node: usize, durable: &VersionVector) {
        // What was not persisted may go; what was persisted is checked at the restart.
        self.last[node] = durable.clone();
    }
}
