//! Which committed changes may leave the region: only those on disk.
//!
//! Under `durability: fsync` a commit is on disk when it returns, so everything applied is
//! durable. Under `buffered` a commit reaches OS buffers only; a power loss takes what was not
//! yet persisted, and the region then reuses those sequence numbers for other writes. Had they
//! replicated, peers would hold different changes under the same numbers and never converge.
//! So replication ships only the vector this rule calls durable. The writer thread and the
//! syncer (IO) feed it; the simulator drives the same rule.
//!
//! The strong stream is never in it: it never leaves a region, and its applies are not fsynced
//! with the store (the strong tier's log holds them; `CommitBatch::from_strong_log`). Leaving
//! it out also keeps a strong-only commit from waking every outbound session for nothing.
//!
//! Pure: no IO, no clock.

use mrr_core::strong::STRONG_ORIGIN;
use mrr_core::VersionVector;

/// `vv` without the strong stream.
/// Raises `durable` to `vv`, the strong stream left out; whether anything moved.
fn raise_replicable(durable: &mut VersionVector, vv: &VersionVector) -> bool {
    let mut moved = false;
    for (stream, seq) in vv.iter().filter(|(s, _)| s.origin.as_str() != STRONG_ORIGIN) {
        if durable.get(stream) < seq {
            durable.raise(stream, seq);
            moved = true;
        }
    }
    moved
}

#[derive(Clone, Debug)]
pub struct DurableRule {
    buffered: bool,
    durable: VersionVector,
}

impl DurableRule {
    /// `recovered`: what the store holds at start-up, durable by definition.
    pub fn new(buffered: bool, recovered: VersionVector) -> Self {
        Self { buffered, durable: mrr_core::strong::replicable(&recovered) }
    }

    /// A commit landed and `applied` is the new applied vector. Returns whether the durable
    /// vector moved.
    pub fn committed(&mut self, applied: &VersionVector) -> bool {
        let on_disk = !self.buffered || mrr_core::planted::active(mrr_core::planted::Bug::ReplicateBeforeDurable);
        on_disk && raise_replicable(&mut self.durable, applied)
    }

    /// A persist covering every commit up to `snapshot` (the applied vector taken before it
    /// started) returned. Returns whether the durable vector moved.
    pub fn persisted(&mut self, snapshot: &VersionVector) -> bool {
        raise_replicable(&mut self.durable, snapshot)
    }

    pub fn durable(&self) -> &VersionVector {
        &self.durable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mrr_core::{RegionName, Stream};

    fn vv(n: u64) -> VersionVector {
        [(Stream::normal(RegionName::new("a").expect("valid")), n)].into_iter().collect()
    }

    #[test]
    fn under_fsync_every_commit_is_durable() {
        let mut r = DurableRule::new(false, vv(0));
        assert!(r.committed(&vv(3)));
        assert_eq!(r.durable(), &vv(3));
    }

    #[test]
    fn under_buffered_only_what_a_persist_covered() {
        let mut r = DurableRule::new(true, vv(2));
        assert!(!r.committed(&vv(5)), "in OS buffers only");
        assert_eq!(r.durable(), &vv(2));
        assert!(r.persisted(&vv(4)));
        assert_eq!(r.durable(), &vv(4));
        assert!(!r.persisted(&vv(3)), "an older snapshot never moves it back");
    }

    #[test]
    fn the_strong_stream_is_never_durable_here() {
        let strong = Stream::normal(RegionName::new(STRONG_ORIGIN).expect("valid"));
        let with_strong = |n: u64, s: u64| -> VersionVector {
            vv(n).iter().map(|(k, v)| (k.clone(), v)).chain([(strong.clone(), s)]).collect()
        };
        let mut r = DurableRule::new(false, with_strong(1, 4));
        assert_eq!(r.durable(), &vv(1), "not even what was recovered");
        assert!(!r.committed(&with_strong(1, 9)), "a strong-only commit moves nothing that replicates");
        assert!(r.committed(&with_strong(2, 9)));
        assert_eq!(r.durable(), &vv(2));
    }
}
