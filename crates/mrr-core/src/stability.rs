//! Causal stability: the point every member region has durably applied.
//!
//! Retention may collect changelog entries, tombstones and fold histories only below a point
//! behind which no change can still arrive: the *stable point*. Each region learns the other
//! regions' durable vectors from their acks (a *beacon* `D_j`), and takes one up only once it
//! has itself applied `j`'s own streams as far as `D_j` says. Then everything `j` wrote before
//! it durably applied a change `t` is already here, so once every member's taken beacon covers
//! `t`, no change written without having seen `t` (concurrent with it, or older and unseen)
//! can still arrive here. `stable = min over members of their taken beacons`, this region's
//! own durable vector among them, component-wise.
//!
//! What this guarantees, and what the simulator checks (`stable_point`): every change this
//! region applies after the point moved has seen everything below it (its causal past covers
//! the point), and the point never passes what a member has durably applied.
//!
//! A member that has not answered since this region started holds the point where it was: the
//! point waits for every region (a region away too long is not yet let go: issue 18).
//!
//! **Content no region will ask for.** A region that holds a record may *lack* the content of
//! a change it admitted as a marker; it asks the change's origin with a want, written in the
//! same commit in which it starts lacking it. Let a record have left this region by a move `m`
//! and let `c` be a change of it this region wrote, both below the point. Then no region will
//! ever ask this one for `c`: a region comes to lack `c` by admitting `c` as a marker (every
//! member admitted `c` already) or by applying a move that had not seen `c` and places the
//! record there. Every such move is applied here (this point's guarantee) and older than `m`,
//! which decides here and which every member applied, so it decides nowhere any more. So a
//! member that lacks `c` started lacking it before its beacon covering `m` and `c`, and its
//! want is in its own stream below that beacon, which this region took only after applying
//! that stream this far: the want is answered already, with a transfer of this region's own
//! that is kept until it is below the point too, that is until the asker has it. This is what
//! lets a region erase what a record that left it left behind (`docs/placement.md`); the
//! simulator checks the premise (a region lacks nothing it has not asked for) and the
//! conclusion (convergence: every placed region ends lacking nothing).
//!
//! Pure: no IO, no clock. The replication runtime feeds it acks and persists what it says.

use std::collections::BTreeMap;

use crate::region::RegionName;
use crate::vv::VersionVector;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stability {
    local: RegionName,
    /// Per member: the newest beacon taken up.
    taken: BTreeMap<RegionName, VersionVector>,
    /// Per member: the oldest beacon not yet taken, waiting for this region to apply the
    /// member's own streams as far as it says. One at a time, so that a member that keeps
    /// writing still has its beacons taken (each about a round trip behind).
    waiting: BTreeMap<RegionName, VersionVector>,
    stable: VersionVector,
}

impl Stability {
    /// `members`: every region of the cluster, this one included. `stable`: the point
    /// persisted before a restart, where it starts again.
    pub fn new(local: RegionName, members: impl IntoIterator<Item = RegionName>, stable: VersionVector) -> Self {
        let mut taken: BTreeMap<RegionName, VersionVector> = members.into_iter().map(|m| (m, stable.clone())).collect();
        taken.entry(local.clone()).or_insert_with(|| stable.clone());
        Self { local, taken, waiting: BTreeMap::new(), stable }
    }

    pub fn stable(&self) -> &VersionVector {
        &self.stable
    }

    /// `member` acked: it has durably applied `durable`. Returns whether the point moved.
    /// Another region's beacon is ignored (a peer that is not a member).
    pub fn on_beacon(&mut self, member: &RegionName, durable: &VersionVector, applied_here: &VersionVector) -> bool {
        if member == &self.local || !self.taken.contains_key(member) {
            return false;
        }
        if covers_own(member, durable, applied_here) {
            if let Some(t) = self.taken.get_mut(member) {
                t.join(durable);
            }
            if self.waiting.get(member).is_some_and(|w| durable.dominates(w)) {
                self.waiting.remove(member);
            }
        } else {
            self.waiting.entry(member.clone()).or_insert_with(|| durable.clone());
        }
        self.recompute(applied_here)
    }

    /// `member` lost its data and is installing a snapshot (it asked where it stands): what it
    /// said before no longer holds, so its beacons are forgotten and the point stays where it
    /// is until its new ones come. The snapshot it installs is taken after this, from a region
    /// whose durable vector covers the point, so its new beacons do too.
    pub fn on_rejoin(&mut self, member: &RegionName) {
        if member == &self.local {
            return;
        }
        if let Some(t) = self.taken.get_mut(member) {
            *t = self.stable.clone();
        }
        self.waiting.remove(member);
    }

    /// This region's own durable vector moved, or it applied more. Returns whether the point
    /// moved.
    pub fn on_local(&mut self, durable: &VersionVector, applied: &VersionVector) -> bool {
        if let Some(own) = self.taken.get_mut(&self.local) {
            own.join(durable);
        }
        self.recompute(applied)
    }

