//! Hybrid logical clock.
//!
//! Timestamps order events across regions the way wall time would when clocks agree, and still
//! respect causality when they do not. The clock never reads time itself: callers pass the
//! physical time in milliseconds, so tests and the simulator inject any clock they like.
//!
//! A remote timestamp more than `max_skew_ms` ahead of local physical time is refused and
//! leaves the clock untouched: one region with a runaway clock must not drag every other
//! region's timestamps into the future.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A source of physical time in milliseconds since the Unix epoch. The core never calls one;
/// the runtime holds it and passes readings in, and a simulator substitutes its own.
pub trait PhysicalClock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

impl fmt::Debug for dyn PhysicalClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PhysicalClock")
    }
}

/// A hybrid logical timestamp: physical milliseconds, then a logical counter for events that
/// share a millisecond. Field order is the comparison order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp {
    pub wall_ms: u64,
    pub logical: u32,
}

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp { wall_ms: 0, logical: 0 };

    pub fn new(wall_ms: u64, logical: u32) -> Self {
        Self { wall_ms, logical }
    }
}

impl fmt::Display for Timestamp {
    /// `<wall_ms>.<logical>`, fixed width so that string order matches timestamp order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:013}.{:05}", self.wall_ms, self.logical)
    }
}

/// A remote timestamp too far ahead of local time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("remote timestamp {remote} is {ahead_ms} ms ahead of local time, beyond max_clock_skew {max_skew_ms} ms")]
pub struct ClockSkewError {
    pub remote: Timestamp,
    pub ahead_ms: u64,
    pub max_skew_ms: u64,
}

/// The clock of one node.
#[derive(Debug, Clone)]
pub struct Hlc {
    last: Timestamp,
    max_skew_ms: u64,
}

impl Hlc {
    /// A clock that will never issue a timestamp at or below `high_water` (the highest timestamp
    /// this node issued or observed before a restart).
    pub fn new(high_water: Timestamp, max_skew_ms: u64) -> Self {
        Self { last: high_water, max_skew_ms }
    }

    pub fn last(&self) -> Timestamp {
        self.last
    }

    pub fn max_skew_ms(&self) -> u64 {
        self.max_skew_ms
    }

    /// A new timestamp for a local event, strictly greater than every timestamp issued or
    /// observed so far.
    pub fn now(&mut self, physical_ms: u64) -> Timestamp {
        let next = if physical_ms > self.last.wall_ms {
            Timestamp::new(physical_ms, 0)
        } else if self.last.logical == u32::MAX {
            // 4 billion events in one millisecond: borrow the next millisecond rather than wrap.
            Timestamp::new(self.last.wall_ms + 1, 0)
        } else {
            Timestamp::new(self.last.wall_ms, self.last.logical + 1)
        };
        debug_assert!(next > self.last);
        self.last = next;
        next
    }

    /// Takes a remote timestamp into account so that later local events order after it.
    /// Refuses (and leaves the clock unchanged) when it is beyond the allowed skew.
    pub fn observe(&mut self, remote: Timestamp, physical_ms: u64) -> Result<(), ClockSkewError> {
        self.check_skew(remote, physical_ms)?;
        if remote > self.last {
            self.last = remote;
        }
        Ok(())
    }

    /// Whether `remote` is within the allowed skew of `physical_ms`, without observing it.
    pub fn check_skew(&self, remote: Timestamp, physical_ms: u64) -> Result<(), ClockSkewError> {
        let ahead_ms = remote.wall_ms.saturating_sub(physical_ms);
        if ahead_ms > self.max_skew_ms {
            return Err(ClockSkewError { remote, ahead_ms, max_skew_ms: self.max_skew_ms });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn same_millisecond_counts_logically() {
        let mut hlc = Hlc::new(Timestamp::ZERO, 200);
        assert_eq!(hlc.now(10), Timestamp::new(10, 0));
        assert_eq!(hlc.now(10), Timestamp::new(10, 1));
        assert_eq!(hlc.now(9), Timestamp::new(10, 2), "a clock going backwards never goes back");
        assert_eq!(hlc.now(11), Timestamp::new(11, 0));
    }

    #[test]
    fn remote_within_skew_pulls_clock_forward() {
        let mut hlc = Hlc::new(Timestamp::ZERO, 200);
        hlc.observe(Timestamp::new(1_150, 7), 1_000).expect("within skew");
        assert_eq!(hlc.now(1_000), Timestamp::new(1_150, 8));
    }

    #[test]
    fn remote_beyond_skew_is_refused_and_does_not_drag_the_clock() {
        let mut hlc = Hlc::new(Timestamp::ZERO, 200);
        let err = hlc.observe(Timestamp::new(1_201, 0), 1_000).expect_err("beyond skew");
        assert_eq!(err.ahead_ms, 201);
        assert_eq!(hlc.now(1_000), Timestamp::new(1_000, 0));
    }

    #[test]
    fn restart_high_water_is_never_reissued() {
        let mut hlc = Hlc::new(Timestamp::new(5_000, 3), 200);
        assert_eq!(hlc.now(4_000), Timestamp::new(5_000, 4));
    }

    #[test]
    fn display_orders_like_the_timestamp() {
        let a = Timestamp::new(999, 12);
        let b = Timestamp::new(1_000, 2);
        assert!(a.to_string() < b.to_string());
    }

    #[derive(Debug, Clone)]
    enum Event {
        Local(u64),
        Remote(u64, u32, u64),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0u64..10_000).prop_map(Event::Local),
            (0u64..10_000, 0u32..5, 0u64..10_000).prop_map(|(w, l, p)| Event::Remote(w, l, p)),
        ]
    }

    proptest! {
        /// Every local timestamp is strictly greater than everything issued or accepted before,
        /// whatever the physical clock does.
        #[test]
        fn local_timestamps_strictly_increase(events in proptest::collection::vec(event(), 1..200)) {
            let mut hlc = Hlc::new(Timestamp::ZERO, 200);
            let mut high = Timestamp::ZERO;
            for e in events {
                match e {
                    Event::Local(p) => {
                        let t = hlc.now(p);
                        prop_assert!(t > high);
                        prop_assert!(t.wall_ms >= p.min(t.wall_ms));
                        high = t;
                    }
                    Event::Remote(w, l, p) => {
                        let remote = Timestamp::new(w, l);
                        match hlc.observe(remote, p) {
                            Ok(()) => { high = high.max(remote); prop_assert!(w <= p + 200); }
                            Err(_) => prop_assert!(w > p + 200),
                        }
                        prop_assert!(hlc.last() >= high);
                    }
                }
            }
        }
    }
}
