//! Whether this node takes writes right now, and why not.
//!
//! Two node-level conditions stop writes while reads go on: a clock too far ahead of the
//! peers' for the writes to replicate ([`mrr_core::clock_check`], 503 `clock_skew`), and a
//! writer stopped by a commit that failed part way ([`mrr_writer::WriteError::Failed`], which
//! the writer answers itself). Both make `/health` critical, and so does a dead-letter queue
//! near its bound, which is about to hold replication back. Each change of the clock verdict
//! is logged once, here, where it is decided. This module decides nothing about replication.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use mrr_api::ErrorCode;
use mrr_core::clock_check::{self, Skewed};

use crate::http::{ApiError, AppState};

/// A measurement older than this no longer counts (peers measure at every ack; a peer that
/// has been silent this long says nothing about clocks now).
const CLOCK_FRESH_MS: u64 = 30_000;

#[derive(Debug)]
pub struct Admission {
    max_skew_ms: u64,
    refusing: AtomicBool,
    metric: metrics::Gauge,
}

impl Admission {
    pub fn new(max_skew_ms: u64, recorder: &(dyn metrics::Recorder + Send + Sync)) -> Arc<Self> {
        recorder.describe_gauge(
            "mrr_clock_skew_refusing".into(),
            None,
            "1 while this node refuses writes because its clock is beyond max_clock_skew ahead of most peers.".into(),
        );
        let metric = recorder.register_gauge(
            &metrics::Key::from_name("mrr_clock_skew_refusing"),
            &metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!())),
        );
        Arc::new(Self { max_skew_ms, refusing: AtomicBool::new(false), metric })
    }

    /// The clock verdict now; logs and sets the gauge when it changes.
    pub fn clock(&self, state: &AppState) -> Option<Skewed> {
        let now_ms = state.clock.now_ms();
        let offsets = state.status.clock_offsets(now_ms, CLOCK_FRESH_MS);
        let hlc_lead_ms = state.writer.hlc_wall_ms().saturating_sub(now_ms);
        let verdict = clock_check::check(&offsets, hlc_lead_ms, self.max_skew_ms);
        let refusing = verdict.is_some();
        if self.refusing.swap(refusing, Ordering::Relaxed) != refusing {
            match &verdict {
                Some(s) => {
                    tracing::error!(offset_ms = s.lead_ms(), hlc_lead_ms, max_clock_skew_ms = self.max_skew_ms, "{s}")
                }
                None => tracing::warn!("clock back within max_clock_skew of most peers: writes accepted again"),
            }
            self.metric.set(if refusing { 1.0 } else { 0.0 });
        }
        verdict
    }

    /// `Err` when writes must be refused now.
    pub fn check_write(&self, state: &AppState) -> Result<(), ApiError> {
        match self.clock(state) {
            Some(s) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::ClockSkew, s.to_string())),
            None => Ok(()),
        }
    }

    /// Node-level reasons for `/health` to be critical; `dead_letters`: the queue's size.
    pub fn critical(&self, state: &AppState, dead_letters: u64) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(s) = self.clock(state) {
            out.push(s.to_string());
        }
        if let Some(reason) = state.writer.failed() {
            out.push(format!("writes are stopped: {reason}; restart the node to recover from what the disk holds"));
        }
        if dead_letters.saturating_mul(10) >= state.dlq_max_entries.saturating_mul(9) {
            out.push(format!(
                "the dead-letter queue holds {dead_letters} of at most {} (dlq.max_entries): when full, replicated changes of custom topics wait; replay or discard letters (GET /v1/dlq)",
                state.dlq_max_entries
            ));
        }
        out
    }
}
