//! `/health`: per-region status from freshness lag, with thresholds. Pure: takes the status
//! board's snapshot and the time, returns the verdict.
//!
//! Freshness lag grows while a peer's stream is silent (heartbeats carry the peer's durable
//! position, so an idle but healthy stream keeps it near the network delay); a region that
//! stops replicating turns critical within `lag_critical` even with no traffic at all.

use std::time::Duration;

use mrr_api::{Health, HealthStatus, PeerStatus, RegionHealth};

#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    pub lag_warn: Duration,
    pub lag_critical: Duration,
    pub freshness_target: Duration,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `dead_letters`: the size of the dead-letter queue; changes waiting there make the node warn.
/// `critical`: node-level conditions that make it critical whatever its peers' lag (a clock
/// beyond max_clock_skew, a writer stopped by a failed commit), each a sentence. `warn`:
/// node-level conditions that make it warn (a region holding retention back, or let go), each a
/// sentence.
pub fn evaluate(
    region: &str,
    peers: &[PeerStatus],
    thresholds: Thresholds,
    uptime: Duration,
    dead_letters: u64,
    critical: &[String],
    warn: &[String],
) -> Health {
    let (warn_ms, critical_ms, target_ms) =
        (ms(thresholds.lag_warn), ms(thresholds.lag_critical), ms(thresholds.freshness_target));
    let regions: Vec<RegionHealth> = peers
        .iter()
        .map(|p| {
            let lag_ms = p.freshness_lag_ms.unwrap_or_else(|| ms(uptime));
            let (outbound_connected, inbound_connected) = (p.outbound == "connected", p.inbound_streams > 0);
            let status = if lag_ms >= critical_ms {
                HealthStatus::Critical
            } else if lag_ms >= warn_ms {
                HealthStatus::Warn
            } else {
                HealthStatus::Ok
            };
            let reason = (status != HealthStatus::Ok).then(|| {
                let mut why = format!("replication from {} is {lag_ms} ms behind", p.region);
                if !inbound_connected {
                    why.push_str(&format!("; no stream from {}", p.region));
                }
                if !outbound_connected {
                    let err = p.last_error.as_deref().unwrap_or("not connected");
                    why.push_str(&format!("; stream to {}: {err}", p.region));
                }
                why
            });
            RegionHealth {
                region: p.region.clone(),
                status,
                lag_ms,
                beyond_freshness_target: lag_ms > target_ms,
                outbound_connected,
                inbound_connected,
                reason,
            }
        })
        .collect();
    let mut warnings = Vec::new();
    if dead_letters > 0 {
        warnings.push(format!("{dead_letters} change(s) in the dead-letter queue: see GET /v1/dlq"));
    }
    warnings.extend(warn.iter().cloned());
    let node = if !critical.is_empty() {
        HealthStatus::Critical
    } else if warnings.is_empty() {
        HealthStatus::Ok
    } else {
        HealthStatus::Warn
    };
    warnings.splice(0..0, critical.iter().cloned());
    Health {
        status: regions.iter().map(|r| r.status).chain([node]).max().unwrap_or(HealthStatus::Ok),
        dead_letters,
        warnings,
        region: region.to_owned(),
        lag_warn_ms: warn_ms,
        lag_critical_ms: critical_ms,
        freshness_target_ms: target_ms,
        regions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(region: &str, freshness_lag_ms: Option<u64>, connected: bool) -> PeerStatus {
        PeerStatus {
            region: region.into(),
            outbound: if connected { "connected" } else { "backoff" }.into(),
            inbound_streams: u32::from(connected),
            freshness_lag_ms,
            ..Default::default()
        }
    }

    const T: Thresholds = Thresholds {
        lag_warn: Duration::from_secs(5),
        lag_critical: Duration::from_secs(30),
        freshness_target: Duration::from_millis(500),
    };

    #[test]
    fn thresholds_and_worst_status() {
        let h = evaluate(
            "a",
            &[peer("b", Some(120), true), peer("c", Some(6_000), true)],
            T,
            Duration::from_secs(60),
            0,
            &[],
            &[],
        );
        assert_eq!(h.status, HealthStatus::Warn);
        assert_eq!(h.regions[0].status, HealthStatus::Ok);
        assert!(!h.regions[0].beyond_freshness_target);
        assert!(h.regions[1].beyond_freshness_target);
        let h = evaluate("a", &[peer("b", Some(31_000), false)], T, Duration::from_secs(60), 0, &[], &[]);
        assert_eq!(h.status, HealthStatus::Critical);
        assert!(h.regions[0].reason.as_deref().is_some_and(|r| r.contains("no stream from b")), "{h:?}");
    }

    #[test]
    fn a_region_never_heard_from_turns_critical_with_uptime() {
        let never = [peer("b", None, false)];
        assert_eq!(evaluate("a", &never, T, Duration::from_secs(1), 0, &[], &[]).status, HealthStatus::Ok);
        assert_eq!(evaluate("a", &never, T, Duration::from_secs(10), 0, &[], &[]).status, HealthStatus::Warn);
        assert_eq!(evaluate("a", &never, T, Duration::from_secs(30), 0, &[], &[]).status, HealthStatus::Critical);
        assert_eq!(evaluate("a", &[], T, Duration::from_secs(99), 0, &[], &[]).status, HealthStatus::Ok);
        let dlq = evaluate("a", &[], T, Duration::from_secs(99), 2, &[], &[]);
        assert_eq!(dlq.status, HealthStatus::Warn);
        assert!(dlq.warnings[0].contains("2 change(s) in the dead-letter queue"), "{dlq:?}");
        let held = ["region b has been away 60 s and holds changelog truncation back".to_owned()];
        let h = evaluate("a", &[], T, Duration::from_secs(99), 0, &[], &held);
        assert_eq!(h.status, HealthStatus::Warn);
        assert_eq!(h.warnings, held.to_vec());
    }
}
