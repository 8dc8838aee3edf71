//! MRR replication: moving changes between regions.
//!
//! Every region dials every other region and keeps one persistent gRPC stream per peer
//! ([`outbound`]); it accepts the streams the others dial ([`inbound`]). Each stream starts with
//! a [`handshake`] (cluster, protocol version, region, clock skew, cluster-secret proof), then
//! carries pipelined batches one way and cumulative acks the other. What to send, and when, is
//! decided by the sans-IO [`mrr_core::session::OutboundSession`]; this crate is the runtime
//! around it. [`link`] sits under both directions and can emulate a WAN (delay, jitter,
//! partitions) for `mrr dev`, tests and benchmarks.
//!
//! This crate knows nothing of HTTP or client requests: it reads the changelog from the
//! [`mrr_storage::Store`] and applies what it receives through the [`mrr_writer::Writer`].

pub mod bootstrap;
pub mod consensus_link;
mod donor;
mod fence;
pub mod handshake;
mod inbound;
pub mod link;
pub mod membership;
pub mod metrics;
pub mod notary;
mod outbound;
pub mod repair;
pub mod secrets;
mod stable;
pub mod status;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mrr_core::session::OutboundLimits;
use mrr_core::{PhysicalClock, RegionName};
use mrr_storage::Store;
use mrr_writer::Writer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use link::{LinkSpec, Links};
pub use status::{PeerStatus, StatusBoard};

/// Generated peer protocol.
pub mod proto {
    #![allow(clippy::all, missing_debug_implementations)]
    tonic::include_proto!("mrr.peer.v1");
}

impl link::WireLen for proto::ToAcceptor {
    fn wire_len(&self) -> usize {
        prost::Message::encoded_len(self)
    }
}

impl link::WireLen for Result<proto::ToDialer, tonic::Status> {
    fn wire_len(&self) -> usize {
        self.as_ref().map_or(0, prost::Message::encoded_len)
    }
}

/// HTTP/2 receive windows of peer streams (see `inbound::serve`).
pub(crate) const H2_STREAM_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
pub(crate) const H2_CONNECTION_WINDOW_BYTES: u32 = 32 * 1024 * 1024;

/// The protocol version this build speaks. A peer speaking another is refused at handshake.
/// 2: changes carry their causal past, merge deltas and replays; Hello carries the policy digest.
/// 3: sequences, version vectors and cursors are per (origin, lane).
/// 4: placement markers (`Change.marker`).
/// 5: moves, wants and transfers (`Change.moves`, `carried`, `want`, `transfer`).
/// 6: a custom move's long fold history goes ahead of it in pieces (`Change.history`).
/// 7: merge deltas carry escrow counters (bounded fields: `Field.escrow`).
/// 8: Hello, Challenge, Auth, Welcome: the acceptor proves itself only after the dialer has.
/// 9: relayed changes carry their origin's proof (`Change.checkpoint`, `content_digest`,
///    `Batch.certificates`).
/// 10: snapshot bootstrap (`Snapshot`), and `Welcome.log_floors`.
/// 11: anti-entropy (`Repair`).
/// 12: region membership (`Hello.incarnation`, `Welcome.incarnation`).
pub const PROTOCOL_VERSION: u32 = 12;

#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub region: RegionName,
    /// `http://host:port` of the peer's replication listener.
    pub endpoint: String,
}

/// Mutual TLS between regions: this region's certificate and key and the cluster's CA, as
/// they stand (`mrr_tls::LiveTls`: checked together, reloaded when the files change). With it,
/// every peer connection is TLS and both sides present a certificate of the CA; a peer passes
/// only as the region its certificate names.
pub type PeerTls = Arc<mrr_tls::LiveTls>;

fn identity(loaded: &mrr_tls::Loaded) -> tonic::transport::Identity {
    tonic::transport::Identity::from_pem(&loaded.cert_pem, &loaded.key_pem)
}

/// The dialer's side toward `peer`, from the material in use: the server must present a
/// certificate of the CA that names `peer` (`<peer>.regions.mrr`), whatever host the endpoint
/// names.
pub(crate) fn tls_client(tls: &PeerTls, peer: &RegionName) -> tonic::transport::ClientTlsConfig {
    let loaded = tls.current();
    tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&loaded.ca_pem))
        .identity(identity(&loaded))
        .domain_name(mrr_tls::region_dns_name(peer.as_str()))
}

