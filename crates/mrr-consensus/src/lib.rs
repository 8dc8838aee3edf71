//! MRR's strong tier: one Raft group with a voter in every region, on openraft.
//!
//! The group orders opaque commands ([`Command`]) and hands them, committed, to the
//! application's [`Apply`] in log order; it elects a leader (the coordinator), fails over by
//! itself (pre-vote, leases), returns leadership to the preferred region, and offers
//! linearizable proposals and read barriers from any region ([`Consensus`]). openraft is used
//! only through this crate; the rest of MRR sees the types re-exported here.
//!
//! What commands mean (strong writes, atomic updates) is not here: the writer applies them.
//! Sockets are not here: a [`Transport`] carries encoded requests (gRPC on a node, the
//! simulated network in `mrr-sim`).

mod log_store;
mod network;
mod node;
mod runtime;
mod state_machine;
mod types;

pub use log_store::{Io, LogAdapter};
pub use network::{Pipe, Refused, Transport, TransportError};
pub use node::{Consensus, ConsensusConfig, ConsensusError, CoordinatorStatus, Members, StartError, Timing};
pub use state_machine::{Apply, ApplyBatch, BoxFuture, SnapshotData, StateMachine};
pub use types::{node_id, Command, Member, NodeId, Response, Runtime, Types};
