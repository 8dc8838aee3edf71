//! Chaos against real processes: three `mrr serve` under a write load from every region; one
//! is killed with -9 mid-stream and restarted, another pair is partitioned with `mrr chaos`
//! and healed. At the end every acknowledged write is in every region and all are identical.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{by_id, wait_for, Cluster, REGIONS};
use serde_json::json;

fn chaos(cluster: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_mrr"))
        .env("MRR_KEY", common::KEY)
        .arg("chaos")
        .arg("-c")
        .arg(cluster.config_path(0))
        .args(args)
        .output()?;
    anyhow::ensure!(out.status.success(), "mrr chaos {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_partition_under_load_lose_nothing() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let stop = Arc::new(AtomicBool::new(false));
    // Four writers per region, each bounded to 300 writes, unique keys; a shared key per
    // region pair adds conflicts.
    let mut writers = Vec::new();
    for (k, region) in REGIONS.iter().enumerate() {
        for w in 0..4 {
            let (c, stop) = (cluster.clients[k].clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..300 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = if i % 10 == 0 { format!("hot-{}", i % 3) } else { format!("{region}-{w}-{i:03}") };
                    if let Ok(r) = c.publish("chaos", &json!({"id": id, "by": region, "i": i})).await {
                        acked.push(r);
                    }
                }
                acked
            }));
        }
    }
    let clients = cluster.clients.clone();
    let applied = |k: usize, origin: &'static str, at_least: u64| {
        let c = clients[k].clone();
        async move { Ok((c.status().await?.applied.get(origin).copied().unwrap_or(0) >= at_least).then_some(())) }
    };
    wait_for("load under way", Duration::from_secs(60), || applied(1, "us-west", 100)).await?;

    // kill -9 San Francisco mid-stream.
    cluster.kill9(1)?;
    // Partition Tokyo and Frankfurt while San Francisco is down: nobody can relay.
    let out = chaos(&cluster, &["partition", "ap-northeast", "eu-central"])?;
    assert!(out.contains("ap-northeast -> eu-central") && out.contains("partitioned"), "{out}");
    let before = clients[0].status().await?.applied.get("ap-northeast").copied().unwrap_or(0);
    wait_for("writes during the partition", Duration::from_secs(60), || applied(0, "ap-northeast", before + 50))
        .await?;
    // Both sides notice: the streams time out and reconnects stall until the heal.
    for (k, peer) in [(0, "eu-central"), (2, "ap-northeast")] {
        let c = clients[k].clone();
        wait_for("the partition to be noticed", Duration::from_secs(60), || {
            let c = c.clone();
            async move {
                let s = c.status().await?;
                Ok(s.peers
                    .iter()
                    .any(|p| p.region == peer && p.inbound_streams == 0 && p.outbound != "connected")
                    .then_some(()))
            }
        })
        .await?;
    }
    cluster.spawn(1)?;
    chaos(&cluster, &["heal", "ap-northeast", "eu-central"])?;
    let shown = chaos(&cluster, &["show"])?;
    assert!(!shown.contains("partitioned"), "{shown}");

    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await?);
    }
    stop.store(true, Ordering::Relaxed);
    let state = by_id(&cluster.converged("chaos", Duration::from_secs(90)).await?);
    let mut newest = std::collections::BTreeMap::new();
    for r in &acked {
        let e = newest.entry(r.id.clone()).or_insert_with(|| r.clone());
        if (r.version.wall_ms, r.version.logical, &r.version.region)
            > (e.version.wall_ms, e.version.logical, &e.version.region)
        {
            *e = r.clone();
        }
    }
    // A write in flight when us-west was killed may have committed without its ack reaching
    // the client: such a write may survive, but only one of the killed region's writers'.
    let is_unacked_from_killed = |r: &mrr_client::RecordEnvelope| r.origin_region == "us-west";
    for (id, w) in &newest {
        let r = state.get(id).unwrap_or_else(|| panic!("acknowledged {id} lost"));
        let newer_or_same = (r.version.wall_ms, r.version.logical, &r.version.region)
            >= (w.version.wall_ms, w.version.logical, &w.version.region);
        assert!(newer_or_same, "{id}: {:?} is older than the acknowledged {:?}", r.version, w.version);
        assert!(
            r == w || is_unacked_from_killed(r),
            "{id}: every region holds the newest acknowledged write, got {r:?}"
        );
    }
    let extra: Vec<_> = state.values().filter(|r| !newest.contains_key(&r.id)).collect();
    assert!(extra.len() <= 4 && extra.iter().all(|r| is_unacked_from_killed(r)), "unexpected records: {extra:?}");
    assert!(acked.len() > 2_000, "the load ran: {} writes acknowledged", acked.len());
    Ok(())
}
