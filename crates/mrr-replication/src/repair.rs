//! Anti-entropy between regions: the `Repair` call of the peer service, both sides.
//!
//! The region running a repair (`POST /v1/repair`, `mrr repair`, or the periodic scrub) dials
//! each peer, proves itself with the replication handshake, and compares what both hold
//! ([`mrr_writer::repair`]): the peer's tree of bucket sums against its own, then the entries
//! of the buckets that differ, then, per key held differently, an exchange of states. Each
//! side joins the other's state through its writer ([`mrr_writer::Writer::repair`]) and
//! reports what it did. Two different copies of one change are settled by majority: with
//! every peer compared, the copy more than half the regions hold replaces the others (the
//! runner tells the peer, or takes the majority's copy itself).
//!
//! Every repaired key is logged where it was repaired, counted (`mrr_repaired_total`) and
//! makes `/health` warn for a day: replication is what makes regions converge, so a repair
//! means a bug or a bad disk. Bounded: entries per message, keys and bytes per exchange, keys
//! per run; the trees are built on blocking threads from a consistent view, so a repair never
//! stalls the writer beyond the join of what it found.
//!
//! Not here: deciding what differs or how to join (sans-IO, in `mrr_writer::repair`), the HTTP
//! route (`mrr-server`).

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mrr_api::{PeerRepair, RepairReport};
use mrr_core::limits::{validate_id, validate_topic};
use mrr_core::{Key, RegionName};
use mrr_storage::{Store, StoreView, STORAGE_FORMAT};
use mrr_writer::repair::{self as join, Difference, Entry, Offer, Offers, Scope, Settlement, State, Tree, Verdict};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::donor::blocking;
use crate::proto::{self, from_repair_peer, to_repair_peer};
use crate::{wire, Context, PeerConfig};

/// Entries per `RepairEntries` message.
const ENTRIES_PER_MESSAGE: usize = 8_192;
/// Entries a runner takes from one peer in one run: beyond, the comparison stops there (a
/// region this far apart from a peer is bootstrapping or lost, not to be repaired key by key).
const ENTRIES_MAX: usize = 2_000_000;
/// Keys held differently that one run exchanges with one peer; the rest waits for the next.
const DIFFERENCES_MAX: usize = 100_000;
/// Keys per exchange.
const EXCHANGE_KEYS_MAX: usize = 256;
/// State bytes per exchange, each way (about): records reach 8 MiB, so an exchange stops
/// taking states past this and the rest goes in the next.
const EXCHANGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Keys listed in a report, per list.
const LISTED_MAX: usize = 100;
/// A peer's call with no request for this long ends.
const REQUEST_IDLE_MAX: Duration = Duration::from_secs(120);
/// How long a runner waits for one answer (a tree of a large region takes a scan).
const ANSWER_WITHIN: Duration = Duration::from_secs(600);

/// What an exchange carries to the peer.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ExchangeBody {
    /// Keys whose state the runner asks for.
    pub wants: Vec<Key>,
    /// The runner's states, for the peer to join into its own.
    pub offers: Offers,
}

/// What the peer answers.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ExchangedBody {
    /// The peer's states of the first `answered` wants (those it holds), read before it joined
    /// the offers.
    pub states: Vec<(Key, State)>,
    pub answered: u32,
    /// The peer's applied vector as of the view `states` were read from.
    pub applied: mrr_core::VersionVector,
    /// What the peer did with each offer (empty in a dry run).
    pub verdicts: Vec<(Key, Verdict)>,
}

/// A repair run: with which peers, over which topics.
#[derive(Clone, Debug, Default)]
pub struct RunRequest {
    /// `None`: every peer.
    pub peer: Option<RegionName>,
    pub topics: BTreeSet<String>,
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0} is not a peer of this region: name one of the regions in its `regions` list")]
    UnknownPeer(String),
    #[error("topic {topic}: {reason}")]
    BadTopic { topic: String, reason: String },
}

fn encode<T: Serialize>(what: &str, body: &T) -> Result<Vec<u8>, Status> {
    let bytes = postcard::to_allocvec(body).map_err(|e| Status::internal(format!("encoding {what}: {e}")))?;
    zstd::bulk::compress(&bytes, 1).map_err(|e| Status::internal(format!("compressing {what}: {e}")))
}

