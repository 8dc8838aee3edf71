//! Priority lanes end to end: over a capped, delayed link carrying a bulk backlog of tens of
//! thousands of changes, urgent writes (`SYNC_PRIORITY=1`) arrive with lag close to the link
//! delay, long before the backlog has drained, and the backlog still drains completely.

mod common;

use std::time::{Duration, Instant};

use common::{pair_with, wait_for_record};
use mrr_client::{BatchItem, BatchOp, Client, LinkSettings};
use serde_json::json;

const BULK_CHANGES: usize = 20_000;
const URGENT_WRITES: usize = 10;
const DELAY_MS: u64 = 50;
/// Low enough that the compressed backlog takes many seconds to cross: about 25 s, so that
/// most of it is still queued after the writes that build it, even when a loaded machine takes
/// several seconds over them (at 256 KiB/s it once drained below half meanwhile).
const BANDWIDTH_BYTES_PER_S: u64 = 128 * 1024;

/// A value that does not compress to nothing (the cap is on compressed bytes).
fn noise(i: usize) -> String {
    let mut x = (i as u64).wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..12)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{:016x}", x)
        })
        .collect()
}

async fn backlog(client: &Client) -> anyhow::Result<u64> {
    let status = client.status().await?;
    Ok(status.peers.iter().map(|p| p.backlog_changes).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_writes_overtake_a_bulk_backlog_on_a_capped_link() -> anyhow::Result<()> {
    let p = pair_with(["same-secret-0123456789"; 2], [None, None], "links: {}\n").await?;
    let c = &p.clients;
    let link =
        LinkSettings { delay_ms: DELAY_MS, bandwidth_bytes_per_s: BANDWIDTH_BYTES_PER_S, ..LinkSettings::default() };
    c[0].set_link("us-west", link).await?;
    c[1].set_link("ap-northeast", LinkSettings { delay_ms: DELAY_MS, ..LinkSettings::default() }).await?;

    // The bulk backlog: written far faster than the link can carry it.
    let meta = json!({"regions": ["*"], "syncFlags": ["BULK"]});
    for chunk in (0..BULK_CHANGES).collect::<Vec<_>>().chunks(1_000) {
        let items = chunk
            .iter()
            .map(|i| BatchItem {
                topic: "events".into(),
                op: BatchOp::Put,
                id: None,
                record: Some(json!({"id": format!("e{i}"), "payload": noise(*i), "__metadata": meta})),
            })
            .collect();
        c[0].batch(items).await?;
    }
    let queued = backlog(&c[0]).await?;
    assert!(queued > BULK_CHANGES as u64 / 2, "the link must still be carrying the backlog, {queued} left");

    // Urgent writes during the backlog: each is visible in us-west soon after it is acknowledged.
    let urgent = json!({"regions": ["*"], "syncFlags": ["SYNC_PRIORITY=1"]});
    let mut lags_ms = Vec::new();
    for i in 0..URGENT_WRITES {
        let path = format!("stock/s{i}");
        c[0].put(&path, &json!({"qty": 100 - i, "__metadata": urgent})).await?;
        let written = Instant::now();
        wait_for_record(&c[1], &path).await?;
        lags_ms.push(written.elapsed().as_millis() as u64);
    }
    let left = backlog(&c[0]).await?;
    eprintln!("urgent lags {lags_ms:?} ms, {left} bulk changes still queued");
    assert!(left > 0, "urgent writes must have arrived while bulk was still draining");
    lags_ms.sort_unstable();
    let max_ms = lags_ms[lags_ms.len() - 1];
    // The link's own delay is 50 ms; the backlog in front would take seconds. The bound leaves
    // room for a debug build on a loaded machine, not for waiting behind the backlog.
    assert!(max_ms < 1_000, "urgent lag {lags_ms:?} ms with {left} bulk changes still queued");

    // The backlog drains completely, in order, behind them.
    let start = Instant::now();
    while backlog(&c[0]).await? > 0 {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(120), "bulk backlog did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("bulk drained {:?} after the urgent writes", start.elapsed());
    let last = format!("events/e{}", BULK_CHANGES - 1);
    let record = wait_for_record(&c[1], &last).await?;
    assert_eq!(record.token.lane, "bulk");
    assert_eq!(record.token.seq, BULK_CHANGES as u64, "every bulk change crossed, in its own stream");
    Ok(())
}
