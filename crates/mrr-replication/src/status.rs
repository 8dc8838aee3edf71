//! What each peer session last reported, for `/v1/status`, `mrr status`, `/health` and
//! metrics gauges, and what the API's waits need: how fresh this region's copy of each peer's
//! writes is (bounded-staleness reads) and what each peer holds durably (`?ack=` writes), with
//! a change signal to wait on. Sessions write here; nothing here drives replication.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use mrr_api::PeerStatus;
use mrr_core::{RegionName, VersionVector};

/// States of our stream to a peer, as shown in [`PeerStatus::outbound`].
pub mod state {
    pub const CONNECTING: &str = "connecting";
    pub const CONNECTED: &str = "connected";
    /// Waiting before the next attempt after a failure.
    pub const BACKOFF: &str = "backoff";
}

/// Lag samples kept per peer for percentiles.
const LAG_SAMPLES_MAX: usize = 1_024;
/// Width of the received-rate window, in one-second buckets.
const RATE_WINDOW_S: u64 = 10;

#[derive(Debug, Default)]
struct Entry {
    status: PeerStatus,
    lag_samples: VecDeque<u64>,
    /// `(second, changes)` buckets, oldest first.
    received: VecDeque<(u64, u64)>,
    /// The newest `(peer wall ms, this node's wall ms on receipt)` this node was caught up with.
    caught_up: Option<(u64, u64)>,
    /// The peer's clock as last measured, and when (this node's wall ms).
    clock: Option<(mrr_core::clock_check::PeerOffset, u64)>,
    /// What the peer said it holds durably, in its latest ack to this node.
    durable: VersionVector,
}

/// What this region has sent of a snapshot to a region installing one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotServed {
    /// The snapshot's id (a resumed install goes on with the same one).
    pub snapshot: u64,
    pub records: u64,
    pub bytes: u64,
    pub done: bool,
}

impl Entry {
    /// A peer not connected yet.
    fn new(region: &RegionName, endpoint: &str) -> Self {
        let status = PeerStatus {
            region: region.to_string(),
            endpoint: endpoint.to_owned(),
            outbound: state::CONNECTING.into(),
            ..Default::default()
        };
        Entry { status, ..Default::default() }
    }
}

#[derive(Clone, Debug)]
pub struct StatusBoard {
    inner: Arc<Mutex<BTreeMap<RegionName, Entry>>>,
    /// How long an idle, healthy stream may go between two messages (its heartbeat period
    /// with slack): silence past it is staleness.
    quiet_ms: u64,
    /// Bumped whenever a freshness or a peer's durable vector moves.
    changed: Arc<tokio::sync::watch::Sender<u64>>,
    /// The stable point as last computed (`stable`).
    stable: Arc<Mutex<VersionVector>>,
    /// Departed records not erased yet, as of the last collection pass (`departures`).
    departures: Arc<std::sync::atomic::AtomicU64>,
    /// Who holds retention back, and who no longer does ([`crate::stable`]).
    retention: Arc<Mutex<Retention>>,
    /// What anti-entropy repaired here, and what it could not ([`crate::repair`]).
    repairs: Arc<Mutex<Repairs>>,
    /// Per receiver, the snapshot this region served it last ([`crate::donor`]; at most one
    /// entry per region of the membership).
    served: Arc<Mutex<BTreeMap<RegionName, SnapshotServed>>>,
}

/// Anti-entropy's findings in this region, for `/health`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repairs {
    /// `(wall ms, key)` of the latest records repaired here, newest last.
    pub recent: VecDeque<(u64, String)>,
    /// Keys the last run with every peer left in two different copies of one change.
    pub unresolved: Vec<String>,
}

impl Repairs {
    /// Repairs remembered for the warning.
    const RECENT_MAX: usize = 100;
    /// A repair is warned about for this long.
    pub const WARN_MS: u64 = 24 * 3_600_000;

