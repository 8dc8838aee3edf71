//! WAN emulation as a layer of the peer transport.
//!
//! Every message a node sends to a peer, on either direction of a stream, passes through that
//! peer's link: a one-way delay, random jitter (never reordering: a stream stays FIFO, as TCP
//! is), a bandwidth cap (a message occupies the link for its size divided by the rate, and
//! later ones queue behind it), and a partition switch that holds messages until it is lifted,
//! like a cable pulled and plugged back. Liveness timeouts above then notice the silence exactly as they would on a
//! real WAN. Settings change at run time (`/v1/admin/links`).
//!
//! Off unless asked for: a node started without emulation sends straight through, and its
//! links refuse to be changed. Jitter comes from a seeded RNG so a run can be replayed.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use mrr_core::RegionName;
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The emulated link from this node to one peer: the API's settings, as they are.
pub type LinkSpec = mrr_api::LinkSettings;

/// Bytes a message occupies on the wire, for the bandwidth cap.
pub trait WireLen {
    fn wire_len(&self) -> usize;
}

impl WireLen for Vec<u8> {
    fn wire_len(&self) -> usize {
        self.len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("WAN emulation is off on this node; start it with `links` in the config or under `mrr dev`")]
    Disabled,
    #[error("region {0} is not a peer of this node")]
    UnknownPeer(String),
}

/// This node's outgoing links, by peer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Links {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    enabled: bool,
    seed: u64,
    specs: watch::Sender<BTreeMap<RegionName, LinkSpec>>,
    /// Jitter of single messages ([`Links::pass`]).
    rng: std::sync::Mutex<StdRng>,
}

impl Links {
    /// Production: messages go straight to the socket.
    pub fn disabled() -> Self {
        Self {
            inner: Arc::new(Inner {
                enabled: false,
                seed: 0,
                specs: watch::channel(BTreeMap::new()).0,
                rng: std::sync::Mutex::new(StdRng::seed_from_u64(0)),
            }),
        }
    }

    /// Emulation on, with a link per peer.
    pub fn emulated(seed: u64, specs: BTreeMap<RegionName, LinkSpec>) -> Self {
        Self {
            inner: Arc::new(Inner {
                enabled: true,
                seed,
                specs: watch::channel(specs).0,
                rng: std::sync::Mutex::new(StdRng::seed_from_u64(seed ^ 0x636f_6e73)),
            }),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.enabled
    }

    pub fn all(&self) -> BTreeMap<RegionName, LinkSpec> {
        self.inner.specs.borrow().clone()
    }

    /// The link to `peer`, as it is.
    pub fn get(&self, peer: &RegionName) -> Result<LinkSpec, LinkError> {
        if !self.inner.enabled {
            return Err(LinkError::Disabled);
        }
        self.inner.specs.borrow().get(peer).copied().ok_or_else(|| LinkError::UnknownPeer(peer.to_string()))
    }

    /// A region that joined the membership: an undelayed link to it, which `set` can shape.
    pub fn add_peer(&self, peer: &RegionName) {
        if self.inner.enabled {
            self.inner.specs.send_if_modified(|specs| {
                let new = !specs.contains_key(peer);
                specs.entry(peer.clone()).or_default();
                new
            });
        }
    }

    pub fn set(&self, peer: &RegionName, spec: LinkSpec) -> Result<(), LinkError> {
        if !self.inner.enabled {
            return Err(LinkError::Disabled);
        }
        let mut result = Err(LinkError::UnknownPeer(peer.to_string()));
        self.inner.specs.send_modify(|specs| {
            if let Some(s) = specs.get_mut(peer) {
                *s = spec;
                result = Ok(());
            }
        });
        result
    }

    /// One message to `peer` outside a stream (the strong tier's calls): returns once the link
    /// would have delivered it — after its delay and jitter, and not while it is partitioned.
    /// The bandwidth cap is not applied: these messages are small.
    pub async fn pass(&self, peer: &RegionName) {
        if !self.inner.enabled {
            return;
        }
        let mut specs = self.inner.specs.subscribe();
        loop {
            let spec = specs.borrow_and_update().get(peer).copied().unwrap_or_default();
            if !spec.partitioned {
                let jitter_ms = match spec.jitter_ms {
                    0 => 0,
                    j => self.inner.rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner).random_range(0..=j),
                };
                tokio::time::sleep(Duration::from_millis(spec.delay_ms + jitter_ms)).await;
                return;
            }
            if specs.changed().await.is_err() {
                return;
            }
        }
    }

    /// Wraps the channel that feeds a stream to `peer` in that peer's link. A send that cannot
    /// proceed for `stall_timeout` (the socket below stopped draining: a black-holed path keeps
    /// TCP open and full) fails, so the session's liveness checks are never starved.
    pub fn sender<T: WireLen + Send + 'static>(
        &self,
        peer: &RegionName,
        tx: mpsc::Sender<T>,
        stall_timeout: Duration,
    ) -> LinkSender<T> {
        if !self.inner.enabled {
            return LinkSender::Direct(tx, stall_timeout);
        }
        let (shaped_tx, rx) = mpsc::unbounded_channel();
        let mut hasher = DefaultHasher::new();
        peer.hash(&mut hasher);
        let rng = StdRng::seed_from_u64(self.inner.seed ^ hasher.finish());
        tokio::spawn(delay_line(peer.clone(), self.inner.specs.subscribe(), rx, tx, rng));
        LinkSender::Shaped(shaped_tx)
    }
}

