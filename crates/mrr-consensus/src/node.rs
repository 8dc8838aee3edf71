//! One region's voter: openraft wired to the log, the state machine and the transport, plus
//! what MRR adds around it — proposals and reads from any region (forwarded to the leader
//! internally), the preferred leader (`role: coordinator`) taking leadership back once it has
//! been healthy for a while, and the coordinator status every region reports.
//!
//! Timing is all openraft's (elections, leases, heartbeats); this module only chooses the
//! numbers ([`Timing`]). Not here: what commands do (the application's [`Apply`]), sockets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mrr_core::{PhysicalClock, RegionName};
use mrr_storage::log::LogStore;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{Raft, ReadPolicy, ServerState};
use tokio::sync::watch;

use crate::log_store::{Io, LogAdapter};
use crate::network::{Network, Refused, Reply, Request, Transport};
use crate::state_machine::{Apply, StateMachine};
use crate::types::{node_id, Command, Member, NodeId, Response, Runtime, Types};

/// The group's timers, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// The leader's heartbeat: also the bound openraft puts on a heartbeat's answer, so it
    /// must exceed the round trip to the leader's nearest follower (a quorum of three needs
    /// only that one).
    pub heartbeat_ms: u64,
    /// A follower that hears nothing for its lease (`election_max_ms`) plus a draw in
    /// `[election_min_ms, election_max_ms)` starts an election (after a pre-vote).
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Bound on an append or vote (longer than openraft's own when the path is slow).
    pub rpc_timeout_ms: u64,
    /// How long the preferred leader must be healthy and caught up before leadership moves
    /// back to it.
    pub return_after_ms: u64,
    /// Bound on a proposal or a read barrier, forwarding and waits included.
    pub request_timeout_ms: u64,
}

impl Timing {
    /// Timers for a cluster whose largest round trip between two regions is `rtt_ms`.
    ///
    /// Heartbeat 1.1× that, and at least [`Timing::ANSWER_MARGIN_MS`] above it: every follower hears from the
    /// leader at least that often, and the leader's lease, which needs the answer of one
    /// follower (its nearest, in a group of three) within the interval, keeps a margin even
    /// where every path has the largest round trip — the answer also waits for the follower's
    /// log flush and the transport, which a bare 10 % did not cover (measured: with all three
    /// paths at 100 ms, heartbeats at 110 ms timed out and the leader lost its lease). The farthest follower's answer may come after
    /// openraft stops waiting for it (openraft bounds a heartbeat's answer by the interval);
    /// that costs nothing but the answer, since the follower has heard the heartbeat. Election
    /// timeouts are 1.25× and 1.875× the heartbeat (openraft needs the minimum above 1.2×). A
    /// follower stands for election only after its lease (the maximum) plus a draw in
    /// `[min, max)`: 3.1–3.75 heartbeats of silence, so three heartbeats in a row must be lost
    /// before a false failover; then a pre-vote and a vote round trip.
    /// What an answer needs beyond the network round trip: the peer's log flush, the transport.
    pub const ANSWER_MARGIN_MS: u64 = 30;

    pub fn from_rtt(rtt_ms: u64) -> Self {
        let heartbeat_ms = (rtt_ms.saturating_mul(11) / 10).max(rtt_ms.saturating_add(Self::ANSWER_MARGIN_MS)).max(50);
        let election_min_ms = heartbeat_ms.saturating_mul(5) / 4;
        Self {
            heartbeat_ms,
            election_min_ms,
            election_max_ms: election_min_ms.saturating_mul(3) / 2,
            rpc_timeout_ms: heartbeat_ms.saturating_mul(2),
            return_after_ms: 5_000,
            request_timeout_ms: 10_000,
        }
    }
}

/// Errors building a node.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("regions {a} and {b} map to the same consensus node id; rename one")]
    IdCollision { a: RegionName, b: RegionName },
    #[error("{0} is not one of the cluster's regions")]
    NotAMember(RegionName),
    #[error("invalid consensus timing: {0}")]
    Config(String),
    #[error("consensus storage: {0}")]
    Storage(String),
}

/// Why a proposal or a read barrier did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsensusError {
    /// No leader with a quorum could be reached within the bound: with most regions gone,
    /// strong operations stop rather than answer wrongly.
    #[error("no quorum of regions reachable within {waited_ms} ms ({detail})")]
    Unavailable { waited_ms: u64, detail: String },
    /// The proposal may or may not have committed (the leader changed under it).
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

