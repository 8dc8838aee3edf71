//! MRR API types: the JSON the HTTP API speaks and the stable error codes, shared by the server
//! and the clients so both sides agree by construction. No behaviour lives here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Metadata that travels with a record (`__metadata` in a published record).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordMetadata {
    /// Regions the record may live in; `["*"]` means all.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Flags such as `IMPORTANT`, `TIER_1`, `SYNC_PRIORITY=1`.
    #[serde(default)]
    pub sync_flags: Vec<String>,
}

/// A version: HLC timestamp and the region that wrote it. `hlc` sorts like the version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VersionInfo {
    /// `<wall_ms>.<logical>`, fixed width.
    pub hlc: String,
    pub wall_ms: u64,
    pub logical: u32,
    pub region: String,
}

/// The read-your-writes token of a write: the change `(origin, lane, seq)` that produced a
/// state. Sequences are per origin and lane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WriteToken {
    pub origin: String,
    /// The priority lane the write travelled in: `urgent`, `normal` or `bulk`.
    pub lane: String,
    pub seq: u64,
}

/// A record as stored in one region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RecordEnvelope {
    pub topic: String,
    pub id: String,
    /// The JSON object; `null` for a deleted record (listed only with `include_deleted`).
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
    pub deleted: bool,
    #[serde(rename = "__metadata")]
    pub metadata: RecordMetadata,
    pub version: VersionInfo,
    /// Region where the surviving write was made.
    pub origin_region: String,
    /// Wall-clock time of the surviving write at its origin (ms since the Unix epoch).
    pub updated_at_ms: u64,
    pub token: WriteToken,
    /// Writes this region has admitted (its applied vector counts them) whose content has not
    /// reached it yet: writes concurrent with a move that just placed the record here, asked of
    /// their origins. A read-your-writes check holds out while its token is listed here.
    /// Omitted when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lacking: Vec<WriteToken>,
}

/// One operation of a batch publish.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    pub topic: String,
    /// `put` (default) or `delete`.
    #[serde(default)]
    pub op: BatchOp,
    /// Required for `delete`; for `put` the record's own `id` is used when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// The record for `put`, with optional `__metadata`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub record: Option<serde_json::Value>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchOp {
    #[default]
    Put,
    Delete,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchRequest {
    pub items: Vec<BatchItem>,
}

/// All items of a batch commit together, or none do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<RecordEnvelope>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RecordList {
    pub records: Vec<RecordEnvelope>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next_after: Option<String>,
}

