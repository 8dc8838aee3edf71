//! The strong tier's commands and their evaluation: what a write to a `consistency: strong`
//! topic asks for, and the pure function every region runs on it, in log order, to the same
//! result.
//!
//! A strong command is ordered once, by its place in the Raft log, and then evaluated in every
//! region against the same records: its effect depends only on the command and the records it
//! names — no clock (the proposer's wall time travels inside the command), no randomness, no
//! region. That is what lets each region apply the log through its own writer and still hold
//! the same records, byte for byte. Conditions (`if`) and updates (`then`) of atomic updates
//! are evaluated here, which is what makes a flash sale need no retries: the check and the
//! deduction are one step of the state machine.
//!
//! Not here: the log and its leader (`mrr-consensus`), the commit (`mrr-writer`), HTTP.
//! Strong records live in every region (a voter in every region holds the log), so placement
//! does not apply to them.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use crate::doc::FieldOp;
use crate::hlc::Timestamp;
use crate::record::{Key, Metadata, Record};
use crate::region::RegionName;
use crate::version::Version;

/// The origin of every strong change: the changelog stream the state machine writes in every
/// region. It is never shipped between regions (each region has the log) and is refused when a
/// peer sends it; a region may not take this name.
pub const STRONG_ORIGIN: &str = "strong";

pub fn strong_origin() -> RegionName {
    RegionName::new(STRONG_ORIGIN).unwrap_or_else(|_| unreachable!("a valid region name"))
}

/// `vv` without the strong stream: what regions send each other and compare (each region
/// applies the strong stream from the Raft log itself).
pub fn replicable(vv: &crate::VersionVector) -> crate::VersionVector {
    let mut out = crate::VersionVector::new();
    for (stream, seq) in vv.iter().filter(|(s, _)| s.origin.as_str() != STRONG_ORIGIN) {
        out.raise(stream, seq);
    }
    out
}

/// Nesting of `$and`/`$or`/`$not` a condition may have.
pub const CONDITION_DEPTH_MAX: usize = 8;
/// Comparisons a condition may hold in all.
pub const CONDITION_TESTS_MAX: usize = 64;
/// Bytes a request id may have.
pub const REQUEST_ID_BYTES_MAX: usize = 128;

/// FNV-1a, 64 bits: a stable hash (the same in every region and release) for digests and ids.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A named update function of a strong topic (`topics.<t>.functions` in the config): given the
/// record (`None`: absent or deleted) and the caller's arguments, the new record, or `None` to
/// leave it as it is (answered as a failed precondition); an error refuses the request. Runs
/// inside the state machine in every region, so it must be deterministic: no clock, no
/// randomness, no IO (the Rhai sandbox has none).
pub trait UpdateFunction: Send + Sync + std::fmt::Debug {
    fn call(&self, current: Option<&Map<String, Value>>, args: &Value) -> Result<Option<Map<String, Value>>, String>;

    /// Identifies the function's code, for the cross-region policy digest.
    fn fingerprint(&self) -> String;
}

/// A comparison operator of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmp {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Cmp {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "eq" => Cmp::Eq,
            "ne" => Cmp::Ne,
            "gt" => Cmp::Gt,
            "gte" => Cmp::Gte,
            "lt" => Cmp::Lt,
            "lte" => Cmp::Lte,
            _ => return None,
        })
    }

    fn holds(self, o: Ordering) -> bool {
        match self {
            Cmp::Eq => o == Ordering::Equal,
            Cmp::Ne => o != Ordering::Equal,
            Cmp::Gt => o == Ordering::Greater,
            Cmp::Gte => o != Ordering::Less,
            Cmp::Lt => o == Ordering::Less,
            Cmp::Lte => o != Ordering::Greater,
        }
    }

    fn orders(self) -> bool {
        !matches!(self, Cmp::Eq | Cmp::Ne)
    }
}

/// What a comparison compares a field with. JSON numbers are kept as their text so that
/// integers compare exactly (no rounding through `f64`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Operand {
    Number(String),
    String(String),
    Bool(bool),
    Null,
}

