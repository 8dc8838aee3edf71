//! The strong tier over HTTP: writes to `consistency: strong` topics, atomic updates and
//! linearizable reads.
//!
//! A write to a strong topic becomes a [`StrongCommand`] proposed through this region's voter
//! (which forwards it to the leader: the client never looks for one) and is answered once a
//! quorum committed it and this region applied it, so a read here right after sees it. The
//! condition of an atomic update is parsed here and evaluated inside the state machine
//! ([`mrr_core::strong`]), where check and update are one step. Reads with
//! `?consistency=strong` wait for the read barrier (a lease read at the leader, a read index
//! elsewhere) before reading this region's records.
//!
//! Not here: the log (`mrr-consensus`), the evaluation and apply (`mrr-core`, `mrr-writer`).

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use mrr_api::{ErrorCode, RecordEnvelope};
use mrr_consensus::ConsensusError;
use mrr_core::strong::{
    Condition, ConditionError, Invalid, StrongCommand, StrongOutcome, StrongWrite, REQUEST_ID_BYTES_MAX,
};
use mrr_core::{Key, Record};
use mrr_writer::LocalOp;
use serde_json::Value;

use crate::http::{envelope, json_body, parse_key, parse_ops, ApiError, ApiResult, AppState};
use crate::write_acks::{WriteOptions, Written};

/// Waits, for a `strong` read of `topic`, until this region holds every write acknowledged
/// before the call.
pub(crate) async fn read_barrier(state: &AppState, topic: &str) -> ApiResult<()> {
    if !state.strong_topics.contains(topic) {
        return Err(not_strong(topic, "a linearizable read"));
    }
    state.consensus.read_barrier().await.map(|_| ()).map_err(unavailable)
}

fn not_strong(topic: &str, what: &str) -> ApiError {
    ApiError::bad(
        ErrorCode::NotStrong,
        format!(
            "topic {topic} is not `consistency: strong`, so {what} cannot be served here; declare the topic `consistency: strong` under `topics:` (in every region alike), or read with consistency=local"
        ),
    )
}

pub(crate) fn unavailable(e: ConsensusError) -> ApiError {
    let message = match &e {
        ConsensusError::Unavailable { .. } => format!("{e}; nothing was applied"),
        ConsensusError::Unknown(_) => {
            format!("{e}; the write may still apply: retry with the same request_id, which applies it at most once")
        }
    };
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::StrongQuorumUnavailable, message)
}

/// Whether this request goes through the strong tier: all of its keys are strong, or none
/// (a batch mixing both is refused: the two commit by different paths).
pub(crate) fn is_strong<'a>(state: &AppState, mut keys: impl Iterator<Item = &'a Key>) -> ApiResult<bool> {
    let Some(first) = keys.next() else { return Ok(false) };
    let strong = state.strong_topics.contains(&first.topic);
    match keys.find(|k| state.strong_topics.contains(&k.topic) != strong) {
        None => Ok(strong),
        Some(other) => Err(ApiError::bad(
            ErrorCode::MixedConsistency,
            format!(
                "topics {} and {} differ in consistency: send strong and eventual writes in separate batches",
                first.topic, other.topic
            ),
        )),
    }
}

/// The strong form of a client write.
pub(crate) fn strong_write_of(op: LocalOp) -> ApiResult<StrongWrite> {
    let text = |bytes: Vec<u8>| {
        String::from_utf8(bytes).map_err(|_| ApiError::bad(ErrorCode::InvalidJson, "a record must be UTF-8 JSON"))
    };
    let placed = |m: &mrr_core::Metadata, key: &Key| {
        if m.regions.is_empty() || m.regions.iter().all(|r| r == "*") {
            Ok(())
        } else {
            Err(ApiError::bad(
                ErrorCode::StrongPlacement,
                format!(
                    "{key}: a strong topic's records live in every region (each holds the log); drop __metadata.regions"
                ),
            ))
        }
    };
    Ok(match op {
        LocalOp::Put { key, value, metadata } => {
            placed(&metadata, &key)?;
            StrongWrite::Put { key, value: text(value)?, metadata }
        }
        LocalOp::Patch { key, fields, metadata } => {
            if let Some(m) = &metadata {
                placed(m, &key)?;
            }
            StrongWrite::Patch { key, fields: text(fields)?, metadata }
        }
        LocalOp::Delete { key } => StrongWrite::Delete { key },
        LocalOp::Ops { key, ops } => StrongWrite::Update { key, condition: None, ops },
        LocalOp::Replay { id } => {
            // Dead letters come from `custom` topics only; a strong topic never has one.
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::DeadLetterNotFound,
                format!("dead letter {id} is not of a strong topic"),
            ));
        }
    })
}

