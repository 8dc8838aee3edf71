//! The fault schedule and workload of one run, generated up front from the seed so that a
//! failing run can be shrunk by dropping faults and replayed with the faults it kept.

use std::collections::BTreeSet;
use std::fmt;

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::world::{SimConfig, Strategy};

/// One scheduled fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultEvent {
    /// Messages from `from` to `to` are lost until the matching heal (one direction).
    Cut {
        from: usize,
        to: usize,
    },
    Mend {
        from: usize,
        to: usize,
    },
    /// The node's process dies: volatile state is lost, the disk keeps what was committed.
    Crash {
        node: usize,
    },
    /// The node's machine loses power: like a crash, and the disk loses what was not persisted.
    PowerLoss {
        node: usize,
    },
    Restart {
        node: usize,
    },
    /// The node dies and its data directory is lost: at its restart it asks every peer where
    /// its streams stand and installs a snapshot of one (`mrr_writer::snapshot`).
    Wipe {
        node: usize,
    },
    /// The region is added to the membership (`SimConfig::join`) and starts from an empty
    /// data directory.
    Join {
        node: usize,
    },
    /// The node's clock offset from true time changes (skew and drift).
    Clock {
        node: usize,
        offset_ms: i64,
    },
    /// The node's clock steps by `step_ms` on top of its offset (0: the step is undone). A
    /// step beyond `max_clock_skew` makes peers refuse what it stamps, and its HLC stays ahead
    /// after the step back.
    ClockStep {
        node: usize,
        step_ms: i64,
    },
    /// The node's commits take `commit_ms` from now on (a slow disk; back to normal when
    /// another such event says so, or at the heal).
    SlowDisk {
        node: usize,
        commit_ms: u64,
    },
    /// The node's disk fails the `read_in`th read from now, or its `commit_in`th commit.
    Disk {
        node: usize,
        read_in: Option<u64>,
        commit_in: Option<u64>,
    },
    /// The node alters every change it relays from now on (`on`), or stops: a region whose
    /// certificate is in an attacker's hands, relaying changes its origin never wrote.
    Forge {
        node: usize,
        on: bool,
    },
    /// The node's disk corrupts one record behind its writer (`pick` chooses which, and how):
    /// anti-entropy must find and repair it.
    Corrupt {
        node: usize,
        pick: u64,
    },
    /// An anti-entropy run from the node with every peer that is up.
    Repair {
        node: usize,
    },
}

impl fmt::Display for FaultEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultEvent::Cut { from, to } => write!(f, "cut r{from}->r{to}"),
            FaultEvent::Mend { from, to } => write!(f, "mend r{from}->r{to}"),
            FaultEvent::Crash { node } => write!(f, "crash r{node}"),
            FaultEvent::PowerLoss { node } => write!(f, "power loss r{node}"),
            FaultEvent::Restart { node } => write!(f, "restart r{node}"),
            FaultEvent::Wipe { node } => write!(f, "wipe r{node}"),
            FaultEvent::Join { node } => write!(f, "r{node} joins the membership"),
            FaultEvent::Clock { node, offset_ms } => write!(f, "clock r{node} {offset_ms:+}ms"),
            FaultEvent::ClockStep { node, step_ms } => write!(f, "clock step r{node} {step_ms:+}ms"),
            FaultEvent::SlowDisk { node, commit_ms } => write!(f, "disk r{node} commits take {commit_ms}ms"),
            FaultEvent::Disk { node, read_in: Some(n), .. } => write!(f, "disk r{node} fails read {n} from now"),
            FaultEvent::Disk { node, commit_in, .. } => {
                write!(f, "disk r{node} fails commit {} from now", commit_in.unwrap_or(1))
            }
            FaultEvent::Forge { node, on: true } => write!(f, "r{node} forges what it relays"),
            FaultEvent::Forge { node, on: false } => write!(f, "r{node} relays honestly"),
            FaultEvent::Corrupt { node, pick } => write!(f, "r{node}'s disk corrupts a record ({pick})"),
            FaultEvent::Repair { node } => write!(f, "anti-entropy run from r{node}"),
        }
    }
}

