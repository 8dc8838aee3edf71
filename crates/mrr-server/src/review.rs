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
use mrr_storage::ConflictCursor;
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
    /// Resume after the entry a previous page ended with (`next_cursor`).
    cursor: Option<String>,
    /// Page size, at most 1000 (default 100).
    limit: Option<usize>,
}

const PAGE_MAX: usize = 1_000;
/// Entries one request looks at, at most, when a topic filter skips others: a page may then
/// come back short, with a cursor to go on from.
const SCAN_MAX: usize = 10_000;

/// The conflict log: writes that lost to a concurrent write (or were merged with one by a
/// handler), oldest first. Updates made after seeing the other write are not conflicts. A
/// page costs the same however long the log is (a time index; a cursor resumes it exactly).
#[utoipa::path(get, path = "/v1/conflicts", params(ConflictQuery), responses((status = 200, body = ConflictList), (status = 400, body = ErrorBody)))]
pub async fn list_conflicts(
    State(state): State<AppState>,
    crate::http::ApiQuery(q): crate::http::ApiQuery<ConflictQuery>,
) -> ApiResult<Json<ConflictList>> {
    let limit = q.limit.unwrap_or(100).clamp(1, PAGE_MAX);
    let since = q.since.unwrap_or(0);
    let cursor = match q.cursor.as_deref() {
        Some(c) => Some(ConflictCursor::decode(c).ok_or_else(|| {
            ApiError::bad(
                ErrorCode::InvalidQuery,
                format!("{c:?} is not a cursor this endpoint handed out (next_cursor)"),
            )
        })?),
        None => None,
    };
    let page = conflict_page(&*state.store, since, cursor, q.topic.as_deref(), limit)?;
    let Page { entries, next_since, next_cursor } = page;
    Ok(Json(ConflictList { conflicts: entries.iter().map(conflict_view).collect(), next_since, next_cursor }))
}

/// One page of the conflict log.
#[derive(Debug)]
struct Page {
    entries: Vec<ConflictEntry>,
    next_since: Option<u64>,
    next_cursor: Option<String>,
}

/// Reads one page: at most `limit` entries from `since` (or after `cursor`), of `topic` only
/// when given, looking at no more than [`SCAN_MAX`] entries.
fn conflict_page(
    store: &dyn mrr_storage::Store,
    since: u64,
    mut cursor: Option<ConflictCursor>,
    topic: Option<&str>,
    limit: usize,
) -> Result<Page, mrr_storage::StoreError> {
    // One entry beyond the page says whether there is more, and where the page may end.
    let mut entries: Vec<ConflictEntry> = Vec::new();
    let mut scanned = 0;
    let mut exhausted = false;
    while entries.len() <= limit && scanned < SCAN_MAX {
        let chunk = store.conflicts_after(since, cursor.as_ref(), (limit + 1).min(SCAN_MAX - scanned))?;
        scanned += chunk.len();
        let Some(last) = chunk.last() else {
            exhausted = true;
            break;
        };
        cursor = Some(ConflictCursor::of(last));
        entries.extend(chunk.into_iter().filter(|e| topic.is_none_or(|t| e.key.topic == t)));
    }
    let (mut next_since, mut next_cursor) = (None, None);
    if entries.len() > limit {
        // A page ends between two detection times where it can, so `since` resumes exactly.
        let cut_ms = entries[limit].detected_at_ms;
        let end = match entries[..limit].partition_point(|e| e.detected_at_ms < cut_ms) {
            0 => limit,
            end => end,
        };
        next_since = Some(entries[end].detected_at_ms);
        entries.truncate(end);
        next_cursor = entries.last().map(|e| ConflictCursor::of(e).encode());
    } else if !exhausted && scanned >= SCAN_MAX {
        // The filter skipped this many entries: a short page, and where to go on from.
        next_cursor = cursor.as_ref().map(ConflictCursor::encode);
        next_since = cursor.as_ref().map(|c| c.detected_at_ms);
    }
    Ok(Page { entries, next_since, next_cursor })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    /// Start after this change id (`next_after` of the previous page).
    after: Option<String>,
    /// Page size, at most 1000 (default 100).
    limit: Option<usize>,
}

