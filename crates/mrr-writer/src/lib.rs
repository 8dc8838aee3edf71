//! MRR writer: the one place where a node's state changes.
//!
//! A single writer thread owns every mutation. Local writes get their HLC timestamp and
//! sequence number here, remote changes are admitted (duplicate, gap, loop, clock skew) and
//! merged here, and every request that arrives while a commit is in progress joins the next
//! one: concurrent writers share one atomic batch and one fsync (group commit). Serialising
//! mutation in one place is what makes read-merge-write race-free without locks.
//!
//! The writer does not validate client input (the API does), does not talk to peers
//! (replication does), and never acknowledges a write before its commit returned.

mod durable;
mod engine;
mod group;
mod pending;
pub mod repair;
pub mod snapshot;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use mrr_core::strong::StrongOutcome;
use mrr_core::{
    Change, ChangeId, ClockSkewError, FieldOp, Key, Metadata, PhysicalClock, Policies, Record, RegionName,
    VersionVector,
};
use mrr_storage::{Store, StoreError};
use tokio::sync::{mpsc, oneshot, watch};

pub use durable::DurableRule;
pub use engine::{
    Collect, Collected, Engine, LocalFailure, Rejection, RemoteOutcome, COLLECT_TOMBSTONES, ESCROW_SWEEP_MS,
};
pub use group::{Answer, Built, GroupCommit, Settled, StrongBatch, Work};
pub use pending::Pending;

/// A request in the writer's queue ([`Writer::enqueue_remote`]).
#[derive(Debug)]
pub struct Queued<T>(oneshot::Receiver<Result<T, WriteError>>);

impl<T> Queued<T> {
    /// Waits until the request is committed.
    pub async fn outcome(self) -> Result<T, WriteError> {
        self.0.await.map_err(|_| WriteError::Stopped)?
    }
}

/// Wall-clock time from the operating system.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl PhysicalClock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A client write.
#[derive(Clone, Debug, PartialEq)]
pub enum LocalOp {
    Put {
        key: Key,
        value: Vec<u8>,
        metadata: Metadata,
    },
    /// Only the named fields change (`null` removes one); metadata kept unless given.
    Patch {
        key: Key,
        fields: Vec<u8>,
        metadata: Option<Metadata>,
    },
    /// CRDT field operations, applied in order as one write (topics with `merge` only).
    Ops {
        key: Key,
        ops: Vec<FieldOp>,
    },
    Delete {
        key: Key,
    },
    /// Applies a dead letter's content again, as a new write, once cluster-wide.
    Replay {
        id: ChangeId,
    },
}

impl LocalOp {
    /// The key written; a replay's key is its dead letter's.
    pub fn key(&self) -> Option<&Key> {
        match self {
            LocalOp::Put { key, .. }
            | LocalOp::Patch { key, .. }
            | LocalOp::Ops { key, .. }
            | LocalOp::Delete { key } => Some(key),
            LocalOp::Replay { .. } => None,
        }
    }
}

/// A committed local write: the record state it produced, with version and token. For a write
/// that moves the record out of this region, the state it has where it is now placed; this
/// region keeps only the placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub key: Key,
    pub record: Record,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The disk refused the commit; nothing of the request was applied.
    #[error("storage commit failed: {0}")]
    Storage(Arc<StoreError>),
    #[error("the writer has stopped")]
    Stopped,
    /// A commit failed in a way that may have left part of it on disk (it reached the store,
    /// then failed): the writer takes no more writes, since what it would build on is unknown.
    /// Reads keep working; a restart recovers from what the disk holds.
    #[error("writes are stopped: {0}; restart the node to recover from what the disk holds")]
    Failed(Arc<str>),
    /// The request is not valid for its topic; nothing was applied.
    #[error("{0}")]
    Rejected(Rejection),
}