impl Operand {
    fn of(v: &Value) -> Option<Self> {
        Some(match v {
            Value::Number(n) => Operand::Number(n.to_string()),
            Value::String(s) => Operand::String(s.clone()),
            Value::Bool(b) => Operand::Bool(*b),
            Value::Null => Operand::Null,
            Value::Array(_) | Value::Object(_) => return None,
        })
    }
}

/// The `if` of an atomic update: a test of the record as it is when the command applies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    /// `{"field": {"exists": true}}`.
    Exists {
        field: String,
        exists: bool,
    },
    /// `{"field": {"gte": 2}}`; `{"field": "open"}` is `eq`.
    Compare {
        field: String,
        cmp: Cmp,
        operand: Operand,
    },
    /// `{"$exists": false}`: whether the record exists (a deleted one does not).
    Record {
        exists: bool,
    },
    /// `{"$version": "<version.hlc>"}`: compare-and-set on the version the record was read at.
    Version(String),
}

/// Why a condition is not valid. Reported before anything is proposed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    #[error("{0}")]
    Invalid(String),
    #[error("the condition nests deeper than {CONDITION_DEPTH_MAX} levels of $and/$or/$not")]
    TooDeep,
    #[error("the condition holds more than {CONDITION_TESTS_MAX} tests")]
    TooLarge,
}

impl Condition {
    /// Parses the JSON form: an object whose keys are top-level field names, or `$and`, `$or`
    /// (arrays of conditions), `$not` (a condition), `$exists` (bool) and `$version` (string).
    /// A field's value is a scalar (equality) or an object of `eq`, `ne`, `gt`, `gte`, `lt`,
    /// `lte` and `exists`, all of which must hold.
    pub fn parse(v: &Value) -> Result<Self, ConditionError> {
        let mut tests = 0;
        Self::parse_at(v, 0, &mut tests)
    }

    fn parse_at(v: &Value, depth: usize, tests: &mut usize) -> Result<Self, ConditionError> {
        if depth > CONDITION_DEPTH_MAX {
            return Err(ConditionError::TooDeep);
        }
        let Value::Object(m) = v else {
            return Err(ConditionError::Invalid(format!("a condition is an object, not {v}")));
        };
        let mut all = Vec::with_capacity(m.len());
        for (k, v) in m {
            *tests += 1;
            if *tests > CONDITION_TESTS_MAX {
                return Err(ConditionError::TooLarge);
            }
            all.push(match k.as_str() {
                "$and" | "$or" => {
                    let Value::Array(items) = v else {
                        return Err(ConditionError::Invalid(format!("{k} takes an array of conditions")));
                    };
                    let parts =
                        items.iter().map(|c| Self::parse_at(c, depth + 1, tests)).collect::<Result<Vec<_>, _>>()?;
                    if k == "$and" {
                        Condition::All(parts)
                    } else {
                        Condition::Any(parts)
                    }
                }
                "$not" => Condition::Not(Box::new(Self::parse_at(v, depth + 1, tests)?)),
                "$exists" => match v {
                    Value::Bool(exists) => Condition::Record { exists: *exists },
                    _ => return Err(ConditionError::Invalid("$exists takes true or false".into())),
                },
                "$version" => match v {
                    Value::String(s) => Condition::Version(s.clone()),
                    _ => {
                        return Err(ConditionError::Invalid(
                            "$version takes the record's `version.hlc` string, as read".into(),
                        ))
                    }
                },
                other if other.starts_with('$') => {
                    return Err(ConditionError::Invalid(format!(
                        "unknown operator {other}: use $and, $or, $not, $exists or $version"
                    )))
                }
                field => Self::parse_field(field, v)?,
            });
        }
        Ok(if all.len() == 1 { all.pop().unwrap_or_else(|| unreachable!("one")) } else { Condition::All(all) })
    }

