//! Conflict strategies end to end, on two in-process nodes over real peer streams: concurrency
//! is made with a partition (messages held, not lost), so every race here is a true one.

mod common;

use std::time::{Duration, Instant};

use common::pair_with;
use mrr_client::{Client, ErrorCode, LinkSettings};
use serde_json::{json, Value};

/// Both directions held (partitioned) or released.
async fn partition(clients: &[Client], on: bool) -> anyhow::Result<()> {
    let settings = LinkSettings { partitioned: on, ..LinkSettings::default() };
    clients[0].set_link("us-west", settings).await?;
    clients[1].set_link("ap-northeast", settings).await?;
    Ok(())
}

/// Waits until `check` holds for the record at `path` in every region; returns their values.
async fn converge(clients: &[Client], path: &str, check: impl Fn(&Value) -> bool) -> anyhow::Result<Vec<Value>> {
    let start = Instant::now();
    loop {
        let mut values = Vec::new();
        for c in clients {
            values.push(c.query(path).await?.map(|r| r.value).unwrap_or(Value::Null));
        }
        if values.iter().all(&check) {
            return Ok(values);
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(30), "{path} did not converge: {values:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A handler that refuses any incoming write with `"bad": true` (a dead letter).
fn strict_handler(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("strict.rhai");
    std::fs::write(
        &path,
        "fn resolve(current, incoming) { if incoming.bad == true { throw \"refused: bad\"; } incoming }",
    )?;
    Ok(path)
}

fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_keeps_concurrent_fields_adds_counters_and_logs_each_loser_once() -> anyhow::Result<()> {
    let p = pair_with(
        ["same-secret-0123456789"; 2],
        [None, None],
        "links: {}\ntopics:\n  profiles: { conflict_strategy: merge }\n",
    )
    .await?;
    let c = &p.clients;
    c[0].put("profiles/p1", &json!({"name": "Ann", "city": "Oslo"})).await?;
    converge(c, "profiles/p1", |v| v["city"] == "Oslo").await?;

    partition(c, true).await?;
    let a = c[0].patch("profiles/p1", &json!({"name": "Anne", "city": "Rome"})).await?;
    let b = c[1].patch("profiles/p1", &json!({"city": "Pisa", "email": "b@x"})).await?;
    c[0].ops("profiles/p1", &json!({"op": "incr", "field": "views", "by": 3})).await?;
    c[1].ops(
        "profiles/p1",
        &json!([{"op": "incr", "field": "views", "by": -1}, {"op": "incr", "field": "views", "by": 5}]),
    )
    .await?;
    c[0].ops("profiles/p1", &json!({"ops": [{"op": "add", "field": "tags", "value": "vip"}]})).await?;
    c[1].ops("profiles/p1", &json!({"op": "add", "field": "tags", "value": "eu"})).await?;
    partition(c, false).await?;

    let values = converge(c, "profiles/p1", |v| v["views"] == 7 && v["tags"] == json!(["eu", "vip"])).await?;
    assert_eq!(values[0], values[1]);
    // Different fields both survive; the one field both wrote goes to the later version.
    let (winner, loser) = if b.version.hlc > a.version.hlc { (&b, &a) } else { (&a, &b) };
    let city = if winner.origin_region == "us-west" { "Pisa" } else { "Rome" };
    assert_eq!(values[0], json!({"name": "Anne", "city": city, "email": "b@x", "views": 7, "tags": ["eu", "vip"]}));

    // Exactly one conflict-log entry per region: the losing patch, for `city` only.
    for client in c {
        let log = client.conflicts(Some("profiles"), None).await?.conflicts;
        assert_eq!(log.len(), 1, "{log:?}");
        assert_eq!((log[0].strategy.as_str(), log[0].fields.as_slice()), ("merge", ["city".to_owned()].as_slice()));
        assert_eq!(log[0].loser.version.hlc, loser.version.hlc);
        assert_eq!(log[0].winner.version.hlc, winner.version.hlc);
        assert!(client.conflicts(Some("users"), None).await?.conflicts.is_empty());
        assert!(client.conflicts(None, Some(log[0].detected_at_ms + 1)).await?.conflicts.is_empty());
        let metrics = client.metrics().await?;
        assert_eq!(
            metric(&metrics, "mrr_conflicts_total{topic=\"profiles\",strategy=\"merge\"}"),
            Some(1.0),
            "{metrics}"
        );
    }

    // An update made after seeing the other region's write is not a conflict.
    c[1].patch("profiles/p1", &json!({"city": "Bergen"})).await?;
    converge(c, "profiles/p1", |v| v["city"] == "Bergen").await?;
    for client in c {
        assert_eq!(client.conflicts(None, None).await?.conflicts.len(), 1);
    }

    // PATCH on a `timestamp` topic changes only the named fields; `null` removes one.
    c[0].put("users/u1", &json!({"n": 1})).await?;
    assert_eq!(c[0].patch("users/u1", &json!({"m": 2})).await?.value, json!({"n": 1, "m": 2}));
    assert_eq!(c[0].patch("users/u1", &json!({"n": null})).await?.value, json!({"m": 2}));
    let err = c[0].patch("users/u1", &json!({"id": "u2"})).await.expect_err("id is the key");
    assert!(matches!(err, mrr_client::ClientError::Api { status: 400, code: ErrorCode::IdMismatch, .. }), "{err}");
    c[0].put("users/u1", &json!({"n": 1})).await?;

    // CRDT operations need `merge`; malformed ones are refused; nothing changes.
    let err = c[0].ops("users/u1", &json!({"op": "incr", "field": "n", "by": 1})).await.expect_err("timestamp topic");
    assert!(
        matches!(err, mrr_client::ClientError::Api { status: 409, code: ErrorCode::StrategyMismatch, .. }),
        "{err}"
    );
    for bad in [json!({"op": "incr", "field": "views"}), json!({"op": "explode", "field": "x"}), json!([]), json!(7)] {
        let err = c[0].ops("profiles/p1", &bad).await.expect_err("malformed");
        assert!(
            matches!(err, mrr_client::ClientError::Api { status: 400, code: ErrorCode::InvalidOps, .. }),
            "{bad}: {err}"
        );
    }
    assert_eq!(c[0].query("profiles/p1").await?.map(|r| r.value["views"].clone()), Some(json!(7)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_handlers_merge_in_version_order_and_dead_letters_replay_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let strict = strict_handler(dir.path())?;
    let inventory = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/handlers/inventory.rhai");
    let extra = format!(
        "links: {{}}\ntopics:\n  inventory: {{ conflict_strategy: custom, handler: {inventory} }}\n  strict: {{ conflict_strategy: custom, handler: {} }}\n",
        strict.display()
    );
    let p = pair_with(["same-secret-0123456789"; 2], [None, None], &extra).await?;
    let c = &p.clients;

    // The article's inventory case: concurrent deductions add up instead of overwriting.
    c[0].put("inventory/sku1", &json!({"stock": 100, "operation": "restock"})).await?;
    converge(c, "inventory/sku1", |v| v["stock"] == 100).await?;
    partition(c, true).await?;
    c[0].put("inventory/sku1", &json!({"stock": 98, "operation": "deduct", "quantity": 2})).await?;
    c[1].put("inventory/sku1", &json!({"stock": 97, "operation": "deduct", "quantity": 3})).await?;
    partition(c, false).await?;
    converge(c, "inventory/sku1", |v| v["stock"] == 95).await?;
    for client in c {
        let log = client.conflicts(Some("inventory"), None).await?.conflicts;
        assert_eq!(log.len(), 1, "{log:?}");
        assert_eq!((log[0].strategy.as_str(), log[0].resolution.as_str()), ("custom", "handler_merged"));
    }

    // A handler error: the change is admitted (replication goes on) and dead-lettered in both
    // regions, the state stays, health warns.
    c[0].put("strict/k", &json!({"v": 1})).await?;
    converge(c, "strict/k", |v| v["v"] == 1).await?;
    partition(c, true).await?;
    c[0].put("strict/k", &json!({"v": 2})).await?;
    c[1].put("strict/k", &json!({"v": 3, "bad": true})).await?;
    partition(c, false).await?;
    converge(c, "strict/k", |v| v["v"] == 2).await?;
    let mut ids = Vec::new();
    for client in c {
        let start = Instant::now();
        let letters = loop {
            let l = client.dead_letters().await?.dead_letters;
            if !l.is_empty() || start.elapsed() > Duration::from_secs(30) {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert!(letters[0].reason.contains("refused: bad"), "{}", letters[0].reason);
        ids.push(letters[0].id.clone());
        let health = client.health().await?;
        assert_eq!((health.status, health.dead_letters), (mrr_client::HealthStatus::Warn, 1), "{health:?}");
        assert_eq!(metric(&client.metrics().await?, "mrr_dlq_size"), Some(1.0));
    }
    assert_eq!(ids[0], ids[1], "the same change, the same id, in every region");

    // Replayed from one region: applied once, everywhere, and gone from every queue.
    c[0].replay(&ids[0]).await?;
    converge(c, "strict/k", |v| v["v"] == 3).await?;
    for client in c {
        let start = Instant::now();
        while !client.dead_letters().await?.dead_letters.is_empty() {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(30), "dead letter not cleared");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(client.health().await?.dead_letters, 0);
    }
    let err = c[1].replay(&ids[0]).await.expect_err("already replayed");
    assert!(
        matches!(err, mrr_client::ClientError::Api { status: 404, code: ErrorCode::DeadLetterNotFound, .. }),
        "{err}"
    );
    let err = c[1].discard("not-an-id").await.expect_err("malformed id");
    assert!(matches!(err, mrr_client::ClientError::Api { status: 400, .. }), "{err}");
    Ok(())
}

/// The dead-letter queue has a bound and never drops a letter: near it health is critical;
/// at it, replicated changes of `custom` topics wait at their senders while other topics flow;
/// once an operator makes room they apply (and fail again, into the queue, as they must).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_dead_letter_queue_holds_changes_back_until_there_is_room() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let strict = strict_handler(dir.path())?;
    let extra = format!(
        "links: {{}}\ndlq: {{ max_entries: 1 }}\ntopics:\n  strict: {{ conflict_strategy: custom, handler: {} }}\n",
        strict.display()
    );
    let p = pair_with(["same-secret-0123456789"; 2], [None, None], &extra).await?;
    let c = &p.clients;
    let letters = |client: &Client| {
        let client = client.clone();
        async move { anyhow::Ok(client.dead_letters().await?) }
    };
    // One failed concurrent write fills both queues (1 of 1).
    c[0].put("strict/k", &json!({"v": 1})).await?;
    converge(c, "strict/k", |v| v["v"] == 1).await?;
    partition(c, true).await?;
    c[0].put("strict/k", &json!({"v": 2})).await?;
    c[1].put("strict/k", &json!({"v": 3, "bad": true})).await?;
    partition(c, false).await?;
    for client in c {
        let start = Instant::now();
        while letters(client).await?.total < 1 {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(30), "no dead letter");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let list = letters(client).await?;
        assert_eq!((list.total, list.max_entries, list.dead_letters.len()), (1, 1, 1));
        let health = client.health().await?;
        assert_eq!(health.status, mrr_client::HealthStatus::Critical, "{health:?}");
        assert!(health.warnings.iter().any(|w| w.contains("dlq.max_entries")), "{health:?}");
    }
    // Another pair of concurrent writes, one failing: each region's queue is full, so each
    // waits for the other's strict change, which is refused with the reason, not dropped.
    partition(c, true).await?;
    c[0].put("strict/k", &json!({"v": 4})).await?;
    c[1].put("strict/k", &json!({"v": 5, "bad": true})).await?;
    partition(c, false).await?;
    for client in c {
        common::wait_for_error(client, "dead-letter queue is full").await?;
    }
    // Room made in both regions: the held changes apply (the failing one fails again, into
    // the queue), and the regions converge.
    for client in c {
        let id = letters(client).await?.dead_letters[0].id.clone();
        client.discard(&id).await?;
    }
    converge(c, "strict/k", |v| v["v"] == 4).await?;
    c[0].put("users/u1", &json!({"n": 1})).await?;
    common::wait_for_record(&c[1], "users/u1").await?;
    Ok(())
}
