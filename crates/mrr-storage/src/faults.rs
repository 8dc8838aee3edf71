//! A [`Store`] wrapper that fails on command: the Nth read from now, or the Nth commit.
//!
//! Tests and the simulator use it to show that a storage error part way through a request
//! leaves nothing of the request behind, and that a failed commit leaves the store as it was.
//! An injected failure happens before the wrapped store is touched, as a refused write (a full
//! disk, a read error) would: it never leaves a half-written commit. It holds no policy of its
//! own; the plan is shared, so a test can arm it while the store is owned by a writer thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mrr_core::fold::FoldEntry;
use mrr_core::{Change, ChangeId, ConflictEntry, DeadLetter, Key, Record, Stream, Version, VersionVector};

use crate::{CommitBatch, ConflictCursor, RecoveredState, Result, Store, StoreError};

const NEVER: u64 = u64::MAX;

/// What to fail, counted from when it is armed. Shared between the store and whoever arms it.
#[derive(Debug)]
pub struct FaultPlan {
    reads: AtomicU64,
    fail_read_at: AtomicU64,
    commits: AtomicU64,
    fail_commit_at: AtomicU64,
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self {
            reads: AtomicU64::new(0),
            fail_read_at: AtomicU64::new(NEVER),
            commits: AtomicU64::new(0),
            fail_commit_at: AtomicU64::new(NEVER),
        }
    }
}

impl FaultPlan {
    /// The `n`th read from now (1: the next one) fails, once.
    pub fn fail_read_in(&self, n: u64) {
        assert!(n > 0, "reads are counted from 1");
        let now = self.reads.load(Ordering::SeqCst);
        self.fail_read_at.store(now + n, Ordering::SeqCst);
    }

    /// The `n`th commit from now (1: the next one) fails, once, without touching the store.
    pub fn fail_commit_in(&self, n: u64) {
        assert!(n > 0, "commits are counted from 1");
        let now = self.commits.load(Ordering::SeqCst);
        self.fail_commit_at.store(now + n, Ordering::SeqCst);
    }

    /// Reads made so far (every call that reads the store, including a commit's own reads
    /// of nothing: only the trait's read methods count).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    /// Nothing fails any more (the disk is repaired).
    pub fn disarm(&self) {
        self.fail_read_at.store(NEVER, Ordering::SeqCst);
        self.fail_commit_at.store(NEVER, Ordering::SeqCst);
    }

    /// Whether an armed fault has not struck yet.
    pub fn armed(&self) -> bool {
        self.fail_read_at.load(Ordering::SeqCst) != NEVER || self.fail_commit_at.load(Ordering::SeqCst) != NEVER
    }

    fn strike(counter: &AtomicU64, at: &AtomicU64, what: &'static str) -> Result<()> {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        if at.compare_exchange(n, NEVER, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            return Err(StoreError::Io {
                op: what,
                source: std::io::Error::other(format!("injected fault: {what} #{n}")),
            });
        }
        Ok(())
    }

    fn read(&self, what: &'static str) -> Result<()> {
        Self::strike(&self.reads, &self.fail_read_at, what)
    }

    fn commit(&self) -> Result<()> {
        Self::strike(&self.commits, &self.fail_commit_at, "commit")
    }
}

/// `inner`, failing where its [`FaultPlan`] says.
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    plan: Arc<FaultPlan>,
}

impl<S: Store> FaultyStore<S> {
    pub fn new(inner: S) -> Self {
        Self::with_plan(inner, Arc::default())
    }

    /// `inner` failing where an existing `plan` says (a store rebuilt after a power loss keeps
    /// the faults armed on the old one).
    pub fn with_plan(inner: S, plan: Arc<FaultPlan>) -> Self {
        Self { inner, plan }
    }

