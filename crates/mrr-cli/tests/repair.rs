//! Anti-entropy on three `mrr serve` processes: a region whose disk went bad (a `timestamp`
//! record's copy changed under the same version, another record lost, a `custom` record's
//! value changed under its fold history) is found out and repaired by a run from a healthy
//! region: the copy most regions hold replaces the odd one, the lost record is joined back, the
//! fold is run again from its history. The repaired region warns and counts it; a dry run
//! changes nothing; a second run finds nothing.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{by_id, Cluster, REGIONS};
use mrr_api::{ErrorCode, RepairRequest};
use mrr_core::Key;
use mrr_storage::{CommitBatch, Durability, FjallStore, Store};
use serde_json::json;

const CONVERGE: Duration = Duration::from_secs(90);

fn repaired_total(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("mrr_repaired_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_and_a_lost_record_are_found_and_repaired_from_the_majority() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let us = cluster.clients[0].clone();
    for i in 0..300 {
        us.publish("users", &json!({"id": format!("u{i:03}"), "n": i})).await?;
    }
    for i in 0..100 {
        us.publish("orders", &json!({"id": format!("o{i:03}"), "n": i})).await?;
    }
    let users = by_id(&cluster.converged("users", CONVERGE).await?);
    let orders = by_id(&cluster.converged("orders", CONVERGE).await?);

    // eu-central's disk goes bad while it is down: one record's copy changes under the same
    // version, one record is gone.
    cluster.kill9(2)?;
    {
        let store = FjallStore::open(&cluster.dir.path().join("data").join(REGIONS[2]), Durability::Fsync)?;
        let (bad, lost, folded) = (Key::new("users", "u123"), Key::new("users", "u234"), Key::new("orders", "o042"));
        let mut copy = store.get(&bad)?.expect("u123 held");
        copy.value = Some(br#"{"id":"u123","n":-1}"#.to_vec());
        let mut fold = store.get(&folded)?.expect("o042 held");
        fold.value = Some(br#"{"id":"o042","n":-1}"#.to_vec());
        let records = vec![(bad, copy), (folded, fold)];
        store.commit(&CommitBatch { records, records_removed: vec![lost], ..Default::default() })?;
    }
    cluster.spawn(2)?;
    cluster.wait_connected().await?;
    let eu = cluster.clients[2].clone();
    let n = |r: Option<mrr_api::RecordEnvelope>| r.map(|r| r.value["n"].clone());
    assert_eq!(n(eu.query("users/u123").await?), Some(json!(-1)), "the planted copy is served");

    // A dry run finds all three, with eu-central only, and changes nothing.
    let dry = us.repair(&RepairRequest { dry_run: true, ..Default::default() }).await?;
    let per_peer: BTreeMap<&str, &mrr_api::PeerRepair> = dry.peers.iter().map(|p| (p.peer.as_str(), p)).collect();
    assert_eq!(per_peer[REGIONS[1]].keys_differing, 0, "{dry:?}");
    assert_eq!(per_peer["eu-central"].keys_differing, 3, "{dry:?}");
    assert_eq!(per_peer["eu-central"].differing, ["orders/o042", "users/u123", "users/u234"], "{dry:?}");
    assert_eq!(per_peer["eu-central"].records_there + 1, per_peer["eu-central"].records_here);
    assert_eq!(n(eu.query("users/u123").await?), Some(json!(-1)), "a dry run changes nothing");

    // The run from the first region: it and the second hold the same copy of u123, so that
    // copy replaces eu-central's; u234 is joined back; o042 is folded again.
    let run = us.repair(&RepairRequest::default()).await?;
    let eu_run = run.peers.iter().find(|p| p.peer == "eu-central").expect("eu-central compared");
    assert_eq!(eu_run.repaired_there, ["orders/o042", "users/u123", "users/u234"], "{run:?}");
    assert!(eu_run.repaired_here.is_empty() && eu_run.unresolved.is_empty(), "{run:?}");
    assert!(run.peers.iter().all(|p| p.error.is_none()), "{run:?}");
    assert_eq!(by_id(&cluster.converged("users", CONVERGE).await?), users, "as before the disk went bad");
    assert_eq!(by_id(&cluster.converged("orders", CONVERGE).await?), orders, "as before the disk went bad");

    // Where the repair happened, it is counted, logged and warned about.
    assert_eq!(repaired_total(&eu.metrics().await?), 3.0);
    let health = eu.health().await?;
    assert!(health.warnings.iter().any(|w| w.contains("anti-entropy repaired 3 record(s)")), "{health:?}");
    assert!(cluster.log(2).contains("anti-entropy repaired a record"), "the repaired keys are logged");
    assert_eq!(repaired_total(&us.metrics().await?), 0.0, "nothing was repaired where the run started");

    // A second run finds nothing; `mrr repair` from the command line says so too.
    let again = us.repair(&RepairRequest::default()).await?;
    assert!(again.peers.iter().all(|p| p.keys_differing == 0 && p.buckets_differing == 0), "{again:?}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mrr"))
        .args(["repair", "--dry-run", "-e", &format!("http://127.0.0.1:{}", cluster.base_port + 20)])
        .env("MRR_KEY", common::KEY)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "mrr repair failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("anti-entropy from eu-central (dry run: nothing changed)") && text.contains(REGIONS[0]),
        "{text}"
    );

    // Bad input: a peer that is not one, a topic that cannot be.
    let code = |e: mrr_client::ClientError| match e {
        mrr_client::ClientError::Api { status, code, .. } => Some((status, code)),
        _ => None,
    };
    let e = us.repair(&RepairRequest { peer: Some("mars".into()), ..Default::default() }).await.expect_err("unknown");
    assert_eq!(code(e), Some((404, ErrorCode::UnknownRegion)));
    let e =
        us.repair(&RepairRequest { topics: vec!["bad topic!".into()], ..Default::default() }).await.expect_err("bad");
    assert_eq!(code(e), Some((400, ErrorCode::InvalidTopic)));
    Ok(())
}
