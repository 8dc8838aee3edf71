//! Peers that must be refused: a wrong cluster secret, another cluster, another protocol
//! version. Each gets a precise error, nothing replicates, and the node keeps serving.

use std::sync::Arc;

use mrr_replication::proto::{peer_client::PeerClient, to_acceptor, Hello, ToAcceptor};
use serde_json::json;

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_the_wrong_secret_is_refused_and_nothing_replicates() -> anyhow::Result<()> {
    let p = pair(["secret-one-0123456789", "secret-two-0123456789"]).await?;
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

fn hello(protocol_version: u32, cluster: &str) -> ToAcceptor {
    ToAcceptor {
        msg: Some(to_acceptor::Msg::Hello(Hello {
            cluster: cluster.into(),
            protocol_version,
            region: "ap-northeast".into(),
            target_region: "us-west".into(),
            nonce: vec![7; 16],
            wall_ms: 0,
            policy_digest: "default=timestamp".into(),
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_speaking_another_protocol_or_cluster_get_a_precise_status() -> anyhow::Result<()> {
    let p = pair(["same-secret-0123456789"; 2]).await?;
    let url = format!("http://127.0.0.1:{}", p.peer_ports[1]);
    for (msg, code, needle) in [
        (hello(99, "t"), tonic::Code::FailedPrecondition, "protocol version 99"),
        (hello(mrr_replication::PROTOCOL_VERSION, "other"), tonic::Code::FailedPrecondition, "cluster \"other\""),
        (
            {
                let mut h = hello(mrr_replication::PROTOCOL_VERSION, "t");
                if let Some(to_acceptor::Msg::Hello(h)) = &mut h.msg {
                    h.policy_digest = "default=merge".into();
                }
                h
            },
            tonic::Code::FailedPrecondition,
            "topic policies differ",
        ),
        (
            ToAcceptor { msg: Some(to_acceptor::Msg::Heartbeat(Default::default())) },
            tonic::Code::InvalidArgument,
            "must be Hello",
        ),
    ] {
        let mut client = PeerClient::connect(url.clone()).await?;
        let status = client.replicate(tokio_stream::iter(vec![msg])).await.expect_err("refused");
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(status.message().contains(needle), "{}", status.message());
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
