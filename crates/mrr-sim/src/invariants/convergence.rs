//! After the heal, every region holds the same version vector and agrees on every key's
//! placement and the move that set it; the regions a record is placed in hold the same record
//! (tombstones included) and lack nothing, the others hold no content of it. A key some
//! regions hold nothing of is a tombstone retention collected there: everywhere else it must
//! be a tombstone too (or a placement register, which holds no content either).

use std::collections::{BTreeMap, BTreeSet};

use mrr_core::placement::places;
use mrr_core::{Key, Record, RegionName};

use super::{FinalState, Invariant};

#[derive(Debug)]
pub struct Convergence;

impl Invariant for Convergence {
    fn name(&self) -> &'static str {
        "convergence"
    }

    fn at_end(&mut self, regions: &[FinalState]) -> Result<(), String> {
        let Some(first) = regions.first() else { return Ok(()) };
        for r in &regions[1..] {
            if r.applied != first.applied {
                return Err(format!(
                    "{} applied {:?} but {} applied {:?}",
                    first.region, first.applied, r.region, r.applied
                ));
            }
        }
        let maps: Vec<BTreeMap<&Key, &Record>> =
            regions.iter().map(|r| r.records.iter().map(|(k, rec)| (k, rec)).collect()).collect();
        let keys: BTreeSet<&Key> = maps.iter().flat_map(|m| m.keys().copied()).collect();
        for key in keys {
            let held: Vec<(&FinalState, &Record)> =
                regions.iter().zip(&maps).filter_map(|(r, m)| m.get(key).map(|rec| (r, *rec))).collect();
            if held.len() < regions.len() {
                // Gone somewhere: retention collected a tombstone there, which the others may
                // not have collected yet. Anything else is a lost record.
                if let Some((r, rec)) = held.iter().find(|(_, rec)| !rec.is_tombstone() || rec.doc.is_some()) {
                    let gone: Vec<&RegionName> = regions
                        .iter()
                        .zip(&maps)
                        .filter(|(_, m)| !m.contains_key(key))
                        .map(|(r, _)| &r.region)
                        .collect();
                    return Err(format!("{gone:?} hold nothing of {key}, but {} holds {rec:?}", r.region));
                }
                continue;
            }
            let (r0, record) = held[0];
            for (r, other) in &held[1..] {
                if other.placed_by != record.placed_by || other.metadata.regions != record.metadata.regions {
                    return Err(format!(
                        "{} and {} differ on {key}'s placement: {:?} by {:?} vs {:?} by {:?}",
                        r0.region,
                        r.region,
                        record.metadata.regions,
                        record.placed_by,
                        other.metadata.regions,
                        other.placed_by
                    ));
                }
            }
            let placed: Vec<&(&FinalState, &Record)> =
                held.iter().filter(|(r, _)| places(&record.metadata, &r.region)).collect();
            if let Some((r, rec)) = placed.iter().find(|(_, rec)| !rec.lacking.is_empty()) {
                return Err(format!("{} still lacks {:?} of {key}", r.region, rec.lacking));
            }
            if let Some((p, first)) = placed.first() {
                for (r, rec) in &placed[1..] {
                    if rec != first {
                        return Err(format!(
                            "{} and {} (both placed) differ on {key}:\n{:?}\nvs\n{:?}",
                            p.region, r.region, first, rec
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
