//! A move of a `custom` record whose fold history is larger than any peer message: the
//! history goes ahead of the move in bounded pieces, the region the move places the record in
//! ends with exactly the mover's state, and small writes keep flowing meanwhile.

mod common;

use std::time::{Duration, Instant};

use common::{pair_with, wait_for_record};
use mrr_client::{BatchItem, BatchOp};
use serde_json::json;

const ENTRIES: usize = 10_000;
/// 10,000 entries of 7 KiB: a history past the 64 MiB a receiver decodes in one message.
const ENTRY_BYTES: usize = 7 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_record_with_ten_thousand_history_entries_moves_while_small_writes_flow() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let handler = dir.path().join("last.rhai");
    std::fs::write(&handler, "fn resolve(current, incoming) { incoming }")?;
    let extra = format!(
        "limits: {{ body_bytes_max: 16777216 }}\ntopics:\n  logs: {{ conflict_strategy: custom, handler: {} }}\n",
        handler.display()
    );
    let p = pair_with(["same-secret-0123456789"; 2], [None, None], &extra).await?;
    let c = &p.clients;
    let tokyo_only = json!({"regions": ["ap-northeast"]});
    let started = Instant::now();
    for chunk in (0..ENTRIES).collect::<Vec<_>>().chunks(1_000) {
        let items = chunk
            .iter()
            .map(|i| BatchItem {
                topic: "logs".into(),
                op: BatchOp::Put,
                id: None,
                record: Some(json!({"id": "k", "n": i, "pad": "x".repeat(ENTRY_BYTES), "__metadata": tokyo_only})),
            })
            .collect();
        c[0].batch(items).await?;
    }
    eprintln!("{ENTRIES} history entries written in {:?}", started.elapsed());
    assert_eq!(c[1].query("logs/k").await.ok().flatten(), None, "placed in Tokyo only");

    // The move to both regions.
    let both = json!({"regions": ["ap-northeast", "us-west"]});
    let moved = c[0].put("logs/k", &json!({"n": ENTRIES, "pad": "", "__metadata": both})).await?;
    let moved_at = Instant::now();
    // Small writes made after the move keep arriving while the history crosses.
    let mut lags_ms = Vec::new();
    for i in 0..5 {
        let path = format!("users/u{i}");
        c[0].put(&path, &json!({"n": i})).await?;
        let written = Instant::now();
        wait_for_record(&c[1], &path).await?;
        lags_ms.push(written.elapsed().as_millis());
    }
    let start = Instant::now();
    let arrived = loop {
        if let Some(r) = c[1].query("logs/k").await? {
            break r;
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(120), "the moved record did not arrive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("moved record arrived {:?} after the move; small write lags {lags_ms:?} ms", moved_at.elapsed());
    assert_eq!(arrived.value, moved.value);
    assert_eq!(arrived.version, moved.version);
    // The history crossed whole: a write in us-west now folds on top of the same state.
    c[1].put("logs/k", &json!({"n": ENTRIES + 1, "pad": ""})).await?;
    let start = Instant::now();
    while c[0].query("logs/k").await?.map(|r| r.value["n"].clone()) != Some(json!(ENTRIES + 1)) {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(30), "us-west's write did not reach Tokyo");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
