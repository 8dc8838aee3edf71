//! Doc: a record's state under `conflict_strategy: merge`, a delta-state CRDT.
//!
//! A doc maps field names to fields. A field is the product of three lattices — a
//! last-writer-wins register (plain values, PATCH, `set`), a PN-counter (`incr`) and an add-wins
//! OR-set (`add`/`remove`) — so even concurrent operations of different kinds on one field join
//! by a law; the kind touched last is the one a read sees. Whether the record exists at all is a
//! register of its own (`presence`): a delete sets it false, resets what it observed (registers
//! below its version, counter totals and set elements it saw) and keeps what it did not see.
//!
//! A field the topic declares `bounded` is an escrow counter ([`crate::escrow`]) and nothing
//! else: only `incr` writes it, a decrement only against the writing region's rights, and a
//! delete hides it with the record without resetting it (rights cannot be taken back from
//! regions that hold them without asking), so a record written again shows what is left.
//!
//! Every write is a small doc — a delta computed at its origin from the state it saw — joined
//! into the state everywhere. `join` is commutative, associative and idempotent (proptests
//! below): that is the whole convergence argument, whatever the order, duplication or relay
//! path. This module decides and materialises JSON; it never stores, and reports (rather than
//! drops) the register writes that lost to a concurrent write.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::change::ChangeId;
use crate::escrow::{Escrow, EscrowError};
use crate::lane::Lane;
use crate::region::RegionName;
use crate::version::Version;
use crate::vv::VersionVector;

/// Which write set a register: enough to order it (version) and to tell whether a later write
/// had seen it (`seq`, `deps`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub version: Version,
    pub lane: Lane,
    pub seq: u64,
    pub deps: VersionVector,
}

impl Stamp {
    pub fn id(&self) -> ChangeId {
        ChangeId { origin: self.version.region.clone(), lane: self.lane, seq: self.seq }
    }
}

/// A last-writer-wins register holding JSON text; `None` is a removed field (or, for presence,
/// `Some("false")`-like states are expressed by [`Presence`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    pub stamp: Stamp,
    pub value: Option<String>,
}

/// Whether the record exists, as a last-writer-wins register.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub stamp: Stamp,
    pub present: bool,
}

/// A PN-counter: per-region running totals of increments (`p`) and decrements (`n`), minus the
/// totals a delete observed (`base_*`). Totals only grow, so the join is a pointwise max.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub p: BTreeMap<RegionName, u64>,
    pub n: BTreeMap<RegionName, u64>,
    pub base_p: BTreeMap<RegionName, u64>,
    pub base_n: BTreeMap<RegionName, u64>,
    pub touched: Option<Version>,
}

/// An add-wins observed-remove set. Each add tags its element with the adding change's id; a
/// remove tombstones the tags it observed, so a concurrent add (a new tag) survives it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrSet {
    /// Element (canonical JSON text) → live tags.
    pub adds: BTreeMap<String, BTreeSet<ChangeId>>,
    pub removed: BTreeSet<ChangeId>,
    pub touched: Option<Version>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    pub reg: Option<Register>,
    pub counter: Option<Counter>,
    pub set: Option<OrSet>,
    /// A `bounded` field's escrow counter.
    pub escrow: Option<Escrow>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Doc {
    pub presence: Option<Presence>,
    /// The version of the latest delete: registers older than it are gone.
    pub floor: Option<Version>,
    pub fields: BTreeMap<String, Field>,
}

/// A CRDT operation on one field (`POST /v1/records/{topic}/{id}/ops`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum FieldOp {
    /// PN-counter increment; negative `by` decrements.
    Incr { field: String, by: i64 },
    /// OR-set add (add wins over a concurrent remove).
    Add { field: String, value: Value },
    /// OR-set remove of the tags this region has seen.
    Remove { field: String, value: Value },
    /// Register write, as a PATCH of one field.
    Set { field: String, value: Value },
}

impl FieldOp {
    pub fn field(&self) -> &str {
        match self {
            FieldOp::Incr { field, .. }
            | FieldOp::Add { field, .. }
            | FieldOp::Remove { field, .. }
            | FieldOp::Set { field, .. } => field,
        }
    }
}

/// Why a field operation cannot apply (nothing of its request does).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// A decrement of a bounded field beyond the rights this region holds. `holder`: a
    /// region known to hold at least `asked` (the richest such), where the decrement could be
    /// made instead.
    #[error("field {field}: this region holds {held} units, the decrement needs {asked}")]
    InsufficientRights { field: String, held: u64, asked: u64, holder: Option<RegionName> },
    /// An operation other than `incr` on a bounded field.
    #[error("field {field} is bounded: only {{\"op\":\"incr\"}} changes it, not {op}")]
    Bounded { field: String, op: &'static str },
    #[error("field {field}: the counter would overflow")]
    Overflow { field: String },
}

