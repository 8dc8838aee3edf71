//! Placement end to end, on three real `mrr serve` processes: the article's VIP users, kept in
//! eu-central and us-west only. Tokyo never receives them (reads answer 404 `not_placed`,
//! writes 409 `not_placed_here`) while its stream keeps flowing; a record moves when its
//! `regions` change, under `merge` too, with a write concurrent with the move reaching the
//! region the move adds; a relay outside a record's placement never stands in for its content;
//! with `placement_writes: forward` a write made in Tokyo is carried out in Europe.

mod common;

use std::time::Duration;

use common::{wait_for, Cluster, REGIONS};
use mrr_api::ErrorCode;
use mrr_client::{Client, ClientError, RecordEnvelope};
use mrr_core::{Lane, RegionName, Stream};
use serde_json::{json, Value};

const CONVERGE: Duration = Duration::from_secs(60);
const TOKYO: usize = 0;
const US_WEST: usize = 1;
const EU: usize = 2;

/// The error code of a read, or `None` when the record is there.
async fn read_code(c: &Client, path: &str) -> anyhow::Result<Option<ErrorCode>> {
    match c.query(path).await {
        Ok(Some(_)) => Ok(None),
        Ok(None) => Ok(Some(ErrorCode::NotFound)),
        Err(ClientError::Api { code, .. }) => Ok(Some(code)),
        Err(e) => Err(e.into()),
    }
}

async fn wait_value(c: &Client, path: &str, want: &Value) -> anyhow::Result<RecordEnvelope> {
    wait_for(&format!("{path} = {want}"), CONVERGE, || async { Ok(c.query(path).await?.filter(|r| &r.value == want)) })
        .await
}

