//! A running node: store, writer, replication and HTTP API wired from one [`Config`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mrr_core::session::OutboundLimits;
use mrr_core::PhysicalClock;
use mrr_replication::{LinkSpec, Links, PeerConfig, ReplicationConfig, Replicator};
use mrr_storage::{Durability, FjallStore, Store};
use mrr_writer::{SystemClock, Writer, WriterConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{peer_url, Config};
use crate::http::{self, AppState};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the data directory {path}: {source}")]
    Store { path: String, source: mrr_storage::StoreError },
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("cannot listen for the HTTP API on {addr}: {source} (is another node using the port?)")]
    ApiListen { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Replication(#[from] mrr_replication::StartError),
    #[error("cannot build the HTTP client for placement_writes: forward: {0}")]
    Forwarder(String),
    #[error(transparent)]
    Consensus(#[from] crate::consensus::ConsensusStartError),
    #[error("cannot read the cluster's membership in {path}: {reason}")]
    Membership { path: String, reason: String },
    #[error("cannot bootstrap the data directory {path}: {source}")]
    Bootstrap { path: String, source: mrr_replication::bootstrap::BootstrapError },
}

/// Tuning that is not in the config file, for tests and `mrr dev`.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub clock: Arc<dyn PhysicalClock>,
    pub heartbeat_interval: Duration,
    pub peer_timeout: Duration,
    /// Seed of the link emulation's jitter.
    pub link_seed: u64,
    /// Under `durability: buffered`, how often the journal is persisted (and changes become
    /// eligible for replication).
    pub sync_interval: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            heartbeat_interval: Duration::from_millis(500),
            peer_timeout: Duration::from_secs(5),
            link_seed: 0x004d_5252,
            sync_interval: Duration::from_millis(50),
        }
    }
}

#[derive(Debug)]
pub struct Node {
    pub api_addr: SocketAddr,
    pub replicator: Replicator,
    writer: Writer,
    api: JoinHandle<()>,
    upkeep: JoinHandle<()>,
    /// The membership's followers (`crate::membership`), stopped with the node.
    background: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    /// This region's voter in the strong tier's group.
    pub consensus: mrr_consensus::Consensus,
}

/// Listeners bound before the node starts (tests bind port 0 and learn the port first, so no
/// other process can take it in between). `None` binds the configured address.
#[derive(Debug, Default)]
pub struct Listeners {
    pub api: Option<std::net::TcpListener>,
    pub peer: Option<std::net::TcpListener>,
}

async fn listener(given: Option<std::net::TcpListener>, addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    match given {
        Some(l) => {
            l.set_nonblocking(true)?;
            TcpListener::from_std(l)
        }
        None => TcpListener::bind(addr).await,
    }
}

impl Node {
    pub async fn start(config: Config, options: NodeOptions) -> Result<Self, StartError> {
        mrr_tls::install_default_provider();
        Self::start_on(config, options, Listeners::default()).await
    }

