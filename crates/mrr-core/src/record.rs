//! Records: the replicated unit, a JSON object under `topic/id`, with the metadata that travels
//! with it and the version that last wrote it.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::change::ChangeId;
use crate::doc::Doc;
use crate::lane::Lane;
use crate::region::RegionName;
use crate::version::Version;
use crate::vv::VersionVector;

/// `topic/id`. Both parts are validated by [`crate::limits`] before a key is built from input.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    pub topic: String,
    pub id: String,
}

impl Key {
    pub fn new(topic: impl Into<String>, id: impl Into<String>) -> Self {
        Self { topic: topic.into(), id: id.into() }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.id)
    }
}

/// The `__metadata` a client attaches to a record. Stored and replicated with it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Metadata {
    /// Where the record may live; `["*"]` (or empty) means every region.
    pub regions: Vec<String>,
    /// Free-form flags such as `IMPORTANT`, `TIER_1`, `SYNC_PRIORITY=1`.
    pub sync_flags: Vec<String>,
}

/// The current state of a key in one region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The JSON object as bytes, or `None` for a tombstone: a delete is a versioned write like
    /// any other so that an older concurrent put can never bring the record back.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    pub metadata: Metadata,
    pub version: Version,
    /// The change that produced this state: `(origin, lane, seq)`, the read-your-writes token.
    pub origin: RegionName,
    pub lane: Lane,
    pub seq: u64,
    /// The causal past of the write that produced this state (see [`crate::Change::deps`]);
    /// under `merge`, of the latest change joined in.
    pub deps: VersionVector,
    /// Under `conflict_strategy: merge`, the CRDT state `value` is materialised from.
    pub doc: Option<Doc>,
    /// The version of the move that set `metadata.regions` (the newest change with
    /// [`crate::Change::moves`]); `None` until one has arrived here, when the placement is the
    /// one the first change to arrive named.
    pub placed_by: Option<Version>,
    /// Changes of this key this region admitted but holds no content of (they reached it as
    /// markers while it held the record), asked of their origins with a want. Empty where the
    /// record is not placed: a region outside the placement holds nothing to complete.
    pub lacking: BTreeSet<ChangeId>,
}

impl Record {
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// The change that produced this state.
    pub fn change_id(&self) -> ChangeId {
        ChangeId { origin: self.origin.clone(), lane: self.lane, seq: self.seq }
    }
}
