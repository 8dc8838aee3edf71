//! The group's messages and how they travel: every RPC is one request and one answer, encoded
//! here (postcard) and carried by a [`Transport`] — the node's own gRPC connection to each peer
//! (never the bulk replication stream, so a backlog there cannot delay a heartbeat), or the
//! simulator's network.
//!
//! Not here: authentication and the sockets (the transport's), what the receiving node does with
//! a request (`node.rs`).

use std::time::Duration;

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetworkFactory, RaftNetworkV2};
use serde::{Deserialize, Serialize};

use crate::log_store::{decode, encode};
use crate::state_machine::{BoxFuture, SnapshotData};
use crate::types::{Command, LogId, Member, NodeId, Response, SnapshotMeta, Types, Vote};

/// Why a call did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unreachable: {0}")]
    Unreachable(String),
}

/// An ordered pipe to one member: requests sent in, answers out in the same order, on one
/// connection. Appends travel on it pipelined (many in flight), which is what keeps a leader's
/// next entries from waiting a round trip behind the previous append.
pub struct Pipe {
    pub requests: tokio::sync::mpsc::Sender<Vec<u8>>,
    pub answers: futures_util::stream::BoxStream<'static, Result<Vec<u8>, TransportError>>,
}

impl std::fmt::Debug for Pipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipe").finish_non_exhaustive()
    }
}

/// Carries one encoded request to a member and brings back its encoded answer.
pub trait Transport: Send + Sync + 'static {
    fn call(&self, to: NodeId, request: Vec<u8>, timeout: Duration) -> BoxFuture<Result<Vec<u8>, TransportError>>;

    /// Opens an ordered pipe to `to`, if this transport has them (`None`: appends go one call
    /// at a time, each waiting for the previous answer).
    fn pipe(&self, _to: NodeId) -> BoxFuture<Result<Option<Pipe>, TransportError>> {
        Box::pin(async { Ok(None) })
    }
}

/// Appends in flight on one pipe at most.
const PIPELINE_APPENDS_MAX: usize = 64;

/// Why the leader did not take a proposal or a read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refused {
    /// This node is not the leader; `leader` is the one it knows of.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// The leader cannot currently reach a quorum (its lease expired).
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// Appended, but whether it commits is not known (the leader changed, or the bound ran out).
    #[error("outcome unknown: {0}")]
    Unknown(String),
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) enum Request {
    Append(AppendEntriesRequest<Types>),
    Vote(VoteRequest<Types>),
    PreVote(VoteRequest<Types>),
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        position: Vec<u8>,
        data: Vec<u8>,
    },
    TransferLeader(TransferLeaderRequest<Types>),
    /// A follower hands a proposal to the leader.
    Propose(Command),
    /// A follower asks the leader for the log index a linearizable read must wait for.
    ReadIndex,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) enum Reply {
    Append(Result<AppendEntriesResponse<Types>, String>),
    Vote(Result<VoteResponse<Types>, String>),
    Snapshot(Result<SnapshotResponse<Types>, String>),
    TransferLeader(Result<TransferLeaderResponse<Types>, String>),
    Propose(Result<(LogId, Response), Refused>),
    ReadIndex(Result<u64, Refused>),
}

impl Request {
    pub(crate) fn encode(&self) -> std::io::Result<Vec<u8>> {
        encode("consensus request", self)
    }
    pub(crate) fn decode(bytes: &[u8]) -> std::io::Result<Self> {
        decode("consensus request", bytes)
    }
}

impl Reply {
    pub(crate) fn encode(&self) -> std::io::Result<Vec<u8>> {
        encode("consensus reply", self)
    }
    pub(crate) fn decode(bytes: &[u8]) -> std::io::Result<Self> {
        decode("consensus reply", bytes)
    }
}

/// Makes one [`Client`] per member.
#[derive(Clone)]
pub struct Network {
    transport: std::sync::Arc<dyn Transport>,
    /// Bound on any RPC but a snapshot's.
    rpc_timeout: Duration,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network").field("rpc_timeout", &self.rpc_timeout).finish_non_exhaustive()
    }
}

impl Network {
    pub fn new(transport: std::sync::Arc<dyn Transport>, rpc_timeout: Duration) -> Self {
        Self { transport, rpc_timeout }
    }

