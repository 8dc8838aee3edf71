//! What the conflict log and the dead-letter queue record. Types only: the engine decides what
//! to record, storage keeps it, the API shows it.

use serde::{Deserialize, Serialize};

use crate::change::ChangeId;
use crate::record::Key;
use crate::version::Version;

/// One side of a conflict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Side {
    pub id: ChangeId,
    pub version: Version,
    /// What this side wrote (JSON text; `None` for a delete).
    pub value: Option<String>,
}

/// A write that lost to — or, under `custom`, was merged with — a concurrent write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictEntry {
    pub key: Key,
    /// `timestamp`, `merge` or `custom`.
    pub strategy: String,
    /// What the rule did: `last_writer_wins`, `field_last_writer_wins`, `handler_merged`,
    /// `delete_won`.
    pub resolution: String,
    /// The write that lost (or was merged in).
    pub loser: Side,
    /// The concurrent write it lost to (or was merged with).
    pub winner: Side,
    /// Under `merge`, the fields the loser lost; empty for the whole record.
    pub fields: Vec<String>,
    /// Local wall-clock time when this region saw the conflict (ms since the Unix epoch).
    pub detected_at_ms: u64,
}

impl ConflictEntry {
    /// Storage identity: a loser is logged once per winner, however often a fold revisits it.
    pub fn ident(&self) -> (ChangeId, ChangeId) {
        (self.loser.id.clone(), self.winner.id.clone())
    }

    /// Joins a later report of the same conflict into this one. A conflict can be reported
    /// again (a fold revisits it; under `merge`, a move's whole document rejoins fields this
    /// region already resolved), possibly naming only some of the fields: the entry keeps
    /// every field ever reported (in the order first reported) and the first time it was seen.
    /// Idempotent and associative; commutative up to the order of `fields`, so no report of a
    /// conflict can take a field out of its entry.
    pub fn absorb(&mut self, later: &ConflictEntry) {
        debug_assert_eq!(self.ident(), later.ident(), "one conflict");
        for f in &later.fields {
            if !self.fields.contains(f) {
                self.fields.push(f.clone());
            }
        }
        self.detected_at_ms = self.detected_at_ms.min(later.detected_at_ms);
    }
}

/// Retention of the conflict log: of `oldest` (the log's oldest entries, oldest first, out of
/// `total`), the ones to drop so that none is older than `retention_ms` and at most
/// `entries_max` remain (oldest dropped first). Needs only the head of the log: what goes is
/// always a prefix of it.
pub fn expired(
    oldest: &[ConflictEntry],
    total: usize,
    now_ms: u64,
    retention_ms: u64,
    entries_max: usize,
) -> Vec<(ChangeId, ChangeId)> {
    debug_assert!(oldest
        .windows(2)
        .all(|w| (w[0].detected_at_ms, w[0].ident()) <= (w[1].detected_at_ms, w[1].ident())));
    let over = total.saturating_sub(entries_max);
    let horizon_ms = now_ms.saturating_sub(retention_ms);
    oldest
        .iter()
        .enumerate()
        .take_while(|(i, e)| *i < over || e.detected_at_ms < horizon_ms)
        .map(|(_, e)| e.ident())
        .collect()
}

/// A change this region admitted (so replication moved on) but could not apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The change's id; the same in every region, since failures are deterministic.
    pub id: ChangeId,
    pub key: Key,
    pub version: Version,
    pub reason: String,
    /// The change's content (JSON text; `None` for a delete).
    pub value: Option<String>,
    /// Local wall-clock time it first failed here.
    pub failed_at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Timestamp;
    use crate::region::RegionName;

    fn entry(seq: u64, at_ms: u64) -> ConflictEntry {
        let r = RegionName::new("us-west").expect("valid");
        let side = |seq| Side {
            id: ChangeId { origin: r.clone(), lane: crate::Lane::Normal, seq },
            version: Version { ts: Timestamp::new(seq, 0), region: r.clone() },
            value: None,
        };
        ConflictEntry {
            key: Key::new("t", "k"),
            strategy: "timestamp".into(),
            resolution: "last_writer_wins".into(),
            loser: side(seq),
            winner: side(seq + 100),
            fields: vec![],
            detected_at_ms: at_ms,
        }
    }

    #[test]
    fn retention_drops_the_old_and_the_oldest_beyond_the_cap() {
        // Oldest first, as the log's time index hands them out; the log holds 6 in all.
        let entries: Vec<_> = [(1, 10), (3, 30), (2, 50), (4, 90)].map(|(s, t)| entry(s, t)).to_vec();
        let seqs = |v: Vec<(ChangeId, ChangeId)>| v.into_iter().map(|(l, _)| l.seq).collect::<Vec<_>>();
        assert_eq!(seqs(expired(&entries, 6, 100, 1_000, 10)), Vec::<u64>::new());
        assert_eq!(seqs(expired(&entries, 6, 100, 60, 10)), [1, 3], "older than 40 ms");
        assert_eq!(seqs(expired(&entries, 6, 100, 1_000, 4)), [1, 3], "two oldest beyond the cap");
    }
}
