//! The HTTP API of one in-process node: bad input is refused with a stable code, stores
//! nothing, and leaves the node serving.

use std::path::Path;

use mrr_client::{Client, ClientError, ErrorCode};
use mrr_server::{Config, Node, NodeOptions};
use serde_json::json;

async fn node(dir: &Path, extra: &str) -> anyhow::Result<(Node, Client)> {
    let text = format!(
        "cluster: t\nregion: us-west\nsecret: \"0123456789abcdef\"\ninsecure_plaintext: true\ndata_dir: {}\nlisten: {{ api: 127.0.0.1:0, peer: 127.0.0.1:0 }}\n\
         bootstrap: new_cluster\nregions:\n  - name: us-west\n    endpoint: http://127.0.0.1:1\nlimits: {{ body_bytes_max: 65536, record_bytes_max: 32768, batch_records_max: 5, json_depth_max: 8 }}\n{extra}",
        dir.display()
    );
    let config = Config::parse(Path::new("test.yaml"), &text)?;
    let node = Node::start(config, NodeOptions::default()).await?;
    let client = mrr_client::connect(&format!("http://{}", node.api_addr), Some("k-1"))?;
    Ok((node, client))
}

/// A minimal HTTP/1.1 request over a socket, so tests can send bytes no client would.
async fn raw(node: &Node, method: &str, path: &str, body: Vec<u8>) -> anyhow::Result<(u16, serde_json::Value)> {
    raw_full(node, method, path, &["authorization: Bearer k-1"], body).await
}

/// A body-less request with these header lines only.
async fn raw_with(node: &Node, method: &str, path: &str, headers: &[&str]) -> anyhow::Result<(u16, serde_json::Value)> {
    raw_full(node, method, path, headers, Vec::new()).await
}

async fn raw_full(
    node: &Node,
    method: &str,
    path: &str,
    headers: &[&str],
    body: Vec<u8>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(node.api_addr).await?;
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).await?;
    // The server may answer (413) before reading the whole body and close; that is fine.
    let _ = s.write_all(&body).await;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out);
    let status: u16 = text.split(' ').nth(1).unwrap_or("0").parse()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    Ok((status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null)))
}

