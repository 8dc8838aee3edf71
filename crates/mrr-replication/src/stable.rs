//! The node's stable point at run time ([`mrr_core::stability`] decides it): each ack a peer
//! sends this node's dialer is a beacon of that peer's durable vector, and a task folds in this
//! node's own durable vector every second, persists the point when it moved (so a restart
//! resumes from it, never from further back than what was persisted), and publishes it to the
//! status board (`/v1/status` `stable`) and the `mrr_stable_point_behind_changes` gauge.
//!
//! When the point moved, it asks the writer for a collection pass (`mrr_writer::Collect`): what
//! records that left this region left behind, and retention below the point (the changelog is
//! truncated, tombstones are collected); again while a pass leaves work it could do now.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mrr_core::stability::Stability;
use mrr_core::{RegionName, VersionVector};
use mrr_writer::Collect;

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

    /// `peer` is bootstrapping from a snapshot: its old beacons no longer hold.
    pub fn rejoin(&self, peer: &RegionName) {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).on_rejoin(peer);
    }

    pub fn current(&self) -> VersionVector {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).stable().clone()
    }

    /// Folds in this node's own durable vector; the stable point.
    fn local(&self, durable: &VersionVector, applied: &VersionVector) -> Collect {
        let mut s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        s.on_local(durable, applied);
        Collect { stable: s.stable().clone() }
    }
}

pub(crate) async fn run(ctx: Context) {
    let mut persisted = ctx.stable.current();
    // What the last collection pass was given, and whether it left work it could do now.
    let mut collected: Option<Collect> = None;
    let mut more = false;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let applied = ctx.writer.applied().borrow().clone();
        let durable = ctx.writer.durable().borrow().clone();
        let now = ctx.stable.local(&durable, &applied);
        ctx.metrics.stable_behind.set(applied.count_ahead_of(&now.stable) as f64);
        let f = ctx.store.footprint();
        for (gauge, value) in
            ctx.metrics.footprint.iter().zip([f.changelog_bytes, f.changelog_entries, f.fold_entries, f.records])
        {
            gauge.set(value as f64);
        }
        if more || collected.as_ref() != Some(&now) {
            more = collect(&ctx, now.clone()).await;
            collected = Some(now.clone());
        }
        if now.stable == persisted {
            continue;
        }
        ctx.status.set_stable(now.stable.clone());
        match ctx.store.set_stable_point(&now.stable) {
            Ok(()) => persisted = now.stable,
            // The point in memory still holds; a restart resumes from further back, which only
            // delays what retention may collect.
            Err(e) => tracing::warn!(error = %e, "cannot persist the stable point"),
        }
    }
}

/// One collection pass; whether it stopped at its bound with more it could collect now.
async fn collect(ctx: &Context, collect: Collect) -> bool {
    match ctx.writer.collect(collect).await {
        Ok(out) => {
            let [changes, conflicts, letters] = &ctx.metrics.erased;
            changes.increment(out.changes_erased);
            conflicts.increment(out.conflicts_erased);
            letters.increment(out.dead_letters_erased);
            let [truncated, tombstones] = &ctx.metrics.collected;
            truncated.increment(out.changes_truncated);
            tombstones.increment(out.tombstones_collected);
            if let Some(held) = out.tombstones_held {
                ctx.metrics.tombstones.set(held as f64);
            }
            ctx.metrics.departures.set(out.departures_left as f64);
            ctx.status.set_departures(out.departures_left);
            if out.changes_erased + out.conflicts_erased + out.dead_letters_erased > 0 {
                tracing::info!(
                    changes = out.changes_erased,
                    conflicts = out.conflicts_erased,
                    dead_letters = out.dead_letters_erased,
                    departures_done = out.departures_done,
                    departures_left = out.departures_left,
                    "erased what records that left this region left behind"
                );
            }
            if out.changes_truncated + out.tombstones_collected > 0 {
                tracing::debug!(
                    changes = out.changes_truncated,
                    tombstones = out.tombstones_collected,
                    "retention collected below the stable point"
                );
            }
            out.more
        }
        Err(e) => {
            tracing::warn!(error = %e, "collection pass failed; the next tick tries again");
            true
        }
    }
}