/// The cluster's members, by node id.
#[derive(Clone, Debug)]
pub struct Members {
    by_id: BTreeMap<NodeId, Member>,
    names: BTreeMap<NodeId, RegionName>,
}

impl Members {
    pub fn new(regions: &[(RegionName, String)]) -> Result<Self, StartError> {
        let mut by_id = BTreeMap::new();
        let mut names: BTreeMap<NodeId, RegionName> = BTreeMap::new();
        for (region, addr) in regions {
            let id = node_id(region);
            if let Some(other) = names.get(&id) {
                if other != region {
                    return Err(StartError::IdCollision { a: other.clone(), b: region.clone() });
                }
            }
            names.insert(id, region.clone());
            by_id.insert(id, Member { region: region.to_string(), addr: addr.clone() });
        }
        Ok(Self { by_id, names })
    }

    pub fn name(&self, id: NodeId) -> Option<&RegionName> {
        self.names.get(&id)
    }
}

#[derive(Clone, Debug)]
pub struct ConsensusConfig {
    pub cluster: String,
    pub local: RegionName,
    pub members: Members,
    /// `role: coordinator`: it bootstraps the group and is led back to after a failover.
    pub preferred: Option<RegionName>,
    pub timing: Timing,
}

/// What every region reports about the coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorStatus {
    pub coordinator: Option<RegionName>,
    pub term: u64,
    pub preferred: Option<RegionName>,
    /// When this region learned of the current coordinator (its clock).
    pub since_ms: Option<u64>,
    /// At the leader: how long since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// Leader changes this node has seen since it started.
    pub leader_changes: u64,
    /// The last log index this node applied.
    pub applied_index: Option<u64>,
    pub is_leader: bool,
    /// This node's committed vote, `(term, leader)`: a leader elected by a quorum. Leaders are
    /// ordered by this pair (openraft's advanced leader ids: two candidates of one term may
    /// both be elected, the higher id fencing the lower), so at every node it only grows;
    /// unlike `is_leader`, it never lags behind a step-down.
    pub committed_vote: Option<(u64, NodeId)>,
}

type RaftNode = Raft<Types, StateMachine>;

/// A region's voter. Cheap to clone.
#[derive(Clone)]
pub struct Consensus {
    raft: RaftNode,
    id: NodeId,
    config: Arc<ConsensusConfig>,
    network: Network,
    status: watch::Receiver<CoordinatorStatus>,
}

impl std::fmt::Debug for Consensus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consensus").field("local", &self.config.local).finish_non_exhaustive()
    }
}

fn fatal(e: impl std::fmt::Display) -> ConsensusError {
    ConsensusError::Unavailable { waited_ms: 0, detail: format!("consensus stopped: {e}") }
}

