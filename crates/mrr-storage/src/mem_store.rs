//! [`Store`] in memory, for the simulator and tests. Same contract as [`crate::FjallStore`],
//! checked by the same conformance suite; "durable" means "until the value is dropped".

use std::collections::BTreeMap;
use std::sync::Mutex;

use mrr_core::fold::FoldEntry;
use mrr_core::{Change, ChangeId, ConflictEntry, DeadLetter, Key, Record, Stream, Version, VersionVector};

use crate::{CommitBatch, ConflictCursor, RecoveredState, Result, Store};

#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
}

#[derive(Clone, Debug, Default)]
struct Inner {
    records: BTreeMap<Key, Record>,
    sealed_index: BTreeMap<Key, Key>,
    changes: BTreeMap<(Stream, u64), Change>,
    state: RecoveredState,
    history: BTreeMap<(Key, Version), FoldEntry>,
    conflicts: BTreeMap<(ChangeId, ChangeId), ConflictEntry>,
    /// The conflict log in detection order.
    conflicts_by_time: BTreeMap<u64, std::collections::BTreeSet<(ChangeId, ChangeId)>>,
    dlq: BTreeMap<ChangeId, DeadLetter>,
    dlq_by_time: std::collections::BTreeSet<(u64, ChangeId)>,
    strong_requests: BTreeMap<String, Vec<u8>>,
    certificates: BTreeMap<[u8; 32], Vec<u8>>,
    stable_point: VersionVector,
    log_floors: VersionVector,
    departures: BTreeMap<Key, mrr_core::placement::Departure>,
    bootstrap: Option<crate::BootstrapMark>,
}

impl Inner {
    fn unindex_conflict(&mut self, at_ms: u64, ident: &(ChangeId, ChangeId)) {
        if let Some(set) = self.conflicts_by_time.get_mut(&at_ms) {
            set.remove(ident);
            if set.is_empty() {
                self.conflicts_by_time.remove(&at_ms);
            }
        }
    }

