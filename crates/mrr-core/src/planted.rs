//! Known bugs that can be switched on, so the simulator can prove it catches them.
//!
//! Compiled only with the `planted-bugs` feature (enabled by `mrr-sim`'s tests), and even then
//! off unless a test switches one on for its own thread. Production builds contain none of it:
//! [`active`] is a constant `false` there.

/// A bug the simulator must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// Last-writer-wins compares timestamps only: equal timestamps from two regions no longer
    /// have a deterministic winner, so regions can keep different records.
    IgnoreRegionTieBreak,
    /// A duplicate delivery skips the duplicate check and overwrites the record without merging,
    /// so an old change delivered again (after a reconnect) can resurrect or roll back a record.
    DuplicatesBypassMerge,
    /// The outbound session forgets that a peer never needs its own changes back.
    SendOwnChangesBack,
    /// A writer request that fails part way (a storage read error) keeps what it did before
    /// failing in the group's commit: a remote batch can then count changes as applied that
    /// were never stored, and a client told "failed" finds half its batch committed.
    KeepFailedRequests,
    /// Changes replicate as soon as they are committed, before the disk has them: after a
    /// power loss under `durability: buffered` the region reuses sequence numbers its peers
    /// already hold with other content.
    ReplicateBeforeDurable,
    /// A strong read is served from the region's own state without asking the leader for a
    /// read index: a follower that has not yet applied a committed write answers with the
    /// value before it.
    ReadWithoutReadIndex,
}

#[cfg(feature = "planted-bugs")]
mod switch {
    use std::cell::Cell;

    thread_local! {
        static ACTIVE: Cell<Option<super::Bug>> = const { Cell::new(None) };
    }

    /// Switches `bug` on (or all off) for the current thread.
    pub fn set(bug: Option<super::Bug>) {
        ACTIVE.with(|a| a.set(bug));
    }

    pub fn active(bug: super::Bug) -> bool {
        ACTIVE.with(|a| a.get() == Some(bug))
    }
}

#[cfg(feature = "planted-bugs")]
pub use switch::{active, set};

#[cfg(not(feature = "planted-bugs"))]
#[inline(always)]
pub fn active(_: Bug) -> bool {
    false
}