    pub async fn start_on(config: Config, options: NodeOptions, listeners: Listeners) -> Result<Self, StartError> {
        let peer_listener = listener(listeners.peer, config.listen.peer)
            .await
            .map_err(|source| mrr_replication::StartError::Listen { addr: config.listen.peer, source })?;
        let api_listener = listener(listeners.api, config.listen.api)
            .await
            .map_err(|source| StartError::ApiListen { addr: config.listen.api, source })?;
        let data = config.data_dir.display().to_string();
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| StartError::DataDir { path: data.clone(), source })?;
        let fjall = FjallStore::open(&config.data_dir, config.durability)
            .map_err(|source| StartError::Store { path: data.clone(), source })?;
        fjall
            .check_sealer(&config.policies.sealer.fingerprint())
            .map_err(|source| StartError::Store { path: data.clone(), source })?;
        let consensus_log: Arc<dyn mrr_storage::log::LogStore> =
            Arc::new(fjall.log("consensus").map_err(|source| StartError::Store { path: data.clone(), source })?);
        let store: Arc<dyn Store> = Arc::new(fjall);
        // The regions as the strong tier last decided, or the config's before any change.
        let table = crate::membership::load(&*store, &config)
            .map_err(|e| StartError::Membership { path: data.clone(), reason: e })?;
        let (membership_tx, membership) = watch::channel(Arc::new(table));
        let max_skew_ms = u64::try_from(config.max_clock_skew.as_millis()).unwrap_or(u64::MAX);
        let sync_interval = match config.durability {
            Durability::Fsync => None,
            Durability::Buffered => Some(options.sync_interval),
        };
        let writer_config =
            WriterConfig { sync_interval, dead_letters_max: config.dlq.max_entries, ..WriterConfig::default() };
        // With certificates, this region signs its checkpoints and checks relayed ones.
        let notary = config.peer_tls.clone().map(|tls| mrr_replication::notary::CertNotary::new(tls, store.clone()));
        let secrets = Arc::new(mrr_replication::secrets::LiveSecrets::new(config.secrets()));
        let mut replication = replication_config(&config, &options, secrets.clone(), max_skew_ms);
        // An empty directory learns where this region stands (and installs a snapshot when its
        // peers hold anything of it) before the writer numbers a single write.
        let (peer_listener, bootstrapped) = mrr_replication::bootstrap::run(
            Arc::new(replication.clone()),
            peer_listener,
            store.clone(),
            options.clock.clone(),
            notary.clone().map(|n| n as Arc<dyn mrr_core::provenance::Notary>),
            config.bootstrap,
            membership.clone(),
        )
        .await
        .map_err(|e| StartError::Bootstrap { path: data.clone(), source: e })?;
        if bootstrapped != mrr_replication::bootstrap::Outcome::NotNeeded {
            tracing::info!(region = %config.region, outcome = ?bootstrapped, "data directory bootstrapped");
        }
        let mark = store.bootstrap_mark().map_err(|source| StartError::Store { path: data.clone(), source })?;
        let incarnation = mark.as_ref().and_then(mrr_storage::BootstrapMark::incarnation).unwrap_or(0);
        replication.incarnation = Some(incarnation);
        let writer = Writer::start(
            config.region.clone(),
            max_skew_ms,
            store.clone(),
            options.clock.clone(),
            writer_config,
            config.policies.clone(),
            notary.clone().map(|n| n as Arc<dyn mrr_core::provenance::Notary>),
        )
        .map_err(|source| StartError::Store { path: data, source })?;

        let links = match &config.links {
            None => Links::disabled(),
            Some(links) => {
                let mut specs: BTreeMap<_, _> = config.peers().map(|p| (p.name.clone(), LinkSpec::default())).collect();
                for (peer, l) in links {
                    specs.insert(peer.clone(), *l);
                }
                Links::emulated(options.link_seed, specs)
            }
        };
        let (recorder, metrics_handle) = crate::metrics::recorder();
        let consensus_slot = mrr_replication::consensus_link::ConsensusSlot::default();
        let deps = mrr_replication::Deps {
            store: store.clone(),
            writer: writer.clone(),
            clock: options.clock.clone(),
            links: links.clone(),
            recorder: recorder.clone(),
            consensus: consensus_slot.clone(),
            notary,
            membership: membership.clone(),
        };
        let mut background =
            vec![tokio::spawn(crate::membership::follow(store.clone(), writer.clone(), membership_tx))];
        let link_config = replication.consensus_link(membership.clone());
        let replication_settings = Arc::new(replication.clone());
        let replicator = Replicator::start(replication, peer_listener, deps).await?;
        let storage = crate::consensus::Storage { log: consensus_log, writer: writer.clone(), store: store.clone() };
        let consensus = crate::consensus::start(
            &config,
            link_config,
            storage,
            consensus_slot,
            links.clone(),
            options.clock.clone(),
            &recorder,
        )
        .await?;
        let proposer = crate::membership::Proposer {
            region: config.region.clone(),
            consensus: consensus.clone(),
            store: store.clone(),
            clock: options.clock.clone(),
            seed: Arc::new(crate::membership::seed(&config)),
        };
        background.push(tokio::spawn(crate::membership::keep_group(consensus.clone(), membership.clone())));
        background.push(tokio::spawn(crate::membership::announce_joined(
            proposer.clone(),
            membership.clone(),
            incarnation,
        )));

