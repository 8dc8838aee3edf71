//! No message a receiver must refuse: a backlog of records as large as `record_bytes_max`
//! allows crosses in batches bounded in bytes (the urgent lane included), while later small
//! writes keep flowing.

mod common;

use std::time::{Duration, Instant};

use common::{pair_with, wait_for_record};
use mrr_client::LinkSettings;
use serde_json::json;

const RECORDS: usize = 200;

/// About `bytes` of text that does not compress to nothing.
fn noise(seed: usize, bytes: usize) -> String {
    let mut x = (seed as u64 + 1).wrapping_mul(6364136223846793005);
    let mut s = String::with_capacity(bytes + 16);
    while s.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!("{x:016x}"));
    }
    s.truncate(bytes);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_the_largest_records_on_the_urgent_lane_crosses_while_small_writes_flow() -> anyhow::Result<()> {
    let p = pair_with(["same-secret-0123456789"; 2], [None, None], "links: {}\n").await?;
    let c = &p.clients;
    // The backlog builds up behind a cut, so one read of the changelog could take all of it.
    let cut = LinkSettings { partitioned: true, ..LinkSettings::default() };
    c[0].set_link("us-west", cut).await?;
    let urgent = json!({"regions": ["*"], "syncFlags": ["SYNC_PRIORITY=1"]});
    // The largest record the default limits take: 1 MiB serialized, envelope included.
    let payload_bytes = mrr_core::limits::Limits::default().record_bytes_max - 64;
    for i in 0..RECORDS {
        c[0].put(&format!("blobs/b{i}"), &json!({"p": noise(i, payload_bytes), "__metadata": urgent})).await?;
    }
    c[0].set_link("us-west", LinkSettings::default()).await?;
    // Small writes made after the backlog keep arriving while it crosses.
    let start = Instant::now();
    let mut small_lags_ms = Vec::new();
    for i in 0..5 {
        let path = format!("users/u{i}");
        c[0].put(&path, &json!({"n": i})).await?;
        let written = Instant::now();
        wait_for_record(&c[1], &path).await?;
        small_lags_ms.push(written.elapsed().as_millis());
    }
    let last = format!("blobs/b{}", RECORDS - 1);
    let record = wait_for_record(&c[1], &last).await?;
    assert_eq!(record.token.lane, "urgent");
    assert_eq!(record.token.seq, RECORDS as u64, "every large record crossed, in order");
    let status = c[1].status().await?;
    let disconnects: Vec<_> = status.peers.iter().filter_map(|p| p.last_error.clone()).collect();
    eprintln!("backlog of {RECORDS} x 1 MiB crossed in {:?}; small write lags {small_lags_ms:?} ms", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(60), "took {:?}; peer errors {disconnects:?}", start.elapsed());
    Ok(())
}
