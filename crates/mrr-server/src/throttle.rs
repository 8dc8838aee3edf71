//! `throttle_when_lag_critical`: a topic whose writes must not pile up while replication is
//! badly behind (the background reading's circuit breaker). While any peer's freshness lag, as
//! this region sees it, is past `health.lag_critical`, writes to such a topic answer 503
//! `lag_critical` with `Retry-After`, and resume by themselves once the lag is back under it.
//! Other topics are never throttled. The verdict is `/health`'s (`crate::health::evaluate`);
//! no state of its own.

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
    // `/health`'s own verdict per region: the same lag, the same thresholds.
    let peers = state.status.snapshot(state.clock.now_ms());
    let health =
        crate::health::evaluate(state.region.as_str(), &peers, state.health, state.started.elapsed(), 0, &[], &[]);
    let behind: Vec<String> = health
        .regions
        .iter()
        .filter(|r| r.status == mrr_api::HealthStatus::Critical)
        .map(|r| format!("{} ({} ms)", r.region, r.lag_ms))
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
