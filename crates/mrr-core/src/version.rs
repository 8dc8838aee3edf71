//! Versions: the total order that last-writer-wins resolves by.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hlc::Timestamp;
use crate::region::RegionName;

/// The version of a write: its HLC timestamp, then the region that issued it as a deterministic
/// tie-break. Two writes from one region never share a timestamp (the HLC is strictly monotonic
/// per node), so this order is total over all writes in the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Version {
    pub ts: Timestamp,
    pub region: RegionName,
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.ts.cmp(&other.ts).then_with(|| self.region.cmp(&other.region))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.ts, self.region)
    }
}