/// With TLS on, refuses a peer whose certificate does not name the region it claims.
pub(crate) fn check_peer(
    tls: Option<&PeerTls>,
    certs: Option<&[tonic::transport::CertificateDer<'static>]>,
    claimed: &RegionName,
) -> Result<(), tonic::Status> {
    if tls.is_none() {
        return Ok(());
    }
    mrr_tls::check_peer_region(certs, claimed.as_str()).map_err(|e| {
        tracing::warn!(claimed = %claimed, error = %e, "refused a peer whose certificate does not name its region");
        tonic::Status::unauthenticated(e.to_string())
    })
}

#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    pub cluster: String,
    pub local: RegionName,
    pub peers: Vec<PeerConfig>,
    pub secrets: Arc<secrets::LiveSecrets>,
    /// Seals the key of every marker sent to a region outside a change's placement.
    pub sealer: mrr_core::Sealer,
    pub max_skew_ms: u64,
    /// Idle streams send a heartbeat this often.
    pub heartbeat_interval: Duration,
    /// A stream with nothing heard for this long is dead and is re-established.
    pub peer_timeout: Duration,
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    pub limits: OutboundLimits,
    /// `replication_rules.default_ttl`: a change applied later than this after its write is a
    /// freshness violation.
    pub freshness_target: Duration,
    /// [`mrr_core::Policies::digest`] of this node; peers must have the same.
    pub policy_digest: String,
    /// Mutual TLS between regions (`https://` endpoints); `None`: plain HTTP/2.
    pub tls: Option<PeerTls>,
    /// How long a peer that is away holds changelog truncation back (`retention:`); `None`:
    /// for ever.
    pub retention: Option<mrr_core::stability::Window>,
    /// How often anti-entropy compares this region with every peer (the scrub); `None`: only
    /// on demand (`POST /v1/repair`).
    pub repair_interval: Option<Duration>,
    /// The membership incarnation this region's data directory was admitted under (its
    /// bootstrap mark says); `None` while an empty directory bootstraps.
    pub incarnation: Option<u64>,
}

/// Shared pieces every session needs.
#[derive(Clone)]
pub(crate) struct Context {
    pub config: Arc<ReplicationConfig>,
    pub store: Arc<dyn Store>,
    pub writer: Writer,
    pub clock: Arc<dyn PhysicalClock>,
    pub links: Links,
    pub status: StatusBoard,
    pub metrics: metrics::ReplicationMetrics,
    /// The strong tier, once started; the peer listener answers its calls.
    pub consensus: consensus_link::ConsensusSlot,
    /// Verifies relayed changes' checkpoints (with TLS; without, only their chains are checked).
    pub notary: Option<Arc<notary::CertNotary>>,
    /// The cluster's regions as the strong tier last decided ([`membership`]).
    pub membership: membership::LiveMembership,
    /// What every member region has durably applied.
    pub stable: stable::StablePoint,
    /// Regions fenced off because they are bootstrapping (their earlier sessions end).
    pub fences: fence::Fences,
    /// Turns `true` when the replicator shuts down: inbound streams (which run in tasks of
    /// their own, outside the listener's) end then, so dialers learn the node is gone.
    pub closing: tokio::sync::watch::Receiver<bool>,
}

/// What replication runs on: the node's store, writer and clock, its links, its metrics
/// recorder, and the slot its strong tier's voter goes into once started.
pub struct Deps {
    pub store: Arc<dyn Store>,
    pub writer: Writer,
    pub clock: Arc<dyn PhysicalClock>,
    pub links: Links,
    pub recorder: metrics::SharedRecorder,
    pub consensus: consensus_link::ConsensusSlot,
    /// The notary the writer signs with; `None` without TLS.
    pub notary: Option<Arc<notary::CertNotary>>,
    /// The cluster's regions, kept current by the node.
    pub membership: membership::LiveMembership,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps").field("links", &self.links).finish_non_exhaustive()
    }
}

/// The running replication side of a node.
#[derive(Debug)]
pub struct Replicator {
    tasks: Vec<JoinHandle<()>>,
    closing: tokio::sync::watch::Sender<bool>,
    pub status: StatusBoard,
    pub links: Links,
    pub metrics: metrics::ReplicationMetrics,
    ctx: Context,
}

/// Runs anti-entropy from this region ([`repair`]). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Repairer(Context);

