//! The node's stable point at run time ([`mrr_core::stability`] decides it): each ack a peer
//! sends this node's dialer is a beacon of that peer's durable vector, and a task folds in this
//! node's own durable vector every second, persists the point when it moved (so a restart
//! resumes from it, never from further back than what was persisted), and publishes it to the
//! status board (`/v1/status` `stable`) and the `mrr_stable_point_behind_changes` gauge.
//!
//! Nothing is collected here; retention (issue 18) collects below this point.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mrr_core::stability::Stability;
use mrr_core::{RegionName, VersionVector};

use crate::Context;

/// How often this node folds in its own durable vector and persists a moved point.
const TICK: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub(crate) struct StablePoint {
    inner: Arc<Mutex<Stability>>,
}

impl StablePoint {
    pub fn new(local: RegionName, members: impl IntoIterator<Item = RegionName>, persisted: VersionVector) -> Self {
        Self { inner: Arc::new(Mutex::new(Stability::new(local, members, persisted))) }
    }

    /// `peer` acked with its durable vector.
    pub fn beacon(&self, peer: &RegionName, durable: &VersionVector, applied_here: &VersionVector) {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).on_beacon(peer, durable, applied_here);
    }

    fn current(&self) -> VersionVector {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).stable().clone()
    }

    fn local(&self, durable: &VersionVector, applied: &VersionVector) -> VersionVector {
        let mut s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        s.on_local(durable, applied);
        s.stable().clone()
    }
}

pub(crate) async fn run(ctx: Context) {
    let mut persisted = ctx.stable.current();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let applied = ctx.writer.applied().borrow().clone();
        let durable = ctx.writer.durable().borrow().clone();
        let stable = ctx.stable.local(&durable, &applied);
        ctx.metrics.stable_behind.set(applied.count_ahead_of(&stable) as f64);
        if stable == persisted {
            continue;
        }
        ctx.status.set_stable(stable.clone());
        match ctx.store.set_stable_point(&stable) {
            Ok(()) => persisted = stable,
            // The point in memory still holds; a restart resumes from further back, which only
            // delays what retention may collect.
            Err(e) => tracing::warn!(error = %e, "cannot persist the stable point"),
        }
    }
}
