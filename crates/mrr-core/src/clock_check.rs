//! Whether this node's clock is too far from its peers' for its writes to replicate.
//!
//! A receiver refuses a change stamped more than `max_clock_skew` ahead of its own clock (see
//! [`crate::hlc::Hlc::observe`]). A node whose clock stepped forward therefore stamps writes
//! its peers refuse, for as long as the step, and keeps refusing them after the clock steps
//! back (its HLC high water stays ahead). Acknowledging such writes would promise what cannot
//! be delivered. This module decides, from offsets the runtime measured against each peer
//! (handshakes and acks), whether the node's next stamp would be refused by a majority of the
//! peers it has measured; if so the API refuses writes (503 `clock_skew`) until it would not.
//! A node whose clock is *behind* is not refused here: its stamps are accepted everywhere
//! (they refuse the others' changes instead, which health shows as lag).
//!
//! Pure: no clock is read here, no IO is done.

use std::fmt;

use crate::region::RegionName;

/// One peer's clock as last measured: `offset_ms` is the peer's clock minus this node's, known
/// to within `uncertainty_ms` (half the round trip it was measured over).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerOffset {
    pub peer: RegionName,
    pub offset_ms: i64,
    pub uncertainty_ms: u64,
}

/// A peer's clock offset from one round trip: this node sent a message at `sent_ms` (its
/// clock), the peer stamped its answer `peer_ms` after receiving it, and the answer arrived at
/// `received_ms`. Whatever the delays either way, the offset lies in
/// `[peer_ms − received_ms, peer_ms − sent_ms]`: the middle of that range, and half its width
/// as the uncertainty. An answer that waited in a queue or behind a partition widens the range
/// and never makes a clock look skewed. `None` when the times cannot be one round trip (the
/// answer arrived before its question left: this node's clock stepped back meanwhile).
pub fn round_trip_offset(sent_ms: u64, peer_ms: u64, received_ms: u64) -> Option<(i64, u64)> {
    let rtt_ms = received_ms.checked_sub(sent_ms)?;
    let peer = i128::from(peer_ms);
    let middle = i128::from(sent_ms) + i128::from(rtt_ms / 2);
    let offset_ms = i64::try_from(peer - middle).ok()?;
    Some((offset_ms, rtt_ms.div_ceil(2)))
}

/// Writes must be refused: the next stamp is too far ahead of these peers' clocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skewed {
    /// `(peer, how far ahead of its clock this node's next stamp is, in ms)`.
    pub ahead_of: Vec<(RegionName, i64)>,
    pub measured: usize,
    /// How far this node's HLC is ahead of its own physical clock (after a step back).
    pub hlc_lead_ms: u64,
    pub max_skew_ms: u64,
}

impl Skewed {
    /// The smallest lead over the peers this node is ahead of: how much has to pass (or be
    /// corrected) before writes can replicate again.
    pub fn lead_ms(&self) -> i64 {
        self.ahead_of.iter().map(|(_, ms)| *ms).min().unwrap_or(0)
    }
}

impl fmt::Display for Skewed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peers: Vec<String> = self.ahead_of.iter().map(|(p, ms)| format!("{p} by {ms} ms")).collect();
        write!(
            f,
            "this node's clock is ahead of {} of the {} peers it measured ({}), beyond max_clock_skew ({} ms): they would refuse its writes, so writes are refused until the clocks agree (reads go on)",
            self.ahead_of.len(),
            self.measured,
            peers.join(", "),
            self.max_skew_ms
        )?;
        if self.hlc_lead_ms > 0 {
            write!(
                f,
                "; the hybrid clock is {} ms ahead of the system clock (a step forward that was undone) and waits for it",
                self.hlc_lead_ms
            )?;
        }
        Ok(())
    }
}

