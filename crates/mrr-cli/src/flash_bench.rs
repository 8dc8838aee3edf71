//! `mrr flash-bench`: the article's flash sale against a running cluster, for
//! `bench/flash_sale.sh`. One item with `--stock` units; `--buyers` buyers in every region
//! take one or two units at a time for `--duration`, each in its own region, until they see it
//! sold out. Three ways to sell:
//!
//! - `eventual`: a PN-counter on a `merge` topic. A buyer reads its region's copy and, when it
//!   shows enough, decrements with an `incr` operation: one local fsync, and concurrent buyers
//!   in other regions, who have not seen each other's decrements yet, oversell.
//! - `strong`: an atomic update on a strong topic (`if available >= qty then incr by -qty`),
//!   committed through the strong tier: never oversells, costs the round trips to the
//!   coordinator.
//! - `escrow`: a bounded field (`tickets: { bounded: { available: { min: 0 } } }`): a
//!   decrement is answered by the buyer's region against the rights it holds (one local
//!   fsync); a region without enough answers 409 `insufficient_rights` with `retry_after_ms`
//!   and asks for rights, and the buyer tries again then. Never oversells.
//!
//! A strong decrement that gets no definite answer (503 while the coordinator fails over, or a
//! broken connection) is sent again with the same `request_id`, which the strong tier applies
//! at most once, until it has an answer or the settle time is over: a buyer learns the outcome
//! of every decrement it made, as a shop's checkout must.
//!
//! Reports, as JSON on stdout: per region the decrements, units and latency p50/p99 of the
//! successful decrements, and (escrow) the attempts refused for lack of rights; units sold in
//! all, the final stock once every region agrees, the oversell (units sold beyond the stock),
//! and `unaccounted`: units that left the stock minus units buyers were told they got, which
//! must lie between 0 and `in_doubt` (units of decrements whose outcome a buyer never learned).
//! Every loop is bounded by the duration, the settle time and a request count.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use mrr_client::{Client, ClientError, Consistency, ErrorCode};
use serde_json::{json, Value};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaleMode {
    Eventual,
    Strong,
    Escrow,
}

#[derive(clap::Args, Debug, Clone)]
pub struct FlashBenchArgs {
    /// Every region's API, comma-separated (e.g. `mrr dev`'s http://127.0.0.1:7800,...).
    #[arg(long, value_delimiter = ',', required = true)]
    pub apis: Vec<String>,
    #[arg(long, value_enum)]
    pub mode: SaleMode,
    #[arg(long, default_value_t = 10_000)]
    pub stock: u64,
    /// Buyers per region.
    #[arg(long, default_value_t = 16)]
    pub buyers: usize,
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// The item's id (a fresh one per run).
    #[arg(long)]
    pub item: String,
    /// The `merge` topic of `eventual` (mrr dev: `profiles`).
    #[arg(long, default_value = "profiles")]
    pub eventual_topic: String,
    /// The strong topic of `strong` (mrr dev: `stock`).
    #[arg(long, default_value = "stock")]
    pub strong_topic: String,
    /// The topic of `escrow`, whose `available` is bounded (mrr dev: `tickets`).
    #[arg(long, default_value = "tickets")]
    pub escrow_topic: String,
    /// An API key with read and write on those topics.
    #[arg(long, env = "MRR_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// Requests per buyer at most: the loop's bound besides the duration.
const REQUESTS_PER_BUYER_MAX: u64 = 100_000;
/// How long the regions may take to agree on the final stock after the sale, and how long past
/// the sale a strong decrement without an answer is retried.
const SETTLE: Duration = Duration::from_secs(60);
/// The pause before a strong decrement without an answer is sent again.
const STRONG_RETRY: Duration = Duration::from_millis(100);

fn available(record: &Value) -> i64 {
    record.get("available").and_then(Value::as_i64).unwrap_or(0)
}

struct Sold {
    latency: Histogram<u64>,
    units: u64,
    /// Escrow: attempts the region refused for lack of rights (each asked for a transfer).
    refused: u64,
    /// Units of the decrement the buyer stopped on, when it never learned whether it applied.
    in_doubt: u64,
    /// Why the buyer stopped before the sale ended, if it did.
    stopped: Option<String>,
}

impl Sold {
    fn new() -> anyhow::Result<Self> {
        Ok(Sold { latency: Histogram::new(3)?, units: 0, refused: 0, in_doubt: 0, stopped: None })
    }