    fn parse_field(field: &str, v: &Value) -> Result<Self, ConditionError> {
        if field.is_empty() || field == "__metadata" {
            return Err(ConditionError::Invalid(format!("field {field:?} cannot be tested")));
        }
        let Value::Object(tests) = v else {
            let operand = Operand::of(v).ok_or_else(|| {
                ConditionError::Invalid(format!("{field}: compare with a number, string, bool or null"))
            })?;
            return Ok(Condition::Compare { field: field.to_owned(), cmp: Cmp::Eq, operand });
        };
        if tests.is_empty() {
            return Err(ConditionError::Invalid(format!("{field}: name at least one test")));
        }
        let mut all = Vec::with_capacity(tests.len());
        for (op, operand) in tests {
            if op == "exists" {
                let Value::Bool(exists) = operand else {
                    return Err(ConditionError::Invalid(format!("{field}.exists takes true or false")));
                };
                all.push(Condition::Exists { field: field.to_owned(), exists: *exists });
                continue;
            }
            let cmp = Cmp::parse(op).ok_or_else(|| {
                ConditionError::Invalid(format!("{field}: unknown test {op:?}; use eq, ne, gt, gte, lt, lte or exists"))
            })?;
            let operand = Operand::of(operand).ok_or_else(|| {
                ConditionError::Invalid(format!("{field}.{op}: compare with a number, string, bool or null"))
            })?;
            if cmp.orders() && !matches!(operand, Operand::Number(_) | Operand::String(_)) {
                return Err(ConditionError::Invalid(format!("{field}.{op}: order compares numbers or strings")));
            }
            all.push(Condition::Compare { field: field.to_owned(), cmp, operand });
        }
        Ok(if all.len() == 1 { all.pop().unwrap_or_else(|| unreachable!("one")) } else { Condition::All(all) })
    }

    /// Whether the condition holds for `record` (`None`: absent or deleted) at `version`.
    pub fn holds(&self, record: Option<&Map<String, Value>>, version: Option<&Version>) -> Result<bool, Invalid> {
        Ok(match self {
            Condition::All(parts) => {
                for p in parts {
                    if !p.holds(record, version)? {
                        return Ok(false);
                    }
                }
                true
            }
            Condition::Any(parts) => {
                for p in parts {
                    if p.holds(record, version)? {
                        return Ok(true);
                    }
                }
                false
            }
            Condition::Not(c) => !c.holds(record, version)?,
            Condition::Record { exists } => record.is_some() == *exists,
            Condition::Version(v) => version.is_some_and(|have| have.ts.to_string() == *v),
            Condition::Exists { field, exists } => record.is_some_and(|r| r.contains_key(field)) == *exists,
            Condition::Compare { field, cmp, operand } => match record.and_then(|r| r.get(field)) {
                // A missing field satisfies only `ne`.
                None => *cmp == Cmp::Ne,
                Some(value) => match compare(value, operand) {
                    Some(o) => cmp.holds(o),
                    None if cmp.orders() => {
                        return Err(Invalid::TypeMismatch {
                            field: field.clone(),
                            expected: if matches!(operand, Operand::Number(_)) { "a number" } else { "a string" }
                                .into(),
                        })
                    }
                    // Different types are simply not equal.
                    None => *cmp == Cmp::Ne,
                },
            },
        })
    }
}

/// Orders a stored value against an operand of the same type; `None` across types.
fn compare(value: &Value, operand: &Operand) -> Option<Ordering> {
    match (value, operand) {
        (Value::Number(a), Operand::Number(b)) => compare_numbers(a, &b.parse::<Number>().ok()?),
        (Value::String(a), Operand::String(b)) => Some(a.as_str().cmp(b.as_str())),
        (Value::Bool(a), Operand::Bool(b)) => Some(a.cmp(b)),
        (Value::Null, Operand::Null) => Some(Ordering::Equal),
        _ => None,
    }
}

