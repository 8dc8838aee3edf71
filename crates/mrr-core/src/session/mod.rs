//! Peer sessions as pure state machines.
//!
//! [`OutboundSession`] decides what a node sends to one peer and when: it tails the local
//! changelog from the peer's acknowledged version vector, pipelines batches within bounded
//! in-flight windows (never a round trip per batch), and advances on cumulative acks. It relays
//! changes of third regions only to a peer that does not currently receive them from their
//! origin directly, so a partition between two regions is bridged by a third without doubling
//! steady-state traffic. It never sends a peer its own changes: a change never loops back.
//!
//! Lanes: streams are served in lane priority order (urgent, normal, bulk), each lane with its
//! own in-flight window. A strict order at the sender is not enough on its own: the path to the
//! peer is one FIFO (a TCP connection, a capped link), and an urgent batch sent behind megabytes
//! of bulk waits for them to drain. So the normal and bulk lanes only send while the bytes in
//! flight stay under a window that a delay-based controller keeps near the path's
//! bandwidth-delay product (the LEDBAT idea, RFC 6817: grow while the round trip is near its
//! floor, shrink when it rises, i.e. when a queue forms). The queue in front of an urgent batch
//! then stays near `queue_delay_target_ms`, and the lower lanes still fill the link. Urgent
//! changes are not held by the controller; their bytes count against it.
//!
//! [`InboundSession`] is the accepting side of one stream: it groups what arrived into applies,
//! decides when to ack and when the stream is dead. [`admit_incoming`] is its rule for one
//! change: apply, drop as duplicate, or refuse as a protocol violation (gap, loop).
//!
//! The runtime around these does the IO; nothing here reads a clock or a socket.

mod inbound;

pub use inbound::{Apply, Freshness, InboundError, InboundLimits, InboundSession, Next, Tick};

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::lane::{Lane, Stream};
use crate::region::RegionName;
use crate::vv::{Admission, VersionVector};

/// Bounds of one outbound session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundLimits {
    /// Changes in one batch.
    pub batch_changes_max: usize,
    /// Stored bytes of the changes in one batch, in every lane: far below what a receiver
    /// accepts ([`crate::limits::PEER_MESSAGE_BYTES_MAX`]), so a batch of many large records
    /// is never refused. A single change larger than this travels alone.
    pub batch_bytes_max: u64,
    /// Changes sent but not yet acknowledged, per lane; beyond this the lane waits for acks.
    pub inflight_changes_max: u64,
    /// Queueing delay the normal and bulk lanes may add in front of an urgent change.
    pub queue_delay_target_ms: u64,
    /// Bounds of the window of bytes in flight that holds the normal and bulk lanes back.
    pub window_bytes_min: u64,
    pub window_bytes_max: u64,
}

impl Default for OutboundLimits {
    fn default() -> Self {
        Self {
            batch_changes_max: 1_024,
            batch_bytes_max: 4 * 1024 * 1024,
            inflight_changes_max: 65_536,
            queue_delay_target_ms: 25,
            window_bytes_min: 16 * 1024,
            window_bytes_max: 64 * 1024 * 1024,
        }
    }
}

/// Read up to `limit` changes of `stream` with `seq > after_seq` from the changelog, stopping
/// before the one that would take their stored size past `bytes_max` (the first is always
/// read), then send them as one batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    pub stream: Stream,
    pub after_seq: u64,
    pub limit: usize,
    pub bytes_max: u64,
}

/// One batch handed to the transport and not yet acknowledged.
#[derive(Clone, Debug)]
struct Flight {
    stream: Stream,
    last_seq: u64,
    bytes: u64,
    sent_ms: u64,
}

/// Round trips are compared with the lowest seen in the last [`BASE_BUCKETS`] buckets of
/// [`BASE_BUCKET_MS`]: old enough to have seen an empty queue, young enough to follow a route
/// change (RFC 6817 §4.2's base-delay history).
const BASE_BUCKET_MS: u64 = 60_000;
const BASE_BUCKETS: usize = 10;
/// Bytes a window starts with, before slow start has measured the path.
const WINDOW_BYTES_INITIAL: u64 = 32 * 1024;
/// Lower-lane batches carry at most this share of the window, and never less than
/// [`BATCH_BYTES_MIN`].
const BATCHES_PER_WINDOW: u64 = 8;
const BATCH_BYTES_MIN: u64 = 2 * 1024;

