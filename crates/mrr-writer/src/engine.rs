//! The writer's decisions, separate from its thread: given requests and the current records,
//! produce the commit batch and the replies. Deterministic given the physical time passed in,
//! so the simulator runs the same code the server does.
//!
//! Each request is all-or-nothing within a group: it runs under a savepoint of the group's
//! [`Pending`] state, rolled back when the request fails (a rejection, or a storage error part
//! way through), so the rest of the group commits without it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use mrr_core::doc::{Lost, Stamp};
use mrr_core::fold::{self, FoldEntry, FoldState, Head, Outcome};
use mrr_core::merge::{LastWriterWins, MergeStrategy, Resolution};
use mrr_core::placement;
use mrr_core::provenance::{Notary, Stamper};
use mrr_core::seal;
use mrr_core::session::{admit_incoming, Incoming};
use mrr_core::{
    Change, ChangeId, ConflictEntry, DeadLetter, Doc, Hlc, Key, Metadata, Op, Policies, Record, RegionName, Replay,
    Resolver, Rule, Side, Stream, Version, VersionVector,
};
use mrr_storage::{CommitBatch, RecoveredState, Store, StoreError};

use crate::pending::Pending;
use crate::{Committed, LocalOp, Refusal};

mod escrow;
mod repair;
mod residency;
mod retention;
mod strong;

pub use escrow::SWEEP_MS as ESCROW_SWEEP_MS;
pub use residency::{Collect, Collected};
pub use retention::COLLECT_TOMBSTONES;

/// What happened to a batch of remote changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteOutcome {
    /// Changes admitted (whether their state won the merge or lost it).
    pub applied: usize,
    pub duplicates: usize,
    /// Conflicts this batch added to the log (losers of concurrent writes, handler merges).
    pub conflicts: Vec<ConflictEntry>,
    /// Changes that went to the dead-letter queue.
    pub dead_letters: usize,
    /// Positions (in the request) of the changes admitted, duplicates excluded.
    pub admitted: Vec<usize>,
    /// Set when the writer stopped before the end of the batch; later changes were not looked at.
    pub refused: Option<Refusal>,
    /// The applied version vector after this batch (cumulative ack for the sender).
    pub vv: VersionVector,
}

/// A client request the engine refuses (nothing of it is applied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("topic {topic} uses conflict_strategy {strategy}; CRDT operations need `conflict_strategy: merge` (set it under `topics:`)")]
    OpsNeedMerge { topic: String, strategy: &'static str },
    #[error("dead letter {0} not found (already replayed or discarded?)")]
    NoSuchDeadLetter(ChangeId),
    #[error("{key} is placed in {regions:?}, not in {local}: write it in one of those regions")]
    NotPlacedHere { key: Key, regions: Vec<String>, local: RegionName },
    #[error("topic {topic} is `consistency: strong`: its writes go through the strong tier's log")]
    StrongTopic { topic: String },
    #[error("{key}: {field} is bounded (an escrow counter): only {{\"op\":\"incr\"}} changes it, not {how}")]
    BoundedField { key: Key, field: String, how: &'static str },
    #[error(
        "{key}: this region holds {held} units of {field}'s rights, the decrement needs {asked}; it has asked for more"
    )]
    InsufficientRights { key: Key, field: String, held: u64, asked: u64, holder: Option<RegionName> },
    #[error("{key}: {field} would overflow")]
    CounterOverflow { key: Key, field: String },
    #[error("{key} (placed in {regions:?}) is still receiving the content of {lacking} write(s) made concurrently with a move, and a move carries the whole record: retry shortly, or move it from another region of its placement")]
    PlacementPending { key: Key, regions: Vec<String>, lacking: usize },
}

/// Why a local request failed.
#[derive(Debug)]
pub enum LocalFailure {
    Store(StoreError),
    Rejected(Rejection),
}

impl From<StoreError> for LocalFailure {
    fn from(e: StoreError) -> Self {
        LocalFailure::Store(e)
    }
}

pub struct Engine {
    local: RegionName,
    hlc: Hlc,
    applied: VersionVector,
    policies: Arc<Policies>,
    /// Bytes a change may carry besides its own content; a longer `custom` history goes ahead
    /// of its move in [`Op::History`] pieces.
    carried_bytes_max: usize,
    /// Escrow counters this region tends, with their recent demand (in memory only).
    escrow: escrow::Tracker,
    /// The chain heads of this region's own streams, which checkpoints continue.
    stamper: Stamper,
    /// Signs checkpoints; `None` in a cluster without certificates (they go unsigned).
    notary: Option<Arc<dyn Notary>>,
    /// Where retention's record sweep resumes.
    sweep: retention::Sweep,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("local", &self.local)
            .field("applied", &self.applied)
            .field("signed", &self.notary.is_some())
            .finish_non_exhaustive()
    }
}

/// The record reads of one request, taken before any of its effects.
type Reads = BTreeMap<Key, Option<Record>>;

fn text(bytes: &Option<Vec<u8>>) -> Option<String> {
    bytes.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
}

fn side_of(change: &Change) -> Side {
    Side { id: change.id(), version: change.version.clone(), value: text(&change.to_record().value) }
}

fn side_of_record(r: &Record) -> Side {
    Side { id: r.change_id(), version: r.version.clone(), value: text(&r.value) }
}

impl Engine {
    pub fn new(local: RegionName, recovered: RecoveredState, max_skew_ms: u64, policies: Arc<Policies>) -> Self {
        let stamper = Stamper::recovered(&local, &recovered.chain_heads);
        Self {
            local,
            hlc: Hlc::new(recovered.hlc_high_water, max_skew_ms),
            applied: recovered.vv,
            policies,
            carried_bytes_max: mrr_core::limits::CARRIED_BYTES_MAX,
            escrow: escrow::Tracker::default(),
            stamper,
            notary: None,
            sweep: retention::Sweep::default(),
        }
    }

    /// The same engine, carrying at most `bytes` in one change (the simulator sets it small so
    /// that every move of a `custom` record sends its history in pieces).
    pub fn with_carried_bytes_max(mut self, bytes: usize) -> Self {
        assert!(bytes > 0, "a piece carries at least one entry");
        self.carried_bytes_max = bytes;
        self
    }

    /// The same engine, signing its checkpoints with `notary` (`None`: they go unsigned).
    pub fn with_notary(mut self, notary: Option<Arc<dyn Notary>>) -> Self {
        self.notary = notary;
        self
    }

    pub fn local(&self) -> &RegionName {
        &self.local
    }

    pub fn applied(&self) -> &VersionVector {
        &self.applied
    }

    /// The last timestamp this engine issued or observed.
    pub fn hlc_last(&self) -> mrr_core::Timestamp {
        self.hlc.last()
    }

    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    pub fn begin(&self, now_ms: u64) -> Pending {
        Pending::new(self.applied.clone(), now_ms)
    }

    /// The batch to commit, or `None` when the group changed nothing.
    pub fn finish(&self, pending: Pending) -> Option<CommitBatch> {
        if pending.is_empty() {
            return None;
        }
        let mut vv = VersionVector::new();
        for c in &pending.changes {
            let stream = c.stream();
            vv.raise(&stream, pending.vv.get(&stream));
        }
        // Only strong applies (their changes, records and request ids, nothing else): the
        // strong log holds all of it durably already.
        let from_strong_log = pending.strong_position.is_some()
            && pending.changes.iter().all(|c| c.origin.as_str() == mrr_core::strong::STRONG_ORIGIN)
            && pending.history.is_empty()
            && pending.histories_dropped.is_empty()
            && pending.conflicts.is_empty()
            && pending.dead_letters.is_empty()
            && pending.cleared.is_empty();
        let (mut records, mut records_removed) = (Vec::new(), Vec::new());
        for (key, entry) in pending.overlay.into_inner() {
            match entry {
                Some(record) => records.push((key, record)),
                None => records_removed.push(key),
            }
        }
        let mut changes = pending.changes;
        self.stamper.stamp(&self.local, &mut changes, &self.policies.sealer, self.notary.as_deref());
        let must_sync = changes.iter().any(|c| {
            c.origin == self.local && matches!(&c.op, Op::Merge { delta } if delta.escrow_fields().next().is_some())
        });
        Some(CommitBatch {
            from_strong_log,
            must_sync,
            records,
            records_removed,
            sealed_index: pending.sealed_index.into_inner().into_iter().collect(),
            changes,
            vv,
            hlc_high_water: self.hlc.last(),
            history: pending.history.into_inner().into_iter().map(|((k, _), e)| (k, e)).collect(),
            histories_dropped: pending.histories_dropped.into_inner().into_keys().collect(),
            conflicts: pending.conflicts,
            conflicts_removed: pending.conflicts_removed.into_inner().into_keys().collect(),
            rewritten: pending.rewritten.into_inner().into_values().collect(),
            log_truncated: pending.log_truncated.into_inner().into_iter().collect(),
            departures: pending.departures.into_inner().into_iter().collect(),
            dead_letters: pending.dead_letters.into_inner().into_values().collect(),
            dead_letters_cleared: pending.cleared.into_inner().into_keys().collect(),
            strong_position: pending.strong_position,
            strong_requests: pending.strong_requests.into_inner().into_iter().collect(),
            bootstrap: None,
            unsynced: false,
        })
    }

    /// Makes a landed commit the new applied state.
    pub fn committed(&mut self, batch: &CommitBatch) {
        self.applied.join(&batch.vv);
        self.stamper.committed(&self.local, &batch.changes);
    }

