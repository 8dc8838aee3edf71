//! Provenance: proof that a relayed change was made by its origin.
//!
//! Mutual TLS binds a stream to the region that dials it, so a change that arrives from its
//! own origin needs no further proof. A change that arrives through a relay (a third region
//! bridging a partition) does: without one, a holder of us-west's certificate could relay
//! changes "of eu-central" that eu-central never wrote. A signature per change would cost a
//! public-key operation per write; instead each origin keeps a hash chain over each of its
//! streams and signs the chain's head now and then (a *checkpoint*, carried on the change it
//! ends at). A relayed range is then proven by one signature at its end:
//!
//! - **Leaf.** Every change has a leaf digest that every region can compute from what it
//!   holds, content or marker: the hash of the change's marker form (stream, sequence, sealed
//!   name, op kind, placement, version, causal past) and of its *content digest*, a keyed hash
//!   (the sealer's key, [`crate::seal`]) of the whole change. A region outside the placement
//!   keeps the content digest on the marker it stores, so it learns no more than the sealed
//!   name already tells it, yet can relay the marker onward provably.
//! - **Chain.** `link(n) = H(link(n-1) || leaf(n))` from [`GENESIS`] at sequence 0.
//! - **Checkpoint.** The origin's writer puts one on the last change of each of its streams in
//!   every group commit, and at least every [`CHECKPOINT_CHANGES_MAX`] changes and
//!   [`CHECKPOINT_BYTES_MAX`] bytes: the link there, signed with the region's certificate key
//!   (unsigned in a cluster without certificates, where nothing can prove an origin anyway).
//! - **Relaying.** A relay sends a range of a stream starting at an *anchor*: the last
//!   checkpoint at or before what the peer has, with the changes from there to what the peer
//!   has as markers (the *proving* part of a batch, which is never applied), then the new
//!   changes, ending at a checkpoint. The receiver checks the anchor's signature, chains the
//!   leaves from its link, and requires every checkpoint on the way (the last one included) to
//!   match and to verify.
//!
//! Receivers keep no chain state: everything a check needs is in the batch. A change whose
//! chain does not reach its origin's signed checkpoint is refused with the stream.
//!
//! This module computes digests and checks batches. It does no IO: the writer stamps
//! ([`Stamper`]), the transports call [`read_relayed`] and [`verify_relayed`], and a
//! [`Notary`] (certificates in the node, a keyed stand-in in the simulator) signs and verifies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::change::{Change, ChangeId, Op};
use crate::lane::{Lane, Stream};
use crate::region::RegionName;
use crate::seal::Sealer;

/// A SHA-256 output: a leaf, a link, a content digest or a certificate's fingerprint.
pub type Digest = [u8; 32];

/// The link before a stream's first change.
pub const GENESIS: Digest = [0; 32];

/// A checkpoint at least every this many changes of a stream, so that any range read from a
/// relay's changelog (up to `OutboundLimits::batch_changes_max`) reaches one.
pub const CHECKPOINT_CHANGES_MAX: u64 = 256;
/// A checkpoint once the changes since the last one reach this many payload bytes...
pub const CHECKPOINT_BYTES_MAX: u64 = 1024 * 1024;
/// ...and on both sides of a change this large, so that a read stopped by its byte budget
/// before a large change still ends at a checkpoint.
pub const CHECKPOINT_LARGE_CHANGE_BYTES: u64 = 256 * 1024;

/// The origin's signed chain head, carried on the change it ends at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The chain's link after this change.
    pub link: Digest,
    /// Fingerprint (SHA-256 of the DER) of the certificate whose key signed; zeros when
    /// unsigned.
    pub signer: Digest,
    /// Empty when unsigned.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// What proves a change's origin; empty on most changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// On a marker only: the content digest of the change it stands for (a region with the
    /// content computes it).
    pub content_digest: Option<Digest>,
    pub checkpoint: Option<Checkpoint>,
}

impl Proof {
    pub fn is_empty(&self) -> bool {
        self.content_digest.is_none() && self.checkpoint.is_none()
    }
}

/// Signs checkpoints as this region and verifies other regions' signatures.
pub trait Notary: Send + Sync {
    /// Signs `message` as this region: the signer's fingerprint and the signature. `None` when
    /// this region has no key (a cluster without certificates).
    fn sign(&self, message: &[u8]) -> Option<(Digest, Vec<u8>)>;