#[tokio::test]
async fn bad_requests_get_stable_codes_and_store_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, client) = node(dir.path(), "").await?;
    let deep = format!("{{\"id\":\"d\",\"a\":{}1{}}}", "[".repeat(20), "]".repeat(20));
    let very_deep = format!("{{\"id\":\"d\",\"a\":{}1{}}}", "[".repeat(5000), "]".repeat(5000));
    let big = format!("{{\"id\":\"b\",\"s\":\"{}\"}}", "x".repeat(40_000));
    let huge = format!("{{\"id\":\"h\",\"s\":\"{}\"}}", "x".repeat(70_000));
    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        ("POST", "/v1/records/users".into(), b"{\"id\":".to_vec(), 400, "invalid_json"),
        ("POST", "/v1/records/users".into(), b"[1,2]".to_vec(), 400, "not_an_object"),
        ("POST", "/v1/records/users".into(), b"\"text\"".to_vec(), 400, "not_an_object"),
        ("POST", "/v1/records/users".into(), b"{\"name\":\"no id\"}".to_vec(), 400, "missing_id"),
        ("POST", "/v1/records/users".into(), b"{\"id\":7}".to_vec(), 400, "invalid_id"),
        ("POST", "/v1/records/users".into(), b"{\"id\":\"a/b\"}".to_vec(), 400, "invalid_id"),
        ("POST", "/v1/records/Bad.Topic".into(), b"{\"id\":\"x\"}".to_vec(), 400, "invalid_topic"),
        ("PUT", "/v1/records/users/u1".into(), b"{\"id\":\"u2\"}".to_vec(), 400, "id_mismatch"),
        (
            "PUT",
            "/v1/records/users/u1".into(),
            b"{\"__metadata\":{\"regions\":\"*\"}}".to_vec(),
            400,
            "invalid_metadata",
        ),
        ("PUT", "/v1/records/users/u1".into(), b"{\"__metadata\":{\"colour\":1}}".to_vec(), 400, "invalid_metadata"),
        (
            "PUT",
            "/v1/records/users/u1".into(),
            b"{\"__metadata\":{\"regions\":[\"Mars 1\"]}}".to_vec(),
            400,
            "invalid_metadata",
        ),
        ("POST", "/v1/records/users".into(), deep.into_bytes(), 400, "too_deep"),
        ("POST", "/v1/records/users".into(), very_deep.into_bytes(), 400, "too_deep"),
        ("POST", "/v1/records/users".into(), big.into_bytes(), 413, "record_too_large"),
        ("POST", "/v1/records/users".into(), huge.into_bytes(), 413, "body_too_large"),
        (
            "POST",
            "/v1/batch".into(),
            json!({"items": (0..6).map(|i| json!({"topic":"t","record":{"id":format!("i{i}")}})).collect::<Vec<_>>()})
                .to_string()
                .into_bytes(),
            413,
            "batch_too_large",
        ),
        // One bad item refuses the whole batch: batches are atomic.
        (
            "POST",
            "/v1/batch".into(),
            json!({"items": [{"topic":"t","record":{"id":"ok"}}, {"topic":"t","record":[1]}]}).to_string().into_bytes(),
            400,
            "not_an_object",
        ),
        (
            "POST",
            "/v1/batch".into(),
            json!({"items": [{"topic":"t","op":"delete"}]}).to_string().into_bytes(),
            400,
            "missing_id",
        ),
        ("POST", "/v1/batch".into(), b"{\"items\":[{\"topic\":\"t\",\"oops\":1}]}".to_vec(), 400, "invalid_json"),
        ("GET", "/v1/records/users/nope".into(), vec![], 404, "not_found"),
        ("GET", "/v1/nowhere".into(), vec![], 404, "not_found"),
        // Query strings and methods are refused with the same JSON body and stable codes.
        ("GET", "/v1/records/users?limit=many".into(), vec![], 400, "invalid_query"),
        ("GET", "/v1/records/users?colour=red".into(), vec![], 400, "invalid_query"),
        ("GET", "/health?strict=perhaps".into(), vec![], 400, "invalid_query"),
        ("GET", "/v1/conflicts?limit=-1".into(), vec![], 400, "invalid_query"),
        ("DELETE", "/v1/records/users".into(), vec![], 405, "method_not_allowed"),
        ("POST", "/health".into(), vec![], 405, "method_not_allowed"),
        ("GET", "/v1/admin/links/us-west".into(), vec![], 409, "links_disabled"),
        ("PUT", "/v1/admin/links/eu-central".into(), b"{}".to_vec(), 409, "links_disabled"),
    ];
    for (method, path, body, status, code) in cases {
        let (got_status, got) = raw(&node, method, &path, body).await?;
        assert_eq!((got_status, got["error"]["code"].as_str().unwrap_or("")), (status, code), "{method} {path}: {got}");
        assert!(!got["error"]["message"].as_str().unwrap_or("").is_empty());
    }
    // Nothing was stored, and the node still serves.
    let status = client.status().await?;
    assert!(status.applied.is_empty(), "no change was committed: {:?}", status.applied);
    assert!(client.list_all("users", true).await?.is_empty());
    assert!(client.list_all("t", true).await?.is_empty());
    assert_eq!(client.health().await?.status, mrr_client::HealthStatus::Ok, "a lone region is healthy");
    let ok = client.publish("users", &json!({"id": "u001", "name": "Kaito"})).await?;
    assert_eq!(ok.token.seq, 1);
    node.shutdown();
    Ok(())
}

#[tokio::test]
async fn deleted_records_answer_with_their_own_code_and_list_as_tombstones() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, client) = node(dir.path(), "").await?;
    client.put("users/u1", &json!({"n": 1})).await?;
    let deleted = client.delete("users/u1").await?;
    assert!(deleted.deleted);
    let (status, body) = raw(&node, "GET", "/v1/records/users/u1", vec![]).await?;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("deleted")));
    assert!(client.list_all("users", false).await?.is_empty());
    assert_eq!(client.list_all("users", true).await?, vec![deleted]);
    node.shutdown();
    Ok(())
}

#[tokio::test]
async fn listing_pages_skip_tombstones_without_repeating_or_losing_records() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, client) = node(dir.path(), "").await?;
    for i in 0..7 {
        client.put(&format!("carts/c{i}"), &json!({"n": i})).await?;
    }
    for i in [0, 1, 2, 5] {
        client.delete(&format!("carts/c{i}")).await?;
    }
    // Pages of 2 over c0..c6 with c0, c1, c2, c5 deleted: the live ones are c3, c4, c6.
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let page = client.list("carts", after.as_deref(), 2, false).await?;
        pages += 1;
        seen.extend(page.records.iter().map(|r| r.id.clone()));
        match page.next_after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    assert_eq!(seen, ["c3", "c4", "c6"]);
    // [c3, c4] then [c6] and the end of the topic: no empty page promised after it.
    assert_eq!(pages, 2);
    node.shutdown();
    Ok(())
}