/// A register write that lost to a concurrent one (they wrote different values and neither
/// writer had seen the other). `field` is `None` for the record's presence (delete vs write).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost {
    pub loser: Stamp,
    pub winner: Stamp,
    pub field: Option<String>,
}

fn max_opt<T: Ord + Clone>(a: &mut Option<T>, b: &Option<T>) {
    if b > a {
        a.clone_from(b);
    }
}

fn join_max(a: &mut BTreeMap<RegionName, u64>, b: &BTreeMap<RegionName, u64>) {
    for (r, v) in b {
        let e = a.entry(r.clone()).or_insert(0);
        *e = (*e).max(*v);
    }
}

fn sum_over(total: &BTreeMap<RegionName, u64>, base: &BTreeMap<RegionName, u64>) -> i128 {
    total.iter().map(|(r, v)| i128::from(v.saturating_sub(base.get(r).copied().unwrap_or(0)))).sum()
}

/// Orders two writes of a register: version first; equal versions are one write, and the
/// value comparison only keeps the join a function on malformed input.
fn newer<'a>(a: &'a Register, b: &'a Register) -> &'a Register {
    match a.stamp.version.cmp(&b.stamp.version).then_with(|| a.value.cmp(&b.value)) {
        std::cmp::Ordering::Less => b,
        _ => a,
    }
}

impl Counter {
    fn join(&mut self, other: &Counter) {
        join_max(&mut self.p, &other.p);
        join_max(&mut self.n, &other.n);
        join_max(&mut self.base_p, &other.base_p);
        join_max(&mut self.base_n, &other.base_n);
        max_opt(&mut self.touched, &other.touched);
    }

    pub fn value(&self) -> i64 {
        let v = sum_over(&self.p, &self.base_p) - sum_over(&self.n, &self.base_n);
        i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
    }

    fn has_unreset(&self) -> bool {
        sum_over(&self.p, &self.base_p) > 0 || sum_over(&self.n, &self.base_n) > 0
    }
}

impl OrSet {
    fn join(&mut self, other: &OrSet) {
        self.removed.extend(other.removed.iter().cloned());
        for (elem, tags) in &other.adds {
            self.adds.entry(elem.clone()).or_default().extend(tags.iter().cloned());
        }
        // Normal form: tombstoned tags leave `adds`, empty elements go. Equal states compare equal.
        let removed = &self.removed;
        self.adds.retain(|_, tags| {
            tags.retain(|t| !removed.contains(t));
            !tags.is_empty()
        });
        max_opt(&mut self.touched, &other.touched);
    }

    fn live(&self) -> impl Iterator<Item = &String> {
        self.adds.keys()
    }
}

impl Field {
    fn join(&mut self, other: &Field) {
        self.reg = match (self.reg.take(), &other.reg) {
            (Some(a), Some(b)) => Some(newer(&a, b).clone()),
            (a, b) => a.or_else(|| b.clone()),
        };
        match (&mut self.counter, &other.counter) {
            (Some(a), Some(b)) => a.join(b),
            (a @ None, b) => a.clone_from(b),
            (Some(_), None) => {}
        }
        match (&mut self.set, &other.set) {
            (Some(a), Some(b)) => a.join(b),
            (a @ None, b) => a.clone_from(b),
            (Some(_), None) => {}
        }
        match (&mut self.escrow, &other.escrow) {
            (Some(a), Some(b)) => a.merge(b),
            (a @ None, b) => a.clone_from(b),
            (Some(_), None) => {}
        }
    }

    /// What a read shows, if anything: the kind touched last among those a delete left alive.
    fn visible(&self, floor: Option<&Version>) -> Option<Shown<'_>> {
        // Only `incr` writes a bounded field, and a delete does not reset it.
        if let Some(e) = &self.escrow {
            return Some(Shown::Counter(e.value()));
        }
        let after_floor = |v: &Version| floor.is_none_or(|f| v > f);
        let mut candidates: Vec<(&Version, Option<Shown<'_>>)> = Vec::new();
        if let Some(r) = &self.reg {
            if after_floor(&r.stamp.version) {
                candidates.push((&r.stamp.version, r.value.as_deref().map(Shown::Text)));
            }
        }
        if let Some(c) = &self.counter {
            if let Some(t) = &c.touched {
                if after_floor(t) || c.has_unreset() {
                    candidates.push((t, Some(Shown::Counter(c.value()))));
                }
            }
        }
        if let Some(s) = &self.set {
            if let Some(t) = &s.touched {
                if after_floor(t) || !s.adds.is_empty() {
                    candidates.push((t, Some(Shown::Set(s))));
                }
            }
        }
        // Versions are unique per write, so the maximum is unique.
        candidates.into_iter().max_by(|a, b| a.0.cmp(b.0)).and_then(|(_, v)| v)
    }
}