    fn prefetch<'a>(
        &self,
        pending: &Pending,
        store: &dyn Store,
        keys: impl Iterator<Item = &'a Key>,
    ) -> Result<Reads, StoreError> {
        let mut reads = BTreeMap::new();
        for key in keys {
            self.read_into(pending, store, &mut reads, key)?;
        }
        Ok(reads)
    }

    /// Reads `key` unless the group or `reads` has it, and, for a clear name with no entry,
    /// its sealed name too: a key has one entry or the other, so a held record costs one read.
    fn read_into(&self, pending: &Pending, store: &dyn Store, reads: &mut Reads, key: &Key) -> Result<(), StoreError> {
        Self::read_name(pending, store, reads, key)?;
        if !seal::is_sealed(key) && Self::entry(pending, reads, key).is_none() {
            Self::read_name(pending, store, reads, &self.policies.sealer.seal(key))?;
        }
        Ok(())
    }

    /// Reads the entry stored under exactly `name`, unless the group or `reads` has it.
    fn read_name(pending: &Pending, store: &dyn Store, reads: &mut Reads, name: &Key) -> Result<(), StoreError> {
        if !pending.overlay.contains_key(name) && !reads.contains_key(name) {
            reads.insert(name.clone(), store.get(name)?);
        }
        Ok(())
    }

    /// The entry stored under exactly this name, as the group leaves it.
    fn entry(pending: &Pending, reads: &Reads, key: &Key) -> Option<Record> {
        match pending.overlay.get(key) {
            Some(entry) => entry.clone(),
            None => reads.get(key).cloned().flatten(),
        }
    }

    /// The key's record here: under its clear name when held here, else its placement register
    /// under its sealed name. A region keeps one of the two, never both
    /// ([`Engine::store_record`]).
    fn current(&self, pending: &Pending, reads: &Reads, key: &Key) -> Option<Record> {
        Self::entry(pending, reads, key).or_else(|| {
            if seal::is_sealed(key) {
                None
            } else {
                Self::entry(pending, reads, &self.policies.sealer.seal(key))
            }
        })
    }

    /// The name this region knows a peer's `key` by: a sealed name is the clear one when the
    /// record is held here (the sealed-name index), else stays sealed.
    fn known_name(&self, pending: &Pending, store: &dyn Store, key: &Key) -> Result<Key, StoreError> {
        if !seal::is_sealed(key) {
            return Ok(key.clone());
        }
        if let Some(entry) = pending.sealed_index.get(key) {
            return Ok(entry.clone().unwrap_or_else(|| key.clone()));
        }
        Ok(store.unseal(key)?.unwrap_or_else(|| key.clone()))
    }

    /// A peer's change as this region's changelog keeps it: a marker (a change outside its
    /// placement, as its writer saw it) under the sealed name, even where the record is held
    /// (it was known by its name only to find the record; `admitted_unseen` matches both).
    fn logged(&self, change: Change) -> Change {
        if change.origin != self.local && !placement::places(&change.metadata, &self.local) {
            debug_assert!(!change.has_content(), "content of {} sent outside its placement", change.id());
            placement::to_marker(&change, &self.policies.sealer)
        } else {
            change
        }
    }

    /// Stores `record` as the key's state here, under the name its placement calls for: the
    /// clear name (indexed by its sealed name) while placed here, else only the sealed name.
    /// The other entry goes, so nothing outside a record's placement names it.
    fn store_record(&self, pending: &mut Pending, reads: &Reads, key: &Key, record: Record) {
        let placed = placement::places(&record.metadata, &self.local);
        if seal::is_sealed(key) {
            // Known only by its sealed name: never held here (the index would name it).
            debug_assert!(!placed, "a record placed here under a sealed name {key}");
            pending.overlay.insert(key.clone(), Some(record));
            return;
        }
        let held_before = Self::entry(pending, reads, key).is_some();
        if placed {
            // An update of a held record needs no sealed name (the usual write: no hashing).
            if !held_before {
                let sealed = self.policies.sealer.seal(key);
                if Self::entry(pending, reads, &sealed).is_some() {
                    pending.overlay.insert(sealed.clone(), None);
                    // Placed here again before its logs were erased: they are its own again.
                    pending.departures.insert(sealed.clone(), None);
                }
                pending.sealed_index.insert(sealed, Some(key.clone()));
            }
            pending.overlay.insert(key.clone(), Some(record));
        } else {
            let sealed = self.policies.sealer.seal(key);
            if held_before {
                pending.overlay.insert(key.clone(), None);
                pending.sealed_index.insert(sealed.clone(), None);
            }
            pending.overlay.insert(sealed, Some(record));
        }
    }

    /// Whether a write over `record` creates the record anew: under `timestamp`, a tombstone
    /// retention may collect ([`retention`]) is as good as no record. A region that collected
    /// it treats the next write as the record's creation, which places it; the write must
    /// then be a move everywhere, so that every region agrees on the move that placed it.
    fn recreates(&self, key: &Key, record: &Record) -> bool {
        retention::COLLECT_TOMBSTONES
            && record.is_tombstone()
            && record.doc.is_none()
            && record.lacking.is_empty()
            && matches!(self.policies.rule(&key.topic), Rule::Timestamp)
            && !self.policies.is_strong(&key.topic)
    }

    /// Applies one client request to the group: all of it, or (on a rejection or a storage
    /// error) nothing of it.
    pub fn apply_local(
        &mut self,
        pending: &mut Pending,
        store: &dyn Store,
        ops: Vec<LocalOp>,
        physical_ms: u64,
    ) -> Result<Vec<Committed>, LocalFailure> {
        pending.request(|pending| self.local_request(pending, store, ops, physical_ms))
    }

    fn local_request(
        &mut self,
        pending: &mut Pending,
        store: &dyn Store,
        ops: Vec<LocalOp>,
        physical_ms: u64,
    ) -> Result<Vec<Committed>, LocalFailure> {
        if let Some(key) = ops.iter().filter_map(LocalOp::key).find(|k| self.policies.is_strong(&k.topic)) {
            return Err(LocalFailure::Rejected(Rejection::StrongTopic { topic: key.topic.clone() }));
        }
        let mut reads = self.prefetch(pending, store, ops.iter().filter_map(LocalOp::key))?;
        // Replays read their dead letter (and its key) up front, like every other read.
        let mut letters = BTreeMap::new();
        for op in &ops {
            if let LocalOp::Replay { id } = op {
                let letter = store
                    .dead_letter(id)?
                    .ok_or_else(|| LocalFailure::Rejected(Rejection::NoSuchDeadLetter(id.clone())))?;
                self.read_into(pending, store, &mut reads, &letter.key)?;
                letters.insert(id.clone(), letter);
            }
        }
        for op in &ops {
            if let LocalOp::Ops { key, .. } = op {
                let rule = self.policies.rule(&key.topic);
                if !matches!(rule, Rule::Merge) {
                    return Err(LocalFailure::Rejected(Rejection::OpsNeedMerge {
                        topic: key.topic.clone(),
                        strategy: rule.name(),
                    }));
                }
            }
        }
        for op in &ops {
            self.check_bounded(op)?;
        }
        let key_of = |op: &LocalOp| match op {
            LocalOp::Replay { id } => {
                letters.get(id).map(|l| l.key.clone()).unwrap_or_else(|| unreachable!("read above"))
            }
            op => op.key().cloned().unwrap_or_else(|| unreachable!("only replays have no key")),
        };
        // Placement is checked for the whole request before any of it applies, following the
        // metadata each op leaves for the next one on the same key.
        let mut placed: BTreeMap<Key, Metadata> = BTreeMap::new();
        let mut metadatas = Vec::with_capacity(ops.len());
        for op in &ops {
            let key = key_of(op);
            let record = self.current(pending, &reads, &key);
            let current = placed.get(&key).cloned().or_else(|| record.as_ref().map(|r| r.metadata.clone()));
            let metadata = self.metadata_of(op, &key, current.as_ref());
            let refused = match &current {
                Some(now) => !placement::places(now, &self.local),
                None => !placement::places(&metadata, &self.local),
            };
            if refused {
                let regions = current.unwrap_or(metadata).regions;
                return Err(LocalFailure::Rejected(Rejection::NotPlacedHere {
                    key,
                    regions,
                    local: self.local.clone(),
                }));
            }
            // A creation, or a placement other than the record's, is a move: it carries the
            // whole record, which this region must then hold whole.
            let moves = current.as_ref().is_none_or(|now| !placement::same(now, &metadata))
                || record.as_ref().is_some_and(|r| self.recreates(&key, r));
            if let Some(r) = record.as_ref().filter(|r| moves && !r.lacking.is_empty()) {
                return Err(LocalFailure::Rejected(Rejection::PlacementPending {
                    key,
                    regions: r.metadata.regions.clone(),
                    lacking: r.lacking.len(),
                }));
            }
            placed.insert(key, metadata.clone());
            metadatas.push((metadata, moves));
        }
        let mut out = Vec::with_capacity(ops.len());
        // Each op writes the metadata its check above settled.
        for (op, (metadata, moves)) in ops.into_iter().zip(metadatas) {
            let key = key_of(&op);
            let current = self.current(pending, &reads, &key);
            // Under `custom` a move carries the mover's fold history; what would not fit one
            // change goes ahead of it, in order, on the move's stream.
            let mut history = match self.policies.rule(&key.topic) {
                Rule::Custom(_) if moves => self.fold_history(pending, store, &key)?,
                _ => Vec::new(),
            };
            // The metadata decides the lane, the lane the sequence the stamp carries.
            let stream = Stream::new(self.local.clone(), self.policies.lanes.lane_of(&key.topic, &metadata));
            let mut pieces = history_pieces(std::mem::take(&mut history), self.carried_bytes_max);
            history = pieces.pop().unwrap_or_default();
            for piece in pieces {
                let to = Metadata { regions: metadata.regions.clone(), sync_flags: Vec::new() };
                self.emit_on(pending, stream.clone(), key.clone(), Op::History, to, piece);
            }
            let seq = pending.vv.get(&stream) + 1;
            let version = Version { ts: self.hlc.now(physical_ms), region: self.local.clone() };
            let stamp = Stamp { version, lane: stream.lane, seq, deps: pending.vv.clone() };
            let mut change = self.local_change(op, &key, metadata, current.as_ref(), &stamp, &letters, physical_ms)?;
            change.moves = moves;
            change.carried = history;
            if let (true, Op::Merge { delta }, Some(doc)) =
                (moves, &mut change.op, current.as_ref().and_then(|r| r.doc.as_ref()))
            {
                // A merge move carries the whole document.
                let mut whole = doc.clone();
                whole.join(delta);
                *delta = whole;
            }
            pending.vv.advance(&stream, seq);
            let escrow = match &change.op {
                Op::Merge { delta } if self.policies.has_bounded(&key.topic) => Some(delta.clone()),
                _ => None,
            };
            let record = self.apply_change(pending, store, &reads, change)?;
            if let Some(delta) = escrow {
                self.escrow_touched(&key, &delta, record.doc.as_ref(), physical_ms);
            }
            out.push(Committed { key: key.clone(), record });
        }
        Ok(out)
    }

    /// The metadata a request's change carries: its own, or (patches without metadata,
    /// operations, deletes, replays) the record's. A tombstone keeps the placement of what it
    /// deletes. Metadata without `regions` keeps the record's placement, or takes the topic's
    /// default for a new record: every change names its placement, so receivers never need
    /// the writer's defaults.
    fn metadata_of(&self, op: &LocalOp, key: &Key, current: Option<&Metadata>) -> Metadata {
        let given = match op {
            LocalOp::Put { metadata, .. } | LocalOp::Patch { metadata: Some(metadata), .. } => metadata.clone(),
            LocalOp::Patch { metadata: None, .. }
            | LocalOp::Ops { .. }
            | LocalOp::Delete { .. }
            | LocalOp::Replay { .. } => current.cloned().unwrap_or_default(),
        };
        if !given.regions.is_empty() {
            return given;
        }
        // A whole-record put that names no regions keeps the placement too: data kept in
        // two regions must not spread everywhere because an update omitted its metadata.
        let regions = match current {
            Some(m) => m.regions.clone(),
            None => self.policies.placement.regions_of(&key.topic).to_vec(),
        };
        Metadata { regions, ..given }
    }

    /// Refuses a put, patch or operation that would write a bounded field other than by
    /// `incr` (a put that omits one leaves it alone).
    fn check_bounded(&self, op: &LocalOp) -> Result<(), LocalFailure> {
        let Some(key) = op.key().filter(|k| self.policies.has_bounded(&k.topic)) else { return Ok(()) };
        let named: Vec<(String, &'static str)> = match op {
            LocalOp::Put { value, .. } => object_of(value).into_iter().map(|(k, _)| (k, "put")).collect(),
            LocalOp::Patch { fields, .. } => object_of(fields).into_iter().map(|(k, _)| (k, "patch")).collect(),
            LocalOp::Ops { ops, .. } => ops
                .iter()
                .filter_map(|o| match o {
                    mrr_core::FieldOp::Incr { .. } => None,
                    mrr_core::FieldOp::Set { field, .. } => Some((field.clone(), "set")),
                    mrr_core::FieldOp::Add { field, .. } => Some((field.clone(), "add")),
                    mrr_core::FieldOp::Remove { field, .. } => Some((field.clone(), "remove")),
                })
                .collect(),
            LocalOp::Delete { .. } | LocalOp::Replay { .. } => Vec::new(),
        };
        match named.into_iter().find(|(f, _)| self.policies.bound_of(&key.topic, f).is_some()) {
            Some((field, how)) => Err(LocalFailure::Rejected(Rejection::BoundedField { key: key.clone(), field, how })),
            None => Ok(()),
        }
    }

    /// Turns a client request into the change it writes, under the topic's rule.
    #[allow(clippy::too_many_arguments)]
    fn local_change(
        &mut self,
        op: LocalOp,
        key: &Key,
        metadata: Metadata,
        current: Option<&Record>,
        stamp: &Stamp,
        letters: &BTreeMap<ChangeId, DeadLetter>,
        now_ms: u64,
    ) -> Result<Change, LocalFailure> {
        let rule = self.policies.rule(&key.topic);
        let live = current.filter(|r| !r.is_tombstone());
        let current_doc = current.and_then(|r| r.doc.as_ref());
        let mut replay_of = None;
        let op = match (op, rule) {
            (LocalOp::Put { value, .. }, Rule::Merge) => {
                let obj = object_of(&value);
                Op::Merge { delta: Doc::put_delta(current_doc, &obj, stamp) }
            }
            (LocalOp::Put { value, .. }, _) => Op::Put { value },
            (LocalOp::Patch { fields, .. }, Rule::Merge) => {
                Op::Merge { delta: Doc::patch_delta(&object_of(&fields), stamp) }
            }
            (LocalOp::Patch { fields, .. }, _) => {
                // Whole-record rules: the patch is applied to what this region has, then the
                // result competes as a whole.
                let mut obj = live.and_then(|r| r.value.as_deref()).map(object_of).unwrap_or_default();
                for (k, v) in object_of(&fields) {
                    if v.is_null() {
                        obj.remove(&k);
                    } else {
                        obj.insert(k, v);
                    }
                }
                let value = serde_json::Value::Object(obj).to_string().into_bytes();
                Op::Put { value }
            }
            (LocalOp::Ops { ops, .. }, _) => {
                let policies = self.policies.clone();
                let bound_of = |field: &str| policies.bound_of(&key.topic, field);
                match Doc::ops_delta(current_doc, &ops, stamp, &bound_of) {
                    Ok(delta) => Op::Merge { delta },
                    Err(e) => return Err(LocalFailure::Rejected(self.refused_op(key, e, now_ms))),
                }
            }
            (LocalOp::Delete { .. }, Rule::Merge) => Op::Merge { delta: Doc::delete_delta(current_doc, stamp) },
            (LocalOp::Delete { .. }, _) => Op::Delete,
            (LocalOp::Replay { id }, _) => {
                let letter = letters.get(&id).unwrap_or_else(|| unreachable!("read before"));
                replay_of = Some(Replay { id: letter.id.clone(), version: letter.version.clone() });
                match &letter.value {
                    Some(v) => Op::Put { value: v.clone().into_bytes() },
                    None => Op::Delete,
                }
            }
        };
        Ok(Change {
            origin: self.local.clone(),
            lane: stamp.lane,
            seq: stamp.seq,
            key: key.clone(),
            op,
            metadata,
            version: stamp.version.clone(),
            deps: stamp.deps.clone(),
            replay_of,
            moves: false,
            carried: Vec::new(),
            proof: Default::default(),
        })
    }

    /// The rejection of a field operation that cannot apply; a decrement refused for lack of
    /// rights is noted, so that tending asks for them.
    fn refused_op(&mut self, key: &Key, e: mrr_core::doc::OpError, now_ms: u64) -> Rejection {
        use mrr_core::doc::OpError;
        match e {
            OpError::InsufficientRights { field, held, asked, holder } => {
                self.escrow_refused(key, &field, asked.saturating_sub(held), now_ms);
                Rejection::InsufficientRights { key: key.clone(), field, held, asked, holder }
            }
            OpError::Bounded { field, op } => Rejection::BoundedField { key: key.clone(), field, how: op },
            OpError::Overflow { field } => Rejection::CounterOverflow { key: key.clone(), field },
        }
    }

    /// Applies one admitted change that writes the record (local or remote) under its topic's
    /// rule and the key's placement, queues what it logs, and returns the key's new state (for
    /// a local write moving the record away, its state where it is now placed; see
    /// [`Committed`]).
    fn apply_change(
        &mut self,
        pending: &mut Pending,
        store: &dyn Store,
        reads: &Reads,
        change: Change,
    ) -> Result<Record, StoreError> {
        debug_assert!(change.writes(), "wants and transfers have their own paths");
        let key = change.key.clone();
        let current = self.current(pending, reads, &key);
        let policies = self.policies.clone();
        let rule = policies.rule(&key.topic);
        let placed_by = current.as_ref().and_then(|r| r.placed_by.clone());
        // The newest move places the key; until one has arrived, the first change's placement.
        let (regions, placed_by) = match &current {
            _ if placement::decides(&change, placed_by.as_ref()) => {
                (change.metadata.regions.clone(), Some(change.version.clone()))
            }
            Some(r) => (r.metadata.regions.clone(), placed_by),
            None => (change.metadata.regions.clone(), None),
        };
        let placement_now = Metadata { regions, sync_flags: Vec::new() };
        let held_before = current.as_ref().is_some_and(|r| placement::places(&r.metadata, &self.local));
        let decided = placement::decides(&change, current.as_ref().and_then(|r| r.placed_by.as_ref()));
        if !placement::places(&placement_now, &self.local) {
            // A write made here that moves the record away answers with the record as the
            // regions it now lives in hold it, not with the register this region keeps (which
            // would read as a delete). Computed before the history goes; a local write follows
            // everything this region admitted, so it logs no conflict.
            let written = match &current {
                Some(c) if held_before && change.origin == self.local && change.has_content() => {
                    let mut w = self.apply_content(pending, store, Some(c.clone()), rule, &[&change])?;
                    w.metadata.regions.clone_from(&placement_now.regions);
                    w.placed_by.clone_from(&placed_by);
                    Some(w)
                }
                _ => None,
            };
            // Not placed here (any more): the copy goes, the placement register stays.
            if held_before && matches!(rule, Rule::Custom(_)) {
                pending.history.retain(|(k, _), _| *k != key);
                pending.histories_dropped.add(key.clone());
            }
            let newest = match current {
                Some(c) if c.version > change.version => c,
                _ => change.to_record(),
            };
            let record = Record {
                value: None,
                doc: None,
                metadata: Metadata { regions: placement_now.regions, ..newest.metadata.clone() },
                placed_by,
                lacking: BTreeSet::new(),
                ..newest
            };
            self.store_record(pending, reads, &key, record.clone());
            self.note_departure(pending, store, &key, &change, held_before, decided)?;
            // Content this region may not hold is not kept in its changelog either, nor the
            // record's name, except in its own writes (a move away from here), whose origin
            // answers wants with them.
            let logged =
                if change.origin != self.local { placement::to_marker(&change, &self.policies.sealer) } else { change };
            pending.changes.push(logged);
            return Ok(written.unwrap_or(record));
        }
        let base = current.as_ref().filter(|_| held_before).cloned();
        let mut lacking = base.as_ref().map(|r| r.lacking.clone()).unwrap_or_default();
        let lacked_before = lacking.clone();
        let mut record = if change.has_content() {
            // A custom move that places the record here may have sent the front of its
            // history ahead of itself: those pieces are in this region's changelog.
            let ahead = match rule {
                Rule::Custom(_) if !held_before && change.moves => self.pieces_ahead(pending, store, &change)?,
                _ => Vec::new(),
            };
            let contents: Vec<&Change> = ahead
                .iter()
                .flat_map(|p| p.carried.iter())
                .chain(change.carried.iter())
                .chain(std::iter::once(&change))
                .collect();
            self.apply_content(pending, store, base, rule, &contents)?
        } else {
            // A write concurrent with a move that placed the record here, made where the
            // record was not yet placed here: its content comes from its origin.
            lacking.insert(change.id());
            base.unwrap_or_else(|| Record { value: None, doc: None, ..change.to_record() })
        };
        if !held_before && current.is_some() {
            // Placed here by this move, which carries the whole record up to its causal past.
            // What this region admitted beyond that is either in its changelog (admitted while
            // it held the record before) or must be asked for.
            let (contents, ids) = self.admitted_unseen(pending, store, &key, &change)?;
            lacking.extend(ids);
            if !contents.is_empty() {
                let contents: Vec<&Change> = contents.iter().collect();
                record = self.apply_content(pending, store, Some(record), rule, &contents)?;
            }
        }
        record.metadata.regions = placement_now.regions;
        record.placed_by = placed_by;
        let wanted: Vec<ChangeId> = lacking.difference(&lacked_before).cloned().collect();
        record.lacking = lacking;
        self.store_record(pending, reads, &key, record.clone());
        pending.changes.push(self.logged(change));
        if !wanted.is_empty() {
            // To the record's regions and the wanted changes' origins (which wrote them): the
            // want names the key, so it goes nowhere else in clear.
            let mut to = record.metadata.regions.clone();
            if !placement::everywhere(&to) {
                for id in &wanted {
                    if !to.iter().any(|r| r == id.origin.as_str()) {
                        to.push(id.origin.to_string());
                    }
                }
            }
            let to = Metadata { regions: to, sync_flags: Vec::new() };
            self.emit(pending, key, Op::Want { ids: wanted }, to, Vec::new());
        }
        Ok(record)
    }

    /// Applies the content of `changes` (admitted here, now or before) to `base`, this region's
    /// copy, under the key's rule. Idempotent: content already applied changes nothing.
    fn apply_content(
        &self,
        pending: &mut Pending,
        store: &dyn Store,
        base: Option<Record>,
        rule: &Rule,
        changes: &[&Change],
    ) -> Result<Record, StoreError> {
        debug_assert!(!changes.is_empty() && changes.iter().all(|c| c.has_content() && c.writes()));
        Ok(match rule {
            Rule::Custom(resolver) => self.apply_fold(pending, store, base, changes, resolver.as_ref())?,
            _ => {
                let mut record = base;
                for change in changes {
                    record = Some(match rule {
                        Rule::Merge => self.apply_merge(pending, record, change),
                        _ => self.apply_lww(pending, record, change),
                    });
                }
                record.unwrap_or_else(|| unreachable!("at least one change"))
            }
        })
    }

    /// The changes of `key` this region admitted that `mover` had not seen (its causal past
    /// is what its whole-record content covers): the content of those it holds in its
    /// changelog, and the ids of those it received as markers.
    fn admitted_unseen(
        &self,
        pending: &Pending,
        store: &dyn Store,
        key: &Key,
        mover: &Change,
    ) -> Result<(Vec<Change>, BTreeSet<ChangeId>), StoreError> {
        const PAGE: usize = 512;
        // Markers of the key it received while not holding it carry its sealed name.
        let sealed = self.policies.sealer.seal(key);
        let of_key = |c: &Change| c.key == *key || c.key == sealed;
        let mut admitted = Vec::new();
        for (stream, head) in pending.vv.iter() {
            let mut after = mover.deps.get(stream);
            while after < head {
                let page = store.changes_after(stream, after, PAGE)?;
                let Some(last) = page.last().map(|c| c.seq) else { break };
                after = last;
                admitted.extend(page.into_iter().filter(|c| of_key(c)));
            }
        }
        // This group's changes are not in the store yet.
        admitted.extend(pending.changes.iter().filter(|c| of_key(c) && !c.id().seen_by(&mover.deps)).cloned());
        let mut contents = Vec::new();
        let mut ids = BTreeSet::new();
        for change in admitted {
            if change.id() == mover.id() {
                continue;
            }
            match &change.op {
                Op::Marker => {
                    ids.insert(change.id());
                }
                Op::Want { .. } | Op::Transfer | Op::History => contents.extend(change.carried),
                _ => {
                    contents.extend(change.carried.iter().cloned());
                    contents.push(Change { carried: Vec::new(), proof: Default::default(), ..change });
                }
            }
        }
        for c in &contents {
            ids.remove(&c.id());
        }
        Ok((contents, ids))
    }

    /// A region's want reaches every region; this one answers for the changes it wrote, from
    /// its own changelog, which keeps every change it wrote whole.
    fn answer_want(&mut self, pending: &mut Pending, store: &dyn Store, want: &Change) -> Result<(), StoreError> {
        let Op::Want { ids } = &want.op else { unreachable!("called for wants") };
        let mut carried = Vec::new();
        for id in ids.iter().filter(|id| id.origin == self.local) {
            let found = store.changes_after(&id.stream(), id.seq - 1, 1)?.into_iter().find(|c| c.seq == id.seq);
            match found {
                Some(c) if c.key == want.key && c.writes() && c.has_content() => {
                    carried.push(Change { carried: Vec::new(), proof: Default::default(), ..c })
                }
                // Not a change this region wrote for that key: a confused or hostile peer.
                _ => {
                    tracing::warn!(want = %want.id(), wanted = %id, key = %want.key, "want names no change of ours for this key; ignored")
                }
            }
        }
        if !carried.is_empty() {
            let to = Metadata { regions: vec![want.origin.to_string()], sync_flags: Vec::new() };
            self.emit(pending, want.key.clone(), Op::Transfer, to, carried);
            // Answered from a record that left here: the transfer is content left behind too.
            if let Some(transfer) = pending.changes.last().map(Change::id) {
                self.extend_departure(pending, store, &want.key, &transfer)?;
            }
        }
        Ok(())
    }

    /// A transfer's content, applied where the record is held (it is what this region asked
    /// for); elsewhere, or if the record has moved away since, nothing of it is kept.
    fn apply_transfer(
        &mut self,
        pending: &mut Pending,
        store: &dyn Store,
        reads: &Reads,
        transfer: Change,
    ) -> Result<(), StoreError> {
        let current = self.current(pending, reads, &transfer.key);
        let held = current.filter(|r| placement::places(&r.metadata, &self.local));
        match held {
            Some(cur) if transfer.has_content() => {
                let rule = self.policies.rule(&transfer.key.topic).clone();
                let contents: Vec<&Change> = transfer.carried.iter().collect();
                let mut record = self.apply_content(pending, store, Some(cur.clone()), &rule, &contents)?;
                // Content only: the placement stays; what arrived is no longer lacking.
                record.metadata.regions = cur.metadata.regions;
                record.placed_by = cur.placed_by;
                record.lacking = cur.lacking;
                for c in &transfer.carried {
                    record.lacking.remove(&c.id());
                }
                self.store_record(pending, reads, &transfer.key, record);
                pending.changes.push(transfer);
            }
            _ => pending.changes.push(placement::to_marker(&transfer, &self.policies.sealer)),
        }
        Ok(())
    }

    /// The [`Op::History`] pieces `mover` sent ahead of itself, oldest first: the changes of its
    /// key just before it on its stream, in this group or in the changelog.
    fn pieces_ahead(&self, pending: &Pending, store: &dyn Store, mover: &Change) -> Result<Vec<Change>, StoreError> {
        let stream = mover.stream();
        let mut pieces = Vec::new();
        let mut seq = mover.seq;
        while seq > 1 {
            seq -= 1;
            let in_group = pending.changes.iter().rev().find(|c| c.stream() == stream && c.seq == seq).cloned();
            let found = match in_group {
                Some(c) => Some(c),
                None => store.changes_after(&stream, seq - 1, 1)?.into_iter().find(|c| c.seq == seq),
            };
            match found {
                Some(c) if c.op == Op::History && c.key == mover.key => pieces.push(c),
                _ => break,
            }
        }
        pieces.reverse();
        Ok(pieces)
    }

    /// A piece of a `custom` move's history, ahead of the move. Where the record is held it is
    /// content (idempotent fold insertion, placement untouched); where the move is about to
    /// place it, it is kept whole in the changelog, and the move folds it in when it arrives
    /// ([`Engine::pieces_ahead`]); outside the move's placement only its marker is kept.
    fn apply_history(
        &mut self,
        pending: &mut Pending,
        store: &dyn Store,
        reads: &Reads,
        history: Change,
    ) -> Result<(), StoreError> {
        let policies = self.policies.clone();
        let Rule::Custom(resolver) = policies.rule(&history.key.topic) else {
            // Only custom moves send one; a peer whose policies differ was refused at handshake.
            tracing::warn!(change = %history.id(), key = %history.key, "fold history for a topic without a handler; kept as a marker");
            pending.changes.push(placement::to_marker(&history, &self.policies.sealer));
            return Ok(());
        };
        if !placement::places(&history.metadata, &self.local) || !history.has_content() {
            pending.changes.push(placement::to_marker(&history, &self.policies.sealer));
            return Ok(());
        }
        let current = self.current(pending, reads, &history.key);
        let contents: Vec<&Change> = history.carried.iter().collect();
        // Where the move is about to place it, the piece waits whole in the changelog below
        // for the move that follows (`pieces_ahead`).
        if let Some(cur) = current.filter(|r| placement::places(&r.metadata, &self.local)) {
            let rule = Rule::Custom(resolver.clone());
            let mut record = self.apply_content(pending, store, Some(cur.clone()), &rule, &contents)?;
            record.metadata.regions = cur.metadata.regions;
            record.placed_by = cur.placed_by;
            record.lacking = cur.lacking;
            self.store_record(pending, reads, &history.key, record);
        }
        pending.changes.push(history);
        Ok(())
    }

    /// Writes a change of this region's own (a want or a transfer) into the group.
    fn emit(&mut self, pending: &mut Pending, key: Key, op: Op, metadata: Metadata, carried: Vec<Change>) {
        self.emit_on(pending, Stream::normal(self.local.clone()), key, op, metadata, carried);
    }

    /// Writes a change of this region's own that writes no record on `stream`.
    fn emit_on(
        &mut self,
        pending: &mut Pending,
        stream: Stream,
        key: Key,
        op: Op,
        metadata: Metadata,
        carried: Vec<Change>,
    ) {
        let change = self.own_change(pending, stream, key, op, metadata, carried);
        pending.changes.push(change);
    }

    /// The whole fold history of a `custom` key here, as the changes a move carries.
    fn fold_history(&self, pending: &Pending, store: &dyn Store, key: &Key) -> Result<Vec<Change>, StoreError> {
        let mut entries: BTreeMap<Version, FoldEntry> = BTreeMap::new();
        if !pending.histories_dropped.contains_key(key) {
            let first = Version { ts: mrr_core::Timestamp::new(0, 0), region: self.local.clone() };
            let (_, stored) = store.history_from(key, &first)?;
            entries.extend(stored.into_iter().map(|e| (e.version.clone(), e)));
        }
        for ((k, v), e) in pending.history.iter() {
            if k == key {
                entries.insert(v.clone(), e.clone());
            }
        }
        Ok(entries
            .into_values()
            .map(|e| Change {
                origin: e.id.origin,
                lane: e.id.lane,
                seq: e.id.seq,
                key: key.clone(),
                op: match e.value {
                    Some(value) => Op::Put { value },
                    None => Op::Delete,
                },
                metadata: e.metadata,
                version: e.version,
                deps: e.deps,
                replay_of: e.replay_of,
                moves: false,
                carried: Vec::new(),
                proof: Default::default(),
            })
            .collect())
    }

    fn apply_lww(&self, pending: &mut Pending, current: Option<Record>, change: &Change) -> Record {
        let incoming = change.to_record();
        let Some(current) = current else { return incoming };
        let differ = current.value != incoming.value;
        let current_id = current.change_id();
        if LastWriterWins.resolve(&current, &incoming) == Resolution::TakeIncoming {
            if differ && !current_id.seen_by(&change.deps) {
                log(
                    pending,
                    &change.key,
                    ("timestamp", "last_writer_wins"),
                    (side_of_record(&current), side_of(change)),
                    vec![],
                );
            }
            incoming
        } else {
            if differ && !change.id().seen_by(&current.deps) {
                log(
                    pending,
                    &change.key,
                    ("timestamp", "last_writer_wins"),
                    (side_of(change), side_of_record(&current)),
                    vec![],
                );
            }
            current
        }
    }

    fn apply_merge(&self, pending: &mut Pending, current: Option<Record>, change: &Change) -> Record {
        let stamp =
            Stamp { version: change.version.clone(), lane: change.lane, seq: change.seq, deps: change.deps.clone() };
        let delta = match &change.op {
            Op::Merge { delta } => delta.clone(),
            // Whole-record changes (written before the topic became `merge`): every field they
            // name takes their version; deterministic, whatever this region holds.
            Op::Put { value } => Doc::put_delta(None, &object_of(value), &stamp),
            Op::Delete => Doc::delete_delta(None, &stamp),
            Op::Marker | Op::Want { .. } | Op::Transfer | Op::History => unreachable!("only content reaches a rule"),
        };
        let mut doc = current.as_ref().and_then(|r| r.doc.clone()).unwrap_or_default();
        let lost = doc.join_reporting(&delta);
        self.log_lost(pending, &change.key, lost);
        let value = doc.materialize();
        // A delta without presence is bookkeeping (an escrow counter's transfers and asks,
        // [`Doc::escrow_delta`]): it changes no value a client wrote, so it does not name the
        // record's version or token — a conditional write or a session never sees it.
        let bookkeeping = delta.presence.is_none();
        // The newest change names the record's version, token and metadata (not
        // `Change::to_record`, which would materialise the delta only to drop it).
        match current {
            Some(c) if bookkeeping || c.version > change.version => Record { value, doc: Some(doc), ..c },
            // Bookkeeping ahead of the record's first write (it came by another stream): the
            // lowest version, so the first write names the record.
            None if bookkeeping => Record {
                value,
                version: Version { ts: mrr_core::Timestamp::new(0, 0), region: change.origin.clone() },
                seq: 0,
                deps: VersionVector::new(),
                doc: Some(doc),
                ..change.to_record()
            },
            _ => Record {
                value,
                metadata: change.metadata.clone(),
                version: change.version.clone(),
                origin: change.origin.clone(),
                lane: change.lane,
                seq: change.seq,
                deps: change.deps.clone(),
                doc: Some(doc),
                placed_by: None,
                lacking: BTreeSet::new(),
            },
        }
    }

    /// One conflict entry per (loser, winner), listing the fields the loser lost.
    fn log_lost(&self, pending: &mut Pending, key: &Key, lost: Vec<Lost>) {
        let mut grouped: BTreeMap<(ChangeId, ChangeId), (Lost, Vec<String>)> = BTreeMap::new();
        for l in lost {
            let entry = grouped.entry((l.loser.id(), l.winner.id())).or_insert_with(|| (l.clone(), Vec::new()));
            if let Some(f) = &l.field {
                entry.1.push(f.clone());
            }
        }
        for ((loser_id, winner_id), (l, fields)) in grouped {
            let side = |id: ChangeId, stamp: &Stamp| Side { id, version: stamp.version.clone(), value: None };
            log(
                pending,
                key,
                ("merge", "field_last_writer_wins"),
                (side(loser_id, &l.loser), side(winner_id, &l.winner)),
                fields,
            );
        }
    }

    /// `custom`: inserts the changes into the key's fold history at their versions and
    /// re-folds from the first; see [`mrr_core::fold`]. A change already in the history (same
    /// id at the same version: content applied before) is not inserted again.
    fn apply_fold(
        &self,
        pending: &mut Pending,
        store: &dyn Store,
        current: Option<Record>,
        changes: &[&Change],
        resolver: &dyn Resolver,
    ) -> Result<Record, StoreError> {
        let Some(first) = changes.iter().map(|c| &c.version).min() else { unreachable!("at least one change") };
        let key = &changes[0].key;
        let (stored_before, stored_after) = if pending.histories_dropped.contains_key(key) {
            (None, Vec::new())
        } else {
            store.history_from(key, first)?
        };
        // The group's own, not yet committed, entries shadow the stored ones.
        let mut tail: BTreeMap<Version, FoldEntry> = stored_after.into_iter().map(|e| (e.version.clone(), e)).collect();
        let mut before = stored_before;
        for ((k, v), e) in pending.history.iter() {
            if k != key {
                continue;
            }
            if v >= first {
                tail.insert(v.clone(), e.clone());
            } else if before.as_ref().is_none_or(|b| b.version <= *v) {
                // `<=`: the group's copy of an entry is newer than the stored one.
                before = Some(e.clone());
            }
        }
        let previous: BTreeMap<Version, Outcome> = tail.iter().map(|(v, e)| (v.clone(), e.outcome.clone())).collect();
        for change in changes {
            if tail.get(&change.version).is_some_and(|e| e.id == change.id()) {
                continue;
            }
            let entry = FoldEntry {
                id: change.id(),
                version: change.version.clone(),
                deps: change.deps.clone(),
                value: match &change.op {
                    Op::Put { value } => Some(value.clone()),
                    Op::Merge { delta } => delta.materialize(),
                    Op::Delete | Op::Marker | Op::Want { .. } | Op::Transfer | Op::History => None,
                },
                metadata: change.metadata.clone(),
                replay_of: change.replay_of.clone(),
                after: FoldState::default(),
                outcome: Outcome::ReplaySkipped,
            };
            tail.insert(entry.version.clone(), entry);
        }
        let mut state = before.map(|b| b.after).unwrap_or_default();
        let versions: Vec<Version> = tail.keys().cloned().collect();
        for v in versions {
            let Some(mut entry) = tail.remove(&v) else { continue };
            match entry.replay_of.clone() {
                Some(target) => {
                    self.fold_replay(pending, store, key, &mut tail, &state, &mut entry, &target, resolver)?
                }
                None => fold::step(resolver, &state, &mut entry),
            }
            let was = previous.get(&v);
            if was != Some(&entry.outcome) {
                self.log_fold(pending, key, &state, &entry, was);
            }
            state = entry.after.clone();
            pending.history.insert((key.clone(), v), entry);
        }
        Ok(match state.head {
            Some(head) => Record {
                value: state.value,
                metadata: head.metadata,
                version: head.version,
                origin: head.id.origin,
                lane: head.id.lane,
                seq: head.id.seq,
                deps: head.deps,
                doc: None,
                placed_by: None,
                lacking: BTreeSet::new(),
            },
            // Nothing was ever applied (every change failed): the key keeps what it had.
            None => current.unwrap_or_else(|| Record { value: None, ..changes[changes.len() - 1].to_record() }),
        })
    }

    /// A replay applies its dead letter's content once: not if the letter's change applied
    /// after all (a re-fold), nor if an earlier replay already did.
    #[allow(clippy::too_many_arguments)]
    fn fold_replay(
        &self,
        pending: &mut Pending,
        store: &dyn Store,
        key: &Key,
        tail: &mut BTreeMap<Version, FoldEntry>,
        state: &FoldState,
        entry: &mut FoldEntry,
        target: &Replay,
        resolver: &dyn Resolver,
    ) -> Result<(), StoreError> {
        let key_version = (key.clone(), target.version.clone());
        let mut target_entry = match tail.get(&target.version) {
            Some(e) => Some(e.clone()),
            None => match pending.history.get(&key_version) {
                Some(e) => Some(e.clone()),
                None if pending.histories_dropped.contains_key(key) => None,
                None => store.history_entry(&key_version.0, &target.version)?,
            },
        };
        let allowed = match target_entry.as_ref().map(|t| &t.outcome) {
            // The target has not arrived here yet: when it does, the re-fold from its position
            // revisits this replay.
            None => true,
            Some(Outcome::Failed { replayed_by, .. }) => {
                replayed_by.as_ref().is_none_or(|r| r.id == entry.id || r.version > entry.version)
            }
            Some(_) => false,
        };
        if !allowed {
            entry.after = state.clone();
            entry.outcome = Outcome::ReplaySkipped;
            return Ok(());
        }
        fold::step(resolver, state, entry);
        if entry.failed() {
            return Ok(());
        }
        if let Some(t) = target_entry.as_mut() {
            if let Outcome::Failed { replayed_by, .. } = &mut t.outcome {
                *replayed_by = Some(Replay { id: entry.id.clone(), version: entry.version.clone() });
            }
            if pending.dead_letters.remove(&t.id).is_none() {
                pending.cleared.add(t.id.clone());
            }
            match tail.get_mut(&t.version) {
                Some(in_tail) => *in_tail = t.clone(),
                None => {
                    pending.history.insert(key_version, t.clone());
                }
            }
        }
        Ok(())
    }

    /// Conflict-log and dead-letter bookkeeping for one re-folded entry whose outcome changed.
    fn log_fold(&self, pending: &mut Pending, key: &Key, before: &FoldState, entry: &FoldEntry, was: Option<&Outcome>) {
        let head_side = |h: &Head, value: &Option<Vec<u8>>| Side {
            id: h.id.clone(),
            version: h.version.clone(),
            value: text(value),
        };
        let entry_side = Side { id: entry.id.clone(), version: entry.version.clone(), value: text(&entry.value) };
        match &entry.outcome {
            Outcome::Merged { with } => {
                log(pending, key, ("custom", "handler_merged"), (entry_side, head_side(with, &before.value)), vec![]);
            }
            Outcome::Applied { over: Some(h) } => {
                let resolution = if entry.value.is_none() { "delete_won" } else { "last_writer_wins" };
                log(pending, key, ("custom", resolution), (head_side(h, &before.value), entry_side), vec![]);
            }
            Outcome::Failed { reason, replayed_by: None } => {
                // A letter already queued keeps the time it first failed.
                if matches!(was, Some(Outcome::Failed { replayed_by: None, .. })) {
                    return;
                }
                pending.cleared.remove(&entry.id);
                pending.dead_letters.insert(
                    entry.id.clone(),
                    DeadLetter {
                        id: entry.id.clone(),
                        key: key.clone(),
                        version: entry.version.clone(),
                        reason: reason.clone(),
                        value: text(&entry.value),
                        failed_at_ms: pending.now_ms,
                    },
                );
                return;
            }
            _ => {}
        }
        if matches!(was, Some(Outcome::Failed { replayed_by: None, .. }))
            && pending.dead_letters.remove(&entry.id).is_none()
        {
            pending.cleared.add(entry.id.clone());
        }
    }

    /// Applies a peer's batch to the group, in order, up to the first change it must refuse
    /// (see [`RemoteOutcome::refused`]). A storage error leaves nothing of the batch in the
    /// group: its changes are not counted as applied, and the peer sends them again.
    pub fn apply_remote(
        &mut self,
        pending: &mut Pending,
        store: &dyn Store,
        changes: Vec<Change>,
        physical_ms: u64,
    ) -> Result<RemoteOutcome, StoreError> {
        pending.request(|pending| self.remote_request(pending, store, changes, physical_ms))
    }

    fn remote_request(
        &mut self,
        pending: &mut Pending,
        store: &dyn Store,
        changes: Vec<Change>,
        physical_ms: u64,
    ) -> Result<RemoteOutcome, StoreError> {
        let mut reads = self.prefetch(pending, store, changes.iter().map(|c| &c.key))?;
        let mut out = RemoteOutcome::default();
        let (conflicts_before, letters_before) = (pending.conflicts.len(), pending.dead_letters.len());
        for (position, mut change) in changes.into_iter().enumerate() {
            // A marker names its record by its sealed name; a region that holds the record
            // knows it by its clear name (placed here by a move its sender had not seen).
            change.key = self.known_name(pending, store, &change.key)?;
            self.read_into(pending, store, &mut reads, &change.key)?;
            let stream = change.stream();
            match admit_incoming(&self.local, &pending.vv, &stream, change.seq) {
                Incoming::Apply => {}
                Incoming::Duplicate => {
                    if mrr_core::planted::active(mrr_core::planted::Bug::DuplicatesBypassMerge) {
                        pending.overlay.insert(change.key.clone(), Some(change.to_record()));
                    }
                    out.duplicates += 1;
                    continue;
                }
                Incoming::Gap { expected } => {
                    out.refused = Some(Refusal::Gap { id: change.id(), expected });
                    break;
                }
                Incoming::Loop => {
                    out.refused = Some(Refusal::Loop { id: change.id() });
                    break;
                }
                Incoming::Strong => {
                    out.refused = Some(Refusal::Strong { id: change.id() });
                    break;
                }
            }
            // A strong topic changes only through the log; a peer's write to one means it
            // runs other policies than this region (which the handshake should have refused).
            if self.policies.is_strong(&change.key.topic) {
                out.refused = Some(Refusal::StrongTopic { id: change.id(), topic: change.key.topic.clone() });
                break;
            }
            // A full dead-letter queue never drops a letter: a change that could add one (its
            // topic runs a handler) waits at its sender until there is room.
            if pending.dead_letters_full() && matches!(self.policies.rule(&change.key.topic), Rule::Custom(_)) {
                out.refused = Some(Refusal::DeadLettersFull { id: change.id() });
                break;
            }
            if let Err(skew) = self.hlc.observe(change.version.ts, physical_ms) {
                out.refused = Some(Refusal::ClockSkew { id: change.id(), skew });
                break;
            }
            pending.vv.advance(&stream, change.seq);
            match change.op {
                Op::Want { .. } => {
                    self.answer_want(pending, store, &change)?;
                    // Whole only where the record is held: a want also reaches the wanted
                    // changes' origins, and regions the record left since it was made.
                    let held = self
                        .current(pending, &reads, &change.key)
                        .is_some_and(|r| placement::places(&r.metadata, &self.local));
                    let logged =
                        if held { self.logged(change) } else { placement::to_marker(&change, &self.policies.sealer) };
                    pending.changes.push(logged);
                }
                Op::Transfer => self.apply_transfer(pending, store, &reads, change)?,
                Op::History => self.apply_history(pending, store, &reads, change)?,
                _ => {
                    let escrow = match &change.op {
                        Op::Merge { delta } if self.policies.has_bounded(&change.key.topic) => {
                            Some((change.key.clone(), delta.clone()))
                        }
                        _ => None,
                    };
                    let record = self.apply_change(pending, store, &reads, change)?;
                    if let Some((key, delta)) = escrow {
                        self.escrow_touched(&key, &delta, record.doc.as_ref(), physical_ms);
                    }
                }
            }
            out.applied += 1;
            out.admitted.push(position);
        }
        out.conflicts = pending.conflicts[conflicts_before..].to_vec();
        out.dead_letters = pending.dead_letters.len().saturating_sub(letters_before);
        out.vv = pending.vv.clone();
        Ok(out)
    }
}

