//! The HTTP API: the article's verbs over JSON.
//!
//! Validates every request before anything reaches the writer: a request that is refused
//! (malformed JSON, not an object, missing id, bad names, oversize, too deep) gets a 4xx with a
//! stable code and stores nothing. Handlers translate; they hold no replication logic.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use mrr_api::{
    BatchOp, BatchRequest, BatchResponse, ErrorBody, ErrorCode, ErrorDetail, Health, LinkSettings, LinksView,
    NodeStatus, RecordEnvelope, RecordList, RecordMetadata, VersionInfo, WriteToken,
};
use mrr_core::limits::{validate_topic, Limits};
use mrr_core::{Key, Record, RegionName, Version};
use mrr_replication::link::LinkError;
use mrr_replication::{LinkSpec, Links, StatusBoard};
use mrr_storage::Store;
use mrr_writer::{Committed, LocalOp, Rejection, WriteError, Writer};
use serde::Deserialize;
use serde_json::Value;
use utoipa::OpenApi;

use crate::access::Action;
use crate::gate::Caller;
use crate::read_levels::{before_read, lacks_named, Before, LevelQuery, ReadLevel};
pub(crate) use crate::request::{body_bytes, json_body, json_error, parse_key, parse_ops};
use crate::request::{encode_record, parse_put, parse_put_value, split_record};
use crate::write_acks::{WriteOptions, Written};

/// Everything handlers need.
#[derive(Clone)]
pub struct AppState {
    pub cluster: String,
    pub region: RegionName,
    /// The cluster's regions as the strong tier decided (`crate::membership`): what
    /// `__metadata.regions` may name, and how many regions `ack=all` waits for.
    pub membership: mrr_replication::membership::LiveMembership,
    /// Proposes membership changes.
    pub proposer: crate::membership::Proposer,
    /// The replication settings (probing a region being added).
    pub replication: Arc<mrr_replication::ReplicationConfig>,
    /// Topic placement defaults (a region they name alone cannot be removed).
    pub placement_defaults: Arc<mrr_core::PlacementDefaults>,
    pub coordinator: Option<String>,
    pub store: Arc<dyn Store>,
    /// Names the records not placed here (`mrr_core::seal`): reads find their placement by it.
    pub sealer: mrr_core::Sealer,
    pub writer: Writer,
    pub limits: Limits,
    pub status: StatusBoard,
    pub links: Links,
    /// The API keys and their scopes (`crate::gate` checks every request against them).
    pub access: Arc<crate::access::LiveAccess>,
    /// `/health` and `/metrics` need a key too.
    pub require_key_for_monitoring: bool,
    pub clock: Arc<dyn mrr_core::PhysicalClock>,
    pub started: std::time::Instant,
    pub health: crate::health::Thresholds,
    pub metrics: crate::metrics::ServerMetrics,
    pub replication_metrics: mrr_replication::metrics::ReplicationMetrics,
    /// How to reach the other regions' APIs: `placement_writes: forward`, and
    /// `read_your_writes` reads with `fallback=forward`.
    pub forwarder: Arc<crate::forward::Forwarder>,
    /// Whether the node takes writes now (clock, writer).
    pub admission: Arc<crate::admission::Admission>,
    /// `dlq.max_entries`.
    pub dlq_max_entries: u64,
    /// This region's voter in the strong tier's group: the coordinator, strong writes and
    /// linearizable reads.
    pub consensus: mrr_consensus::Consensus,
    /// Topics with `consistency: strong`.
    pub strong_topics: Arc<std::collections::BTreeSet<String>>,
    /// Names of the strong topics' update functions, by topic.
    pub functions: Arc<BTreeMap<String, std::collections::BTreeSet<String>>>,
    /// Topics with `throttle_when_lag_critical`.
    pub throttled_topics: Arc<std::collections::BTreeSet<String>>,
    /// Runs anti-entropy on demand (`POST /v1/repair`).
    pub repairer: mrr_replication::Repairer,
}

impl AppState {
    /// The member regions: what `__metadata.regions` may name.
    pub(crate) fn region_names(&self) -> Vec<RegionName> {
        self.membership.borrow().members().map(|(r, _)| r.clone()).collect()
    }

    /// Active member regions: what `ack=all` counts.
    pub(crate) fn active_regions(&self) -> usize {
        self.membership.borrow().active().count()
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("cluster", &self.cluster).field("region", &self.region).finish_non_exhaustive()
    }
}

/// An API error: HTTP status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    /// `not_placed_here`: where the record lives (`x-mrr-placed-in`), for forwarding.
    placed_in: Option<axum::http::HeaderValue>,
    /// `precondition_failed`: the record as it is.
    pub(crate) current: Option<Box<RecordEnvelope>>,
    /// What a few codes add (boxed: most errors carry none of it).
    extra: Option<Box<ErrorExtra>>,
}

