//! [`Store`] on fjall: keyspaces `records`, `changes`, `meta`, `history` (fold entries of
//! `custom` keys), `conflicts` and `dlq` in one database, so a commit spanning them is one
//! atomic write batch through fjall's journal. `conflicts_by_time` and `dlq_by_time` index
//! the conflict log and the dead-letter queue by time, in the same batches, and their sizes
//! are counted, so operator reads and retention never scan a whole log. `strong_requests` holds
//! the strong tier's answered request ids, written in the commit that applied them. `sealed`
//! maps the sealed name of each record held here to its id (`mrr_core::seal`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable as _};
use mrr_core::fold::FoldEntry;
use mrr_core::{Change, ChangeId, ConflictEntry, DeadLetter, Key, Record, Stream, Version, VersionVector};

use crate::encoding::{self, decode, decode_u64, encode};
use crate::{CommitBatch, ConflictCursor, Durability, RecoveredState, Result, Store, STORAGE_FORMAT};

pub struct FjallStore {
    db: Database,
    records: Keyspace,
    changes: Keyspace,
    meta: Keyspace,
    history: Keyspace,
    conflicts: Keyspace,
    dlq: Keyspace,
    conflicts_by_time: Keyspace,
    dlq_by_time: Keyspace,
    strong_requests: Keyspace,
    sealed: Keyspace,
    conflict_count: AtomicU64,
    dead_letter_count: AtomicU64,
    /// Serialises the writer's commits with the removals made outside them (retention, an
    /// operator's discard), so the counts and time indexes stay exact.
    write_lock: Mutex<()>,
    durability: Durability,
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallStore").field("durability", &self.durability).finish_non_exhaustive()
    }
}

impl FjallStore {
    fn reader(&self) -> Reader {
        Reader {
            records: self.records.clone(),
            changes: self.changes.clone(),
            meta: self.meta.clone(),
            history: self.history.clone(),
        }
    }

    /// A durable log (see [`crate::log`]) named `name` in this store's database: its writes
    /// share the journal with the records but are fsynced on their own.
    pub fn log(&self, name: &str) -> Result<crate::log::FjallLog> {
        crate::log::FjallLog::open(self.db.clone(), name)
    }

    pub fn open(path: &Path, durability: Durability) -> Result<Self> {
        // The journal is kept until every keyspace's memtable it covers is flushed; fjall's
        // default bound (512 MiB) made an idle-looking node hold ~300 MB of journal under a
        // steady write load whose live data was a tenth of that (docs/benchmarks.md). A
        // smaller bound flushes memtables sooner, at a little write amplification.
        let db = Database::builder(path).max_journaling_size(JOURNAL_BYTES_MAX).open()?;
        let records = db.keyspace("records", KeyspaceCreateOptions::default)?;
        let changes = db.keyspace("changes", KeyspaceCreateOptions::default)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        let history = db.keyspace("history", KeyspaceCreateOptions::default)?;
        let conflicts = db.keyspace("conflicts", KeyspaceCreateOptions::default)?;
        let dlq = db.keyspace("dlq", KeyspaceCreateOptions::default)?;
        let conflicts_by_time = db.keyspace("conflicts_by_time", KeyspaceCreateOptions::default)?;
        let dlq_by_time = db.keyspace("dlq_by_time", KeyspaceCreateOptions::default)?;
        let strong_requests = db.keyspace("strong_requests", KeyspaceCreateOptions::default)?;
        let sealed = db.keyspace("sealed", KeyspaceCreateOptions::default)?;
        let store = Self {
            db,
            records,
            changes,
            meta,
            history,
            conflicts,
            dlq,
            conflicts_by_time,
            dlq_by_time,
            strong_requests,
            sealed,
            conflict_count: AtomicU64::new(0),
            dead_letter_count: AtomicU64::new(0),
            write_lock: Mutex::new(()),
            durability,
        };
        store.check_format()?;
        store.open_indexes()?;
        Ok(store)
    }

