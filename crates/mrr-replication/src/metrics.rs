//! Replication metrics, registered on the node's own recorder (not the process-global one:
//! `mrr dev` runs several nodes in one process, each with its own `/metrics`).
//!
//! Handles for fixed label sets are registered once; per-topic lag histograms are registered on
//! first use, with the number of distinct topics bounded so a client inventing topics cannot
//! grow the registry without limit.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, Unit};
use mrr_core::{Lane, RegionName};

/// Distinct topics that get their own lag series; the rest share `topic="_other"`.
const TOPICS_TRACKED_MAX: usize = 256;

static METADATA: Metadata<'static> = Metadata::new("mrr", Level::INFO, Some(module_path!()));

/// The recorder a node's metrics go to.
pub type SharedRecorder = Arc<dyn Recorder + Send + Sync>;

/// Describes every metric of this crate (help text and unit), once per recorder.
pub fn describe(recorder: &dyn Recorder) {
    let d = |name: &'static str, unit: Option<Unit>, help: &'static str| {
        recorder.describe_counter(name.into(), unit, help.into());
    };
    d("mrr_peer_sent_changes_total", Some(Unit::Count), "Changes sent to a peer, by lane.");
    d("mrr_peer_sent_bytes_total", Some(Unit::Bytes), "Encoded bytes sent to a peer, by lane (the bandwidth bill).");
    d("mrr_peer_received_changes_total", Some(Unit::Count), "Changes received from a peer.");
    d("mrr_peer_received_bytes_total", Some(Unit::Bytes), "Encoded bytes received from a peer.");
    d("mrr_applied_changes_total", Some(Unit::Count), "Replicated changes applied, by origin region.");
    d("mrr_duplicate_changes_total", Some(Unit::Count), "Replicated changes dropped as already applied.");
    d("mrr_peer_handshakes_total", Some(Unit::Count), "Completed peer handshakes, by direction.");
    d("mrr_peer_disconnects_total", Some(Unit::Count), "Peer streams that ended, by direction.");
    d("mrr_conflicts_total", Some(Unit::Count), "Replicated writes that lost to a newer version, by topic and rule.");
    d(
        "mrr_freshness_violations_total",
        Some(Unit::Count),
        "Changes applied later than replication_rules.default_ttl after their write.",
    );
    recorder.describe_histogram(
        "mrr_replication_lag_seconds".into(),
        Some(Unit::Seconds),
        "Time from a write at its origin to its apply here (includes clock skew).".into(),
    );
    for (name, help) in [
        ("mrr_peer_backlog_changes", "Changes a peer still needs from this node."),
        (
            "mrr_peer_window_bytes",
            "Bytes the normal and bulk lanes may have in flight to a peer (the delay-based window).",
        ),
        (
            "mrr_peer_base_rtt_seconds",
            "Lowest round trip to a peer the window controller has seen recently (its no-queue base).",
        ),
        ("mrr_peer_queue_delay_seconds", "Queueing delay the window controller measured on its last sample."),
        ("mrr_peer_clock_skew_seconds", "Peer clock minus this node's, from the last handshake."),
        ("mrr_peer_connected", "1 while the stream in that direction is up."),
        ("mrr_peer_freshness_lag_seconds", "How stale this node's copy of a peer's writes may be."),
        (
            "mrr_peer_retention_held_seconds",
            "How long a peer has been away while holding changelog truncation back (0: not away, or lagging).",
        ),
        (
            "mrr_peer_lagging",
            "1 while a peer has been away past the retention window: the changelog is truncated without it and it rejoins through a snapshot.",
        ),
        (
            "mrr_stable_point_behind_changes",
            "Changes applied here that not every region has durably applied yet (above the stable point).",
        ),
        (
            "mrr_departures_pending",
            "Records that left this region whose changelog, conflict log or dead letters still name them.",
        ),
        ("mrr_changelog_bytes", "Bytes the changelog takes on disk (what retention keeps)."),
        ("mrr_changelog_entries", "Changelog entries held (approximate)."),
        ("mrr_fold_entries", "Fold-history entries of custom topics held (approximate)."),
        ("mrr_record_entries", "Record entries held, tombstones and placement registers included (approximate)."),
        ("mrr_tombstones", "Tombstones of records held here, as counted by retention's last whole sweep."),
        ("mrr_repaired_total", "Records anti-entropy repaired in this region: each means a bug or a bad disk."),
        ("mrr_repair_unresolved", "Records the last anti-entropy run found in two different copies of one change, with no majority to choose."),
        ("mrr_repair_runs_total", "Anti-entropy runs started by this region (mrr repair, or the periodic scrub)."),
    ] {
        recorder.describe_gauge(name.into(), None, help.into());
    }
    recorder.describe_counter(
        "mrr_erased_total".into(),
        None,
        "Log entries erased because their record left this region (what: changes, conflicts, dead_letters).".into(),
    );
    recorder.describe_counter(
        "mrr_collected_total".into(),
        None,
        "What retention collected below the stable point (what: changes, tombstones).".into(),
    );
}