/// A field's visible value, borrowed from the doc: JSON text, a counter, or a set.
enum Shown<'a> {
    Text(&'a str),
    Counter(i64),
    Set(&'a OrSet),
}

impl Shown<'_> {
    fn to_value(&self) -> Option<Value> {
        match self {
            Shown::Text(t) => serde_json::from_str(t).ok(),
            Shown::Counter(n) => Some(Value::from(*n)),
            Shown::Set(s) => Some(Value::Array(s.live().filter_map(|e| serde_json::from_str(e).ok()).collect())),
        }
    }

    /// Appends the value as JSON text. Register texts and set elements are JSON already
    /// (canonical when written here, checked on receipt), so they are copied, not re-parsed.
    fn write_json(&self, out: &mut String) {
        match self {
            Shown::Text(t) => out.push_str(t),
            Shown::Counter(n) => out.push_str(&n.to_string()),
            Shown::Set(s) => {
                out.push('[');
                for (i, e) in s.live().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(e);
                }
                out.push(']');
            }
        }
    }
}

/// Canonical JSON text of a value: the identity of a set element and of a register's content.
pub fn canonical(value: &Value) -> String {
    // `serde_json::Map` is ordered by key (no `preserve_order`), so this is canonical.
    value.to_string()
}

impl Doc {
    /// Joins `other` into `self` (the lattice join).
    pub fn join(&mut self, other: &Doc) {
        self.presence = match (self.presence.take(), &other.presence) {
            (Some(a), Some(b)) => {
                Some(if (&b.stamp.version, b.present) > (&a.stamp.version, a.present) { b.clone() } else { a })
            }
            (a, b) => a.or_else(|| b.clone()),
        };
        max_opt(&mut self.floor, &other.floor);
        for (name, field) in &other.fields {
            self.fields.entry(name.clone()).or_default().join(field);
        }
    }

    /// Joins a delta and reports the register writes that lost to a concurrent write, on
    /// either side. Writes a later writer had seen are updates, not conflicts.
    pub fn join_reporting(&mut self, delta: &Doc) -> Vec<Lost> {
        let mut lost = Vec::new();
        let mut race = |cur: &Stamp, inc: &Stamp, differ: bool, field: Option<&String>| {
            if !differ || cur.version == inc.version {
                return;
            }
            let (loser, winner) = if inc.version > cur.version { (cur, inc) } else { (inc, cur) };
            if !loser.id().seen_by(&winner.deps) {
                lost.push(Lost { loser: loser.clone(), winner: winner.clone(), field: field.cloned() });
            }
        };
        if let (Some(cur), Some(inc)) = (&self.presence, &delta.presence) {
            race(&cur.stamp, &inc.stamp, cur.present != inc.present, None);
        }
        for (name, field) in &delta.fields {
            if let (Some(cur), Some(inc)) = (self.fields.get(name).and_then(|f| f.reg.as_ref()), &field.reg) {
                race(&cur.stamp, &inc.stamp, cur.value != inc.value, Some(name));
            }
        }
        self.join(delta);
        lost
    }

    pub fn exists(&self) -> bool {
        self.presence.as_ref().is_some_and(|p| p.present)
    }

    /// The JSON object a read returns, or `None` when the record does not exist.
    pub fn to_value(&self) -> Option<Map<String, Value>> {
        if !self.exists() {
            return None;
        }
        let floor = self.floor.as_ref();
        Some(self.fields.iter().filter_map(|(k, f)| Some((k.clone(), f.visible(floor)?.to_value()?))).collect())
    }

