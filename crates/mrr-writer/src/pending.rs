//! The state of one group commit under construction, with a savepoint per request.
//!
//! A group holds many requests; each must be all or nothing, also when the store fails part
//! way through it (a read error in the middle of a remote batch, a fold history that cannot be
//! read). Every mutation of the group's state therefore goes through an undo journal: the
//! engine opens a savepoint when a request starts and either releases it (the request's effects
//! stay) or rolls it back (the group is exactly as it was before the request). Reads see the
//! live state through `Deref`, so only writes pay for the journal: one entry per key a request
//! first touches.
//!
//! This module holds no merge logic and does no IO.

use std::collections::BTreeMap;
use std::ops::Deref;

use mrr_core::fold::FoldEntry;
use mrr_core::{Change, ChangeId, ConflictEntry, DeadLetter, Key, Record, Stream, Version, VersionVector};

/// A map whose changes since the last savepoint can be undone.
#[derive(Debug)]
pub(crate) struct Journaled<K: Ord + Clone, V: Clone> {
    map: BTreeMap<K, V>,
    /// The value each key touched since the savepoint had before it (`None`: absent).
    undo: BTreeMap<K, Option<V>>,
}

impl<K: Ord + Clone, V: Clone> Default for Journaled<K, V> {
    fn default() -> Self {
        Self { map: BTreeMap::new(), undo: BTreeMap::new() }
    }
}

impl<K: Ord + Clone, V: Clone> Deref for Journaled<K, V> {
    type Target = BTreeMap<K, V>;

    fn deref(&self) -> &BTreeMap<K, V> {
        &self.map
    }
}

impl<K: Ord + Clone, V: Clone> Journaled<K, V> {
    fn note(&mut self, key: &K) {
        if !self.undo.contains_key(key) {
            self.undo.insert(key.clone(), self.map.get(key).cloned());
        }
    }

    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.note(&key);
        self.map.insert(key, value)
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        if !self.map.contains_key(key) {
            return None;
        }
        self.note(key);
        self.map.remove(key)
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let gone: Vec<K> = self.map.iter().filter(|(k, v)| !keep(k, v)).map(|(k, _)| k.clone()).collect();
        for key in gone {
            self.remove(&key);
        }
    }

    fn rollback(&mut self) {
        for (key, before) in std::mem::take(&mut self.undo) {
            match before {
                Some(value) => self.map.insert(key, value),
                None => self.map.remove(&key),
            };
        }
    }

    fn release(&mut self) {
        self.undo.clear();
    }

    pub(crate) fn into_inner(self) -> BTreeMap<K, V> {
        debug_assert!(self.undo.is_empty(), "a savepoint is still open");
        self.map
    }
}

/// A set whose changes since the last savepoint can be undone.
pub(crate) type JournaledSet<K> = Journaled<K, ()>;

impl<K: Ord + Clone> Journaled<K, ()> {
    pub(crate) fn add(&mut self, key: K) {
        self.insert(key, ());
    }
}

/// The state of one group commit under construction.
#[derive(Debug)]
pub struct Pending {
    /// Record entries this group writes (`None`: the entry goes), by the name they are stored
    /// under (clear or sealed, `mrr_core::seal`).
    pub(crate) overlay: Journaled<Key, Option<Record>>,
    /// Sealed name to clear name of records that come to be held here (`None`: no longer).
    pub(crate) sealed_index: Journaled<Key, Option<Key>>,
    pub(crate) changes: Vec<Change>,
    pub(crate) vv: VersionVector,
    pub(crate) history: Journaled<(Key, Version), FoldEntry>,
    pub(crate) conflicts: Vec<ConflictEntry>,
    pub(crate) dead_letters: Journaled<ChangeId, DeadLetter>,
    pub(crate) cleared: JournaledSet<ChangeId>,
    /// `custom` keys that left this region's placement in this group: their stored fold
    /// history is gone (see [`mrr_storage::CommitBatch::histories_dropped`]).
    pub(crate) histories_dropped: JournaledSet<Key>,
    /// Strong requests applied in this group, by request id: their stored answers.
    pub(crate) strong_requests: Journaled<String, Vec<u8>>,
    /// Departure notes written (`None`: gone), by the record's sealed name.
    pub(crate) departures: Journaled<Key, Option<mrr_core::placement::Departure>>,
    /// Changelog entries rewritten as their markers, by id.
    pub(crate) rewritten: Journaled<ChangeId, Change>,
    /// Conflict-log entries erased.
    pub(crate) conflicts_removed: JournaledSet<(ChangeId, ChangeId)>,
    /// Per stream, the sequence retention truncates the changelog up to.
    pub(crate) log_truncated: Journaled<Stream, u64>,
    /// The strong tier's position after this group (set once per group, outside requests).
    pub(crate) strong_position: Option<Vec<u8>>,
    pub(crate) now_ms: u64,
    /// New dead letters the queue can still take (`None`: unbounded).
    pub(crate) dead_letter_room: Option<u64>,
    /// Set while a request is being applied.
    open: Option<Savepoint>,
}