/// Handles for one peer.
#[derive(Clone, Debug)]
pub struct PeerMetrics {
    /// By lane, in [`Lane::ALL`] order: use [`PeerMetrics::sent`].
    sent_changes: [Counter; 3],
    sent_bytes: [Counter; 3],
    pub window_bytes: Gauge,
    pub base_rtt_seconds: Gauge,
    pub queue_delay_seconds: Gauge,
    pub received_changes: Counter,
    pub received_bytes: Counter,
    pub applied: Counter,
    pub duplicates: Counter,
    pub handshakes_out: Counter,
    pub handshakes_in: Counter,
    pub disconnects_out: Counter,
    pub disconnects_in: Counter,
    pub backlog: Gauge,
    pub clock_skew_seconds: Gauge,
    pub connected_out: Gauge,
    pub connected_in: Gauge,
    pub freshness_lag_seconds: Gauge,
    pub freshness_violations: Counter,
    pub retention_held_seconds: Gauge,
    pub lagging: Gauge,
}

impl PeerMetrics {
    /// Counts a batch of `changes` and `bytes` sent in `lane`.
    pub fn sent(&self, lane: Lane, changes: u64, bytes: u64) {
        let i = Lane::ALL.iter().position(|l| *l == lane).unwrap_or_else(|| unreachable!("every lane is in ALL"));
        self.sent_changes[i].increment(changes);
        self.sent_bytes[i].increment(bytes);
    }
}

/// The replication metrics of one node.
#[derive(Clone)]
pub struct ReplicationMetrics {
    recorder: SharedRecorder,
    local: String,
    /// Per peer, registered when the peer joins the membership (at most
    /// [`mrr_core::membership::REGIONS_MAX`]).
    peers: Arc<Mutex<BTreeMap<RegionName, PeerMetrics>>>,
    lag: Arc<Mutex<BTreeMap<(RegionName, String), Histogram>>>,
    conflicts: Arc<Mutex<BTreeMap<String, Counter>>>,
    /// `mrr_stable_point_behind_changes`.
    pub stable_behind: Gauge,
    /// `mrr_departures_pending`.
    pub departures: Gauge,
    /// `mrr_erased_total` by what: changes, conflicts, dead letters.
    pub erased: [Counter; 3],
    /// `mrr_collected_total` by what: changes, tombstones.
    pub collected: [Counter; 2],
    /// `mrr_changelog_bytes`, `mrr_changelog_entries`, `mrr_fold_entries`, `mrr_record_entries`.
    pub footprint: [Gauge; 4],
    /// `mrr_tombstones`.
    pub tombstones: Gauge,
    /// `mrr_repaired_total`, `mrr_repair_unresolved`, `mrr_repair_runs_total`.
    pub repaired: Counter,
    pub repair_unresolved: Gauge,
    pub repair_runs: Counter,
}

impl std::fmt::Debug for ReplicationMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationMetrics").field("local", &self.local).finish_non_exhaustive()
    }
}

fn key(name: &'static str, labels: &[(&'static str, String)]) -> Key {
    Key::from_parts(name, labels.iter().map(|(k, v)| Label::new(*k, v.clone())).collect::<Vec<_>>())
}

