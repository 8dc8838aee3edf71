//! The receiver's side of a snapshot bootstrap, run by a node before its writer starts.
//!
//! A data directory with no data and no [`BootstrapMark`] does not know where this region's own
//! streams stand: if it was wiped, its peers hold changes it wrote, and a write numbered from 1
//! again would be taken for one they already have. So before anything else, such a region asks
//! every peer where it stands (the Welcome of a `Snapshot` call: applied vector and log floors)
//! and waits until all have answered. When no peer holds anything of its streams and no peer's
//! changelog was truncated, it is new to a new cluster: it starts from nothing. Otherwise, once
//! every peer holds its own streams equally far (they relay them to each other meanwhile), it
//! installs a snapshot of one (so it continues its streams where the cluster has them, and no
//! peer needs any of them from below the log floor the snapshot leaves), then starts: the peers'
//! changelogs carry it on from the snapshot's vector.
//!
//! The install is resumable: each chunk commits with its cursor ([`BootstrapMark::Installing`]),
//! so a broken stream or a restart goes on after the last chunk installed, from the same
//! snapshot while the donor holds it. If the donor no longer does, what was installed is taken
//! out and a new snapshot starts. Meanwhile this region's peer listener answers handshakes
//! (other regions bootstrapping ask it where it stands) and refuses replication streams.
//!
//! Not here: deciding what a snapshot holds ([`mrr_writer::snapshot`]) and serving one
//! ([`crate::donor`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mrr_core::{Key, RegionName};
use mrr_storage::{BootstrapMark, Store, STORAGE_FORMAT};
use mrr_writer::snapshot::{self, Standing};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::{self, from_donor, to_donor};
use crate::{wire, PeerConfig, ReplicationConfig};

/// Records taken out per commit when an unfinished install is cleared.
const CLEAR_RECORDS_MAX: usize = 4_096;
/// Broken snapshot streams retried before the donor is asked again where it stands.
const RESUMES_MAX: u32 = 20;

/// What an empty data directory does at start (`bootstrap:` in the config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// Ask every peer where this region's streams stand; install a snapshot when they hold
    /// anything of it. Waits for every peer to answer.
    #[default]
    AskPeers,
    /// Start as a new region of a new cluster without asking. A wiped region started so would
    /// number its writes from 1 again, which its peers take for writes they hold: only for the
    /// first start of a cluster.
    NewCluster,
}

/// How a node's start went with respect to bootstrapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The directory already knew its position.
    NotNeeded,
    /// A new region of a new cluster: no peer holds anything of it.
    Fresh,
    /// A region added to a cluster that has nothing to snapshot yet: starts from nothing,
    /// in membership `incarnation`.
    Joined { incarnation: u64 },
    /// Installed a snapshot, into membership `incarnation`.
    Installed { donor: RegionName, records: u64, bytes: u64, elapsed_ms: u64, incarnation: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("storage: {0}")]
    Store(#[from] mrr_storage::StoreError),
    #[error("cannot serve peers while bootstrapping: {0}")]
    Listener(std::io::Error),
}

/// Brings `store` to a known position before the node starts, serving handshakes on
/// `listener` meanwhile; gives the listener back. Returns at once for a directory that knows
/// its position.
pub async fn run(
    config: Arc<ReplicationConfig>,
    listener: TcpListener,
    store: Arc<dyn Store>,
    clock: Arc<dyn mrr_core::PhysicalClock>,
    notary: Option<Arc<dyn mrr_core::provenance::Notary>>,
    start: Start,
    membership: crate::membership::LiveMembership,
) -> Result<(TcpListener, Outcome), BootstrapError> {
    let mark = store.bootstrap_mark()?;
    if mark.as_ref().and_then(BootstrapMark::incarnation).is_some() {
        return Ok((listener, Outcome::NotNeeded));
    }
    if mark.is_none() && has_data(&*store)? {
        // A directory from before marks: it has run, so it knows where it stands.
        mark_done(&*store)?;
        return Ok((listener, Outcome::NotNeeded));
    }
    let peers = crate::membership::peers(&membership.borrow(), &config.local);
    if peers.is_empty() || (start == Start::NewCluster && mark.is_none()) {
        mark_done(&*store)?;
        return Ok((listener, Outcome::Fresh));
    }
    // Serve handshakes on a second handle of the listening socket while this runs.
    let std_listener = listener.into_std().map_err(BootstrapError::Listener)?;
    let served = std_listener.try_clone().map_err(BootstrapError::Listener)?;
    let (stop, stopped) = watch::channel(false);
    let donor = crate::donor::Donor {
        config: config.clone(),
        store: store.clone(),
        clock: clock.clone(),
        snapshots: Arc::default(),
        serving: false,
        stable: None,
        fences: None,
        membership: membership.clone(),
        status: None,
    };
    let server = tokio::spawn(serve_handshakes(
        config.clone(),
        TcpListener::from_std(served).map_err(BootstrapError::Listener)?,
        donor,
        stopped,
    ));
    let outcome = install(&config, &peers, &store, notary.as_deref()).await;
    stop.send_replace(true);
    let _ = server.await;
    let listener = TcpListener::from_std(std_listener).map_err(BootstrapError::Listener)?;
    Ok((listener, outcome?))
}

