//! Placement: which regions a record may live in (`__metadata.regions`), and what a change
//! becomes on its way to a region outside it.
//!
//! The placement of a key is the `regions` of its newest *move* ([`Change::moves`]: a
//! creation, or a write naming a placement other than the record's), so every region, holding
//! content or not, decides it the same way, and a write that merely keeps the placement it saw
//! never undoes a concurrent move. A region outside a change's placement receives a *marker*
//! instead: the change without its content and under the key's sealed name ([`crate::seal`]) —
//! version, placement, deps, stream and sequence — so its cursor and vector advance and every
//! move is known everywhere, while nothing there names the record.
//!
//! A move carries the mover's whole state, so a region it places the record in starts
//! complete up to the move's causal past; what it admitted beyond that without content (writes
//! concurrent with the move, which reached it as markers) it asks of their origins with a
//! want, answered by a transfer. This module decides; it does no IO and does not apply
//! anything (the writer's engine does).
//!
//! A region a record leaves keeps its register only; what its changelog, conflict log and
//! dead letters still hold of the record in clear (the content of changes it applied or wrote
//! while it held the record) is noted as a [`Departure`] and erased once no region can need it
//! from here ([`crate::stability::Stability::unneeded`]), changelog entries becoming their
//! markers.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::change::{Change, ChangeId};
use crate::record::{Key, Metadata};
use crate::region::RegionName;
use crate::seal::Sealer;
use crate::vv::VersionVector;

/// The `regions` entry meaning every region.
pub const EVERYWHERE: &str = "*";

/// Whether `regions` (as a client wrote it, after topic defaults) admits every region.
/// Empty means no restriction.
pub fn everywhere(regions: &[String]) -> bool {
    regions.is_empty() || regions.iter().any(|r| r == EVERYWHERE)
}

/// Whether a record with this metadata may live in `region`.
pub fn places(metadata: &Metadata, region: &RegionName) -> bool {
    everywhere(&metadata.regions) || metadata.regions.iter().any(|r| r == region.as_str())
}

/// The first entry of `regions` that is neither `*` nor a region of the cluster: a misspelt
/// region would place a record nowhere that exists.
pub fn unknown_region<'a>(regions: &'a [String], cluster: &[RegionName]) -> Option<&'a str> {
    regions.iter().map(String::as_str).find(|r| *r != EVERYWHERE && !cluster.iter().any(|c| c.as_str() == *r))
}

/// Whether two placements admit the same regions (order and duplicates aside).
pub fn same(a: &Metadata, b: &Metadata) -> bool {
    match (everywhere(&a.regions), everywhere(&b.regions)) {
        (true, true) => true,
        (false, false) => {
            let set = |m: &Metadata| m.regions.iter().cloned().collect::<std::collections::BTreeSet<_>>();
            set(a) == set(b)
        }
        _ => false,
    }
}

/// What a sender may do with one change for one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shipment {
    /// The peer is inside the change's placement and the sender holds its content.
    Full,
    /// The peer is outside the change's placement: send the marker.
    Marker,
    /// The peer is inside the placement but the sender holds only a marker (a relay outside
    /// it): the sender must not send anything of this stream from here on. Sending the marker
    /// would advance the peer past content it needs; the peer gets it from a region that has it.
    Hold,
}

pub fn shipment(change: &Change, peer: &RegionName) -> Shipment {
    match (places(&change.metadata, peer), change.has_content()) {
        (false, _) => Shipment::Marker,
        (true, true) => Shipment::Full,
        (true, false) => Shipment::Hold,
    }
}

/// Whether `change` sets the placement of a key whose current placement was set by the move
/// at `placed_by` (`None`: no move has arrived yet). Newest move wins, everywhere alike.
pub fn decides(change: &Change, placed_by: Option<&crate::version::Version>) -> bool {
    change.moves && placed_by.is_none_or(|v| change.version > *v)
}

/// What one read of the changelog becomes for `peer`: the changes to send (markers where the
/// peer is outside a change's placement), cut before the first change this region must not
/// send it ([`Shipment::Hold`]), whose sequence is `held_at`.
#[derive(Debug)]
pub struct ForPeer<'a> {
    pub changes: Vec<Cow<'a, Change>>,
    pub held_at: Option<u64>,
}

pub fn for_peer<'a>(changes: &'a [Change], peer: &RegionName, sealer: &Sealer) -> ForPeer<'a> {
    let mut out = Vec::with_capacity(changes.len());
    for change in changes {
        match shipment(change, peer) {
            Shipment::Full => out.push(Cow::Borrowed(change)),
            Shipment::Marker => out.push(Cow::Owned(to_marker(change, sealer))),
            Shipment::Hold => return ForPeer { changes: out, held_at: Some(change.seq) },
        }
    }
    ForPeer { changes: out, held_at: None }
}

