//! The simulated peer protocol: the messages the real streams carry, minus the cryptography,
//! each tagged with the connection epoch it belongs to (a message from a closed connection is
//! dropped on arrival, as TCP would never deliver it to the new one).

use std::collections::BTreeSet;

use mrr_core::{Change, RegionName, VersionVector};

#[derive(Clone, Debug)]
pub enum Body {
    /// `floors` (here, on batches and on heartbeats): the dialer's log floors (what retention
    /// truncated). An acceptor behind every peer's floor of a stream can no longer catch up
    /// from logs and rejoins through a snapshot.
    Hello {
        floors: VersionVector,
    },
    Welcome {
        applied: VersionVector,
        direct: BTreeSet<RegionName>,
    },
    /// `durable`: the sender's own durable streams; `wall_ms`: its clock when it sent this.
    /// `forged`: the sender altered a change it relays (a fault the receiver must catch; the
    /// receiver's checks never read it).
    /// `proving`: the anchors and markers that prove relayed `changes` (never applied).
    Batch {
        proving: Vec<Change>,
        changes: Vec<Change>,
        durable: VersionVector,
        wall_ms: u64,
        forged: bool,
        floors: VersionVector,
    },
    /// `apply_ms`: how long the receiver's writer took (queue and commit) for what this acks.
    /// `durable`: the acceptor's durable vector, the beacon of the dialer's stable point.
    Ack {
        applied: VersionVector,
        durable: VersionVector,
        direct: BTreeSet<RegionName>,
        refused: bool,
        apply_ms: u64,
    },
    Heartbeat {
        durable: VersionVector,
        wall_ms: u64,
        floors: VersionVector,
    },
}

#[derive(Clone, Debug)]
pub struct Msg {
    pub from: usize,
    pub to: usize,
    pub epoch: u64,
    pub body: Body,
}
