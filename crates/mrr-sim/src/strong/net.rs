//! The simulated network between the voters: per-pair one-way delay with jitter, loss, and
//! cuts in either direction, all drawn from the run's seeded RNG. A request that is lost, cut,
//! or sent to a node that is down is never answered; the caller's own timeout ends the wait,
//! as over TCP to a silent peer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mrr_consensus::{BoxFuture, Consensus, NodeId, Transport, TransportError};
use rand::rngs::StdRng;
use rand::Rng;

#[derive(Debug)]
pub struct NetState {
    pub rng: StdRng,
    /// One-way base delay per ordered pair.
    pub delay_ms: BTreeMap<(NodeId, NodeId), u64>,
    /// Jitter as a fraction (per mille) of the base delay, either way.
    pub jitter_per_mille: u64,
    pub loss_per_mille: u32,
    /// Directed cuts: messages from `.0` to `.1` are lost.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// The nodes that are up.
    pub up: BTreeMap<NodeId, Consensus>,
    pub messages: u64,
}

#[derive(Debug, Clone)]
pub struct SimNet {
    state: Arc<Mutex<NetState>>,
}

impl SimNet {
    pub fn new(state: NetState) -> Self {
        Self { state: Arc::new(Mutex::new(state)) }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut NetState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The delay of one message, or `None` when it is lost.
    fn hop(&self, from: NodeId, to: NodeId) -> Option<Duration> {
        self.with(|s| {
            s.messages += 1;
            if s.cut.contains(&(from, to)) {
                return None;
            }
            if s.loss_per_mille > 0 && s.rng.random_range(0..1000) < s.loss_per_mille {
                return None;
            }
            let base = s.delay_ms.get(&(from, to)).copied().unwrap_or(0);
            let spread = base * s.jitter_per_mille / 1000;
            let ms = if spread > 0 { s.rng.random_range(base - spread..=base + spread) } else { base };
            Some(Duration::from_millis(ms))
        })
    }

    pub fn endpoint(&self, from: NodeId) -> Arc<dyn Transport> {
        Arc::new(Endpoint { net: self.clone(), from })
    }
}

struct Endpoint {
    net: SimNet,
    from: NodeId,
}

impl Transport for Endpoint {
    fn call(&self, to: NodeId, request: Vec<u8>, timeout: Duration) -> BoxFuture<Result<Vec<u8>, TransportError>> {
        let (net, from) = (self.net.clone(), self.from);
        Box::pin(async move {
            let exchange = async {
                let there = net.hop(from, to);
                let Some(there) = there else { return std::future::pending().await };
                tokio::time::sleep(there).await;
                let Some(target) = net.with(|s| s.up.get(&to).cloned()) else { return std::future::pending().await };
                let answer = target.handle(&request).await;
                // The sender may have died meanwhile; its caller is gone then, and so is this.
                let Some(back) = net.hop(to, from) else { return std::future::pending().await };
                tokio::time::sleep(back).await;
                answer
            };
            tokio::time::timeout(timeout, exchange).await.map_err(|_| TransportError::Timeout(timeout))
        })
    }
}
