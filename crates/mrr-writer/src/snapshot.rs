//! Snapshot bootstrap, sans-IO: what a donor region sends a region that cannot catch up from
//! the changelog (its data directory was wiped, or retention truncated what it needs), and the
//! commits that region installs it with.
//!
//! A snapshot is a consistent view of the donor ([`mrr_storage::StoreView`]) cut for one
//! receiver: a [`Header`] (the view's version vector, HLC high water, and per stream the
//! *anchor*: the changelog from the last checkpoint at or below the vector, as markers), then
//! the records in the donor's key order in bounded [`Chunk`]s. Placement is respected: a record
//! not placed in the receiver travels as its register under its sealed name, never with
//! content; a record placed in the receiver that the donor holds only as a register cannot be
//! served by this donor ([`SnapshotError::NotHeld`]). The receiver installs every chunk with
//! its cursor in the same commit ([`BootstrapMark::Installing`]), so a broken stream resumes
//! after the last chunk installed, and ends with the header's vector, log floors at the anchors
//! and its own streams' chain heads ([`end_batch`]): from there the changelogs of its peers
//! carry it on.
//!
//! This module reads views and builds batches; it does no IO of its own, holds no state between
//! calls, and never commits (the node's bootstrap does, before its writer starts; the simulator
//! drives the same functions).

use mrr_core::fold::FoldEntry;
use mrr_core::provenance::{self, Checkpoint, Digest, Notary};
use mrr_core::strong::STRONG_ORIGIN;
use mrr_core::{placement, seal, Change, Key, Record, RegionName, Sealer, Stream, Timestamp, VersionVector};
use mrr_storage::{BootstrapMark, CommitBatch, StoreError, StoreView};

/// Changes read per step while looking back for a stream's last checkpoint.
const ANCHOR_READ_CHANGES: usize = 1_024;

/// A stream's anchor is looked for this far back at most: checkpoints come at least every
/// group and every [`provenance`] bound, so a longer stretch without one is a broken log.
const ANCHOR_LOOKBACK_CHANGES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The donor holds only the register of a record placed in the receiver: the receiver
    /// needs its content, which another region in its placement has.
    #[error("record {key} is placed in {receiver}, but this region holds only its placement register: bootstrap {receiver} from a region that holds every record placed in it")]
    NotHeld { key: Key, receiver: RegionName },
    /// The receiver's own stream has no checkpoint the donor still holds, so the receiver could
    /// not continue its chain.
    #[error("no checkpoint of {stream} at or below {seq} in this region's changelog: {receiver} cannot continue its own chain from this snapshot")]
    NoAnchor { stream: Stream, seq: u64, receiver: RegionName },
}

/// What a snapshot starts with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The donor's applied vector as of the view: every record in the snapshot reflects exactly
    /// the changes it covers.
    pub vv: VersionVector,
    pub hlc_high_water: Timestamp,
    /// Per stream, in sequence order: the changes from the last checkpoint at or below `vv`
    /// up to `vv`, as markers. The receiver's changelog starts with them, so it can prove the
    /// changes after them when it relays, and continue its own chains.
    pub anchors: Vec<Change>,
    /// DER certificates of the anchors' checkpoint signers, by fingerprint.
    pub certificates: Vec<(Digest, Vec<u8>)>,
}

/// Records in the donor's key order, cut for the receiver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chunk {
    /// Under the name the receiver keeps them by: clear when placed there, sealed otherwise.
    pub records: Vec<(Key, Record)>,
    /// Fold entries of the `custom` records among `records`.
    pub history: Vec<(Key, FoldEntry)>,
    /// The donor key this chunk ended at: the next chunk starts after it. `None` when the
    /// chunk is empty.
    pub last: Option<Key>,
    /// No record follows.
    pub done: bool,
}

impl Chunk {
    /// Roughly the bytes this chunk carries (values, documents and fold states).
    pub fn payload_bytes(&self) -> u64 {
        let records: usize = self.records.iter().map(|(k, r)| record_bytes(k, r)).sum();
        let history: usize = self.history.iter().map(|(k, e)| k.id.len() + fold_bytes(e)).sum();
        (records + history) as u64
    }
}

fn record_bytes(key: &Key, record: &Record) -> usize {
    // Fixed fields (version, origin, deps) are small next to values; 64 bytes stands for them.
    64 + key.topic.len() + key.id.len() + record.value.as_ref().map_or(0, Vec::len)
}