    /// [`Doc::to_value`] as JSON bytes, written directly (this runs on every apply in every
    /// region, so it does not build a `Value` first).
    pub fn materialize(&self) -> Option<Vec<u8>> {
        if !self.exists() {
            return None;
        }
        let floor = self.floor.as_ref();
        let mut out = String::with_capacity(self.approx_len() + 2);
        out.push('{');
        let mut first = true;
        for (k, f) in &self.fields {
            let Some(shown) = f.visible(floor) else { continue };
            if !first {
                out.push(',');
            }
            first = false;
            // A `String` always serialises.
            out.push_str(&serde_json::to_string(k).unwrap_or_else(|e| unreachable!("{e}")));
            out.push(':');
            shown.write_json(&mut out);
        }
        out.push('}');
        Some(out.into_bytes())
    }

    pub fn approx_len(&self) -> usize {
        self.fields
            .iter()
            .map(|(k, f)| {
                k.len()
                    + f.reg.as_ref().and_then(|r| r.value.as_ref()).map_or(0, String::len)
                    + f.set.as_ref().map_or(0, |s| s.adds.keys().map(String::len).sum())
                    + 32
            })
            .sum()
    }

    fn present(stamp: &Stamp) -> Doc {
        Doc { presence: Some(Presence { stamp: stamp.clone(), present: true }), ..Doc::default() }
    }

    fn set_register(&mut self, field: &str, stamp: &Stamp, value: Option<&Value>) {
        self.fields.entry(field.to_owned()).or_default().reg =
            Some(Register { stamp: stamp.clone(), value: value.map(canonical) });
    }

    /// A whole-record write: only fields whose value differs from what the writer saw take the
    /// new version, fields it no longer has are removed. Concurrent edits of other fields in
    /// other regions therefore survive a full-object `publish`.
    /// Escrow counters are not registers: a put leaves them alone (the API refuses one that
    /// names them).
    pub fn put_delta(current: Option<&Doc>, value: &Map<String, Value>, stamp: &Stamp) -> Doc {
        let mut seen = current.and_then(Doc::to_value).unwrap_or_default();
        let escrow = |k: &String| current.and_then(|d| d.fields.get(k)).is_some_and(|f| f.escrow.is_some());
        seen.retain(|k, _| !escrow(k));
        let mut delta = Doc::present(stamp);
        for (k, v) in value {
            if seen.get(k) != Some(v) && !escrow(k) {
                delta.set_register(k, stamp, Some(v));
            }
        }
        for k in seen.keys().filter(|k| !value.contains_key(*k)) {
            delta.set_register(k, stamp, None);
        }
        delta
    }

    /// A partial update: every named field takes the new version; `null` removes a field.
    pub fn patch_delta(patch: &Map<String, Value>, stamp: &Stamp) -> Doc {
        let mut delta = Doc::present(stamp);
        for (k, v) in patch {
            delta.set_register(k, stamp, (!v.is_null()).then_some(v));
        }
        delta
    }

    /// CRDT operations, applied in order as one change. `bound_of` names the topic's bounded
    /// fields (their `min`): `incr` on one is an escrow increment or decrement, checked
    /// against the origin's rights; any other operation on one is refused.
    pub fn ops_delta(
        current: Option<&Doc>,
        ops: &[FieldOp],
        stamp: &Stamp,
        bound_of: &dyn Fn(&str) -> Option<i64>,
    ) -> Result<Doc, OpError> {
        let origin = &stamp.version.region;
        let mut working = current.cloned().unwrap_or_default();
        let mut delta = Doc::present(stamp);
        for op in ops {
            let mut step = Doc::default();
            let cur = working.fields.get(op.field());
            if let Some(min) = bound_of(op.field()) {
                let FieldOp::Incr { field, by } = op else {
                    let name = match op {
                        FieldOp::Add { .. } => "add",
                        FieldOp::Remove { .. } => "remove",
                        _ => "set",
                    };
                    return Err(OpError::Bounded { field: op.field().to_owned(), op: name });
                };
                let mut e = cur.and_then(|f| f.escrow.clone()).unwrap_or_else(|| Escrow::bounded(min));
                let magnitude = by.unsigned_abs();
                let done = if *by >= 0 { e.increment(origin, magnitude) } else { e.decrement(origin, magnitude) };
                done.map_err(|err| match err {
                    EscrowError::Insufficient { held, asked, .. } => {
                        let holder = e.richest_other(origin).filter(|(_, n)| *n >= asked).map(|(r, _)| r);
                        OpError::InsufficientRights { field: field.clone(), held, asked, holder }
                    }
                    EscrowError::Overflow | EscrowError::SelfTransfer => OpError::Overflow { field: field.clone() },
                })?;
                step.fields.entry(field.clone()).or_default().escrow = Some(e.own_entries(origin));
                working.join(&step);
                delta.join(&step);
                continue;
            }
            match op {
                FieldOp::Set { field, value } => step.set_register(field, stamp, Some(value)),
                FieldOp::Incr { field, by } => {
                    let c = cur.and_then(|f| f.counter.as_ref());
                    let total = |m: Option<&BTreeMap<RegionName, u64>>| m.and_then(|m| m.get(origin)).copied();
                    let mut counter = Counter { touched: Some(stamp.version.clone()), ..Counter::default() };
                    let magnitude = by.unsigned_abs();
                    if *by >= 0 {
                        let p = total(c.map(|c| &c.p)).unwrap_or(0).saturating_add(magnitude);
                        counter.p.insert(origin.clone(), p);
                    } else {
                        let n = total(c.map(|c| &c.n)).unwrap_or(0).saturating_add(magnitude);
                        counter.n.insert(origin.clone(), n);
                    }
                    step.fields.entry(field.clone()).or_default().counter = Some(counter);
                }
                FieldOp::Add { field, value } => {
                    let mut set = OrSet { touched: Some(stamp.version.clone()), ..OrSet::default() };
                    set.adds.insert(canonical(value), BTreeSet::from([stamp.id()]));
                    step.fields.entry(field.clone()).or_default().set = Some(set);
                }
                FieldOp::Remove { field, value } => {
                    let seen = cur.and_then(|f| f.set.as_ref()).and_then(|s| s.adds.get(&canonical(value)));
                    let set = OrSet {
                        removed: seen.cloned().unwrap_or_default(),
                        touched: Some(stamp.version.clone()),
                        ..OrSet::default()
                    };
                    step.fields.entry(field.clone()).or_default().set = Some(set);
                }
            }
            working.join(&step);
            delta.join(&step);
        }
        Ok(delta)
    }

