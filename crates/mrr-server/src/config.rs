//! `mrr-config.yaml`: parsing and validation.
//!
//! Start-up refuses a config it does not fully understand: an unknown key, a bad value or an
//! inconsistent setting stops the node with the file, the line and a hint — including a
//! conflict handler that does not compile. Nothing here opens sockets or files other than the
//! config itself and the handler scripts and secret files it names (and it reads the
//! environment variables the config names for secrets and keys).
//!
//! One file may serve the whole cluster: a node's own region comes from `--region` /
//! `MRR_REGION` when the file does not name it ([`Config::load_for`]), and tools that only need
//! the cluster's layout (`mrr dev -c`, `mrr bench -c`) read it without a region or secret
//! ([`Config::load_cluster`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mrr_api::LinkSettings;
use mrr_core::limits::Limits;
use mrr_core::{Lane, LaneRules, PlacementDefaults, Policies, RegionName, Rule};
use mrr_storage::Durability;
use serde::{Deserialize, Deserializer, Serialize};

pub const DEFAULT_API_PORT: u16 = 7800;
pub const DEFAULT_PEER_PORT: u16 = 7801;

/// The whole config file. Every field is documented in `examples/mrr-config.yaml`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of the cluster; peers from another cluster are refused.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// `region:` as the file writes it (optional in a file the whole cluster shares).
    #[serde(default, rename = "region")]
    pub region_in_file: Option<RegionName>,
    /// The region this node serves, one of `regions`: `--region`, `MRR_REGION` or `region:`.
    /// Resolved by the loader.
    #[serde(skip, default = "unresolved_region")]
    pub region: RegionName,
    /// `secret:` as the file writes it: the secret, or where to read it.
    #[serde(default, rename = "secret")]
    pub secret_source: Option<SecretSource>,
    /// Shared by every node of the cluster; peers prove they know it at handshake. Resolved by
    /// the loader from `secret:` (empty for [`Config::load_cluster`] without one).
    #[serde(skip)]
    pub secret: String,
    /// Other secrets accepted from peers while the cluster moves from one secret to the next
    /// (`docs/security.md`): each as `secret:` may be written.
    #[serde(default)]
    pub accept_secrets: Vec<SecretSource>,
    /// Resolved by the loader from `accept_secrets`.
    #[serde(skip)]
    pub accepted_secrets: Vec<String>,
    /// Keys the sealed names by which a region outside a record's placement knows it
    /// (`mrr_core::seal`). The same on every node and never changed; without it, `secret`
    /// keys them, so pin it to the secret in use before rotating `secret`.
    #[serde(default)]
    pub placement_secret: Option<SecretSource>,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub listen: Listen,
    #[serde(default = "default_skew", with = "duration")]
    pub max_clock_skew: Duration,
    #[serde(default)]
    pub debug_mode: bool,
    #[serde(default)]
    pub durability: Durability,
    /// What an empty data directory does at start: ask every peer where this region's streams
    /// stand and install a snapshot when they hold anything of it (`ask_peers`, the default), or
    /// start as a new region of a new cluster without asking (`new_cluster`: the first start of
    /// a cluster whose other regions may not be up, and tests).
    #[serde(default)]
    pub bootstrap: mrr_replication::bootstrap::Start,
    /// Client API keys and their scopes (`crate::access`). Without keys the API is open,
    /// which a node allows only on loopback or with `allow_anonymous: true`.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyEntry>,
    /// Serve an API beyond loopback with no keys (anyone who reaches it may do anything).
    #[serde(default)]
    pub allow_anonymous: bool,
    /// `/health` and `/metrics` need a key too (any valid key, any action).
    #[serde(default)]
    pub require_key_for_monitoring: bool,
    /// The keys, hashed, with their scopes: built by the loader from `api_keys`.
    #[serde(skip)]
    pub access: crate::access::Access,
    /// Mutual TLS between regions: this region's certificate and key and the cluster's CA
    /// (`mrr certs` makes them). Required by `https://` endpoints.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Peers replicate over plain HTTP/2 (`http://` endpoints, no `tls:`): only when the config
    /// says so, for private networks, tunnels and tests.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// The files of `tls`, read and checked together by the loader (node configs only), and
    /// reloaded by the node when they change: peers and the HTTPS API take them from here.
    #[serde(skip)]
    pub peer_tls: Option<mrr_replication::PeerTls>,
    pub regions: Vec<RegionConfig>,
    #[serde(default)]
    pub replication_rules: ReplicationRules,
    /// WAN emulation: this node's outgoing link to each peer. Absent in production.
    #[serde(default)]
    pub links: Option<BTreeMap<RegionName, LinkSettings>>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub health: HealthConfig,
    /// Per-topic policies; a topic not listed uses `replication_rules`.
    #[serde(default)]
    pub topics: BTreeMap<String, TopicConfig>,
    #[serde(default)]
    pub conflict_log: ConflictLogConfig,
    /// How long a region that is away holds the changelog back (see [`RetentionConfig`]).
    #[serde(default)]
    pub retention: RetentionConfig,
    /// How often anti-entropy compares this region with its peers (see [`AntiEntropyConfig`]).
    #[serde(default)]
    pub anti_entropy: AntiEntropyConfig,
    /// The dead-letter queue's bound.
    #[serde(default)]
    pub dlq: DlqConfig,
    /// The strong tier's Raft timers (every field optional; see [`ConsensusConfig`]).
    #[serde(default)]
    pub consensus: ConsensusConfig,
    /// Which `syncFlags` put a write in which priority lane, and how much queue the lower lanes
    /// may build in front of urgent changes.
    #[serde(default)]
    pub lanes: LanesConfig,
    /// The conflict rules, with handlers compiled: built by [`Config::parse`].
    #[serde(skip)]
    pub policies: Arc<Policies>,
    /// The directory of the config file: handler paths are relative to it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file this config was loaded from, when it was (a running node re-reads its API keys
    /// from it: `crate::reload`).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Defaults to `replication_rules.conflict_strategy`.
    #[serde(default)]
    pub conflict_strategy: Option<ConflictStrategy>,
    /// The Rhai script of `conflict_strategy: custom`, relative to this config file.
    #[serde(default)]
    pub handler: Option<PathBuf>,
    /// The lane of the topic's writes whose `syncFlags` name no lane (default `normal`).
    #[serde(default)]
    pub lane: Option<Lane>,
    /// Where the topic's records live when a write names no `__metadata.regions`
    /// (default `replication_rules.regions`).
    #[serde(default)]
    pub regions: Option<Vec<String>>,
    /// A write in a region outside the record's placement: `refuse` (409) or `forward` it to
    /// a region of the placement (default `replication_rules.placement_writes`).
    #[serde(default)]
    pub placement_writes: Option<PlacementWrites>,
    /// `eventual` (default): writes commit locally and replicate asynchronously. `strong`:
    /// every write is committed by a quorum through the strong tier's log before it is
    /// acknowledged, and reads may ask for `?consistency=strong`. Fixed per topic: every
    /// region must say the same (the policy digest covers it).
    #[serde(default)]
    pub consistency: TopicConsistency,
    /// Update functions of a strong topic, by name: Rhai scripts (relative to this config
    /// file) defining `fn update(current, args)`, called by `POST .../atomic` with
    /// `{"function": name}` and run in the strong tier's state machine.
    #[serde(default)]
    pub functions: BTreeMap<String, PathBuf>,
    /// Refuse writes to this topic (503 `lag_critical`, `Retry-After`) while any region's
    /// replication lag is past `health.lag_critical`.
    #[serde(default)]
    pub throttle_when_lag_critical: bool,
    /// Bounded fields: escrow counters that never go below their `min`, decremented at local
    /// latency against rights each region holds (`docs/consistency.md`). Changed only by
    /// `{"op":"incr"}`; the topic's rule is `merge` (the default when a topic has them).
    #[serde(default)]
    pub bounded: BTreeMap<String, BoundedField>,
}

/// `tls:` — paths relative to the config file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// This region's certificate (PEM), e.g. `certs/ap-northeast.pem`.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The cluster's CA certificate (PEM), e.g. `certs/ca.pem`.
    pub ca: PathBuf,
}

/// A secret, or where to read it: `"..."`, `{ env: MRR_SECRET }` or `{ file: secret.txt }`
/// (relative to the config file; surrounding whitespace is dropped).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum SecretSource {
    Inline(String),
    Env { env: String },
    File { file: PathBuf },
}

impl SecretSource {
    /// The secret itself, or why it cannot be had (naming the variable or file).
    pub fn resolve(&self, base_dir: &Path) -> Result<String, String> {
        match self {
            SecretSource::Inline(s) => Ok(s.clone()),
            SecretSource::Env { env } => std::env::var(env).map_err(|e| format!("environment variable {env}: {e}")),
            SecretSource::File { file } => {
                let path = base_dir.join(file);
                read_bounded(&path, SECRET_FILE_BYTES_MAX)
                    .map(|s| s.trim().to_owned())
                    .map_err(|e| format!("{}: cannot read: {e}", path.display()))
            }
        }
    }
}

/// The largest file a secret or key may be read from.
const SECRET_FILE_BYTES_MAX: u64 = 64 * 1024;
/// The largest config file.
const CONFIG_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// A handler or update function's source, bounded like every file the config names.
fn read_script(path: &Path) -> Result<String, String> {
    read_bounded(path, mrr_handler::SCRIPT_BYTES_MAX).map_err(|e| format!("cannot read script {}: {e}", path.display()))
}

