//! `/metrics`: the node's Prometheus registry. Each node has its own recorder (several nodes
//! share a process under `mrr dev`), so nothing here touches the process-global one.

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use mrr_replication::metrics::SharedRecorder;

/// Buckets of every `*_seconds` histogram, with millisecond resolution where WAN lag lives:
/// from loopback to a stalled link. (Prometheus wants base units; dashboards show ms.)
const SECONDS_BUCKETS: &[f64] =
    &[0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

static METADATA: Metadata<'static> = Metadata::new("mrr", Level::INFO, Some(module_path!()));

pub fn recorder() -> (SharedRecorder, PrometheusHandle) {
    let builder = PrometheusBuilder::new();
    // A fixed, non-empty bucket list cannot be refused.
    let builder = builder
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .unwrap_or_else(|e| unreachable!("{e}"));
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    (Arc::new(recorder), handle)
}

/// Metrics of the API side of a node.
#[derive(Clone)]
pub struct ServerMetrics {
    pub handle: PrometheusHandle,
    pub write_latency_put: Histogram,
    pub write_latency_delete: Histogram,
    pub write_latency_patch: Histogram,
    pub write_latency_ops: Histogram,
    pub write_latency_batch: Histogram,
    pub write_errors: Counter,
    pub storage_bytes: Gauge,
    pub dlq_size: Gauge,
    pub dlq_oldest_age: Gauge,
    /// Decrements this region lacked the rights for, sent on to a holder.
    pub escrow_forwarded: Counter,
    /// TLS material swapped in after its files changed (or on SIGHUP).
    pub tls_reloaded: Counter,
    /// Changed TLS files refused (the material in use stayed).
    pub tls_reload_refused: Counter,
    /// API keys or cluster secrets swapped in after the config file changed.
    pub config_reloaded: Counter,
    /// A changed config refused (the keys and secrets in use stayed).
    pub config_reload_refused: Counter,
    /// `mrr_membership_epoch` and `mrr_member_regions{state}` (joining, active).
    pub membership_epoch: Gauge,
    pub member_regions: [Gauge; 2],
}

impl std::fmt::Debug for ServerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerMetrics")
    }
}

impl ServerMetrics {
    pub fn new(r: &(dyn Recorder + Send + Sync), handle: PrometheusHandle) -> Self {
        r.describe_histogram(
            "mrr_write_latency_seconds".into(),
            Some(Unit::Seconds),
            "Client write latency at this node, request to durable commit.".into(),
        );
        r.describe_counter(
            "mrr_write_errors_total".into(),
            Some(Unit::Count),
            "Client writes that failed to commit.".into(),
        );
        r.describe_gauge(
            "mrr_storage_bytes".into(),
            Some(Unit::Bytes),
            "Bytes this node's store occupies on disk.".into(),
        );
        r.describe_gauge(
            "mrr_dlq_size".into(),
            Some(Unit::Count),
            "Changes in this region's dead-letter queue (admitted, not applied).".into(),
        );
        r.describe_gauge(
            "mrr_dlq_oldest_age_seconds".into(),
            Some(Unit::Seconds),
            "Age of the oldest dead letter (0 when the queue is empty).".into(),
        );
        r.describe_counter(
            "mrr_escrow_forwarded_total".into(),
            Some(Unit::Count),
            "Decrements of bounded fields this region lacked the rights for, sent on to a region holding them (on_insufficient: forward).".into(),
        );
        r.describe_counter(
            "mrr_tls_reloads_total".into(),
            Some(Unit::Count),
            "Reloads of this region's certificate, key and CA after their files changed or on SIGHUP, by result: ok (in use for new connections) or refused (the files failed a check; the material in use stayed).".into(),
        );
        r.describe_counter(
            "mrr_config_reloads_total".into(),
            Some(Unit::Count),
            "Reloads of the API keys and cluster secrets from the changed config file, by result: ok (in use from then on) or refused (the file failed a check; the keys and secrets in use stayed).".into(),
        );
        r.describe_gauge(
            "mrr_membership_epoch".into(),
            Some(Unit::Count),
            "Membership changes this region has applied (0: the configs' regions).".into(),
        );
        r.describe_gauge(
            "mrr_member_regions".into(),
            Some(Unit::Count),
            "Member regions by state: joining (installing a snapshot, catching up) and active.".into(),
        );
        let reloads = |name: &'static str, result: &'static str| {
            r.register_counter(&Key::from_parts(name, vec![Label::new("result", result)]), &METADATA)
        };
        let latency = |op: &'static str| {
            r.register_histogram(&Key::from_parts("mrr_write_latency_seconds", vec![Label::new("op", op)]), &METADATA)
        };
        Self {
            handle,
            write_latency_put: latency("put"),
            write_latency_delete: latency("delete"),
            write_latency_patch: latency("patch"),
            write_latency_ops: latency("ops"),
            write_latency_batch: latency("batch"),
            write_errors: r.register_counter(&Key::from_name("mrr_write_errors_total"), &METADATA),
            storage_bytes: r.register_gauge(&Key::from_name("mrr_storage_bytes"), &METADATA),
            dlq_size: r.register_gauge(&Key::from_name("mrr_dlq_size"), &METADATA),
            dlq_oldest_age: r.register_gauge(&Key::from_name("mrr_dlq_oldest_age_seconds"), &METADATA),
            escrow_forwarded: r.register_counter(&Key::from_name("mrr_escrow_forwarded_total"), &METADATA),
            tls_reloaded: reloads("mrr_tls_reloads_total", "ok"),
            tls_reload_refused: reloads("mrr_tls_reloads_total", "refused"),
            config_reloaded: reloads("mrr_config_reloads_total", "ok"),
            config_reload_refused: reloads("mrr_config_reloads_total", "refused"),
            membership_epoch: r.register_gauge(&Key::from_name("mrr_membership_epoch"), &METADATA),
            member_regions: ["joining", "active"].map(|state| {
                r.register_gauge(&Key::from_parts("mrr_member_regions", vec![Label::new("state", state)]), &METADATA)
            }),
        }
    }
}
