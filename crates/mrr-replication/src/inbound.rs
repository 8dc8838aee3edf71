//! The accepting side: the gRPC service peers dial. It checks the Hello before answering (so a
//! peer speaking the wrong cluster or protocol gets a precise gRPC status), proves itself,
//! verifies the dialer's proof, then runs the stream's [`InboundSession`]: batches that
//! arrived while one was being applied go to the writer together (the same group commit the
//! API gets) and each apply is answered with a cumulative ack. The decisions are the session's,
//! which the simulator drives too; this file does the IO, status and metrics.

use std::pin::Pin;
use std::time::Duration;

use mrr_core::session::{Apply, InboundLimits, InboundSession, Next, Tick};
use mrr_core::RegionName;
use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::{interval, timeout, Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::handshake::{Acceptor, Greeted, HandshakeError, NONCE_LEN};
use crate::link::LinkSender;
use crate::proto::{self, peer_server::PeerServer, to_acceptor, to_dialer};
use crate::wire;
use crate::Context;

/// Changes applied in one writer request at most, when batches queue up.
const APPLY_CHANGES_MAX: usize = 8_192;

pub(crate) async fn serve(ctx: Context, listener: TcpListener) {
    let donor = crate::donor::Donor {
        config: ctx.config.clone(),
        store: ctx.store.clone(),
        clock: ctx.clock.clone(),
        snapshots: std::sync::Arc::default(),
        serving: true,
        stable: Some(ctx.stable.clone()),
        fences: Some((ctx.fences.clone(), ctx.writer.clone())),
        membership: ctx.membership.clone(),
        status: Some(ctx.status.clone()),
    };
    let svc = PeerServer::new(Service { ctx: ctx.clone(), donor })
        .max_decoding_message_size(mrr_core::limits::PEER_MESSAGE_BYTES_MAX);
    let consensus = crate::consensus_link::ConsensusService {
        config: std::sync::Arc::new(ctx.config.consensus_link(ctx.membership.clone())),
        slot: ctx.consensus.clone(),
        links: ctx.links.clone(),
    };
    let consensus = crate::proto::consensus_server::ConsensusServer::new(consensus)
        .max_decoding_message_size(mrr_core::limits::PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(mrr_core::limits::PEER_MESSAGE_BYTES_MAX);
    // The builder's `tcp_nodelay` applies only to listeners it binds itself: accepted sockets
    // get it here (both paths). Without it, Nagle holds a reply's second write until the
    // peer's delayed ACK (40 ms on Linux) — measured as ~60 ms extra on every strong write at
    // the leader.
    let builder = tonic::transport::Server::builder();
    // With TLS the handshake is ours (a rustls acceptor built from the material in use at
    // each accept), so new certificates apply to new connections while open streams go on.
    let result = match ctx.config.tls.clone() {
        Some(tls) => serve_on(builder, svc, consensus, tls_incoming(listener, tls)).await,
        None => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            serve_on(builder, svc, consensus, incoming).await
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "peer listener stopped");
    }
}

/// A TLS handshake not done within this is dropped (a client that connects and stalls).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted connections after their TLS handshake, with the material in use at each accept.
pub(crate) fn tls_incoming(
    listener: TcpListener,
    tls: crate::PeerTls,
) -> ReceiverStream<std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // The server dropping its end stops accepting at once (a bootstrapping node hands
            // its listener on: a connection accepted here after that would be lost).
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let tcp = match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "peer listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if tx.is_closed() {
                return;
            }
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current().peer_server.clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                match timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    // A peer of another CA, a port scanner: nothing to serve.
                    Ok(Err(e)) => tracing::warn!(error = %e, "refused a peer connection at the TLS handshake"),
                    Err(_) => tracing::debug!("a peer connection did not finish its TLS handshake"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

async fn serve_on<IO, IE>(
    builder: tonic::transport::Server,
    svc: PeerServer<Service>,
    consensus: crate::proto::consensus_server::ConsensusServer<crate::consensus_link::ConsensusService>,
    incoming: impl tokio_stream::Stream<Item = Result<IO, IE>>,
) -> Result<(), tonic::transport::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    builder
        // HTTP/2 flow control caps a stream at one window per round trip; hyper's 1 MiB default
        // held WAN catch-up to ~10 MB/s at 100 ms RTT. Sized for a bandwidth-delay product of
        // ~1 Gbit/s x 130 ms.
        .initial_stream_window_size(crate::H2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(crate::H2_CONNECTION_WINDOW_BYTES)
        .add_service(svc)
        .add_service(consensus)
        .serve_with_incoming(incoming)
        .await
}

struct Service {
    ctx: Context,
    donor: crate::donor::Donor,
}

type ToDialerStream = Pin<Box<dyn Stream<Item = Result<proto::ToDialer, Status>> + Send>>;

/// The acceptor's side of a handshake that `hello` opened (a replication stream or a
/// snapshot call): refuses a dialer of another cluster, protocol or region set, or whose
/// certificate (with TLS) names another region than it claims. Whether the membership admits
/// it now is checked once it has proved itself ([`check_auth`]).
pub(crate) fn greet(
    cfg: &crate::ReplicationConfig,
    membership: &crate::membership::LiveMembership,
    hello: &proto::Hello,
    certs: Option<&[tonic::transport::CertificateDer<'static>]>,
) -> Result<(Acceptor, Greeted), Status> {
    let acceptor = Acceptor {
        cluster: cfg.cluster.clone(),
        local: cfg.local.clone(),
        secrets: cfg.secrets.current(),
        nonce: rand::rng().random::<[u8; NONCE_LEN]>(),
        policy_digest: cfg.policy_digest.clone(),
    };
    // Any region the table names (a former member is told why it is refused once proved).
    let known = |r: &RegionName| membership.borrow().get(r).is_some();
    let greeted = acceptor.on_hello(hello, known).map_err(|e| {
        tracing::warn!(from = %hello.region, error = %e, "refused peer handshake");
        handshake_status(e, &cfg.local)
    })?;
    // The region the dialer claims must be the one its certificate names (with TLS).
    crate::check_peer(cfg.tls.as_ref(), certs, &greeted.peer)?;
    Ok((acceptor, greeted))
}

/// The dialer's proof in `auth`, checked, and the membership's admission of its region for
/// `opening`: this acceptor's own proof for its Welcome and the incarnation the membership
/// admitted the dialer's region under.
pub(crate) fn check_auth(
    cfg: &crate::ReplicationConfig,
    membership: &crate::membership::LiveMembership,
    acceptor: &Acceptor,
    greeted: &Greeted,
    auth: &proto::Auth,
    opening: crate::membership::Opening,
) -> Result<(Vec<u8>, u64), Status> {
    let proof = acceptor.on_auth(greeted, auth).map_err(|e| {
        tracing::warn!(peer = %greeted.peer, error = %e, our_cluster = %cfg.cluster, "refused peer handshake");
        handshake_status(e, &cfg.local)
    })?;
    let incarnation = crate::membership::admit(membership, greeted, opening)?;
    Ok((proof, incarnation))
}

/// The status an unproved or refused dialer gets back. A wrong secret is reported as the dialer
/// sees it: a mismatch with this (the acceptor's) region.
pub(crate) fn handshake_status(e: HandshakeError, local: &RegionName) -> Status {
    match e {
        HandshakeError::BadProof(_) => Status::unauthenticated(HandshakeError::BadProof(local.to_string()).to_string()),
        HandshakeError::ProtocolMismatch { .. }
        | HandshakeError::ClusterMismatch { .. }
        | HandshakeError::PolicyMismatch { .. } => Status::failed_precondition(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

#[tonic::async_trait]
impl proto::peer_server::Peer for Service {
    type ReplicateStream = ToDialerStream;
    type SnapshotStream = crate::donor::FromDonorStream;
    type RepairStream = crate::repair::FromRepairStream;

    async fn snapshot(
        &self,
        request: Request<Streaming<proto::ToDonor>>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.donor.serve(request).await
    }

    async fn repair(
        &self,
        request: Request<Streaming<proto::ToRepairPeer>>,
    ) -> Result<Response<Self::RepairStream>, Status> {
        crate::repair::serve(&self.ctx, request).await
    }

    async fn replicate(
        &self,
        request: Request<Streaming<proto::ToAcceptor>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let ctx = self.ctx.clone();
        let certs = request.peer_certs();
        let mut stream = request.into_inner();
        let cfg = &ctx.config;
        let hello = match timeout(cfg.peer_timeout, stream.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no Hello within the peer timeout")),
            Ok(msg) => match msg?.and_then(|m| m.msg) {
                Some(to_acceptor::Msg::Hello(h)) => h,
                _ => return Err(Status::invalid_argument("the first message on a peer stream must be Hello")),
            },
        };
        let (acceptor, greeted) = greet(cfg, &ctx.membership, &hello, certs.as_deref().map(Vec::as_slice))?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(accept(ctx.clone(), acceptor, greeted, stream, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn accept(
    ctx: Context,
    acceptor: Acceptor,
    greeted: Greeted,
    stream: Streaming<proto::ToAcceptor>,
    tx: mpsc::Sender<Result<proto::ToDialer, Status>>,
) {
    let peer = greeted.peer.clone();
    let link = ctx.links.sender(&peer, tx.clone(), ctx.config.peer_timeout);
    let mut registered = false;
    let mut closing = ctx.closing.clone();
    let end = tokio::select! {
        end = session(&ctx, &acceptor, &greeted, stream, &link, &mut registered) => end,
        _ = closing.wait_for(|c| *c) => Err(Status::unavailable("the node is shutting down")),
    };
    if registered {
        let mut still_connected = false;
        ctx.status.update(&peer, |s| {
            s.inbound_streams = s.inbound_streams.saturating_sub(1);
            still_connected = s.inbound_streams > 0;
        });
        if let Some(m) = ctx.metrics.peer(&peer) {
            m.disconnects_in.increment(1);
            m.connected_in.set(if still_connected { 1.0 } else { 0.0 });
        }
    }
    match end {
        Ok(()) => tracing::debug!(peer = %peer, "inbound replication stream closed"),
        Err(status) => {
            tracing::warn!(peer = %peer, error = %status.message(), "inbound replication stream ended");
            // The dialer may already be gone; nothing more to tell it then.
            let _ = tx.send(Err(status)).await;
        }
    }
}

async fn session(
    ctx: &Context,
    acceptor: &Acceptor,
    greeted: &Greeted,
    mut stream: Streaming<proto::ToAcceptor>,
    link: &LinkSender<Result<proto::ToDialer, Status>>,
    registered: &mut bool,
) -> Result<(), Status> {
    let cfg = &ctx.config;
    let peer = &greeted.peer;
    // Sessions that started before the region last asked where it stands are fenced off.
    let generation = ctx.fences.generation(peer).await;
    // Only a nonce until the dialer has proved itself (see `handshake`).
    send(link, to_dialer::Msg::Challenge(acceptor.challenge())).await?;
    let auth = match timeout(cfg.peer_timeout, stream.message()).await {
        Err(_) => return Err(Status::deadline_exceeded("no Auth within the peer timeout")),
        Ok(msg) => match msg?.and_then(|m| m.msg) {
            Some(to_acceptor::Msg::Auth(a)) => a,
            _ => return Err(Status::invalid_argument("expected Auth after Challenge")),
        },
    };
    let (proof, incarnation) =
        check_auth(cfg, &ctx.membership, acceptor, greeted, &auth, crate::membership::Opening::Data)?;
    let welcome = proto::Welcome {
        region: cfg.local.to_string(),
        proof,
        wall_ms: ctx.clock.now_ms(),
        applied: wire::vv_to_wire(&ctx.writer.applied().borrow()),
        direct_origins: ctx.status.direct_origins().iter().map(ToString::to_string).collect(),
        log_floors: wire::vv_to_wire(&ctx.store.log_floors().unwrap_or_default()),
        stable: Vec::new(),
        incarnation,
    };
    send(link, to_dialer::Msg::Welcome(welcome)).await?;
    ctx.status.update(peer, |s| s.inbound_streams += 1);
    *registered = true;
    if let Some(m) = ctx.metrics.peer(peer) {
        m.handshakes_in.increment(1);
        m.connected_in.set(1.0);
    }

    // The session's clock is monotonic: a wall-clock step must not time a stream out.
    let started = Instant::now();
    let mono_ms = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let limits = InboundLimits {
        apply_changes_max: APPLY_CHANGES_MAX,
        heartbeat_ms: millis(cfg.heartbeat_interval),
        timeout_ms: millis(cfg.peer_timeout),
    };
    let mut inbound = InboundSession::new(peer.clone(), limits, mono_ms());
    // The dialer's clock in the latest message it sent: echoed in every ack.
    let mut echo_wall_ms = 0;
    let mut tick = interval(cfg.heartbeat_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.message() => {
                let Some(msg) = msg?.and_then(|m| m.msg) else { return Ok(()) };
                arrive(ctx, &mut inbound, msg, mono_ms(), &mut echo_wall_ms)?;
                loop {
                    // Whatever else already arrived joins this apply: one commit, one ack.
                    while inbound.wants_more() {
                        match ready_message(&mut stream) {
                            Some(Ok(proto::ToAcceptor { msg: Some(m) })) => {
                                arrive(ctx, &mut inbound, m, mono_ms(), &mut echo_wall_ms)?
                            }
                            Some(Ok(proto::ToAcceptor { msg: None })) | None => break,
                            Some(Err(e)) => return Err(e),
                        }
                    }
                    let applied = ctx.writer.applied().borrow().clone();
                    let apply = match inbound.next(&applied) {
                        Next::Idle => break,
                        Next::Answer { caught_up } => {
                            if let Some(wall_ms) = caught_up {
                                ctx.status.caught_up(peer, wall_ms, ctx.clock.now_ms());
                            }
                            send(link, to_dialer::Msg::Ack(ack(ctx, &applied, String::new(), 0, echo_wall_ms))).await?;
                            inbound.on_sent(mono_ms());
                            break;
                        }
                        Next::Apply(apply) => apply,
                    };
                    let Apply { changes, bytes, freshness, .. } = apply;
                    let n = changes.len() as u64;
                    let written: Vec<_> = changes.iter().map(|c| (c.origin.clone(), c.key.topic.clone(), c.version.ts.wall_ms)).collect();
                    let apply_started = Instant::now();
                    let outcome = match ctx.fences.apply(&ctx.writer, peer, generation, changes).await {
                        Ok(outcome) => outcome,
                        Err(crate::fence::Fenced::Writer(e)) => return Err(Status::unavailable(e.to_string())),
                        Err(crate::fence::Fenced::Off) => {
                            tracing::info!(peer = %peer, "{peer} is bootstrapping from a snapshot or left the membership: its earlier stream ends here, with what it queued");
                            return Err(Status::aborted(format!("{peer} asked where it stands (bootstrapping) or left the membership: this stream of its earlier process is fenced off")));
                        }
                    };
                    let apply_ms = u32::try_from(apply_started.elapsed().as_millis()).unwrap_or(u32::MAX);
                    record_apply(ctx, peer, &outcome, &written, n, bytes, ctx.clock.now_ms());
                    let done = inbound.on_applied(freshness, &outcome.vv, outcome.refused.is_some(), mono_ms());
                    if let Some(wall_ms) = done.caught_up {
                        ctx.status.caught_up(peer, wall_ms, ctx.clock.now_ms());
                    }
                    let refused = outcome.refused.as_ref().map(ToString::to_string).unwrap_or_default();
                    if let Some(r) = &outcome.refused {
                        tracing::error!(peer = %peer, refusal = %r, "refused a replicated change; the peer will resume from the last applied one");
                    }
                    send(link, to_dialer::Msg::Ack(ack(ctx, &outcome.vv, refused, apply_ms, echo_wall_ms))).await?;
                    if done.close {
                        return Ok(());
                    }
                }
            }
            _ = tick.tick() => match inbound.on_tick(mono_ms()) {
                Tick::Quiet => {}
                Tick::Heartbeat => {
                    let vv = ctx.writer.applied().borrow().clone();
                    send(link, to_dialer::Msg::Ack(ack(ctx, &vv, String::new(), 0, echo_wall_ms))).await?;
                    inbound.on_sent(mono_ms());
                }
                Tick::TimedOut { silent_ms } => {
                    return Err(Status::deadline_exceeded(format!("nothing heard from {peer} for {silent_ms} ms")));
                }
            }
        }
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Status and metrics for one applied group from `peer`. `written` holds each change's origin,
/// topic and origin timestamp, in request order.
fn record_apply(
    ctx: &Context,
    peer: &RegionName,
    outcome: &mrr_writer::RemoteOutcome,
    written: &[(RegionName, String, u64)],
    received: u64,
    bytes: u64,
    now_ms: u64,
) {
    let ttl_ms = u64::try_from(ctx.config.freshness_target.as_millis()).unwrap_or(u64::MAX);
    let mut newest_lag_ms = 0;
    // One registry lookup per (origin, topic) in the group, not one per change.
    let mut lag_histograms: std::collections::BTreeMap<(&RegionName, &str), metrics::Histogram> = Default::default();
    for &i in &outcome.admitted {
        let Some((origin, topic, wall_ms)) = written.get(i) else { continue };
        let lag_ms = now_ms.saturating_sub(*wall_ms);
        newest_lag_ms = lag_ms;
        lag_histograms
            .entry((origin, topic.as_str()))
            .or_insert_with(|| ctx.metrics.lag(origin, topic))
            .record(lag_ms as f64 / 1_000.0);
        if let Some(m) = ctx.metrics.peer(origin) {
            m.applied.increment(1);
            if lag_ms > ttl_ms {
                m.freshness_violations.increment(1);
            }
        }
    }
    for c in &outcome.conflicts {
        ctx.metrics.conflicts(&c.key.topic, &c.strategy).increment(1);
    }
    if let Some(m) = ctx.metrics.peer(peer) {
        m.received_changes.increment(received);
        m.received_bytes.increment(bytes);
        m.duplicates.increment(outcome.duplicates as u64);
    }
    if outcome.applied > 0 {
        ctx.status.record_applied(peer, outcome.applied as u64, newest_lag_ms, now_ms);
    }
}

fn ack(ctx: &Context, vv: &mrr_core::VersionVector, refused: String, apply_ms: u32, echo_wall_ms: u64) -> proto::Ack {
    proto::Ack {
        applied: wire::vv_to_wire(vv),
        durable: wire::vv_to_wire(&ctx.writer.durable().borrow()),
        direct_origins: ctx.status.direct_origins().iter().map(ToString::to_string).collect(),
        wall_ms: ctx.clock.now_ms(),
        refused,
        apply_ms,
        echo_wall_ms,
    }
}

/// Certificates one batch may offer at most: one per signer it names, and a batch names few.
const BATCH_CERTIFICATES_MAX: usize = 16;

/// Hands one message of the stream to the session; notes the dialer's clock in it. Changes the
/// dialer relays must prove their origin first (`provenance`), or the stream ends.
fn arrive(
    ctx: &Context,
    inbound: &mut InboundSession,
    msg: to_acceptor::Msg,
    now_ms: u64,
    echo_wall_ms: &mut u64,
) -> Result<(), Status> {
    let invalid = |e: &dyn std::fmt::Display| Status::invalid_argument(e.to_string());
    match msg {
        to_acceptor::Msg::Batch(mut b) => {
            let bytes = prost::Message::encoded_len(&b) as u64;
            let durable = wire::vv_from_wire(std::mem::take(&mut b.sender_durable)).map_err(|e| invalid(&e))?;
            let wall_ms = b.wall_ms;
            *echo_wall_ms = wall_ms;
            let offered = std::mem::take(&mut b.certificates);
            let proving = std::mem::take(&mut b.proving)
                .into_iter()
                .map(wire::change_from_wire)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(&e))?;
            if offered.len() > BATCH_CERTIFICATES_MAX {
                return Err(invalid(&format!("a batch offering {} certificates", offered.len())));
            }
            let mut changes = Vec::new();
            for c in wire::batch_changes(b).map_err(|e| invalid(&e))? {
                changes.push(wire::change_from_wire(c).map_err(|e| invalid(&e))?);
            }
            let offered = ctx.notary.as_ref().map(|n| n.with_offered(offered));
            if let Some(o) = &offered {
                o.keep_own(inbound.peer(), &changes);
            }
            let notary = offered.as_ref().map(|n| n as &dyn mrr_core::provenance::Notary);
            mrr_core::provenance::verify_relayed(inbound.peer(), &proving, &changes, &ctx.config.sealer, notary)
                .map_err(|e| {
                    tracing::error!(peer = %inbound.peer(), error = %e, "refused a relayed batch");
                    Status::permission_denied(e.to_string())
                })?;
            inbound.on_batch(changes, bytes, durable, wall_ms, now_ms).map_err(|e| invalid(&e))
        }
        to_acceptor::Msg::Heartbeat(h) => {
            let durable = wire::vv_from_wire(h.sender_durable).map_err(|e| invalid(&e))?;
            *echo_wall_ms = h.wall_ms;
            inbound.on_heartbeat(durable, h.wall_ms, now_ms).map_err(|e| invalid(&e))
        }
        to_acceptor::Msg::Hello(_) | to_acceptor::Msg::Auth(_) => {
            Err(Status::invalid_argument("handshake message after the handshake"))
        }
    }
}

/// The next message if it has already arrived, without waiting; `None` when none is ready or
/// the stream ended (the caller's next `message().await` then sees the end).
fn ready_message(stream: &mut Streaming<proto::ToAcceptor>) -> Option<Result<proto::ToAcceptor, Status>> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match Pin::new(stream).poll_next(&mut cx) {
        std::task::Poll::Ready(item) => item,
        std::task::Poll::Pending => None,
    }
}

async fn send(link: &LinkSender<Result<proto::ToDialer, Status>>, msg: to_dialer::Msg) -> Result<(), Status> {
    link.send(Ok(proto::ToDialer { msg: Some(msg) })).await.map_err(|e| match e {
        crate::link::SendError::Closed => Status::cancelled("dialer went away"),
        crate::link::SendError::Stalled(after) => {
            Status::deadline_exceeded(format!("the dialer stopped reading for {after:?}"))
        }
    })
}
