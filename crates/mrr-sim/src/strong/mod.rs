//! The strong tier under simulation: the real `mrr-consensus` (openraft, with its seeded
//! runtime) for every region, over a simulated network, on a single-threaded tokio runtime
//! whose clock is paused — time advances only when every task waits, so a seed replays the
//! same run. Clients in every region write, compare-and-set and read registers at `strong`
//! while the coordinator is killed and restarted and regions are cut off; the checks are the
//! Raft and client guarantees the issue names:
//!
//! - election safety: a leader is openraft's (term, node id), and the leader each node has
//!   committed to never goes back, across restarts (every node sampled every few ms);
//! - every key's history of acknowledged operations is linearizable ([`linearizable`]), which
//!   also means no acknowledged write is lost (final reads in every region are part of it);
//! - after the heal, a leader is elected and strong writes succeed again.
//!
//! It also measures failover: from a leader's death to a new leader known in the other regions.

mod app;
pub mod linearizable;
mod net;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mrr_consensus::{Command, Consensus, ConsensusConfig, Io, Members, NodeId, Timing};
use mrr_core::{PhysicalClock, RegionName};
use mrr_storage::log::MemLog;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use app::{Outcome, Proposal, RegisterOp, Registers};
use linearizable::{Kind, Op};
use net::{NetState, SimNet};

use crate::Violation;

#[derive(Clone, Debug)]
pub struct StrongConfig {
    pub regions: usize,
    pub clients_per_region: usize,
    pub ops_per_client: usize,
    pub keys: u8,
    /// Fault episodes (leader kills, node kills, partitions) in the fault phase.
    pub faults: usize,
    pub fault_phase_ms: u64,
    pub heal_deadline_ms: u64,
    pub jitter_per_mille: u64,
    pub loss_per_mille: u32,
}

impl Default for StrongConfig {
    fn default() -> Self {
        Self {
            regions: 3,
            clients_per_region: 2,
            ops_per_client: 25,
            keys: 3,
            faults: 3,
            fault_phase_ms: 20_000,
            heal_deadline_ms: 30_000,
            jitter_per_mille: 200,
            loss_per_mille: 10,
        }
    }
}

impl StrongConfig {
    /// The `mrr-sim --strong` flags that run exactly this configuration.
    pub fn flags(&self) -> String {
        format!(
            "--strong --regions {} --strong-clients {} --strong-ops {} --faults {} --phase-ms {}",
            self.regions, self.clients_per_region, self.ops_per_client, self.faults, self.fault_phase_ms
        )
    }
}

#[derive(Clone, Debug, Default)]
pub struct StrongReport {
    pub seed: u64,
    pub ops_acknowledged: usize,
    pub ops_unknown: usize,
    pub leader_kills: usize,
    /// Per leader kill: simulated ms until the other regions knew a new leader.
    pub failovers_ms: Vec<u64>,
    pub messages: u64,
    /// Pipes opened for pipelined appends (one per leader and follower, again after a break).
    pub pipes: u64,
    /// The distinct leaders (term, node) seen.
    pub leaders_seen: usize,
    /// Applies that kills took back before they reached the disk, replayed from the log.
    pub applies_replayed: usize,
}

/// `mrr dev`'s one-way delays between its three regions (ms), and 20-120 ms for the others.
fn delays(n: usize, rng: &mut StdRng) -> BTreeMap<(usize, usize), u64> {
    let dev = [((0, 1), 55), ((0, 2), 75), ((1, 2), 115)];
    let mut out = BTreeMap::new();
    for a in 0..n {
        for b in (a + 1)..n {
            let d =
                dev.iter().find(|(p, _)| *p == (a, b)).map(|(_, d)| *d).unwrap_or_else(|| rng.random_range(20..=120));
            out.insert((a, b), d);
            out.insert((b, a), d);
        }
    }
    out
}

/// The simulated clock, for `since_ms`: milliseconds of tokio's paused time.
#[derive(Debug)]
struct SimClock(tokio::time::Instant);

impl PhysicalClock for SimClock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

struct Region {
    name: RegionName,
    id: NodeId,
    log: Arc<MemLog>,
    app: Registers,
    node: Option<Consensus>,
}

struct World {
    seed: u64,
    cfg: StrongConfig,
    config: ConsensusConfig,
    net: SimNet,
    regions: Vec<Region>,
    clock: Arc<SimClock>,
    starts: u64,
}

