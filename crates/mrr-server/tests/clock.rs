//! A node whose clock is wrong stops acknowledging writes that cannot replicate: stepped
//! forward beyond `max_clock_skew`, it refuses writes with 503 `clock_skew` (health critical,
//! reads going on) while its peer keeps writing; stepped back, it refuses until its hybrid
//! clock is no longer ahead; every write it acknowledged reaches the peer.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{pair_with, wait_for_record, ShiftedClock};
use mrr_api::{ErrorCode, HealthStatus};
use mrr_client::{Client, ClientError, RecordEnvelope};
use serde_json::json;

/// Writes `path`: `Ok` when acknowledged, `Err(message)` when refused for clock skew.
async fn put(client: &Client, path: &str) -> anyhow::Result<Result<RecordEnvelope, String>> {
    match client.put(path, &json!({"at": path})).await {
        Ok(r) => Ok(Ok(r)),
        Err(ClientError::Api { status: 503, code: ErrorCode::ClockSkew, message, .. }) => Ok(Err(message)),
        Err(e) => Err(e.into()),
    }
}

/// Writes `prefix0`, `prefix1`... until one is refused for clock skew, within `deadline`;
/// returns the refusal and the writes acknowledged before it.
async fn until_refused(client: &Client, prefix: &str, deadline: Duration) -> anyhow::Result<(String, Vec<String>)> {
    let start = Instant::now();
    let mut accepted = Vec::new();
    for i in 0.. {
        let path = format!("{prefix}{i}");
        match put(client, &path).await? {
            Err(message) => return Ok((message, accepted)),
            Ok(_) => accepted.push(path),
        }
        anyhow::ensure!(start.elapsed() < deadline, "writes were still accepted after {deadline:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unreachable!("the loop returns or fails")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_stepped_ahead_refuses_writes_until_it_is_back_and_nothing_acknowledged_is_stranded(
) -> anyhow::Result<()> {
    let clock = Arc::new(ShiftedClock::default());
    let p = pair_with(["same-secret-0123456789"; 2], [Some(clock.clone()), None], "links: {}\n").await?;
    let c = &p.clients;
    c[0].put("users/before", &json!({"n": 0})).await?;
    wait_for_record(&c[1], "users/before").await?;

    // A forward step of 5 s, far beyond max_clock_skew (200 ms), while the peer cannot be
    // heard: the node has no news of its offset yet, and takes a write stamped 5 s ahead.
    let cut = mrr_client::LinkSettings { partitioned: true, ..Default::default() };
    c[0].set_link("us-west", cut).await?;
    c[1].set_link("ap-northeast", cut).await?;
    assert!(c[0].link("us-west").await?.partitioned, "GET /v1/admin/links/{{peer}} shows the cut");
    tokio::time::sleep(Duration::from_millis(300)).await; // no ack is on its way any more
    clock.offset_ms.store(5_000, Ordering::Relaxed);
    let mut acknowledged = vec!["users/stamped-ahead".to_owned()];
    c[0].put("users/stamped-ahead", &json!({"n": 1})).await?;
    c[0].set_link("us-west", Default::default()).await?;
    c[1].set_link("ap-northeast", Default::default()).await?;
    // Heard again, the peer's clock shows the step: writes are refused.
    let (message, more) = until_refused(&c[0], "users/ahead", Duration::from_secs(15)).await?;
    acknowledged.extend(more);
    assert!(message.contains("ahead of 1 of the 1 peers") && message.contains("200 ms"), "{message}");
    let health = c[0].health().await?;
    assert_eq!(health.status, HealthStatus::Critical, "{health:?}");
    assert!(health.warnings.iter().any(|w| w.contains("max_clock_skew")), "{health:?}");
    // Reads go on, and the peer (whose clock is right) keeps taking writes.
    assert!(c[0].query("users/before").await?.is_some());
    c[1].put("users/from-the-peer", &json!({"n": 1})).await?;

    // The clock steps back. A write taken before the step was noticed carries a stamp ~5 s
    // ahead, and so does the hybrid clock: writes are refused until it has passed.
    clock.offset_ms.store(0, Ordering::Relaxed);
    // Once the peer's clock reads right again from here, only the hybrid clock is ahead.
    let start = Instant::now();
    while !c[0].status().await?.peers.iter().all(|p| p.clock_skew_ms.is_some_and(|s| s.abs() < 1_000)) {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(10), "the offset was not measured again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = put(&c[0], "users/just-after-the-step-back").await?;
    assert!(refused.is_err(), "the hybrid clock is still ahead: {refused:?}");
    let start = Instant::now();
    loop {
        match put(&c[0], "users/back").await? {
            Ok(_) => break,
            Err(message) => {
                anyhow::ensure!(start.elapsed() < Duration::from_secs(15), "still refused: {message}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_ne!(c[0].health().await?.status, HealthStatus::Critical);
    acknowledged.push("users/back".into());
    // Everything acknowledged replicates, the writes stamped ahead included.
    for path in &acknowledged {
        wait_for_record(&c[1], path).await?;
    }
    wait_for_record(&c[0], "users/from-the-peer").await?;
    Ok(())
}
