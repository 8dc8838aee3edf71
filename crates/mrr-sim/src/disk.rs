//! The simulated disk: a [`MemStore`] that remembers which commits were persisted, so a power
//! loss can take away exactly what `durability: buffered` allows (commits since the last
//! persist) and nothing that `durability: fsync` promised; and that fails reads and commits
//! where its [`FaultPlan`] says (a failing disk), through the same [`FaultyStore`] the tests use.

use std::sync::{Mutex, PoisonError};

use mrr_core::fold::FoldEntry;
use mrr_core::{Change, ChangeId, ConflictEntry, DeadLetter, Key, Record, Stream, Version};
use mrr_storage::faults::{FaultPlan, FaultyStore};
use mrr_storage::{CommitBatch, ConflictCursor, MemStore, RecoveredState, Result, Store};

#[derive(Debug, Default)]
struct Journal {
    /// Every persisted commit, in order (only kept under `buffered`, to rebuild after power loss).
    synced: Vec<CommitBatch>,
    unsynced: Vec<CommitBatch>,
}

#[derive(Debug)]
pub struct SimDisk {
    live: FaultyStore<MemStore>,
    buffered: bool,
    journal: Mutex<Journal>,
}

impl SimDisk {
    pub fn new(buffered: bool) -> Self {
        Self { live: FaultyStore::new(MemStore::new()), buffered, journal: Mutex::default() }
    }

    /// The faults armed on this disk.
    pub fn faults(&self) -> std::sync::Arc<FaultPlan> {
        self.live.plan()
    }

    /// The machine loses power: what was not persisted is gone. Returns how many commits that
    /// took back.
    pub fn power_loss(&mut self) -> usize {
        let journal = self.journal.get_mut().unwrap_or_else(PoisonError::into_inner);
        let lost = journal.unsynced.len();
        journal.unsynced.clear();
        let live = MemStore::new();
        for batch in &journal.synced {
            // Replaying into a fresh memory store cannot fail.
            let _ = live.commit(batch);
        }
        self.live = FaultyStore::with_plan(live, self.live.plan());
        lost
    }
}

impl Store for SimDisk {
    fn get(&self, key: &Key) -> Result<Option<Record>> {
        self.live.get(key)
    }

    fn unseal(&self, sealed: &Key) -> Result<Option<Key>> {
        self.live.unseal(sealed)
    }

    fn scan(&self, topic: &str, after_id: Option<&str>, limit: usize) -> Result<Vec<(Key, Record)>> {
        self.live.scan(topic, after_id, limit)
    }

    fn changes_within(&self, stream: &Stream, after_seq: u64, limit: usize, bytes_max: u64) -> Result<Vec<Change>> {
        self.live.changes_within(stream, after_seq, limit, bytes_max)
    }

    fn recover(&self) -> Result<RecoveredState> {
        self.live.recover()
    }

    fn commit(&self, batch: &CommitBatch) -> Result<()> {
        self.live.commit(batch)?;
        if self.buffered {
            let mut journal = self.journal.lock().unwrap_or_else(PoisonError::into_inner);
            journal.unsynced.push(batch.clone());
            // A synced commit persists the journal up to itself, as fjall's does.
            if batch.must_sync {
                let Journal { synced, unsynced } = &mut *journal;
                synced.append(unsynced);
            }
        }
        Ok(())
    }

    fn persist(&self) -> Result<()> {
        let mut journal = self.journal.lock().unwrap_or_else(PoisonError::into_inner);
        let Journal { synced, unsynced } = &mut *journal;
        synced.append(unsynced);
        Ok(())
    }

    fn history_from(&self, key: &Key, version: &Version) -> Result<(Option<FoldEntry>, Vec<FoldEntry>)> {
        self.live.history_from(key, version)
    }

    fn history_entry(&self, key: &Key, version: &Version) -> Result<Option<FoldEntry>> {
        self.live.history_entry(key, version)
    }

    fn conflicts_after(
        &self,
        since_ms: u64,
        after: Option<&ConflictCursor>,
        limit: usize,
    ) -> Result<Vec<ConflictEntry>> {
        self.live.conflicts_after(since_ms, after, limit)
    }

    fn conflict_count(&self) -> u64 {
        self.live.conflict_count()
    }

    fn expire_conflicts(&self, idents: &[(ChangeId, ChangeId)]) -> Result<()> {
        self.live.expire_conflicts(idents)
    }

    fn dead_letters_after(&self, after: Option<&ChangeId>, limit: usize) -> Result<Vec<DeadLetter>> {
        self.live.dead_letters_after(after, limit)
    }

    fn dead_letter_count(&self) -> u64 {
        self.live.dead_letter_count()
    }

    fn oldest_dead_letter_ms(&self) -> Result<Option<u64>> {
        self.live.oldest_dead_letter_ms()
    }

    fn strong_request(&self, request_id: &str) -> Result<Option<Vec<u8>>> {
        self.live.strong_request(request_id)
    }

    fn dead_letter(&self, id: &ChangeId) -> Result<Option<DeadLetter>> {
        self.live.dead_letter(id)
    }

    fn discard_dead_letter(&self, id: &ChangeId) -> Result<()> {
        self.live.discard_dead_letter(id)
    }

    fn disk_bytes(&self) -> u64 {
        0
    }

    fn certificate(&self, fingerprint: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        self.live.certificate(fingerprint)
    }

    fn add_certificate(&self, fingerprint: &[u8; 32], der: &[u8]) -> Result<()> {
        self.live.add_certificate(fingerprint, der)
    }

    fn departure(&self, sealed: &Key) -> Result<Option<mrr_core::placement::Departure>> {
        self.live.departure(sealed)
    }

    fn departures(&self) -> Result<Vec<(Key, mrr_core::placement::Departure)>> {
        self.live.departures()
    }

    fn stable_point(&self) -> Result<mrr_core::VersionVector> {
        self.live.stable_point()
    }

    fn set_stable_point(&self, stable: &mrr_core::VersionVector) -> Result<()> {
        self.live.set_stable_point(stable)
    }

    fn footprint(&self) -> mrr_storage::Footprint {
        self.live.footprint()
    }

    fn log_floors(&self) -> Result<mrr_core::VersionVector> {
        self.live.log_floors()
    }

    fn records_after(&self, after: Option<&Key>, limit: usize) -> Result<Vec<(Key, Record)>> {
        self.live.records_after(after, limit)
    }

    fn view(&self) -> Result<std::sync::Arc<dyn mrr_storage::StoreView>> {
        self.live.view()
    }

    fn bootstrap_mark(&self) -> Result<Option<mrr_storage::BootstrapMark>> {
        self.live.bootstrap_mark()
    }
}