/// Integers exactly; anything with a fraction as `f64`.
fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    let int = |n: &Number| n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
    match (int(a), int(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// A command the state machine refuses, the same way in every region. Nothing of it applies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Invalid {
    #[error("field {field} is not {expected}, so it cannot be compared in order")]
    TypeMismatch { field: String, expected: String },
    #[error("field {field} holds {found}, not a number: it cannot be incremented")]
    NotANumber { field: String, found: String },
    #[error("field {field} holds {found}, not an array: it cannot take add/remove")]
    NotAnArray { field: String, found: String },
    #[error("incrementing {field} overflows a 64-bit integer")]
    Overflow { field: String },
    #[error("request id {request_id:?} was used before for a different request")]
    RequestReused { request_id: String },
    #[error("update function {function} failed: {message}")]
    FunctionFailed { function: String, message: String },
    #[error("topic {topic} has no update function {function}")]
    NoSuchFunction { topic: String, function: String },
    #[error("topic {topic} is not `consistency: strong` here")]
    NotStrong { topic: String },
    #[error("the command does not decode: {0}")]
    Undecodable(String),
}

/// One write of a strong command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StrongWrite {
    /// `value`: the record's JSON text (commands travel as JSON, which keeps field values
    /// readable in the log and needs no binary escape).
    Put {
        key: Key,
        value: String,
        metadata: Metadata,
    },
    /// The named fields change (`null` removes one): a JSON object's text.
    Patch {
        key: Key,
        fields: String,
        metadata: Option<Metadata>,
    },
    Delete {
        key: Key,
    },
    /// `then` applied if `condition` holds (always, without one): `/ops` and `/atomic`.
    Update {
        key: Key,
        condition: Option<Condition>,
        ops: Vec<FieldOp>,
    },
    /// The topic's update function `function` called with `args` (JSON text): `/atomic` with
    /// `function`.
    Call {
        key: Key,
        function: String,
        args: String,
    },
}

impl StrongWrite {
    pub fn key(&self) -> &Key {
        match self {
            StrongWrite::Put { key, .. }
            | StrongWrite::Patch { key, .. }
            | StrongWrite::Delete { key }
            | StrongWrite::Update { key, .. }
            | StrongWrite::Call { key, .. } => key,
        }
    }
}

/// What the API proposes: the writes of one client request, applied all or nothing. Encoded as
/// JSON in the log ([`StrongCommand::encode`]): field values are arbitrary JSON, which a
/// self-describing encoding carries as they are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StrongCommand {
    /// Makes a retried request apply once: a command whose id was applied before answers
    /// what that one answered.
    pub request_id: String,
    /// Of the writes, to tell a retry from a different request that reuses the id.
    pub digest: u64,
    /// The proposer's wall clock: new versions take it, or follow the record's last version
    /// when that is later, so a key's versions only grow whatever the proposers' clocks say.
    pub stamp_ms: u64,
    pub writes: Vec<StrongWrite>,
}

impl StrongCommand {
    pub fn new(request_id: String, stamp_ms: u64, writes: Vec<StrongWrite>) -> Self {
        let digest = fnv1a(&serde_json::to_vec(&writes).unwrap_or_default());
        Self { request_id, digest, stamp_ms, writes }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|e| unreachable!("a command always encodes: {e}"))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Invalid> {
        serde_json::from_slice(bytes).map_err(|e| Invalid::Undecodable(e.to_string()))
    }
}

/// The answer to a strong command, the same in every region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StrongOutcome {
    /// Applied: each key's new state, in the order of the writes.
    Applied {
        records: Vec<(Key, Record)>,
    },
    /// Applied before under the same request id: what that answered.
    Repeated {
        records: Vec<(Key, Record)>,
    },
    /// The condition did not hold; the record as it is (`None`: absent).
    PreconditionFailed {
        key: Key,
        current: Option<Box<Record>>,
    },
    Invalid(Invalid),
}

/// What a write does to its key, given the record as the log has it.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// The new value (`None`: a tombstone) and metadata.
    Write {
        value: Option<Vec<u8>>,
        metadata: Metadata,
    },
    PreconditionFailed,
}

