//! The dialing side: one task per peer that keeps a stream open, ships the changelog through
//! the sans-IO [`OutboundSession`], and reconnects with jittered exponential backoff, resuming
//! from what the peer says it has applied.

use std::time::Duration;

use mrr_core::session::OutboundSession;
use mrr_core::VersionVector;
use mrr_core::{placement, provenance};
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::{interval, timeout, Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;

use crate::handshake::HandshakeError;
use crate::link::{LinkSender, SendError};
use crate::notary::CertificateBook;
use crate::proto::{self, peer_client::PeerClient, to_acceptor, to_dialer};
use crate::status::{state, vv_map};
use crate::wire::{self, WireError};
use crate::{Context, PeerConfig};

/// Why a session ended. Logged once, by the reconnect loop.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("invalid endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("connect failed: {}", chain(.0))]
    Connect(#[from] tonic::transport::Error),
    #[error("peer refused the stream: {}", .0.message())]
    Refused(#[from] tonic::Status),
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("no answer from peer within {0:?}")]
    Timeout(Duration),
    #[error("peer refused change: {0}")]
    ChangeRefused(String),
    #[error("stream closed by peer")]
    Closed,
    #[error("peer stopped acknowledging: {0} changes in flight without progress for {1:?}")]
    Stalled(u64, Duration),
    #[error("reading changelog: {0}")]
    Store(#[from] mrr_storage::StoreError),
    /// The peer needs changes this region's changelog no longer holds (or never held).
    #[error("{0}")]
    BehindTheLog(String),
    /// The peer holds more of this region's own streams than this region wrote: its data
    /// directory lost writes its peers have (wiped, and started without asking them).
    #[error("{0}")]
    OwnStreamsBehind(String),
}

/// An error with its causes, `a: b: c`, since transport errors say little at the top level.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

pub(crate) async fn run(ctx: Context, peer: PeerConfig) {
    let backoff_min = ctx.config.reconnect_backoff_min;
    let mut backoff = backoff_min;
    let mut last_logged: Option<String> = None;
    // Regions started together come up in some order: a peer that refuses connections in the
    // first peer timeout is still starting, not down.
    let starting_until = Instant::now() + ctx.config.peer_timeout;
    loop {
        ctx.status.update(&peer.region, |s| s.outbound = state::CONNECTING.into());
        let started = Instant::now();
        let end = session(&ctx, &peer).await;
        if let Some(m) = ctx.metrics.peer(&peer.region) {
            m.connected_out.set(0.0);
            m.disconnects_out.increment(1);
        }
        // A session that lived past a handshake resets the backoff.
        if started.elapsed() > ctx.config.peer_timeout {
            backoff = backoff_min;
            last_logged = None;
        }
        // One warning per distinct failure: a peer that stays down does not flood the log.
        let text = end.to_string();
        // (A peer that refuses streams as unavailable is bootstrapping: starting too.)
        let starting = matches!(&end, SessionEnd::Connect(_))
            || matches!(&end, SessionEnd::Refused(s) if s.code() == tonic::Code::Unavailable);
        let starting = starting && Instant::now() < starting_until;
        if starting {
            tracing::debug!(peer = %peer.region, error = %text, "peer not accepting connections yet; it may still be starting");
        } else if last_logged.as_deref() == Some(text.as_str()) {
            tracing::debug!(peer = %peer.region, error = %text, "replication stream to peer still down");
        } else {
            tracing::warn!(peer = %peer.region, endpoint = %peer.endpoint, error = %text, retry_in_ms = backoff.as_millis() as u64, "replication stream to peer ended");
            last_logged = Some(text);
        }
        ctx.status.update(&peer.region, |s| {
            s.outbound = state::BACKOFF.into();
            s.last_error = Some(end.to_string());
        });
        let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(ctx.config.reconnect_backoff_max);
    }
}

/// The acceptor's next handshake message, which must be the one `pick` takes (`what`), within
/// `within`: the handshake waits out emulated delays and partitions like any other message.
async fn handshake_message<T>(
    inbound: &mut tonic::Streaming<proto::ToDialer>,
    within: std::time::Duration,
    what: &str,
    pick: impl FnOnce(to_dialer::Msg) -> Option<T>,
) -> Result<T, SessionEnd> {
    match timeout(within, inbound.message()).await {
        Err(_) => Err(SessionEnd::Timeout(within)),
        Ok(msg) => match msg?.and_then(|m| m.msg) {
            Some(m) => pick(m).ok_or_else(|| HandshakeError::Malformed(format!("expected {what}")).into()),
            None => Err(SessionEnd::Closed),
        },
    }
}

async fn session(ctx: &Context, peer: &PeerConfig) -> SessionEnd {
    match session_inner(ctx, peer).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

async fn session_inner(ctx: &Context, peer: &PeerConfig) -> Result<Never, SessionEnd> {
    let cfg = &ctx.config;
    let endpoint = cfg
        .peer_endpoint(peer)
        .map_err(|e| SessionEnd::Endpoint(peer.endpoint.clone(), e))?
        .http2_keep_alive_interval(cfg.heartbeat_interval * 4);
    let channel = endpoint.connect().await?;
    let mut client = PeerClient::new(channel).max_decoding_message_size(mrr_core::limits::PEER_MESSAGE_BYTES_MAX);

    let (tx, rx) = mpsc::channel::<proto::ToAcceptor>(64);
    let link: LinkSender<proto::ToAcceptor> = ctx.links.sender(&peer.region, tx, cfg.peer_timeout);
    let dialer = cfg.dialer(&peer.region);
    send(&link, to_acceptor::Msg::Hello(dialer.hello())).await?;
    // The acceptor answers only once it has read the Hello, which a stalled path may hold.
    let handshake_timeout = cfg.peer_timeout;
    let mut inbound = match timeout(handshake_timeout, client.replicate(ReceiverStream::new(rx))).await {
        Err(_) => return Err(SessionEnd::Timeout(handshake_timeout)),
        Ok(response) => response?.into_inner(),
    };

    // The handshake waits out emulated delays and partitions like any other message.
    let challenge = handshake_message(&mut inbound, handshake_timeout, "Challenge", |m| match m {
        to_dialer::Msg::Challenge(c) => Some(c),
        _ => None,
    })
    .await?;
    let (auth, challenged) = dialer.on_challenge(&challenge)?;
    let sent_ms = ctx.clock.now_ms();
    send(&link, to_acceptor::Msg::Auth(auth)).await?;
    let welcome = handshake_message(&mut inbound, handshake_timeout, "Welcome", |m| match m {
        to_dialer::Msg::Welcome(w) => Some(w),
        _ => None,
    })
    .await?;
    let est = dialer.on_welcome(&challenged, &welcome, sent_ms, ctx.clock.now_ms())?;
    let peer_vv = wire::vv_from_wire(welcome.applied)?;
    // Only durable changes leave a region, so no peer can hold more of this region's streams
    // than it has written, unless its directory lost them: its next writes would reuse
    // sequence numbers the peer holds, and be taken there for writes it already has.
    let own = ctx.writer.applied().borrow().of_origin(&cfg.local);
    if !own.dominates(&peer_vv.of_origin(&cfg.local)) {
        let detail = format!(
            "{} holds this region's streams up to {:?}, but this region has written only up to {:?}: its data directory lost writes its peers hold (wiped, and started with `bootstrap: new_cluster`?); stop it, move the directory aside and start it with `bootstrap: ask_peers` so it installs a snapshot",
            peer.region,
            vv_map(&peer_vv.of_origin(&cfg.local)),
            vv_map(&own)
        );
        tracing::error!(peer = %peer.region, "{detail}");
        return Err(SessionEnd::OwnStreamsBehind(detail));
    }
    // What a peer holds is what it recovered, not what it held before a restart (a wiped or
    // power-cut peer holds less): `?ack=` counts from here.
    ctx.status.reset_durable(&peer.region, peer_vv.clone());
    let peer_direct = wire::regions_from_wire(welcome.direct_origins)?;
    // The estimate is only as good as half the round trip; a Welcome held by a congested or
    // healing path says nothing about clocks.
    let skew_known = est.rtt_ms / 2 <= cfg.max_skew_ms;
    if skew_known && est.skew_ms.unsigned_abs() > cfg.max_skew_ms {
        tracing::warn!(peer = %peer.region, skew_ms = est.skew_ms, max_clock_skew_ms = cfg.max_skew_ms, "clock skew with peer exceeds max_clock_skew; its changes stamped too far ahead will be refused until clocks agree");
    }
    tracing::info!(peer = %peer.region, rtt_ms = est.rtt_ms, skew_ms = ?skew_known.then_some(est.skew_ms), resume_from = ?vv_map(&peer_vv), "Region handshake completed");
    if let Some(m) = ctx.metrics.peer(&peer.region) {
        m.handshakes_out.increment(1);
        m.connected_out.set(1.0);
        if skew_known {
            m.clock_skew_seconds.set(est.skew_ms as f64 / 1_000.0);
        }
    }

    if skew_known {
        ctx.status.observe_clock(&peer.region, est.skew_ms, est.rtt_ms / 2, ctx.clock.now_ms());
    }
    // Session time is monotonic milliseconds since the stream started.
    let started = Instant::now();
    let mono_ms = move || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut session =
        OutboundSession::new(cfg.local.clone(), peer.region.clone(), peer_vv, peer_direct, cfg.limits.clone(), 0);
    let mut certificates = CertificateBook::default();
    // Only durable changes leave the region (see `Writer::durable`).
    let mut applied = ctx.writer.durable();
    ctx.status.update(&peer.region, |s| {
        s.outbound = state::CONNECTED.into();
        s.last_error = None;
        s.rtt_ms = Some(est.rtt_ms);
        s.handshakes += 1;
        s.acked = vv_map(session.acked());
    });

    // The tick checks the peer's liveness; the heartbeat itself is due one period after the
    // last message sent, so an idle stream proves freshness every period, not every two (a
    // tick that finds the stream idle for just under a period waits a whole one more).
    let mut liveness = interval(cfg.heartbeat_interval);
    liveness.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // The first heartbeat is due at once: a new stream tells the peer how fresh it is now, not
    // one period later (a bounded read there found the peer "never caught up" meanwhile).
    let mut last_sent = Instant::now().checked_sub(cfg.heartbeat_interval).unwrap_or_else(Instant::now);
    loop {
        let local_vv = applied.borrow_and_update().clone();
        if pump(ctx, &mut session, &mut certificates, &local_vv, &link, mono_ms()).await? {
            last_sent = Instant::now();
        }
        ctx.status.update(&peer.region, |s| s.backlog_changes = session.backlog_changes(&local_vv));
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    return Err(SessionEnd::Closed);
                }
            }
            msg = inbound.message() => {
                let Some(to_dialer::Msg::Ack(ack)) = msg?.and_then(|m| m.msg) else {
                    return Err(SessionEnd::Closed);
                };
                last_heard = Instant::now();
                // Every ack says the peer's clock when it was sent and echoes this node's
                // clock in the message it last received: one round trip, so the offset is
                // followed between handshakes (a clock that steps is noticed within a
                // heartbeat) and an ack that waited in a queue or behind a cut only widens the
                // uncertainty. (Assuming an ack took half the handshake's round trip made every
                // late ack look like a skewed clock, and refused writes under load.)
                let now_wall = ctx.clock.now_ms();
                let measured = (skew_known && ack.echo_wall_ms > 0)
                    .then(|| mrr_core::clock_check::round_trip_offset(ack.echo_wall_ms, ack.wall_ms, now_wall))
                    .flatten();
                if let Some((offset_ms, uncertainty_ms)) = measured {
                    ctx.status.observe_clock(&peer.region, offset_ms, uncertainty_ms, now_wall);
                    if let Some(m) = ctx.metrics.peer(&peer.region) {
                        m.clock_skew_seconds.set(offset_ms as f64 / 1_000.0);
                    }
                }
                let vv = wire::vv_from_wire(ack.applied)?;
                let durable = wire::vv_from_wire(ack.durable)?;
                ctx.stable.beacon(&peer.region, &durable, &ctx.writer.applied().borrow());
                ctx.status.peer_durable(&peer.region, durable);
                let direct = wire::regions_from_wire(ack.direct_origins)?;
                session.on_ack(&vv, direct, u64::from(ack.apply_ms), mono_ms());
                ctx.status.update(&peer.region, |s| s.acked = vv_map(session.acked()));
                if !ack.refused.is_empty() {
                    return Err(SessionEnd::ChangeRefused(ack.refused));
                }
            }
            _ = liveness.tick() => {
                if last_heard.elapsed() > cfg.peer_timeout {
                    return Err(SessionEnd::Timeout(cfg.peer_timeout));
                }
                let timeout_ms = u64::try_from(cfg.peer_timeout.as_millis()).unwrap_or(u64::MAX);
                if session.stalled(mono_ms(), timeout_ms) {
                    return Err(SessionEnd::Stalled(session.inflight_changes(), cfg.peer_timeout));
                }
            }
            _ = tokio::time::sleep_until(last_sent + cfg.heartbeat_interval) => {
                let hb = proto::Heartbeat {
                    wall_ms: ctx.clock.now_ms(),
                    sender_durable: wire::vv_to_wire(&applied.borrow().of_origin(&cfg.local)),
                };
                send(&link, to_acceptor::Msg::Heartbeat(hb)).await?;
                last_sent = Instant::now();
            }
        }
    }
}