/// The delay-based window of the normal and bulk lanes.
///
/// A flight's round trip is the path's base (propagation, apply, its own transmission) plus the
/// time it queued behind earlier bytes: the part an urgent batch would also wait for. Batches of
/// the lower lanes are cut to a fraction of the window, so a batch's own transmission stays
/// small next to the queue being measured (one 64 kB batch takes 250 ms to cross a 256 kB/s
/// link: counted as queue, it would pin the window to its floor), and so one batch already on
/// the wire never holds an urgent one back long.
#[derive(Clone, Debug)]
struct Window {
    bytes: u64,
    /// Doubling per round trip until the queue first passes the target.
    slow_start: bool,
    /// `(bucket, lowest round trip in it)`, oldest first.
    base_history: VecDeque<(u64, u64)>,
    /// Smoothed bytes per change, to size reads to the room left in the window.
    change_bytes_avg: u64,
    /// How long the receiver took to apply the group before the one being acknowledged.
    previous_apply_ms: u64,
    /// The queueing delay of the last sample.
    queue_ms: u64,
}

impl Window {
    fn new(limits: &OutboundLimits) -> Self {
        Self {
            bytes: WINDOW_BYTES_INITIAL.clamp(limits.window_bytes_min, limits.window_bytes_max),
            slow_start: true,
            base_history: VecDeque::new(),
            change_bytes_avg: 256,
            previous_apply_ms: 0,
            queue_ms: 0,
        }
    }

    fn base_rtt_ms(&self) -> Option<u64> {
        self.base_history.iter().map(|(_, rtt)| *rtt).min()
    }

    /// The most bytes one lower-lane batch may carry.
    fn batch_bytes_max(&self) -> u64 {
        (self.bytes / BATCHES_PER_WINDOW).max(BATCH_BYTES_MIN)
    }

    /// A flight of `bytes` completed after `rtt_ms` (the receiver's apply of the group that
    /// answered it already taken out), of which up to `waited_ms` may have been spent waiting
    /// for the receiver's previous group rather than in a queue the window controls.
    ///
    /// Only `rtt_ms` feeds the base. A flight that arrived as the previous group finished
    /// waited for none of it, so taking `waited_ms` out of base samples too would set the base
    /// up to a target below the path's real round trip: the queue would then never read below
    /// the target, and a window driven to its floor under load could never grow back (measured
    /// on three regions at 55-115 ms: bases 22 ms low, queues 24-27 ms against the 25 ms target,
    /// windows stuck at 16 KiB, backlogs draining at 700 changes/s).
    fn on_sample(&mut self, limits: &OutboundLimits, rtt_ms: u64, waited_ms: u64, bytes: u64, now_ms: u64) {
        let bucket = now_ms / BASE_BUCKET_MS;
        match self.base_history.back_mut() {
            Some((b, min)) if *b == bucket => *min = (*min).min(rtt_ms),
            _ => {
                self.base_history.push_back((bucket, rtt_ms));
                if self.base_history.len() > BASE_BUCKETS {
                    self.base_history.pop_front();
                }
            }
        }
        let base = self.base_rtt_ms().unwrap_or(rtt_ms);
        self.queue_ms = rtt_ms.saturating_sub(base).saturating_sub(waited_ms);
        let queue_ms = self.queue_ms as f64;
        let target_ms = limits.queue_delay_target_ms.max(1) as f64;
        // +1 with an empty queue, 0 on target, -1 (floor) at twice the target or more.
        let off_target = ((target_ms - queue_ms) / target_ms).max(-1.0);
        if self.slow_start && queue_ms > target_ms {
            self.slow_start = false;
        }
        // Per round trip the acked bytes sum to about one window: slow start doubles it, then it
        // grows or shrinks by at most a half per round trip.
        let gain = if self.slow_start { 1.0 } else { 0.5 };
        let delta = gain * off_target * bytes as f64;
        let next = (self.bytes as f64 + delta).max(0.0) as u64;
        self.bytes = next.clamp(limits.window_bytes_min, limits.window_bytes_max);
    }