fn decode<T: DeserializeOwned>(what: &str, zstd_body: &[u8]) -> Result<T, Status> {
    let bytes = zstd::bulk::decompress(zstd_body, wire::DECOMPRESSED_BYTES_MAX)
        .map_err(|e| Status::invalid_argument(format!("{what}: {e}")))?;
    postcard::from_bytes(&bytes).map_err(|e| Status::invalid_argument(format!("{what} does not decode: {e}")))
}

/// Every key names a valid topic and a client id: sealed names are never compared.
fn check_keys<'a>(keys: impl Iterator<Item = &'a Key>) -> Result<(), Status> {
    for key in keys {
        validate_topic(&key.topic).map_err(|e| Status::invalid_argument(format!("key {key}: {e}")))?;
        validate_id(&key.id).map_err(|e| Status::invalid_argument(format!("key {key}: {e}")))?;
    }
    Ok(())
}

fn check_topics(topics: &[String]) -> Result<BTreeSet<String>, Status> {
    topics
        .iter()
        .map(|t| {
            validate_topic(t).map_err(|e| Status::invalid_argument(format!("topic {t}: {e}")))?;
            Ok(t.clone())
        })
        .collect()
}

/// Roughly the bytes a state takes on the wire.
fn state_bytes(state: &State) -> usize {
    let record =
        128 + state.record.value.as_ref().map_or(0, Vec::len) + state.record.doc.as_ref().map_or(0, |d| d.approx_len());
    let history: usize = state
        .history
        .iter()
        .map(|e| 128 + e.value.as_ref().map_or(0, Vec::len) + e.after.value.as_ref().map_or(0, Vec::len))
        .sum();
    record + history
}

async fn view(store: &Arc<dyn Store>) -> Result<Arc<dyn StoreView>, Status> {
    let store = store.clone();
    blocking(move || store.view()).await
}

/// Keeps what this region's writer repaired: logged by key, counted, and warned about.
fn note_repaired(ctx: &Context, peer: &RegionName, verdicts: &[(Key, Verdict)]) -> Vec<String> {
    let repaired: Vec<String> =
        verdicts.iter().filter(|(_, v)| *v == Verdict::Repaired).map(|(k, _)| k.to_string()).collect();
    for key in &repaired {
        tracing::warn!(key = %key, peer = %peer, "anti-entropy repaired a record held differently from its peer: a bug or a bad disk");
    }
    if !repaired.is_empty() {
        ctx.metrics.repaired.increment(repaired.len() as u64);
        let now_ms = ctx.clock.now_ms();
        ctx.status.update_repairs(|r| r.repaired(now_ms, repaired.iter().cloned()));
    }
    repaired
}

fn count(into: &mut BTreeMap<String, u64>, verdicts: &[(Key, Verdict)]) {
    for (_, v) in verdicts {
        *into.entry(v.as_str().to_owned()).or_default() += 1;
    }
}

fn listed(into: &mut Vec<String>, keys: impl Iterator<Item = String>) {
    for key in keys {
        if into.len() < LISTED_MAX {
            into.push(key);
        }
    }
}

// ----------------------------------------------------------------------------------------
// The peer's side.

pub(crate) type FromRepairStream = Pin<Box<dyn Stream<Item = Result<proto::FromRepairPeer, Status>> + Send>>;

