//! Anti-entropy, sans-IO: how two regions find the records they hold differently, and what
//! they send each other to repair them.
//!
//! Replication is what makes regions converge; anti-entropy checks that it did, and repairs
//! what a bug or a bad disk left different. A comparison is between this region and one peer,
//! over the records *both* hold in clear (placed in both, by each one's own copy; strong
//! topics are left out: every region rebuilds them from the strong tier's log). Each side
//! hashes its records into [`BUCKETS`] buckets of [`fingerprint`] sums (a [`Tree`], built by
//! one scan of a consistent view); buckets whose sums differ are listed key by key
//! ([`entries`]); keys that differ are exchanged as record [`State`]s, and each side *joins*
//! the other's state into its own through its writer (`Engine::repair`): the same rule that
//! merges changes merges states, so a repair never undoes a newer write.
//!
//! Records change while they are compared: a state is joined only when everything in it is
//! already in the joining region's applied vector (it *claims* to have it, so holding it
//! differently is the fault); anything else is in flight, left to replication and reported.
//! Two copies of the *same* change that differ (a corrupted copy) cannot be told apart by a
//! join: the region running the repair counts copies across its peers and has the minority
//! copies replaced by the majority's ([`Offer::replace`]); with no majority it reports the
//! key and changes nothing.
//!
//! This module reads views and decides; it holds no state, does no IO of its own and never
//! commits. The node's `mrr_replication::repair` carries the messages; the writer applies.

use std::collections::{BTreeMap, BTreeSet};

use mrr_core::fold::FoldEntry;
use mrr_core::{placement, seal, Key, Metadata, Policies, Record, RegionName, Version};
use mrr_storage::{StoreError, StoreView};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

/// Buckets per tree. 4,096 sums of 16 bytes: 64 KiB to send, and one bucket of a
/// 1,000,000-record region holds about 250 keys to list when it differs.
pub const BUCKETS: usize = 4_096;

/// Records read from a view per step of a scan.
const SCAN_PAGE_RECORDS: usize = 4_096;

/// What a comparison covers: the records `local` and `peer` both hold, of `topics` (all
/// topics when empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub local: RegionName,
    pub peer: RegionName,
    pub topics: BTreeSet<String>,
}

impl Scope {
    /// Whether this side compares `record` (stored under `key`) with the peer.
    pub fn covers(&self, policies: &Policies, key: &Key, record: &Record) -> bool {
        !seal::is_sealed(key)
            && (self.topics.is_empty() || self.topics.contains(&key.topic))
            && !policies.is_strong(&key.topic)
            && placement::places(&record.metadata, &self.local)
            && placement::places(&record.metadata, &self.peer)
    }
}

/// What two regions must agree on about a record: everything but `lacking`, which names
/// changes still in flight and differs while they are.
#[derive(Serialize)]
struct Compared<'a> {
    key: &'a Key,
    value: &'a Option<Vec<u8>>,
    metadata: &'a Metadata,
    version: &'a Version,
    origin: &'a RegionName,
    lane: mrr_core::Lane,
    seq: u64,
    deps: &'a mrr_core::VersionVector,
    doc: &'a Option<mrr_core::doc::Doc>,
    placed_by: &'a Option<Version>,
}

/// A 128-bit hash of what regions must agree on about `record`: equal states hash equal in
/// every region (postcard of ordered maps), and a difference anywhere changes it.
pub fn fingerprint(key: &Key, record: &Record) -> u128 {
    let compared = Compared {
        key,
        value: &record.value,
        metadata: &record.metadata,
        version: &record.version,
        origin: &record.origin,
        lane: record.lane,
        seq: record.seq,
        deps: &record.deps,
        doc: &record.doc,
        placed_by: &record.placed_by,
    };
    // Serialising plain data into a Vec cannot fail; a failure would be a bug in a type here,
    // and hashing nothing would only make the record look different, never equal.
    let bytes = postcard::to_allocvec(&compared).unwrap_or_default();
    xxh3_128(&bytes)
}