    /// Sends `request` to `to`, bounded by `timeout`.
    pub(crate) async fn call(&self, to: NodeId, request: &Request, timeout: Duration) -> Result<Reply, TransportError> {
        let bytes = request.encode().map_err(|e| TransportError::Unreachable(e.to_string()))?;
        let answer = self.transport.call(to, bytes, timeout).await?;
        Reply::decode(&answer).map_err(|e| TransportError::Unreachable(format!("undecodable answer: {e}")))
    }
}

impl RaftNetworkFactory<Types> for Network {
    type Network = Client;

    async fn new_client(&mut self, target: NodeId, _node: &Member) -> Client {
        Client { net: self.clone(), target }
    }
}

/// The connection to one member, as openraft's replication and election tasks see it.
#[derive(Debug)]
pub struct Client {
    net: Network,
    target: NodeId,
}

fn rpc_error(e: TransportError) -> RPCError<Types> {
    match e {
        TransportError::Timeout(_) => RPCError::Network(NetworkError::new(&e)),
        TransportError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Remote(String);

/// The answer was of the wrong kind, or the remote node failed: retry later.
fn remote_error(what: &str) -> RPCError<Types> {
    RPCError::Unreachable(Unreachable::new(&Remote(what.to_owned())))
}

impl Client {
    /// An RPC's bound: openraft's own (the heartbeat interval for appends and votes) or ours,
    /// whichever is longer, so a slow WAN path does not turn every append into a timeout.
    fn timeout(&self, option: &RPCOption) -> Duration {
        option.hard_ttl().max(self.net.rpc_timeout)
    }

    /// One call; `pick` takes the answer of the expected kind out of the reply.
    async fn exchange<T>(
        &self,
        request: Request,
        option: &RPCOption,
        what: &str,
        pick: impl FnOnce(Reply) -> Option<Result<T, String>>,
    ) -> Result<T, RPCError<Types>> {
        let reply = self.net.call(self.target, &request, self.timeout(option)).await.map_err(rpc_error)?;
        match pick(reply) {
            Some(Ok(r)) => Ok(r),
            Some(Err(e)) => Err(remote_error(&e)),
            None => Err(remote_error(&format!("answer of another kind to {what}"))),
        }
    }
}

/// Where an append starts and ends, to turn its answer into a stream result.
type AppendRange = (Option<LogId>, Option<LogId>);

fn range_of(req: &AppendEntriesRequest<Types>) -> AppendRange {
    use openraft::entry::RaftEntry;
    let last = req.entries.last().map(|e| e.log_id()).or(req.prev_log_id);
    (req.prev_log_id, last)
}

impl Client {
    /// Pipelined appends over `pipe`: requests are sent as they come (at most
    /// [`PIPELINE_APPENDS_MAX`] unanswered), answers are matched to them in order. The stream
    /// ends at the first failure or partial success, as openraft's sequential one does, and
    /// fails when the oldest unanswered append waited longer than `timeout`.
    fn pipelined<S>(
        pipe: Pipe,
        input: S,
        timeout: Duration,
    ) -> futures_util::stream::BoxStream<'static, Result<openraft::raft::StreamAppendResult<Types>, RPCError<Types>>>
    where
        S: futures_util::Stream<Item = AppendEntriesRequest<Types>> + Send + Unpin + 'static,
    {
        use futures_util::StreamExt;
        use std::collections::VecDeque;
        use std::sync::{Arc, Mutex, PoisonError};
        let Pipe { requests, answers } = pipe;
        let sent: Arc<Mutex<VecDeque<(tokio::time::Instant, AppendRange)>>> = Arc::default();
        let room = Arc::new(tokio::sync::Semaphore::new(PIPELINE_APPENDS_MAX));
        let feeder = {
            let (sent, room) = (sent.clone(), room.clone());
            let mut input = input;
            async move {
                while let Some(req) = input.next().await {
                    let Ok(permit) = room.clone().acquire_owned().await else { return };
                    permit.forget();
                    let range = range_of(&req);
                    let Ok(bytes) = Request::Append(req).encode() else { return };
                    sent.lock().unwrap_or_else(PoisonError::into_inner).push_back((tokio::time::Instant::now(), range));
                    if requests.send(bytes).await.is_err() {
                        return;
                    }
                }
            }
        };
        let feeder = tokio::spawn(feeder);
        let state = (answers, sent, room, feeder, false);
        futures_util::stream::unfold(state, move |(mut answers, sent, room, feeder, done)| async move {
            if done {
                feeder.abort();
                return None;
            }
            let answer = loop {
                let oldest = sent.lock().unwrap_or_else(PoisonError::into_inner).front().map(|(at, _)| *at);
                let wait = match oldest {
                    Some(at) => (at + timeout).saturating_duration_since(tokio::time::Instant::now()),
                    None => timeout,
                };
                match tokio::time::timeout(wait, answers.next()).await {
                    Ok(a) => break a,
                    Err(_) if oldest.is_some() => break Some(Err(TransportError::Timeout(timeout))),
                    // Idle: nothing was waiting for an answer.
                    Err(_) => continue,
                }
            };
            let out = match answer {
                None => {
                    feeder.abort();
                    return None;
                }
                Some(Err(e)) => Err(rpc_error(e)),
                Some(Ok(bytes)) => {
                    room.add_permits(1);
                    let range = sent.lock().unwrap_or_else(PoisonError::into_inner).pop_front();
                    match (Reply::decode(&bytes), range) {
                        (Ok(Reply::Append(Ok(resp))), Some((_, (prev, last)))) => {
                            let partial = match &resp {
                                AppendEntriesResponse::PartialSuccess(p) => Some(*p),
                                _ => None,
                            };
                            let result = resp.into_stream_result(prev, last);
                            let stop = result.is_err() || partial.is_some_and(|p| p != last);
                            return Some((Ok(result), (answers, sent, room, feeder, stop)));
                        }
                        (Ok(Reply::Append(Err(e))), _) => Err(remote_error(&e)),
                        (Ok(_), _) => Err(remote_error("answer of another kind to an append")),
                        (Err(e), _) => Err(remote_error(&format!("undecodable answer: {e}"))),
                    }
                }
            };
            Some((out, (answers, sent, room, feeder, true)))
        })
        .boxed()
    }
}

impl RaftNetworkV2<Types> for Client {
    type SnapshotData = SnapshotData;

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> openraft::base::BoxFuture<
        's,
        Result<
            openraft::base::BoxStream<'s, Result<openraft::raft::StreamAppendResult<Types>, RPCError<Types>>>,
            RPCError<Types>,
        >,
    >
    where
        S: futures_util::Stream<Item = AppendEntriesRequest<Types>> + Send + Unpin + 'static,
    {
        Box::pin(async move {
            match self.net.transport.pipe(self.target).await.map_err(rpc_error)? {
                Some(pipe) => Ok(Self::pipelined(pipe, input, self.timeout(&option))),
                None => openraft::network::stream_append_sequential(self, input, option).await,
            }
        })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Types>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<Types>, RPCError<Types>> {
        self.exchange(Request::Append(rpc), &option, "an append", |r| match r {
            Reply::Append(a) => Some(a),
            _ => None,
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<Types>,
        option: RPCOption,
    ) -> Result<VoteResponse<Types>, RPCError<Types>> {
        self.exchange(Request::Vote(rpc), &option, "a vote", |r| match r {
            Reply::Vote(v) => Some(v),
            _ => None,
        })
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<Types>,
        option: RPCOption,
    ) -> Result<VoteResponse<Types>, RPCError<Types>> {
        self.exchange(Request::PreVote(rpc), &option, "a pre-vote", |r| match r {
            Reply::Vote(v) => Some(v),
            _ => None,
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<Types, SnapshotData>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<Types>, StreamingError<Types>> {
        let request = Request::Snapshot {
            vote,
            meta: snapshot.meta,
            position: snapshot.snapshot.position,
            data: snapshot.snapshot.data,
        };
        let timeout = option.hard_ttl().max(self.net.rpc_timeout * 20);
        let call = self.net.call(self.target, &request, timeout);
        tokio::pin!(call);
        tokio::pin!(cancel);
        let reply = tokio::select! {
            biased;
            closed = &mut cancel => return Err(StreamingError::Closed(closed)),
            reply = &mut call => reply.map_err(|e| StreamingError::from(rpc_error(e)))?,
        };
        match reply {
            Reply::Snapshot(Ok(r)) => Ok(r),
            Reply::Snapshot(Err(e)) => Err(StreamingError::from(remote_error(&e))),
            _ => Err(StreamingError::from(remote_error("answer of another kind to a snapshot"))),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<Types>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<Types>, RPCError<Types>> {
        self.exchange(Request::TransferLeader(req), &option, "a leadership transfer", |r| match r {
            Reply::TransferLeader(t) => Some(t),
            _ => None,
        })
        .await
    }
}