fn object_of(bytes: &[u8]) -> Map<String, Value> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "a bool".into(),
        Value::Number(_) => "a number".into(),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Evaluates one write against `current` (the key's record, tombstone or absent included);
/// `policies` holds the topics' update functions.
pub fn evaluate(write: &StrongWrite, current: Option<&Record>, policies: &crate::Policies) -> Result<Effect, Invalid> {
    let live = current.filter(|r| !r.is_tombstone());
    let metadata_now = || current.map(|r| r.metadata.clone()).unwrap_or_default();
    let object = || live.and_then(|r| r.value.as_deref()).map(object_of);
    let encode = |m: Map<String, Value>| serde_json::to_vec(&Value::Object(m)).unwrap_or_default();
    Ok(match write {
        StrongWrite::Put { value, metadata, .. } => {
            Effect::Write { value: Some(value.clone().into_bytes()), metadata: metadata.clone() }
        }
        StrongWrite::Patch { fields, metadata, key } => {
            let mut obj = object().unwrap_or_else(|| id_only(key));
            for (k, v) in object_of(fields.as_bytes()) {
                if v.is_null() {
                    obj.remove(&k);
                } else {
                    obj.insert(k, v);
                }
            }
            Effect::Write { value: Some(encode(obj)), metadata: metadata.clone().unwrap_or_else(metadata_now) }
        }
        StrongWrite::Delete { .. } => Effect::Write { value: None, metadata: metadata_now() },
        StrongWrite::Update { key, condition, ops } => {
            let obj = object();
            if let Some(c) = condition {
                if !c.holds(obj.as_ref(), live.map(|r| &r.version))? {
                    return Ok(Effect::PreconditionFailed);
                }
            }
            let mut obj = obj.unwrap_or_else(|| id_only(key));
            for op in ops {
                apply_op(&mut obj, op)?;
            }
            Effect::Write { value: Some(encode(obj)), metadata: metadata_now() }
        }
        StrongWrite::Call { key, function, args } => {
            let f = policies
                .function(&key.topic, function)
                .ok_or_else(|| Invalid::NoSuchFunction { topic: key.topic.clone(), function: function.clone() })?;
            let args: Value = serde_json::from_str(args).map_err(|e| Invalid::Undecodable(e.to_string()))?;
            let failed = |message: String| Invalid::FunctionFailed { function: function.clone(), message };
            match f.call(object().as_ref(), &args).map_err(failed)? {
                None => Effect::PreconditionFailed,
                Some(mut obj) => {
                    // The id is the key's, whatever the function returned.
                    obj.insert("id".into(), Value::String(key.id.clone()));
                    Effect::Write { value: Some(encode(obj)), metadata: metadata_now() }
                }
            }
        }
    })
}

fn id_only(key: &Key) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), Value::String(key.id.clone()));
    m
}