/// The bucket a key hashes into: the same in every region.
pub fn bucket_of(key: &Key) -> u32 {
    let mut name = Vec::with_capacity(key.topic.len() + 1 + key.id.len());
    name.extend_from_slice(key.topic.as_bytes());
    name.push(0);
    name.extend_from_slice(key.id.as_bytes());
    (xxh3_64(&name) % BUCKETS as u64) as u32
}

/// Per bucket, the wrapping sum of the fingerprints of the records in it: independent of the
/// order records are read in, and updated by one subtraction and one addition when a record
/// changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    pub sums: Vec<u128>,
    /// Records hashed in.
    pub records: u64,
}

impl Default for Tree {
    fn default() -> Self {
        Self { sums: vec![0; BUCKETS], records: 0 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The peer's tree is not of this release's shape.
    #[error("the peer's tree has {got} buckets, this region's {BUCKETS}: run the same release in both regions")]
    Shape { got: usize },
}

impl Tree {
    pub fn add(&mut self, key: &Key, record: &Record) {
        let b = bucket_of(key) as usize;
        self.sums[b] = self.sums[b].wrapping_add(fingerprint(key, record));
        self.records += 1;
    }

    /// Buckets whose sums differ, in order.
    pub fn differing(&self, theirs: &Tree) -> Result<Vec<u32>, RepairError> {
        if theirs.sums.len() != BUCKETS {
            return Err(RepairError::Shape { got: theirs.sums.len() });
        }
        Ok((0..BUCKETS).filter(|&b| self.sums[b] != theirs.sums[b]).map(|b| b as u32).collect())
    }

    /// 16 bytes per bucket, little-endian: what a tree travels as.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.sums.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    pub fn from_bytes(bytes: &[u8], records: u64) -> Result<Self, RepairError> {
        if bytes.len() != BUCKETS * 16 {
            return Err(RepairError::Shape { got: bytes.len() / 16 });
        }
        let sums = bytes
            .chunks_exact(16)
            .map(|c| {
                let mut b = [0u8; 16];
                b.copy_from_slice(c);
                u128::from_le_bytes(b)
            })
            .collect();
        Ok(Self { sums, records })
    }
}

/// Calls `each` for every record of `view` the scope covers, in key order.
fn scan(
    view: &dyn StoreView,
    policies: &Policies,
    scope: &Scope,
    mut each: impl FnMut(&Key, &Record),
) -> Result<(), StoreError> {
    let mut after: Option<Key> = None;
    loop {
        let page = view.records_after(after.as_ref(), SCAN_PAGE_RECORDS)?;
        let Some((last, _)) = page.last() else { return Ok(()) };
        after = Some(last.clone());
        for (key, record) in &page {
            if scope.covers(policies, key, record) {
                each(key, record);
            }
        }
        if page.len() < SCAN_PAGE_RECORDS {
            return Ok(());
        }
    }
}

/// The tree of what `view` holds within `scope`: one scan, re-reading and re-hashing every
/// record (what a scrub is).
pub fn tree(view: &dyn StoreView, policies: &Policies, scope: &Scope) -> Result<Tree, StoreError> {
    let mut tree = Tree::default();
    scan(view, policies, scope, |k, r| tree.add(k, r))?;
    Ok(tree)
}

/// One record of a differing bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub key: Key,
    pub fingerprint: u128,
    pub version: Version,
}

/// The records of `buckets` within `scope`, in key order.
pub fn entries(
    view: &dyn StoreView,
    policies: &Policies,
    scope: &Scope,
    buckets: &BTreeSet<u32>,
) -> Result<Vec<Entry>, StoreError> {
    let mut out = Vec::new();
    scan(view, policies, scope, |key, record| {
        if buckets.contains(&bucket_of(key)) {
            out.push(Entry {
                key: key.clone(),
                fingerprint: fingerprint(key, record),
                version: record.version.clone(),
            });
        }
    })?;
    Ok(out)
}

/// A key the two sides hold differently: each side's fingerprint and version, `None` where
/// it holds nothing within the scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub key: Key,
    pub mine: Option<(u128, Version)>,
    pub theirs: Option<(u128, Version)>,
}