fn forbidden(r: Result<impl std::fmt::Debug, ClientError>, says: &str) {
    match r {
        Err(ClientError::Api { status: 403, code: ErrorCode::Forbidden, message, .. }) => {
            assert!(message.contains(says), "403 should say {says:?}: {message}")
        }
        other => panic!("expected 403 forbidden, got {other:?}"),
    }
}

fn unauthenticated(r: Result<impl std::fmt::Debug, ClientError>, says: &str) {
    match r {
        Err(ClientError::Api { status: 401, code: ErrorCode::Unauthenticated, message, .. }) => {
            assert!(message.contains(says), "401 should say {says:?}: {message}")
        }
        other => panic!("expected 401 unauthenticated, got {other:?}"),
    }
}

/// A node of a two-region cluster (the peer never runs) with `api_keys` made of `keys`:
/// (name, scope); each key is its own name.
async fn keyed_node(dir: &Path, keys: &[(&str, &str)], extra: &str) -> anyhow::Result<Node> {
    use mrr_server::access::KeyDigest;
    let keys: String = keys
        .iter()
        .map(|(k, scope)| format!("  - {{ name: {k}, hash: \"{}\", {scope} }}\n", KeyDigest::of(k)))
        .collect();
    let text = format!(
        "region: us-west\nsecret: \"0123456789abcdef\"\ninsecure_plaintext: true\ndata_dir: {}\nlisten: {{ api: 127.0.0.1:0, peer: 127.0.0.1:0 }}\n\
         bootstrap: new_cluster\nregions:\n  - name: us-west\n    endpoint: http://127.0.0.1:1\n  - name: eu-central\n    endpoint: http://127.0.0.1:2\n\
         api_keys:\n{keys}{extra}",
        dir.display()
    );
    let config = Config::parse(Path::new("test.yaml"), &text)?;
    Ok(Node::start(config, NodeOptions::default()).await?)
}

#[tokio::test]
async fn scoped_keys_admit_what_their_scope_covers_and_nothing_else() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let keys = [
        ("admin", "actions: [read, write, admin]"),
        ("reader", "actions: [read], topics: [users]"),
        ("writer", "actions: [read, write], topics: [users, \"orders/eu-*\"]"),
        ("expired", "actions: [read], expires: \"2001-01-01T00:00:00Z\""),
        ("elsewhere", "actions: [read], regions: [eu-central]"),
    ];
    let node = keyed_node(dir.path(), &keys, "").await?;
    let as_key = |k: Option<&str>| mrr_client::connect(&format!("http://{}", node.api_addr), k);
    let (admin, reader, writer) = (as_key(Some("admin"))?, as_key(Some("reader"))?, as_key(Some("writer"))?);
    admin.publish("users", &json!({"id": "u1", "name": "Kaito"})).await?;

    // Who you are: 401, saying why; /health stays open for probes.
    let anonymous = as_key(None)?;
    unauthenticated(anonymous.query("users/u1").await, "no API key");
    unauthenticated(as_key(Some("mrr_not-a-key"))?.query("users/u1").await, "not one of this cluster's keys");
    unauthenticated(as_key(Some("expired"))?.query("users/u1").await, "expired");
    unauthenticated(as_key(Some("elsewhere"))?.query("users/u1").await, "not valid in region us-west");
    let (status, body) = raw_with(&node, "GET", "/v1/records/users/u1", &["authorization: Bearer cl\u{e9}"]).await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthenticated")),
        "a malformed key is a 401, never a 500"
    );
    assert_eq!(anonymous.health().await?.region, "us-west");

    // What you may do: 403, naming the missing scope.
    assert_eq!(reader.query("users/u1").await?.map(|r| r.value["name"].clone()), Some(json!("Kaito")));
    forbidden(reader.put("users/u1", &json!({"name": "x"})).await, "lacks the `write` action (it has: read)");
    forbidden(reader.query("orders/eu-1").await, "may read users only, not orders/eu-1");
    forbidden(reader.dead_letters().await, "lacks the `admin` action");
    writer.publish("orders", &json!({"id": "eu-1"})).await?;
    forbidden(writer.publish("orders", &json!({"id": "us-1"})).await, "not orders/us-1");
    forbidden(writer.list("orders", None, 10, false).await, "not all of topic orders");
    let items = |ids: &[&str]| {
        ids.iter()
            .map(|id| mrr_api::BatchItem {
                topic: "orders".into(),
                op: Default::default(),
                id: None,
                record: Some(json!({"id": id})),
            })
            .collect::<Vec<_>>()
    };
    forbidden(writer.batch(items(&["eu-2", "us-2"])).await, "items[1]");
    assert_eq!(admin.query("orders/eu-2").await?, None, "a batch with one forbidden item writes nothing");
    writer.batch(items(&["eu-2", "eu-3"])).await?;
    assert!(admin.dead_letters().await?.dead_letters.is_empty());
    node.shutdown();

    // /health and /metrics behind a key, when the config says so.
    let dir = tempfile::tempdir()?;
    let node = keyed_node(dir.path(), &keys, "require_key_for_monitoring: true\n").await?;
    let (status, _) = raw_with(&node, "GET", "/health", &[]).await?;
    assert_eq!(status, 401);
    let (status, _) = raw_with(&node, "GET", "/metrics", &["x-api-key: reader"]).await?;
    assert_eq!(status, 200, "any valid key reads them");
    node.shutdown();
    Ok(())
}

