//! [`Store`] in memory, for the simulator and tests. Same contract as [`crate::FjallStore`],
//! checked by the same conformance suite; "durable" means "until the value is dropped".

use std::collections::BTreeMap;
use std::sync::Mutex;

use mrr_core::fold::FoldEntry;
use mrr_core::{Change, ChangeId, ConflictEntry, DeadLetter, Key, Record, Stream, Version};

use crate::{CommitBatch, RecoveredState, Result, Store};

#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    records: BTreeMap<Key, Record>,
    changes: BTreeMap<(Stream, u64), Change>,
    state: RecoveredState,
    history: BTreeMap<(Key, Version), FoldEntry>,
    conflicts: BTreeMap<(ChangeId, ChangeId), ConflictEntry>,
    dlq: BTreeMap<ChangeId, DeadLetter>,
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

    fn scan(&self, topic: &str, after_id: Option<&str>, limit: usize) -> Result<Vec<(Key, Record)>> {
        let inner = self.lock();
        let start = Key::new(topic, after_id.unwrap_or(""));
        Ok(inner
            .records
            .range(start..)
            .filter(|(k, _)| after_id.is_none_or(|a| k.id.as_str() > a))
            .take_while(|(k, _)| k.topic == topic)
            .take(limit)
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect())
    }

    fn changes_after(&self, stream: &Stream, after_seq: u64, limit: usize) -> Result<Vec<Change>> {
        let inner = self.lock();
        Ok(inner
            .changes
            .range((stream.clone(), after_seq.saturating_add(1))..=(stream.clone(), u64::MAX))
            .take(limit)
            .map(|(_, c)| c.clone())
            .collect())
    }

    fn changes_within(&self, stream: &Stream, after_seq: u64, limit: usize, bytes_max: u64) -> Result<Vec<Change>> {
        let inner = self.lock();
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let range = inner.changes.range((stream.clone(), after_seq.saturating_add(1))..=(stream.clone(), u64::MAX));
        for (_, c) in range.take(limit) {
            // The size FjallStore measures: the stored encoding.
            bytes += crate::encoding::encode(c).len() as u64;
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
        for (k, r) in &batch.records {
            inner.records.insert(k.clone(), r.clone());
        }
        for c in &batch.changes {
            inner.changes.insert((c.stream(), c.seq), c.clone());
        }
        inner.state.vv.join(&batch.vv);
        inner.state.hlc_high_water = batch.hlc_high_water;
        for key in &batch.histories_dropped {
            inner.history.retain(|(k, _), _| k != key);
        }
        for (k, e) in &batch.history {
            inner.history.insert((k.clone(), e.version.clone()), e.clone());
        }
        for e in &batch.conflicts {
            match inner.conflicts.get_mut(&e.ident()) {
                Some(logged) => logged.absorb(e),
                None => {
                    inner.conflicts.insert(e.ident(), e.clone());
                }
            }
        }
        for id in &batch.dead_letters_cleared {
            inner.dlq.remove(id);
        }
        for d in &batch.dead_letters {
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

    fn conflicts(&self) -> Result<Vec<ConflictEntry>> {
        Ok(self.lock().conflicts.values().cloned().collect())
    }

    fn expire_conflicts(&self, idents: &[(ChangeId, ChangeId)]) -> Result<()> {
        let mut inner = self.lock();
        for ident in idents {
            inner.conflicts.remove(ident);
        }
        Ok(())
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        Ok(self.lock().dlq.values().cloned().collect())
    }

    fn dead_letter(&self, id: &ChangeId) -> Result<Option<DeadLetter>> {
        Ok(self.lock().dlq.get(id).cloned())
    }

    fn discard_dead_letter(&self, id: &ChangeId) -> Result<()> {
        self.lock().dlq.remove(id);
        Ok(())
    }

    fn disk_bytes(&self) -> u64 {
        0
    }
}