/// Details of a few error codes.
#[derive(Debug, Default)]
pub(crate) struct ErrorExtra {
    /// `session_not_reached`: what this region lacks.
    pub missing: Vec<mrr_api::StreamProgress>,
    /// `ack_timeout`: the regions that hold the write.
    pub acked_by: Vec<String>,
    /// `lag_critical`: when to try again (`Retry-After`).
    pub retry_after_s: Option<u64>,
    /// `insufficient_rights`: when to try again, and the units held here.
    pub retry_after_ms: Option<u64>,
    pub held: Option<u64>,
    /// `insufficient_rights`: the field, and a region known to hold enough of its rights.
    pub rights_field: Option<String>,
    pub holder: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), placed_in: None, current: None, extra: None }
    }

    /// This error with the details `f` fills in.
    pub(crate) fn with_extra(mut self, f: impl FnOnce(&mut ErrorExtra)) -> Self {
        f(self.extra.get_or_insert_with(Box::default));
        self
    }

    pub(crate) fn message_text(&self) -> &str {
        &self.message
    }

    pub(crate) fn bad(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let extra = self.extra.map(|e| *e).unwrap_or_default();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                current: self.current,
                missing: extra.missing,
                acked_by: extra.acked_by,
                retry_after_ms: extra.retry_after_ms,
                held: extra.held,
                holder: extra.holder,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(v) = self.placed_in {
            response.headers_mut().insert(crate::forward::PLACED_IN, v);
        }
        if let Some(s) = extra.retry_after_s {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(s));
        }
        response
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match &e {
            WriteError::Rejected(r @ Rejection::OpsNeedMerge { .. }) => {
                Self::new(StatusCode::CONFLICT, ErrorCode::StrategyMismatch, r.to_string())
            }
            WriteError::Rejected(r @ Rejection::NoSuchDeadLetter(_)) => {
                Self::new(StatusCode::NOT_FOUND, ErrorCode::DeadLetterNotFound, r.to_string())
            }
            WriteError::Rejected(r @ Rejection::NotPlacedHere { regions, .. }) => Self {
                placed_in: crate::forward::placed_in_header(regions),
                ..Self::new(StatusCode::CONFLICT, ErrorCode::NotPlacedHere, r.to_string())
            },
            WriteError::Rejected(r @ Rejection::PlacementPending { .. }) => {
                Self::new(StatusCode::CONFLICT, ErrorCode::PlacementPending, r.to_string())
            }
            WriteError::Rejected(r @ Rejection::InsufficientRights { field, held, holder, .. }) => {
                // The rights asked for arrive about one round trip later; the handler sets
                // `retry_after_ms` from the links (`rights_retry_ms`).
                let (held, field, holder) = (*held, field.clone(), holder.as_ref().map(ToString::to_string));
                Self::new(StatusCode::CONFLICT, ErrorCode::InsufficientRights, r.to_string()).with_extra(|x| {
                    x.held = Some(held);
                    x.rights_field = Some(field);
                    x.holder = holder;
                })
            }
            WriteError::Rejected(r @ Rejection::BoundedField { .. }) => {
                Self::new(StatusCode::CONFLICT, ErrorCode::BoundedField, r.to_string())
            }
            WriteError::Rejected(r @ Rejection::CounterOverflow { .. }) => {
                Self::new(StatusCode::CONFLICT, ErrorCode::CounterOverflow, r.to_string())
            }
            WriteError::Rejected(r @ Rejection::StrongTopic { .. }) => {
                Self::bad(ErrorCode::MixedConsistency, r.to_string())
            }
            WriteError::Storage(_) | WriteError::Stopped | WriteError::Failed(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::StorageUnavailable, e.to_string())
            }
        }
    }
}

impl From<mrr_storage::StoreError> for ApiError {
    fn from(e: mrr_storage::StoreError) -> Self {
        tracing::error!(error = %e, "storage read failed");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::StorageUnavailable, e.to_string())
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// `Query<T>` whose refusal is the API's JSON error (`invalid_query`), not axum's plain text.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(q)) => Ok(Self(q)),
            Err(e) => Err(ApiError::bad(ErrorCode::InvalidQuery, format!("{}; see /openapi.json", e.body_text()))),
        }
    }
}

fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "this path does not take that method; see /openapi.json",
    )
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "MRR — Multi-Region Replicator",
        description = "Publish and query replicated JSON records in any region."
    ),
    paths(
        health,
        metrics,
        watch_applied,
        publish,
        put_record,
        patch_record,
        record_ops,
        crate::strong::atomic,
        get_record,
        delete_record,
        crate::review::list_conflicts,
        crate::review::list_dead_letters,
        crate::review::replay_dead_letter,
        crate::review::discard_dead_letter,
        list_records,
        batch,
        node_status,
        cluster_coordinator,
        get_links,
        get_link,
        set_link,
        crate::repair::repair,
        crate::membership::list,
        crate::membership::add,
        crate::membership::remove,
        crate::membership::lost
    ),
    components(schemas(
        RecordEnvelope,
        RecordMetadata,
        VersionInfo,
        WriteToken,
        ErrorBody,
        ErrorDetail,
        ErrorCode,
        BatchRequest,
        BatchResponse,
        mrr_api::BatchItem,
        BatchOp,
        RecordList,
        Health,
        mrr_api::RegionHealth,
        mrr_api::HealthStatus,
        NodeStatus,
        mrr_api::CoordinatorInfo,
        mrr_api::PeerStatus,
        LinkSettings,
        LinksView,
        mrr_api::AppliedEvent,
        mrr_api::ConflictSide,
        mrr_api::ConflictView,
        mrr_api::ConflictList,
        mrr_api::DeadLetterView,
        mrr_api::DeadLetterList,
        mrr_api::RepairRequest,
        mrr_api::RepairReport,
        mrr_api::RegionsReport,
        mrr_api::RegionInfo,
        mrr_api::SnapshotSent,
        mrr_api::AddRegionRequest,
        mrr_api::PeerRepair
    ))
)]
struct ApiDoc;

pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

pub fn router(state: AppState) -> Router {
    let body_max = state.limits.body_bytes_max;
    let v1 = Router::new()
        .route("/records/{topic}", post(publish).get(list_records))
        .route("/records/{topic}/{id}", put(put_record).patch(patch_record).get(get_record).delete(delete_record))
        .route("/records/{topic}/{id}/ops", post(record_ops))
        .route("/records/{topic}/{id}/atomic", post(crate::strong::atomic))
        .route("/conflicts", get(crate::review::list_conflicts))
        .route("/dlq", get(crate::review::list_dead_letters))
        .route("/dlq/{id}", axum::routing::delete(crate::review::discard_dead_letter))
        .route("/dlq/{id}/replay", post(crate::review::replay_dead_letter))
        .route("/batch", post(batch))
        .route("/repair", post(crate::repair::repair))
        .route("/regions", get(crate::membership::list).post(crate::membership::add))
        .route("/regions/{name}", axum::routing::delete(crate::membership::remove))
        .route("/regions/{name}/lost", post(crate::membership::lost))
        .route("/status", get(node_status))
        .route("/cluster/coordinator", get(cluster_coordinator))
        .route("/watch/applied", get(watch_applied))
        .route("/admin/links", get(get_links))
        .route("/admin/links/{peer}", get(get_link).put(set_link))
        .method_not_allowed_fallback(|| async { method_not_allowed() })
        .layer(middleware::from_fn_with_state(state.clone(), crate::gate::authenticate));
    let monitoring = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), crate::gate::monitoring));
    Router::new()
        .merge(monitoring)
        .route("/openapi.json", get(|| async { ([("content-type", "application/json")], openapi_json()) }))
        .nest("/v1", v1)
        .layer(middleware::from_fn_with_state(state.clone(), crate::forward::forward_placement))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such endpoint; see /openapi.json")
        })
        .method_not_allowed_fallback(|| async { method_not_allowed() })
        .layer(DefaultBodyLimit::max(body_max))
        .with_state(state)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct HealthQuery {
    /// Answer 503 when the status is `critical` (for load balancers); default: always 200
    /// while the node serves, with the verdict in the body.
    #[serde(default)]
    strict: bool,
}

/// Overall and per-region health from freshness lag (warn and critical thresholds in config).
#[utoipa::path(get, path = "/health", params(HealthQuery),
    responses((status = 200, body = Health), (status = 503, body = Health, description = "critical, with ?strict=true")))]
async fn health(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<HealthQuery>,
) -> ApiResult<(StatusCode, Json<Health>)> {
    let peers = state.status.snapshot(state.clock.now_ms());
    let dead_letters = crate::review::refresh_dlq_gauges(&state)?;
    let critical = state.admission.critical(&state, dead_letters);
    let h = crate::health::evaluate(
        state.region.as_str(),
        &peers,
        state.health,
        state.started.elapsed(),
        dead_letters,
        &critical,
        &[
            state.status.retention().warnings(),
            state.status.repairs().warnings(state.clock.now_ms()),
            crate::membership::warnings(&state),
        ]
        .concat(),
    );
    let code = if q.strict && h.status == mrr_api::HealthStatus::Critical {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    Ok((code, Json(h)))
}

/// Prometheus text exposition of this node's metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.replication_metrics.refresh(&state.status.snapshot(state.clock.now_ms()));
    state.admission.clock(&state);
    state.metrics.storage_bytes.set(state.store.disk_bytes() as f64);
    crate::membership::refresh_gauges(&state);
    if let Err(e) = crate::review::refresh_dlq_gauges(&state) {
        // Rendered anyway: the other families are still worth scraping.
        tracing::warn!(error = %e.message_text(), "dead-letter gauges not refreshed");
    }
    ([("content-type", "text/plain; version=0.0.4")], state.metrics.handle.render())
}

