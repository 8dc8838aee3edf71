//! MRR storage: where records, the changelog, the version vector and peer cursors live.
//!
//! [`Store`] is the seam: the writer commits through it, replication tails the changelog
//! through it, the API reads through it. [`FjallStore`] is the production implementation;
//! [`MemStore`] serves the simulator and tests. Both pass the same [`conformance`] suite.
//!
//! A commit is one atomic batch: a crash leaves either all of a commit or none of it. This crate
//! knows nothing about networks, merge rules or Raft; it stores what it is given.

pub mod conformance;
mod encoding;
pub mod faults;
mod fjall_store;
pub mod log;
mod mem_store;

use mrr_core::fold::FoldEntry;
use mrr_core::{Change, ChangeId, ConflictEntry, DeadLetter, Key, Record, Stream, Timestamp, Version, VersionVector};

pub use fjall_store::FjallStore;
pub use mem_store::MemStore;

/// When a commit is acknowledged relative to the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// fsync before a commit returns: an acknowledged write survives power loss.
    #[default]
    Fsync,
    /// The OS flushes when it likes: a crash of the machine (not just the process) may lose the
    /// last acknowledged writes.
    Buffered,
}

/// Everything one group commit changes, applied atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitBatch {
    pub records: Vec<(Key, Record)>,
    /// Record entries that go: a record that left this region's placement leaves its clear
    /// name, one placed here again its sealed name ([`mrr_core::seal`]). Never also in
    /// `records`.
    pub records_removed: Vec<Key>,
    /// The sealed-name index of the records this region holds: `(sealed, Some(clear))` when a
    /// record comes to be held here, `(sealed, None)` when it leaves.
    pub sealed_index: Vec<(Key, Option<Key>)>,
    pub changes: Vec<Change>,
    /// Changelog entries replaced where they stand, without moving any vector: content a
    /// move-out left behind, become its marker ([`mrr_core::placement::Departure`]).
    pub rewritten: Vec<Change>,
    /// Changelog entries that go (retention below the stable point): per stream, every entry
    /// up to and including the given sequence, which becomes the stream's log floor
    /// ([`Store::log_floors`]). Never covers an entry of `changes` or `rewritten`.
    pub log_truncated: VersionVector,
    /// Records that left this region while its logs still name them, by sealed name: noted,
    /// updated, or gone (`None`) once erased.
    pub departures: Vec<(Key, Option<mrr_core::placement::Departure>)>,
    /// New values of the version-vector entries this commit advanced.
    pub vv: VersionVector,
    /// The highest HLC timestamp issued or observed, so a restart never reissues one.
    pub hlc_high_water: Timestamp,
    /// Fold entries of `custom` keys, inserted or rewritten by a (re-)fold.
    pub history: Vec<(Key, FoldEntry)>,
    /// `custom` keys whose whole fold history goes (the key left this region's placement),
    /// before `history` is written: entries of `history` for these keys are the new history.
    pub histories_dropped: Vec<Key>,
    /// Conflict-log entries to add (or overwrite: one per loser and winner).
    pub conflicts: Vec<ConflictEntry>,
    /// Conflict-log entries that go (a record that left this region), by
    /// [`ConflictEntry::ident`]. Never also in `conflicts`.
    pub conflicts_removed: Vec<(ChangeId, ChangeId)>,
    pub dead_letters: Vec<DeadLetter>,
    /// Dead letters that no longer apply: replayed, discarded, or applied by a re-fold.
    pub dead_letters_cleared: Vec<ChangeId>,
    /// The strong tier's applied position (opaque to this crate), committed with the writes
    /// it made so that the two never part: a restart resumes the log exactly after them.
    pub strong_position: Option<Vec<u8>>,
    /// Strong requests applied, by request id (opaque answers), so a retry applies once.
    pub strong_requests: Vec<(String, Vec<u8>)>,
    /// Every effect of this batch applies entries of the strong tier's log, which is fsynced
    /// on its own and replayed from [`Self::strong_position`] after a restart. The store then
    /// writes it without an fsync (it reaches the disk with the next durable commit): a crash
    /// takes it back whole, to a position the log replays from, never in part. The log must
    /// keep every entry after the last position that reached the disk (see `mrr-consensus`).
    pub from_strong_log: bool,
    /// Persist before returning, whatever the durability mode: the batch holds this region's
    /// own changes to bounded fields (escrow decrements and transfers), which must never be
    /// forgotten once a buyer was told or a peer may count on them — a forgotten decrement
    /// would sell its units twice.
    pub must_sync: bool,
    /// Where a snapshot bootstrap of this store stands ([`Store::bootstrap_mark`]), written
    /// with the records it installed so that the two never part.
    pub bootstrap: Option<BootstrapMark>,
    /// Written without an fsync whatever the durability mode: what it holds can be fetched
    /// again (a chunk of a snapshot install, whose mark a crash takes back with it; the
    /// install's last commit is synced). Never with `must_sync`.
    pub unsynced: bool,
}

