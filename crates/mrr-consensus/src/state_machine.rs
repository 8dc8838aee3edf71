//! openraft's state machine over an [`Apply`]: committed commands go to the application in log
//! order, together with the position they bring it to, and the application stores both in one
//! atomic commit. The applied position therefore never runs ahead of, or behind, the data it
//! describes, which is what lets a restarted node resume from its own disk without replaying
//! into a half-applied state.
//!
//! The position is opaque bytes to the application; this module encodes and decodes it. Not
//! here: what a command does (the application's), the log (`log_store.rs`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::StreamExt;
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, Snapshot};

use crate::log_store::{decode, encode};
use crate::types::{Command, LogId, Response, SnapshotMeta, StoredMembership, Types};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Committed commands, in log order, and the position after the last of them.
#[derive(Debug)]
pub struct ApplyBatch {
    /// `(log index, command)`; entries without a command (a new leader's blank entry, a
    /// membership change) move the position only.
    pub commands: Vec<(u64, Command)>,
    /// Store this with the commands' effects, atomically; hand it back from
    /// [`Apply::position`].
    pub position: Vec<u8>,
}

/// A consistent copy of the application's replicated state, at `position`.
#[derive(Debug, Clone)]
pub struct SnapshotData {
    /// As stored by [`Apply::apply`]; empty when nothing has been applied yet.
    pub position: Vec<u8>,
    pub data: Vec<u8>,
}

/// What the Raft state machine asks of the application.
pub trait Apply: Send + Sync + 'static {
    /// Applies the batch; one response per command, in order. Returns once the effects and
    /// the position are durable.
    fn apply(&self, batch: ApplyBatch) -> BoxFuture<io::Result<Vec<Response>>>;
    /// The position last stored by [`Apply::apply`] or [`Apply::restore`] (`None`: nothing
    /// applied yet).
    fn position(&self) -> io::Result<Option<Vec<u8>>>;
    /// A consistent copy of the state and its position.
    fn snapshot(&self) -> BoxFuture<io::Result<SnapshotData>>;
    /// Replaces the replicated state with a snapshot's.
    fn restore(&self, snapshot: SnapshotData) -> BoxFuture<io::Result<()>>;
}

/// Where the state machine stands: the last applied entry and the membership it applied.
type Position = (Option<LogId>, StoredMembership);

fn position_of(bytes: Option<Vec<u8>>) -> io::Result<Position> {
    match bytes {
        None => Ok((None, StoredMembership::default())),
        Some(b) => decode("applied position", &b),
    }
}

#[derive(Clone)]
pub struct StateMachine {
    app: Arc<dyn Apply>,
    /// The snapshot built or installed last, served to followers that need one.
    current: Arc<std::sync::Mutex<Option<(SnapshotMeta, SnapshotData)>>>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine").finish_non_exhaustive()
    }
}

impl StateMachine {
    pub fn new(app: Arc<dyn Apply>) -> Self {
        Self { app, current: Arc::default() }
    }

    fn remember(&self, meta: SnapshotMeta, data: SnapshotData) {
        *self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((meta, data));
    }
}

impl RaftSnapshotBuilder<Types> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<openraft::alias::SnapshotOf<Types, SnapshotData>, io::Error> {
        let data = self.app.snapshot().await?;
        // An empty position: nothing applied yet (a snapshot of the initial state).
        let (last_log_id, last_membership) = position_of((!data.position.is_empty()).then(|| data.position.clone()))?;
        let meta = SnapshotMeta { last_log_id, last_membership };
        self.remember(meta.clone(), data.clone());
        Ok(Snapshot { meta, snapshot: data })
    }
}

impl RaftStateMachine<Types> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<Position, io::Error> {
        position_of(self.app.position()?)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<Types>, io::Error>> + Unpin + Send,
    {
        let (_, mut membership) = position_of(self.app.position()?)?;
        let mut commands = Vec::new();
        let mut responders = Vec::new();
        let mut last = None;
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let log_id = entry.log_id();
            match &entry.payload {
                EntryPayload::Normal(command) => {
                    commands.push((log_id.index(), command.clone()));
                    responders.push((responder, true));
                }
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(log_id), m.clone());
                    responders.push((responder, false));
                }
                EntryPayload::Blank => responders.push((responder, false)),
            }
            last = Some(log_id);
        }
        if last.is_none() {
            return Ok(());
        }
        let position = encode("applied position", &(last, membership))?;
        let mut answers = self.app.apply(ApplyBatch { commands, position }).await?.into_iter();
        for (responder, has_command) in responders {
            let answer = if has_command { answers.next().unwrap_or_default() } else { Response::default() };
            if let Some(r) = responder {
                r.send(answer);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        let position = encode("applied position", &(meta.last_log_id, meta.last_membership.clone()))?;
        let data = SnapshotData { position, data: snapshot.data };
        self.app.restore(data.clone()).await?;
        self.remember(meta.clone(), data);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::alias::SnapshotOf<Types, SnapshotData>>, io::Error> {
        let current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        Ok(current.map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}
