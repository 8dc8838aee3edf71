//! The Raft group's types: what it orders (opaque commands), who its members are, and the one
//! runtime both the node and the simulator run it on.

use std::fmt;

use mrr_core::RegionName;
use serde::{Deserialize, Serialize};

/// What the group orders: an application command, opaque to this crate (the strong tier's
/// writes, encoded by the server).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "command of {} bytes", self.0.len())
    }
}

/// What applying a command answered, opaque to this crate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// A voter: one region, reached at its peer address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub region: String,
    pub addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.region, self.addr)
    }
}

/// The runtime openraft runs on (`runtime.rs`): the node seeds it from the OS, the simulator
/// from the run's seed, and otherwise the two run the same code.
pub use crate::runtime::Runtime;

openraft::declare_raft_types!(
    /// The strong tier's Raft configuration.
    pub Types:
        D = Command,
        R = Response,
        Node = Member,
        // openraft's advanced leader ids: a leader is (term, node id), so two candidates of
        // one term can both win and the higher fences the lower, instead of splitting the
        // vote and waiting out another timeout. Measured in `mrr-sim --strong` (1,000 seeds,
        // `mrr dev`'s delays, ±20 % jitter, 1 % loss): failover p99 2.26 s, against 4.83 s
        // with standard one-leader-per-term ids (docs/architecture.md).
        LeaderId = openraft::impls::leader_id_adv::LeaderId<u64, u64>,
        AsyncRuntime = Runtime,
);

pub type NodeId = u64;
pub type LogId = openraft::alias::LogIdOf<Types>;
pub type Vote = openraft::alias::VoteOf<Types>;
pub type Entry = openraft::alias::EntryOf<Types>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<Types>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<Types>;

/// A region's node id: FNV-1a of its name, so every region derives the same ids from the same
/// names whatever order its config lists them in. Two names that collide are refused when the
/// members are built ([`crate::Members::new`]).
pub fn node_id(region: &RegionName) -> NodeId {
    mrr_core::strong::fnv1a(region.as_str().as_bytes())
}