/// A file's text, refused past `max` bytes (a path such as /dev/zero must not be read until
/// memory runs out).
fn read_bounded(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?.take(max + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(std::io::Error::other(format!("larger than {max} bytes")));
    }
    Ok(text)
}

/// One entry of `api_keys:`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ApiKeyEntry {
    /// A key written in clear: every action on every record, in every region (the format
    /// before scopes; prefer a hashed entry).
    Plain(String),
    /// A scoped key ([`ScopedKey`]), checked field by field when the config loads so that a
    /// mistake is reported by name rather than as "matches no variant".
    Scoped(serde_json::Value),
}

/// A scoped key as `mrr keys create` prints it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedKey {
    /// For messages and logs (default: the first characters of the digest).
    #[serde(default)]
    pub name: Option<String>,
    /// The key's SHA-256 digest, `sha256:` and 64 hex digits. Either this or `key`.
    #[serde(default)]
    pub hash: Option<String>,
    /// The key itself, from the environment or a file (`key: { env: MRR_KEY }`).
    #[serde(default)]
    pub key: Option<SecretSource>,
    /// `read`, `write`, `admin`.
    pub actions: Vec<String>,
    /// Topic patterns: `users`, `orders/*`, `orders/eu-*`, `*` (default `*`).
    #[serde(default)]
    pub topics: Option<Vec<String>>,
    /// Regions the key is valid in (default: all).
    #[serde(default)]
    pub regions: Option<Vec<String>>,
    /// RFC 3339 instant after which the key is refused, e.g. `2027-06-30T00:00:00Z`.
    #[serde(default)]
    pub expires: Option<String>,
}

/// A bounded field's policy.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BoundedField {
    /// The value never goes below this, in any region, under any fault.
    pub min: i64,
    /// What a decrement this region holds too few rights for gets (default `refuse`).
    #[serde(default)]
    pub on_insufficient: OnInsufficient,
}

/// What a region does with a decrement of a bounded field beyond the rights it holds. Either
/// way it asks for rights in the same commit, so the next decrement may succeed locally.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnInsufficient {
    /// 409 `insufficient_rights` with `retry_after_ms`: about when the rights asked for arrive.
    #[default]
    Refuse,
    /// Sent on, once, to the region this one knows to hold the most rights (at least the
    /// decrement), which decrements its own rights and answers: one round trip to it instead
    /// of a refusal (`x-mrr-forwarded-to` names it). Refused as above when no region is known
    /// to hold enough.
    Forward,
}

/// A topic's consistency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicConsistency {
    #[default]
    Eventual,
    Strong,
}

/// What a region does with a write to a record not placed in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementWrites {
    /// 409 `not_placed_here`, naming the regions to write in.
    #[default]
    Refuse,
    /// Sent on to the first region of the placement with an `api:` address; its answer is
    /// returned (single-record writes; batches are refused).
    Forward,
}

/// `lanes:`. A list given replaces that lane's default flags; a flag may map to one lane only.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LanesConfig {
    /// Default `[SYNC_PRIORITY=1, IMPORTANT]`.
    #[serde(default)]
    pub urgent: Option<Vec<String>>,
    /// Default `[SYNC_PRIORITY=2]`.
    #[serde(default)]
    pub normal: Option<Vec<String>>,
    /// Default `[SYNC_PRIORITY=3, BULK]`.
    #[serde(default)]
    pub bulk: Option<Vec<String>>,
    /// The queueing delay the normal and bulk lanes may add in front of an urgent change.
    #[serde(default = "default_queue_delay_target", with = "duration")]
    pub queue_delay_target: Duration,
}

impl Default for LanesConfig {
    fn default() -> Self {
        Self { urgent: None, normal: None, bulk: None, queue_delay_target: default_queue_delay_target() }
    }
}

fn default_queue_delay_target() -> Duration {
    Duration::from_millis(mrr_core::session::OutboundLimits::default().queue_delay_target_ms)
}

/// Retention of the conflict log: entries older than `retention` go, and beyond `max_entries`
/// the oldest go first.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConflictLogConfig {
    #[serde(default = "default_conflict_retention", with = "duration")]
    pub retention: Duration,
    #[serde(default = "default_conflict_entries_max")]
    pub max_entries: usize,
}

impl Default for ConflictLogConfig {
    fn default() -> Self {
        Self { retention: default_conflict_retention(), max_entries: default_conflict_entries_max() }
    }
}

fn default_conflict_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_conflict_entries_max() -> usize {
    100_000
}

/// `retention:`. The changelog is truncated below what every region has durably applied (the
/// stable point), so a region that is away holds it back, and `/health` says which and for how
/// long. With a `window`, it holds it back for at most that long (or less, once the changelog
/// holds more than `changelog_bytes_max`): past it, it is *lagging*, the others truncate without
/// it (PostgreSQL's `max_slot_wal_keep_size`), and it comes back through a snapshot of a peer.
/// Without one (the default), an away region holds the changelog back for as long as it is
/// away.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    #[serde(default, with = "optional_duration")]
    pub window: Option<Duration>,
    #[serde(default)]
    pub changelog_bytes_max: Option<u64>,
}

/// `anti_entropy:`. Every `interval` (default 6 h) the region compares the records it holds with
/// every peer's and repairs what differs (the scrub: it re-reads and re-hashes every record);
/// `interval: 0s` leaves only `mrr repair` (`POST /v1/repair`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AntiEntropyConfig {
    #[serde(default = "default_scrub_interval", with = "duration")]
    pub interval: Duration,
}

impl Default for AntiEntropyConfig {
    fn default() -> Self {
        Self { interval: default_scrub_interval() }
    }
}

fn default_scrub_interval() -> Duration {
    Duration::from_secs(6 * 3_600)
}

/// A scrub reads every record: more often than this, it is a load, not a check.
pub const SCRUB_INTERVAL_MIN: Duration = Duration::from_secs(60);

/// A region is known to be away only once its streams time out (`NodeOptions::peer_timeout`'s
/// default): a retention window must be longer.
pub const RETENTION_WINDOW_MIN: Duration = Duration::from_secs(10);

/// `dlq:`. The queue never drops a letter: at `max_entries` this region stops applying
/// replicated changes of `custom` topics (they wait at their senders, nothing is lost) until an
/// operator replays or discards letters; from 90% of it `/health` is critical.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DlqConfig {
    #[serde(default = "default_dlq_entries_max")]
    pub max_entries: u64,
}

impl Default for DlqConfig {
    fn default() -> Self {
        Self { max_entries: default_dlq_entries_max() }
    }
}

fn default_dlq_entries_max() -> u64 {
    100_000
}

/// `consensus:`. The Raft group's timers derive from `rtt_ms`, the largest round trip between
/// two regions: heartbeat 1.1× that, election timeouts 1.25× and 1.875× the heartbeat (see
/// `mrr_consensus::Timing::from_rtt`). Each may be set on its own. Without `rtt_ms`, a node
/// under WAN emulation (`links:`) takes twice its slowest link's delay and jitter; otherwise
/// 250 ms (Tokyo to Frankfurt is about 230 ms).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsensusConfig {
    #[serde(default)]
    pub rtt_ms: Option<u64>,
    #[serde(default)]
    pub heartbeat_ms: Option<u64>,
    #[serde(default)]
    pub election_min_ms: Option<u64>,
    #[serde(default)]
    pub election_max_ms: Option<u64>,
    /// How long the `role: coordinator` region must be healthy and caught up before leadership
    /// returns to it after a failover.
    #[serde(default)]
    pub return_after_ms: Option<u64>,
    /// Bound on a strong write or read, leader changes included; past it, 503.
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
}

impl ConsensusConfig {
    const RTT_MS_DEFAULT: u64 = 250;

    /// The timers this node runs with. `links`: its emulated links, if any.
    pub fn timing(&self, links: Option<&BTreeMap<RegionName, LinkSettings>>) -> mrr_consensus::Timing {
        let slowest = links.and_then(|l| l.values().map(|s| s.delay_ms + s.jitter_ms).max()).map(|one_way| 2 * one_way);
        let rtt_ms = self.rtt_ms.or(slowest).unwrap_or(Self::RTT_MS_DEFAULT);
        let mut t = mrr_consensus::Timing::from_rtt(rtt_ms);
        if let Some(h) = self.heartbeat_ms {
            t.heartbeat_ms = h;
        }
        t.election_min_ms = self.election_min_ms.unwrap_or(t.election_min_ms);
        t.election_max_ms = self.election_max_ms.unwrap_or(t.election_max_ms);
        t.return_after_ms = self.return_after_ms.unwrap_or(t.return_after_ms);
        t.request_timeout_ms = self.request_timeout_ms.unwrap_or(t.request_timeout_ms);
        t
    }
}

/// Lag thresholds of `/health`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default = "default_lag_warn", with = "duration")]
    pub lag_warn: Duration,
    #[serde(default = "default_lag_critical", with = "duration")]
    pub lag_critical: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self { lag_warn: default_lag_warn(), lag_critical: default_lag_critical() }
    }
}