    /// A change of `origin`'s own to a bounded field that writes no value: transfers and asks
    /// made by tending ([`Escrow::tend`]), as the entries `origin` writes. No presence: it
    /// neither creates nor revives the record.
    pub fn escrow_delta(field: &str, escrow: &Escrow, origin: &RegionName) -> Doc {
        let mut delta = Doc::default();
        delta.fields.entry(field.to_owned()).or_default().escrow = Some(escrow.own_entries(origin));
        delta
    }

    /// The escrow counter of `field`, if it is one.
    pub fn escrow(&self, field: &str) -> Option<&Escrow> {
        self.fields.get(field).and_then(|f| f.escrow.as_ref())
    }

    /// Fields of this doc that hold escrow counters.
    pub fn escrow_fields(&self) -> impl Iterator<Item = (&String, &Escrow)> {
        self.fields.iter().filter_map(|(k, f)| f.escrow.as_ref().map(|e| (k, e)))
    }

    /// A delete: the record stops existing; registers older than the delete go, counters and
    /// sets are reset to nothing *as far as the deleter had seen*.
    pub fn delete_delta(current: Option<&Doc>, stamp: &Stamp) -> Doc {
        let mut delta = Doc {
            presence: Some(Presence { stamp: stamp.clone(), present: false }),
            floor: Some(stamp.version.clone()),
            fields: BTreeMap::new(),
        };
        for (name, f) in current.map(|d| &d.fields).into_iter().flatten() {
            let mut reset = Field::default();
            if let Some(c) = &f.counter {
                reset.counter = Some(Counter { base_p: c.p.clone(), base_n: c.n.clone(), ..Counter::default() });
            }
            if let Some(s) = &f.set {
                let removed = s.adds.values().flatten().cloned().collect();
                reset.set = Some(OrSet { removed, ..OrSet::default() });
            }
            if reset != Field::default() {
                delta.fields.insert(name.clone(), reset);
            }
        }
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Timestamp;
    use proptest::prelude::*;
    use serde_json::json;

    /// Operations on a topic with no bounded fields.
    fn ops_plain(current: Option<&Doc>, ops: &[FieldOp], stamp: &Stamp) -> Doc {
        Doc::ops_delta(current, ops, stamp, &|_| None).expect("no bounded fields: every operation applies")
    }

    const REGIONS: [&str; 3] = ["ap-northeast", "eu-central", "us-west"];

    fn region(i: usize) -> RegionName {
        RegionName::new(REGIONS[i]).expect("valid")
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test objects"),
        }
    }

    /// One region's write history, with a real causal past: each write's delta is computed from
    /// the join of its own region's writes and a chosen subset of other deltas it had received.
    #[derive(Clone, Debug)]
    enum W {
        Put(usize, u8),
        Patch(usize, u8),
        Incr(usize, i8),
        Add(usize, u8),
        Remove(usize, u8),
        Delete,
    }