    fn recompute(&mut self, applied_here: &VersionVector) -> bool {
        let ready: Vec<RegionName> =
            self.waiting.iter().filter(|(m, d)| covers_own(m, d, applied_here)).map(|(m, _)| m.clone()).collect();
        for m in ready {
            if let (Some(d), Some(t)) = (self.waiting.remove(&m), self.taken.get_mut(&m)) {
                t.join(&d);
            }
        }
        let mut members = self.taken.values();
        let Some(first) = members.next() else { return false };
        let min = members.fold(first.clone(), |acc, t| acc.meet(t));
        let moved = !self.stable.dominates(&min);
        self.stable.join(&min);
        moved
    }
}

/// Whether this region has applied `member`'s own streams as far as `durable` says.
fn covers_own(member: &RegionName, durable: &VersionVector, applied_here: &VersionVector) -> bool {
    durable.iter().filter(|(s, _)| &s.origin == member).all(|(s, seq)| applied_here.get(s) >= seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lane::Stream;

    fn r(s: &str) -> RegionName {
        RegionName::new(s).expect("valid")
    }

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        entries.iter().map(|(o, n)| (Stream::normal(r(o)), *n)).collect()
    }

    #[test]
    fn the_point_is_what_every_member_has_durably_applied() {
        let mut s = Stability::new(r("a"), [r("a"), r("b"), r("c")], VersionVector::new());
        let applied = vv(&[("a", 5), ("b", 4), ("c", 3)]);
        assert!(!s.on_local(&vv(&[("a", 5), ("b", 4), ("c", 3)]), &applied), "b and c never answered");
        assert!(!s.on_beacon(&r("b"), &vv(&[("a", 4), ("b", 4), ("c", 2)]), &applied));
        assert!(s.on_beacon(&r("c"), &vv(&[("a", 3), ("b", 1), ("c", 3)]), &applied));
        assert_eq!(s.stable(), &vv(&[("a", 3), ("b", 1), ("c", 2)]));
        // A beacon is not taken before this region applied the member's own writes it covers:
        // c's writes up to 9 could still arrive here, and one of them may not have seen a 4.
        assert!(!s.on_beacon(&r("c"), &vv(&[("a", 5), ("b", 4), ("c", 9)]), &applied));
        assert_eq!(s.stable(), &vv(&[("a", 3), ("b", 1), ("c", 2)]));
        // A newer beacon of c waits behind the first; once c's writes are here, the first is taken.
        assert!(!s.on_beacon(&r("c"), &vv(&[("a", 5), ("b", 4), ("c", 12)]), &applied));
        let applied = vv(&[("a", 5), ("b", 4), ("c", 9)]);
        assert!(s.on_local(&vv(&[("a", 5), ("b", 4), ("c", 9)]), &applied));
        assert_eq!(s.stable(), &vv(&[("a", 4), ("b", 4), ("c", 2)]), "b's beacon now holds it");
        // Beacons from strangers and from itself change nothing.
        assert!(!s.on_beacon(&r("x"), &vv(&[("a", 9)]), &applied));
        assert!(!s.on_beacon(&r("a"), &vv(&[("a", 9)]), &applied));
    }

    #[test]
    fn the_point_never_goes_back() {
        let start = vv(&[("a", 2), ("b", 2)]);
        let mut s = Stability::new(r("a"), [r("a"), r("b")], start.clone());
        assert_eq!(s.stable(), &start, "a restart starts where the persisted point was");
        // An older beacon (a reordered ack) does not lower it.
        s.on_beacon(&r("b"), &vv(&[("a", 1), ("b", 1)]), &vv(&[("a", 3), ("b", 3)]));
        assert_eq!(s.stable(), &start);
    }

    #[test]
    fn a_member_that_rejoins_holds_the_point_until_its_new_beacons_come() {
        let mut s = Stability::new(r("a"), [r("a"), r("b"), r("c")], VersionVector::new());
        let applied = vv(&[("a", 5), ("b", 4), ("c", 3)]);
        s.on_local(&applied, &applied);
        s.on_beacon(&r("b"), &vv(&[("a", 5), ("b", 4), ("c", 3)]), &applied);
        s.on_beacon(&r("c"), &vv(&[("a", 2), ("b", 4), ("c", 3)]), &applied);
        assert_eq!(s.stable(), &vv(&[("a", 2), ("b", 4), ("c", 3)]));
        // b is wiped and asks where it stands: its old beacon (a:5) must not carry the point
        // past what its snapshot will hold.
        s.on_rejoin(&r("b"));
        assert!(!s.on_beacon(&r("c"), &vv(&[("a", 5), ("b", 4), ("c", 3)]), &applied), "b's old word no longer counts");
        assert_eq!(s.stable(), &vv(&[("a", 2), ("b", 4), ("c", 3)]));
        assert!(s.on_beacon(&r("b"), &vv(&[("a", 4), ("b", 4), ("c", 3)]), &applied));
        assert_eq!(s.stable(), &vv(&[("a", 4), ("b", 4), ("c", 3)]));
    }
}
