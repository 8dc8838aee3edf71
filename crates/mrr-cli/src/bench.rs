//! `mrr bench`: a workload generator against a running cluster, and its report.
//!
//! Writes go to every region through the HTTP API (open loop at a fixed rate, or closed loop as
//! fast as acks return), optionally mixed with reads. Replication lag is measured from the
//! moment a write starts at its origin to the moment the target region's applied version
//! vector covers it (followed live on `/v1/watch/applied`, no polling), i.e. when it becomes
//! readable there. Every loop is bounded by the duration and by `--max-ops`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use mrr_client::Client;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    Uniform,
    Zipf,
    /// Operation n writes key n mod `--keys`: a fill that writes every key once.
    Sequential,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Any region's config: it lists every region and its `api` address.
    #[arg(short = 'c', long = "config")]
    pub config: PathBuf,
    #[arg(long, env = "MRR_KEY")]
    pub api_key: Option<String>,
    /// Offered operations per second over all regions; 0 runs closed loop (as fast as acks return).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Concurrent requests per region.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Size of each record's payload field.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,
    /// Exponent of the zipf distribution.
    #[arg(long, default_value_t = 1.0)]
    pub zipf_exponent: f64,
    /// Share of operations per region, e.g. `ap-northeast=2,us-west=1` (default: equal).
    #[arg(long)]
    pub write_share: Option<String>,
    /// Fraction of operations that are reads (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    pub read_ratio: f64,
    /// Fraction of writes that delete their key instead of writing it (0.0 to 1.0): with a
    /// fixed key set, a churn of overwrites and deletes.
    #[arg(long, default_value_t = 0.0)]
    pub delete_ratio: f64,
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Upper bound on operations, whatever the duration.
    #[arg(long, default_value_t = 10_000_000)]
    pub max_ops: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the report as markdown here.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1_000.0;
        Self {
            samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PairLag {
    pub source: String,
    pub target: String,
    pub lag: Percentiles,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub regions: Vec<String>,
    pub mode: String,
    pub duration_s: f64,
    pub concurrency_per_region: usize,
    pub value_bytes: usize,
    pub keys: u64,
    pub distribution: Distribution,
    pub read_ratio: f64,
    pub delete_ratio: f64,
    pub writes: u64,
    pub writes_per_s: f64,
    pub reads: u64,
    pub errors: u64,
    /// Operations the open-loop schedule could not start because every worker was busy.
    pub skipped: u64,
    pub write_latency: Percentiles,
    pub read_latency: Percentiles,
    pub replication_lag: Vec<PairLag>,
    /// Time from the last acknowledged write until every region held every write.
    pub converged_after_s: f64,
}

struct Write {
    origin: usize,
    seq: u64,
    started: Instant,
    acked: Instant,
}

/// Commit events seen at one region: when, and the applied vector then (by region index).
type Events = Arc<Mutex<Vec<(Instant, Vec<u64>)>>>;

fn shares(spec: Option<&str>, regions: &[String]) -> anyhow::Result<Vec<f64>> {
    let mut shares = vec![1.0; regions.len()];
    if let Some(spec) = spec {
        shares = vec![0.0; regions.len()];
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (name, weight) =
                part.split_once('=').with_context(|| format!("--write-share: {part:?} is not region=weight"))?;
            let i = regions
                .iter()
                .position(|r| r == name)
                .with_context(|| format!("--write-share: unknown region {name}"))?;
            shares[i] = weight.parse().with_context(|| format!("--write-share: {weight:?} is not a number"))?;
        }
    }
    if shares.iter().sum::<f64>() <= 0.0 {
        bail!("--write-share gives every region zero share");
    }
    Ok(shares)
}

