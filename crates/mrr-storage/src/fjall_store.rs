//! [`Store`] on fjall: keyspaces `records`, `changes`, `meta`, `history` (fold entries of
//! `custom` keys), `conflicts` and `dlq` in one database, so a commit spanning them is one
//! atomic write batch through fjall's journal.

use std::collections::BTreeMap;
use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use mrr_core::fold::FoldEntry;
use mrr_core::{Change, ChangeId, ConflictEntry, DeadLetter, Key, Record, Stream, Version};

use crate::encoding::{self, decode, decode_u64, encode};
use crate::{CommitBatch, Durability, RecoveredState, Result, Store, STORAGE_FORMAT};

pub struct FjallStore {
    db: Database,
    records: Keyspace,
    changes: Keyspace,
    meta: Keyspace,
    history: Keyspace,
    conflicts: Keyspace,
    dlq: Keyspace,
    durability: Durability,
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallStore").field("durability", &self.durability).finish_non_exhaustive()
    }
}

impl FjallStore {
    pub fn open(path: &Path, durability: Durability) -> Result<Self> {
        let db = Database::builder(path).open()?;
        let records = db.keyspace("records", KeyspaceCreateOptions::default)?;
        let changes = db.keyspace("changes", KeyspaceCreateOptions::default)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        let history = db.keyspace("history", KeyspaceCreateOptions::default)?;
        let conflicts = db.keyspace("conflicts", KeyspaceCreateOptions::default)?;
        let dlq = db.keyspace("dlq", KeyspaceCreateOptions::default)?;
        let store = Self { db, records, changes, meta, history, conflicts, dlq, durability };
        store.check_format()?;
        Ok(store)
    }

    /// A new directory is stamped with [`STORAGE_FORMAT`]; an existing one must carry it. A
    /// directory from before formats were stamped (format 1) has data but no stamp.
    fn check_format(&self) -> Result<()> {
        let found = match self.meta.get(encoding::FORMAT_KEY)? {
            Some(v) => u32::try_from(decode_u64("storage format", encoding::FORMAT_KEY, &v)?).unwrap_or(u32::MAX),
            None if self.changes.is_empty()? && self.records.is_empty()? => {
                self.meta.insert(encoding::FORMAT_KEY, u64::from(STORAGE_FORMAT).to_be_bytes().to_vec())?;
                self.db.persist(PersistMode::SyncData)?;
                STORAGE_FORMAT
            }
            None => 1,
        };
        if found != STORAGE_FORMAT {
            return Err(crate::StoreError::Format { found, expected: STORAGE_FORMAT });
        }
        Ok(())
    }
}

impl Store for FjallStore {
    fn get(&self, key: &Key) -> Result<Option<Record>> {
        let k = encoding::record_key(key);
        match self.records.get(&k)? {
            Some(bytes) => Ok(Some(decode("record", &k, &bytes)?)),
            None => Ok(None),
        }
    }

    fn scan(&self, topic: &str, after_id: Option<&str>, limit: usize) -> Result<Vec<(Key, Record)>> {
        let prefix = encoding::topic_prefix(topic);
        let mut out = Vec::new();
        let iter = match after_id {
            Some(id) => {
                let mut start = encoding::record_key(&Key::new(topic, id));
                start.push(0); // strictly after `id`
                               // The separator is NUL, so every key of the topic sorts below `topic\x01`.
                let mut end = topic.as_bytes().to_vec();
                end.push(1);
                self.records.range(start..end)
            }
            None => self.records.prefix(&prefix),
        };
        for item in iter.take(limit) {
            let (k, v) = item.into_inner()?;
            let record: Record = decode("record", &k, &v)?;
            let id = std::str::from_utf8(&k[prefix.len()..]).map_err(|e| crate::StoreError::Corrupt {
                what: "record key",
                key: k.to_vec(),
                reason: e.to_string(),
            })?;
            out.push((Key::new(topic, id), record));
        }
        Ok(out)
    }

