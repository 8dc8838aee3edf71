//! The event loop: simulated time, network, disks and clocks around the real core.
//!
//! The glue here mirrors `mrr-replication`'s runtime (dial, handshake, pump, ack, heartbeat,
//! timeout, backoff) step for step, but every decision it makes is the shipped code's:
//! `GroupCommit` groups requests into commits and answers them, `Engine` admits and merges,
//! `DurableRule` says what may replicate, `OutboundSession` chooses what to send,
//! `InboundSession` groups what arrived into applies and decides the acks, `MemStore` stores.
//! What stays here is time: a writer queue per node whose commits take the disk's latency.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use mrr_core::provenance;
use mrr_core::session::{Freshness, InboundLimits, InboundSession, Next, OutboundLimits, OutboundSession, Tick};
use mrr_core::{Key, Metadata, PhysicalClock, RegionName, VersionVector};
use mrr_storage::Store;
use mrr_writer::{Answer, Built, DurableRule, Engine, GroupCommit, LocalOp, Work, WriteError};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::disk::SimDisk;
use crate::invariants::{self, AckedWrite, FinalState, Invariant};
use crate::net::{Body, Msg};
use crate::schedule::{FaultEvent, Schedule, WriteEvent};

mod anti_entropy;

/// Physical time at simulated time 0, so HLC timestamps look like real ones.
const EPOCH_MS: u64 = 1_700_000_000_000;
const TICK_MS: u64 = 100;
const TIMEOUT_MS: u64 = 1_000;

const BACKOFF_MIN_MS: u64 = 100;
const BACKOFF_MAX_MS: u64 = 2_000;
/// Under `buffered`, how often a node persists its journal.
const SYNC_MS: u64 = 50;
/// A commit's latency on a healthy disk; a slow disk (`FaultEvent::SlowDisk`) takes longer.
/// Requests that arrive meanwhile wait and go together in the next commit.
const COMMIT_MS: u64 = 2;
/// Changes in one inbound apply at most: small, so that the bound engages.
const APPLY_CHANGES_MAX: usize = 24;
/// After convergence, keep delivering stragglers (late duplicates) this long before the end.
const SETTLE_MS: u64 = 2_000;
const TOPIC: &str = "t";
/// The bounded field of [`Strategy::Escrow`].
pub const STOCK: &str = "stock";
/// Small, so that every move of a `custom` record with more than a few fold entries sends its
/// history ahead in pieces (`Op::History`).
const CARRIED_BYTES_MAX: usize = 256;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub regions: usize,
    pub writes: usize,
    pub keys: usize,
    /// Fault episodes in the fault phase.
    pub faults: usize,
    /// Failing-disk episodes: a read or a commit fails, and half the time the node restarts.
    pub disk_faults: usize,
    /// Clock steps beyond `max_skew_ms`, each undone within the fault phase.
    pub clock_steps: usize,
    /// Slow-disk episodes: commits take hundreds of milliseconds for a while.
    pub slow_disks: usize,
    /// Forging episodes: a region alters what it relays for a while.
    pub forgers: usize,
    /// Wiped data directories: a region dies, loses its disk, and comes back through a
    /// snapshot bootstrap.
    pub wipes: usize,
    /// Records a bad disk corrupts behind a region's writer (not under `placement`).
    pub corruptions: usize,
    /// Anti-entropy runs in the fault phase (one from every region follows the convergence).
    pub repairs: usize,
    pub fault_phase_ms: u64,
    /// How long a region that is away holds changelog truncation back (`retention: window`);
    /// past it, it is lagging: the others truncate without it, and one left behind every
    /// peer's log floor rejoins through a snapshot once its own writes have reached them all.
    pub retention_window_ms: Option<u64>,
    /// The run fails if regions have not converged this long after the heal.
    pub heal_deadline_ms: u64,
    pub max_skew_ms: u64,
    /// One-way delay per region pair is drawn from this range.
    pub delay_ms: (u64, u64),
    pub jitter_ms: u64,
    pub loss_per_mille: u32,
    pub duplicate_per_mille: u32,
    pub reorder_per_mille: u32,
    pub limits: OutboundLimits,
    /// `durability: buffered` (commits persisted every 50 ms; power loss takes the rest)
    /// instead of `fsync`.
    pub buffered: bool,
    /// The topic's conflict rule; the workload uses the operations it allows.
    pub strategy: Strategy,
    /// Whether the workload deletes (off for the exact counter check: a delete resets them).
    pub deletes: bool,
    /// The last region starts outside the membership (down, with an empty data directory)
    /// and is added during the fault phase (`FaultEvent::Join`; at the heal at the latest): the
    /// others take it into their stable point, and it bootstraps from a snapshot, as `mrr
    /// region add` does (`docs/architecture.md`, "Region membership"). Not with `placement`.
    pub join: bool,
    /// Whether writes name `__metadata.regions` and move records between placements. Every
    /// placement includes r0, so some region always holds every change's content (a
    /// concurrent move to a disjoint placement would drop what the other side wrote, by
    /// definition of placement); writes in a region outside the record's placement are
    /// refused, as a client would see them.
    pub placement: bool,
}

/// The simulated topic's conflict rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Whole-record last-writer-wins; writes are puts and deletes.
    #[default]
    Timestamp,
    /// Per-field merge: puts, patches, counter increments, set adds and removes, deletes.
    Merge,
    /// A deliberately non-commutative handler (it concatenates), run by the real Rhai sandbox:
    /// regions converge only if every one applies concurrent writes in the same order.
    Custom,
    /// A `merge` topic whose field `stock` is bounded (`min: 0`): restocks and sales by
    /// `incr`, most sales in r0, rights moving between regions on their own.
    Escrow,
}

impl std::fmt::Display for Strategy {
    /// As `--strategy` takes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Strategy::Timestamp => "timestamp",
            Strategy::Merge => "merge",
            Strategy::Custom => "custom",
            Strategy::Escrow => "escrow",
        })
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "timestamp" => Ok(Strategy::Timestamp),
            "merge" => Ok(Strategy::Merge),
            "custom" => Ok(Strategy::Custom),
            "escrow" => Ok(Strategy::Escrow),
            other => Err(format!("unknown strategy {other:?}: timestamp, merge, custom or escrow")),
        }
    }
}

/// `log` concatenates in the order the handler sees writes: any two regions that merged the
/// same concurrent writes in different orders end with different logs.
const CONCAT_HANDLER: &str =
    "fn resolve(current, incoming) { let m = incoming; m.log = current.log + incoming.log; m }";

/// The simulated topic's rule; with `placement` under `merge` and `custom` (where a record's
/// placement is fixed) the topic places its records in r0 and r1 (`topics.t.regions`).
fn policies(strategy: Strategy, placement: bool) -> std::sync::Arc<mrr_core::Policies> {
    let rule = match strategy {
        Strategy::Timestamp => mrr_core::Rule::Timestamp,
        Strategy::Merge | Strategy::Escrow => mrr_core::Rule::Merge,
        Strategy::Custom => {
            let handler = mrr_handler::RhaiHandler::compile("concat.rhai", CONCAT_HANDLER, Default::default())
                .unwrap_or_else(|e| unreachable!("a constant script compiles: {e}"));
            mrr_core::Rule::Custom(std::sync::Arc::new(handler))
        }
    };
    let mut defaults = mrr_core::PlacementDefaults::default();
    if placement && strategy != Strategy::Timestamp {
        defaults.topics.insert(TOPIC.to_owned(), vec!["r0".to_owned(), "r1".to_owned()]);
    }
    let mut bounded = BTreeMap::new();
    if strategy == Strategy::Escrow {
        bounded.insert(TOPIC.to_owned(), [(STOCK.to_owned(), 0)].into());
    }
    let policies = mrr_core::Policies::new(mrr_core::Rule::Timestamp, [(TOPIC.to_owned(), rule)].into());
    std::sync::Arc::new(policies.with_placement(defaults).with_bounded(bounded))
}

/// A region's writer, as the simulator runs every one (small history pieces).
/// It signs its checkpoints with the simulator's stand-in notary.
/// A region's stable point, with the run's retention window from `now_ms`.
fn stability(local: &RegionName, names: &[RegionName], cfg: &SimConfig, now_ms: u64) -> mrr_core::stability::Stability {
    let s = mrr_core::stability::Stability::new(local.clone(), names.iter().cloned(), VersionVector::new());
    match cfg.retention_window_ms {
        Some(away_ms_max) => s.with_window(
            mrr_core::stability::Window { away_ms_max, changelog_bytes_max: u64::MAX, silent_ms: TIMEOUT_MS },
            now_ms,
        ),
        None => s,
    }
}

/// What a collection pass may collect below, as the server's stable-point task asks it.
/// The names of the member regions (`members[i]`: whether region `i` is one).
fn named_members(names: &[RegionName], members: &[bool]) -> Vec<RegionName> {
    names.iter().zip(members).filter(|(_, m)| **m).map(|(n, _)| n.clone()).collect()
}

fn collect_of(stability: &mrr_core::stability::Stability) -> mrr_writer::Collect {
    mrr_writer::Collect { stable: stability.stable().clone(), truncate: stability.truncation_point().clone() }
}

fn writer(
    name: &RegionName,
    recovered: mrr_storage::RecoveredState,
    cfg: &SimConfig,
    policies: std::sync::Arc<mrr_core::Policies>,
) -> GroupCommit {
    let notary: std::sync::Arc<dyn mrr_core::provenance::Notary> =
        std::sync::Arc::new(crate::notary::SimNotary::new(name.clone()));
    let engine = Engine::new(name.clone(), recovered, cfg.max_skew_ms, policies)
        .with_carried_bytes_max(CARRIED_BYTES_MAX)
        .with_notary(Some(notary));
    GroupCommit::new(engine, mrr_writer::WriterConfig::default().dead_letters_max)
}

