//! MRR core: the replication protocol's pure logic.
//!
//! Holds hybrid logical clocks, versions, version vectors, records and changes, the merge rules
//! and the per-peer session state machines. Everything here is deterministic and sans-IO: it never
//! reads a clock (physical time is passed in), never touches a socket or a disk, and never depends
//! on an async runtime, so the server and a simulator drive exactly the same code.

pub mod change;
pub mod clock_check;
pub mod conflict;
pub mod doc;
pub mod escrow;
pub mod fold;
pub mod hlc;
pub mod lane;
pub mod limits;
pub mod live;
pub mod membership;
pub mod merge;
pub mod placement;
pub mod planted;
pub mod policy;
pub mod provenance;
pub mod record;
pub mod region;
pub mod seal;
pub mod session;
pub mod session_token;
pub mod stability;
pub mod strong;
pub mod version;
pub mod vv;

pub use change::{Change, ChangeId, Op, Replay};
pub use conflict::{ConflictEntry, DeadLetter, Side};
pub use doc::{Doc, FieldOp};
pub use hlc::{ClockSkewError, Hlc, PhysicalClock, Timestamp};
pub use lane::{Lane, LaneRules, Stream};
pub use policy::{PlacementDefaults, Policies, Resolver, Rule};
pub use record::{Key, Metadata, Record};
pub use region::RegionName;
pub use seal::Sealer;
pub use version::Version;
pub use vv::VersionVector;