/// `Some` when this node's next stamp is beyond `max_skew_ms` ahead of a strict majority of
/// the peers in `offsets`. `hlc_lead_ms`: how far the HLC's last stamp is ahead of physical
/// time now (0 when it is not). An uncertain measurement counts only when it is beyond the
/// bound by more than its uncertainty, so a slow path never refuses writes.
pub fn check(offsets: &[PeerOffset], hlc_lead_ms: u64, max_skew_ms: u64) -> Option<Skewed> {
    let lead = i64::try_from(hlc_lead_ms).unwrap_or(i64::MAX);
    let bound = i64::try_from(max_skew_ms).unwrap_or(i64::MAX);
    let ahead_of: Vec<(RegionName, i64)> = offsets
        .iter()
        .filter_map(|o| {
            let ahead = lead.saturating_sub(o.offset_ms);
            let certain = ahead.saturating_sub(i64::try_from(o.uncertainty_ms).unwrap_or(i64::MAX));
            (certain > bound).then(|| (o.peer.clone(), ahead))
        })
        .collect();
    let measured = offsets.len();
    (ahead_of.len() * 2 > measured).then_some(Skewed { ahead_of, measured, hlc_lead_ms, max_skew_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(peer: &str, offset_ms: i64, uncertainty_ms: u64) -> PeerOffset {
        PeerOffset { peer: RegionName::new(peer).expect("valid"), offset_ms, uncertainty_ms }
    }

    #[test]
    fn ahead_of_a_majority_refuses_and_says_by_how_much() {
        // This node is 2 s ahead of both peers: offsets (peer − local) are -2000.
        let s = check(&[at("b", -2_000, 50), at("c", -1_990, 60)], 0, 200).expect("skewed");
        assert_eq!(s.ahead_of.len(), 2);
        assert_eq!(s.lead_ms(), 1_990);
        let text = s.to_string();
        assert!(text.contains("b by 2000 ms") && text.contains("max_clock_skew (200 ms)"), "{text}");
    }

    #[test]
    fn one_wrong_peer_of_two_does_not_refuse_the_right_majority() {
        // c is 2 s ahead: from here c's offset is +2000, this node is behind it, not ahead.
        assert_eq!(check(&[at("b", 5, 50), at("c", 2_000, 50)], 0, 200), None);
        // c is 2 s behind: this node is ahead of c only, one of two.
        assert_eq!(check(&[at("b", 5, 50), at("c", -2_000, 50)], 0, 200), None);
    }

    #[test]
    fn with_one_peer_measured_it_is_the_majority() {
        assert!(check(&[at("b", -1_000, 50)], 0, 200).is_some());
        assert_eq!(check(&[at("b", 1_000, 50)], 0, 200), None, "behind: its writes replicate");
        assert_eq!(check(&[], 0, 200), None, "nothing measured, nothing known");
    }

    #[test]
    fn an_hlc_left_ahead_by_a_step_back_keeps_refusing_until_it_has_passed() {
        // The clock is right again, but the HLC is 3 s ahead of it.
        let s = check(&[at("b", 0, 50), at("c", 10, 50)], 3_000, 200).expect("skewed");
        assert!(s.to_string().contains("3000 ms ahead of the system clock"), "{s}");
        assert_eq!(check(&[at("b", 0, 50), at("c", 10, 50)], 150, 200), None);
    }

    #[test]
    fn a_late_answer_widens_the_range_instead_of_showing_skew() {
        // Clocks agree; the answer to a message sent at 1,000 waited 700 ms behind a cut.
        let (offset, uncertainty) = round_trip_offset(1_000, 1_060, 1_820).expect("one round trip");
        assert!(offset <= 0 && uncertainty >= 400, "{offset} ± {uncertainty}");
        assert_eq!(check(&[at("b", offset, uncertainty)], 0, 200), None, "no refusal on a late answer");
        // A peer whose clock is really 2 s behind shows it, within the round trip.
        let (offset, uncertainty) = round_trip_offset(10_000, 10_000 - 2_000 + 50, 10_100).expect("one round trip");
        assert_eq!((offset, uncertainty), (-2_000, 50));
        assert!(check(&[at("b", offset, uncertainty)], 0, 200).is_some());
        assert_eq!(round_trip_offset(1_000, 5, 900), None, "received before sent: a step back");
    }

    #[test]
    fn uncertainty_gives_the_benefit_of_the_doubt() {
        assert_eq!(check(&[at("b", -300, 150)], 0, 200), None, "300 ahead, known to within 150");
        assert!(check(&[at("b", -400, 150)], 0, 200).is_some());
    }
}
