//! Read and ack levels on three `mrr serve` processes at `mrr dev`'s delays (55/75/115 ms one
//! way): read-your-writes across regions (and its timeout and forward fallback under a
//! partition), bounded staleness, `?ack=` and lag-critical throttling.

mod common;

use std::time::Duration;

use common::{wait_for, Cluster, REGIONS};
use mrr_client::{ClientError, Consistency, ErrorBody, ErrorCode};
use serde_json::{json, Value};

const TOKYO: usize = 0;
const FRANKFURT: usize = 2;

fn api(cluster: &Cluster, k: usize) -> String {
    format!("http://127.0.0.1:{}", cluster.base_port + 10 * k as u16)
}

/// A raw GET: status, headers, JSON body.
async fn get(url: &str, session: Option<&str>) -> anyhow::Result<(u16, reqwest::header::HeaderMap, Value)> {
    let mut req = common::http().get(url);
    if let Some(s) = session {
        req = req.header("x-mrr-session", s);
    }
    let resp = req.send().await?;
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    Ok((status, headers, resp.json().await?))
}

fn code(body: &Value) -> ErrorCode {
    serde_json::from_value::<ErrorBody>(body.clone()).map(|b| b.error.code).unwrap_or(ErrorCode::InvalidJson)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_and_bounded_staleness_across_regions() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let tokyo = &cluster.clients[TOKYO];
    let frankfurt = tokyo.in_region(&api(&cluster, FRANKFURT));

    // Written in Tokyo, read in Frankfurt at once: 115 ms away, the read waits for the write.
    let written = tokyo.publish("users", &json!({"id": "u001", "name": "Kaito"})).await?;
    let token = tokyo.session_token().expect("the client carries the token the write answered with");
    assert!(token.ends_with("/ap-northeast:1"), "{token}");
    let read = frankfurt.query_with("users/u001", Consistency::ReadYourWrites).await?;
    assert_eq!(read.as_ref().map(|r| &r.value), Some(&written.value), "Frankfurt answers with Tokyo's write");

    // Cut Tokyo off from Frankfurt: the next write cannot reach Frankfurt directly, and the
    // relay through us-west is cut as well.
    cluster.partition(TOKYO, FRANKFURT, true).await?;
    cluster.partition(1, FRANKFURT, true).await?;
    let second = tokyo.publish("users", &json!({"id": "u002", "name": "Aiko"})).await?;
    let token = tokyo.session_token().expect("token");
    let url = format!("{}/v1/records/users/u002?consistency=read_your_writes&wait_ms=300", api(&cluster, FRANKFURT));
    let (status, _, body) = get(&url, Some(&token)).await?;
    assert_eq!((status, code(&body)), (504, ErrorCode::SessionNotReached), "{body}");
    let missing = &body["error"]["missing"];
    assert_eq!(missing[0]["stream"], "ap-northeast", "{body}");
    assert_eq!(missing[0]["needed"], second.token.seq, "{body}");
    // With the forward fallback, a region known to hold the session answers (Tokyo, whose own
    // write it is, or us-west once it acked it).
    let (status, headers, body) = get(&format!("{url}&fallback=forward"), Some(&token)).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"]["name"], "Aiko");
    assert!(headers.get("x-mrr-forwarded-to").is_some(), "{headers:?}");

    // Bounded staleness: us-west hears from both in ~55-115 ms; Frankfurt, cut off, cannot
    // show it is within 1 s of Tokyo for long. Connected and idle, a region can promise the
    // one-way delay plus the clock's uncertainty (half the round trip) plus one heartbeat
    // period (500 ms): 730 ms from Tokyo, 650 ms from us-west, so 1 s is met at every moment.
    let us = format!("{}/v1/records/users/u001?consistency=bounded&max_staleness_ms=5000", api(&cluster, 1));
    let (status, headers, body) = get(&us, None).await?;
    assert_eq!(status, 200, "{body}");
    let met: u64 = headers["x-mrr-staleness-ms"].to_str()?.parse()?;
    assert!(met <= 5_000, "{met}");
    let fra = format!(
        "{}/v1/records/users/u001?consistency=bounded&max_staleness_ms=1000&wait_ms=200",
        api(&cluster, FRANKFURT)
    );
    let refused = wait_for("Frankfurt's copy to go stale", Duration::from_secs(20), || async {
        let (status, _, body) = get(&fra, None).await?;
        Ok((status == 504).then_some(body))
    })
    .await?;
    assert_eq!(code(&refused), ErrorCode::StalenessNotMet, "{refused}");

    // Healed, Frankfurt catches up and answers both levels again.
    cluster.partition(TOKYO, FRANKFURT, false).await?;
    cluster.partition(1, FRANKFURT, false).await?;
    let read = frankfurt.query_with("users/u002", Consistency::ReadYourWrites).await?;
    assert_eq!(read.map(|r| r.value["name"].clone()), Some(json!("Aiko")));
    wait_for("Frankfurt fresh again", Duration::from_secs(20), || async {
        let (status, _, _) = get(&fra, None).await?;
        Ok((status == 200).then_some(()))
    })
    .await?;
    // And it stays within that promise at every moment of an idle second or three: sampled
    // every 25 ms, the staleness Frankfurt reports never passes 1 s. (Heartbeats that went
    // out up to two periods apart, and a clock measured over an ack that waited for the
    // acceptor's own timer, put it at 1.1-2.1 s at times.)
    let any = format!("{}/v1/records/users/u001?consistency=bounded&max_staleness_ms=60000", api(&cluster, FRANKFURT));
    let mut worst_ms = 0;
    for _ in 0..120 {
        let (status, headers, body) = get(&any, None).await?;
        assert_eq!(status, 200, "{body}");
        worst_ms = worst_ms.max(headers["x-mrr-staleness-ms"].to_str()?.parse::<u64>()?);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(worst_ms < 1_000, "an idle, connected Frankfurt reported {worst_ms} ms of staleness");

    // Bad input: each a 400 with its code.
    let base = format!("{}/v1/records/users/u001", api(&cluster, FRANKFURT));
    for (query, session, expected) in [
        ("?consistency=read_your_writes", None, ErrorCode::MissingSessionToken),
        ("?consistency=read_your_writes", Some("1/00000000/ap-northeast:1"), ErrorCode::InvalidSessionToken),
        ("?consistency=read_your_writes", Some("garbage"), ErrorCode::InvalidSessionToken),
        ("?consistency=bounded", None, ErrorCode::InvalidStaleness),
        ("?consistency=bounded&max_staleness_ms=0", None, ErrorCode::InvalidStaleness),
        ("?consistency=bounded&max_staleness_ms=999999999999", None, ErrorCode::InvalidStaleness),
        ("?consistency=sometimes", None, ErrorCode::InvalidConsistency),
        ("?consistency=bounded&max_staleness_ms=10&wait_ms=3600000", None, ErrorCode::InvalidWait),
    ] {
        let (status, _, body) = get(&format!("{base}{query}"), session).await?;
        assert_eq!((status, code(&body)), (400, expected), "{query} {session:?}: {body}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_wait_for_regions_and_a_lagging_cluster_throttles_what_asks_for_it() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(|config| {
        let config = config.replace("topics:\n", "topics:\n  alerts: { throttle_when_lag_critical: true }\n").replace(
            "stock: { consistency: strong }",
            "stock: { consistency: strong, throttle_when_lag_critical: true }",
        );
        format!("{config}health:\n  lag_warn: 500ms\n  lag_critical: 1s\n")
    })
    .await?;
    let http = common::http();
    let tokyo = api(&cluster, TOKYO);
    let put = |topic: &'static str, id: String, query: &'static str| {
        let http = http.clone();
        let url = format!("{tokyo}/v1/records/{topic}/{id}{query}");
        async move {
            let resp = http.put(url).json(&json!({"n": 1})).send().await?;
            let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
            anyhow::Ok((status, headers, resp.json::<Value>().await?))
        }
    };

    // ack=all: durable in every region before the answer, so a local read anywhere has it.
    let (status, headers, body) = put("orders", "o1".into(), "?ack=all").await?;
    assert_eq!(status, 200, "{body}");
    assert!(headers.contains_key("x-mrr-session"));
    for (k, c) in cluster.clients.iter().enumerate() {
        assert!(c.query("orders/o1").await?.is_some(), "{} holds it when ack=all answers", REGIONS[k]);
    }

    // Tokyo cut off from both: quorum cannot be reached, the write stays (504, not undone).
    cluster.partition(TOKYO, 1, true).await?;
    cluster.partition(TOKYO, FRANKFURT, true).await?;
    let (status, _, body) = put("orders", "o2".into(), "?ack=quorum&ack_timeout_ms=500").await?;
    assert_eq!((status, code(&body)), (504, ErrorCode::AckTimeout), "{body}");
    assert_eq!(body["error"]["acked_by"], json!(["ap-northeast"]), "{body}");
    assert!(cluster.clients[TOKYO].query("orders/o2").await?.is_some(), "the timed-out write is not undone");
    // ack=all while an operator cut a link: refused before anything is written.
    let (status, _, body) = put("orders", "o3".into(), "?ack=all").await?;
    assert_eq!((status, code(&body)), (409, ErrorCode::AckUnreachable), "{body}");
    assert!(cluster.clients[TOKYO].query("orders/o3").await?.is_none(), "nothing written");
    for (query, expected) in [("?ack=4", 409), ("?ack=most", 400), ("?ack=quorum&ack_timeout_ms=0", 400)] {
        let (status, _, body) = put("orders", "o4".into(), query).await?;
        assert_eq!(status, expected, "{query}: {body}");
    }

    // Lag past 1 s: the throttled topic refuses with Retry-After, the others write on.
    // Each attempt writes a new record: those made before the lag turned critical are stored,
    // the refused one must not be.
    let attempt = std::sync::atomic::AtomicU32::new(0);
    let refused = wait_for("the throttle to engage", Duration::from_secs(20), || async {
        let id = format!("a{}", attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let (status, headers, body) = put("alerts", id.clone(), "").await?;
        Ok((status == 503).then_some((headers, body, id)))
    })
    .await?;
    assert_eq!(code(&refused.1), ErrorCode::LagCritical, "{}", refused.1);
    assert_eq!(refused.0["retry-after"], "1");
    let (status, _, _) = put("orders", "o5".into(), "").await?;
    assert_eq!(status, 200, "topics without the policy are not throttled");
    // An atomic update is a write like any other: throttled before it reaches the strong tier.
    let atomic = http
        .post(format!("{tokyo}/v1/records/stock/sku-1/atomic"))
        .json(&json!({"if": {"available": {"gte": 1}}, "then": [{"op": "incr", "field": "available", "by": -1}], "request_id": "r-1"}))
        .send()
        .await?;
    let (status, body) = (atomic.status().as_u16(), atomic.json::<Value>().await?);
    assert_eq!((status, code(&body)), (503, ErrorCode::LagCritical), "{body}");
    assert!(
        matches!(
            cluster.clients[TOKYO].query(&format!("alerts/{}", refused.2)).await,
            Ok(None) | Err(ClientError::Api { code: ErrorCode::NotFound, .. })
        ),
        "a throttled write stores nothing"
    );

    // Healed: writes resume by themselves.
    cluster.partition(TOKYO, 1, false).await?;
    cluster.partition(TOKYO, FRANKFURT, false).await?;
    wait_for("the throttle to release", Duration::from_secs(30), || async {
        let (status, _, _) = put("alerts", "a1".into(), "").await?;
        Ok((status == 200).then_some(()))
    })
    .await?;
    Ok(())
}
