//! Escrow never oversells: for every bounded counter, the acknowledged increments minus the
//! acknowledged decrements never go below the bound (0) — at every acknowledgement, whatever
//! crashed, lost power, was cut off or received duplicates; no region's own replica ever shows
//! it holding negative rights; and after the heal every region shows exactly the acknowledged
//! sum (nothing acknowledged was forgotten, nothing unacknowledged was counted).
//!
//! Power loss forgives nothing here: a region that forgot a sale it acknowledged could sell
//! the same units again, so every escrow change is persisted before it is acknowledged or sent
//! (`CommitBatch::must_sync`), and this invariant holds that to account. A wiped disk is the
//! one loss it forgives: operations the region acknowledged that reached no peer may be gone
//! (`docs/consistency.md` says what that means for its units). Only *may*: a counter's state
//! is per region and cumulative, so a change of the region's that did reach a peer (on another
//! lane) carries the effect of its earlier operations with it. For a key such operations
//! touched, the end check takes any total between all of them lost and all of them kept.

use std::collections::BTreeMap;

use mrr_core::{Key, RegionName, VersionVector};
use mrr_storage::CommitBatch;

use super::{AckedWrite, FinalState, Invariant};
use crate::world::STOCK;

#[derive(Debug)]
pub struct NeverBelowBound {
    names: Vec<RegionName>,
    /// Acknowledged increments and decrements.
    acked: Vec<AckedWrite>,
    /// Acknowledged by a region whose disk was wiped before they reached any peer.
    forgiven: Vec<AckedWrite>,
}

impl NeverBelowBound {
    pub fn new(names: Vec<RegionName>) -> Self {
        Self { names, acked: Vec::new(), forgiven: Vec::new() }
    }
}

impl Invariant for NeverBelowBound {
    fn name(&self) -> &'static str {
        "never_below_bound"
    }

    fn on_commit(&mut self, node: usize, batch: &CommitBatch, _applied: &VersionVector) -> Result<(), String> {
        let region = &self.names[node];
        for (key, record) in &batch.records {
            let Some(e) = record.doc.as_ref().and_then(|d| d.escrow(STOCK)) else { continue };
            let balance = e.balance(region);
            if balance < 0 {
                return Err(format!("{region} committed {key}.{STOCK} holding {balance} units of rights: {e:?}"));
            }
        }
        Ok(())
    }

    fn on_acked(&mut self, write: &AckedWrite) {
        if write.incr.is_some() {
            self.acked.push(write.clone());
        }
    }

    fn on_wipe(&mut self, node: usize, reached: &VersionVector) {
        let (lost, kept) = std::mem::take(&mut self.acked)
            .into_iter()
            .partition(|w| w.node == node && w.seq > reached.get(&w.stream()));
        self.acked = kept;
        self.forgiven.extend::<Vec<AckedWrite>>(lost);
    }

    fn at_end(&mut self, regions: &[FinalState]) -> Result<(), String> {
        let mut sums: BTreeMap<&Key, i64> = BTreeMap::new();
        for w in &self.acked {
            *sums.entry(&w.key).or_default() += w.incr.unwrap_or(0);
        }
        // Per key, how far the forgiven operations may move the total either way.
        let mut slack: BTreeMap<&Key, (i64, i64)> = BTreeMap::new();
        for w in &self.forgiven {
            let by = w.incr.unwrap_or(0);
            let e = slack.entry(&w.key).or_default();
            if by < 0 {
                e.0 += by;
            } else {
                e.1 += by;
            }
            sums.entry(&w.key).or_default();
        }
        for (key, sum) in &sums {
            if *sum < 0 {
                return Err(format!("{key}.{STOCK}: acknowledged sales exceed acknowledged stock by {}", -sum));
            }
            for r in regions {
                let record = r.records.iter().find(|(k, _)| k == *key).map(|(_, rec)| rec);
                // Outside its placement a region holds only where the record lives.
                if record.is_some_and(|rec| !mrr_core::placement::places(&rec.metadata, &r.region)) {
                    continue;
                }
                let value: Option<serde_json::Value> =
                    record.and_then(|rec| rec.value.as_deref()).and_then(|v| serde_json::from_slice(v).ok());
                let have = value.as_ref().and_then(|v| v.get(STOCK)).and_then(serde_json::Value::as_i64);
                let (down, up) = slack.get(key).copied().unwrap_or_default();
                // A counter whose every operation was lost with a wiped disk never existed.
                let only_lost = !self.acked.iter().any(|w| &w.key == *key);
                if have.is_none() && only_lost {
                    continue;
                }
                if have.is_none_or(|h| h < sum + down || h > sum + up) {
                    return Err(format!(
                        "{} shows {key}.{STOCK} = {have:?}, acknowledged operations sum to {sum}",
                        r.region
                    ));
                }
            }
        }
        Ok(())
    }
}
