//! The node's voter in the strong tier's Raft group (`mrr-consensus`): started with the node,
//! its log in the node's fjall database (keyspaces `consensus_log`, `consensus_values`,
//! fsynced whatever `durability` says), its calls on their own connection to each peer
//! (`mrr_replication::consensus_link`), the `role: coordinator` region preferred as leader.
//! The leader is the coordinator every region reports (`GET /v1/cluster/coordinator`, status,
//! metrics, and the log line `Coordinator elected: <region> (term <n>)`).
//!
//! The group's state machine is the strong topics' records: each committed command (a
//! [`StrongCommand`], JSON) goes to the writer with the position after it, and the writer
//! evaluates it, applies it as ordinary changes of the reserved `strong` stream and commits
//! both in one batch ([`mrr_writer::StrongBatch`]), so the applied position never parts from
//! the records it describes. The outcome (postcard-encoded [`StrongOutcome`]) is the command's
//! response, which the proposing region's API turns into its answer.

use std::io;
use std::sync::Arc;

use metrics::{Key, Level, Metadata, Unit};
use mrr_consensus::{Apply, ApplyBatch, BoxFuture, Consensus, ConsensusConfig, Io, Members, Response, SnapshotData};
use mrr_core::strong::{StrongCommand, StrongOutcome};
use mrr_core::PhysicalClock;
use mrr_replication::consensus_link::{ConsensusLink, ConsensusSlot};
use mrr_replication::metrics::SharedRecorder;
use mrr_replication::Links;
use mrr_storage::log::LogStore;
use mrr_storage::Store;
use mrr_writer::{StrongBatch, Writer};

use crate::config::{peer_url, Config};

/// Where a node of the release before strong topics kept the position (the log's values).
const APPLIED_BEFORE_STRONG: &str = "applied_position";

fn io_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Decodes a command response.
pub fn outcome_of(response: &Response) -> Result<StrongOutcome, String> {
    postcard::from_bytes(&response.0).map_err(|e| format!("undecodable strong answer: {e}"))
}

/// The strong topics' state machine: the writer applies, the store keeps the position.
impl Apply for Storage {
    fn apply(&self, batch: ApplyBatch) -> BoxFuture<io::Result<Vec<Response>>> {
        let this = self.clone();
        Box::pin(async move {
            let commands = batch.commands.iter().map(|(_, c)| StrongCommand::decode(&c.0)).collect();
            let outcomes =
                this.writer.apply_strong(StrongBatch { commands, position: batch.position }).await.map_err(io_error)?;
            outcomes.iter().map(|o| postcard::to_stdvec(o).map(Response).map_err(io_error)).collect()
        })
    }

    fn position(&self) -> io::Result<Option<Vec<u8>>> {
        match self.store.recover().map_err(io_error)?.strong_position {
            Some(p) => Ok(Some(p)),
            // Only membership and leader entries were applied before strong topics existed.
            None => self.log.get_value(APPLIED_BEFORE_STRONG).map_err(io_error),
        }
    }

    fn snapshot(&self) -> BoxFuture<io::Result<SnapshotData>> {
        // The group never builds snapshots (`SnapshotPolicy::Never`) and keeps its whole log,
        // so no follower is ever sent one; a snapshot of the records is issue 18's.
        Box::pin(async { Err(io::Error::other("strong-state snapshots are not built: the log is kept whole")) })
    }

    fn restore(&self, _snapshot: SnapshotData) -> BoxFuture<io::Result<()>> {
        Box::pin(async { Err(io::Error::other("strong-state snapshots are not installed: the log is kept whole")) })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsensusStartError {
    #[error("consensus: {0}")]
    Start(#[from] mrr_consensus::StartError),
}

/// Where the voter keeps its log and applies what commits: also its state machine.
#[derive(Clone)]
pub struct Storage {
    pub log: Arc<dyn LogStore>,
    pub writer: Writer,
    pub store: Arc<dyn Store>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").finish_non_exhaustive()
    }
}

/// Starts the voter and fills `slot`, so the peer listener answers its peers' calls.
pub async fn start(
    config: &Config,
    link_config: mrr_replication::consensus_link::ConsensusLinkConfig,
    storage: Storage,
    slot: ConsensusSlot,
    links: Links,
    clock: Arc<dyn PhysicalClock>,
    recorder: &SharedRecorder,
) -> Result<Consensus, ConsensusStartError> {
    let regions: Vec<_> = config.regions.iter().map(|r| (r.name.clone(), peer_url(&r.endpoint))).collect();
    let members = Members::new(&regions)?;
    let link = ConsensusLink::new(link_config, links);
    let consensus_config = ConsensusConfig {
        cluster: config.cluster.clone(),
        local: config.region.clone(),
        members,
        preferred: config.coordinator().cloned(),
        timing: config.consensus.timing(config.links.as_ref()),
    };
    let log = storage.log.clone();
    let consensus =
        Consensus::start(consensus_config, log, Io::Blocking, Arc::new(storage), Arc::new(link), clock, rand::random())
            .await?;
    let _ = slot.set(consensus.clone());
    export_metrics(&consensus, recorder);
    Ok(consensus)
}

/// `mrr_consensus_term`, `mrr_consensus_is_leader`, `mrr_consensus_leader_changes_total` and
/// `mrr_consensus_quorum_ack_age_seconds`, following the status.
fn export_metrics(consensus: &Consensus, recorder: &SharedRecorder) {
    static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));
    let r = recorder.as_ref();
    r.describe_gauge("mrr_consensus_term".into(), Some(Unit::Count), "The strong tier's current Raft term.".into());
    r.describe_gauge(
        "mrr_consensus_is_leader".into(),
        Some(Unit::Count),
        "1 while this region is the coordinator (the Raft leader).".into(),
    );
    r.describe_counter(
        "mrr_consensus_leader_changes_total".into(),
        Some(Unit::Count),
        "Coordinator changes this node has seen since it started.".into(),
    );
    r.describe_gauge(
        "mrr_consensus_quorum_ack_age_seconds".into(),
        Some(Unit::Seconds),
        "At the coordinator: time since a quorum last acknowledged it (its lease).".into(),
    );
    let term = r.register_gauge(&Key::from_name("mrr_consensus_term"), &METADATA);
    let leader = r.register_gauge(&Key::from_name("mrr_consensus_is_leader"), &METADATA);
    let changes = r.register_counter(&Key::from_name("mrr_consensus_leader_changes_total"), &METADATA);
    let ack_age = r.register_gauge(&Key::from_name("mrr_consensus_quorum_ack_age_seconds"), &METADATA);
    let mut status = consensus.watch_status();
    tokio::spawn(async move {
        let mut counted = 0;
        loop {
            {
                let s = status.borrow_and_update();
                term.set(s.term as f64);
                leader.set(if s.is_leader { 1.0 } else { 0.0 });
                changes.increment(s.leader_changes.saturating_sub(counted));
                counted = s.leader_changes;
                ack_age.set(s.millis_since_quorum_ack.map_or(0.0, |ms| ms as f64 / 1_000.0));
            }
            if status.changed().await.is_err() {
                return;
            }
        }
    });
}