    /// Counts the two logs (once, at open) and builds their time indexes when a directory
    /// written before them has entries but no index.
    fn open_indexes(&self) -> Result<()> {
        let (mut conflicts, mut letters) = (0u64, 0u64);
        let rebuild_conflicts = self.conflicts_by_time.is_empty()?;
        let rebuild_letters = self.dlq_by_time.is_empty()?;
        let mut wb = self.db.batch();
        for item in self.conflicts.iter() {
            let (k, v) = item.into_inner()?;
            conflicts += 1;
            if rebuild_conflicts {
                let e: ConflictEntry = decode("conflict entry", &k, &v)?;
                wb.insert(&self.conflicts_by_time, time_key(e.detected_at_ms, &k), k.to_vec());
            }
        }
        for item in self.dlq.iter() {
            let (k, v) = item.into_inner()?;
            letters += 1;
            if rebuild_letters {
                let d: DeadLetter = decode("dead letter", &k, &v)?;
                wb.insert(&self.dlq_by_time, time_key(d.failed_at_ms, &k), Vec::new());
            }
        }
        wb.commit()?;
        self.conflict_count.store(conflicts, Ordering::SeqCst);
        self.dead_letter_count.store(letters, Ordering::SeqCst);
        Ok(())
    }

    /// Stamps a new directory with the fingerprint of the sealer its sealed names are made
    /// with; refuses a sealer other than the one an existing directory was stamped with
    /// (`mrr_core::seal`).
    pub fn check_sealer(&self, fingerprint: &str) -> Result<()> {
        match self.meta.get(encoding::SEALER_KEY)? {
            Some(found) if found.as_ref() == fingerprint.as_bytes() => Ok(()),
            Some(found) => Err(crate::StoreError::SealerChanged {
                found: String::from_utf8_lossy(&found).into_owned(),
                configured: fingerprint.to_owned(),
            }),
            None => {
                self.meta.insert(encoding::SEALER_KEY, fingerprint.as_bytes().to_vec())?;
                self.db.persist(PersistMode::SyncData)?;
                Ok(())
            }
        }
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

/// How much write-ahead journal fjall keeps before it flushes memtables to free it.
const JOURNAL_BYTES_MAX: u64 = 64 * 1024 * 1024;

impl Store for FjallStore {
    fn get(&self, key: &Key) -> Result<Option<Record>> {
        let k = encoding::record_key(key);
        match self.records.get(&k)? {
            Some(bytes) => Ok(Some(decode("record", &k, &bytes)?)),
            None => Ok(None),
        }
    }

    fn unseal(&self, sealed: &Key) -> Result<Option<Key>> {
        let k = encoding::record_key(sealed);
        match self.sealed.get(&k)? {
            Some(id) => {
                let id = std::str::from_utf8(&id).map_err(|e| crate::StoreError::Corrupt {
                    what: "sealed index entry",
                    key: k.clone(),
                    reason: e.to_string(),
                })?;
                Ok(Some(Key::new(sealed.topic.clone(), id)))
            }
            None => Ok(None),
        }
    }

    fn scan(&self, topic: &str, after_id: Option<&str>, limit: usize) -> Result<Vec<(Key, Record)>> {
        let prefix = encoding::topic_prefix(topic);
        let mut out = Vec::new();
        // Sealed ids start with `~`, above every character of a client id: the topic's client
        // records end where they begin.
        let mut end = prefix.clone();
        end.push(mrr_core::seal::SEALED_ID_PREFIX as u8);
        let start = match after_id {
            Some(id) => {
                let mut start = encoding::record_key(&Key::new(topic, id));
                start.push(0); // strictly after `id`
                start
            }
            None => prefix.clone(),
        };
        let iter = self.records.range(start..end);
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

    fn changes_within(&self, stream: &Stream, after_seq: u64, limit: usize, bytes_max: u64) -> Result<Vec<Change>> {
        self.reader().changes_within(At::Live, stream, after_seq, limit, bytes_max)
    }

    fn recover(&self) -> Result<RecoveredState> {
        let mut state = self.reader().recover(At::Live)?;
        state.strong_position = self.meta.get(encoding::STRONG_POSITION_KEY)?.map(|v| v.to_vec());
        Ok(state)
    }

    fn commit(&self, batch: &CommitBatch) -> Result<()> {
        let _serialised = self.write_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut wb = self.db.batch().durability(match self.durability {
            _ if batch.must_sync => Some(PersistMode::SyncData),
            _ if batch.unsynced => None,
            Durability::Fsync if !batch.from_strong_log => Some(PersistMode::SyncData),
            Durability::Fsync | Durability::Buffered => None,
        });
        for key in &batch.records_removed {
            wb.remove(&self.records, encoding::record_key(key));
        }
        for (key, record) in &batch.records {
            wb.insert(&self.records, encoding::record_key(key), encode(record));
        }
        for (sealed, clear) in &batch.sealed_index {
            match clear {
                Some(clear) => wb.insert(&self.sealed, encoding::record_key(sealed), clear.id.as_bytes().to_vec()),
                None => wb.remove(&self.sealed, encoding::record_key(sealed)),
            }
        }
        for change in batch.changes.iter().chain(&batch.rewritten) {
            wb.insert(&self.changes, encoding::change_key(&change.stream(), change.seq), encode(change));
        }
        // Each stream's entries from its old floor to its new one, by key (not read whole).
        let floors = if batch.log_truncated.is_empty() { VersionVector::new() } else { self.log_floors()? };
        for (stream, upto) in batch.log_truncated.iter() {
            let from = floors.get(stream);
            if upto <= from {
                continue;
            }
            let start = encoding::change_key(stream, from.saturating_add(1));
            let end = encoding::change_key(stream, upto);
            for item in self.changes.range(start..=end) {
                let k = item.key()?;
                wb.remove(&self.changes, k.to_vec());
            }
            wb.insert(&self.meta, encoding::log_floor_key(stream), upto.to_be_bytes().to_vec());
        }
        for (sealed, departure) in &batch.departures {
            match departure {
                Some(d) => wb.insert(&self.meta, encoding::departure_key(sealed), encode(&(sealed, d))),
                None => wb.remove(&self.meta, encoding::departure_key(sealed)),
            }
        }
        for (stream, seq) in batch.vv.iter() {
            wb.insert(&self.meta, encoding::vv_key(stream), seq.to_be_bytes().to_vec());
        }
        wb.insert(&self.meta, encoding::HLC_KEY.to_vec(), encode(&batch.hlc_high_water));
        if let Some(p) = &batch.strong_position {
            wb.insert(&self.meta, encoding::STRONG_POSITION_KEY.to_vec(), p.clone());
        }
        if let Some(mark) = &batch.bootstrap {
            wb.insert(&self.meta, encoding::BOOTSTRAP_KEY.to_vec(), encode(mark));
        }
        for (id, answer) in &batch.strong_requests {
            wb.insert(&self.strong_requests, id.as_bytes().to_vec(), answer.clone());
        }
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
        // `(entry, detection time it is indexed under, or None when new)`.
        let mut conflicts: BTreeMap<Vec<u8>, (ConflictEntry, Option<u64>)> = BTreeMap::new();
        for entry in &batch.conflicts {
            let k = encoding::conflict_key(&entry.ident());
            if let Some((logged, _)) = conflicts.get_mut(&k) {
                logged.absorb(entry);
                continue;
            }
            let joined = match self.conflicts.get(&k)? {
                Some(bytes) => {
                    let mut logged: ConflictEntry = decode("conflict entry", &k, &bytes)?;
                    let indexed_at = logged.detected_at_ms;
                    logged.absorb(entry);
                    (logged, Some(indexed_at))
                }
                None => (entry.clone(), None),
            };
            conflicts.insert(k, joined);
        }
        let mut new_conflicts = 0u64;
        let mut conflicts_gone = 0u64;
        let removed: std::collections::BTreeSet<Vec<u8>> =
            batch.conflicts_removed.iter().map(encoding::conflict_key).collect();
        for k in removed {
            debug_assert!(!conflicts.contains_key(&k), "a conflict entry both written and removed");
            if let Some(bytes) = self.conflicts.get(&k)? {
                let e: ConflictEntry = decode("conflict entry", &k, &bytes)?;
                wb.remove(&self.conflicts_by_time, time_key(e.detected_at_ms, &k));
                wb.remove(&self.conflicts, k);
                conflicts_gone += 1;
            }
        }
        for (k, (entry, indexed_at)) in &conflicts {
            wb.insert(&self.conflicts, k.clone(), encode(entry));
            match indexed_at {
                Some(at) if *at == entry.detected_at_ms => {}
                Some(at) => {
                    wb.remove(&self.conflicts_by_time, time_key(*at, k));
                    wb.insert(&self.conflicts_by_time, time_key(entry.detected_at_ms, k), k.clone());
                }
                None => {
                    new_conflicts += 1;
                    wb.insert(&self.conflicts_by_time, time_key(entry.detected_at_ms, k), k.clone());
                }
            }
        }
        // Letters a batch clears and letters it queues are disjoint (the engine keeps them so);
        // each removal takes its time-index key along.
        let (mut letters_added, mut letters_gone) = (0u64, 0u64);
        let cleared: std::collections::BTreeSet<Vec<u8>> =
            batch.dead_letters_cleared.iter().map(encoding::change_id_key).collect();
        for k in cleared {
            if let Some(bytes) = self.dlq.get(&k)? {
                let old: DeadLetter = decode("dead letter", &k, &bytes)?;
                wb.remove(&self.dlq, k.clone());
                wb.remove(&self.dlq_by_time, time_key(old.failed_at_ms, &k));
                letters_gone += 1;
            }
        }
        for letter in &batch.dead_letters {
            let k = encoding::change_id_key(&letter.id);
            match self.dlq.get(&k)? {
                Some(bytes) => {
                    let old: DeadLetter = decode("dead letter", &k, &bytes)?;
                    wb.remove(&self.dlq_by_time, time_key(old.failed_at_ms, &k));
                }
                None => letters_added += 1,
            }
            wb.insert(&self.dlq, k.clone(), encode(letter));
            wb.insert(&self.dlq_by_time, time_key(letter.failed_at_ms, &k), Vec::new());
        }
        wb.commit()?;
        self.conflict_count.fetch_add(new_conflicts, Ordering::SeqCst);
        self.conflict_count.fetch_sub(conflicts_gone, Ordering::SeqCst);
        self.dead_letter_count.fetch_add(letters_added, Ordering::SeqCst);
        self.dead_letter_count.fetch_sub(letters_gone, Ordering::SeqCst);
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

    fn conflicts_after(
        &self,
        since_ms: u64,
        after: Option<&ConflictCursor>,
        limit: usize,
    ) -> Result<Vec<ConflictEntry>> {
        let start = match after {
            Some(c) => {
                let mut k = time_key(c.detected_at_ms, &encoding::conflict_key(&c.ident));
                k.push(0); // strictly after
                k
            }
            None => since_ms.to_be_bytes().to_vec(),
        };
        let mut out = Vec::new();
        for item in self.conflicts_by_time.range(start..).take(limit) {
            let (_, k) = item.into_inner()?;
            // Written with its index entry in one batch; absent only if removed meanwhile.
            if let Some(bytes) = self.conflicts.get(&k)? {
                out.push(decode("conflict entry", &k, &bytes)?);
            }
        }
        Ok(out)
    }

    fn conflict_count(&self) -> u64 {
        self.conflict_count.load(Ordering::SeqCst)
    }

    fn expire_conflicts(&self, idents: &[(ChangeId, ChangeId)]) -> Result<()> {
        let _serialised = self.write_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut wb = self.db.batch();
        let mut gone = 0u64;
        let keys: std::collections::BTreeSet<Vec<u8>> = idents.iter().map(encoding::conflict_key).collect();
        for k in keys {
            if let Some(bytes) = self.conflicts.get(&k)? {
                let e: ConflictEntry = decode("conflict entry", &k, &bytes)?;
                wb.remove(&self.conflicts_by_time, time_key(e.detected_at_ms, &k));
                wb.remove(&self.conflicts, k);
                gone += 1;
            }
        }
        wb.commit()?;
        self.conflict_count.fetch_sub(gone, Ordering::SeqCst);
        Ok(())
    }

    fn dead_letters_after(&self, after: Option<&ChangeId>, limit: usize) -> Result<Vec<DeadLetter>> {
        let start = match after {
            Some(id) => {
                let mut k = encoding::change_id_key(id);
                k.push(0);
                k
            }
            None => Vec::new(),
        };
        let mut out = Vec::new();
        for item in self.dlq.range(start..).take(limit) {
            let (k, v) = item.into_inner()?;
            out.push(decode("dead letter", &k, &v)?);
        }
        Ok(out)
    }

    fn dead_letter_count(&self) -> u64 {
        self.dead_letter_count.load(Ordering::SeqCst)
    }

    fn oldest_dead_letter_ms(&self) -> Result<Option<u64>> {
        match self.dlq_by_time.first_key_value() {
            Some(item) => {
                let (k, _) = item.into_inner()?;
                Ok(Some(decode_u64("dead-letter time index", &k, &k[..8.min(k.len())])?))
            }
            None => Ok(None),
        }
    }

    fn strong_request(&self, request_id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.strong_requests.get(request_id.as_bytes())?.map(|v| v.to_vec()))
    }

    fn departure(&self, sealed: &Key) -> Result<Option<mrr_core::placement::Departure>> {
        let k = encoding::departure_key(sealed);
        match self.meta.get(&k)? {
            Some(v) => Ok(Some(decode::<(Key, mrr_core::placement::Departure)>("departure", &k, &v)?.1)),
            None => Ok(None),
        }
    }

    fn departures(&self) -> Result<Vec<(Key, mrr_core::placement::Departure)>> {
        let mut out = Vec::new();
        for item in self.meta.prefix(encoding::DEPARTURE_PREFIX) {
            let (k, v) = item.into_inner()?;
            out.push(decode("departure", &k, &v)?);
        }
        Ok(out)
    }

    fn stable_point(&self) -> Result<VersionVector> {
        match self.meta.get(encoding::STABLE_POINT_KEY)? {
            Some(v) => decode("stable point", encoding::STABLE_POINT_KEY, &v),
            None => Ok(VersionVector::new()),
        }
    }

    fn set_stable_point(&self, stable: &VersionVector) -> Result<()> {
        self.meta.insert(encoding::STABLE_POINT_KEY, encode(stable))?;
        Ok(())
    }

    fn certificate(&self, fingerprint: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(encoding::certificate_key(fingerprint))?.map(|v| v.to_vec()))
    }

    fn add_certificate(&self, fingerprint: &[u8; 32], der: &[u8]) -> Result<()> {
        self.meta.insert(encoding::certificate_key(fingerprint), der.to_vec())?;
        Ok(())
    }

    fn dead_letter(&self, id: &ChangeId) -> Result<Option<DeadLetter>> {
        let k = encoding::change_id_key(id);
        match self.dlq.get(&k)? {
            Some(v) => Ok(Some(decode("dead letter", &k, &v)?)),
            None => Ok(None),
        }
    }

    fn discard_dead_letter(&self, id: &ChangeId) -> Result<()> {
        let _serialised = self.write_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let k = encoding::change_id_key(id);
        let Some(bytes) = self.dlq.get(&k)? else { return Ok(()) };
        let old: DeadLetter = decode("dead letter", &k, &bytes)?;
        let mut wb = self.db.batch();
        wb.remove(&self.dlq_by_time, time_key(old.failed_at_ms, &k));
        wb.remove(&self.dlq, k);
        wb.commit()?;
        self.dead_letter_count.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }

    fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    fn footprint(&self) -> crate::Footprint {
        crate::Footprint {
            changelog_entries: self.changes.approximate_len() as u64,
            changelog_bytes: self.changes.disk_space(),
            fold_entries: self.history.approximate_len() as u64,
            records: self.records.approximate_len() as u64,
        }
    }

    fn log_floors(&self) -> Result<VersionVector> {
        self.reader().log_floors(At::Live)
    }

    fn records_after(&self, after: Option<&Key>, limit: usize) -> Result<Vec<(Key, Record)>> {
        self.reader().records_after(At::Live, after, limit)
    }

    fn view(&self) -> Result<std::sync::Arc<dyn crate::StoreView>> {
        Ok(std::sync::Arc::new(FjallView { snapshot: self.db.snapshot(), reader: self.reader() }))
    }

    fn bootstrap_mark(&self) -> Result<Option<crate::BootstrapMark>> {
        match self.meta.get(encoding::BOOTSTRAP_KEY)? {
            Some(v) => Ok(Some(decode("bootstrap mark", encoding::BOOTSTRAP_KEY, &v)?)),
            None => Ok(None),
        }
    }
}

/// Where a read looks: the live keyspaces, or a snapshot of them.
#[derive(Clone, Copy)]
enum At<'a> {
    Live,
    Snapshot(&'a fjall::Snapshot),
}

impl At<'_> {
    fn range<K: AsRef<[u8]>, R: std::ops::RangeBounds<K>>(self, ks: &Keyspace, range: R) -> fjall::Iter {
        match self {
            At::Live => ks.range(range),
            At::Snapshot(s) => s.range(ks, range),
        }
    }

    fn prefix(self, ks: &Keyspace, prefix: &[u8]) -> fjall::Iter {
        match self {
            At::Live => ks.prefix(prefix),
            At::Snapshot(s) => s.prefix(ks, prefix),
        }
    }

    fn get(self, ks: &Keyspace, key: &[u8]) -> fjall::Result<Option<fjall::UserValue>> {
        match self {
            At::Live => ks.get(key),
            At::Snapshot(s) => s.get(ks, key),
        }
    }
}

/// The reads a [`FjallView`] shares with the live store, over either.
#[derive(Clone)]
struct Reader {
    records: Keyspace,
    changes: Keyspace,
    meta: Keyspace,
    history: Keyspace,
}

impl Reader {
    fn changes_within(
        &self,
        at: At<'_>,
        stream: &Stream,
        after_seq: u64,
        limit: usize,
        bytes_max: u64,
    ) -> Result<Vec<Change>> {
        let start = encoding::change_key(stream, after_seq.saturating_add(1));
        let end = encoding::change_key(stream, u64::MAX);
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut bytes = 0u64;
        for item in at.range(&self.changes, start..=end).take(limit) {
            let (k, v) = item.into_inner()?;
            bytes += v.len() as u64;
            if bytes > bytes_max && !out.is_empty() {
                break;
            }
            out.push(decode("change", &k, &v)?);
        }
        Ok(out)
    }

