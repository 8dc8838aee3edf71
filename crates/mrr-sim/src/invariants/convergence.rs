//! After the heal, every region holds the same records (tombstones included, value and
//! version) and the same version vector.

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
            if r.records != first.records {
                let diff = first
                    .records
                    .iter()
                    .zip(&r.records)
                    .find(|(a, b)| a != b)
                    .map(|(a, b)| format!("{}: {:?} vs {:?}", a.0, a.1.version, b.1.version))
                    .unwrap_or_else(|| format!("{} vs {} records", first.records.len(), r.records.len()));
                return Err(format!("{} and {} differ: {diff}", first.region, r.region));
            }
        }
        Ok(())
    }
}
