//! The strong tier's apply path: committed log entries become writes of this region.
//!
//! Every region applies the same commands in the same order against the same strong records
//! (nothing else writes them: the API sends their writes to the log, and the remote path
//! refuses them), so each region computes the same changes: the same values, versions
//! ([`mrr_core::strong::next_version`]) and sequence numbers in the reserved
//! [`mrr_core::strong::STRONG_ORIGIN`] stream. Those changes go through the ordinary apply,
//! which is what makes strong writes visible to reads, the changelog, `/v1/watch/applied` and
//! the metrics like any other write; they are never shipped (every region has the log).
//!
//! A command is all or nothing: a condition that fails, or a write the state machine refuses,
//! leaves nothing of the command in the group. A request id applied once answers every retry
//! with its first answer, from the store, so a retried proposal never applies twice.

use mrr_core::strong::{evaluate, next_version, strong_origin, Effect, Invalid, StrongCommand, StrongOutcome};
use mrr_core::{Change, Key, Lane, Metadata, Op, Record, Stream, VersionVector};
use mrr_storage::{Store, StoreError};
use serde::{Deserialize, Serialize};

use super::Engine;
use crate::pending::Pending;

/// What a request id is remembered with: the writes' digest (to tell a retry from a reuse)
/// and the records the command produced (what a retry is answered).
#[derive(Serialize, Deserialize)]
struct Answered {
    digest: u64,
    records: Vec<(Key, Record)>,
}

/// Why a command leaves nothing behind.
enum Abort {
    Answer(StrongOutcome),
    Store(StoreError),
}

impl From<StoreError> for Abort {
    fn from(e: StoreError) -> Self {
        Abort::Store(e)
    }
}

impl Engine {
    /// Applies one committed command (or answers why it does not apply) to the group.
    pub fn apply_strong(
        &mut self,
        pending: &mut Pending,
        store: &dyn Store,
        command: Result<StrongCommand, Invalid>,
    ) -> Result<StrongOutcome, StoreError> {
        let command = match command {
            Ok(c) => c,
            Err(invalid) => return Ok(StrongOutcome::Invalid(invalid)),
        };
        match pending.request(|pending| self.strong_request(pending, store, &command)) {
            Ok(applied) => Ok(applied),
            Err(Abort::Answer(outcome)) => Ok(outcome),
            Err(Abort::Store(e)) => Err(e),
        }
    }

    /// Moves the strong tier's position to `position` with this group (once per group, after
    /// its commands).
    pub fn strong_position(&self, pending: &mut Pending, position: Vec<u8>) {
        pending.strong_position = Some(position);
    }

