//! Peers that must be refused: a wrong cluster secret, another cluster, another protocol
//! version. Each gets a precise error, nothing replicates, and the node keeps serving.

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mrr_core::PhysicalClock;
use mrr_replication::proto::{peer_client::PeerClient, to_acceptor, Hello, ToAcceptor};
use mrr_server::{Config, Node, NodeOptions};
use serde_json::json;

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Pair {
    nodes: Vec<Node>,
    clients: Vec<mrr_client::Client>,
    peer_ports: [u16; 2],
    _dirs: Vec<tempfile::TempDir>,
}

async fn pair(secrets: [&str; 2]) -> anyhow::Result<Pair> {
    pair_with(secrets, [None, None], "").await
}

/// Two nodes; `clocks` replace their physical clocks, `extra` is appended to both configs.
async fn pair_with(
    secrets: [&str; 2],
    clocks: [Option<Arc<dyn PhysicalClock>>; 2],
    extra: &str,
) -> anyhow::Result<Pair> {
    let peer_ports = [free_port()?, free_port()?];
    let names = ["ap-northeast", "us-west"];
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for k in 0..2 {
        let dir = tempfile::tempdir()?;
        let text = format!(
            "cluster: t\nregion: {}\nsecret: \"{}\"\ndata_dir: {}\nlisten: {{ api: 127.0.0.1:0, peer: 127.0.0.1:{} }}\nregions:\n  - name: ap-northeast\n    endpoint: http://127.0.0.1:{}\n  - name: us-west\n    endpoint: http://127.0.0.1:{}\n{extra}",
            names[k], secrets[k], dir.path().display(), peer_ports[k], peer_ports[0], peer_ports[1]
        );
        let config = Config::parse(Path::new("test.yaml"), &text)?;
        let mut options = NodeOptions {
            heartbeat_interval: Duration::from_millis(100),
            peer_timeout: Duration::from_secs(2),
            ..NodeOptions::default()
        };
        if let Some(clock) = &clocks[k] {
            options.clock = clock.clone();
        }
        nodes.push(Node::start(config, options).await?);
        dirs.push(dir);
    }
    let clients =
        nodes.iter().map(|n| mrr_client::connect(&format!("http://{}", n.api_addr), None)).collect::<Result<_, _>>()?;
    Ok(Pair { nodes, clients, peer_ports, _dirs: dirs })
}

impl Drop for Pair {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.shutdown();
        }
    }
}

async fn wait_for_record(client: &mrr_client::Client, path: &str) -> anyhow::Result<mrr_client::RecordEnvelope> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(r) = client.query(path).await? {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("{path} did not arrive within 30 s")
}

async fn wait_for_error(client: &mrr_client::Client, needle: &str) -> anyhow::Result<String> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_the_wrong_secret_is_refused_and_nothing_replicates() -> anyhow::Result<()> {
    let p = pair(["secret-one-0123456789", "secret-two-0123456789"]).await?;
    p.clients[0].publish("users", &json!({"id": "u001"})).await?;
    let err = wait_for_error(&p.clients[0], "cluster secret mismatch").await?;
    assert!(err.contains("us-west"), "{err}");
    // Both directions are refused, each side by its own check.
    wait_for_error(&p.clients[1], "cluster secret mismatch").await?;
    assert_eq!(p.clients[1].query("users/u001").await?, None);
    assert!(p.clients[1].status().await?.applied.is_empty());
    assert_eq!(p.clients[1].health().await?.region, "us-west", "the node keeps serving");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_secrets_replicate() -> anyhow::Result<()> {
    let p = pair(["same-secret-0123456789"; 2]).await?;
    let w = p.clients[0].publish("users", &json!({"id": "u001"})).await?;
    assert_eq!(wait_for_record(&p.clients[1], "users/u001").await?, w);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_durability_replicates_once_the_syncer_persists() -> anyhow::Result<()> {
    let p = pair_with(["same-secret-0123456789"; 2], [None, None], "durability: buffered\n").await?;
    let w = p.clients[0].publish("users", &json!({"id": "u001"})).await?;
    assert_eq!(wait_for_record(&p.clients[1], "users/u001").await?, w);
    Ok(())
}

fn hello(protocol_version: u32, cluster: &str) -> ToAcceptor {
    ToAcceptor {
        msg: Some(to_acceptor::Msg::Hello(Hello {
            cluster: cluster.into(),
            protocol_version,
            region: "ap-northeast".into(),
            target_region: "us-west".into(),
            nonce: vec![7; 16],
            wall_ms: 0,
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_speaking_another_protocol_or_cluster_get_a_precise_status() -> anyhow::Result<()> {
    let p = pair(["same-secret-0123456789"; 2]).await?;
    let url = format!("http://127.0.0.1:{}", p.peer_ports[1]);
    for (msg, code, needle) in [
        (hello(99, "t"), tonic::Code::FailedPrecondition, "protocol version 99"),
        (hello(mrr_replication::PROTOCOL_VERSION, "other"), tonic::Code::FailedPrecondition, "cluster \"other\""),
        (
            ToAcceptor { msg: Some(to_acceptor::Msg::Heartbeat(Default::default())) },
            tonic::Code::InvalidArgument,
            "must be Hello",
        ),
    ] {
        let mut client = PeerClient::connect(url.clone()).await?;
        let status = client.replicate(tokio_stream::iter(vec![msg])).await.expect_err("refused");
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(status.message().contains(needle), "{}", status.message());
    }
    assert_eq!(p.clients[1].health().await?.region, "us-west", "the node keeps serving");
    Ok(())
}

/// The system clock shifted by an adjustable offset.
#[derive(Debug, Default)]
struct ShiftedClock {
    offset_ms: std::sync::atomic::AtomicI64,
}

impl PhysicalClock for ShiftedClock {
    fn now_ms(&self) -> u64 {
        let now = PhysicalClock::now_ms(&mrr_writer::SystemClock);
        now.saturating_add_signed(self.offset_ms.load(std::sync::atomic::Ordering::Relaxed))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_stamped_beyond_max_clock_skew_are_refused_then_delivered_once_clocks_agree() -> anyhow::Result<()> {
    let fast = Arc::new(ShiftedClock::default());
    fast.offset_ms.store(1_500, std::sync::atomic::Ordering::Relaxed);
    let p = pair_with(["same-secret-0123456789"; 2], [Some(fast.clone()), None], "").await?;
    let clients = &p.clients;
    // Tokyo's clock runs 1.5 s fast: its write is stamped 1.5 s in us-west's future.
    let w = clients[0].publish("users", &json!({"id": "early"})).await?;
    let err = wait_for_error(&clients[0], "refused change").await?;
    assert!(err.contains("max_clock_skew"), "{err}");
    assert_eq!(clients[1].query("users/early").await?, None, "refused, not applied");
    // Tokyo's clock is fixed. The refused change is retried, not lost: once us-west's clock
    // reaches within 200 ms of its stamp, it applies, exactly as written.
    fast.offset_ms.store(0, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(wait_for_record(&clients[1], "users/early").await?, w);
    Ok(())
}