/// Why the writer stopped applying a remote batch part-way. Changes before it were applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("change {id} skips ahead; expected seq {expected}")]
    Gap { id: ChangeId, expected: u64 },
    #[error("change {id} is this region's own change sent back to it")]
    Loop { id: ChangeId },
    #[error("change {id} refused: {skew}")]
    ClockSkew { id: ChangeId, skew: ClockSkewError },
    #[error("change {id} is of the strong tier's stream, which reaches a region only through its log")]
    Strong { id: ChangeId },
    #[error("change {id} writes {topic}, a `consistency: strong` topic here: regions must agree on each topic's consistency")]
    StrongTopic { id: ChangeId, topic: String },
    #[error("change {id} waits: this region's dead-letter queue is full (dlq.max_entries); replay or discard letters (GET /v1/dlq) to go on")]
    DeadLettersFull { id: ChangeId },
}

#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Requests merged into one commit at most.
    pub group_requests_max: usize,
    /// Requests waiting for the writer at most; beyond, callers wait (backpressure).
    pub queue_requests_max: usize,
    /// `None`: every commit is durable when it returns (`durability: fsync`). `Some(interval)`:
    /// commits reach OS buffers only (`durability: buffered`) and a syncer thread persists them
    /// this often; only then are they [`Writer::durable`].
    pub sync_interval: Option<std::time::Duration>,
    /// The dead-letter queue's bound: at it, replicated changes of `custom` topics wait
    /// (refused, so their senders keep them) rather than a letter being dropped.
    pub dead_letters_max: u64,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self { group_requests_max: 512, queue_requests_max: 4_096, sync_interval: None, dead_letters_max: 100_000 }
    }
}

enum Request {
    Local { ops: Vec<LocalOp>, reply: oneshot::Sender<Result<Vec<Committed>, WriteError>> },
    Remote { changes: Vec<Change>, reply: oneshot::Sender<Result<RemoteOutcome, WriteError>> },
    Strong { batch: StrongBatch, reply: oneshot::Sender<Result<Vec<StrongOutcome>, WriteError>> },
    Collect { collect: Collect, reply: oneshot::Sender<Result<Collected, WriteError>> },
    Repair { offers: repair::Offers, reply: oneshot::Sender<Result<Vec<(Key, repair::Verdict)>, WriteError>> },
}

/// Handle to the writer thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Request>,
    applied: watch::Receiver<VersionVector>,
    durable: watch::Receiver<VersionVector>,
    failed: Arc<std::sync::OnceLock<Arc<str>>>,
    /// Wall milliseconds of the HLC's last timestamp, as of the last group.
    hlc_wall_ms: Arc<std::sync::atomic::AtomicU64>,
    policies: Arc<Policies>,
}

impl Writer {
    /// Recovers state from `store` and starts the writer thread.
    pub fn start(
        local: RegionName,
        max_skew_ms: u64,
        store: Arc<dyn Store>,
        clock: Arc<dyn PhysicalClock>,
        config: WriterConfig,
        policies: Arc<Policies>,
        notary: Option<Arc<dyn mrr_core::provenance::Notary>>,
    ) -> Result<Self, StoreError> {
        let recovered = store.recover()?;
        let policies_kept = policies.clone();
        let engine = Engine::new(local, recovered, max_skew_ms, policies).with_notary(notary);
        let (applied_tx, applied) = watch::channel(engine.applied().clone());
        let (tx, rx) = mpsc::channel(config.queue_requests_max);
        let thread_error =
            |e: std::io::Error| StoreError::Corrupt { what: "writer thread", key: Vec::new(), reason: e.to_string() };
        // What was recovered from disk is durable by definition.
        let rule =
            Arc::new(std::sync::Mutex::new(DurableRule::new(config.sync_interval.is_some(), engine.applied().clone())));
        let (durable_tx, durable) = watch::channel(engine.applied().clone());
        if let Some(interval) = config.sync_interval {
            let (applied, store, rule, durable_tx) = (applied.clone(), store.clone(), rule.clone(), durable_tx.clone());
            std::thread::Builder::new()
                .name("mrr-syncer".into())
                .spawn(move || sync(store, applied, &rule, durable_tx, interval))
                .map_err(thread_error)?;
        }
        let failed = Arc::new(std::sync::OnceLock::new());
        let hlc_wall_ms = Arc::new(std::sync::atomic::AtomicU64::new(engine.hlc_last().wall_ms));
        let shared = Shared { failed: failed.clone(), hlc_wall_ms: hlc_wall_ms.clone(), rule, durable_tx };
        let core = GroupCommit::new(engine, config.dead_letters_max);
        std::thread::Builder::new()
            .name("mrr-writer".into())
            .spawn(move || run(core, rx, store, clock, applied_tx, config, &shared))
            .map_err(thread_error)?;
        Ok(Self { tx, applied, durable, failed, hlc_wall_ms, policies: policies_kept })
    }

