//! A durable log of opaque entries by index, with a few named values beside it: what a
//! consensus protocol asks of a disk. Append, read a range, cut the tail, drop the head, read and
//! write a named value — each on disk (fsynced) when the call returns, whatever the record
//! store's `durability` says, because a vote or a log entry that a crash takes back can elect two
//! leaders in one term. The one exception is a *hint* ([`LogStore::put_hint`]): a value the
//! protocol can recompute (the commit index), written without an fsync of its own. It reaches
//! the disk with the next durable call, and since the journal is one sequence, a hint that
//! survives a crash never names more than the durable writes before it.
//!
//! It knows nothing of terms, votes or Raft: entries and values are bytes. [`FjallLog`] keeps
//! them in two keyspaces of the node's fjall database; [`MemLog`] serves tests and the simulator.
//! Both pass [`crate::conformance::run_log`].

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::{Result, StoreError};

pub trait LogStore: Send + Sync + std::fmt::Debug {
    /// Writes `entries` (index, bytes), replacing any already at those indexes.
    fn append(&self, entries: &[(u64, Vec<u8>)]) -> Result<()>;
    /// Entries with `from <= index < until`, in index order, at most `limit`.
    fn range(&self, from: u64, until: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>>;
    /// The entry with the highest index.
    fn last(&self) -> Result<Option<(u64, Vec<u8>)>>;
    /// Removes every entry after `index` (every entry, for `None`).
    fn truncate_after(&self, index: Option<u64>) -> Result<()>;
    /// Removes every entry up to and including `index`.
    fn purge_through(&self, index: u64) -> Result<()>;
    fn get_value(&self, name: &str) -> Result<Option<Vec<u8>>>;
    fn put_value(&self, name: &str, value: &[u8]) -> Result<()>;
    /// Writes a value a crash may take back to an older one: no fsync of its own.
    fn put_hint(&self, name: &str, value: &[u8]) -> Result<()>;
}

/// Removals run in bounded batches, so truncating a long log never builds one huge batch.
const REMOVE_BATCH_MAX: usize = 4_096;

pub struct FjallLog {
    db: Database,
    entries: Keyspace,
    values: Keyspace,
}

impl std::fmt::Debug for FjallLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallLog").finish_non_exhaustive()
    }
}

impl FjallLog {
    /// The log named `name` in `db` (keyspaces `<name>_log` and `<name>_values`).
    pub(crate) fn open(db: Database, name: &str) -> Result<Self> {
        let entries = db.keyspace(&format!("{name}_log"), KeyspaceCreateOptions::default)?;
        let values = db.keyspace(&format!("{name}_values"), KeyspaceCreateOptions::default)?;
        Ok(Self { db, entries, values })
    }

    fn sync(&self) -> Result<()> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Removes the entries of `from..until` (`None`: to the end), in bounded batches.
    fn remove(&self, from: u64, until: Option<u64>) -> Result<()> {
        loop {
            let keys: Vec<Vec<u8>> = match until {
                Some(until) => self
                    .entries
                    .range(from.to_be_bytes()..until.to_be_bytes())
                    .take(REMOVE_BATCH_MAX)
                    .map(|item| item.key().map(|k| k.to_vec()))
                    .collect::<std::result::Result<_, _>>()?,
                None => self
                    .entries
                    .range(from.to_be_bytes()..)
                    .take(REMOVE_BATCH_MAX)
                    .map(|item| item.key().map(|k| k.to_vec()))
                    .collect::<std::result::Result<_, _>>()?,
            };
            if keys.is_empty() {
                break;
            }
            let mut wb = self.db.batch();
            for k in &keys {
                wb.remove(&self.entries, k.as_slice());
            }
            wb.commit()?;
            if keys.len() < REMOVE_BATCH_MAX {
                break;
            }
        }
        self.sync()
    }
}

fn index_of(key: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| StoreError::Corrupt {
        what: "log index",
        key: key.to_vec(),
        reason: format!("{} bytes, expected 8", key.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

impl LogStore for FjallLog {
    fn append(&self, entries: &[(u64, Vec<u8>)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut wb = self.db.batch();
        for (index, bytes) in entries {
            wb.insert(&self.entries, index.to_be_bytes(), bytes.as_slice());
        }
        wb.commit()?;
        self.sync()
    }

    fn range(&self, from: u64, until: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        if from >= until {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for item in self.entries.range(from.to_be_bytes()..until.to_be_bytes()).take(limit) {
            let (k, v) = item.into_inner()?;
            out.push((index_of(&k)?, v.to_vec()));
        }
        Ok(out)
    }

    fn last(&self) -> Result<Option<(u64, Vec<u8>)>> {
        match self.entries.iter().next_back() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.into_inner()?;
                Ok(Some((index_of(&k)?, v.to_vec())))
            }
        }
    }

    fn truncate_after(&self, index: Option<u64>) -> Result<()> {
        match index.map(|i| i.checked_add(1)) {
            None => self.remove(0, None),
            Some(None) => Ok(()),
            Some(Some(from)) => self.remove(from, None),
        }
    }

    fn purge_through(&self, index: u64) -> Result<()> {
        match index.checked_add(1) {
            Some(until) => self.remove(0, Some(until)),
            None => self.remove(0, None),
        }
    }

    fn get_value(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.values.get(name)?.map(|v| v.to_vec()))
    }

    fn put_value(&self, name: &str, value: &[u8]) -> Result<()> {
        self.values.insert(name, value)?;
        self.sync()
    }

    fn put_hint(&self, name: &str, value: &[u8]) -> Result<()> {
        self.values.insert(name, value)?;
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct MemLog {
    inner: Mutex<MemLogInner>,
}

#[derive(Debug, Default)]
struct MemLogInner {
    entries: BTreeMap<u64, Vec<u8>>,
    values: BTreeMap<String, Vec<u8>>,
}

impl MemLog {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemLogInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl LogStore for MemLog {
    fn append(&self, entries: &[(u64, Vec<u8>)]) -> Result<()> {
        let mut inner = self.lock();
        for (index, bytes) in entries {
            inner.entries.insert(*index, bytes.clone());
        }
        Ok(())
    }

    fn range(&self, from: u64, until: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        if from >= until {
            return Ok(Vec::new());
        }
        Ok(self.lock().entries.range(from..until).take(limit).map(|(i, b)| (*i, b.clone())).collect())
    }

    fn last(&self) -> Result<Option<(u64, Vec<u8>)>> {
        Ok(self.lock().entries.last_key_value().map(|(i, b)| (*i, b.clone())))
    }

    fn truncate_after(&self, index: Option<u64>) -> Result<()> {
        let mut inner = self.lock();
        match index {
            None => inner.entries.clear(),
            Some(i) => {
                if let Some(from) = i.checked_add(1) {
                    inner.entries.split_off(&from);
                }
            }
        }
        Ok(())
    }

    fn purge_through(&self, index: u64) -> Result<()> {
        let mut inner = self.lock();
        inner.entries = match index.checked_add(1) {
            Some(from) => inner.entries.split_off(&from),
            None => BTreeMap::new(),
        };
        Ok(())
    }

    fn get_value(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().values.get(name).cloned())
    }

    fn put_value(&self, name: &str, value: &[u8]) -> Result<()> {
        self.lock().values.insert(name.to_owned(), value.to_vec());
        Ok(())
    }

    fn put_hint(&self, name: &str, value: &[u8]) -> Result<()> {
        self.put_value(name, value)
    }
}