impl World {
    async fn start(&mut self, i: usize) -> Result<(), String> {
        let r = &mut self.regions[i];
        if r.node.is_some() {
            return Ok(());
        }
        self.starts += 1;
        let config = ConsensusConfig { local: r.name.clone(), ..self.config.clone() };
        let node = Consensus::start(
            config,
            r.log.clone(),
            Io::Inline,
            Arc::new(r.app.clone()),
            self.net.endpoint(r.id),
            self.clock.clone(),
            self.seed ^ (self.starts << 32),
        )
        .await
        .map_err(|e| e.to_string())?;
        self.net.with(|s| s.up.insert(r.id, node.clone()));
        r.node = Some(node);
        Ok(())
    }

    /// Kills region `i`'s node; returns how many of its applies the kill took back.
    async fn kill(&mut self, i: usize) -> usize {
        let r = &mut self.regions[i];
        let Some(node) = r.node.take() else { return 0 };
        self.net.with(|s| s.up.remove(&r.id));
        node.shutdown().await;
        r.app.power_loss()
    }

    fn leader(&self) -> Option<usize> {
        self.regions.iter().position(|r| r.node.as_ref().is_some_and(|n| n.status().is_leader))
    }
}

type History = Arc<Mutex<BTreeMap<u8, Vec<Op>>>>;

/// Calls `op` until it succeeds or `deadline` passes (then the last error), as a client would.
async fn retry_until<T, F, Fut>(deadline: tokio::time::Instant, mut op: F) -> Result<T, mrr_consensus::ConsensusError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, mrr_consensus::ConsensusError>>,
{
    let pause = Duration::from_millis(100);
    let attempts = async {
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if tokio::time::Instant::now() + pause >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(pause).await,
            }
        }
    };
    tokio::time::timeout_at(deadline, attempts).await.unwrap_or_else(|_| {
        Err(mrr_consensus::ConsensusError::Unavailable { waited_ms: 0, detail: "past the heal deadline".into() })
    })
}

fn now_ms(start: tokio::time::Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Runs one seed of the strong tier.
pub fn run_strong(seed: u64, cfg: &StrongConfig) -> Result<StrongReport, Violation> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => return Err(violation(seed, "simulator", 0, e.to_string())),
    };
    rt.block_on(run_in(seed, cfg.clone()))
}

fn violation(seed: u64, invariant: &'static str, at_ms: u64, detail: String) -> Violation {
    Violation { seed, invariant, at_ms, detail }
}

/// The regions, started (the preferred one first: it forms the group), at `start`.
async fn build_world(seed: u64, cfg: &StrongConfig, start: tokio::time::Instant) -> Result<World, Violation> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7374_726f_6e67);
    let names: Vec<RegionName> =
        (0..cfg.regions).map(|i| RegionName::new(format!("r{i}")).unwrap_or_else(|e| unreachable!("{e}"))).collect();
    let members: Vec<(RegionName, String)> = names.iter().map(|n| (n.clone(), format!("sim://{n}"))).collect();
    let members = Members::new(&members).map_err(|e| violation(seed, "simulator", 0, e.to_string()))?;
    let ids: Vec<NodeId> = names.iter().map(mrr_consensus::node_id).collect();
    let delay_ms = delays(cfg.regions, &mut rng).into_iter().map(|((a, b), d)| ((ids[a], ids[b]), d)).collect();
    let net = SimNet::new(NetState {
        rng: StdRng::seed_from_u64(seed ^ 0x006e_6574),
        delay_ms,
        jitter_per_mille: cfg.jitter_per_mille,
        loss_per_mille: cfg.loss_per_mille,
        cut: Default::default(),
        up: Default::default(),
        messages: 0,
        pipes: 0,
    });
    // The largest round trip between two regions, as `mrr dev` writes it into `consensus.rtt_ms`.
    let rtt_ms = 2 * net.with(|s| s.delay_ms.values().copied().max().unwrap_or(0));
    let config = ConsensusConfig {
        cluster: "sim".into(),
        local: names[0].clone(),
        members,
        preferred: Some(names[0].clone()),
        timing: Timing { return_after_ms: 3_000, request_timeout_ms: 5_000, ..Timing::from_rtt(rtt_ms) },
    };
    let regions = names
        .iter()
        .zip(&ids)
        .map(|(name, id)| Region {
            name: name.clone(),
            id: *id,
            log: Arc::new(MemLog::new()),
            app: Registers::default(),
            node: None,
        })
        .collect();
    let mut world = World { seed, cfg: cfg.clone(), config, net, regions, clock: Arc::new(SimClock(start)), starts: 0 };
    for i in 0..cfg.regions {
        world.start(i).await.map_err(|e| violation(seed, "simulator", now_ms(start), e))?;
    }
    Ok(world)
}

