//! Three `mrr serve` processes over mutual TLS (`mrr dev --tls`): records and strong writes
//! replicate; a peer whose certificate comes from another CA gets no connection; a holder of
//! us-west's certificate cannot speak as eu-central; and a region's certificate is replaced on
//! disk and taken up without a restart or a dropped stream, while files that fail a check are
//! refused and the certificate in use stays. A holder of us-west's certificate and the cluster
//! secret cannot relay a change eu-central never wrote.

mod common;

use std::time::Duration;

use anyhow::Context as _;
use common::{wait_for, Cluster};
use mrr_replication::proto::{peer_client::PeerClient, to_acceptor, Hello, ToAcceptor};
use serde_json::json;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A peer stream to Tokyo's peer listener, TLS with `identity`, trusting `ca`, whose first
/// message is a Hello claiming `claimed`: `Ok` when Tokyo accepts the claim and answers with its
/// Challenge, else the status it refused with (or why there was no connection).
async fn hello_as(
    cluster: &Cluster,
    identity: Identity,
    ca: &str,
    claimed: &str,
) -> anyhow::Result<Result<(), tonic::Status>> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(identity)
        .domain_name("ap-northeast.regions.mrr");
    let url = format!("https://127.0.0.1:{}", cluster.base_port + 1);
    let channel =
        match Endpoint::from_shared(url)?.tls_config(tls)?.connect_timeout(Duration::from_secs(5)).connect().await {
            Ok(c) => c,
            Err(e) => return Ok(Err(tonic::Status::unavailable(format!("no connection: {e:?}")))),
        };
    let hello = ToAcceptor {
        msg: Some(to_acceptor::Msg::Hello(Hello {
            cluster: "mrr-dev".into(),
            protocol_version: mrr_replication::PROTOCOL_VERSION,
            region: claimed.into(),
            target_region: "ap-northeast".into(),
            nonce: vec![7; 16],
            incarnation: Some(0),
        })),
    };
    let outbound = tokio_stream_once(hello);
    match PeerClient::new(channel).replicate(outbound).await {
        Ok(mut answers) => match answers.get_mut().message().await {
            Err(status) => Ok(Err(status)),
            Ok(Some(m)) if matches!(m.msg, Some(mrr_replication::proto::to_dialer::Msg::Challenge(_))) => Ok(Ok(())),
            Ok(m) => anyhow::bail!("Tokyo answered {m:?}"),
        },
        Err(status) => Ok(Err(status)),
    }
}

/// The certificate Tokyo's HTTPS API presents to a new connection, as DER.
async fn served_certificate(cluster: &Cluster, ca_pem: &str) -> anyhow::Result<Vec<u8>> {
    let config = mrr_tls::api_client_config(ca_pem.as_bytes())?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", cluster.base_port)).await?;
    let name = mrr_tls::rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let tls = connector.connect(name, tcp).await?;
    let chain = tls.get_ref().1.peer_certificates().context("the server presented no certificate")?;
    Ok(chain[0].to_vec())
}

fn der(pem: &str) -> anyhow::Result<Vec<u8>> {
    use mrr_tls::rustls::pki_types::pem::PemObject as _;
    Ok(mrr_tls::rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())?.to_vec())
}

/// Each region's view of its peers: (handshakes, inbound streams) per peer.
async fn streams(cluster: &Cluster) -> anyhow::Result<Vec<Vec<(String, u64, u32)>>> {
    let mut out = Vec::new();
    for c in &cluster.clients {
        out.push(c.status().await?.peers.into_iter().map(|p| (p.region, p.handshakes, p.inbound_streams)).collect());
    }
    Ok(out)
}