impl CommitBatch {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.records_removed.is_empty()
            && self.sealed_index.is_empty()
            && self.changes.is_empty()
            && self.rewritten.is_empty()
            && self.log_truncated.is_empty()
            && self.departures.is_empty()
            && self.conflicts_removed.is_empty()
            && self.history.is_empty()
            && self.histories_dropped.is_empty()
            && self.conflicts.is_empty()
            && self.dead_letters.is_empty()
            && self.dead_letters_cleared.is_empty()
            && self.strong_position.is_none()
            && self.strong_requests.is_empty()
            && self.bootstrap.is_none()
    }
}

/// Where a region's data directory stands with respect to a snapshot bootstrap
/// (`mrr_replication::bootstrap`). A directory with neither mark and no data was never
/// started: it must learn its own streams' positions from its peers before it writes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BootstrapMark {
    /// Installing the snapshot `snapshot` of `donor`: every record of it up to and including
    /// `after` (the donor's key order) is in this store. What is installed is not served.
    Installing { donor: String, snapshot: u64, after: Option<Key> },
    /// This region knows its own position: it started fresh, or finished installing, as an
    /// original member of the cluster (incarnation 0).
    Done,
    /// As `Done`, for a region the membership admitted at epoch `incarnation`
    /// (`mrr_core::membership`): its handshakes name it, so a copy of an earlier incarnation
    /// is told apart.
    Member { incarnation: u64 },
}

impl BootstrapMark {
    /// The mark of a finished bootstrap into `incarnation`.
    pub fn done(incarnation: u64) -> Self {
        if incarnation == 0 {
            BootstrapMark::Done
        } else {
            BootstrapMark::Member { incarnation }
        }
    }

    /// The incarnation of a finished bootstrap; `None` while installing.
    pub fn incarnation(&self) -> Option<u64> {
        match self {
            BootstrapMark::Installing { .. } => None,
            BootstrapMark::Done => Some(0),
            BootstrapMark::Member { incarnation } => Some(*incarnation),
        }
    }
}

/// A consistent read-only view of a store at one instant: what a snapshot bootstrap streams
/// from a donor while the donor keeps committing. Reads see nothing committed after the view
/// was taken.
pub trait StoreView: Send + Sync {
    /// The version vector, HLC high water and chain heads as of the view.
    fn recover(&self) -> Result<RecoveredState>;

    fn log_floors(&self) -> Result<VersionVector>;

    /// As [`Store::get`].
    fn get(&self, key: &Key) -> Result<Option<Record>>;

    /// As [`Store::records_after`].
    fn records_after(&self, after: Option<&Key>, limit: usize) -> Result<Vec<(Key, Record)>>;

    /// Every fold entry of `key` (a `custom` record), in version order.
    fn history(&self, key: &Key) -> Result<Vec<FoldEntry>>;

    /// As [`Store::changes_within`].
    fn changes_within(&self, stream: &Stream, after_seq: u64, limit: usize, bytes_max: u64) -> Result<Vec<Change>>;

    /// As [`Store::certificate`].
    fn certificate(&self, fingerprint: &[u8; 32]) -> Result<Option<Vec<u8>>>;
}

/// The record of `key` in a store: under its name when held here, else its placement register
/// under its sealed name ([`mrr_core::seal`]); `None` when this region knows nothing of it.
pub fn record_of(store: &dyn Store, sealer: &mrr_core::Sealer, key: &Key) -> Result<Option<Record>> {
    match store.get(key)? {
        Some(held) => Ok(Some(held)),
        None => store.get(&sealer.seal(key)),
    }
}

/// A position in the conflict log's detection order: the entry a page ended with.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConflictCursor {
    pub detected_at_ms: u64,
    pub ident: (ChangeId, ChangeId),
}

impl ConflictCursor {
    pub fn of(entry: &ConflictEntry) -> Self {
        Self { detected_at_ms: entry.detected_at_ms, ident: entry.ident() }
    }

    /// `<detected_at_ms>.<loser id>.<winner id>`, as the API hands it out.
    pub fn encode(&self) -> String {
        format!("{}.{}.{}", self.detected_at_ms, self.ident.0, self.ident.1)
    }

