//! A real three-region cluster for tests: `mrr dev --write-configs` writes the configs, three
//! `mrr serve -c` processes run them on 127.0.0.1, and the harness kills (-9) and restarts them
//! by pid. Every wait has a deadline and polls a condition; nothing sleeps and hopes.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mrr_client::{Client, LinkSettings, RecordEnvelope};

pub const REGIONS: [&str; 3] = ["ap-northeast", "us-west", "eu-central"];

/// The clusters' admin key: `mrr dev` admits it (it takes `MRR_KEY`), and so does every tool
/// a test runs with it in the environment.
pub const KEY: &str = "mrr_test-admin-key-0123456789abcdef";

/// An HTTP client that sends the admin key, for requests the Rust client has no call for.
pub fn http() -> reqwest::Client {
    mrr_tls::install_default_provider();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_static("Bearer mrr_test-admin-key-0123456789abcdef"),
    );
    reqwest::Client::builder().default_headers(headers).build().expect("a client with default headers")
}

/// Waits for `check` to return `Some`, polling, up to `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_err = None;
    while start.elapsed() < deadline {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("timed out after {deadline:?} waiting for {what} (last error: {last_err:?})")
}

/// Finds a base port whose six ports are free right now.
pub fn free_base_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Below Linux's ephemeral range (32768+), so outgoing connections of other tests never
    // sit on these ports; the processes bind them themselves moments later.
    let seed = (std::process::id() % 250) as u16 * 40;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = 20_000 + seed.wrapping_add(n.wrapping_mul(40)) % 12_000;
        // Room for a fourth region too (`tests/membership.rs` adds one).
        let free = (0..4).all(|k| (0..2).all(|o| TcpListener::bind(("127.0.0.1", base + 10 * k + o)).is_ok()));
        if free {
            return base;
        }
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub base_port: u16,
    children: Vec<Option<Child>>,
    pub clients: Vec<Client>,
}

impl Cluster {
    /// Starts three regions and waits until every region is connected to every other.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|config| config.to_owned()).await
    }

    /// As `start`, with each region's config text passed through `edit` first.
    pub async fn start_with(edit: impl Fn(&str) -> String) -> anyhow::Result<Self> {
        Self::start_dev(&[], edit).await
    }

    /// As `start_with`, with more `mrr dev` arguments (`--tls`).
    pub async fn start_dev(dev_args: &[&str], edit: impl Fn(&str) -> String) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("mrr-test-").tempdir()?;
        let base_port = free_base_port();
        let out = Command::new(env!("CARGO_BIN_EXE_mrr"))
            .arg("dev")
            .args(dev_args)
            .arg("--write-configs")
            .arg(dir.path().join("configs"))
            .env("MRR_KEY", KEY)
            .args(["--base-port", &base_port.to_string(), "--data-dir"])
            .arg(dir.path().join("data"))
            .output()?;
        if !out.status.success() {
            bail!("mrr dev --write-configs failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        for region in REGIONS {
            let path = dir.path().join("configs").join(format!("{region}.yaml"));
            std::fs::write(&path, edit(&std::fs::read_to_string(&path)?))?;
        }
        // With --tls the APIs are HTTPS under the dev CA the configs' directory holds.
        let ca = std::fs::read(dir.path().join("configs/certs/ca.pem")).ok();
        let scheme = if ca.is_some() { "https" } else { "http" };
        let clients = (0..3)
            .map(|k| {
                let url = format!("{scheme}://127.0.0.1:{}", base_port + 10 * k as u16);
                mrr_client::connect_with_ca(&url, Some(KEY), ca.as_deref())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut cluster = Self { dir, base_port, children: vec![None, None, None], clients };
        for k in 0..3 {
            cluster.spawn(k)?;
        }
        cluster.wait_connected().await?;
        Ok(cluster)
    }

    pub fn config_path(&self, k: usize) -> PathBuf {
        self.dir.path().join("configs").join(format!("{}.yaml", REGIONS[k]))
    }

    fn log_path(&self, k: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", REGIONS[k]))
    }

    pub fn spawn(&mut self, k: usize) -> anyhow::Result<()> {
        assert!(self.children[k].is_none(), "region {k} is already running");
        let log = File::options().create(true).append(true).open(self.log_path(k))?;
        let child = Command::new(env!("CARGO_BIN_EXE_mrr"))
            .args(["serve", "-c"])
            .arg(self.config_path(k))
            .env("MRR_LOG", "info,fjall=warn,lsm_tree=warn,openraft=error")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn mrr serve")?;
        self.children[k] = Some(child);
        Ok(())
    }

    /// kill -9, by the child's own pid.
    pub fn kill9(&mut self, k: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.children[k].take() {
            child.kill()?; // SIGKILL on Unix
            child.wait()?;
        }
        Ok(())
    }

    pub fn log(&self, k: usize) -> String {
        std::fs::read_to_string(self.log_path(k)).unwrap_or_default()
    }

    /// Every region reports both peers connected in both directions.
    pub async fn wait_connected(&self) -> anyhow::Result<()> {
        for (k, c) in self.clients.iter().enumerate() {
            wait_for(&format!("{} connected to all peers", REGIONS[k]), Duration::from_secs(30), || async {
                let s = match c.status().await {
                    Ok(s) => s,
                    Err(e) => return Err(e.into()),
                };
                let all =
                    s.peers.len() == 2 && s.peers.iter().all(|p| p.outbound == "connected" && p.inbound_streams > 0);
                Ok(all.then_some(()))
            })
            .await?;
        }
        Ok(())
    }

    /// Partitions (or heals) regions `a` and `b`, both directions.
    pub async fn partition(&self, a: usize, b: usize, partitioned: bool) -> anyhow::Result<()> {
        let (da, db) = (REGIONS[a], REGIONS[b]);
        let current = |k: usize, peer: &'static str| async move {
            let view = self.clients[k].links().await?;
            anyhow::Ok(view.links.get(peer).copied().unwrap_or_default())
        };
        let la = current(a, db).await?;
        let lb = current(b, da).await?;
        self.clients[a].set_link(db, LinkSettings { partitioned, ..la }).await?;
        self.clients[b].set_link(da, LinkSettings { partitioned, ..lb }).await?;
        Ok(())
    }

    /// Waits until all regions have applied the same version vector and hold identical
    /// records (tombstones included) in `topic`; returns region 0's records.
    pub async fn converged(&self, topic: &str, deadline: Duration) -> anyhow::Result<Vec<RecordEnvelope>> {
        wait_for(&format!("all regions to converge on {topic}"), deadline, || async {
            let mut applied = Vec::new();
            for c in &self.clients {
                applied.push(c.status().await?.applied);
            }
            if applied.iter().any(|a| a != &applied[0]) {
                return Ok(None);
            }
            let mut states = Vec::new();
            for c in &self.clients {
                states.push(c.list_all(topic, true).await?);
            }
            Ok(states.iter().all(|s| s == &states[0]).then(|| states.swap_remove(0)))
        })
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Records by id.
pub fn by_id(records: &[RecordEnvelope]) -> BTreeMap<String, RecordEnvelope> {
    records.iter().map(|r| (r.id.clone(), r.clone())).collect()
}