    fn changes_after(&self, stream: &Stream, after_seq: u64, limit: usize) -> Result<Vec<Change>> {
        let start = encoding::change_key(stream, after_seq.saturating_add(1));
        let end = encoding::change_key(stream, u64::MAX);
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in self.changes.range(start..=end).take(limit) {
            let (k, v) = item.into_inner()?;
            out.push(decode("change", &k, &v)?);
        }
        Ok(out)
    }

    fn changes_within(&self, stream: &Stream, after_seq: u64, limit: usize, bytes_max: u64) -> Result<Vec<Change>> {
        let start = encoding::change_key(stream, after_seq.saturating_add(1));
        let end = encoding::change_key(stream, u64::MAX);
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for item in self.changes.range(start..=end).take(limit) {
            let (k, v) = item.into_inner()?;
            bytes += v.len() as u64;
            if bytes > bytes_max && !out.is_empty() {
                break;
            }
            out.push(decode("change", &k, &v)?);
        }
        Ok(out)
    }

    fn recover(&self) -> Result<RecoveredState> {
        let mut state = RecoveredState::default();
        for item in self.meta.prefix(encoding::VV_PREFIX) {
            let (k, v) = item.into_inner()?;
            let stream = encoding::stream_from_suffix("version vector key", &k, encoding::VV_PREFIX.len())?;
            state.vv.raise(&stream, decode_u64("version vector entry", &k, &v)?);
        }
        if let Some(v) = self.meta.get(encoding::HLC_KEY)? {
            state.hlc_high_water = decode("hlc high water", encoding::HLC_KEY, &v)?;
        }
        Ok(state)
    }

    fn commit(&self, batch: &CommitBatch) -> Result<()> {
        let mut wb = self.db.batch().durability(match self.durability {
            Durability::Fsync => Some(PersistMode::SyncData),
            Durability::Buffered => None,
        });
        for (key, record) in &batch.records {
            wb.insert(&self.records, encoding::record_key(key), encode(record));
        }
        for change in &batch.changes {
            wb.insert(&self.changes, encoding::change_key(&change.stream(), change.seq), encode(change));
        }
        for (stream, seq) in batch.vv.iter() {
            wb.insert(&self.meta, encoding::vv_key(stream), seq.to_be_bytes().to_vec());
        }
        wb.insert(&self.meta, encoding::HLC_KEY.to_vec(), encode(&batch.hlc_high_water));
        // Removal and insertion of one key in a batch would depend on the batch's order: an
        // entry the batch writes is kept out of the removal instead.
        let written: std::collections::BTreeSet<Vec<u8>> =
            batch.history.iter().map(|(key, e)| encoding::history_key(key, &e.version)).collect();
        for key in &batch.histories_dropped {
            for item in self.history.prefix(encoding::history_prefix(key)) {
                let (k, _) = item.into_inner()?;
                if !written.contains(k.as_ref()) {
                    wb.remove(&self.history, k.to_vec());
                }
            }
        }
        for (key, entry) in &batch.history {
            wb.insert(&self.history, encoding::history_key(key, &entry.version), encode(entry));
        }
        // A conflict reported again joins what is logged (see `ConflictEntry::absorb`).
        let mut conflicts: BTreeMap<Vec<u8>, ConflictEntry> = BTreeMap::new();
        for entry in &batch.conflicts {
            let k = encoding::conflict_key(&entry.ident());
            if let Some(logged) = conflicts.get_mut(&k) {
                logged.absorb(entry);
                continue;
            }
            let joined = match self.conflicts.get(&k)? {
                Some(bytes) => {
                    let mut logged: ConflictEntry = decode("conflict entry", &k, &bytes)?;
                    logged.absorb(entry);
                    logged
                }
                None => entry.clone(),
            };
            conflicts.insert(k, joined);
        }
        for (k, entry) in &conflicts {
            wb.insert(&self.conflicts, k.clone(), encode(entry));
        }
        for id in &batch.dead_letters_cleared {
            wb.remove(&self.dlq, encoding::change_id_key(id));
        }
        for letter in &batch.dead_letters {
            wb.insert(&self.dlq, encoding::change_id_key(&letter.id), encode(letter));
        }
        wb.commit()?;
        Ok(())
    }

