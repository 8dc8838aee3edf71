//! `mrr`: run a node (`serve`), a whole local cluster (`dev`), and talk to a running cluster
//! (`put`, `get`, `del`, `status`, `bench`, `chaos`). Logic lives in the library crates; this binary parses
//! arguments, prints, and exits with a status that says what happened.

use std::path::PathBuf;
use std::process::ExitCode;

mod bench;
mod certs;
mod flash_bench;
mod keys;
mod proxy;
mod region;
mod strong_bench;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use mrr_server::{dev, Config, Node, NodeOptions};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(name = "mrr", version, about = "MRR, the Multi-Region Replicator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone, Debug)]
struct Target {
    /// HTTP API of the region to talk to.
    #[arg(long, short = 'e', env = "MRR_ENDPOINT", default_value = "http://127.0.0.1:7800")]
    endpoint: String,
    /// API key, if the node requires one.
    #[arg(long, env = "MRR_KEY")]
    api_key: Option<String>,
    /// The cluster CA's certificate (PEM), to trust an https:// endpoint (`mrr certs`' ca.pem).
    #[arg(long, env = "MRR_CA")]
    ca: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum DlqAction {
    /// Apply a dead letter again, as a new write from this region.
    Replay { id: String },
    /// Give up on a dead letter in this region.
    Discard { id: String },
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one node from a config file.
    Serve {
        #[arg(short = 'c', long = "config", default_value = "mrr-config.yaml")]
        config: PathBuf,
        /// The region this node serves, when the file (shared by the cluster) does not say.
        #[arg(long, env = "MRR_REGION")]
        region: Option<String>,
    },
    /// Certificates for a cluster: its CA and one certificate per region, from a config's
    /// regions and endpoints (`mrr certs -c mrr-config.yaml --out certs`).
    Certs(certs::CertsArgs),
    /// API keys: `mrr keys create --actions read,write --topics users,orders`.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Run a local three-region cluster with emulated WAN delays, or write its configs.
    Dev {
        /// Region k (in config order) gets API port P+10k and peer port P+10k+1.
        #[arg(long, default_value_t = 7800)]
        base_port: u16,
        /// Where the regions keep their data (default: a new temporary directory, or DIR/data
        /// with --write-configs).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Take regions and replication rules from this config.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Write one config per region into DIR and exit; run each with `mrr serve -c`.
        #[arg(long, value_name = "DIR")]
        write_configs: Option<PathBuf>,
        /// The cluster's admin key (default: a new one, printed). Set MRR_KEY to keep one key
        /// across runs.
        #[arg(long, env = "MRR_KEY", hide_env_values = true)]
        admin_key: Option<String>,
        /// Peers speak mutual TLS, with a throwaway CA and certificates (in the configs'
        /// directory, `certs/`).
        #[arg(long)]
        tls: bool,
    },
    /// Publish a record: `mrr put users/u001 '{"name":"Kaito"}'`.
    Put {
        path: String,
        json: String,
        #[command(flatten)]
        target: Target,
    },
    /// Query a record: `mrr get users/u001`.
    Get {
        path: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a record.
    Del {
        path: String,
        #[command(flatten)]
        target: Target,
    },
    /// Partial update: `mrr patch users/u001 '{"city":"Oslo"}'` (`null` removes a field).
    Patch {
        path: String,
        json: String,
        #[command(flatten)]
        target: Target,
    },
    /// CRDT operations: `mrr ops profiles/u001 '{"op":"incr","field":"views","by":1}'`.
    Ops {
        path: String,
        json: String,
        #[command(flatten)]
        target: Target,
    },
    /// The conflict log: writes that lost to a concurrent write, oldest first.
    Conflicts {
        /// Only this topic.
        #[arg(long)]
        topic: Option<String>,
        /// Only conflicts seen at or after this time (ms since the Unix epoch).
        #[arg(long)]
        since: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// The dead-letter queue: list it, replay a letter (once, cluster-wide) or discard one here.
    Dlq {
        #[command(subcommand)]
        action: Option<DlqAction>,
        #[command(flatten)]
        target: Target,
    },
    /// Anti-entropy: compare this region's records with its peers' and repair what differs
    /// (`mrr repair`, `mrr repair --peer us-west --topic users --dry-run`).
    Repair {
        /// Compare with this region only (default: every peer, which also settles two
        /// different copies of one change by majority).
        #[arg(long)]
        peer: Option<String>,
        /// Compare these topics only (repeat, or separate with commas; default: every topic).
        #[arg(long, value_delimiter = ',')]
        topic: Vec<String>,
        /// Report what differs, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// The cluster's regions: status, add, remove, declare lost.
    Region {
        #[command(subcommand)]
        action: region::RegionAction,
        #[command(flatten)]
        target: region::RegionTarget,
    },
    /// Regions, connection state and lag as one node sees them.
    Status {
        #[command(flatten)]
        target: Target,
        /// Refresh every N seconds until Ctrl-C.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
    },
    /// Generate load against a running cluster; report write latency and replication lag.
    Bench(bench::BenchArgs),
    /// A TCP proxy adding a one-way delay each way (SIGUSR1 cuts, SIGUSR2 mends), to put MRR and
    /// other systems behind the same emulated WAN in benchmarks.
    WanProxy(proxy::ProxyArgs),
    /// The same linearizable workload against MRR's strong tier or etcd (bench/strong_compare.sh).
    StrongBench(strong_bench::StrongBenchArgs),
    /// The article's flash sale: buyers in every region take one item's stock (bench/flash_sale.sh).
    FlashBench(flash_bench::FlashBenchArgs),
    /// Inject network faults into a running cluster through its emulated links.
    Chaos {
        /// Any region's config: it lists every region and its `api` address.
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        #[arg(long, env = "MRR_KEY")]
        api_key: Option<String>,
        #[command(subcommand)]
        action: ChaosAction,
    },
}

#[derive(Subcommand, Debug)]
enum KeysAction {
    /// Make a key: prints it once, and the entry (with its hash, never the key) to add under
    /// `api_keys:` in every node's config.
    Create {
        /// What the key may do: read, write, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        actions: Vec<String>,
        /// Records it may touch: `users`, `orders/*`, `orders/eu-*`, `*` (default `*`).
        #[arg(long, value_delimiter = ',')]
        topics: Vec<String>,
        /// Regions it is valid in (default: all).
        #[arg(long, value_delimiter = ',')]
        regions: Vec<String>,
        /// When it stops working: an RFC 3339 instant (2027-06-30T00:00:00Z) or a duration from
        /// now (90d).
        #[arg(long)]
        expires: Option<String>,
        /// A name for logs and error messages.
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ChaosAction {
    /// Cut the link between two regions (both directions unless --one-way: A to B only).
    Partition {
        a: String,
        b: String,
        #[arg(long)]
        one_way: bool,
    },
    /// Restore the link between two regions (both directions).
    Heal { a: String, b: String },
    /// Set the one-way delay (and jitter, and a bandwidth cap) between two regions, both directions.
    Delay {
        a: String,
        b: String,
        #[arg(long)]
        ms: u64,
        #[arg(long, default_value_t = 0)]
        jitter_ms: u64,
        /// Bytes per second each way; 0 is unlimited.
        #[arg(long, default_value_t = 0)]
        bandwidth_bytes_per_s: u64,
    },
    /// Show every region's links.
    Show,
}

fn init_logging(debug: bool) {
    // The storage engine's own progress lines are noise to an operator.
    let default = if debug {
        "info,fjall=warn,lsm_tree=warn,openraft=warn,mrr_replication=debug,mrr_server=debug,mrr_writer=debug,mrr_consensus=debug"
    } else {
        // openraft warns on every failed heartbeat to an unreachable peer (several a second
        // while a region is down or still starting); MRR logs what matters of it itself: each
        // coordinator change, and refused or failing consensus calls.
        "info,fjall=warn,lsm_tree=warn,openraft=error"
    };
    let filter = EnvFilter::try_from_env("MRR_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    mrr_tls::install_default_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause once: our error types already print the cause they
/// wrap, so a cause whose text is already shown is skipped.
fn report(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, region } => serve(config, region).await,
        Command::Certs(args) => certs::run(&args),
        Command::Keys { action: KeysAction::Create { actions, topics, regions, expires, name } } => {
            print!("{}", keys::create(&actions, &topics, &regions, expires.as_deref(), name.as_deref())?);
            Ok(())
        }
        Command::Dev { base_port, data_dir, config, write_configs, admin_key, tls } => {
            dev_cluster(base_port, data_dir, config, write_configs, admin_key, tls).await
        }
        Command::Put { path, json, target } => {
            let record: serde_json::Value = serde_json::from_str(&json).context("the record is not valid JSON")?;
            let out = client(&target)?.put(&path, &record).await?;
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        Command::Get { path, target } => match client(&target)?.query(&path).await? {
            Some(r) => {
                println!("{}", serde_json::to_string_pretty(&r)?);
                Ok(())
            }
            None => bail!("{path} not found in the region at {}", target.endpoint),
        },
        Command::Patch { path, json, target } => {
            let fields: serde_json::Value = serde_json::from_str(&json).context("the patch is not valid JSON")?;
            println!("{}", serde_json::to_string_pretty(&client(&target)?.patch(&path, &fields).await?)?);
            Ok(())
        }
        Command::Ops { path, json, target } => {
            let ops: serde_json::Value = serde_json::from_str(&json).context("the operations are not valid JSON")?;
            println!("{}", serde_json::to_string_pretty(&client(&target)?.ops(&path, &ops).await?)?);
            Ok(())
        }
        Command::Conflicts { topic, since, target } => conflicts(&target, topic.as_deref(), since).await,
        Command::Dlq { action, target } => {
            let c = client(&target)?;
            match action {
                None => dead_letters(&c).await,
                Some(DlqAction::Replay { id }) => {
                    println!("{}", serde_json::to_string_pretty(&c.replay(&id).await?)?);
                    Ok(())
                }
                Some(DlqAction::Discard { id }) => {
                    c.discard(&id).await?;
                    println!("discarded {id} in the region at {}", target.endpoint);
                    Ok(())
                }
            }
        }
        Command::Del { path, target } => {
            let out = client(&target)?.delete(&path).await?;
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        Command::Repair { peer, topic, dry_run, json, target } => {
            let request = mrr_api::RepairRequest { peer, topics: topic, dry_run };
            let report = client(&target)?.repair(&request).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_repair(&report);
            }
            if report.peers.iter().any(|p| p.error.is_some()) {
                anyhow::bail!("the comparison with some peers did not finish (see the table)");
            }
            Ok(())
        }
        Command::Region { action, target } => {
            let target = Target { endpoint: target.at, api_key: target.api_key, ca: target.ca };
            let connect = |api: &str| client(&Target { endpoint: api.to_owned(), ..target.clone() });
            region::run(&client(&target)?, action, connect).await
        }
        Command::Status { target, watch: None } => status(&target).await,
        Command::Status { target, watch: Some(secs) } => loop {
            // Clear the screen and home the cursor, then redraw.
            print!("\x1b[2J\x1b[H");
            if let Err(e) = status(&target).await {
                println!("error: {}", report(&e));
            }
            println!("\n(refreshing every {secs} s; Ctrl-C to stop)");
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_secs(secs.max(1))) => {}
                () = wait_for_signal() => return Ok(()),
            }
        },
        Command::Bench(args) => {
            let clients = region_clients(&args.config, args.api_key.as_deref())?;
            let report = bench::run(args.clone(), clients).await?;
            let md = bench::markdown(&report);
            println!("{md}");
            if let Some(path) = &args.json {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if let Some(path) = &args.markdown {
                std::fs::write(path, md).with_context(|| format!("cannot write {}", path.display()))?;
            }
            Ok(())
        }
        Command::WanProxy(args) => proxy::run(args).await,
        Command::StrongBench(args) => {
            println!("{}", strong_bench::run(args).await?);
            Ok(())
        }
        Command::FlashBench(args) => {
            println!("{}", flash_bench::run(args).await?);
            Ok(())
        }
        Command::Chaos { config, api_key, action } => chaos(&config, api_key.as_deref(), action).await,
    }
}

/// One client per region, from the `api` addresses in a config.
fn region_clients(path: &std::path::Path, api_key: Option<&str>) -> anyhow::Result<Clients> {
    // Only the layout is read: the file may be one the whole cluster shares.
    let config = Config::load_cluster(path)?;
    config
        .regions
        .iter()
        .map(|r| {
            let api = r.api.as_deref().with_context(|| {
                format!(
                    "region {} has no `api` address in {}; add `api: http://host:port` to its entry",
                    r.name,
                    path.display()
                )
            })?;
            Ok((r.name.to_string(), mrr_client::connect(api, api_key)?))
        })
        .collect()
}

type Clients = Vec<(String, mrr_client::Client)>;

fn region_client<'a>(clients: &'a Clients, name: &str) -> anyhow::Result<&'a mrr_client::Client> {
    clients.iter().find(|(n, _)| n == name).map(|(_, c)| c).with_context(|| {
        let known: Vec<&str> = clients.iter().map(|(n, _)| n.as_str()).collect();
        format!("unknown region {name}; regions: {}", known.join(", "))
    })
}

/// Changes the link from `from` to `to`, keeping the settings `change` does not touch.
async fn change_link(
    clients: &Clients,
    from: &str,
    to: &str,
    change: impl Fn(&mut mrr_client::LinkSettings),
) -> anyhow::Result<()> {
    let c = region_client(clients, from)?;
    let mut settings = c.links().await?.links.get(to).copied().unwrap_or_default();
    change(&mut settings);
    c.set_link(to, settings).await?;
    let state = if settings.partitioned { "partitioned" } else { "up" };
    let bandwidth = match settings.bandwidth_bytes_per_s {
        0 => "unlimited".to_owned(),
        b => format!("{b} B/s"),
    };
    println!(
        "{from} -> {to}: delay {} ms, jitter {} ms, bandwidth {bandwidth}, {state}",
        settings.delay_ms, settings.jitter_ms
    );
    Ok(())
}

async fn chaos(config: &std::path::Path, api_key: Option<&str>, action: ChaosAction) -> anyhow::Result<()> {
    let clients = region_clients(config, api_key)?;
    match action {
        ChaosAction::Partition { a, b, one_way } => {
            change_link(&clients, &a, &b, |l| l.partitioned = true).await?;
            if !one_way {
                change_link(&clients, &b, &a, |l| l.partitioned = true).await?;
            }
        }
        ChaosAction::Heal { a, b } => {
            change_link(&clients, &a, &b, |l| l.partitioned = false).await?;
            change_link(&clients, &b, &a, |l| l.partitioned = false).await?;
        }
        ChaosAction::Delay { a, b, ms, jitter_ms, bandwidth_bytes_per_s } => {
            let apply = |l: &mut mrr_client::LinkSettings| {
                l.delay_ms = ms;
                l.jitter_ms = jitter_ms;
                l.bandwidth_bytes_per_s = bandwidth_bytes_per_s;
            };
            change_link(&clients, &a, &b, apply).await?;
            change_link(&clients, &b, &a, apply).await?;
        }
        ChaosAction::Show => {
            let mut table = Table::new();
            table.load_preset(UTF8_FULL_CONDENSED);
            table.set_header(["from", "to", "delay ms", "jitter ms", "bandwidth B/s", "state"]);
            for (name, c) in &clients {
                match c.links().await {
                    Ok(view) => {
                        for (to, l) in view.links {
                            let state = if !view.enabled {
                                "emulation off"
                            } else if l.partitioned {
                                "partitioned"
                            } else {
                                "up"
                            };
                            let bandwidth = match l.bandwidth_bytes_per_s {
                                0 => "-".to_owned(),
                                b => b.to_string(),
                            };
                            table.add_row([
                                name.clone(),
                                to,
                                l.delay_ms.to_string(),
                                l.jitter_ms.to_string(),
                                bandwidth,
                                state.into(),
                            ]);
                        }
                    }
                    Err(e) => {
                        table.add_row([
                            name.clone(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            format!("unreachable: {e}"),
                        ]);
                    }
                }
            }
            println!("{table}");
        }
    }
    Ok(())
}

fn client(target: &Target) -> anyhow::Result<mrr_client::Client> {
    let ca = match &target.ca {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("--ca {}: cannot read", path.display()))?),
        None => None,
    };
    Ok(mrr_client::connect_with_ca(&target.endpoint, target.api_key.as_deref(), ca.as_deref())?)
}

async fn serve(path: PathBuf, region: Option<String>) -> anyhow::Result<()> {
    let region = region
        .map(mrr_core::RegionName::new)
        .transpose()
        .context("--region (or MRR_REGION) is not a region name: use a-z, 0-9 and '-'")?;
    let config = Config::load_for(&path, region)?;
    init_logging(config.debug_mode);
    let node = Node::start(config, NodeOptions::default()).await?;
    wait_for_signal().await;
    node.shutdown();
    node.wait().await;
    Ok(())
}

/// Returns on Ctrl-C (SIGINT) or SIGTERM, so both a terminal and a service manager stop the
/// node cleanly.
async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; use Ctrl-C to stop");
            None
        }
    };
    let terminated = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = tokio::signal::ctrl_c() => if let Err(e) = r {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        },
        () = terminated => {}
    }
    tracing::info!("stopping");
}

