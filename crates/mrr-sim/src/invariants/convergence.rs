//! After the heal, every region holds the same version vector and agrees on every key's
//! placement and the move that set it; the regions a record is placed in hold the same record
//! (tombstones included) and lack nothing, the others hold no content of it.

use mrr_core::placement::places;

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
            if r.records.len() != first.records.len() {
                return Err(format!(
                    "{} holds {} keys, {} holds {}",
                    first.region,
                    first.records.len(),
                    r.region,
                    r.records.len()
                ));
            }
        }
        for (i, (key, record)) in first.records.iter().enumerate() {
            let placed: Vec<&FinalState> = regions.iter().filter(|r| places(&record.metadata, &r.region)).collect();
            for r in regions {
                let (k, other) = &r.records[i];
                if k != key || other.placed_by != record.placed_by || other.metadata.regions != record.metadata.regions
                {
                    return Err(format!(
                        "{} and {} differ on {key}'s placement: {:?} by {:?} vs {k} {:?} by {:?}",
                        first.region,
                        r.region,
                        record.metadata.regions,
                        record.placed_by,
                        other.metadata.regions,
                        other.placed_by
                    ));
                }
            }
            if let Some(r) = placed.iter().find(|r| !r.records[i].1.lacking.is_empty()) {
                return Err(format!("{} still lacks {:?} of {key}", r.region, r.records[i].1.lacking));
            }
            if let Some(p) = placed.first() {
                for r in &placed[1..] {
                    if r.records[i].1 != p.records[i].1 {
                        return Err(format!(
                            "{} and {} (both placed) differ on {key}:\n{:?}\nvs\n{:?}",
                            p.region, r.region, p.records[i].1, r.records[i].1
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
