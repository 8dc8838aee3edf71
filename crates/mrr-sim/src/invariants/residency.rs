//! What a record leaves behind in a region it left: at the end of a run, a region's changelog
//! names a record it does not hold (in clear, with or without content) only under a departure
//! note that covers the entry (`mrr_core::placement::Departure`), and after a collection pass
//! on the final state, only what that pass may not erase yet: entries above the stable point,
//! or of a record whose move is not in it.
//!
//! That nothing erased was still needed is the convergence invariant's part: a region that
//! asked for erased content would lack it forever.

use std::collections::BTreeMap;

use mrr_core::placement::places;
use mrr_core::seal::is_sealed;
use mrr_core::Sealer;

use super::{FinalState, Invariant};

#[derive(Debug)]
pub struct Residency {
    sealer: Sealer,
}

impl Residency {
    pub fn new(sealer: Sealer) -> Self {
        Self { sealer }
    }
}

impl Invariant for Residency {
    fn name(&self) -> &'static str {
        "residency"
    }

    fn at_end(&mut self, regions: &[FinalState]) -> Result<(), String> {
        for r in regions {
            let records: BTreeMap<_, _> = r.records.iter().map(|(k, rec)| (k, rec)).collect();
            let notes: BTreeMap<_, _> = r.departures.iter().map(|(k, d)| (k, d)).collect();
            for change in r.changelog.iter().filter(|c| !is_sealed(&c.key)) {
                let held = records.get(&change.key).is_some_and(|rec| places(&rec.metadata, &r.region));
                // Nothing of it at all: a tombstone retention collected (it was held here).
                let collected =
                    !records.contains_key(&change.key) && !records.contains_key(&self.sealer.seal(&change.key));
                if held || collected {
                    continue;
                }
                let Some(note) = notes.get(&self.sealer.seal(&change.key)) else {
                    return Err(format!(
                        "{} keeps {} naming {} in clear, which it does not hold, with no departure noted",
                        r.region,
                        change.id(),
                        change.key
                    ));
                };
                if note.upto.get(&change.stream()) < change.seq {
                    return Err(format!(
                        "{} keeps {} naming {} in clear, past its departure note (up to {:?})",
                        r.region,
                        change.id(),
                        change.key,
                        note.upto
                    ));
                }
                let Some(collect) = &r.collect else { continue };
                if note.moved_by.seen_by(&collect.stable) && change.id().seen_by(&collect.stable) {
                    return Err(format!(
                        "{} still keeps {} of {} in clear after a collection pass, though it and the move {} are stable ({:?})",
                        r.region,
                        change.id(),
                        change.key,
                        note.moved_by,
                        collect.stable
                    ));
                }
            }
        }
        Ok(())
    }
}
