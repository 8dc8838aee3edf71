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
//! point waits for every region.
//!
//! **The truncation point.** Changelog truncation alone does not need every change to come
//! after the point: a change that arrives late is merged into record state like any other, and
//! only a region that needs the truncated entries themselves is hurt, and it can install a
//! snapshot instead. So truncation runs below a second point, which lets a member go once it
//! has been away longer than the retention [`Window`] (or away while the changelog held for
//! it passed the window's bytes): that member is *lagging*, and the truncation point is the
//! minimum over the other members only. The stable point itself still waits for every member,
//! because record-state collection (tombstones, what a departed record left behind) relies on
//! every later change having seen what it collects. A lagging member is let back once a beacon
//! of it holds the truncation point (it caught up from logs the others still had, or rejoined
//! through a snapshot).
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

use std::collections::{BTreeMap, BTreeSet};

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
    /// Below which the changelog may be truncated: the stable point over the members that are
    /// not lagging (never below `stable`).
    truncate: VersionVector,
    /// How long a member may be away before it no longer holds truncation back; `None`: it
    /// holds it for ever.
    window: Option<Window>,
    /// Per member (this region aside): when its last beacon came, in this region's
    /// milliseconds.
    heard_ms: BTreeMap<RegionName, u64>,
    /// Members away past the window: they hold the stable point, not the truncation point.
    lagging: BTreeSet<RegionName>,
}

/// How long a member that is away may hold changelog truncation back (`retention:` in the
/// configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// A member unheard for this long is lagging.
    pub away_ms_max: u64,
    /// A member unheard for `silent_ms` is lagging once the changelog holds more than this.
    pub changelog_bytes_max: u64,
    /// How long without a beacon makes a member away at all (a few heartbeats: a member that
    /// is up but slow is never lagging).
    pub silent_ms: u64,
}

impl Stability {
    /// `members`: every region of the cluster, this one included. `stable`: the point
    /// persisted before a restart, where it starts again. Without a window: see
    /// [`Stability::with_window`].
    pub fn new(local: RegionName, members: impl IntoIterator<Item = RegionName>, stable: VersionVector) -> Self {
        let mut taken: BTreeMap<RegionName, VersionVector> = members.into_iter().map(|m| (m, stable.clone())).collect();
        taken.entry(local.clone()).or_insert_with(|| stable.clone());
        Self {
            local,
            taken,
            waiting: BTreeMap::new(),
            truncate: stable.clone(),
            stable,
            window: None,
            heard_ms: BTreeMap::new(),
            lagging: BTreeSet::new(),
        }
    }

    /// Lets a member away past `window` go from the truncation point. Every member counts as
    /// heard at `now_ms` (a restart does not know how long one was away before it).
    pub fn with_window(mut self, window: Window, now_ms: u64) -> Self {
        self.window = Some(window);
        self.heard_ms = self.taken.keys().filter(|m| **m != self.local).map(|m| (m.clone(), now_ms)).collect();
        self
    }

    pub fn stable(&self) -> &VersionVector {
        &self.stable
    }

    /// The retention window, when there is one.
    pub fn window(&self) -> Option<Window> {
        self.window
    }

    /// Below which the changelog may be truncated (at or above [`Stability::stable`]).
    pub fn truncation_point(&self) -> &VersionVector {
        &self.truncate
    }

    /// The members that no longer hold the truncation point back.
    pub fn lagging(&self) -> &BTreeSet<RegionName> {
        &self.lagging
    }

    /// The members away (unheard for the window's `silent_ms`) that still hold truncation
    /// back, with how long each has been away: what `/health` warns about.
    pub fn away(&self, now_ms: u64) -> Vec<(RegionName, u64)> {
        let Some(window) = self.window else { return Vec::new() };
        self.heard_ms
            .iter()
            .filter(|(m, _)| !self.lagging.contains(*m))
            .map(|(m, heard)| (m.clone(), now_ms.saturating_sub(*heard)))
            .filter(|(_, away_ms)| *away_ms >= window.silent_ms)
            .collect()
    }

    /// Time passed: members away past the window become lagging. `changelog_bytes`: what this
    /// region's changelog holds now. Returns whether the truncation point moved.
    pub fn on_tick(&mut self, now_ms: u64, changelog_bytes: u64) -> bool {
        let Some(window) = self.window else { return false };
        for (member, heard) in &self.heard_ms {
            let away_ms = now_ms.saturating_sub(*heard);
            let past = away_ms >= window.away_ms_max
                || (away_ms >= window.silent_ms && changelog_bytes > window.changelog_bytes_max);
            if past {
                self.lagging.insert(member.clone());
            }
        }
        self.recompute_truncation()
    }

