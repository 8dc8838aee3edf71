//! The node's voter in the strong tier's Raft group (`mrr-consensus`): started with the node,
//! its log in the node's fjall database (keyspaces `consensus_log`, `consensus_values`,
//! fsynced whatever `durability` says), its calls on their own connection to each peer
//! (`mrr_replication::consensus_link`), the `role: coordinator` region preferred as leader.
//! The leader is the coordinator every region reports (`GET /v1/cluster/coordinator`, status,
//! metrics, and the log line `Coordinator elected: <region> (term <n>)`).
//!
//! What the group orders today is its own membership and leadership: strong topics and atomic
//! updates, whose commands the writer will apply, are not built yet, so a command reaching
//! this state machine is answered as unsupported (no node of this version proposes one).

use std::io;
use std::sync::Arc;

use metrics::{Key, Level, Metadata, Unit};
use mrr_consensus::{Apply, ApplyBatch, BoxFuture, Consensus, ConsensusConfig, Io, Members, Response, SnapshotData};
use mrr_core::PhysicalClock;
use mrr_replication::consensus_link::{ConsensusLink, ConsensusSlot};
use mrr_replication::metrics::SharedRecorder;
use mrr_replication::Links;
use mrr_storage::log::LogStore;

use crate::config::{peer_url, Config};

const APPLIED: &str = "applied_position";
/// What an unsupported command is answered.
pub const UNSUPPORTED: &[u8] = b"unsupported command";

/// The state machine of a group that orders only its own configuration: its applied position,
/// kept beside the log (the position is the whole state, so storing it is the atomic commit).
#[derive(Debug)]
struct GroupState {
    log: Arc<dyn LogStore>,
}

fn io_error(e: mrr_storage::StoreError) -> io::Error {
    io::Error::other(e.to_string())
}

impl GroupState {
    /// Stores `position` (fsynced), off the runtime's threads.
    async fn store(&self, position: Vec<u8>) -> io::Result<()> {
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || log.put_value(APPLIED, &position))
            .await
            .map_err(|e| io::Error::other(e.to_string()))?
            .map_err(io_error)
    }
}

impl Apply for GroupState {
    fn apply(&self, batch: ApplyBatch) -> BoxFuture<io::Result<Vec<Response>>> {
        let this = Self { log: self.log.clone() };
        Box::pin(async move {
            let answers = batch.commands.iter().map(|_| Response(UNSUPPORTED.to_vec())).collect();
            this.store(batch.position).await?;
            Ok(answers)
        })
    }

    fn position(&self) -> io::Result<Option<Vec<u8>>> {
        self.log.get_value(APPLIED).map_err(io_error)
    }

    fn snapshot(&self) -> BoxFuture<io::Result<SnapshotData>> {
        let position = self.position();
        Box::pin(async move { Ok(SnapshotData { position: position?.unwrap_or_default(), data: Vec::new() }) })
    }

    fn restore(&self, snapshot: SnapshotData) -> BoxFuture<io::Result<()>> {
        let this = Self { log: self.log.clone() };
        Box::pin(async move { this.store(snapshot.position).await })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsensusStartError {
    #[error("consensus: {0}")]
    Start(#[from] mrr_consensus::StartError),
    #[error("consensus: {0}")]
    Link(String),
}

/// Starts the voter and fills `slot`, so the peer listener answers its peers' calls.
pub async fn start(
    config: &Config,
    log: Arc<dyn LogStore>,
    slot: ConsensusSlot,
    links: Links,
    clock: Arc<dyn PhysicalClock>,
    recorder: &SharedRecorder,
) -> Result<Consensus, ConsensusStartError> {
    let regions: Vec<_> = config.regions.iter().map(|r| (r.name.clone(), peer_url(&r.endpoint))).collect();
    let members = Members::new(&regions)?;
    let peers = regions.iter().filter(|(r, _)| *r != config.region).cloned().collect();
    let link = ConsensusLink::new(
        mrr_replication::consensus_link::ConsensusLinkConfig {
            cluster: config.cluster.clone(),
            local: config.region.clone(),
            secret: config.secret.clone(),
            peers,
        },
        links,
    )
    .map_err(ConsensusStartError::Link)?;
    let consensus_config = ConsensusConfig {
        cluster: config.cluster.clone(),
        local: config.region.clone(),
        members,
        preferred: config.coordinator().cloned(),
        timing: config.consensus.timing(config.links.as_ref()),
    };
    let app = Arc::new(GroupState { log: log.clone() });
    let consensus =
        Consensus::start(consensus_config, log, Io::Blocking, app, Arc::new(link), clock, rand::random()).await?;
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
