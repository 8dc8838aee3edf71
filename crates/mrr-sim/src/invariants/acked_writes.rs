//! No acknowledged write is lost (beyond what `durability: buffered` allows: writes not yet
//! persisted at their origin when it lost power): after the heal every region has applied it
//! (its change is in every changelog as written, or below the log floor retention truncated
//! it to), and every region's record for its key is at least that new. Also: each key ends at
//! the acknowledged write with the greatest version (last writer wins) — or, where that write
//! was a delete, the key may be gone altogether (retention collected its tombstone).

use std::collections::BTreeMap;

use mrr_core::{Key, Version};

use super::{AckedWrite, FinalState, Invariant};

#[derive(Debug, Default)]
pub struct AckedWrites {
    acked: Vec<AckedWrite>,
}

impl Invariant for AckedWrites {
    fn name(&self) -> &'static str {
        "no_acknowledged_write_lost"
    }

    fn on_acked(&mut self, write: &AckedWrite) {
        self.acked.push(write.clone());
    }

    fn on_power_loss(&mut self, node: usize, durable: &mrr_core::VersionVector) {
        // `durability: buffered` may lose acknowledged writes not yet persisted at their origin
        // — and only those: none of them ever left the region.
        self.acked.retain(|w| !(w.node == node && w.seq > durable.get(&w.stream())));
    }

    fn at_end(&mut self, regions: &[FinalState]) -> Result<(), String> {
        let mut newest: BTreeMap<&Key, &AckedWrite> = BTreeMap::new();
        for w in &self.acked {
            let e = newest.entry(&w.key).or_insert(w);
            if w.version > e.version {
                *e = w;
            }
        }
        for r in regions {
            let records: BTreeMap<&Key, &mrr_core::Record> = r.records.iter().map(|(k, v)| (k, v)).collect();
            for w in &self.acked {
                if r.applied.get(&w.stream()) < w.seq {
                    return Err(format!(
                        "{} never applied acknowledged write {}-{} to {}",
                        r.region,
                        w.stream(),
                        w.seq,
                        w.key
                    ));
                }
                let in_log = w.seq <= r.log_floors.get(&w.stream())
                    || r.changelog.iter().any(|c| c.stream() == w.stream() && c.seq == w.seq && c.version == w.version);
                if !in_log {
                    return Err(format!("{} has no change {}-{} as acknowledged", r.region, w.stream(), w.seq));
                }
                // Outside its placement a record is a register of where it lives; its version
                // is no claim about content.
                let placed_elsewhere =
                    records.get(&w.key).is_some_and(|rec| !mrr_core::placement::places(&rec.metadata, &r.region));
                let have: Option<&Version> = records.get(&w.key).map(|rec| &rec.version);
                let collected = have.is_none() && newest.get(&w.key).is_some_and(|n| n.tombstone);
                if !placed_elsewhere && !collected && have.is_none_or(|v| v < &w.version) {
                    return Err(format!(
                        "{} holds {:?} for {}, older than acknowledged {}",
                        r.region, have, w.key, w.version
                    ));
                }
            }
            for (key, w) in &newest {
                let Some(rec) = records.get(key) else {
                    if w.tombstone {
                        continue;
                    }
                    return Err(format!("{} lost {key}", r.region));
                };
                let placed = mrr_core::placement::places(&rec.metadata, &r.region);
                if placed && (rec.version != w.version || rec.is_tombstone() != w.tombstone) {
                    return Err(format!(
                        "{} ends {key} at {} but the newest acknowledged write is {}",
                        r.region, rec.version, w.version
                    ));
                }
            }
        }
        Ok(())
    }
}