    /// Whether `signature` over `message` was made by `origin` with the certificate named by
    /// `signer`, valid when the change was written (`wall_ms`, its origin's clock).
    fn verify(
        &self,
        origin: &RegionName,
        signer: &Digest,
        message: &[u8],
        signature: &[u8],
        wall_ms: u64,
    ) -> Result<(), String>;
}

/// A relayed batch that does not prove its changes' origin: the stream ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvenanceError {
    #[error("relayed changes of {stream} are not contiguous: {id} follows seq {after}")]
    NotContiguous { stream: Stream, id: ChangeId, after: u64 },
    #[error("relayed change {id} starts its range without a checkpoint to anchor it")]
    NoAnchor { id: ChangeId },
    #[error("relayed change {id} ends its range without a checkpoint of its origin")]
    Uncovered { id: ChangeId },
    #[error("relayed changes up to {id} do not chain to their origin's checkpoint: altered or forged on the way")]
    Mismatch { id: ChangeId },
    #[error("the checkpoint on relayed change {id} is not its origin's: {reason}")]
    Signature { id: ChangeId, reason: String },
}

/// Feeds postcard's encoding straight into a hash: a canonical encoding with no allocation.
struct Hashing<D>(D);

impl<D: sha2::digest::Update> postcard::ser_flavors::Flavor for Hashing<D> {
    type Output = D;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.update(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.update(&[data]);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<D> {
        Ok(self.0)
    }
}

fn hash_into<D: sha2::digest::Update, T: Serialize + ?Sized>(hasher: D, value: &T) -> D {
    // Hashing never fails and plain data always serialises.
    postcard::serialize_with_flavor(value, Hashing(hasher)).unwrap_or_else(|e| unreachable!("postcard: {e}"))
}

/// The keyed digest of a change's whole content (everything but its proof).
pub fn content_digest(change: &Change, sealer: &Sealer) -> Digest {
    let view = (
        &change.origin,
        change.lane,
        change.seq,
        &change.key,
        &change.op,
        &change.metadata,
        &change.version,
        &change.deps,
        &change.replay_of,
        change.moves,
        &change.carried,
    );
    hmac::Mac::finalize(hash_into(sealer.keyed(b"mrr-content-v1"), &view)).into_bytes().into()
}

/// The op a marker of `change` has (see [`crate::placement::to_marker`]).
pub fn marker_op(op: &Op) -> Op {
    match op {
        Op::Transfer => Op::Transfer,
        Op::History => Op::History,
        Op::Want { .. } => Op::Want { ids: Vec::new() },
        _ => Op::Marker,
    }
}

/// The content digest a marker of `change` carries: its own on a marker, else computed.
pub fn digest_for_marker(change: &Change, sealer: &Sealer) -> Digest {
    match change.proof.content_digest {
        Some(d) if !change.has_content() => d,
        _ => content_digest(change, sealer),
    }
}

/// The leaf of `change`: equal whether computed from the change or from its marker.
pub fn leaf(change: &Change, sealer: &Sealer) -> Digest {
    use sha2::digest::FixedOutput as _;
    let view = (
        &change.origin,
        change.lane,
        change.seq,
        &sealer.seal(&change.key),
        marker_op(&change.op),
        &change.metadata.regions,
        &change.version,
        &change.deps,
        change.moves,
        digest_for_marker(change, sealer),
    );
    hash_into(Sha256::new_with_prefix(b"mrr-leaf-v1"), &view).finalize_fixed().into()
}

pub fn link(prev: &Digest, leaf: &Digest) -> Digest {
    let mut h = Sha256::new_with_prefix(b"mrr-link-v1");
    h.update(prev);
    h.update(leaf);
    h.finalize().into()
}

/// What the origin signs for a checkpoint.
pub fn message(origin: &RegionName, lane: Lane, seq: u64, link: &Digest) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + origin.as_str().len());
    m.extend_from_slice(b"mrr-checkpoint-v1");
    m.extend_from_slice(&(origin.as_str().len() as u64).to_be_bytes());
    m.extend_from_slice(origin.as_str().as_bytes());
    m.push(lane.to_wire() as u8);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(link);
    m
}