/// The sending end of a (possibly emulated) link. Backpressure comes from the session's
/// in-flight window, which bounds what can queue here.
#[derive(Debug)]
pub enum LinkSender<T> {
    Direct(mpsc::Sender<T>, Duration),
    Shaped(mpsc::UnboundedSender<(Instant, T)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("stream closed")]
    Closed,
    #[error("the path to the peer stopped draining for {0:?}")]
    Stalled(Duration),
}

impl<T> LinkSender<T> {
    pub async fn send(&self, msg: T) -> Result<(), SendError> {
        match self {
            LinkSender::Direct(tx, stall_timeout) => match tokio::time::timeout(*stall_timeout, tx.send(msg)).await {
                Ok(sent) => sent.map_err(|_| SendError::Closed),
                Err(_) => Err(SendError::Stalled(*stall_timeout)),
            },
            LinkSender::Shaped(tx) => tx.send((Instant::now(), msg)).map_err(|_| SendError::Closed),
        }
    }
}

async fn delay_line<T: WireLen>(
    peer: RegionName,
    mut specs: watch::Receiver<BTreeMap<RegionName, LinkSpec>>,
    mut rx: mpsc::UnboundedReceiver<(Instant, T)>,
    tx: mpsc::Sender<T>,
    mut rng: StdRng,
) {
    let mut last_delivery = Instant::now();
    // When the link finishes transmitting what is already on it (bandwidth cap).
    let mut link_free_at = Instant::now();
    while let Some((enqueued, msg)) = rx.recv().await {
        let spec = loop {
            let spec = specs.borrow_and_update().get(&peer).copied().unwrap_or_default();
            if !spec.partitioned {
                break spec;
            }
            if specs.changed().await.is_err() {
                return;
            }
        };
        let mut sent_at = enqueued;
        if spec.bandwidth_bytes_per_s > 0 {
            let start = enqueued.max(link_free_at);
            let transmit = Duration::from_secs_f64(msg.wire_len() as f64 / spec.bandwidth_bytes_per_s as f64);
            link_free_at = start + transmit;
            sent_at = link_free_at;
        }
        let jitter_ms = if spec.jitter_ms > 0 { rng.random_range(0..=spec.jitter_ms) } else { 0 };
        let due = sent_at + Duration::from_millis(spec.delay_ms + jitter_ms);
        // FIFO: jitter may delay a message but never lets a later one overtake it.
        let at = due.max(last_delivery);
        last_delivery = at;
        tokio::time::sleep_until(at).await;
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RegionName {
        RegionName::new(s).expect("valid")
    }

    #[tokio::test(start_paused = true)]
    async fn delays_in_order_and_holds_while_partitioned() {
        let links =
            Links::emulated(7, [(r("b"), LinkSpec { delay_ms: 50, jitter_ms: 20, ..LinkSpec::default() })].into());
        let (tx, mut rx) = mpsc::channel(16);
        let link = links.sender(&r("b"), tx, Duration::from_secs(1));
        let start = Instant::now();
        for i in 0..10u8 {
            link.send(vec![i]).await.expect("open");
        }
        for i in 0..10u8 {
            assert_eq!(rx.recv().await, Some(vec![i]), "FIFO despite jitter");
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(50) && elapsed <= Duration::from_millis(70), "{elapsed:?}");

        links.set(&r("b"), LinkSpec { partitioned: true, ..LinkSpec::default() }).expect("set");
        link.send(vec![99]).await.expect("open");
        let held = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await;
        assert!(held.is_err(), "nothing crosses a partition");
        links.set(&r("b"), LinkSpec::default()).expect("heal");
        assert_eq!(rx.recv().await, Some(vec![99]), "held message arrives after heal");
    }

    #[tokio::test(start_paused = true)]
    async fn a_bandwidth_cap_queues_messages_behind_each_other() {
        let spec = LinkSpec { delay_ms: 10, bandwidth_bytes_per_s: 10_000, ..LinkSpec::default() };
        let links = Links::emulated(1, [(r("b"), spec)].into());
        let (tx, mut rx) = mpsc::channel(16);
        let link = links.sender(&r("b"), tx, Duration::from_secs(60));
        let start = Instant::now();
        for i in 0..10u8 {
            link.send(vec![i; 1_000]).await.expect("open");
        }
        // Ten 1,000-byte messages at 10,000 B/s: the last leaves after 1 s, arrives 10 ms later.
        for i in 0..10u8 {
            assert_eq!(rx.recv().await.map(|m| m[0]), Some(i));
        }
        assert_eq!(start.elapsed(), Duration::from_millis(1_010));
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_into_a_path_that_stopped_draining_fails_after_the_stall_timeout() {
        let (tx, _rx) = mpsc::channel(1);
        let link = Links::disabled().sender(&r("b"), tx, Duration::from_secs(5));
        link.send(vec![1]).await.expect("room for one");
        let start = Instant::now();
        assert_eq!(link.send(vec![2]).await, Err(SendError::Stalled(Duration::from_secs(5))));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[test]
    fn disabled_links_refuse_changes_and_unknown_peers_are_named() {
        assert_eq!(Links::disabled().set(&r("b"), LinkSpec::default()), Err(LinkError::Disabled));
        let links = Links::emulated(0, [(r("b"), LinkSpec::default())].into());
        assert_eq!(links.set(&r("c"), LinkSpec::default()), Err(LinkError::UnknownPeer("c".into())));
    }
}
