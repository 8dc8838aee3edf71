//! Peer sessions as pure state machines.
//!
//! [`OutboundSession`] decides what a node sends to one peer and when: it tails the local
//! changelog from the peer's acknowledged version vector, pipelines batches within a bounded
//! in-flight window (never a round trip per batch), and advances on cumulative acks. It relays
//! changes of third regions only to a peer that does not currently receive them from their
//! origin directly, so a partition between two regions is bridged by a third without doubling
//! steady-state traffic. It never sends a peer its own changes: a change never loops back.
//!
//! [`admit_incoming`] is the receiving side's rule for one change: apply, drop as duplicate,
//! or refuse as a protocol violation (gap, loop).
//!
//! The runtime around these does the IO; nothing here reads a clock or a socket.

use std::collections::BTreeSet;

use crate::region::RegionName;
use crate::vv::{Admission, VersionVector};

/// Bounds of one outbound session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundLimits {
    /// Changes in one batch.
    pub batch_changes_max: usize,
    /// Changes sent but not yet acknowledged; beyond this the session waits for acks.
    pub inflight_changes_max: u64,
}

impl Default for OutboundLimits {
    fn default() -> Self {
        Self { batch_changes_max: 1_024, inflight_changes_max: 65_536 }
    }
}

/// Read `limit` changes of `origin` with `seq > after_seq` from the changelog, then send them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    pub origin: RegionName,
    pub after_seq: u64,
    pub limit: usize,
}

#[derive(Clone, Debug)]
pub struct OutboundSession {
    local: RegionName,
    peer: RegionName,
    /// Cumulative: everything at or below is durably applied at the peer.
    acked: VersionVector,
    /// Everything at or below has been handed to the transport.
    sent: VersionVector,
    /// Origins the peer currently receives from the origin itself.
    peer_direct: BTreeSet<RegionName>,
    limits: OutboundLimits,
    /// When the acknowledged position last advanced, or the window last went from empty to
    /// non-empty (caller's monotonic ms).
    progress_ms: u64,
}

impl OutboundSession {
    /// A session that starts from what the peer said it has in its handshake.
    pub fn new(
        local: RegionName,
        peer: RegionName,
        peer_vv: VersionVector,
        peer_direct: BTreeSet<RegionName>,
        limits: OutboundLimits,
        now_ms: u64,
    ) -> Self {
        assert!(local != peer, "a session connects two different regions");
        assert!(limits.batch_changes_max > 0 && limits.inflight_changes_max > 0);
        Self { local, peer, sent: peer_vv.clone(), acked: peer_vv, peer_direct, limits, progress_ms: now_ms }
    }

    pub fn peer(&self) -> &RegionName {
        &self.peer
    }

    pub fn acked(&self) -> &VersionVector {
        &self.acked
    }

    /// Whether changes of `origin` go to this peer through this session.
    pub fn carries(&self, origin: &RegionName) -> bool {
        let loops_back = origin == &self.peer && !crate::planted::active(crate::planted::Bug::SendOwnChangesBack);
        !loops_back && (origin == &self.local || !self.peer_direct.contains(origin))
    }

    /// Changes sent and not yet acknowledged.
    pub fn inflight_changes(&self) -> u64 {
        self.sent.count_ahead_of(&self.acked)
    }

    /// Changes the peer still needs from this session, sent or not.
    pub fn backlog_changes(&self, local_vv: &VersionVector) -> u64 {
        local_vv.iter().filter(|(o, _)| self.carries(o)).map(|(o, s)| s.saturating_sub(self.acked.get(o))).sum()
    }

    /// The next read to make, or `None` when there is nothing to send or the window is full.
    /// Own changes go first; then other origins in name order.
    pub fn next_read(&self, local_vv: &VersionVector) -> Option<ReadRequest> {
        let inflight = self.inflight_changes();
        if inflight >= self.limits.inflight_changes_max {
            return None;
        }
        let window = self.limits.inflight_changes_max - inflight;
        let own = std::iter::once(&self.local);
        let others = local_vv.iter().map(|(o, _)| o).filter(|o| *o != &self.local);
        own.chain(others).filter(|o| self.carries(o)).find_map(|origin| {
            let after_seq = self.sent.get(origin);
            let pending = local_vv.get(origin).saturating_sub(after_seq);
            (pending > 0).then(|| ReadRequest {
                origin: origin.clone(),
                after_seq,
                limit: usize::try_from(pending.min(window)).unwrap_or(usize::MAX).min(self.limits.batch_changes_max),
            })
        })
    }

    /// Records that changes `first_seq..=last_seq` of `origin` were handed to the transport.
    pub fn on_sent(&mut self, origin: &RegionName, first_seq: u64, last_seq: u64, now_ms: u64) {
        assert!(self.carries(origin), "sent {origin} changes to {} which does not take them", self.peer);
        assert_eq!(first_seq, self.sent.get(origin) + 1, "sends must be contiguous");
        assert!(last_seq >= first_seq);
        if self.inflight_changes() == 0 {
            self.progress_ms = now_ms;
        }
        self.sent.raise(origin, last_seq);
    }

    /// A cumulative acknowledgement: the peer's whole applied vector and the origins it now
    /// receives directly.
    pub fn on_ack(&mut self, peer_vv: &VersionVector, peer_direct: BTreeSet<RegionName>, now_ms: u64) {
        if !self.acked.dominates(peer_vv) {
            self.progress_ms = now_ms;
        }
        self.acked.join(peer_vv);
        // The peer may have received changes through other paths; never resend what it has.
        self.sent.join(&self.acked);
        self.peer_direct = peer_direct;
    }

