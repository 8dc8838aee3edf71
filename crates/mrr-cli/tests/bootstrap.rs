//! A region whose data directory is wiped under load comes back complete, on three `mrr serve`
//! processes: its peers have truncated their changelogs (so it cannot replay them), it asks
//! where it stands, installs a snapshot of one of them while both keep taking writes, catches up
//! from their logs after the snapshot, and goes on numbering its own writes where they hold them.

mod common;

use std::time::Duration;

use common::{by_id, wait_for, Cluster, REGIONS};
use serde_json::json;

const CONVERGE: Duration = Duration::from_secs(90);

async fn truncated(client: &mrr_client::Client) -> anyhow::Result<f64> {
    let text = client.metrics().await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("mrr_collected_total{what=\"changes\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_wiped_under_load_returns_complete_through_a_snapshot() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    // eu-central writes, and everything it acknowledged reaches its peers.
    let eu = cluster.clients[2].clone();
    let mut acked = Vec::new();
    for i in 0..300 {
        acked.push(eu.publish("orders", &json!({"id": format!("eu-central-{i:04}"), "n": i})).await?);
    }
    // The other two write throughout the wipe and the bootstrap (bounded in count).
    let writers: Vec<_> = (0..2)
        .map(|k| {
            let c = cluster.clients[k].clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..1_500 {
                    let id = format!("{}-{i:04}", REGIONS[k]);
                    if let Ok(r) = c.publish("orders", &json!({"id": id, "n": i})).await {
                        acked.push(r);
                    }
                }
                acked
            })
        })
        .collect();
    wait_for("eu-central's writes at its peers and their logs truncated", CONVERGE, || async {
        let mut ready = true;
        for k in 0..2 {
            let s = cluster.clients[k].status().await?;
            ready &= s.applied.get("eu-central").copied().unwrap_or(0) >= 300;
            ready &= truncated(&cluster.clients[k]).await? > 0.0;
        }
        Ok(ready.then_some(()))
    })
    .await?;
    cluster.kill9(2)?;
    std::fs::remove_dir_all(cluster.dir.path().join("data").join("eu-central"))?;
    cluster.spawn(2)?;
    // Back, it takes writes again, numbered after what its peers hold of it.
    let again = wait_for("eu-central serving again", CONVERGE, || async {
        Ok(eu.publish("orders", &json!({"id": "eu-central-after", "n": 1})).await.ok())
    })
    .await?;
    assert_eq!(again.origin_region, "eu-central");
    acked.push(again);
    for w in writers {
        acked.extend(w.await?);
    }
    let state = by_id(&cluster.converged("orders", CONVERGE).await?);
    for r in &acked {
        assert_eq!(state.get(&r.id), Some(r), "acknowledged write {} present everywhere", r.id);
    }
    let log = cluster.log(2);
    assert!(log.contains("snapshot installed"), "eu-central came back through a snapshot:\n{log}");
    Ok(())
}

/// With `retention: { window: 10s }`, a region down longer than the window is let go: its
/// peers warn while it holds their changelogs back, then mark it lagging and truncate past what
/// it holds, so the cluster's changelog stays bounded while it is gone. It comes back through a
/// snapshot (its data directory moved aside: an automatic rejoin of a region that kept its data
/// is not built yet) and the cluster is whole again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_down_past_the_retention_window_is_let_go_and_returns_through_a_snapshot() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(|c| format!("{c}retention: {{ window: 10s }}\n")).await?;
    let eu = cluster.clients[2].clone();
    for i in 0..50 {
        eu.publish("orders", &json!({"id": format!("eu-central-{i:04}"), "n": i})).await?;
    }
    wait_for("eu-central's writes at its peers", CONVERGE, || async {
        let mut all = true;
        for k in 0..2 {
            all &= cluster.clients[k].status().await?.applied.get("eu-central").copied().unwrap_or(0) >= 50;
        }
        Ok(all.then_some(()))
    })
    .await?;
    let held = cluster.clients[2].status().await?.applied;
    cluster.kill9(2)?;
    let mut acked = Vec::new();
    for i in 0..200 {
        for (client, region) in cluster.clients.iter().zip(REGIONS).take(2) {
            acked.push(client.publish("orders", &json!({"id": format!("{region}-{i:04}"), "n": i})).await?);
        }
    }
    // Within the window it holds both peers' truncation back, and they say so; past it, it is
    // lagging and each truncates its own stream past what eu-central holds of it.
    wait_for("a warning that eu-central holds retention back", CONVERGE, || async {
        let h = cluster.clients[0].health().await?;
        Ok(h.warnings.iter().any(|w| w.contains("region eu-central has been away")).then_some(()))
    })
    .await?;
    for (client, region) in cluster.clients.iter().zip(REGIONS).take(2) {
        wait_for("eu-central let go and the changelog truncated past it", CONVERGE, || async {
            let s = client.status().await?;
            let own = s.truncation_point.get(region).copied().unwrap_or(0);
            let theirs = held.get(region).copied().unwrap_or(0);
            Ok((s.lagging == ["eu-central"] && own > theirs).then_some(()))
        })
        .await?;
        let h = client.health().await?;
        assert!(h.warnings.iter().any(|w| w.contains("region eu-central is lagging")), "{h:?}");
    }
    std::fs::rename(cluster.dir.path().join("data").join("eu-central"), cluster.dir.path().join("eu-central.old"))?;
    cluster.spawn(2)?;
    let state = by_id(&cluster.converged("orders", CONVERGE).await?);
    for r in &acked {
        assert_eq!(state.get(&r.id), Some(r), "acknowledged write {} present everywhere", r.id);
    }
    assert_eq!(state.len(), 450);
    for k in 0..2 {
        wait_for("eu-central let back", CONVERGE, || async {
            Ok(cluster.clients[k].status().await?.lagging.is_empty().then_some(()))
        })
        .await?;
    }
    Ok(())
}
