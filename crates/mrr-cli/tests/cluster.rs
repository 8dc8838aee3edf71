//! Three real `mrr serve` processes on 127.0.0.1, with the emulated WAN of `mrr dev`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{by_id, wait_for, Cluster, REGIONS};
use mrr_client::{Client, RecordEnvelope};
use serde_json::json;
use tokio::task::JoinSet;

const CONVERGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_one_region_is_readable_in_the_other_two() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let tokyo = &cluster.clients[0];
    let written = tokyo
        .publish(
            "users",
            &json!({"id": "u001", "name": "Kaito", "__metadata": {"regions": ["*"], "syncFlags": ["IMPORTANT"]}}),
        )
        .await?;
    assert_eq!(written.origin_region, "ap-northeast");
    assert_eq!(written.token.seq, 1);
    for (c, region) in cluster.clients.iter().zip(REGIONS).skip(1) {
        let got =
            wait_for(&format!("u001 in {region}"), CONVERGE, || async { Ok(c.query("users/u001").await?) }).await?;
        assert_eq!(got, written, "{region} holds exactly what Tokyo wrote");
        assert_eq!(got.value, json!({"id": "u001", "name": "Kaito"}));
        assert_eq!(got.metadata.sync_flags, ["IMPORTANT"]);
    }
    // A delete replicates as a tombstone.
    cluster.clients[1].delete("users/u001").await?;
    for c in &cluster.clients {
        wait_for("delete to replicate", CONVERGE, || async {
            Ok(c.query("users/u001").await?.is_none().then_some(()))
        })
        .await?;
    }
    let logs = cluster.log(0);
    assert!(logs.contains("Region handshake completed"), "handshake logged:\n{logs}");
    Ok(())
}

