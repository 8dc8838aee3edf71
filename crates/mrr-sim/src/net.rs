//! The simulated peer protocol: the messages the real streams carry, minus the cryptography,
//! each tagged with the connection epoch it belongs to (a message from a closed connection is
//! dropped on arrival, as TCP would never deliver it to the new one).

use std::collections::BTreeSet;

use mrr_core::{Change, RegionName, VersionVector};

#[derive(Clone, Debug)]
pub enum Body {
    Hello,
    Welcome { applied: VersionVector, direct: BTreeSet<RegionName> },
    Batch { changes: Vec<Change> },
    Ack { applied: VersionVector, direct: BTreeSet<RegionName>, refused: bool },
    Heartbeat,
}

#[derive(Clone, Debug)]
pub struct Msg {
    pub from: usize,
    pub to: usize,
    pub epoch: u64,
    pub body: Body,
}