impl Difference {
    /// Both hold the same change of the key, in different copies: no join can choose.
    pub fn same_version(&self) -> bool {
        matches!((&self.mine, &self.theirs), (Some((_, a)), Some((_, b))) if a == b)
    }
}

/// The keys whose entries differ between the two lists.
pub fn diff(mine: &[Entry], theirs: &[Entry]) -> Vec<Difference> {
    let mine: BTreeMap<&Key, &Entry> = mine.iter().map(|e| (&e.key, e)).collect();
    let theirs: BTreeMap<&Key, &Entry> = theirs.iter().map(|e| (&e.key, e)).collect();
    let keys: BTreeSet<&Key> = mine.keys().chain(theirs.keys()).copied().collect();
    keys.into_iter()
        .filter_map(|key| {
            let (m, t) = (mine.get(key), theirs.get(key));
            if m.map(|e| e.fingerprint) == t.map(|e| e.fingerprint) {
                return None;
            }
            Some(Difference {
                key: key.clone(),
                mine: m.map(|e| (e.fingerprint, e.version.clone())),
                theirs: t.map(|e| (e.fingerprint, e.version.clone())),
            })
        })
        .collect()
}

/// A record as one region holds it, with its fold history under `custom`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub record: Record,
    pub history: Vec<FoldEntry>,
}

/// The state of `key` in `view`, if held in clear (a register is no state to compare).
pub fn state_of(view: &dyn StoreView, key: &Key) -> Result<Option<State>, StoreError> {
    if seal::is_sealed(key) {
        return Ok(None);
    }
    let Some(record) = view.get(key)? else { return Ok(None) };
    let history = view.history(key)?;
    Ok(Some(State { record, history }))
}

/// A state sent to a region to join into its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub key: Key,
    pub state: State,
    /// The sender found this copy held by a majority of the regions it compared, and the
    /// receiver's copy of the same change different: the receiver takes it as it is.
    pub replace: bool,
}

/// States a region sends another to join, with the sender's applied vector as of the view they
/// were read from: a state made only of changes the receiver has applied is a fault to repair,
/// anything else may be in flight.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offers {
    pub applied: mrr_core::VersionVector,
    pub offers: Vec<Offer>,
}

/// What a region did with an offered state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Verdict {
    /// Joined in (or replaced): this region's copy was missing something it claimed to have.
    Repaired,
    /// This region's copy already holds everything the offered one does.
    Covered,
    /// The offer holds changes this region has not applied yet: replication brings them.
    InFlight,
    /// The two disagree on where the record lives, or one holds it only as a register:
    /// placement moves settle that, not a join.
    PlacementDiffers,
    /// Two different copies of the same change, and nobody said which is right.
    Unresolved,
    /// Not compared: a strong topic, or a sealed name.
    Skipped,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Repaired => "repaired",
            Verdict::Covered => "covered",
            Verdict::InFlight => "in_flight",
            Verdict::PlacementDiffers => "placement_differs",
            Verdict::Unresolved => "unresolved",
            Verdict::Skipped => "skipped",
        }
    }
}

/// What a repair run does about keys held in two copies of one change ([`settle`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settlement {
    /// Keys this region holds in a minority copy: the peer to take the majority's copy from.
    pub take_from: BTreeMap<Key, RegionName>,
    /// `(peer, key)`: peers holding a minority copy, told to take this region's.
    pub give_to: BTreeSet<(RegionName, Key)>,
    /// Keys with no majority copy: left as they are, and reported.
    pub unresolved: BTreeSet<Key>,
}

