//! Metrics exist, are well-formed (promtool), and move when they should; health turns critical
//! when a region stops replicating, with no traffic at all.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mrr_client::HealthStatus;
use serde_json::json;

mod common;
use common::*;

async fn scrape(node: &mrr_server::Node) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(node.api_addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or_default();
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Axum answers a fixed-size body with Content-Length, never chunked, for a String.
    Ok(body.to_owned())
}

/// The value of the sample whose line starts with `series` (name and labels as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

fn promtool_check(text: &str) -> anyhow::Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("promtool not runnable ({e}): install it with `apt-get install prometheus`"))?;
    use std::io::Write;
    child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?.write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_well_formed_and_move_with_replication() -> anyhow::Result<()> {
    let p = pair(["same-secret-0123456789"; 2]).await?;
    let before = scrape(&p.nodes[0]).await?;
    promtool_check(&before)?;
    for name in [
        "mrr_peer_sent_changes_total",
        "mrr_peer_sent_bytes_total",
        "mrr_peer_received_changes_total",
        "mrr_peer_received_bytes_total",
        "mrr_applied_changes_total",
        "mrr_peer_backlog_changes",
        "mrr_peer_handshakes_total",
        "mrr_peer_disconnects_total",
        "mrr_peer_clock_skew_seconds",
        "mrr_storage_bytes",
        "mrr_freshness_violations_total",
    ] {
        assert!(before.contains(&format!("# TYPE {name} ")), "{name} missing from:\n{before}");
    }
    let sent = |lane: &str| format!(r#"mrr_peer_sent_changes_total{{peer="us-west",lane="{lane}"}}"#);
    let sent_bytes = |lane: &str| format!(r#"mrr_peer_sent_bytes_total{{peer="us-west",lane="{lane}"}}"#);
    for lane in ["urgent", "normal", "bulk"] {
        assert_eq!(sample(&before, &sent(lane)), Some(0.0), "{lane}");
    }

    for i in 0..20 {
        p.clients[0].publish("users", &json!({"id": format!("u{i}")})).await?;
    }
    let urgent = json!({"id": "s1", "__metadata": {"regions": ["*"], "syncFlags": ["SYNC_PRIORITY=1"]}});
    p.clients[0].publish("stock", &urgent).await?;
    wait_for_record(&p.clients[1], "users/u19").await?;
    wait_for_record(&p.clients[1], "stock/s1").await?;
    let a = scrape(&p.nodes[0]).await?;
    promtool_check(&a)?;
    assert_eq!(sample(&a, &sent("normal")), Some(20.0), "{a}");
    assert_eq!(sample(&a, &sent("urgent")), Some(1.0), "{a}");
    assert_eq!(sample(&a, &sent("bulk")), Some(0.0), "{a}");
    assert!(sample(&a, &sent_bytes("normal")).is_some_and(|b| b > 20.0 * 10.0));
    assert!(sample(&a, &sent_bytes("urgent")).is_some_and(|b| b > 10.0));
    assert_eq!(sample(&a, r#"mrr_write_latency_seconds_count{op="put"}"#), Some(21.0), "{a}");
    assert!(sample(&a, r#"mrr_peer_handshakes_total{peer="us-west",direction="outbound"}"#).is_some_and(|n| n >= 1.0));

    // The receiving side counts, applies and times the same 21 changes, per pair and topic.
    let start = Instant::now();
    let b = loop {
        let b = scrape(&p.nodes[1]).await?;
        if sample(&b, r#"mrr_applied_changes_total{origin="ap-northeast"}"#) == Some(21.0) {
            break b;
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(20), "applied counter never reached 21:\n{b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    promtool_check(&b)?;
    let lag = r#"mrr_replication_lag_seconds_count{source="ap-northeast",target="us-west",topic="users"}"#;
    assert_eq!(sample(&b, lag), Some(20.0), "{b}");
    assert!(b.contains(
        r#"mrr_replication_lag_seconds_bucket{source="ap-northeast",target="us-west",topic="users",le="0.05"}"#
    ));
    assert_eq!(sample(&b, r#"mrr_peer_received_changes_total{peer="ap-northeast"}"#), Some(21.0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_critical_when_a_region_stops_even_without_traffic() -> anyhow::Result<()> {
    let thresholds = "health: { lag_warn: 1s, lag_critical: 2s }\n";
    let p = pair_with(["same-secret-0123456789"; 2], [None, None], thresholds).await?;
    // Healthy while idle: heartbeats keep freshness near the network delay.
    let start = Instant::now();
    loop {
        let h = p.clients[0].health().await?;
        if h.status == HealthStatus::Ok && h.regions.iter().all(|r| r.inbound_connected && r.lag_ms < 1_000) {
            break;
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(20), "never healthy: {h:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Idle for longer than the critical threshold: still healthy, because heartbeats prove it.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let h = p.clients[0].health().await?;
    assert_eq!(h.status, HealthStatus::Ok, "an idle cluster is not a stalled one: {h:?}");

    // us-west stops replicating. No writes anywhere: the stall must still surface.
    p.nodes[1].shutdown();
    let start = Instant::now();
    let h = loop {
        let h = p.clients[0].health().await?;
        if h.status == HealthStatus::Critical {
            break h;
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(20), "never critical: {h:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let r = &h.regions[0];
    assert_eq!(r.region, "us-west");
    assert!(r.lag_ms >= 2_000 && r.beyond_freshness_target, "{r:?}");
    assert!(r.reason.as_deref().is_some_and(|why| why.contains("us-west")), "{r:?}");
    Ok(())
}
