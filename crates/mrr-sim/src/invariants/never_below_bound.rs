//! Escrow never oversells: for every bounded counter, the acknowledged increments minus the
//! acknowledged decrements never go below the bound (0) — at every acknowledgement, whatever
//! crashed, lost power, was cut off or received duplicates; no region's own replica ever shows
//! it holding negative rights; and after the heal every region shows exactly the acknowledged
//! sum (nothing acknowledged was forgotten, nothing unacknowledged was counted).
//!
//! Power loss forgives nothing here: a region that forgot a sale it acknowledged could sell
//! the same units again, so every escrow change is persisted before it is acknowledged or sent
//! (`CommitBatch::must_sync`), and this invariant holds that to account.

use std::collections::BTreeMap;

use mrr_core::{Key, RegionName, VersionVector};
use mrr_storage::CommitBatch;

use super::{AckedWrite, FinalState, Invariant};
use crate::world::STOCK;

#[derive(Debug)]
pub struct NeverBelowBound {
    names: Vec<RegionName>,
    /// Per key: the sum of acknowledged increments and decrements.
    acked: BTreeMap<Key, i64>,
}

impl NeverBelowBound {
    pub fn new(names: Vec<RegionName>) -> Self {
        Self { names, acked: BTreeMap::new() }
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
        if let Some(by) = write.incr {
            *self.acked.entry(write.key.clone()).or_default() += by;
        }
    }

    fn at_end(&mut self, regions: &[FinalState]) -> Result<(), String> {
        for (key, sum) in &self.acked {
            if *sum < 0 {
                return Err(format!("{key}.{STOCK}: acknowledged sales exceed acknowledged stock by {}", -sum));
            }
            for r in regions {
                let record = r.records.iter().find(|(k, _)| k == key).map(|(_, rec)| rec);
                // Outside its placement a region holds only where the record lives.
                if record.is_some_and(|rec| !mrr_core::placement::places(&rec.metadata, &r.region)) {
                    continue;
                }
                let value: Option<serde_json::Value> =
                    record.and_then(|rec| rec.value.as_deref()).and_then(|v| serde_json::from_slice(v).ok());
                let have = value.as_ref().and_then(|v| v.get(STOCK)).and_then(serde_json::Value::as_i64);
                if have != Some(*sum) {
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
