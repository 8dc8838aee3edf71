//! openraft's log storage over a [`LogStore`]: entries, the vote, the committed id and the
//! purge point, each on disk when the call returns (the [`LogStore`] fsyncs).
//!
//! Entries and values are postcard-encoded here; the store sees bytes. Not here: the state
//! machine (its applied position is kept with the data it describes, `state_machine.rs`).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use mrr_storage::log::LogStore;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::{Entry, LogId, Types, Vote};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";
/// Entries read in one call at most: a follower far behind is caught up in bounded reads.
const READ_ENTRIES_MAX: usize = 4_096;

/// How disk calls run: on a blocking thread (the node, where an fsync must not stall the
/// runtime's workers), or inline (the simulator's memory log, where a thread would break
/// determinism).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    Blocking,
    Inline,
}

#[derive(Clone, Debug)]
pub struct LogAdapter {
    log: Arc<dyn LogStore>,
    io: Io,
}

pub(crate) fn encode<T: Serialize>(what: &str, value: &T) -> io::Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| io::Error::other(format!("encoding {what}: {e}")))
}

pub(crate) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("decoding {what}: {e}")))
}

fn store_error(e: mrr_storage::StoreError) -> io::Error {
    io::Error::other(e.to_string())
}

impl LogAdapter {
    pub fn new(log: Arc<dyn LogStore>, io: Io) -> Self {
        Self { log, io }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn LogStore) -> Result<T, mrr_storage::StoreError> + Send + 'static,
    ) -> io::Result<T> {
        match self.io {
            Io::Inline => f(&*self.log).map_err(store_error),
            Io::Blocking => {
                let log = self.log.clone();
                tokio::task::spawn_blocking(move || f(&*log))
                    .await
                    .map_err(|e| io::Error::other(format!("log thread: {e}")))?
                    .map_err(store_error)
            }
        }
    }

    async fn value<T: DeserializeOwned + Send + 'static>(&self, name: &'static str) -> io::Result<Option<T>> {
        match self.run(move |log| log.get_value(name)).await? {
            None => Ok(None),
            Some(bytes) => decode(name, &bytes).map(Some),
        }
    }

    async fn put<T: Serialize>(&self, name: &'static str, value: &T) -> io::Result<()> {
        let bytes = encode(name, value)?;
        self.run(move |log| log.put_value(name, &bytes)).await
    }
}

impl RaftLogReader<Types> for LogAdapter {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let until = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        let raw = self.run(move |log| log.range(from, until, READ_ENTRIES_MAX)).await?;
        raw.iter().map(|(_, bytes)| decode("log entry", bytes)).collect()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.value(VOTE).await
    }
}

impl RaftLogStorage<Types> for LogAdapter {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<Types>, io::Error> {
        let purged: Option<LogId> = self.value(PURGED).await?;
        let last = match self.run(|log| log.last()).await? {
            Some((_, bytes)) => Some(decode::<Entry>("log entry", &bytes)?.log_id()),
            None => purged,
        };
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put(VOTE, vote).await
    }

    /// A hint (openraft needs no durable commit index: a restart that reads an older one
    /// learns the rest from the leader), so it costs no fsync on every commit.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let bytes = encode(COMMITTED, &committed)?;
        self.run(move |log| log.put_hint(COMMITTED, &bytes)).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.value::<Option<LogId>>(COMMITTED).await?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<Types>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let encoded =
            entries.into_iter().map(|e| Ok((e.index(), encode("log entry", &e)?))).collect::<io::Result<Vec<_>>>()?;
        // The store returns once the entries are on disk: readable and flushed at once.
        let res = self.run(move |log| log.append(&encoded)).await;
        match res {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let index = last_log_id.map(|id| id.index());
        self.run(move |log| log.truncate_after(index)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // The purge point first: a crash between the two leaves entries below it, which the
        // next purge removes; the other order could leave a log whose start nothing records.
        self.put(PURGED, &log_id).await?;
        let index = log_id.index();
        self.run(move |log| log.purge_through(index)).await
    }
}
