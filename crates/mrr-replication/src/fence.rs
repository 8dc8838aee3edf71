//! Fences a dead incarnation of a region off: when a region asks where it stands before
//! installing a snapshot (its data directory was wiped), nothing its earlier process sent here
//! may be applied afterwards — a change of its streams applied after the answer would put this
//! region ahead of the position the asker continues from, and the asker would number a new
//! write like it. So the answer waits for a fence: the streams the region's earlier process
//! opened here stop handing changes to the writer (what they queued is dropped), and the writer
//! has committed everything handed to it before.
//!
//! The check and the hand-off happen under one lock, so no session can check before the fence
//! and hand off after it. Not here: the sessions themselves (`inbound`) and the question
//! (`donor`).

use std::collections::BTreeMap;
use std::sync::Arc;

use mrr_core::{Change, RegionName};
use mrr_writer::{Queued, RemoteOutcome, WriteError, Writer};
use tokio::sync::Mutex;

/// Per region, how many times it was fenced off.
#[derive(Clone, Debug, Default)]
pub(crate) struct Fences {
    generations: Arc<Mutex<BTreeMap<RegionName, u64>>>,
}

/// Why a session's changes were not handed to the writer.
#[derive(Debug)]
pub(crate) enum Fenced {
    /// The region asked where it stands since the session started.
    Off,
    Writer(WriteError),
}

impl Fences {
    /// The generation a session from `peer` starting now belongs to.
    pub async fn generation(&self, peer: &RegionName) -> u64 {
        self.generations.lock().await.get(peer).copied().unwrap_or(0)
    }

    /// Hands `changes` of a session of `generation` to the writer, unless `peer` was fenced
    /// off since; waits for the commit outside the lock.
    pub async fn apply(
        &self,
        writer: &Writer,
        peer: &RegionName,
        generation: u64,
        changes: Vec<Change>,
    ) -> Result<RemoteOutcome, Fenced> {
        let queued: Queued<RemoteOutcome> = {
            let generations = self.generations.lock().await;
            if generations.get(peer).copied().unwrap_or(0) != generation {
                return Err(Fenced::Off);
            }
            writer.enqueue_remote(changes).await.map_err(Fenced::Writer)?
        };
        queued.outcome().await.map_err(Fenced::Writer)
    }

    /// Fences `peer`'s earlier sessions off and waits until the writer has committed
    /// everything they handed it.
    pub async fn fence(&self, writer: &Writer, peer: &RegionName) -> Result<(), WriteError> {
        let flush = {
            let mut generations = self.generations.lock().await;
            *generations.entry(peer.clone()).or_default() += 1;
            // Behind everything handed to the writer before the fence.
            writer.enqueue_remote(Vec::new()).await?
        };
        flush.outcome().await.map(|_| ())
    }
}