pub(crate) async fn serve(
    ctx: &Context,
    request: Request<Streaming<proto::ToRepairPeer>>,
) -> Result<Response<FromRepairStream>, Status> {
    let cfg = &ctx.config;
    let certs = request.peer_certs();
    let mut stream = request.into_inner();
    let hello = match next(&mut stream, cfg.peer_timeout, "Hello").await? {
        to_repair_peer::Msg::Hello(h) => h,
        _ => return Err(Status::invalid_argument("the first message of a repair call must be Hello")),
    };
    let (acceptor, greeted) = crate::inbound::greet(cfg, &ctx.membership, &hello, certs.as_deref().map(Vec::as_slice))?;
    let (tx, rx) = mpsc::channel(2);
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let peer = greeted.peer.clone();
        if let Err(status) = session(&ctx, &acceptor, &greeted, stream, &tx).await {
            tracing::warn!(peer = %peer, error = %status.message(), "repair call ended");
            let _ = tx.send(Err(status)).await;
        }
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

type Answers = mpsc::Sender<Result<proto::FromRepairPeer, Status>>;

async fn session(
    ctx: &Context,
    acceptor: &crate::handshake::Acceptor,
    greeted: &crate::handshake::Greeted,
    mut stream: Streaming<proto::ToRepairPeer>,
    tx: &Answers,
) -> Result<(), Status> {
    let cfg = &ctx.config;
    let peer = greeted.peer.clone();
    send(tx, from_repair_peer::Msg::Challenge(acceptor.challenge())).await?;
    let auth = match next(&mut stream, cfg.peer_timeout, "Auth").await? {
        to_repair_peer::Msg::Auth(a) => a,
        _ => return Err(Status::invalid_argument("expected Auth after Challenge")),
    };
    let (proof, incarnation) =
        crate::inbound::check_auth(cfg, &ctx.membership, acceptor, greeted, &auth, crate::membership::Opening::Data)?;
    let applied = ctx.writer.applied().borrow().clone();
    let welcome = proto::Welcome {
        region: cfg.local.to_string(),
        proof,
        wall_ms: ctx.clock.now_ms(),
        applied: wire::vv_to_wire(&applied),
        direct_origins: Vec::new(),
        log_floors: Vec::new(),
        stable: Vec::new(),
        incarnation,
    };
    send(tx, from_repair_peer::Msg::Welcome(welcome)).await?;
    let scope = |topics: &[String]| -> Result<Scope, Status> {
        Ok(Scope { local: cfg.local.clone(), peer: peer.clone(), topics: check_topics(topics)? })
    };
    loop {
        let msg = match timeout(REQUEST_IDLE_MAX, stream.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no repair request for two minutes")),
            Ok(msg) => match msg?.and_then(|m| m.msg) {
                None => return Ok(()),
                Some(m) => m,
            },
        };
        match msg {
            to_repair_peer::Msg::Tree(r) => {
                if r.storage_format != STORAGE_FORMAT {
                    return Err(Status::failed_precondition(format!(
                        "{peer} compares records in storage format {}, {} stores format {STORAGE_FORMAT}: run the same release in both regions",
                        r.storage_format, cfg.local
                    )));
                }
                let (scope, view, policies) =
                    (scope(&r.topics)?, view(&ctx.store).await?, ctx.writer.policies().clone());
                let tree = blocking(move || join::tree(&*view, &policies, &scope)).await?;
                let answer = proto::RepairTree { sums: tree.to_bytes(), records: tree.records };
                send(tx, from_repair_peer::Msg::Tree(answer)).await?;
            }
            to_repair_peer::Msg::Entries(r) => {
                if r.buckets.len() > join::BUCKETS || r.buckets.iter().any(|b| *b as usize >= join::BUCKETS) {
                    return Err(Status::invalid_argument(format!("buckets are numbered below {}", join::BUCKETS)));
                }
                let buckets: BTreeSet<u32> = r.buckets.into_iter().collect();
                let (scope, view, policies) =
                    (scope(&r.topics)?, view(&ctx.store).await?, ctx.writer.policies().clone());
                let entries = blocking(move || join::entries(&*view, &policies, &scope, &buckets)).await?;
                let mut pages = entries.chunks(ENTRIES_PER_MESSAGE).peekable();
                if pages.peek().is_none() {
                    let body = encode("entries", &Vec::<Entry>::new())?;
                    send(tx, from_repair_peer::Msg::Entries(proto::RepairEntries { zstd_body: body, done: true }))
                        .await?;
                }
                while let Some(page) = pages.next() {
                    let body = encode("entries", &page)?;
                    let done = pages.peek().is_none();
                    send(tx, from_repair_peer::Msg::Entries(proto::RepairEntries { zstd_body: body, done })).await?;
                }
            }
            to_repair_peer::Msg::Exchange(r) => {
                let body: ExchangeBody = decode("exchange", &r.zstd_body)?;
                if body.wants.len() + body.offers.offers.len() > 2 * EXCHANGE_KEYS_MAX {
                    return Err(Status::invalid_argument(format!(
                        "an exchange names at most {EXCHANGE_KEYS_MAX} keys each way"
                    )));
                }
                check_keys(body.wants.iter().chain(body.offers.offers.iter().map(|o| &o.key)))?;
                let view = view(&ctx.store).await?;
                let wants = body.wants;
                let (states, answered, applied) = blocking(move || {
                    let applied = view.recover()?.vv;
                    let (mut states, mut bytes, mut answered) = (Vec::new(), 0usize, 0u32);
                    for key in wants {
                        if bytes >= EXCHANGE_BYTES_MAX {
                            break;
                        }
                        if let Some(state) = join::state_of(&*view, &key)? {
                            bytes += state_bytes(&state);
                            states.push((key, state));
                        }
                        answered += 1;
                    }
                    Ok((states, answered, applied))
                })
                .await?;
                let verdicts = if r.dry_run || body.offers.offers.is_empty() {
                    Vec::new()
                } else {
                    let verdicts =
                        ctx.writer.repair(body.offers).await.map_err(|e| Status::unavailable(e.to_string()))?;
                    note_repaired(ctx, &peer, &verdicts);
                    verdicts
                };
                let answer = encode("exchanged", &ExchangedBody { states, answered, applied, verdicts })?;
                send(tx, from_repair_peer::Msg::Exchanged(proto::RepairExchanged { zstd_body: answer })).await?;
            }
            to_repair_peer::Msg::Hello(_) | to_repair_peer::Msg::Auth(_) => {
                return Err(Status::invalid_argument("a repair call has one handshake"));
            }
        }
    }
}

async fn next(
    stream: &mut Streaming<proto::ToRepairPeer>,
    within: Duration,
    what: &str,
) -> Result<to_repair_peer::Msg, Status> {
    match timeout(within, stream.message()).await {
        Err(_) => Err(Status::deadline_exceeded(format!("no {what} within the peer timeout"))),
        Ok(msg) => msg?.and_then(|m| m.msg).ok_or_else(|| Status::invalid_argument(format!("expected {what}"))),
    }
}

async fn send(tx: &Answers, msg: from_repair_peer::Msg) -> Result<(), Status> {
    tx.send(Ok(proto::FromRepairPeer { msg: Some(msg) }))
        .await
        .map_err(|_| Status::cancelled("the runner closed the repair call"))
}

// ----------------------------------------------------------------------------------------
// The runner's side.

/// A `Repair` call to one peer, past the handshake.
struct Call {
    tx: mpsc::Sender<proto::ToRepairPeer>,
    inbound: Streaming<proto::FromRepairPeer>,
    /// Encoded bytes sent and received past the handshake.
    sent: u64,
    received: u64,
}

impl Call {
    async fn open(ctx: &Context, peer: &PeerConfig) -> Result<Self, String> {
        let config = &ctx.config;
        let mut client = config.peer_call_client(peer).await?;
        let (tx, rx) = mpsc::channel::<proto::ToRepairPeer>(2);
        let dialer = config.dialer(&peer.region);
        let within = config.peer_timeout;
        let mut call = {
            tx.send(proto::ToRepairPeer { msg: Some(to_repair_peer::Msg::Hello(dialer.hello())) })
                .await
                .map_err(|_| "the call closed".to_string())?;
            let inbound = match timeout(within, client.repair(ReceiverStream::new(rx))).await {
                Err(_) => return Err(format!("no answer within {within:?}")),
                Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
                    return Err(format!(
                        "{} does not serve anti-entropy: run the same release in every region",
                        peer.region
                    ))
                }
                Ok(r) => r.map_err(|s| s.message().to_string())?.into_inner(),
            };
            Call { tx, inbound, sent: 0, received: 0 }
        };
        let challenge = match call.answer(within).await? {
            from_repair_peer::Msg::Challenge(c) => c,
            _ => return Err("expected Challenge".into()),
        };
        let (auth, challenged) = dialer.on_challenge(&challenge).map_err(|e| e.to_string())?;
        call.send(to_repair_peer::Msg::Auth(auth)).await?;
        let welcome = match call.answer(within).await? {
            from_repair_peer::Msg::Welcome(w) => w,
            _ => return Err("expected Welcome".into()),
        };
        dialer.on_welcome(&challenged, &welcome, 0, 0).map_err(|e| e.to_string())?;
        (call.sent, call.received) = (0, 0);
        Ok(call)
    }

    async fn send(&mut self, msg: to_repair_peer::Msg) -> Result<(), String> {
        let msg = proto::ToRepairPeer { msg: Some(msg) };
        self.sent += prost::Message::encoded_len(&msg) as u64;
        self.tx.send(msg).await.map_err(|_| "the call closed".to_string())
    }

    async fn answer(&mut self, within: Duration) -> Result<from_repair_peer::Msg, String> {
        match timeout(within, self.inbound.message()).await {
            Err(_) => Err(format!("no answer within {within:?}")),
            Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
            Ok(Ok(None)) => Err("the peer closed the call".into()),
            Ok(Ok(Some(m))) => {
                self.received += prost::Message::encoded_len(&m) as u64;
                m.msg.ok_or_else(|| "an empty message".to_string())
            }
        }
    }
}