    pub fn decode(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, '.');
        let detected_at_ms = parts.next()?.parse().ok()?;
        // Change ids may hold dots (`us-west.urgent-3`); the loser's ends at its `-<seq>`.
        let rest = parts.collect::<Vec<_>>().join(".");
        let split = rest
            .char_indices()
            .filter(|(_, c)| *c == '.')
            .map(|(i, _)| i)
            .find(|&i| ChangeId::parse(&rest[..i]).is_some() && ChangeId::parse(&rest[i + 1..]).is_some())?;
        let ident = (ChangeId::parse(&rest[..split])?, ChangeId::parse(&rest[split + 1..])?);
        Some(Self { detected_at_ms, ident })
    }
}

/// The size of what a store holds ([`Store::footprint`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    pub changelog_entries: u64,
    pub changelog_bytes: u64,
    pub fold_entries: u64,
    pub records: u64,
}

/// What a node needs from disk to resume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveredState {
    pub vv: VersionVector,
    pub hlc_high_water: Timestamp,
    /// As last committed in [`CommitBatch::strong_position`].
    pub strong_position: Option<Vec<u8>>,
    /// Per stream, the sequence and chain link of its last change when that change carries a
    /// checkpoint ([`mrr_core::provenance`]): where the writer continues its own streams' chains.
    pub chain_heads: std::collections::BTreeMap<Stream, (u64, mrr_core::provenance::Digest)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage engine: {0}")]
    Engine(#[from] fjall::Error),
    #[error("corrupt {what} at key {key:?}: {reason}")]
    Corrupt { what: &'static str, key: Vec<u8>, reason: String },
    /// The operating system refused a read or write.
    #[error("storage {op} failed: {source}")]
    Io { op: &'static str, source: std::io::Error },
    /// The directory's sealed names were made with another sealer than the config's. Fatal at
    /// start-up: with it, every register here would be lost to lookups.
    #[error("the data directory's sealed names were made with placement secret {found}, the config gives {configured}: set `placement_secret:` to the secret this region was first started with (its `secret` then)")]
    SealerChanged { found: String, configured: String },
    /// The directory holds data in a format this release does not read. Fatal at start-up.
    #[error("the data directory holds storage format {found}, this release reads format {expected}: run the release that wrote it, or move the directory aside and restart; an empty region catches up from its peers' changelogs only while they still hold all of it (retention truncates what every region has durably applied), else its peers report that it needs a snapshot bootstrap")]
    Format { found: u32, expected: u32 },
}

/// The layout and encoding of stored records and changes. Bumped when an existing directory
/// could no longer be read: 2 added each change's causal past and the merge document; 3 split
/// each origin's changelog and version-vector entry into priority lanes; 4 added the move that
/// placed a record, the changes it lacks, and moves, wants and transfers in the changelog; 5 the
/// escrow counters of bounded fields in the merge document; 6 keeps what is not placed here
/// under sealed names only, with the `sealed` index of held records; 7 stores each change's
/// proof of origin (content digest, checkpoint) and the certificates of checkpoint signers.
/// (Departure notes came later without a bump: a directory from before has none, so what
/// records left behind before the upgrade stays until retention trims it.)
pub const STORAGE_FORMAT: u32 = 7;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The storage seam. Implementations are internally synchronised; `commit` is called by one
/// writer at a time, reads from anywhere.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &Key) -> Result<Option<Record>>;

    /// The clear name of a record held here, from its sealed name (`None`: not held here).
    fn unseal(&self, sealed: &Key) -> Result<Option<Key>>;

    /// Records of `topic` in id order, starting after `after_id`, tombstones included; never
    /// an entry under a sealed name (those name nothing a client could list).
    fn scan(&self, topic: &str, after_id: Option<&str>, limit: usize) -> Result<Vec<(Key, Record)>>;

    /// Changes of `stream` with `seq > after_seq`, in sequence order, at most `limit`, stopping
    /// before the change that would take the stored size of those read past `bytes_max`; the
    /// first change is always read (a change larger than the bound travels alone). Sizes
    /// replication batches by bytes, not count.
    fn changes_within(&self, stream: &Stream, after_seq: u64, limit: usize, bytes_max: u64) -> Result<Vec<Change>>;

    /// Changes of `stream` with `seq > after_seq`, in sequence order, at most `limit`.
    fn changes_after(&self, stream: &Stream, after_seq: u64, limit: usize) -> Result<Vec<Change>> {
        self.changes_within(stream, after_seq, limit, u64::MAX)
    }

    fn recover(&self) -> Result<RecoveredState>;

    /// Applies `batch` atomically and, under [`Durability::Fsync`], durably.
    fn commit(&self, batch: &CommitBatch) -> Result<()>;

    /// Makes every commit so far durable (fsync). Under [`Durability::Fsync`] commits already are.
    fn persist(&self) -> Result<()>;

    /// The fold history of a `custom` key around `version`: the last entry before it, and every
    /// entry at or after it, in version order.
    fn history_from(&self, key: &Key, version: &Version) -> Result<(Option<FoldEntry>, Vec<FoldEntry>)>;

    /// One fold entry.
    fn history_entry(&self, key: &Key, version: &Version) -> Result<Option<FoldEntry>>;

    /// Conflict-log entries in detection order (`detected_at_ms`, then ident): from `since_ms`
    /// on, or strictly after `after` when given; at most `limit`. Served from a time index,
    /// so a page costs the same however long the log is.
    fn conflicts_after(
        &self,
        since_ms: u64,
        after: Option<&ConflictCursor>,
        limit: usize,
    ) -> Result<Vec<ConflictEntry>>;

    /// Entries in the conflict log, kept as a count (never a scan).
    fn conflict_count(&self) -> u64;

    /// Drops conflict-log entries (retention), by [`ConflictEntry::ident`]. Outside the writer's
    /// commits, and serialised with them, so counts and indexes stay exact.
    fn expire_conflicts(&self, idents: &[(ChangeId, ChangeId)]) -> Result<()>;

    /// Dead letters in id order, strictly after `after`; at most `limit`.
    fn dead_letters_after(&self, after: Option<&ChangeId>, limit: usize) -> Result<Vec<DeadLetter>>;

    /// Letters in the dead-letter queue, kept as a count (never a scan).
    fn dead_letter_count(&self) -> u64;

    /// When the oldest dead letter first failed (from a time index).
    fn oldest_dead_letter_ms(&self) -> Result<Option<u64>>;

    /// The whole conflict log, oldest first. For tests and tools: it reads every entry.
    fn conflicts(&self) -> Result<Vec<ConflictEntry>> {
        self.conflicts_after(0, None, usize::MAX)
    }

    /// Every dead letter, in id order. For tests and tools: it reads every letter.
    fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.dead_letters_after(None, usize::MAX)
    }

    fn dead_letter(&self, id: &ChangeId) -> Result<Option<DeadLetter>>;

    /// The answer stored for a strong request id ([`CommitBatch::strong_requests`]).
    fn strong_request(&self, request_id: &str) -> Result<Option<Vec<u8>>>;

    /// Removes a dead letter from this region's queue (an operator's discard).
    fn discard_dead_letter(&self, id: &ChangeId) -> Result<()>;

    /// Bytes on disk (0 for memory).
    fn disk_bytes(&self) -> u64;

    /// What the store holds, for metrics: approximate where counting would mean a scan.
    fn footprint(&self) -> Footprint;

    /// Per stream, the last sequence retention removed from the changelog: entries up to it
    /// are gone ([`CommitBatch::log_truncated`]); a stream not named was never truncated.
    fn log_floors(&self) -> Result<VersionVector>;

    /// Records in key order strictly after `after`, under clear and sealed names alike, at
    /// most `limit`: retention's sweep for what it may collect.
    fn records_after(&self, after: Option<&Key>, limit: usize) -> Result<Vec<(Key, Record)>>;

    /// A checkpoint signer's certificate (DER) by its fingerprint, kept so that changes it
    /// signed can be relayed with it ([`mrr_core::provenance`]).
    fn certificate(&self, fingerprint: &[u8; 32]) -> Result<Option<Vec<u8>>>;

    /// A departed record's note, by the record's sealed name.
    fn departure(&self, sealed: &Key) -> Result<Option<mrr_core::placement::Departure>>;

    /// Every departed record's note, by sealed name. Departures are few (records moved away
    /// from here whose logs are not erased yet).
    fn departures(&self) -> Result<Vec<(Key, mrr_core::placement::Departure)>>;

    /// The stable point last persisted ([`mrr_core::stability`]); empty when none was.
    fn stable_point(&self) -> Result<VersionVector>;

    /// Persists the stable point (it only grows; durable with the next durable commit).
    fn set_stable_point(&self, stable: &VersionVector) -> Result<()>;

    /// A consistent view of the store as of now ([`StoreView`]). It holds old versions of what
    /// later commits overwrite until dropped: hold it for a bounded time.
    fn view(&self) -> Result<std::sync::Arc<dyn StoreView>>;

    /// Where a snapshot bootstrap of this store stands; `None` when none was marked.
    fn bootstrap_mark(&self) -> Result<Option<BootstrapMark>>;

    /// Keeps a certificate the caller checked. Idempotent; written before the changes that
    /// name it are committed, and durable with the next durable commit.
    fn add_certificate(&self, fingerprint: &[u8; 32], der: &[u8]) -> Result<()>;
}