    /// Changes are in flight and the peer's acknowledgements have not moved for `timeout_ms`,
    /// although it may still be answering: something sent was lost or refused without a word.
    /// The caller ends the stream and resumes from what the peer says it has, which resends
    /// exactly what is missing (the rest is dropped as duplicates).
    pub fn stalled(&self, now_ms: u64, timeout_ms: u64) -> bool {
        self.inflight_changes() > 0 && now_ms.saturating_sub(self.progress_ms) > timeout_ms
    }
}

/// What a receiver does with one incoming change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incoming {
    Apply,
    Duplicate,
    /// Protocol violation: the stream skipped changes.
    Gap {
        expected: u64,
    },
    /// Protocol violation: a peer sent this node its own change.
    Loop,
}

pub fn admit_incoming(local: &RegionName, applied: &VersionVector, origin: &RegionName, seq: u64) -> Incoming {
    if origin == local {
        return Incoming::Loop;
    }
    match applied.admit(origin, seq) {
        Admission::Next => Incoming::Apply,
        Admission::Duplicate => Incoming::Duplicate,
        Admission::Gap { expected } => Incoming::Gap { expected },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RegionName {
        RegionName::new(s).expect("valid")
    }

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        entries.iter().map(|(o, s)| (r(o), *s)).collect()
    }

    fn session(limits: OutboundLimits) -> OutboundSession {
        OutboundSession::new(r("a"), r("b"), vv(&[("a", 2)]), BTreeSet::new(), limits, 0)
    }

    #[test]
    fn starts_from_peer_vector_and_pipelines_without_acks() {
        let mut s = session(OutboundLimits { batch_changes_max: 3, inflight_changes_max: 100 });
        let local = vv(&[("a", 10)]);
        let read = s.next_read(&local).expect("work");
        assert_eq!(read, ReadRequest { origin: r("a"), after_seq: 2, limit: 3 });
        s.on_sent(&r("a"), 3, 5, 0);
        // No ack yet, and the next batch is ready anyway: pipelining.
        let read = s.next_read(&local).expect("work");
        assert_eq!(read.after_seq, 5);
        assert_eq!(s.inflight_changes(), 3);
    }

    #[test]
    fn window_bounds_inflight_and_acks_reopen_it() {
        let mut s = session(OutboundLimits { batch_changes_max: 10, inflight_changes_max: 4 });
        let local = vv(&[("a", 100)]);
        let read = s.next_read(&local).expect("work");
        assert_eq!(read.limit, 4);
        s.on_sent(&r("a"), 3, 6, 0);
        assert_eq!(s.next_read(&local), None, "window full");
        s.on_ack(&vv(&[("a", 5)]), BTreeSet::new(), 0);
        assert_eq!(s.next_read(&local).map(|r| r.limit), Some(3));
        assert_eq!(s.backlog_changes(&local), 95);
    }

    #[test]
    fn stalls_when_acks_stop_advancing_with_changes_in_flight() {
        let mut s = session(OutboundLimits::default());
        let local = vv(&[("a", 10)]);
        assert!(!s.stalled(10_000, 1_000), "nothing in flight is never a stall");
        s.on_sent(&r("a"), 3, 10, 5_000);
        assert!(!s.stalled(5_900, 1_000));
        // Heartbeat acks keep arriving but do not move: a batch was lost.
        s.on_ack(&vv(&[("a", 2)]), BTreeSet::new(), 5_500);
        assert!(s.stalled(6_001, 1_000));
        s.on_ack(&vv(&[("a", 6)]), BTreeSet::new(), 6_001);
        assert!(!s.stalled(6_500, 1_000), "progress resets the clock");
        s.on_ack(&vv(&[("a", 10)]), BTreeSet::new(), 6_600);
        assert!(!s.stalled(60_000, 1_000));
        assert_eq!(s.backlog_changes(&local), 0);
    }

    #[test]
    fn never_sends_the_peer_its_own_changes() {
        let s = session(OutboundLimits::default());
        let local = vv(&[("a", 2), ("b", 50)]);
        assert_eq!(s.next_read(&local), None);
        assert!(!s.carries(&r("b")));
    }

    #[test]
    fn relays_third_region_only_while_peer_lacks_a_direct_stream() {
        let mut s = session(OutboundLimits::default());
        let local = vv(&[("a", 2), ("c", 7)]);
        // Peer has not said it hears c directly: relay from its cursor.
        assert_eq!(s.next_read(&local).map(|r| (r.origin, r.after_seq)), Some((r("c"), 0)));
        s.on_ack(&vv(&[("a", 2), ("c", 4)]), [r("c")].into(), 0);
        assert_eq!(s.next_read(&local), None, "peer hears c directly");
        // c's direct link to the peer breaks: relay resumes from what the peer acknowledged.
        s.on_ack(&vv(&[("a", 2), ("c", 4)]), BTreeSet::new(), 0);
        assert_eq!(s.next_read(&local).map(|r| (r.origin, r.after_seq)), Some((r("c"), 4)));
    }

    #[test]
    fn acks_through_other_paths_skip_resends() {
        let mut s = session(OutboundLimits::default());
        let local = vv(&[("a", 2), ("c", 9)]);
        s.on_ack(&vv(&[("c", 9)]), BTreeSet::new(), 0);
        assert_eq!(s.next_read(&local), None);
    }

    #[test]
    fn incoming_rules() {
        let applied = vv(&[("b", 3)]);
        assert_eq!(admit_incoming(&r("a"), &applied, &r("b"), 4), Incoming::Apply);
        assert_eq!(admit_incoming(&r("a"), &applied, &r("b"), 3), Incoming::Duplicate);
        assert_eq!(admit_incoming(&r("a"), &applied, &r("b"), 6), Incoming::Gap { expected: 4 });
        assert_eq!(admit_incoming(&r("a"), &applied, &r("a"), 1), Incoming::Loop);
    }
}
