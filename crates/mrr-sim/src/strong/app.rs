//! The simulated strong tier's application: registers by key, with writes and compare-and-set
//! ordered by the group, applied by the node's own strong path — each command becomes a
//! [`StrongCommand`] (a put, or an atomic update whose condition is the compare) that
//! [`GroupCommit`] evaluates, dedups by request id and commits with the position to a
//! simulated disk, exactly as a node's writer does. Like a node's, those commits are not
//! fsynced (the consensus log is: `CommitBatch::from_strong_log`); they reach the disk when a
//! later commit syncs, here every [`PERSIST_EVERY`] applies. A kill takes back what had not
//! reached it ([`Registers::power_loss`]), and the restarted node replays the log from the
//! position that survived — the recovery path a node's crash takes.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use mrr_consensus::{Apply, ApplyBatch, BoxFuture, Command, Response, SnapshotData};
use mrr_core::strong::{Condition, Invalid, StrongCommand, StrongOutcome, StrongWrite};
use mrr_core::{FieldOp, Key, Metadata, PhysicalClock, Policies, RegionName, Rule};
use mrr_storage::{RecoveredState, Store};
use mrr_writer::{Answer, DurableRule, Engine, GroupCommit, StrongBatch, Work};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::disk::SimDisk;

/// How often a node's strong applies reach the disk: a node syncs them with its next eventual
/// commit, whenever that comes; the simulator syncs every so many applies.
const PERSIST_EVERY: u64 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegisterOp {
    Write { key: u8, value: u64 },
    Cas { key: u8, expect: u64, new: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub request_id: u64,
    pub op: RegisterOp,
}

/// What applying a proposal answered: whether it took effect (a CAS may not), and the value
/// the key held before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub applied: bool,
    pub before: u64,
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap_or_else(|e| unreachable!("plain data encodes: {e}"))
}

/// The strong topic the registers live in.
const TOPIC: &str = "registers";

fn key_of(key: u8) -> Key {
    Key::new(TOPIC, key.to_string())
}

/// The command a proposal is: a put, or an update of `v` whose condition is the compare
/// (a register never written holds 0).
fn command_of(p: &Proposal) -> StrongCommand {
    let write = match p.op {
        RegisterOp::Write { key, value } => StrongWrite::Put {
            key: key_of(key),
            value: json!({ "v": value }).to_string(),
            metadata: Metadata::default(),
        },
        RegisterOp::Cas { key, expect, new } => {
            let test =
                if expect == 0 { json!({"$or": [{"v": 0}, {"$exists": false}]}) } else { json!({ "v": expect }) };
            StrongWrite::Update {
                key: key_of(key),
                condition: Some(Condition::parse(&test).unwrap_or_else(|e| unreachable!("a valid condition: {e}"))),
                ops: vec![FieldOp::Set { field: "v".into(), value: json!(new) }],
            }
        }
    };
    StrongCommand::new(p.request_id.to_string(), 0, vec![write])
}

/// The strong path never reads the writer's clock (versions come from the command).
struct NoClock;

impl PhysicalClock for NoClock {
    fn now_ms(&self) -> u64 {
        0
    }
}