    fn write() -> impl Strategy<Value = W> {
        prop_oneof![
            (0usize..3, 0u8..3).prop_map(|(f, v)| W::Put(f, v)),
            (0usize..3, 0u8..3).prop_map(|(f, v)| W::Patch(f, v)),
            (0usize..3, -3i8..4).prop_map(|(f, b)| W::Incr(f, b)),
            (0usize..3, 0u8..3).prop_map(|(f, v)| W::Add(f, v)),
            (0usize..3, 0u8..3).prop_map(|(f, v)| W::Remove(f, v)),
            Just(W::Delete),
        ]
    }

    const FIELDS: [&str; 3] = ["a", "b", "c"];

    /// Builds deltas: write `i` is made at region `i % 3` after having seen the deltas chosen by
    /// `seen` (plus all earlier writes of its own region, as a real writer would), in a lane that
    /// varies so that sequences are per stream, as a region with priority lanes numbers them.
    fn deltas(writes: &[(W, u16)]) -> Vec<Doc> {
        let mut out: Vec<(usize, Doc, VersionVector)> = Vec::new();
        let mut seqs = [[0u64; 3]; 3];
        for (i, (w, seen)) in writes.iter().enumerate() {
            let r = i % 3;
            let lane = (i / 3 + usize::from(*seen as u8 & 1)) % 3;
            let mut base = Doc::default();
            let mut deps = VersionVector::new();
            for (j, (rj, d, dj)) in out.iter().enumerate() {
                if *rj == r || seen & (1 << (j % 16)) != 0 {
                    base.join(d);
                    deps.join(dj);
                }
            }
            seqs[r][lane] += 1;
            let stamp = Stamp {
                version: Version { ts: Timestamp::new(i as u64 + 1, 0), region: region(r) },
                lane: Lane::ALL[lane],
                seq: seqs[r][lane],
                deps: deps.clone(),
            };
            let d = match w {
                W::Put(f, v) => Doc::put_delta(Some(&base), &obj(json!({ FIELDS[*f]: v, "k": 1 })), &stamp),
                W::Patch(f, v) => Doc::patch_delta(&obj(json!({ FIELDS[*f]: v })), &stamp),
                W::Incr(f, by) => {
                    ops_plain(Some(&base), &[FieldOp::Incr { field: FIELDS[*f].into(), by: i64::from(*by) }], &stamp)
                }
                W::Add(f, v) => {
                    ops_plain(Some(&base), &[FieldOp::Add { field: FIELDS[*f].into(), value: json!(v) }], &stamp)
                }
                W::Remove(f, v) => {
                    ops_plain(Some(&base), &[FieldOp::Remove { field: FIELDS[*f].into(), value: json!(v) }], &stamp)
                }
                W::Delete => Doc::delete_delta(Some(&base), &stamp),
            };
            let mut own = deps;
            own.advance(&stamp.id().stream(), seqs[r][lane]);
            out.push((r, d, own));
        }
        out.into_iter().map(|(_, d, _)| d).collect()
    }

    fn joined(docs: &[&Doc]) -> Doc {
        let mut acc = Doc::default();
        for d in docs {
            acc.join(d);
        }
        acc
    }