/// Rewrites `path` whole (a check never sees it half written).
fn replace_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[tokio::test]
async fn api_keys_are_taken_up_from_the_config_file_without_a_restart() -> anyhow::Result<()> {
    use mrr_server::access::KeyDigest;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("mrr-config.yaml");
    let config = |keys: &str| {
        format!(
            "region: us-west\nsecret: \"0123456789abcdef\"\ninsecure_plaintext: true\ndata_dir: {}\nlisten: {{ api: 127.0.0.1:0, peer: 127.0.0.1:0 }}\n\
             bootstrap: new_cluster\nregions:\n  - name: us-west\n    endpoint: http://127.0.0.1:1\napi_keys:\n{keys}",
            dir.path().join("data").display()
        )
    };
    let entry = |k: &str, scope: &str| format!("  - {{ name: {k}, hash: \"{}\", {scope} }}\n", KeyDigest::of(k));
    std::fs::write(&path, config(&entry("old", "actions: [read, write]")))?;
    let node = Node::start(Config::load(&path)?, NodeOptions::default()).await?;
    let as_key = |k: &str| mrr_client::connect(&format!("http://{}", node.api_addr), Some(k));
    let (old, new) = (as_key("old")?, as_key("new")?);
    old.publish("users", &json!({"id": "u1"})).await?;
    unauthenticated(new.query("users/u1").await, "not one of this cluster's keys");

    // The old key is replaced by a narrower new one, in the file only.
    replace_file(&path, &config(&entry("new", "actions: [read], topics: [users]")))?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while new.query("users/u1").await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the new key was not taken up within 20 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    unauthenticated(old.query("users/u1").await, "not one of this cluster's keys");
    forbidden(new.put("users/u1", &json!({})).await, "lacks the `write` action");

    // A file that fails a check changes nothing: the keys in use stay, and the refusal counts.
    replace_file(&path, &config(&entry("newer", "actions: [read, delete]")))?;
    let metrics = format!("http://{}/metrics", node.api_addr);
    let refused = "mrr_config_reloads_total{result=\"refused\"} 1";
    while !reqwest::get(&metrics).await?.text().await?.contains(refused) {
        assert!(tokio::time::Instant::now() < deadline, "the refusal was not counted within 20 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(new.query("users/u1").await?.is_some(), "the keys in use stay");
    unauthenticated(as_key("newer")?.query("users/u1").await, "not one of this cluster's keys");
    node.shutdown();
    Ok(())
}

#[tokio::test]
async fn openapi_document_lists_the_verbs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, _client) = node(dir.path(), "").await?;
    let (status, doc) = raw(&node, "GET", "/openapi.json", vec![]).await?;
    assert_eq!(status, 200);
    for path in [
        "/v1/records/{topic}",
        "/v1/records/{topic}/{id}",
        "/v1/batch",
        "/health",
        "/metrics",
        "/v1/status",
        "/v1/watch/applied",
        "/v1/admin/links",
        "/v1/admin/links/{peer}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
    node.shutdown();
    Ok(())
}