fn default_lag_warn() -> Duration {
    Duration::from_secs(5)
}
fn default_lag_critical() -> Duration {
    Duration::from_secs(30)
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// HTTP API (clients, health, metrics, admin).
    pub api: SocketAddr,
    /// Peer replication (gRPC).
    pub peer: SocketAddr,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            api: SocketAddr::from(([127, 0, 0, 1], DEFAULT_API_PORT)),
            peer: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PEER_PORT)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Coordinator,
    Member,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    pub name: RegionName,
    /// Where peers reach this region's replication listener: `http://host:port`.
    pub endpoint: String,
    /// Where clients reach this region's HTTP API (used by `mrr status` and tools).
    #[serde(default)]
    pub api: Option<String>,
    #[serde(default)]
    pub role: Option<Role>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictStrategy {
    /// Whole-record last-writer-wins on (HLC, region).
    #[default]
    Timestamp,
    /// Per-field last-writer-wins, plus CRDT field operations.
    Merge,
    /// A Rhai handler merges concurrent writes (`handler:` names the script).
    Custom,
}

impl ConflictStrategy {
    /// As written in the config.
    pub fn name(self) -> &'static str {
        match self {
            ConflictStrategy::Timestamp => "timestamp",
            ConflictStrategy::Merge => "merge",
            ConflictStrategy::Custom => "custom",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationRules {
    /// Freshness target: a change not applied in a region after this long is late.
    #[serde(default = "default_ttl", with = "duration")]
    pub default_ttl: Duration,
    #[serde(default)]
    pub conflict_strategy: ConflictStrategy,
    /// Where records live when neither the write nor its topic says: `["*"]`, every region.
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub placement_writes: PlacementWrites,
}

impl Default for ReplicationRules {
    fn default() -> Self {
        Self {
            default_ttl: default_ttl(),
            conflict_strategy: ConflictStrategy::Timestamp,
            regions: Vec::new(),
            placement_writes: PlacementWrites::Refuse,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "d_body")]
    pub body_bytes_max: usize,
    #[serde(default = "d_record")]
    pub record_bytes_max: usize,
    #[serde(default = "d_batch")]
    pub batch_records_max: usize,
    #[serde(default = "d_depth")]
    pub json_depth_max: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            body_bytes_max: d_body(),
            record_bytes_max: d_record(),
            batch_records_max: d_batch(),
            json_depth_max: d_depth(),
        }
    }
}

impl From<&LimitsConfig> for Limits {
    fn from(l: &LimitsConfig) -> Self {
        Limits {
            body_bytes_max: l.body_bytes_max,
            record_bytes_max: l.record_bytes_max,
            batch_records_max: l.batch_records_max,
            json_depth_max: l.json_depth_max,
        }
    }
}

fn d_body() -> usize {
    Limits::default().body_bytes_max
}
fn d_record() -> usize {
    Limits::default().record_bytes_max
}
fn d_batch() -> usize {
    Limits::default().batch_records_max
}
fn d_depth() -> usize {
    Limits::default().json_depth_max
}
fn default_cluster() -> String {
    "mrr".into()
}
fn unresolved_region() -> RegionName {
    // Replaced by the loader before a config is handed out.
    RegionName::new("unresolved").unwrap_or_else(|e| unreachable!("a valid name: {e}"))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./mrr-data")
}
fn default_skew() -> Duration {
    Duration::from_millis(200)
}
fn default_ttl() -> Duration {
    Duration::from_millis(500)
}

/// Durations as the article writes them: `500ms`, `200ms`, `5s`, `1m`.
mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("invalid duration {s:?} ({e}); write it like 500ms, 2s or 1m"))
        })
    }

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// An optional duration written like [`duration`]'s.
mod optional_duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

/// Why a config was refused. Every variant names the file; parse errors carry the line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}\n  hint: {hint}")]
    Parse { path: PathBuf, line: u64, column: u64, message: String, hint: String },
    #[error("{path}:{line}: {message}\n  hint: {hint}")]
    Invalid { path: PathBuf, line: u64, message: String, hint: String },
}

/// What a config is read for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Running a node. Its region: `region` when given (`--region`, `MRR_REGION`), else the
    /// file's `region:`. A secret is required.
    Node { region: Option<RegionName> },
    /// Reading the cluster's layout and rules (`mrr dev -c`, `mrr bench -c`): no region or
    /// secret needed, `https://` endpoints taken as written.
    Cluster,
}

/// What a running node takes up from its changed config file (`Config::reload_live`).
#[derive(Debug)]
pub struct Live {
    pub access: crate::access::Access,
    pub secrets: mrr_replication::secrets::Secrets,
}

