//! Retention on running nodes: once both regions hold every change durably, each truncates its
//! changelog and collects its tombstones below the stable point, replication goes on above it,
//! and a peer that comes back with a wiped data directory (behind what the changelog retains)
//! installs a snapshot of the other and carries on where the cluster has its streams.

mod common;

use std::time::{Duration, Instant};

use mrr_replication::bootstrap::Start;
use mrr_server::{Config, Listeners, Node, NodeOptions};
use serde_json::json;

/// The value of a metric sample `name` (with its labels, as exposed) on the node of `client`.
async fn sample(client: &mrr_client::Client, name: &str) -> anyhow::Result<f64> {
    let text = client.metrics().await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

async fn wait_for_sample(client: &mrr_client::Client, name: &str, at_least: f64) -> anyhow::Result<f64> {
    let start = Instant::now();
    loop {
        let v = sample(client, name).await?;
        if v >= at_least {
            return Ok(v);
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(30), "{name} stayed at {v}, below {at_least}, for 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops us-west, wipes its data directory, and starts it again on the same ports as `start`
/// says; its client.
async fn wipe_and_restart(pair: &mut common::Pair, start: Start) -> anyhow::Result<mrr_client::Client> {
    stop_us_west(pair).await;
    restart_wiped(pair, start).await
}

async fn stop_us_west(pair: &mut common::Pair) {
    let stopped = pair.nodes.remove(1);
    stopped.shutdown();
    stopped.wait().await;
}

/// Starts the stopped us-west again with its data directory wiped, as `start` says.
async fn restart_wiped(pair: &mut common::Pair, start: Start) -> anyhow::Result<mrr_client::Client> {
    let mut config = Config::load(&pair.configs[1])?;
    std::fs::remove_dir_all(&config.data_dir)?;
    config.bootstrap = start;
    let peer = std::net::TcpListener::bind(("127.0.0.1", pair.peer_ports[1]))?;
    let options = NodeOptions {
        heartbeat_interval: Duration::from_millis(100),
        peer_timeout: Duration::from_secs(2),
        ..NodeOptions::default()
    };
    pair.nodes.push(Node::start_on(config, options, Listeners { api: None, peer: Some(peer) }).await?);
    Ok(mrr_client::connect(&format!("http://{}", pair.nodes[1].api_addr), None)?)
}

const TRUNCATED: &str = "mrr_collected_total{what=\"changes\"}";
const TOMBSTONES: &str = "mrr_collected_total{what=\"tombstones\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_stable_point_the_changelog_is_truncated_and_tombstones_collected() -> anyhow::Result<()> {
    let mut pair = common::pair(["retention-secret-0123", "retention-secret-0123"]).await?;
    let (a, b) = (&pair.clients[0], &pair.clients[1]);
    for i in 0..40 {
        a.put(&format!("users/u{i}"), &json!({"n": i})).await?;
    }
    for i in 0..10 {
        a.delete(&format!("users/u{i}")).await?;
    }
    common::wait_for_record(b, "users/u39").await?;

    // Both regions had every change durably: each truncates and collects.
    for c in [a, b] {
        wait_for_sample(c, TRUNCATED, 1.0).await?;
        if mrr_writer::COLLECT_TOMBSTONES {
            wait_for_sample(c, TOMBSTONES, 10.0).await?;
        }
    }
    for c in [a, b] {
        assert!(c.query("users/u3").await?.is_none(), "a collected delete stays a delete");
        assert_eq!(c.query("users/u30").await?.map(|r| r.value["n"].clone()), Some(json!(30)));
    }
    // Replication goes on above the point, in both directions; a collected key can be written
    // again.
    b.put("users/u3", &json!({"n": "again"})).await?;
    a.put("users/u40", &json!({"n": 40})).await?;
    assert_eq!(common::wait_for_record(a, "users/u3").await?.value["n"], json!("again"));
    common::wait_for_record(b, "users/u40").await?;

    // us-west comes back with a wiped data directory: it holds none of what ap-northeast's
    // changelog no longer keeps, and installs a snapshot of ap-northeast (the restart returns
    // once it has).
    let a = pair.clients[0].clone();
    let a = &a;
    let b = wipe_and_restart(&mut pair, Start::AskPeers).await?;
    assert_eq!(b.query("users/u39").await?.map(|r| r.value["n"].clone()), Some(json!(39)), "complete after the wipe");
    assert_eq!(b.query("users/u3").await?.map(|r| r.value["n"].clone()), Some(json!("again")));
    assert!(b.query("users/u5").await?.is_none(), "a delete stays a delete");
    assert_eq!(b.query("users/u40").await?.map(|r| r.value["n"].clone()), Some(json!(40)));
    // Its own stream goes on where ap-northeast holds it: a write numbered from 1 again would
    // be taken there for one it already has, and never applied.
    b.put("users/u50", &json!({"n": "after the wipe"})).await?;
    assert_eq!(common::wait_for_record(a, "users/u50").await?.value["n"], json!("after the wipe"));
    // And replication to it resumes from the snapshot's vector.
    a.put("users/u41", &json!({"n": 41})).await?;
    common::wait_for_record(&b, "users/u41").await?;
    let peers = a.status().await?.peers;
    assert!(peers.iter().all(|p| p.last_error.is_none()), "{peers:?}");
    Ok(())
}

/// A wiped region started with `bootstrap: new_cluster` (told not to ask) would number its
/// writes from 1 again: its peer holds more of its streams than it has, and it says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_region_told_not_to_ask_reports_that_its_peers_hold_more_of_it() -> anyhow::Result<()> {
    let mut pair = common::pair(["wiped-secret-0123456789", "wiped-secret-0123456789"]).await?;
    let b = &pair.clients[1];
    for i in 0..5 {
        b.put(&format!("users/b{i}"), &json!({"n": i})).await?;
    }
    common::wait_for_record(&pair.clients[0], "users/b4").await?;
    let b = wipe_and_restart(&mut pair, Start::NewCluster).await?;
    let error = common::wait_for_error(&b, "holds this region's streams").await?;
    assert!(error.contains("bootstrap: ask_peers"), "{error}");
    Ok(())
}

/// With `retention: { window }` and two regions, the peer away past the window is let go
/// (lagging), but the changelog keeps this region's own writes past what the only other region
/// holds: nobody else has them. The region comes back through a snapshot, complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_regions_the_one_let_go_still_holds_back_the_writes_only_its_peer_has() -> anyhow::Result<()> {
    let secrets = ["window-secret-0123456789", "window-secret-0123456789"];
    let mut pair = common::pair_with(secrets, [None, None], "retention: { window: 10s }\n").await?;
    let a = pair.clients[0].clone();
    for i in 0..20 {
        a.put(&format!("users/u{i}"), &json!({"n": i})).await?;
    }
    common::wait_for_record(&pair.clients[1], "users/u19").await?;
    let held = pair.clients[1].status().await?.applied;
    stop_us_west(&mut pair).await;
    for i in 20..50 {
        a.put(&format!("users/u{i}"), &json!({"n": i})).await?;
    }
    // Away: it holds truncation back, and ap-northeast's /health says so.
    let start = Instant::now();
    loop {
        let health = a.health().await?;
        if health
            .warnings
            .iter()
            .any(|w| w.contains("region us-west has been away") && w.contains("holds changelog truncation back"))
        {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "no warning that us-west holds retention back: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(a.status().await?.lagging.is_empty(), "not let go within the window");
    let start = Instant::now();
    loop {
        let status = a.status().await?;
        if status.lagging == ["us-west"] {
            assert_eq!(status.truncation_point, held, "no further than what us-west holds");
            break;
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(40), "us-west not let go: {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(sample(&a, "mrr_peer_lagging{peer=\"us-west\"}").await?, 1.0);
    let health = a.health().await?;
    assert!(health.warnings.iter().any(|w| w.contains("region us-west is lagging")), "{health:?}");
    // It comes back through a snapshot of ap-northeast, complete, and is let back.
    let b = restart_wiped(&mut pair, Start::AskPeers).await?;
    for i in [0, 19, 20, 49] {
        assert_eq!(b.query(&format!("users/u{i}")).await?.map(|r| r.value["n"].clone()), Some(json!(i)), "u{i}");
    }
    a.put("users/u50", &json!({"n": 50})).await?;
    common::wait_for_record(&b, "users/u50").await?;
    let start = Instant::now();
    while !a.status().await?.lagging.is_empty() {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(30), "us-west still lagging after it rejoined");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