    pub(crate) fn repaired(&mut self, now_ms: u64, keys: impl Iterator<Item = String>) {
        for key in keys {
            if self.recent.len() == Self::RECENT_MAX {
                self.recent.pop_front();
            }
            self.recent.push_back((now_ms, key));
        }
    }

    /// `/health` warnings: records repaired here in the last day, copies left different.
    pub fn warnings(&self, now_ms: u64) -> Vec<String> {
        let mut out = Vec::new();
        let recent: Vec<&str> = self
            .recent
            .iter()
            .filter(|(at, _)| now_ms.saturating_sub(*at) < Self::WARN_MS)
            .map(|(_, k)| k.as_str())
            .collect();
        if let Some(last) = recent.last() {
            out.push(format!(
                "anti-entropy repaired {} record(s) in this region in the last 24 h (latest: {last}): a repair means a bug or a bad disk; the node's log names each key",
                recent.len()
            ));
        }
        if let Some(first) = self.unresolved.first() {
            out.push(format!(
                "anti-entropy found {} record(s) held in two different copies of one change with no majority to choose (first: {first}): run `mrr repair` with every region up, or rewrite the record",
                self.unresolved.len()
            ));
        }
        out
    }
}

/// The retention window's view of the peers, as the stable-point task last computed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Below which the changelog is truncated (the stable point unless a peer is lagging).
    pub truncation_point: VersionVector,
    /// Peers away past the window: the changelog is truncated without them.
    pub lagging: BTreeSet<RegionName>,
    /// Peers away within the window, holding truncation back, with how long (ms).
    pub held_by: BTreeMap<RegionName, u64>,
    /// The window (`None`: no region is ever let go), for the warnings' words.
    pub window_ms: Option<u64>,
}

impl Retention {
    /// `/health` warnings: a peer holding retention back, a peer let go.
    pub fn warnings(&self) -> Vec<String> {
        let held = self.held_by.iter().map(|(peer, away_ms)| {
            let then = match self.window_ms {
                Some(w) => format!(
                    "past the retention window ({} s) it is let go as lagging and rejoins through a snapshot",
                    w / 1_000
                ),
                None => "with no retention.window the changelog grows until it returns".to_owned(),
            };
            format!("region {peer} has been away {} s and holds changelog truncation back; {then}", away_ms / 1_000)
        });
        let lagging = self.lagging.iter().map(|peer| {
            format!(
                "region {peer} is lagging (away past the retention window): the changelog is truncated without it, and it rejoins through a snapshot of a peer when it returns"
            )
        });
        held.chain(lagging).collect()
    }
}