/// Settles same-change differences found with several peers (`compared`: each peer and its
/// differences with this region). A peer whose comparison does not name a key holds this
/// region's copy of it, if the key is placed in that peer (`placed_in`: by this region's copy);
/// otherwise that peer has no copy to count.
pub fn settle(
    local: &RegionName,
    compared: &[(RegionName, &[Difference])],
    placed_in: &dyn Fn(&Key, &RegionName) -> bool,
) -> Settlement {
    let mut out = Settlement::default();
    let disputed: BTreeSet<&Key> =
        compared.iter().flat_map(|(_, diffs)| diffs.iter().filter(|d| d.same_version()).map(|d| &d.key)).collect();
    for key in disputed {
        let Some(mine) =
            compared.iter().flat_map(|(_, d)| d.iter()).find(|d| &d.key == key).and_then(|d| d.mine.clone())
        else {
            continue;
        };
        let mut copies: BTreeMap<RegionName, u128> = BTreeMap::from([(local.clone(), mine.0)]);
        for (peer, diffs) in compared {
            let fp = match diffs.iter().find(|d| &d.key == key) {
                Some(d) => match &d.theirs {
                    Some((fp, v)) if *v == mine.1 => *fp,
                    // Another change of the key there, or none: not a copy of this one.
                    _ => continue,
                },
                None if placed_in(key, peer) => mine.0,
                None => continue,
            };
            copies.insert(peer.clone(), fp);
        }
        match majority(&copies) {
            Some(fp) if fp == mine.0 => {
                for (region, theirs) in &copies {
                    if *theirs != fp {
                        out.give_to.insert((region.clone(), key.clone()));
                    }
                }
            }
            Some(fp) => {
                if let Some((region, _)) = copies.iter().find(|(r, f)| **f == fp && *r != local) {
                    out.take_from.insert(key.clone(), region.clone());
                }
            }
            None => {
                out.unresolved.insert(key.clone());
            }
        }
    }
    out
}

