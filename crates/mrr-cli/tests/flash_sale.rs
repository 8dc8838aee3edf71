//! The article's flash sale on three `mrr serve` processes: 48 buyers, 16 per region, take
//! 1,000 items of one `consistency: strong` record with atomic updates (`if available >= qty
//! then incr available by -qty`), while the coordinator is killed (`kill -9`) and restarted in
//! the middle of the sale. Nothing oversells: the stock never goes below zero, and the
//! deductions the buyers were told succeeded sum exactly to what left the stock, in every
//! region.
//!
//! A buyer whose request got no definite answer (its region died under it, or the strong tier
//! answered 503 while it elected a new coordinator) sends the same request again, with the
//! same `request_id`, to the next region: the state machine applies a request id once, so the
//! retry either finds it applied (and answers as the first time) or applies it now.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use common::{wait_for, Cluster, REGIONS};
use mrr_client::{Client, ClientError, ErrorCode};
use serde_json::{json, Value};

const STOCK: u64 = 1_000;
const BUYERS_PER_REGION: usize = 16;
/// Attempts per buyer, and the sale's deadline: every loop is bounded.
const ATTEMPTS_MAX: usize = 2_000;
const SALE_DEADLINE: Duration = Duration::from_secs(120);
const PATH: &str = "stock/flash-1";

/// What one buyer was told.
#[derive(Debug, Default)]
struct Bought {
    items: u64,
    /// Requests answered only after a retry with the same request id.
    retried: u64,
}

fn available(record: &Value) -> Option<u64> {
    record.get("available").and_then(Value::as_u64)
}

/// Buys until the stock is gone, starting at region `home` and moving on when it fails.
async fn buyer(clients: Vec<Client>, home: usize, buyer: usize, sold: Arc<AtomicU64>) -> anyhow::Result<Bought> {
    let started = Instant::now();
    let mut bought = Bought::default();
    let mut region = home;
    let mut qty = 1 + (buyer as u64 % 2);
    let mut n = 0;
    let mut attempt = 0;
    'requests: loop {
        n += 1;
        let request_id = format!("buyer-{buyer}-{n}");
        let condition = json!({"available": {"gte": qty}});
        let then = json!([{"op": "incr", "field": "available", "by": -(qty as i64)}]);
        let mut retried = false;
        loop {
            attempt += 1;
            if attempt > ATTEMPTS_MAX || started.elapsed() > SALE_DEADLINE {
                bail!("buyer {buyer} did not finish within {ATTEMPTS_MAX} attempts / {SALE_DEADLINE:?}");
            }
            match clients[region].atomic(PATH, &condition, &then, &request_id).await {
                Ok(record) => {
                    assert!(available(&record.value).is_some(), "a deduction answers the record: {record:?}");
                    bought.items += qty;
                    bought.retried += u64::from(retried);
                    sold.fetch_add(qty, Ordering::Relaxed);
                    continue 'requests;
                }
                Err(ClientError::Api { code: ErrorCode::PreconditionFailed, current, .. }) => {
                    let left = current.as_ref().and_then(|r| available(&r.value)).context("409 carries the record")?;
                    if left == 0 {
                        return Ok(bought);
                    }
                    // Fewer left than this buyer wanted: take what there is.
                    qty = qty.min(left);
                    continue 'requests;
                }
                // No definite answer: the same request again, elsewhere. Not a new request id:
                // that one may have applied.
                Err(ClientError::Api { code: ErrorCode::StrongQuorumUnavailable, .. })
                | Err(ClientError::Http { .. }) => {
                    retried = true;
                    region = (region + 1) % clients.len();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => bail!("buyer {buyer}: {e}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flash_sale_never_oversells_while_the_coordinator_is_killed_and_restarted() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let coordinator = REGIONS[0];
    wait_for(&format!("{coordinator} to lead"), Duration::from_secs(20), || async {
        Ok((cluster.clients[1].coordinator().await?.coordinator.as_deref() == Some(coordinator)).then_some(()))
    })
    .await?;
    cluster.clients[1].put(PATH, &json!({"name": "limited sneaker", "available": STOCK})).await?;

    let sold = Arc::new(AtomicU64::new(0));
    let mut buyers = Vec::new();
    for k in 0..REGIONS.len() * BUYERS_PER_REGION {
        let clients = cluster.clients.clone();
        buyers.push(tokio::spawn(buyer(clients, k % REGIONS.len(), k, sold.clone())));
    }

    // A third of the way in, kill the coordinator; restart it at two thirds.
    let sold_at = |share: u64| {
        let sold = sold.clone();
        async move {
            wait_for(&format!("{share}% of the stock sold"), SALE_DEADLINE, || async {
                Ok((sold.load(Ordering::Relaxed) >= STOCK * share / 100).then_some(()))
            })
            .await
        }
    };
    sold_at(30).await?;
    cluster.kill9(0)?;
    let killed_with = sold.load(Ordering::Relaxed);
    sold_at(65).await?;
    let sold_while_down = sold.load(Ordering::Relaxed) - killed_with;
    cluster.spawn(0)?;

    let mut told = 0;
    let mut retried = 0;
    for b in buyers {
        let bought = b.await??;
        told += bought.items;
        retried += bought.retried;
    }
    eprintln!(
        "sold {told}; {sold_while_down} while the coordinator was down; {retried} requests answered after a retry"
    );
    assert!(sold_while_down > 0, "the sale went on without the old coordinator");

    // Every region ends with the same stock, never below zero, and exactly what the buyers
    // were told left it.
    let strong = cluster.clients[1].query_strong(PATH).await?.context("the record exists")?;
    let left = available(&strong.value).context("a count")?;
    assert_eq!(left, 0, "buyers stop only when it is sold out");
    assert_eq!(told, STOCK - left, "acknowledged deductions are exactly what left the stock");
    for (k, c) in cluster.clients.iter().enumerate() {
        let record = wait_for(&format!("{} to apply the whole sale", REGIONS[k]), Duration::from_secs(30), || async {
            Ok(c.query(PATH).await?.filter(|r| r.version == strong.version))
        })
        .await?;
        assert_eq!(available(&record.value), Some(left), "{}: {record:?}", REGIONS[k]);
    }
    // Strong writes are ordinary writes of the `strong` stream in every region's changelog.
    let mut applied = Vec::new();
    for c in &cluster.clients {
        applied.push(c.status().await?.applied.get("strong").copied().unwrap_or(0));
    }
    assert!(applied.iter().all(|n| *n == applied[0] && *n > 0), "{applied:?}");
    Ok(())
}