fn has_data(store: &dyn Store) -> Result<bool, mrr_storage::StoreError> {
    Ok(!store.recover()?.vv.is_empty() || !store.records_after(None, 1)?.is_empty())
}

fn mark_done(store: &dyn Store) -> Result<(), mrr_storage::StoreError> {
    mark_done_into(store, 0)
}

/// Marks the directory as knowing its position, in membership `incarnation`.
fn mark_done_into(store: &dyn Store, incarnation: u64) -> Result<(), mrr_storage::StoreError> {
    let high = store.recover()?.hlc_high_water;
    store.commit(&mrr_storage::CommitBatch {
        bootstrap: Some(BootstrapMark::done(incarnation)),
        hlc_high_water: high,
        must_sync: true,
        ..Default::default()
    })
}

async fn install(
    config: &Arc<ReplicationConfig>,
    peers: &[PeerConfig],
    store: &Arc<dyn Store>,
    notary: Option<&dyn mrr_core::provenance::Notary>,
) -> Result<Outcome, BootstrapError> {
    let local = config.local.clone();
    let mut backoff = config.reconnect_backoff_min;
    let mut last_logged = String::new();
    // Regions started together come up in some order: a peer that does not answer within the
    // first peer timeout is still starting, not down.
    let starting_until = Instant::now() + config.peer_timeout;
    // Donors that hold only the register of a record placed here: another must serve.
    let mut refused = std::collections::BTreeSet::new();
    loop {
        let standings = ask_everyone(config, peers).await;
        let missing: Vec<&RegionName> = standings.iter().filter(|(_, s)| s.is_err()).map(|(r, _)| r).collect();
        if !missing.is_empty() {
            let text = format!("{missing:?}");
            if Instant::now() < starting_until {
                tracing::debug!(waiting_for = %text, "asking peers where this region stands; some are not up yet");
            } else if text != last_logged {
                let errors: Vec<String> =
                    standings.iter().filter_map(|(r, s)| s.as_ref().err().map(|e| format!("{r}: {e}"))).collect();
                tracing::warn!(waiting_for = %text, errors = ?errors, "this region's data directory is empty: waiting for every peer to say where this region's streams stand before it writes (a wiped region must not reuse sequence numbers its peers hold)");
                last_logged = text;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(config.reconnect_backoff_max);
            continue;
        }
        let standings: BTreeMap<RegionName, Standing> =
            standings.into_iter().filter_map(|(r, s)| s.ok().map(|s| (r, s))).collect();
        let mark = store.bootstrap_mark()?;
        let installing = match &mark {
            Some(BootstrapMark::Installing { donor, snapshot, after }) => {
                Some((donor.clone(), *snapshot, after.clone()))
            }
            _ => None,
        };
        let donor = match snapshot::decide(
            &local,
            &standings,
            installing.as_ref().map(|(d, _, _)| d.as_str()),
            &refused,
        ) {
            snapshot::Decision::Fresh => {
                let incarnation = standings.values().map(|s| s.incarnation).max().unwrap_or(0);
                mark_done_into(&**store, incarnation)?;
                tracing::info!(
                    "no peer holds anything of this region and no changelog was truncated: starting as a new region"
                );
                return Ok(if incarnation == 0 { Outcome::Fresh } else { Outcome::Joined { incarnation } });
            }
            snapshot::Decision::Wait => {
                let own: Vec<_> = standings.iter().map(|(r, s)| (r.to_string(), s.applied.of_origin(&local))).collect();
                tracing::warn!(standings = ?own, "peers hold this region's streams to different points: waiting for them to relay to each other before taking a snapshot");
                tokio::time::sleep(backoff).await;
                continue;
            }
            snapshot::Decision::From(donor) => donor,
        };
        let resumable = installing.filter(|(d, _, _)| d == donor.as_str());
        if resumable.is_none() && mark.is_some_and(|m| m.incarnation().is_none()) {
            clear(&**store, &config.sealer).await?;
        }
        let Some(peer) = peers.iter().find(|p| p.region == donor) else { continue };
        let (snapshot, after) = resumable.map(|(_, s, a)| (s, a)).unwrap_or((0, None));
        match fetch(config, store, peer, snapshot, after, notary).await {
            Ok(outcome) => return Ok(outcome),
            Err(Fetch::Store(e)) => return Err(e.into()),
            Err(Fetch::Gone(text)) => {
                tracing::warn!(donor = %donor, error = %text, "the snapshot being installed is gone: clearing what was installed and starting a new one");
                clear(&**store, &config.sealer).await?;
                let high = store.recover()?.hlc_high_water;
                store.commit(&mrr_storage::CommitBatch {
                    bootstrap: Some(BootstrapMark::Installing { donor: donor.to_string(), snapshot: 0, after: None }),
                    hlc_high_water: high,
                    ..Default::default()
                })?;
            }
            Err(Fetch::NotHeld(text)) => {
                tracing::warn!(donor = %donor, error = %text, "the donor cannot serve every record placed in this region: asking another");
                refused.insert(donor.clone());
                tokio::time::sleep(backoff).await;
            }
            Err(Fetch::Failed(text)) => {
                tracing::warn!(donor = %donor, error = %text, retry_in_ms = backoff.as_millis() as u64, "snapshot bootstrap from peer failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.reconnect_backoff_max);
            }
        }
    }
}

/// Takes out an unfinished install.
async fn clear(store: &dyn Store, sealer: &mrr_core::Sealer) -> Result<(), mrr_storage::StoreError> {
    let mut removed = 0usize;
    while let Some(batch) = snapshot::clear_batch(store, sealer, CLEAR_RECORDS_MAX)? {
        removed += batch.records_removed.len();
        store.commit(&batch)?;
    }
    tracing::info!(removed, "cleared an unfinished snapshot install");
    Ok(())
}

/// Where every peer stands, or why it did not say.
async fn ask_everyone(
    config: &Arc<ReplicationConfig>,
    peers: &[PeerConfig],
) -> Vec<(RegionName, Result<Standing, String>)> {
    let asks = peers.iter().map(|p| async move {
        let answer = match connect(config, p).await {
            Ok((_, _, standing)) => Ok(standing),
            Err(e) => Err(e),
        };
        (p.region.clone(), answer)
    });
    futures_util::future::join_all(asks).await
}

type Outgoing = mpsc::Sender<proto::ToDonor>;

/// A `Snapshot` call to `peer`, through the handshake.
async fn connect(
    config: &ReplicationConfig,
    peer: &PeerConfig,
) -> Result<(Outgoing, Streaming<proto::FromDonor>, Standing), String> {
    let mut client = config.peer_call_client(peer).await?;
    let (tx, rx) = mpsc::channel::<proto::ToDonor>(4);
    let dialer = config.dialer(&peer.region);
    let send = |tx: &Outgoing, msg| {
        let tx = tx.clone();
        async move { tx.send(proto::ToDonor { msg: Some(msg) }).await.map_err(|_| "the call closed".to_string()) }
    };
    send(&tx, to_donor::Msg::Hello(dialer.hello())).await?;
    let within = config.peer_timeout;
    let mut inbound = match timeout(within, client.snapshot(ReceiverStream::new(rx))).await {
        Err(_) => return Err(format!("no answer within {within:?}")),
        Ok(r) => r.map_err(|s| s.message().to_string())?.into_inner(),
    };
    let challenge = match message(&mut inbound, within).await? {
        from_donor::Msg::Challenge(c) => c,
        _ => return Err("expected Challenge".into()),
    };
    let (auth, challenged) = dialer.on_challenge(&challenge).map_err(|e| e.to_string())?;
    send(&tx, to_donor::Msg::Auth(auth)).await?;
    let welcome = match message(&mut inbound, within).await? {
        from_donor::Msg::Welcome(w) => w,
        _ => return Err("expected Welcome".into()),
    };
    dialer.on_welcome(&challenged, &welcome, 0, 0).map_err(|e| e.to_string())?;
    let standing = Standing {
        applied: wire::vv_from_wire(welcome.applied).map_err(|e| e.to_string())?,
        floors: wire::vv_from_wire(welcome.log_floors).map_err(|e| e.to_string())?,
        stable: wire::vv_from_wire(welcome.stable).map_err(|e| e.to_string())?,
        incarnation: welcome.incarnation,
    };
    Ok((tx, inbound, standing))
}

async fn message(inbound: &mut Streaming<proto::FromDonor>, within: Duration) -> Result<from_donor::Msg, String> {
    match timeout(within, inbound.message()).await {
        Err(_) => Err(format!("nothing from the donor within {within:?}")),
        Ok(Err(status)) => Err(status_text(&status)),
        Ok(Ok(None)) => Err("the donor closed the call".into()),
        Ok(Ok(Some(m))) => m.msg.ok_or_else(|| "an empty message".to_string()),
    }
}

fn status_text(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

enum Fetch {
    Store(mrr_storage::StoreError),
    /// The donor no longer holds the snapshot being resumed.
    Gone(String),
    /// The donor holds only the register of a record placed here.
    NotHeld(String),
    Failed(String),
}

/// Installs `peer`'s snapshot (resuming `snapshot` after `after` when not 0), retrying broken
/// streams from the last installed chunk.
async fn fetch(
    config: &ReplicationConfig,
    store: &Arc<dyn Store>,
    peer: &PeerConfig,
    mut snapshot: u64,
    mut after: Option<Key>,
    notary: Option<&dyn mrr_core::provenance::Notary>,
) -> Result<Outcome, Fetch> {
    let started = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut header: Option<snapshot::Header> = None;
    let mut failures = 0u32;
    // The incarnation the donor's membership admitted this region under.
    let mut incarnation = 0;
    loop {
        let attempt = async {
            let (tx, mut inbound, standing) = connect(config, peer).await.map_err(Fetch::Failed)?;
            incarnation = standing.incarnation;
            let after_bytes = match &after {
                Some(k) => postcard::to_allocvec(k).map_err(|e| Fetch::Failed(e.to_string()))?,
                None => Vec::new(),
            };
            let request =
                proto::SnapshotRequest { resume: snapshot, after: after_bytes, storage_format: STORAGE_FORMAT };
            tx.send(proto::ToDonor { msg: Some(to_donor::Msg::Request(request)) })
                .await
                .map_err(|_| Fetch::Failed("the call closed".into()))?;
            let first = match timeout(config.peer_timeout * 4, inbound.message()).await {
                Err(_) => return Err(Fetch::Failed("no snapshot header in time".into())),
                Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                    return Err(Fetch::Gone(status_text(&status)))
                }
                Ok(Err(status)) => return Err(Fetch::Failed(status_text(&status))),
                Ok(Ok(m)) => m.and_then(|m| m.msg),
            };
            let Some(from_donor::Msg::Header(h)) = first else {
                return Err(Fetch::Failed("expected a snapshot header".into()));
            };
            if h.storage_format != STORAGE_FORMAT {
                return Err(Fetch::Failed(format!(
                    "{} sends storage format {}, this release stores format {STORAGE_FORMAT}: run the same release in both regions",
                    peer.region, h.storage_format
                )));
            }
            let (id, h) = wire::header_from_wire(h).map_err(|e| Fetch::Failed(e.to_string()))?;
            if snapshot != 0 && id != snapshot {
                return Err(Fetch::Failed(format!("asked to resume snapshot {snapshot}, got {id}")));
            }
            if snapshot == 0 {
                tracing::info!(donor = %peer.region, snapshot = id, vv = ?crate::status::vv_map(&h.vv), "installing a snapshot");
            }
            snapshot = id;
            let header = header.get_or_insert(h);
            loop {
                let chunk = match timeout(config.peer_timeout * 4, inbound.message()).await {
                    Err(_) => return Err(Fetch::Failed("no snapshot chunk in time".into())),
                    Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                        return Err(Fetch::NotHeld(status_text(&status)))
                    }
                    Ok(Err(status)) => return Err(Fetch::Failed(status_text(&status))),
                    Ok(Ok(None)) => return Err(Fetch::Failed("the donor ended the snapshot early".into())),
                    Ok(Ok(Some(proto::FromDonor { msg: Some(from_donor::Msg::Chunk(c)) }))) => c,
                    Ok(Ok(Some(_))) => return Err(Fetch::Failed("expected a snapshot chunk".into())),
                };
                let chunk = wire::chunk_from_wire(chunk).map_err(|e| Fetch::Failed(e.to_string()))?;
                let done = chunk.done;
                records += chunk.records.len() as u64;
                bytes += chunk.payload_bytes();
                let last = chunk.last.clone();
                let batch = snapshot::chunk_batch(chunk, header, &peer.region, snapshot, &config.local, &config.sealer);
                let s = store.clone();
                tokio::task::spawn_blocking(move || s.commit(&batch))
                    .await
                    .map_err(|e| Fetch::Failed(e.to_string()))?
                    .map_err(Fetch::Store)?;
                after = last.or(after.take());
                if done {
                    return Ok(());
                }
            }
        };
        match attempt.await {
            Ok(()) => break,
            Err(Fetch::Failed(text)) if snapshot != 0 && failures < RESUMES_MAX => {
                failures += 1;
                tracing::warn!(donor = %peer.region, snapshot, error = %text, records, "snapshot stream broke: resuming after the last chunk installed");
                tokio::time::sleep(config.reconnect_backoff_min * failures).await;
            }
            Err(e) => return Err(e),
        }
    }
    let Some(header) = header else { return Err(Fetch::Failed("no header".into())) };
    for (fingerprint, der) in &header.certificates {
        store.add_certificate(fingerprint, der).map_err(Fetch::Store)?;
    }
    let end = snapshot::end_batch(&header, &config.local, &config.sealer, notary, incarnation);
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.commit(&end))
        .await
        .map_err(|e| Fetch::Failed(e.to_string()))?
        .map_err(Fetch::Store)?;
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(donor = %peer.region, snapshot, records, bytes, elapsed_ms, "snapshot installed");
    Ok(Outcome::Installed { donor: peer.region.clone(), records, bytes, elapsed_ms, incarnation })
}