    fn on_sent(&mut self, changes: u64, bytes: u64) {
        let per_change = bytes / changes.max(1);
        self.change_bytes_avg = (self.change_bytes_avg * 7 + per_change) / 8;
    }
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
    /// Unacknowledged batches, in send order.
    flights: VecDeque<Flight>,
    window: Window,
    /// When the acknowledged position last advanced, or the window last went from empty to
    /// non-empty (caller's monotonic ms).
    progress_ms: u64,
    /// Streams this session cannot carry past a sequence: the change there is placed at the
    /// peer but this region holds only its marker ([`crate::placement::Shipment::Hold`]).
    /// Cleared when the peer's acks move past it (it got the change from elsewhere).
    held: BTreeMap<Stream, u64>,
    /// Relayed streams waiting for a checkpoint: what this region held of them when a read
    /// found nothing it could prove ([`crate::provenance`]). Read again once it holds more, or
    /// an ack arrives.
    waiting: BTreeMap<Stream, u64>,
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
        assert!(limits.batch_changes_max > 0 && limits.inflight_changes_max > 0 && limits.batch_bytes_max > 0);
        assert!(limits.window_bytes_min > 0 && limits.window_bytes_min <= limits.window_bytes_max);
        Self {
            local,
            peer,
            sent: peer_vv.clone(),
            acked: peer_vv,
            peer_direct,
            window: Window::new(&limits),
            limits,
            flights: VecDeque::new(),
            progress_ms: now_ms,
            held: BTreeMap::new(),
            waiting: BTreeMap::new(),
        }
    }

    pub fn peer(&self) -> &RegionName {
        &self.peer
    }

    pub fn acked(&self) -> &VersionVector {
        &self.acked
    }

    /// Whether changes of `origin` go to this peer through this session.
    pub fn carries(&self, origin: &RegionName) -> bool {
        // Strong changes reach every region through the log, never through a session.
        if origin.as_str() == crate::strong::STRONG_ORIGIN {
            return false;
        }
        let loops_back = origin == &self.peer && !crate::planted::active(crate::planted::Bug::SendOwnChangesBack);
        !loops_back && (origin == &self.local || !self.peer_direct.contains(origin))
    }

    /// Changes sent and not yet acknowledged.
    pub fn inflight_changes(&self) -> u64 {
        self.sent.count_ahead_of(&self.acked)
    }

    fn inflight_changes_in(&self, lane: Lane) -> u64 {
        self.sent.iter().filter(|(s, _)| s.lane == lane).map(|(s, n)| n.saturating_sub(self.acked.get(s))).sum()
    }

    /// Bytes sent and not yet acknowledged, all lanes.
    pub fn inflight_bytes(&self) -> u64 {
        self.flights.iter().map(|f| f.bytes).sum()
    }

    /// The current window of the normal and bulk lanes, in bytes.
    pub fn window_bytes(&self) -> u64 {
        self.window.bytes
    }

    /// The lowest recent round trip, taken as the path without a queue (`None` before a sample).
    pub fn base_rtt_ms(&self) -> Option<u64> {
        self.window.base_rtt_ms()
    }

    /// The queueing delay the window controller measured on its last sample.
    pub fn queue_delay_ms(&self) -> u64 {
        self.window.queue_ms
    }

    /// Changes the peer still needs from this session in `lane`, sent or not.
    pub fn backlog_changes_in(&self, local_vv: &VersionVector, lane: Lane) -> u64 {
        local_vv
            .iter()
            .filter(|(s, _)| s.lane == lane && self.carries(&s.origin))
            .map(|(s, n)| n.saturating_sub(self.acked.get(s)))
            .sum()
    }

    /// Changes the peer still needs from this session, sent or not.
    pub fn backlog_changes(&self, local_vv: &VersionVector) -> u64 {
        Lane::ALL.into_iter().map(|lane| self.backlog_changes_in(local_vv, lane)).sum()
    }

    /// How many changes, and how many bytes, `lane` may send now (0 changes: it waits).
    fn room(&self, lane: Lane) -> (u64, u64) {
        let changes = self.limits.inflight_changes_max.saturating_sub(self.inflight_changes_in(lane));
        if lane == Lane::Urgent {
            return (changes, self.limits.batch_bytes_max);
        }
        let inflight_bytes = self.inflight_bytes();
        if inflight_bytes >= self.window.bytes {
            return (0, 0);
        }
        let bytes =
            (self.window.bytes - inflight_bytes).min(self.window.batch_bytes_max()).min(self.limits.batch_bytes_max);
        // At least one change, or a window smaller than a change would never send it.
        let by_bytes = (bytes / self.window.change_bytes_avg.max(1)).max(1);
        (changes.min(by_bytes), bytes)
    }

    /// The next read to make, or `None` when there is nothing to send or every lane with work
    /// is at its window. Lanes in priority order; within a lane, own changes first, then other
    /// origins in name order.
    pub fn next_read(&self, local_vv: &VersionVector) -> Option<ReadRequest> {
        Lane::ALL.into_iter().find_map(|lane| {
            let (room, bytes_max) = self.room(lane);
            if room == 0 {
                return None;
            }
            let own = Stream::new(self.local.clone(), lane);
            let others = local_vv.iter().map(|(s, _)| s).filter(|s| s.lane == lane && s.origin != self.local);
            std::iter::once(&own).chain(others).filter(|s| self.carries(&s.origin)).find_map(|stream| {
                let after_seq = self.sent.get(stream);
                let pending = local_vv.get(stream).saturating_sub(after_seq);
                let held = self.held.get(stream) == Some(&(after_seq + 1))
                    || self.waiting.get(stream).is_some_and(|seq| *seq >= local_vv.get(stream));
                (pending > 0 && !held).then(|| ReadRequest {
                    stream: stream.clone(),
                    after_seq,
                    limit: usize::try_from(pending.min(room)).unwrap_or(usize::MAX).min(self.limits.batch_changes_max),
                    bytes_max,
                })
            })
        })
    }

    /// Stops `stream` at `seq` (the next change it would send): this region cannot send it to
    /// the peer. The stream resumes once the peer's acks show it has `seq`.
    pub fn hold(&mut self, stream: &Stream, seq: u64) {
        assert_eq!(seq, self.sent.get(stream) + 1, "a stream is held at its next change");
        self.held.insert(stream.clone(), seq);
    }

    /// `stream` (relayed) has nothing this region can prove beyond what was sent: its changes
    /// after that end before the origin's next checkpoint. Read it again once this region
    /// holds more than `local_seq` of it, or at the next ack.
    pub fn await_checkpoint(&mut self, stream: &Stream, local_seq: u64) {
        assert!(stream.origin != self.local, "own streams end every group at a checkpoint");
        self.waiting.insert(stream.clone(), local_seq);
    }

    /// Records that changes `first_seq..=last_seq` of `stream`, `bytes` on the wire, were handed
    /// to the transport.
    pub fn on_sent(&mut self, stream: &Stream, first_seq: u64, last_seq: u64, bytes: u64, now_ms: u64) {
        assert!(self.carries(&stream.origin), "sent {stream} changes to {} which does not take them", self.peer);
        assert_eq!(first_seq, self.sent.get(stream) + 1, "sends must be contiguous");
        assert!(last_seq >= first_seq);
        if self.inflight_changes() == 0 {
            self.progress_ms = now_ms;
        }
        self.sent.raise(stream, last_seq);
        self.window.on_sent(last_seq - first_seq + 1, bytes);
        self.flights.push_back(Flight { stream: stream.clone(), last_seq, bytes, sent_ms: now_ms });
    }

    /// A cumulative acknowledgement: the peer's whole applied vector, the origins it now
    /// receives directly, and how long the peer took to apply the group it answers (left out
    /// of round-trip samples: a fixed commit cost is not a queue; so is up to a target's worth
    /// of the previous group's, which a batch arriving during it waited for).
    pub fn on_ack(&mut self, peer_vv: &VersionVector, peer_direct: BTreeSet<RegionName>, apply_ms: u64, now_ms: u64) {
        if !self.acked.dominates(peer_vv) {
            self.progress_ms = now_ms;
        }
        self.acked.join(peer_vv);
        // The peer may have received changes through other paths; never resend what it has.
        self.sent.join(&self.acked);
        let sent = &self.sent;
        self.held.retain(|stream, seq| *seq > sent.get(stream));
        self.waiting.clear();
        self.peer_direct = peer_direct;
        let (acked, limits) = (&self.acked, &self.limits);
        let window = &mut self.window;
        // A flight that arrived while the receiver applied the previous group waited for it; an
        // urgent one would too, whatever the window, so up to a target's worth of that wait is
        // not counted as queue.
        let waited_ms = window.previous_apply_ms.min(limits.queue_delay_target_ms);
        let mut completed = false;
        self.flights.retain(|f| {
            let done = acked.get(&f.stream) >= f.last_seq;
            if done {
                completed = true;
                let rtt_ms = now_ms.saturating_sub(f.sent_ms).saturating_sub(apply_ms);
                window.on_sample(limits, rtt_ms, waited_ms, f.bytes, now_ms);
            }
            !done
        });
        if completed {
            window.previous_apply_ms = apply_ms;
        }
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
    /// Protocol violation: a peer sent a change of the strong tier's stream, which every
    /// region writes from the log itself.
    Strong,
}