        let state = AppState {
            cluster: config.cluster.clone(),
            region: config.region.clone(),
            membership: membership.clone(),
            proposer,
            replication: replication_settings,
            placement_defaults: Arc::new(config.policies.placement.clone()),
            coordinator: config.coordinator().map(ToString::to_string),
            store,
            sealer: config.policies.sealer.clone(),
            writer: writer.clone(),
            limits: (&config.limits).into(),
            status: replicator.status.clone(),
            links,
            access: Arc::new(crate::access::LiveAccess::new(config.access.clone())),
            require_key_for_monitoring: config.require_key_for_monitoring,
            clock: options.clock.clone(),
            started: std::time::Instant::now(),
            health: crate::health::Thresholds {
                lag_warn: config.health.lag_warn,
                lag_critical: config.health.lag_critical,
                freshness_target: config.replication_rules.default_ttl,
            },
            metrics: crate::metrics::ServerMetrics::new(recorder.as_ref(), metrics_handle.clone()),
            replication_metrics: replicator.metrics.clone(),
            forwarder: Arc::new(config.forwarder().map_err(|e| StartError::Forwarder(e.to_string()))?),
            admission: crate::admission::Admission::new(max_skew_ms, recorder.as_ref()),
            dlq_max_entries: config.dlq.max_entries,
            consensus: consensus.clone(),
            strong_topics: Arc::new(config.policies.strong.clone()),
            functions: Arc::new(
                config.policies.functions.iter().map(|(t, f)| (t.clone(), f.keys().cloned().collect())).collect(),
            ),
            throttled_topics: Arc::new(
                config.topics.iter().filter(|(_, t)| t.throttle_when_lag_critical).map(|(n, _)| n.clone()).collect(),
            ),
            repairer: replicator.repairer(),
        };
        // Histogram samples are folded into buckets here and at every scrape; the conflict log
        // is trimmed to its retention every 12 ticks (a minute).
        let (upkeep_store, upkeep_clock) = (state.store.clone(), options.clock.clone());
        let retention_ms = u64::try_from(config.conflict_log.retention.as_millis()).unwrap_or(u64::MAX);
        let entries_max = config.conflict_log.max_entries;
        let upkeep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            for n in 0u64.. {
                tick.tick().await;
                metrics_handle.run_upkeep();
                if n % 12 == 0 {
                    let (store, now_ms) = (upkeep_store.clone(), upkeep_clock.now_ms());
                    let trim = move || crate::review::expire_conflicts(&*store, now_ms, retention_ms, entries_max);
                    match tokio::task::spawn_blocking(trim).await {
                        Ok(Ok(0)) => {}
                        Ok(Ok(n)) => tracing::debug!(expired = n, "conflict log trimmed"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "conflict log retention failed; retrying in a minute"),
                        Err(e) => tracing::warn!(error = %e, "conflict log retention task failed"),
                    }
                }
            }
        });
        let listener = api_listener;
        let api_addr =
            listener.local_addr().map_err(|source| StartError::ApiListen { addr: config.listen.api, source })?;
        let (stop, mut stopped) = watch::channel(false);
        if let Some(tls) = config.peer_tls.clone() {
            let (m, mut stopped) = (&state.metrics, stopped.clone());
            let follow = crate::reload::follow_tls(tls, m.tls_reloaded.clone(), m.tls_reload_refused.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = follow => {}
                    _ = stopped.wait_for(|s| *s) => {}
                }
            });
        }
        if let Some(path) = config.source.clone() {
            let (m, mut stopped) = (&state.metrics, stopped.clone());
            let live = crate::reload::Followed { keys: state.access.clone(), secrets };
            let follow = crate::reload::follow_config(
                path,
                api_addr,
                live,
                m.config_reloaded.clone(),
                m.config_reload_refused.clone(),
            );
            tokio::spawn(async move {
                tokio::select! {
                    () = follow => {}
                    _ = stopped.wait_for(|s| *s) => {}
                }
            });
        }
        let app = http::router(state);
        let api_tls = config.peer_tls.clone();
        let api = tokio::spawn(async move {
            let shutdown = async move {
                // Either a stop request or the sender dropping ends serving.
                let _ = stopped.wait_for(|s| *s).await;
            };
            match api_tls {
                Some(tls) => crate::https::serve(listener, app, tls, shutdown).await,
                None => {
                    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                        tracing::error!(error = %e, "HTTP API stopped");
                    }
                }
            }
        });
        tracing::info!(region = %config.region, api = %api_addr, peer = %config.listen.peer, cluster = %config.cluster, "node serving");
        if config.peer_tls.is_none() && !config.listen.peer.ip().is_loopback() {
            tracing::warn!(peer = %config.listen.peer, "peers connect to this node without TLS beyond loopback: replication crosses the network in clear (add `tls:`; docs/security.md)");
        }
        Ok(Self { api_addr, replicator, writer, api, upkeep, background, stop, consensus })
    }

    /// Runs until the API server stops.
    pub async fn wait(self) {
        let Node { api, replicator, stop, upkeep, background, consensus, .. } = self;
        upkeep.abort();
        for task in &background {
            task.abort();
        }
        let _ = api.await;
        consensus.shutdown().await;
        drop(replicator);
        drop(stop);
    }

    /// The version vector committed at this node; changes after every commit.
    pub fn applied(&self) -> watch::Receiver<mrr_core::VersionVector> {
        self.writer.applied()
    }

    pub fn shutdown(&self) {
        self.stop.send_replace(true);
        self.upkeep.abort();
        for task in &self.background {
            task.abort();
        }
        self.replicator.shutdown();
    }
}

