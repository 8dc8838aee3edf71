//! An escrow sale on three `mrr serve` processes at `mrr dev`'s delays: 600 tickets stocked in
//! Tokyo (`tickets: { bounded: { available: { min: 0 } } }`), four buyers per region taking one
//! at a time with `{"op":"incr","field":"available","by":-1}`, Frankfurt cut off from both
//! other regions for part of the sale. A decrement is answered by the region it is sent to,
//! against the rights that region holds; rights move on their own. Nothing oversells: the
//! acknowledged sales never exceed the stock, every region ends at stock minus sales, and the
//! sale sells out once the partition heals.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use common::{wait_for, Cluster, REGIONS};
use mrr_client::{Client, ClientError, ErrorCode};
use serde_json::{json, Value};

const STOCK: u64 = 600;
const BUYERS_PER_REGION: usize = 4;
const PATH: &str = "tickets/t1";
/// Attempts per buyer, and the sale's deadline: every loop is bounded.
const ATTEMPTS_MAX: usize = 5_000;
const SALE_DEADLINE: Duration = Duration::from_secs(90);
const FRANKFURT: usize = 2;
const BUY_PACE: Duration = Duration::from_millis(20);

#[derive(Debug, Default)]
struct Tally {
    sold: u64,
    refused: u64,
    /// Sales made while Frankfurt was cut off, by this buyer.
    sold_cut: u64,
    latencies_ms: Vec<u64>,
}

/// Buys one at a time until the stock is sold out everywhere; `here` counts this region's sales.
async fn buyer(
    client: Client,
    sold: Arc<AtomicU64>,
    here: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
) -> anyhow::Result<Tally> {
    let started = Instant::now();
    let mut tally = Tally::default();
    for _ in 0..ATTEMPTS_MAX {
        if sold.load(Ordering::SeqCst) >= STOCK {
            return Ok(tally);
        }
        if started.elapsed() > SALE_DEADLINE {
            bail!("sale not over after {SALE_DEADLINE:?}: {} of {STOCK} sold", sold.load(Ordering::SeqCst));
        }
        let at = Instant::now();
        match client.ops(PATH, &json!({"op": "incr", "field": "available", "by": -1})).await {
            Ok(_) => {
                tally.sold += 1;
                tally.latencies_ms.push(u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX));
                if cut.load(Ordering::SeqCst) {
                    tally.sold_cut += 1;
                }
                sold.fetch_add(1, Ordering::SeqCst);
                here.fetch_add(1, Ordering::SeqCst);
                // Buyers at a human pace (each 50 a second at most): a region's measured
                // demand then moves rights ahead of it, instead of Tokyo's buyers emptying the
                // stock at loopback speed before a single round trip to another region ends.
                tokio::time::sleep(BUY_PACE).await;
            }
            // The region holds no rights now and has asked for some: back off as it says.
            Err(ClientError::Api { code: ErrorCode::InsufficientRights, retry_after_ms, .. }) => {
                tally.refused += 1;
                let ms = retry_after_ms.expect("insufficient_rights says when to retry");
                assert!((20..=5_000).contains(&ms), "retry_after_ms {ms}");
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Err(e) => bail!("{e}"),
        }
    }
    bail!("{ATTEMPTS_MAX} attempts without the sale ending")
}