/// For keys held in the same change but different copies by `me` and some peers: which copy
/// wins. `copies` maps each region compared (this one included) to the fingerprint of its
/// copy. A copy held by more than half of them wins; `None` when none is.
pub fn majority(copies: &BTreeMap<RegionName, u128>) -> Option<u128> {
    let mut counts: BTreeMap<u128, usize> = BTreeMap::new();
    for fp in copies.values() {
        *counts.entry(*fp).or_default() += 1;
    }
    counts.into_iter().find(|(_, n)| 2 * n > copies.len()).map(|(fp, _)| fp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mrr_core::{Lane, Timestamp, VersionVector};

    fn r(s: &str) -> RegionName {
        RegionName::new(s).expect("name")
    }

    fn record(value: &str, wall_ms: u64, regions: &[&str]) -> Record {
        Record {
            value: Some(value.as_bytes().to_vec()),
            metadata: Metadata { regions: regions.iter().map(|s| s.to_string()).collect(), sync_flags: vec![] },
            version: Version { ts: Timestamp::new(wall_ms, 0), region: r("a") },
            origin: r("a"),
            lane: Lane::Normal,
            seq: wall_ms,
            deps: VersionVector::new(),
            doc: None,
            placed_by: None,
            lacking: BTreeSet::new(),
        }
    }

    fn scope(topics: &[&str]) -> Scope {
        Scope { local: r("a"), peer: r("b"), topics: topics.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn equal_states_hash_equal_and_any_difference_but_lacking_shows() {
        let k = Key::new("t", "1");
        let base = record("{\"x\":1}", 5, &[]);
        assert_eq!(fingerprint(&k, &base), fingerprint(&k, &base.clone()));
        let mut lacking = base.clone();
        lacking.lacking.insert(mrr_core::ChangeId { origin: r("b"), lane: Lane::Normal, seq: 3 });
        assert_eq!(fingerprint(&k, &base), fingerprint(&k, &lacking), "lacking is in flight, not a difference");
        let corrupted = Record { value: Some(b"{\"x\":2}".to_vec()), ..base.clone() };
        assert_ne!(fingerprint(&k, &base), fingerprint(&k, &corrupted));
        let moved = Record { placed_by: Some(base.version.clone()), ..base.clone() };
        assert_ne!(fingerprint(&k, &base), fingerprint(&k, &moved));
        assert_ne!(fingerprint(&k, &base), fingerprint(&Key::new("t", "2"), &base));
    }

    #[test]
    fn trees_differ_exactly_in_the_buckets_of_differing_records_and_travel_whole() {
        let (mut mine, mut theirs) = (Tree::default(), Tree::default());
        for i in 0..1_000 {
            let k = Key::new("t", i.to_string());
            mine.add(&k, &record("{}", i, &[]));
            if i != 417 {
                theirs.add(&k, &record("{}", i, &[]));
            }
        }
        let bad = Key::new("t", "417");
        assert_eq!(mine.differing(&theirs).expect("shape"), vec![bucket_of(&bad)]);
        let back = Tree::from_bytes(&theirs.to_bytes(), theirs.records).expect("bytes");
        assert_eq!(back, theirs);
        assert!(matches!(Tree::from_bytes(&[0; 32], 0), Err(RepairError::Shape { got: 2 })));
    }

    #[test]
    fn a_scope_covers_clear_records_placed_in_both_regions_of_its_topics() {
        let policies = Policies::default();
        let k = Key::new("t", "1");
        assert!(scope(&[]).covers(&policies, &k, &record("{}", 1, &[])));
        assert!(scope(&["t"]).covers(&policies, &k, &record("{}", 1, &["a", "b"])));
        assert!(!scope(&["u"]).covers(&policies, &k, &record("{}", 1, &[])));
        assert!(!scope(&[]).covers(&policies, &k, &record("{}", 1, &["a", "c"])), "not placed in the peer");
        let sealed = policies.sealer.seal(&k);
        assert!(!scope(&[]).covers(&policies, &sealed, &record("{}", 1, &[])), "a register is not compared");
    }

    #[test]
    fn diff_names_missing_extra_and_changed_keys_only() {
        let e = |id: &str, fp: u128, ms: u64| Entry {
            key: Key::new("t", id),
            fingerprint: fp,
            version: Version { ts: Timestamp::new(ms, 0), region: r("a") },
        };
        let mine = vec![e("1", 1, 1), e("2", 2, 2), e("3", 3, 3)];
        let theirs = vec![e("1", 1, 1), e("2", 9, 2), e("4", 4, 4)];
        let d = diff(&mine, &theirs);
        let keys: Vec<&str> = d.iter().map(|d| d.key.id.as_str()).collect();
        assert_eq!(keys, ["2", "3", "4"]);
        assert!(d[0].same_version());
        assert!(d[1].theirs.is_none() && d[2].mine.is_none());
    }

    #[test]
    fn a_copy_is_settled_by_the_regions_that_hold_the_key_and_nobody_else() {
        let (a, b, c) = (r("a"), r("b"), r("c"));
        let k = Key::new("t", "1");
        let v = Version { ts: Timestamp::new(5, 0), region: r("a") };
        let d = |mine: u128, theirs: u128| Difference {
            key: k.clone(),
            mine: Some((mine, v.clone())),
            theirs: Some((theirs, v.clone())),
        };
        let everywhere = |_: &Key, _: &RegionName| true;
        // b differs, c (not named) holds this region's copy: b is told to take it.
        let with_b = [d(1, 2)];
        let s = settle(&a, &[(b.clone(), &with_b[..]), (c.clone(), &[][..])], &everywhere);
        assert_eq!(s.give_to, BTreeSet::from([(b.clone(), k.clone())]));
        assert!(s.take_from.is_empty() && s.unresolved.is_empty());
        // Both peers hold another copy: this region takes theirs.
        let s = settle(&a, &[(b.clone(), &with_b[..]), (c.clone(), &with_b[..])], &everywhere);
        assert_eq!(s.take_from, BTreeMap::from([(k.clone(), b.clone())]));
        // c is outside the record's placement: two copies, no majority.
        let only_b = |_: &Key, p: &RegionName| *p == b;
        let s = settle(&a, &[(b.clone(), &with_b[..]), (c.clone(), &[][..])], &only_b);
        assert_eq!(s.unresolved, BTreeSet::from([k.clone()]));
    }

    #[test]
    fn a_copy_wins_only_with_more_than_half_of_the_regions() {
        let copies = |fps: &[u128]| -> BTreeMap<RegionName, u128> {
            fps.iter().enumerate().map(|(i, fp)| (r(&format!("r{i}")), *fp)).collect()
        };
        assert_eq!(majority(&copies(&[1, 1, 2])), Some(1));
        assert_eq!(majority(&copies(&[1, 2])), None);
        assert_eq!(majority(&copies(&[1, 2, 3])), None);
        assert_eq!(majority(&copies(&[2, 2, 1, 2])), Some(2));
    }
}
