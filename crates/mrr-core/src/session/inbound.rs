//! The accepting side of one peer stream, as a pure state machine.
//!
//! Batches that arrive while an apply is in flight wait here and go to the writer together: one
//! commit and one ack for all of them, the ack cumulative (the applied vector after the apply,
//! which covers every change before it). A heartbeat with nothing to apply is answered at once
//! with an ack, which echoes the heartbeat's clock: the dialer measures the peer's clock over
//! one round trip, not over a round trip plus however long the ack waited for a timer. With
//! nothing to answer for a heartbeat interval it sends an ack anyway, so the dialer's freshness
//! and window keep moving on an idle stream; a stream silent for the peer timeout is dead. Each batch and heartbeat carries the
//! sender's durable vector and wall clock: once this region's applied vector covers that
//! vector, it holds everything the sender had at that time (the freshness the status board
//! reports).
//!
//! The tokio acceptor and the simulator drive this the same way. Not here: decoding and
//! per-change checks (the wire layer; [`super::admit_incoming`] in the writer), the apply itself,
//! status and metrics.

use std::collections::VecDeque;

use crate::change::Change;
use crate::region::RegionName;
use crate::vv::VersionVector;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundLimits {
    /// Changes in one apply at most, when batches queue up. A single batch larger than this
    /// still goes whole.
    pub apply_changes_max: usize,
    /// Without an ack for this long, one goes out anyway.
    pub heartbeat_ms: u64,
    /// Nothing heard for longer than this: the stream is dead.
    pub timeout_ms: u64,
}

impl Default for InboundLimits {
    fn default() -> Self {
        Self { apply_changes_max: 8_192, heartbeat_ms: 250, timeout_ms: 5_000 }
    }
}

/// The sender's position when it sent something: its own durable streams and its wall clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Freshness {
    pub sender_durable: VersionVector,
    pub wall_ms: u64,
}

/// A group of queued batches to apply in one writer request.
#[derive(Debug)]
pub struct Apply {
    pub changes: Vec<Change>,
    /// Encoded bytes of the batches taken.
    pub bytes: u64,
    pub batches: usize,
    /// The newest sender position, when this apply takes everything queued (it tells, after
    /// the apply, whether this region caught up with the sender).
    pub freshness: Option<Freshness>,
}

/// What to do next on the stream.
#[derive(Debug)]
pub enum Next {
    /// Nothing to apply (or an apply is in flight).
    Idle,
    /// A heartbeat (or an empty batch) arrived with nothing to apply: send an ack now, then
    /// [`InboundSession::on_sent`]. `caught_up`: this region already holds everything the
    /// sender had when its clock read that.
    Answer { caught_up: Option<u64> },
    /// Apply these, then call [`InboundSession::on_applied`] and send the ack.
    Apply(Apply),
}

/// After an apply: whether the region caught up with the sender, and whether the stream ends.
#[derive(Debug, PartialEq, Eq)]
pub struct Applied {
    pub caught_up: Option<u64>,
    /// The writer refused a change: the ack (carrying the refusal) is the stream's last message.
    pub close: bool,
}

/// What a timer tick asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Tick {
    Quiet,
    /// Send an ack with the current applied vector, then [`InboundSession::on_sent`].
    Heartbeat,
    /// Nothing heard for `silent_ms`: end the stream.
    TimedOut {
        silent_ms: u64,
    },
}

/// A message no well-behaved dialer sends; the stream ends with this error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    #[error("sender_durable names streams of {named}, not only of the sender {peer}")]
    ForeignDurable { peer: RegionName, named: RegionName },
}

#[derive(Debug)]
pub struct InboundSession {
    peer: RegionName,
    limits: InboundLimits,
    /// Batches not yet applied, with their encoded bytes.
    queued: VecDeque<(Vec<Change>, u64)>,
    queued_changes: usize,
    freshness: Option<Freshness>,
    applying: bool,
    closed: bool,
    last_heard_ms: u64,
    last_sent_ms: u64,
}

impl InboundSession {
    /// A stream from `peer` whose handshake completed at `now_ms` (the Welcome was the last
    /// message sent).
    pub fn new(peer: RegionName, limits: InboundLimits, now_ms: u64) -> Self {
        assert!(limits.apply_changes_max > 0 && limits.timeout_ms > 0, "bounds are positive");
        Self {
            peer,
            limits,
            queued: VecDeque::new(),
            queued_changes: 0,
            freshness: None,
            applying: false,
            closed: false,
            last_heard_ms: now_ms,
            last_sent_ms: now_ms,
        }
    }

    pub fn peer(&self) -> &RegionName {
        &self.peer
    }