/// Whether `checkpoint`, on `change`, was signed by the change's origin (as `notary` checks).
pub fn verify_checkpoint(notary: &dyn Notary, change: &Change, checkpoint: &Checkpoint) -> Result<(), String> {
    let m = message(&change.origin, change.lane, change.seq, &checkpoint.link);
    notary.verify(&change.origin, &checkpoint.signer, &m, &checkpoint.signature, change.version.ts.wall_ms)
}

/// The origin's side: the head of each of its own streams, and the checkpoints of a group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stamper {
    /// Per own lane: the last sequence stamped and the link there.
    heads: BTreeMap<Lane, (u64, Digest)>,
}

impl Stamper {
    /// Heads as the changelog holds them: per stream, the checkpoint on its last change (own
    /// streams always end at one: every group does). Other regions' streams are left out.
    pub fn recovered<'a>(local: &RegionName, heads: impl IntoIterator<Item = (&'a Stream, &'a (u64, Digest))>) -> Self {
        Self { heads: heads.into_iter().filter(|(s, _)| &s.origin == local).map(|(s, h)| (s.lane, *h)).collect() }
    }

    /// Puts checkpoints on `local`'s own changes in `changes` (a group about to commit, in
    /// sequence order per stream), signed by `notary` when there is one. The heads move only
    /// once the commit landed ([`Stamper::committed`]).
    pub fn stamp(&self, local: &RegionName, changes: &mut [Change], sealer: &Sealer, notary: Option<&dyn Notary>) {
        let mut heads = self.heads.clone();
        // Per lane: changes and bytes since the last checkpoint, and the index of the last
        // own change (which gets one whatever the counts).
        let mut since: BTreeMap<Lane, (u64, u64, Option<usize>)> = BTreeMap::new();
        let mut marks: Vec<(usize, Digest)> = Vec::new();
        for (i, c) in changes.iter().enumerate() {
            if &c.origin != local {
                continue;
            }
            let (seq_before, prev) = heads.get(&c.lane).copied().unwrap_or((0, GENESIS));
            // Sequence numbers of a stream are contiguous; a stamper that missed some would
            // chain a different history than every receiver.
            assert_eq!(c.seq, seq_before + 1, "own change {} stamped out of order", c.id());
            let this = link(&prev, &leaf(c, sealer));
            let bytes = c.payload_len() as u64;
            let entry = since.entry(c.lane).or_insert((0, 0, None));
            // A large change gets a checkpoint before it (on the previous change) and on itself.
            if bytes >= CHECKPOINT_LARGE_CHANGE_BYTES && entry.0 > 0 {
                if let Some(j) = entry.2 {
                    marks.push((j, prev));
                }
            }
            entry.0 += 1;
            entry.1 += bytes;
            entry.2 = Some(i);
            if entry.0 >= CHECKPOINT_CHANGES_MAX
                || entry.1 >= CHECKPOINT_BYTES_MAX
                || bytes >= CHECKPOINT_LARGE_CHANGE_BYTES
            {
                marks.push((i, this));
                *entry = (0, 0, Some(i));
            }
            heads.insert(c.lane, (c.seq, this));
        }
        // The last own change of each lane in the group.
        for (lane, (_, _, last)) in &since {
            if let (Some(i), Some((_, head))) = (last, heads.get(lane)) {
                marks.push((*i, *head));
            }
        }
        for (i, link_there) in marks {
            let c = &mut changes[i];
            if c.proof.checkpoint.is_some() {
                continue;
            }
            let (signer, signature) = notary
                .and_then(|n| n.sign(&message(&c.origin, c.lane, c.seq, &link_there)))
                .unwrap_or((GENESIS, Vec::new()));
            c.proof.checkpoint = Some(Checkpoint { link: link_there, signer, signature });
        }
    }

    /// A group's commit landed: its own changes' last checkpoints are the new heads.
    pub fn committed(&mut self, local: &RegionName, changes: &[Change]) {
        for c in changes.iter().filter(|c| &c.origin == local) {
            if let Some(cp) = &c.proof.checkpoint {
                self.heads.insert(c.lane, (c.seq, cp.link));
            }
        }
    }
}

/// The changes one outbound read of a relayed stream sends: `proving` (the anchor and what
/// follows it up to what the peer has, which the peer needs only to chain: sent as markers)
/// and `new`, the changes after `after_seq` up to the read's bounds.
#[derive(Debug)]
pub struct RelayRead {
    pub proving: Vec<Change>,
    pub new: Vec<Change>,
}

