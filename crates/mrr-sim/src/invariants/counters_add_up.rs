//! Counter increments add up exactly: after the heal, every region's (where the key is placed) counter field `c` of each
//! key equals the sum of every acknowledged increment of it — whatever the order, duplication,
//! loss, partition or relay path that delivered them (`merge` runs without deletes).

use std::collections::BTreeMap;

use mrr_core::Key;

use super::{AckedWrite, FinalState, Invariant};

#[derive(Debug, Default)]
pub struct CountersAddUp {
    acked: Vec<AckedWrite>,
}

impl Invariant for CountersAddUp {
    fn name(&self) -> &'static str {
        "counters_add_up"
    }

    fn on_acked(&mut self, write: &AckedWrite) {
        if write.incr.is_some() {
            self.acked.push(write.clone());
        }
    }

    fn on_power_loss(&mut self, node: usize, durable: &mrr_core::VersionVector) {
        self.acked.retain(|w| !(w.node == node && w.seq > durable.get(&w.stream())));
    }

    fn at_end(&mut self, regions: &[FinalState]) -> Result<(), String> {
        let mut want: BTreeMap<&Key, i64> = BTreeMap::new();
        for w in &self.acked {
            *want.entry(&w.key).or_default() += w.incr.unwrap_or(0);
        }
        for r in regions {
            for (key, total) in &want {
                let record = r.records.iter().find(|(k, _)| k == *key).map(|(_, rec)| rec);
                if record.is_some_and(|rec| !mrr_core::placement::places(&rec.metadata, &r.region)) {
                    continue; // not placed here: no counter to check
                }
                let value: Option<serde_json::Value> =
                    record.and_then(|rec| rec.value.as_deref()).and_then(|v| serde_json::from_slice(v).ok());
                let have = value.as_ref().and_then(|v| v.get("c")).and_then(serde_json::Value::as_i64);
                // A later `set`-free workload never turns `c` into a plain field, so it is there.
                if have != Some(*total) {
                    return Err(format!(
                        "{} holds counter {key}.c = {have:?}, acknowledged increments sum to {total}",
                        r.region
                    ));
                }
            }
        }
        Ok(())
    }
}