async fn dev_cluster(
    base_port: u16,
    data_dir: Option<PathBuf>,
    from: Option<PathBuf>,
    write_configs: Option<PathBuf>,
    admin_key: Option<String>,
    tls: bool,
) -> anyhow::Result<()> {
    // The file may be one a whole cluster shares (no region, no secret, https:// endpoints):
    // only its regions and rules are taken.
    let from = from.map(|p| Config::load_cluster(&p)).transpose()?;
    // The temporary directory lives as long as the cluster runs, and is removed after.
    let temp;
    let data_dir = match (data_dir, &write_configs) {
        (Some(d), _) => d,
        // Configs outlive this command, so their data goes beside them, not in a temp dir.
        (None, Some(dir)) => std::path::absolute(dir.join("data")).context("cannot resolve the data directory")?,
        (None, None) => {
            temp = tempfile::Builder::new()
                .prefix("mrr-dev-")
                .tempdir()
                .context("cannot create a temporary data directory")?;
            temp.path().to_owned()
        }
    };
    let mut cluster = dev::DevCluster::new(base_port, data_dir, from.as_ref(), admin_key)?;
    if tls {
        cluster = cluster.with_tls()?;
    }
    if let Some(dir) = write_configs {
        for path in write_dev_configs(&cluster, &dir)? {
            println!("{}", path.display());
        }
        let key_path = dir.join("admin.key");
        std::fs::write(&key_path, format!("{}\n", cluster.admin_key))
            .with_context(|| format!("cannot write {}", key_path.display()))?;
        eprintln!(
            "The cluster's admin key is in {} (export MRR_KEY=$(cat {}))",
            key_path.display(),
            key_path.display()
        );
        return Ok(());
    }
    init_logging(false);
    // The running cluster's configs, for `mrr bench -c` and `mrr chaos -c`.
    let config_dir = cluster.data_dir.join("configs");
    write_dev_configs(&cluster, &config_dir)?;
    // Together: a new region asks its peers where it stands before it starts.
    let mut starts = Vec::new();
    for (_, config) in cluster.configs(&config_dir)? {
        starts.push(tokio::spawn(Node::start(config, NodeOptions::default())));
    }
    let mut nodes = Vec::new();
    for start in starts {
        nodes.push(start.await??);
    }
    println!("\nMRR dev cluster is up (data in {}):\n", cluster.data_dir.display());
    for r in &cluster.regions {
        let role = if r.coordinator { " (coordinator)" } else { "" };
        println!("  {:<14} {}://127.0.0.1:{}{role}", r.name, cluster.scheme(), r.api_port);
    }
    if cluster.tls.is_some() {
        println!(
            "\nAPIs and peers speak TLS under a throwaway CA: export MRR_CA={}\n(curl --cacert \"$MRR_CA\" https://..., and mrr reads MRR_CA)",
            config_dir.join("certs/ca.pem").display()
        );
    }
    let (first, second) = (&cluster.regions[0], &cluster.regions[cluster.regions.len().min(2) - 1]);
    println!(
        "\nConfigs (for mrr bench -c, mrr chaos -c): {configs}\n\nThe cluster's admin key (every action; make scoped ones with `mrr keys create`):\n\n  export MRR_KEY={key}\n\nTry it: publish in {a}, read in {b}:\n\n  curl -s -X POST http://127.0.0.1:{pa}/v1/records/users -H \"authorization: Bearer $MRR_KEY\" -H 'content-type: application/json' \\\n    -d '{{\"id\":\"u001\",\"name\":\"Kaito\",\"__metadata\":{{\"regions\":[\"*\"],\"syncFlags\":[\"IMPORTANT\"]}}}}'\n  curl -s http://127.0.0.1:{pb}/v1/records/users/u001 -H \"authorization: Bearer $MRR_KEY\"\n\n  or: mrr put users/u001 '{{\"name\":\"Kaito\"}}' -e http://127.0.0.1:{pa}\n      mrr get users/u001 -e http://127.0.0.1:{pb}\n      mrr status -e http://127.0.0.1:{pa}\n\nCtrl-C stops the cluster.",
        configs = config_dir.join(format!("{}.yaml", first.name)).display(),
        key = cluster.admin_key,
        a = first.name,
        b = second.name,
        pa = first.api_port,
        pb = second.api_port,
    );
    wait_for_signal().await;
    for n in &nodes {
        n.shutdown();
    }
    for n in nodes {
        n.wait().await;
    }
    Ok(())
}

