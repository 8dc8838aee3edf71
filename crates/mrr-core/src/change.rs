//! Changes: one entry of a region's changelog, the unit that replication ships.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::doc::Doc;
use crate::lane::{Lane, Stream};
use crate::record::{Key, Metadata, Record};
use crate::region::RegionName;
use crate::version::Version;
use crate::vv::VersionVector;

/// A change's cluster-wide identity. Also the id of its conflict-log and dead-letter entries,
/// which is why those ids are equal in every region.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChangeId {
    pub origin: RegionName,
    pub lane: Lane,
    pub seq: u64,
}

/// `<region>-<seq>` in the normal lane, `<region>.<lane>-<seq>` in the others.
impl fmt::Display for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.stream(), self.seq)
    }
}

impl ChangeId {
    /// Parses the `Display` form.
    pub fn parse(s: &str) -> Option<Self> {
        let (stream, seq) = s.rsplit_once('-')?;
        let Stream { origin, lane } = Stream::parse(stream)?;
        Some(Self { origin, lane, seq: seq.parse().ok().filter(|s| *s > 0)? })
    }

    pub fn stream(&self) -> Stream {
        Stream::new(self.origin.clone(), self.lane)
    }

    /// Whether a writer whose causal past is `deps` had seen this change.
    pub fn seen_by(&self, deps: &VersionVector) -> bool {
        deps.get(&self.stream()) >= self.seq
    }
}

/// The dead letter a replay applies: its id and version (where its fold entry sorts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replay {
    pub id: ChangeId,
    pub version: Version,
}

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
    /// `conflict_strategy: merge`: a delta of the record's [`Doc`], joined into the state.
    Merge { delta: Doc },
    /// The change as a region outside its placement holds it: no content, only what every
    /// region needs to advance its vector and know the key's placement
    /// ([`crate::placement`]).
    Marker,
    /// A region holding the record lacks the content of these changes (it received them as
    /// markers): each change's origin answers with a [`Op::Transfer`]. Changes nothing itself.
    Want { ids: Vec<ChangeId> },
    /// Content for the regions of this change's placement (the region that asked): the changes
    /// in [`Change::carried`]. Changes neither the key's version nor its placement. With
    /// `carried` empty, the marker of a transfer.
    Transfer,
    /// Part of the fold history a move of a `custom` record carries, in version order, sent
    /// ahead of the move on the move's stream when the whole history would not fit one change
    /// ([`crate::limits::CARRIED_BYTES_MAX`]): the entries in [`Change::carried`], for the
    /// regions of the move's placement (its `metadata.regions`). A region that holds the record
    /// applies them as content; one the move is about to place it in folds them into the key's
    /// history, which the move then continues. Changes neither the key's version nor its
    /// placement; with `carried` empty, its marker.
    History,
}

/// One write, identified cluster-wide by `(origin, lane, seq)`. Sequence numbers are contiguous
/// per stream (origin and lane) from 1, which is what lets a version vector summarise a whole
/// history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub origin: RegionName,
    pub lane: Lane,
    pub seq: u64,
    pub key: Key,
    pub op: Op,
    pub metadata: Metadata,
    pub version: Version,
    /// The origin's applied version vector when it wrote this change: its exact causal past.
    /// A change `x` happened before this one iff `deps[x.stream] >= x.seq`; two writes are
    /// concurrent iff neither saw the other. This is what tells a conflict from an update.
    pub deps: VersionVector,
    /// Set on a dead letter's replay: the change whose content this one applies (once).
    pub replay_of: Option<Replay>,
    /// Whether this change sets the key's placement: a record's creation, or a write naming a
    /// placement other than the record's. The newest such change decides where the key lives
    /// ([`crate::placement`]); other writes carry the placement their writer saw, for shipping.
    pub moves: bool,
    /// Content carried besides the change's own: the changes a [`Op::Transfer`] delivers, and
    /// under `custom` the mover's fold history, which a move carries to regions without it.
    pub carried: Vec<Change>,
    /// What proves the change's origin to a region it reaches through a relay: set by the
    /// origin's writer on some changes, kept with them everywhere ([`crate::provenance`]).
    pub proof: crate::provenance::Proof,
}

impl Change {
    pub fn id(&self) -> ChangeId {
        ChangeId { origin: self.origin.clone(), lane: self.lane, seq: self.seq }
    }

    pub fn stream(&self) -> Stream {
        Stream::new(self.origin.clone(), self.lane)
    }

    /// The record state this change writes under whole-record strategies, if it wins.
    pub fn to_record(&self) -> Record {
        Record {
            value: match &self.op {
                Op::Put { value } => Some(value.clone()),
                Op::Delete | Op::Marker | Op::Want { .. } | Op::Transfer | Op::History => None,
                Op::Merge { delta } => delta.materialize(),
            },
            metadata: self.metadata.clone(),
            version: self.version.clone(),
            origin: self.origin.clone(),
            lane: self.lane,
            seq: self.seq,
            deps: self.deps.clone(),
            doc: match &self.op {
                Op::Merge { delta } => Some(delta.clone()),
                _ => None,
            },
            placed_by: self.moves.then(|| self.version.clone()),
            lacking: Default::default(),
        }
    }

    /// Whether this change carries content for its placement (not a marker of one). A want's
    /// content is the ids it names; its marker names none.
    pub fn has_content(&self) -> bool {
        match &self.op {
            Op::Marker => false,
            Op::Transfer | Op::History => !self.carried.is_empty(),
            Op::Want { ids } => !ids.is_empty(),
            Op::Put { .. } | Op::Delete | Op::Merge { .. } => true,
        }
    }

    /// Whether this change writes the record (wants and transfers do not).
    pub fn writes(&self) -> bool {
        !matches!(self.op, Op::Want { .. } | Op::Transfer | Op::History)
    }

    /// Payload bytes, for accounting and batch sizing.
    pub fn payload_len(&self) -> usize {
        (match &self.op {
            Op::Put { value } => value.len(),
            Op::Delete | Op::Marker | Op::Transfer | Op::History => 0,
            Op::Want { ids } => ids.len() * 16,
            Op::Merge { delta } => delta.approx_len(),
        }) + self.carried.iter().map(Change::payload_len).sum::<usize>()
    }
}
