//! The cluster's regions as replication sees them: a watch of the membership table
//! ([`mrr_core::membership`]) the node keeps current from the strong tier, and what follows from
//! it here — which peers this region dials (a supervisor starts and stops dialers as regions
//! join and leave), which it accepts, and with which incarnation.
//!
//! Not here: deciding a change (`mrr_core::membership`) or proposing one (`mrr-server`).

use std::collections::BTreeMap;
use std::sync::Arc;

use mrr_core::membership::Membership;
use mrr_core::RegionName;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::Status;
use tracing::Instrument;

use crate::handshake::Greeted;
use crate::{Context, PeerConfig};

/// The membership as the node last applied it. Cheap to clone.
pub type LiveMembership = watch::Receiver<Arc<Membership>>;

/// What a handshake opens, for the membership check after the dialer's proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Opening {
    /// A replication stream or a repair: the dialer's data must be of its current incarnation.
    Data,
    /// A snapshot call: an empty data directory (no incarnation yet) may ask.
    Snapshot,
}

/// The peers of `local` in `membership`: every member but itself.
pub(crate) fn peers(membership: &Membership, local: &RegionName) -> Vec<PeerConfig> {
    membership
        .members()
        .filter(|(r, _)| *r != local)
        .map(|(r, e)| PeerConfig { region: r.clone(), endpoint: e.endpoint.clone() })
        .collect()
}

/// Refuses a proved dialer the membership does not admit now; the incarnation its region
/// was admitted under otherwise (the Welcome tells a bootstrapping region its own).
pub(crate) fn admit(membership: &LiveMembership, greeted: &Greeted, opening: Opening) -> Result<u64, Status> {
    let m = membership.borrow();
    let claimed = match opening {
        Opening::Data if greeted.incarnation.is_none() => {
            return Err(Status::failed_precondition(format!(
                "region {} names no incarnation: only a snapshot call may come from an empty data directory",
                greeted.peer
            )))
        }
        _ => greeted.incarnation,
    };
    m.admits(&greeted.peer, claimed).map_err(|reason| {
        tracing::warn!(peer = %greeted.peer, %reason, "refused a region the membership does not admit");
        Status::permission_denied(reason)
    })?;
    Ok(m.get(&greeted.peer).map_or(0, |e| e.incarnation))
}

impl Context {
    /// Every member region but this one, as the membership stands now.
    pub(crate) fn peers(&self) -> Vec<PeerConfig> {
        peers(&self.membership.borrow(), &self.config.local)
    }

    /// `region`'s peer settings, while it is a member.
    pub(crate) fn peer(&self, region: &RegionName) -> Option<PeerConfig> {
        self.peers().into_iter().find(|p| &p.region == region)
    }
}

/// A dialer task, aborted when dropped: when the supervisor stops (the node shuts down), its
/// dialers stop with it.
struct Dialer(JoinHandle<()>);

impl Drop for Dialer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps one dialer per member peer: starts one for a region that joins, stops the one of a
/// region that leaves (its sessions end; the status board keeps its last figures). Also tells
/// the status board, the metrics and the stable point.
pub(crate) async fn supervise(ctx: Context, span: tracing::Span) {
    let mut membership = ctx.membership.clone();
    let mut dialers: BTreeMap<RegionName, (String, Dialer)> = BTreeMap::new();
    loop {
        let table = membership.borrow_and_update().clone();
        let wanted = peers(&table, &ctx.config.local);
        let left: Vec<RegionName> =
            dialers.keys().filter(|r| !wanted.iter().any(|p| &p.region == *r)).cloned().collect();
        for region in &left {
            tracing::info!(peer = %region, "region left the membership: replication with it stops");
            dialers.remove(region);
            ctx.status.remove_peer(region);
            // Its streams that are open here apply nothing more (new ones are refused at the
            // handshake): a region declared lost gets no change in after the declaration.
            if let Err(e) = ctx.fences.fence(&ctx.writer, region).await {
                tracing::error!(peer = %region, error = %e, "could not fence off the streams of a region that left");
            }
        }
        for peer in wanted {
            let current = dialers.get(&peer.region).map(|(endpoint, _)| endpoint.clone());
            if current.as_deref() == Some(peer.endpoint.as_str()) {
                continue;
            }
            // An endpoint that changed: the old dialer stops (dropped) and a new one starts.
            dialers.remove(&peer.region);
            if current.is_none() && ctx.status.add_peer(&peer.region, &peer.endpoint) {
                tracing::info!(peer = %peer.region, endpoint = %peer.endpoint, "region joined the membership: dialing it");
            }
            ctx.metrics.add_peer(&peer.region);
            ctx.links.add_peer(&peer.region);
            let task = tokio::spawn(crate::outbound::run(ctx.clone(), peer.clone()).instrument(span.clone()));
            dialers.insert(peer.region.clone(), (peer.endpoint, Dialer(task)));
        }
        ctx.stable.set_members(table.members().map(|(r, _)| r.clone()));
        if membership.changed().await.is_err() {
            break;
        }
    }
}

/// Checks that `endpoint` answers as region `region` of this cluster, before the membership
/// names it: the opening of a snapshot call up to the acceptor's Challenge, which it sends
/// only to a dialer of its protocol that it knows and that names it as the target (with TLS,
/// its certificate must name `region` too). Nothing is asked of it beyond that.
pub async fn probe(config: &crate::ReplicationConfig, region: &RegionName, endpoint: &str) -> Result<(), String> {
    use crate::proto::{from_donor, to_donor};
    let peer = PeerConfig { region: region.clone(), endpoint: endpoint.to_owned() };
    let within = config.peer_timeout;
    let mut client = tokio::time::timeout(within, config.peer_call_client(&peer))
        .await
        .map_err(|_| format!("no connection within {within:?}"))??;
    let (tx, rx) = tokio::sync::mpsc::channel::<crate::proto::ToDonor>(1);
    let hello = config.dialer(region).hello();
    tx.send(crate::proto::ToDonor { msg: Some(to_donor::Msg::Hello(hello)) })
        .await
        .map_err(|_| "the call closed".to_string())?;
    let call = client.snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut inbound = match tokio::time::timeout(within, call).await {
        Err(_) => return Err(format!("no answer within {within:?}")),
        Ok(r) => r.map_err(|s| s.message().to_string())?.into_inner(),
    };
    match tokio::time::timeout(within, inbound.message()).await {
        Err(_) => Err(format!("no answer within {within:?}")),
        Ok(Err(status)) => Err(status.message().to_string()),
        Ok(Ok(Some(crate::proto::FromDonor { msg: Some(from_donor::Msg::Challenge(_)) }))) => Ok(()),
        Ok(Ok(_)) => Err("it answered something other than a handshake".into()),
    }
}