/// Stable machine-readable error codes. New codes may be added; existing ones keep their meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    NotAnObject,
    MissingId,
    IdMismatch,
    InvalidTopic,
    InvalidId,
    InvalidMetadata,
    BodyTooLarge,
    RecordTooLarge,
    BatchTooLarge,
    TooDeep,
    UnsupportedMediaType,
    NotFound,
    Deleted,
    /// Sent by releases before scoped keys for a missing or unknown key; now
    /// `unauthenticated` (401) or `forbidden` (403).
    Unauthorized,
    LinksDisabled,
    UnknownRegion,
    StorageUnavailable,
    /// A CRDT operation is malformed (unknown `op`, missing `field`, `by` not an integer...).
    InvalidOps,
    /// The request does not fit the topic's conflict strategy (e.g. CRDT ops on `timestamp`).
    StrategyMismatch,
    /// No dead letter with that id (replayed, discarded, or never failed here).
    DeadLetterNotFound,
    InvalidQuery,
    /// Read of a record whose `__metadata.regions` excludes this region (404).
    NotPlaced,
    /// Write in a region outside the record's placement (409).
    NotPlacedHere,
    /// A move of a record this region is still completing: it lacks the content of writes made
    /// concurrently with an earlier move (409; retry, or move it from another region).
    PlacementPending,
    /// `placement_writes: forward`: the region the write was forwarded to did not answer (502).
    ForwardFailed,
    /// The path exists, the method does not (405).
    MethodNotAllowed,
    /// This node's clock is too far ahead of its peers' for its writes to replicate (503).
    ClockSkew,
    /// `?consistency=strong` or an atomic update on a topic that is not `consistency: strong`
    /// (400): there is no linearizable answer to give.
    NotStrong,
    /// The strong tier has no quorum (or lost it while the request waited): the write was not
    /// acknowledged (503). When the message says the outcome is unknown, it may still apply;
    /// retrying with the same `request_id` is safe.
    StrongQuorumUnavailable,
    /// An atomic update's `if` did not hold; `current` is the record as it is (409).
    PreconditionFailed,
    /// An atomic update's `if` does not parse, or is too deep or too large (400).
    InvalidCondition,
    /// An order comparison (`gt`, `gte`, ...) met a field of another type (422).
    ConditionTypeMismatch,
    /// An atomic update's `then` cannot apply to the record (`incr` of a string...) (422).
    InvalidUpdate,
    /// An atomic update without `request_id` (400).
    MissingRequestId,
    /// A `request_id` used before for a different request (409).
    RequestIdReused,
    /// `?consistency=` names no level this node serves (400).
    InvalidConsistency,
    /// `__metadata.regions` on a strong topic, whose records live in every region (400).
    StrongPlacement,
    /// A batch mixing strong and eventual topics (400): they commit by different paths.
    MixedConsistency,
    /// An atomic update names a `function` its topic does not declare (400).
    UnknownFunction,
    /// A session token (`x-mrr-session`, `?session=`) does not decode, is too large, or names
    /// another cluster (400).
    InvalidSessionToken,
    /// `consistency=read_your_writes` without a session token (400).
    MissingSessionToken,
    /// The region did not come to hold the session's writes within `wait_ms` (504); `missing`
    /// says which streams it lacks.
    SessionNotReached,
    /// `consistency=bounded` without a valid `max_staleness_ms` (1 ms to 1 day) (400).
    InvalidStaleness,
    /// The region's copy could not be shown fresh within `max_staleness_ms` in time (504).
    StalenessNotMet,
    /// `wait_ms` outside 0 to 60,000 (400).
    InvalidWait,
    /// `?ack=` is not `local`, `quorum`, `all` or a region count, or its wait is out of range
    /// (400).
    InvalidAck,
    /// `?ack=` asks for more regions than the cluster has, or for a region whose link is cut by
    /// an operator (409); nothing was written.
    AckUnreachable,
    /// The write is applied and durable here but not yet in as many regions as `?ack=` asked
    /// within the wait (504); it is not undone. `acked_by` lists the regions that have it.
    AckTimeout,
    /// A topic with `throttle_when_lag_critical` refuses writes while a region's lag is past
    /// `health.lag_critical` (503, `Retry-After`).
    LagCritical,
    /// A decrement of a bounded field beyond the rights this region holds (409); nothing was
    /// applied. The region has asked for more: `retry_after_ms` says when to try again.
    InsufficientRights,
    /// A bounded field written by `put`, `patch` or an operation other than `incr` (409);
    /// nothing was applied.
    BoundedField,
    /// An increment would take a counter past its range (409); nothing was applied.
    CounterOverflow,
    /// No valid API key: none sent, unknown, expired, or not valid in this region (401).
    Unauthenticated,
    /// The key is valid but its scope does not cover the request (403): the message names the
    /// missing action or records.
    Forbidden,
    /// `POST /v1/regions`: a region of that name is a member already (409); nothing changed.
    RegionExists,
    /// `POST /v1/regions`: the name or the endpoint is not valid (400); nothing changed.
    InvalidRegion,
    /// `POST /v1/regions`: the new region's peer endpoint does not answer as that region of
    /// this cluster (502); nothing changed.
    EndpointUnreachable,
    /// Removing or losing the cluster's last member region (409); nothing changed.
    LastRegion,
    /// `DELETE /v1/regions/{name}`: records are placed only in that region (409), which would
    /// lose them; move them first. Nothing changed.
    PlacedOnlyThere,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// `precondition_failed`: the record as it is (absent when it does not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Box<RecordEnvelope>>,
    /// `session_not_reached`: the streams this region has not applied far enough.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<StreamProgress>,
    /// `ack_timeout`: the regions that hold the write durably (this one included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acked_by: Vec<String>,
    /// `insufficient_rights`: when rights asked for may have arrived (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// `insufficient_rights`: the units this region holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<u64>,
    /// `insufficient_rights`: a region this one knows to hold enough rights for the decrement
    /// (the richest), where it can be made at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

