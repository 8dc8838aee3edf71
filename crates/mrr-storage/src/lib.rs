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
    pub changes: Vec<Change>,
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
    pub dead_letters: Vec<DeadLetter>,
    /// Dead letters that no longer apply: replayed, discarded, or applied by a re-fold.
    pub dead_letters_cleared: Vec<ChangeId>,
}

impl CommitBatch {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.changes.is_empty()
            && self.history.is_empty()
            && self.histories_dropped.is_empty()
            && self.conflicts.is_empty()
            && self.dead_letters.is_empty()
            && self.dead_letters_cleared.is_empty()
    }
}

/// What a node needs from disk to resume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveredState {
    pub vv: VersionVector,
    pub hlc_high_water: Timestamp,
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
    /// The directory holds data in a format this release does not read. Fatal at start-up.
    #[error("the data directory holds storage format {found}, this release reads format {expected}: move the directory aside and restart; the region then catches up from its peers (they keep their changelogs)")]
    Format { found: u32, expected: u32 },
}

/// The layout and encoding of stored records and changes. Bumped when an existing directory
/// could no longer be read: 2 added each change's causal past and the merge document; 3 split
/// each origin's changelog and version-vector entry into priority lanes; 4 added the move that
/// placed a record, the changes it lacks, and moves, wants and transfers in the changelog.
pub const STORAGE_FORMAT: u32 = 4;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The storage seam. Implementations are internally synchronised; `commit` is called by one
/// writer at a time, reads from anywhere.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &Key) -> Result<Option<Record>>;

    /// Records of `topic` in id order, starting after `after_id`, tombstones included.
    fn scan(&self, topic: &str, after_id: Option<&str>, limit: usize) -> Result<Vec<(Key, Record)>>;

    /// Changes of `stream` with `seq > after_seq`, in sequence order, at most `limit`.
    fn changes_after(&self, stream: &Stream, after_seq: u64, limit: usize) -> Result<Vec<Change>>;

    /// Like [`Store::changes_after`], and stopping before the change that would take the
    /// stored size of those read past `bytes_max`; the first change is always read (a change
    /// larger than the bound travels alone). Sizes replication batches by bytes, not count.
    fn changes_within(&self, stream: &Stream, after_seq: u64, limit: usize, bytes_max: u64) -> Result<Vec<Change>>;

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

    /// The whole conflict log, in no particular order (the caller filters and sorts).
    fn conflicts(&self) -> Result<Vec<ConflictEntry>>;

    /// Drops conflict-log entries (retention), by [`ConflictEntry::ident`]. Outside the writer's
    /// commits: nothing else deletes them, and a concurrent re-log of one is harmless.
    fn expire_conflicts(&self, idents: &[(ChangeId, ChangeId)]) -> Result<()>;

    /// Every dead letter, in id order.
    fn dead_letters(&self) -> Result<Vec<DeadLetter>>;

    fn dead_letter(&self, id: &ChangeId) -> Result<Option<DeadLetter>>;

    /// Removes a dead letter from this region's queue (an operator's discard).
    fn discard_dead_letter(&self, id: &ChangeId) -> Result<()>;

    /// Bytes on disk (0 for memory).
    fn disk_bytes(&self) -> u64;
}
