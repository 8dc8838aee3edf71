//! `mrr-sim`: run seeds of the deterministic simulator.
//!
//! cargo run --release -p mrr-sim -- --seed-start 0 --seeds 500
//! cargo run --release -p mrr-sim -- --seed 42 [--keep-faults 0,3]
//! cargo run --release -p mrr-sim -- --strong --seeds 500     (the strong tier: consensus)
//!
//! Exits non-zero on the first violation, after printing the seed, the shortest fault
//! schedule that still fails, and the command that replays it.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Instant;

use mrr_sim::strong::{run_strong, StrongConfig};
use mrr_sim::{run, shrink, Schedule, SimConfig};

struct Args {
    seed_start: u64,
    seeds: u64,
    keep: Option<BTreeSet<usize>>,
    config: SimConfig,
    /// `--strong`: run the strong tier's simulation instead.
    strong: Option<StrongConfig>,
}

fn usage() -> String {
    "usage: mrr-sim [--seed-start S --seeds N | --seed X [--keep-faults I,J,..]] [--regions 3..5] [--writes W] [--keys K] [--faults F] [--disk-faults D] [--clock-steps C] [--slow-disks S] [--forgers G] [--wipes W] [--corruptions C] [--repairs R] [--retention-window-ms MS (0: none)] [--phase-ms MS] [--durability fsync|buffered] [--strategy timestamp|merge|custom|escrow] [--no-deletes] [--placement] [--join]\n       mrr-sim --strong [--seed-start S --seeds N | --seed X] [--regions 3..5] [--strong-clients C] [--strong-ops O] [--faults F] [--phase-ms MS]".into()
}