    fn persist(&self) -> Result<()> {
        self.db.persist(PersistMode::SyncData)?;
        Ok(())
    }

    fn history_from(&self, key: &Key, version: &Version) -> Result<(Option<FoldEntry>, Vec<FoldEntry>)> {
        let prefix = encoding::history_prefix(key);
        let at = encoding::history_key(key, version);
        let before = match self.history.range(prefix.clone()..at.clone()).next_back() {
            Some(item) => {
                let (k, v) = item.into_inner()?;
                Some(decode("fold entry", &k, &v)?)
            }
            None => None,
        };
        let mut after = Vec::new();
        let end = record_key_end(key);
        for item in self.history.range(at..end) {
            let (k, v) = item.into_inner()?;
            after.push(decode("fold entry", &k, &v)?);
        }
        Ok((before, after))
    }

    fn history_entry(&self, key: &Key, version: &Version) -> Result<Option<FoldEntry>> {
        let k = encoding::history_key(key, version);
        match self.history.get(&k)? {
            Some(v) => Ok(Some(decode("fold entry", &k, &v)?)),
            None => Ok(None),
        }
    }

    fn conflicts(&self) -> Result<Vec<ConflictEntry>> {
        decode_all(&self.conflicts, "conflict entry")
    }

    fn expire_conflicts(&self, idents: &[(ChangeId, ChangeId)]) -> Result<()> {
        let mut wb = self.db.batch();
        for ident in idents {
            wb.remove(&self.conflicts, encoding::conflict_key(ident));
        }
        wb.commit()?;
        Ok(())
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        decode_all(&self.dlq, "dead letter")
    }

    fn dead_letter(&self, id: &ChangeId) -> Result<Option<DeadLetter>> {
        let k = encoding::change_id_key(id);
        match self.dlq.get(&k)? {
            Some(v) => Ok(Some(decode("dead letter", &k, &v)?)),
            None => Ok(None),
        }
    }

    fn discard_dead_letter(&self, id: &ChangeId) -> Result<()> {
        self.dlq.remove(encoding::change_id_key(id))?;
        Ok(())
    }

    fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }
}

/// The first key after every fold entry of `key`: its prefix with the final NUL bumped to 1.
fn record_key_end(key: &Key) -> Vec<u8> {
    let mut end = encoding::record_key(key);
    end.push(1);
    end
}

/// Every value of `keyspace`, in key order.
fn decode_all<T: serde::de::DeserializeOwned>(keyspace: &Keyspace, what: &'static str) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for item in keyspace.iter() {
        let (k, v) = item.into_inner()?;
        out.push(decode(what, &k, &v)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_of_another_format_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(FjallStore::open(dir.path(), Durability::Fsync).expect("new directory"));
        drop(FjallStore::open(dir.path(), Durability::Fsync).expect("same format reopens"));
        {
            // A directory from before the stamp: data, no format key.
            let store = FjallStore::open(dir.path(), Durability::Fsync).expect("open");
            store.meta.remove(encoding::FORMAT_KEY).expect("remove");
            store.records.insert(b"t\0k", b"old").expect("insert");
            store.db.persist(PersistMode::SyncData).expect("persist");
        }
        let err = FjallStore::open(dir.path(), Durability::Fsync).expect_err("format 1");
        assert!(matches!(err, crate::StoreError::Format { found: 1, expected: STORAGE_FORMAT }), "{err}");
        assert!(err.to_string().contains("catches up from its peers"), "{err}");
    }
}