/// The changelog does not hold the change after `after_seq` of `stream`, above its log floor,
/// though the vector says it exists: a hole, which ends the session.
fn hole_in_the_log(stream: &mrr_core::Stream, after_seq: u64, first_seq: Option<u64>) -> SessionEnd {
    let detail = format!(
        "this region's changelog of {stream} is missing changes its version vector covers: after {after_seq} it holds {first_seq:?}"
    );
    tracing::error!(stream = %stream, after_seq, "{detail}");
    SessionEnd::BehindTheLog(detail)
}

/// `peer` holds this region's own `stream` only up to `after_seq`, below where retention
/// truncated it: it was away past the retention window (let go as lagging), or its data was
/// replaced. It cannot catch up from this log; the stream is held (the session goes on with the
/// others), and the peer rejoins through a snapshot once every peer's floor is past it.
fn behind_the_floor(ctx: &Context, peer: &mrr_core::RegionName, stream: &mrr_core::Stream, after_seq: u64, floor: u64) {
    let detail = format!(
        "{peer} holds {stream} up to {after_seq}, but this region's changelog starts after {floor} (retention \
         truncated it without {peer}): {peer} cannot catch up from the log and rejoins through a snapshot of a peer"
    );
    tracing::warn!(peer = %peer, stream = %stream, after_seq, log_floor = floor, "{detail}");
    ctx.status.update(peer, |s| s.last_error = Some(detail));
}