async fn run_in(seed: u64, cfg: StrongConfig) -> Result<StrongReport, Violation> {
    let start = tokio::time::Instant::now();
    let world = Arc::new(tokio::sync::Mutex::new(build_world(seed, &cfg, start).await?));
    let history: History = Arc::default();
    let leaders: Arc<Mutex<BTreeMap<(u64, NodeId), ()>>> = Arc::default();
    let broken: Arc<Mutex<Option<Violation>>> = Arc::default();

    // Election safety, as openraft's leader ids state it: a leader is (term, node id), and the
    // leader a node has committed to never goes back, across restarts too (the vote is on
    // disk); sampled from every live node.
    let sampler = {
        let (world, leaders, broken) = (world.clone(), leaders.clone(), broken.clone());
        tokio::spawn(async move {
            let mut last: BTreeMap<NodeId, (u64, NodeId)> = BTreeMap::new();
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let w = world.lock().await;
                for r in &w.regions {
                    let Some(n) = &r.node else { continue };
                    let Some(vote) = n.status().committed_vote else { continue };
                    leaders.lock().unwrap_or_else(PoisonError::into_inner).insert(vote, ());
                    let before = *last.entry(r.id).or_insert(vote);
                    if vote < before {
                        let name = |id| w.config.members.name(id).map(ToString::to_string).unwrap_or_default();
                        let detail = format!(
                            "{}'s committed leader went back from {} (term {}) to {} (term {})",
                            r.name,
                            name(before.1),
                            before.0,
                            name(vote.1),
                            vote.0
                        );
                        broken.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(violation(
                            seed,
                            "leader_ids_never_go_back",
                            now_ms(start),
                            detail,
                        ));
                    }
                    last.insert(r.id, vote);
                }
            }
        })
    };

    // Clients.
    let mut clients = Vec::new();
    for c in 0..cfg.regions * cfg.clients_per_region {
        let (world, history) = (world.clone(), history.clone());
        let region = c % cfg.regions;
        let mut rng = StdRng::seed_from_u64(seed ^ (0x636c_0000 + c as u64));
        let (ops, keys) = (cfg.ops_per_client, cfg.keys);
        clients.push(tokio::spawn(async move {
            let mut counter = 0u64;
            let mut last_seen: BTreeMap<u8, u64> = BTreeMap::new();
            for _ in 0..ops {
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
                let node = {
                    let w = world.lock().await;
                    w.regions[region].node.clone().map(|n| (n, w.regions[region].app.clone()))
                };
                let Some((node, registers)) = node else { continue };
                let key = rng.random_range(0..keys);
                counter += 1;
                let invoke_ms = now_ms(start);
                let choice = rng.random_range(0..3u8);
                let kind_and_return = if choice == 0 {
                    let life = registers.life();
                    match node.read_barrier().await.ok().and_then(|_| registers.value_in_life(key, life)) {
                        Some(v) => {
                            last_seen.insert(key, v);
                            Some((Kind::Read(v), Some(now_ms(start))))
                        }
                        None => None,
                    }
                } else {
                    let value = (c as u64 + 1) * 1_000_000 + counter;
                    let op = if choice == 1 {
                        RegisterOp::Write { key, value }
                    } else {
                        RegisterOp::Cas { key, expect: last_seen.get(&key).copied().unwrap_or(0), new: value }
                    };
                    let request_id = (c as u64) << 32 | counter;
                    let proposal = Proposal { request_id, op };
                    let answer = node.propose(Command(app::encode(&proposal))).await;
                    let outcome = answer.ok().and_then(|(_, r)| postcard::from_bytes::<Outcome>(&r.0).ok());
                    let returned = outcome.map(|_| now_ms(start));
                    let kind = match op {
                        RegisterOp::Write { value, .. } => Kind::Write(value),
                        RegisterOp::Cas { expect, new, .. } => {
                            Kind::Cas { expect, new, ok: outcome.map(|o| o.applied) }
                        }
                    };
                    if let Some(o) = outcome {
                        last_seen.insert(key, if o.applied { value } else { o.before });
                    }
                    Some((kind, returned))
                };
                if let Some((kind, return_ms)) = kind_and_return {
                    history.lock().unwrap_or_else(PoisonError::into_inner).entry(key).or_default().push(Op {
                        client: c,
                        invoke_ms,
                        return_ms,
                        kind,
                    });
                }
            }
        }));
    }

    // Faults: kill the leader (and restart it), kill a follower, cut a region off.
    let mut report = StrongReport { seed, ..StrongReport::default() };
    let mut fault_rng = StdRng::seed_from_u64(seed ^ 0x6661_756c);
    let mut at = 0;
    for _ in 0..cfg.faults {
        at += fault_rng.random_range(1_000..=cfg.fault_phase_ms / cfg.faults.max(1) as u64);
        tokio::time::sleep_until(start + Duration::from_millis(at)).await;
        let kind = fault_rng.random_range(0..3u8);
        let mut w = world.lock().await;
        match kind {
            0 => {
                let Some(l) = w.leader() else { continue };
                report.applies_replayed += w.kill(l).await;
                report.leader_kills += 1;
                let killed = w.regions[l].id;
                drop(w);
                // Failover: until every other live region knows a leader other than the dead one.
                let t0 = tokio::time::Instant::now();
                let mut elected = false;
                while t0.elapsed() < Duration::from_millis(cfg.heal_deadline_ms) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let w = world.lock().await;
                    let views: Vec<_> =
                        w.regions.iter().filter_map(|r| r.node.as_ref()).map(|n| n.status().coordinator).collect();
                    let ids: Vec<_> = views.iter().map(|c| c.as_ref().map(mrr_consensus::node_id)).collect();
                    if !ids.is_empty() && ids.iter().all(|id| id.is_some() && *id != Some(killed) && *id == ids[0]) {
                        elected = true;
                        break;
                    }
                }
                if elected {
                    report.failovers_ms.push(u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX));
                }
                let down_ms = fault_rng.random_range(500..3_000);
                tokio::time::sleep(Duration::from_millis(down_ms)).await;
                let mut w = world.lock().await;
                w.start(l).await.map_err(|e| violation(seed, "simulator", now_ms(start), e))?;
            }
            1 => {
                let i = fault_rng.random_range(0..w.cfg.regions);
                report.applies_replayed += w.kill(i).await;
                drop(w);
                tokio::time::sleep(Duration::from_millis(fault_rng.random_range(500..3_000))).await;
                world.lock().await.start(i).await.map_err(|e| violation(seed, "simulator", now_ms(start), e))?;
            }
            _ => {
                let i = fault_rng.random_range(0..w.cfg.regions);
                let id = w.regions[i].id;
                let others: Vec<NodeId> = w.regions.iter().map(|r| r.id).filter(|o| *o != id).collect();
                w.net.with(|s| {
                    for o in &others {
                        s.cut.insert((id, *o));
                        s.cut.insert((*o, id));
                    }
                });
                drop(w);
                tokio::time::sleep(Duration::from_millis(fault_rng.random_range(1_000..4_000))).await;
                world.lock().await.net.with(|s| s.cut.clear());
            }
        }
        if let Some(v) = broken.lock().unwrap_or_else(PoisonError::into_inner).take() {
            return Err(v);
        }
    }

    // The fault phase lasts its whole length, faults or not (a calm run checks for failovers
    // nobody caused).
    tokio::time::sleep_until(start + Duration::from_millis(cfg.fault_phase_ms)).await;
    if let Some(v) = broken.lock().unwrap_or_else(PoisonError::into_inner).take() {
        return Err(v);
    }
    // Heal: every link mends, every region is up.
    {
        let mut w = world.lock().await;
        w.net.with(|s| s.cut.clear());
        for i in 0..cfg.regions {
            w.start(i).await.map_err(|e| violation(seed, "simulator", now_ms(start), e))?;
        }
    }
    for c in clients {
        let _ = c.await;
    }
    // Liveness: a strong write and a strong read in every region after the heal.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(cfg.heal_deadline_ms);
    for i in 0..cfg.regions {
        let (node, registers) = {
            let w = world.lock().await;
            (w.regions[i].node.clone(), w.regions[i].app.clone())
        };
        let Some(node) = node else { continue };
        let invoke_ms = now_ms(start);
        let request_id = u64::MAX - i as u64;
        let value = 9_000_000_000 + i as u64;
        let proposal = Proposal { request_id, op: RegisterOp::Write { key: 0, value } };
        // A client retries (with the same request id, so the write applies once) until the
        // bound: liveness is that it gets through, not that the first attempt does.
        let command = Command(app::encode(&proposal));
        match retry_until(deadline, || node.propose(command.clone())).await {
            Ok(_) => history.lock().unwrap_or_else(PoisonError::into_inner).entry(0).or_default().push(Op {
                client: usize::MAX - i,
                invoke_ms,
                return_ms: Some(now_ms(start)),
                kind: Kind::Write(value),
            }),
            other => {
                return Err(violation(
                    seed,
                    "strong_liveness",
                    now_ms(start),
                    format!("r{i} could not write after the heal: {other:?}"),
                ))
            }
        }
        for key in 0..cfg.keys {
            let invoke_ms = now_ms(start);
            match retry_until(deadline, || node.read_barrier()).await {
                Ok(_) => history.lock().unwrap_or_else(PoisonError::into_inner).entry(key).or_default().push(Op {
                    client: usize::MAX - i,
                    invoke_ms,
                    return_ms: Some(now_ms(start)),
                    kind: Kind::Read(registers.value(key)),
                }),
                Err(e) => {
                    return Err(violation(
                        seed,
                        "strong_liveness",
                        now_ms(start),
                        format!("r{i} could not read after the heal: {e}"),
                    ))
                }
            }
        }
    }
    sampler.abort();
    if let Some(v) = broken.lock().unwrap_or_else(PoisonError::into_inner).take() {
        return Err(v);
    }
    let history = history.lock().unwrap_or_else(PoisonError::into_inner).clone();
    for (key, ops) in &history {
        report.ops_acknowledged += ops.iter().filter(|o| o.return_ms.is_some()).count();
        report.ops_unknown += ops.iter().filter(|o| o.return_ms.is_none()).count();
        if let Err(detail) = linearizable::check(ops, 0) {
            return Err(violation(seed, "linearizable", now_ms(start), format!("key {key}: {detail}")));
        }
    }
    (report.messages, report.pipes) = world.lock().await.net.with(|s| (s.messages, s.pipes));
    report.leaders_seen = leaders.lock().unwrap_or_else(PoisonError::into_inner).len();
    let w = world.lock().await;
    for r in &w.regions {
        if let Some(n) = &r.node {
            n.shutdown().await;
        }
    }
    Ok(report)
}