pub fn admit_incoming(local: &RegionName, applied: &VersionVector, stream: &Stream, seq: u64) -> Incoming {
    if &stream.origin == local {
        return Incoming::Loop;
    }
    if stream.origin.as_str() == crate::strong::STRONG_ORIGIN {
        return Incoming::Strong;
    }
    match applied.admit(stream, seq) {
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

    /// A stream by its display form: `a`, `a.urgent`, `c.bulk`.
    fn st(s: &str) -> Stream {
        Stream::parse(s).expect("valid")
    }

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        entries.iter().map(|(o, s)| (st(o), *s)).collect()
    }

    fn limits(batch_changes_max: usize, inflight_changes_max: u64) -> OutboundLimits {
        OutboundLimits { batch_changes_max, inflight_changes_max, ..OutboundLimits::default() }
    }

    fn session(limits: OutboundLimits) -> OutboundSession {
        OutboundSession::new(r("a"), r("b"), vv(&[("a", 2)]), BTreeSet::new(), limits, 0)
    }

    #[test]
    fn starts_from_peer_vector_and_pipelines_without_acks() {
        let mut s = session(limits(3, 100));
        let local = vv(&[("a", 10)]);
        let read = s.next_read(&local).expect("work");
        assert_eq!(read, ReadRequest { stream: st("a"), after_seq: 2, limit: 3, bytes_max: 4 * 1024 });
        s.on_sent(&st("a"), 3, 5, 300, 0);
        // No ack yet, and the next batch is ready anyway: pipelining.
        let read = s.next_read(&local).expect("work");
        assert_eq!(read.after_seq, 5);
        assert_eq!(s.inflight_changes(), 3);
    }

    #[test]
    fn window_bounds_inflight_and_acks_reopen_it() {
        let mut s = session(limits(10, 4));
        let local = vv(&[("a", 100)]);
        let read = s.next_read(&local).expect("work");
        assert_eq!(read.limit, 4);
        s.on_sent(&st("a"), 3, 6, 400, 0);
        assert_eq!(s.next_read(&local), None, "window full");
        s.on_ack(&vv(&[("a", 5)]), BTreeSet::new(), 0, 0);
        assert_eq!(s.next_read(&local).map(|r| r.limit), Some(3));
        assert_eq!(s.backlog_changes(&local), 95);
    }

    #[test]
    fn stalls_when_acks_stop_advancing_with_changes_in_flight() {
        let mut s = session(OutboundLimits::default());
        let local = vv(&[("a", 10)]);
        assert!(!s.stalled(10_000, 1_000), "nothing in flight is never a stall");
        s.on_sent(&st("a"), 3, 10, 800, 5_000);
        assert!(!s.stalled(5_900, 1_000));
        // Heartbeat acks keep arriving but do not move: a batch was lost.
        s.on_ack(&vv(&[("a", 2)]), BTreeSet::new(), 0, 5_500);
        assert!(s.stalled(6_001, 1_000));
        s.on_ack(&vv(&[("a", 6)]), BTreeSet::new(), 0, 6_001);
        assert!(!s.stalled(6_500, 1_000), "progress resets the clock");
        s.on_ack(&vv(&[("a", 10)]), BTreeSet::new(), 0, 6_600);
        assert!(!s.stalled(60_000, 1_000));
        assert_eq!(s.backlog_changes(&local), 0);
        assert_eq!(s.inflight_bytes(), 0);
    }

    #[test]
    fn never_sends_the_peer_its_own_changes() {
        let s = session(OutboundLimits::default());
        let local = vv(&[("a", 2), ("b", 50), ("b.urgent", 3)]);
        assert_eq!(s.next_read(&local), None);
        assert!(!s.carries(&r("b")));
    }

    #[test]
    fn relays_third_region_only_while_peer_lacks_a_direct_stream() {
        let mut s = session(OutboundLimits::default());
        let local = vv(&[("a", 2), ("c", 7)]);
        // Peer has not said it hears c directly: relay from its cursor.
        assert_eq!(s.next_read(&local).map(|r| (r.stream, r.after_seq)), Some((st("c"), 0)));
        s.on_ack(&vv(&[("a", 2), ("c", 4)]), [r("c")].into(), 0, 0);
        assert_eq!(s.next_read(&local), None, "peer hears c directly");
        // c's direct link to the peer breaks: relay resumes from what the peer acknowledged.
        s.on_ack(&vv(&[("a", 2), ("c", 4)]), BTreeSet::new(), 0, 0);
        assert_eq!(s.next_read(&local).map(|r| (r.stream, r.after_seq)), Some((st("c"), 4)));
    }

    #[test]
    fn a_held_stream_waits_for_the_peer_to_get_the_change_elsewhere() {
        let mut s = session(OutboundLimits::default());
        let local = vv(&[("a", 2), ("c", 9)]);
        s.on_ack(&vv(&[("a", 2), ("c", 3)]), BTreeSet::new(), 0, 0);
        // Relaying c: change 4 is placed at the peer, but this region holds only its marker.
        s.hold(&st("c"), 4);
        assert_eq!(s.next_read(&local), None, "nothing of c past the held change");
        s.on_ack(&vv(&[("a", 2), ("c", 3)]), BTreeSet::new(), 0, 0);
        assert_eq!(s.next_read(&local), None, "still held: the peer has not got it");
        s.on_ack(&vv(&[("a", 2), ("c", 5)]), BTreeSet::new(), 0, 0);
        assert_eq!(s.next_read(&local).map(|r| (r.stream, r.after_seq)), Some((st("c"), 5)), "resumes after it");
    }

    #[test]
    fn acks_through_other_paths_skip_resends() {
        let mut s = session(OutboundLimits::default());
        let local = vv(&[("a", 2), ("c", 9)]);
        s.on_ack(&vv(&[("c", 9)]), BTreeSet::new(), 0, 0);
        assert_eq!(s.next_read(&local), None);
    }

    #[test]
    fn lanes_go_in_priority_order_own_and_relayed() {
        let s = session(OutboundLimits::default());
        let local = vv(&[("a", 500), ("a.bulk", 9_000), ("c.urgent", 2), ("a.urgent", 1)]);
        let read = s.next_read(&local).expect("work");
        assert_eq!((read.stream, read.after_seq), (st("a.urgent"), 0), "own urgent first");
        let mut s = s;
        s.on_sent(&st("a.urgent"), 1, 1, 100, 0);
        assert_eq!(s.next_read(&local).map(|r| r.stream), Some(st("c.urgent")), "then relayed urgent");
        s.on_sent(&st("c.urgent"), 1, 2, 100, 0);
        assert_eq!(s.next_read(&local).map(|r| (r.stream, r.after_seq)), Some((st("a"), 2)), "then normal");
        assert_eq!(s.backlog_changes_in(&local, Lane::Bulk), 9_000);
    }

    #[test]
    fn a_full_lower_lane_never_blocks_urgent() {
        let mut s = session(limits(100, 1_000));
        let local = vv(&[("a.bulk", 50_000)]);
        // Fill the bulk lane's change window and the byte window.
        for _ in 0..10 {
            let Some(read) = s.next_read(&local) else { break };
            assert_eq!(read.stream, st("a.bulk"));
            let first = read.after_seq + 1;
            let last = read.after_seq + read.limit as u64;
            s.on_sent(&read.stream, first, last, read.limit as u64 * 2_000, 0);
        }
        assert_eq!(s.next_read(&local), None, "bulk is held by its windows");
        let local = vv(&[("a.bulk", 50_000), ("a.urgent", 1)]);
        let read = s.next_read(&local).expect("urgent has its own window");
        assert_eq!((read.stream, read.limit), (st("a.urgent"), 1));
        assert_eq!(read.bytes_max, OutboundLimits::default().batch_bytes_max, "bounded in bytes all the same");
    }

    /// Sends every batch of 200-byte bulk changes `s` allows at `now_us` over a FIFO link of
    /// `rate` bytes per ms that is busy until `link_free_us`; returns, per batch, its last seq,
    /// its bytes, and when its last byte leaves the link (µs).
    fn send_ready(
        s: &mut OutboundSession,
        seq: &mut u64,
        link_free_us: &mut u64,
        now_us: u64,
        rate: u64,
    ) -> Vec<(u64, u64, u64)> {
        let (bulk, local) = (st("a.bulk"), vv(&[("a.bulk", u64::MAX / 2)]));
        let mut sent = Vec::new();
        while let Some(read) = s.next_read(&local) {
            let bytes = read.limit as u64 * 200;
            let last = *seq + read.limit as u64;
            s.on_sent(&bulk, *seq + 1, last, bytes, now_us / 1_000);
            *seq = last;
            *link_free_us = (*link_free_us).max(now_us) + bytes * 1_000 / rate;
            sent.push((last, bytes, *link_free_us));
        }
        sent
    }

    /// A FIFO path (one TCP connection, one capped link): `rate` bytes per ms, `delay_ms` each
    /// way, time kept in microseconds and shown to the session in whole milliseconds, as the
    /// runtime does. Drives a session with an endless bulk backlog of 200-byte changes for
    /// `run_ms` and returns (bytes delivered per ms over the second half, the mean and the
    /// highest wait in ms an urgent batch would have had behind queued bytes, sampled at every
    /// ack).
    fn drive_path(rate: u64, delay_ms: u64, run_ms: u64) -> (u64, u64, u64) {
        let mut s = session(limits(1_024, 1_000_000));
        let (mut now_us, mut free_at_us, mut seq) = (0u64, 0u64, 0u64);
        let mut acks: VecDeque<(u64, u64, u64)> = VecDeque::new(); // (ack at µs, last seq, bytes)
        let (mut delivered_late, mut waits_us) = (0u64, Vec::new());
        while now_us < run_ms * 1_000 {
            for (last, bytes, left_us) in send_ready(&mut s, &mut seq, &mut free_at_us, now_us, rate) {
                acks.push_back((left_us + 2_000 * delay_ms, last, bytes));
            }
            let Some((at_us, last, bytes)) = acks.pop_front() else { panic!("nothing in flight") };
            now_us = at_us;
            if now_us > run_ms * 500 {
                delivered_late += bytes;
                waits_us.push(free_at_us.saturating_sub(now_us));
            }
            s.on_ack(&vv(&[("a.bulk", last)]), BTreeSet::new(), 0, now_us / 1_000);
        }
        let mean_us = waits_us.iter().sum::<u64>() / waits_us.len().max(1) as u64;
        (delivered_late / (run_ms / 2), mean_us / 1_000, waits_us.into_iter().max().unwrap_or(0) / 1_000)
    }

    #[test]
    fn on_a_slow_capped_path_the_lower_lanes_fill_the_link_with_a_short_queue() {
        // 256 kB/s, 50 ms each way: the bandwidth-delay product is 25.6 kB.
        let (rate, mean_wait, max_wait) = drive_path(256, 50, 60_000);
        let target = OutboundLimits::default().queue_delay_target_ms;
        assert!(rate * 100 >= 256 * 85, "link use {rate} B/ms of 256");
        assert!(mean_wait <= target * 2, "an urgent batch would wait {mean_wait} ms on average");
        assert!(max_wait <= target * 6, "an urgent batch would wait up to {max_wait} ms");
    }

    #[test]
    fn on_a_fast_path_the_window_grows_to_the_bandwidth_delay_product() {
        // 100 MB/s, 1 ms each way: slow start must reach a window of hundreds of kB quickly.
        let (rate, mean_wait, _) = drive_path(100_000, 1, 300);
        assert!(rate * 100 >= 100_000 * 85, "link use {rate} B/ms of 100000");
        assert!(mean_wait <= OutboundLimits::default().queue_delay_target_ms * 2, "{mean_wait} ms");
    }

    /// A FIFO path of `rate` bytes per ms and `delay_ms` each way to a receiver that applies
    /// in groups, as the inbound runtime does: whatever has arrived when it is idle, for
    /// `apply_ms(now_ms, changes)`, then one cumulative ack carrying that apply time. Batches
    /// arriving during an apply wait for it. Drives an endless bulk backlog of 200-byte changes
    /// until `run_ms` and returns, per second of simulated time, (changes delivered, window
    /// bytes at the end of that second).
    fn drive_receiver(rate: u64, delay_ms: u64, run_ms: u64, apply_ms: impl Fn(u64, u64) -> u64) -> Vec<(u64, u64)> {
        let mut s = session(limits(1_024, 1_000_000));
        let bulk = st("a.bulk");
        let (mut now_us, mut link_free_us, mut seq) = (0u64, 0u64, 0u64);
        // Arrivals at the receiver: (at µs, last seq); acks at the sender: (at µs, seq, apply ms).
        let mut arrivals: VecDeque<(u64, u64)> = VecDeque::new();
        let mut acks: VecDeque<(u64, u64, u64)> = VecDeque::new();
        let mut receiver_free_us = 0u64;
        let mut per_second = vec![(0u64, 0u64); usize::try_from(run_ms / 1_000).expect("small")];
        let mut acked_seq = 0u64;
        while now_us < run_ms * 1_000 {
            for (last, _, left_us) in send_ready(&mut s, &mut seq, &mut link_free_us, now_us, rate) {
                arrivals.push_back((left_us + delay_ms * 1_000, last));
            }
            // The receiver starts a group when it is idle and something has arrived.
            let start_us = match arrivals.front() {
                Some(&(at, _)) => at.max(receiver_free_us),
                None => u64::MAX,
            };
            let next_ack_us = acks.front().map_or(u64::MAX, |a| a.0);
            if start_us <= next_ack_us {
                let mut last = 0;
                while let Some(&(at, l)) = arrivals.front() {
                    if at > start_us {
                        break;
                    }
                    last = l;
                    arrivals.pop_front();
                }
                let took_ms = apply_ms(start_us / 1_000, last - acked_seq);
                receiver_free_us = start_us + took_ms * 1_000;
                // Decoding, the ack's encoding and the transport add a few ms the apply time
                // does not include, on every round trip alike.
                acks.push_back((receiver_free_us + (delay_ms + 3) * 1_000, last, took_ms));
                acked_seq = last;
                continue;
            }
            let Some((at_us, last, took_ms)) = acks.pop_front() else { panic!("nothing in flight") };
            let before = s.acked().get(&bulk);
            now_us = at_us;
            s.on_ack(&vv(&[("a.bulk", last)]), BTreeSet::new(), took_ms, now_us / 1_000);
            if let Some(slot) = per_second.get_mut(usize::try_from(now_us / 1_000_000).expect("small")) {
                slot.0 += last - before;
                slot.1 = s.window_bytes();
            }
        }
        per_second
    }

    #[test]
    fn the_window_recovers_once_a_loaded_receiver_is_idle_again() {
        // 10 MB/s, 65 ms each way (a 130 ms round trip, as between mrr dev's regions). For 20 s
        // the receiver's writer is busy with local load: a group takes 30-90 ms whatever its
        // size, so some flights arrive just as a group ends and wait for none of it. Then the
        // load ends and a group costs 1 ms plus 5 µs a change.
        let load_ms = 20_000;
        let apply = |now_ms: u64, changes: u64| {
            if now_ms < load_ms {
                30 + (now_ms * 7_919) % 60
            } else {
                1 + changes * 5 / 1_000
            }
        };
        let seconds = drive_receiver(10_000, 65, 40_000, apply);
        // From a few seconds after the load ends the backlog drains at link or apply speed: a
        // 10 MB/s link carries 50,000 changes/s; the receiver applies ~150,000/s. The 16 KiB
        // floor would carry ~600/s.
        for (i, (changes, window)) in seconds.iter().enumerate().skip(25) {
            assert!(*changes >= 25_000, "second {i}: {changes} changes/s with a window of {window} bytes: {seconds:?}");
        }
    }

    #[test]
    fn incoming_rules() {
        let applied = vv(&[("b", 3), ("b.urgent", 1)]);
        assert_eq!(admit_incoming(&r("a"), &applied, &st("b"), 4), Incoming::Apply);
        assert_eq!(admit_incoming(&r("a"), &applied, &st("b"), 3), Incoming::Duplicate);
        assert_eq!(admit_incoming(&r("a"), &applied, &st("b"), 6), Incoming::Gap { expected: 4 });
        assert_eq!(admit_incoming(&r("a"), &applied, &st("b.urgent"), 2), Incoming::Apply);
        assert_eq!(admit_incoming(&r("a"), &applied, &st("b.bulk"), 1), Incoming::Apply);
        assert_eq!(admit_incoming(&r("a"), &applied, &st("a"), 1), Incoming::Loop);
    }
}
