//! The strong tier's own connection to each peer: [`ConsensusLink`] carries `mrr-consensus`'s
//! encoded requests as unary gRPC calls on a channel per peer that is separate from the
//! replication stream (so megabytes of bulk changes queued there never delay a heartbeat), and
//! the `Consensus` service answers the calls peers make. Every call names its sender and target
//! and carries an HMAC of them and the body under the cluster secret (any accepted one on
//! receipt, `crate::secrets`); a call that fails the check is refused before its body is
//! decoded. Under WAN emulation each call passes the
//! sender's link on the way out and the receiver's link on the way back, like any message.
//!
//! Not here: what the requests mean (`mrr-consensus`).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use mrr_consensus::{BoxFuture, Consensus, NodeId, Pipe, Transport, TransportError};
use mrr_core::RegionName;
use sha2::Sha256;
use tonic::{Request, Response, Status};

use crate::link::Links;
use crate::proto::{self, consensus_client::ConsensusClient};

type HmacSha256 = Hmac<Sha256>;

const ROLE: &[u8] = b"mrr-consensus-v1";

fn mac(secret: &str, cluster: &str, from: &str, to: &str, body: &[u8]) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!("hmac key of any length"));
    for part in [ROLE, cluster.as_bytes(), from.as_bytes(), to.as_bytes(), body] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac
}

/// Where each member is reached, and the secret that proves who calls.
#[derive(Clone, Debug)]
pub struct ConsensusLinkConfig {
    pub cluster: String,
    pub local: RegionName,
    pub secrets: Arc<crate::secrets::LiveSecrets>,
    /// The member regions and their peer listeners: calls go to members only, and come from
    /// members only.
    pub membership: crate::membership::LiveMembership,
    pub tls: Option<crate::PeerTls>,
}

/// A peer's channel, the endpoint and the TLS generation it was built with.
type Channels = BTreeMap<NodeId, (RegionName, tonic::transport::Channel, String, u64)>;

/// The calling side: one lazily connected channel per peer, built again when the TLS material
/// changes (`mrr_tls::LiveTls::generation`), so reloaded certificates reach the strong tier's
/// connections too. Pipes already open keep theirs.
#[derive(Clone, Debug)]
pub struct ConsensusLink {
    config: Arc<ConsensusLinkConfig>,
    channels: Arc<std::sync::Mutex<Channels>>,
    links: Links,
}

fn channel(config: &ConsensusLinkConfig, region: &RegionName, url: &str) -> Result<tonic::transport::Channel, String> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("peer endpoint {url} of {region}: {e}"))?;
    if let Some(tls) = &config.tls {
        endpoint =
            endpoint.tls_config(crate::tls_client(tls, region)).map_err(|e| format!("TLS toward {region}: {e}"))?;
    }
    Ok(endpoint
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}

impl ConsensusLink {
    /// Channels are built on first use, for the members of the moment.
    pub fn new(config: ConsensusLinkConfig, links: Links) -> Self {
        Self { config: Arc::new(config), channels: Arc::default(), links }
    }
}

/// Messages waiting on a pipe, each way, at most.
const PIPE_QUEUE_MAX: usize = 256;
/// A pipe whose connection stopped draining for this long closes (openraft opens another).
const PIPE_STALL: Duration = Duration::from_secs(10);

impl crate::link::WireLen for proto::ConsensusCall {
    fn wire_len(&self) -> usize {
        self.body.len() + self.proof.len() + self.from.len() + self.to.len() + self.cluster.len()
    }
}

impl crate::link::WireLen for Result<proto::ConsensusAnswer, Status> {
    fn wire_len(&self) -> usize {
        self.as_ref().map_or(0, |a| a.body.len())
    }
}

impl ConsensusLink {
    /// A call to `region`, signed.
    fn signed(&self, region: &RegionName, body: Vec<u8>) -> proto::ConsensusCall {
        let c = &self.config;
        let secret = c.secrets.current();
        let proof = mac(&secret.current, &c.cluster, c.local.as_str(), region.as_str(), &body).finalize().into_bytes();
        proto::ConsensusCall {
            cluster: c.cluster.clone(),
            from: c.local.to_string(),
            to: region.to_string(),
            proof: proof.to_vec(),
            body,
        }
    }