impl Consensus {
    /// Builds and starts the voter. `seed` draws its election timeouts (the OS's entropy on a
    /// node, the run's seed in the simulator).
    pub async fn start(
        config: ConsensusConfig,
        log: Arc<dyn LogStore>,
        io: Io,
        app: Arc<dyn Apply>,
        transport: Arc<dyn Transport>,
        clock: Arc<dyn PhysicalClock>,
        seed: u64,
    ) -> Result<Self, StartError> {
        let id = node_id(&config.local);
        if !config.members.by_id.contains_key(&id) {
            return Err(StartError::NotAMember(config.local.clone()));
        }
        let t = config.timing;
        let raft_config = openraft::Config {
            cluster_name: config.cluster.clone(),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: t.election_min_ms,
            election_timeout_max: t.election_max_ms,
            enable_pre_vote: Some(true),
            // Retention of the strong tier's log comes with snapshots of its state; until then
            // the log is kept whole, so a lagging or wiped region replays it.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            install_snapshot_timeout: t.rpc_timeout_ms.saturating_mul(20),
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let network = Network::new(transport, Duration::from_millis(t.rpc_timeout_ms));
        let log = LogAdapter::new(log, io);
        let sm = StateMachine::new(app);
        let raft = Runtime::scope(seed, RaftNode::new(id, Arc::new(raft_config), network.clone(), log, sm))
            .await
            .map_err(|e| StartError::Storage(e.to_string()))?;
        let config = Arc::new(config);
        let status = watch_status(&raft, config.clone(), clock);
        let node = Self { raft, id, config, network, status };
        if node.config.preferred.as_ref() == Some(&node.config.local) {
            node.bootstrap().await?;
        }
        node.spawn_return_to_preferred();
        Ok(node)
    }

    /// The preferred leader forms the group on its first start (openraft: on exactly one node).
    async fn bootstrap(&self) -> Result<(), StartError> {
        let initialized = self.raft.is_initialized().await.map_err(|e| StartError::Storage(e.to_string()))?;
        if initialized {
            return Ok(());
        }
        let members = self.config.members.by_id.clone();
        match self.raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(region = %self.config.local, "Formed the strong tier's consensus group");
                Ok(())
            }
            // Another start formed it already (a restart racing its own log): nothing to do.
            Err(RaftError::APIError(e)) => {
                tracing::debug!(error = %e, "consensus group already initialized");
                Ok(())
            }
            Err(e) => Err(StartError::Storage(e.to_string())),
        }
    }

    pub fn status(&self) -> CoordinatorStatus {
        self.status.borrow().clone()
    }

    /// Changes of [`Consensus::status`].
    pub fn watch_status(&self) -> watch::Receiver<CoordinatorStatus> {
        self.status.clone()
    }

    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(self.config.timing.request_timeout_ms)
    }

    /// One forward's bound: long enough for a commit across the slowest path, short enough that
    /// a lost message leaves time to try again.
    fn attempt_timeout(&self, deadline: tokio::time::Instant) -> Duration {
        let attempt = Duration::from_millis(self.config.timing.rpc_timeout_ms.saturating_mul(4));
        attempt.min(deadline.saturating_duration_since(tokio::time::Instant::now()))
    }

    fn unavailable(&self, started: tokio::time::Instant, detail: impl Into<String>) -> ConsensusError {
        let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        ConsensusError::Unavailable { waited_ms, detail: detail.into() }
    }

    /// Orders `command` through the group and returns its log index and response once it is
    /// committed by a quorum and applied here (so a local read sees it). Any region may call
    /// this: a follower forwards to the leader, again if a forward goes unanswered — so a
    /// command must be idempotent (the application dedups by a request id it carries).
    pub async fn propose(&self, command: Command) -> Result<(u64, Response), ConsensusError> {
        let started = tokio::time::Instant::now();
        let deadline = self.deadline();
        let mut last = String::from("no leader known");
        let mut maybe_committed = false;
        loop {
            if tokio::time::Instant::now() >= deadline {
                if maybe_committed {
                    return Err(ConsensusError::Unknown(format!(
                        "no answer within the bound ({last}); it may have committed"
                    )));
                }
                return Err(self.unavailable(started, last));
            }
            let leader = self.leader_within(deadline).await;
            let outcome = match leader {
                None => Err(Refused::NotLeader { leader: None }),
                Some(l) if l == self.id => self.propose_here(command.clone(), deadline).await,
                Some(l) => {
                    let attempt = self.attempt_timeout(deadline);
                    match self.network.call(l, &Request::Propose(command.clone()), attempt).await {
                        Ok(Reply::Propose(r)) => r,
                        Ok(_) => Err(Refused::Failed("answer of another kind to a proposal".into())),
                        // Lost on the way or unanswered: maybe committed. Sending it again is
                        // safe only because commands are idempotent (see `propose`).
                        Err(e) => {
                            maybe_committed = true;
                            Err(Refused::Failed(e.to_string()))
                        }
                    }
                }
            };
            match outcome {
                Ok((log_id, response)) => {
                    self.wait_applied(log_id.index(), deadline).await.map_err(|e| match e {
                        ConsensusError::Unavailable { detail, .. } => ConsensusError::Unknown(format!(
                            "committed at index {} but not yet applied here: {detail}",
                            log_id.index()
                        )),
                        other => other,
                    })?;
                    return Ok((log_id.index(), response));
                }
                Err(Refused::Unknown(detail)) => return Err(ConsensusError::Unknown(detail)),
                Err(r) => {
                    last = r.to_string();
                    self.pause_before_retry(deadline).await;
                }
            }
        }
    }

    /// At the leader: append, wait for commit and apply.
    async fn propose_here(
        &self,
        command: Command,
        deadline: tokio::time::Instant,
    ) -> Result<(crate::types::LogId, Response), Refused> {
        match tokio::time::timeout_at(deadline, self.raft.client_write(command)).await {
            Err(_) => Err(Refused::Unknown("not committed within the bound; it may still commit".into())),
            Ok(Ok(r)) => Ok((r.log_id, r.data)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(Refused::NotLeader { leader: f.leader_id })
            }
            Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)))) => {
                Err(Refused::Unknown(format!("the entry was discarded on a leader change ({f})")))
            }
            Ok(Err(e)) => Err(Refused::Failed(e.to_string())),
        }
    }

    /// Waits until a linearizable read may be served from this region's state: returns once
    /// this region has applied everything committed before the call (read-index at the leader,
    /// served from its lease when valid; a follower asks the leader for the index).
    pub async fn read_barrier(&self) -> Result<u64, ConsensusError> {
        if mrr_core::planted::active(mrr_core::planted::Bug::ReadWithoutReadIndex) {
            return Ok(self.status().applied_index.unwrap_or(0));
        }
        let started = tokio::time::Instant::now();
        let deadline = self.deadline();
        let mut last = String::from("no leader known");
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(self.unavailable(started, last));
            }
            let outcome = match self.leader_within(deadline).await {
                None => Err(Refused::NotLeader { leader: None }),
                Some(l) if l == self.id => self.read_index_here().await,
                Some(l) => match self.network.call(l, &Request::ReadIndex, self.attempt_timeout(deadline)).await {
                    Ok(Reply::ReadIndex(r)) => r,
                    Ok(_) => Err(Refused::Failed("answer of another kind to a read index".into())),
                    Err(e) => Err(Refused::Failed(e.to_string())),
                },
            };
            match outcome {
                Ok(index) => {
                    self.wait_applied(index, deadline).await?;
                    return Ok(index);
                }
                Err(r) => {
                    last = r.to_string();
                    self.pause_before_retry(deadline).await;
                }
            }
        }
    }

    /// At the leader: the index a read must wait for, confirmed by the lease (no round trip)
    /// or, when the lease has lapsed, by a quorum.
    async fn read_index_here(&self) -> Result<u64, Refused> {
        let refused = |e: RaftError<Types, LinearizableReadError<Types>>| match e {
            RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => {
                Refused::NotLeader { leader: f.leader_id }
            }
            RaftError::APIError(e) => Refused::NoQuorum(e.to_string()),
            e => Refused::Failed(e.to_string()),
        };
        match self.raft.get_read_linearizer(ReadPolicy::LeaseRead).await {
            Ok(l) => Ok(l.read_log_id().index()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(Refused::NotLeader { leader: f.leader_id })
            }
            Err(_) => match self.raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
                Ok(l) => Ok(l.read_log_id().index()),
                Err(e) => Err(refused(e)),
            },
        }
    }

    /// Waits until this region applied `index`, or the deadline.
    pub async fn wait_applied(&self, index: u64, deadline: tokio::time::Instant) -> Result<(), ConsensusError> {
        let started = tokio::time::Instant::now();
        let reached = |m: &openraft::RaftMetrics<Types>| m.last_applied.as_ref().is_some_and(|l| l.index() >= index);
        match self.wait_metrics(deadline, reached).await {
            Ok(_) => Ok(()),
            Err(openraft::metrics::WaitError::Timeout(..)) => {
                Err(self.unavailable(started, format!("index {index} not applied here")))
            }
            Err(e) => Err(fatal(e)),
        }
    }

    /// The leader this node knows of, waiting (until `deadline`) while there is none.
    async fn leader_within(&self, deadline: tokio::time::Instant) -> Option<NodeId> {
        self.wait_metrics(deadline, |m| m.current_leader.is_some()).await.ok().and_then(|m| m.current_leader)
    }

    /// openraft's own wait on its metrics, bounded by `deadline`.
    async fn wait_metrics(
        &self,
        deadline: tokio::time::Instant,
        until: impl Fn(&openraft::RaftMetrics<Types>) -> bool + Send,
    ) -> Result<openraft::RaftMetrics<Types>, openraft::metrics::WaitError> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.raft.wait(Some(left)).metrics(until, "consensus").await
    }

    /// Before trying again: a leader change is under way, give it a moment (within the bound).
    async fn pause_before_retry(&self, deadline: tokio::time::Instant) {
        let pause = Duration::from_millis(self.config.timing.heartbeat_ms / 2);
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(tokio::time::Instant::now()))).await;
    }

    /// Answers a peer's request (the transport's server side calls this).
    pub async fn handle(&self, request: &[u8]) -> Vec<u8> {
        let reply = match Request::decode(request) {
            Err(e) => {
                tracing::warn!(error = %e, "undecodable consensus request");
                Reply::Append(Err(format!("undecodable request: {e}")))
            }
            Ok(request) => self.answer(request).await,
        };
        reply.encode().unwrap_or_else(|e| {
            tracing::error!(error = %e, "could not encode a consensus reply");
            Vec::new()
        })
    }

    async fn answer(&self, request: Request) -> Reply {
        match request {
            Request::Append(r) => Reply::Append(self.raft.append_entries(r).await.map_err(|e| e.to_string())),
            Request::Vote(r) => Reply::Vote(self.raft.vote(r).await.map_err(|e| e.to_string())),
            Request::PreVote(r) => Reply::Vote(self.raft.pre_vote(r).await.map_err(|e| e.to_string())),
            Request::Snapshot { vote, meta, position, data } => {
                let snapshot = openraft::Snapshot { meta, snapshot: crate::SnapshotData { position, data } };
                Reply::Snapshot(self.raft.install_full_snapshot(vote, snapshot).await.map_err(|e| e.to_string()))
            }
            Request::TransferLeader(r) => {
                Reply::TransferLeader(self.raft.handle_transfer_leader(r).await.map_err(|e| e.to_string()))
            }
            Request::Propose(command) => Reply::Propose(self.propose_here(command, self.deadline()).await),
            Request::ReadIndex => Reply::ReadIndex(self.read_index_here().await),
        }
    }

    /// After a failover, leadership goes back to the preferred region once it has been caught
    /// up for `return_after_ms`; the transfer is openraft's (the old leader stops proposing,
    /// the preferred one elects itself at once).
    fn spawn_return_to_preferred(&self) {
        let Some(preferred) = self.config.preferred.clone() else { return };
        let preferred_id = node_id(&preferred);
        if preferred_id == self.id {
            return;
        }
        let node = self.clone();
        tokio::spawn(async move {
            let tick = Duration::from_millis(node.config.timing.heartbeat_ms);
            let hold = Duration::from_millis(node.config.timing.return_after_ms);
            let mut healthy_since: Option<tokio::time::Instant> = None;
            loop {
                tokio::time::sleep(tick).await;
                let caught_up = {
                    let m = node.raft.metrics();
                    let m = m.borrow_watched();
                    let matched = m.replication.as_ref().and_then(|r| r.get(&preferred_id).cloned().flatten());
                    m.state == ServerState::Leader && matched.is_some() && matched == m.last_applied
                };
                if !caught_up {
                    healthy_since = None;
                    continue;
                }
                let since = *healthy_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= hold {
                    tracing::info!(to = %preferred, "preferred coordinator healthy for {hold:?}: handing leadership back");
                    if let Err(e) = node.raft.trigger().transfer_leader(preferred_id).await {
                        tracing::warn!(error = %e, "leadership transfer failed");
                        return;
                    }
                    healthy_since = None;
                }
            }
        });
    }

    /// The group's members as its last membership entry has them: region and whether it
    /// votes, by node id.
    pub fn group(&self) -> BTreeMap<NodeId, (String, bool)> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        membership.nodes().map(|(id, n)| (*id, (n.region.clone(), voters.contains(id)))).collect()
    }

    /// At the leader, moves the group one step toward `wanted` (each region's peer address and
    /// whether it votes): first every wanted region is added as a learner, then the voters
    /// become the wanted voters that have caught up with the log (a learner far behind would
    /// only slow every commit down), then regions wanted nowhere are removed. Returns whether
    /// it changed anything; a follower changes nothing. Never leaves the group without a voter.
    pub async fn reconcile(&self, wanted: &BTreeMap<RegionName, (String, bool)>) -> Result<bool, String> {
        /// How far behind the leader's log a learner may be and still be made a voter.
        const PROMOTE_LAG_ENTRIES_MAX: u64 = 64;
        let (is_leader, matched, last) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            let matched: BTreeMap<NodeId, u64> = m
                .replication
                .as_ref()
                .map(|r| r.iter().map(|(id, l)| (*id, l.as_ref().map_or(0, |l| l.index()))).collect())
                .unwrap_or_default();
            (m.state == ServerState::Leader, matched, m.last_log_index.unwrap_or(0))
        };
        if !is_leader {
            return Ok(false);
        }
        let group = self.group();
        for (region, (addr, _)) in wanted {
            let id = node_id(region);
            if !group.contains_key(&id) {
                tracing::info!(%region, "adding region to the consensus group as a learner");
                let member = Member { region: region.to_string(), addr: addr.clone() };
                self.raft.add_learner(id, member, false).await.map_err(|e| e.to_string())?;
                return Ok(true);
            }
        }
        let caught_up =
            |id: &NodeId| *id == self.id || matched.get(id).is_some_and(|m| m + PROMOTE_LAG_ENTRIES_MAX >= last);
        let voters: std::collections::BTreeSet<NodeId> = wanted
            .iter()
            .filter(|(_, (_, votes))| *votes)
            .map(|(r, _)| node_id(r))
            .filter(|id| group.get(id).is_some_and(|(_, voter)| *voter) || caught_up(id))
            .collect();
        let current: std::collections::BTreeSet<NodeId> =
            group.iter().filter(|(_, (_, v))| *v).map(|(id, _)| *id).collect();
        if !voters.is_empty() && voters != current {
            tracing::info!(voters = ?voters, "changing the consensus group's voters");
            self.raft.change_membership(voters, false).await.map_err(|e| e.to_string())?;
            return Ok(true);
        }
        let unwanted: std::collections::BTreeSet<NodeId> = group
            .iter()
            .filter(|(id, (_, voter))| !voter && !wanted.keys().any(|r| node_id(r) == **id))
            .map(|(id, _)| *id)
            .collect();
        if !unwanted.is_empty() {
            tracing::info!(nodes = ?unwanted, "removing regions that left from the consensus group");
            self.raft
                .change_membership(openraft::ChangeMembers::RemoveNodes(unwanted), false)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(true);
        }
        Ok(false)
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "consensus shutdown");
        }
    }
}

