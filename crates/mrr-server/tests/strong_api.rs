//! Strong topics over the HTTP API of one in-process node (a one-region group, its own
//! quorum): every write verb goes through the log and lands as a write of the `strong`
//! stream; atomic updates apply or answer 409 with the record; bad conditions, reused request
//! ids and strong requests on eventual topics get stable codes and apply nothing; and what
//! was applied, including the request ids, survives a restart.

use std::path::Path;
use std::time::Duration;

use mrr_client::{BatchItem, BatchOp, Client, ClientError, ErrorCode};
use mrr_server::{Config, Node, NodeOptions};
use serde_json::{json, Value};

async fn node(dir: &Path) -> anyhow::Result<(Node, Client)> {
    let reserve = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/handlers/reserve.rhai");
    let text = format!(
        "cluster: t\nregion: us-west\nsecret: \"0123456789abcdef\"\ninsecure_plaintext: true\ndata_dir: {}\nlisten: {{ api: 127.0.0.1:0, peer: 127.0.0.1:0 }}\n\
         bootstrap: new_cluster\nregions:\n  - name: us-west\n    endpoint: http://127.0.0.1:1\n    role: coordinator\n\
         topics:\n  stock: {{ consistency: strong, functions: {{ reserve: \"{}\" }} }}\n",
        dir.display(),
        reserve.display()
    );
    let config = Config::parse(Path::new("test.yaml"), &text)?;
    let node = Node::start(config, NodeOptions::default()).await?;
    let client = mrr_client::connect(&format!("http://{}", node.api_addr), None)?;
    // The one voter elects itself.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while client.coordinator().await?.coordinator.as_deref() != Some("us-west") {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no coordinator within 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((node, client))
}