    fn strong_request(
        &mut self,
        pending: &mut Pending,
        store: &dyn Store,
        command: &StrongCommand,
    ) -> Result<StrongOutcome, Abort> {
        let answered = match pending.strong_requests.get(&command.request_id) {
            Some(bytes) => Some(bytes.clone()),
            None => store.strong_request(&command.request_id)?,
        };
        if let Some(bytes) = answered {
            let answered: Answered = postcard::from_bytes(&bytes).map_err(|e| StoreError::Corrupt {
                what: "strong request answer",
                key: command.request_id.as_bytes().to_vec(),
                reason: e.to_string(),
            })?;
            return Err(Abort::Answer(if answered.digest == command.digest {
                StrongOutcome::Repeated { records: answered.records }
            } else {
                StrongOutcome::Invalid(Invalid::RequestReused { request_id: command.request_id.clone() })
            }));
        }
        let reads = self.prefetch(pending, store, command.writes.iter().map(|w| w.key()))?;
        let stream = Stream::new(strong_origin(), Lane::Normal);
        let mut records = Vec::with_capacity(command.writes.len());
        for write in &command.writes {
            let key = write.key();
            if !self.policies.is_strong(&key.topic) {
                return Err(Abort::Answer(StrongOutcome::Invalid(Invalid::NotStrong { topic: key.topic.clone() })));
            }
            let current = self.current(pending, &reads, key);
            let (value, metadata) = match evaluate(write, current.as_ref(), &self.policies) {
                Err(invalid) => return Err(Abort::Answer(StrongOutcome::Invalid(invalid))),
                Ok(Effect::PreconditionFailed) => {
                    let current = current.filter(|r| !r.is_tombstone()).map(Box::new);
                    return Err(Abort::Answer(StrongOutcome::PreconditionFailed { key: key.clone(), current }));
                }
                Ok(Effect::Write { value, metadata }) => (value, metadata),
            };
            let seq = pending.vv.get(&stream) + 1;
            // The stream's own past is the whole causal past of a strong write: every earlier
            // strong write of the key is in it, so none is ever logged as a conflict.
            let mut deps = VersionVector::new();
            deps.raise(&stream, seq - 1);
            let change = Change {
                origin: strong_origin(),
                lane: Lane::Normal,
                seq,
                key: key.clone(),
                op: value.map_or(Op::Delete, |value| Op::Put { value }),
                // Strong records live in every region.
                metadata: Metadata { regions: Vec::new(), sync_flags: metadata.sync_flags },
                version: next_version(current.as_ref().map(|r| &r.version), command.stamp_ms),
                deps,
                replay_of: None,
                moves: current.is_none(),
                carried: Vec::new(),
                proof: Default::default(),
            };
            pending.vv.advance(&stream, seq);
            let record = self.apply_change(pending, store, &reads, change)?;
            records.push((key.clone(), record));
        }
        let answered = Answered { digest: command.digest, records };
        let bytes = postcard::to_stdvec(&answered).map_err(|e| StoreError::Corrupt {
            what: "strong request answer",
            key: command.request_id.as_bytes().to_vec(),
            reason: e.to_string(),
        })?;
        pending.strong_requests.insert(command.request_id.clone(), bytes);
        Ok(StrongOutcome::Applied { records: answered.records })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mrr_core::strong::{Condition, StrongWrite};
    use mrr_core::{FieldOp, Policies, RegionName, Rule};
    use mrr_storage::{MemStore, RecoveredState};
    use serde_json::{json, Value};

    use super::*;
    use crate::LocalOp;

    fn engine(name: &str) -> Engine {
        let policies = Policies::new(Rule::Timestamp, Default::default()).with_strong(["inventory".to_owned()]);
        Engine::new(RegionName::new(name).expect("valid"), RecoveredState::default(), 200, Arc::new(policies))
    }

    fn key(id: &str) -> Key {
        Key::new("inventory", id)
    }

    fn stock(id: &str, n: i64) -> StrongWrite {
        StrongWrite::Put {
            key: key(id),
            value: json!({"id": id, "available": n}).to_string(),
            metadata: Metadata::default(),
        }
    }

    fn deduct(id: &str, by: i64) -> StrongWrite {
        StrongWrite::Update {
            key: key(id),
            condition: Some(Condition::parse(&json!({"available": {"gte": by}})).expect("valid")),
            ops: vec![FieldOp::Incr { field: "available".into(), by: -by }],
        }
    }

    fn cmd(id: &str, stamp_ms: u64, writes: Vec<StrongWrite>) -> StrongCommand {
        StrongCommand::new(id.into(), stamp_ms, writes)
    }

    /// Applies `commands` as one group (position `position`) and commits it.
    fn apply(
        engine: &mut Engine,
        store: &MemStore,
        commands: Vec<StrongCommand>,
        position: &[u8],
    ) -> Vec<StrongOutcome> {
        let mut p = engine.begin(0);
        let out = commands.into_iter().map(|c| engine.apply_strong(&mut p, store, Ok(c)).expect("apply")).collect();
        engine.strong_position(&mut p, position.to_vec());
        let batch = engine.finish(p).expect("a position is always committed");
        store.commit(&batch).expect("commit");
        engine.committed(&batch);
        out
    }

    fn available(store: &MemStore, id: &str) -> Option<Value> {
        let r = store.get(&key(id)).expect("get")?;
        let v: Value = serde_json::from_slice(r.value.as_deref()?).expect("json");
        Some(v["available"].clone())
    }

    fn strong_changes(store: &MemStore) -> Vec<Change> {
        store.changes_after(&Stream::new(mrr_core::strong::strong_origin(), Lane::Normal), 0, 100).expect("changes")
    }

    #[test]
    fn every_region_applies_the_log_to_the_same_records_and_changes() {
        let log = vec![
            cmd("r1", 100, vec![stock("a", 3), stock("b", 1)]),
            cmd("r2", 90, vec![deduct("a", 2)]),
            cmd("r3", 95, vec![deduct("a", 2)]),
            cmd("r4", 200, vec![deduct("b", 1)]),
        ];
        let (mut x, mut y) = (engine("us-west"), engine("eu-central"));
        let (sx, sy) = (MemStore::new(), MemStore::new());
        let ox = apply(&mut x, &sx, log.clone(), b"p4");
        // The other region gets the same entries in other groups.
        let mut oy = apply(&mut y, &sy, log[..1].to_vec(), b"p1");
        oy.extend(apply(&mut y, &sy, log[1..].to_vec(), b"p4"));
        assert_eq!(ox, oy);
        assert!(matches!(ox[2], StrongOutcome::PreconditionFailed { .. }), "only 1 left: {:?}", ox[2]);
        assert_eq!(available(&sx, "a"), Some(json!(1)));
        assert_eq!(available(&sx, "b"), Some(json!(0)));
        assert_eq!(strong_changes(&sx), strong_changes(&sy), "same seqs, versions and values everywhere");
        assert_eq!(strong_changes(&sx).len(), 4, "a failed condition writes nothing");
        assert_eq!(sx.get(&key("a")).expect("get"), sy.get(&key("a")).expect("get"));
        // Versions of a key only grow, whatever the proposers' stamps.
        let a = strong_changes(&sx).into_iter().filter(|c| c.key == key("a")).map(|c| c.version).collect::<Vec<_>>();
        assert!(a.windows(2).all(|w| w[0] < w[1]), "{a:?}");
        assert_eq!(sx.recover().expect("recover").strong_position.as_deref(), Some(&b"p4"[..]));
        assert!(sx.conflicts().expect("conflicts").is_empty(), "ordered writes are never conflicts");
    }

    #[test]
    fn a_request_id_applies_once_and_cannot_be_reused_for_another_request() {
        let mut e = engine("us-west");
        let s = MemStore::new();
        apply(&mut e, &s, vec![cmd("stock", 1, vec![stock("a", 10)])], b"p1");
        let first = apply(&mut e, &s, vec![cmd("buy-1", 2, vec![deduct("a", 2)])], b"p2");
        // The retry of a forward that was lost, committed again, and a retry in the same group.
        let again = apply(
            &mut e,
            &s,
            vec![
                cmd("buy-1", 5, vec![deduct("a", 2)]),
                cmd("buy-2", 6, vec![deduct("a", 1)]),
                cmd("buy-2", 7, vec![deduct("a", 1)]),
            ],
            b"p5",
        );
        let StrongOutcome::Applied { records } = &first[0] else { panic!("{first:?}") };
        assert_eq!(again[0], StrongOutcome::Repeated { records: records.clone() }, "answered as the first time");
        assert!(matches!(again[2], StrongOutcome::Repeated { .. }));
        assert_eq!(available(&s, "a"), Some(json!(7)), "10 - 2 - 1: each request once");
        let reused = apply(&mut e, &s, vec![cmd("buy-1", 9, vec![deduct("a", 5)])], b"p6");
        assert!(matches!(reused[0], StrongOutcome::Invalid(Invalid::RequestReused { .. })), "{reused:?}");
        assert_eq!(available(&s, "a"), Some(json!(7)));
    }

    #[test]
    fn a_command_applies_all_or_nothing() {
        let mut e = engine("us-west");
        let s = MemStore::new();
        apply(&mut e, &s, vec![cmd("stock", 1, vec![stock("a", 5), stock("b", 0)])], b"p1");
        let out = apply(&mut e, &s, vec![cmd("both", 2, vec![deduct("a", 1), deduct("b", 1)])], b"p2");
        assert!(matches!(&out[0], StrongOutcome::PreconditionFailed { key, .. } if *key == super::tests::key("b")));
        assert_eq!(available(&s, "a"), Some(json!(5)), "the first write of a failed command is undone");
        let bad = StrongWrite::Update {
            key: key("a"),
            condition: None,
            ops: vec![
                FieldOp::Set { field: "available".into(), value: json!("many") },
                FieldOp::Incr { field: "available".into(), by: 1 },
            ],
        };
        let out = apply(&mut e, &s, vec![cmd("bad", 3, vec![bad])], b"p3");
        assert!(matches!(out[0], StrongOutcome::Invalid(Invalid::NotANumber { .. })), "{out:?}");
        assert_eq!(available(&s, "a"), Some(json!(5)));
        // Undecodable entries are answered, and the position still moves.
        let mut p = e.begin(0);
        let out = e.apply_strong(&mut p, &s, Err(Invalid::Undecodable("garbage".into()))).expect("answered");
        assert!(matches!(out, StrongOutcome::Invalid(Invalid::Undecodable(_))));
    }

    #[test]
    fn strong_topics_take_no_local_or_replicated_writes() {
        let mut e = engine("us-west");
        let s = MemStore::new();
        let mut p = e.begin(0);
        let put = LocalOp::Put { key: key("a"), value: b"{}".to_vec(), metadata: Metadata::default() };
        assert!(matches!(
            e.apply_local(&mut p, &s, vec![put], 0),
            Err(crate::LocalFailure::Rejected(crate::Rejection::StrongTopic { .. }))
        ));
        // A peer's change of the strong stream, or to a strong topic, is refused.
        apply(&mut e, &s, vec![cmd("stock", 1, vec![stock("a", 5)])], b"p1");
        let mut forged = strong_changes(&s).remove(0);
        forged.seq = 2;
        let mut p = e.begin(0);
        let out = e.apply_remote(&mut p, &s, vec![forged.clone()], 0).expect("apply");
        assert!(matches!(out.refused, Some(crate::Refusal::Strong { .. })), "{out:?}");
        forged.origin = RegionName::new("eu-central").expect("valid");
        forged.seq = 1;
        let out = e.apply_remote(&mut p, &s, vec![forged], 0).expect("apply");
        assert!(matches!(out.refused, Some(crate::Refusal::StrongTopic { .. })), "{out:?}");
    }
}