/// How far a region has applied one stream, against what a session needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StreamProgress {
    /// `<origin>` or `<origin>.<lane>`.
    pub stream: String,
    pub applied: u64,
    pub needed: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// `ok`, `warn` or `critical`, in that order of severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
    Warn,
    Critical,
}

/// Health of this node and of its replication from each other region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// The worst of the regions' statuses and the node's own warnings (`ok` when all are).
    pub status: HealthStatus,
    /// Changes waiting in the dead-letter queue; any makes the status at least `warn`.
    pub dead_letters: u64,
    /// Node-level reasons for a status that is not `ok` (per-region reasons are below).
    pub warnings: Vec<String>,
    pub region: String,
    pub lag_warn_ms: u64,
    pub lag_critical_ms: u64,
    /// `replication_rules.default_ttl`.
    pub freshness_target_ms: u64,
    pub regions: Vec<RegionHealth>,
}

/// How current this node's copy of one region's writes is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegionHealth {
    pub region: String,
    pub status: HealthStatus,
    /// Freshness lag: now minus the peer's clock when this node last held all it had; while
    /// never caught up, the time since this node started.
    pub lag_ms: u64,
    /// Lag beyond `default_ttl`.
    pub beyond_freshness_target: bool,
    pub outbound_connected: bool,
    pub inbound_connected: bool,
    /// Why the status is not `ok`.
    pub reason: Option<String>,
}

/// State of a peer as this node sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PeerStatus {
    pub region: String,
    pub endpoint: String,
    /// Our stream to the peer: `connecting`, `connected` or `backoff`.
    pub outbound: String,
    pub last_error: Option<String>,
    pub rtt_ms: Option<u64>,
    /// Peer clock minus ours, from the last handshake.
    pub clock_skew_ms: Option<i64>,
    /// What the peer acknowledged applying, per origin.
    pub acked: BTreeMap<String, u64>,
    /// Changes the peer still needs from this node.
    pub backlog_changes: u64,
    /// Live streams from the peer to this node.
    pub inbound_streams: u32,
    /// Lag of the last change applied from this peer's stream: applied time minus origin time.
    pub lag_ms_last: Option<u64>,
    /// Median and 99th percentile of the last 1,024 lags from this peer, in ms.
    pub lag_ms_p50: Option<u64>,
    pub lag_ms_p99: Option<u64>,
    /// How stale this node's copy of the peer's writes may be: now minus the peer's clock when
    /// this node was last known to hold everything the peer had. Grows when the stream stalls,
    /// even with no traffic (heartbeats prove freshness while idle).
    pub freshness_lag_ms: Option<u64>,
    /// Changes received from this peer per second, over the last 10 s.
    pub received_per_s: f64,
    pub changes_received: u64,
    pub changes_sent: u64,
    pub handshakes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeStatus {
    pub cluster: String,
    pub region: String,
    /// The region configured with `role: coordinator`.
    pub coordinator: Option<String>,
    /// Version vector applied here: per origin, the highest contiguous sequence.
    pub applied: BTreeMap<String, u64>,
    /// The stable point: what every region of the cluster has durably applied, as this region
    /// knows it. Nothing below it can still be overtaken by a change that had not seen it;
    /// retention collects only below it.
    #[serde(default)]
    pub stable: BTreeMap<String, u64>,
    /// Records that left this region's placement while its logs (changelog, conflict log,
    /// dead letters) still name them in clear: erased once no region can need them from here
    /// (`docs/placement.md`). As of the last collection pass.
    #[serde(default)]
    pub departures: u64,
    /// Below which the changelog is truncated: the stable point, or past it the point over the
    /// regions that are not lagging (`retention.window`).
    #[serde(default)]
    pub truncation_point: BTreeMap<String, u64>,
    /// Regions away past `retention.window`: the changelog is truncated without them, and they
    /// come back through a snapshot of a peer.
    #[serde(default)]
    pub lagging: Vec<String>,
    /// Regions away (silent past the peer timeout) that hold changelog truncation back, with
    /// how long each has been away, in milliseconds.
    #[serde(default)]
    pub retention_held_by: BTreeMap<String, u64>,
    pub storage_bytes: u64,
    pub peers: Vec<PeerStatus>,
    /// The strong tier's coordinator as this region knows it.
    pub consensus: CoordinatorInfo,
}