/// Proposes `writes` as one command and answers with the records they produced.
pub(crate) async fn write(
    state: &AppState,
    latency: &metrics::Histogram,
    writes: Vec<StrongWrite>,
    request_id: Option<String>,
) -> ApiResult<Vec<(Key, Record)>> {
    // Without a client id, one of the node's own: the forward to the leader may be retried.
    let request_id = request_id.unwrap_or_else(|| format!("{}-{:032x}", state.region, rand::random::<u128>()));
    let command = StrongCommand::new(request_id, state.clock.now_ms(), writes);
    crate::http::timed(state, latency, propose(state, &command)).await
}

async fn propose(state: &AppState, command: &StrongCommand) -> ApiResult<Vec<(Key, Record)>> {
    let (_, response) = state.consensus.propose(mrr_consensus::Command(command.encode())).await.map_err(unavailable)?;
    let outcome = crate::consensus::outcome_of(&response).map_err(|e| {
        tracing::error!(error = %e, "strong answer does not decode");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::StorageUnavailable, e)
    })?;
    match outcome {
        StrongOutcome::Applied { records } | StrongOutcome::Repeated { records } => Ok(records),
        StrongOutcome::PreconditionFailed { key, current } => {
            let message = match &current {
                Some(r) => format!("the condition does not hold for {key} at version {}", r.version.ts),
                None => format!("the condition does not hold for {key}, which does not exist"),
            };
            let mut e = ApiError::new(StatusCode::CONFLICT, ErrorCode::PreconditionFailed, message);
            e.current = current.map(|r| Box::new(envelope(&key, &r)));
            Err(e)
        }
        StrongOutcome::Invalid(invalid) => Err(refused(invalid)),
    }
}

fn refused(invalid: Invalid) -> ApiError {
    let message = invalid.to_string();
    match invalid {
        Invalid::TypeMismatch { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::ConditionTypeMismatch, message)
        }
        Invalid::NotANumber { .. }
        | Invalid::NotAnArray { .. }
        | Invalid::Overflow { .. }
        | Invalid::FunctionFailed { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidUpdate, message)
        }
        Invalid::RequestReused { .. } => ApiError::new(StatusCode::CONFLICT, ErrorCode::RequestIdReused, message),
        Invalid::NotStrong { .. } => ApiError::bad(ErrorCode::NotStrong, message),
        Invalid::NoSuchFunction { .. } => ApiError::bad(ErrorCode::UnknownFunction, message),
        Invalid::Undecodable(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::InvalidJson, message),
    }
}

/// One record's strong write, answered with its envelope.
pub(crate) async fn write_one(state: &AppState, latency: &metrics::Histogram, op: LocalOp) -> ApiResult<(Key, Record)> {
    first(write(state, latency, vec![strong_write_of(op)?], None).await?)
}

/// Atomic update: `{"if": <condition>, "then": [<operations>], "request_id": "..."}`. The
/// condition is tested and the operations applied in one step of the state machine, in the
/// log's order, so concurrent buyers of the last items never oversell and never need to
/// retry: each either applies or gets 409 `precondition_failed` with the record as it is.
/// Conditions compare top-level fields (`eq`, `ne`, `gt`, `gte`, `lt`, `lte` on numbers and
/// strings, `exists`), combine with `$and`, `$or`, `$not`, and test the record itself with
/// `$exists` and `$version` (compare-and-set on the `version.hlc` it was read at).
/// Operations are those of `/ops` (`incr`, `set`, `add`, `remove`) on the plain document.
/// Instead of `if`/`then`, `{"function": "<name>", "args": {...}}` calls an update function the
/// topic declares (`topics.<t>.functions` in the config: a Rhai `fn update(current, args)`
/// returning the new record, or `()` to leave it, answered 409), run in the state machine
/// like a condition. `request_id` is required: a retry with the same id and body applies once
/// and answers the first answer; the same id with another body is 409 `request_id_reused`.
/// The topic must be `consistency: strong`.
#[utoipa::path(post, path = "/v1/records/{topic}/{id}/atomic", request_body = Object,
    params(("topic" = String, Path), ("id" = String, Path), crate::write_acks::WriteQuery),
    responses((status = 200, body = RecordEnvelope), (status = 400, body = mrr_api::ErrorBody),
        (status = 409, body = mrr_api::ErrorBody), (status = 422, body = mrr_api::ErrorBody),
        (status = 503, body = mrr_api::ErrorBody)))]