/// This region's dead-letter queue: changes admitted (so replication moved on) that could not
/// be applied, with the reason. Paginated in id order.
#[utoipa::path(get, path = "/v1/dlq", params(DeadLetterQuery), responses((status = 200, body = DeadLetterList), (status = 400, body = ErrorBody)))]
pub async fn list_dead_letters(
    State(state): State<AppState>,
    crate::http::ApiQuery(q): crate::http::ApiQuery<DeadLetterQuery>,
) -> ApiResult<Json<DeadLetterList>> {
    let limit = q.limit.unwrap_or(100).clamp(1, PAGE_MAX);
    let after = q.after.as_deref().map(parse_id).transpose()?;
    let mut letters = state.store.dead_letters_after(after.as_ref(), limit + 1)?;
    let next_after = if letters.len() > limit {
        letters.truncate(limit);
        letters.last().map(|d| d.id.to_string())
    } else {
        None
    };
    Ok(Json(DeadLetterList {
        dead_letters: letters.iter().map(letter_view).collect(),
        next_after,
        total: state.store.dead_letter_count(),
        max_entries: state.dlq_max_entries,
    }))
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
    opts: crate::write_acks::WriteOptions,
    Path(id): Path<String>,
) -> ApiResult<crate::write_acks::Written<Json<RecordEnvelope>>> {
    let id = parse_id(&id)?;
    write_one(&state, LocalOp::Replay { id }, &opts).await
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

/// Sets the dead-letter gauges from the store's count and time index; returns the queue's size.
pub fn refresh_dlq_gauges(state: &AppState) -> ApiResult<u64> {
    let size = state.store.dead_letter_count();
    let now_ms = state.clock.now_ms();
    let oldest_ms = state.store.oldest_dead_letter_ms()?.map_or(0, |t| now_ms.saturating_sub(t));
    state.metrics.dlq_size.set(size as f64);
    state.metrics.dlq_oldest_age.set(oldest_ms as f64 / 1_000.0);
    Ok(size)
}

/// Applies conflict-log retention, oldest first, a page at a time: the cost is the entries
/// that go, not the length of the log. Returns how many went.
pub fn expire_conflicts(
    store: &dyn mrr_storage::Store,
    now_ms: u64,
    retention_ms: u64,
    entries_max: usize,
) -> Result<usize, mrr_storage::StoreError> {
    const PAGE: usize = 1_024;
    let mut gone = 0;
    loop {
        let oldest = store.conflicts_after(0, None, PAGE)?;
        let count = usize::try_from(store.conflict_count()).unwrap_or(usize::MAX);
        let expired = mrr_core::conflict::expired(&oldest, count, now_ms, retention_ms, entries_max);
        if expired.is_empty() {
            return Ok(gone);
        }
        store.expire_conflicts(&expired)?;
        gone += expired.len();
        if expired.len() < oldest.len() {
            return Ok(gone);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mrr_core::{Key, Lane, RegionName, Timestamp, Version};
    use mrr_storage::{CommitBatch, MemStore, Store};

    fn entry(topic: &str, seq: u64, at_ms: u64) -> ConflictEntry {
        let r = RegionName::new("us-west").expect("valid");
        let side = |seq| Side {
            id: ChangeId { origin: r.clone(), lane: Lane::Normal, seq },
            version: Version { ts: Timestamp::new(seq, 0), region: r.clone() },
            value: None,
        };
        ConflictEntry {
            key: Key::new(topic, "k"),
            strategy: "timestamp".into(),
            resolution: "last_writer_wins".into(),
            loser: side(seq),
            winner: side(seq + 1_000),
            fields: vec![],
            detected_at_ms: at_ms,
        }
    }

    fn store_with(entries: Vec<ConflictEntry>) -> MemStore {
        let store = MemStore::new();
        store.commit(&CommitBatch { conflicts: entries, ..CommitBatch::default() }).expect("commit");
        store
    }

    /// Every entry once, in order, following `next_cursor`; and `next_since` pages end
    /// between detection times where they can.
    #[test]
    fn cursors_page_through_without_repeats_and_since_ends_pages_between_times() {
        // Five at 100 ms, then two at 200.
        let mut all: Vec<_> = (1..=5).map(|s| entry("t", s, 100)).collect();
        all.push(entry("t", 6, 200));
        all.push(entry("t", 7, 200));
        let store = store_with(all.clone());
        let (mut seen, mut cursor) = (Vec::new(), None);
        loop {
            let page = conflict_page(&store, 0, cursor, None, 2).expect("page");
            seen.extend(page.entries.iter().map(|e| e.loser.id.seq));
            match page.next_cursor {
                Some(c) => cursor = Some(ConflictCursor::decode(&c).expect("cursor")),
                None => break,
            }
        }
        assert_eq!(seen, [1, 2, 3, 4, 5, 6, 7]);
        let page = conflict_page(&store, 0, None, None, 6).expect("page");
        assert_eq!(page.entries.len(), 5, "cut before 200 so that since=200 repeats nothing");
        assert_eq!(page.next_since, Some(200));
        let page = conflict_page(&store, 0, None, None, 3).expect("page");
        assert_eq!((page.entries.len(), page.next_since), (3, Some(100)), "one millisecond fills the page");
    }

    #[test]
    fn a_topic_filter_looks_at_a_bounded_number_of_entries() {
        let mut all: Vec<_> = (1..=(SCAN_MAX as u64 + 5)).map(|s| entry("other", s, s)).collect();
        all.push(entry("t", 1_000_000, 2_000_000));
        let store = store_with(all);
        let page = conflict_page(&store, 0, None, Some("t"), 10).expect("page");
        assert!(page.entries.is_empty(), "only other topics in the first {SCAN_MAX}");
        let cursor = ConflictCursor::decode(&page.next_cursor.expect("more to look at")).expect("cursor");
        let page = conflict_page(&store, 0, Some(cursor), Some("t"), 10).expect("page");
        assert_eq!(page.entries.len(), 1);
        assert_eq!(page.next_cursor, None);
    }
}