/// The replication side of `config`.
fn replication_config(
    config: &Config,
    options: &NodeOptions,
    secrets: Arc<mrr_replication::secrets::LiveSecrets>,
    max_skew_ms: u64,
) -> ReplicationConfig {
    ReplicationConfig {
        cluster: config.cluster.clone(),
        local: config.region.clone(),
        peers: config.peers().map(|p| PeerConfig { region: p.name.clone(), endpoint: peer_url(&p.endpoint) }).collect(),
        secrets: secrets.clone(),
        max_skew_ms,
        heartbeat_interval: options.heartbeat_interval,
        peer_timeout: options.peer_timeout,
        reconnect_backoff_min: Duration::from_millis(100),
        reconnect_backoff_max: Duration::from_secs(5),
        limits: OutboundLimits {
            queue_delay_target_ms: u64::try_from(config.lanes.queue_delay_target.as_millis()).unwrap_or(u64::MAX),
            ..OutboundLimits::default()
        },
        freshness_target: config.replication_rules.default_ttl,
        policy_digest: config.policies.digest(),
        sealer: config.policies.sealer.clone(),
        tls: config.peer_tls.clone(),
        // Without a window no region is ever let go, but one that is away is still reported.
        retention: Some(mrr_core::stability::Window {
            away_ms_max: config.retention.window.map_or(u64::MAX, |w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
            changelog_bytes_max: config.retention.changelog_bytes_max.unwrap_or(u64::MAX),
            silent_ms: u64::try_from(options.peer_timeout.as_millis()).unwrap_or(u64::MAX),
        }),
        repair_interval: Some(config.anti_entropy.interval).filter(|i| !i.is_zero()),
        // Known once the bootstrap (if any) is done.
        incarnation: None,
    }
}