    /// The topic policies the writer merges by.
    pub fn policies(&self) -> &Arc<Policies> {
        &self.policies
    }

    /// Wall milliseconds of the last timestamp the writer issued or observed: ahead of the
    /// system clock after a forward step that was undone, which [`mrr_core::clock_check`]
    /// needs to know.
    pub fn hlc_wall_ms(&self) -> u64 {
        self.hlc_wall_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why the writer stopped taking writes, if it has (see [`WriteError::Failed`]).
    pub fn failed(&self) -> Option<Arc<str>> {
        self.failed.get().cloned()
    }

    /// Applies client writes; returns once they are committed (durably, by default).
    pub async fn write(&self, ops: Vec<LocalOp>) -> Result<Vec<Committed>, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Local { ops, reply }).await.map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }

    /// Applies changes received from a peer, in order; returns once committed.
    pub async fn apply_remote(&self, changes: Vec<Change>) -> Result<RemoteOutcome, WriteError> {
        self.enqueue_remote(changes).await?.outcome().await
    }

    /// Hands changes received from a peer to the writer's queue, behind every request already
    /// in it; the answer comes once they are committed. Split from [`Self::apply_remote`] so a
    /// caller can order the hand-off against something else (a fence) and wait outside it.
    pub async fn enqueue_remote(&self, changes: Vec<Change>) -> Result<Queued<RemoteOutcome>, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Remote { changes, reply }).await.map_err(|_| WriteError::Stopped)?;
        Ok(Queued(rx))
    }

    /// Applies committed entries of the strong tier's log, with their position; returns once
    /// committed, with one outcome per command.
    pub async fn apply_strong(&self, batch: StrongBatch) -> Result<Vec<StrongOutcome>, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Strong { batch, reply }).await.map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }

    /// One collection pass over what records that left this region left behind in its logs
    /// ([`Collect`]); returns once committed.
    pub async fn collect(&self, collect: Collect) -> Result<Collected, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Collect { collect, reply }).await.map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }

    /// Joins a peer's copies of records into this region's (anti-entropy, [`repair`]); one
    /// verdict per offer, in order.
    pub async fn repair(&self, offers: repair::Offers) -> Result<Vec<(Key, repair::Verdict)>, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Repair { offers, reply }).await.map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }

    /// The committed version vector; changes each time a commit lands. Readers see this state.
    pub fn applied(&self) -> watch::Receiver<VersionVector> {
        self.applied.clone()
    }

    /// The version vector known to be on disk. Replication ships only durable changes, so a
    /// machine crash under `durability: buffered` can lose only changes no other region has
    /// seen — and a restarted region can reuse their sequence numbers without conflict.
    pub fn durable(&self) -> watch::Receiver<VersionVector> {
        self.durable.clone()
    }
}

/// The syncer of `durability: buffered`: persists the journal every `interval` when there is
/// something new, then publishes what that made durable.
fn sync(
    store: Arc<dyn Store>,
    applied: watch::Receiver<VersionVector>,
    rule: &std::sync::Mutex<DurableRule>,
    durable_tx: watch::Sender<VersionVector>,
    interval: std::time::Duration,
) {
    loop {
        std::thread::sleep(interval);
        if durable_tx.is_closed() || applied.has_changed().is_err() {
            return;
        }
        // Taken before persisting: every commit it covers is in the journal already.
        let snapshot = applied.borrow().clone();
        if *durable_tx.borrow() == snapshot {
            continue;
        }
        match store.persist() {
            Ok(()) => {
                let mut rule = rule.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if rule.persisted(&snapshot) {
                    durable_tx.send_replace(rule.durable().clone());
                }
            }
            Err(e) => tracing::error!(error = %e, "persist failed; replication waits until the disk takes it"),
        }
    }
}