/// Publish a record; its `id` comes from the body.
#[utoipa::path(post, path = "/v1/records/{topic}", request_body = Object,
    params(("topic" = String, Path), crate::write_acks::WriteQuery), responses((status = 200, body = RecordEnvelope), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    opts: WriteOptions,
    Path(topic): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Written<Json<RecordEnvelope>>> {
    let op = parse_put(&state.limits, &state.region_names(), &topic, None, &body_bytes(body)?)?;
    if let Some(key) = op.key() {
        caller.check(Action::Write, key)?;
    }
    write_one(&state, op, &opts).await
}

/// Publish a record under the id in the path.
#[utoipa::path(put, path = "/v1/records/{topic}/{id}", request_body = Object,
    params(("topic" = String, Path), ("id" = String, Path), crate::write_acks::WriteQuery), responses((status = 200, body = RecordEnvelope), (status = 400, body = ErrorBody)))]
async fn put_record(
    State(state): State<AppState>,
    opts: WriteOptions,
    Path((topic, id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Written<Json<RecordEnvelope>>> {
    let op = parse_put(&state.limits, &state.region_names(), &topic, Some(&id), &body_bytes(body)?)?;
    write_one(&state, op, &opts).await
}

/// Partial update: only the fields named change (`null` removes a field). Under
/// `conflict_strategy: merge` only those fields take the new version, so concurrent edits of
/// other fields elsewhere survive; under `timestamp` and `custom` the patched record competes
/// as a whole. `__metadata`, when given, replaces the record's metadata.
#[utoipa::path(patch, path = "/v1/records/{topic}/{id}", request_body = Object,
    params(("topic" = String, Path), ("id" = String, Path), crate::write_acks::WriteQuery), responses((status = 200, body = RecordEnvelope), (status = 400, body = ErrorBody)))]
async fn patch_record(
    State(state): State<AppState>,
    opts: WriteOptions,
    Path((topic, id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Written<Json<RecordEnvelope>>> {
    let key = parse_key(&topic, &id)?;
    let value: Value = json_body(body)?;
    let (mut fields, metadata) = split_record(&state.limits, &state.region_names(), value)?;
    if fields.get("id").is_some_and(|v| v.as_str() != Some(id.as_str())) {
        return Err(ApiError::bad(ErrorCode::IdMismatch, "a patch cannot change `id`"));
    }
    fields.remove("id");
    let op = LocalOp::Patch { key, fields: encode_record(&state.limits, fields)?, metadata };
    write_one(&state, op, &opts).await
}

/// CRDT field operations, applied in order as one write: `incr` (PN-counter; negative `by`
/// decrements), `add`/`remove` (add-wins set), `set` (a plain field). The body is one operation,
/// an array of them, or `{"ops": [...]}`. Needs `conflict_strategy: merge` on the topic.
#[utoipa::path(post, path = "/v1/records/{topic}/{id}/ops", request_body = Object,
    params(("topic" = String, Path), ("id" = String, Path), crate::write_acks::WriteQuery),
    responses((status = 200, body = RecordEnvelope), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn record_ops(
    State(state): State<AppState>,
    opts: WriteOptions,
    Path((topic, id)): Path<(String, String)>,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let body = body_bytes(body)?;
        let key = parse_key(&topic, &id)?;
        let value: Value = json_body(Ok(body.clone()))?;
        let ops = parse_ops(&state.limits, value)?;
        let refused = match write_one(&state, LocalOp::Ops { key, ops }, &opts).await {
            Ok(written) => return Ok(written.into_response()),
            Err(e) if e.code == ErrorCode::InsufficientRights => e,
            Err(e) => return Err(e),
        };
        // `on_insufficient: forward`: the region known to hold enough rights makes the
        // decrement instead (once: a forwarded request is answered where it lands).
        let holder = refused.extra.as_ref().and_then(|x| {
            let field = x.rights_field.as_deref()?;
            state.forwarder.forwards_rights(&topic, field).then_some(x.holder.clone()).flatten()
        });
        if let Some(holder) = holder.filter(|_| !headers.contains_key(crate::forward::FORWARDED_FROM)) {
            let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
            let forwarded = state.forwarder.write(&state.region, &holder, Method::POST, path, &headers, body).await;
            if let Some(response) = forwarded {
                state.metrics.escrow_forwarded.increment(1);
                return Ok(response);
            }
        }
        let ms = rights_retry_ms(&state);
        Err(refused.with_extra(|x| x.retry_after_ms = Some(ms)))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// When rights this region asked for may have arrived: the longest round trip to a connected
/// peer (the holder asked may be any of them) and a tending sweep, or a second when no round
/// trip is measured yet.
fn rights_retry_ms(state: &AppState) -> u64 {
    const RETRY_MS_MIN: u64 = 20;
    const RETRY_MS_MAX: u64 = 5_000;
    const UNMEASURED_MS: u64 = 1_000;
    let rtt_ms_max = state.status.snapshot(state.clock.now_ms()).iter().filter_map(|p| p.rtt_ms).max();
    rtt_ms_max.map_or(UNMEASURED_MS, |rtt| rtt + mrr_writer::ESCROW_SWEEP_MS).clamp(RETRY_MS_MIN, RETRY_MS_MAX)
}

/// Query one record: `query('users/u001')`. `?consistency=` picks what the answer may miss
/// (`docs/consistency.md`): `local` (default), `strong`, `read_your_writes` (with the session
/// token a write answered with), `bounded` (with `max_staleness_ms`).
#[utoipa::path(get, path = "/v1/records/{topic}/{id}", params(("topic" = String, Path), ("id" = String, Path), crate::read_levels::LevelQuery),
    responses((status = 200, body = RecordEnvelope), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody), (status = 504, body = ErrorBody)))]
async fn get_record(
    State(state): State<AppState>,
    Path((topic, id)): Path<(String, String)>,
    headers: HeaderMap,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
    ApiQuery(q): ApiQuery<LevelQuery>,
) -> ApiResult<Response> {
    let key = parse_key(&topic, &id)?;
    let level = ReadLevel::parse(&state, &q, &headers)?;
    let ready = || {
        Ok(match (&level, mrr_storage::record_of(state.store.as_ref(), &state.sealer, &key)?) {
            (ReadLevel::ReadYourWrites { token, .. }, Some(r)) => !lacks_named(token, &r),
            _ => true,
        })
    };
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let granted = match before_read(&state, &key.topic, &level, path, &headers, ready).await? {
        Before::Read(granted) => granted,
        Before::Answered(answer) => return Ok(answer),
    };
    let envelope = record_answer(&state, &key)?;
    Ok((granted.headers(), Json(envelope)).into_response())
}

fn record_answer(state: &AppState, key: &Key) -> ApiResult<RecordEnvelope> {
    match mrr_storage::record_of(state.store.as_ref(), &state.sealer, key)? {
        Some(r) if !mrr_core::placement::places(&r.metadata, &state.region) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotPlaced,
            format!(
                "{key} is placed in {:?}, not in {}: read it in one of those regions",
                r.metadata.regions, state.region
            ),
        )),
        Some(r) if r.is_tombstone() => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::Deleted,
            format!("{key} was deleted (version {})", r.version),
        )),
        Some(r) => Ok(envelope(key, &r)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("{key} does not exist in {}", state.region),
        )),
    }
}