/// `GET /v1/cluster/coordinator`: the coordinator (the strong tier's Raft leader) as this region
/// knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CoordinatorInfo {
    /// `null` while no leader is known (an election is under way, or no quorum is reachable).
    pub coordinator: Option<String>,
    pub term: u64,
    /// The region with `role: coordinator`, which leadership returns to after a failover.
    pub preferred: Option<String>,
    /// When this region learned of the current coordinator (its clock, ms since the epoch).
    pub since_ms: Option<u64>,
    /// Coordinator changes this region has seen since it started.
    pub leader_changes: u64,
    /// Whether this region is the coordinator.
    pub is_local: bool,
}

/// One line of `GET /v1/watch/applied`: the applied version vector after a commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppliedEvent {
    pub applied: BTreeMap<String, u64>,
    /// This node's wall clock when the event was sent.
    pub wall_ms: u64,
}

/// An emulated link from this node to a peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkSettings {
    /// One-way delay added to every message.
    #[serde(default)]
    pub delay_ms: u64,
    /// Random extra delay up to this much (order is kept).
    #[serde(default)]
    pub jitter_ms: u64,
    /// Hold every message until the partition is lifted.
    #[serde(default)]
    pub partitioned: bool,
    /// Cap on the link's throughput in bytes per second; 0 is unlimited.
    #[serde(default)]
    pub bandwidth_bytes_per_s: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LinksView {
    pub enabled: bool,
    /// By peer region.
    pub links: BTreeMap<String, LinkSettings>,
}

/// One side of a conflict: a write, its version and what it wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConflictSide {
    /// The change id, `<origin>-<seq>`.
    pub change: String,
    pub version: VersionInfo,
    /// What it wrote: the record (`timestamp`, `custom`), `null` for a delete or when only
    /// fields are concerned (`merge`, see `fields`).
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
}

