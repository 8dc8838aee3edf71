//! The coordinator is the strong tier's Raft leader: three `mrr serve` processes at `mrr dev`'s
//! delays elect the `role: coordinator` region, elect another when it is killed (`kill -9`) or
//! cut off, and hand leadership back once it has been healthy for `return_after_ms`.

mod common;

use std::time::{Duration, Instant};

use common::{wait_for, Cluster, REGIONS};

/// Every live region in `live` names `want` as coordinator (and agrees on its term).
async fn agree_on(cluster: &Cluster, live: &[usize], want: &str, deadline: Duration) -> anyhow::Result<u64> {
    wait_for(&format!("regions {live:?} agree that {want} is the coordinator"), deadline, || async {
        let mut terms = Vec::new();
        for &k in live {
            let c = cluster.clients[k].coordinator().await?;
            if c.coordinator.as_deref() != Some(want) {
                return Ok(None);
            }
            terms.push(c.term);
        }
        Ok(terms.windows(2).all(|w| w[0] == w[1]).then(|| terms[0]))
    })
    .await
}

/// Some region other than `not` that every live region names.
async fn agree_on_other(cluster: &Cluster, live: &[usize], not: &str, deadline: Duration) -> anyhow::Result<String> {
    wait_for(&format!("regions {live:?} agree on a coordinator other than {not}"), deadline, || async {
        let mut names = Vec::new();
        for &k in live {
            names.push(cluster.clients[k].coordinator().await?.coordinator);
        }
        let first = names[0].clone();
        Ok(first.filter(|f| f != not && names.iter().all(|n| n.as_deref() == Some(f.as_str()))))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_fails_over_by_itself_and_comes_back() -> anyhow::Result<()> {
    let mut cluster =
        Cluster::start_with(|c| c.replace("consensus:\n", "consensus:\n  return_after_ms: 2000\n")).await?;
    let preferred = REGIONS[0];
    let term = agree_on(&cluster, &[0, 1, 2], preferred, Duration::from_secs(20)).await?;
    let info = cluster.clients[1].coordinator().await?;
    assert_eq!(info.preferred.as_deref(), Some(preferred));
    assert!(!info.is_local && info.since_ms.is_some());
    assert!(cluster.log(0).contains(&format!("Coordinator elected: {preferred} (term {term})")), "{}", cluster.log(0));

    // kill -9: the other two elect one of themselves.
    cluster.kill9(0)?;
    let killed_at = Instant::now();
    let next = agree_on_other(&cluster, &[1, 2], preferred, Duration::from_secs(20)).await?;
    eprintln!("failover after kill -9 to {next} in {:?} (includes polling)", killed_at.elapsed());

    // Back up: once healthy for return_after_ms, leadership returns to the preferred region.
    cluster.spawn(0)?;
    agree_on(&cluster, &[0, 1, 2], preferred, Duration::from_secs(30)).await?;

    // Cut off from both peers: the others elect; after the heal it comes back again.
    cluster.partition(0, 1, true).await?;
    cluster.partition(0, 2, true).await?;
    agree_on_other(&cluster, &[1, 2], preferred, Duration::from_secs(20)).await?;
    cluster.partition(0, 1, false).await?;
    cluster.partition(0, 2, false).await?;
    agree_on(&cluster, &[0, 1, 2], preferred, Duration::from_secs(30)).await?;
    let metrics = cluster.clients[0].metrics().await?;
    assert!(metrics.contains("mrr_consensus_is_leader 1"), "{metrics}");
    assert!(metrics.contains("mrr_consensus_term"), "{metrics}");
    Ok(())
}