/// Writes `count` puts to a region, `concurrency` at a time, over `keys` keys; returns every
/// acknowledged result.
async fn hammer(
    client: Client,
    region: &'static str,
    topic: &'static str,
    keys: usize,
    count: usize,
    concurrency: usize,
) -> Vec<RecordEnvelope> {
    let client = Arc::new(client);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..concurrency {
        let (client, next) = (client.clone(), next.clone());
        set.spawn(async move {
            let mut acked = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return acked;
                }
                let id = format!("k{:03}", i % keys);
                let record = json!({"id": id, "region": region, "i": i});
                if let Ok(r) = client.publish(topic, &record).await {
                    acked.push(r);
                }
            }
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.unwrap_or_default());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_conflicting_writes_from_all_regions_converge_to_the_newest_version() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    // 1,002 writes, 334 per region, all to the same 10 keys, at the same time.
    let mut set = JoinSet::new();
    for (k, region) in REGIONS.iter().enumerate() {
        set.spawn(hammer(cluster.clients[k].clone(), region, "stock", 10, 334, 8));
    }
    let mut acked = Vec::new();
    while let Some(r) = set.join_next().await {
        acked.extend(r?);
    }
    assert_eq!(acked.len(), 1_002, "every write was acknowledged");
    let state = cluster.converged("stock", CONVERGE).await?;
    // Last-writer-wins: each key ends at the acknowledged write with the greatest version, in
    // every region (converged() already checked all regions are identical).
    let mut newest: BTreeMap<String, RecordEnvelope> = BTreeMap::new();
    for r in acked {
        let e = newest.entry(r.id.clone()).or_insert_with(|| r.clone());
        if (r.version.wall_ms, r.version.logical, &r.version.region)
            > (e.version.wall_ms, e.version.logical, &e.version.region)
        {
            *e = r;
        }
    }
    assert_eq!(by_id(&state), newest);
    let origins: std::collections::BTreeSet<_> = state.iter().map(|r| r.origin_region.clone()).collect();
    assert!(!origins.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_killed_mid_stream_catches_up_without_losing_acknowledged_writes() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    // Unique keys, so every acknowledged write must survive as itself.
    let writers: Vec<_> = (0..3)
        .map(|k| {
            let c = cluster.clients[k].clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..400 {
                    let id = format!("{}-{i:04}", REGIONS[k]);
                    if let Ok(r) = c.publish("orders", &json!({"id": id, "n": i})).await {
                        acked.push(r);
                    }
                }
                acked
            })
        })
        .collect();
    // Kill eu-central once it has taken some writes of its own and some from its peers.
    wait_for("eu-central mid-stream", CONVERGE, || async {
        let s = cluster.clients[2].status().await?;
        Ok((s.applied.get("eu-central").copied().unwrap_or(0) >= 50
            && s.applied.get("ap-northeast").copied().unwrap_or(0) >= 50)
            .then_some(()))
    })
    .await?;
    cluster.kill9(2)?;
    // Keep writing elsewhere while it is down; then bring it back on the same data.
    wait_for("writes while eu-central is down", CONVERGE, || async {
        let s = cluster.clients[0].status().await?;
        Ok((s.applied.get("ap-northeast").copied().unwrap_or(0) >= 250).then_some(()))
    })
    .await?;
    cluster.spawn(2)?;
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await?);
    }
    let eu_acked = acked.iter().filter(|r| r.origin_region == "eu-central").count();
    assert!((50..400).contains(&eu_acked), "eu-central acknowledged {eu_acked} writes before it was killed");
    let state = by_id(&cluster.converged("orders", CONVERGE).await?);
    for r in &acked {
        assert_eq!(state.get(&r.id), Some(r), "acknowledged write {} present everywhere", r.id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_region_converges_after_the_partition_heals() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    cluster.partition(2, 0, true).await?;
    cluster.partition(2, 1, true).await?;
    for (k, c) in cluster.clients.iter().enumerate() {
        for i in 0..20 {
            c.publish("carts", &json!({"id": format!("c{i}"), "by": REGIONS[k]})).await?;
        }
    }
    // Tokyo and San Francisco still see each other; Frankfurt sees neither.
    wait_for("ap-northeast and us-west to converge", CONVERGE, || async {
        let a = cluster.clients[0].list_all("carts", true).await?;
        let b = cluster.clients[1].list_all("carts", true).await?;
        Ok((a == b && cluster.clients[0].status().await?.applied.get("us-west") == Some(&20)).then_some(()))
    })
    .await?;
    let eu = cluster.clients[2].status().await?;
    assert_eq!(eu.applied.get("ap-northeast"), None, "nothing crossed the partition");
    assert!(cluster.clients[2].list_all("carts", true).await?.iter().all(|r| r.origin_region == "eu-central"));

    cluster.partition(2, 0, false).await?;
    cluster.partition(2, 1, false).await?;
    let state = cluster.converged("carts", CONVERGE).await?;
    assert_eq!(state.len(), 20);
    // Same keys written in all three regions: each key has one winner and two writes that
    // lost; every loss is counted where the newer version was already in place.
    let mut conflicts = 0.0;
    let mut scraped = String::new();
    for c in &cluster.clients {
        let text = c.metrics().await?;
        conflicts += text
            .lines()
            .filter(|l| l.starts_with(r#"mrr_conflicts_total{topic="carts",strategy="timestamp"}"#))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        scraped.push_str(&text);
    }
    assert!(conflicts >= 40.0, "{conflicts} conflicts counted for 20 keys written in 3 regions");
    // The Grafana dashboard charts only metrics that exist.
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/grafana/mrr-dashboard.json"))?;
    let mut names: Vec<&str> =
        dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("mrr_")).collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() > 10, "{names:?}");
    for name in names {
        let family = name.trim_end_matches("_bucket");
        assert!(scraped.contains(&format!("# TYPE {family} ")), "dashboard uses {name}, which no node exports");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_region_relays_across_a_broken_pair() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    cluster.partition(0, 1, true).await?;
    // us-west must stop hearing Tokyo directly before the relay can be observed.
    wait_for("us-west to notice the partition", CONVERGE, || async {
        let s = cluster.clients[1].status().await?;
        Ok(s.peers.iter().any(|p| p.region == "ap-northeast" && p.inbound_streams == 0).then_some(()))
    })
    .await?;
    let written = cluster.clients[0].publish("users", &json!({"id": "relayed", "v": 1})).await?;
    let c = &cluster.clients[1];
    let got = wait_for("the write to reach us-west through eu-central", CONVERGE, || async {
        Ok(c.query("users/relayed").await?)
    })
    .await?;
    assert_eq!(got, written);
    let direct = c.status().await?.peers.into_iter().find(|p| p.region == "ap-northeast").map(|p| p.changes_received);
    assert_eq!(direct, Some(0), "nothing came over the partitioned link");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_latency_and_lag_for_every_region_pair() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let json_path = cluster.dir.path().join("report.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mrr"))
        .env("MRR_KEY", common::KEY)
        .arg("bench")
        .arg("-c")
        .arg(cluster.config_path(0))
        .args([
            "--rate",
            "150",
            "--duration",
            "2s",
            "--concurrency",
            "4",
            "--keys",
            "50",
            "--read-ratio",
            "0.1",
            "--json",
        ])
        .arg(&json_path)
        .output()?;
    anyhow::ensure!(out.status.success(), "mrr bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json_path)?)?;
    let writes = report["writes"].as_u64().unwrap_or(0);
    assert!(writes > 100, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let pairs = report["replication_lag"].as_array().cloned().unwrap_or_default();
    assert_eq!(pairs.len(), 6, "every ordered pair of three regions: {report}");
    for p in &pairs {
        // Lag cannot beat the emulated one-way delay of the pair.
        let floor = f64::from(u32::try_from(match (p["source"].as_str(), p["target"].as_str()) {
            (Some("ap-northeast"), Some("us-west")) | (Some("us-west"), Some("ap-northeast")) => 55,
            (Some("us-west"), Some("eu-central")) | (Some("eu-central"), Some("us-west")) => 75,
            _ => 115,
        })?);
        assert!(p["lag"]["p50_ms"].as_f64().unwrap_or(0.0) >= floor, "{p}");
        assert!(p["lag"]["samples"].as_u64().unwrap_or(0) > 0, "{p}");
    }
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(md.contains("| lag ap-northeast → eu-central |"), "{md}");
    Ok(())
}

/// `mrr dev` starts its regions one after another in one process: the first does not warn
/// that the others refuse connections while they are still starting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mrr_dev_starts_without_warnings() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let base = common::free_base_port();
    let log_path = dir.path().join("dev.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mrr"))
        .args(["dev", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir.path().join("data"))
        .env("MRR_KEY", common::KEY)
        .env("MRR_LOG", "info,fjall=warn,lsm_tree=warn,openraft=error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()?;
    let clients: Vec<Client> = (0..3u16)
        .map(|k| mrr_client::connect(&format!("http://127.0.0.1:{}", base + 10 * k), Some(common::KEY)))
        .collect::<Result<_, _>>()?;
    let connected = async {
        for c in &clients {
            wait_for("every stream up", Duration::from_secs(30), || async {
                let s = c.status().await?;
                Ok(s.peers.iter().all(|p| p.outbound == "connected" && p.inbound_streams > 0).then_some(()))
            })
            .await?;
        }
        anyhow::Ok(())
    }
    .await;
    child.kill()?; // by its own pid
    child.wait()?;
    connected?;
    let log = std::fs::read_to_string(&log_path)?;
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    assert!(warnings.is_empty(), "mrr dev warned while it started: {warnings:#?}");
    Ok(())
}

/// The article's `mrr-config.yaml`, as written (`https://` endpoints, no cluster, region or
/// secret), runs under `mrr dev -c` on loopback: a user's first write in Tokyo is read in San
/// Francisco, and the dev cluster's admin key is required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mrr_dev_runs_the_articles_config_as_written() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let base = common::free_base_port();
    let article = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/article/mrr-config.yaml");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mrr"))
        .args(["dev", "-c"])
        .arg(&article)
        .args(["--base-port", &base.to_string(), "--data-dir"])
        .arg(dir.path().join("data"))
        .env("MRR_KEY", common::KEY)
        .env("MRR_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("dev.log"))?)
        .spawn()?;
    let run = async {
        let client = |k: u16, key| mrr_client::connect(&format!("http://127.0.0.1:{}", base + 10 * k), key);
        let (tokyo, sfo) = (client(0, Some(common::KEY))?, client(1, Some(common::KEY))?);
        wait_for("Tokyo up", Duration::from_secs(30), || async { Ok(tokyo.status().await.ok().map(|_| ())) }).await?;
        tokyo.publish("users", &json!({"id": "u001", "name": "Kaito", "__metadata": {"regions": ["*"]}})).await?;
        let read =
            wait_for("u001 in San Francisco", Duration::from_secs(30), || async { Ok(sfo.query("users/u001").await?) })
                .await?;
        assert_eq!(read.value["name"], json!("Kaito"));
        match client(1, None)?.query("users/u001").await {
            Err(mrr_client::ClientError::Api { status: 401, .. }) => {}
            other => panic!("a request without the key should be 401, got {other:?}"),
        }
        anyhow::Ok(())
    }
    .await;
    child.kill()?; // by its own pid
    child.wait()?;
    run.map_err(|e| {
        anyhow::anyhow!(
            "{e}; mrr dev's log: {}",
            std::fs::read_to_string(dir.path().join("dev.log")).unwrap_or_default()
        )
    })
}

/// Once idle, freshness reads as the link's delay, within `default_ttl` (500 ms), not as the
/// heartbeat period; and regions started one after another do not warn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_cluster_starts_quietly_and_an_idle_one_reads_fresh() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    for c in &cluster.clients {
        wait_for("a first word from every peer", Duration::from_secs(10), || async {
            Ok(c.status().await?.peers.iter().all(|p| p.freshness_lag_ms.is_some()).then_some(()))
        })
        .await?;
    }
    // Sampled over two seconds (four heartbeat periods): every pair, every time.
    for _ in 0..20 {
        for (k, c) in cluster.clients.iter().enumerate() {
            let h = c.health().await?;
            for r in &h.regions {
                assert!(
                    !r.beyond_freshness_target && r.lag_ms < 300,
                    "{} sees {} {} ms behind at idle: {h:?}",
                    REGIONS[k],
                    r.region,
                    r.lag_ms
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (k, region) in REGIONS.iter().enumerate() {
        let log = cluster.log(k);
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
        assert!(warnings.is_empty(), "{region} warned while the cluster started: {warnings:#?}");
    }
    Ok(())
}

/// The stable point (`/v1/status` `stable`): it reaches a write once every region has it on
/// disk, stays below a write one region (down) does not have, and reaches it once that region
/// is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stable_point_covers_what_every_region_has_durably_applied() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let stream = |t: &mrr_api::WriteToken| match t.lane.as_str() {
        "normal" => t.origin.clone(),
        lane => format!("{}.{lane}", t.origin),
    };
    let clients = cluster.clients.clone();
    let stable_at = |k: usize, key: String| {
        let c = clients[k].clone();
        async move { anyhow::Ok(c.status().await?.stable.get(&key).copied().unwrap_or(0)) }
    };
    let first = cluster.clients[0].publish("users", &json!({"id": "s1"})).await?.token;
    for (k, region) in REGIONS.iter().enumerate() {
        wait_for(&format!("the stable point of {region} to reach the write"), CONVERGE, || async {
            Ok((stable_at(k, stream(&first)).await? >= first.seq).then_some(()))
        })
        .await?;
    }
    cluster.kill9(2)?;
    let second = cluster.clients[0].publish("users", &json!({"id": "s2"})).await?.token;
    let sf = cluster.clients[1].clone();
    wait_for("the second write in us-west", CONVERGE, || async { Ok(sf.query("users/s2").await?) }).await?;
    // Three ticks of the stable point with acks flowing between Tokyo and us-west.
    for _ in 0..6 {
        for (k, region) in REGIONS.iter().enumerate().take(2) {
            let at = stable_at(k, stream(&second)).await?;
            assert!(at < second.seq, "{region}'s stable point reached {at} without eu-central");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster.spawn(2)?;
    for (k, region) in REGIONS.iter().enumerate() {
        wait_for(&format!("the stable point of {region} to reach the second write"), CONVERGE, || async {
            Ok((stable_at(k, stream(&second)).await? >= second.seq).then_some(()))
        })
        .await?;
    }
    Ok(())
}