fn code_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, ErrorCode) {
    match r {
        Err(ClientError::Api { status, code, .. }) => (status, code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn every_write_verb_of_a_strong_topic_goes_through_the_log() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, c) = node(dir.path()).await?;
    let put = c.put("stock/a", &json!({"available": 5})).await?;
    assert_eq!((put.origin_region.as_str(), put.token.seq), ("strong", 1));
    let patched = c.patch("stock/a", &json!({"color": "red"})).await?;
    assert_eq!(patched.value, json!({"available": 5, "color": "red"}));
    let opped = c.ops("stock/a", &json!({"op": "incr", "field": "available", "by": -1})).await?;
    assert_eq!(opped.value["available"], json!(4), "ops are plain arithmetic on a strong topic");
    let batch = c
        .batch(vec![
            BatchItem {
                op: BatchOp::Put,
                topic: "stock".into(),
                id: Some("b".into()),
                record: Some(json!({"available": 1})),
            },
            BatchItem { op: BatchOp::Delete, topic: "stock".into(), id: Some("a".into()), record: None },
        ])
        .await?;
    assert_eq!(batch.results.len(), 2);
    assert!(batch.results[1].deleted);
    assert!(c.query("stock/a").await?.is_none());
    assert_eq!(c.query_strong("stock/b").await?.map(|r| r.value), Some(json!({"available": 1})));
    assert_eq!(c.status().await?.applied.get("strong"), Some(&5), "five writes in the strong stream");
    // Eventual topics are untouched by all this.
    let user = c.publish("users", &json!({"id": "u1"})).await?;
    assert_eq!(user.origin_region, "us-west");
    node.shutdown();
    Ok(())
}

#[tokio::test]
async fn atomic_updates_apply_or_answer_with_the_record_and_bad_ones_apply_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, c) = node(dir.path()).await?;
    c.put("stock/s", &json!({"available": 3, "name": "mug"})).await?;
    let deduct = |by: i64| json!([{"op": "incr", "field": "available", "by": -by}]);
    let ok = c.atomic("stock/s", &json!({"available": {"gte": 2}}), &deduct(2), "r1").await?;
    assert_eq!(ok.value["available"], json!(1));
    match c.atomic("stock/s", &json!({"available": {"gte": 2}}), &deduct(2), "r2").await {
        Err(ClientError::Api { status: 409, code: ErrorCode::PreconditionFailed, current: Some(r), .. }) => {
            assert_eq!(r.value["available"], json!(1), "409 carries the record as it is");
        }
        other => panic!("expected precondition_failed, got {other:?}"),
    }
    // A retry of r1 answers as the first time and deducts nothing more.
    let again = c.atomic("stock/s", &json!({"available": {"gte": 2}}), &deduct(2), "r1").await?;
    assert_eq!(again, ok);
    let version = c.query("stock/s").await?.map(|r| r.version);

    let too_deep = (0..10).fold(json!({"available": 1}), |c, _| json!({"$not": c}));
    let cases: Vec<(Value, Value, &str, (u16, ErrorCode))> = vec![
        (json!({"available": {"between": 1}}), deduct(1), "b1", (400, ErrorCode::InvalidCondition)),
        (json!([1]), deduct(1), "b2", (400, ErrorCode::InvalidCondition)),
        (too_deep, deduct(1), "b3", (400, ErrorCode::InvalidCondition)),
        (json!({"name": {"gte": 1}}), deduct(1), "b4", (422, ErrorCode::ConditionTypeMismatch)),
        (json!({}), json!([{"op": "incr", "field": "name", "by": 1}]), "b5", (422, ErrorCode::InvalidUpdate)),
        (json!({"available": {"gte": 0}}), deduct(5), "r1", (409, ErrorCode::RequestIdReused)),
        (json!({"available": {"gte": 0}}), json!([{"op": "nope"}]), "b6", (400, ErrorCode::InvalidOps)),
    ];
    for (condition, then, id, want) in cases {
        assert_eq!(code_of(c.atomic("stock/s", &condition, &then, id).await), want, "if {condition} then {then}");
    }
    let raw = |body: Value| {
        let http = reqwest::Client::new();
        let url = format!("{}/v1/records/stock/s/atomic", c.endpoint());
        async move {
            let r = http.post(url).json(&body).send().await?;
            anyhow::Ok((r.status().as_u16(), r.json::<Value>().await?["error"]["code"].clone()))
        }
    };
    assert_eq!(raw(json!({"if": {}, "then": deduct(1)})).await?, (400, json!("missing_request_id")));
    assert_eq!(
        raw(json!({"then": deduct(1), "request_id": "x", "else": []})).await?,
        (400, json!("invalid_condition"))
    );
    assert_eq!(c.query("stock/s").await?.map(|r| r.version), version, "nothing applied");

    // Strong requests on an eventual topic, unknown levels, mixed batches, placements.
    c.publish("users", &json!({"id": "u1", "n": 1})).await?;
    assert_eq!(code_of(c.atomic("users/u1", &json!({}), &deduct(1), "u").await), (400, ErrorCode::NotStrong));
    assert_eq!(code_of(c.query_strong("users/u1").await), (400, ErrorCode::NotStrong));
    let http = reqwest::Client::new();
    let level = http.get(format!("{}/v1/records/stock/s?consistency=eventualish", c.endpoint())).send().await?;
    assert_eq!(level.status().as_u16(), 400);
    assert_eq!(level.json::<Value>().await?["error"]["code"], json!("invalid_consistency"));
    let mixed = c
        .batch(vec![
            BatchItem { op: BatchOp::Put, topic: "stock".into(), id: Some("m".into()), record: Some(json!({})) },
            BatchItem { op: BatchOp::Put, topic: "users".into(), id: Some("m".into()), record: Some(json!({})) },
        ])
        .await;
    assert_eq!(code_of(mixed), (400, ErrorCode::MixedConsistency));
    let placed = c.put("stock/p", &json!({"__metadata": {"regions": ["us-west"]}})).await;
    assert_eq!(code_of(placed), (400, ErrorCode::StrongPlacement));
    assert!(
        c.query("stock/m").await?.is_none()
            && c.query("users/m").await?.is_none()
            && c.query("stock/p").await?.is_none()
    );
    node.shutdown();
    Ok(())
}

