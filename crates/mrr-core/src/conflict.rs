//! What the conflict log and the dead-letter queue record. Types only: the engine decides what
//! to record, storage keeps it, the API shows it.

use serde::{Deserialize, Serialize};

use crate::change::ChangeId;
use crate::record::Key;
use crate::version::Version;

/// One side of a conflict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Side {
    pub id: ChangeId,
    pub version: Version,
    /// What this side wrote (JSON text; `None` for a delete).
    pub value: Option<String>,
}

/// A write that lost to — or, under `custom`, was merged with — a concurrent write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictEntry {
    pub key: Key,
    /// `timestamp`, `merge` or `custom`.
    pub strategy: String,
    /// What the rule did: `last_writer_wins`, `field_last_writer_wins`, `handler_merged`,
    /// `delete_won`.
    pub resolution: String,
    /// The write that lost (or was merged in).
    pub loser: Side,
    /// The concurrent write it lost to (or was merged with).
    pub winner: Side,
    /// Under `merge`, the fields the loser lost; empty for the whole record.
    pub fields: Vec<String>,
    /// Local wall-clock time when this region saw the conflict (ms since the Unix epoch).
    pub detected_at_ms: u64,
}

impl ConflictEntry {
    /// Storage identity: a loser is logged once per winner, however often a fold revisits it.
    pub fn ident(&self) -> (ChangeId, ChangeId) {
        (self.loser.id.clone(), self.winner.id.clone())
    }
}

/// A change this region admitted (so replication moved on) but could not apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The change's id; the same in every region, since failures are deterministic.
    pub id: ChangeId,
    pub key: Key,
    pub version: Version,
    pub reason: String,
    /// The change's content (JSON text; `None` for a delete).
    pub value: Option<String>,
    /// Local wall-clock time it first failed here.
    pub failed_at_ms: u64,
}