/// A write that lost to a concurrent write (or, under `custom`, was merged with one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConflictView {
    pub topic: String,
    pub id: String,
    /// `timestamp`, `merge` or `custom`.
    pub strategy: String,
    /// `last_writer_wins`, `field_last_writer_wins`, `handler_merged` or `delete_won`.
    pub resolution: String,
    pub loser: ConflictSide,
    pub winner: ConflictSide,
    /// Under `merge`: the fields the loser lost.
    pub fields: Vec<String>,
    /// When this region saw the conflict (ms since the Unix epoch).
    pub detected_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConflictList {
    /// Oldest first.
    pub conflicts: Vec<ConflictView>,
    /// Pass as `since` for the next page; absent on the last page. Pages end between two
    /// detection times where they can; a page of entries that all share one millisecond
    /// with the next cannot, and `since` would then repeat some: `next_cursor` never does.
    pub next_since: Option<u64>,
    /// Pass as `cursor` for the next page (exact: nothing repeated, nothing skipped); absent
    /// on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A change this region admitted but could not apply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterView {
    /// The change id, `<origin>-<seq>`: the same in every region.
    pub id: String,
    pub topic: String,
    pub record_id: String,
    pub version: VersionInfo,
    pub reason: String,
    /// The change's record (`null` for a delete).
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
    pub failed_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterList {
    /// In id order.
    pub dead_letters: Vec<DeadLetterView>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
    /// Letters in the queue, and its bound (`dlq.max_entries`).
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub max_entries: u64,
}

/// `POST /v1/repair`: compare this region's records with its peers' and repair what differs
/// (anti-entropy).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepairRequest {
    /// Compare with this region only; absent: with every peer (needed to settle two different
    /// copies of one change by majority).
    #[serde(default)]
    pub peer: Option<String>,
    /// Compare these topics only; empty: every topic.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Find and report the differences, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a repair found and did with one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PeerRepair {
    pub peer: String,
    /// Records compared: those both regions hold in clear, as each side counted them.
    pub records_here: u64,
    pub records_there: u64,
    /// Buckets (of 4,096) whose sums differed.
    pub buckets_differing: u64,
    /// Keys held differently (capped at 100,000 per run; `truncated` says so).
    pub keys_differing: u64,
    pub truncated: bool,
    /// The first 100 keys held differently.
    pub differing: Vec<String>,
    /// Per verdict (`repaired`, `covered`, `in_flight`, `placement_differs`, `unresolved`,
    /// `skipped`), what this region did with the peer's copies, and the peer with this one's.
    pub here: BTreeMap<String, u64>,
    pub there: BTreeMap<String, u64>,
    /// Keys repaired here and there (the first 100 of each).
    pub repaired_here: Vec<String>,
    pub repaired_there: Vec<String>,
    /// Keys left different: two copies of one change and no majority to choose (the first 100).
    pub unresolved: Vec<String>,
    /// Why the comparison with this peer stopped, when it did.
    pub error: Option<String>,
    pub elapsed_ms: u64,
    /// Bytes of the messages sent to and received from the peer (trees, entries, states).
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RepairReport {
    pub region: String,
    pub dry_run: bool,
    pub peers: Vec<PeerRepair>,
}

/// A region of the cluster, as `GET /v1/regions` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegionInfo {
    pub name: String,
    /// `joining` (added, installing a snapshot and catching up), `active`, `removed` or `lost`.
    pub state: String,
    /// Its peer listener.
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// The membership epoch that admitted it (0: an original member).
    pub incarnation: u64,
    /// The epoch of its last change of state.
    pub since_epoch: u64,
    /// Whether it votes in the strong tier's group now (a joining region becomes a voter once
    /// active and caught up with the log).
    pub voter: bool,
    /// The replication stream from the answering region to it (`connected`, `connecting`, ...);
    /// absent for the answering region itself and for regions that left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Changes the answering region has applied that it has not durably applied yet, as its
    /// last ack said; absent before its first ack (while it installs its snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behind_changes: Option<u64>,
    /// What the answering region has sent of the last snapshot it served this region: records
    /// and bytes, and whether it sent all of it (a joining region's install, from its donor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_sent: Option<SnapshotSent>,
}

/// A snapshot served, as far as it went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotSent {
    pub records: u64,
    pub bytes: u64,
    pub done: bool,
}

/// `GET /v1/regions` and the answer to a membership change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegionsReport {
    /// The region that answered.
    pub region: String,
    /// Membership changes applied since the configs' regions (0: none).
    pub epoch: u64,
    pub regions: Vec<RegionInfo>,
}

/// `POST /v1/regions`: a region to add.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AddRegionRequest {
    pub name: String,
    /// Its peer listener, `http://host:port` (or `https://` with TLS).
    pub endpoint: String,
    /// Its HTTP API, for forwarding and `mrr region status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
}