/// Delete a record (a versioned tombstone that replicates like a write).
#[utoipa::path(delete, path = "/v1/records/{topic}/{id}", params(("topic" = String, Path), ("id" = String, Path), crate::write_acks::WriteQuery),
    responses((status = 200, body = RecordEnvelope), (status = 400, body = ErrorBody)))]
async fn delete_record(
    State(state): State<AppState>,
    opts: WriteOptions,
    Path((topic, id)): Path<(String, String)>,
) -> ApiResult<Written<Json<RecordEnvelope>>> {
    let key = parse_key(&topic, &id)?;
    write_one(&state, LocalOp::Delete { key }, &opts).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Start after this id.
    after: Option<String>,
    /// Page size, at most 1000 (default 100).
    limit: Option<usize>,
    /// Include deleted records (tombstones).
    #[serde(default)]
    include_deleted: bool,
    /// As for one record: `local` (default), `strong`, `read_your_writes`, `bounded`.
    consistency: Option<String>,
    session: Option<String>,
    wait_ms: Option<u64>,
    fallback: Option<String>,
    max_staleness_ms: Option<u64>,
}

impl ListQuery {
    fn level(&self) -> LevelQuery {
        LevelQuery {
            consistency: self.consistency.clone(),
            session: self.session.clone(),
            wait_ms: self.wait_ms,
            fallback: self.fallback.clone(),
            max_staleness_ms: self.max_staleness_ms,
        }
    }
}