    /// Everything of [`RecoveredState`] but the strong position.
    fn recover(&self, at: At<'_>) -> Result<RecoveredState> {
        let mut state = RecoveredState::default();
        for item in at.prefix(&self.meta, encoding::VV_PREFIX) {
            let (k, v) = item.into_inner()?;
            let stream = encoding::stream_from_suffix("version vector key", &k, encoding::VV_PREFIX.len())?;
            state.vv.raise(&stream, decode_u64("version vector entry", &k, &v)?);
        }
        if let Some(v) = at.get(&self.meta, encoding::HLC_KEY)? {
            state.hlc_high_water = decode("hlc high water", encoding::HLC_KEY, &v)?;
        }
        // One read per stream: its last change, whose checkpoint (if any) is the chain's head.
        for (stream, seq) in state.vv.iter() {
            if let Some(last) = self.changes_within(at, stream, seq.saturating_sub(1), 1, u64::MAX)?.pop() {
                if let Some(cp) = &last.proof.checkpoint {
                    state.chain_heads.insert(stream.clone(), (last.seq, cp.link));
                }
            }
        }
        Ok(state)
    }

    fn log_floors(&self, at: At<'_>) -> Result<VersionVector> {
        let mut floors = VersionVector::new();
        for item in at.prefix(&self.meta, encoding::LOG_FLOOR_PREFIX) {
            let (k, v) = item.into_inner()?;
            let stream = encoding::stream_from_suffix("log floor key", &k, encoding::LOG_FLOOR_PREFIX.len())?;
            floors.raise(&stream, decode_u64("log floor", &k, &v)?);
        }
        Ok(floors)
    }