/// Writes one config per region into `dir` and parses them back, so a config `mrr serve` would
/// refuse is never left behind.
fn write_dev_configs(cluster: &dev::DevCluster, dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut paths = Vec::new();
    for (k, r) in cluster.regions.iter().enumerate() {
        let path = dir.join(format!("{}.yaml", r.name));
        std::fs::write(&path, cluster.config_text(k)).with_context(|| format!("cannot write {}", path.display()))?;
        paths.push(path);
    }
    cluster.configs(dir)?;
    Ok(paths)
}

async fn conflicts(target: &Target, topic: Option<&str>, since: Option<u64>) -> anyhow::Result<()> {
    let list = client(target)?.conflicts(topic, since).await?;
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["seen at ms", "record", "strategy", "resolution", "loser", "winner", "fields"]);
    for c in &list.conflicts {
        table.add_row([
            c.detected_at_ms.to_string(),
            format!("{}/{}", c.topic, c.id),
            c.strategy.clone(),
            c.resolution.clone(),
            format!("{} @ {}", c.loser.change, c.loser.version.hlc),
            format!("{} @ {}", c.winner.change, c.winner.version.hlc),
            c.fields.join(","),
        ]);
    }
    println!("{table}");
    if let Some(next) = list.next_since {
        println!("more: --since {next}");
    }
    Ok(())
}