fn fold_bytes(entry: &FoldEntry) -> usize {
    128 + entry.value.as_ref().map_or(0, Vec::len) + entry.after.value.as_ref().map_or(0, Vec::len)
}

/// Where one peer stands, as its Welcome says: what it applied, where its changelog starts,
/// and its stable point (below which it may truncate at any time).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Standing {
    pub applied: VersionVector,
    pub floors: VersionVector,
    pub stable: VersionVector,
    /// The membership incarnation the peer admitted the asking region under.
    pub incarnation: u64,
}

/// What a region with an empty data directory does, once every peer has said where it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No peer holds anything of its streams, every changelog is whole and no peer has a
    /// stable point yet (which could count this region's earlier self and let a log be
    /// truncated under it): a new region of a new cluster, which starts from nothing and catches
    /// up from the logs.
    Fresh,
    /// Install a snapshot of this peer. Every peer holds the region's own streams as far as
    /// any does, so the region goes on numbering its writes after everything the cluster has
    /// of it.
    From(RegionName),
    /// Some peers hold more of its streams than others: wait for them to relay to each other.
    Wait,
}

/// The decision for `local`, given every peer's standing; `installing`: the donor of an
/// unfinished install, kept while it still qualifies, so the install resumes; `refused`:
/// donors that hold only the register of a record placed in `local` ([`SnapshotError::NotHeld`]).
pub fn decide(
    local: &RegionName,
    standings: &std::collections::BTreeMap<RegionName, Standing>,
    installing: Option<&str>,
    refused: &std::collections::BTreeSet<RegionName>,
) -> Decision {
    let own = |s: &Standing| s.applied.of_origin(local);
    let needed = installing.is_some()
        || standings.values().any(|s| !own(s).is_empty() || !s.floors.is_empty() || !s.stable.is_empty());
    if !needed {
        return Decision::Fresh;
    }
    // Every peer must hold this region's streams as far as any does: the region then numbers
    // its next writes after all of it, and no peer needs a change of its streams from below
    // the log floor its snapshot leaves it (its peers relay those to each other while it is
    // away, so this is a matter of waiting).
    // A peer that is stuck (behind every other peer's log floor of some stream: it was let go
    // as lagging and rejoins through a snapshot itself) needs none of it from logs, so it may
    // be behind; it must not be ahead (it could relay what it holds of this region's streams,
    // numbered as this region's next writes will be), nor be the donor (it is stale).
    let stuck = |r: &RegionName| stuck(r, standings);
    let mut furthest = VersionVector::new();
    for s in standings.values() {
        furthest.join(&own(s));
    }
    let behind = |r: &RegionName, s: &Standing| own(s) != furthest && !(stuck(r) && furthest.dominates(&own(s)));
    if standings.iter().any(|(r, s)| behind(r, s)) {
        return Decision::Wait;
    }
    let qualified = standings.iter().filter(|(r, _)| !refused.contains(*r) && !stuck(r));
    if let Some((r, _)) = qualified.clone().find(|(r, _)| Some(r.as_str()) == installing) {
        return Decision::From(r.clone());
    }
    // The freshest snapshot leaves the least to catch up on.
    let total = |s: &Standing| s.applied.iter().map(|(_, n)| n).sum::<u64>();
    let mut best: Option<(&RegionName, u64)> = None;
    for (r, s) in qualified {
        if best.is_none_or(|(_, t)| total(s) > t) {
            best = Some((r, total(s)));
        }
    }
    best.map_or(Decision::Wait, |(r, _)| Decision::From(r.clone()))
}

/// Whether `peer` is behind every other peer's log floor of some stream not its own: it can no
/// longer catch up from logs (the same test a running region makes of what its peers' streams
/// say, to start rejoining).
pub fn stuck(peer: &RegionName, standings: &std::collections::BTreeMap<RegionName, Standing>) -> bool {
    let Some(me) = standings.get(peer) else { return false };
    let others: Vec<(&RegionName, &VersionVector)> =
        standings.iter().filter(|(r, _)| *r != peer).map(|(r, s)| (r, &s.floors)).collect();
    behind_every_floor(peer, &me.applied, &others)
}