fn available(v: &Value) -> Option<i64> {
    v.get("available").and_then(Value::as_i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escrow_sale_across_three_regions_during_a_partition_never_oversells() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let tokyo = &cluster.clients[0];

    // Bad input first: a bounded field takes only `incr`; nothing of a refused write applies.
    tokyo.ops(PATH, &json!({"op": "incr", "field": "available", "by": STOCK})).await?;
    for (what, result) in [
        ("put", tokyo.put(PATH, &json!({"available": 5})).await),
        ("patch", tokyo.patch(PATH, &json!({"available": 5})).await),
        ("set", tokyo.ops(PATH, &json!({"op": "set", "field": "available", "value": 5})).await),
        ("add", tokyo.ops(PATH, &json!({"op": "add", "field": "available", "value": 5})).await),
    ] {
        match result {
            Err(ClientError::Api { status: 409, code: ErrorCode::BoundedField, .. }) => {}
            other => bail!("{what} on a bounded field: {other:?}"),
        }
    }
    let named = tokyo.patch(PATH, &json!({"name": "Finals, row 7"})).await?;
    assert_eq!(available(&named.value), Some(STOCK as i64), "other fields are plain: {named:?}");
    for c in &cluster.clients {
        wait_for("the stock everywhere", Duration::from_secs(20), || async {
            Ok(c.query(PATH).await?.filter(|r| available(&r.value) == Some(STOCK as i64)))
        })
        .await?;
    }

    // The sale: every region's buyers; Frankfurt cut off from both others once rights have
    // reached it (it has sold some), for 4 s.
    let sold = Arc::new(AtomicU64::new(0));
    let cut = Arc::new(AtomicBool::new(false));
    let region_sold: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut buyers = Vec::new();
    for (k, client) in cluster.clients.iter().enumerate() {
        for _ in 0..BUYERS_PER_REGION {
            let task = tokio::spawn(buyer(client.clone(), sold.clone(), region_sold[k].clone(), cut.clone()));
            buyers.push((k, task));
        }
    }
    wait_for("rights to reach Frankfurt", Duration::from_secs(30), || async {
        Ok((region_sold[FRANKFURT].load(Ordering::SeqCst) > 0).then_some(()))
    })
    .await?;
    cluster.partition(0, FRANKFURT, true).await?;
    cluster.partition(1, FRANKFURT, true).await?;
    cut.store(true, Ordering::SeqCst);
    let sold_at_cut = sold.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(4)).await;
    cut.store(false, Ordering::SeqCst);
    let sold_at_heal = sold.load(Ordering::SeqCst);
    cluster.partition(0, FRANKFURT, false).await?;
    cluster.partition(1, FRANKFURT, false).await?;

    let mut per_region = [(); 3].map(|_| Tally::default());
    for (k, task) in buyers {
        let t = task.await??;
        let r = &mut per_region[k];
        r.sold += t.sold;
        r.refused += t.refused;
        r.sold_cut += t.sold_cut;
        r.latencies_ms.extend(t.latencies_ms);
    }
    let total: u64 = per_region.iter().map(|t| t.sold).sum();
    eprintln!("sold when Frankfurt was cut off: {sold_at_cut}, when it came back: {sold_at_heal}");
    for (k, t) in per_region.iter_mut().enumerate() {
        t.latencies_ms.sort_unstable();
        let p = |q: f64| t.latencies_ms.get(((t.latencies_ms.len() as f64 - 1.0) * q) as usize).copied();
        eprintln!(
            "{}: sold {} ({} while Frankfurt was cut off), refused {}, latency p50 {:?} ms p99 {:?} ms",
            REGIONS[k],
            t.sold,
            t.sold_cut,
            t.refused,
            p(0.5),
            p(0.99)
        );
    }
    // Never above the stock, and (the partition healed, buyers everywhere) sold out exactly.
    assert_eq!(total, STOCK, "acknowledged sales {total} of {STOCK}: {per_region:?}");
    assert!(sold_at_cut < STOCK, "the partition came before the sale ended ({sold_at_cut} sold)");
    // Rights moved: every region sold, though Tokyo held all of them at first; and Frankfurt,
    // cut off, went on selling the rights it held, at local latency.
    assert!(per_region.iter().all(|t| t.sold > 0), "{per_region:?}");
    assert!(per_region[FRANKFURT].sold_cut > 0, "Frankfurt sold nothing while cut off: {per_region:?}");
    // Every region ends at the bound, exactly: what was stocked minus what was acknowledged.
    for c in &cluster.clients {
        wait_for("every region at 0", Duration::from_secs(30), || async {
            Ok(c.query(PATH).await?.filter(|r| available(&r.value) == Some(0)))
        })
        .await?;
    }
    // And the bound holds after: one more is refused everywhere.
    for c in &cluster.clients {
        match c.ops(PATH, &json!({"op": "incr", "field": "available", "by": -1})).await {
            Err(ClientError::Api { code: ErrorCode::InsufficientRights, .. }) => {}
            other => bail!("a sale past the bound: {other:?}"),
        }
    }
    Ok(())
}