/// What one carried entry counts for against [`mrr_core::limits::CARRIED_BYTES_MAX`]: its
/// payload and a fixed allowance for its id, version, metadata and causal past.
fn carried_size(c: &Change) -> usize {
    c.payload_len() + 64 + c.deps.iter().count() * 24
}

/// `history` (oldest first) cut into pieces of about `bytes_max` stored bytes each, at least one
/// entry a piece; the last piece is what the move itself carries. Empty in, one empty piece out.
fn history_pieces(history: Vec<Change>, bytes_max: usize) -> Vec<Vec<Change>> {
    let mut pieces = vec![Vec::new()];
    let mut bytes = 0;
    for entry in history {
        let n = carried_size(&entry);
        let full = pieces.last().is_some_and(|p| !p.is_empty()) && bytes + n > bytes_max;
        if full {
            pieces.push(Vec::new());
            bytes = 0;
        }
        bytes += n;
        if let Some(p) = pieces.last_mut() {
            p.push(entry);
        }
    }
    pieces
}

/// Queues a conflict-log entry. `rule` is (strategy, resolution); `sides` is (loser, winner).
fn log(pending: &mut Pending, key: &Key, rule: (&str, &str), sides: (Side, Side), fields: Vec<String>) {
    pending.conflicts.push(ConflictEntry {
        key: key.clone(),
        strategy: rule.0.to_owned(),
        resolution: rule.1.to_owned(),
        loser: sides.0,
        winner: sides.1,
        fields,
        detected_at_ms: pending.now_ms,
    });
}