/// Follows openraft's metrics into the coordinator status, logging each leader change.
fn watch_status(
    raft: &RaftNode,
    config: Arc<ConsensusConfig>,
    clock: Arc<dyn PhysicalClock>,
) -> watch::Receiver<CoordinatorStatus> {
    let mut metrics = raft.metrics();
    let initial = CoordinatorStatus {
        coordinator: None,
        term: 0,
        preferred: config.preferred.clone(),
        since_ms: None,
        millis_since_quorum_ack: None,
        leader_changes: 0,
        applied_index: None,
        is_leader: false,
        committed_vote: None,
    };
    let (tx, rx) = watch::channel(initial);
    tokio::spawn(async move {
        loop {
            let (leader, term, ack, applied, state, vote, named) = {
                let m = metrics.borrow_watched();
                // A region added since the start is named by the group's membership.
                let named = m.current_leader.and_then(|l| {
                    m.membership_config.membership().get_node(&l).and_then(|n| RegionName::new(n.region.clone()).ok())
                });
                let vote = m.vote.is_committed().then(|| (m.vote.leader_id().term, m.vote.leader_id().node_id));
                (
                    m.current_leader,
                    m.current_term,
                    m.last_quorum_acked
                        .as_ref()
                        .map(|t| u64::try_from(openraft::Instant::elapsed(&**t).as_millis()).unwrap_or(u64::MAX)),
                    m.last_applied.as_ref().map(|l| l.index()),
                    m.state,
                    vote,
                    named,
                )
            };
            let coordinator = named.or_else(|| leader.and_then(|l| config.members.name(l).cloned()));
            tx.send_modify(|s| {
                if s.coordinator != coordinator && coordinator.is_some() {
                    if let Some(c) = &coordinator {
                        tracing::info!("Coordinator elected: {c} (term {term})");
                    }
                    s.leader_changes += 1;
                    s.since_ms = Some(clock.now_ms());
                }
                s.coordinator = coordinator.clone();
                s.term = term;
                s.millis_since_quorum_ack = ack;
                s.applied_index = applied;
                s.is_leader = state == ServerState::Leader;
                s.committed_vote = vote;
            });
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
    rx
}