/// The operation a scheduled write performs under `strategy`. Deterministic in its inputs.
/// `replaces`: whether whole-record puts (which drop fields they lack, counters included) and
/// deletes are part of the workload.
fn workload_op(
    strategy: Strategy,
    replaces: bool,
    placements: &[Vec<String>],
    key: Key,
    kind: u32,
    n: u64,
) -> (LocalOp, Option<i64>) {
    use serde_json::json;
    // Writes that carry metadata pick a lane by their flags: streams then overtake each other.
    let flags = ["SYNC_PRIORITY=1", "BULK", "TIER_1"];
    // (`kind` is 0 under `timestamp`, whose schedules predate lanes: the write number varies it.)
    let pick = (u64::from(kind / 11) + n) % 3;
    // Most writes keep the placement and one in four names one (often a move).
    let regions = match placements.len() {
        0 => vec![],
        len if (n / 3 + u64::from(kind)) % 4 == 0 => {
            placements[((n / 7 + u64::from(kind / 3)) % len as u64) as usize].clone()
        }
        _ => vec![],
    };
    let metadata = Metadata { regions, sync_flags: vec![flags[pick as usize].to_owned()] };
    let put = |v: serde_json::Value| LocalOp::Put {
        key: key.clone(),
        value: v.to_string().into_bytes(),
        metadata: metadata.clone(),
    };
    match strategy {
        Strategy::Timestamp => (put(json!({ "w": n })), None),
        Strategy::Merge => match kind % 6 {
            0 if replaces => (put(json!({ "w": n, format!("f{}", kind / 6 % 3): kind % 5 })), None),
            0 | 1 => {
                let fields = json!({ format!("f{}", kind / 6 % 3): n }).to_string().into_bytes();
                (LocalOp::Patch { key, fields, metadata: (kind % 2 == 0).then_some(metadata) }, None)
            }
            2 | 3 => {
                let by = i64::from(kind / 6 % 7) - 3;
                (LocalOp::Ops { key, ops: vec![mrr_core::FieldOp::Incr { field: "c".into(), by }] }, Some(by))
            }
            4 => (
                LocalOp::Ops {
                    key,
                    ops: vec![mrr_core::FieldOp::Add { field: "s".into(), value: json!(kind / 6 % 4) }],
                },
                None,
            ),
            _ => (
                LocalOp::Ops {
                    key,
                    ops: vec![mrr_core::FieldOp::Remove { field: "s".into(), value: json!(kind / 6 % 4) }],
                },
                None,
            ),
        },
        Strategy::Custom => (put(json!({ "log": format!("{n}.{};", kind % 10) })), None),
        // One write in eight restocks; the rest sell one or two units.
        Strategy::Escrow => {
            let by = match kind % 8 {
                0 => 5 + i64::from(kind / 8 % 16),
                _ => -1 - i64::from(kind / 8 % 2),
            };
            (LocalOp::Ops { key, ops: vec![mrr_core::FieldOp::Incr { field: STOCK.into(), by }] }, Some(by))
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            regions: 3,
            writes: 200,
            keys: 8,
            faults: 6,
            disk_faults: 2,
            clock_steps: 1,
            slow_disks: 1,
            forgers: 1,
            wipes: 1,
            corruptions: 1,
            repairs: 3,
            fault_phase_ms: 10_000,
            retention_window_ms: None,
            heal_deadline_ms: 60_000,
            max_skew_ms: 200,
            delay_ms: (20, 120),
            jitter_ms: 10,
            loss_per_mille: 5,
            duplicate_per_mille: 10,
            reorder_per_mille: 10,
            // Small windows and batches so that the window, batching and pipelining all engage.
            limits: OutboundLimits {
                batch_changes_max: 8,
                inflight_changes_max: 32,
                // A window of a few changes, so the delay-based controller holds the lower lanes
                // back and urgent changes overtake them.
                window_bytes_min: 256,
                window_bytes_max: 4_096,
                ..OutboundLimits::default()
            },
            buffered: false,
            strategy: Strategy::Timestamp,
            deletes: true,
            placement: false,
            join: false,
        }
    }
}

impl SimConfig {
    /// The `mrr-sim` flags that run exactly this configuration: every setting the command line
    /// can set, whether or not it differs from the default, so a replay never depends on
    /// defaults that may have changed since.
    pub fn flags(&self) -> String {
        format!(
            "--regions {} --writes {} --keys {} --faults {} --disk-faults {} --clock-steps {} --slow-disks {} --forgers {} --wipes {} --corruptions {} --repairs {} --retention-window-ms {} --phase-ms {} --durability {} --strategy {}{}{}{}",
            self.regions,
            self.writes,
            self.keys,
            self.faults,
            self.disk_faults,
            self.clock_steps,
            self.slow_disks,
            self.forgers,
            self.wipes,
            self.corruptions,
            self.repairs,
            self.retention_window_ms.unwrap_or(0),
            self.fault_phase_ms,
            if self.buffered { "buffered" } else { "fsync" },
            self.strategy,
            if self.deletes { "" } else { " --no-deletes" },
            if self.placement { " --placement" } else { "" },
            if self.join { " --join" } else { "" },
        )
    }
}

/// A successful run.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub seed: u64,
    /// Simulated time from the heal to identical version vectors everywhere.
    pub converge_ms: u64,
    pub events: u64,
    pub acked_writes: usize,
    /// Acknowledged writes per lane, in [`mrr_core::Lane::ALL`] order.
    pub acked_per_lane: [usize; 3],
    /// Writes refused because the record is not placed in the region written to.
    pub refused_not_placed: usize,
    /// Moves refused because the region still lacked content of writes concurrent with an
    /// earlier move.
    pub refused_pending: usize,
    /// Transfers that arrived with content where they were asked for: writes concurrent with
    /// a move, completed in a region the move placed the record in.
    pub transfers_received: usize,
    /// Acknowledged writes that named a placement other than every region.
    pub acked_placed: usize,
    /// Requests and commits a failing disk refused (none of them applied anything).
    pub storage_errors: usize,
    /// Pieces of a `custom` move's history, sent ahead of the move, received with content.
    pub history_pieces_received: usize,
    /// Commits that carried more than one request (group commit engaged).
    pub grouped_commits: usize,
    /// Inbound applies that took more than one batch.
    pub grouped_applies: usize,
    /// Decrements of a bounded field refused for lack of rights where they were made.
    pub refused_rights: usize,
    /// Acknowledged decrements of a bounded field.
    pub acked_sales: usize,
    /// Refused sales sent on to a region known to hold the rights (keys of even index).
    pub forwarded_sales: usize,
    /// Changes that moved or asked for escrow rights (tending), committed where they were made.
    pub tendings: usize,
    /// Changelog entries erased because their record had left the region.
    pub changes_erased: usize,
    /// Changelog entries retention truncated below the stable point.
    pub changes_truncated: usize,
    /// Tombstones retention collected below the stable point.
    pub tombstones_collected: usize,
    /// Wiped regions that came back through a snapshot, the records those installed, and
    /// installs that broke and resumed after their last chunk.
    pub snapshots_installed: usize,
    pub snapshot_records: usize,
    pub snapshot_resumes: usize,
    /// Regions let go as lagging that rejoined through a snapshot.
    pub rejoins: usize,
    /// Regions added to the membership during the run (`SimConfig::join`).
    pub joins: usize,
    /// Records a bad disk corrupted, anti-entropy runs, and records they repaired.
    pub corruptions: usize,
    pub repair_runs: usize,
    pub records_repaired: usize,
}

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub seed: u64,
    pub invariant: &'static str,
    pub at_ms: u64,
    pub detail: String,
}

impl Violation {
    /// The simulator itself failed (a store error in the harness, not a broken property).
    fn simulator(seed: u64, at_ms: u64, error: impl std::fmt::Display) -> Self {
        Self { seed, invariant: "simulator", at_ms, detail: error.to_string() }
    }

    fn broken(seed: u64, at_ms: u64, invariant: &dyn Invariant, detail: String) -> Self {
        Self { seed, invariant: invariant.name(), at_ms, detail }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seed {}: {} violated at {} ms: {}", self.seed, self.invariant, self.at_ms, self.detail)
    }
}

#[derive(Debug)]
enum Event {
    Deliver(Msg),
    Tick(usize),
    Write(WriteEvent),
    Fault(FaultEvent),
    Sync(usize),
    /// A node's commit returned (`incarnation`: of the process that started it).
    Committed {
        node: usize,
        incarnation: u64,
    },
    Heal,
}

#[derive(Debug)]
enum Out {
    Down { retry_at: u64, backoff: u64 },
    Connecting { epoch: u64, since: u64, backoff: u64 },
    Up { epoch: u64, session: Box<OutboundSession>, last_heard: u64 },
}

#[derive(Debug)]
struct In {
    epoch: u64,
    session: InboundSession,
}

/// What to do with a request's answer.
#[derive(Debug)]
enum Then {
    /// A client write: tell the invariants what was acknowledged.
    Client { w: WriteEvent, incr: Option<i64> },
    /// An inbound apply: ack it on its stream. `queued_at`: when it reached the writer.
    Remote { from: usize, epoch: u64, freshness: Option<Freshness>, queued_at: u64 },
    /// A collection pass.
    Collect,
    /// A peer's states to join (anti-entropy).
    Repair,
}

/// A physical clock that reads one instant: the simulated node's clock when its writer ran.
struct ReadsAt(u64);

impl PhysicalClock for ReadsAt {
    fn now_ms(&self) -> u64 {
        self.0
    }
}

