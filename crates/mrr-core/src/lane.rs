//! Priority lanes and the streams they split a region's changelog into.
//!
//! Every change travels in one of three lanes: `urgent` (flash-sale stock, `SYNC_PRIORITY=1`),
//! `normal`, `bulk`. Sequence numbers are contiguous per [`Stream`], an `(origin, lane)` pair,
//! not per origin: a receiver's gap check is per stream, so an urgent change can be applied
//! before the bulk changes its origin wrote earlier without breaking any contiguity promise.
//! Nothing about convergence depends on the order streams are applied in (every conflict rule
//! is order-independent), which is what makes overtaking safe.
//!
//! The lane of a change is chosen once, at its origin, from the record's `syncFlags` and the
//! topic; it is not part of the cross-region policy digest, since regions that chose lanes
//! differently still converge.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::record::Metadata;
use crate::region::RegionName;

/// A priority lane. Ordered by priority: `Urgent < Normal < Bulk`, so sorted iteration visits
/// the most urgent first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    Urgent,
    #[default]
    Normal,
    Bulk,
}

impl Lane {
    /// In priority order.
    pub const ALL: [Lane; 3] = [Lane::Urgent, Lane::Normal, Lane::Bulk];

    pub fn name(self) -> &'static str {
        match self {
            Lane::Urgent => "urgent",
            Lane::Normal => "normal",
            Lane::Bulk => "bulk",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.name() == s)
    }

    /// The peer protocol's number for the lane (`normal` is 0, proto3's default).
    pub fn to_wire(self) -> u32 {
        match self {
            Lane::Normal => 0,
            Lane::Urgent => 1,
            Lane::Bulk => 2,
        }
    }

    pub fn from_wire(n: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.to_wire() == n)
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One origin's changes in one lane: the unit of sequence numbering, cursors and gap checks.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stream {
    pub origin: RegionName,
    pub lane: Lane,
}

impl Stream {
    pub fn new(origin: RegionName, lane: Lane) -> Self {
        Self { origin, lane }
    }

    /// `origin`'s normal lane, where every change goes unless its flags or topic say otherwise.
    pub fn normal(origin: RegionName) -> Self {
        Self { origin, lane: Lane::Normal }
    }

    /// Parses the `Display` form.
    pub fn parse(s: &str) -> Option<Self> {
        let (origin, lane) = match s.split_once('.') {
            Some((o, l)) => (o, Lane::from_name(l).filter(|l| *l != Lane::Normal)?),
            None => (s, Lane::Normal),
        };
        Some(Self { origin: RegionName::new(origin).ok()?, lane })
    }
}

/// `us-west` for the normal lane, `us-west.urgent` / `us-west.bulk` otherwise: ids written
/// before lanes existed read the same, and `.` never occurs in a region name.
impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.lane {
            Lane::Normal => write!(f, "{}", self.origin),
            lane => write!(f, "{}.{lane}", self.origin),
        }
    }
}

/// How a write's lane is chosen: the first matching `syncFlags` entry in priority order, else
/// the topic's lane, else `normal`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaneRules {
    /// Sync flag (exact, case-sensitive as clients send it) to lane.
    pub flags: BTreeMap<String, Lane>,
    /// Topic to default lane.
    pub topics: BTreeMap<String, Lane>,
}

impl Default for LaneRules {
    /// The article's flags: `SYNC_PRIORITY=1` and `IMPORTANT` are urgent, `SYNC_PRIORITY=3`
    /// and `BULK` are bulk.
    fn default() -> Self {
        let flags = [
            ("SYNC_PRIORITY=1", Lane::Urgent),
            ("IMPORTANT", Lane::Urgent),
            ("SYNC_PRIORITY=2", Lane::Normal),
            ("SYNC_PRIORITY=3", Lane::Bulk),
            ("BULK", Lane::Bulk),
        ];
        Self { flags: flags.into_iter().map(|(f, l)| (f.to_owned(), l)).collect(), topics: BTreeMap::new() }
    }
}

impl LaneRules {
    pub fn lane_of(&self, topic: &str, metadata: &Metadata) -> Lane {
        let by_flag = metadata.sync_flags.iter().filter_map(|f| self.flags.get(f)).min();
        by_flag.or_else(|| self.topics.get(topic)).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(flags: &[&str]) -> Metadata {
        Metadata { regions: vec![], sync_flags: flags.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn flags_pick_the_most_urgent_match_then_topic_then_normal() {
        let mut rules = LaneRules::default();
        rules.topics.insert("logs".into(), Lane::Bulk);
        assert_eq!(rules.lane_of("inventory", &meta(&["SYNC_PRIORITY=1"])), Lane::Urgent);
        assert_eq!(rules.lane_of("logs", &meta(&["BULK", "IMPORTANT"])), Lane::Urgent);
        assert_eq!(rules.lane_of("logs", &meta(&["TIER_1"])), Lane::Bulk, "unmapped flag: topic lane");
        assert_eq!(rules.lane_of("users", &meta(&[])), Lane::Normal);
    }

    #[test]
    fn stream_display_round_trips_and_keeps_normal_bare() {
        for (s, lane) in [("us-west", Lane::Normal), ("us-west.urgent", Lane::Urgent), ("eu-central.bulk", Lane::Bulk)]
        {
            let stream = Stream::parse(s).expect(s);
            assert_eq!(stream.lane, lane);
            assert_eq!(stream.to_string(), s);
        }
        for bad in ["us-west.normal", "us-west.fast", "US.urgent", ""] {
            assert_eq!(Stream::parse(bad), None, "{bad}");
        }
        for lane in Lane::ALL {
            assert_eq!(Lane::from_wire(lane.to_wire()), Some(lane));
        }
        assert!(Lane::Urgent < Lane::Normal && Lane::Normal < Lane::Bulk);
    }
}