fn run(
    mut core: GroupCommit,
    mut rx: mpsc::Receiver<Request>,
    store: Arc<dyn Store>,
    clock: Arc<dyn PhysicalClock>,
    applied_tx: watch::Sender<VersionVector>,
    config: WriterConfig,
    shared: &Shared,
) {
    let mut group = Vec::with_capacity(config.group_requests_max);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < config.group_requests_max {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let (work, replies): (Vec<_>, Vec<_>) = group.drain(..).map(Request::split).unzip();
        let built = core.build(&*store, work, &*clock);
        shared.hlc_wall_ms.store(core.engine().hlc_last().wall_ms, std::sync::atomic::Ordering::Relaxed);
        let commit = built.batch().map_or(Ok(()), |batch| store.commit(batch));
        let settled = {
            let mut rule = shared.rule.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let settled = core.settle(built, commit, &*store, &mut rule);
            if settled.durable_moved {
                shared.durable_tx.send_replace(rule.durable().clone());
            }
            settled
        };
        if settled.committed.is_some() {
            applied_tx.send_replace(core.engine().applied().clone());
        }
        if let Some(reason) = core.failed() {
            let _ = shared.failed.set(reason.clone());
        }
        for (reply, answer) in replies.into_iter().zip(settled.answers) {
            reply.send(answer);
        }
    }
}

/// What the writer thread shares with its handles.
struct Shared {
    failed: Arc<std::sync::OnceLock<Arc<str>>>,
    hlc_wall_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Decides what may replicate; the syncer shares it under `buffered`.
    rule: Arc<std::sync::Mutex<DurableRule>>,
    durable_tx: watch::Sender<VersionVector>,
}

impl Request {
    fn split(self) -> (Work, Reply) {
        match self {
            Request::Local { ops, reply } => (Work::Local(ops), Reply::Local(reply)),
            Request::Remote { changes, reply } => (Work::Remote(changes), Reply::Remote(reply)),
            Request::Strong { batch, reply } => (Work::Strong(batch), Reply::Strong(reply)),
            Request::Collect { collect, reply } => (Work::Collect(collect), Reply::Collect(reply)),
            Request::Repair { offers, reply } => (Work::Repair(offers), Reply::Repair(reply)),
        }
    }
}

enum Reply {
    Local(oneshot::Sender<Result<Vec<Committed>, WriteError>>),
    Remote(oneshot::Sender<Result<RemoteOutcome, WriteError>>),
    Strong(oneshot::Sender<Result<Vec<StrongOutcome>, WriteError>>),
    Collect(oneshot::Sender<Result<Collected, WriteError>>),
    Repair(oneshot::Sender<Result<Vec<(Key, repair::Verdict)>, WriteError>>),
}

impl Reply {
    fn send(self, answer: Answer) {
        // A caller that gave up waiting dropped its receiver; its write still committed.
        match (self, answer) {
            (Reply::Local(tx), Answer::Local(out)) => {
                let _ = tx.send(out);
            }
            (Reply::Remote(tx), Answer::Remote(out)) => {
                let _ = tx.send(out);
            }
            (Reply::Strong(tx), Answer::Strong(out)) => {
                let _ = tx.send(out);
            }
            (Reply::Collect(tx), Answer::Collect(out)) => {
                let _ = tx.send(out);
            }
            (Reply::Repair(tx), Answer::Repair(out)) => {
                let _ = tx.send(out);
            }
            (_, answer) => unreachable!("GroupCommit answers every request in its own kind, got {answer:?}"),
        }
    }
}