#[derive(Debug)]
struct Node {
    store: SimDisk,
    /// The stable point this region computes from its peers' acks.
    stability: mrr_core::stability::Stability,
    /// The writer; `None` while the process is down.
    writer: Option<GroupCommit>,
    /// Requests waiting for the writer.
    queue: VecDeque<(Work, Then)>,
    /// The group whose commit is in flight.
    committing: Option<(Built, Vec<Then>)>,
    /// How long a commit takes now.
    commit_ms: u64,
    /// Bumped when the process dies, so that a commit it started never returns to its successor.
    incarnation: u64,
    /// What is persisted; only this is replicated: the server's own rule.
    durable: DurableRule,
    /// What the last collection pass was given.
    collected: Option<mrr_writer::Collect>,
    clock_offset_ms: i64,
    /// A clock step on top of the offset (`FaultEvent::ClockStep`).
    clock_step_ms: i64,
    /// Alters what it relays ([`FaultEvent::Forge`]).
    forging: bool,
    out: Vec<Option<Out>>,
    inc: Vec<Option<In>>,
    /// Its data directory was lost: it comes back through a snapshot bootstrap.
    wiped: bool,
    /// Joined the membership (`SimConfig::join`) and never ran: it holds nothing of anyone.
    fresh: bool,
    /// A restart waits: it is wiped and not every peer is up to say where it stands.
    restart_pending: bool,
    /// The invariants were told what its wipe lost (once per wipe).
    wipe_told: bool,
    /// Per peer, its log floors as its sessions to this region last said.
    peer_floors: Vec<Option<VersionVector>>,
    /// Per peer, what its acks said it holds durably (since this process started).
    peer_durable: Vec<VersionVector>,
    /// Behind every peer's log floor of some stream: it takes no writes, waits until its own
    /// streams have reached every peer, and then rejoins through a snapshot.
    rejoining: bool,
}

struct World {
    seed: u64,
    cfg: SimConfig,
    now: u64,
    next_id: u64,
    queue: BTreeMap<(u64, u64), Event>,
    names: Vec<RegionName>,
    nodes: Vec<Node>,
    rng: StdRng,
    cut: BTreeSet<(usize, usize)>,
    base_delay: BTreeMap<(usize, usize), u64>,
    last_delivery: BTreeMap<(usize, usize), u64>,
    next_epoch: u64,
    writes_done: u64,
    invariants: Vec<Box<dyn Invariant>>,
    /// Which regions are members (`SimConfig::join`: the last one is not until it joins). A
    /// membership change commits in the strong tier's log; here every region takes it at once.
    members: Vec<bool>,
    healed_at: Option<u64>,
    converged_at: Option<u64>,
    events: u64,
    acked: usize,
    acked_per_lane: [usize; 3],
    /// The placements writes name (`SimConfig::placement`), each including r0.
    placements: Vec<Vec<String>>,
    /// Names what a region outside a record's placement keeps (the policies' sealer).
    sealer: mrr_core::Sealer,
    refused_not_placed: usize,
    refused_pending: usize,
    transfers_received: usize,
    acked_placed: usize,
    storage_errors: usize,
    history_pieces_received: usize,
    grouped_commits: usize,
    grouped_applies: usize,
    refused_rights: usize,
    acked_sales: usize,
    forwarded_sales: usize,
    tendings: usize,
    /// Changelog entries erased because their record left the region (`mrr_writer::Collect`).
    changes_erased: usize,
    changes_truncated: usize,
    tombstones_collected: usize,
    joins: usize,
    /// Snapshot bootstraps of wiped regions, the records they installed, and the installs
    /// that broke and resumed after their last chunk.
    snapshots_installed: usize,
    snapshot_records: usize,
    snapshot_resumes: usize,
    rejoins: usize,
    /// Keys a corruption touched (in any region), corruptions, runs and repairs.
    planted: BTreeSet<Key>,
    corruptions: usize,
    repair_runs: usize,
    repair_runs_failed: usize,
    records_repaired: usize,
    /// When the final anti-entropy runs went out (after the convergence).
    final_repairs_at: Option<u64>,
    /// A violation found where no `Step` returns (the pump).
    broken: Option<Violation>,
}

type Step = Result<(), Violation>;

impl Node {
    fn engine(&self) -> Option<&Engine> {
        self.writer.as_ref().map(GroupCommit::engine)
    }
}

/// Payload plus a fixed overhead per change stands in for the encoded size.
/// What a forging relay does to a change it relays: another value, or a marker that says the
/// record moved. Always changes what the change's leaf covers.
fn forge(change: &mut mrr_core::Change) -> bool {
    match &mut change.op {
        mrr_core::Op::Put { value } => *value = br#"{"forged":true}"#.to_vec(),
        _ => change.moves = !change.moves,
    }
    true
}

fn encoded_len(c: &mrr_core::Change) -> u64 {
    c.payload_len() as u64 + 64
}

/// Runs one seed. `keep` restricts the schedule's faults to those indices (for shrinking and
/// replay); `None` keeps them all.
pub fn run(seed: u64, cfg: &SimConfig, keep: Option<&BTreeSet<usize>>) -> Result<RunReport, Violation> {
    assert!((2..=8).contains(&cfg.regions), "2 to 8 regions");
    let full = Schedule::generate(seed, cfg);
    let schedule = match keep {
        Some(k) => full.keep_faults(k),
        None => full,
    };
    let mut world = World::new(seed, cfg.clone(), &schedule);
    world.run_to_end()?;
    let converge_ms = match (world.healed_at, world.converged_at) {
        (Some(h), Some(c)) => c.saturating_sub(h),
        _ => 0,
    };
    Ok(RunReport {
        seed,
        converge_ms,
        events: world.events,
        acked_writes: world.acked,
        acked_per_lane: world.acked_per_lane,
        refused_not_placed: world.refused_not_placed,
        refused_pending: world.refused_pending,
        transfers_received: world.transfers_received,
        acked_placed: world.acked_placed,
        storage_errors: world.storage_errors,
        history_pieces_received: world.history_pieces_received,
        grouped_commits: world.grouped_commits,
        grouped_applies: world.grouped_applies,
        refused_rights: world.refused_rights,
        acked_sales: world.acked_sales,
        forwarded_sales: world.forwarded_sales,
        tendings: world.tendings,
        changes_erased: world.changes_erased,
        changes_truncated: world.changes_truncated,
        tombstones_collected: world.tombstones_collected,
        joins: world.joins,
        snapshots_installed: world.snapshots_installed,
        snapshot_records: world.snapshot_records,
        snapshot_resumes: world.snapshot_resumes,
        rejoins: world.rejoins,
        corruptions: world.corruptions,
        repair_runs: world.repair_runs,
        records_repaired: world.records_repaired,
    })
}

/// Drops faults one at a time while the run still fails; returns the indices of the faults
/// that remain (each needed for the failure) and the violation they produce.
pub fn shrink(seed: u64, cfg: &SimConfig, violation: Violation) -> (BTreeSet<usize>, Violation) {
    let n = Schedule::generate(seed, cfg).faults.len();
    let mut keep: BTreeSet<usize> = (0..n).collect();
    let mut last = violation;
    for i in (0..n).rev() {
        keep.remove(&i);
        match run(seed, cfg, Some(&keep)) {
            Err(v) => last = v,
            Ok(_) => {
                keep.insert(i);
            }
        }
    }
    (keep, last)
}

impl World {
    fn new(seed: u64, cfg: SimConfig, schedule: &Schedule) -> Self {
        let n = cfg.regions;
        let names: Vec<RegionName> =
            (0..n).map(|i| RegionName::new(format!("r{i}")).unwrap_or_else(|e| unreachable!("{e}"))).collect();
        let mut rng = StdRng::seed_from_u64(seed ^ 0x006e_6574);
        let mut base_delay = BTreeMap::new();
        for a in 0..n {
            for b in (a + 1)..n {
                let d = rng.random_range(cfg.delay_ms.0..=cfg.delay_ms.1);
                base_delay.insert((a, b), d);
                base_delay.insert((b, a), d);
            }
        }
        let policies = policies(cfg.strategy, cfg.placement);
        let sealer = policies.sealer.clone();
        let members: Vec<bool> = (0..n).map(|i| !(cfg.join && i == n - 1)).collect();
        let member_names = named_members(&names, &members);
        let nodes = (0..n)
            .map(|i| Node {
                store: SimDisk::new(cfg.buffered),
                // A region outside the membership is not running yet: its data directory is
                // empty, and it bootstraps when it joins.
                writer: members[i].then(|| writer(&names[i], Default::default(), &cfg, policies.clone())),
                forging: false,
                stability: stability(&names[i], &member_names, &cfg, 0),
                queue: VecDeque::new(),
                committing: None,
                commit_ms: COMMIT_MS,
                incarnation: 0,
                durable: DurableRule::new(cfg.buffered, mrr_core::VersionVector::new()),
                collected: None,
                clock_offset_ms: 0,
                clock_step_ms: 0,
                out: (0..n).map(|j| (j != i).then_some(Out::Down { retry_at: 0, backoff: BACKOFF_MIN_MS })).collect(),
                inc: (0..n).map(|_| None).collect(),
                wiped: !members[i],
                fresh: !members[i],
                restart_pending: false,
                wipe_told: false,
                peer_floors: vec![None; n],
                peer_durable: vec![VersionVector::new(); n],
                rejoining: false,
            })
            .collect();
        let mut world = Self {
            seed,
            invariants: invariants::all(
                &names,
                &sealer,
                cfg.strategy == Strategy::Merge && !cfg.deletes,
                cfg.strategy == Strategy::Escrow,
                cfg.strategy == Strategy::Timestamp && mrr_writer::COLLECT_TOMBSTONES,
            ),
            cfg,
            now: 0,
            next_id: 0,
            queue: BTreeMap::new(),
            names,
            nodes,
            members,
            rng,
            cut: BTreeSet::new(),
            base_delay,
            last_delivery: BTreeMap::new(),
            next_epoch: 1,
            writes_done: 0,
            healed_at: None,
            converged_at: None,
            events: 0,
            acked: 0,
            acked_per_lane: [0; 3],
            placements: Vec::new(),
            sealer,
            refused_not_placed: 0,
            refused_pending: 0,
            transfers_received: 0,
            acked_placed: 0,
            storage_errors: 0,
            history_pieces_received: 0,
            grouped_commits: 0,
            grouped_applies: 0,
            refused_rights: 0,
            acked_sales: 0,
            forwarded_sales: 0,
            tendings: 0,
            changes_erased: 0,
            changes_truncated: 0,
            tombstones_collected: 0,
            joins: 0,
            snapshots_installed: 0,
            snapshot_records: 0,
            snapshot_resumes: 0,
            rejoins: 0,
            planted: BTreeSet::new(),
            corruptions: 0,
            repair_runs: 0,
            repair_runs_failed: 0,
            records_repaired: 0,
            final_repairs_at: None,
            broken: None,
        };
        if world.cfg.placement {
            let name = |i: usize| world.names[i].to_string();
            world.placements.push(vec!["*".to_owned()]);
            world.placements.push(vec![name(0)]);
            for i in 1..n {
                world.placements.push(vec![name(0), name(i)]);
            }
        }
        for i in 0..n {
            // Stagger ticks so nodes do not act in lockstep.
            let first = world.rng.random_range(0..TICK_MS);
            world.at(first, Event::Tick(i));
            if world.cfg.buffered {
                let first = world.rng.random_range(0..SYNC_MS);
                world.at(first, Event::Sync(i));
            }
        }
        for (at, f) in &schedule.faults {
            world.at(*at, Event::Fault(f.clone()));
        }
        for (at, w) in &schedule.writes {
            world.at(*at, Event::Write(w.clone()));
        }
        let heal = world.cfg.fault_phase_ms;
        world.at(heal, Event::Heal);
        world
    }