/// A client write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteEvent {
    pub node: usize,
    pub key: usize,
    pub delete: bool,
    /// Which operation a non-delete write is, under `merge` and `custom` (0 under `timestamp`,
    /// whose schedules predate it and must replay as recorded).
    pub kind: u32,
    /// Sent on by another region that lacked the rights for this sale (`on_insufficient:
    /// forward`); never forwarded again.
    pub forwarded: bool,
}

#[derive(Clone, Debug)]
pub struct Schedule {
    /// `(at_ms, fault)`, in time order. Indices are what `--keep-faults` names.
    pub faults: Vec<(u64, FaultEvent)>,
    pub writes: Vec<(u64, WriteEvent)>,
}

impl Schedule {
    pub fn generate(seed: u64, config: &SimConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5c4e_d01e);
        // A stream of its own, so that the choice does not shift the rest of the schedule.
        let mut power = StdRng::seed_from_u64(seed ^ 0x0070_6f77);
        let n = config.regions;
        let phase = config.fault_phase_ms;
        let mut faults = Vec::new();
        for _ in 0..config.faults {
            let at = rng.random_range(0..phase);
            // Each fault heals itself within the phase, or at the latest at the heal.
            let until = (at + rng.random_range(100..phase.max(101))).min(phase);
            let a = rng.random_range(0..n);
            let b = (a + rng.random_range(1..n)) % n;
            match rng.random_range(0..4u8) {
                0 => {
                    faults.push((at, FaultEvent::Cut { from: a, to: b }));
                    faults.push((until, FaultEvent::Mend { from: a, to: b }));
                }
                1 => {
                    faults.push((at, FaultEvent::Cut { from: a, to: b }));
                    faults.push((at, FaultEvent::Cut { from: b, to: a }));
                    faults.push((until, FaultEvent::Mend { from: a, to: b }));
                    faults.push((until, FaultEvent::Mend { from: b, to: a }));
                }
                2 => {
                    let power_loss = config.buffered && power.random_ratio(1, 2);
                    faults.push((
                        at,
                        if power_loss { FaultEvent::PowerLoss { node: a } } else { FaultEvent::Crash { node: a } },
                    ));
                    faults.push((until, FaultEvent::Restart { node: a }));
                }
                _ => {
                    let skew = i64::try_from(config.max_skew_ms).unwrap_or(i64::MAX);
                    faults.push((at, FaultEvent::Clock { node: a, offset_ms: rng.random_range(-skew..=skew) }));
                }
            }
        }
        // Failing disks and clock steps come from streams of their own, after the episodes
        // above, so that adding them left the rest of every seed's schedule as it was.
        let mut disk = StdRng::seed_from_u64(seed ^ 0x6469_736b);
        for _ in 0..config.disk_faults {
            let at = disk.random_range(0..phase);
            let node = disk.random_range(0..n);
            let (read_in, commit_in) = match disk.random_range(0..3u8) {
                0 => (None, Some(disk.random_range(1..=3))),
                _ => (Some(disk.random_range(1..=12)), None),
            };
            faults.push((at, FaultEvent::Disk { node, read_in, commit_in }));
            // Half the time the process then dies and restarts (recovering from what the
            // failed request left on disk: nothing).
            if disk.random_ratio(1, 2) {
                let crash = (at + disk.random_range(1..500)).min(phase);
                faults.push((crash, FaultEvent::Crash { node }));
                faults.push(((crash + disk.random_range(100..2_000)).min(phase), FaultEvent::Restart { node }));
            }
        }
        let mut step = StdRng::seed_from_u64(seed ^ 0x7374_6570);
        for _ in 0..config.clock_steps {
            let at = step.random_range(0..phase);
            let until = (at + step.random_range(200..3_000)).min(phase);
            let node = step.random_range(0..n);
            let skew = i64::try_from(config.max_skew_ms).unwrap_or(i64::MAX);
            let step_ms = step.random_range(skew * 2..=skew * 8);
            faults.push((at, FaultEvent::ClockStep { node, step_ms }));
            faults.push((until, FaultEvent::ClockStep { node, step_ms: 0 }));
        }
        let mut slow = StdRng::seed_from_u64(seed ^ 0x736c_6f77);
        for _ in 0..config.slow_disks {
            let at = slow.random_range(0..phase);
            let until = (at + slow.random_range(500..4_000)).min(phase);
            let node = slow.random_range(0..n);
            faults.push((at, FaultEvent::SlowDisk { node, commit_ms: slow.random_range(50..=400) }));
            faults.push((until, FaultEvent::SlowDisk { node, commit_ms: 0 }));
        }
        let mut forge = StdRng::seed_from_u64(seed ^ 0x666f_7267);
        for _ in 0..config.forgers {
            let at = forge.random_range(0..phase);
            let until = (at + forge.random_range(500..5_000)).min(phase);
            let node = forge.random_range(0..n);
            faults.push((at, FaultEvent::Forge { node, on: true }));
            faults.push((until, FaultEvent::Forge { node, on: false }));
        }
        let mut wipe = StdRng::seed_from_u64(seed ^ 0x7769_7065);
        // Not under placement: a wiped region can no longer answer wants for the content of
        // its own earlier writes (an origin answers them from its changelog), so a region a
        // move placed a record in may lack that content for good (docs/architecture.md,
        // "Snapshot bootstrap"). Seeds under placement with a wipe fail convergence so.
        let wipes = if config.placement { 0 } else { config.wipes };
        for _ in 0..wipes {
            let at = wipe.random_range(0..phase);
            let node = wipe.random_range(0..n);
            faults.push((at, FaultEvent::Wipe { node }));
            faults.push(((at + wipe.random_range(1_000..3_000)).min(phase), FaultEvent::Restart { node }));
        }
        if config.join {
            let mut join = StdRng::seed_from_u64(seed ^ 0x6a6f_696e);
            faults.push((join.random_range(0..phase), FaultEvent::Join { node: n - 1 }));
        }
        let mut bad = StdRng::seed_from_u64(seed ^ 0x6261_6464);
        for _ in 0..config.corruptions {
            faults.push((
                bad.random_range(0..phase),
                FaultEvent::Corrupt { node: bad.random_range(0..n), pick: bad.random() },
            ));
        }
        for _ in 0..config.repairs {
            faults.push((bad.random_range(0..phase), FaultEvent::Repair { node: bad.random_range(0..n) }));
        }
        // Stable: faults at the same instant keep the order they were generated in.
        faults.sort_by_key(|(at, _)| *at);
        let mut writes: Vec<(u64, WriteEvent)> = (0..config.writes)
            .map(|_| {
                let at = rng.random_range(0..phase);
                let mut w = WriteEvent {
                    node: rng.random_range(0..n),
                    key: rng.random_range(0..config.keys),
                    delete: rng.random_ratio(1, 8) && config.deletes,
                    kind: match config.strategy {
                        Strategy::Timestamp => 0,
                        Strategy::Merge | Strategy::Custom | Strategy::Escrow => rng.random(),
                    },
                    forwarded: false,
                };
                if config.strategy == Strategy::Escrow {
                    // Counters are not deleted (a delete hides, never resets, them), and r0
                    // holds most of the demand: two writes in three are made there.
                    w.delete = false;
                    if w.kind % 3 != 0 {
                        w.node = 0;
                    }
                }
                (at, w)
            })
            .collect();
        writes.sort_by_key(|(at, _)| *at);
        Self { faults, writes }
    }

    /// The same schedule with only the faults whose indices are in `keep`.
    pub fn keep_faults(&self, keep: &BTreeSet<usize>) -> Self {
        let faults = self.faults.iter().enumerate().filter(|(i, _)| keep.contains(i)).map(|(_, f)| f.clone()).collect();
        Self { faults, writes: self.writes.clone() }
    }
}