/// A field operation on a plain document: arithmetic and array-as-set edits, in order. Under
/// the strong tier there is no concurrency to resolve, so no CRDT state is kept.
fn apply_op(obj: &mut Map<String, Value>, op: &FieldOp) -> Result<(), Invalid> {
    match op {
        FieldOp::Incr { field, by } => {
            let next = match obj.get(field) {
                None | Some(Value::Null) => Number::from(*by),
                Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
                    (Some(i), _) => {
                        Number::from(i.checked_add(*by).ok_or_else(|| Invalid::Overflow { field: field.clone() })?)
                    }
                    (None, Some(f)) => {
                        Number::from_f64(f + *by as f64).ok_or_else(|| Invalid::Overflow { field: field.clone() })?
                    }
                    (None, None) => return Err(Invalid::Overflow { field: field.clone() }),
                },
                Some(other) => return Err(Invalid::NotANumber { field: field.clone(), found: kind(other) }),
            };
            obj.insert(field.clone(), Value::Number(next));
        }
        FieldOp::Set { field, value } => {
            if value.is_null() {
                obj.remove(field);
            } else {
                obj.insert(field.clone(), value.clone());
            }
        }
        FieldOp::Add { field, value } | FieldOp::Remove { field, value } => {
            let items = match obj.entry(field.clone()).or_insert_with(|| Value::Array(Vec::new())) {
                Value::Array(items) => items,
                other => return Err(Invalid::NotAnArray { field: field.clone(), found: kind(other) }),
            };
            let at = items.iter().position(|v| v == value);
            match (op, at) {
                (FieldOp::Add { .. }, None) => items.push(value.clone()),
                (FieldOp::Remove { .. }, Some(i)) => {
                    items.remove(i);
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The version a strong write takes: the proposer's stamp, or just after the key's last
/// version when that is later (clocks differ between proposers; a key's versions never go
/// back).
pub fn next_version(current: Option<&Version>, stamp_ms: u64) -> Version {
    let ts = match current {
        Some(v) if v.ts.wall_ms >= stamp_ms => Timestamp::new(v.ts.wall_ms, v.ts.logical.saturating_add(1)),
        _ => Timestamp::new(stamp_ms, 0),
    };
    Version { ts, region: strong_origin() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cond(v: Value) -> Condition {
        Condition::parse(&v).expect("valid")
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn comparisons_on_numbers_strings_and_existence() {
        let r = obj(json!({"available": 5, "name": "mug", "price": 2.5}));
        let holds = |c: Value| cond(c).holds(Some(&r), None).expect("evaluates");
        assert!(holds(json!({"available": {"gte": 2}})));
        assert!(!holds(json!({"available": {"gte": 6}})));
        assert!(holds(json!({"available": {"gt": 4, "lt": 6}})));
        assert!(holds(json!({"price": {"lt": 3}})));
        assert!(holds(json!({"available": 5})));
        assert!(holds(json!({"name": {"gte": "mud", "lt": "muh"}})));
        assert!(holds(json!({"name": "mug", "available": {"ne": 4}})));
        assert!(holds(json!({"color": {"exists": false}, "name": {"exists": true}})));
        assert!(!holds(json!({"color": {"gte": 1}})), "a missing field is not >= anything");
        assert!(holds(json!({"$or": [{"available": 0}, {"name": "mug"}]})));
        assert!(holds(json!({"$not": {"available": 0}})));
        assert!(holds(json!({"$exists": true})));
        // Integers compare exactly beyond f64's 53 bits.
        let big = obj(json!({"n": 9_007_199_254_740_993_i64}));
        assert!(!cond(json!({"n": {"lte": 9_007_199_254_740_992_i64}})).holds(Some(&big), None).expect("ok"));
    }

    #[test]
    fn an_absent_record_and_the_version_test() {
        assert!(cond(json!({"$exists": false})).holds(None, None).expect("ok"));
        assert!(!cond(json!({"available": {"gte": 0}})).holds(None, None).expect("ok"));
        let v = next_version(None, 1_000);
        let c = cond(json!({"$version": v.ts.to_string()}));
        assert!(c.holds(Some(&Map::new()), Some(&v)).expect("ok"));
        assert!(!c.holds(Some(&Map::new()), Some(&next_version(Some(&v), 1_000))).expect("ok"));
    }

    #[test]
    fn bad_conditions_are_refused_with_a_reason() {
        let err = |v: Value| Condition::parse(&v).expect_err("invalid");
        assert!(matches!(err(json!([1])), ConditionError::Invalid(_)));
        assert!(matches!(err(json!({"a": {"between": 1}})), ConditionError::Invalid(_)));
        assert!(matches!(err(json!({"a": {"gt": true}})), ConditionError::Invalid(_)));
        assert!(matches!(err(json!({"$nor": []})), ConditionError::Invalid(_)));
        let mut deep = json!({"a": 1});
        for _ in 0..=CONDITION_DEPTH_MAX {
            deep = json!({ "$not": deep });
        }
        assert_eq!(err(deep), ConditionError::TooDeep);
        let wide: Map<String, Value> = (0..=CONDITION_TESTS_MAX).map(|i| (format!("f{i}"), json!(1))).collect();
        assert_eq!(err(Value::Object(wide)), ConditionError::TooLarge);
        // A numeric order test on a string field is the caller's error, reported by the state
        // machine the same way in every region.
        let r = obj(json!({"available": "five"}));
        assert!(matches!(
            cond(json!({"available": {"gte": 2}})).holds(Some(&r), None),
            Err(Invalid::TypeMismatch { .. })
        ));
    }

    fn record(v: Value, version: Version) -> Record {
        Record {
            value: Some(serde_json::to_vec(&v).expect("json")),
            metadata: Metadata::default(),
            version,
            origin: strong_origin(),
            lane: crate::lane::Lane::Normal,
            seq: 1,
            deps: crate::vv::VersionVector::new(),
            doc: None,
            placed_by: None,
            lacking: Default::default(),
        }
    }

    fn value_of(e: Effect) -> Value {
        match e {
            Effect::Write { value: Some(v), .. } => serde_json::from_slice(&v).expect("json"),
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn an_atomic_deduction_applies_only_while_stock_lasts() {
        let key = Key::new("inventory", "sku-1");
        let deduct = StrongWrite::Update {
            key: key.clone(),
            condition: Some(cond(json!({"available": {"gte": 2}}))),
            ops: vec![FieldOp::Incr { field: "available".into(), by: -2 }],
        };
        let v = next_version(None, 10);
        let three = record(json!({"id": "sku-1", "available": 3}), v.clone());
        let after = value_of(evaluate(&deduct, Some(&three), &crate::Policies::default()).expect("evaluates"));
        assert_eq!(after, json!({"id": "sku-1", "available": 1}));
        let one = record(after, next_version(Some(&v), 5));
        assert_eq!(evaluate(&deduct, Some(&one), &crate::Policies::default()), Ok(Effect::PreconditionFailed));
        assert_eq!(evaluate(&deduct, None, &crate::Policies::default()), Ok(Effect::PreconditionFailed));
    }

    #[test]
    fn updates_create_records_and_refuse_wrong_types() {
        let key = Key::new("inventory", "sku-2");
        let create = StrongWrite::Update {
            key: key.clone(),
            condition: Some(cond(json!({"$exists": false}))),
            ops: vec![
                FieldOp::Set { field: "available".into(), value: json!(10) },
                FieldOp::Add { field: "tags".into(), value: json!("sale") },
                FieldOp::Add { field: "tags".into(), value: json!("sale") },
            ],
        };
        assert_eq!(
            value_of(evaluate(&create, None, &crate::Policies::default()).expect("ok")),
            json!({"id": "sku-2", "available": 10, "tags": ["sale"]})
        );
        let text = record(json!({"available": "ten"}), next_version(None, 1));
        let incr = StrongWrite::Update {
            key: key.clone(),
            condition: None,
            ops: vec![FieldOp::Incr { field: "available".into(), by: 1 }],
        };
        assert!(matches!(evaluate(&incr, Some(&text), &crate::Policies::default()), Err(Invalid::NotANumber { .. })));
        let max = record(json!({"available": i64::MAX}), next_version(None, 1));
        assert!(matches!(evaluate(&incr, Some(&max), &crate::Policies::default()), Err(Invalid::Overflow { .. })));
    }

    #[test]
    fn versions_of_a_key_only_grow_whatever_the_stamp() {
        let a = next_version(None, 100);
        let b = next_version(Some(&a), 50);
        let c = next_version(Some(&b), 100);
        let d = next_version(Some(&c), 200);
        assert!(a < b && b < c && c < d, "{a:?} {b:?} {c:?} {d:?}");
        assert_eq!(d.ts, Timestamp::new(200, 0));
    }

    #[test]
    fn the_digest_names_the_writes_not_the_stamp() {
        let w = vec![StrongWrite::Delete { key: Key::new("t", "a") }];
        let round = StrongCommand::new(
            "r0".into(),
            7,
            vec![StrongWrite::Update {
                key: Key::new("t", "a"),
                condition: Some(cond(json!({"n": {"gte": 1.5}, "$version": "x"}))),
                ops: vec![FieldOp::Set { field: "f".into(), value: json!({"deep": [1, "x", null]}) }],
            }],
        );
        assert_eq!(StrongCommand::decode(&round.encode()), Ok(round));
        let a = StrongCommand::new("r1".into(), 1, w.clone());
        let b = StrongCommand::new("r1".into(), 2, w);
        let c = StrongCommand::new("r1".into(), 1, vec![StrongWrite::Delete { key: Key::new("t", "b") }]);
        assert_eq!(a.digest, b.digest);
        assert_ne!(a.digest, c.digest);
    }
}