    fn heard(&mut self, sender_durable: VersionVector, wall_ms: u64, now_ms: u64) -> Result<(), InboundError> {
        // The sender reports its own position only; another region's streams there would make
        // a caught-up claim about data the sender does not vouch for.
        if let Some((s, _)) = sender_durable.iter().find(|(s, _)| s.origin != self.peer) {
            return Err(InboundError::ForeignDurable { peer: self.peer.clone(), named: s.origin.clone() });
        }
        self.last_heard_ms = self.last_heard_ms.max(now_ms);
        self.freshness = Some(Freshness { sender_durable, wall_ms });
        Ok(())
    }

    /// A batch arrived (`bytes`: its encoded size).
    pub fn on_batch(
        &mut self,
        changes: Vec<Change>,
        bytes: u64,
        sender_durable: VersionVector,
        wall_ms: u64,
        now_ms: u64,
    ) -> Result<(), InboundError> {
        self.heard(sender_durable, wall_ms, now_ms)?;
        if !changes.is_empty() && !self.closed {
            self.queued_changes += changes.len();
            self.queued.push_back((changes, bytes));
        }
        Ok(())
    }

    pub fn on_heartbeat(
        &mut self,
        sender_durable: VersionVector,
        wall_ms: u64,
        now_ms: u64,
    ) -> Result<(), InboundError> {
        self.heard(sender_durable, wall_ms, now_ms)
    }

    /// Whether more already-arrived messages should join the next apply.
    pub fn wants_more(&self) -> bool {
        self.queued_changes < self.limits.apply_changes_max
    }

    /// The next apply, given this region's applied vector now.
    pub fn next(&mut self, applied: &VersionVector) -> Next {
        if self.applying || self.closed {
            return Next::Idle;
        }
        if self.queued.is_empty() {
            return match self.freshness.take() {
                Some(f) => Next::Answer { caught_up: applied.dominates(&f.sender_durable).then_some(f.wall_ms) },
                None => Next::Idle,
            };
        }
        let mut apply = Apply { changes: Vec::new(), bytes: 0, batches: 0, freshness: None };
        while let Some((changes, _)) = self.queued.front() {
            if apply.batches > 0 && apply.changes.len() + changes.len() > self.limits.apply_changes_max {
                break;
            }
            let Some((changes, bytes)) = self.queued.pop_front() else { break };
            self.queued_changes -= changes.len();
            apply.changes.extend(changes);
            apply.bytes += bytes;
            apply.batches += 1;
        }
        if self.queued.is_empty() {
            apply.freshness = self.freshness.take();
        }
        self.applying = true;
        Next::Apply(apply)
    }

    /// The apply returned; `vv` is the applied vector after it, which the ack carries.
    pub fn on_applied(
        &mut self,
        freshness: Option<Freshness>,
        vv: &VersionVector,
        refused: bool,
        now_ms: u64,
    ) -> Applied {
        assert!(self.applying, "on_applied answers next()'s Apply");
        self.applying = false;
        self.last_sent_ms = self.last_sent_ms.max(now_ms);
        if refused {
            self.closed = true;
            self.queued.clear();
            self.queued_changes = 0;
        }
        let caught_up = freshness.filter(|f| vv.dominates(&f.sender_durable)).map(|f| f.wall_ms);
        Applied { caught_up, close: refused }
    }

    pub fn on_tick(&mut self, now_ms: u64) -> Tick {
        let silent_ms = now_ms.saturating_sub(self.last_heard_ms);
        if silent_ms > self.limits.timeout_ms {
            return Tick::TimedOut { silent_ms };
        }
        // While an apply is in flight its ack is the next message.
        if !self.applying && !self.closed && now_ms.saturating_sub(self.last_sent_ms) >= self.limits.heartbeat_ms {
            return Tick::Heartbeat;
        }
        Tick::Quiet
    }