/// Whether some stream of another origin is one that none of `floors` (per peer, its log
/// floors) can send on from `applied`: its origin truncated it past `applied`, and every
/// relay truncated it to `applied` or past (a relay must start at a checkpoint at or before the
/// receiver's position, and retention keeps none below its floor). None: never.
pub fn behind_every_floor(
    local: &RegionName,
    applied: &VersionVector,
    floors: &[(&RegionName, &VersionVector)],
) -> bool {
    let serves = |peer: &RegionName, f: &VersionVector, stream: &mrr_core::Stream| {
        let (floor, at) = (f.get(stream), applied.get(stream));
        if &stream.origin == peer {
            floor <= at
        } else {
            floor == 0 || floor < at
        }
    };
    !floors.is_empty()
        && floors
            .iter()
            .flat_map(|(_, f)| f.iter())
            .any(|(stream, _)| &stream.origin != local && floors.iter().all(|(peer, f)| !serves(peer, f, stream)))
}

/// The header of a snapshot of `view` for `receiver`.
pub fn header(view: &dyn StoreView, receiver: &RegionName, sealer: &Sealer) -> Result<Header, SnapshotError> {
    let state = view.recover()?;
    let floors = view.log_floors()?;
    let mut anchors = Vec::new();
    // The strong tier's records are rebuilt by every region from the Raft log, which a region
    // bootstrapping replays from its start: copying them too would apply the log over its own
    // later state (an increment twice).
    let vv = mrr_core::strong::replicable(&state.vv);
    for (stream, seq) in vv.iter() {
        let tail = anchor(view, stream, seq, floors.get(stream))?;
        let found = tail.first().is_some_and(|c| c.seq == floors.get(stream) + 1 || c.proof.checkpoint.is_some());
        if !found && &stream.origin == receiver {
            return Err(SnapshotError::NoAnchor { stream: stream.clone(), seq, receiver: receiver.clone() });
        }
        if found {
            anchors.extend(tail.iter().map(|c| placement::to_marker(c, sealer)));
        }
    }
    let mut certificates = Vec::new();
    for cp in anchors.iter().filter_map(|c| c.proof.checkpoint.as_ref()) {
        if cp.signer == provenance::GENESIS || certificates.iter().any(|(f, _)| *f == cp.signer) {
            continue;
        }
        if let Some(der) = view.certificate(&cp.signer)? {
            certificates.push((cp.signer, der));
        }
    }
    Ok(Header { vv, hlc_high_water: state.hlc_high_water, anchors, certificates })
}

/// The changes of `stream` from its last checkpoint at or below `seq` (or from its first, when
/// the log was never truncated) up to `seq`; empty when the log holds no such start.
fn anchor(view: &dyn StoreView, stream: &Stream, seq: u64, floor: u64) -> Result<Vec<Change>, SnapshotError> {
    let mut upto = seq;
    let lowest = floor.max(seq.saturating_sub(ANCHOR_LOOKBACK_CHANGES));
    let mut tail: Vec<Change> = Vec::new();
    while upto > lowest {
        let from = upto.saturating_sub(ANCHOR_READ_CHANGES as u64).max(lowest);
        let mut window = view.changes_within(stream, from, ANCHOR_READ_CHANGES, u64::MAX)?;
        window.retain(|c| c.seq <= upto);
        let at = window.iter().rposition(|c| c.proof.checkpoint.is_some());
        if let Some(i) = at {
            window.drain(..i);
            window.append(&mut tail);
            return Ok(window);
        }
        window.append(&mut tail);
        tail = window;
        upto = from;
    }
    // No checkpoint: the whole retained log when it starts at the stream's first change.
    Ok(if floor == 0 && tail.first().is_some_and(|c| c.seq == 1) { tail } else { Vec::new() })
}