async fn wait_not_placed(c: &Client, path: &str) -> anyhow::Result<()> {
    wait_for(&format!("{path} not placed"), CONVERGE, || async {
        Ok((read_code(c, path).await? == Some(ErrorCode::NotPlaced)).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vip_users_live_in_europe_and_america_only_and_move_when_their_regions_change() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.clients;
    let vip = json!({"id": "vip1", "name": "Ana", "tier": "gold",
        "__metadata": {"regions": ["eu-central", "us-west"], "syncFlags": ["TIER_1"]}});
    c[EU].publish("users", &vip).await?;
    // Then an ordinary record from the same region: Tokyo receives it, so the VIP change
    // before it in eu-central's stream was skipped, not left blocking the stream.
    c[EU].publish("users", &json!({"id": "after", "v": 1})).await?;

    let want = json!({"id": "vip1", "name": "Ana", "tier": "gold"});
    let in_us = wait_value(&c[US_WEST], "users/vip1", &want).await?;
    assert_eq!(in_us.metadata.regions, ["eu-central", "us-west"]);
    wait_value(&c[TOKYO], "users/after", &json!({"id": "after", "v": 1})).await?;
    assert_eq!(read_code(&c[TOKYO], "users/vip1").await?, Some(ErrorCode::NotPlaced));
    let tokyo_ids: Vec<String> = c[TOKYO].list_all("users", true).await?.into_iter().map(|r| r.id).collect();
    assert_eq!(tokyo_ids, ["after"], "Tokyo lists no VIP, not even as deleted");

    // A write in Tokyo is refused with what to do; nothing changes anywhere.
    let refused = c[TOKYO].put("users/vip1", &json!({"name": "Eve"})).await;
    match refused {
        Err(ClientError::Api { status: 409, code: ErrorCode::NotPlacedHere, message, .. }) => {
            assert!(message.contains("eu-central") && message.contains("us-west"), "{message}");
        }
        other => panic!("expected 409 not_placed_here, got {other:?}"),
    }
    // Unknown regions are refused before anything is stored.
    let typo = c[EU].publish("users", &json!({"id": "x", "__metadata": {"regions": ["eu-centrl"]}})).await;
    assert!(matches!(&typo, Err(ClientError::Api { status: 400, code: ErrorCode::InvalidMetadata, .. })), "{typo:?}");

    // The user becomes global: Tokyo receives the record whole.
    let global = json!({"id": "vip1", "name": "Ana", "tier": "platinum", "__metadata": {"regions": ["*"]}});
    c[US_WEST].put("users/vip1", &global).await?;
    let want = json!({"id": "vip1", "name": "Ana", "tier": "platinum"});
    for k in [TOKYO, EU] {
        wait_value(&c[k], "users/vip1", &want).await?;
    }
    // And then European only, decided in us-west: the other two delete their copies. The
    // answer is the record as Europe now holds it, not the delete us-west's copy reads as.
    let eu_only = json!({"id": "vip1", "name": "Ana", "tier": "platinum", "__metadata": {"regions": ["eu-central"]}});
    let moved = c[US_WEST].put("users/vip1", &eu_only).await?;
    assert!(!moved.deleted, "{moved:?}");
    assert_eq!((&moved.value, &moved.metadata.regions), (&want, &vec!["eu-central".to_owned()]));
    wait_not_placed(&c[TOKYO], "users/vip1").await?;
    wait_not_placed(&c[US_WEST], "users/vip1").await?;
    assert_eq!(c[EU].query("users/vip1").await?.map(|r| r.value), Some(want));
    Ok(())
}

/// eu-central and us-west cannot reach each other, so Tokyo relays eu-central's stream to
/// us-west. Tokyo holds only the marker of a VIP change; sending it on would advance us-west
/// past content it must have. Tokyo holds the stream instead, and us-west gets the content
/// once the direct path heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_outside_the_placement_holds_rather_than_skip_content() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.clients;
    cluster.partition(EU, US_WEST, true).await?;
    wait_cut(c, US_WEST, REGIONS[EU]).await?;
    let before = json!({"id": "before", "v": 1});
    c[EU].publish("users", &before).await?;
    // Relayed through Tokyo while the pair is cut.
    wait_value(&c[US_WEST], "users/before", &before).await?;

    let vip = json!({"id": "vip2", "name": "Ben", "__metadata": {"regions": ["eu-central", "us-west"]}});
    c[EU].publish("users", &vip).await?;
    let after = json!({"id": "after", "v": 2});
    c[EU].publish("users", &after).await?;
    // Tokyo has both (the VIP as a marker) before the pair heals.
    wait_value(&c[TOKYO], "users/after", &after).await?;
    assert_eq!(read_code(&c[TOKYO], "users/vip2").await?, Some(ErrorCode::NotPlaced));

    cluster.partition(EU, US_WEST, false).await?;
    wait_value(&c[US_WEST], "users/vip2", &json!({"id": "vip2", "name": "Ben"})).await?;
    wait_value(&c[US_WEST], "users/after", &after).await?;
    Ok(())
}

/// Publishes `profiles/{id}` (`{"name": "Ana"}`, a `merge` topic) placed in eu-central and
/// us-west from eu-central, and waits until us-west holds it and Tokyo answers `not_placed`.
async fn european_american_profile(c: &[Client], id: &str) -> anyhow::Result<()> {
    let profile = json!({"id": id, "name": "Ana", "__metadata": {"regions": ["eu-central", "us-west"]}});
    c[EU].publish("profiles", &profile).await?;
    let path = format!("profiles/{id}");
    wait_value(&c[US_WEST], &path, &json!({"id": id, "name": "Ana"})).await?;
    wait_not_placed(&c[TOKYO], &path).await
}

/// Waits until `k` no longer receives a stream from `peer`.
async fn wait_cut(c: &[Client], k: usize, peer: &str) -> anyhow::Result<()> {
    wait_for(&format!("{} to notice the cut from {peer}", REGIONS[k]), CONVERGE, || async {
        let s = c[k].status().await?;
        Ok(s.peers.iter().any(|p| p.region == peer && p.inbound_streams == 0).then_some(()))
    })
    .await
}

/// A region a move places a record in, which holds only the marker of a write concurrent
/// with the move, lists that write's token as lacking until its content arrives, so a
/// read-your-writes check cannot mistake the record for one that includes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_lists_the_writes_it_lacks_until_their_content_arrives() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.clients;
    european_american_profile(c, "p2").await?;

    // us-west writes while cut from eu-central; Tokyo, outside the placement, gets a marker.
    cluster.partition(EU, US_WEST, true).await?;
    cluster.partition(EU, TOKYO, true).await?;
    wait_cut(c, US_WEST, REGIONS[EU]).await?;
    wait_cut(c, TOKYO, REGIONS[EU]).await?;
    let city = c[US_WEST].patch("profiles/p2", &json!({"city": "Osaka"})).await?;
    // The applied vector names streams as `mrr_core::Stream` displays them.
    let lane = Lane::from_name(&city.token.lane).ok_or_else(|| anyhow::anyhow!("lane {}", city.token.lane))?;
    let stream = Stream::new(RegionName::new(city.token.origin.clone())?, lane).to_string();
    wait_for("Tokyo to admit us-west's write", CONVERGE, || async {
        let applied = c[TOKYO].status().await?.applied;
        Ok((applied.get(&stream).copied().unwrap_or(0) >= city.token.seq).then_some(()))
    })
    .await?;
    // us-west is cut off from both; eu-central, which has not seen the write, moves the record
    // everywhere. Tokyo gets the move, finds the marker, and asks us-west, which cannot answer.
    cluster.partition(TOKYO, US_WEST, true).await?;
    wait_cut(c, TOKYO, REGIONS[US_WEST]).await?;
    cluster.partition(EU, TOKYO, false).await?;
    c[EU].patch("profiles/p2", &json!({"tier": "gold", "__metadata": {"regions": ["*"]}})).await?;
    let partial = wait_value(&c[TOKYO], "profiles/p2", &json!({"id": "p2", "name": "Ana", "tier": "gold"})).await?;
    assert_eq!(partial.lacking, std::slice::from_ref(&city.token), "Tokyo shows the record without the write it lacks");

    cluster.partition(TOKYO, US_WEST, false).await?;
    cluster.partition(EU, US_WEST, false).await?;
    let whole = json!({"id": "p2", "name": "Ana", "tier": "gold", "city": "Osaka"});
    for region in [TOKYO, US_WEST, EU] {
        let r = wait_value(&c[region], "profiles/p2", &whole).await?;
        assert!(r.lacking.is_empty(), "{r:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_placement_writes_forward_a_write_outside_the_placement_is_made_inside_it() -> anyhow::Result<()> {
    let forward =
        |config: &str| config.replacen("replication_rules:\n", "replication_rules:\n  placement_writes: forward\n", 1);
    let cluster = Cluster::start_with(forward).await?;
    let c = &cluster.clients;
    // A new VIP record written in Tokyo: made in eu-central, the first region of its placement.
    let vip = json!({"id": "vip3", "name": "Cleo", "__metadata": {"regions": ["eu-central", "us-west"]}});
    let made = c[TOKYO].publish("users", &vip).await?;
    assert_eq!(made.origin_region, "eu-central");
    // The forwarded write's session token comes back with its answer: a read-your-writes read
    // in Tokyo's session waits for the write made in eu-central.
    let token = c[TOKYO].session_token().expect("the forwarded answer carried a session token");
    assert!(token.contains("eu-central:"), "{token}");
    let want = json!({"id": "vip3", "name": "Cleo"});
    wait_value(&c[US_WEST], "users/vip3", &want).await?;
    assert_eq!(c[EU].query("users/vip3").await?.map(|r| r.value), Some(want));
    // Nothing stored in Tokyo: not there yet, then its marker.
    let in_tokyo = read_code(&c[TOKYO], "users/vip3").await?;
    assert!(matches!(in_tokyo, Some(ErrorCode::NotFound | ErrorCode::NotPlaced)), "{in_tokyo:?}");
    wait_not_placed(&c[TOKYO], "users/vip3").await?;
    // An update of it from Tokyo, which now knows where it lives.
    let updated = c[TOKYO].put("users/vip3", &json!({"name": "Cleo", "tier": "gold"})).await?;
    assert_eq!(updated.origin_region, "eu-central");
    assert_eq!(updated.metadata.regions, ["eu-central", "us-west"], "the update kept the placement");
    assert_eq!(updated.value["tier"], "gold");
    wait_value(&c[US_WEST], "users/vip3", &updated.value).await?;
    // A batch commits all or nothing in one region: refused, not forwarded.
    let item = mrr_client::BatchItem {
        topic: "users".into(),
        op: mrr_client::BatchOp::Put,
        id: Some("vip3".into()),
        record: Some(json!({"name": "Zed"})),
    };
    let batch = c[TOKYO].batch(vec![item]).await;
    assert!(matches!(&batch, Err(ClientError::Api { status: 409, code: ErrorCode::NotPlacedHere, .. })), "{batch:?}");
    Ok(())
}

/// A `merge` record moves while another region, cut off from the mover, updates it under the
/// placement it last saw. Tokyo, which the move adds, receives that update only as a marker
/// (its writer placed it in Europe and America), asks us-west for it, and ends with the same
/// document as the other two: every field of both writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_record_moves_and_the_added_region_gets_writes_made_concurrently() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.clients;
    european_american_profile(c, "p1").await?;

    cluster.partition(EU, US_WEST, true).await?;
    wait_cut(c, US_WEST, REGIONS[EU]).await?;
    // Concurrent: us-west has not seen the move when it writes.
    let moved = json!({"tier": "gold", "__metadata": {"regions": ["*"]}});
    c[EU].patch("profiles/p1", &moved).await?;
    c[US_WEST].patch("profiles/p1", &json!({"city": "Osaka"})).await?;

    cluster.partition(EU, US_WEST, false).await?;
    let whole = json!({"id": "p1", "name": "Ana", "tier": "gold", "city": "Osaka"});
    for region in [TOKYO, US_WEST, EU] {
        let r = wait_value(&c[region], "profiles/p1", &whole).await?;
        assert_eq!(r.metadata.regions, ["*"], "the move decides the placement everywhere");
    }
    Ok(())
}

/// Data residency: a region outside a record's placement holds nothing that names it. Records
/// placed in eu-central and us-west are written, updated from both regions, deleted and moved
/// between the two; Tokyo applies every change (its vector equals the others'), answers their
/// reads with `not_placed` and refuses their writes. Then Tokyo is stopped and its whole store
/// is read, every keyspace, every key and value: no record id and no byte of content appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_outside_the_placement_holds_nothing_that_names_the_record() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let c = &cluster.clients;
    let placed = json!({"regions": ["eu-central", "us-west"], "syncFlags": ["TIER_1"]});
    for i in 0..20 {
        let record = json!({"id": format!("resident-{i}"), "name": format!("Secret-Name-{i}"), "__metadata": placed});
        c[if i % 2 == 0 { EU } else { US_WEST }].publish("users", &record).await?;
    }
    c[US_WEST].put("users/resident-1", &json!({"name": "Secret-Updated", "__metadata": placed})).await?;
    c[EU].patch("users/resident-4", &json!({"city": "Secret-City"})).await?;
    c[EU].delete("users/resident-2").await?;
    c[US_WEST]
        .put("users/resident-3", &json!({"name": "Secret-Moved", "__metadata": {"regions": ["eu-central"]}}))
        .await?;
    c[EU].publish("users", &json!({"id": "everywhere", "v": 1})).await?;

    // Tokyo has applied every change of both regions.
    wait_for("Tokyo to apply what both regions wrote", CONVERGE, || async {
        let (tokyo, us, eu) = (c[TOKYO].status().await?, c[US_WEST].status().await?, c[EU].status().await?);
        Ok((tokyo.applied == eu.applied && tokyo.applied == us.applied).then_some(()))
    })
    .await?;
    wait_value(&c[TOKYO], "users/everywhere", &json!({"id": "everywhere", "v": 1})).await?;
    for id in ["resident-0", "resident-1", "resident-2", "resident-3"] {
        assert_eq!(read_code(&c[TOKYO], &format!("users/{id}")).await?, Some(ErrorCode::NotPlaced), "{id}");
    }
    match c[TOKYO].put("users/resident-5", &json!({"name": "x"})).await {
        Err(ClientError::Api { code: ErrorCode::NotPlacedHere, .. }) => {}
        other => anyhow::bail!("a write in Tokyo must be refused with not_placed_here: {other:?}"),
    }
    let listed = c[TOKYO].list("users", None, 100, true).await?;
    assert_eq!(listed.records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["everywhere"]);

    cluster.kill9(TOKYO)?;
    let db = fjall::Database::builder(cluster.dir.path().join("data").join(REGIONS[TOKYO])).open()?;
    let names = db.list_keyspace_names();
    assert!(names.len() >= 5, "Tokyo's store has its keyspaces: {names:?}");
    let (mut entries, mut sealed) = (0usize, 0usize);
    for name in names {
        let keyspace = db.keyspace(&name, fjall::KeyspaceCreateOptions::default)?;
        for item in keyspace.iter() {
            let (k, v) = item.into_inner()?;
            entries += 1;
            for needle in ["resident-", "Secret-", "TIER_1"] {
                let found = |bytes: &[u8]| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
                anyhow::ensure!(
                    !found(&k) && !found(&v),
                    "Tokyo's keyspace {name:?} names {needle:?}: key {:?}",
                    String::from_utf8_lossy(&k)
                );
            }
            sealed += usize::from(k.windows(2).any(|w| w == b"\0~"));
        }
    }
    assert!(entries > 0 && sealed >= 20, "the placement is there, under sealed names: {sealed} of {entries} entries");
    Ok(())
}

/// A region a record leaves erases what its logs kept of it once no region can need it from
/// there: Tokyo wrote and held records (and logged a conflict on one), they move to Europe and
/// America, and once the move is stable Tokyo's store names none of them any more — its own
/// writes in its changelog are markers under sealed names, its conflict entries are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_a_record_leaves_erases_what_its_logs_kept_of_it() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let c = &cluster.clients;
    let here = json!({"regions": ["ap-northeast", "eu-central"]});
    for i in 0..10 {
        let record = json!({"id": format!("leaver-{i}"), "name": format!("Leaver-Secret-{i}"), "__metadata": here});
        c[if i % 2 == 0 { TOKYO } else { EU }].publish("users", &record).await?;
    }
    wait_value(&c[TOKYO], "users/leaver-9", &json!({"id": "leaver-9", "name": "Leaver-Secret-9"})).await?;
    // A conflict on leaver-0, logged in Tokyo: both sides write it while cut from each other.
    cluster.partition(TOKYO, EU, true).await?;
    wait_cut(c, TOKYO, REGIONS[EU]).await?;
    wait_cut(c, EU, REGIONS[TOKYO]).await?;
    c[TOKYO].patch("users/leaver-0", &json!({"name": "Leaver-Secret-Tokyo"})).await?;
    c[EU].patch("users/leaver-0", &json!({"name": "Leaver-Secret-Europe"})).await?;
    cluster.partition(TOKYO, EU, false).await?;
    let logged = |list: &mrr_api::ConflictList| list.conflicts.iter().any(|e| e.id == "leaver-0");
    wait_for("Tokyo to log the conflict on leaver-0", CONVERGE, || async {
        Ok(logged(&c[TOKYO].conflicts(Some("users"), None).await?).then_some(()))
    })
    .await?;

    for i in 0..10 {
        let moved = json!({"__metadata": {"regions": ["eu-central", "us-west"]}});
        c[EU].patch(&format!("users/leaver-{i}"), &moved).await?;
    }
    for i in 0..10 {
        wait_not_placed(&c[TOKYO], &format!("users/leaver-{i}")).await?;
    }
    let applied = wait_for("every region to apply the moves", CONVERGE, || async {
        let (tokyo, us, eu) = (c[TOKYO].status().await?, c[US_WEST].status().await?, c[EU].status().await?);
        Ok((tokyo.applied == eu.applied && tokyo.applied == us.applied).then_some(tokyo.applied))
    })
    .await?;
    // The status shows the stable point after the collection pass it allowed.
    wait_for("Tokyo's stable point to cover the moves, and nothing left to erase", CONVERGE, || async {
        let s = c[TOKYO].status().await?;
        let covered = applied.iter().all(|(stream, seq)| s.stable.get(stream).is_some_and(|at| at >= seq));
        Ok((covered && s.departures == 0).then_some(()))
    })
    .await?;
    assert!(!logged(&c[TOKYO].conflicts(Some("users"), None).await?), "Tokyo's conflict log still names leaver-0");
    assert!(logged(&c[EU].conflicts(Some("users"), None).await?), "eu-central, which holds it, keeps its entry");

    cluster.kill9(TOKYO)?;
    let db = fjall::Database::builder(cluster.dir.path().join("data").join(REGIONS[TOKYO])).open()?;
    for name in db.list_keyspace_names() {
        let keyspace = db.keyspace(&name, fjall::KeyspaceCreateOptions::default)?;
        for item in keyspace.iter() {
            let (k, v) = item.into_inner()?;
            for needle in ["leaver-", "Leaver-Secret"] {
                let found = |bytes: &[u8]| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
                anyhow::ensure!(
                    !found(&k) && !found(&v),
                    "Tokyo's keyspace {name:?} still names {needle:?}: key {:?}",
                    String::from_utf8_lossy(&k)
                );
            }
        }
    }
    Ok(())
}
