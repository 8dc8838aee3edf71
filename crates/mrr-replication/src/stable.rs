//! The node's stable point at run time ([`mrr_core::stability`] decides it): each ack a peer
//! sends this node's dialer is a beacon of that peer's durable vector, and a task folds in this
//! node's own durable vector every second, persists the point when it moved (so a restart
//! resumes from it, never from further back than what was persisted), and publishes it to the
//! status board (`/v1/status` `stable`) and the `mrr_stable_point_behind_changes` gauge.
//!
//! When the point moved, it asks the writer for a collection pass (`mrr_writer::Collect`): what
//! records that left this region left behind, and retention below the point (the changelog is
//! truncated, tombstones are collected); again while a pass leaves work it could do now.
//!
//! With a retention window (`retention:`), each tick also tells [`Stability`] how much the
//! changelog holds and what time it is (this process's monotonic clock: a wall-clock step must
//! not let a region go early): a peer away past the window is lagging, the changelog is
//! truncated up to the point over the others, and the status board and metrics say who holds
//! retention back and who was let go.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mrr_core::stability::{Stability, Window};
use mrr_core::{RegionName, VersionVector};
use mrr_writer::Collect;

use crate::status::Retention;
use crate::Context;

/// How often this node folds in its own durable vector and persists a moved point.
const TICK: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub(crate) struct StablePoint {
    inner: Arc<Mutex<Stability>>,
    /// Where this process's milliseconds count from.
    started: Instant,
}

impl StablePoint {
    pub fn new(
        local: RegionName,
        members: impl IntoIterator<Item = RegionName>,
        persisted: VersionVector,
        window: Option<Window>,
    ) -> Self {
        let stability = Stability::new(local, members, persisted);
        let stability = match window {
            Some(w) => stability.with_window(w, 0),
            None => stability,
        };
        Self { inner: Arc::new(Mutex::new(stability)), started: Instant::now() }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// `peer` acked with its durable vector.
    pub fn beacon(&self, peer: &RegionName, durable: &VersionVector, applied_here: &VersionVector) {
        let now_ms = self.now_ms();
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).on_beacon(peer, durable, applied_here, now_ms);
    }

    /// `peer` is bootstrapping from a snapshot: its old beacons no longer hold.
    pub fn rejoin(&self, peer: &RegionName) {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).on_rejoin(peer);
    }

    /// The membership changed ([`Stability::set_members`]).
    pub fn set_members(&self, members: impl IntoIterator<Item = RegionName>) {
        let now_ms = self.now_ms();
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).set_members(members, now_ms);
    }

    pub fn current(&self) -> VersionVector {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).stable().clone()
    }

    /// Folds in this node's own durable vector and the time: what a collection pass may
    /// collect below, and who holds retention back.
    fn local(&self, durable: &VersionVector, applied: &VersionVector, changelog_bytes: u64) -> (Collect, Retention) {
        let now_ms = self.now_ms();
        let mut s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        s.on_local(durable, applied);
        s.on_tick(now_ms, changelog_bytes);
        let collect = Collect { stable: s.stable().clone(), truncate: s.truncation_point().clone() };
        let retention = Retention {
            truncation_point: s.truncation_point().clone(),
            lagging: s.lagging().clone(),
            held_by: s.away(now_ms).into_iter().collect(),
            window_ms: s.window().map(|w| w.away_ms_max).filter(|ms| *ms < u64::MAX),
        };
        (collect, retention)
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
        let f = ctx.store.footprint();
        let (now, retention) = ctx.stable.local(&durable, &applied, f.changelog_bytes);
        ctx.metrics.stable_behind.set(applied.count_ahead_of(&now.stable) as f64);
        publish(&ctx, retention);
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

/// Who holds retention back, to the status board and the per-peer gauges; a peer let go is
/// logged once.
fn publish(ctx: &Context, retention: Retention) {
    let before = ctx.status.retention();
    for peer in retention.lagging.difference(&before.lagging) {
        tracing::warn!(%peer, window_ms = retention.window_ms, "peer away past the retention window: the changelog is truncated without it; it rejoins through a snapshot");
    }
    for peer in before.lagging.difference(&retention.lagging) {
        tracing::info!(%peer, "lagging peer answered again");
    }
    for peer in ctx.peers() {
        if let Some(m) = ctx.metrics.peer(&peer.region) {
            let held_ms = retention.held_by.get(&peer.region).copied().unwrap_or(0);
            m.retention_held_seconds.set(held_ms as f64 / 1_000.0);
            m.lagging.set(f64::from(u8::from(retention.lagging.contains(&peer.region))));
        }
    }
    ctx.status.set_retention(retention);
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