/// Reads a relayed stream for a peer that has it up to `after_seq`: from the last checkpoint
/// at or before `after_seq` (the anchor; none when the stream's first change is in reach).
/// `read(after, limit, bytes_max)` reads the changelog like `Store::changes_within`.
pub fn read_relayed<E>(
    after_seq: u64,
    limit: usize,
    bytes_max: u64,
    sealer: &Sealer,
    mut read: impl FnMut(u64, usize, u64) -> Result<Vec<Change>, E>,
) -> Result<RelayRead, E> {
    let mut proving = Vec::new();
    if after_seq > 0 {
        // Usually the previous batch ended at a checkpoint: one change back.
        let mut back = read(after_seq - 1, 1, u64::MAX)?;
        if !back.first().is_some_and(|c| c.seq == after_seq && c.proof.checkpoint.is_some()) {
            let from = after_seq.saturating_sub(CHECKPOINT_CHANGES_MAX);
            back = read(from, (after_seq - from) as usize, u64::MAX)?;
            back.retain(|c| c.seq <= after_seq);
        }
        // From the last checkpoint on; none in reach means the stream's start is.
        let anchor = back.iter().rposition(|c| c.proof.checkpoint.is_some());
        let start = match anchor {
            Some(i) => i,
            None if back.first().is_some_and(|c| c.seq == 1) => 0,
            // A changelog without the checkpoint it should hold: send from after_seq and let
            // the peer refuse what it cannot check (it names the change).
            None => back.len(),
        };
        proving = back.split_off(start).iter().map(|c| crate::placement::to_marker(c, sealer)).collect();
    }
    let mut new = read(after_seq, limit, bytes_max)?;
    // A read cut short by its bounds (a small window) may end before the next checkpoint:
    // read on to it (at most a checkpoint's spacing), or the stream would never move.
    if provable_len(&new) == 0 {
        if let Some(last) = new.last().map(|c| c.seq) {
            let more = read(last, CHECKPOINT_CHANGES_MAX as usize, u64::MAX)?;
            if let Some(i) = more.iter().position(|c| c.proof.checkpoint.is_some()) {
                new.extend(more.into_iter().take(i + 1));
            }
        }
    }
    Ok(RelayRead { proving, new })
}

/// How many of `new` a relay may send: up to its last checkpoint.
pub fn provable_len(new: &[impl std::borrow::Borrow<Change>]) -> usize {
    new.iter().rposition(|c| c.borrow().proof.checkpoint.is_some()).map_or(0, |i| i + 1)
}

/// Cuts what a relay would send of a read (as [`crate::placement::for_peer`] shipped it)
/// back to its last checkpoint. `true` when that left nothing to send although the read had
/// changes: the stream waits for the rest of its origin's segment
/// ([`crate::session::OutboundSession::await_checkpoint`]).
pub fn cut_to_checkpoint(shipped: &mut crate::placement::ForPeer<'_>) -> bool {
    let n = provable_len(&shipped.changes);
    if n == shipped.changes.len() {
        return false;
    }
    shipped.changes.truncate(n);
    // Not sending up to the held change: nothing to hold at yet.
    shipped.held_at = None;
    n == 0
}

