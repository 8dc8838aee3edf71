//! Retention keeps the changelog and the tombstones bounded: at the end of a run, a region
//! whose final collection pass was given a stable point covering everything it applied (every
//! region had durably applied all of it) keeps, of each stream, nothing below the last
//! checkpoint at or under the point but the `custom` history pieces just before it; and under
//! `timestamp`, no tombstone of a record it holds.
//!
//! That nothing collected was still needed is other invariants' part: a region that lost a
//! change it still had to send breaks `changelog_contiguous` or `convergence`, a collected
//! tombstone that an older write outlived breaks `no_resurrection`.

use std::collections::BTreeMap;

use mrr_core::change::Op;
use mrr_core::placement::places;
use mrr_core::Stream;

use super::{FinalState, Invariant};

#[derive(Debug)]
pub struct Retention {
    /// Whether the topic's rule is `timestamp`, whose tombstones retention collects.
    timestamp: bool,
}

impl Retention {
    pub fn new(timestamp: bool) -> Self {
        Self { timestamp }
    }
}

impl Invariant for Retention {
    fn name(&self) -> &'static str {
        "retention"
    }

    fn at_end(&mut self, regions: &[FinalState]) -> Result<(), String> {
        for r in regions {
            let Some(collect) = &r.collect else { continue };
            if collect.stable != r.applied {
                continue;
            }
            let mut streams: BTreeMap<Stream, Vec<&mrr_core::Change>> = BTreeMap::new();
            for c in &r.changelog {
                streams.entry(c.stream()).or_default().push(c);
            }
            for (stream, changes) in &mut streams {
                changes.sort_by_key(|c| c.seq);
                let below: Vec<&&mrr_core::Change> =
                    changes.iter().filter(|c| c.seq <= collect.stable.get(stream)).collect();
                let Some(anchor) = below.iter().rposition(|c| c.proof.checkpoint.is_some()) else { continue };
                let mut keep_from = anchor;
                while keep_from > 0 && below[keep_from - 1].op == Op::History {
                    keep_from -= 1;
                }
                if keep_from > 0 {
                    return Err(format!(
                        "{} keeps {} entries of {stream} below its anchor {} though all of it is stable (first {})",
                        r.region,
                        keep_from,
                        below[anchor].seq,
                        below[0].id()
                    ));
                }
            }
            if self.timestamp {
                let kept = r
                    .records
                    .iter()
                    .find(|(_, rec)| rec.is_tombstone() && rec.lacking.is_empty() && places(&rec.metadata, &r.region));
                if let Some((key, rec)) = kept {
                    return Err(format!(
                        "{} keeps the tombstone of {key} ({}) though all of it is stable",
                        r.region,
                        rec.change_id()
                    ));
                }
            }
        }
        Ok(())
    }
}