/// `on_insufficient: forward`: a region holding no rights sends the decrement on to the region
/// known to hold enough, which answers it; with no such region the 409 stands, naming none.
/// Under `refuse` (the default) the 409 names the holder and nothing is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_without_rights_forwards_a_decrement_to_a_holder_when_the_policy_says_so() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(|config| {
        config.replace(
            "topics:\n",
            "topics:\n  seats: { bounded: { available: { min: 0, on_insufficient: forward } } }\n",
        )
    })
    .await?;
    let http = common::http();
    let api = |k: usize| format!("http://127.0.0.1:{}", cluster.base_port + 10 * k as u16);
    let decrement = |k: usize, path: &'static str, by: i64| {
        let request = http.post(format!("{}/v1/records/{path}/ops", api(k)));
        async move {
            let resp = request.json(&json!({"op": "incr", "field": "available", "by": by})).send().await?;
            let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
            anyhow::Ok((status, headers, resp.json::<Value>().await?))
        }
    };
    // Tokyo stocks both; Frankfurt learns that Tokyo holds the rights.
    let tokyo = &cluster.clients[0];
    for path in ["seats/s1", "tickets/t9"] {
        tokyo.ops(path, &json!({"op": "incr", "field": "available", "by": 10})).await?;
        wait_for("the stock in Frankfurt", Duration::from_secs(20), || async {
            Ok(cluster.clients[FRANKFURT].query(path).await?.filter(|r| available(&r.value) == Some(10)))
        })
        .await?;
    }

    // Frankfurt holds nothing: the seat is sold by Tokyo, one round trip away.
    let (status, headers, body) = decrement(FRANKFURT, "seats/s1", -2).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers.get("x-mrr-forwarded-to").map(|v| v.to_str().ok()), Some(Some("ap-northeast")), "{headers:?}");
    assert_eq!(available(&body["value"]), Some(8), "{body}");
    // The default policy refuses, and says who holds enough.
    let (status, headers, body) = decrement(FRANKFURT, "tickets/t9", -2).await?;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("insufficient_rights")), "{body}");
    assert_eq!(body["error"]["holder"], "ap-northeast", "{body}");
    assert!(headers.get("x-mrr-forwarded-to").is_none());
    // More than any region holds: refused without a holder, nothing applied anywhere.
    let (status, _, body) = decrement(FRANKFURT, "seats/s1", -9).await?;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("insufficient_rights")), "{body}");
    assert!(body["error"].get("holder").is_none(), "{body}");

    // Frankfurt sells the rest, forwarded or (once rights it asked for arrive) locally, and
    // the counter ends at its bound everywhere.
    let mut sold = 2;
    for _ in 0..200 {
        if sold == 10 {
            break;
        }
        let (status, _, body) = decrement(FRANKFURT, "seats/s1", -1).await?;
        match status {
            200 => sold += 1,
            409 => {
                let ms = body["error"]["retry_after_ms"].as_u64().unwrap_or(100);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            _ => bail!("{status}: {body}"),
        }
    }
    assert_eq!(sold, 10, "Frankfurt sold out the seats");
    let (status, _, body) = decrement(FRANKFURT, "seats/s1", -1).await?;
    assert_eq!(status, 409, "past the bound: {body}");
    for c in &cluster.clients {
        wait_for("every region at 0", Duration::from_secs(20), || async {
            Ok(c.query("seats/s1").await?.filter(|r| available(&r.value) == Some(0)))
        })
        .await?;
    }
    Ok(())
}
