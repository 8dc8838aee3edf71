//! Peers that must be refused: a wrong cluster secret, another cluster, another protocol
//! version. Each gets a precise error, nothing replicates, and the node keeps serving.

use std::sync::Arc;

use mrr_core::RegionName;
use mrr_replication::handshake::Dialer;
use mrr_replication::proto::{peer_client::PeerClient, to_acceptor, to_dialer, ToAcceptor, ToDialer};
use serde_json::json;

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_the_wrong_secret_is_refused_and_nothing_replicates() -> anyhow::Result<()> {
    // Regions that cannot prove themselves to each other cannot say where a new region
    // stands either: a new cluster's first start says so (`bootstrap: new_cluster`).
    let secrets = ["secret-one-0123456789", "secret-two-0123456789"];
    let p = pair_with(secrets, [None, None], "bootstrap: new_cluster\n").await?;
    p.clients[0].publish("users", &json!({"id": "u001"})).await?;
    let err = wait_for_error(&p.clients[0], "cluster secret mismatch").await?;
    assert!(err.contains("us-west"), "{err}");
    // Both directions are refused, each side by its own check.
    wait_for_error(&p.clients[1], "cluster secret mismatch").await?;
    assert_eq!(p.clients[1].query("users/u001").await?, None);
    assert!(p.clients[1].status().await?.applied.is_empty());
    assert_eq!(p.clients[1].health().await?.region, "us-west", "the node keeps serving");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_secret_rotates_on_running_nodes() -> anyhow::Result<()> {
    let (old, new) = ("old-secret-0123456789", "new-secret-0123456789");
    // Tokyo has moved to the new secret, us-west not yet, and neither accepts the other's.
    // Sealed names stay keyed by the secret the cluster started with (docs/security.md).
    let extra = format!("placement_secret: \"{old}\"\nbootstrap: new_cluster\n");
    let p = pair_with_coordinator([new, old], &extra).await?;
    wait_for_error(&p.clients[0], "cluster secret mismatch").await?;
    // Each config file now accepts the other secret; the running nodes take it up.
    for (config, other) in p.configs.iter().zip([old, new]) {
        let text = std::fs::read_to_string(config)?;
        let tmp = config.with_extension("tmp");
        std::fs::write(&tmp, format!("{text}accept_secrets: [\"{other}\"]\n"))?;
        std::fs::rename(&tmp, config)?;
    }
    let w = p.clients[0].publish("users", &json!({"id": "from-tokyo"})).await?;
    assert_eq!(wait_for_record(&p.clients[1], "users/from-tokyo").await?, w);
    let w = p.clients[1].publish("users", &json!({"id": "from-us-west"})).await?;
    assert_eq!(wait_for_record(&p.clients[0], "users/from-us-west").await?, w);
    // The strong tier's calls prove themselves the same way: the two regions elect a
    // coordinator, which needs both votes.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while p.clients[1].coordinator().await?.coordinator.is_none() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no coordinator across the two secrets within 20 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_secrets_replicate() -> anyhow::Result<()> {
    let p = pair(["same-secret-0123456789"; 2]).await?;
    let w = p.clients[0].publish("users", &json!({"id": "u001"})).await?;
    assert_eq!(wait_for_record(&p.clients[1], "users/u001").await?, w);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_durability_replicates_once_the_syncer_persists() -> anyhow::Result<()> {
    let p = pair_with(["same-secret-0123456789"; 2], [None, None], "durability: buffered\n").await?;
    let w = p.clients[0].publish("users", &json!({"id": "u001"})).await?;
    assert_eq!(wait_for_record(&p.clients[1], "users/u001").await?, w);
    Ok(())
}

fn dialer(cluster: &str, secret: &str, policy_digest: &str) -> Dialer {
    Dialer {
        cluster: cluster.into(),
        local: RegionName::new("ap-northeast").expect("valid"),
        peer: RegionName::new("us-west").expect("valid"),
        secret: secret.into(),
        nonce: [7; 16],
        policy_digest: policy_digest.into(),
        incarnation: Some(0),
    }
}

/// Dials us-west's peer listener with `first` as the first message, answers every Challenge
/// with `dialer`'s proof, and returns the status the acceptor ends the stream with. A Welcome, or
/// anything but a Challenge before the refusal, fails the test.
async fn refusal(url: String, first: to_acceptor::Msg, dialer: &Dialer) -> anyhow::Result<tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ToAcceptor { msg: Some(first) }).await?;
    let mut client = PeerClient::connect(url).await?;
    let mut answers = match client.replicate(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
        Err(status) => return Ok(status),
        Ok(answers) => answers.into_inner(),
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, answers.message()).await? {
            Err(status) => return Ok(status),
            Ok(Some(ToDialer { msg: Some(to_dialer::Msg::Challenge(c)) })) => {
                assert_eq!(c.nonce.len(), 16, "a Challenge holds a nonce and nothing else: {c:?}");
                let (auth, _) = dialer.on_challenge(&c)?;
                tx.send(ToAcceptor { msg: Some(to_acceptor::Msg::Auth(auth)) }).await?;
            }
            Ok(other) => anyhow::bail!("the acceptor answered {other:?} instead of refusing"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_speaking_another_protocol_or_cluster_get_a_precise_status() -> anyhow::Result<()> {
    let p = pair(["same-secret-0123456789"; 2]).await?;
    let url = format!("http://127.0.0.1:{}", p.peer_ports[1]);
    let secret = "same-secret-0123456789";
    let digest = mrr_server::Config::load(&p.configs[1])?.policies.digest();
    let ours = dialer("t", secret, &digest);
    let hello = |d: &Dialer| to_acceptor::Msg::Hello(d.hello());
    let mut old = ours.hello();
    old.protocol_version = 99;
    for (first, d, code, needle) in [
        (to_acceptor::Msg::Hello(old), ours.clone(), tonic::Code::FailedPrecondition, "protocol version 99"),
        {
            let d = dialer("other", secret, &digest);
            (hello(&d), d, tonic::Code::FailedPrecondition, "cluster \"other\"")
        },
        {
            let d = dialer("t", secret, "default=merge");
            (hello(&d), d, tonic::Code::FailedPrecondition, "topic policies differ")
        },
        {
            // The acceptor tells an unproved dialer nothing of its policies or its proof.
            let d = dialer("t", "wrong-secret-0123456789", "default=merge");
            (hello(&d), d, tonic::Code::Unauthenticated, "cluster secret mismatch with region us-west")
        },
        (to_acceptor::Msg::Heartbeat(Default::default()), ours.clone(), tonic::Code::InvalidArgument, "must be Hello"),
    ] {
        let status = refusal(url.clone(), first, &d).await?;
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(status.message().contains(needle), "{}", status.message());
        if code == tonic::Code::Unauthenticated {
            assert!(!status.message().contains(&digest), "{}", status.message());
        }
    }
    assert_eq!(p.clients[1].health().await?.region, "us-west", "the node keeps serving");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_stamped_beyond_max_clock_skew_are_refused_then_delivered_once_clocks_agree() -> anyhow::Result<()> {
    let fast = Arc::new(ShiftedClock::default());
    let p = pair_with(["same-secret-0123456789"; 2], [Some(fast.clone()), None], "links: {}\n").await?;
    let clients = &p.clients;
    clients[0].put("users/first", &json!({"n": 0})).await?;
    wait_for_record(&clients[1], "users/first").await?;
    // Tokyo's clock jumps 1.5 s ahead while us-west cannot be heard, so Tokyo does not know yet
    // (once it does, it refuses writes itself: tests/clock.rs) and takes a write stamped 1.5 s
    // in us-west's future.
    let cut = mrr_client::LinkSettings { partitioned: true, ..Default::default() };
    clients[0].set_link("us-west", cut).await?;
    clients[1].set_link("ap-northeast", cut).await?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await; // no ack is on its way any more
    fast.offset_ms.store(1_500, std::sync::atomic::Ordering::Relaxed);
    let w = clients[0].publish("users", &json!({"id": "early"})).await?;
    clients[0].set_link("us-west", Default::default()).await?;
    clients[1].set_link("ap-northeast", Default::default()).await?;
    let err = wait_for_error(&clients[0], "refused change").await?;
    assert!(err.contains("max_clock_skew"), "{err}");
    assert_eq!(clients[1].query("users/early").await?, None, "refused, not applied");
    // Tokyo's clock is fixed. The refused change is retried, not lost: once us-west's clock
    // reaches within 200 ms of its stamp, it applies, exactly as written.
    fast.offset_ms.store(0, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(wait_for_record(&clients[1], "users/early").await?, w);
    Ok(())
}