    fn peer(&self, to: NodeId) -> Result<(RegionName, ConsensusClient<tonic::transport::Channel>), TransportError> {
        let generation = self.config.tls.as_ref().map_or(0, |t| t.generation());
        let member = {
            let m = self.config.membership.borrow();
            let found = m
                .members()
                .find(|(r, _)| mrr_consensus::node_id(r) == to && **r != self.config.local)
                .map(|(r, e)| (r.clone(), e.endpoint.clone()));
            found
        };
        let Some((region, url)) = member else {
            return Err(TransportError::Unreachable(format!("node {to} is not a member region")));
        };
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let stale = channels.get(&to).is_none_or(|(_, _, built_url, built)| *built_url != url || *built != generation);
        if stale {
            match channel(&self.config, &region, &url) {
                Ok(new) => {
                    channels.insert(to, (region.clone(), new, url, generation));
                }
                // An old channel still works until its certificate expires.
                Err(e) if channels.contains_key(&to) => {
                    tracing::warn!(peer = %region, error = %e, "consensus channel not rebuilt after a change")
                }
                Err(e) => return Err(TransportError::Unreachable(e)),
            }
        }
        let Some((region, ch, _, _)) = channels.get(&to) else {
            return Err(TransportError::Unreachable(format!("node {to} has no channel")));
        };
        let (region, channel) = (region.clone(), ch.clone());
        drop(channels);
        let client = ConsensusClient::new(channel)
            .max_decoding_message_size(mrr_core::limits::PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(mrr_core::limits::PEER_MESSAGE_BYTES_MAX);
        Ok((region, client))
    }
}

impl Transport for ConsensusLink {
    fn pipe(&self, to: NodeId) -> BoxFuture<Result<Option<Pipe>, TransportError>> {
        let this = self.clone();
        Box::pin(async move {
            let (region, mut client) = this.peer(to)?;
            let (requests, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(PIPE_QUEUE_MAX);
            let (signed_tx, signed_rx) = tokio::sync::mpsc::channel(PIPE_QUEUE_MAX);
            // Signed, then through this node's link to the peer, in order.
            let link = this.links.sender(&region, signed_tx, PIPE_STALL);
            let (signer, to) = (this.clone(), region.clone());
            tokio::spawn(async move {
                while let Some(body) = rx.recv().await {
                    if link.send(signer.signed(&to, body)).await.is_err() {
                        return;
                    }
                }
            });
            let outgoing = tokio_stream::wrappers::ReceiverStream::new(signed_rx);
            // Not awaited here: the call's answer headers may wait for its first request, which
            // the caller sends only once it has the pipe.
            let opened = async move {
                match client.pipe(Request::new(outgoing)).await {
                    Ok(answers) => answers
                        .into_inner()
                        .map(|a| {
                            a.map(|answer| answer.body).map_err(|s| TransportError::Unreachable(s.message().to_owned()))
                        })
                        .boxed(),
                    Err(status) => futures_util::stream::once(async move {
                        Err(TransportError::Unreachable(format!("{region}: {}", status.message())))
                    })
                    .boxed(),
                }
            };
            let answers = futures_util::stream::once(opened).flatten();
            Ok(Some(Pipe { requests, answers: Box::pin(answers) }))
        })
    }

    fn call(&self, to: NodeId, request: Vec<u8>, timeout: Duration) -> BoxFuture<Result<Vec<u8>, TransportError>> {
        let this = self.clone();
        Box::pin(async move {
            let (region, mut client) = this.peer(to)?;
            let call = this.signed(&region, request);
            let exchange = async {
                this.links.pass(&region).await;
                client.call(Request::new(call)).await
            };
            match tokio::time::timeout(timeout, exchange).await {
                Err(_) => Err(TransportError::Timeout(timeout)),
                Ok(Err(status)) => Err(TransportError::Unreachable(format!("{region}: {}", status.message()))),
                Ok(Ok(answer)) => Ok(answer.into_inner().body),
            }
        })
    }
}

/// Filled once the node's consensus has started; calls before that are refused (the caller
/// retries, as for any unreachable peer).
pub type ConsensusSlot = Arc<OnceLock<Consensus>>;

/// The answering side, served on the peer listener.
#[derive(Clone, Debug)]
pub(crate) struct ConsensusService {
    pub config: Arc<ConsensusLinkConfig>,
    pub slot: ConsensusSlot,
    pub links: Links,
}

impl ConsensusService {
    /// Checks a call's cluster, target, sender (against its certificate, with TLS) and proof
    /// before its body is looked at.
    fn verify(
        &self,
        call: &proto::ConsensusCall,
        certs: Option<&[tonic::transport::CertificateDer<'static>]>,
    ) -> Result<RegionName, Status> {
        let c = &self.config;
        if call.cluster != c.cluster || call.to != c.local.as_str() {
            // Named by what the caller sent only: an unproved caller learns nothing of this node.
            return Err(Status::failed_precondition(format!(
                "this node is not region {} of cluster {:?}",
                call.to, call.cluster
            )));
        }
        let from = RegionName::new(call.from.clone()).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if from == c.local || !c.membership.borrow().is_member(&from) {
            return Err(Status::permission_denied(format!("{from} is not a member of this cluster")));
        }
        crate::check_peer(c.tls.as_ref(), certs, &from)?;
        let secrets = c.secrets.current();
        let proved = secrets.all().any(|secret| {
            mac(secret, &c.cluster, from.as_str(), c.local.as_str(), &call.body).verify_slice(&call.proof).is_ok()
        });
        if !proved {
            tracing::warn!(from = %from, "refused a consensus call with a wrong proof (cluster secret differs?)");
            return Err(Status::unauthenticated("consensus call proof does not match the cluster secret"));
        }
        Ok(from)
    }
}

type AnswerStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<proto::ConsensusAnswer, Status>> + Send>>;

#[tonic::async_trait]
impl proto::consensus_server::Consensus for ConsensusService {
    type PipeStream = AnswerStream;