const LIST_LIMIT_MAX: usize = 1_000;

/// List a topic's records in id order.
#[utoipa::path(get, path = "/v1/records/{topic}", params(("topic" = String, Path), ListQuery), responses((status = 200, body = RecordList)))]
async fn list_records(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Response> {
    validate_topic(&topic).map_err(|e| ApiError::bad(ErrorCode::InvalidTopic, e.to_string()))?;
    let level = ReadLevel::parse(&state, &q.level(), &headers)?;
    // The page is read after the wait; its records' content is checked when it is built.
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let granted = match before_read(&state, &topic, &level, path, &headers, || Ok(true)).await? {
        Before::Read(granted) => granted,
        Before::Answered(answer) => return Ok(answer),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, LIST_LIMIT_MAX);
    let mut records = Vec::new();
    let mut after = q.after;
    let mut next_after = None;
    // Skipping tombstones can leave a page short; keep scanning, still bounded per call.
    'pages: for _ in 0..16 {
        let page = state.store.scan(&topic, after.as_deref(), limit)?;
        let full = page.len() == limit;
        for (key, record) in page {
            after = Some(key.id.clone());
            // A record placed elsewhere is not here, deleted or not.
            let placed = mrr_core::placement::places(&record.metadata, &state.region);
            if placed && (q.include_deleted || !record.is_tombstone()) {
                records.push(envelope(&key, &record));
                if records.len() == limit {
                    next_after = Some(key.id);
                    break 'pages;
                }
            }
        }
        if !full {
            // The topic ends here: no further page, whatever earlier pages suggested.
            next_after = None;
            break;
        }
        next_after = after.clone();
    }
    Ok((granted.headers(), Json(RecordList { records, next_after })).into_response())
}

/// Publish or delete many records in one atomic commit.
#[utoipa::path(post, path = "/v1/batch", request_body = BatchRequest, params(crate::write_acks::WriteQuery), responses((status = 200, body = BatchResponse), (status = 400, body = ErrorBody)))]
async fn batch(
    State(state): State<AppState>,
    caller: Caller,
    opts: WriteOptions,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Written<Json<BatchResponse>>> {
    let bytes = body_bytes(body)?;
    let request: BatchRequest = serde_json::from_slice(&bytes).map_err(|e| json_error(&e))?;
    if request.items.len() > state.limits.batch_records_max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BatchTooLarge,
            format!("{} items; at most {} per batch", request.items.len(), state.limits.batch_records_max),
        ));
    }
    let mut ops = Vec::with_capacity(request.items.len());
    for (i, item) in request.items.into_iter().enumerate() {
        let at = |e: ApiError| ApiError { message: format!("items[{i}]: {}", e.message), ..e };
        let op = match item.op {
            BatchOp::Put => {
                let record = item
                    .record
                    .ok_or_else(|| at(ApiError::bad(ErrorCode::NotAnObject, "`record` is required for put")))?;
                parse_put_value(&state.limits, &state.region_names(), &item.topic, item.id.as_deref(), record)
                    .map_err(at)?
            }
            BatchOp::Delete => {
                let id =
                    item.id.ok_or_else(|| at(ApiError::bad(ErrorCode::MissingId, "`id` is required for delete")))?;
                LocalOp::Delete { key: parse_key(&item.topic, &id).map_err(at)? }
            }
        };
        if let Some(key) = op.key() {
            caller.check(Action::Write, key).map_err(at)?;
        }
        ops.push(op);
    }
    let strong = admit(&state, &opts, ops.iter().filter_map(LocalOp::key))?;
    let records = if strong {
        let writes = ops.into_iter().map(crate::strong::strong_write_of).collect::<ApiResult<Vec<_>>>()?;
        crate::strong::write(&state, &state.metrics.write_latency_batch, writes, None).await?
    } else {
        let committed = timed_write(&state, &state.metrics.write_latency_batch, ops).await?;
        committed.into_iter().map(|c| (c.key, c.record)).collect()
    };
    let ids: Vec<_> = records.iter().map(|(_, r)| r.change_id()).collect();
    let token = opts.settle(&state, &ids, strong).await?;
    let results = records.iter().map(|(k, r)| envelope(k, r)).collect();
    Ok(Written(Json(BatchResponse { results }), token))
}