impl Repairer {
    /// Compares this region's records with its peers' and repairs what differs.
    pub async fn run(&self, request: repair::RunRequest) -> Result<mrr_api::RepairReport, repair::RunError> {
        repair::run(&self.0, request).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for peers on {addr}: {source} (is another node using the port?)")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

impl Replicator {
    /// Serves peers on `listener` and starts one dialer per peer.
    pub async fn start(config: ReplicationConfig, listener: TcpListener, deps: Deps) -> Result<Self, StartError> {
        let Deps { store, writer, clock, links, recorder, consensus, notary, membership } = deps;
        let heartbeat_ms = u64::try_from(config.heartbeat_interval.as_millis()).unwrap_or(u64::MAX);
        let peers = membership::peers(&membership.borrow(), &config.local);
        let status =
            StatusBoard::new(&config.local, peers.iter().map(|p| (&p.region, p.endpoint.as_str())), heartbeat_ms);
        let metrics = metrics::ReplicationMetrics::new(recorder, &config.local, peers.iter().map(|p| p.region.clone()));
        // A point that cannot be read starts from nothing: retention then waits longer, no more.
        let persisted = store.stable_point().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the persisted stable point; starting from none");
            mrr_core::VersionVector::new()
        });
        status.set_stable(persisted.clone());
        let members = std::iter::once(config.local.clone()).chain(peers.iter().map(|p| p.region.clone()));
        let stable = stable::StablePoint::new(config.local.clone(), members, persisted, config.retention);
        let (closing, closing_rx) = tokio::sync::watch::channel(false);
        let ctx = Context {
            config: Arc::new(config),
            store,
            writer,
            clock,
            links: links.clone(),
            status: status.clone(),
            metrics: metrics.clone(),
            consensus,
            notary,
            membership,
            stable,
            fences: fence::Fences::default(),
            closing: closing_rx,
        };
        // Every log line of this node's sessions names the node's region (several nodes share a
        // process under `mrr dev`).
        let span = tracing::info_span!("node", region = %ctx.config.local);
        let mut tasks = vec![
            tokio::spawn(inbound::serve(ctx.clone(), listener).instrument(span.clone())),
            tokio::spawn(stable::run(ctx.clone()).instrument(span.clone())),
        ];
        tasks.push(tokio::spawn(membership::supervise(ctx.clone(), span.clone()).instrument(span.clone())));
        if let Some(interval) = ctx.config.repair_interval {
            tasks.push(tokio::spawn(repair::scrub(ctx.clone(), interval).instrument(span.clone())));
        }
        Ok(Self { tasks, closing, status, links, metrics, ctx })
    }

    /// What runs anti-entropy from this region on demand.
    pub fn repairer(&self) -> Repairer {
        Repairer(self.ctx.clone())
    }

    /// Stops all sessions and the listener.
    pub fn shutdown(&self) {
        self.closing.send_replace(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("local", &self.config.local).finish_non_exhaustive()
    }
}

impl ReplicationConfig {
    /// A client of `peer`'s peer service for a call of its own (a snapshot, a repair): connected,
    /// with the peer message bound.
    pub(crate) async fn peer_call_client(
        &self,
        peer: &PeerConfig,
    ) -> Result<proto::peer_client::PeerClient<tonic::transport::Channel>, String> {
        let channel = self
            .peer_endpoint(peer)
            .map_err(|e| format!("invalid endpoint {}: {e}", peer.endpoint))?
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        Ok(proto::peer_client::PeerClient::new(channel)
            .max_decoding_message_size(mrr_core::limits::PEER_MESSAGE_BYTES_MAX))
    }

    /// The endpoint of `peer`'s replication listener as every peer connection here dials it:
    /// TLS when the cluster has it, the connect timeout, no Nagle, the large HTTP/2 windows.
    /// `Err`: the endpoint or its TLS settings do not parse (the text says which).
    pub(crate) fn peer_endpoint(&self, peer: &PeerConfig) -> Result<tonic::transport::Endpoint, String> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(peer.endpoint.clone()).map_err(|e| e.to_string())?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls_client(tls, &peer.region)).map_err(|e| e.to_string())?;
        }
        Ok(endpoint
            .connect_timeout(self.peer_timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(H2_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(H2_CONNECTION_WINDOW_BYTES))
    }

    /// This region's side of a handshake with `peer`, with a fresh nonce.
    pub(crate) fn dialer(&self, peer: &RegionName) -> handshake::Dialer {
        use rand::Rng;
        handshake::Dialer {
            cluster: self.cluster.clone(),
            local: self.local.clone(),
            peer: peer.clone(),
            secret: self.secrets.current().current.clone(),
            nonce: rand::rng().random::<[u8; handshake::NONCE_LEN]>(),
            policy_digest: self.policy_digest.clone(),
            incarnation: self.incarnation,
        }
    }

    /// What the strong tier's connection needs of this config and the membership.
    pub fn consensus_link(&self, membership: membership::LiveMembership) -> consensus_link::ConsensusLinkConfig {
        consensus_link::ConsensusLinkConfig {
            cluster: self.cluster.clone(),
            local: self.local.clone(),
            secrets: self.secrets.clone(),
            membership,
            tls: self.tls.clone(),
        }
    }
}