impl Config {
    /// A node's config, its region named in the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_for(path, None)
    }

    /// A node's config; `region`, when given, is the node's region whatever the file says.
    pub fn load_for(path: &Path, region: Option<RegionName>) -> Result<Self, ConfigError> {
        let text = Self::read(path)?;
        let mut config = Self::parse_for(path, &text, Purpose::Node { region })?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// What a running node takes up from `path` as it is now (`crate::reload`): the API keys
    /// and the cluster secrets, for a node whose API listens on `api`. Refused as at start-up: a
    /// file that does not parse, an entry that does not resolve (a key or secret file that
    /// cannot be read, an unknown action), a secret shorter than 16 characters, or no keys while
    /// the API listens beyond loopback without `allow_anonymous`. The rest of the file takes
    /// effect at the next start.
    pub fn reload_live(path: &Path, api: std::net::SocketAddr) -> Result<Live, ConfigError> {
        let text = Self::read(path)?;
        let mut config = Self::deserialize(path, &text)?;
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        (config.secret, config.accepted_secrets) = config.resolve_secrets(path, &text, true)?;
        let access = config.build_access(path, &text)?;
        if access.is_open() && !config.allow_anonymous && !api.ip().is_loopback() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                line: line_of(&text, "api_keys:"),
                message: format!("no api_keys left while the API listens on {api}: the keys in use stay"),
                hint: "keep at least one key, or set `allow_anonymous: true`".into(),
            });
        }
        Ok(Live { access, secrets: config.secrets() })
    }

    /// The cluster secret this node proves itself with, and the others it accepts.
    pub fn secrets(&self) -> mrr_replication::secrets::Secrets {
        mrr_replication::secrets::Secrets { current: self.secret.clone(), accepted: self.accepted_secrets.clone() }
    }

    /// A secret `source` of this file, read; `what` names it in the error, found at `key`.
    fn resolve_source(
        &self,
        source: &SecretSource,
        path: &Path,
        text: &str,
        key: &str,
        what: &str,
    ) -> Result<String, ConfigError> {
        source.resolve(&self.base_dir).map_err(|m| ConfigError::Invalid {
            path: path.to_owned(),
            line: line_of(text, key),
            message: format!("{what}: {m}"),
            hint: "set the variable, or fix the path (relative to this file)".to_owned(),
        })
    }

    /// `secret:` and `accept_secrets:`, read and checked. A node needs a secret of at least 16
    /// characters; the cluster layout alone needs none.
    fn resolve_secrets(&self, path: &Path, text: &str, node: bool) -> Result<(String, Vec<String>), ConfigError> {
        let invalid = |key: &str, message: String, hint: &str| ConfigError::Invalid {
            path: path.to_owned(),
            line: line_of(text, key),
            message,
            hint: hint.to_owned(),
        };
        let short = |key: &str, what: &str| {
            invalid(
                key,
                format!("{what} is shorter than 16 characters"),
                "use a long random string, the same on every node (e.g. `openssl rand -hex 32`)",
            )
        };
        let secret = match &self.secret_source {
            Some(source) => self.resolve_source(source, path, text, "secret:", "secret")?,
            None if node => {
                return Err(invalid(
                    "regions:",
                    "no `secret:`: peers could not prove they belong to the cluster".into(),
                    "add `secret: { env: MRR_SECRET }` (the same long random string on every node, e.g. `openssl rand -hex 32`), or `secret: { file: secret.txt }`",
                ))
            }
            None => String::new(),
        };
        if node && secret.len() < 16 {
            return Err(short("secret:", "secret"));
        }
        let mut accepted = Vec::with_capacity(self.accept_secrets.len());
        for (i, source) in self.accept_secrets.iter().enumerate() {
            let what = format!("accept_secrets entry {}", i + 1);
            let other = self.resolve_source(source, path, text, "accept_secrets:", &what)?;
            if node && other.len() < 16 {
                return Err(short("accept_secrets:", &what));
            }
            accepted.push(other);
        }
        Ok((secret, accepted))
    }

    fn deserialize(path: &Path, text: &str) -> Result<Self, ConfigError> {
        serde_saphyr::from_str(text).map_err(|e| {
            let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
            let message = first_line(&e.to_string());
            let hint = parse_hint(&message);
            ConfigError::Parse { path: path.to_owned(), line, column, message, hint }
        })
    }

    /// The cluster's layout and rules only.
    pub fn load_cluster(path: &Path) -> Result<Self, ConfigError> {
        let text = Self::read(path)?;
        Self::parse_for(path, &text, Purpose::Cluster)
    }

    fn read(path: &Path) -> Result<String, ConfigError> {
        read_bounded(path, CONFIG_BYTES_MAX).map_err(|source| ConfigError::Read { path: path.to_owned(), source })
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse_for(path, text, Purpose::Node { region: None })
    }

    pub fn parse_for(path: &Path, text: &str, purpose: Purpose) -> Result<Self, ConfigError> {
        let mut config = Self::deserialize(path, text)?;
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let invalid = |key: &str, message: String, hint: &str| ConfigError::Invalid {
            path: path.to_owned(),
            line: line_of(text, key),
            message,
            hint: hint.to_owned(),
        };
        let node = matches!(purpose, Purpose::Node { .. });
        config.region = match purpose {
            Purpose::Node { region } => region.or_else(|| config.region_in_file.clone()).ok_or_else(|| {
                invalid(
                    "region:",
                    "no region for this node".into(),
                    "pass --region NAME (or set MRR_REGION), or write `region: NAME` in the file",
                )
            })?,
            Purpose::Cluster => config
                .region_in_file
                .clone()
                .or_else(|| config.regions.first().map(|r| r.name.clone()))
                .unwrap_or_else(unresolved_region),
        };
        (config.secret, config.accepted_secrets) = config.resolve_secrets(path, text, node)?;
        config.access = config.build_access(path, text)?;
        config.validate(path, text, node)?;
        if node {
            config.peer_tls = config.load_tls(path, text)?;
        }
        config.policies = Arc::new(config.build_policies(path, text)?);
        Ok(config)
    }

    /// The `tls:` files, checked together for this node's region; `https://` endpoints need
    /// them, and a node with them dials only `https://` endpoints.
    fn load_tls(&self, path: &Path, text: &str) -> Result<Option<mrr_replication::PeerTls>, ConfigError> {
        let invalid = |message: String, hint: &str| ConfigError::Invalid {
            path: path.to_owned(),
            line: line_of(text, "tls:"),
            message,
            hint: hint.to_owned(),
        };
        let https = self.regions.iter().filter(|r| r.endpoint.starts_with("https://")).count();
        let Some(tls) = &self.tls else {
            if https > 0 {
                return Err(invalid(
                    "https:// endpoints need `tls:` (this region's certificate, its key and the cluster CA)".into(),
                    "make them with `mrr certs -c <this file> --out certs`, then add `tls: { cert: certs/<region>.pem, key: certs/<region>.key, ca: certs/ca.pem }`",
                ));
            }
            return Ok(None);
        };
        if https != self.regions.len() {
            return Err(invalid(
                "with `tls:`, every region's endpoint must be https:// (a plain one would carry replication in clear)"
                    .into(),
                "write every endpoint as https://host:port",
            ));
        }
        let paths = mrr_tls::TlsPaths {
            cert: self.base_dir.join(&tls.cert),
            key: self.base_dir.join(&tls.key),
            ca: self.base_dir.join(&tls.ca),
        };
        let live = mrr_tls::LiveTls::load(paths, self.region.as_str(), mrr_tls::UnixTime::now())
            .map_err(|e| invalid(e.to_string(), "fix the file named above; `mrr certs` makes a matching set"))?;
        Ok(Some(live))
    }

    /// The keys of `api_keys`, hashed, with their scopes.
    fn build_access(&self, path: &Path, text: &str) -> Result<crate::access::Access, ConfigError> {
        use crate::access::{Action, KeyDigest, Scope, TopicPattern};
        let mut keys = Vec::new();
        for (i, entry) in self.api_keys.iter().enumerate() {
            let invalid = |message: String, hint: &str| ConfigError::Invalid {
                path: path.to_owned(),
                line: line_of(text, "api_keys:"),
                message: format!("api_keys entry {}: {message}", i + 1),
                hint: hint.to_owned(),
            };
            let spec = match entry {
                ApiKeyEntry::Plain(key) => {
                    if key.trim().is_empty() {
                        return Err(invalid("an empty key".into(), "make keys with `mrr keys create`"));
                    }
                    let digest = KeyDigest::of(key);
                    let name = format!("key-{}", &digest.to_string()[7..15]);
                    keys.push((digest, Scope::full(name)));
                    continue;
                }
                ApiKeyEntry::Scoped(value) => serde_json::from_value::<ScopedKey>(value.clone()).map_err(|e| {
                    invalid(
                        e.to_string(),
                        "a key has `name`, `hash` (or `key`), `actions`, and optionally `topics`, `regions` and `expires`; `mrr keys create` prints one",
                    )
                })?,
            };
            let digest = match (&spec.hash, &spec.key) {
                (Some(h), None) => {
                    KeyDigest::parse(h).map_err(|m| invalid(m, "copy the hash `mrr keys create` printed"))?
                }
                (None, Some(source)) => {
                    let key =
                        source.resolve(&self.base_dir).map_err(|m| invalid(m, "set the variable, or fix the path"))?;
                    if key.trim().is_empty() {
                        return Err(invalid("the key is empty".into(), "set the variable to the key"));
                    }
                    KeyDigest::of(&key)
                }
                _ => {
                    return Err(invalid(
                        "name exactly one of `hash` and `key`".into(),
                        "`hash: sha256:...` as `mrr keys create` prints it, or `key: { env: VAR }`",
                    ))
                }
            };
            let actions = spec
                .actions
                .iter()
                .map(|a| Action::parse(a))
                .collect::<Result<std::collections::BTreeSet<_>, _>>()
                .map_err(|m| invalid(m, "actions: [read, write, admin]"))?;
            if actions.is_empty() {
                return Err(invalid("no actions".into(), "actions: [read] at least"));
            }
            let topics = spec
                .topics
                .clone()
                .unwrap_or_else(|| vec!["*".into()])
                .iter()
                .map(|t| TopicPattern::parse(t))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| invalid(m, "topics: [users, \"orders/*\"]"))?;
            let regions = match &spec.regions {
                None => None,
                Some(names) => {
                    let mut set = std::collections::BTreeSet::new();
                    for n in names {
                        let r = RegionName::new(n.as_str()).ok().filter(|r| self.regions.iter().any(|c| &c.name == r));
                        set.insert(r.ok_or_else(|| {
                            invalid(format!("region {n:?} is not in `regions`"), "name regions of this cluster")
                        })?);
                    }
                    Some(set)
                }
            };
            let expires_ms = match &spec.expires {
                None => None,
                Some(at) => {
                    let t = humantime::parse_rfc3339(at).map_err(|e| {
                        invalid(format!("expires {at:?}: {e}"), "write an RFC 3339 instant, e.g. 2027-06-30T00:00:00Z")
                    })?;
                    let ms = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
                    Some(u64::try_from(ms).unwrap_or(u64::MAX))
                }
            };
            let name = spec.name.clone().unwrap_or_else(|| format!("key-{}", &digest.to_string()[7..15]));
            if keys.iter().any(|(d, _)| d == &digest) {
                return Err(invalid(format!("key {name:?} is listed twice"), "list each key once"));
            }
            keys.push((digest, Scope { name, actions, topics, regions, expires_ms }));
        }
        Ok(crate::access::Access::new(keys))
    }

    fn validate(&self, path: &Path, text: &str, node: bool) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String, hint: &str| ConfigError::Invalid {
            path: path.to_owned(),
            line: line_of(text, key),
            message,
            hint: hint.to_owned(),
        };
        if self.cluster.trim().is_empty() {
            return Err(invalid("cluster:", "cluster is empty".into(), "name the cluster, e.g. `cluster: shop-prod`"));
        }
        if node && self.access.is_open() && !self.allow_anonymous && !self.listen.api.ip().is_loopback() {
            return Err(invalid(
                "api:",
                format!(
                    "the API listens on {} with no api_keys: anyone who reaches it could read, write and delete everything",
                    self.listen.api
                ),
                "add a key (`mrr keys create --actions read,write,admin`), listen on 127.0.0.1, or set `allow_anonymous: true`",
            ));
        }
        if self.regions.is_empty() {
            return Err(invalid("regions:", "no regions".into(), "list every region of the cluster under `regions:`"));
        }
        // (https:// endpoints without `tls:` get their own, more precise error below.)
        let plain_peers = self.regions.len() > 1 && self.regions.iter().all(|r| !r.endpoint.starts_with("https://"));
        if node && self.tls.is_none() && plain_peers && !self.insecure_plaintext {
            return Err(invalid(
                "regions:",
                "without `tls:`, peers would replicate in clear (records, keys forwarded between regions, the strong tier's votes)".into(),
                "make certificates with `mrr certs -c <this file> --out certs`, add `tls: { cert: certs/<region>.pem, key: certs/<region>.key, ca: certs/ca.pem }` and write endpoints as https://; or, on a private network or in tests, say `insecure_plaintext: true`",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in &self.regions {
            if r.name.as_str() == mrr_core::strong::STRONG_ORIGIN {
                return Err(invalid(
                    &format!("name: {}", r.name),
                    format!(
                        "a region cannot be named {:?}: that name is the strong tier's changelog stream",
                        r.name.as_str()
                    ),
                    "rename the region",
                ));
            }
            if !seen.insert(&r.name) {
                return Err(invalid(
                    &format!("name: {}", r.name),
                    format!("region {} is listed twice", r.name),
                    "each region appears once",
                ));
            }
            validate_endpoint(&r.endpoint, node && self.tls.is_none()).map_err(|m| {
                invalid(
                    &format!("endpoint: {}", r.endpoint),
                    m,
                    "write endpoints as https://host:port with `tls:`, or http://host:port on a private network (port defaults to 7801)",
                )
            })?;
        }
        if !seen.contains(&self.region) {
            return Err(invalid(
                "region:",
                format!(
                    "region {} is not in `regions` (listed: {})",
                    self.region,
                    self.regions.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
                "name one of the listed regions with --region (MRR_REGION) or `region:`",
            ));
        }
        let coordinators = self.regions.iter().filter(|r| r.role == Some(Role::Coordinator)).count();
        if coordinators > 1 {
            return Err(invalid(
                "role: coordinator",
                "more than one region has role: coordinator".into(),
                "mark exactly one region as the initial coordinator",
            ));
        }
        if let Some(links) = &self.links {
            for peer in links.keys() {
                if peer == &self.region || !seen.contains(peer) {
                    return Err(invalid(
                        "links:",
                        format!("link to {peer}, which is not a peer of {}", self.region),
                        "list links only to the other regions",
                    ));
                }
            }
        }
        if self.limits.body_bytes_max < self.limits.record_bytes_max
            || self.limits.batch_records_max == 0
            || self.limits.json_depth_max == 0
        {
            return Err(invalid(
                "limits:",
                "limits are inconsistent".into(),
                "body_bytes_max must be >= record_bytes_max; batch_records_max and json_depth_max must be positive",
            ));
        }
        if self.limits.record_bytes_max > mrr_core::limits::RECORD_BYTES_MAX_ALLOWED {
            return Err(invalid(
                "record_bytes_max:",
                format!(
                    "limits.record_bytes_max {} is above {}: a change carrying such a record might not fit one peer message ({} bytes)",
                    self.limits.record_bytes_max,
                    mrr_core::limits::RECORD_BYTES_MAX_ALLOWED,
                    mrr_core::limits::PEER_MESSAGE_BYTES_MAX
                ),
                "set limits.record_bytes_max to 8388608 (8 MiB) or less",
            ));
        }
        if self.health.lag_warn >= self.health.lag_critical {
            return Err(invalid(
                "lag_warn:",
                "health.lag_warn is not below health.lag_critical".into(),
                "warn earlier than critical, e.g. lag_warn: 5s and lag_critical: 30s",
            ));
        }
        Ok(())
    }

    /// Compiles the topic policies; an unusable handler stops start-up here, naming the topic's
    /// line in the config and the handler's own file, line and column.
    fn build_policies(&self, path: &Path, text: &str) -> Result<Policies, ConfigError> {
        let invalid = |key: &str, message: String, hint: &str| ConfigError::Invalid {
            path: path.to_owned(),
            line: line_of(text, key),
            message,
            hint: hint.to_owned(),
        };
        let default = match self.replication_rules.conflict_strategy {
            ConflictStrategy::Timestamp => Rule::Timestamp,
            ConflictStrategy::Merge => Rule::Merge,
            ConflictStrategy::Custom => {
                return Err(invalid(
                    "conflict_strategy:",
                    "replication_rules.conflict_strategy cannot be custom".into(),
                    "a handler belongs to a topic: set `conflict_strategy: custom` and `handler:` under `topics:`",
                ))
            }
        };
        let mut topics = BTreeMap::new();
        let mut strong = Vec::new();
        let mut functions = BTreeMap::new();
        let mut bounded = BTreeMap::new();
        for (topic, t) in &self.topics {
            let at = format!("{topic}:");
            mrr_core::limits::validate_topic(topic).map_err(|e| {
                invalid(&at, format!("topic {topic:?}: {e}"), "topic names are letters, digits, - and _")
            })?;
            // Escrow counters are fields of a merge document.
            let strategy = match t.conflict_strategy {
                None if !t.bounded.is_empty() => ConflictStrategy::Merge,
                given => given.unwrap_or(self.replication_rules.conflict_strategy),
            };
            if !t.bounded.is_empty() {
                if t.consistency == TopicConsistency::Strong {
                    return Err(invalid(
                        &at,
                        format!("topic {topic} is consistency: strong and declares bounded fields"),
                        "a strong topic never oversells already (its writes are ordered by the log): remove `bounded:`, or make the topic eventual",
                    ));
                }
                if strategy != ConflictStrategy::Merge {
                    return Err(invalid(
                        &at,
                        format!("topic {topic} declares bounded fields under conflict_strategy {}", strategy.name()),
                        "bounded fields are escrow counters of a merge document: set `conflict_strategy: merge`, or leave it out",
                    ));
                }
                for name in t.bounded.keys() {
                    if name.is_empty() || name.starts_with("__") {
                        return Err(invalid(
                            &at,
                            format!("topic {topic}: bounded field name {name:?} is not valid"),
                            "name a field of the record, e.g. bounded: { available: { min: 0 } }",
                        ));
                    }
                }
                bounded.insert(topic.clone(), t.bounded.iter().map(|(f, b)| (f.clone(), b.min)).collect());
            }
            let rule = match (strategy, &t.handler) {
                (ConflictStrategy::Custom, Some(handler)) => {
                    let file = self.base_dir.join(handler);
                    let source =
                        read_script(&file).map_err(|e| invalid(&at, e, "fix the path (relative to this file)"))?;
                    let compiled = mrr_handler::RhaiHandler::compile(
                        &file.display().to_string(),
                        &source,
                        mrr_handler::Limits::default(),
                    )
                    .map_err(|e| {
                        invalid(&at, e.to_string(), "fix the script; it must define fn resolve(current, incoming)")
                    })?;
                    Rule::Custom(Arc::new(compiled))
                }
                (ConflictStrategy::Custom, None) => {
                    return Err(invalid(
                        &at,
                        format!("topic {topic} has conflict_strategy: custom but no handler"),
                        "add `handler: handlers/<name>.rhai` (relative to this config file)",
                    ))
                }
                (other, Some(_)) => {
                    return Err(invalid(
                        &at,
                        format!("topic {topic} names a handler but its conflict_strategy is {}", other.name()),
                        "set `conflict_strategy: custom`, or remove `handler:`",
                    ))
                }
                (ConflictStrategy::Timestamp, None) => Rule::Timestamp,
                (ConflictStrategy::Merge, None) => Rule::Merge,
            };
            if t.consistency == TopicConsistency::Strong {
                if t.conflict_strategy.is_some_and(|c| c != ConflictStrategy::Timestamp) {
                    return Err(invalid(
                        &at,
                        format!("topic {topic} is consistency: strong and names conflict_strategy {}", strategy.name()),
                        "a strong topic's writes are ordered by its log, so there are no conflicts to resolve: remove `conflict_strategy:`",
                    ));
                }
                if t.regions.is_some() {
                    return Err(invalid(
                        &at,
                        format!("topic {topic} is consistency: strong and names regions"),
                        "strong records live in every region (each holds the log): remove `regions:`",
                    ));
                }
                let mut named = BTreeMap::new();
                for (name, file) in &t.functions {
                    let valid = !name.is_empty()
                        && name.len() <= 64
                        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                    if !valid {
                        return Err(invalid(
                            &at,
                            format!("topic {topic}: function name {name:?} is not valid"),
                            "name functions with 1-64 characters from a-z, 0-9 and _",
                        ));
                    }
                    let file = self.base_dir.join(file);
                    let source =
                        read_script(&file).map_err(|e| invalid(&at, e, "fix the path (relative to this file)"))?;
                    let f = mrr_handler::RhaiFunction::compile(
                        &file.display().to_string(),
                        &source,
                        mrr_handler::Limits::default(),
                    )
                    .map_err(|e| {
                        invalid(&at, e.to_string(), "fix the script; it must define fn update(current, args)")
                    })?;
                    named.insert(name.clone(), Arc::new(f) as Arc<dyn mrr_core::strong::UpdateFunction>);
                }
                if !named.is_empty() {
                    functions.insert(topic.clone(), named);
                }
                strong.push(topic.clone());
                topics.insert(topic.clone(), Rule::Timestamp);
                continue;
            }
            if !t.functions.is_empty() {
                return Err(invalid(
                    &at,
                    format!("topic {topic} declares functions but is not consistency: strong"),
                    "update functions run in the strong tier's state machine: add `consistency: strong`, or remove `functions:`",
                ));
            }
            topics.insert(topic.clone(), rule);
        }
        let lanes = self.build_lanes(&invalid)?;
        let placement = self.build_placement(&invalid)?;
        if self.dlq.max_entries == 0 {
            return Err(invalid(
                "max_entries:",
                "dlq.max_entries is 0".into(),
                "bound the dead-letter queue with a positive size, e.g. dlq: { max_entries: 100000 }",
            ));
        }
        if let Some(window) = self.retention.window.filter(|w| *w < RETENTION_WINDOW_MIN) {
            return Err(invalid(
                "window:",
                format!(
                    "retention.window {} is shorter than {}: a region is known to be away only once its streams have timed out, so it would be let go before anyone noticed it left",
                    humantime::format_duration(window),
                    humantime::format_duration(RETENTION_WINDOW_MIN),
                ),
                "give an away region at least as long as an outage you want it to ride out from the log, e.g. retention: { window: 24h }",
            ));
        }
        let scrub = self.anti_entropy.interval;
        if !scrub.is_zero() && scrub < SCRUB_INTERVAL_MIN {
            return Err(invalid(
                "interval:",
                format!(
                    "anti_entropy.interval {} is shorter than {}: every scrub re-reads every record",
                    humantime::format_duration(scrub),
                    humantime::format_duration(SCRUB_INTERVAL_MIN),
                ),
                "scrub every few hours, e.g. anti_entropy: { interval: 6h }, or turn it off with interval: 0s and run `mrr repair` when needed",
            ));
        }
        if self.retention.changelog_bytes_max.is_some() && self.retention.window.is_none() {
            return Err(invalid(
                "changelog_bytes_max:",
                "retention.changelog_bytes_max without a retention.window: an away region is let go by time, or sooner by bytes".into(),
                "add a window, e.g. retention: { window: 24h, changelog_bytes_max: 8589934592 }",
            ));
        }
        if self.conflict_log.max_entries == 0 {
            return Err(invalid(
                "max_entries:",
                "conflict_log.max_entries is 0".into(),
                "keep at least one entry, e.g. 100000",
            ));
        }
        let placement_secret = match &self.placement_secret {
            Some(source) => self.resolve_source(source, path, text, "placement_secret:", "placement_secret")?,
            None => self.secret.clone(),
        };
        let mut policies = Policies::new(default, topics)
            .with_lanes(lanes)
            .with_placement(placement)
            .with_strong(strong)
            .with_functions(functions)
            .with_bounded(bounded);
        policies.sealer = mrr_core::Sealer::new(&self.cluster, &placement_secret);
        Ok(policies)
    }

    /// The forwarder: of writes for the topics `placement_writes: forward` names (or all),
    /// and of `read_your_writes` reads with `fallback=forward`.
    pub fn forwarder(&self) -> Result<crate::forward::Forwarder, crate::forward::ForwarderError> {
        let all = self.replication_rules.placement_writes == PlacementWrites::Forward;
        let with = |w: PlacementWrites| {
            self.topics.iter().filter(move |(_, t)| t.placement_writes == Some(w)).map(|(n, _)| n.clone()).collect()
        };
        let topics: std::collections::BTreeSet<String> = with(PlacementWrites::Forward);
        let apis = self
            .regions
            .iter()
            .filter(|r| r.name != self.region)
            .filter_map(|r| Some((r.name.to_string(), r.api.clone()?)))
            .collect();
        let rights = self
            .topics
            .iter()
            .flat_map(|(t, p)| {
                p.bounded
                    .iter()
                    .filter(|(_, b)| b.on_insufficient == OnInsufficient::Forward)
                    .map(|(f, _)| (t.clone(), f.clone()))
            })
            .collect();
        // The CA as loaded: a CA that changes needs a restart (certificates it signs do not).
        let ca = self.peer_tls.as_ref().map(|t| t.current().ca_pem.clone());
        crate::forward::Forwarder::new(
            apis,
            all,
            topics,
            with(PlacementWrites::Refuse),
            rights,
            ca.as_deref().map(str::as_bytes),
        )
    }

    fn build_placement(
        &self,
        invalid: &dyn Fn(&str, String, &str) -> ConfigError,
    ) -> Result<PlacementDefaults, ConfigError> {
        let cluster: Vec<RegionName> = self.regions.iter().map(|r| r.name.clone()).collect();
        let check = |regions: &[String]| match mrr_core::placement::unknown_region(regions, &cluster) {
            Some(r) => Err(invalid(
                r,
                format!("placement names region {r:?}, which is not in `regions`"),
                "name regions listed under `regions:`, or \"*\" for all of them",
            )),
            None => Ok(()),
        };
        check(&self.replication_rules.regions)?;
        let mut topics = BTreeMap::new();
        for (topic, t) in &self.topics {
            if let Some(regions) = &t.regions {
                check(regions)?;
                topics.insert(topic.clone(), regions.clone());
            }
        }
        Ok(PlacementDefaults { default: self.replication_rules.regions.clone(), topics })
    }

    fn build_lanes(&self, invalid: &dyn Fn(&str, String, &str) -> ConfigError) -> Result<LaneRules, ConfigError> {
        let defaults = LaneRules::default();
        let mut flags = BTreeMap::new();
        for lane in Lane::ALL {
            let given = match lane {
                Lane::Urgent => &self.lanes.urgent,
                Lane::Normal => &self.lanes.normal,
                Lane::Bulk => &self.lanes.bulk,
            };
            let list: Vec<String> = match given {
                Some(list) => list.clone(),
                None => defaults.flags.iter().filter(|(_, l)| **l == lane).map(|(f, _)| f.clone()).collect(),
            };
            for flag in list {
                if let Some(other) = flags.insert(flag.clone(), lane) {
                    return Err(invalid(
                        &flag,
                        format!("sync flag {flag} is mapped to lanes {other} and {lane}"),
                        "list each flag under one lane only (a list under `lanes:` replaces that lane's defaults)",
                    ));
                }
            }
        }
        if self.lanes.queue_delay_target.is_zero() {
            return Err(invalid(
                "queue_delay_target:",
                "lanes.queue_delay_target is 0".into(),
                "give the lower lanes some room, e.g. 25ms",
            ));
        }
        let topics = self.topics.iter().filter_map(|(t, c)| Some((t.clone(), c.lane?))).collect();
        Ok(LaneRules { flags, topics })
    }

    pub fn coordinator(&self) -> Option<&RegionName> {
        self.regions.iter().find(|r| r.role == Some(Role::Coordinator)).map(|r| &r.name)
    }

    pub fn peers(&self) -> impl Iterator<Item = &RegionConfig> {
        self.regions.iter().filter(|r| r.name != self.region)
    }
}

/// Normalises a peer endpoint to what the transport dials.
pub fn peer_url(endpoint: &str) -> String {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("http", endpoint));
    let host = rest.trim_end_matches('/');
    if host.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{DEFAULT_PEER_PORT}")
    }
}