/// Dials Tokyo as us-west with us-west's own certificate and the cluster's secret, completes
/// the handshake, then relays `forge(next seq)`: a proving part and one change of eu-central's
/// normal stream (the sequence after what Tokyo has). Returns the status Tokyo ends the stream with.
async fn relay_as_us_west(
    cluster: &Cluster,
    certs: &std::path::Path,
    forge: impl FnOnce(u64) -> (Vec<mrr_core::Change>, mrr_core::Change),
) -> anyhow::Result<tonic::Status> {
    let mut forge = Some(forge);
    use mrr_replication::proto::to_dialer;
    let ca = std::fs::read_to_string(certs.join("ca.pem"))?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .identity(Identity::from_pem(
            std::fs::read(certs.join("us-west.pem"))?,
            std::fs::read(certs.join("us-west.key"))?,
        ))
        .domain_name("ap-northeast.regions.mrr");
    let url = format!("https://127.0.0.1:{}", cluster.base_port + 1);
    let channel = Endpoint::from_shared(url)?.tls_config(tls)?.connect().await?;
    let config = mrr_server::Config::load(&cluster.config_path(1))?;
    let dialer = mrr_replication::handshake::Dialer {
        cluster: config.cluster.clone(),
        local: mrr_core::RegionName::new("us-west")?,
        peer: mrr_core::RegionName::new("ap-northeast")?,
        secret: config.secret.clone(),
        nonce: [3; 16],
        policy_digest: config.policies.digest(),
        incarnation: Some(0),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ToAcceptor { msg: Some(to_acceptor::Msg::Hello(dialer.hello())) }).await?;
    let mut answers =
        PeerClient::new(channel).replicate(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut challenged = None;
    loop {
        match tokio::time::timeout_at(deadline, answers.message()).await? {
            Err(status) => return Ok(status),
            Ok(Some(m)) => match m.msg {
                Some(to_dialer::Msg::Challenge(c)) => {
                    let (auth, ch) = dialer.on_challenge(&c)?;
                    challenged = Some(ch);
                    tx.send(ToAcceptor { msg: Some(to_acceptor::Msg::Auth(auth)) }).await?;
                }
                Some(to_dialer::Msg::Welcome(w)) => {
                    dialer.on_welcome(challenged.as_ref().context("Welcome before Challenge")?, &w, 0, 0)?;
                    let seq = w.applied.iter().find(|e| e.origin == "eu-central" && e.lane == 0).map_or(0, |e| e.seq);
                    let forge = forge.take().context("a second Welcome")?;
                    let (proving, change) = forge(seq + 1);
                    let proof = mrr_replication::wire::BatchProof {
                        proving: proving.iter().map(mrr_replication::wire::change_to_wire).collect(),
                        certificates: Vec::new(),
                    };
                    let change = mrr_replication::wire::change_to_wire(&change);
                    let batch = mrr_replication::wire::batch_to_wire(vec![change], 0, Vec::new(), proof);
                    tx.send(ToAcceptor { msg: Some(to_acceptor::Msg::Batch(batch)) }).await?;
                }
                // Acks of nothing, until Tokyo ends the stream.
                _ => {}
            },
            Ok(None) => anyhow::bail!("Tokyo closed the stream without a status"),
        }
    }
}

fn forged_change(seq: u64, checkpoint: Option<mrr_core::provenance::Checkpoint>) -> anyhow::Result<mrr_core::Change> {
    let eu = mrr_core::RegionName::new("eu-central")?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    Ok(mrr_core::Change {
        origin: eu.clone(),
        lane: mrr_core::Lane::Normal,
        seq,
        key: mrr_core::Key::new("users", "forged"),
        op: mrr_core::Op::Put { value: br#"{"id":"forged","by":"us-west"}"#.to_vec() },
        metadata: Default::default(),
        version: mrr_core::Version { ts: mrr_core::Timestamp::new(now, 0), region: eu },
        deps: Default::default(),
        replay_of: None,
        moves: true,
        carried: Vec::new(),
        proof: mrr_core::provenance::Proof { content_digest: None, checkpoint },
    })
}

fn tokio_stream_once(m: ToAcceptor) -> impl tokio_stream::Stream<Item = ToAcceptor> + Send + 'static {
    // One message, then the stream stays open (a closed one would end the handshake early).
    tokio_stream::StreamExt::chain(tokio_stream::once(m), tokio_stream::pending())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_speak_mutual_tls_and_a_certificate_speaks_only_for_its_region() -> anyhow::Result<()> {
    let cluster = Cluster::start_dev(&["--tls"], |c| c.to_owned()).await?;
    let (tokyo, frankfurt) = (&cluster.clients[0], &cluster.clients[2]);
    let config = std::fs::read_to_string(cluster.config_path(1))?;
    assert!(config.contains("endpoint: https://127.0.0.1:") && config.contains("tls: {"), "{config}");

    // The API is HTTPS only, under the cluster CA.
    let https = format!("https://127.0.0.1:{}", cluster.base_port);
    let plain = mrr_client::connect(&format!("http://127.0.0.1:{}", cluster.base_port), Some(common::KEY))?;
    assert!(matches!(plain.status().await, Err(mrr_client::ClientError::Http { .. })), "plain HTTP gets no answer");
    let untrusting = mrr_client::connect(&https, Some(common::KEY))?;
    assert!(
        matches!(untrusting.status().await, Err(mrr_client::ClientError::Http { .. })),
        "a client without the CA refuses the server"
    );
    assert_eq!(tokyo.status().await?.region, "ap-northeast");

    // Replication and the strong tier over TLS.
    tokyo.publish("users", &json!({"id": "u001", "name": "Kaito"})).await?;
    let read =
        wait_for("u001 in Frankfurt", Duration::from_secs(20), || async { Ok(frankfurt.query("users/u001").await?) })
            .await?;
    assert_eq!(read.value["name"], json!("Kaito"));
    frankfurt.put("stock/s1", &json!({"available": 3})).await?;
    assert_eq!(tokyo.query_strong("stock/s1").await?.map(|r| r.value["available"].clone()), Some(json!(3)));

    let certs = cluster.dir.path().join("configs/certs");
    let ca = std::fs::read_to_string(certs.join("ca.pem"))?;
    // us-west's own certificate, claiming to be eu-central.
    let sf = Identity::from_pem(std::fs::read(certs.join("us-west.pem"))?, std::fs::read(certs.join("us-west.key"))?);
    let status = hello_as(&cluster, sf.clone(), &ca, "eu-central").await?.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("does not name region eu-central"), "{status:?}");
    // The same certificate, as itself, passes to the Challenge (the secret's proof comes next).
    hello_as(&cluster, sf, &ca, "us-west").await?.map_err(|s| anyhow::anyhow!("us-west as itself: {s:?}"))?;

    // us-west's certificate and the cluster secret pass the handshake as us-west, but cannot
    // relay a change eu-central never wrote: not bare, and not with a checkpoint us-west signs.
    frankfurt.publish("users", &json!({"id": "from-frankfurt"})).await?;
    wait_for("Frankfurt's write in Tokyo", Duration::from_secs(20), || async {
        Ok(tokyo.query("users/from-frankfurt").await?)
    })
    .await?;
    let status =
        relay_as_us_west(&cluster, &certs, |seq| (Vec::new(), forged_change(seq, None).expect("change"))).await?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("eu-central"), "{status:?}");
    let paths =
        mrr_tls::TlsPaths { cert: certs.join("us-west.pem"), key: certs.join("us-west.key"), ca: certs.join("ca.pem") };
    let us_west = mrr_tls::LiveTls::load(paths, "us-west", mrr_tls::UnixTime::now())?.current();
    // An anchor and a checkpoint us-west signs itself, chained as a relay would.
    let sealer = mrr_server::Config::load(&cluster.config_path(1))?.policies.sealer.clone();
    let signed = |seq: u64, link: mrr_core::provenance::Digest| {
        let message = mrr_core::provenance::message(
            &mrr_core::RegionName::new("eu-central").expect("valid"),
            mrr_core::Lane::Normal,
            seq,
            &link,
        );
        let (signer, signature) = us_west.sign(&message).expect("sign");
        mrr_core::provenance::Checkpoint { link, signer, signature }
    };
    let status = relay_as_us_west(&cluster, &certs, |seq| {
        let anchor_link = [5; 32];
        let anchor = forged_change(seq - 1, Some(signed(seq - 1, anchor_link))).expect("change");
        let unsigned = forged_change(seq, None).expect("change");
        let link = mrr_core::provenance::link(&anchor_link, &mrr_core::provenance::leaf(&unsigned, &sealer));
        (vec![anchor], forged_change(seq, Some(signed(seq, link))).expect("change"))
    })
    .await?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("not its origin's"), "{status:?}");
    assert_eq!(tokyo.query("users/forged").await?, None, "nothing of the forged change applied");

    // A certificate of another CA: no TLS connection at all.
    let other_ca = mrr_tls::make_ca("intruder", mrr_tls::VALIDITY_DEFAULT)?;
    let forged = mrr_tls::make_region(&other_ca, "us-west", &["127.0.0.1".into()], mrr_tls::VALIDITY_DEFAULT)?;
    let status = hello_as(&cluster, Identity::from_pem(&forged.cert_pem, &forged.key_pem), &ca, "us-west")
        .await?
        .expect_err("a foreign CA's certificate is refused");
    // Refused by TLS itself, never by the application: under TLS 1.3 the client may finish
    // its side of the handshake first and see the connection closed on its first request.
    assert!(
        matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled
        ),
        "a foreign CA's certificate must not get a peer stream: {status:?}"
    );
    assert!(!status.message().contains("Challenge"), "{status:?}");
    // And the cluster still replicates.
    tokyo.publish("users", &json!({"id": "u002"})).await?;
    wait_for("u002 in Frankfurt", Duration::from_secs(20), || async { Ok(frankfurt.query("users/u002").await?) })
        .await
        .context("after the refused peers")?;

    // Rotation: Tokyo's certificate is replaced on disk by a new one of the same CA.
    let before = streams(&cluster).await?;
    let dev_ca = mrr_tls::Issued { cert_pem: ca.clone(), key_pem: std::fs::read_to_string(certs.join("ca.key"))? };
    let renewed = mrr_tls::make_region(&dev_ca, "ap-northeast", &["127.0.0.1".into()], mrr_tls::VALIDITY_DEFAULT)?;
    std::fs::write(certs.join("ap-northeast.key"), &renewed.key_pem)?;
    std::fs::write(certs.join("ap-northeast.pem"), &renewed.cert_pem)?;
    let want = der(&renewed.cert_pem)?;
    wait_for("Tokyo to serve the renewed certificate", Duration::from_secs(20), || async {
        Ok((served_certificate(&cluster, &ca).await? == want).then_some(()))
    })
    .await?;
    // No stream was dropped or dialed again for it, and replication goes on.
    assert_eq!(streams(&cluster).await?, before, "open streams keep going through a reload");
    tokyo.publish("users", &json!({"id": "u003"})).await?;
    wait_for("u003 in Frankfurt", Duration::from_secs(20), || async { Ok(frankfurt.query("users/u003").await?) })
        .await?;

    // Files that fail a check (a certificate of another CA) are refused; the renewed one stays.
    std::fs::write(certs.join("ap-northeast.pem"), &forged.cert_pem)?;
    wait_for("the refused reload to be counted", Duration::from_secs(20), || async {
        let m = tokyo.metrics().await?;
        Ok(m.lines()
            .any(|l| l.starts_with("mrr_tls_reloads_total{result=\"refused\"} ") && !l.ends_with(" 0"))
            .then_some(()))
    })
    .await?;
    assert_eq!(served_certificate(&cluster, &ca).await?, want, "the certificate in use stays");

    // An honest relay proves what it relays: with Tokyo and Frankfurt cut apart, Tokyo's write
    // (signed with its renewed certificate, which travels with it) reaches Frankfurt through
    // us-west, and Frankfurt accepts it.
    cluster.partition(0, 2, true).await?;
    wait_for("Frankfurt to stop hearing Tokyo directly", Duration::from_secs(30), || async {
        let s = frankfurt.status().await?;
        Ok(s.peers.iter().any(|p| p.region == "ap-northeast" && p.inbound_streams == 0).then_some(()))
    })
    .await?;
    let w = tokyo.publish("users", &json!({"id": "relayed"})).await?;
    let got = wait_for("the write to reach Frankfurt through us-west", Duration::from_secs(30), || async {
        Ok(frankfurt.query("users/relayed").await?)
    })
    .await?;
    assert_eq!(got, w);
    Ok(())
}