/// One peer's comparison, between the phases of a run.
struct Compared {
    region: RegionName,
    call: Option<Call>,
    report: PeerRepair,
    diffs: Vec<Difference>,
    started: Instant,
}

/// Runs anti-entropy from this region with `request.peer` (or every peer).
pub(crate) async fn run(ctx: &Context, request: RunRequest) -> Result<RepairReport, RunError> {
    let peers: Vec<PeerConfig> = match &request.peer {
        Some(p) => vec![ctx.peer(p).ok_or_else(|| RunError::UnknownPeer(p.to_string()))?],
        None => ctx.peers(),
    };
    for t in &request.topics {
        validate_topic(t).map_err(|e| RunError::BadTopic { topic: t.clone(), reason: e.to_string() })?;
    }
    ctx.metrics.repair_runs.increment(1);
    let mut compared = Vec::with_capacity(peers.len());
    for peer in &peers {
        compared.push(compare(ctx, peer, &request.topics).await);
    }
    let settlement = settle(ctx, &compared).await;
    for c in &mut compared {
        listed(
            &mut c.report.unresolved,
            settlement.unresolved.iter().filter(|k| c.diffs.iter().any(|d| &d.key == *k)).map(Key::to_string),
        );
        if request.dry_run || c.call.is_none() {
            continue;
        }
        if let Err(e) = exchange(ctx, c, &settlement).await {
            c.report.error = Some(e);
        }
    }
    if request.peer.is_none() {
        let unresolved: Vec<String> = settlement.unresolved.iter().map(Key::to_string).collect();
        ctx.metrics.repair_unresolved.set(unresolved.len() as f64);
        ctx.status.update_repairs(|r| r.unresolved = unresolved);
    }
    let peers = compared
        .into_iter()
        .map(|mut c| {
            c.report.elapsed_ms = c.started.elapsed().as_millis() as u64;
            if let Some(call) = &c.call {
                (c.report.bytes_sent, c.report.bytes_received) = (call.sent, call.received);
            }
            c.report
        })
        .collect();
    Ok(RepairReport { region: ctx.config.local.to_string(), dry_run: request.dry_run, peers })
}