/// Sends every batch the session allows now. Returns whether anything was sent.
async fn pump(
    ctx: &Context,
    session: &mut OutboundSession,
    certificates: &mut CertificateBook,
    local_vv: &VersionVector,
    link: &LinkSender<proto::ToAcceptor>,
    now_ms: u64,
) -> Result<bool, SessionEnd> {
    let mut sent_any = false;
    let sender_durable = wire::vv_to_wire(&local_vv.of_origin(&ctx.config.local));
    while let Some(read) = session.next_read(local_vv) {
        let stream = &read.stream;
        let within = |after, limit, bytes_max| ctx.store.changes_within(stream, after, limit, bytes_max);
        // A relayed range starts at its origin's checkpoint and ends at one (`provenance`).
        let relayed = stream.origin != ctx.config.local;
        let (proving, changes) = if relayed {
            let r = provenance::read_relayed(read.after_seq, read.limit, read.bytes_max, &ctx.config.sealer, within)?;
            (r.proving, r.new)
        } else {
            (Vec::new(), within(read.after_seq, read.limit, read.bytes_max)?)
        };
        // A peer between the log floor and the checkpoint retention kept as the anchor (it was
        // let go as lagging): nothing here can prove a relay to it, so it is held as below the
        // floor.
        if relayed && read.after_seq > 0 && proving.is_empty() && ctx.store.log_floors()?.get(stream) > 0 {
            tracing::debug!(peer = %session.peer(), stream = %stream, after = read.after_seq, "not relaying a stream whose anchor retention truncated");
            session.hold(stream, read.after_seq + 1);
            continue;
        }
        let first_seq = changes.first().map(|c| c.seq);
        if first_seq != Some(read.after_seq + 1) {
            let floor = ctx.store.log_floors()?.get(stream);
            if read.after_seq >= floor {
                return Err(hole_in_the_log(stream, read.after_seq, first_seq));
            }
            // Below the log floor nothing is sent from here. Another region's stream this
            // region holds only from a snapshot on (its floor is the snapshot's vector): the
            // peer gets the changes below from their origin or another relay.
            if relayed {
                tracing::debug!(peer = %session.peer(), stream = %stream, after = read.after_seq, "not relaying a stream below this region's log floor");
            } else {
                behind_the_floor(ctx, session.peer(), stream, read.after_seq, floor);
            }
            session.hold(stream, read.after_seq + 1);
            continue;
        }
        let Some(first_seq) = first_seq else { unreachable!("checked above") };
        let mut shipped = placement::for_peer(&changes, session.peer(), &ctx.config.sealer);
        if relayed && provenance::cut_to_checkpoint(&mut shipped) {
            tracing::debug!(peer = %session.peer(), stream = %stream, seq = first_seq, "waiting for the origin's next checkpoint before relaying");
            session.await_checkpoint(stream, local_vv.get(stream));
            continue;
        }
        let Some(last_seq) = shipped.changes.last().map(|c| c.seq) else {
            tracing::debug!(peer = %session.peer(), stream = %stream, seq = first_seq, "holding a relayed stream: the change is placed at the peer and only its marker is here");
            session.hold(stream, first_seq);
            continue;
        };
        let proof = wire::BatchProof {
            certificates: certificates
                .unsent(ctx.store.as_ref(), proving.iter().chain(shipped.changes.iter().map(|c| c.as_ref()))),
            proving: proving.iter().map(wire::change_to_wire).collect(),
        };
        let wire_changes: Vec<_> = shipped.changes.iter().map(|c| wire::change_to_wire(c)).collect();
        let n = shipped.changes.len() as u64;
        let batch = wire::batch_to_wire(wire_changes, ctx.clock.now_ms(), sender_durable.clone(), proof);
        let bytes = prost::Message::encoded_len(&batch) as u64;
        send(link, to_acceptor::Msg::Batch(batch)).await?;
        session.on_sent(stream, first_seq, last_seq, bytes, now_ms);
        if let Some(seq) = shipped.held_at {
            session.hold(stream, seq);
        }
        ctx.status.update(session.peer(), |s| s.changes_sent += n);
        if let Some(m) = ctx.metrics.peer(session.peer()) {
            m.sent(stream.lane, n, bytes);
        }
        sent_any = true;
    }
    if let Some(m) = ctx.metrics.peer(session.peer()) {
        m.backlog.set(session.backlog_changes(local_vv) as f64);
        m.window_bytes.set(session.window_bytes() as f64);
        if let Some(base_ms) = session.base_rtt_ms() {
            m.base_rtt_seconds.set(base_ms as f64 / 1_000.0);
        }
        m.queue_delay_seconds.set(session.queue_delay_ms() as f64 / 1_000.0);
    }
    Ok(sent_any)
}

async fn send(link: &LinkSender<proto::ToAcceptor>, msg: to_acceptor::Msg) -> Result<(), SessionEnd> {
    link.send(proto::ToAcceptor { msg: Some(msg) }).await.map_err(|e| match e {
        SendError::Closed => SessionEnd::Closed,
        SendError::Stalled(after) => SessionEnd::Timeout(after),
    })
}
