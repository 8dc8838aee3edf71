//! `throttle_when_lag_critical`: a topic whose writes must not pile up while replication is
//! badly behind (the background reading's circuit breaker). While any peer's freshness lag, as
//! this region sees it, is past `health.lag_critical`, writes to such a topic answer 503
//! `lag_critical` with `Retry-After`, and resume by themselves once the lag is back under it.
//! Other topics are never throttled. Pure decision over the status board; no state of its own.

use axum::http::StatusCode;
use mrr_api::ErrorCode;
use mrr_core::Key;

use crate::http::{ApiError, ApiResult, AppState};

/// Seconds a throttled client is told to wait: replication lag moves on heartbeat scale.
const RETRY_AFTER_S: u64 = 1;

/// Refuses the write when one of `keys`' topics is throttled and a peer's lag is critical.
pub(crate) fn check<'a>(state: &AppState, mut keys: impl Iterator<Item = &'a Key>) -> ApiResult<()> {
    let Some(topic) = keys.find(|k| state.throttled_topics.contains(&k.topic)).map(|k| k.topic.clone()) else {
        return Ok(());
    };
    let critical_ms = u64::try_from(state.health.lag_critical.as_millis()).unwrap_or(u64::MAX);
    let uptime_ms = u64::try_from(state.started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let behind: Vec<String> = state
        .status
        .snapshot(state.clock.now_ms())
        .into_iter()
        .filter_map(|p| {
            // Never caught up: as stale as this node is old (as `/health` counts it).
            let lag_ms = p.freshness_lag_ms.unwrap_or(uptime_ms);
            (lag_ms >= critical_ms).then(|| format!("{} ({lag_ms} ms)", p.region))
        })
        .collect();
    if behind.is_empty() {
        return Ok(());
    }
    let e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::LagCritical,
        format!(
            "topic {topic} takes no writes while replication lag is past health.lag_critical ({critical_ms} ms): {} behind; nothing was written, retry after {RETRY_AFTER_S} s",
            behind.join(", ")
        ),
    );
    Err(e.with_extra(|x| x.retry_after_s = Some(RETRY_AFTER_S)))
}