    proptest! {
        #[test]
        fn join_is_commutative_associative_idempotent(ws in proptest::collection::vec((write(), any::<u16>()), 3..12)) {
            let ds = deltas(&ws);
            let (a, b, c) = (&ds[0], &ds[1], &ds[2]);
            prop_assert_eq!(joined(&[a, b]), joined(&[b, a]));
            let left = { let mut ab = joined(&[a, b]); ab.join(c); ab };
            let right = { let mut bc = joined(&[b, c]); let mut x = a.clone(); x.join(&bc); bc = x; bc };
            prop_assert_eq!(left, right);
            prop_assert_eq!(joined(&[a, a]), a.clone());
        }

        /// Any order and any duplication of the same deltas reads the same JSON.
        #[test]
        fn every_delivery_order_reads_the_same(ws in proptest::collection::vec((write(), any::<u16>()), 1..14), seed in any::<u64>()) {
            let ds = deltas(&ws);
            let forward = joined(&ds.iter().collect::<Vec<_>>());
            let mut order: Vec<&Doc> = ds.iter().chain(ds.iter().take((seed % 4) as usize)).collect();
            let n = order.len();
            for i in (1..n).rev() { order.swap(i, (seed as usize ^ i.wrapping_mul(2654435761)) % (i + 1)); }
            prop_assert_eq!(joined(&order).to_value(), forward.to_value());
        }

        /// The bytes written directly are the JSON of the value a read shows.
        #[test]
        fn materialized_bytes_are_the_visible_value(ws in proptest::collection::vec((write(), any::<u16>()), 1..12)) {
            let d = joined(&deltas(&ws).iter().collect::<Vec<_>>());
            let bytes = d.materialize().map(|b| serde_json::from_slice::<Value>(&b).expect("valid JSON"));
            prop_assert_eq!(bytes, d.to_value().map(Value::Object));
        }

        /// Increments from every region add up exactly, in any order, with duplicates.
        #[test]
        fn counters_add_up(bys in proptest::collection::vec((0usize..3, -50i64..50), 1..30), seed in any::<u64>()) {
            let mut seqs = [0u64; 3];
            let mut state = [Doc::default(), Doc::default(), Doc::default()];
            let mut all = Vec::new();
            for (i, (r, by)) in bys.iter().enumerate() {
                seqs[*r] += 1;
                let stamp = Stamp { version: Version { ts: Timestamp::new(i as u64 + 1, 0), region: region(*r) }, lane: Lane::Normal, seq: seqs[*r], deps: VersionVector::new() };
                let d = ops_plain(Some(&state[*r]), &[FieldOp::Incr { field: "n".into(), by: *by }], &stamp);
                state[*r].join(&d);
                all.push(d);
            }
            let mut order: Vec<&Doc> = all.iter().chain(all.iter().skip((seed % 3) as usize)).collect();
            let n = order.len();
            for i in (1..n).rev() { order.swap(i, (seed as usize ^ i.wrapping_mul(40503)) % (i + 1)); }
            let total: i64 = bys.iter().map(|(_, b)| b).sum();
            prop_assert_eq!(joined(&order).to_value().and_then(|m| m.get("n").cloned()), Some(json!(total)));
        }
    }

    fn stamp(ts: u64, r: usize, seq: u64, deps: &[(usize, u64)]) -> Stamp {
        Stamp {
            version: Version { ts: Timestamp::new(ts, 0), region: region(r) },
            lane: Lane::Normal,
            seq,
            deps: deps.iter().map(|(r, s)| (crate::Stream::normal(region(*r)), *s)).collect(),
        }
    }

    #[test]
    fn concurrent_edits_of_different_fields_both_survive_and_same_field_falls_back_to_lww() {
        let base =
            Doc::put_delta(None, &obj(json!({"name": "Ann", "email": "a@x", "city": "Oslo"})), &stamp(1, 0, 1, &[]));
        let seen = [(0, 1)];
        let a = Doc::put_delta(
            Some(&base),
            &obj(json!({"name": "Anne", "email": "a@x", "city": "Rome"})),
            &stamp(5, 0, 2, &seen),
        );
        let b = Doc::put_delta(
            Some(&base),
            &obj(json!({"name": "Ann", "email": "b@x", "city": "Pisa"})),
            &stamp(6, 1, 1, &seen),
        );
        let mut x = base.clone();
        let lost_x = [x.join_reporting(&a), x.join_reporting(&b)].concat();
        let mut y = base.clone();
        let lost_y = [y.join_reporting(&b), y.join_reporting(&a)].concat();
        let want = json!({"name": "Anne", "email": "b@x", "city": "Pisa"});
        assert_eq!(x.to_value().map(Value::Object), Some(want.clone()));
        assert_eq!(y.to_value().map(Value::Object), Some(want));
        // Exactly one loser: a's `city`, whichever order it was seen in.
        for lost in [lost_x, lost_y] {
            assert_eq!(lost.len(), 1, "{lost:?}");
            assert_eq!((lost[0].loser.id(), lost[0].field.as_deref()), (a_id(), Some("city")));
        }
    }

    fn a_id() -> ChangeId {
        ChangeId { origin: region(0), lane: Lane::Normal, seq: 2 }
    }

    #[test]
    fn sequential_updates_are_not_conflicts() {
        let first = Doc::patch_delta(&obj(json!({"x": 1})), &stamp(1, 0, 1, &[]));
        let second = Doc::patch_delta(&obj(json!({"x": 2})), &stamp(2, 1, 1, &[(0, 1)]));
        let mut d = first.clone();
        assert!(d.join_reporting(&second).is_empty());
        let mut e = second.clone();
        assert!(e.join_reporting(&first).is_empty(), "arriving late is not conflicting");
    }