pub(crate) async fn atomic(
    State(state): State<AppState>,
    opts: WriteOptions,
    Path((topic, id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Written<Json<RecordEnvelope>>> {
    let key = parse_key(&topic, &id)?;
    let value: Value = json_body(body)?;
    let Value::Object(mut body) = value else {
        return Err(ApiError::bad(
            ErrorCode::NotAnObject,
            "an atomic update is an object: {\"if\":..., \"then\":[...], \"request_id\":\"...\"}",
        ));
    };
    if let Some(k) = body.keys().find(|k| !matches!(k.as_str(), "if" | "then" | "function" | "args" | "request_id")) {
        return Err(ApiError::bad(
            ErrorCode::InvalidCondition,
            format!(
                "unknown field {k:?}: an atomic update has `if` and `then`, or `function` and `args`, and `request_id`"
            ),
        ));
    }
    if !state.strong_topics.contains(&topic) {
        return Err(not_strong(&topic, "an atomic update"));
    }
    let request_id = match body.remove("request_id") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= REQUEST_ID_BYTES_MAX => s,
        Some(_) => {
            return Err(ApiError::bad(
                ErrorCode::MissingRequestId,
                format!("request_id must be a string of 1 to {REQUEST_ID_BYTES_MAX} bytes"),
            ))
        }
        None => {
            return Err(ApiError::bad(
                ErrorCode::MissingRequestId,
                "an atomic update needs a request_id (e.g. a UUID): it makes a retry apply once",
            ))
        }
    };
    if let Some(function) = body.remove("function") {
        if body.contains_key("if") || body.contains_key("then") {
            return Err(ApiError::bad(
                ErrorCode::InvalidCondition,
                "send either `function` and `args`, or `if` and `then`",
            ));
        }
        let Value::String(function) = function else {
            return Err(ApiError::bad(
                ErrorCode::UnknownFunction,
                "`function` is the name of one of the topic's update functions",
            ));
        };
        if !state.functions.get(&topic).is_some_and(|names| names.contains(&function)) {
            let declared = state
                .functions
                .get(&topic)
                .map(|n| n.iter().cloned().collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            return Err(ApiError::bad(
                ErrorCode::UnknownFunction,
                format!("topic {topic} declares no update function {function:?} (declared: [{declared}]); add it under topics.{topic}.functions"),
            ));
        }
        let args = body.remove("args").unwrap_or(Value::Null);
        if mrr_core::limits::json_depth(&args) > state.limits.json_depth_max
            || args.to_string().len() > state.limits.record_bytes_max
        {
            return Err(ApiError::bad(ErrorCode::TooDeep, "`args` is too deep or too large"));
        }
        crate::http::admit(&state, &opts, std::iter::once(&key))?;
        let call = StrongWrite::Call { key, function, args: args.to_string() };
        let (key, record) =
            first(write(&state, &state.metrics.write_latency_ops, vec![call], Some(request_id)).await?)?;
        return crate::http::answer_written(&state, &opts, &key, &record, true).await;
    }
    let condition = match body.remove("if") {
        None | Some(Value::Null) => None,
        Some(c) => Some(Condition::parse(&c).map_err(|e| {
            let hint = match e {
                ConditionError::Invalid(_) => "; e.g. {\"available\": {\"gte\": 2}}",
                _ => "",
            };
            ApiError::bad(ErrorCode::InvalidCondition, format!("if: {e}{hint}"))
        })?),
    };
    let ops = match body.remove("then") {
        Some(then) => parse_ops(&state.limits, then)?,
        None => return Err(ApiError::bad(
            ErrorCode::InvalidOps,
            "`then` is required: the operations to apply, e.g. [{\"op\":\"incr\",\"field\":\"available\",\"by\":-2}]",
        )),
    };
    crate::http::admit(&state, &opts, std::iter::once(&key))?;
    let update = StrongWrite::Update { key, condition, ops };
    let (key, record) = first(write(&state, &state.metrics.write_latency_ops, vec![update], Some(request_id)).await?)?;
    crate::http::answer_written(&state, &opts, &key, &record, true).await
}

fn first(records: Vec<(Key, Record)>) -> ApiResult<(Key, Record)> {
    records.into_iter().next().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StorageUnavailable,
            "the strong tier returned no record",
        )
    })
}