/// This node's view of the cluster: applied versions and each peer's connection and lag.
#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = NodeStatus)))]
async fn node_status(State(state): State<AppState>) -> Json<NodeStatus> {
    let applied = state.writer.applied().borrow().iter().map(|(o, s)| (o.to_string(), s)).collect();
    let retention = state.status.retention();
    Json(NodeStatus {
        cluster: state.cluster.clone(),
        region: state.region.to_string(),
        coordinator: state.coordinator.clone(),
        applied,
        stable: state.status.stable().iter().map(|(o, s)| (o.to_string(), s)).collect(),
        departures: state.status.departures(),
        truncation_point: retention.truncation_point.iter().map(|(o, s)| (o.to_string(), s)).collect(),
        lagging: retention.lagging.iter().map(ToString::to_string).collect(),
        retention_held_by: retention.held_by.iter().map(|(r, ms)| (r.to_string(), *ms)).collect(),
        storage_bytes: state.store.disk_bytes(),
        peers: state.status.snapshot(state.clock.now_ms()),
        consensus: coordinator_info(&state),
    })
}

fn coordinator_info(state: &AppState) -> mrr_api::CoordinatorInfo {
    let s = state.consensus.status();
    mrr_api::CoordinatorInfo {
        coordinator: s.coordinator.map(|r| r.to_string()),
        term: s.term,
        preferred: s.preferred.map(|r| r.to_string()),
        since_ms: s.since_ms,
        leader_changes: s.leader_changes,
        is_local: s.is_leader,
    }
}

/// The coordinator (the strong tier's Raft leader) as this region knows it.
#[utoipa::path(get, path = "/v1/cluster/coordinator", responses((status = 200, body = mrr_api::CoordinatorInfo)))]
async fn cluster_coordinator(State(state): State<AppState>) -> Json<mrr_api::CoordinatorInfo> {
    Json(coordinator_info(&state))
}

/// A stream of newline-delimited JSON [`mrr_api::AppliedEvent`]s: the current applied version
/// vector, then one line per change of it (coalesced: a slow reader skips to the newest).
/// Benchmarks use it to see when a write becomes readable here without polling.
#[utoipa::path(get, path = "/v1/watch/applied", responses((status = 200, content_type = "application/x-ndjson", body = mrr_api::AppliedEvent)))]
async fn watch_applied(State(state): State<AppState>) -> impl IntoResponse {
    use tokio_stream::StreamExt;
    let clock = state.clock.clone();
    let stream = tokio_stream::wrappers::WatchStream::new(state.writer.applied()).map(move |vv| {
        let event = mrr_api::AppliedEvent {
            applied: vv.iter().map(|(o, s)| (o.to_string(), s)).collect(),
            wall_ms: clock.now_ms(),
        };
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line))
    });
    ([("content-type", "application/x-ndjson")], axum::body::Body::from_stream(stream))
}

/// The emulated links from this node to each peer.
#[utoipa::path(get, path = "/v1/admin/links", responses((status = 200, body = LinksView)))]
async fn get_links(State(state): State<AppState>) -> Json<LinksView> {
    Json(links_view(&state.links))
}

/// The emulated link from this node to `peer`.
#[utoipa::path(get, path = "/v1/admin/links/{peer}", params(("peer" = String, Path)),
    responses((status = 200, body = LinkSettings), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn get_link(State(state): State<AppState>, Path(peer): Path<String>) -> ApiResult<Json<LinkSettings>> {
    let region =
        RegionName::new(peer.clone()).map_err(|_| link_error(&state, &peer, LinkError::UnknownPeer(peer.clone())))?;
    state.links.get(&region).map(Json).map_err(|e| link_error(&state, &peer, e))
}

/// A link request's refusal: 409 `links_disabled` without emulation, 404 `unknown_region`.
fn link_error(state: &AppState, peer: &str, e: LinkError) -> ApiError {
    match e {
        LinkError::Disabled => ApiError::new(StatusCode::CONFLICT, ErrorCode::LinksDisabled, e.to_string()),
        LinkError::UnknownPeer(_) => ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownRegion,
            format!("{peer} is not a peer of {}", state.region),
        ),
    }
}