    /// An ack went out outside an apply.
    pub fn on_sent(&mut self, now_ms: u64) {
        self.last_sent_ms = self.last_sent_ms.max(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Op;
    use crate::lane::{Lane, Stream};
    use crate::record::Metadata;
    use crate::version::Version;
    use crate::Key;

    fn r(s: &str) -> RegionName {
        RegionName::new(s).expect("valid")
    }

    fn changes(origin: &str, seqs: std::ops::RangeInclusive<u64>) -> Vec<Change> {
        seqs.map(|seq| Change {
            key: Key::new("t", format!("k{seq}")),
            origin: r(origin),
            lane: Lane::Normal,
            seq,
            version: Version { ts: crate::hlc::Timestamp { wall_ms: seq, logical: 0 }, region: r(origin) },
            op: Op::Delete,
            metadata: Metadata::default(),
            deps: VersionVector::new(),
            replay_of: None,
            moves: false,
            carried: Vec::new(),
            proof: Default::default(),
        })
        .collect()
    }

    fn durable(origin: &str, seq: u64) -> VersionVector {
        [(Stream::normal(r(origin)), seq)].into_iter().collect()
    }

    fn session() -> InboundSession {
        InboundSession::new(r("b"), InboundLimits { apply_changes_max: 10, heartbeat_ms: 100, timeout_ms: 1_000 }, 0)
    }

    #[test]
    fn batches_arriving_during_an_apply_go_together_in_the_next() {
        let mut s = session();
        s.on_batch(changes("b", 1..=3), 30, durable("b", 3), 1, 1).expect("ok");
        let Next::Apply(first) = s.next(&VersionVector::new()) else { panic!("an apply") };
        assert_eq!(first.changes.len(), 3);
        assert!(matches!(s.next(&VersionVector::new()), Next::Idle), "one apply at a time");
        s.on_batch(changes("b", 4..=5), 20, durable("b", 5), 2, 2).expect("ok");
        s.on_batch(changes("b", 6..=8), 30, durable("b", 8), 3, 3).expect("ok");
        let done = s.on_applied(first.freshness, &durable("b", 3), false, 4);
        assert_eq!(done, Applied { caught_up: Some(1), close: false });
        let Next::Apply(second) = s.next(&durable("b", 3)) else { panic!("an apply") };
        assert_eq!((second.changes.len(), second.batches, second.bytes), (5, 2, 50));
        assert_eq!(second.freshness.map(|f| f.wall_ms), Some(3), "the newest position goes with the last batch");
    }

    #[test]
    fn an_apply_is_bounded_in_changes_but_takes_whole_batches() {
        let mut s = session();
        s.on_batch(changes("b", 1..=6), 60, durable("b", 6), 1, 1).expect("ok");
        assert!(s.wants_more());
        s.on_batch(changes("b", 7..=12), 60, durable("b", 12), 2, 1).expect("ok");
        assert!(!s.wants_more(), "12 queued, 10 per apply");
        let Next::Apply(a) = s.next(&VersionVector::new()) else { panic!("an apply") };
        assert_eq!(a.changes.len(), 6, "the second batch would pass the bound");
        assert!(a.freshness.is_none(), "more is queued: no caught-up claim yet");
        s.on_applied(a.freshness, &durable("b", 6), false, 2);
        let Next::Apply(b) = s.next(&durable("b", 6)) else { panic!("an apply") };
        assert_eq!(b.changes.first().map(|c| c.seq), Some(7));
        assert_eq!(s.on_applied(b.freshness, &durable("b", 12), false, 3).caught_up, Some(2));
    }

    #[test]
    fn a_heartbeat_tells_caught_up_only_when_everything_it_names_is_applied() {
        let mut s = session();
        s.on_heartbeat(durable("b", 4), 7, 1).expect("ok");
        assert!(matches!(s.next(&durable("b", 3)), Next::Answer { caught_up: None }), "answered, not caught up");
        s.on_sent(1);
        assert!(matches!(s.next(&durable("b", 3)), Next::Idle), "one answer per heartbeat");
        s.on_heartbeat(durable("b", 4), 8, 2).expect("ok");
        assert!(matches!(s.next(&durable("b", 4)), Next::Answer { caught_up: Some(8) }));
    }

    #[test]
    fn the_sender_vouches_only_for_its_own_streams() {
        let mut s = session();
        let err = s.on_heartbeat(durable("c", 1), 1, 1).expect_err("foreign");
        assert_eq!(err, InboundError::ForeignDurable { peer: r("b"), named: r("c") });
    }

    #[test]
    fn acks_flow_on_an_idle_stream_and_a_silent_one_times_out() {
        let mut s = session();
        assert_eq!(s.on_tick(50), Tick::Quiet);
        assert_eq!(s.on_tick(100), Tick::Heartbeat);
        s.on_sent(100);
        assert_eq!(s.on_tick(150), Tick::Quiet);
        s.on_batch(changes("b", 1..=1), 10, durable("b", 1), 1, 900).expect("ok");
        let Next::Apply(a) = s.next(&VersionVector::new()) else { panic!("an apply") };
        assert_eq!(s.on_tick(300), Tick::Quiet, "the apply's ack comes next");
        s.on_applied(a.freshness, &durable("b", 1), false, 950);
        assert_eq!(s.on_tick(1_900), Tick::Heartbeat, "heard 1,000 ms ago: alive");
        assert_eq!(s.on_tick(1_901), Tick::TimedOut { silent_ms: 1_001 });
    }

    #[test]
    fn a_refusal_ends_the_stream() {
        let mut s = session();
        s.on_batch(changes("b", 1..=2), 10, durable("b", 2), 1, 1).expect("ok");
        let Next::Apply(a) = s.next(&VersionVector::new()) else { panic!("an apply") };
        s.on_batch(changes("b", 3..=3), 10, durable("b", 3), 2, 2).expect("ok");
        assert!(s.on_applied(a.freshness, &durable("b", 1), true, 3).close);
        assert!(matches!(s.next(&durable("b", 1)), Next::Idle), "nothing after the refusal");
    }
}