/// The records after `after` (the donor's key order), at most `records_max` of them and about
/// `bytes_max` bytes, cut for `receiver`.
pub fn chunk(
    view: &dyn StoreView,
    receiver: &RegionName,
    sealer: &Sealer,
    after: Option<&Key>,
    records_max: usize,
    bytes_max: u64,
) -> Result<Chunk, SnapshotError> {
    let read = view.records_after(after, records_max.max(1))?;
    let done = read.len() < records_max.max(1);
    let mut out = Chunk { done, ..Chunk::default() };
    let mut bytes = 0u64;
    let count = read.len();
    for (i, (key, record)) in read.into_iter().enumerate() {
        out.last = Some(key.clone());
        if record.origin.as_str() == STRONG_ORIGIN {
            // Rebuilt from the Raft log (`header`).
            continue;
        }
        let placed = placement::places(&record.metadata, receiver);
        if seal::is_sealed(&key) {
            if placed {
                return Err(SnapshotError::NotHeld { key, receiver: receiver.clone() });
            }
            bytes += record_bytes(&key, &record) as u64;
            out.records.push((key, record));
        } else if placed {
            for entry in view.history(&key)? {
                bytes += fold_bytes(&entry) as u64;
                out.history.push((key.clone(), entry));
            }
            bytes += record_bytes(&key, &record) as u64;
            out.records.push((key.clone(), record));
        } else {
            let register = register_of(record);
            bytes += record_bytes(&key, &register) as u64;
            out.records.push((sealer.seal(&key), register));
        }
        if bytes >= bytes_max && i + 1 < count {
            out.done = false;
            break;
        }
    }
    Ok(out)
}

/// What a region outside a record's placement keeps of it: placement, version and the change
/// that made it, no content.
pub fn register_of(record: Record) -> Record {
    Record { value: None, doc: None, lacking: Default::default(), ..record }
}

/// The commit installing `chunk` of snapshot `snapshot` from `donor` at `local`.
pub fn chunk_batch(
    chunk: Chunk,
    header: &Header,
    donor: &RegionName,
    snapshot: u64,
    local: &RegionName,
    sealer: &Sealer,
) -> CommitBatch {
    let mut batch = CommitBatch {
        hlc_high_water: header.hlc_high_water,
        bootstrap: Some(BootstrapMark::Installing { donor: donor.to_string(), snapshot, after: chunk.last.clone() }),
        history: chunk.history,
        unsynced: true,
        ..CommitBatch::default()
    };
    for (key, record) in chunk.records {
        if !seal::is_sealed(&key) && placement::places(&record.metadata, local) {
            batch.sealed_index.push((sealer.seal(&key), Some(key.clone())));
        }
        batch.records.push((key, record));
    }
    batch
}

/// The commit that ends an install: the header's vector and anchors, log floors just below
/// the anchors, and a checkpoint on the last change of each of `local`'s own streams that
/// lacks one (signed by `notary`), so its writer continues its chains where the donor's
/// changelog ends. Durable before it returns.
pub fn end_batch(
    header: &Header,
    local: &RegionName,
    sealer: &Sealer,
    notary: Option<&dyn Notary>,
    incarnation: u64,
) -> CommitBatch {
    let mut anchors = header.anchors.clone();
    let mut floors = VersionVector::new();
    for (stream, seq) in header.vv.iter() {
        let first = anchors.iter().find(|c| &c.stream() == stream).map(|c| c.seq);
        let floor = first.map_or(seq, |f| f - 1);
        if floor > 0 {
            floors.raise(stream, floor);
        }
    }
    let own: Vec<Stream> = header.vv.iter().map(|(s, _)| s.clone()).filter(|s| &s.origin == local).collect();
    for stream in own {
        let idx: Vec<usize> = (0..anchors.len()).filter(|&i| anchors[i].stream() == stream).collect();
        let Some(&last) = idx.last() else { continue };
        if anchors[last].proof.checkpoint.is_some() {
            continue;
        }
        let mut head = match anchors[idx[0]].proof.checkpoint.as_ref() {
            Some(cp) => cp.link,
            None => provenance::GENESIS,
        };
        let from = if anchors[idx[0]].proof.checkpoint.is_some() { 1 } else { 0 };
        for &i in &idx[from..] {
            head = provenance::link(&head, &provenance::leaf(&anchors[i], sealer));
        }
        let c = &anchors[last];
        let (signer, signature) = notary
            .and_then(|n| n.sign(&provenance::message(&c.origin, c.lane, c.seq, &head)))
            .unwrap_or((provenance::GENESIS, Vec::new()));
        anchors[last].proof.checkpoint = Some(Checkpoint { link: head, signer, signature });
    }
    CommitBatch {
        changes: anchors,
        vv: header.vv.clone(),
        log_truncated: floors,
        hlc_high_water: header.hlc_high_water,
        bootstrap: Some(BootstrapMark::done(incarnation)),
        must_sync: true,
        ..CommitBatch::default()
    }
}

