//! What operators review: the conflict log (`/v1/conflicts`) and the dead-letter queue
//! (`/v1/dlq`). Reads come from the store; a replay is an ordinary write through the writer
//! (so it replicates and applies once cluster-wide); a discard removes this region's entry only.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use mrr_api::{
    ConflictList, ConflictSide, ConflictView, DeadLetterList, DeadLetterView, ErrorBody, ErrorCode, RecordEnvelope,
};
use mrr_core::{ChangeId, ConflictEntry, DeadLetter, Side};
use mrr_writer::LocalOp;
use serde::Deserialize;
use serde_json::Value;

use crate::http::{version_info, write_one, ApiError, ApiResult, AppState};

fn json(text: &Option<String>) -> Value {
    text.as_deref().and_then(|t| serde_json::from_str(t).ok()).unwrap_or(Value::Null)
}

fn side(s: &Side) -> ConflictSide {
    ConflictSide { change: s.id.to_string(), version: version_info(&s.version), value: json(&s.value) }
}

fn conflict_view(e: &ConflictEntry) -> ConflictView {
    ConflictView {
        topic: e.key.topic.clone(),
        id: e.key.id.clone(),
        strategy: e.strategy.clone(),
        resolution: e.resolution.clone(),
        loser: side(&e.loser),
        winner: side(&e.winner),
        fields: e.fields.clone(),
        detected_at_ms: e.detected_at_ms,
    }
}

fn letter_view(d: &DeadLetter) -> DeadLetterView {
    DeadLetterView {
        id: d.id.to_string(),
        topic: d.key.topic.clone(),
        record_id: d.key.id.clone(),
        version: version_info(&d.version),
        reason: d.reason.clone(),
        value: json(&d.value),
        failed_at_ms: d.failed_at_ms,
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConflictQuery {
    /// Only this topic.
    topic: Option<String>,
    /// Only conflicts detected at or after this time (ms since the Unix epoch).
    since: Option<u64>,
    /// Page size, at most 1000 (default 100).
    limit: Option<usize>,
}

const PAGE_MAX: usize = 1_000;

/// The conflict log: writes that lost to a concurrent write (or were merged with one by a
/// handler), oldest first. Updates made after seeing the other write are not conflicts.
#[utoipa::path(get, path = "/v1/conflicts", params(ConflictQuery), responses((status = 200, body = ConflictList)))]
pub async fn list_conflicts(
    State(state): State<AppState>,
    crate::http::ApiQuery(q): crate::http::ApiQuery<ConflictQuery>,
) -> ApiResult<Json<ConflictList>> {
    let limit = q.limit.unwrap_or(100).clamp(1, PAGE_MAX);
    let since = q.since.unwrap_or(0);
    let mut entries: Vec<ConflictEntry> = state
        .store
        .conflicts()?
        .into_iter()
        .filter(|e| e.detected_at_ms >= since && q.topic.as_deref().is_none_or(|t| e.key.topic == t))
        .collect();
    entries.sort_by_key(|e| (e.detected_at_ms, e.ident()));
    // A page ends between two detection times, so `since` resumes exactly where it stopped.
    let mut next_since = None;
    if entries.len() > limit {
        let cut_ms = entries[limit].detected_at_ms;
        // Sorted: cut before the first entry of that time, or after the last when the page
        // would otherwise be empty (more entries share one time than fit a page).
        let end = match entries.partition_point(|e| e.detected_at_ms < cut_ms) {
            0 => entries.partition_point(|e| e.detected_at_ms <= cut_ms),
            end => end,
        };
        next_since = entries.get(end).map(|e| e.detected_at_ms);
        entries.truncate(end);
    }
    Ok(Json(ConflictList { conflicts: entries.iter().map(conflict_view).collect(), next_since }))
}

/// This region's dead-letter queue: changes admitted (so replication moved on) that could not
/// be applied, with the reason.
#[utoipa::path(get, path = "/v1/dlq", responses((status = 200, body = DeadLetterList)))]
pub async fn list_dead_letters(State(state): State<AppState>) -> ApiResult<Json<DeadLetterList>> {
    let letters = state.store.dead_letters()?;
    Ok(Json(DeadLetterList { dead_letters: letters.iter().map(letter_view).collect() }))
}

fn parse_id(id: &str) -> ApiResult<ChangeId> {
    ChangeId::parse(id).ok_or_else(|| {
        ApiError::bad(ErrorCode::InvalidQuery, format!("{id:?} is not a change id; ids look like us-west-42"))
    })
}

/// Applies a dead letter's content again, as a new write from this region. It replicates, and
/// applies once cluster-wide however many regions replay it; the letter leaves every queue.
#[utoipa::path(post, path = "/v1/dlq/{id}/replay", params(("id" = String, Path)),
    responses((status = 200, body = RecordEnvelope), (status = 404, body = ErrorBody)))]
pub async fn replay_dead_letter(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<RecordEnvelope>> {
    let id = parse_id(&id)?;
    write_one(&state, LocalOp::Replay { id }).await
}

/// Discards a dead letter in this region (its change stays unapplied); returns what it was.
#[utoipa::path(delete, path = "/v1/dlq/{id}", params(("id" = String, Path)),
    responses((status = 200, body = DeadLetterView), (status = 404, body = ErrorBody)))]
pub async fn discard_dead_letter(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeadLetterView>> {
    let id = parse_id(&id)?;
    let Some(letter) = state.store.dead_letter(&id)? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::DeadLetterNotFound,
            format!("no dead letter {id}"),
        ));
    };
    state.store.discard_dead_letter(&id)?;
    refresh_dlq_gauges(&state)?;
    Ok(Json(letter_view(&letter)))
}

/// Sets the dead-letter gauges from the store; returns the queue's size.
pub fn refresh_dlq_gauges(state: &AppState) -> ApiResult<u64> {
    let letters = state.store.dead_letters()?;
    let now_ms = state.clock.now_ms();
    let oldest_ms = letters.iter().map(|d| d.failed_at_ms).min().map_or(0, |t| now_ms.saturating_sub(t));
    state.metrics.dlq_size.set(letters.len() as f64);
    state.metrics.dlq_oldest_age.set(oldest_ms as f64 / 1_000.0);
    Ok(letters.len() as u64)
}

/// Applies conflict-log retention; returns how many entries went.
pub fn expire_conflicts(
    store: &dyn mrr_storage::Store,
    now_ms: u64,
    retention_ms: u64,
    entries_max: usize,
) -> Result<usize, mrr_storage::StoreError> {
    let expired = mrr_core::conflict::expired(&store.conflicts()?, now_ms, retention_ms, entries_max);
    store.expire_conflicts(&expired)?;
    Ok(expired.len())
}