/// `plain_node`: the endpoint is dialed by this process without `tls:`.
fn validate_endpoint(endpoint: &str, plain_node: bool) -> Result<(), String> {
    match endpoint.split_once("://") {
        Some(("http", rest)) if !rest.is_empty() => Ok(()),
        Some(("https", rest)) if !rest.is_empty() && !plain_node => Ok(()),
        Some(("https", _)) => Err(format!(
            "endpoint {endpoint} is https:// but the config has no `tls:` (make certificates with `mrr certs`, then add `tls: {{ cert, key, ca }}`)"
        )),
        _ => Err(format!("endpoint {endpoint:?} is not an http:// URL")),
    }
}

/// The parser's message without its own `error: line L column C:` prefix (we print our own).
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s).trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    match line.strip_prefix("line ").and_then(|rest| rest.split_once(": ")) {
        Some((_, message)) => message.to_owned(),
        None => line.to_owned(),
    }
}

fn parse_hint(message: &str) -> String {
    if message.contains("unknown field") {
        "remove the key or fix its spelling; every key is documented in examples/mrr-config.yaml".into()
    } else if message.contains("missing field") {
        "add the required key; see examples/mrr-config.yaml".into()
    } else if message.contains("unknown variant") {
        "use one of the values listed above".into()
    } else {
        "see examples/mrr-config.yaml for the expected shape".into()
    }
}