async fn dead_letters(c: &mrr_client::Client) -> anyhow::Result<()> {
    let list = c.dead_letters().await?;
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["id", "record", "failed at ms", "reason"]);
    for d in &list.dead_letters {
        table.add_row([
            d.id.clone(),
            format!("{}/{}", d.topic, d.record_id),
            d.failed_at_ms.to_string(),
            d.reason.clone(),
        ]);
    }
    println!("{table}");
    Ok(())
}

fn print_repair(report: &mrr_api::RepairReport) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header([
        "peer",
        "records here/there",
        "buckets differing",
        "keys differing",
        "repaired here",
        "repaired there",
        "left",
        "error",
    ]);
    let counts = |m: &std::collections::BTreeMap<String, u64>| m.get("repaired").copied().unwrap_or(0).to_string();
    for p in &report.peers {
        let left: u64 = p
            .here
            .iter()
            .chain(p.there.iter())
            .filter(|(v, _)| *v != "repaired" && *v != "covered")
            .map(|(_, n)| n)
            .sum();
        table.add_row([
            p.peer.clone(),
            format!("{}/{}", p.records_here, p.records_there),
            p.buckets_differing.to_string(),
            format!("{}{}", p.keys_differing, if p.truncated { " (first 100,000 taken)" } else { "" }),
            counts(&p.here),
            counts(&p.there),
            left.to_string(),
            p.error.clone().unwrap_or_default(),
        ]);
    }
    println!("anti-entropy from {}{}", report.region, if report.dry_run { " (dry run: nothing changed)" } else { "" });
    println!("{table}");
    for p in &report.peers {
        for key in &p.repaired_here {
            println!("repaired in {}: {key} (from {})", report.region, p.peer);
        }
        for key in &p.repaired_there {
            println!("repaired in {}: {key}", p.peer);
        }
        for key in &p.unresolved {
            println!("left different: {key} (two copies of one change, no majority)");
        }
        if report.dry_run {
            for key in &p.differing {
                println!("differs from {}: {key}", p.peer);
            }
        }
        for (verdict, n) in p.here.iter().chain(p.there.iter()) {
            if verdict == "in_flight" || verdict == "placement_differs" {
                println!("{n} key(s) {}: replication settles them", verdict.replace('_', " "));
            }
        }
    }
}

