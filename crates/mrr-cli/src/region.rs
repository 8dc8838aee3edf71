//! `mrr region`: the cluster's membership — which regions it has, adding a region to a running
//! cluster, removing one, declaring one lost. The changes are entries of the strong tier's log
//! (`POST/DELETE /v1/regions`); this module parses the command and prints the answer.

use std::time::{Duration, Instant};

use clap::Subcommand;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use mrr_api::RegionsReport;

/// The region whose API takes the command. `--at` rather than `--endpoint`, which `add` uses
/// for the new region's peer listener; the flags go before or after the action.
#[derive(clap::Args, Clone, Debug)]
pub struct RegionTarget {
    /// HTTP API of the region to talk to.
    #[arg(long, short = 'e', global = true, env = "MRR_ENDPOINT", default_value = "http://127.0.0.1:7800")]
    pub at: String,
    /// API key (an admin key for changes).
    #[arg(long, global = true, env = "MRR_KEY")]
    pub api_key: Option<String>,
    /// The cluster CA's certificate (PEM), to trust an https:// endpoint.
    #[arg(long, global = true, env = "MRR_CA")]
    pub ca: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum RegionAction {
    /// The regions, their state (joining, active, removed, lost), whether each votes in the
    /// strong tier, and how far behind each is.
    Status {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a region to the running cluster. Start it first with a config that lists the
    /// cluster's regions and itself: its empty data directory bootstraps from a peer's snapshot
    /// once the change commits, and then it turns active.
    Add {
        name: String,
        /// Its peer listener, `http://host:port` (`https://` with TLS).
        #[arg(long)]
        endpoint: String,
        /// Its HTTP API.
        #[arg(long)]
        api: Option<String>,
        /// Wait until the region is active, printing its progress (at most this many seconds).
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
    },
    /// Remove a region that leaves cleanly (refused while records are placed only in it).
    Remove { name: String },
    /// Declare a region lost: what it wrote and no other region got is given up, and it can
    /// come back only with an empty data directory, added again.
    Lost { name: String },
}

/// `connect`: a client of another region's API (the same key and CA), to read the progress of
/// a snapshot it serves.
pub async fn run(
    client: &mrr_client::Client,
    action: RegionAction,
    connect: impl Fn(&str) -> anyhow::Result<mrr_client::Client>,
) -> anyhow::Result<()> {
    match action {
        RegionAction::Status { json: true } => println!("{}", serde_json::to_string_pretty(&client.regions().await?)?),
        RegionAction::Status { json: false } => print(&client.regions().await?),
        RegionAction::Add { name, endpoint, api, wait } => {
            let request = mrr_api::AddRegionRequest { name: name.clone(), endpoint, api };
            print(&client.add_region(&request).await?);
            if let Some(secs) = wait {
                wait_active(client, &name, Duration::from_secs(secs), connect).await?;
            }
        }
        RegionAction::Remove { name } => print(&client.remove_region(&name).await?),
        RegionAction::Lost { name } => print(&client.declare_lost(&name).await?),
    }
    Ok(())
}

/// What the other members have sent `name` of a snapshot: `(donor, records, bytes, done)`.
async fn snapshot_progress(
    report: &RegionsReport,
    name: &str,
    connect: &impl Fn(&str) -> anyhow::Result<mrr_client::Client>,
) -> Vec<(String, u64, u64, bool)> {
    let mut sent = Vec::new();
    for r in report.regions.iter().filter(|r| r.name != name && r.state == "active") {
        let Some(api) = &r.api else { continue };
        let Ok(c) = connect(api) else { continue };
        // A member that does not answer now is left out of this line of progress.
        let Ok(theirs) = c.regions().await else { continue };
        if let Some(s) = theirs.regions.iter().find(|x| x.name == name).and_then(|x| x.snapshot_sent.clone()) {
            sent.push((r.name.clone(), s.records, s.bytes, s.done));
        }
    }
    sent
}

/// Polls until `name` is an active voter, printing each change of its progress.
async fn wait_active(
    client: &mrr_client::Client,
    name: &str,
    within: Duration,
    connect: impl Fn(&str) -> anyhow::Result<mrr_client::Client>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let report = client.regions().await?;
        let Some(r) = report.regions.iter().find(|r| r.name == name) else {
            anyhow::bail!("{name} is not in the membership any more");
        };
        let progress = match (r.state.as_str(), r.behind_changes) {
            ("active", _) if r.voter => {
                println!("{name}: active and voting after {:.1} s", started.elapsed().as_secs_f64());
                return Ok(());
            }
            (state, Some(n)) => format!("{state}, {n} changes behind {}", report.region),
            (state, None) => {
                let sent = snapshot_progress(&report, name, &connect).await;
                match sent.iter().find(|(_, _, _, done)| !done).or(sent.first()) {
                    Some((donor, records, bytes, done)) => format!(
                        "{state}, snapshot from {donor}: {records} records, {:.1} MB{}",
                        *bytes as f64 / 1e6,
                        if *done { " (all sent)" } else { "" }
                    ),
                    None => format!("{state}, waiting for a snapshot (stream {})", r.stream.as_deref().unwrap_or("-")),
                }
            }
        };
        if progress != last {
            println!("{name}: {progress}");
            last = progress;
        }
        if started.elapsed() >= within {
            anyhow::bail!(
                "{name} is not active within {} s; `mrr region status` shows where it stands",
                within.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print(report: &RegionsReport) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["region", "state", "voter", "incarnation", "endpoint", "stream", "behind"]);
    for r in &report.regions {
        table.add_row([
            r.name.clone(),
            r.state.clone(),
            if r.voter { "yes".into() } else { "no".into() },
            r.incarnation.to_string(),
            r.endpoint.clone(),
            r.stream
                .clone()
                .unwrap_or_else(|| if r.name == report.region { "(this region)".into() } else { "-".into() }),
            r.behind_changes.map_or_else(|| "-".into(), |n| n.to_string()),
        ]);
    }
    println!("membership of the cluster as {} applied it (epoch {})", report.region, report.epoch);
    println!("{table}");
}
