//! Replication lag per region pair and sustained write rate over the emulated WAN of `mrr dev`
//! (Tokyo–San Francisco 55 ms, San Francisco–Frankfurt 75 ms, Tokyo–Frankfurt 115 ms one way).
//!
//! Three nodes run in this process on 127.0.0.1; clients write through the HTTP API. Lag is
//! measured from the moment a client starts a write at its origin to the moment the target's
//! commit covering it lands (the target's version vector reaches the write's sequence number),
//! which is when it becomes readable there.
//!
//! cargo run --release -p mrr-server --example wan_bench -- --rate 300 --seconds 10 --concurrency 16

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use mrr_core::RegionName;
use mrr_server::dev::DevCluster;
use mrr_server::{Node, NodeOptions};
use serde_json::json;
use tokio::sync::Semaphore;

struct Args {
    rate: u64,
    seconds: u64,
    concurrency: usize,
    base_port: u16,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args { rate: 300, seconds: 10, concurrency: 16, base_port: 27_800 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--rate" => a.rate = value.parse()?,
            "--seconds" => a.seconds = value.parse()?,
            "--concurrency" => a.concurrency = value.parse()?,
            "--base-port" => a.base_port = value.parse()?,
            other => bail!("unknown flag {other}; flags: --rate --seconds --concurrency --base-port"),
        }
    }
    Ok(a)
}

/// Commit times of each node's version vector, by origin index.
type Events = Arc<Mutex<Vec<(Instant, [u64; 3])>>>;

struct Write {
    origin: usize,
    seq: u64,
    started: Instant,
    acked: Instant,
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = DevCluster::new(args.base_port, dir.path().to_owned(), None)?;
    let names: Vec<RegionName> =
        cluster.regions.iter().map(|r| RegionName::new(r.name.clone())).collect::<Result<_, _>>()?;
    let mut nodes = Vec::new();
    for (_, config) in cluster.configs(dir.path())? {
        nodes.push(Node::start(config, NodeOptions::default()).await?);
    }
    let clients: Vec<_> =
        nodes.iter().map(|n| mrr_client::connect(&format!("http://{}", n.api_addr), None)).collect::<Result<_, _>>()?;
    wait(Duration::from_secs(30), || async {
        for c in &clients {
            let s = c.status().await?;
            if !s.peers.iter().all(|p| p.outbound == "connected" && p.inbound_streams > 0) {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await
    .context("cluster did not connect")?;

    let events: Vec<Events> = (0..3).map(|_| Events::default()).collect();
    for (node, log) in nodes.iter().zip(&events) {
        let mut rx = node.applied();
        let (log, names) = (log.clone(), names.clone());
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let vv = rx.borrow_and_update().clone();
                let at = Instant::now();
                let seqs = [vv.get(&names[0]), vv.get(&names[1]), vv.get(&names[2])];
                log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((at, seqs));
            }
        });
    }

    // Phase 1: open-loop writes at a fixed rate, spread evenly over the three regions.
    let per_region = args.rate * args.seconds / 3;
    let period = Duration::from_secs_f64(3.0 / args.rate as f64);
    let inflight = Arc::new(Semaphore::new(1_024));
    let writes = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let mut skipped = 0u64;
    let start = Instant::now();
    let mut ticker = tokio::time::interval(period);
    for i in 0..per_region {
        ticker.tick().await;
        for (k, client) in clients.iter().enumerate() {
            let Ok(permit) = inflight.clone().try_acquire_owned() else {
                skipped += 1;
                continue;
            };
            let (client, writes) = (client.clone(), writes.clone());
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let record = json!({"id": format!("w{k}-{i}"), "payload": "x".repeat(100)});
                if let Ok(r) = client.publish("bench", &record).await {
                    let w = Write { origin: k, seq: r.token.seq, started, acked: Instant::now() };
                    writes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(w);
                }
                drop(permit);
            }));
        }
    }
    for t in tasks {
        t.await?;
    }
    let offered_s = start.elapsed().as_secs_f64();
    converge(&clients).await?;
    let writes = std::mem::take(&mut *writes.lock().unwrap_or_else(std::sync::PoisonError::into_inner));

    let mut latency = Histogram::<u64>::new(3)?;
    let mut lag: Vec<Vec<Histogram<u64>>> =
        (0..3).map(|_| (0..3).map(|_| Histogram::new(3)).collect()).collect::<Result<_, _>>()?;
    let logs: Vec<Vec<(Instant, [u64; 3])>> =
        events.iter().map(|e| e.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()).collect();
    for w in &writes {
        latency.record(micros(w.acked - w.started))?;
        for (target, log) in logs.iter().enumerate().filter(|(t, _)| *t != w.origin) {
            let idx = log.partition_point(|(_, vv)| vv[w.origin] < w.seq);
            let Some((at, _)) = log.get(idx) else { bail!("write {}:{} never applied at {target}", w.origin, w.seq) };
            lag[w.origin][target].record(micros(at.saturating_duration_since(w.started)))?;
        }
    }
    println!(
        "## Replication lag at {} writes/s offered ({} s, {} writes acknowledged, {} skipped)\n",
        args.rate,
        args.seconds,
        writes.len(),
        skipped
    );
    println!(
        "offered for {offered_s:.1} s; write latency (ack at origin) p50 {:.2} ms, p99 {:.2} ms\n",
        ms(latency.value_at_quantile(0.5)),
        ms(latency.value_at_quantile(0.99))
    );
    println!("| origin → target | one-way delay ms | lag p50 ms | lag p99 ms | lag max ms |");
    println!("|---|---|---|---|---|");
    for (o, row) in lag.iter().enumerate() {
        for (t, h) in row.iter().enumerate().filter(|(t, _)| *t != o) {
            println!(
                "| {} → {} | {} | {:.1} | {:.1} | {:.1} |",
                names[o],
                names[t],
                mrr_server::dev::delay_ms(names[o].as_str(), names[t].as_str()),
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
                ms(h.max())
            );
        }
    }

    // Phase 2: closed loop, `concurrency` writers per region, as fast as acks come back.
    let stop_at = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for (k, client) in clients.iter().enumerate() {
        for w in 0..args.concurrency {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < stop_at {
                    let record = json!({"id": format!("m{k}-{w}-{n}"), "payload": "x".repeat(100)});
                    if client.publish("bench", &record).await.is_ok() {
                        n += 1;
                    }
                }
                n
            }));
        }
    }
    let started = Instant::now();
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let drain_started = Instant::now();
    converge(&clients).await?;
    println!(
        "\n## Sustained writes\n\n{total} writes acknowledged in {elapsed:.1} s by {} concurrent writers per region: {:.0} writes/s (fsync before ack); all regions identical {:.2} s after the last ack\n",
        args.concurrency,
        total as f64 / elapsed,
        drain_started.elapsed().as_secs_f64()
    );
    for n in &nodes {
        n.shutdown();
    }
    Ok(())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

async fn converge(clients: &[mrr_client::Client]) -> anyhow::Result<()> {
    wait(Duration::from_secs(120), || async {
        let mut applied = Vec::new();
        for c in clients {
            applied.push(c.status().await?.applied);
        }
        Ok(applied.iter().all(|a| a == &applied[0]))
    })
    .await
    .context("regions did not converge")
}

async fn wait<F, Fut>(deadline: Duration, mut ok: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let start = Instant::now();
    while start.elapsed() < deadline {
        if ok().await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("timed out after {deadline:?}")
}