    fn remove_letter(&mut self, id: &ChangeId) {
        if let Some(d) = self.dlq.remove(id) {
            self.dlq_by_time.remove(&(d.failed_at_ms, d.id));
        }
    }
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Store for MemStore {
    fn get(&self, key: &Key) -> Result<Option<Record>> {
        Ok(self.lock().records.get(key).cloned())
    }

    fn unseal(&self, sealed: &Key) -> Result<Option<Key>> {
        Ok(self.lock().sealed_index.get(sealed).cloned())
    }

    fn scan(&self, topic: &str, after_id: Option<&str>, limit: usize) -> Result<Vec<(Key, Record)>> {
        let inner = self.lock();
        let start = Key::new(topic, after_id.unwrap_or(""));
        Ok(inner
            .records
            .range(start..)
            .filter(|(k, _)| after_id.is_none_or(|a| k.id.as_str() > a))
            .take_while(|(k, _)| k.topic == topic)
            .filter(|(k, _)| !mrr_core::seal::is_sealed(k))
            .take(limit)
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect())
    }

    fn changes_within(&self, stream: &Stream, after_seq: u64, limit: usize, bytes_max: u64) -> Result<Vec<Change>> {
        let inner = self.lock();
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let range = inner.changes.range((stream.clone(), after_seq.saturating_add(1))..=(stream.clone(), u64::MAX));
        for (_, c) in range.take(limit) {
            // The size FjallStore measures: the stored encoding (not worth computing unbounded).
            if bytes_max < u64::MAX {
                bytes += crate::encoding::encode(c).len() as u64;
            }
            if bytes > bytes_max && !out.is_empty() {
                break;
            }
            out.push(c.clone());
        }
        Ok(out)
    }

    fn recover(&self) -> Result<RecoveredState> {
        Ok(self.lock().state.clone())
    }

    fn commit(&self, batch: &CommitBatch) -> Result<()> {
        let mut inner = self.lock();
        for k in &batch.records_removed {
            inner.records.remove(k);
        }
        for (k, r) in &batch.records {
            inner.records.insert(k.clone(), r.clone());
        }
        for (sealed, clear) in &batch.sealed_index {
            match clear {
                Some(clear) => inner.sealed_index.insert(sealed.clone(), clear.clone()),
                None => inner.sealed_index.remove(sealed),
            };
        }
        for c in &batch.changes {
            inner.changes.insert((c.stream(), c.seq), c.clone());
            match &c.proof.checkpoint {
                Some(cp) => inner.state.chain_heads.insert(c.stream(), (c.seq, cp.link)),
                None => inner.state.chain_heads.remove(&c.stream()),
            };
        }
        for c in &batch.rewritten {
            inner.changes.insert((c.stream(), c.seq), c.clone());
        }
        for (stream, upto) in batch.log_truncated.iter() {
            let from = inner.log_floors.get(stream);
            let gone: Vec<(Stream, u64)> =
                inner.changes.range((stream.clone(), from)..=(stream.clone(), upto)).map(|(k, _)| k.clone()).collect();
            for k in gone {
                debug_assert!(!batch.changes.iter().chain(&batch.rewritten).any(|c| (c.stream(), c.seq) == k));
                inner.changes.remove(&k);
            }
            inner.log_floors.raise(stream, upto);
        }
        for (sealed, departure) in &batch.departures {
            match departure {
                Some(d) => inner.departures.insert(sealed.clone(), d.clone()),
                None => inner.departures.remove(sealed),
            };
        }
        for ident in &batch.conflicts_removed {
            if let Some(e) = inner.conflicts.remove(ident) {
                inner.unindex_conflict(e.detected_at_ms, ident);
            }
        }
        inner.state.vv.join(&batch.vv);
        inner.state.hlc_high_water = batch.hlc_high_water;
        if let Some(p) = &batch.strong_position {
            inner.state.strong_position = Some(p.clone());
        }
        if let Some(mark) = &batch.bootstrap {
            inner.bootstrap = Some(mark.clone());
        }
        for (id, answer) in &batch.strong_requests {
            inner.strong_requests.insert(id.clone(), answer.clone());
        }
        for key in &batch.histories_dropped {
            inner.history.retain(|(k, _), _| k != key);
        }
        for (k, e) in &batch.history {
            inner.history.insert((k.clone(), e.version.clone()), e.clone());
        }
        for e in &batch.conflicts {
            match inner.conflicts.get_mut(&e.ident()) {
                Some(logged) => {
                    let was = logged.detected_at_ms;
                    logged.absorb(e);
                    let now = logged.detected_at_ms;
                    if now != was {
                        inner.unindex_conflict(was, &e.ident());
                        inner.conflicts_by_time.entry(now).or_default().insert(e.ident());
                    }
                }
                None => {
                    inner.conflicts.insert(e.ident(), e.clone());
                    inner.conflicts_by_time.entry(e.detected_at_ms).or_default().insert(e.ident());
                }
            }
        }
        for id in &batch.dead_letters_cleared {
            inner.remove_letter(id);
        }
        for d in &batch.dead_letters {
            inner.remove_letter(&d.id);
            inner.dlq_by_time.insert((d.failed_at_ms, d.id.clone()));
            inner.dlq.insert(d.id.clone(), d.clone());
        }
        Ok(())
    }

    fn persist(&self) -> Result<()> {
        Ok(())
    }

    fn history_from(&self, key: &Key, version: &Version) -> Result<(Option<FoldEntry>, Vec<FoldEntry>)> {
        let inner = self.lock();
        let at = (key.clone(), version.clone());
        let before =
            inner.history.range(..at.clone()).next_back().filter(|((k, _), _)| k == key).map(|(_, e)| e.clone());
        let after = inner.history.range(at..).take_while(|((k, _), _)| k == key).map(|(_, e)| e.clone()).collect();
        Ok((before, after))
    }

    fn history_entry(&self, key: &Key, version: &Version) -> Result<Option<FoldEntry>> {
        Ok(self.lock().history.get(&(key.clone(), version.clone())).cloned())
    }

    fn conflicts_after(
        &self,
        since_ms: u64,
        after: Option<&ConflictCursor>,
        limit: usize,
    ) -> Result<Vec<ConflictEntry>> {
        let inner = self.lock();
        let start = after.map_or(since_ms, |c| c.detected_at_ms);
        let mut out = Vec::new();
        for (at_ms, idents) in inner.conflicts_by_time.range(start..) {
            for ident in idents {
                if after.is_some_and(|c| c.detected_at_ms == *at_ms && *ident <= c.ident) {
                    continue;
                }
                if out.len() >= limit {
                    return Ok(out);
                }
                out.extend(inner.conflicts.get(ident).cloned());
            }
        }
        Ok(out)
    }

    fn conflict_count(&self) -> u64 {
        self.lock().conflicts.len() as u64
    }

    fn expire_conflicts(&self, idents: &[(ChangeId, ChangeId)]) -> Result<()> {
        let mut inner = self.lock();
        for ident in idents {
            if let Some(e) = inner.conflicts.remove(ident) {
                inner.unindex_conflict(e.detected_at_ms, ident);
            }
        }
        Ok(())
    }

    fn dead_letters_after(&self, after: Option<&ChangeId>, limit: usize) -> Result<Vec<DeadLetter>> {
        let inner = self.lock();
        let from = match after {
            Some(id) => std::ops::Bound::Excluded(id.clone()),
            None => std::ops::Bound::Unbounded,
        };
        Ok(inner.dlq.range((from, std::ops::Bound::Unbounded)).take(limit).map(|(_, d)| d.clone()).collect())
    }

    fn dead_letter_count(&self) -> u64 {
        self.lock().dlq.len() as u64
    }

    fn oldest_dead_letter_ms(&self) -> Result<Option<u64>> {
        Ok(self.lock().dlq_by_time.first().map(|(t, _)| *t))
    }

    fn strong_request(&self, request_id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().strong_requests.get(request_id).cloned())
    }