/// How a region left alone answers strong operations, per scenario: the time until its write
/// and its read failed.
#[derive(Clone, Debug)]
pub struct QuorumLoss {
    pub write_failed_after_ms: u64,
    pub read_failed_after_ms: u64,
}

/// Two of three regions gone: first both followers (the leader is left without a quorum),
/// then, in a fresh group, the leader and one follower (a follower is left without a leader).
/// Strong operations in the region left must fail within the request bound — reads as
/// unavailable, writes as unavailable or (accepted before the leader's lease ran out) unknown —
/// never hang and never succeed.
pub fn quorum_loss(seed: u64, cfg: &StrongConfig) -> Result<Vec<QuorumLoss>, Violation> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build();
    let rt = rt.map_err(|e| violation(seed, "simulator", 0, e.to_string()))?;
    rt.block_on(async {
        let mut out = Vec::new();
        for keep in [0usize, 2] {
            let start = tokio::time::Instant::now();
            let mut world = build_world(seed, cfg, start).await?;
            let first = world.regions[0].node.clone();
            if let Some(n) = &first {
                let command = Command(app::encode(&Proposal { request_id: 1, op: RegisterOp::Write { key: 0, value: 1 } }));
                n.propose(command).await.map_err(|e| violation(seed, "strong_liveness", now_ms(start), e.to_string()))?;
            }
            for i in (0..cfg.regions).filter(|i| *i != keep) {
                world.kill(i).await;
            }
            let Some(node) = world.regions[keep].node.clone() else { continue };
            let bound_ms = world.config.timing.request_timeout_ms + world.config.timing.rpc_timeout_ms * 4;
            let t0 = tokio::time::Instant::now();
            let command = Command(app::encode(&Proposal { request_id: 2, op: RegisterOp::Write { key: 0, value: 2 } }));
            let written = node.propose(command).await;
            let write_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
            let t1 = tokio::time::Instant::now();
            let read = node.read_barrier().await;
            let read_ms = u64::try_from(t1.elapsed().as_millis()).unwrap_or(u64::MAX);
            let left = &world.regions[keep].name;
            match (&written, &read) {
                // A leader whose lease had not yet run out accepts the write and cannot commit
                // it: "unknown" (it commits if the regions come back), never success.
                (Err(_), Err(mrr_consensus::ConsensusError::Unavailable { .. }))
                    if write_ms <= bound_ms && read_ms <= bound_ms => {}
                _ => {
                    return Err(violation(
                        seed,
                        "quorum_loss",
                        now_ms(start),
                        format!("{left} alone: write {written:?} after {write_ms} ms, read {read:?} after {read_ms} ms (bound {bound_ms} ms)"),
                    ))
                }
            }
            out.push(QuorumLoss { write_failed_after_ms: write_ms, read_failed_after_ms: read_ms });
            if let Some(n) = &world.regions[keep].node {
                n.shutdown().await;
            }
        }
        Ok(out)
    })
}