#[tokio::test]
async fn a_named_update_function_takes_the_place_of_if_and_then() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, c) = node(dir.path()).await?;
    c.put("stock/f", &json!({"available": 3})).await?;
    let http = reqwest::Client::new();
    let call = |body: Value| {
        let (http, url) = (http.clone(), format!("{}/v1/records/stock/f/atomic", c.endpoint()));
        async move {
            let r = http.post(url).json(&body).send().await?;
            anyhow::Ok((r.status().as_u16(), r.json::<Value>().await?))
        }
    };
    let (status, body) = call(json!({"function": "reserve", "args": {"qty": 2}, "request_id": "f1"})).await?;
    assert_eq!((status, &body["value"]), (200, &json!({"id": "f", "available": 1, "reserved": 2})), "{body}");
    let (status, body) = call(json!({"function": "reserve", "args": {"qty": 2}, "request_id": "f2"})).await?;
    assert_eq!((status, &body["error"]["code"]), (409, &json!("precondition_failed")), "{body}");
    assert_eq!(body["error"]["current"]["value"]["available"], json!(1));
    let (status, body) = call(json!({"function": "reserve", "args": {"qty": "x"}, "request_id": "f3"})).await?;
    assert_eq!((status, &body["error"]["code"]), (422, &json!("invalid_update")), "{body}");
    let (status, body) = call(json!({"function": "refund", "args": {}, "request_id": "f4"})).await?;
    assert_eq!((status, &body["error"]["code"]), (400, &json!("unknown_function")), "{body}");
    let (status, body) = call(json!({"function": "reserve", "if": {}, "then": [], "request_id": "f5"})).await?;
    assert_eq!((status, &body["error"]["code"]), (400, &json!("invalid_condition")), "{body}");
    assert_eq!(c.query("stock/f").await?.map(|r| r.value["available"].clone()), Some(json!(1)));
    node.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_closure_form_compares_and_sets_on_the_version() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, c) = node(dir.path()).await?;
    c.put("stock/k", &json!({"available": 10})).await?;
    let qty = 4;
    let take = |current: &mut serde_json::Map<String, Value>| {
        let left = current.get("available").and_then(Value::as_i64).unwrap_or(0);
        if left >= qty {
            current.insert("available".into(), json!(left - qty));
        }
    };
    assert_eq!(c.atomic_update("stock", "k", take, 3).await?.map(|r| r.value["available"].clone()), Some(json!(6)));
    assert_eq!(c.atomic_update("stock", "k", take, 3).await?.map(|r| r.value["available"].clone()), Some(json!(2)));
    // Not enough left: the closure changes nothing, nothing is written.
    let before = c.query("stock/k").await?.map(|r| r.version);
    let unchanged = c.atomic_update("stock", "k", take, 3).await?;
    assert_eq!(unchanged.map(|r| r.version), before);
    // A writer that always loses the compare-and-set (the record changes under every
    // attempt) gets a clear error after its retries.
    let other = c.clone();
    let contended = c
        .atomic_update(
            "stock",
            "k",
            |current| {
                current.insert("touched".into(), json!(true));
                // Someone else writes between this read and the compare-and-set.
                let bump = tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(other.patch("stock/k", &json!({"bump": rand_bump()})))
                });
                assert!(bump.is_ok(), "{bump:?}");
            },
            2,
        )
        .await;
    assert!(matches!(contended, Err(ClientError::Contended { attempts: 3, .. })), "{contended:?}");
    node.shutdown();
    Ok(())
}

fn rand_bump() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test]
async fn applied_writes_and_their_request_ids_survive_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, c) = node(dir.path()).await?;
    c.put("stock/r", &json!({"available": 10})).await?;
    let first = c
        .atomic(
            "stock/r",
            &json!({"available": {"gte": 3}}),
            &json!([{"op": "incr", "field": "available", "by": -3}]),
            "once",
        )
        .await?;
    // A deduction that failed where the log put it, then a restock: replaying the log from a
    // position behind the records would run that deduction against the restocked record.
    let failed = c
        .atomic(
            "stock/r",
            &json!({"available": {"gte": 100}}),
            &json!([{"op": "incr", "field": "available", "by": -3}]),
            "big",
        )
        .await;
    assert_eq!(code_of(failed), (409, ErrorCode::PreconditionFailed));
    c.ops("stock/r", &json!({"op": "incr", "field": "available", "by": 200})).await?;
    node.shutdown();
    node.wait().await;
    let (node, c) = node_again(dir.path()).await?;
    assert_eq!(
        c.query_strong("stock/r").await?.map(|r| r.value["available"].clone()),
        Some(json!(207)),
        "resumed after what was applied, nothing replayed"
    );
    let retry = c
        .atomic(
            "stock/r",
            &json!({"available": {"gte": 3}}),
            &json!([{"op": "incr", "field": "available", "by": -3}]),
            "once",
        )
        .await?;
    assert_eq!(retry, first, "the request id is remembered across the restart");
    assert_eq!(c.query("stock/r").await?.map(|r| r.value["available"].clone()), Some(json!(207)));
    let next = c.ops("stock/r", &json!({"op": "incr", "field": "available", "by": 1})).await?;
    assert_eq!(next.token.seq, 4, "the strong stream continues where it was");
    node.shutdown();
    Ok(())
}

async fn node_again(dir: &Path) -> anyhow::Result<(Node, Client)> {
    node(dir).await
}
