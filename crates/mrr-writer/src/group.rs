//! Group commit, sans-IO: many requests, one batch, one answer each.
//!
//! The writer thread takes whatever requests are queued; [`GroupCommit::build`] runs each
//! through the engine into one pending batch (a request that fails leaves nothing of itself in
//! it); the caller commits that batch to the store — the IO, and the only wait; then
//! [`GroupCommit::settle`] turns the commit's result into every request's answer, the new
//! applied vector and what the [`DurableRule`] lets replicate. The simulator makes the same two
//! calls around its simulated disk, so the decisions it checks are the ones a node makes.
//!
//! Not here: the request queue and threads (`run` in the crate root), the syncer of
//! `durability: buffered`, metrics.

use std::sync::Arc;

use mrr_core::strong::{Invalid, StrongCommand, StrongOutcome};
use mrr_core::{Change, Key, PhysicalClock};
use mrr_storage::{CommitBatch, Store, StoreError};

use crate::durable::DurableRule;
use crate::engine::{Collect, Collected, Engine, LocalFailure, RemoteOutcome};
use crate::repair::{Offers, Verdict};
use crate::{Committed, LocalOp, WriteError};

/// One request of a group.
#[derive(Debug)]
pub enum Work {
    Local(Vec<LocalOp>),
    Remote(Vec<Change>),
    Strong(StrongBatch),
    /// A collection pass over what records that left this region left behind.
    Collect(Collect),
    /// A peer's copies of records held differently here, to join in (anti-entropy).
    Repair(Offers),
}

/// Committed entries of the strong tier's log, in log order, and the position after them.
#[derive(Debug)]
pub struct StrongBatch {
    /// One per command entry; an entry that does not decode is answered as invalid, the same
    /// way in every region.
    pub commands: Vec<Result<StrongCommand, Invalid>>,
    /// Committed with the commands' effects ([`mrr_storage::CommitBatch::strong_position`]).
    pub position: Vec<u8>,
}

/// A request's answer, in the kind of its [`Work`].
#[derive(Debug)]
pub enum Answer {
    Local(Result<Vec<Committed>, WriteError>),
    Remote(Result<RemoteOutcome, WriteError>),
    Strong(Result<Vec<StrongOutcome>, WriteError>),
    Collect(Result<Collected, WriteError>),
    Repair(Result<Vec<(Key, Verdict)>, WriteError>),
}

/// A group applied to the engine but not yet committed.
#[derive(Debug)]
#[must_use = "a built group is committed, then settled"]
pub struct Built {
    /// Each request's own outcome, before the commit's.
    answers: Vec<Answer>,
    batch: Option<CommitBatch>,
}

impl Built {
    /// What to commit; `None` when the group changed nothing (commit nothing, settle with
    /// `Ok`).
    pub fn batch(&self) -> Option<&CommitBatch> {
        self.batch.as_ref()
    }

    /// Requests in the group.
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }
}

/// A group after its commit returned.
#[derive(Debug)]
pub struct Settled {
    /// One per request, in the order the group was built.
    pub answers: Vec<Answer>,
    /// The batch that landed, if one did.
    pub committed: Option<CommitBatch>,
    /// Whether the durable vector moved (what may replicate grew).
    pub durable_moved: bool,
}

/// The writer's state machine: the engine, and whether a commit failed in a way that stops
/// every later write.
#[derive(Debug)]
pub struct GroupCommit {
    engine: Engine,
    /// Set once a commit failed after reaching the store (see [`WriteError::Failed`]).
    failed: Option<Arc<str>>,
    dead_letters_max: u64,
}