fn parse() -> Result<Args, String> {
    let mut a = Args { seed_start: 0, seeds: 100, keep: None, config: SimConfig::default(), strong: None };
    let mut strong = StrongConfig::default();
    let (mut is_strong, mut faults_given, mut phase_given) = (false, false, false);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value\n{}", usage()));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--seed-start" => a.seed_start = num(value()?)?,
            "--seeds" => a.seeds = num(value()?)?,
            "--seed" => {
                a.seed_start = num(value()?)?;
                a.seeds = 1;
            }
            "--keep-faults" => {
                let v = value()?;
                let keep = v
                    .split(',')
                    // `none`: every fault dropped (what a replay of a fault-free failure names).
                    .filter(|s| !s.is_empty() && *s != "none")
                    .map(|s| s.parse::<usize>().map_err(|e| format!("--keep-faults: {e}")))
                    .collect::<Result<_, _>>()?;
                a.keep = Some(keep);
            }
            "--regions" => a.config.regions = usize::try_from(num(value()?)?).map_err(|e| e.to_string())?,
            "--writes" => a.config.writes = usize::try_from(num(value()?)?).map_err(|e| e.to_string())?,
            "--faults" => {
                a.config.faults = usize::try_from(num(value()?)?).map_err(|e| e.to_string())?;
                faults_given = true;
            }
            "--strong" => is_strong = true,
            "--strong-clients" => {
                strong.clients_per_region = usize::try_from(num(value()?)?).map_err(|e| e.to_string())?
            }
            "--strong-ops" => strong.ops_per_client = usize::try_from(num(value()?)?).map_err(|e| e.to_string())?,
            "--keys" => a.config.keys = usize::try_from(num(value()?)?).map_err(|e| e.to_string())?,
            "--disk-faults" => a.config.disk_faults = usize::try_from(num(value()?)?).map_err(|e| e.to_string())?,
            "--clock-steps" => a.config.clock_steps = usize::try_from(num(value()?)?).map_err(|e| e.to_string())?,
            "--slow-disks" => a.config.slow_disks = usize::try_from(num(value()?)?).map_err(|e| e.to_string())?,
            "--forgers" => a.config.forgers = usize::try_from(num(value()?)?).map_err(|e| e.to_string())?,
            "--wipes" => a.config.wipes = usize::try_from(num(value()?)?).map_err(|e| e.to_string())?,
            "--corruptions" => a.config.corruptions = usize::try_from(num(value()?)?).map_err(|e| e.to_string())?,
            "--repairs" => a.config.repairs = usize::try_from(num(value()?)?).map_err(|e| e.to_string())?,
            "--retention-window-ms" => a.config.retention_window_ms = Some(num(value()?)?).filter(|ms| *ms > 0),
            "--phase-ms" => {
                a.config.fault_phase_ms = num(value()?)?;
                phase_given = true;
            }
            "--durability" => {
                a.config.buffered = match value()?.as_str() {
                    "fsync" => false,
                    "buffered" => true,
                    other => return Err(format!("--durability: {other:?} is neither fsync nor buffered")),
                }
            }
            "--strategy" => a.config.strategy = value()?.parse()?,
            "--no-deletes" => a.config.deletes = false,
            "--placement" => a.config.placement = true,
            "--join" => a.config.join = true,
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown flag {other}\n{}", usage())),
        }
    }
    if !(3..=5).contains(&a.config.regions) {
        return Err("--regions must be 3 to 5".into());
    }
    if a.config.join && a.config.placement {
        return Err("--join does not run with --placement yet (placements name regions before they join)".into());
    }
    if is_strong {
        strong.regions = a.config.regions;
        if faults_given {
            strong.faults = a.config.faults;
        }
        if phase_given {
            strong.fault_phase_ms = a.config.fault_phase_ms;
        }
        a.strong = Some(strong);
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(cfg) = &args.strong {
        return strong_main(&args, cfg);
    }
    let started = Instant::now();
    let mut converge_ms_max = 0;
    let mut events = 0;
    let (mut transfers, mut pending, mut erased) = (0, 0, 0);
    let (mut truncated, mut tombstones) = (0, 0);
    let (mut snapshots, mut snapshot_records, mut resumes, mut rejoins, mut joins) = (0, 0, 0, 0, 0);
    let (mut sales, mut refused_rights, mut forwarded) = (0, 0, 0);
    let (mut grouped_commits, mut grouped_applies, mut storage_errors) = (0, 0, 0);
    let (mut corruptions, mut repair_runs, mut repaired) = (0, 0, 0);
    for seed in args.seed_start..args.seed_start + args.seeds {
        match run(seed, &args.config, args.keep.as_ref()) {
            Ok(report) => {
                converge_ms_max = converge_ms_max.max(report.converge_ms);
                events += report.events;
                transfers += report.transfers_received;
                pending += report.refused_pending;
                erased += report.changes_erased;
                truncated += report.changes_truncated;
                tombstones += report.tombstones_collected;
                snapshots += report.snapshots_installed;
                snapshot_records += report.snapshot_records;
                resumes += report.snapshot_resumes;
                rejoins += report.rejoins;
                joins += report.joins;
                sales += report.acked_sales;
                refused_rights += report.refused_rights;
                forwarded += report.forwarded_sales;
                grouped_commits += report.grouped_commits;
                grouped_applies += report.grouped_applies;
                storage_errors += report.storage_errors;
                corruptions += report.corruptions;
                repair_runs += report.repair_runs;
                repaired += report.records_repaired;
            }
            Err(violation) => {
                eprintln!("FAILED {violation}");
                let (keep, shortest) = if args.keep.is_some() {
                    (args.keep.clone().unwrap_or_default(), violation)
                } else {
                    shrink(seed, &args.config, violation)
                };
                let schedule = Schedule::generate(seed, &args.config);
                eprintln!("shortest failing fault schedule ({} of {} faults):", keep.len(), schedule.faults.len());
                for i in &keep {
                    if let Some((at, f)) = schedule.faults.get(*i) {
                        eprintln!("  [{i}] at {at} ms: {f}");
                    }
                }
                eprintln!("which fails with: {shortest}");
                let mut list: Vec<String> = keep.iter().map(ToString::to_string).collect();
                if list.is_empty() {
                    list.push("none".into());
                }
                eprintln!(
                    "replay: cargo run --release -p mrr-sim -- --seed {seed} {} --keep-faults {}",
                    args.config.flags(),
                    list.join(",")
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} seeds from {} passed: {:.1} seeds/s, {} events, longest convergence after heal {} ms (simulated)",
        args.seeds,
        args.seed_start,
        args.seeds as f64 / secs,
        events,
        converge_ms_max
    );
    println!(
        "writer: {grouped_commits} commits of several requests, {grouped_applies} applies of several batches, {storage_errors} requests and commits failed by the disk"
    );
    println!(
        "retention: {truncated} changelog entries truncated, {tombstones} tombstones collected below the stable point"
    );
    println!(
        "snapshots: {snapshots} wiped regions came back through a snapshot ({snapshot_records} records installed, {resumes} broken streams resumed); {rejoins} regions let go as lagging rejoined through one; {joins} regions joined the membership"
    );
    println!(
        "anti-entropy: {corruptions} records corrupted behind a writer, {repair_runs} runs, {repaired} records repaired (none of them but corrupted ones)"
    );
    if args.config.placement {
        println!(
            "placement: {transfers} transfers completed moved records, {pending} moves refused as pending, {erased} changelog entries erased after a move-out"
        );
    }
    if args.config.strategy == mrr_sim::Strategy::Escrow {
        println!(
            "escrow: {sales} sales acknowledged, {refused_rights} refused for lack of rights where they were made, {forwarded} of those sent on to a holder"
        );
    }
    ExitCode::SUCCESS
}

/// `--strong`: seeds of the strong tier, with failover times.
fn strong_main(args: &Args, cfg: &StrongConfig) -> ExitCode {
    let started = Instant::now();
    let (mut acknowledged, mut unknown, mut kills, mut leaders, mut replayed, mut pipes) = (0, 0, 0, 0, 0, 0);
    let mut failovers = Vec::new();
    for seed in args.seed_start..args.seed_start + args.seeds {
        match run_strong(seed, cfg) {
            Ok(r) => {
                acknowledged += r.ops_acknowledged;
                unknown += r.ops_unknown;
                kills += r.leader_kills;
                leaders += r.leaders_seen;
                replayed += r.applies_replayed;
                pipes += r.pipes;
                failovers.extend(r.failovers_ms);
            }
            Err(v) => {
                eprintln!("FAILED {v}");
                eprintln!("replay: cargo run --release -p mrr-sim -- --seed {seed} {}", cfg.flags());
                return ExitCode::FAILURE;
            }
        }
    }
    failovers.sort_unstable();
    let pct = |p: usize| failovers.get((failovers.len().saturating_sub(1)) * p / 100).copied().unwrap_or(0);
    println!(
        "{} strong seeds from {} passed: {:.1} seeds/s, {acknowledged} operations acknowledged, {unknown} with unknown outcome",
        args.seeds,
        args.seed_start,
        args.seeds as f64 / started.elapsed().as_secs_f64()
    );
    println!("{leaders} leaders elected in all (a failover-free seed elects one)");
    println!("{replayed} applies taken back by kills before they reached the disk, replayed from the log");
    println!("{pipes} append pipes opened (openraft opens one per replication stream; a cut or a dead peer ends one)");
    println!(
        "failover after {kills} leader kills ({} measured): p50 {} ms, p99 {} ms, max {} ms (simulated)",
        failovers.len(),
        pct(50),
        pct(99),
        failovers.last().copied().unwrap_or(0)
    );
    ExitCode::SUCCESS
}
