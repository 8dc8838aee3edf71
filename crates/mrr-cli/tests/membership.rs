//! Region membership on `mrr serve` processes: a fourth region joins a running three-region
//! cluster while two regions write, installs a snapshot, turns active and votes in the strong
//! tier; bad changes are refused with nothing changed; a region declared lost can neither
//! replicate a single write it makes afterwards nor come back with its old data, and rejoins
//! from a snapshot once added again.

mod common;

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{by_id, wait_for, Cluster, KEY, REGIONS};
use mrr_client::{ClientError, ErrorCode};
use serde_json::json;

const JOIN: Duration = Duration::from_secs(90);

/// The fourth region, `us-east`: a process of its own, killed by its own pid on drop.
struct Fourth {
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    endpoint: String,
    api: String,
    client: mrr_client::Client,
    child: Option<Child>,
}

impl Fourth {
    /// Writes us-east's config: us-west's, renamed, on the next ports, with itself added to the
    /// regions list (the other three configs never hear of it).
    fn new(cluster: &Cluster) -> anyhow::Result<Self> {
        let (api_port, peer_port) = (cluster.base_port + 30, cluster.base_port + 31);
        let (api, endpoint) = (format!("http://127.0.0.1:{api_port}"), format!("http://127.0.0.1:{peer_port}"));
        let west = std::fs::read_to_string(cluster.config_path(1))?;
        let west_api = format!("127.0.0.1:{}", cluster.base_port + 10);
        let west_peer = format!("127.0.0.1:{}", cluster.base_port + 11);
        let mut text = west
            .replace("region: us-west", "region: us-east")
            .replace("data/us-west", "data/us-east")
            .replace(&format!("api: {west_api}"), &format!("api: 127.0.0.1:{api_port}"))
            .replace(&format!("peer: {west_peer}"), &format!("peer: 127.0.0.1:{peer_port}"));
        text = text.replace(
            "replication_rules:",
            &format!("  - name: us-east\n    endpoint: {endpoint}\n    api: {api}\nreplication_rules:"),
        );
        let config = cluster.dir.path().join("configs").join("us-east.yaml");
        std::fs::write(&config, text)?;
        Ok(Self {
            config,
            log: cluster.dir.path().join("us-east.log"),
            endpoint,
            client: mrr_client::connect_with_ca(&api, Some(KEY), None)?,
            api,
            child: None,
        })
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_mrr"))
            .args(["serve", "-c"])
            .arg(&self.config)
            .env("MRR_LOG", "info,fjall=warn,lsm_tree=warn,openraft=error")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn add_request(&self) -> mrr_api::AddRegionRequest {
        mrr_api::AddRegionRequest {
            name: "us-east".into(),
            endpoint: self.endpoint.clone(),
            api: Some(self.api.clone()),
        }
    }
}

impl Drop for Fourth {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

fn code_of(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Api { code, .. } => Some(*code),
        _ => None,
    }
}

/// Adds us-east through `client` once its process answers (it starts in the background).
async fn add_when_up(client: &mrr_client::Client, east: &Fourth) -> anyhow::Result<mrr_api::RegionsReport> {
    wait_for("us-east answering and added", JOIN, || async {
        match client.add_region(&east.add_request()).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if code_of(&e) == Some(ErrorCode::EndpointUnreachable) => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await
}

/// Waits until the first three regions hold `path`.
async fn in_every_region(cluster: &Cluster, path: &str) -> anyhow::Result<()> {
    wait_for(&format!("{path} everywhere"), JOIN, || async {
        for c in &cluster.clients {
            if c.query(path).await?.is_none() {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await
}

/// Waits until `region` is active and votes, as `client`'s region reports it.
async fn active_voter(client: &mrr_client::Client, region: &str, incarnation_min: u64) -> anyhow::Result<()> {
    wait_for(&format!("{region} active and voting"), JOIN, || async {
        let report = client.regions().await?;
        Ok(report
            .regions
            .iter()
            .any(|r| r.name == region && r.state == "active" && r.voter && r.incarnation >= incarnation_min)
            .then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_region_joins_a_running_cluster_under_load_and_leaves_cleanly() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let (tokyo, west) = (cluster.clients[0].clone(), cluster.clients[1].clone());
    for i in 0..200 {
        west.publish("orders", &json!({"id": format!("before-{i:03}"), "n": i})).await?;
    }
    tokyo.put("stock/sku-1", &json!({"available": 5})).await?;

    let mut east = Fourth::new(&cluster)?;
    // Bad input, nothing changed: a region that is not up, a name that is a member, an
    // endpoint that is not a URL, removing a region that does not exist.
    let refused = west.add_region(&east.add_request()).await.expect_err("nothing answers there yet");
    assert_eq!(code_of(&refused), Some(ErrorCode::EndpointUnreachable), "{refused}");
    let taken = mrr_api::AddRegionRequest { name: "eu-central".into(), ..east.add_request() };
    assert_eq!(code_of(&west.add_region(&taken).await.expect_err("a member")), Some(ErrorCode::RegionExists));
    let bad = mrr_api::AddRegionRequest { endpoint: "127.0.0.1:1".into(), ..east.add_request() };
    assert_eq!(code_of(&west.add_region(&bad).await.expect_err("not a URL")), Some(ErrorCode::InvalidRegion));
    assert_eq!(code_of(&west.remove_region("sa-east").await.expect_err("unknown")), Some(ErrorCode::UnknownRegion));
    assert_eq!(tokyo.regions().await?.epoch, 0, "nothing changed");

    // us-east starts with an empty directory: it waits, refused, until it is added.
    east.spawn()?;
    wait_for("us-east asking its peers", JOIN, || async {
        Ok(east.log().contains("is not a member of this cluster").then_some(()))
    })
    .await?;

    // Two regions write throughout the join (bounded in count).
    let writers: Vec<_> = (0..2)
        .map(|k| {
            let c = cluster.clients[k].clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..800 {
                    let id = format!("{}-{i:04}", REGIONS[k]);
                    if let Ok(r) = c.publish("orders", &json!({"id": id, "n": i})).await {
                        acked.push(r);
                    }
                }
                acked
            })
        })
        .collect();
    let added = west.add_region(&east.add_request()).await?;
    let entry = added.regions.iter().find(|r| r.name == "us-east").expect("in the answer");
    assert_eq!((entry.state.as_str(), added.epoch), ("joining", 1));
    active_voter(&tokyo, "us-east", 1).await?;
    assert_eq!(tokyo.status().await?.consensus.coordinator.as_deref(), Some("ap-northeast"));
    // Its donor reports the snapshot it served (what `mrr region add --wait` shows).
    let mut served = 0;
    for c in &cluster.clients {
        let sent = c.regions().await?.regions.into_iter().find(|r| r.name == "us-east").and_then(|r| r.snapshot_sent);
        if let Some(s) = sent {
            assert!(s.done && s.bytes > 0, "{s:?}");
            served += s.records;
        }
    }
    assert!(served >= 200, "a donor sent us-east every record written before it joined: {served}");
    // Operators see it: two changes (added, joined), four active regions, none joining.
    let text = tokyo.metrics().await?;
    for line in
        ["mrr_membership_epoch 2", "mrr_member_regions{state=\"active\"} 4", "mrr_member_regions{state=\"joining\"} 0"]
    {
        assert!(text.lines().any(|l| l == line), "{line} not in the metrics:\n{text}");
    }
    assert!(tokyo.health().await?.warnings.iter().all(|w| !w.contains("joining")));

    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await?);
    }
    assert!(acked.len() >= 1_500, "the writers kept writing through the join: {} acked", acked.len());
    // Every acknowledged write, and everything written before, reaches the new region.
    let want = by_id(&cluster.converged("orders", JOIN).await?);
    let got = wait_for("us-east holding every order", JOIN, || async {
        let got = by_id(&east.client.list_all("orders", true).await?);
        Ok((got == want).then_some(got))
    })
    .await?;
    for r in &acked {
        assert!(got.contains_key(&r.id), "{} acknowledged but not in us-east", r.id);
    }
    // It writes like any region: out to the others, and through the strong tier (a quorum of
    // four now).
    east.client.publish("orders", &json!({"id": "from-east", "n": 1})).await?;
    in_every_region(&cluster, "orders/from-east").await?;
    let sold = east
        .client
        .atomic(
            "stock/sku-1",
            &json!({"available": {"gte": 1}}),
            &json!([{"op": "incr", "field": "available", "by": -1}]),
            "east-buys-one",
        )
        .await?;
    assert_eq!(sold.value["available"], json!(4));

    // A record placed only in us-east keeps it in the cluster.
    east.client.publish("orders", &json!({"id": "east-only", "__metadata": {"regions": ["us-east"]}})).await?;
    // us-west waits until it holds everything us-east had when asked, so it knows the record
    // (by its sealed name: us-west holds only its register).
    let held = west.remove_region("us-east").await.expect_err("a record is placed only there");
    assert_eq!(code_of(&held), Some(ErrorCode::PlacedOnlyThere), "{held}");
    assert!(held.to_string().contains("a record of topic orders"), "{held}");
    let at_east = east.client.remove_region("us-east").await.expect_err("the same at us-east");
    assert!(at_east.to_string().contains("orders/east-only"), "{at_east}");
    // Moved everywhere, the region may leave.
    east.client.put("orders/east-only", &json!({"__metadata": {"regions": ["*"]}})).await?;
    let removed = wait_for("us-east removed", JOIN, || async {
        match west.remove_region("us-east").await {
            Ok(r) => Ok(Some(r)),
            Err(e) if code_of(&e) == Some(ErrorCode::PlacedOnlyThere) => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    assert_eq!(removed.regions.iter().find(|r| r.name == "us-east").map(|r| r.state.as_str()), Some("removed"));
    // Its peers stop replicating with it and no longer count it.
    wait_for("us-east gone from its peers' status", JOIN, || async {
        for c in &cluster.clients {
            if c.status().await?.peers.iter().any(|p| p.region == "us-east") {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;
    assert_eq!(code_of(&west.remove_region("us-east").await.expect_err("gone")), Some(ErrorCode::UnknownRegion));
    Ok(())
}

/// How often `log` says a peer refused this region as lost.
fn refusals(log: &str) -> usize {
    log.matches("was lost at membership epoch").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_declared_lost_gets_no_write_in_and_rejoins_only_from_a_snapshot() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let tokyo = cluster.clients[0].clone();
    for i in 0..100 {
        tokyo.publish("orders", &json!({"id": format!("before-{i:03}"), "n": i})).await?;
    }
    let mut east = Fourth::new(&cluster)?;
    east.spawn()?;
    add_when_up(&tokyo, &east).await?;
    active_voter(&tokyo, "us-east", 1).await?;
    east.client.publish("orders", &json!({"id": "east-before", "n": 1})).await?;
    in_every_region(&cluster, "orders/east-before").await?;

    // Declared lost while it runs: its peers drop it at once.
    let report = tokyo.declare_lost("us-east").await?;
    let entry = report.regions.iter().find(|r| r.name == "us-east").expect("listed");
    assert_eq!(entry.state, "lost");
    wait_for("us-east gone from its peers and out of the voters", JOIN, || async {
        for c in &cluster.clients {
            if c.status().await?.peers.iter().any(|p| p.region == "us-east") {
                return Ok(None);
            }
        }
        let voting = tokyo.regions().await?.regions.iter().any(|r| r.name == "us-east" && r.voter);
        Ok((!voting).then_some(()))
    })
    .await?;
    // It does not know it is lost and takes a write: no peer ever gets it. Each peer refuses
    // its streams after the write, and what a peer refuses it never applies.
    let before = refusals(&east.log());
    east.client.publish("orders", &json!({"id": "stale", "n": 1})).await?;
    wait_for("every peer refusing us-east after its write", JOIN, || async {
        Ok((refusals(&east.log()) >= before + 3).then_some(()))
    })
    .await?;
    for c in &cluster.clients {
        assert!(c.query("orders/stale").await?.is_none(), "a write of a region declared lost got in");
    }
    // Restarted with its old data, it is still refused.
    east.kill9()?;
    let before = refusals(&east.log());
    east.spawn()?;
    wait_for("us-east refused after a restart", JOIN, || async { Ok((refusals(&east.log()) > before).then_some(())) })
        .await?;
    for c in &cluster.clients {
        assert!(c.query("orders/stale").await?.is_none(), "a write of a region declared lost got in");
    }

    // Added again, with its data directory moved aside: it rejoins from a snapshot under a new
    // incarnation, holding everything but the write it made while lost.
    east.kill9()?;
    let data = cluster.dir.path().join("data").join("us-east");
    std::fs::rename(&data, cluster.dir.path().join("us-east-lost"))?;
    east.spawn()?;
    let again = add_when_up(&tokyo, &east).await?;
    let incarnation = again.regions.iter().find(|r| r.name == "us-east").map(|r| r.incarnation).expect("listed");
    assert!(incarnation > 1, "a new incarnation: {incarnation}");
    active_voter(&tokyo, "us-east", incarnation).await?;
    let want = by_id(&cluster.converged("orders", JOIN).await?);
    let got = wait_for("us-east holding every order again", JOIN, || async {
        let got = by_id(&east.client.list_all("orders", true).await?);
        Ok((got == want).then_some(got))
    })
    .await?;
    assert!(got.contains_key("east-before") && !got.contains_key("stale"));
    Ok(())
}