/// 1-based line of the first line containing `needle`, for errors found after parsing.
fn line_of(text: &str, needle: &str) -> u64 {
    text.lines().position(|l| l.contains(needle)).map(|i| i as u64 + 1).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"cluster: demo
region: us-west
secret: "0123456789abcdef0123"
regions:
  - name: ap-northeast
    endpoint: http://127.0.0.1:7801
    role: coordinator
  - name: us-west
    endpoint: http://127.0.0.1:7811
  - name: eu-central
    endpoint: http://127.0.0.1:7821
replication_rules:
  default_ttl: 500ms
  conflict_strategy: timestamp
insecure_plaintext: true
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("mrr-config.yaml"), text)
    }

    /// The article's `mrr-config.yaml`, as the article writes it.
    const ARTICLE: &str = include_str!("../../../examples/article/mrr-config.yaml");

    #[test]
    fn the_articles_config_reads_as_written() {
        let path = Path::new("mrr-config.yaml");
        let c = Config::parse_for(path, ARTICLE, Purpose::Cluster).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.cluster.as_str(), c.regions.len()), ("mrr", 3), "cluster has a default");
        assert_eq!(c.coordinator().map(RegionName::as_str), Some("ap-northeast"));
        assert_eq!(c.replication_rules.default_ttl, Duration::from_millis(500));
        assert_eq!(c.regions[1].endpoint, "https://sfo-node.mrr");
        // Run as a node, the file names neither the node's region nor the secret: each error
        // says where to give it.
        let tokyo = || Purpose::Node { region: Some(RegionName::new("ap-northeast").expect("valid")) };
        let err = Config::parse_for(path, ARTICLE, Purpose::Node { region: None }).expect_err("no region").to_string();
        assert!(err.contains("no region for this node") && err.contains("--region"), "{err}");
        let err = Config::parse_for(path, ARTICLE, tokyo()).expect_err("no secret").to_string();
        assert!(err.contains("no `secret:`") && err.contains("env: MRR_SECRET"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("secret.txt"), "0123456789abcdef0123\n").expect("write");
        let with_secret = format!("secret: {{ file: secret.txt }}\n{ARTICLE}");
        let err = Config::parse_for(&dir.path().join("c.yaml"), &with_secret, tokyo()).expect_err("https").to_string();
        assert!(err.contains("has no `tls:`") && err.contains("mrr certs"), "{err}");
        // With the certificates `mrr certs` makes for the article's regions, the file runs a node.
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).expect("mkdir");
        let ca = mrr_tls::make_ca("mrr", mrr_tls::VALIDITY_DEFAULT).expect("ca");
        std::fs::write(certs.join("ca.pem"), &ca.cert_pem).expect("write");
        for r in ["ap-northeast", "us-west"] {
            let issued = mrr_tls::make_region(&ca, r, &[], mrr_tls::VALIDITY_DEFAULT).expect("issue");
            std::fs::write(certs.join(format!("{r}.pem")), &issued.cert_pem).expect("write");
            std::fs::write(certs.join(format!("{r}.key")), &issued.key_pem).expect("write");
        }
        let with_tls = format!(
            "tls: {{ cert: certs/ap-northeast.pem, key: certs/ap-northeast.key, ca: certs/ca.pem }}\n{with_secret}"
        );
        let c = Config::parse_for(&dir.path().join("c.yaml"), &with_tls, tokyo()).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.peer_tls.is_some());
        // Another region's certificate does not serve Tokyo.
        let crossed = with_tls.replace(
            "certs/ap-northeast.pem, key: certs/ap-northeast.key",
            "certs/us-west.pem, key: certs/us-west.key",
        );
        let err =
            Config::parse_for(&dir.path().join("c.yaml"), &crossed, tokyo()).expect_err("not Tokyo's").to_string();
        assert!(
            err.contains("c.yaml:1:")
                && err.contains("us-west.pem is not accepted")
                && err.contains("ap-northeast.regions.mrr"),
            "{err}"
        );
        // With `tls:`, no endpoint may be plain.
        let mixed = with_tls.replacen("https://sfo-node.mrr", "http://sfo-node.mrr", 1);
        let err = Config::parse_for(&dir.path().join("c.yaml"), &mixed, tokyo()).expect_err("plain").to_string();
        assert!(err.contains("every region's endpoint must be https://"), "{err}");
        let plain = format!("{}insecure_plaintext: true\n", with_secret.replace("https://", "http://"));
        let c = Config::parse_for(&dir.path().join("c.yaml"), &plain, tokyo()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (c.region.as_str(), c.secret.as_str()),
            ("ap-northeast", "0123456789abcdef0123"),
            "secret read from its file"
        );
        let err = Config::parse_for(path, &plain.replace("secret.txt", "missing.txt"), tokyo())
            .expect_err("no file")
            .to_string();
        assert!(err.contains("missing.txt: cannot read"), "{err}");
        let err = Config::parse_for(path, &plain.replace("secret.txt", "/dev/zero"), tokyo())
            .expect_err("endless")
            .to_string();
        assert!(err.contains("/dev/zero: cannot read: larger than 65536 bytes"), "{err}");
        let sydney = Purpose::Node { region: Some(RegionName::new("ap-southeast").expect("valid")) };
        let err = Config::parse_for(&dir.path().join("c.yaml"), &plain, sydney).expect_err("not listed").to_string();
        assert!(err.contains("ap-southeast is not in `regions` (listed: ap-northeast, us-west, eu-central)"), "{err}");
    }

    #[test]
    fn keys_are_checked_field_by_field_and_an_open_api_stays_on_loopback() {
        let with = |extra: &str| parse(&format!("{GOOD}{extra}"));
        let digest = crate::access::KeyDigest::of("k");
        let ok =
            with(&format!("api_keys:\n  - {{ name: web, hash: \"{digest}\", actions: [read], topics: [users] }}\n"))
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(!ok.access.is_open());
        for (entry, says) in [
            (format!("{{ hash: \"{digest}\", actions: [wirte] }}"), "unknown action \"wirte\""),
            (format!("{{ hash: \"{digest}\", actions: [read], topics: [\"us*ers\"] }}"), "may only end a pattern"),
            ("{ hash: \"sha256:00\", actions: [read] }".to_owned(), "is not a key digest"),
            (format!("{{ hash: \"{digest}\", actoins: [read] }}"), "unknown field `actoins`"),
            ("{ actions: [read] }".to_owned(), "exactly one of `hash` and `key`"),
            (
                format!("{{ hash: \"{digest}\", actions: [read], regions: [sa-east] }}"),
                "\"sa-east\" is not in `regions`",
            ),
            (format!("{{ hash: \"{digest}\", actions: [read], expires: soon }}"), "expires \"soon\""),
        ] {
            let err = with(&format!("api_keys:\n  - {entry}\n")).expect_err(says).to_string();
            assert!(
                err.contains("mrr-config.yaml:") && err.contains("api_keys entry 1") && err.contains(says),
                "{err}"
            );
        }
        let plain = GOOD.replace("insecure_plaintext: true\n", "");
        let err = parse(&plain).expect_err("plain peers").to_string();
        assert!(err.contains("peers would replicate in clear") && err.contains("insecure_plaintext: true"), "{err}");
        assert!(
            Config::parse_for(Path::new("c.yaml"), &plain, Purpose::Cluster).is_ok(),
            "a layout has no peers to protect"
        );
        let err = with("listen: { api: 0.0.0.0:7800, peer: 0.0.0.0:7801 }\n").expect_err("open").to_string();
        assert!(err.contains("no api_keys") && err.contains("allow_anonymous"), "{err}");
        with("listen: { api: 0.0.0.0:7800, peer: 0.0.0.0:7801 }\nallow_anonymous: true\n").expect("said so");
    }

    #[test]
    fn article_shape_parses_with_defaults() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.region.as_str(), "us-west");
        assert_eq!(c.max_clock_skew, Duration::from_millis(200));
        assert_eq!(c.replication_rules.default_ttl, Duration::from_millis(500));
        assert_eq!(c.coordinator().map(|r| r.as_str()), Some("ap-northeast"));
        assert_eq!(c.peers().count(), 2);
        assert_eq!(c.durability, Durability::Fsync);
        assert_eq!(c.listen.api.port(), 7800);
    }

    #[test]
    fn bounded_fields_make_a_merge_topic_and_refuse_what_cannot_hold_an_escrow_counter() {
        let c = parse(&format!("{GOOD}topics:\n  inventory: {{ bounded: {{ available: {{ min: 0 }} }} }}\n"))
            .expect("the issue's shape");
        assert_eq!(c.policies.bound_of("inventory", "available"), Some(0));
        assert_eq!(c.policies.rule("inventory").name(), "merge", "bounded implies merge");
        let other = parse(&format!("{GOOD}topics:\n  inventory: {{ bounded: {{ available: {{ min: -5 }} }} }}\n"))
            .expect("a negative bound is a bound");
        assert_ne!(c.policies.digest(), other.policies.digest(), "regions with other bounds refuse each other");
        let refused =
            |topic: &str| parse(&format!("{GOOD}topics:\n  inventory: {topic}\n")).expect_err("refused").to_string();
        assert!(refused("{ consistency: strong, bounded: { a: { min: 0 } } }").contains("remove `bounded:`"));
        assert!(refused("{ conflict_strategy: timestamp, bounded: { a: { min: 0 } } }")
            .contains("conflict_strategy: merge"));
        assert!(refused("{ bounded: { a: { min: 0, max: 9 } } }").contains("unknown field"));
        assert!(refused("{ bounded: { __x: { min: 0 } } }").contains("not valid"));
    }

    #[test]
    fn strong_topics_are_in_the_digest_and_refuse_what_does_not_apply_to_them() {
        let c = parse(&format!("{GOOD}topics:\n  stock: {{ consistency: strong }}\n")).expect("valid");
        assert!(c.policies.is_strong("stock") && !c.policies.is_strong("users"));
        let eventual = parse(&format!("{GOOD}topics:\n  stock: {{ consistency: eventual }}\n")).expect("valid");
        assert_ne!(c.policies.digest(), eventual.policies.digest(), "regions that disagree refuse each other");
        let refused =
            |topic: &str| parse(&format!("{GOOD}topics:\n  stock: {topic}\n")).expect_err("refused").to_string();
        assert!(refused("{ consistency: strong, conflict_strategy: merge }").contains("no conflicts to resolve"));
        assert!(refused("{ consistency: strong, regions: [us-west] }").contains("every region"));
        assert!(refused("{ functions: { f: x.rhai } }").contains("consistency: strong"));
        assert!(refused("{ consistency: strong, functions: { F: x.rhai } }").contains("not valid"));
        let named = GOOD.replace("name: eu-central", "name: strong");
        assert!(parse(&named).expect_err("reserved").to_string().contains("strong tier"));
    }

    #[test]
    fn unknown_key_names_file_line_and_hint() {
        let text = GOOD.replace("replication_rules:\n", "replication_rules:\n  conflict_stratgy: timestamp\n");
        let err = parse(&text).expect_err("unknown key").to_string();
        assert!(err.starts_with("mrr-config.yaml:13:3: unknown field"), "{err}");
        assert!(err.contains("conflict_stratgy") && err.contains("hint:"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_their_line() {
        let err = parse(&GOOD.replace("500ms", "soon")).expect_err("bad duration").to_string();
        assert!(err.starts_with("mrr-config.yaml:13:16: invalid duration") && err.contains("500ms"), "{err}");
        let err = parse(&GOOD.replace("conflict_strategy: timestamp", "conflict_strategy: newest"))
            .expect_err("bad enum")
            .to_string();
        assert!(err.starts_with("mrr-config.yaml:14:") && err.contains("newest"), "{err}");
        let err = parse(&GOOD.replace("name: eu-central", "name: EU")).expect_err("bad region").to_string();
        assert!(err.starts_with("mrr-config.yaml:10:"), "{err}");
    }

    #[test]
    fn inconsistent_settings_are_refused() {
        let err = parse(&GOOD.replace("region: us-west", "region: sa-east")).expect_err("not listed").to_string();
        assert!(err.contains("mrr-config.yaml:2:") && err.contains("sa-east"), "{err}");
        let err = parse(&GOOD.replace("0123456789abcdef0123", "short")).expect_err("short secret").to_string();
        assert!(err.contains("mrr-config.yaml:3:"), "{err}");
        let err =
            parse(&GOOD.replace("http://127.0.0.1:7821", "https://frankfurt-node.mrr")).expect_err("tls").to_string();
        assert!(err.contains("has no `tls:`"), "{err}");
        let twice = GOOD.replace("name: eu-central", "name: us-west");
        assert!(parse(&twice).expect_err("duplicate").to_string().contains("listed twice"));
    }

    #[test]
    fn the_documented_example_is_valid() {
        // Loaded from where it lives, so its handler paths resolve as a user's would.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/mrr-config.yaml");
        let c = Config::load(&path).unwrap_or_else(|e| panic!("the example config must stay valid: {e}"));
        assert_eq!(c.regions.len(), 3);
        assert_eq!(c.api_keys.len(), 1);
        assert!(!c.access.is_open());
        assert_eq!(c.policies.rule("inventory").name(), "custom", "the sample handlers compile");
        assert_eq!(c.policies.placement.regions_of("vip_users"), ["eu-central", "us-west"]);
        assert_eq!(c.policies.placement.regions_of("users"), ["*"]);
    }

    #[test]
    fn placement_defaults_name_regions_of_the_cluster() {
        let c = parse(&format!("{GOOD}topics:\n  vips: {{ regions: [eu-central, us-west] }}\n")).expect("valid");
        assert_eq!(c.policies.placement.regions_of("vips"), ["eu-central", "us-west"]);
        assert!(c.policies.placement.regions_of("users").is_empty(), "every region by default");
        let err = parse(&format!("{GOOD}topics:\n  vips: {{ regions: [eu-centrl] }}\n")).expect_err("typo").to_string();
        assert!(
            err.contains("mrr-config.yaml:") && err.contains("eu-centrl") && err.contains("not in `regions`"),
            "{err}"
        );
    }

    #[test]
    fn lanes_map_flags_and_topics_and_refuse_a_flag_in_two_lanes() {
        let meta = |flags: &[&str]| mrr_core::Metadata {
            regions: vec![],
            sync_flags: flags.iter().map(|f| f.to_string()).collect(),
        };
        let c = parse(GOOD).expect("valid");
        let lanes = &c.policies.lanes;
        assert_eq!(lanes.lane_of("stock", &meta(&["SYNC_PRIORITY=1"])), Lane::Urgent, "the article's flag by default");
        assert_eq!(lanes.lane_of("stock", &meta(&["IMPORTANT"])), Lane::Urgent);
        assert_eq!(lanes.lane_of("stock", &meta(&["TIER_1"])), Lane::Normal);

        let text = format!(
            "{GOOD}lanes:\n  urgent: [TIER_1]\n  queue_delay_target: 10ms\ntopics:\n  audit: {{ lane: bulk }}\n"
        );
        let c = parse(&text).expect("valid");
        let lanes = &c.policies.lanes;
        assert_eq!(lanes.lane_of("users", &meta(&["TIER_1"])), Lane::Urgent);
        assert_eq!(lanes.lane_of("users", &meta(&["IMPORTANT"])), Lane::Normal, "the list replaced urgent's defaults");
        assert_eq!(lanes.lane_of("audit", &meta(&[])), Lane::Bulk);
        assert_eq!(lanes.lane_of("audit", &meta(&["TIER_1"])), Lane::Urgent, "a flag outranks the topic");
        assert_eq!(c.lanes.queue_delay_target, Duration::from_millis(10));

        let err = parse(&format!("{GOOD}lanes:\n  urgent: [BULK]\n")).expect_err("twice").to_string();
        assert!(err.contains("mrr-config.yaml:") && err.contains("BULK") && err.contains("one lane only"), "{err}");
        let err = parse(&format!("{GOOD}topics:\n  audit: {{ lane: fast }}\n")).expect_err("bad lane").to_string();
        assert!(err.starts_with("mrr-config.yaml:17:") && err.contains("fast"), "{err}");
    }

    #[test]
    fn peer_urls_get_the_default_port() {
        assert_eq!(peer_url("http://tokyo-node.mrr"), "http://tokyo-node.mrr:7801");
        assert_eq!(peer_url("http://127.0.0.1:7811/"), "http://127.0.0.1:7811");
    }

    #[test]
    fn topic_policies_build_rules_and_refuse_what_cannot_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("mrr-config.yaml");
        std::fs::create_dir(dir.path().join("handlers")).expect("mkdir");
        std::fs::write(dir.path().join("handlers/ok.rhai"), "fn resolve(current, incoming) { incoming }")
            .expect("write");
        std::fs::write(dir.path().join("handlers/broken.rhai"), "fn resolve(current, incoming) {\n  let = 1;\n}")
            .expect("write");
        let with = |topics: &str| Config::parse(&config_path, &format!("{GOOD}topics:\n{topics}"));

        let c = with("  profiles: { conflict_strategy: merge }\n  inventory: { conflict_strategy: custom, handler: handlers/ok.rhai }\n")
            .expect("valid");
        assert_eq!(c.policies.rule("profiles").name(), "merge");
        assert_eq!(c.policies.rule("inventory").name(), "custom");
        assert_eq!(c.policies.rule("users").name(), "timestamp", "unlisted topics use replication_rules");
        assert!(c.policies.digest().contains("inventory=custom:"), "{}", c.policies.digest());

        let err = with("  inventory: { conflict_strategy: custom, handler: handlers/broken.rhai }\n")
            .expect_err("syntax error")
            .to_string();
        assert!(err.contains("mrr-config.yaml:17") && err.contains("broken.rhai:2:"), "{err}");
        let err = with("  inventory: { conflict_strategy: custom, handler: handlers/missing.rhai }\n")
            .expect_err("missing file")
            .to_string();
        assert!(err.contains("missing.rhai") && err.contains("cannot read"), "{err}");
        let err = with("  inventory: { conflict_strategy: custom, handler: /dev/zero }\n")
            .expect_err("endless file")
            .to_string();
        assert!(err.contains("cannot read script /dev/zero: larger than 1048576 bytes"), "{err}");
        let err = with("  inventory: { conflict_strategy: custom }\n").expect_err("no handler").to_string();
        assert!(err.contains("no handler"), "{err}");
        let err = with("  inventory: { conflict_strategy: merge, handler: handlers/ok.rhai }\n")
            .expect_err("stray")
            .to_string();
        assert!(err.contains("set `conflict_strategy: custom`"), "{err}");
        let err = with("  inventory: { conflict_strategy: crdt }\n").expect_err("unknown strategy").to_string();
        assert!(err.contains("mrr-config.yaml:17:") && err.contains("crdt"), "{err}");
        let err =
            with("  inventory: { conflict_strategy: merge, colour: blue }\n").expect_err("unknown key").to_string();
        assert!(err.contains("colour"), "{err}");
        let err = parse(&GOOD.replace("conflict_strategy: timestamp", "conflict_strategy: custom"))
            .expect_err("custom default")
            .to_string();
        assert!(err.contains("cannot be custom"), "{err}");
    }

    #[test]
    fn the_scrub_runs_every_six_hours_unless_told_otherwise_and_never_more_than_once_a_minute() {
        assert_eq!(parse(GOOD).expect("valid").anti_entropy.interval, Duration::from_secs(6 * 3600));
        let c = parse(&format!("{GOOD}anti_entropy: {{ interval: 0s }}\n")).expect("off");
        assert!(c.anti_entropy.interval.is_zero());
        let err = parse(&format!("{GOOD}anti_entropy:\n  interval: 5s\n")).expect_err("too often").to_string();
        assert!(err.contains("shorter than 1m") && err.contains("mrr-config.yaml:"), "{err}");
    }

    #[test]
    fn a_retention_window_is_optional_and_longer_than_a_peer_timeout() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(
            (c.retention.window, c.retention.changelog_bytes_max),
            (None, None),
            "no region is let go by default"
        );
        let c = parse(&format!("{GOOD}retention: {{ window: 24h, changelog_bytes_max: 1000000 }}\n")).expect("valid");
        assert_eq!(c.retention.window, Some(Duration::from_secs(24 * 3600)));
        assert_eq!(c.retention.changelog_bytes_max, Some(1_000_000));
        let err = parse(&format!("{GOOD}retention:\n  window: 2s\n")).expect_err("too short").to_string();
        assert!(err.contains("mrr-config.yaml:") && err.contains("shorter than 10s"), "{err}");
        let err =
            parse(&format!("{GOOD}retention: {{ changelog_bytes_max: 5 }}\n")).expect_err("no window").to_string();
        assert!(err.contains("without a retention.window"), "{err}");
    }
}