/// Phase one with one peer: trees, then the entries of the buckets that differ.
async fn compare(ctx: &Context, peer: &PeerConfig, topics: &BTreeSet<String>) -> Compared {
    let mut c = Compared {
        region: peer.region.clone(),
        call: None,
        report: PeerRepair { peer: peer.region.to_string(), ..Default::default() },
        diffs: Vec::new(),
        started: Instant::now(),
    };
    match compare_with(ctx, peer, topics, &mut c.report).await {
        Ok((call, diffs)) => {
            c.call = Some(call);
            c.diffs = diffs;
        }
        Err(e) => {
            tracing::warn!(peer = %peer.region, error = %e, "anti-entropy could not compare with a peer");
            c.report.error = Some(e);
        }
    }
    c
}

async fn compare_with(
    ctx: &Context,
    peer: &PeerConfig,
    topics: &BTreeSet<String>,
    report: &mut PeerRepair,
) -> Result<(Call, Vec<Difference>), String> {
    let mut call = Call::open(ctx, peer).await?;
    let topic_list: Vec<String> = topics.iter().cloned().collect();
    call.send(to_repair_peer::Msg::Tree(proto::RepairTreeRequest {
        topics: topic_list.clone(),
        storage_format: STORAGE_FORMAT,
    }))
    .await?;
    let scope = Scope { local: ctx.config.local.clone(), peer: peer.region.clone(), topics: topics.clone() };
    let view = view(&ctx.store).await.map_err(|s| s.message().to_string())?;
    let policies = ctx.writer.policies().clone();
    let mine = {
        let (view, policies, scope) = (view.clone(), policies.clone(), scope.clone());
        blocking(move || join::tree(&*view, &policies, &scope)).await.map_err(|s| s.message().to_string())?
    };
    let theirs = match call.answer(ANSWER_WITHIN).await? {
        from_repair_peer::Msg::Tree(t) => Tree::from_bytes(&t.sums, t.records).map_err(|e| e.to_string())?,
        _ => return Err("expected the peer's tree".into()),
    };
    report.records_here = mine.records;
    report.records_there = theirs.records;
    let buckets = mine.differing(&theirs).map_err(|e| e.to_string())?;
    report.buckets_differing = buckets.len() as u64;
    if buckets.is_empty() {
        return Ok((call, Vec::new()));
    }
    call.send(to_repair_peer::Msg::Entries(proto::RepairEntriesRequest {
        topics: topic_list,
        buckets: buckets.clone(),
    }))
    .await?;
    let wanted: BTreeSet<u32> = buckets.into_iter().collect();
    let mine = blocking(move || join::entries(&*view, &policies, &scope, &wanted))
        .await
        .map_err(|s| s.message().to_string())?;
    let mut theirs: Vec<Entry> = Vec::new();
    loop {
        let page = match call.answer(ANSWER_WITHIN).await? {
            from_repair_peer::Msg::Entries(e) => e,
            _ => return Err("expected the peer's entries".into()),
        };
        let entries: Vec<Entry> = decode("entries", &page.zstd_body).map_err(|s| s.message().to_string())?;
        theirs.extend(entries);
        if theirs.len() > ENTRIES_MAX {
            return Err(format!(
                "more than {ENTRIES_MAX} records differ from {}: a region this far apart is bootstrapping or lost, not repaired key by key",
                peer.region
            ));
        }
        if page.done {
            break;
        }
    }
    let mut diffs = join::diff(&mine, &theirs);
    report.keys_differing = diffs.len() as u64;
    if diffs.len() > DIFFERENCES_MAX {
        diffs.truncate(DIFFERENCES_MAX);
        report.truncated = true;
    }
    listed(&mut report.differing, diffs.iter().map(|d| d.key.to_string()));
    Ok((call, diffs))
}