    #[test]
    fn add_wins_over_a_concurrent_remove_and_delete_keeps_what_it_did_not_see() {
        let add1 = ops_plain(None, &[FieldOp::Add { field: "tags".into(), value: json!("x") }], &stamp(1, 0, 1, &[]));
        let rm = ops_plain(
            Some(&add1),
            &[FieldOp::Remove { field: "tags".into(), value: json!("x") }],
            &stamp(3, 1, 1, &[(0, 1)]),
        );
        let add2 = ops_plain(
            Some(&add1),
            &[FieldOp::Add { field: "tags".into(), value: json!("x") }],
            &stamp(2, 0, 2, &[(0, 1)]),
        );
        let d = joined(&[&add1, &rm, &add2]);
        assert_eq!(d.to_value().and_then(|m| m.get("tags").cloned()), Some(json!(["x"])));

        let inc = |ts, r, seq, cur: Option<&Doc>| {
            ops_plain(cur, &[FieldOp::Incr { field: "n".into(), by: 5 }], &stamp(ts, r, seq, &[]))
        };
        let i1 = inc(1, 0, 1, None);
        let del = Doc::delete_delta(Some(&i1), &stamp(4, 1, 1, &[(0, 1)]));
        let i2 = inc(3, 2, 1, None); // concurrent with the delete: survives it
        let mut d = joined(&[&i1, &del, &i2]);
        assert_eq!(d.to_value(), None, "deleted");
        let revive = ops_plain(Some(&d), &[FieldOp::Incr { field: "n".into(), by: 1 }], &stamp(9, 0, 2, &[]));
        d.join(&revive);
        assert_eq!(d.to_value().and_then(|m| m.get("n").cloned()), Some(json!(6)));
    }

    #[test]
    fn a_bounded_field_takes_only_incr_within_rights_and_survives_puts_and_deletes() {
        let bound = |f: &str| (f == "available").then_some(0);
        let incr = |by| [FieldOp::Incr { field: "available".into(), by }];
        let mut tokyo = Doc::ops_delta(None, &incr(10), &stamp(1, 0, 1, &[]), &bound).expect("an increment");
        assert_eq!(tokyo.to_value().and_then(|m| m.get("available").cloned()), Some(json!(10)));
        let sell = Doc::ops_delta(Some(&tokyo), &incr(-4), &stamp(2, 0, 2, &[]), &bound).expect("tokyo holds 10");
        tokyo.join(&sell);
        let over = Doc::ops_delta(Some(&tokyo), &incr(-7), &stamp(3, 0, 3, &[]), &bound);
        assert_eq!(
            over,
            Err(OpError::InsufficientRights { field: "available".into(), held: 6, asked: 7, holder: None }),
            "no other region is known to hold 7"
        );
        // Another region holds no rights of its own, whatever the value it reads; it is told
        // who holds enough.
        let frankfurt = Doc::ops_delta(Some(&tokyo), &incr(-1), &stamp(4, 1, 1, &[]), &bound);
        assert_eq!(
            frankfurt,
            Err(OpError::InsufficientRights { field: "available".into(), held: 0, asked: 1, holder: Some(region(0)) })
        );
        let too_many = Doc::ops_delta(Some(&tokyo), &incr(-7), &stamp(4, 1, 1, &[]), &bound);
        assert!(matches!(too_many, Err(OpError::InsufficientRights { holder: None, .. })), "{too_many:?}");
        let set = [FieldOp::Set { field: "available".into(), value: json!(99) }];
        assert!(matches!(
            Doc::ops_delta(Some(&tokyo), &set, &stamp(5, 0, 4, &[]), &bound),
            Err(OpError::Bounded { op: "set", .. })
        ));
        // A put that omits the field leaves it; a delete hides it without resetting it.
        let put = Doc::put_delta(Some(&tokyo), &obj(json!({"name": "mug"})), &stamp(6, 0, 5, &[]));
        tokyo.join(&put);
        assert_eq!(tokyo.to_value().map(Value::Object), Some(json!({"name": "mug", "available": 6})));
        let del = Doc::delete_delta(Some(&tokyo), &stamp(7, 0, 6, &[]));
        tokyo.join(&del);
        assert_eq!(tokyo.to_value(), None);
        let again = Doc::put_delta(Some(&tokyo), &obj(json!({"name": "cup"})), &stamp(8, 0, 7, &[]));
        tokyo.join(&again);
        assert_eq!(tokyo.to_value().map(Value::Object), Some(json!({"name": "cup", "available": 6})));
    }
}
