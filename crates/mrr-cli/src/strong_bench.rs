//! `mrr strong-bench`: the same linearizable workload against MRR's strong tier or etcd, for
//! `bench/strong_compare.sh`.
//!
//! Both systems are driven the same way — JSON over HTTP/1.1 from this one process, one
//! keep-alive connection per worker, `concurrency` requests in flight — so the client costs
//! the same on both sides. MRR: `PUT /v1/records/<topic>/k<n>` (a strong topic) and
//! `GET ...?consistency=strong`. etcd: its gRPC gateway, `POST /v3/kv/put` and `POST
//! /v3/kv/range` (linearizable by default). Bounded by `--ops` and `--duration`, whichever comes
//! first. Reports latency percentiles and throughput as JSON on stdout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use base64::Engine as _;
use hdrhistogram::Histogram;
use serde_json::json;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Mrr,
    Etcd,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrongOp {
    Write,
    Read,
}

#[derive(clap::Args, Debug, Clone)]
pub struct StrongBenchArgs {
    #[arg(long, value_enum)]
    pub system: System,
    /// The node's API (MRR) or client URL (etcd), e.g. http://127.0.0.1:2379.
    #[arg(long)]
    pub url: String,
    #[arg(long, value_enum, default_value_t = StrongOp::Write)]
    pub op: StrongOp,
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Operations in all, at most.
    #[arg(long, default_value_t = 1_000)]
    pub ops: u64,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value_t = 1_000)]
    pub keys: u64,
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// MRR's strong topic.
    #[arg(long, default_value = "stock")]
    pub topic: String,
    /// MRR's API key (sent as a Bearer token).
    #[arg(long, env = "MRR_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// One request; `Ok` only on a success answer.
async fn one(http: &reqwest::Client, args: &StrongBenchArgs, n: u64, payload: &str) -> anyhow::Result<()> {
    let key = format!("k{}", n % args.keys);
    let request = match (args.system, args.op) {
        (System::Mrr, StrongOp::Write) => {
            http.put(format!("{}/v1/records/{}/{key}", args.url, args.topic)).json(&json!({"n": n, "payload": payload}))
        }
        (System::Mrr, StrongOp::Read) => {
            http.get(format!("{}/v1/records/{}/{key}?consistency=strong", args.url, args.topic))
        }
        (System::Etcd, StrongOp::Write) => http
            .post(format!("{}/v3/kv/put", args.url))
            .json(&json!({"key": b64(&key), "value": b64(&format!("{n}:{payload}"))})),
        (System::Etcd, StrongOp::Read) => {
            http.post(format!("{}/v3/kv/range", args.url)).json(&json!({"key": b64(&key)}))
        }
    };
    let response = request.send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    // A strong read of a key not written yet is a linearizable answer too.
    if status.is_success() || (args.op == StrongOp::Read && status.as_u16() == 404) {
        return Ok(());
    }
    bail!("{status}: {}", String::from_utf8_lossy(&body))
}

pub async fn run(args: StrongBenchArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.concurrency > 0 && args.keys > 0, "concurrency and keys must be positive");
    let payload: String = "x".repeat(args.value_bytes);
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let (args, payload, next, errors) = (args.clone(), payload.clone(), next.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            let mut headers = reqwest::header::HeaderMap::new();
            if let Some(key) = args.api_key.as_deref().filter(|_| args.system == System::Mrr) {
                headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse()?);
            }
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(1)
                .default_headers(headers)
                .build()?;
            let mut latency = Histogram::<u64>::new(3)?;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= args.ops || started.elapsed() >= args.duration {
                    return anyhow::Ok(latency);
                }
                let t = Instant::now();
                match one(&http, &args, n, &payload).await {
                    Ok(()) => latency.record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX))?,
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("strong-bench: {e}");
                        }
                    }
                }
            }
        }));
    }
    let mut all = Histogram::<u64>::new(3)?;
    for w in workers {
        all.add(w.await.context("worker")??)?;
    }
    let secs = started.elapsed().as_secs_f64();
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1_000.0;
    Ok(json!({
        "system": format!("{:?}", args.system).to_lowercase(),
        "op": format!("{:?}", args.op).to_lowercase(),
        "concurrency": args.concurrency,
        "ok": all.len(),
        "errors": errors.load(Ordering::Relaxed),
        "seconds": secs,
        "ops_per_s": all.len() as f64 / secs,
        "p50_ms": ms(0.50),
        "p99_ms": ms(0.99),
        "max_ms": all.max() as f64 / 1_000.0,
    }))
}