/// A commit that takes out up to `records_max` of what an unfinished install put in (its
/// snapshot is gone from the donor, so another starts from the beginning); `None` once nothing
/// is left. Only for a store that holds nothing but an unfinished install.
pub fn clear_batch(
    store: &dyn mrr_storage::Store,
    sealer: &Sealer,
    records_max: usize,
) -> Result<Option<CommitBatch>, StoreError> {
    let read = store.records_after(None, records_max.max(1))?;
    if read.is_empty() {
        return Ok(None);
    }
    let mut batch = CommitBatch { hlc_high_water: store.recover()?.hlc_high_water, ..CommitBatch::default() };
    for (key, _) in read {
        if !seal::is_sealed(&key) {
            batch.histories_dropped.push(key.clone());
            batch.sealed_index.push((sealer.seal(&key), None));
        }
        batch.records_removed.push(key);
    }
    Ok(Some(batch))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use mrr_core::Stream;

    use super::*;

    fn r(s: &str) -> RegionName {
        RegionName::new(s).expect("valid")
    }

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        entries.iter().map(|(o, n)| (Stream::normal(r(o)), *n)).collect()
    }

    fn standing(applied: &[(&str, u64)], floors: &[(&str, u64)]) -> Standing {
        Standing { applied: vv(applied), floors: vv(floors), stable: VersionVector::new(), incarnation: 0 }
    }

    fn decide_for_a(standings: &[(&str, Standing)]) -> Decision {
        let standings: BTreeMap<RegionName, Standing> = standings.iter().map(|(n, s)| (r(n), s.clone())).collect();
        decide(&r("a"), &standings, None, &BTreeSet::new())
    }

    #[test]
    fn a_new_region_of_a_new_cluster_starts_fresh_and_a_wiped_one_waits_for_equal_streams() {
        let empty = standing(&[], &[]);
        assert_eq!(decide_for_a(&[("b", empty.clone()), ("c", empty)]), Decision::Fresh);
        // b holds more of a's stream than c: c gets it from b first.
        let b = standing(&[("a", 5), ("b", 9)], &[]);
        let c = standing(&[("a", 3), ("b", 9)], &[]);
        assert_eq!(decide_for_a(&[("b", b.clone()), ("c", c)]), Decision::Wait);
        let c = standing(&[("a", 5), ("b", 8)], &[]);
        assert_eq!(decide_for_a(&[("b", b), ("c", c)]), Decision::From(r("b")), "the freshest");
    }

    #[test]
    fn a_stuck_peer_may_be_behind_on_the_region_but_not_ahead_and_is_never_the_donor() {
        // c was let go as lagging: b truncated its own stream past what c holds of it, and no
        // other peer can send it on, so c rejoins through a snapshot itself.
        let b = standing(&[("a", 5), ("b", 20)], &[("b", 12)]);
        let behind = standing(&[("a", 3), ("b", 10)], &[]);
        assert!(stuck(&r("c"), &[(r("b"), b.clone()), (r("c"), behind.clone())].into_iter().collect()));
        assert_eq!(decide_for_a(&[("b", b.clone()), ("c", behind)]), Decision::From(r("b")));
        // Ahead on a's stream, it could relay changes numbered as a's next writes: wait.
        let ahead = standing(&[("a", 7), ("b", 10)], &[]);
        assert_eq!(decide_for_a(&[("b", b.clone()), ("c", ahead)]), Decision::Wait);
        // Holding as much of a as b and more writes in all, it is still not the donor.
        let fresher = standing(&[("a", 5), ("b", 10), ("x", 99)], &[]);
        assert_eq!(decide_for_a(&[("b", b), ("c", fresher)]), Decision::From(r("b")));
    }

    #[test]
    fn a_relay_cannot_serve_a_peer_at_its_floor_but_the_origin_can() {
        let at_floor = vv(&[("b", 12)]);
        let floors = vv(&[("b", 12)]);
        assert!(!behind_every_floor(&r("a"), &at_floor, &[(&r("b"), &floors)]), "the origin sends on from 13");
        assert!(
            behind_every_floor(&r("a"), &at_floor, &[(&r("c"), &floors)]),
            "a relay needs an anchor at or below 12"
        );
        assert!(!behind_every_floor(&r("a"), &at_floor, &[]), "nobody said anything");
    }
}