/// Keys held in two copies of one change, settled by majority over the peers reached
/// ([`join::settle`]); a peer counts for a key only if this region's copy places it there.
async fn settle(ctx: &Context, compared: &[Compared]) -> Settlement {
    let reached: Vec<(RegionName, &[Difference])> =
        compared.iter().filter(|c| c.call.is_some()).map(|c| (c.region.clone(), c.diffs.as_slice())).collect();
    let disputed: BTreeSet<Key> =
        reached.iter().flat_map(|(_, d)| d.iter().filter(|d| d.same_version()).map(|d| d.key.clone())).collect();
    if disputed.is_empty() {
        return Settlement::default();
    }
    let store = ctx.store.clone();
    let placements = blocking(move || {
        let mut out = BTreeMap::new();
        for key in disputed {
            if let Some(record) = store.get(&key)? {
                out.insert(key, record.metadata);
            }
        }
        Ok(out)
    })
    .await
    .unwrap_or_else(|s| {
        tracing::warn!(error = %s.message(), "cannot read the placement of disputed records; they stay unresolved");
        BTreeMap::new()
    });
    let placed_in =
        |key: &Key, peer: &RegionName| placements.get(key).is_some_and(|m| mrr_core::placement::places(m, peer));
    join::settle(&ctx.config.local, &reached, &placed_in)
}