impl StatusBoard {
    /// `heartbeat_ms`: how often an idle peer stream sends a heartbeat.
    pub fn new<'a>(
        local: &RegionName,
        peers: impl Iterator<Item = (&'a RegionName, &'a str)>,
        heartbeat_ms: u64,
    ) -> Self {
        let map = peers.filter(|(r, _)| *r != local).map(|(r, e)| (r.clone(), Entry::new(r, e))).collect();
        // A heartbeat goes out once a tick finds the stream idle for a period: up to two
        // periods apart.
        Self {
            inner: Arc::new(Mutex::new(map)),
            quiet_ms: heartbeat_ms.saturating_mul(2),
            changed: Arc::new(tokio::sync::watch::Sender::new(0)),
            stable: Arc::default(),
            departures: Arc::default(),
            retention: Arc::default(),
            repairs: Arc::default(),
            served: Arc::default(),
        }
    }

    /// `records` and `bytes` more of snapshot `snapshot` went to `receiver`.
    pub fn snapshot_sent(&self, receiver: &RegionName, snapshot: u64, records: u64, bytes: u64, done: bool) {
        let mut served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = served.entry(receiver.clone()).or_default();
        if entry.snapshot != snapshot {
            *entry = SnapshotServed { snapshot, ..SnapshotServed::default() };
        }
        entry.records += records;
        entry.bytes += bytes;
        entry.done = done;
    }

    /// The snapshot this region served `receiver` last.
    pub fn snapshot_served(&self, receiver: &RegionName) -> Option<SnapshotServed> {
        self.served.lock().unwrap_or_else(PoisonError::into_inner).get(receiver).cloned()
    }

    /// A region that joined the membership; whether it was new here.
    pub fn add_peer(&self, region: &RegionName, endpoint: &str) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.contains_key(region) {
            return false;
        }
        inner.insert(region.clone(), Entry::new(region, endpoint));
        true
    }

    /// A region that left the membership: no longer reported.
    pub fn remove_peer(&self, region: &RegionName) {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).remove(region);
        self.bump();
    }

    /// What anti-entropy repaired here, and what it left different.
    pub fn repairs(&self) -> Repairs {
        self.repairs.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn update_repairs(&self, f: impl FnOnce(&mut Repairs)) {
        f(&mut self.repairs.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Who holds retention back, and who is lagging.
    pub fn retention(&self) -> Retention {
        self.retention.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn set_retention(&self, retention: Retention) {
        *self.retention.lock().unwrap_or_else(PoisonError::into_inner) = retention;
    }

    /// What every member region has durably applied, as this node last computed it
    /// ([`mrr_core::stability`]).
    pub fn stable(&self) -> VersionVector {
        self.stable.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Records that left this region whose logs still name them ([`crate::stable`]).
    pub fn departures(&self) -> u64 {
        self.departures.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set_departures(&self, left: u64) {
        self.departures.store(left, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn set_stable(&self, stable: VersionVector) {
        *self.stable.lock().unwrap_or_else(PoisonError::into_inner) = stable;
    }

    /// Changes whenever a peer's freshness or durable vector moves: wait on it, then look again.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// `peer` holds `durable` on its disk (from its ack).
    pub fn peer_durable(&self, peer: &RegionName, durable: VersionVector) {
        let moved = match self.lock().get_mut(peer) {
            Some(e) if !e.durable.dominates(&durable) => {
                e.durable.join(&durable);
                true
            }
            _ => false,
        };
        if moved {
            self.bump();
        }
    }

    /// `peer` (re)connected holding `recovered`: its durable vector starts there again.
    pub fn reset_durable(&self, peer: &RegionName, recovered: VersionVector) {
        if let Some(e) = self.lock().get_mut(peer) {
            e.durable = recovered;
        }
        self.bump();
    }

    /// Each peer's durable vector as last acked to this node.
    pub fn durable_vectors(&self) -> Vec<(RegionName, VersionVector)> {
        self.lock().iter().map(|(r, e)| (r.clone(), e.durable.clone())).collect()
    }

    /// How stale this node's copy of each peer's writes is at `now_ms`, at most: the time since
    /// the newest moment (the peer's clock, corrected by its measured offset and that
    /// measurement's uncertainty) at which this node held everything the peer had. `None`:
    /// never caught up with it.
    pub fn staleness_ms(&self, now_ms: u64) -> Vec<(RegionName, Option<u64>)> {
        self.lock()
            .iter()
            .map(|(r, e)| {
                let stale = e.caught_up.map(|(peer_wall, _)| {
                    // peer_wall in this node's clock is peer_wall - offset; count the
                    // uncertainty against us.
                    let (offset, uncertainty) =
                        e.clock.as_ref().map_or((0, 0), |(o, _)| (o.offset_ms, o.uncertainty_ms));
                    let ours = i128::from(peer_wall) - i128::from(offset) - i128::from(uncertainty);
                    u64::try_from((i128::from(now_ms) - ours).max(0)).unwrap_or(u64::MAX)
                });
                (r.clone(), stale)
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<RegionName, Entry>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn update(&self, peer: &RegionName, f: impl FnOnce(&mut PeerStatus)) {
        if let Some(e) = self.lock().get_mut(peer) {
            f(&mut e.status);
        }
    }

    /// `count` changes from `peer` applied at `now_ms`; `lag_ms` is the newest one's lag.
    pub fn record_applied(&self, peer: &RegionName, count: u64, lag_ms: u64, now_ms: u64) {
        let mut map = self.lock();
        let Some(e) = map.get_mut(peer) else { return };
        e.status.changes_received += count;
        e.status.lag_ms_last = Some(lag_ms);
        if e.lag_samples.len() == LAG_SAMPLES_MAX {
            e.lag_samples.pop_front();
        }
        e.lag_samples.push_back(lag_ms);
        let second = now_ms / 1_000;
        match e.received.back_mut() {
            Some((s, n)) if *s == second => *n += count,
            _ => e.received.push_back((second, count)),
        }
        while e.received.front().is_some_and(|(s, _)| *s + RATE_WINDOW_S <= second) {
            e.received.pop_front();
        }
    }

    /// This node holds everything `peer` had when its clock read `peer_wall_ms`; it learned
    /// so at `now_ms` (its own clock).
    pub fn caught_up(&self, peer: &RegionName, peer_wall_ms: u64, now_ms: u64) {
        let moved = match self.lock().get_mut(peer) {
            Some(e) if e.caught_up.is_none_or(|(wall, _)| peer_wall_ms >= wall) => {
                let newer = e.caught_up.is_none_or(|(wall, _)| peer_wall_ms > wall);
                e.caught_up = Some((peer_wall_ms, now_ms));
                newer
            }
            _ => false,
        };
        if moved {
            self.bump();
        }
    }

    /// `peer`'s clock minus this node's is `offset_ms`, known to within `uncertainty_ms`,
    /// as measured at `now_ms`.
    pub fn observe_clock(&self, peer: &RegionName, offset_ms: i64, uncertainty_ms: u64, now_ms: u64) {
        if let Some(e) = self.lock().get_mut(peer) {
            e.status.clock_skew_ms = Some(offset_ms);
            let offset = mrr_core::clock_check::PeerOffset { peer: peer.clone(), offset_ms, uncertainty_ms };
            e.clock = Some((offset, now_ms));
        }
    }

    /// The peers' clocks measured within `fresh_ms` of `now_ms`.
    pub fn clock_offsets(&self, now_ms: u64, fresh_ms: u64) -> Vec<mrr_core::clock_check::PeerOffset> {
        self.lock()
            .values()
            .filter_map(|e| e.clock.as_ref())
            .filter(|(_, at)| now_ms.saturating_sub(*at) <= fresh_ms)
            .map(|(o, _)| o.clone())
            .collect()
    }

    /// Every peer's status, with the derived figures computed as of `now_ms`.
    pub fn snapshot(&self, now_ms: u64) -> Vec<PeerStatus> {
        self.lock()
            .values()
            .map(|e| {
                let mut s = e.status.clone();
                let mut sorted: Vec<u64> = e.lag_samples.iter().copied().collect();
                sorted.sort_unstable();
                let pct = |p: usize| (!sorted.is_empty()).then(|| sorted[(sorted.len() - 1) * p / 100]);
                s.lag_ms_p50 = pct(50);
                s.lag_ms_p99 = pct(99);
                // How stale this node's copy of the peer may be: as stale as it was when it last
                // heard it was caught up (the link's delay), plus however long the next word is
                // overdue. On an idle, healthy stream that is the link, not the heartbeat
                // period; on a stalled one it grows without bound.
                s.freshness_lag_ms = e.caught_up.map(|(wall, heard)| {
                    let overdue = now_ms.saturating_sub(heard).saturating_sub(self.quiet_ms);
                    heard.saturating_sub(wall) + overdue
                });
                let second = now_ms / 1_000;
                let in_window: u64 =
                    e.received.iter().filter(|(sec, _)| *sec + RATE_WINDOW_S > second).map(|(_, n)| n).sum();
                s.received_per_s = in_window as f64 / RATE_WINDOW_S as f64;
                s
            })
            .collect()
    }

    /// Origins whose own stream to this node is live: the peers this node hears directly.
    pub fn direct_origins(&self) -> BTreeSet<RegionName> {
        self.lock().iter().filter(|(_, e)| e.status.inbound_streams > 0).map(|(r, _)| r.clone()).collect()
    }
}

pub(crate) fn vv_map(vv: &VersionVector) -> BTreeMap<String, u64> {
    vv.iter().map(|(o, s)| (o.to_string(), s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_rate_and_freshness() {
        let a = RegionName::new("a").expect("valid");
        let b = RegionName::new("b").expect("valid");
        let board = StatusBoard::new(&a, [(&b, "http://b")].into_iter(), 500);
        for lag in 1..=100 {
            board.record_applied(&b, 2, lag, 50_000);
        }
        // Caught up with b as of its 49,000, heard at 49,055: 55 ms behind.
        board.caught_up(&b, 49_000, 49_055);
        board.caught_up(&b, 48_000, 49_060); // older news never moves freshness back
        let s = &board.snapshot(50_000)[0];
        assert_eq!((s.lag_ms_p50, s.lag_ms_p99), (Some(50), Some(99)));
        assert_eq!(s.changes_received, 200);
        assert_eq!(s.received_per_s, 20.0);
        assert_eq!(s.freshness_lag_ms, Some(55), "within two heartbeat periods: the link's delay");
        // Ten seconds later the rate window is empty and freshness has grown by the silence
        // beyond two heartbeat periods.
        let s = &board.snapshot(61_000)[0];
        assert_eq!(s.received_per_s, 0.0);
        assert_eq!(s.freshness_lag_ms, Some(55 + 61_000 - 49_055 - 1_000));
    }

    #[test]
    fn staleness_counts_the_peer_clock_offset_against_us_and_durable_vectors_signal() {
        let (a, b) = (RegionName::new("a").expect("valid"), RegionName::new("b").expect("valid"));
        let board = StatusBoard::new(&a, [(&b, "http://b")].into_iter(), 500);
        let mut changed = board.subscribe();
        changed.borrow_and_update();
        assert_eq!(board.staleness_ms(10_000), vec![(b.clone(), None)], "never caught up: unknown");
        // Held everything b had at b's 9,900; b's clock runs 40 ms ahead of ours, measured to
        // within 5 ms: that moment is our 9,855 at the earliest, so at our 10,000 we are 145 ms
        // stale at most.
        board.observe_clock(&b, 40, 5, 9_990);
        board.caught_up(&b, 9_900, 9_960);
        assert!(changed.has_changed().expect("open"), "a catch-up signals waiters");
        assert_eq!(board.staleness_ms(10_000), vec![(b.clone(), Some(145))]);

        let stream = mrr_core::Stream::normal(a.clone());
        let vv = |n: u64| -> VersionVector { [(stream.clone(), n)].into_iter().collect() };
        changed.borrow_and_update();
        board.peer_durable(&b, vv(7));
        board.peer_durable(&b, vv(5)); // an older ack never moves it back
        assert_eq!(board.durable_vectors(), vec![(b.clone(), vv(7))]);
        assert!(changed.has_changed().expect("open"));
        board.reset_durable(&b, vv(3)); // b came back holding less
        assert_eq!(board.durable_vectors(), vec![(b.clone(), vv(3))]);
    }

    #[test]
    fn an_idle_healthy_stream_reads_as_its_link_delay_between_heartbeats() {
        let (a, b) = (RegionName::new("a").expect("valid"), RegionName::new("b").expect("valid"));
        let board = StatusBoard::new(&a, [(&b, "http://b")].into_iter(), 500);
        // Heartbeats every 500 ms over a 115 ms link; sampled at any moment in between.
        for beat in 0..20u64 {
            let sent = 10_000 + beat * 500;
            board.caught_up(&b, sent, sent + 115);
            for t in [sent + 115, sent + 300, sent + 614] {
                assert_eq!(board.snapshot(t)[0].freshness_lag_ms, Some(115), "at {t}");
            }
        }
    }
}