async fn status(target: &Target) -> anyhow::Result<()> {
    let c = client(target)?;
    let s = c.status().await?;
    let h = c.health().await?;
    let k = &s.consensus;
    println!(
        "cluster {}  region {}  coordinator {} (term {}, preferred {})  health {:?}",
        s.cluster,
        s.region,
        k.coordinator.as_deref().unwrap_or("none (election under way or no quorum)"),
        k.term,
        k.preferred.as_deref().unwrap_or("-"),
        h.status
    );
    let applied: Vec<String> = s.applied.iter().map(|(o, n)| format!("{o}:{n}")).collect();
    println!("applied {}  storage {} bytes", applied.join(" "), s.storage_bytes);
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header([
        "region",
        "health",
        "to peer",
        "from peer",
        "freshness ms",
        "lag p50 ms",
        "lag p99 ms",
        "backlog",
        "recv/s",
        "rtt ms",
        "skew ms",
        "coordinator",
        "last error",
    ]);
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    for p in &s.peers {
        let health =
            h.regions.iter().find(|r| r.region == p.region).map_or("-".to_owned(), |r| format!("{:?}", r.status));
        table.add_row([
            p.region.clone(),
            health,
            p.outbound.clone(),
            if p.inbound_streams > 0 { "connected".into() } else { "down".into() },
            opt(p.freshness_lag_ms),
            opt(p.lag_ms_p50),
            opt(p.lag_ms_p99),
            p.backlog_changes.to_string(),
            format!("{:.1}", p.received_per_s),
            opt(p.rtt_ms),
            p.clock_skew_ms.map_or_else(|| "-".to_owned(), |v| v.to_string()),
            if k.coordinator.as_deref() == Some(p.region.as_str()) { "yes".into() } else { String::new() },
            p.last_error.clone().unwrap_or_default(),
        ]);
    }
    println!("{table}");
    // Node-level conditions: a clock or a writer in trouble, dead letters, a region holding
    // retention back or let go as lagging.
    for w in &h.warnings {
        println!("warning: {w}");
    }
    Ok(())
}