struct Inner {
    core: GroupCommit,
    /// A buffered disk: every commit waits for a persist.
    store: SimDisk,
    applies: u64,
    /// Power losses so far: a read that began in one life and ends in another was answered by
    /// a process that died (its client saw the connection drop, not a value).
    lives: u64,
    rule: DurableRule,
    /// What each applied request found before it: the simulator's own bookkeeping, for the
    /// answer (the strong path answers with the new record, the checker wants the old value).
    befores: BTreeMap<u64, u64>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct Registers {
    inner: Arc<Mutex<Inner>>,
}

impl Default for Registers {
    fn default() -> Self {
        let inner = Inner {
            core: core_over(RecoveredState::default()),
            store: SimDisk::new(true),
            applies: 0,
            lives: 0,
            rule: DurableRule::new(false, mrr_core::VersionVector::new()),
            befores: BTreeMap::new(),
        };
        Self { inner: Arc::new(Mutex::new(inner)) }
    }
}

/// The writer a node starts with over what its disk recovered.
fn core_over(recovered: RecoveredState) -> GroupCommit {
    let policies = Policies::new(Rule::Timestamp, BTreeMap::new()).with_strong([TOPIC.to_owned()]);
    let local = RegionName::new("sim").unwrap_or_else(|_| unreachable!("a valid name"));
    GroupCommit::new(Engine::new(local, recovered, 0, Arc::new(policies)), u64::MAX)
}

fn value_in(store: &dyn Store, key: &Key) -> u64 {
    let record = store.get(key).ok().flatten().filter(|r| !r.is_tombstone());
    let value: Option<Value> = record.and_then(|r| serde_json::from_slice(r.value.as_deref()?).ok());
    value.and_then(|v| v["v"].as_u64()).unwrap_or(0)
}

fn invalid_data(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl Registers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn value(&self, key: u8) -> u64 {
        value_in(&self.lock().store, &key_of(key))
    }

    /// Which life of the node this is (see [`Inner::lives`]).
    pub fn life(&self) -> u64 {
        self.lock().lives
    }

    /// The register's value, if the node is still in life `life`.
    pub fn value_in_life(&self, key: u8, life: u64) -> Option<u64> {
        let inner = self.lock();
        (inner.lives == life).then(|| value_in(&inner.store, &key_of(key)))
    }

    /// The node died: what its disk had not persisted is gone, and the writer restarts over
    /// what is left (the consensus log replays the rest once the node is back).
    /// Returns how many applies that took back.
    pub fn power_loss(&self) -> usize {
        let mut inner = self.lock();
        let lost = inner.store.power_loss();
        let recovered = inner.store.recover().unwrap_or_else(|e| unreachable!("a memory store recovers: {e}"));
        inner.core = core_over(recovered);
        inner.lives += 1;
        lost
    }

    fn apply_now(&self, batch: ApplyBatch) -> io::Result<Vec<Response>> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let proposals = batch
            .commands
            .iter()
            .map(|(_, Command(bytes))| postcard::from_bytes::<Proposal>(bytes).map_err(invalid_data))
            .collect::<io::Result<Vec<_>>>()?;
        // What each register holds before each command, walking the batch in order.
        let mut now: BTreeMap<u8, u64> = BTreeMap::new();
        for p in &proposals {
            let key = match p.op {
                RegisterOp::Write { key, .. } | RegisterOp::Cas { key, .. } => key,
            };
            now.entry(key).or_insert_with(|| value_in(&inner.store, &key_of(key)));
        }
        let commands: Vec<Result<StrongCommand, Invalid>> = proposals.iter().map(|p| Ok(command_of(p))).collect();
        let built = inner.core.build(
            &inner.store,
            [Work::Strong(StrongBatch { commands, position: batch.position })],
            &NoClock,
        );
        if let Some(b) = built.batch() {
            assert!(b.from_strong_log, "a batch of strong applies only is marked replayable from the log");
        }
        let commit = built.batch().map_or(Ok(()), |b| inner.store.commit(b));
        inner.applies += 1;
        if inner.applies % PERSIST_EVERY == 0 {
            inner.store.persist().map_err(io::Error::other)?;
        }
        let settled = inner.core.settle(built, commit, &inner.store, &mut inner.rule);
        let outcomes = match settled.answers.into_iter().next() {
            Some(Answer::Strong(Ok(outcomes))) => outcomes,
            other => return Err(io::Error::other(format!("the strong path failed: {other:?}"))),
        };
        let mut out = Vec::with_capacity(outcomes.len());
        for (p, outcome) in proposals.iter().zip(outcomes) {
            let (key, value) = match p.op {
                RegisterOp::Write { key, value } | RegisterOp::Cas { key, new: value, .. } => (key, value),
            };
            let held = now.get(&key).copied().unwrap_or(0);
            let answer = match outcome {
                StrongOutcome::Applied { .. } => {
                    inner.befores.insert(p.request_id, held);
                    now.insert(key, value);
                    Outcome { applied: true, before: held }
                }
                StrongOutcome::Repeated { .. } => {
                    let before = inner.befores.get(&p.request_id).copied().ok_or_else(|| {
                        io::Error::other(format!("request {} answered as a repeat but never applied", p.request_id))
                    })?;
                    Outcome { applied: true, before }
                }
                StrongOutcome::PreconditionFailed { .. } => Outcome { applied: false, before: held },
                StrongOutcome::Invalid(e) => return Err(io::Error::other(format!("command refused: {e}"))),
            };
            out.push(Response(encode(&answer)));
        }
        Ok(out)
    }
}

impl Apply for Registers {
    fn apply(&self, batch: ApplyBatch) -> BoxFuture<io::Result<Vec<Response>>> {
        let out = self.apply_now(batch);
        Box::pin(async move { out })
    }

    fn position(&self) -> io::Result<Option<Vec<u8>>> {
        self.lock().store.recover().map(|r| r.strong_position).map_err(io::Error::other)
    }

    fn snapshot(&self) -> BoxFuture<io::Result<SnapshotData>> {
        // As on a node: the group keeps its whole log and never builds a snapshot.
        Box::pin(async { Err(io::Error::other("strong-state snapshots are not built: the log is kept whole")) })
    }

    fn restore(&self, _snapshot: SnapshotData) -> BoxFuture<io::Result<()>> {
        Box::pin(async { Err(io::Error::other("strong-state snapshots are not installed: the log is kept whole")) })
    }
}