    async fn pipe(
        &self,
        request: Request<tonic::Streaming<proto::ConsensusCall>>,
    ) -> Result<Response<Self::PipeStream>, Status> {
        let certs = request.peer_certs();
        let mut calls = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(PIPE_QUEUE_MAX);
        let this = self.clone();
        // Answered one by one, in the order sent: an append is handled only after the one
        // before it. Answers travel this node's link back to the caller, once it is known.
        tokio::spawn(async move {
            let mut link = None;
            while let Ok(Some(call)) = calls.message().await {
                let answer = match this.verify(&call, certs.as_deref().map(Vec::as_slice)) {
                    Err(status) => Err(status),
                    Ok(from) => {
                        link.get_or_insert_with(|| this.links.sender(&from, tx.clone(), PIPE_STALL));
                        match this.slot.get() {
                            None => Err(Status::unavailable("consensus is starting")),
                            Some(consensus) => Ok(proto::ConsensusAnswer { body: consensus.handle(&call.body).await }),
                        }
                    }
                };
                let failed = answer.is_err();
                let sent = match &link {
                    Some(link) => link.send(answer).await.is_ok(),
                    None => tx.send(answer).await.is_ok(),
                };
                if !sent || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn call(&self, request: Request<proto::ConsensusCall>) -> Result<Response<proto::ConsensusAnswer>, Status> {
        let certs = request.peer_certs();
        let call = request.into_inner();
        let from = self.verify(&call, certs.as_deref().map(Vec::as_slice))?;
        let Some(consensus) = self.slot.get() else {
            return Err(Status::unavailable("consensus is starting"));
        };
        let body = consensus.handle(&call.body).await;
        // The answer travels this node's link back to the caller.
        self.links.pass(&from).await;
        Ok(Response::new(proto::ConsensusAnswer { body }))
    }
}
