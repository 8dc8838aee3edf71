//! The simulated network between the voters: per-pair one-way delay with jitter, loss, and
//! cuts in either direction, all drawn from the run's seeded RNG. A request that is lost, cut,
//! or sent to a node that is down is never answered; the caller's own timeout ends the wait,
//! as over TCP to a silent peer.
//!
//! Pipes (the ordered streams pipelined appends travel on) are one connection each, as TCP
//! is: messages arrive in the order sent, each no earlier than its own delay allows; a lost one
//! is sent again after the retransmission timeout and holds up those behind it. The far end
//! handles them one by one in order and answers in order. A cut, or a far end that is down,
//! breaks the connection (what was answered still arrives, then the answers end with an
//! error) and the leader opens a new pipe. Not modelled: a connection that hangs without
//! breaking (a cut that drops packets and never resets).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use mrr_consensus::{BoxFuture, Consensus, NodeId, Pipe, Transport, TransportError};
use rand::rngs::StdRng;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

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
    pub pipes: u64,
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

    /// The delay of one message on a connection: a lost one is sent again after the
    /// retransmission timeout (and holds up those behind it); `None` when the pair is cut.
    fn hop_on_stream(&self, from: NodeId, to: NodeId) -> Option<Duration> {
        self.with(|s| {
            s.messages += 1;
            if s.cut.contains(&(from, to)) {
                return None;
            }
            let base = s.delay_ms.get(&(from, to)).copied().unwrap_or(0);
            let spread = base * s.jitter_per_mille / 1000;
            let mut ms = if spread > 0 { s.rng.random_range(base - spread..=base + spread) } else { base };
            while s.loss_per_mille > 0 && s.rng.random_range(0..1000) < s.loss_per_mille {
                ms += RETRANSMIT_MS.max(2 * base);
            }
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

/// Messages queued on one pipe at most, each way (the leader keeps at most 64 in flight).
const PIPE_QUEUE_MAX: usize = 256;
/// Linux's minimum TCP retransmission timeout.
const RETRANSMIT_MS: u64 = 200;

impl Transport for Endpoint {
    fn pipe(&self, to: NodeId) -> BoxFuture<Result<Option<Pipe>, TransportError>> {
        let (net, from) = (self.net.clone(), self.from);
        Box::pin(async move {
            net.with(|s| s.pipes += 1);
            let (requests, mut outgoing) = mpsc::channel::<Vec<u8>>(PIPE_QUEUE_MAX);
            let (arriving_tx, mut arriving) = mpsc::channel::<(Instant, Vec<u8>)>(PIPE_QUEUE_MAX);
            let (returning_tx, mut returning) = mpsc::channel::<(Instant, Vec<u8>)>(PIPE_QUEUE_MAX);
            let (answers_tx, answers_rx) = mpsc::channel::<Result<Vec<u8>, TransportError>>(PIPE_QUEUE_MAX);
            // Set when the connection broke; unset, the answers end as a stream closed by its
            // sender does, without an error.
            let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let broke = |b: &std::sync::atomic::AtomicBool| b.store(true, std::sync::atomic::Ordering::Relaxed);
            // There: each request no earlier than its delay, never before the one sent ahead.
            let (there, there_broken) = (net.clone(), broken.clone());
            tokio::spawn(async move {
                let mut at = Instant::now();
                while let Some(request) = outgoing.recv().await {
                    // Cut: the connection breaks (a keepalive or a reset ends it).
                    let Some(delay) = there.hop_on_stream(from, to) else { return broke(&there_broken) };
                    at = at.max(Instant::now() + delay);
                    if arriving_tx.send((at, request)).await.is_err() {
                        return;
                    }
                }
            });
            // The far end: one request at a time, in order; the answers back the same way.
            let (far, far_broken) = (net.clone(), broken.clone());
            tokio::spawn(async move {
                let mut at = Instant::now();
                while let Some((arrives, request)) = arriving.recv().await {
                    tokio::time::sleep_until(arrives).await;
                    let Some(target) = far.with(|s| s.up.get(&to).cloned()) else { return broke(&far_broken) };
                    let answer = target.handle(&request).await;
                    let Some(delay) = far.hop_on_stream(to, from) else { return broke(&far_broken) };
                    at = at.max(Instant::now() + delay);
                    if returning_tx.send((at, answer)).await.is_err() {
                        return;
                    }
                }
            });
            // Back here: what was answered arrives, then a broken connection says so.
            tokio::spawn(async move {
                while let Some((arrives, answer)) = returning.recv().await {
                    tokio::time::sleep_until(arrives).await;
                    if answers_tx.send(Ok(answer)).await.is_err() {
                        return;
                    }
                }
                if broken.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = answers_tx.send(Err(TransportError::Unreachable(format!("pipe to node {to} broke")))).await;
                }
            });
            let answers = futures_util::stream::unfold(answers_rx, |mut rx| async move {
                let item = rx.recv().await?;
                Some((item, rx))
            });
            Ok(Some(Pipe { requests, answers: answers.boxed() }))
        })
    }

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