/// The change as a region outside its placement receives and keeps it: no content, and the
/// key's sealed name. The marker of a want, a transfer or a history piece keeps its op (it
/// writes nothing) with nothing wanted or carried.
pub fn to_marker(change: &Change, sealer: &Sealer) -> Change {
    Change {
        origin: change.origin.clone(),
        lane: change.lane,
        seq: change.seq,
        op: crate::provenance::marker_op(&change.op),
        key: sealer.seal(&change.key),
        metadata: Metadata { regions: change.metadata.regions.clone(), sync_flags: Vec::new() },
        version: change.version.clone(),
        deps: change.deps.clone(),
        replay_of: None,
        moves: change.moves,
        carried: Vec::new(),
        // What lets this marker be relayed provably: the digest of the content it stands for
        // and the origin's checkpoint, if one ends here ([`crate::provenance`]).
        proof: crate::provenance::Proof {
            content_digest: Some(crate::provenance::digest_for_marker(change, sealer)),
            checkpoint: change.proof.checkpoint.clone(),
        },
    }
}

/// A record this region held and no longer does, while its logs still name it in clear: kept
/// under the key's sealed name until everything of it is erased.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Departure {
    /// The record's name, which the entries to erase carry.
    pub key: Key,
    /// The move that decides the key's placement here (the newest, which left this region out).
    /// Nothing is erased before the stable point covers it.
    pub moved_by: ChangeId,
    /// This region's applied vector when the record left: every changelog entry with its
    /// content is below (later ones are kept as markers).
    pub upto: VersionVector,
    /// How far below `upto` the changelog holds nothing of it in clear any more.
    pub erased: VersionVector,
    /// Whether its conflict-log entries and dead letters are gone.
    pub logs_erased: bool,
}

impl Departure {
    /// Left by `moved_by`, with everything up to `upto` still to erase.
    pub fn new(key: Key, moved_by: ChangeId, upto: VersionVector) -> Self {
        Self { key, moved_by, upto, erased: VersionVector::new(), logs_erased: false }
    }

    /// Whether nothing of the record in clear remains.
    pub fn done(&self) -> bool {
        self.logs_erased && self.erased.dominates(&self.upto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Op;
    use crate::hlc::Timestamp;
    use crate::lane::Lane;
    use crate::record::Key;
    use crate::version::Version;
    use crate::vv::VersionVector;

    fn meta(regions: &[&str]) -> Metadata {
        Metadata { regions: regions.iter().map(|s| s.to_string()).collect(), sync_flags: vec![] }
    }

    fn r(s: &str) -> RegionName {
        RegionName::new(s).expect("valid")
    }

    #[test]
    fn placement_rules() {
        assert!(places(&meta(&[]), &r("ap")), "no regions: everywhere");
        assert!(places(&meta(&["*"]), &r("ap")));
        assert!(places(&meta(&["eu", "us"]), &r("us")));
        assert!(!places(&meta(&["eu", "us"]), &r("ap")));

        let cluster = [r("eu"), r("us")];
        assert_eq!(unknown_region(&meta(&["*", "eu", "us"]).regions, &cluster), None);
        assert_eq!(unknown_region(&meta(&["eu", "uss"]).regions, &cluster), Some("uss"));

        assert!(same(&meta(&["eu", "us"]), &meta(&["us", "eu", "us"])));
        assert!(same(&meta(&[]), &meta(&["*"])));
        assert!(!same(&meta(&["eu"]), &meta(&["eu", "us"])));
        assert!(!same(&meta(&["*"]), &meta(&["eu"])));
    }

    #[test]
    fn a_relay_sends_markers_outside_and_holds_inside_the_placement() {
        let change = Change {
            origin: r("eu"),
            lane: Lane::Normal,
            seq: 1,
            key: Key::new("users", "vip"),
            op: Op::Put { value: b"{}".to_vec() },
            metadata: meta(&["eu", "us"]),
            version: Version { ts: Timestamp { wall_ms: 1, logical: 0 }, region: r("eu") },
            deps: VersionVector::new(),
            replay_of: None,
            moves: true,
            carried: vec![],
            proof: Default::default(),
        };
        let sealer = Sealer::new("t", "0123456789abcdef");
        assert_eq!(shipment(&change, &r("us")), Shipment::Full);
        assert_eq!(shipment(&change, &r("ap")), Shipment::Marker);
        let marker = to_marker(&change, &sealer);
        assert_eq!(marker.op, Op::Marker);
        assert_eq!((marker.version, marker.metadata), (change.version.clone(), change.metadata.clone()));
        assert_eq!(marker.key, sealer.seal(&change.key), "a marker never names its record");
        let marker = to_marker(&change, &sealer);
        assert_eq!(shipment(&marker, &r("ap")), Shipment::Marker, "markers relay to the excluded");
        assert_eq!(shipment(&marker, &r("us")), Shipment::Hold, "never a marker to a placed region");

        let mut everywhere = change.clone();
        everywhere.seq = 3;
        everywhere.metadata = meta(&["*"]);
        let relayed = [
            Change { seq: 1, ..everywhere.clone() },
            to_marker(&Change { seq: 2, ..change.clone() }, &sealer),
            everywhere,
        ];
        let to_us = for_peer(&relayed, &r("us"), &sealer);
        assert_eq!((to_us.changes.len(), to_us.held_at), (1, Some(2)), "cut before the held change");
        let to_ap = for_peer(&relayed, &r("ap"), &sealer);
        assert_eq!(to_ap.held_at, None);
        assert_eq!(to_ap.changes.iter().map(|c| c.op == Op::Marker).collect::<Vec<_>>(), [false, true, false]);
    }
}
