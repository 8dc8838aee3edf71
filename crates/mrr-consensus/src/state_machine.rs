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
    /// the position are applied (readable), together; they need not be durable yet, as long
    /// as a crash takes both back together: a restart resumes from the position that reached
    /// the disk, and the log, which is never purged past what is durable here, replays the rest.
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
    /// The position the application holds, read from it once and then kept here: every apply
    /// needs the membership it stands at, and asking the application each time costs a read
    /// of its store per batch. `None` until read (and again after a failed apply).
    applied: Arc<std::sync::Mutex<Option<Position>>>,
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
        Self { app, current: Arc::default(), applied: Arc::default() }
    }

    fn applied(&self) -> io::Result<Position> {
        let mut cached = self.applied.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = &*cached {
            return Ok(p.clone());
        }
        let p = position_of(self.app.position()?)?;
        *cached = Some(p.clone());
        Ok(p)
    }

    fn set_applied(&self, position: Option<Position>) {
        *self.applied.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = position;
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
        self.applied()
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<Types>, io::Error>> + Unpin + Send,
    {
        let (_, mut membership) = self.applied()?;
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
        let position = encode("applied position", &(last, membership.clone()))?;
        let answers = self.app.apply(ApplyBatch { commands, position }).await;
        // A failed apply may have landed in part: read the position back next time.
        self.set_applied(answers.as_ref().ok().map(|_| (last, membership)));
        let mut answers = answers?.into_iter();
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
        self.set_applied(None);
        self.app.restore(data.clone()).await?;
        self.set_applied(Some((meta.last_log_id, meta.last_membership.clone())));
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use openraft::impls::leader_id_adv::LeaderId;

    use super::*;
    use crate::types::Entry;

    /// An application whose whole state is its position, counting how often it is asked for it.
    #[derive(Default)]
    struct Counting {
        position: Mutex<Option<Vec<u8>>>,
        asked: AtomicUsize,
    }

    impl Apply for Counting {
        fn apply(&self, batch: ApplyBatch) -> BoxFuture<io::Result<Vec<Response>>> {
            *self.position.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(batch.position);
            let answers = batch.commands.iter().map(|_| Response::default()).collect();
            Box::pin(async move { Ok(answers) })
        }

        fn position(&self) -> io::Result<Option<Vec<u8>>> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            Ok(self.position.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
        }

        fn snapshot(&self) -> BoxFuture<io::Result<SnapshotData>> {
            Box::pin(async { Err(io::Error::other("not in this test")) })
        }

        fn restore(&self, _snapshot: SnapshotData) -> BoxFuture<io::Result<()>> {
            Box::pin(async { Err(io::Error::other("not in this test")) })
        }
    }

    fn blank(index: u64) -> Entry {
        Entry::new_blank(LogId::new(LeaderId { term: 1, node_id: 7 }, index))
    }

    #[tokio::test]
    async fn the_application_is_asked_for_its_position_once() {
        let app = Arc::new(Counting::default());
        let mut sm = StateMachine::new(app.clone());
        assert_eq!(sm.applied_state().await.expect("position").0, None);
        for index in 1..=50 {
            let entries = futures_util::stream::iter([Ok((blank(index), None))]);
            sm.apply(entries).await.expect("apply");
        }
        let (last, _) = sm.applied_state().await.expect("position");
        assert_eq!(last.map(|l| l.index), Some(50));
        // Each read went through the application's store: with a memtable of many versions of
        // the position key, that cost grew with every commit.
        assert_eq!(app.asked.load(Ordering::Relaxed), 1, "read once, then kept");
        // A fresh state machine (a restart) reads what the application stored.
        let (last, _) = StateMachine::new(app.clone()).applied_state().await.expect("position");
        assert_eq!(last.map(|l| l.index), Some(50));
    }
}