    pub fn plan(&self) -> Arc<FaultPlan> {
        self.plan.clone()
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn get(&self, key: &Key) -> Result<Option<Record>> {
        self.plan.read("get")?;
        self.inner.get(key)
    }

    fn unseal(&self, sealed: &Key) -> Result<Option<Key>> {
        self.plan.read("unseal")?;
        self.inner.unseal(sealed)
    }

    fn scan(&self, topic: &str, after_id: Option<&str>, limit: usize) -> Result<Vec<(Key, Record)>> {
        self.plan.read("scan")?;
        self.inner.scan(topic, after_id, limit)
    }

    fn changes_within(&self, stream: &Stream, after_seq: u64, limit: usize, bytes_max: u64) -> Result<Vec<Change>> {
        self.plan.read("changes_within")?;
        self.inner.changes_within(stream, after_seq, limit, bytes_max)
    }

    fn recover(&self) -> Result<RecoveredState> {
        self.inner.recover()
    }

    fn commit(&self, batch: &CommitBatch) -> Result<()> {
        self.plan.commit()?;
        self.inner.commit(batch)
    }

    fn persist(&self) -> Result<()> {
        self.inner.persist()
    }

    fn history_from(&self, key: &Key, version: &Version) -> Result<(Option<FoldEntry>, Vec<FoldEntry>)> {
        self.plan.read("history_from")?;
        self.inner.history_from(key, version)
    }

    fn history_entry(&self, key: &Key, version: &Version) -> Result<Option<FoldEntry>> {
        self.plan.read("history_entry")?;
        self.inner.history_entry(key, version)
    }

    fn conflicts_after(
        &self,
        since_ms: u64,
        after: Option<&ConflictCursor>,
        limit: usize,
    ) -> Result<Vec<ConflictEntry>> {
        self.plan.read("conflicts_after")?;
        self.inner.conflicts_after(since_ms, after, limit)
    }

    fn conflict_count(&self) -> u64 {
        self.inner.conflict_count()
    }

    fn expire_conflicts(&self, idents: &[(ChangeId, ChangeId)]) -> Result<()> {
        self.inner.expire_conflicts(idents)
    }

    fn dead_letters_after(&self, after: Option<&ChangeId>, limit: usize) -> Result<Vec<DeadLetter>> {
        self.plan.read("dead_letters_after")?;
        self.inner.dead_letters_after(after, limit)
    }

    fn dead_letter_count(&self) -> u64 {
        self.inner.dead_letter_count()
    }

    fn oldest_dead_letter_ms(&self) -> Result<Option<u64>> {
        self.plan.read("oldest_dead_letter_ms")?;
        self.inner.oldest_dead_letter_ms()
    }

    fn strong_request(&self, request_id: &str) -> Result<Option<Vec<u8>>> {
        self.plan.read("strong_request")?;
        self.inner.strong_request(request_id)
    }

    fn dead_letter(&self, id: &ChangeId) -> Result<Option<DeadLetter>> {
        self.plan.read("dead_letter")?;
        self.inner.dead_letter(id)
    }

    fn discard_dead_letter(&self, id: &ChangeId) -> Result<()> {
        self.inner.discard_dead_letter(id)
    }

    fn disk_bytes(&self) -> u64 {
        self.inner.disk_bytes()
    }

    fn certificate(&self, fingerprint: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        self.plan.read("certificate")?;
        self.inner.certificate(fingerprint)
    }

    fn add_certificate(&self, fingerprint: &[u8; 32], der: &[u8]) -> Result<()> {
        self.inner.add_certificate(fingerprint, der)
    }

    fn departure(&self, sealed: &Key) -> Result<Option<mrr_core::placement::Departure>> {
        self.plan.read("departures")?;
        self.inner.departure(sealed)
    }

    fn departures(&self) -> Result<Vec<(Key, mrr_core::placement::Departure)>> {
        self.plan.read("departures")?;
        self.inner.departures()
    }

    fn stable_point(&self) -> Result<VersionVector> {
        self.plan.read("stable point")?;
        self.inner.stable_point()
    }

    fn set_stable_point(&self, stable: &VersionVector) -> Result<()> {
        self.inner.set_stable_point(stable)
    }

    fn footprint(&self) -> crate::Footprint {
        self.inner.footprint()
    }

    fn log_floors(&self) -> Result<VersionVector> {
        self.plan.read("log floors")?;
        self.inner.log_floors()
    }

    fn records_after(&self, after: Option<&Key>, limit: usize) -> Result<Vec<(Key, Record)>> {
        self.plan.read("records")?;
        self.inner.records_after(after, limit)
    }

    fn view(&self) -> Result<std::sync::Arc<dyn crate::StoreView>> {
        self.plan.read("view")?;
        self.inner.view()
    }

    fn bootstrap_mark(&self) -> Result<Option<crate::BootstrapMark>> {
        self.plan.read("bootstrap mark")?;
        self.inner.bootstrap_mark()
    }
}