pub async fn run(args: BenchArgs, clients: Vec<(String, Client)>) -> anyhow::Result<Report> {
    if !(0.0..=1.0).contains(&args.read_ratio) || !(0.0..=1.0).contains(&args.delete_ratio) {
        bail!("--read-ratio and --delete-ratio must be between 0 and 1");
    }
    if args.keys == 0 || args.concurrency == 0 {
        bail!("--keys and --concurrency must be positive");
    }
    let names: Vec<String> = clients.iter().map(|(n, _)| n.clone()).collect();
    let shares = shares(args.write_share.as_deref(), &names)?;
    let total_share: f64 = shares.iter().sum();

    // Follow every region's applied vector before the first write.
    let mut events: Vec<Events> = Vec::new();
    let mut followers = Vec::new();
    for (_, c) in &clients {
        let mut watch = c.watch_applied().await?;
        let log = Events::default();
        events.push(log.clone());
        let names = names.clone();
        followers.push(tokio::spawn(async move {
            while let Ok(Some(ev)) = watch.next().await {
                let at = Instant::now();
                let vv = names.iter().map(|n| ev.applied.get(n).copied().unwrap_or(0)).collect();
                log.lock().unwrap_or_else(PoisonError::into_inner).push((at, vv));
            }
        }));
    }

    let writes = Arc::new(Mutex::new(Vec::<Write>::new()));
    let read_latency = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let (ops, errors, skipped, reads) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let started = Instant::now();
    let deadline = started + args.duration;
    let payload = "x".repeat(args.value_bytes);

    let progress = indicatif::ProgressBar::new(args.duration.as_secs().max(1));
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} s  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let ticker = {
        let (progress, ops, errors) = (progress.clone(), ops.clone(), errors.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let secs = started.elapsed().as_secs_f64();
                let n = ops.load(Ordering::Relaxed);
                progress.set_position(secs as u64);
                progress.set_message(format!(
                    "{n} ops, {:.0}/s, {} errors",
                    n as f64 / secs.max(0.001),
                    errors.load(Ordering::Relaxed)
                ));
            }
        })
    };

    let mut tasks = Vec::new();
    for (k, (_, client)) in clients.iter().enumerate() {
        if shares[k] == 0.0 {
            continue;
        }
        // Open loop: a schedule per region feeds a bounded queue; closed loop: none.
        let (tx, rx) = tokio::sync::mpsc::channel::<()>(args.concurrency * 4);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        if args.rate > 0 {
            let region_rate = args.rate as f64 * shares[k] / total_share;
            let period = Duration::from_secs_f64(1.0 / region_rate.max(0.001));
            let (skipped, max_ops, ops) = (skipped.clone(), args.max_ops, ops.clone());
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                while Instant::now() < deadline && ops.load(Ordering::Relaxed) < max_ops {
                    tick.tick().await;
                    if tx.try_send(()).is_err() {
                        skipped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        } else {
            drop(tx);
        }
        for w in 0..args.concurrency {
            let (client, writes, read_latency) = (client.clone(), writes.clone(), read_latency.clone());
            let (ops, errors, reads, rx) = (ops.clone(), errors.clone(), reads.clone(), rx.clone());
            let (args, payload) = (args.clone(), payload.clone());
            let mut rng = StdRng::seed_from_u64(args.seed ^ ((k as u64) << 32) ^ w as u64);
            let zipf = rand_distr::Zipf::new(args.keys as f64, args.zipf_exponent).context("--zipf-exponent")?;
            tasks.push(tokio::spawn(async move {
                loop {
                    if args.rate > 0 {
                        let next =
                            tokio::time::timeout_at(deadline.into(), async { rx.lock().await.recv().await }).await;
                        if !matches!(next, Ok(Some(()))) {
                            return;
                        }
                    } else if Instant::now() >= deadline {
                        return;
                    }
                    let n = ops.fetch_add(1, Ordering::Relaxed);
                    if n >= args.max_ops {
                        return;
                    }
                    let key = match args.distribution {
                        Distribution::Uniform => rng.random_range(0..args.keys),
                        Distribution::Zipf => rng.sample(zipf) as u64 - 1,
                        Distribution::Sequential => n % args.keys.max(1),
                    };
                    let id = format!("k{key}");
                    let t0 = Instant::now();
                    if rng.random_bool(args.read_ratio) {
                        match client.query(&format!("{}/{id}", args.topic)).await {
                            Ok(_) => {
                                let us = t0.elapsed().as_micros() as u64;
                                let _ = read_latency.lock().unwrap_or_else(PoisonError::into_inner).record(us.max(1));
                                reads.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        continue;
                    }
                    let written = if rng.random_bool(args.delete_ratio) {
                        client.delete(&format!("{}/{id}", args.topic)).await
                    } else {
                        client.publish(&args.topic, &json!({"id": id, "payload": payload})).await
                    };
                    match written {
                        Ok(r) => {
                            let w = Write { origin: k, seq: r.token.seq, started: t0, acked: Instant::now() };
                            writes.lock().unwrap_or_else(PoisonError::into_inner).push(w);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await?;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let last_ack = Instant::now();
    progress.finish_and_clear();
    ticker.abort();
    let writes = std::mem::take(&mut *writes.lock().unwrap_or_else(PoisonError::into_inner));

    // Wait until every region has applied every acknowledged write.
    let mut needed = vec![0u64; names.len()];
    for w in &writes {
        needed[w.origin] = needed[w.origin].max(w.seq);
    }
    let converge_deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = events.iter().all(|e| {
            let e = e.lock().unwrap_or_else(PoisonError::into_inner);
            e.last().is_some_and(|(_, vv)| vv.iter().zip(&needed).all(|(have, need)| have >= need))
        });
        if done {
            break;
        }
        if Instant::now() > converge_deadline {
            bail!("regions did not apply every acknowledged write within 120 s after the run");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let converged_after_s = last_ack.elapsed().as_secs_f64();
    for f in followers {
        f.abort();
    }

    let mut write_latency = Histogram::<u64>::new(3)?;
    let mut lag: BTreeMap<(usize, usize), Histogram<u64>> = BTreeMap::new();
    let logs: Vec<Vec<(Instant, Vec<u64>)>> =
        events.iter().map(|e| e.lock().unwrap_or_else(PoisonError::into_inner).clone()).collect();
    for w in &writes {
        write_latency.record((w.acked - w.started).as_micros() as u64)?;
        for (target, log) in logs.iter().enumerate().filter(|(t, _)| *t != w.origin) {
            let i = log.partition_point(|(_, vv)| vv[w.origin] < w.seq);
            if let Some((at, _)) = log.get(i) {
                let h = match lag.entry((w.origin, target)) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => v.insert(Histogram::new(3)?),
                };
                h.record(at.saturating_duration_since(w.started).as_micros().max(1) as u64)?;
            }
        }
    }
    let read_latency = read_latency.lock().unwrap_or_else(PoisonError::into_inner).clone();
    Ok(Report {
        regions: names.clone(),
        mode: if args.rate > 0 { format!("open loop, {} ops/s offered", args.rate) } else { "closed loop".into() },
        duration_s: elapsed_s,
        concurrency_per_region: args.concurrency,
        value_bytes: args.value_bytes,
        keys: args.keys,
        distribution: args.distribution,
        read_ratio: args.read_ratio,
        delete_ratio: args.delete_ratio,
        writes: writes.len() as u64,
        writes_per_s: writes.len() as f64 / elapsed_s,
        reads: reads.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        skipped: skipped.load(Ordering::Relaxed),
        write_latency: Percentiles::of(&write_latency),
        read_latency: Percentiles::of(&read_latency),
        replication_lag: lag
            .iter()
            .map(|((s, t), h)| PairLag {
                source: names[*s].clone(),
                target: names[*t].clone(),
                lag: Percentiles::of(h),
            })
            .collect(),
        converged_after_s,
    })
}

pub fn markdown(r: &Report) -> String {
    let mut s = format!(
        "## mrr bench over {}\n\n{} for {:.1} s, {} concurrent per region, {} B values, {} keys ({:?}), read ratio {}, delete ratio {}\n\n",
        r.regions.join(", "),
        r.mode,
        r.duration_s,
        r.concurrency_per_region,
        r.value_bytes,
        r.keys,
        r.distribution,
        r.read_ratio,
        r.delete_ratio
    );
    s.push_str(&format!(
        "- writes: {} ({:.0}/s), reads: {}, errors: {}, skipped: {}\n- all regions caught up {:.2} s after the last ack\n\n",
        r.writes, r.writes_per_s, r.reads, r.errors, r.skipped, r.converged_after_s
    ));
    s.push_str("| measure | samples | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|\n");
    let row = |name: &str, p: &Percentiles| {
        format!("| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n", p.samples, p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms)
    };
    s.push_str(&row("write latency", &r.write_latency));
    if r.reads > 0 {
        s.push_str(&row("read latency", &r.read_latency));
    }
    for l in &r.replication_lag {
        s.push_str(&row(&format!("lag {} → {}", l.source, l.target), &l.lag));
    }
    s
}