/// The peer service while bootstrapping: handshakes for regions asking where this one stands;
/// replication streams are refused until the install is done.
struct Bootstrapping {
    local: RegionName,
    donor: crate::donor::Donor,
}

#[tonic::async_trait]
impl proto::peer_server::Peer for Bootstrapping {
    type ReplicateStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::ToDialer, Status>> + Send>>;
    type SnapshotStream = crate::donor::FromDonorStream;
    type RepairStream = crate::repair::FromRepairStream;

    async fn repair(
        &self,
        _request: Request<Streaming<proto::ToRepairPeer>>,
    ) -> Result<Response<Self::RepairStream>, Status> {
        Err(Status::unavailable(format!(
            "{} is bootstrapping: it compares its records with its peers' once its install is done",
            self.local
        )))
    }

    async fn replicate(
        &self,
        _request: Request<Streaming<proto::ToAcceptor>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        Err(Status::unavailable(format!(
            "{} is bootstrapping (its data directory knows no position yet); it accepts replication once done",
            self.local
        )))
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<proto::ToDonor>>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.donor.serve(request).await
    }
}

async fn serve_handshakes(
    config: Arc<ReplicationConfig>,
    listener: TcpListener,
    donor: crate::donor::Donor,
    mut stopped: watch::Receiver<bool>,
) {
    let svc = proto::peer_server::PeerServer::new(Bootstrapping { local: config.local.clone(), donor });
    let shutdown = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let builder = tonic::transport::Server::builder().add_service(svc);
    let result = match config.tls.clone() {
        Some(tls) => builder.serve_with_incoming_shutdown(crate::inbound::tls_incoming(listener, tls), shutdown).await,
        None => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            builder.serve_with_incoming_shutdown(incoming, shutdown).await
        }
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "peer listener stopped while bootstrapping");
    }
}