    fn records_after(&self, at: At<'_>, after: Option<&Key>, limit: usize) -> Result<Vec<(Key, Record)>> {
        let start = match after {
            Some(key) => {
                let mut start = encoding::record_key(key);
                start.push(0); // strictly after `key`: its id never holds a NUL
                std::ops::Bound::Included(start)
            }
            None => std::ops::Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in at.range::<Vec<u8>, _>(&self.records, (start, std::ops::Bound::Unbounded)).take(limit) {
            let (k, v) = item.into_inner()?;
            let record: Record = decode("record", &k, &v)?;
            out.push((encoding::key_from_record_key(&k)?, record));
        }
        Ok(out)
    }

    fn history(&self, at: At<'_>, key: &Key) -> Result<Vec<FoldEntry>> {
        let mut out = Vec::new();
        for item in at.range(&self.history, encoding::history_prefix(key)..record_key_end(key)) {
            let (k, v) = item.into_inner()?;
            out.push(decode("fold entry", &k, &v)?);
        }
        Ok(out)
    }
}

/// [`crate::StoreView`] on a fjall snapshot: every keyspace as of one instant.
struct FjallView {
    snapshot: fjall::Snapshot,
    reader: Reader,
}

impl crate::StoreView for FjallView {
    fn recover(&self) -> Result<RecoveredState> {
        self.reader.recover(At::Snapshot(&self.snapshot))
    }