impl GroupCommit {
    /// `dead_letters_max`: the dead-letter queue's bound (see `WriterConfig`).
    pub fn new(engine: Engine, dead_letters_max: u64) -> Self {
        Self { engine, failed: None, dead_letters_max }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Why this writer stopped taking writes, if it has.
    pub fn failed(&self) -> Option<&Arc<str>> {
        self.failed.as_ref()
    }

    /// Applies every request of the group, in order, to one pending batch.
    pub fn build(
        &mut self,
        store: &dyn Store,
        work: impl IntoIterator<Item = Work>,
        clock: &dyn PhysicalClock,
    ) -> Built {
        if let Some(reason) = &self.failed {
            let refuse = |w: Work| match w {
                Work::Local(_) => Answer::Local(Err(WriteError::Failed(reason.clone()))),
                Work::Remote(_) => Answer::Remote(Err(WriteError::Failed(reason.clone()))),
                Work::Strong(_) => Answer::Strong(Err(WriteError::Failed(reason.clone()))),
                Work::Collect(_) => Answer::Collect(Err(WriteError::Failed(reason.clone()))),
                Work::Repair(_) => Answer::Repair(Err(WriteError::Failed(reason.clone()))),
            };
            return Built { answers: work.into_iter().map(refuse).collect(), batch: None };
        }
        let mut pending = self.engine.begin(clock.now_ms());
        pending.limit_dead_letters(self.dead_letters_max.saturating_sub(store.dead_letter_count()));
        let mut writes = false;
        let answers = work
            .into_iter()
            .inspect(|w| writes |= !matches!(w, Work::Collect(_) | Work::Repair(_)))
            .map(|w| match w {
                Work::Local(ops) => {
                    let out = self.engine.apply_local(&mut pending, store, ops, clock.now_ms());
                    Answer::Local(out.map_err(|e| match e {
                        LocalFailure::Store(e) => WriteError::Storage(Arc::new(e)),
                        LocalFailure::Rejected(r) => WriteError::Rejected(r),
                    }))
                }
                Work::Remote(changes) => {
                    let out = self.engine.apply_remote(&mut pending, store, changes, clock.now_ms());
                    Answer::Remote(out.map_err(|e| WriteError::Storage(Arc::new(e))))
                }
                Work::Strong(batch) => Answer::Strong(self.strong(&mut pending, store, batch)),
                Work::Collect(collect) => {
                    let engine = &mut self.engine;
                    let out = pending.request(|p| engine.collect(p, store, &collect));
                    Answer::Collect(out.map_err(|e| WriteError::Storage(Arc::new(e))))
                }
                Work::Repair(offers) => {
                    let out = self.engine.repair(&mut pending, store, offers);
                    Answer::Repair(out.map_err(|e| WriteError::Storage(Arc::new(e))))
                }
            })
            .collect();
        // Escrow counters are tended after the group's requests: an ask that arrived in it is
        // answered, and a refusal in it asks for rights, in this same commit. A group of
        // collection passes only writes nothing of its own: it is no occasion to tend.
        if writes && self.engine.escrow_due(pending.now_ms) {
            if let Err(e) = self.engine.tend_escrow(&mut pending, store) {
                tracing::warn!(error = %e, "tending escrow counters failed; the next group tries again");
            }
        }
        Built { answers, batch: self.engine.finish(pending) }
    }

    /// Applies a strong batch command by command. A read that fails part way stops the batch
    /// without moving the position: the commands applied before it commit with the group
    /// (each with its request id), so applying the batch again answers them as repeats.
    fn strong(
        &mut self,
        pending: &mut crate::Pending,
        store: &dyn Store,
        batch: StrongBatch,
    ) -> Result<Vec<StrongOutcome>, WriteError> {
        let mut out = Vec::with_capacity(batch.commands.len());
        for command in batch.commands {
            out.push(self.engine.apply_strong(pending, store, command).map_err(|e| WriteError::Storage(Arc::new(e)))?);
        }
        self.engine.strong_position(pending, batch.position);
        Ok(out)
    }

    /// The group's commit returned `commit` (`Ok` when there was nothing to commit). `store`
    /// is read only when the commit failed, to learn whether it left part of itself behind.
    pub fn settle(
        &mut self,
        built: Built,
        commit: Result<(), StoreError>,
        store: &dyn Store,
        rule: &mut DurableRule,
    ) -> Settled {
        let Built { answers, batch } = built;
        match commit {
            Ok(()) => {
                let mut durable_moved = false;
                if let Some(batch) = &batch {
                    self.engine.committed(batch);
                    durable_moved = rule.committed(self.engine.applied());
                    // A synced commit persisted the journal up to itself, under any durability.
                    if batch.must_sync {
                        durable_moved |= rule.persisted(self.engine.applied());
                    }
                }
                Settled { answers, committed: batch, durable_moved }
            }
            Err(e) => {
                // Neon-style: reported once, here, to every caller that shared the commit. A
                // refused commit leaves the store as it was, and the next group goes ahead; one
                // that reached the store before failing (an fsync error after the write) may
                // have left part of itself, and nothing more can safely build on that.
                let untouched = matches!(store.recover(), Ok(r) if r.vv == *self.engine.applied());
                if untouched {
                    tracing::error!(error = %e, "commit failed; the group's writes were not applied");
                } else {
                    tracing::error!(error = %e, "commit failed part way; this node takes no more writes until it restarts (reads go on)");
                    self.failed.get_or_insert_with(|| format!("a commit failed after reaching the disk ({e})").into());
                }
                let e = WriteError::Storage(Arc::new(e));
                let answers = answers
                    .into_iter()
                    .map(|a| match a {
                        Answer::Local(_) => Answer::Local(Err(e.clone())),
                        Answer::Remote(_) => Answer::Remote(Err(e.clone())),
                        Answer::Strong(_) => Answer::Strong(Err(e.clone())),
                        Answer::Collect(_) => Answer::Collect(Err(e.clone())),
                        Answer::Repair(_) => Answer::Repair(Err(e.clone())),
                    })
                    .collect();
                Settled { answers, committed: None, durable_moved: false }
            }
        }
    }
}