    /// `member` acked: it has durably applied `durable`. Returns whether the point moved.
    /// Another region's beacon is ignored (a peer that is not a member).
    pub fn on_beacon(
        &mut self,
        member: &RegionName,
        durable: &VersionVector,
        applied_here: &VersionVector,
        now_ms: u64,
    ) -> bool {
        if member == &self.local || !self.taken.contains_key(member) {
            return false;
        }
        if let Some(heard) = self.heard_ms.get_mut(member) {
            *heard = (*heard).max(now_ms);
        }
        // A lagging member is let back once it holds the truncation point (it caught up, or
        // rejoined through a snapshot): until then the changelog it would need is gone, and
        // letting it hold truncation again would only stop it.
        if durable.dominates(&self.truncate) {
            self.lagging.remove(member);
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

    /// The membership changed to `members` (this region is always one). A region that joins
    /// holds the point where it is until its beacons come (the snapshot it starts from was
    /// taken at or above the point); one that leaves no longer holds it. `now_ms` starts a
    /// joining member's retention window.
    pub fn set_members(&mut self, members: impl IntoIterator<Item = RegionName>, now_ms: u64) {
        let members: BTreeSet<RegionName> = members.into_iter().chain([self.local.clone()]).collect();
        self.taken.retain(|m, _| members.contains(m));
        self.waiting.retain(|m, _| members.contains(m));
        self.heard_ms.retain(|m, _| members.contains(m));
        self.lagging.retain(|m| members.contains(m));
        for m in members {
            if !self.taken.contains_key(&m) {
                self.taken.insert(m.clone(), self.stable.clone());
                if self.window.is_some() && m != self.local {
                    self.heard_ms.insert(m, now_ms);
                }
            }
        }
        self.recompute_truncation();
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
        self.recompute_truncation();
        moved
    }

    /// The truncation point: the minimum over the members that are not lagging, this region
    /// always among them, and never past what some other member holds (a region cut off from
    /// all the others finds them all lagging; what it wrote since must stay in its log until
    /// one of them has it, or it would be lost for good); never below the stable point.
    /// Returns whether it moved.
    fn recompute_truncation(&mut self) -> bool {
        let mut holding = self.taken.iter().filter(|(m, _)| !self.lagging.contains(*m)).map(|(_, t)| t);
        let Some(first) = holding.next() else { return false };
        let mut point = holding.fold(first.clone(), |acc, t| acc.meet(t));
        let mut others = self.taken.iter().filter(|(m, _)| **m != self.local).map(|(_, t)| t);
        if let Some(first) = others.next() {
            point = point.meet(&others.fold(first.clone(), |mut acc, t| {
                acc.join(t);
                acc
            }));
        }
        point.join(&self.stable);
        let moved = point != self.truncate;
        self.truncate = point;
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
        assert!(!s.on_beacon(&r("b"), &vv(&[("a", 4), ("b", 4), ("c", 2)]), &applied, 0));
        assert!(s.on_beacon(&r("c"), &vv(&[("a", 3), ("b", 1), ("c", 3)]), &applied, 0));
        assert_eq!(s.stable(), &vv(&[("a", 3), ("b", 1), ("c", 2)]));
        // A beacon is not taken before this region applied the member's own writes it covers:
        // c's writes up to 9 could still arrive here, and one of them may not have seen a 4.
        assert!(!s.on_beacon(&r("c"), &vv(&[("a", 5), ("b", 4), ("c", 9)]), &applied, 0));
        assert_eq!(s.stable(), &vv(&[("a", 3), ("b", 1), ("c", 2)]));
        // A newer beacon of c waits behind the first; once c's writes are here, the first is taken.
        assert!(!s.on_beacon(&r("c"), &vv(&[("a", 5), ("b", 4), ("c", 12)]), &applied, 0));
        let applied = vv(&[("a", 5), ("b", 4), ("c", 9)]);
        assert!(s.on_local(&vv(&[("a", 5), ("b", 4), ("c", 9)]), &applied));
        assert_eq!(s.stable(), &vv(&[("a", 4), ("b", 4), ("c", 2)]), "b's beacon now holds it");
        // Beacons from strangers and from itself change nothing.
        assert!(!s.on_beacon(&r("x"), &vv(&[("a", 9)]), &applied, 0));
        assert!(!s.on_beacon(&r("a"), &vv(&[("a", 9)]), &applied, 0));
    }

    #[test]
    fn the_point_never_goes_back() {
        let start = vv(&[("a", 2), ("b", 2)]);
        let mut s = Stability::new(r("a"), [r("a"), r("b")], start.clone());
        assert_eq!(s.stable(), &start, "a restart starts where the persisted point was");
        // An older beacon (a reordered ack) does not lower it.
        s.on_beacon(&r("b"), &vv(&[("a", 1), ("b", 1)]), &vv(&[("a", 3), ("b", 3)]), 0);
        assert_eq!(s.stable(), &start);
    }

    #[test]
    fn a_member_that_rejoins_holds_the_point_until_its_new_beacons_come() {
        let mut s = Stability::new(r("a"), [r("a"), r("b"), r("c")], VersionVector::new());
        let applied = vv(&[("a", 5), ("b", 4), ("c", 3)]);
        s.on_local(&applied, &applied);
        s.on_beacon(&r("b"), &vv(&[("a", 5), ("b", 4), ("c", 3)]), &applied, 0);
        s.on_beacon(&r("c"), &vv(&[("a", 2), ("b", 4), ("c", 3)]), &applied, 0);
        assert_eq!(s.stable(), &vv(&[("a", 2), ("b", 4), ("c", 3)]));
        // b is wiped and asks where it stands: its old beacon (a:5) must not carry the point
        // past what its snapshot will hold.
        s.on_rejoin(&r("b"));
        assert!(
            !s.on_beacon(&r("c"), &vv(&[("a", 5), ("b", 4), ("c", 3)]), &applied, 0),
            "b's old word no longer counts"
        );
        assert_eq!(s.stable(), &vv(&[("a", 2), ("b", 4), ("c", 3)]));
        assert!(s.on_beacon(&r("b"), &vv(&[("a", 4), ("b", 4), ("c", 3)]), &applied, 0));
        assert_eq!(s.stable(), &vv(&[("a", 4), ("b", 4), ("c", 3)]));
    }

    #[test]
    fn a_region_that_joins_holds_the_point_and_one_that_leaves_no_longer_does() {
        let mut s = Stability::new(r("a"), [r("a"), r("b"), r("c")], VersionVector::new());
        let applied = vv(&[("a", 5), ("b", 4), ("c", 3)]);
        s.on_local(&applied, &applied);
        s.on_beacon(&r("b"), &applied, &applied, 0);
        s.on_beacon(&r("c"), &vv(&[("a", 2), ("b", 4), ("c", 3)]), &applied, 0);
        assert_eq!(s.stable(), &vv(&[("a", 2), ("b", 4), ("c", 3)]));
        // d joins: until it answers, the point stays where it is.
        s.set_members([r("a"), r("b"), r("c"), r("d")], 0);
        s.on_beacon(&r("c"), &applied, &applied, 0);
        assert_eq!(s.stable(), &vv(&[("a", 2), ("b", 4), ("c", 3)]), "d has not answered");
        assert!(s.on_beacon(&r("d"), &applied, &applied, 0));
        assert_eq!(s.stable(), &applied);
        // c leaves: its old beacon no longer holds the point back.
        let more = vv(&[("a", 7), ("b", 4), ("c", 3)]);
        s.on_beacon(&r("b"), &more, &more, 0);
        s.on_beacon(&r("d"), &more, &more, 0);
        assert!(!s.on_local(&more, &more), "c still holds it");
        s.set_members([r("a"), r("b"), r("d")], 0);
        assert!(s.on_local(&more, &more));
        assert_eq!(s.stable(), &more);
        assert!(!s.on_beacon(&r("c"), &vv(&[("a", 9)]), &more, 0), "a former member's beacon counts for nothing");
    }

    fn window() -> Window {
        Window { away_ms_max: 10_000, changelog_bytes_max: 1_000, silent_ms: 3_000 }
    }

    #[test]
    fn a_member_away_past_the_window_no_longer_holds_truncation_back() {
        let mut s = Stability::new(r("a"), [r("a"), r("b"), r("c")], VersionVector::new()).with_window(window(), 0);
        let applied = vv(&[("a", 9), ("b", 9), ("c", 9)]);
        s.on_local(&applied, &applied);
        s.on_beacon(&r("b"), &vv(&[("a", 8), ("b", 9), ("c", 9)]), &applied, 1_000);
        s.on_beacon(&r("c"), &vv(&[("a", 2), ("b", 3), ("c", 9)]), &applied, 1_000);
        assert_eq!(s.stable(), &vv(&[("a", 2), ("b", 3), ("c", 9)]));
        assert_eq!(s.truncation_point(), s.stable());
        // c goes quiet. Within the window it holds both points, and is reported away.
        s.on_beacon(&r("b"), &vv(&[("a", 9), ("b", 9), ("c", 9)]), &applied, 9_000);
        assert!(!s.on_tick(10_999, 0));
        assert_eq!(s.away(10_999), vec![(r("c"), 9_999)]);
        assert_eq!(s.truncation_point(), &vv(&[("a", 2), ("b", 3), ("c", 9)]));
        // Past it: c is lagging; truncation follows a and b, the stable point still waits for c.
        assert!(s.on_tick(11_000, 0));
        assert_eq!(s.lagging().iter().collect::<Vec<_>>(), vec![&r("c")]);
        assert!(s.away(11_000).is_empty(), "a lagging member is not reported as holding retention back");
        assert_eq!(s.truncation_point(), &vv(&[("a", 9), ("b", 9), ("c", 9)]));
        assert_eq!(s.stable(), &vv(&[("a", 2), ("b", 3), ("c", 9)]));
        // c answers again from behind the truncation point: it stays lagging (it rejoins
        // through a snapshot); once its beacon holds the point, it is let back.
        s.on_beacon(&r("c"), &vv(&[("a", 4), ("b", 3), ("c", 9)]), &applied, 11_500);
        assert_eq!(s.lagging().len(), 1);
        assert!(s.away(11_500).is_empty());
        s.on_beacon(&r("c"), &vv(&[("a", 9), ("b", 9), ("c", 9)]), &applied, 11_600);
        assert!(s.lagging().is_empty());
        assert_eq!(s.truncation_point(), &vv(&[("a", 9), ("b", 9), ("c", 9)]));
    }

    #[test]
    fn a_region_cut_off_from_all_others_keeps_what_none_of_them_has() {
        let mut s = Stability::new(r("a"), [r("a"), r("b"), r("c")], VersionVector::new()).with_window(window(), 0);
        let applied = vv(&[("a", 3), ("b", 3), ("c", 3)]);
        s.on_local(&applied, &applied);
        s.on_beacon(&r("b"), &vv(&[("a", 2), ("b", 3), ("c", 3)]), &applied, 0);
        s.on_beacon(&r("c"), &vv(&[("a", 1), ("b", 3), ("c", 3)]), &applied, 0);
        // a is cut off and goes on writing: b and c both turn lagging in its eyes.
        let applied = vv(&[("a", 9), ("b", 3), ("c", 3)]);
        s.on_local(&applied, &applied);
        s.on_tick(20_000, 0);
        assert_eq!(s.lagging().len(), 2);
        assert_eq!(s.truncation_point(), &vv(&[("a", 2), ("b", 3), ("c", 3)]), "a's writes past what b holds stay");
    }

    #[test]
    fn a_member_away_while_the_changelog_passes_its_bytes_is_lagging_sooner() {
        let mut s = Stability::new(r("a"), [r("a"), r("b")], VersionVector::new()).with_window(window(), 0);
        assert!(!s.on_tick(2_999, 5_000), "not away yet: silent for less than silent_ms");
        assert!(s.lagging().is_empty());
        assert!(!s.on_tick(3_000, 1_000), "away, but the changelog is within its bytes");
        assert!(s.lagging().is_empty());
        s.on_tick(3_000, 1_001);
        assert_eq!(s.lagging().iter().collect::<Vec<_>>(), vec![&r("b")]);
    }

    #[test]
    fn without_a_window_an_away_member_holds_truncation_for_ever() {
        let mut s = Stability::new(r("a"), [r("a"), r("b")], VersionVector::new());
        let applied = vv(&[("a", 9)]);
        s.on_local(&applied, &applied);
        assert!(!s.on_tick(u64::MAX, u64::MAX));
        assert!(s.lagging().is_empty() && s.away(u64::MAX).is_empty());
        assert_eq!(s.truncation_point(), &VersionVector::new());
    }
}
