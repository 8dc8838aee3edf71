//! Request bodies to writes: the body's bytes under the limit, JSON with the API's errors,
//! record shape, depth, size and `__metadata`, ids in path and body, and `/ops` operations.
//! Pure: no store, no writer, no state; every refusal is an [`ApiError`] with a stable code,
//! before anything reaches the writer.

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use bytes::Bytes;
use mrr_api::{ErrorCode, RecordMetadata};
use mrr_core::limits::{json_depth, validate_id, validate_topic, Limits};
use mrr_core::{FieldOp, Key, Metadata, RegionName};
use mrr_writer::LocalOp;
use serde_json::Value;

use crate::http::{ApiError, ApiResult};

/// Operations accepted by `/ops` in one request.
const OPS_PER_REQUEST_MAX: usize = 100;

pub fn parse_ops(limits: &Limits, value: Value) -> ApiResult<Vec<FieldOp>> {
    let list = match value {
        Value::Array(items) => items,
        Value::Object(mut m) if m.contains_key("ops") && m.len() == 1 => match m.remove("ops") {
            Some(Value::Array(items)) => items,
            _ => return Err(ApiError::bad(ErrorCode::InvalidOps, "`ops` must be an array of operations")),
        },
        op @ Value::Object(_) => vec![op],
        _ => {
            return Err(ApiError::bad(ErrorCode::InvalidOps, "send an operation object, an array, or {\"ops\": [...]}"))
        }
    };
    if list.is_empty() || list.len() > OPS_PER_REQUEST_MAX {
        return Err(ApiError::bad(ErrorCode::InvalidOps, format!("send 1 to {OPS_PER_REQUEST_MAX} operations")));
    }
    let mut ops = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        let op: FieldOp = serde_json::from_value(item).map_err(|e| {
            ApiError::bad(
                ErrorCode::InvalidOps,
                format!("operation {i}: {e}; expected e.g. {{\"op\":\"incr\",\"field\":\"views\",\"by\":3}}"),
            )
        })?;
        let field = op.field();
        if field.is_empty() || field == "id" || field == "__metadata" || field.len() > 256 {
            return Err(ApiError::bad(
                ErrorCode::InvalidOps,
                format!("operation {i}: field {field:?} cannot be operated on"),
            ));
        }
        if let FieldOp::Add { value, .. } | FieldOp::Remove { value, .. } | FieldOp::Set { value, .. } = &op {
            if json_depth(value) + 1 > limits.json_depth_max || value.to_string().len() > limits.record_bytes_max {
                return Err(ApiError::bad(
                    ErrorCode::InvalidOps,
                    format!("operation {i}: value too deep or too large"),
                ));
            }
        }
        ops.push(op);
    }
    Ok(ops)
}

pub(crate) fn body_bytes(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::BodyTooLarge,
                "request body exceeds limits.body_bytes_max",
            )
        } else {
            ApiError::bad(ErrorCode::InvalidJson, e.body_text())
        }
    })
}

/// A request body as JSON of type `T`, with the API's errors for a bad body.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    serde_json::from_slice(&body_bytes(body)?).map_err(|e| json_error(&e))
}

pub(crate) fn json_error(e: &serde_json::Error) -> ApiError {
    if e.to_string().contains("recursion limit") {
        ApiError::bad(ErrorCode::TooDeep, "JSON nesting exceeds the parser's limit")
    } else {
        ApiError::bad(ErrorCode::InvalidJson, format!("malformed JSON: {e}"))
    }
}

pub(crate) fn parse_key(topic: &str, id: &str) -> ApiResult<Key> {
    validate_topic(topic).map_err(|e| ApiError::bad(ErrorCode::InvalidTopic, e.to_string()))?;
    validate_id(id).map_err(|e| ApiError::bad(ErrorCode::InvalidId, e.to_string()))?;
    Ok(Key::new(topic, id))
}

pub fn parse_put(
    limits: &Limits,
    regions: &[RegionName],
    topic: &str,
    path_id: Option<&str>,
    body: &[u8],
) -> ApiResult<LocalOp> {
    let value: Value = serde_json::from_slice(body).map_err(|e| json_error(&e))?;
    parse_put_value(limits, regions, topic, path_id, value)
}

/// Checks a record body's shape, depth and metadata, and splits off its `__metadata`.
pub(crate) fn split_record(
    limits: &Limits,
    regions: &[RegionName],
    value: Value,
) -> ApiResult<(serde_json::Map<String, Value>, Option<Metadata>)> {
    let Value::Object(mut object) = value else {
        return Err(ApiError::bad(ErrorCode::NotAnObject, "a record must be a JSON object"));
    };
    let depth = 1 + object.values().map(json_depth).max().unwrap_or(0);
    if depth > limits.json_depth_max {
        return Err(ApiError::bad(
            ErrorCode::TooDeep,
            format!("record nests {depth} levels; at most {}", limits.json_depth_max),
        ));
    }
    let metadata = match object.remove("__metadata") {
        None => None,
        Some(m) => Some(
            serde_json::from_value::<RecordMetadata>(m)
                .map_err(|e| ApiError::bad(ErrorCode::InvalidMetadata, format!("__metadata: {e}")))?,
        ),
    };
    if let Some(r) = metadata.as_ref().and_then(|m| mrr_core::placement::unknown_region(&m.regions, regions)) {
        let known: Vec<&str> = regions.iter().map(RegionName::as_str).collect();
        return Err(ApiError::bad(
            ErrorCode::InvalidMetadata,
            format!("__metadata.regions: {r:?} is neither \"*\" nor a region of this cluster ({})", known.join(", ")),
        ));
    }
    let metadata = metadata.map(|m| Metadata { regions: m.regions, sync_flags: m.sync_flags });
    Ok((object, metadata))
}

/// The stored bytes of a record, within `record_bytes_max`.
pub(crate) fn encode_record(limits: &Limits, object: serde_json::Map<String, Value>) -> ApiResult<Vec<u8>> {
    let bytes =
        serde_json::to_vec(&Value::Object(object)).map_err(|e| ApiError::bad(ErrorCode::InvalidJson, e.to_string()))?;
    if bytes.len() > limits.record_bytes_max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RecordTooLarge,
            format!("record is {} bytes; at most {}", bytes.len(), limits.record_bytes_max),
        ));
    }
    Ok(bytes)
}

/// Validates a record and splits off its `__metadata`.
pub(crate) fn parse_put_value(
    limits: &Limits,
    regions: &[RegionName],
    topic: &str,
    path_id: Option<&str>,
    value: Value,
) -> ApiResult<LocalOp> {
    validate_topic(topic).map_err(|e| ApiError::bad(ErrorCode::InvalidTopic, e.to_string()))?;
    let (object, metadata) = split_record(limits, regions, value)?;
    let body_id = match object.get("id") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::bad(ErrorCode::InvalidId, "`id` must be a string")),
    };
    let id = match (path_id, body_id) {
        (Some(p), Some(b)) if p != b => {
            return Err(ApiError::bad(ErrorCode::IdMismatch, format!("id in path {p:?} differs from id in body {b:?}")))
        }
        (Some(p), _) => p.to_owned(),
        (None, Some(b)) => b,
        (None, None) => {
            return Err(ApiError::bad(
                ErrorCode::MissingId,
                "the record has no `id`; add one or use PUT /v1/records/{topic}/{id}",
            ))
        }
    };
    let key = parse_key(topic, &id)?;
    Ok(LocalOp::Put { key, value: encode_record(limits, object)?, metadata: metadata.unwrap_or_default() })
}