/// Change the emulated link from this node to `peer` (delay, jitter, partition).
#[utoipa::path(put, path = "/v1/admin/links/{peer}", request_body = LinkSettings, params(("peer" = String, Path)),
    responses((status = 200, body = LinksView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn set_link(
    State(state): State<AppState>,
    Path(peer): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<LinksView>> {
    let settings: LinkSettings = json_body(body)?;
    let region =
        RegionName::new(peer.clone()).map_err(|_| link_error(&state, &peer, LinkError::UnknownPeer(peer.clone())))?;
    let spec: LinkSpec = settings;
    state.links.set(&region, spec).map_err(|e| link_error(&state, &peer, e))?;
    tracing::info!(peer = %region, delay_ms = spec.delay_ms, jitter_ms = spec.jitter_ms, partitioned = spec.partitioned, bandwidth_bytes_per_s = spec.bandwidth_bytes_per_s, "link changed");
    Ok(Json(links_view(&state.links)))
}

fn links_view(links: &Links) -> LinksView {
    LinksView {
        enabled: links.is_enabled(),
        links: links.all().into_iter().map(|(r, s)| (r.to_string(), s)).collect::<BTreeMap<_, _>>(),
    }
}

/// Writes through the writer and records the latency (request to durable commit).
async fn timed_write(state: &AppState, latency: &metrics::Histogram, ops: Vec<LocalOp>) -> ApiResult<Vec<Committed>> {
    timed(state, latency, async { state.writer.write(ops).await.map_err(ApiError::from) }).await
}

/// A write admitted by [`crate::admission`], its latency (request to acknowledgement) recorded
/// in `latency`, its failure counted: the one wrapper of the eventual and the strong path.
pub(crate) async fn timed<T>(
    state: &AppState,
    latency: &metrics::Histogram,
    write: impl std::future::Future<Output = ApiResult<T>>,
) -> ApiResult<T> {
    state.admission.check_write(state)?;
    let started = std::time::Instant::now();
    let result = write.await;
    match &result {
        Ok(_) => latency.record(started.elapsed().as_secs_f64()),
        Err(_) => state.metrics.write_errors.increment(1),
    }
    result
}

pub(crate) async fn write_one(
    state: &AppState,
    op: LocalOp,
    opts: &WriteOptions,
) -> ApiResult<Written<Json<RecordEnvelope>>> {
    let latency = match op {
        LocalOp::Put { .. } | LocalOp::Replay { .. } => &state.metrics.write_latency_put,
        LocalOp::Patch { .. } => &state.metrics.write_latency_patch,
        LocalOp::Ops { .. } => &state.metrics.write_latency_ops,
        LocalOp::Delete { .. } => &state.metrics.write_latency_delete,
    };
    let strong = admit(state, opts, op.key().into_iter())?;
    let (key, record) = if strong {
        crate::strong::write_one(state, latency, op).await?
    } else {
        let committed: Vec<Committed> = timed_write(state, latency, vec![op]).await?;
        let c = committed.into_iter().next().ok_or_else(|| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::StorageUnavailable, "writer returned no result")
        })?;
        (c.key, c.record)
    };
    answer_written(state, opts, &key, &record, strong).await
}

/// The checks a write passes before anything of it is written: which tier takes it (mixed
/// batches refused), the lag throttle of its topics, whether its `?ack=` can be met. Returns
/// whether the strong tier takes it.
pub(crate) fn admit<'a>(
    state: &AppState,
    opts: &WriteOptions,
    keys: impl Iterator<Item = &'a Key> + Clone,
) -> ApiResult<bool> {
    let strong = crate::strong::is_strong(state, keys.clone())?;
    crate::throttle::check(state, keys)?;
    opts.check(state, strong)?;
    Ok(strong)
}

/// One written record's answer: waits for `opts`' ack; the session token goes in the
/// `x-mrr-session` header, so the body is the record exactly as a read anywhere shows it.
pub(crate) async fn answer_written(
    state: &AppState,
    opts: &WriteOptions,
    key: &Key,
    record: &Record,
    strong: bool,
) -> ApiResult<Written<Json<RecordEnvelope>>> {
    let token = opts.settle(state, &[record.change_id()], strong).await?;
    Ok(Written(Json(envelope(key, record)), token))
}

pub(crate) fn version_info(v: &Version) -> VersionInfo {
    VersionInfo { hlc: v.ts.to_string(), wall_ms: v.ts.wall_ms, logical: v.ts.logical, region: v.region.to_string() }
}

pub fn envelope(key: &Key, r: &Record) -> RecordEnvelope {
    let value = match &r.value {
        // Stored values were validated as objects when written; a decode failure is corruption.
        Some(v) => serde_json::from_slice(v).unwrap_or_else(|e| {
            tracing::error!(key = %key, error = %e, "stored record is not valid JSON");
            Value::Null
        }),
        None => Value::Null,
    };
    RecordEnvelope {
        topic: key.topic.clone(),
        id: key.id.clone(),
        value,
        deleted: r.is_tombstone(),
        metadata: RecordMetadata { regions: r.metadata.regions.clone(), sync_flags: r.metadata.sync_flags.clone() },
        version: version_info(&r.version),
        origin_region: r.version.region.to_string(),
        updated_at_ms: r.version.ts.wall_ms,
        token: token(&r.change_id()),
        lacking: r.lacking.iter().map(token).collect(),
    }
}

fn token(id: &mrr_core::ChangeId) -> WriteToken {
    WriteToken { origin: id.origin.to_string(), lane: id.lane.name().to_owned(), seq: id.seq }
}