/// Where the group stood when a request started.
#[derive(Debug)]
struct Savepoint {
    changes: usize,
    conflicts: usize,
    vv: VersionVector,
}

impl Pending {
    pub(crate) fn new(vv: VersionVector, now_ms: u64) -> Self {
        Self {
            overlay: Journaled::default(),
            sealed_index: Journaled::default(),
            changes: Vec::new(),
            vv,
            history: Journaled::default(),
            conflicts: Vec::new(),
            dead_letters: Journaled::default(),
            cleared: Journaled::default(),
            histories_dropped: Journaled::default(),
            strong_requests: Journaled::default(),
            departures: Journaled::default(),
            rewritten: Journaled::default(),
            conflicts_removed: Journaled::default(),
            log_truncated: Journaled::default(),
            strong_position: None,
            now_ms,
            dead_letter_room: None,
            open: None,
        }
    }

    /// Bounds the dead letters this group may add to what the queue can still take.
    pub fn limit_dead_letters(&mut self, room: u64) {
        self.dead_letter_room = Some(room);
    }

    /// Whether the queue is full: a change that might add a letter must wait.
    pub(crate) fn dead_letters_full(&self) -> bool {
        self.dead_letter_room.is_some_and(|room| self.dead_letters.len() as u64 >= room)
    }

    /// Runs one request against the group: its effects stay if it succeeds, and the group is
    /// left exactly as before it if it fails.
    pub(crate) fn request<T, E>(&mut self, apply: impl FnOnce(&mut Self) -> Result<T, E>) -> Result<T, E> {
        assert!(self.open.is_none(), "requests of a group apply one at a time");
        self.open =
            Some(Savepoint { changes: self.changes.len(), conflicts: self.conflicts.len(), vv: self.vv.clone() });
        let out = apply(self);
        let keep = out.is_ok() || mrr_core::planted::active(mrr_core::planted::Bug::KeepFailedRequests);
        let Some(savepoint) = self.open.take() else { unreachable!("opened above") };
        if keep {
            self.overlay.release();
            self.sealed_index.release();
            self.history.release();
            self.dead_letters.release();
            self.cleared.release();
            self.histories_dropped.release();
            self.strong_requests.release();
            self.departures.release();
            self.rewritten.release();
            self.conflicts_removed.release();
            self.log_truncated.release();
        } else {
            self.changes.truncate(savepoint.changes);
            self.conflicts.truncate(savepoint.conflicts);
            self.vv = savepoint.vv;
            self.overlay.rollback();
            self.sealed_index.rollback();
            self.history.rollback();
            self.dead_letters.rollback();
            self.cleared.rollback();
            self.histories_dropped.rollback();
            self.strong_requests.rollback();
            self.departures.rollback();
            self.rewritten.rollback();
            self.conflicts_removed.rollback();
            self.log_truncated.rollback();
        }
        out
    }

    /// Nothing in the group yet.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
            && self.strong_position.is_none()
            && self.rewritten.is_empty()
            && self.departures.is_empty()
            && self.conflicts_removed.is_empty()
            && self.log_truncated.is_empty()
            && self.overlay.is_empty()
            && self.sealed_index.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_request_leaves_the_group_as_it_was() {
        let mut p = Pending::new(VersionVector::new(), 0);
        let key = |id: &str| Key::new("t", id);
        let ok: Result<(), ()> = p.request(|p| {
            p.histories_dropped.add(key("a"));
            p.cleared.add(ChangeId::parse("r-1").expect("id"));
            Ok(())
        });
        assert!(ok.is_ok());
        let failed: Result<(), ()> = p.request(|p| {
            p.histories_dropped.add(key("b"));
            p.histories_dropped.remove(&key("a"));
            p.cleared.retain(|_, _| false);
            Err(())
        });
        assert!(failed.is_err());
        assert_eq!(p.histories_dropped.keys().cloned().collect::<Vec<_>>(), vec![key("a")]);
        assert_eq!(p.cleared.len(), 1);
    }
}