    fn add(&mut self, other: &Sold) -> anyhow::Result<()> {
        self.latency.add(&other.latency)?;
        self.units += other.units;
        self.refused += other.refused;
        self.in_doubt += other.in_doubt;
        Ok(())
    }
}

/// Whether an error leaves a decrement's outcome unknown: no answer, or a 5xx (a 4xx applied
/// nothing).
fn outcome_unknown(e: &ClientError) -> bool {
    match e {
        ClientError::Http { .. } => true,
        ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => *status >= 500,
        _ => false,
    }
}

/// How a strong decrement ended.
enum Strong {
    Applied,
    /// The condition failed: fewer units left than asked.
    SoldOut,
}

/// One strong decrement, sent again with the same request id while its outcome is unknown,
/// until `give_up_at`.
async fn strong_decrement(
    client: &Client,
    path: &str,
    qty: u64,
    request_id: &str,
    give_up_at: Instant,
) -> Result<Strong, ClientError> {
    let condition = json!({"available": {"gte": qty}});
    let then = json!([{"op": "incr", "field": "available", "by": -(qty as i64)}]);
    loop {
        match client.atomic(path, &condition, &then, request_id).await {
            Ok(_) => return Ok(Strong::Applied),
            Err(ClientError::Api { code: ErrorCode::PreconditionFailed, .. }) => return Ok(Strong::SoldOut),
            Err(e) if outcome_unknown(&e) && Instant::now() + STRONG_RETRY < give_up_at => {
                tokio::time::sleep(STRONG_RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// `buyer` is unique over all regions: its request ids must be (the strong tier applies a
/// request id once, and answers a second request with the same id as the first). Never fails:
/// a buyer that stops on an error says why in its tally, which keeps what it sold.
async fn buyer(client: Client, args: FlashBenchArgs, path: String, buyer: usize) -> anyhow::Result<Sold> {
    let started = Instant::now();
    let mut sold = Sold::new()?;
    let qty: u64 = 1 + (buyer as u64 % 2);
    for n in 0..REQUESTS_PER_BUYER_MAX {
        if started.elapsed() >= args.duration {
            break;
        }
        match buy(&client, &args, &path, qty, &format!("{}-{buyer}-{n}", args.item), started, &mut sold).await {
            Ok(Bought::Took(t)) => {
                sold.latency.record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX))?;
                sold.units += qty;
            }
            Ok(Bought::Again) => {}
            Ok(Bought::SoldOut) => break,
            Err(e) => {
                if outcome_unknown(&e) {
                    sold.in_doubt += qty;
                }
                sold.stopped = Some(e.to_string());
                break;
            }
        }
    }
    Ok(sold)
}

enum Bought {
    /// The decrement applied; it was sent at this instant.
    Took(Instant),
    /// Refused for now (escrow); try again.
    Again,
    SoldOut,
}

/// One attempt at buying `qty` units.
async fn buy(
    client: &Client,
    args: &FlashBenchArgs,
    path: &str,
    qty: u64,
    request_id: &str,
    started: Instant,
    sold: &mut Sold,
) -> Result<Bought, ClientError> {
    let t = Instant::now();
    match args.mode {
        SaleMode::Eventual => {
            // What a buyer sees in its own region decides.
            let left = client.query_with(path, Consistency::Local).await?.map_or(0, |r| available(&r.value));
            if left < qty as i64 {
                return Ok(Bought::SoldOut);
            }
            let t = Instant::now();
            client.ops(path, &json!({"op": "incr", "field": "available", "by": -(qty as i64)})).await?;
            Ok(Bought::Took(t))
        }
        SaleMode::Strong => {
            match strong_decrement(client, path, qty, request_id, started + args.duration + SETTLE).await? {
                Strong::Applied => Ok(Bought::Took(t)),
                Strong::SoldOut => Ok(Bought::SoldOut),
            }
        }
        SaleMode::Escrow => {
            let op = json!({"op": "incr", "field": "available", "by": -(qty as i64)});
            match client.ops(path, &op).await {
                Ok(_) => Ok(Bought::Took(t)),
                Err(ClientError::Api { code: ErrorCode::InsufficientRights, retry_after_ms, .. }) => {
                    sold.refused += 1;
                    // Sold out as far as this region knows: stop. Else rights are on their
                    // way; try again when the region says.
                    let left = client.query(path).await?.map_or(0, |r| available(&r.value));
                    if left < qty as i64 {
                        return Ok(Bought::SoldOut);
                    }
                    let wait = Duration::from_millis(retry_after_ms.unwrap_or(100));
                    tokio::time::sleep(wait.min(args.duration.saturating_sub(started.elapsed()))).await;
                    Ok(Bought::Again)
                }
                Err(e) => Err(e),
            }
        }
    }
}

pub async fn run(args: FlashBenchArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(!args.apis.is_empty() && args.buyers > 0, "name the regions' APIs and at least one buyer");
    let clients =
        args.apis.iter().map(|a| mrr_client::connect(a, args.api_key.as_deref())).collect::<Result<Vec<_>, _>>()?;
    let topic = match args.mode {
        SaleMode::Eventual => &args.eventual_topic,
        SaleMode::Strong => &args.strong_topic,
        SaleMode::Escrow => &args.escrow_topic,
    };
    let path = format!("{topic}/{}", args.item);
    let stock = i64::try_from(args.stock).context("stock")?;
    match args.mode {
        // A counter from the start: a plain value would be a register, which `incr` does not
        // decrement.
        // An escrow increment makes its units the rights of the region it is made in: all of
        // them start in the first region.
        SaleMode::Eventual | SaleMode::Escrow => {
            clients[0].ops(&path, &json!({"op": "incr", "field": "available", "by": stock})).await?;
        }
        SaleMode::Strong => {
            clients[0].put(&path, &json!({"available": stock})).await?;
        }
    }
    // Every region holds the stock before the first buyer.
    let setup = Instant::now();
    for c in &clients {
        loop {
            if c.query(&path).await?.is_some_and(|r| available(&r.value) == stock) {
                break;
            }
            if setup.elapsed() > SETTLE {
                bail!("{} did not receive the item within {SETTLE:?}", c.endpoint());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (region, client) in clients.iter().enumerate() {
        for b in 0..args.buyers {
            let (client, args, path) = (client.clone(), args.clone(), path.clone());
            let id = region * args.buyers + b;
            tasks.push((region, tokio::spawn(buyer(client, args, path, id))));
        }
    }
    let mut per_region: BTreeMap<usize, Sold> = BTreeMap::new();
    let mut failures = 0u64;
    for (region, task) in tasks {
        let s = task.await.context("buyer")??;
        if let Some(why) = &s.stopped {
            failures += 1;
            eprintln!("flash-bench: a buyer stopped: {why}");
        }
        match per_region.get_mut(&region) {
            Some(tally) => tally.add(&s)?,
            None => {
                per_region.insert(region, s);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // The final stock, once every region shows the same.
    let settle = Instant::now();
    let final_available = loop {
        let mut seen = Vec::new();
        for c in &clients {
            seen.push(c.query(&path).await?.map_or(0, |r| available(&r.value)));
        }
        if seen.iter().all(|v| *v == seen[0]) {
            break seen[0];
        }
        if settle.elapsed() > SETTLE {
            bail!("the regions did not agree on the final stock within {SETTLE:?}: {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sold: u64 = per_region.values().map(|s| s.units).sum();
    let in_doubt: u64 = per_region.values().map(|s| s.in_doubt).sum();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
    let regions: Vec<Value> = per_region
        .iter()
        .map(|(r, s)| {
            json!({
                "api": args.apis[*r],
                "decrements": s.latency.len(),
                "units": s.units,
                "p50_ms": ms(&s.latency, 0.5),
                "p99_ms": ms(&s.latency, 0.99),
                "refused_for_rights": s.refused,
            })
        })
        .collect();
    Ok(json!({
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "stock": args.stock,
        "buyers_per_region": args.buyers,
        "seconds": seconds,
        "units_sold": sold,
        "final_available": final_available,
        "oversell": sold.saturating_sub(args.stock),
        // What left the stock minus what buyers were told they got: between 0 and `in_doubt`
        // when every acknowledged decrement applied exactly once.
        "unaccounted": (stock - final_available) - i64::try_from(sold).unwrap_or(i64::MAX),
        "in_doubt": in_doubt,
        "buyer_failures": failures,
        "regions": regions,
    }))
}
