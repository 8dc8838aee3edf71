//! The donor's side of a snapshot bootstrap: the `Snapshot` call of the peer service. A region
//! that cannot catch up from the changelog (wiped, new, or behind the log floors) dials it,
//! proves itself with the same handshake as a replication stream, and gets a consistent view
//! of this region ([`mrr_storage::StoreView`]) cut for it by [`mrr_writer::snapshot`]: a header,
//! then chunks in key order. The view stays open for a while after the stream ends, so a broken
//! connection resumes after the last chunk the receiver installed instead of starting over.
//!
//! A region that only asks where this one stands (its Welcome: applied vector and log floors)
//! closes the stream after the handshake. While this region is itself bootstrapping it answers
//! that much and refuses to serve a snapshot of its unfinished install.
//!
//! Reads run on blocking threads and the stream holds at most a few chunks in flight, so a
//! snapshot neither stalls the writer nor grows memory with the receiver's slowness.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mrr_core::{Key, RegionName};
use mrr_storage::{Store, StoreView, STORAGE_FORMAT};
use mrr_writer::snapshot::{self, Header};
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::handshake::Acceptor;
use crate::proto::{self, from_donor, to_donor};
use crate::{wire, ReplicationConfig};

/// Records per chunk at most.
pub const CHUNK_RECORDS_MAX: usize = 8_192;
/// Payload bytes per chunk, about (values and fold states, before compression).
pub const CHUNK_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Snapshots held open at once: each pins old versions of what later commits overwrite.
const OPEN_MAX: usize = 4;
/// A snapshot nobody read for this long is dropped; its receiver then starts over.
const IDLE_MAX: Duration = Duration::from_secs(600);
/// Chunks encoded ahead of the receiver.
const CHUNKS_IN_FLIGHT: usize = 2;

pub(crate) type FromDonorStream = Pin<Box<dyn Stream<Item = Result<proto::FromDonor, Status>> + Send>>;

struct Open {
    view: Arc<dyn StoreView>,
    header: Arc<Header>,
    receiver: RegionName,
    last_used: Instant,
}

/// The snapshots this region holds open for receivers, by id.
#[derive(Default)]
pub(crate) struct Snapshots {
    open: Mutex<BTreeMap<u64, Open>>,
}