fn object_of(bytes: &[u8]) -> serde_json::Map<String, serde_json::Value> {
    // Values are validated JSON objects at the API and on the wire.
    match serde_json::from_slice(bytes) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mrr_core::fold::testing::Append;
    use mrr_core::{FieldOp, Lane, Timestamp};
    use mrr_storage::MemStore;
    use serde_json::{json, Value};

    pub(super) fn policies() -> Arc<Policies> {
        let topics = [("profiles".to_owned(), Rule::Merge), ("logs".to_owned(), Rule::Custom(Arc::new(Append)))];
        Arc::new(Policies::new(Rule::Timestamp, topics.into_iter().collect()))
    }

    pub(super) fn engine(name: &str) -> Engine {
        Engine::new(r(name), RecoveredState::default(), 200, policies())
    }

    pub(super) fn r(s: &str) -> RegionName {
        RegionName::new(s).expect("valid")
    }

    fn put(id: &str, v: &str) -> LocalOp {
        LocalOp::Put { key: Key::new("users", id), value: v.as_bytes().to_vec(), metadata: Metadata::default() }
    }

    /// Runs one group through an engine and commits it to `store`.
    pub(super) fn local(engine: &mut Engine, store: &MemStore, ops: Vec<LocalOp>, now: u64) -> Vec<Committed> {
        let mut p = engine.begin(now);
        let out = engine.apply_local(&mut p, store, ops, now).expect("apply");
        let batch = engine.finish(p).expect("batch");
        store.commit(&batch).expect("commit");
        engine.committed(&batch);
        out
    }

    pub(super) fn remote(engine: &mut Engine, store: &MemStore, changes: Vec<Change>, now: u64) -> RemoteOutcome {
        let mut p = engine.begin(now);
        let out = engine.apply_remote(&mut p, store, changes, now).expect("apply");
        if let Some(batch) = engine.finish(p) {
            store.commit(&batch).expect("commit");
            engine.committed(&batch);
        }
        out
    }

    /// The changelog of a stream, `a` or `a.urgent`.
    fn changes_of(store: &MemStore, stream: &str) -> Vec<Change> {
        store.changes_after(&Stream::parse(stream).expect("stream"), 0, 100).expect("changes")
    }

    #[test]
    fn local_writes_take_contiguous_seqs_and_increasing_versions() {
        let store = MemStore::new();
        let mut e = engine("a");
        let out = local(&mut e, &store, vec![put("u1", "{}"), put("u1", "{\"x\":1}")], 1_000);
        assert_eq!(out.iter().map(|c| c.record.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(out[1].record.version > out[0].record.version);
        assert_eq!(store.get(&Key::new("users", "u1")).expect("get"), Some(out[1].record.clone()));
        assert_eq!(e.applied().get(&Stream::normal(r("a"))), 2);
    }

    #[test]
    fn flagged_writes_take_their_lane_and_overtake_without_breaking_causality() {
        let (sa, sb) = (MemStore::new(), MemStore::new());
        let (mut a, mut b) = (engine("a"), engine("b"));
        let urgent = Metadata { regions: vec![], sync_flags: vec!["SYNC_PRIORITY=1".into()] };
        let stock = |n: u64| LocalOp::Put {
            key: Key::new("stock", "s1"),
            value: json!({ "n": n }).to_string().into_bytes(),
            metadata: urgent.clone(),
        };
        // a writes s1 normally, then twice urgently (an update of its own write).
        local(&mut a, &sa, vec![put("u1", "{}"), kv("stock", "s1", json!({"n": 10}))], 1_000);
        let out = local(&mut a, &sa, vec![stock(9), stock(8)], 1_001);
        assert_eq!(
            out.iter().map(|c| (c.record.lane, c.record.seq)).collect::<Vec<_>>(),
            [(Lane::Urgent, 1), (Lane::Urgent, 2)]
        );
        assert_eq!(changes_of(&sa, "a").len(), 2, "normal lane untouched");
        // The urgent stream reaches b before the normal one: no gap, and the older normal write
        // that arrives afterwards is superseded, not logged as a conflict (the urgent one saw it).
        let first = remote(&mut b, &sb, changes_of(&sa, "a.urgent"), 1_002);
        assert_eq!((first.applied, first.refused), (2, None));
        let later = remote(&mut b, &sb, changes_of(&sa, "a"), 1_003);
        assert_eq!((later.applied, later.conflicts.len()), (2, 0));
        assert_eq!(value(&sb, "stock", "s1"), Some(json!({"n": 8})));
        assert_eq!(sa.get(&Key::new("stock", "s1")).expect("get"), sb.get(&Key::new("stock", "s1")).expect("get"));
        // A delete keeps the record's flags, so it travels in the same lane.
        let del = local(&mut a, &sa, vec![LocalOp::Delete { key: Key::new("stock", "s1") }], 1_004);
        assert_eq!((del[0].record.lane, del[0].record.seq), (Lane::Urgent, 3));
    }

    #[test]
    fn remote_changes_converge_by_version_whatever_the_order() {
        let (sa, sb) = (MemStore::new(), MemStore::new());
        let mut a = engine("a");
        let mut b = engine("b");
        local(&mut a, &sa, vec![put("u1", "{\"from\":\"a\"}")], 1_000);
        local(&mut b, &sb, vec![put("u1", "{\"from\":\"b\"}")], 1_000);
        let out_b = remote(&mut b, &sb, changes_of(&sa, "a"), 1_000);
        let out_a = remote(&mut a, &sa, changes_of(&sb, "b"), 1_000);
        let key = Key::new("users", "u1");
        assert_eq!(sa.get(&key).expect("get"), sb.get(&key).expect("get"));
        // Same timestamp, so the region name breaks the tie: b wins on both sides, and the one
        // loser is logged once in each region.
        assert_eq!(out_a.conflicts.len(), 1);
        assert_eq!(out_b.conflicts.len(), 1);
        assert_eq!(out_a.conflicts[0].loser.id, ChangeId { origin: r("a"), lane: mrr_core::Lane::Normal, seq: 1 });
        assert_eq!(sa.conflicts().expect("log").len(), 1);
        assert_eq!(sa.get(&key).expect("get").map(|r| r.origin), Some(r("b")));
    }

    #[test]
    fn duplicates_are_dropped_and_gaps_loops_and_skew_refused() {
        let (sa, sb) = (MemStore::new(), MemStore::new());
        let mut a = engine("a");
        let mut b = engine("b");
        local(&mut a, &sa, vec![put("u1", "{}"), put("u2", "{}"), put("u3", "{}")], 1_000);
        let all = changes_of(&sa, "a");

        let out = remote(&mut b, &sb, all[..2].to_vec(), 1_000);
        assert_eq!((out.applied, out.duplicates, out.refused.clone()), (2, 0, None));
        let out = remote(&mut b, &sb, all.clone(), 1_000);
        assert_eq!((out.applied, out.duplicates), (1, 2));
        assert_eq!(out.vv.get(&Stream::normal(r("a"))), 3);

        let mut gap = all[2].clone();
        gap.seq = 5;
        let out = remote(&mut b, &sb, vec![gap], 1_000);
        assert!(matches!(out.refused, Some(Refusal::Gap { expected: 4, .. })));

        let own = changes_of(&sb, "b");
        assert!(own.is_empty());
        local(&mut b, &sb, vec![put("u9", "{}")], 1_000);
        let out = remote(&mut b, &sb, changes_of(&sb, "b"), 1_000);
        assert!(matches!(out.refused, Some(Refusal::Loop { .. })));

        // A change stamped 1 s in the future is refused and leaves nothing behind.
        let mut c = engine("c");
        let sc = MemStore::new();
        let out = remote(&mut c, &sc, all.clone(), 1_000 - 201);
        assert!(matches!(out.refused, Some(Refusal::ClockSkew { .. })));
        assert_eq!(out.applied, 0);
        assert_eq!(c.hlc.last(), Timestamp::ZERO, "refused timestamps never drag the clock");
    }

    #[test]
    fn restart_resumes_sequence_and_clock() {
        let store = MemStore::new();
        let mut e = engine("a");
        let first = local(&mut e, &store, vec![put("u1", "{}")], 5_000);
        let mut e = Engine::new(r("a"), store.recover().expect("recover"), 200, policies());
        let second = local(&mut e, &store, vec![put("u1", "{}")], 1_000);
        assert_eq!(second[0].record.seq, 2);
        assert!(second[0].record.version > first[0].record.version, "clock went back; versions did not");
    }

    pub(super) fn kv(topic: &str, id: &str, v: Value) -> LocalOp {
        LocalOp::Put { key: Key::new(topic, id), value: v.to_string().into_bytes(), metadata: Metadata::default() }
    }

    pub(super) fn value(store: &MemStore, topic: &str, id: &str) -> Option<Value> {
        let r = store.get(&Key::new(topic, id)).expect("get")?;
        r.value.map(|v| serde_json::from_slice(&v).expect("json"))
    }

    /// Ships every change `from` has that `to` lacks (own and relayed), in origin order.
    pub(super) fn sync(from: &MemStore, to: (&mut Engine, &MemStore), now: u64) -> RemoteOutcome {
        let mut all = Vec::new();
        for origin in ["a", "b", "c"] {
            for lane in mrr_core::Lane::ALL {
                if r(origin) != *to.0.local() {
                    all.extend(changes_of(from, &Stream::new(r(origin), lane).to_string()));
                }
            }
        }
        remote(to.0, to.1, all, now)
    }

    #[test]
    fn updates_across_regions_are_not_conflicts() {
        let (sa, sb) = (MemStore::new(), MemStore::new());
        let (mut a, mut b) = (engine("a"), engine("b"));
        local(&mut a, &sa, vec![kv("users", "u1", json!({"v": 1}))], 1_000);
        sync(&sa, (&mut b, &sb), 1_000);
        local(&mut b, &sb, vec![kv("users", "u1", json!({"v": 2}))], 1_001);
        let out = sync(&sb, (&mut a, &sa), 1_001);
        assert!(out.conflicts.is_empty(), "b saw a's write: an update, not a conflict");
        assert!(sa.conflicts().expect("log").is_empty() && sb.conflicts().expect("log").is_empty());
        assert_eq!(value(&sa, "users", "u1"), Some(json!({"v": 2})));
    }

    #[test]
    fn merge_topics_keep_concurrent_field_edits_and_log_only_same_field_losers() {
        let (sa, sb) = (MemStore::new(), MemStore::new());
        let (mut a, mut b) = (engine("a"), engine("b"));
        local(&mut a, &sa, vec![kv("profiles", "p", json!({"name": "Ann", "city": "Oslo", "n": 0}))], 1_000);
        sync(&sa, (&mut b, &sb), 1_000);
        let patch = |fields: Value| LocalOp::Patch {
            key: Key::new("profiles", "p"),
            fields: fields.to_string().into_bytes(),
            metadata: None,
        };
        local(&mut a, &sa, vec![patch(json!({"name": "Anne", "city": "Rome"}))], 1_010);
        local(&mut b, &sb, vec![patch(json!({"city": "Pisa", "email": "b@x"}))], 1_020);
        let ops = |by| LocalOp::Ops {
            key: Key::new("profiles", "p"),
            ops: vec![FieldOp::Incr { field: "views".into(), by }],
        };
        local(&mut a, &sa, vec![ops(3)], 1_030);
        local(&mut b, &sb, vec![ops(-1), ops(5)], 1_030);
        let to_b = sync(&sa, (&mut b, &sb), 1_040);
        let to_a = sync(&sb, (&mut a, &sa), 1_040);
        let want = json!({"name": "Anne", "city": "Pisa", "email": "b@x", "n": 0, "views": 7});
        assert_eq!(value(&sa, "profiles", "p"), Some(want.clone()));
        assert_eq!(value(&sb, "profiles", "p"), Some(want));
        for out in [to_a, to_b] {
            assert_eq!(out.conflicts.len(), 1, "{:?}", out.conflicts);
            assert_eq!(out.conflicts[0].fields, ["city"]);
            assert_eq!(out.conflicts[0].loser.id, ChangeId { origin: r("a"), lane: mrr_core::Lane::Normal, seq: 2 });
        }
        let refused =
            LocalOp::Ops { key: Key::new("users", "u"), ops: vec![FieldOp::Incr { field: "n".into(), by: 1 }] };
        let mut p = a.begin(1_050);
        assert!(matches!(a.apply_local(&mut p, &sa, vec![refused], 1_050), Err(LocalFailure::Rejected(_))));
    }

    #[test]
    fn custom_handlers_see_concurrent_writes_in_version_order_whatever_the_arrival() {
        let (sa, sb, sc) = (MemStore::new(), MemStore::new(), MemStore::new());
        let (mut a, mut b, mut c) = (engine("a"), engine("b"), engine("c"));
        local(&mut a, &sa, vec![kv("logs", "k", json!({"log": "a"}))], 1_000);
        local(&mut b, &sb, vec![kv("logs", "k", json!({"log": "b"}))], 1_001);
        local(&mut c, &sc, vec![kv("logs", "k", json!({"log": "c"}))], 1_002);
        // a hears b then c; c hears a then b: every arrival order, one result.
        sync(&sb, (&mut a, &sa), 1_003);
        sync(&sc, (&mut a, &sa), 1_003);
        sync(&sa, (&mut c, &sc), 1_003);
        sync(&sb, (&mut c, &sc), 1_003);
        sync(&sc, (&mut b, &sb), 1_003);
        sync(&sa, (&mut b, &sb), 1_003);
        let want = Some(json!({"log": "abc"}));
        assert_eq!(value(&sa, "logs", "k"), want);
        assert_eq!(value(&sb, "logs", "k"), want);
        assert_eq!(value(&sc, "logs", "k"), want);
        // A local update after seeing everything replaces the state.
        local(&mut b, &sb, vec![kv("logs", "k", json!({"log": "z"}))], 1_004);
        assert_eq!(value(&sb, "logs", "k"), Some(json!({"log": "z"})));
        assert_eq!(sb.conflicts().expect("log").len(), 2, "two handler merges, logged once each");
    }

    #[test]
    fn a_failing_handler_dead_letters_the_change_and_a_replay_applies_it_once() {
        let (sa, sb) = (MemStore::new(), MemStore::new());
        let (mut a, mut b) = (engine("a"), engine("b"));
        local(&mut a, &sa, vec![kv("logs", "k", json!({"log": "a"}))], 1_000);
        local(&mut b, &sb, vec![kv("logs", "k", json!({"log": "b!"}))], 1_001);
        let out = sync(&sb, (&mut a, &sa), 1_002);
        assert_eq!((out.applied, out.dead_letters), (1, 1), "admitted, so replication moves on");
        sync(&sa, (&mut b, &sb), 1_002);
        assert_eq!(value(&sa, "logs", "k"), Some(json!({"log": "a"})));
        assert_eq!(value(&sb, "logs", "k"), Some(json!({"log": "a"})));
        let letter = sa.dead_letters().expect("dlq");
        assert_eq!(letter.len(), 1);
        assert_eq!(sb.dead_letters().expect("dlq"), letter, "the same failure in every region");
        let id = letter[0].id.clone();

        // Both regions replay it concurrently: the content applies once, as a write that saw
        // the state (so it replaces it), and the letter clears everywhere.
        local(&mut a, &sa, vec![LocalOp::Replay { id: id.clone() }], 1_010);
        local(&mut b, &sb, vec![LocalOp::Replay { id: id.clone() }], 1_011);
        sync(&sa, (&mut b, &sb), 1_012);
        sync(&sb, (&mut a, &sa), 1_012);
        assert_eq!(value(&sa, "logs", "k"), value(&sb, "logs", "k"));
        assert!(sa.dead_letters().expect("dlq").is_empty() && sb.dead_letters().expect("dlq").is_empty());
        let mut p = a.begin(1_020);
        let again = a.apply_local(&mut p, &sa, vec![LocalOp::Replay { id }], 1_020);
        assert!(matches!(again, Err(LocalFailure::Rejected(Rejection::NoSuchDeadLetter(_)))));
    }

    /// `sync` as a session does it: markers to regions outside a change's placement, and a
    /// stream cut where this region holds only the marker of a change placed at the receiver.
    fn ship(from: &MemStore, to: (&mut Engine, &MemStore), now: u64) -> RemoteOutcome {
        let peer = to.0.local().clone();
        let sealer = to.0.policies().sealer.clone();
        let mut all = Vec::new();
        for origin in ["a", "b", "c"] {
            for lane in mrr_core::Lane::ALL {
                if r(origin) != peer {
                    let changes = changes_of(from, &Stream::new(r(origin), lane).to_string());
                    let shipped = placement::for_peer(&changes, &peer, &sealer);
                    all.extend(shipped.changes.into_iter().map(|c| c.into_owned()));
                }
            }
        }
        remote(to.0, to.1, all, now)
    }

    fn placed(regions: &[&str]) -> Metadata {
        Metadata { regions: regions.iter().map(|s| s.to_string()).collect(), sync_flags: vec![] }
    }

    fn put_in(topic: &str, id: &str, v: Value, regions: &[&str]) -> LocalOp {
        LocalOp::Put { key: Key::new(topic, id), value: v.to_string().into_bytes(), metadata: placed(regions) }
    }

    #[test]
    fn a_record_lives_only_where_it_is_placed_and_moves_when_its_placement_changes() {
        let (sa, sb, sc) = (MemStore::new(), MemStore::new(), MemStore::new());
        let (mut a, mut b, mut c) = (engine("a"), engine("b"), engine("c"));
        let vip = Key::new("users", "vip");
        local(&mut a, &sa, vec![put_in("users", "vip", json!({"tier": "gold"}), &["a", "b"])], 1_000);
        ship(&sa, (&mut b, &sb), 1_001);
        let out = ship(&sa, (&mut c, &sc), 1_001);
        assert_eq!(out.applied, 1, "c takes the marker");
        assert_eq!(value(&sb, "users", "vip"), Some(json!({"tier": "gold"})));
        let sealed = c.policies().sealer.seal(&vip);
        assert_eq!(sc.get(&vip).expect("get"), None, "c keeps nothing under the record's name");
        let stub = sc.get(&sealed).expect("get").expect("placement register");
        assert_eq!((stub.value, stub.metadata.regions.len()), (None, 2), "no content in c, only where it lives");
        assert_eq!(changes_of(&sc, "a")[0].op, Op::Marker, "c's changelog holds the marker, not the value");
        assert_eq!(changes_of(&sc, "a")[0].key, sealed, "under the sealed name");
        assert_eq!(c.applied().get(&Stream::normal(r("a"))), 1, "c's cursor moved past it");

        // c cannot write it: the record does not live there.
        let mut p = c.begin(1_002);
        let refused = c.apply_local(&mut p, &sc, vec![kv("users", "vip", json!({"tier": "x"}))], 1_002);
        assert!(matches!(refused, Err(LocalFailure::Rejected(Rejection::NotPlacedHere { .. }))), "{refused:?}");
        let mut p = c.begin(1_002);
        let refused = c.apply_local(&mut p, &sc, vec![put_in("users", "new", json!({}), &["a"])], 1_002);
        assert!(matches!(refused, Err(LocalFailure::Rejected(Rejection::NotPlacedHere { .. }))), "new, elsewhere");

        // b widens the placement to every region: c receives the record whole.
        local(&mut b, &sb, vec![put_in("users", "vip", json!({"tier": "platinum"}), &["*"])], 1_003);
        ship(&sb, (&mut c, &sc), 1_004);
        assert_eq!(value(&sc, "users", "vip"), Some(json!({"tier": "platinum"})));
        // a narrows it to itself (after seeing b's move): b's and c's copies go.
        ship(&sb, (&mut a, &sa), 1_005);
        local(&mut a, &sa, vec![put_in("users", "vip", json!({"tier": "platinum"}), &["a"])], 1_006);
        ship(&sa, (&mut b, &sb), 1_007);
        ship(&sa, (&mut c, &sc), 1_007);
        for (store, region) in [(&sb, "b"), (&sc, "c")] {
            assert_eq!(store.get(&vip).expect("get"), None, "{region} keeps nothing under the record's name");
            assert_eq!(store.unseal(&sealed).expect("unseal"), None, "{region} no longer indexes it");
            let r = store.get(&sealed).expect("get").expect("register");
            assert_eq!((r.value, r.metadata.regions.clone()), (None, vec!["a".to_owned()]), "{region}'s copy is gone");
        }
        assert_eq!(sa.unseal(&sealed).expect("unseal"), Some(vip.clone()), "a holds it, indexed");
        assert_eq!(sa.get(&sealed).expect("get"), None, "and keeps no register besides");
        assert_eq!(value(&sa, "users", "vip"), Some(json!({"tier": "platinum"})));
        // An older change that arrives late does not bring a copy back.
        let late = changes_of(&sb, "b");
        let mut p = c.begin(1_008);
        c.apply_remote(&mut p, &sc, late, 1_008).expect("apply");
        assert_eq!(value(&sc, "users", "vip"), None);
    }

    #[test]
    fn a_relay_outside_the_placement_never_stands_in_for_content() {
        let (sa, sc) = (MemStore::new(), MemStore::new());
        let (mut a, mut c) = (engine("a"), engine("c"));
        local(
            &mut a,
            &sa,
            vec![put_in("users", "x", json!({"n": 1}), &["a", "b"]), kv("users", "y", json!({}))],
            1_000,
        );
        ship(&sa, (&mut c, &sc), 1_001);
        // c holds a's stream as [marker, full]; relaying it to b must stop at the marker.
        let relayed = changes_of(&sc, "a");
        let to_b = placement::for_peer(&relayed, &r("b"), &c.policies().sealer);
        assert_eq!((to_b.changes.len(), to_b.held_at), (0, Some(1)));
    }

    /// A move and a write concurrent with it, under `merge` and `custom`: the region the move
    /// adds gets the write only as a marker, asks its origin for it, and ends with what the
    /// others hold; the region the move does not add keeps nothing.
    #[test]
    fn a_long_custom_history_moves_in_pieces_ahead_of_the_move_and_the_fold_continues() {
        let (sa, sb) = (MemStore::new(), MemStore::new());
        let (mut a, mut b) = (engine("a").with_carried_bytes_max(300), engine("b"));
        let key = Key::new("logs", "k");
        // Forty writes of logs/k in a alone: a fold history of forty entries.
        local(&mut a, &sa, vec![put_in("logs", "k", json!({"log": "0;"}), &["a"])], 1_000);
        for i in 1..40 {
            local(&mut a, &sa, vec![kv("logs", "k", json!({"log": format!("{i};")}))], 1_000 + i);
        }
        ship(&sa, (&mut b, &sb), 1_100);
        assert_eq!(value(&sb, "logs", "k"), None, "not placed in b");
        // The move to [a, b] sends the history ahead of itself in bounded pieces.
        local(&mut a, &sa, vec![put_in("logs", "k", json!({"log": "moved;"}), &["a", "b"])], 1_200);
        let log = changes_of(&sa, "a");
        let pieces: Vec<&Change> = log.iter().filter(|c| c.op == Op::History).collect();
        assert!(pieces.len() >= 5, "{} pieces", pieces.len());
        for p in &pieces {
            let bytes: usize = p.carried.iter().map(carried_size).sum();
            assert!(p.carried.len() == 1 || bytes <= 300, "a piece of {bytes} bytes");
            assert_eq!(p.metadata.regions, ["a", "b"]);
        }
        let mover = log.last().expect("the move");
        assert!(mover.moves && mover.carried.len() < 40, "the move carries only the last piece");
        let carried: usize = pieces.iter().map(|p| p.carried.len()).sum::<usize>() + mover.carried.len();
        assert_eq!(carried, 40, "every entry of the history, once");
        // b folds the pieces, then the move continues the fold: the same state as a.
        ship(&sa, (&mut b, &sb), 1_201);
        assert_eq!(value(&sb, "logs", "k"), value(&sa, "logs", "k"));
        let history = |s: &MemStore| {
            let first = Version { ts: Timestamp::new(0, 0), region: r("a") };
            s.history_from(&key, &first).expect("history").1.into_iter().map(|e| (e.id, e.after)).collect::<Vec<_>>()
        };
        assert_eq!(history(&sb), history(&sa), "b's fold history is a's, entry for entry");
        // A later write in b folds on top, and a sees the same.
        local(&mut b, &sb, vec![kv("logs", "k", json!({"log": "b;"}))], 1_300);
        ship(&sb, (&mut a, &sa), 1_301);
        assert_eq!(value(&sa, "logs", "k"), value(&sb, "logs", "k"));
    }

    #[test]
    fn merge_and_custom_records_move_and_the_moved_to_region_gets_concurrent_writes() {
        for (topic, first, by_a, by_b) in [
            ("profiles", json!({"name": "Kaito"}), json!({"tier": "gold"}), json!({"city": "Osaka"})),
            ("logs", json!({"log": "1;"}), json!({"log": "a;"}), json!({"log": "b;"})),
        ] {
            let (sa, sb, sc) = (MemStore::new(), MemStore::new(), MemStore::new());
            let (mut a, mut b, mut c) = (engine("a"), engine("b"), engine("c"));
            let key = Key::new(topic, "k");
            local(&mut a, &sa, vec![put_in(topic, "k", first, &["a", "b"])], 1_000);
            ship(&sa, (&mut b, &sb), 1_001);
            ship(&sa, (&mut c, &sc), 1_001);
            // a moves the record to every region while b, unaware, writes under [a, b].
            let moved = match topic {
                "profiles" => LocalOp::Patch {
                    key: key.clone(),
                    fields: by_a.to_string().into_bytes(),
                    metadata: Some(placed(&["a", "b", "c"])),
                },
                _ => put_in(topic, "k", by_a, &["a", "b", "c"]),
            };
            let out = local(&mut a, &sa, vec![moved], 1_002);
            assert!(out[0].record.lacking.is_empty());
            let concurrent = match topic {
                "profiles" => {
                    LocalOp::Patch { key: key.clone(), fields: by_b.to_string().into_bytes(), metadata: None }
                }
                _ => kv(topic, "k", by_b),
            };
            local(&mut b, &sb, vec![concurrent], 1_002);
            // c hears of b's write (a marker: b placed it in [a, b]) before a's move.
            ship(&sb, (&mut c, &sc), 1_003);
            assert_eq!(value(&sc, topic, "k"), None, "not placed in c yet");
            ship(&sa, (&mut c, &sc), 1_004);
            let held = sc.get(&key).expect("get").expect("record");
            assert_eq!(held.metadata.regions, ["a", "b", "c"]);
            assert_eq!(held.lacking.len(), 1, "b's write is lacking: {held:?}");
            let want = changes_of(&sc, "c");
            assert!(matches!(&want[0].op, Op::Want { ids } if ids[0].origin == r("b")), "{want:?}");
            ship(&sa, (&mut b, &sb), 1_005);
            ship(&sb, (&mut a, &sa), 1_005);
            // The want reaches b, whose transfer reaches c (and a marker of it reaches a).
            ship(&sc, (&mut b, &sb), 1_006);
            ship(&sc, (&mut a, &sa), 1_006);
            ship(&sb, (&mut c, &sc), 1_007);
            ship(&sb, (&mut a, &sa), 1_007);
            let (va, vb, vc) = (value(&sa, topic, "k"), value(&sb, topic, "k"), value(&sc, topic, "k"));
            assert!(va.is_some());
            assert_eq!((&va, &va), (&vb, &vc), "{topic}: all three converge");
            assert!(sc.get(&key).expect("get").expect("record").lacking.is_empty());
            let v = va.unwrap_or_default();
            match topic {
                "profiles" => assert_eq!(v, json!({"name": "Kaito", "tier": "gold", "city": "Osaka"})),
                _ => assert!(v["log"].as_str().is_some_and(|l| l.contains("a;") && l.contains("b;")), "{v}"),
            }
            // The transfer's marker kept nothing in a.
            assert!(changes_of(&sa, "b").iter().all(|c| c.op != Op::Transfer || c.carried.is_empty()));
        }
    }

    #[test]
    fn a_move_out_drops_the_copy_and_history_and_a_concurrent_write_does_not_undo_the_move() {
        let (sa, sb) = (MemStore::new(), MemStore::new());
        let (mut a, mut b) = (engine("a"), engine("b"));
        let logs = Key::new("logs", "l");
        local(&mut a, &sa, vec![put_in("logs", "l", json!({"log": "1;"}), &["a", "b"])], 1_000);
        ship(&sa, (&mut b, &sb), 1_001);
        // a moves the record to itself; b, unaware, writes later (a newer version).
        local(&mut a, &sa, vec![put_in("logs", "l", json!({"log": "2;"}), &["a"])], 1_002);
        local(&mut b, &sb, vec![kv("logs", "l", json!({"log": "3;"}))], 1_010);
        ship(&sa, (&mut b, &sb), 1_011);
        ship(&sb, (&mut a, &sa), 1_011);
        assert_eq!(value(&sb, "logs", "l"), None, "b's newer write keeps the placement it saw, and moves nothing");
        let first = Version { ts: Timestamp { wall_ms: 0, logical: 0 }, region: r("a") };
        assert_eq!(sb.history_from(&logs, &first).expect("history"), (None, vec![]), "no fold history in b");
        let v = value(&sa, "logs", "l").unwrap_or_default();
        // a's move saw 1 (an update); b's write is concurrent with it: the handler merges them.
        assert_eq!(v["log"], "2;3;", "a holds b's write");
    }

    fn collect(engine: &mut Engine, store: &MemStore, stable: &VersionVector) -> Collected {
        collect_to(engine, store, Collect::at(stable.clone()))
    }

    fn collect_to(engine: &mut Engine, store: &MemStore, collect: Collect) -> Collected {
        let mut p = engine.begin(2_000);
        let out = p.request(|p| engine.collect(p, store, &collect)).expect("collect");
        if let Some(batch) = engine.finish(p) {
            store.commit(&batch).expect("commit");
            engine.committed(&batch);
        }
        out
    }

    #[test]
    fn a_region_a_record_left_erases_its_content_once_no_region_needs_it() {
        let (sa, sb) = (MemStore::new(), MemStore::new());
        let (mut a, mut b) = (engine("a"), engine("b"));
        let key = Key::new("users", "k");
        local(&mut a, &sa, vec![put_in("users", "k", json!({"secret": 1}), &["a", "b"])], 1_000);
        local(&mut a, &sa, vec![kv("users", "k", json!({"secret": 2}))], 1_001);
        ship(&sa, (&mut b, &sb), 1_002);
        // b moves the record to itself only: a keeps its register, and a note of what its
        // changelog still holds (its own two writes, whole).
        local(&mut b, &sb, vec![put_in("users", "k", json!({"secret": 3}), &["b"])], 1_003);
        ship(&sb, (&mut a, &sa), 1_004);
        assert_eq!(value(&sa, "users", "k"), None);
        let sealed = a.policies().sealer.seal(&key);
        assert!(sa.departure(&sealed).expect("departure").is_some(), "the departure is noted");
        let whole = |s: &MemStore| changes_of(s, "a").iter().filter(|c| c.key == key).count();
        assert_eq!(whole(&sa), 2);

        // Before the move is in the stable point, nothing goes.
        let everything = sa.recover().expect("recover").vv;
        let before_move: VersionVector = [(Stream::normal(r("a")), 2)].into_iter().collect();
        let out = collect(&mut a, &sa, &before_move);
        assert_eq!((out.changes_erased, out.departures_left), (0, 1));
        assert_eq!(whole(&sa), 2);
        // The move is stable but a's second write is not (b may not have it yet): only the
        // first goes.
        let first_only: VersionVector =
            [(Stream::normal(r("a")), 1), (Stream::normal(r("b")), 1)].into_iter().collect();
        let out = collect(&mut a, &sa, &first_only);
        assert_eq!((out.changes_erased, out.departures_left), (1, 1));
        assert_eq!(whole(&sa), 1);
        // Everything is stable: the rest goes, as markers that keep their place in the chain.
        let sealer = a.policies().sealer.clone();
        let leaf = |c: &Change| mrr_core::provenance::leaf(c, &sealer);
        let leaves: Vec<_> = changes_of(&sa, "a").iter().map(leaf).collect();
        let out = collect(&mut a, &sa, &everything);
        assert_eq!((out.changes_erased, out.departures_done, out.departures_left), (1, 1, 0));
        assert_eq!(whole(&sa), 0);
        let erased = changes_of(&sa, "a");
        assert!(erased.iter().all(|c| !c.has_content() && seal::is_sealed(&c.key)), "{erased:?}");
        // Retention truncated the stream up to its last checkpoint: what is left is its tail.
        assert_eq!(erased.iter().map(leaf).collect::<Vec<_>>(), leaves[leaves.len() - erased.len()..]);
        assert_eq!(sa.departure(&sealed).expect("departure"), None, "the note goes with the last of it");
        assert_eq!(sa.recover().expect("recover").vv, everything, "erasing moves no vector");
    }

    #[test]
    fn a_write_moving_the_record_away_answers_with_the_record_not_a_delete() {
        for (topic, first, moved, want) in [
            ("users", json!({"n": 1}), json!({"n": 2}), json!({"n": 2})),
            ("profiles", json!({"n": 1}), json!({"m": 2}), json!({"n": 1, "m": 2})),
            ("logs", json!({"log": "1;"}), json!({"log": "2;"}), json!({"log": "2;"})),
        ] {
            let (sa, sb) = (MemStore::new(), MemStore::new());
            let (mut a, mut b) = (engine("a"), engine("b"));
            local(&mut a, &sa, vec![put_in(topic, "k", first, &["a", "b"])], 1_000);
            ship(&sa, (&mut b, &sb), 1_001);
            let op = match topic {
                // A merge write names only the fields it changes.
                "profiles" => LocalOp::Patch {
                    key: Key::new(topic, "k"),
                    fields: serde_json::to_vec(&moved).unwrap_or_default(),
                    metadata: Some(Metadata { regions: vec!["a".into()], sync_flags: vec![] }),
                },
                _ => put_in(topic, "k", moved, &["a"]),
            };
            let out = local(&mut b, &sb, vec![op], 1_002);
            let answered = &out[0].record;
            assert!(!answered.is_tombstone(), "{topic}: the answer reads as a delete");
            let answered_value: Value =
                serde_json::from_slice(answered.value.as_deref().unwrap_or(b"null")).unwrap_or(Value::Null);
            assert_eq!(answered_value, want, "{topic}");
            assert_eq!(answered.metadata.regions, ["a"], "{topic}");
            assert_eq!(value(&sb, topic, "k"), None, "{topic}: b keeps no copy");
            ship(&sb, (&mut a, &sa), 1_003);
            assert_eq!(value(&sa, topic, "k"), Some(want), "{topic}: a holds what b answered");
        }
    }

    #[test]
    fn a_move_is_refused_while_this_region_lacks_content() {
        let (sa, sb, sc) = (MemStore::new(), MemStore::new(), MemStore::new());
        let (mut a, mut b, mut c) = (engine("a"), engine("b"), engine("c"));
        local(&mut a, &sa, vec![put_in("profiles", "p", json!({"n": 1}), &["a", "b"])], 1_000);
        ship(&sa, (&mut b, &sb), 1_001);
        ship(&sa, (&mut c, &sc), 1_001);
        local(&mut a, &sa, vec![put_in("profiles", "p", json!({"n": 2}), &["a", "b", "c"])], 1_002);
        local(&mut b, &sb, vec![kv("profiles", "p", json!({"m": 1}))], 1_002);
        ship(&sb, (&mut c, &sc), 1_003);
        ship(&sa, (&mut c, &sc), 1_003);
        let mut p = c.begin(1_004);
        let moved = c.apply_local(&mut p, &sc, vec![put_in("profiles", "p", json!({}), &["c"])], 1_004);
        assert!(
            matches!(moved, Err(LocalFailure::Rejected(Rejection::PlacementPending { lacking: 1, .. }))),
            "{moved:?}"
        );
        // Writes that keep the placement are accepted meanwhile.
        local(&mut c, &sc, vec![kv("profiles", "p", json!({"n": 3}))], 1_005);
    }

    #[test]
    fn topic_default_regions_apply_to_writes_that_name_none() {
        let placement = mrr_core::PlacementDefaults {
            default: vec![],
            topics: [("vips".to_owned(), vec!["a".to_owned(), "b".to_owned()])].into_iter().collect(),
        };
        let policies = Arc::new(Policies::default().with_placement(placement));
        let mut a = Engine::new(r("a"), RecoveredState::default(), 200, policies);
        let sa = MemStore::new();
        let out = local(&mut a, &sa, vec![kv("vips", "v", json!({})), kv("users", "u", json!({}))], 1_000);
        assert_eq!(out[0].record.metadata.regions, ["a", "b"]);
        assert!(out[1].record.metadata.regions.is_empty(), "other topics: everywhere");
        // A patch naming flags only, or a put naming no regions, keeps the record's placement.
        let flags = LocalOp::Patch {
            key: Key::new("vips", "v"),
            fields: b"{}".to_vec(),
            metadata: Some(Metadata { regions: vec![], sync_flags: vec!["IMPORTANT".into()] }),
        };
        let moved = put_in("users", "u", json!({}), &["a"]);
        let out = local(&mut a, &sa, vec![flags, moved, kv("users", "u", json!({"v": 2}))], 1_001);
        assert_eq!(out[0].record.metadata.regions, ["a", "b"]);
        assert_eq!(out[2].record.metadata.regions, ["a"], "a put without regions does not spread the record");
    }

    #[test]
    fn rights_and_asks_travel_on_the_urgent_lane() {
        let policies = Arc::new(
            Policies::new(Rule::Timestamp, [("tickets".to_owned(), Rule::Merge)].into_iter().collect()).with_bounded(
                [("tickets".to_owned(), [("available".to_owned(), 0)].into_iter().collect())].into_iter().collect(),
            ),
        );
        let (sa, sb) = (MemStore::new(), MemStore::new());
        let mut a = Engine::new(r("a"), RecoveredState::default(), 200, policies.clone());
        let mut b = Engine::new(r("b"), RecoveredState::default(), 200, policies);
        let key = Key::new("tickets", "t1");
        let incr =
            |by: i64| LocalOp::Ops { key: key.clone(), ops: vec![FieldOp::Incr { field: "available".into(), by }] };
        // One group: its requests, then the tending the group builder runs at its end.
        let group = |e: &mut Engine, store: &MemStore, ops: Vec<LocalOp>, now: u64| {
            let mut p = e.begin(now);
            let out = e.apply_local(&mut p, store, ops, now);
            if e.escrow_due(now) {
                e.tend_escrow(&mut p, store).expect("tend");
            }
            if let Some(batch) = e.finish(p) {
                store.commit(&batch).expect("commit");
                e.committed(&batch);
            }
            out
        };
        group(&mut a, &sa, vec![incr(10)], 1_000).expect("a stocks 10");
        ship(&sa, (&mut b, &sb), 1_001);
        assert!(
            matches!(group(&mut b, &sb, vec![incr(-1)], 1_002), Err(LocalFailure::Rejected(_))),
            "b holds no rights"
        );
        // b's ask went out on its urgent stream, not behind the record's normal-lane writes.
        assert_eq!(changes_of(&sb, "b.urgent").len(), 1, "the ask");
        assert!(changes_of(&sb, "b").is_empty());
        ship(&sb, (&mut a, &sa), 1_003);
        group(&mut a, &sa, vec![], 1_004).expect("a tends");
        assert_eq!(changes_of(&sa, "a.urgent").len(), 1, "a's answer, a transfer");
        ship(&sa, (&mut b, &sb), 1_005);
        group(&mut b, &sb, vec![incr(-1)], 1_006).expect("b sells against the rights it was given");
    }

    fn vv_of(entries: &[(&str, u64)]) -> VersionVector {
        entries.iter().map(|(s, n)| (Stream::parse(s).expect("stream"), *n)).collect()
    }

    #[test]
    fn retention_truncates_the_changelog_and_collects_tombstones_below_the_stable_point() {
        let (sa, sb) = (MemStore::new(), MemStore::new());
        let (mut a, mut b) = (engine("a"), engine("b"));
        for i in 1..=5 {
            local(&mut a, &sa, vec![kv("users", &format!("k{i}"), json!({"n": i}))], 1_000 + i);
        }
        let k1 = Key::new("users", "k1");
        local(&mut a, &sa, vec![LocalOp::Delete { key: k1.clone() }], 1_006);
        ship(&sa, (&mut b, &sb), 1_007);
        let seqs = |s: &MemStore| changes_of(s, "a").iter().map(|c| c.seq).collect::<Vec<_>>();

        // Below the point, up to the last checkpoint in it (every group ends at one): the
        // entries before it go, in a's own changelog and in b's copy alike.
        let out = collect(&mut a, &sa, &vv_of(&[("a", 4)]));
        assert_eq!((out.changes_truncated, out.tombstones_collected), (3, 0));
        assert_eq!(seqs(&sa), vec![4, 5, 6]);
        assert_eq!(sa.log_floors().expect("floors"), vv_of(&[("a", 3)]));
        collect(&mut b, &sb, &vv_of(&[("a", 4)]));
        assert_eq!(seqs(&sb), vec![4, 5, 6]);
        assert_eq!(sa.recover().expect("recover").vv, vv_of(&[("a", 6)]), "truncation moves no vector");
        assert!(sa.get(&k1).expect("get").is_some_and(|r| r.is_tombstone()), "the delete is above the point");

        // Everything stable: the tombstone goes too (with nothing else), while tombstones are
        // collected (`retention::COLLECT_TOMBSTONES`).
        let collects = u64::from(retention::COLLECT_TOMBSTONES);
        let out = collect(&mut a, &sa, &vv_of(&[("a", 6)]));
        assert_eq!((out.changes_truncated, out.tombstones_collected), (2, collects));
        assert_eq!(seqs(&sa), vec![6]);
        assert_eq!(sa.get(&k1).expect("get").is_none(), retention::COLLECT_TOMBSTONES);
        assert_eq!(value(&sa, "users", "k2"), Some(json!({"n": 2})), "live records stay");
        let out = collect(&mut a, &sa, &vv_of(&[("a", 6)]));
        assert_eq!((out.changes_truncated, out.tombstones_collected, out.more), (0, 0, false), "nothing left");

        // b, which still holds the tombstone, writes the key again: a creation everywhere, so
        // a (which holds nothing of it) and b agree on the move that placed it.
        local(&mut b, &sb, vec![kv("users", "k1", json!({"back": true}))], 1_010);
        ship(&sb, (&mut a, &sa), 1_011);
        let (ra, rb) = (sa.get(&k1).expect("get"), sb.get(&k1).expect("get"));
        assert!(ra.is_some() && ra == rb, "{ra:?} vs {rb:?}");
        assert!(ra.is_some_and(|r| r.placed_by.is_some()) || !retention::COLLECT_TOMBSTONES);
    }

    #[test]
    fn an_own_write_is_kept_while_the_move_placing_its_record_is_above_the_point() {
        let sa = MemStore::new();
        let mut a = engine("a");
        local(&mut a, &sa, vec![put_in("users", "k", json!({"n": 1}), &["a"])], 1_000);
        local(&mut a, &sa, vec![kv("users", "other", json!({"n": 2}))], 1_001);
        // A move that places the record in b too: b, which got the first write as a marker,
        // will ask a for its content.
        local(&mut a, &sa, vec![put_in("users", "k", json!({"n": 1}), &["a", "b"])], 1_002);
        let seqs = || changes_of(&sa, "a").iter().map(|c| c.seq).collect::<Vec<_>>();
        let out = collect(&mut a, &sa, &vv_of(&[("a", 2)]));
        assert_eq!(out.changes_truncated, 0, "the first write may still be wanted");
        assert_eq!(seqs(), vec![1, 2, 3]);
        // Once the move is below the point, every region that could lack it has asked.
        let out = collect(&mut a, &sa, &vv_of(&[("a", 3)]));
        assert_eq!(out.changes_truncated, 2);
        assert_eq!(seqs(), vec![3]);
    }

    #[test]
    fn past_the_stable_point_the_truncation_point_keeps_only_own_writes_not_placed_everywhere() {
        let (sa, sb) = (MemStore::new(), MemStore::new());
        let (mut a, mut b) = (engine("a"), engine("b"));
        for i in 1..=4 {
            local(&mut a, &sa, vec![kv("users", &format!("k{i}"), json!({"n": i}))], 1_000 + i);
        }
        local(&mut a, &sa, vec![put_in("users", "p", json!({"n": 5}), &["a"])], 1_005);
        local(&mut a, &sa, vec![kv("users", "k6", json!({"n": 6}))], 1_006);
        ship(&sa, (&mut b, &sb), 1_007);
        let seqs = |s: &MemStore| changes_of(s, "a").iter().map(|c| c.seq).collect::<Vec<_>>();
        // A lagging member holds the stable point at nothing; the others have everything.
        let lagging = Collect { stable: VersionVector::new(), truncate: vv_of(&[("a", 6)]) };
        let out = collect_to(&mut b, &sb, lagging.clone());
        assert_eq!(out.changes_truncated, 5, "b truncates a's stream up to its last checkpoint");
        assert_eq!(seqs(&sb), vec![6]);
        let out = collect_to(&mut a, &sa, lagging);
        assert_eq!(out.changes_truncated, 3, "a keeps its write of a placed record, and what follows it");
        assert_eq!(seqs(&sa), vec![4, 5, 6]);
        // Once the stable point has it, the write goes.
        let out = collect(&mut a, &sa, &vv_of(&[("a", 6)]));
        assert_eq!(out.changes_truncated, 2);
        assert_eq!(seqs(&sa), vec![6]);
    }

    /// A snapshot of `donor`'s store for `receiver`, installed into a fresh store in chunks of
    /// `records_max` records; the receiver's engine restarts on it.
    fn bootstrap(donor: &MemStore, receiver: &str, records_max: usize) -> (Engine, MemStore) {
        use crate::snapshot;
        let sealer = policies().sealer.clone();
        let view = donor.view().expect("view");
        let header = snapshot::header(&*view, &r(receiver), &sealer).expect("header");
        let store = MemStore::new();
        let mut after = None;
        loop {
            let chunk =
                snapshot::chunk(&*view, &r(receiver), &sealer, after.as_ref(), records_max, u64::MAX).expect("chunk");
            let done = chunk.done;
            after = chunk.last.clone().or(after);
            store
                .commit(&snapshot::chunk_batch(chunk, &header, &r("donor"), 1, &r(receiver), &sealer))
                .expect("commit");
            if done {
                break;
            }
        }
        store.commit(&snapshot::end_batch(&header, &r(receiver), &sealer, None, 0)).expect("commit");
        let engine = Engine::new(r(receiver), store.recover().expect("recover"), 200, policies());
        (engine, store)
    }

    #[test]
    fn a_wiped_region_installs_a_snapshot_and_carries_on_where_its_peers_are() {
        let (sa, sb, sc) = (MemStore::new(), MemStore::new(), MemStore::new());
        let (mut a, mut b, mut c) = (engine("a"), engine("b"), engine("c"));
        for i in 1..=5 {
            local(&mut a, &sa, vec![kv("users", &format!("k{i}"), json!({"n": i}))], 1_000 + i);
        }
        local(&mut a, &sa, vec![put_in("users", "mine", json!({"only": "a"}), &["a", "b"])], 1_010);
        local(&mut a, &sa, vec![kv("logs", "l1", json!({"line": 1})), kv("logs", "l1", json!({"line": 2}))], 1_011);
        // c writes, in two groups; b holds all of it, and a only its first group: b is the
        // donor that knows where c's streams are.
        local(&mut c, &sc, vec![kv("users", "c1", json!({"by": "c"}))], 1_012);
        ship(&sc, (&mut a, &sa), 1_013);
        local(&mut c, &sc, vec![kv("users", "c2", json!({"by": "c"})), kv("users", "c3", json!({}))], 1_014);
        ship(&sa, (&mut b, &sb), 1_015);
        // b has c's stream up to 2, inside c's second group (whose checkpoint is on 3): c's
        // chain must go on from the link after 2, which no checkpoint b holds names.
        let c_log = changes_of(&sc, "c");
        remote(&mut b, &sb, c_log[..2].to_vec(), 1_016);
        assert!(c_log[1].proof.checkpoint.is_none());
        let sealer = c.policies().sealer.clone();
        let link_after_2 = mrr_core::provenance::link(
            &c_log[0].proof.checkpoint.as_ref().expect("a group ends at a checkpoint").link,
            &mrr_core::provenance::leaf(&c_log[1], &sealer),
        );
        // Retention truncates b's log: c cannot catch up from it.
        let everything = b.applied().clone();
        collect(&mut b, &sb, &everything);
        assert!(!sb.log_floors().expect("floors").is_empty());

        // c's directory is wiped: it installs b's snapshot, two records per chunk.
        drop(sc);
        let (mut c, sc) = bootstrap(&sb, "c", 2);
        assert_eq!(c.applied(), b.applied(), "c's vector is the snapshot's");
        assert_eq!(sc.bootstrap_mark().expect("mark"), Some(mrr_storage::BootstrapMark::Done));
        for id in ["k1", "k5", "c1", "c2"] {
            assert_eq!(
                sc.get(&Key::new("users", id)).expect("get"),
                sb.get(&Key::new("users", id)).expect("get"),
                "{id}"
            );
        }
        let l1 = Key::new("logs", "l1");
        assert_eq!(sc.get(&l1).expect("get"), sb.get(&l1).expect("get"));
        let fold = |s: &MemStore| s.view().expect("view").history(&l1).expect("history");
        assert_eq!(fold(&sc), fold(&sb), "a custom record comes with its fold history");
        // Placement holds: a record not placed in c arrives as its register, sealed.
        let mine = Key::new("users", "mine");
        let sealed = c.policies().sealer.seal(&mine);
        assert_eq!(sc.get(&mine).expect("get"), None);
        let register = sc.get(&sealed).expect("get").expect("register");
        assert_eq!((register.value, register.metadata.regions.len()), (None, 2));
        assert_eq!(sc.unseal(&sealed).expect("unseal"), None, "not held: not in the sealed index");
        assert_eq!(
            sc.unseal(&c.policies().sealer.seal(&Key::new("users", "k1"))).expect("unseal").map(|k| k.id),
            Some("k1".into())
        );

        // c writes again: its stream goes on after what its peers hold (not from 1; the write
        // that reached no peer went with the wipe), chained from where b's changelog left it.
        let head = changes_of(&sc, "c").last().and_then(|c| c.proof.checkpoint.clone()).expect("own chain head");
        assert_eq!(head.link, link_after_2);
        let out = local(&mut c, &sc, vec![kv("users", "c4", json!({"after": "wipe"}))], 1_020);
        assert_eq!(out[0].record.seq, 3);
        // (What c holds of its own stream up to the snapshot are anchors, markers: a sender
        // reads after what the peer has, never those.)
        let before = b.applied().get(&Stream::normal(r("c")));
        let after = sc.changes_after(&Stream::normal(r("c")), before, 10).expect("changes");
        let applied = remote(&mut b, &sb, after, 1_021);
        assert_eq!((applied.applied, applied.refused), (1, None));
        assert_eq!(b.applied().get(&Stream::normal(r("c"))), before + 1);
        assert_eq!(value(&sb, "users", "c4"), Some(json!({"after": "wipe"})));
        assert_eq!(c.applied(), b.applied());
    }

    #[test]
    fn a_donor_holding_only_the_register_of_a_record_placed_in_the_receiver_refuses() {
        let (sa, sb) = (MemStore::new(), MemStore::new());
        let (mut a, mut b) = (engine("a"), engine("b"));
        local(&mut a, &sa, vec![put_in("users", "mine", json!({"only": "a"}), &["a"])], 1_000);
        ship(&sa, (&mut b, &sb), 1_001);
        let view = sb.view().expect("view");
        let err = crate::snapshot::chunk(&*view, &r("a"), &b.policies().sealer, None, 10, u64::MAX)
            .expect_err("b cannot serve a record placed in a");
        assert!(err.to_string().contains("holds only its placement register"), "{err}");
        // Any other receiver is served: the register is all it may have.
        assert!(crate::snapshot::chunk(&*view, &r("c"), &b.policies().sealer, None, 10, u64::MAX).is_ok());
    }
}