    fn log_floors(&self) -> Result<VersionVector> {
        self.reader.log_floors(At::Snapshot(&self.snapshot))
    }

    fn get(&self, key: &Key) -> Result<Option<Record>> {
        let k = encoding::record_key(key);
        match At::Snapshot(&self.snapshot).get(&self.reader.records, &k)? {
            Some(bytes) => Ok(Some(decode("record", &k, &bytes)?)),
            None => Ok(None),
        }
    }

    fn records_after(&self, after: Option<&Key>, limit: usize) -> Result<Vec<(Key, Record)>> {
        self.reader.records_after(At::Snapshot(&self.snapshot), after, limit)
    }

    fn history(&self, key: &Key) -> Result<Vec<FoldEntry>> {
        self.reader.history(At::Snapshot(&self.snapshot), key)
    }

    fn changes_within(&self, stream: &Stream, after_seq: u64, limit: usize, bytes_max: u64) -> Result<Vec<Change>> {
        self.reader.changes_within(At::Snapshot(&self.snapshot), stream, after_seq, limit, bytes_max)
    }

    fn certificate(&self, fingerprint: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        Ok(At::Snapshot(&self.snapshot)
            .get(&self.reader.meta, &encoding::certificate_key(fingerprint))?
            .map(|v| v.to_vec()))
    }
}

/// The first key after every fold entry of `key`: its prefix with the final NUL bumped to 1.
fn record_key_end(key: &Key) -> Vec<u8> {
    let mut end = encoding::record_key(key);
    end.push(1);
    end
}

/// The key of an entry in a time index (`conflicts_by_time`, `dlq_by_time`): the time
/// (big-endian, so keys sort by it), then the entry's own key.
fn time_key(at_ms: u64, key: &[u8]) -> Vec<u8> {
    [at_ms.to_be_bytes().as_slice(), key].concat()
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
        assert!(err.to_string().contains("run the release that wrote it"), "{err}");
    }

    #[test]
    fn a_directory_keeps_the_sealer_it_was_first_started_with() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = FjallStore::open(dir.path(), Durability::Fsync).expect("open");
            store.check_sealer("aaaa").expect("a new directory takes the sealer");
            store.check_sealer("aaaa").expect("the same sealer");
        }
        let store = FjallStore::open(dir.path(), Durability::Fsync).expect("reopen");
        store.check_sealer("aaaa").expect("the same sealer after a reopen");
        let err = store.check_sealer("bbbb").expect_err("another sealer");
        assert!(err.to_string().contains("set `placement_secret:`"), "{err}");
    }
}