impl Snapshots {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Open>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops idle snapshots, and the least recently used ones beyond [`OPEN_MAX`] - 1 (room for
    /// one more).
    fn evict(open: &mut BTreeMap<u64, Open>) {
        open.retain(|_, o| o.last_used.elapsed() < IDLE_MAX);
        while open.len() >= OPEN_MAX {
            let Some(oldest) = open.iter().min_by_key(|(_, o)| o.last_used).map(|(id, _)| *id) else { break };
            open.remove(&oldest);
        }
    }

    fn touch(&self, id: u64) {
        if let Some(o) = self.lock().get_mut(&id) {
            o.last_used = Instant::now();
        }
    }
}

/// What the `Snapshot` call needs of the node.
#[derive(Clone)]
pub(crate) struct Donor {
    pub config: Arc<ReplicationConfig>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn mrr_core::PhysicalClock>,
    pub snapshots: Arc<Snapshots>,
    /// `false` while this region bootstraps itself: it answers the handshake only.
    pub serving: bool,
    /// The stable point, told that a region asking where it stands has lost what it said
    /// before (`None` while this region bootstraps itself: it has none yet).
    pub stable: Option<crate::stable::StablePoint>,
    /// Fences the asker's earlier sessions off before answering (`None` while this region
    /// bootstraps itself: it has no sessions yet).
    pub fences: Option<(crate::fence::Fences, mrr_writer::Writer)>,
    /// Who may ask (a member; an empty directory too, for its region's current incarnation).
    pub membership: crate::membership::LiveMembership,
    /// Where the progress of a snapshot served goes (`None` while this region bootstraps
    /// itself: it serves none).
    pub status: Option<crate::StatusBoard>,
}

impl Donor {
    pub(crate) async fn serve(
        &self,
        request: Request<Streaming<proto::ToDonor>>,
    ) -> Result<Response<FromDonorStream>, Status> {
        let cfg = &self.config;
        let certs = request.peer_certs();
        let mut stream = request.into_inner();
        let hello = match next(&mut stream, cfg.peer_timeout, "Hello").await? {
            to_donor::Msg::Hello(h) => h,
            _ => return Err(Status::invalid_argument("the first message of a snapshot call must be Hello")),
        };
        let (acceptor, greeted) =
            crate::inbound::greet(cfg, &self.membership, &hello, certs.as_deref().map(Vec::as_slice))?;
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let donor = self.clone();
        tokio::spawn(async move {
            let receiver = greeted.peer.clone();
            let end = donor.session(&acceptor, &greeted, stream, &tx).await;
            if let Err(status) = end {
                tracing::warn!(receiver = %receiver, error = %status.message(), "snapshot call ended");
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn session(
        &self,
        acceptor: &Acceptor,
        greeted: &crate::handshake::Greeted,
        mut stream: Streaming<proto::ToDonor>,
        tx: &mpsc::Sender<Result<proto::FromDonor, Status>>,
    ) -> Result<(), Status> {
        let cfg = &self.config;
        let receiver = greeted.peer.clone();
        send(tx, from_donor::Msg::Challenge(acceptor.challenge())).await?;
        let auth = match next(&mut stream, cfg.peer_timeout, "Auth").await? {
            to_donor::Msg::Auth(a) => a,
            _ => return Err(Status::invalid_argument("expected Auth after Challenge")),
        };
        let (proof, incarnation) = crate::inbound::check_auth(
            cfg,
            &self.membership,
            acceptor,
            greeted,
            &auth,
            crate::membership::Opening::Snapshot,
        )?;
        // Only a region installing a snapshot calls: nothing its earlier process sent may apply
        // after this answer, and its earlier beacons no longer hold (they must not carry the
        // stable point past what the snapshot it installs will hold).
        if let Some((fences, writer)) = &self.fences {
            fences.fence(writer, &receiver).await.map_err(|e| Status::unavailable(e.to_string()))?;
        }
        if let Some(stable) = &self.stable {
            stable.rejoin(&receiver);
        }
        let store = self.store.clone();
        let (applied, floors, persisted) =
            blocking(move || Ok((store.recover()?.vv, store.log_floors()?, store.stable_point()?))).await?;
        // The point in memory runs up to a tick ahead of the one persisted.
        let stable = self.stable.as_ref().map_or(persisted, crate::stable::StablePoint::current);
        let welcome = proto::Welcome {
            region: cfg.local.to_string(),
            proof,
            wall_ms: self.clock.now_ms(),
            applied: wire::vv_to_wire(&applied),
            direct_origins: Vec::new(),
            log_floors: wire::vv_to_wire(&floors),
            stable: wire::vv_to_wire(&stable),
            incarnation,
        };
        send(tx, from_donor::Msg::Welcome(welcome)).await?;
        // A region that only asked where this one stands is done.
        let request = match timeout(cfg.peer_timeout, stream.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no snapshot request within the peer timeout")),
            Ok(msg) => match msg?.and_then(|m| m.msg) {
                None => return Ok(()),
                Some(to_donor::Msg::Request(r)) => r,
                Some(_) => return Err(Status::invalid_argument("expected a snapshot request after the handshake")),
            },
        };
        if request.storage_format != STORAGE_FORMAT {
            return Err(Status::failed_precondition(format!(
                "{receiver} asks for a snapshot in storage format {}, {} stores format {STORAGE_FORMAT}: run the same release in both regions",
                request.storage_format, cfg.local
            )));
        }
        if !self.serving {
            return Err(Status::unavailable(format!(
                "{} is bootstrapping itself and serves no snapshot until it is done",
                cfg.local
            )));
        }
        let (id, view, header) = self.open(&receiver, request.resume).await?;
        send(tx, from_donor::Msg::Header(wire::header_to_wire(id, &header, STORAGE_FORMAT))).await?;
        let mut after: Option<Key> = match request.after.as_slice() {
            [] => None,
            bytes => {
                Some(postcard::from_bytes(bytes).map_err(|e| Status::invalid_argument(format!("resume key: {e}")))?)
            }
        };
        tracing::info!(receiver = %receiver, snapshot = id, resumed = request.resume != 0, after = ?after, "serving a snapshot");
        let started = Instant::now();
        let (mut records, mut bytes) = (0u64, 0u64);
        loop {
            let (view, to, sealer, from) = (view.clone(), receiver.clone(), cfg.sealer.clone(), after.clone());
            let chunk = tokio::task::spawn_blocking(move || {
                snapshot::chunk(&*view, &to, &sealer, from.as_ref(), CHUNK_RECORDS_MAX, CHUNK_BYTES_MAX)
            })
            .await
            .map_err(|e| Status::internal(format!("snapshot read task: {e}")))?
            .map_err(|e| match e {
                snapshot::SnapshotError::NotHeld { .. } => Status::failed_precondition(e.to_string()),
                other => Status::internal(format!("reading the snapshot: {other}")),
            })?;
            let done = chunk.done;
            let (chunk_records, chunk_bytes) = (chunk.records.len() as u64, chunk.payload_bytes());
            records += chunk_records;
            bytes += chunk_bytes;
            after = chunk.last.clone().or(after);
            let wire = wire::chunk_to_wire(chunk).map_err(|e| Status::internal(e.to_string()))?;
            send(tx, from_donor::Msg::Chunk(wire)).await?;
            self.snapshots.touch(id);
            if let Some(status) = &self.status {
                status.snapshot_sent(&receiver, id, chunk_records, chunk_bytes, done);
            }
            if done {
                break;
            }
        }
        tracing::info!(receiver = %receiver, snapshot = id, records, bytes, elapsed_ms = started.elapsed().as_millis() as u64, "snapshot sent");
        Ok(())
    }

    /// The snapshot `resume` names, or a new one when it is 0.
    async fn open(&self, receiver: &RegionName, resume: u64) -> Result<(u64, Arc<dyn StoreView>, Arc<Header>), Status> {
        if resume != 0 {
            let mut open = self.snapshots.lock();
            Snapshots::evict(&mut open);
            return match open.get_mut(&resume) {
                Some(o) if &o.receiver == receiver => {
                    o.last_used = Instant::now();
                    Ok((resume, o.view.clone(), o.header.clone()))
                }
                Some(_) => Err(Status::permission_denied(format!("snapshot {resume} was opened for another region"))),
                None => Err(Status::not_found(format!(
                    "snapshot {resume} is no longer held by {} (idle too long, or the region restarted): start a new one",
                    self.config.local
                ))),
            };
        }
        let (store, to, sealer) = (self.store.clone(), receiver.clone(), self.config.sealer.clone());
        let (view, header) = tokio::task::spawn_blocking(move || {
            let view = store.view()?;
            let header = snapshot::header(&*view, &to, &sealer)?;
            Ok::<_, snapshot::SnapshotError>((view, header))
        })
        .await
        .map_err(|e| Status::internal(format!("snapshot task: {e}")))?
        .map_err(|e| Status::internal(format!("opening a snapshot: {e}")))?;
        let header = Arc::new(header);
        let id = loop {
            let id = rand::rng().random::<u64>();
            if id != 0 {
                break id;
            }
        };
        let mut open = self.snapshots.lock();
        Snapshots::evict(&mut open);
        open.insert(
            id,
            Open { view: view.clone(), header: header.clone(), receiver: receiver.clone(), last_used: Instant::now() },
        );
        Ok((id, view, header))
    }
}

async fn next(stream: &mut Streaming<proto::ToDonor>, within: Duration, what: &str) -> Result<to_donor::Msg, Status> {
    match timeout(within, stream.message()).await {
        Err(_) => Err(Status::deadline_exceeded(format!("no {what} within the peer timeout"))),
        Ok(msg) => msg?.and_then(|m| m.msg).ok_or_else(|| Status::invalid_argument(format!("expected {what}"))),
    }
}

async fn send(tx: &mpsc::Sender<Result<proto::FromDonor, Status>>, msg: from_donor::Msg) -> Result<(), Status> {
    tx.send(Ok(proto::FromDonor { msg: Some(msg) }))
        .await
        .map_err(|_| Status::cancelled("the receiver closed the snapshot call"))
}

/// A store read on a blocking thread, its failure as the call's status.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, mrr_storage::StoreError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("storage task: {e}")))?
        .map_err(|e| Status::internal(format!("storage: {e}")))
}