/// Phase two with one peer: states both ways, in bounded exchanges, each side joining the
/// other's.
async fn exchange(ctx: &Context, c: &mut Compared, settlement: &Settlement) -> Result<(), String> {
    let Some(call) = c.call.as_mut() else { return Ok(()) };
    let peer = c.region.clone();
    let mut wants: std::collections::VecDeque<Key> =
        c.diffs.iter().filter(|d| d.theirs.is_some()).map(|d| d.key.clone()).collect();
    let mut offering: std::collections::VecDeque<Key> =
        c.diffs.iter().filter(|d| d.mine.is_some()).map(|d| d.key.clone()).collect();
    while !wants.is_empty() || !offering.is_empty() {
        let asked: Vec<Key> = wants.iter().take(EXCHANGE_KEYS_MAX).cloned().collect();
        let keys: Vec<Key> = offering.drain(..offering.len().min(EXCHANGE_KEYS_MAX)).collect();
        let view = view(&ctx.store).await.map_err(|s| s.message().to_string())?;
        let replace: Vec<bool> = keys.iter().map(|k| settlement.give_to.contains(&(peer.clone(), k.clone()))).collect();
        let (offers, rest) = blocking(move || {
            let applied = view.recover()?.vv;
            let (mut offers, mut bytes, mut rest) = (Vec::new(), 0usize, Vec::new());
            for (key, replace) in keys.into_iter().zip(replace) {
                if bytes >= EXCHANGE_BYTES_MAX {
                    rest.push(key);
                    continue;
                }
                if let Some(state) = join::state_of(&*view, &key)? {
                    bytes += state_bytes(&state);
                    offers.push(Offer { key, state, replace });
                }
            }
            Ok((Offers { applied, offers }, rest))
        })
        .await
        .map_err(|s| s.message().to_string())?;
        for key in rest.into_iter().rev() {
            offering.push_front(key);
        }
        let body =
            encode("exchange", &ExchangeBody { wants: asked.clone(), offers }).map_err(|s| s.message().to_string())?;
        call.send(to_repair_peer::Msg::Exchange(proto::RepairExchange { zstd_body: body, dry_run: false })).await?;
        let answer: ExchangedBody = match call.answer(ANSWER_WITHIN).await? {
            from_repair_peer::Msg::Exchanged(e) => {
                decode("exchanged", &e.zstd_body).map_err(|s| s.message().to_string())?
            }
            _ => return Err("expected the peer's states".into()),
        };
        let answered = (answer.answered as usize).min(asked.len());
        if answered == 0 && !asked.is_empty() {
            return Err("the peer answered none of the states asked".into());
        }
        wants.drain(..answered);
        count(&mut c.report.there, &answer.verdicts);
        listed(
            &mut c.report.unresolved,
            answer.verdicts.iter().filter(|(_, v)| *v == Verdict::Unresolved).map(|(k, _)| k.to_string()),
        );
        listed(
            &mut c.report.repaired_there,
            answer.verdicts.iter().filter(|(_, v)| *v == Verdict::Repaired).map(|(k, _)| k.to_string()),
        );
        check_keys(answer.states.iter().map(|(k, _)| k)).map_err(|s| s.message().to_string())?;
        // A copy the peer was told to replace is the minority's: nothing to join here.
        let offers: Vec<Offer> = answer
            .states
            .into_iter()
            .filter(|(k, _)| asked.contains(k) && !settlement.give_to.contains(&(peer.clone(), k.clone())))
            .map(|(key, state)| {
                let replace = settlement.take_from.get(&key) == Some(&peer);
                Offer { key, state, replace }
            })
            .collect();
        if offers.is_empty() {
            continue;
        }
        let offers = Offers { applied: answer.applied, offers };
        let verdicts = ctx.writer.repair(offers).await.map_err(|e| e.to_string())?;
        count(&mut c.report.here, &verdicts);
        listed(&mut c.report.repaired_here, note_repaired(ctx, &peer, &verdicts).into_iter());
        listed(
            &mut c.report.unresolved,
            verdicts.iter().filter(|(_, v)| *v == Verdict::Unresolved).map(|(k, _)| k.to_string()),
        );
    }
    Ok(())
}

/// The periodic scrub: a repair run with every peer each `interval`, the first one interval
/// after start. Re-reads and re-hashes every record compared.
pub(crate) async fn scrub(ctx: Context, interval: Duration) {
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match run(&ctx, RunRequest::default()).await {
            Ok(report) => {
                let repaired: usize = report.peers.iter().map(|p| p.repaired_here.len() + p.repaired_there.len()).sum();
                let failed: Vec<String> =
                    report.peers.iter().filter_map(|p| p.error.as_ref().map(|e| format!("{}: {e}", p.peer))).collect();
                tracing::info!(repaired, failed = ?failed, "anti-entropy scrub done");
            }
            Err(e) => tracing::warn!(error = %e, "anti-entropy scrub did not run"),
        }
    }
}