impl ReplicationMetrics {
    pub fn new(recorder: SharedRecorder, local: &RegionName, peers: impl Iterator<Item = RegionName>) -> Self {
        describe(recorder.as_ref());
        let r = recorder.as_ref();
        let counter = |name, labels: &[(&'static str, String)]| r.register_counter(&key(name, labels), &METADATA);
        let gauge = |name, labels: &[(&'static str, String)]| r.register_gauge(&key(name, labels), &METADATA);
        let stable_behind = gauge("mrr_stable_point_behind_changes", &[]);
        let departures = gauge("mrr_departures_pending", &[]);
        let erased =
            ["changes", "conflicts", "dead_letters"].map(|w| counter("mrr_erased_total", &[("what", w.to_owned())]));
        let collected = ["changes", "tombstones"].map(|w| counter("mrr_collected_total", &[("what", w.to_owned())]));
        let footprint = ["mrr_changelog_bytes", "mrr_changelog_entries", "mrr_fold_entries", "mrr_record_entries"]
            .map(|name| gauge(name, &[]));
        let tombstones = gauge("mrr_tombstones", &[]);
        let (repaired, repair_unresolved, repair_runs) = (
            counter("mrr_repaired_total", &[]),
            gauge("mrr_repair_unresolved", &[]),
            counter("mrr_repair_runs_total", &[]),
        );
        let this = Self {
            recorder,
            local: local.to_string(),
            peers: Arc::default(),
            lag: Arc::default(),
            conflicts: Arc::default(),
            stable_behind,
            departures,
            erased,
            collected,
            footprint,
            tombstones,
            repaired,
            repair_unresolved,
            repair_runs,
        };
        for p in peers {
            this.add_peer(&p);
        }
        this
    }

    /// Registers `p`'s metrics (a region that joined the membership); idempotent.
    pub fn add_peer(&self, p: &RegionName) {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if peers.contains_key(p) {
            return;
        }
        let r = self.recorder.as_ref();
        let local = &self.local;
        let counter = |name, labels: &[(&'static str, String)]| r.register_counter(&key(name, labels), &METADATA);
        let gauge = |name, labels: &[(&'static str, String)]| r.register_gauge(&key(name, labels), &METADATA);
        let peer = || ("peer", p.to_string());
        let dir = |d: &str| [peer(), ("direction", d.to_owned())];
        let lane = |l: Lane| [peer(), ("lane", l.name().to_owned())];
        let m = PeerMetrics {
            sent_changes: Lane::ALL.map(|l| counter("mrr_peer_sent_changes_total", &lane(l))),
            sent_bytes: Lane::ALL.map(|l| counter("mrr_peer_sent_bytes_total", &lane(l))),
            window_bytes: gauge("mrr_peer_window_bytes", &[peer()]),
            base_rtt_seconds: gauge("mrr_peer_base_rtt_seconds", &[peer()]),
            queue_delay_seconds: gauge("mrr_peer_queue_delay_seconds", &[peer()]),
            received_changes: counter("mrr_peer_received_changes_total", &[peer()]),
            received_bytes: counter("mrr_peer_received_bytes_total", &[peer()]),
            applied: counter("mrr_applied_changes_total", &[("origin", p.to_string())]),
            duplicates: counter("mrr_duplicate_changes_total", &[peer()]),
            handshakes_out: counter("mrr_peer_handshakes_total", &dir("outbound")),
            handshakes_in: counter("mrr_peer_handshakes_total", &dir("inbound")),
            disconnects_out: counter("mrr_peer_disconnects_total", &dir("outbound")),
            disconnects_in: counter("mrr_peer_disconnects_total", &dir("inbound")),
            backlog: gauge("mrr_peer_backlog_changes", &[peer()]),
            clock_skew_seconds: gauge("mrr_peer_clock_skew_seconds", &[peer()]),
            connected_out: gauge("mrr_peer_connected", &dir("outbound")),
            connected_in: gauge("mrr_peer_connected", &dir("inbound")),
            freshness_lag_seconds: gauge("mrr_peer_freshness_lag_seconds", &[peer()]),
            retention_held_seconds: gauge("mrr_peer_retention_held_seconds", &[peer()]),
            lagging: gauge("mrr_peer_lagging", &[peer()]),
            freshness_violations: counter(
                "mrr_freshness_violations_total",
                &[("source", p.to_string()), ("target", local.to_string())],
            ),
        };
        peers.insert(p.clone(), m);
    }

    pub fn peer(&self, peer: &RegionName) -> Option<PeerMetrics> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner).get(peer).cloned()
    }

    /// Copies the status board's derived figures into gauges, before a scrape.
    pub fn refresh(&self, peers: &[mrr_api::PeerStatus]) {
        for p in peers {
            let Ok(region) = RegionName::new(p.region.clone()) else { continue };
            if let Some(m) = self.peer(&region) {
                m.backlog.set(p.backlog_changes as f64);
                if let Some(lag) = p.freshness_lag_ms {
                    m.freshness_lag_seconds.set(lag as f64 / 1_000.0);
                }
            }
        }
    }

    /// The lag histogram for changes from `source` in `topic`.
    pub fn lag(&self, source: &RegionName, topic: &str) -> Histogram {
        let mut lag = self.lag.lock().unwrap_or_else(PoisonError::into_inner);
        let topic = if lag.contains_key(&(source.clone(), topic.to_owned())) || lag.len() < TOPICS_TRACKED_MAX {
            topic.to_owned()
        } else {
            "_other".to_owned()
        };
        lag.entry((source.clone(), topic.clone()))
            .or_insert_with(|| {
                let labels = [("source", source.to_string()), ("target", self.local.clone()), ("topic", topic)];
                self.recorder.register_histogram(&key("mrr_replication_lag_seconds", &labels), &METADATA)
            })
            .clone()
    }

    /// The conflict counter for `topic` under `strategy` (a topic has one strategy per run).
    pub fn conflicts(&self, topic: &str, strategy: &str) -> Counter {
        let mut conflicts = self.conflicts.lock().unwrap_or_else(PoisonError::into_inner);
        let topic =
            if conflicts.contains_key(topic) || conflicts.len() < TOPICS_TRACKED_MAX { topic } else { "_other" };
        conflicts
            .entry(topic.to_owned())
            .or_insert_with(|| {
                let labels = [("topic", topic.to_owned()), ("strategy", strategy.to_owned())];
                self.recorder.register_counter(&key("mrr_conflicts_total", &labels), &METADATA)
            })
            .clone()
    }
}