    fn certificate(&self, fingerprint: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().certificates.get(fingerprint).cloned())
    }

    fn departure(&self, sealed: &Key) -> Result<Option<mrr_core::placement::Departure>> {
        Ok(self.lock().departures.get(sealed).cloned())
    }

    fn departures(&self) -> Result<Vec<(Key, mrr_core::placement::Departure)>> {
        Ok(self.lock().departures.iter().map(|(k, d)| (k.clone(), d.clone())).collect())
    }

    fn stable_point(&self) -> Result<VersionVector> {
        Ok(self.lock().stable_point.clone())
    }

    fn set_stable_point(&self, stable: &VersionVector) -> Result<()> {
        self.lock().stable_point = stable.clone();
        Ok(())
    }

    fn add_certificate(&self, fingerprint: &[u8; 32], der: &[u8]) -> Result<()> {
        self.lock().certificates.insert(*fingerprint, der.to_vec());
        Ok(())
    }

    fn dead_letter(&self, id: &ChangeId) -> Result<Option<DeadLetter>> {
        Ok(self.lock().dlq.get(id).cloned())
    }

    fn discard_dead_letter(&self, id: &ChangeId) -> Result<()> {
        self.lock().remove_letter(id);
        Ok(())
    }

    fn disk_bytes(&self) -> u64 {
        0
    }

    fn footprint(&self) -> crate::Footprint {
        let inner = self.lock();
        crate::Footprint {
            changelog_entries: inner.changes.len() as u64,
            changelog_bytes: inner.changes.values().map(|c| crate::encoding::encode(c).len() as u64).sum(),
            fold_entries: inner.history.len() as u64,
            records: inner.records.len() as u64,
        }
    }

    fn log_floors(&self) -> Result<VersionVector> {
        Ok(self.lock().log_floors.clone())
    }

    fn records_after(&self, after: Option<&Key>, limit: usize) -> Result<Vec<(Key, Record)>> {
        let inner = self.lock();
        let from = match after {
            Some(k) => std::ops::Bound::Excluded(k.clone()),
            None => std::ops::Bound::Unbounded,
        };
        Ok(inner
            .records
            .range((from, std::ops::Bound::Unbounded))
            .take(limit)
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect())
    }

    fn view(&self) -> Result<std::sync::Arc<dyn crate::StoreView>> {
        Ok(std::sync::Arc::new(MemStore { inner: Mutex::new(self.lock().clone()) }))
    }

    fn bootstrap_mark(&self) -> Result<Option<crate::BootstrapMark>> {
        Ok(self.lock().bootstrap.clone())
    }
}

/// A view is a copy: cheap enough for the simulator and tests.
impl crate::StoreView for MemStore {
    fn recover(&self) -> Result<RecoveredState> {
        Store::recover(self)
    }

    fn log_floors(&self) -> Result<VersionVector> {
        Store::log_floors(self)
    }

    fn get(&self, key: &Key) -> Result<Option<Record>> {
        Store::get(self, key)
    }

    fn records_after(&self, after: Option<&Key>, limit: usize) -> Result<Vec<(Key, Record)>> {
        Store::records_after(self, after, limit)
    }

    fn history(&self, key: &Key) -> Result<Vec<FoldEntry>> {
        let inner = self.lock();
        Ok(inner.history.iter().filter(|((k, _), _)| k == key).map(|(_, e)| e.clone()).collect())
    }

    fn changes_within(&self, stream: &Stream, after_seq: u64, limit: usize, bytes_max: u64) -> Result<Vec<Change>> {
        Store::changes_within(self, stream, after_seq, limit, bytes_max)
    }

    fn certificate(&self, fingerprint: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        Store::certificate(self, fingerprint)
    }
}