/// Checks the changes `peer` relays in one batch (those of other origins); its own changes
/// pass as they are (the transport proved who `peer` is). `proving` holds, per relayed stream,
/// the anchor and the markers of what the peer already has after it (never applied: they only
/// chain); without any for a stream, its range must start at sequence 1. With a `notary`,
/// every checkpoint's signature must verify; without one (a cluster without certificates) only
/// the chains are checked.
pub fn verify_relayed(
    peer: &RegionName,
    proving: &[Change],
    changes: &[Change],
    sealer: &Sealer,
    notary: Option<&dyn Notary>,
) -> Result<(), ProvenanceError> {
    if proving.is_empty() && changes.iter().all(|c| &c.origin == peer) {
        return Ok(());
    }
    // Per relayed stream: the last sequence chained, the running link, the last change and
    // whether a checkpoint covers it.
    struct Run {
        last_seq: u64,
        head: Digest,
        last: ChangeId,
        covered: bool,
    }
    let check = |c: &Change, cp: &Checkpoint| -> Result<(), ProvenanceError> {
        match notary {
            None => Ok(()),
            Some(n) => verify_checkpoint(n, c, cp).map_err(|reason| ProvenanceError::Signature { id: c.id(), reason }),
        }
    };
    let mut runs: BTreeMap<Stream, Run> = BTreeMap::new();
    for c in proving {
        let stream = c.stream();
        if &c.origin == peer {
            // A peer's own changes need no proof; proving them is a protocol error.
            return Err(ProvenanceError::NoAnchor { id: c.id() });
        }
        match runs.get_mut(&stream) {
            // The stream's first change with no checkpoint before it (`read_relayed` sends from
            // the start): the chain starts at genesis.
            None if c.seq == 1 && c.proof.checkpoint.is_none() => {
                let mut run = Run { last_seq: 0, head: GENESIS, last: c.id(), covered: false };
                extend(&mut run, c, sealer, &check)?;
                runs.insert(stream, run);
            }
            None => {
                // The anchor: its signed link starts the chain.
                let Some(cp) = &c.proof.checkpoint else { return Err(ProvenanceError::NoAnchor { id: c.id() }) };
                check(c, cp)?;
                runs.insert(stream, Run { last_seq: c.seq, head: cp.link, last: c.id(), covered: true });
            }
            Some(run) => extend(run, c, sealer, &check)?,
        }
    }
    fn extend(
        run: &mut Run,
        c: &Change,
        sealer: &Sealer,
        check: &dyn Fn(&Change, &Checkpoint) -> Result<(), ProvenanceError>,
    ) -> Result<(), ProvenanceError> {
        if c.seq != run.last_seq + 1 {
            return Err(ProvenanceError::NotContiguous { stream: c.stream(), id: c.id(), after: run.last_seq });
        }
        run.head = link(&run.head, &leaf(c, sealer));
        run.last_seq = c.seq;
        run.last = c.id();
        run.covered = match &c.proof.checkpoint {
            Some(cp) if cp.link == run.head => {
                check(c, cp)?;
                true
            }
            Some(_) => return Err(ProvenanceError::Mismatch { id: c.id() }),
            None => false,
        };
        Ok(())
    }
    for c in changes.iter().filter(|c| &c.origin != peer) {
        let stream = c.stream();
        if !runs.contains_key(&stream) {
            if c.seq != 1 {
                return Err(ProvenanceError::NoAnchor { id: c.id() });
            }
            runs.insert(stream.clone(), Run { last_seq: 0, head: GENESIS, last: c.id(), covered: false });
        }
        if let Some(run) = runs.get_mut(&stream) {
            extend(run, c, sealer, &check)?;
        }
    }
    match runs.into_values().find(|r| !r.covered) {
        Some(run) => Err(ProvenanceError::Uncovered { id: run.last }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Timestamp;
    use crate::record::{Key, Metadata};
    use crate::version::Version;
    use crate::vv::VersionVector;

    fn r(s: &str) -> RegionName {
        RegionName::new(s).expect("valid")
    }

    /// Signs as `region` with a key only this test knows per region.
    struct TestNotary(RegionName);

    fn key_of(region: &RegionName) -> Digest {
        link(&[9; 32], &Sha256::digest(region.as_str().as_bytes()).into())
    }

    impl Notary for TestNotary {
        fn sign(&self, message: &[u8]) -> Option<(Digest, Vec<u8>)> {
            Some((key_of(&self.0), link(&key_of(&self.0), &Sha256::digest(message).into()).to_vec()))
        }

        fn verify(&self, origin: &RegionName, signer: &Digest, m: &[u8], sig: &[u8], _: u64) -> Result<(), String> {
            let ok = *signer == key_of(origin) && sig == link(&key_of(origin), &Sha256::digest(m).into()).as_slice();
            ok.then_some(()).ok_or_else(|| "bad signature".into())
        }
    }

    fn change(seq: u64, id: &str, regions: &[&str]) -> Change {
        Change {
            origin: r("us-west"),
            lane: Lane::Normal,
            seq,
            key: Key::new("users", id),
            op: Op::Put { value: format!(r#"{{"n":{seq}}}"#).into_bytes() },
            metadata: Metadata {
                regions: regions.iter().map(|s| s.to_string()).collect(),
                sync_flags: vec!["X".into()],
            },
            version: Version { ts: Timestamp::new(1_000 + seq, 0), region: r("us-west") },
            deps: VersionVector::new(),
            replay_of: None,
            moves: seq == 1,
            carried: Vec::new(),
            proof: Proof::default(),
        }
    }

    /// us-west's changelog of `n` changes in groups of `group`, stamped as its writer does.
    fn stamped(n: u64, group: u64, sealer: &Sealer) -> Vec<Change> {
        let mut stamper = Stamper::default();
        let mut log = Vec::new();
        let notary = TestNotary(r("us-west"));
        let mut seq = 1;
        while seq <= n {
            let mut g: Vec<_> = (seq..=(seq + group - 1).min(n)).map(|s| change(s, &format!("u{s}"), &[])).collect();
            stamper.stamp(&r("us-west"), &mut g, sealer, Some(&notary));
            stamper.committed(&r("us-west"), &g);
            seq += g.len() as u64;
            log.extend(g);
        }
        log
    }

    /// What a relay sends of `log` to a peer that has it up to `after`: (proving, new).
    fn relay(log: &[Change], after: u64, limit: usize, sealer: &Sealer) -> (Vec<Change>, Vec<Change>) {
        let read = |a: u64, l: usize, _| -> Result<Vec<Change>, ()> {
            Ok(log.iter().filter(|c| c.seq > a).take(l).cloned().collect())
        };
        let r = read_relayed(after, limit, u64::MAX, sealer, read).expect("read");
        let n = provable_len(&r.new);
        (r.proving, r.new.into_iter().take(n).collect())
    }

    #[test]
    fn a_change_and_its_marker_have_one_leaf() {
        let sealer = Sealer::new("shop", "0123456789abcdef");
        let c = change(3, "vip", &["us-west"]);
        let marker = crate::placement::to_marker(&c, &sealer);
        assert!(!marker.has_content() && marker.proof.content_digest.is_some());
        assert_eq!(leaf(&marker, &sealer), leaf(&c, &sealer));
        assert_eq!(
            leaf(&crate::placement::to_marker(&marker, &sealer), &sealer),
            leaf(&c, &sealer),
            "a marker's marker"
        );
        let mut other = c.clone();
        other.op = Op::Put { value: b"{}".to_vec() };
        assert_ne!(leaf(&other, &sealer), leaf(&c, &sealer), "the leaf covers the content");
        assert_ne!(
            leaf(&c, &Sealer::new("shop", "another-secret-01")),
            leaf(&c, &sealer),
            "content digests are keyed, like sealed names"
        );
    }

    #[test]
    fn the_writer_checkpoints_every_group_and_within_long_ones() {
        let sealer = Sealer::new("shop", "0123456789abcdef");
        let log = stamped(600, 600, &sealer);
        let at: Vec<u64> = log.iter().filter(|c| c.proof.checkpoint.is_some()).map(|c| c.seq).collect();
        assert_eq!(at, [256, 512, 600]);
        let log = stamped(7, 3, &sealer);
        let at: Vec<u64> = log.iter().filter(|c| c.proof.checkpoint.is_some()).map(|c| c.seq).collect();
        assert_eq!(at, [3, 6, 7], "the last own change of every group");
        // Links chain across groups: a stamper recovered from the last change continues it.
        let cp = log[5].proof.checkpoint.as_ref().map(|c| (6, c.link)).expect("checkpoint");
        let again = Stamper::recovered(&r("us-west"), [(&log[5].stream(), &cp)]);
        let mut g = vec![log[6].clone()];
        g[0].proof = Proof::default();
        again.stamp(&r("us-west"), &mut g, &sealer, None);
        assert_eq!(g[0].proof.checkpoint.as_ref().map(|c| c.link), log[6].proof.checkpoint.as_ref().map(|c| c.link));
    }

    #[test]
    fn a_relayed_range_verifies_from_its_anchor() {
        let sealer = Sealer::new("shop", "0123456789abcdef");
        let log = stamped(40, 4, &sealer);
        let notary = TestNotary(r("eu-central"));
        let (relay_r, origin) = (r("ap-northeast"), r("us-west"));
        let seqs = |cs: &[Change]| cs.iter().map(|c| c.seq).collect::<Vec<_>>();
        // From the start: no anchor, up to the last checkpoint read.
        let (proving, new) = relay(&log, 0, 10, &sealer);
        assert!(proving.is_empty());
        assert_eq!(seqs(&new), (1..=8).collect::<Vec<_>>());
        verify_relayed(&relay_r, &proving, &new, &sealer, Some(&notary)).expect("proven");
        // Mid-segment: anchored at 8, with 9 and 10 (which the peer has) as markers to chain.
        let (proving, new) = relay(&log, 10, 5, &sealer);
        assert_eq!((seqs(&proving), seqs(&new)), (vec![8, 9, 10], vec![11, 12]));
        assert!(proving.iter().all(|c| !c.has_content()) && new.iter().all(Change::has_content));
        verify_relayed(&relay_r, &proving, &new, &sealer, Some(&notary)).expect("proven");
        // The origin's own changes pass as they are.
        verify_relayed(&origin, &[], &log[12..14], &sealer, Some(&notary)).expect("direct");
        // A peer that has the stream's first changes, before any checkpoint (it heard them from
        // their origin directly): they are proved from the start, with no anchor.
        let (proving, new) = relay(&log, 2, 4, &sealer);
        assert_eq!((seqs(&proving), seqs(&new)), (vec![1, 2], vec![3, 4]));
        verify_relayed(&relay_r, &proving, &new, &sealer, Some(&notary)).expect("proven from the start");
        let mut forged = proving.clone();
        forged[1].version.ts.logical += 1;
        assert!(verify_relayed(&relay_r, &forged, &new, &sealer, Some(&notary)).is_err(), "still chained");
    }

    #[test]
    fn an_altered_forged_or_unanchored_relay_is_refused() {
        let sealer = Sealer::new("shop", "0123456789abcdef");
        let log = stamped(40, 4, &sealer);
        let notary = TestNotary(r("eu-central"));
        let relay_r = r("ap-northeast");
        let refused = |(proving, new): (Vec<Change>, Vec<Change>)| {
            verify_relayed(&relay_r, &proving, &new, &sealer, Some(&notary)).expect_err("refused")
        };
        let honest = relay(&log, 10, 5, &sealer);

        let mut altered = honest.clone();
        altered.1[0].op = Op::Put { value: br#"{"n":"forged"}"#.to_vec() };
        assert!(matches!(refused(altered), ProvenanceError::Mismatch { .. }));
        // An invented change with a checkpoint the relay signed itself.
        let mut invented = honest.clone();
        invented.1[1].op = Op::Delete;
        let l = link(&GENESIS, &[0; 32]);
        let (signer, signature) =
            TestNotary(relay_r.clone()).sign(&message(&invented.1[1].origin, Lane::Normal, 12, &l)).expect("sign");
        invented.1[1].proof.checkpoint = Some(Checkpoint { link: l, signer, signature });
        assert!(matches!(refused(invented), ProvenanceError::Mismatch { .. }));
        // The chain recomputed for a forged change still needs the origin's signature.
        let mut resigned = honest.clone();
        resigned.1[0].op = Op::Put { value: br#"{"n":"forged"}"#.to_vec() };
        let mut head = resigned.0[0].proof.checkpoint.as_ref().map(|c| c.link).expect("anchor");
        for c in resigned.0[1..].iter_mut().chain(resigned.1.iter_mut()) {
            head = link(&head, &leaf(c, &sealer));
            if let Some(cp) = &mut c.proof.checkpoint {
                cp.link = head;
            }
        }
        assert!(matches!(refused(resigned), ProvenanceError::Signature { .. }));
        // No anchor, a gap, a range past the last checkpoint.
        assert!(matches!(refused((honest.0[1..].to_vec(), honest.1.clone())), ProvenanceError::NoAnchor { .. }));
        assert!(matches!(refused((Vec::new(), honest.1.clone())), ProvenanceError::NoAnchor { .. }));
        let mut gap = honest.clone();
        gap.0.remove(1);
        assert!(matches!(refused(gap), ProvenanceError::NotContiguous { .. }));
        let mut uncovered = honest.clone();
        uncovered.1.pop();
        assert!(matches!(refused(uncovered), ProvenanceError::Uncovered { .. }));
        // Without a notary (no certificates), chains are still checked.
        let mut altered = honest;
        altered.1[1].moves = !altered.1[1].moves;
        assert!(matches!(
            verify_relayed(&relay_r, &altered.0, &altered.1, &sealer, None),
            Err(ProvenanceError::Mismatch { .. })
        ));
    }
}
