//! Two in-process nodes (ap-northeast, us-west) on 127.0.0.1 and the waits tests need.

#![allow(dead_code)]

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mrr_core::PhysicalClock;
use mrr_server::{Config, Listeners, Node, NodeOptions};

/// A listener on a port the kernel picked; it stays bound until the node takes it over, so no
/// other test can grab the port in between.
pub fn bound() -> anyhow::Result<(TcpListener, u16)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    Ok((l, port))
}

pub struct Pair {
    pub nodes: Vec<Node>,
    pub clients: Vec<mrr_client::Client>,
    pub peer_ports: [u16; 2],
    /// Each node's config file: a node takes up changed keys and secrets from it.
    pub configs: Vec<std::path::PathBuf>,
    _dirs: Vec<tempfile::TempDir>,
}

pub async fn pair(secrets: [&str; 2]) -> anyhow::Result<Pair> {
    pair_with(secrets, [None, None], "").await
}

/// Two nodes; `clocks` replace their physical clocks, `extra` is appended to both configs.
pub async fn pair_with(
    secrets: [&str; 2],
    clocks: [Option<Arc<dyn PhysicalClock>>; 2],
    extra: &str,
) -> anyhow::Result<Pair> {
    pair_full(secrets, clocks, extra, false).await
}

/// Two nodes with a strong tier: ap-northeast has `role: coordinator` and forms the group;
/// `extra` is appended to both configs.
pub async fn pair_with_coordinator(secrets: [&str; 2], extra: &str) -> anyhow::Result<Pair> {
    pair_full(secrets, [None, None], extra, true).await
}

async fn pair_full(
    secrets: [&str; 2],
    clocks: [Option<Arc<dyn PhysicalClock>>; 2],
    extra: &str,
    coordinator: bool,
) -> anyhow::Result<Pair> {
    let role = if coordinator { "\n    role: coordinator" } else { "" };
    let (l0, p0) = bound()?;
    let (l1, p1) = bound()?;
    let mut peer_listeners = [Some(l0), Some(l1)];
    let peer_ports = [p0, p1];
    let names = ["ap-northeast", "us-west"];
    let mut starts = Vec::new();
    let mut dirs = Vec::new();
    let mut configs = Vec::new();
    for k in 0..2 {
        let dir = tempfile::tempdir()?;
        let text = format!(
            "cluster: t\nregion: {}\nsecret: \"{}\"\ninsecure_plaintext: true\ndata_dir: {}\nlisten: {{ api: 127.0.0.1:0, peer: 127.0.0.1:{} }}\nregions:\n  - name: ap-northeast\n    endpoint: http://127.0.0.1:{}{role}\n  - name: us-west\n    endpoint: http://127.0.0.1:{}\n{extra}",
            names[k], secrets[k], dir.path().display(), peer_ports[k], peer_ports[0], peer_ports[1]
        );
        let path = dir.path().join("mrr-config.yaml");
        std::fs::write(&path, &text)?;
        let config = Config::load(&path)?;
        configs.push(path);
        let mut options = NodeOptions {
            heartbeat_interval: Duration::from_millis(100),
            peer_timeout: Duration::from_secs(2),
            ..NodeOptions::default()
        };
        if let Some(clock) = &clocks[k] {
            options.clock = clock.clone();
        }
        let listeners = Listeners { api: None, peer: peer_listeners[k].take() };
        starts.push(tokio::spawn(Node::start_on(config, options, listeners)));
        dirs.push(dir);
    }
    // Together: a new region asks its peers where it stands before it starts.
    let mut nodes = Vec::new();
    for start in starts {
        nodes.push(start.await??);
    }
    let clients =
        nodes.iter().map(|n| mrr_client::connect(&format!("http://{}", n.api_addr), None)).collect::<Result<_, _>>()?;
    Ok(Pair { nodes, clients, peer_ports, configs, _dirs: dirs })
}

impl Drop for Pair {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.shutdown();
        }
    }
}

pub async fn wait_for_record(client: &mrr_client::Client, path: &str) -> anyhow::Result<mrr_client::RecordEnvelope> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(r) = client.query(path).await? {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("{path} did not arrive within 30 s")
}

pub async fn wait_for_error(client: &mrr_client::Client, needle: &str) -> anyhow::Result<String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let s = client.status().await?;
        if let Some(e) = s.peers.iter().filter_map(|p| p.last_error.clone()).find(|e| e.contains(needle)) {
            return Ok(e);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("no peer error containing {needle:?} within 20 s")
}

/// The system clock shifted by an adjustable offset.
#[derive(Debug, Default)]
pub struct ShiftedClock {
    pub offset_ms: std::sync::atomic::AtomicI64,
}

impl PhysicalClock for ShiftedClock {
    fn now_ms(&self) -> u64 {
        let now = PhysicalClock::now_ms(&mrr_writer::SystemClock);
        now.saturating_add_signed(self.offset_ms.load(std::sync::atomic::Ordering::Relaxed))
    }
}