    fn at(&mut self, at: u64, event: Event) {
        self.queue.insert((at, self.next_id), event);
        self.next_id += 1;
    }

    fn violation(&self, invariant: &'static str, detail: String) -> Violation {
        Violation { seed: self.seed, invariant, at_ms: self.now, detail }
    }

    fn physical_ms(&self, node: usize) -> u64 {
        let n = &self.nodes[node];
        (EPOCH_MS + self.now).saturating_add_signed(n.clock_offset_ms.saturating_add(n.clock_step_ms))
    }

    fn run_to_end(&mut self) -> Step {
        while let Some(((at, _), event)) = self.queue.pop_first() {
            self.now = at;
            self.events += 1;
            match event {
                Event::Deliver(msg) => self.deliver(msg)?,
                Event::Tick(k) => self.tick(k)?,
                Event::Write(w) => self.client_write(w)?,
                Event::Fault(f) => self.fault(f)?,
                Event::Sync(k) => self.sync(k)?,
                Event::Committed { node, incarnation } => self.committed(node, incarnation)?,
                Event::Heal => self.heal()?,
            }
            if let Some(v) = self.broken.take() {
                return Err(v);
            }
            if let Some(healed) = self.healed_at {
                if self.converged_at.is_none() && self.converged() {
                    self.converged_at = Some(self.now);
                }
                match self.converged_at {
                    Some(c) if self.now >= c + SETTLE_MS => match self.final_repairs_at {
                        // One run from every region, then as long again for their joins.
                        None => {
                            self.final_repairs_at = Some(self.now);
                            for node in 0..self.nodes.len() {
                                self.repair_run(node)?;
                            }
                        }
                        Some(r) if self.now >= r + SETTLE_MS => return self.finish(),
                        Some(_) => {}
                    },
                    None if self.now > healed + self.cfg.heal_deadline_ms => {
                        let vvs: Vec<_> =
                            self.nodes.iter().filter_map(|n| n.engine().map(|e| e.applied().clone())).collect();
                        return Err(self.violation(
                            "convergence",
                            format!("not converged {} ms after the heal: {vvs:?}", self.cfg.heal_deadline_ms),
                        ));
                    }
                    _ => {}
                }
            }
        }
        Err(self.violation("simulator", "event queue ran dry".into()))
    }

    fn converged(&self) -> bool {
        let mut vvs = self.nodes.iter().map(|n| n.engine().map(Engine::applied));
        let Some(Some(first)) = vvs.next() else { return false };
        vvs.all(|v| v == Some(first))
    }

    /// Collection passes on an idle node until one erases nothing, given what its stability
    /// says now: what is left must be what no pass may erase yet. Whether it ran (`false`: the
    /// node was busy or down, and what it keeps is checked for notes only).
    fn collect_now(&mut self, node: usize) -> Result<bool, Violation> {
        const PASSES_MAX: usize = 64;
        let physical = self.physical_ms(node);
        let n = &mut self.nodes[node];
        let Some(writer) = n.writer.as_mut() else { return Ok(false) };
        if n.committing.is_some() || !n.queue.is_empty() {
            return Ok(false);
        }
        let collect = collect_of(&n.stability);
        let mut passes = Vec::new();
        let mut done = false;
        for _ in 0..PASSES_MAX {
            let built = writer.build(&n.store, [Work::Collect(collect.clone())], &ReadsAt(physical));
            let commit = built.batch().map_or(Ok(()), |batch| n.store.commit(batch));
            let settled = writer.settle(built, commit, &n.store, &mut n.durable);
            match settled.answers.into_iter().next() {
                Some(Answer::Collect(Ok(out))) => {
                    passes.push(out.clone());
                    let idle = out.changes_erased + out.changes_truncated + out.tombstones_collected == 0;
                    if idle && !out.more {
                        done = true;
                        break;
                    }
                }
                other => {
                    return Err(Violation::simulator(
                        self.seed,
                        self.now,
                        format!("a final collection pass: {other:?}"),
                    ))
                }
            }
        }
        for out in &passes {
            self.collected(out);
        }
        if !done {
            return Err(Violation::simulator(
                self.seed,
                self.now,
                format!("{PASSES_MAX} collection passes did not finish"),
            ));
        }
        Ok(true)
    }

    fn collected(&mut self, out: &mrr_writer::Collected) {
        self.changes_erased += out.changes_erased as usize;
        self.changes_truncated += out.changes_truncated as usize;
        self.tombstones_collected += out.tombstones_collected as usize;
    }

