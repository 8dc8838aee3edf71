//! The properties every run must keep, one file each. Each checker sees commits as they
//! happen and the final state after the heal; the first violation ends the run with its name.

mod acked_writes;
mod convergence;
mod counters_add_up;
mod never_below_bound;
mod no_double_apply;
mod no_loop;
mod no_resurrection;
mod placement;
mod residency;
mod retention;
mod stable_point;
mod vv_monotonic;

use mrr_core::{Key, Record, RegionName, Version, VersionVector};
use mrr_storage::CommitBatch;
use mrr_writer::Refusal;

pub use acked_writes::AckedWrites;
pub use convergence::Convergence;
pub use counters_add_up::CountersAddUp;
pub use never_below_bound::NeverBelowBound;
pub use no_double_apply::NoDoubleApply;
pub use no_loop::NoLoop;
pub use no_resurrection::NoResurrection;
pub use placement::Placement;
pub use residency::Residency;
pub use retention::Retention;
pub use stable_point::StablePoint;
pub use vv_monotonic::VvMonotonic;

/// A client write the simulated node acknowledged.
#[derive(Clone, Debug)]
pub struct AckedWrite {
    pub node: usize,
    pub key: Key,
    pub version: Version,
    pub origin: RegionName,
    pub lane: mrr_core::Lane,
    pub seq: u64,
    pub tombstone: bool,
    /// Under `merge`: the counter increment this write made (field `c`).
    pub incr: Option<i64>,
}

impl AckedWrite {
    pub fn stream(&self) -> mrr_core::Stream {
        mrr_core::Stream::new(self.origin.clone(), self.lane)
    }
}

/// The final state of one region, for end-of-run checks.
#[derive(Debug)]
pub struct FinalState {
    pub region: RegionName,
    pub records: Vec<(Key, Record)>,
    pub applied: VersionVector,
    pub changelog: Vec<mrr_core::Change>,
    /// Per stream, the last sequence retention truncated from the changelog.
    pub log_floors: VersionVector,
    /// Records that left the region whose logs are not erased yet, by sealed name.
    pub departures: Vec<(Key, mrr_core::placement::Departure)>,
    /// What the region's last collection pass was given, when one ran on the final state.
    pub collect: Option<mrr_writer::Collect>,
}

/// A property of the system. Hooks return a description of the violation, if any.
pub trait Invariant {
    fn name(&self) -> &'static str;

    fn on_commit(&mut self, _node: usize, _batch: &CommitBatch, _applied: &VersionVector) -> Result<(), String> {
        Ok(())
    }

    fn on_refusal(&mut self, _node: usize, _refusal: &Refusal) -> Result<(), String> {
        Ok(())
    }

    fn on_acked(&mut self, _write: &AckedWrite) {}

    fn on_restart(&mut self, _node: usize, _recovered: &VersionVector) -> Result<(), String> {
        Ok(())
    }

    /// Everything up to `durable` is persisted at `node` (only reported under `buffered`;
    /// under `fsync` every commit is).
    fn on_durable(&mut self, _node: usize, _durable: &VersionVector) {}

    /// `node`'s stable point moved to `stable`; `durables` is every region's durable vector now.
    /// `durables`: each region's durable vector, `None` for one outside the membership.
    fn on_stable(
        &mut self,
        _node: usize,
        _stable: &VersionVector,
        _durables: &[Option<VersionVector>],
    ) -> Result<(), String> {
        Ok(())
    }

    /// `node` loses power: commits beyond `durable` are gone, legitimately.
    fn on_power_loss(&mut self, _node: usize, _durable: &VersionVector) {}

    /// `node` lost its disk: of its own streams, only what `reached` its peers survives (and
    /// comes back through its snapshot bootstrap). A power loss that kept only that, by
    /// default; acknowledged work it had not sent is gone, escrow sales included.
    fn on_wipe(&mut self, node: usize, reached: &VersionVector) {
        self.on_power_loss(node, reached);
    }

    /// A bad disk changed or lost `key` behind `node`'s writer: what was watched of it there
    /// is no longer what the region holds (anti-entropy repairs it).
    fn on_corrupt(&mut self, _node: usize, _key: &Key) {}

    fn at_end(&mut self, _regions: &[FinalState]) -> Result<(), String> {
        Ok(())
    }
}

/// Every invariant, in the order they are checked.
/// `counters`: also check that counter increments add up exactly (only meaningful when the
/// workload does not delete, since a delete resets what it saw).
/// `escrow`: also check that bounded counters never oversell ([`NeverBelowBound`]).
/// `timestamp`: the topic's rule is `timestamp`, whose tombstones retention collects.
pub fn all(
    names: &[RegionName],
    sealer: &mrr_core::Sealer,
    counters: bool,
    escrow: bool,
    timestamp: bool,
) -> Vec<Box<dyn Invariant>> {
    let regions = names.len();
    let mut all: Vec<Box<dyn Invariant>> = vec![
        Box::new(Placement::new(names.to_vec())),
        Box::new(Residency::new(sealer.clone())),
        Box::new(Retention::new(timestamp)),
        Box::new(VvMonotonic::new(regions)),
        Box::new(StablePoint::new(names.to_vec())),
        Box::new(NoDoubleApply::new(regions)),
        Box::new(NoLoop),
        Box::new(NoResurrection::new(names.to_vec())),
        Box::new(AckedWrites::default()),
        Box::new(Convergence),
    ];
    if counters {
        all.push(Box::new(CountersAddUp::default()));
    }
    if escrow {
        all.push(Box::new(NeverBelowBound::new(names.to_vec())));
    }
    all
}
