//! Changes: one entry of a region's changelog, the unit that replication ships.

use serde::{Deserialize, Serialize};

use crate::record::{Key, Metadata, Record};
use crate::region::RegionName;
use crate::version::Version;

/// What a change does to its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Replace the whole record with this JSON object (bytes of a serialized object).
    Put {
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Replace the record with a tombstone.
    Delete,
}

/// One write, identified cluster-wide by `(origin, seq)`. Sequence numbers are contiguous per
/// origin from 1, which is what lets a version vector summarise a whole history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub origin: RegionName,
    pub seq: u64,
    pub key: Key,
    pub op: Op,
    pub metadata: Metadata,
    pub version: Version,
}

impl Change {
    /// The record state this change writes, if it wins.
    pub fn to_record(&self) -> Record {
        Record {
            value: match &self.op {
                Op::Put { value } => Some(value.clone()),
                Op::Delete => None,
            },
            metadata: self.metadata.clone(),
            version: self.version.clone(),
            origin: self.origin.clone(),
            seq: self.seq,
        }
    }

    /// Payload bytes, for accounting and batch sizing.
    pub fn payload_len(&self) -> usize {
        match &self.op {
            Op::Put { value } => value.len(),
            Op::Delete => 0,
        }
    }
}