    fn finish(&mut self) -> Step {
        let mut collected = Vec::new();
        for node in 0..self.nodes.len() {
            collected.push(self.collect_now(node)?);
        }
        let mut finals = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let store_err = |e: mrr_storage::StoreError| Violation::simulator(self.seed, self.now, e);
            // Held records under their names, the others' placement under their sealed names:
            // compared by key, so read back through the keys the workload writes.
            let mut records = node.store.scan(TOPIC, None, usize::MAX).map_err(store_err)?;
            for k in 0..self.cfg.keys {
                let key = Key::new(TOPIC, format!("k{k}"));
                let sealed = self.sealer.seal(&key);
                if let Some(register) = node.store.get(&sealed).map_err(store_err)? {
                    if records.iter().any(|(held, _)| *held == key) {
                        return Err(self.violation(
                            "placement",
                            format!("{} holds {key} both by its name and by its sealed name", self.names[i]),
                        ));
                    }
                    records.push((key, register));
                }
            }
            records.sort_by(|a, b| a.0.cmp(&b.0));
            let mut changelog = Vec::new();
            for origin in &self.names {
                for lane in mrr_core::Lane::ALL {
                    let stream = mrr_core::Stream::new(origin.clone(), lane);
                    changelog.extend(node.store.changes_after(&stream, 0, usize::MAX).map_err(store_err)?);
                }
            }
            let applied = node.store.recover().map_err(store_err)?.vv;
            let departures = node.store.departures().map_err(store_err)?;
            let log_floors = node.store.log_floors().map_err(store_err)?;
            let collect = collected[i].then(|| collect_of(&node.stability));
            finals.push(FinalState {
                region: self.names[i].clone(),
                records,
                applied,
                changelog,
                log_floors,
                departures,
                collect,
            });
        }
        for inv in &mut self.invariants {
            if let Err(detail) = inv.at_end(&finals) {
                return Err(Violation::broken(self.seed, self.now, inv.as_ref(), detail));
            }
        }
        Ok(())
    }

    fn roll(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.rng.random_range(0..1000) < per_mille
    }

    fn send(&mut self, from: usize, to: usize, epoch: u64, body: Body) {
        if self.cut.contains(&(from, to)) || self.roll(self.cfg.loss_per_mille) {
            return;
        }
        let jitter = if self.cfg.jitter_ms > 0 { self.rng.random_range(0..=self.cfg.jitter_ms) } else { 0 };
        let mut at = self.now + self.base_delay.get(&(from, to)).copied().unwrap_or(0) + jitter;
        if !self.roll(self.cfg.reorder_per_mille) {
            // A stream is FIFO unless the reorder fault strikes.
            let last = self.last_delivery.entry((from, to)).or_insert(0);
            at = at.max(*last);
            *last = at;
        }
        let msg = Msg { from, to, epoch, body };
        if self.roll(self.cfg.duplicate_per_mille) {
            let again = at + self.rng.random_range(1..=200);
            self.at(again, Event::Deliver(msg.clone()));
        }
        self.at(at, Event::Deliver(msg));
    }

    fn direct(&self, node: usize) -> BTreeSet<RegionName> {
        self.nodes[node]
            .inc
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_some())
            .map(|(j, _)| self.names[j].clone())
            .collect()
    }

    /// The writer takes the next group, if it is idle and requests wait: the group is built
    /// now (reads happen now) and its commit returns after the disk's latency.
    fn start_commit(&mut self, node: usize) {
        let physical = self.physical_ms(node);
        let n = &mut self.nodes[node];
        let Some(writer) = n.writer.as_mut() else { return };
        if n.committing.is_some() || n.queue.is_empty() {
            return;
        }
        let take = n.queue.len().min(mrr_writer::WriterConfig::default().group_requests_max);
        let (work, thens): (Vec<_>, Vec<_>) = n.queue.drain(..take).unzip();
        let built = writer.build(&n.store, work, &ReadsAt(physical));
        if built.len() > 1 {
            self.grouped_commits += 1;
        }
        n.committing = Some((built, thens));
        let (at, incarnation) = (self.now + n.commit_ms, n.incarnation);
        self.at(at, Event::Committed { node, incarnation });
    }

    /// A commit returned: the disk takes the batch (or fails it), the writer settles, and every
    /// request of the group is answered.
    fn committed(&mut self, node: usize, incarnation: u64) -> Step {
        let Node { writer, store, committing, durable, incarnation: now_incarnation, .. } = &mut self.nodes[node];
        if *now_incarnation != incarnation {
            return Ok(());
        }
        let (Some(writer), Some((built, thens))) = (writer.as_mut(), committing.take()) else { return Ok(()) };
        let commit = built.batch().map_or(Ok(()), |batch| store.commit(batch));
        let refused = commit.is_err();
        let settled = writer.settle(built, commit, store, durable);
        if refused {
            self.storage_errors += 1;
            // An injected failure strikes before the store is touched: the writer must find it
            // as it was and go on.
            if writer.failed().is_some() {
                return Err(Violation::simulator(self.seed, self.now, "a refused commit reached the store"));
            }
        }
        if let Some(batch) = settled.committed.as_ref().filter(|b| b.must_sync && self.cfg.buffered) {
            // Persisted with the commit: everything up to it is durable now.
            debug_assert!(settled.durable_moved || batch.changes.is_empty());
            for inv in &mut self.invariants {
                inv.on_durable(node, durable.durable());
            }
        }
        if let Some(batch) = &settled.committed {
            let here = writer.engine().local().clone();
            let applied = writer.engine().applied().clone();
            let received = |op: &mrr_core::Op| {
                batch.changes.iter().filter(|c| c.origin != here && c.op == *op && c.has_content()).count()
            };
            self.transfers_received += received(&mrr_core::Op::Transfer);
            self.tendings += batch
                .changes
                .iter()
                .filter(|c| {
                    c.origin == here && matches!(&c.op, mrr_core::Op::Merge { delta } if delta.presence.is_none())
                })
                .count();
            self.history_pieces_received += received(&mrr_core::Op::History);
            for inv in &mut self.invariants {
                inv.on_commit(node, batch, &applied)
                    .map_err(|detail| Violation::broken(self.seed, self.now, inv.as_ref(), detail))?;
            }
        }
        for (answer, then) in settled.answers.into_iter().zip(thens) {
            match (answer, then) {
                (Answer::Local(out), Then::Client { w, incr }) => self.client_answered(w, incr, out)?,
                (Answer::Remote(out), Then::Remote { from, epoch, freshness, queued_at }) => {
                    self.remote_answered(node, from, epoch, freshness, queued_at, out)?;
                }
                (Answer::Collect(out), Then::Collect) => match out {
                    Ok(out) => {
                        self.collected(&out);
                        if out.more {
                            // Stopped at its bound: the next tick goes on.
                            self.nodes[node].collected = None;
                        }
                    }
                    // An injected disk fault: the next tick tries again.
                    Err(_) => self.nodes[node].collected = None,
                },
                // An injected disk fault refuses a repair: the next run finds the key again.
                (Answer::Repair(out), Then::Repair) => {
                    if let Ok(verdicts) = out {
                        self.repaired(node, &verdicts)?;
                    }
                }
                (answer, then) => {
                    return Err(Violation::simulator(
                        self.seed,
                        self.now,
                        format!("the writer answered {then:?} with {answer:?}"),
                    ))
                }
            }
        }
        self.pump(node);
        self.start_commit(node);
        Ok(())
    }

    /// Under `buffered`: persist the journal, then what it covered may replicate.
    fn sync(&mut self, node: usize) -> Step {
        self.at(self.now + SYNC_MS, Event::Sync(node));
        let n = &mut self.nodes[node];
        let Some(engine) = n.engine() else { return Ok(()) };
        let snapshot = engine.applied().clone();
        n.store.persist().map_err(|e| Violation::simulator(self.seed, self.now, e))?;
        n.durable.persisted(&snapshot);
        for inv in &mut self.invariants {
            inv.on_durable(node, &snapshot);
        }
        self.pump(node);
        Ok(())
    }

    fn client_write(&mut self, w: WriteEvent) -> Step {
        // A rejoining region refuses writes (the runtime does not rejoin by itself yet).
        if self.healed_at.is_some() || self.nodes[w.node].writer.is_none() || self.nodes[w.node].rejoining {
            return Ok(());
        }
        self.writes_done += 1;
        let key = Key::new(TOPIC, format!("k{}", w.key));
        let (op, incr) = if w.delete {
            (LocalOp::Delete { key }, None)
        } else {
            workload_op(self.cfg.strategy, self.cfg.deletes, &self.placements, key, w.kind, self.writes_done)
        };
        let node = w.node;
        self.nodes[node].queue.push_back((Work::Local(vec![op]), Then::Client { w, incr }));
        self.start_commit(node);
        Ok(())
    }

    /// A client write's answer came back.
    fn client_answered(
        &mut self,
        w: WriteEvent,
        incr: Option<i64>,
        out: Result<Vec<mrr_writer::Committed>, WriteError>,
    ) -> Step {
        use mrr_writer::Rejection;
        let committed = match out {
            Ok(committed) => committed,
            // A client in a region outside the record's placement is told so; nothing applies.
            Err(WriteError::Rejected(Rejection::NotPlacedHere { .. })) => {
                self.refused_not_placed += 1;
                return Ok(());
            }
            Err(WriteError::Rejected(Rejection::PlacementPending { .. })) => {
                self.refused_pending += 1;
                return Ok(());
            }
            // A sale beyond the rights held here: refused, and the region asked for more.
            Err(WriteError::Rejected(Rejection::InsufficientRights { holder, .. })) => {
                self.refused_rights += 1;
                // `on_insufficient: forward`, modelled on keys of even index: the sale goes on,
                // once, to the region known to hold enough, a one-way delay away (the HTTP
                // forward; a cut link fails it, as the client is then told).
                let to = holder.and_then(|h| self.names.iter().position(|n| *n == h));
                if let Some(to) = to.filter(|to| !w.forwarded && w.key % 2 == 0 && !self.cut.contains(&(w.node, *to))) {
                    self.forwarded_sales += 1;
                    let at = self.now + self.base_delay.get(&(w.node, to)).copied().unwrap_or(0);
                    self.at(at, Event::Write(WriteEvent { node: to, forwarded: true, ..w }));
                }
                return Ok(());
            }
            // A failing disk: the client is told, and nothing of its request applied (the
            // invariants check that against every commit).
            Err(WriteError::Storage(_)) => {
                self.storage_errors += 1;
                return Ok(());
            }
            Err(e) => return Err(Violation::simulator(self.seed, self.now, e)),
        };
        if self.cfg.strategy == Strategy::Escrow && incr.is_some_and(|by| by < 0) {
            self.acked_sales += 1;
        }
        for c in committed {
            let acked = AckedWrite {
                node: w.node,
                key: c.key,
                version: c.record.version.clone(),
                origin: c.record.origin.clone(),
                lane: c.record.lane,
                seq: c.record.seq,
                // A write that moved the record away leaves only its placement here.
                tombstone: match mrr_core::placement::places(&c.record.metadata, &self.names[w.node]) {
                    true => c.record.is_tombstone(),
                    false => w.delete,
                },
                incr,
            };
            self.acked += 1;
            if !mrr_core::placement::everywhere(&c.record.metadata.regions) {
                self.acked_placed += 1;
            }
            if let Some(i) = mrr_core::Lane::ALL.iter().position(|l| *l == acked.lane) {
                self.acked_per_lane[i] += 1;
            }
            for inv in &mut self.invariants {
                inv.on_acked(&acked);
            }
        }
        Ok(())
    }

    /// Hands the stream's next apply to the writer, as the acceptor does.
    fn feed_writer(&mut self, node: usize, from: usize) {
        let now = self.now;
        let Node { writer, inc, queue, .. } = &mut self.nodes[node];
        let (Some(writer), Some(c)) = (writer.as_ref(), inc[from].as_mut()) else { return };
        match c.session.next(writer.engine().applied()) {
            Next::Idle => {}
            Next::Answer { .. } => {
                c.session.on_sent(now);
                let epoch = c.epoch;
                let applied = writer.engine().applied().clone();
                let durable = self.nodes[node].durable.durable().clone();
                let ack = Body::Ack { applied, durable, direct: self.direct(node), refused: false, apply_ms: 0 };
                self.send(node, from, epoch, ack);
            }
            Next::Apply(apply) => {
                if apply.batches > 1 {
                    self.grouped_applies += 1;
                }
                let then = Then::Remote { from, epoch: c.epoch, freshness: apply.freshness, queued_at: now };
                queue.push_back((Work::Remote(apply.changes), then));
                self.start_commit(node);
            }
        }
    }

    /// An inbound apply's answer came back: ack it (the ack is cumulative), or end the stream.
    fn remote_answered(
        &mut self,
        node: usize,
        from: usize,
        epoch: u64,
        freshness: Option<Freshness>,
        queued_at: u64,
        out: Result<mrr_writer::RemoteOutcome, WriteError>,
    ) -> Step {
        let live = matches!(&self.nodes[node].inc[from], Some(c) if c.epoch == epoch);
        let outcome = match out {
            Ok(outcome) => outcome,
            // A failing disk ends the stream without an ack, as the acceptor does; the dialer
            // resends from what was acknowledged.
            Err(_) => {
                self.storage_errors += 1;
                if live {
                    self.nodes[node].inc[from] = None;
                }
                return Ok(());
            }
        };
        if let Some(r) = &outcome.refused {
            for inv in &mut self.invariants {
                inv.on_refusal(node, r)
                    .map_err(|detail| Violation::broken(self.seed, self.now, inv.as_ref(), detail))?;
            }
        }
        // The stream this answers may have ended meanwhile; its changes committed all the same.
        if !live {
            return Ok(());
        }
        let now = self.now;
        let refused = outcome.refused.is_some();
        let done = match self.nodes[node].inc[from].as_mut() {
            Some(c) => c.session.on_applied(freshness, &outcome.vv, refused, now),
            None => return Ok(()),
        };
        let direct = self.direct(node);
        let apply_ms = now - queued_at;
        let durable = self.nodes[node].durable.durable().clone();
        self.send(node, from, epoch, Body::Ack { applied: outcome.vv, durable, direct, refused, apply_ms });
        if done.close {
            self.nodes[node].inc[from] = None;
        } else {
            self.feed_writer(node, from);
        }
        Ok(())
    }

    /// `from` acked `node` with its durable vector: the beacon of `node`'s stable point. A
    /// moved point is checked against every region's durable vector as it stands.
    fn beacon(&mut self, node: usize, from: usize, durable: &VersionVector) -> Step {
        let Some(applied) = self.nodes[node].engine().map(|e| e.applied().clone()) else { return Ok(()) };
        let own = self.nodes[node].durable.durable().clone();
        let n = &mut self.nodes[node];
        n.peer_durable[from].join(durable);
        let moved = n.stability.on_local(&own, &applied)
            | n.stability.on_beacon(&self.names[from], durable, &applied, self.now);
        if moved {
            let stable = n.stability.stable().clone();
            // A region outside the membership holds nothing and is owed nothing.
            let durables: Vec<Option<VersionVector>> = self
                .nodes
                .iter()
                .zip(&self.members)
                .map(|(n, member)| member.then(|| n.durable.durable().clone()))
                .collect();
            for inv in &mut self.invariants {
                inv.on_stable(node, &stable, &durables)
                    .map_err(|detail| Violation::broken(self.seed, self.now, inv.as_ref(), detail))?;
            }
        }
        Ok(())
    }

    /// This node's own durable streams and its clock: what a dialer reports with everything
    /// it sends.
    fn position(&self, node: usize) -> (VersionVector, u64) {
        let own = &self.names[node];
        let durable = self.nodes[node].durable.durable().iter().filter(|(s, _)| &s.origin == own);
        (durable.map(|(s, seq)| (s.clone(), seq)).collect(), self.physical_ms(node))
    }

    /// Sends every batch the node's sessions allow now.
    fn pump(&mut self, node: usize) {
        let n = self.cfg.regions;
        let floors_now = self.floors(node);
        for peer in 0..n {
            loop {
                let (position, wall_ms) = self.position(node);
                let Node { writer, store, out, durable, forging, .. } = &mut self.nodes[node];
                // Retention may pass a peer only when it can let one go as lagging (with a
                // window: by this incarnation or an earlier one, the set is not persisted);
                // without, anything below a floor is a hole.
                let let_go = self.cfg.retention_window_ms.is_some();
                let durable = durable.durable();
                let (Some(_), Some(Out::Up { epoch, session, .. })) = (writer.as_ref(), out[peer].as_mut()) else {
                    break;
                };
                let Some(read) = session.next_read(durable) else { break };
                // A read the disk fails stops this pump (the runtime ends the session; the
                // next event pumps again). A relayed range starts at its origin's checkpoint
                // and ends at one, as the runtime reads it.
                let within = |after, limit, bytes_max| store.changes_within(&read.stream, after, limit, bytes_max);
                let relayed = read.stream.origin != self.names[node];
                let read_result = if relayed {
                    provenance::read_relayed(read.after_seq, read.limit, read.bytes_max, &self.sealer, within)
                        .map(|r| (r.proving, r.new))
                } else {
                    within(read.after_seq, read.limit, read.bytes_max).map(|c| (Vec::new(), c))
                };
                let Ok((proving, changes)) = read_result else { break };
                // As the runtime: a peer between the log floor and the checkpoint retention
                // kept as the anchor (it was let go as lagging) cannot be proved a relay.
                if relayed && read.after_seq > 0 && proving.is_empty() && let_go {
                    let Ok(floors) = store.log_floors() else { break };
                    if floors.get(&read.stream) > 0 {
                        session.hold(&read.stream, read.after_seq + 1);
                        continue;
                    }
                }
                // The vector says these changes exist: the changelog must hold them, in order,
                // as the runtime checks before it sends (a hole ends its session with an error).
                let first = changes.first().map(|c| c.seq);
                if first != Some(read.after_seq + 1) {
                    // A read the disk fails stops this pump, as above.
                    let Ok(floors) = store.log_floors() else { break };
                    // As the runtime: a stream below the log floor is not sent from here. A
                    // relayed one (held from a snapshot's vector on) the peer gets from another
                    // region; below its own, the peer was let go as lagging and rejoins through
                    // a snapshot once every peer's floor is past it. The other streams go on.
                    if read.after_seq < floors.get(&read.stream) && (relayed || let_go) {
                        session.hold(&read.stream, read.after_seq + 1);
                        continue;
                    }
                    let detail = format!(
                        "r{node}'s changelog of {} has a hole: after seq {} the next held is {first:?}, its vector covers {}",
                        read.stream,
                        read.after_seq,
                        durable.get(&read.stream)
                    );
                    self.broken.get_or_insert(Violation {
                        seed: self.seed,
                        invariant: "changelog_contiguous",
                        at_ms: self.now,
                        detail,
                    });
                    break;
                }
                let first = read.after_seq + 1;
                let mut shipped = mrr_core::placement::for_peer(&changes, session.peer(), &self.sealer);
                if relayed && provenance::cut_to_checkpoint(&mut shipped) {
                    session.await_checkpoint(&read.stream, durable.get(&read.stream));
                    continue;
                }
                let Some(last) = shipped.changes.last().map(|c| c.seq) else {
                    session.hold(&read.stream, first);
                    continue;
                };
                let bytes = shipped.changes.iter().map(|c| encoded_len(c)).sum();
                session.on_sent(&read.stream, first, last, bytes, self.now);
                if let Some(seq) = shipped.held_at {
                    session.hold(&read.stream, seq);
                }
                let mut changes: Vec<_> = shipped.changes.into_iter().map(|c| c.into_owned()).collect();
                // A forging relay alters the first change it relays (its content, or what its
                // marker says): the receiver must refuse the batch.
                let forged = relayed && *forging && forge(&mut changes[0]);
                let epoch = *epoch;
                let floors = floors_now.clone();
                self.send(
                    node,
                    peer,
                    epoch,
                    Body::Batch { proving, changes, durable: position, wall_ms, forged, floors },
                );
            }
        }
    }

    fn deliver(&mut self, msg: Msg) -> Step {
        let (node, from, epoch) = (msg.to, msg.from, msg.epoch);
        if self.nodes[node].writer.is_none() {
            return Ok(());
        }
        let now = self.now;
        match msg.body {
            Body::Hello { floors } => {
                self.peer_floors(node, from, &floors);
                // A duplicated Hello of the stream already open (TCP never delivers one twice;
                // the network here does) must not restart its session.
                if matches!(&self.nodes[node].inc[from], Some(c) if c.epoch == epoch) {
                    return Ok(());
                }
                let limits = InboundLimits {
                    apply_changes_max: APPLY_CHANGES_MAX,
                    heartbeat_ms: TICK_MS,
                    timeout_ms: TIMEOUT_MS,
                };
                let session = InboundSession::new(self.names[from].clone(), limits, now);
                self.nodes[node].inc[from] = Some(In { epoch, session });
                let applied = self.nodes[node].engine().map(|e| e.applied().clone()).unwrap_or_default();
                let direct = self.direct(node);
                self.send(node, from, epoch, Body::Welcome { applied, direct });
            }
            Body::Welcome { applied, direct } => {
                if let Some(Out::Connecting { epoch: e, .. }) = &self.nodes[node].out[from] {
                    if *e == epoch {
                        let session = OutboundSession::new(
                            self.names[node].clone(),
                            self.names[from].clone(),
                            applied,
                            direct,
                            self.cfg.limits.clone(),
                            now,
                        );
                        self.nodes[node].out[from] =
                            Some(Out::Up { epoch, session: Box::new(session), last_heard: now });
                        self.pump(node);
                    }
                }
            }
            Body::Batch { proving, changes, durable, wall_ms, forged, floors } => {
                self.peer_floors(node, from, &floors);
                let bytes = changes.iter().map(encoded_len).sum();
                if !matches!(&self.nodes[node].inc[from], Some(c) if c.epoch == epoch) {
                    return Ok(());
                }
                // Relayed changes must prove their origin, as the runtime checks them.
                let notary = crate::notary::SimNotary::new(self.names[node].clone());
                match provenance::verify_relayed(&self.names[from], &proving, &changes, &self.sealer, Some(&notary)) {
                    Ok(()) if forged => {
                        return Err(Violation {
                            seed: self.seed,
                            invariant: "relay_proof",
                            at_ms: now,
                            detail: format!("r{node} accepted a batch r{from} altered while relaying it"),
                        })
                    }
                    Ok(()) => {}
                    // The stream ends, as the runtime ends it; the dialer reconnects.
                    Err(_) if forged => {
                        self.nodes[node].inc[from] = None;
                        return Ok(());
                    }
                    Err(e) => {
                        return Err(Violation {
                            seed: self.seed,
                            invariant: "relay_proof",
                            at_ms: now,
                            detail: format!("r{node} refused what r{from} relayed honestly: {e}"),
                        })
                    }
                }
                let Some(c) = self.nodes[node].inc[from].as_mut().filter(|c| c.epoch == epoch) else { return Ok(()) };
                c.session
                    .on_batch(changes, bytes, durable, wall_ms, now)
                    .map_err(|e| Violation::simulator(self.seed, now, e))?;
                self.feed_writer(node, from);
            }
            Body::Heartbeat { durable, wall_ms, floors } => {
                self.peer_floors(node, from, &floors);
                let Some(c) = self.nodes[node].inc[from].as_mut().filter(|c| c.epoch == epoch) else { return Ok(()) };
                c.session.on_heartbeat(durable, wall_ms, now).map_err(|e| Violation::simulator(self.seed, now, e))?;
                self.feed_writer(node, from);
            }
            Body::Ack { applied, durable, direct, refused, apply_ms } => {
                self.beacon(node, from, &durable)?;
                let backoff = self.backoff();
                if let Some(Out::Up { epoch: e, session, last_heard }) = self.nodes[node].out[from].as_mut() {
                    if *e == epoch {
                        *last_heard = now;
                        session.on_ack(&applied, direct, apply_ms, now);
                        if refused {
                            self.nodes[node].out[from] = Some(Out::Down { retry_at: now + backoff, backoff });
                        } else {
                            self.pump(node);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn backoff(&mut self) -> u64 {
        BACKOFF_MIN_MS + self.rng.random_range(0..BACKOFF_MIN_MS)
    }

    fn tick(&mut self, node: usize) -> Step {
        self.at(self.now + TICK_MS, Event::Tick(node));
        if self.nodes[node].writer.is_none() {
            // A wiped region asks again (its peers may have relayed to each other since).
            if self.nodes[node].restart_pending {
                self.restart(node)?;
            }
            return Ok(());
        }
        let now = self.now;
        let (position, wall_ms) = self.position(node);
        for peer in 0..self.cfg.regions {
            let next = match self.nodes[node].out[peer].take() {
                None => None,
                Some(Out::Down { retry_at, backoff }) if now >= retry_at => {
                    let epoch = self.next_epoch;
                    self.next_epoch += 1;
                    let floors = self.floors(node);
                    self.send(node, peer, epoch, Body::Hello { floors });
                    Some(Out::Connecting { epoch, since: now, backoff })
                }
                Some(Out::Connecting { since, backoff, .. }) if now - since > TIMEOUT_MS => {
                    let jitter = self.rng.random_range(0..=backoff / 2);
                    Some(Out::Down { retry_at: now + backoff + jitter, backoff: (backoff * 2).min(BACKOFF_MAX_MS) })
                }
                Some(Out::Up { last_heard, session, .. })
                    if now - last_heard > TIMEOUT_MS || session.stalled(now, TIMEOUT_MS) =>
                {
                    Some(Out::Down { retry_at: now + BACKOFF_MIN_MS, backoff: BACKOFF_MIN_MS })
                }
                Some(Out::Up { epoch, session, last_heard }) => {
                    let floors = self.floors(node);
                    self.send(node, peer, epoch, Body::Heartbeat { durable: position.clone(), wall_ms, floors });
                    Some(Out::Up { epoch, session, last_heard })
                }
                other => other,
            };
            self.nodes[node].out[peer] = next;
        }
        let applied = self.nodes[node].engine().map(|e| e.applied().clone()).unwrap_or_default();
        for peer in 0..self.cfg.regions {
            let Some(c) = self.nodes[node].inc[peer].as_mut() else { continue };
            match c.session.on_tick(now) {
                Tick::Quiet => {}
                Tick::TimedOut { .. } => self.nodes[node].inc[peer] = None,
                Tick::Heartbeat => {
                    c.session.on_sent(now);
                    let (epoch, direct) = (c.epoch, self.direct(node));
                    let durable = self.nodes[node].durable.durable().clone();
                    let ack = Body::Ack { applied: applied.clone(), durable, direct, refused: false, apply_ms: 0 };
                    self.send(node, peer, epoch, ack);
                }
            }
        }
        if self.rejoin_due(node) {
            self.rejoins += 1;
            self.wipe(node);
            return self.restart(node);
        }
        // A collection pass when what it may erase below moved, as the server's stable-point
        // task does each second.
        let n = &mut self.nodes[node];
        n.stability.on_tick(now, 0);
        let collect = collect_of(&n.stability);
        if n.collected.as_ref() != Some(&collect) {
            n.collected = Some(collect.clone());
            n.queue.push_back((Work::Collect(collect), Then::Collect));
            self.start_commit(node);
        }
        self.pump(node);
        Ok(())
    }

    fn fault(&mut self, fault: FaultEvent) -> Step {
        match fault {
            FaultEvent::Cut { from, to } => {
                self.cut.insert((from, to));
            }
            FaultEvent::Mend { from, to } => {
                self.cut.remove(&(from, to));
            }
            FaultEvent::Crash { node } => self.crash(node),
            FaultEvent::PowerLoss { node } => {
                if self.nodes[node].writer.is_some() {
                    let durable = self.nodes[node].durable.durable().clone();
                    for inv in &mut self.invariants {
                        inv.on_power_loss(node, &durable);
                    }
                    let _ = self.nodes[node].store.power_loss();
                    self.crash(node);
                }
            }
            FaultEvent::Restart { node } => self.restart(node)?,
            FaultEvent::Wipe { node } => self.wipe(node),
            FaultEvent::Clock { node, offset_ms } => self.nodes[node].clock_offset_ms = offset_ms,
            FaultEvent::ClockStep { node, step_ms } => self.nodes[node].clock_step_ms = step_ms,
            FaultEvent::SlowDisk { node, commit_ms } => self.nodes[node].commit_ms = commit_ms.max(COMMIT_MS),
            FaultEvent::Forge { node, on } => self.nodes[node].forging = on,
            FaultEvent::Corrupt { node, pick } => self.corrupt(node, pick)?,
            FaultEvent::Repair { node } => self.repair_run(node)?,
            FaultEvent::Join { node } => self.join(node)?,
            FaultEvent::Disk { node, read_in, commit_in } => {
                let plan = self.nodes[node].store.faults();
                if let Some(n) = read_in {
                    plan.fail_read_in(n);
                }
                if let Some(n) = commit_in {
                    plan.fail_commit_in(n);
                }
            }
        }
        Ok(())
    }

    fn crash(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        // The process and everything it held in memory: the writer, its queue, the commit in
        // flight (whose requests were never answered).
        n.writer = None;
        n.queue.clear();
        n.committing = None;
        n.incarnation += 1;
        for o in n.out.iter_mut().flatten() {
            *o = Out::Down { retry_at: u64::MAX, backoff: BACKOFF_MIN_MS };
        }
        for i in n.inc.iter_mut() {
            *i = None;
        }
    }

    fn restart(&mut self, node: usize) -> Step {
        if self.nodes[node].writer.is_some() || !self.members[node] {
            return Ok(());
        }
        if self.nodes[node].wiped && !self.bootstrap(node)? {
            self.nodes[node].restart_pending = true;
            return Ok(());
        }
        let recovered = self.nodes[node].store.recover().map_err(|e| Violation::simulator(self.seed, self.now, e))?;
        for inv in &mut self.invariants {
            inv.on_restart(node, &recovered.vv)
                .map_err(|detail| Violation::broken(self.seed, self.now, inv.as_ref(), detail))?;
        }
        let n = &mut self.nodes[node];
        n.restart_pending = false;
        n.durable = DurableRule::new(self.cfg.buffered, recovered.vv.clone());
        n.collected = None;
        // The simulated node keeps no persisted stable point: it starts from nothing again.
        let member_names = named_members(&self.names, &self.members);
        let n = &mut self.nodes[node];
        n.stability = stability(&self.names[node], &member_names, &self.cfg, self.now);
        n.peer_floors = vec![None; self.cfg.regions];
        n.peer_durable = vec![VersionVector::new(); self.cfg.regions];
        n.rejoining = false;
        n.writer =
            Some(writer(&self.names[node], recovered, &self.cfg, policies(self.cfg.strategy, self.cfg.placement)));
        for o in n.out.iter_mut().flatten() {
            *o = Out::Down { retry_at: self.now, backoff: BACKOFF_MIN_MS };
        }
        // A wiped region waiting for its peers to be up may go now.
        for other in 0..self.nodes.len() {
            if self.nodes[other].restart_pending {
                self.restart(other)?;
            }
        }
        Ok(())
    }

    /// `node`'s log floors, as its sessions tell their acceptors (one that cannot be read is
    /// sent as none: the acceptor then does not rejoin on its word, which only delays it).
    fn floors(&self, node: usize) -> VersionVector {
        self.nodes[node].store.log_floors().unwrap_or_default()
    }

    /// `from` said where its changelog starts (floors only grow: a reordered message is no
    /// news).
    fn peer_floors(&mut self, node: usize, from: usize, floors: &VersionVector) {
        self.nodes[node].peer_floors[from].get_or_insert_with(VersionVector::new).join(floors);
    }

    /// Whether `node` should rejoin through a snapshot now. It starts rejoining once some
    /// stream of another origin is truncated past what it applied at every peer (as each peer's
    /// stream to it last said: floors only grow); it rejoins once
    /// every peer has acked its own streams as far as it applied them, so that nothing it wrote
    /// is lost with its data.
    fn rejoin_due(&mut self, node: usize) -> bool {
        // Without a window no region is let go, and none rejoins (as the runtime).
        if self.cfg.retention_window_ms.is_none() {
            return false;
        }
        let own = self.names[node].clone();
        let n = &mut self.nodes[node];
        let Some(applied) = n.engine().map(|e| e.applied().clone()) else { return false };
        if !n.rejoining {
            // Peers not heard since this process started (down, or bootstrapping) say nothing.
            let names = &self.names;
            let floors: Vec<(&RegionName, &VersionVector)> = n
                .peer_floors
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != node)
                .filter_map(|(i, f)| Some((&names[i], f.as_ref()?)))
                .collect();
            if !mrr_writer::snapshot::behind_every_floor(&own, &applied, &floors) {
                return false;
            }
            n.rejoining = true;
        }
        let written = applied.of_origin(&own);
        n.peer_durable.iter().enumerate().all(|(i, d)| i == node || d.dominates(&written))
    }

    /// The node dies and its disk is replaced by an empty one; what is in flight from it dies
    /// with its connections. What it wrote that reached no peer is lost: the invariants are
    /// told at its bootstrap, once its peers have said how far its streams reached them.
    fn wipe(&mut self, node: usize) {
        self.crash(node);
        self.queue.retain(|_, e| !matches!(e, Event::Deliver(m) if m.from == node));
        let n = &mut self.nodes[node];
        n.store = SimDisk::new(self.cfg.buffered);
        n.wiped = true;
        n.wipe_told = false;
    }

    /// A wiped node's bootstrap, as `mrr_replication::bootstrap` runs it: every peer says where
    /// it stands, `snapshot::decide` picks the donor, and the snapshot is installed in chunks
    /// of a few records, the stream breaking (and resuming after the last installed chunk) or
    /// the donor losing its view (and the install starting over) as the seed says. `false`:
    /// not now (a peer is down, none qualifies yet, or a disk failed); the restart waits.
    fn bootstrap(&mut self, node: usize) -> Result<bool, Violation> {
        use mrr_writer::snapshot;
        // Every member that holds anything answers. A region outside the membership is no
        // peer, and one that joined and never ran holds nothing of anyone: a region new to the
        // cluster needs only the running members (its own streams are empty everywhere), and
        // the others need nothing of it.
        let fresh = self.nodes[node].fresh;
        let peer = |i: usize, n: &Node| i != node && self.members[i] && !n.fresh;
        if self.nodes.iter().enumerate().any(|(i, n)| peer(i, n) && n.writer.is_none() && !fresh) {
            return Ok(false);
        }
        if fresh && !self.nodes.iter().enumerate().any(|(i, n)| peer(i, n) && n.writer.is_some()) {
            return Ok(false);
        }
        let local = self.names[node].clone();
        // Asking fences this region's dead incarnation off at each peer, as the runtime's donor
        // does (`mrr_replication` `Fences`): what its sessions still queue is dropped, and the
        // peer answers once its writer has applied what was already handed to it.
        for (i, other) in self.nodes.iter_mut().enumerate() {
            if i != node {
                other.inc[node] = None;
            }
        }
        let from_it = |w: &Work| matches!(w, Work::Remote(changes) if changes.iter().any(|c| c.origin == local));
        let busy = self
            .nodes
            .iter()
            .enumerate()
            .any(|(i, n)| i != node && (n.committing.is_some() || n.queue.iter().any(|(w, _)| from_it(w))));
        if busy {
            return Ok(false);
        }
        // Asking is what tells each peer that this region's earlier beacons no longer hold.
        for (i, other) in self.nodes.iter_mut().enumerate() {
            if i != node {
                other.stability.on_rejoin(&local);
            }
        }
        let mut standings = BTreeMap::new();
        let mut refused = BTreeSet::new();
        for (i, other) in self.nodes.iter().enumerate() {
            if i == node || !self.members[i] || other.fresh || other.writer.is_none() {
                continue;
            }
            let (Ok(state), Ok(floors)) = (other.store.recover(), other.store.log_floors()) else { return Ok(false) };
            let stable = other.stability.stable().clone();
            standings.insert(
                self.names[i].clone(),
                snapshot::Standing { applied: state.vv, floors, stable, incarnation: 0 },
            );
        }
        let mut rng = StdRng::seed_from_u64(self.seed ^ self.now ^ ((node as u64) << 48) ^ 0x736e_6170);
        loop {
            let Ok(mark) = self.nodes[node].store.bootstrap_mark() else { return Ok(false) };
            let installing = match &mark {
                Some(mrr_storage::BootstrapMark::Installing { donor, .. }) => Some(donor.clone()),
                _ => None,
            };
            let decision = snapshot::decide(&local, &standings, installing.as_deref(), &refused);
            if decision != snapshot::Decision::Wait && !self.nodes[node].wipe_told {
                // What every peer holds of this region's streams is all that is left of them.
                let mut reached = VersionVector::new();
                for s in standings.values() {
                    reached.join(&s.applied.of_origin(&local));
                }
                for inv in &mut self.invariants {
                    inv.on_wipe(node, &reached);
                }
                self.nodes[node].wipe_told = true;
            }
            let store = &self.nodes[node].store;
            let donor = match decision {
                snapshot::Decision::Fresh => {
                    let done = mrr_storage::CommitBatch {
                        bootstrap: Some(mrr_storage::BootstrapMark::Done),
                        ..Default::default()
                    };
                    if store.commit(&done).is_err() {
                        return Ok(false);
                    }
                    self.nodes[node].wiped = false;
                    self.nodes[node].fresh = false;
                    return Ok(true);
                }
                snapshot::Decision::Wait => return Ok(false),
                snapshot::Decision::From(d) => d,
            };
            let d = self.names.iter().position(|n| *n == donor).unwrap_or_else(|| unreachable!("a peer"));
            match self.install(node, d, &mut rng) {
                Ok(Some(records)) => {
                    self.snapshots_installed += 1;
                    self.snapshot_records += records;
                    self.nodes[node].wiped = false;
                    self.nodes[node].fresh = false;
                    return Ok(true);
                }
                Ok(None) => return Ok(false),
                Err(snapshot::SnapshotError::NotHeld { .. }) => {
                    refused.insert(donor);
                }
                Err(_) => return Ok(false),
            }
        }
    }

    /// Installs a snapshot of `donor` at `node`; `None` when a disk failed (the restart waits).
    fn install(
        &mut self,
        node: usize,
        donor: usize,
        rng: &mut StdRng,
    ) -> Result<Option<usize>, mrr_writer::snapshot::SnapshotError> {
        use mrr_writer::snapshot;
        let (local, from) = (self.names[node].clone(), self.names[donor].clone());
        let sealer = self.sealer.clone();
        let store = &self.nodes[node].store;
        // An unfinished install from another donor goes first.
        if let Some(mrr_storage::BootstrapMark::Installing { donor: d, .. }) = store.bootstrap_mark()? {
            if d != from.as_str() {
                while let Some(batch) = snapshot::clear_batch(store, &sealer, 3)? {
                    store.commit(&batch)?;
                }
            }
        }
        let mut view = self.nodes[donor].store.view()?;
        let mut header = snapshot::header(&*view, &local, &sealer)?;
        let mut after = None;
        let mut records = 0;
        loop {
            let records_max = rng.random_range(1..=4);
            let chunk = snapshot::chunk(&*view, &local, &sealer, after.as_ref(), records_max, u64::MAX)?;
            let done = chunk.done;
            records += chunk.records.len();
            let last = chunk.last.clone();
            store.commit(&snapshot::chunk_batch(chunk, &header, &from, 1, &local, &sealer))?;
            after = last.or(after);
            if done {
                break;
            }
            match rng.random_range(0..8u8) {
                // The stream breaks: resume after the last chunk the store says it installed.
                0 => {
                    self.snapshot_resumes += 1;
                    after = match store.bootstrap_mark()? {
                        Some(mrr_storage::BootstrapMark::Installing { after, .. }) => after,
                        _ => unreachable!("an install in progress is marked"),
                    };
                }
                // The donor lost its view: take out what was installed and start over.
                1 => {
                    while let Some(batch) = snapshot::clear_batch(store, &sealer, 3)? {
                        store.commit(&batch)?;
                    }
                    view = self.nodes[donor].store.view()?;
                    header = snapshot::header(&*view, &local, &sealer)?;
                    after = None;
                    records = 0;
                }
                _ => {}
            }
        }
        for (fingerprint, der) in &header.certificates {
            store.add_certificate(fingerprint, der)?;
        }
        let notary = crate::notary::SimNotary::new(local.clone());
        store.commit(&snapshot::end_batch(&header, &local, &sealer, Some(&notary), 0))?;
        Ok(Some(records))
    }

    /// `node` is added to the membership: every running region takes it into its stable point
    /// (holding the point where it is until its beacons come), and it starts, bootstrapping
    /// its empty data directory from a snapshot.
    fn join(&mut self, node: usize) -> Step {
        if self.members[node] {
            return Ok(());
        }
        self.members[node] = true;
        self.joins += 1;
        let member_names = named_members(&self.names, &self.members);
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if i != node && n.writer.is_some() {
                n.stability.set_members(member_names.iter().cloned(), self.now);
            }
        }
        self.restart(node)
    }

    /// End of the fault phase: links mend, crashed regions come back, writes stop. Clock
    /// offsets stay as they are: convergence must not need perfect clocks.
    fn heal(&mut self) -> Step {
        self.cut.clear();
        // A region not added during the fault phase (its event shrunk away) joins now.
        for node in 0..self.cfg.regions {
            self.join(node)?;
        }
        // Disks are repaired and clock steps undone; offsets within max_clock_skew stay.
        for n in &mut self.nodes {
            n.store.faults().disarm();
            n.clock_step_ms = 0;
            n.forging = false;
            n.commit_ms = COMMIT_MS;
        }
        for node in 0..self.cfg.regions {
            self.restart(node)?;
        }
        self.healed_at = Some(self.now);
        Ok(())
    }
}
