//! Region membership at run time: the table (`mrr_core::membership`) as this node keeps it,
//! the changes operators make (`GET/POST /v1/regions`, `DELETE /v1/regions/{name}`,
//! `POST /v1/regions/{name}/lost`, `mrr region`), and what keeps the rest in step with it.
//!
//! - The table is one record of the reserved strong topic `_cluster`, written through the Raft
//!   log as a compare-and-set on its epoch; [`follow`] re-reads it whenever the strong stream
//!   moves and publishes it to replication (which dials and admits by it) and to the API.
//! - [`keep_group`] makes the strong tier's Raft group follow it at the leader: joining regions
//!   become learners, active ones voters once caught up, and regions that left are removed.
//! - [`announce_joined`] runs in a region added while the cluster ran: once it has installed its
//!   snapshot and its table says it is joining under its own incarnation, it proposes
//!   `joined`.
//!
//! Not here: deciding whether a change applies (`mrr_core::membership`), or dialing and
//! admitting peers (`mrr_replication::membership`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use mrr_api::{AddRegionRequest, ErrorBody, ErrorCode, RegionInfo, RegionsReport};
use mrr_consensus::Consensus;
use mrr_core::membership::{self, Change, Membership, MembershipError};
use mrr_core::strong::{Cmp, Condition, Operand, StrongCommand, StrongOutcome, StrongWrite};
use mrr_core::{FieldOp, Key, RegionName};
use mrr_replication::membership::LiveMembership;
use mrr_storage::Store;
use mrr_writer::Writer;
use tokio::sync::watch;

use crate::config::{peer_url, Config};
use crate::http::{ApiError, ApiResult, AppState};

/// Proposals retried when another change won the compare-and-set.
const RACES_MAX: usize = 8;
/// Records read per step of the scan that looks for records placed only in a leaving region.
const SCAN_RECORDS_MAX: usize = 4_096;

fn key() -> Key {
    Key::new(membership::TOPIC, membership::ID)
}

/// The membership of a cluster that never changed it: the config's regions.
pub fn seed(config: &Config) -> Membership {
    Membership::seed(config.regions.iter().map(|r| (r.name.clone(), peer_url(&r.endpoint), r.api.clone())))
}

/// The table as this node's store holds it; `None` before the first change.
pub fn stored(store: &dyn Store) -> Result<Option<Membership>, String> {
    let Some(record) = store.get(&key()).map_err(|e| e.to_string())? else { return Ok(None) };
    let Some(value) = record.value else { return Ok(None) };
    serde_json::from_slice(&value).map(Some).map_err(|e| format!("the membership record does not decode: {e}"))
}

/// The membership at start: the stored table, or the config's regions.
pub fn load(store: &dyn Store, config: &Config) -> Result<Membership, String> {
    Ok(stored(store)?.unwrap_or_else(|| seed(config)))
}

/// Publishes the table each time the strong tier changes it.
pub async fn follow(store: Arc<dyn Store>, writer: Writer, tx: watch::Sender<Arc<Membership>>) {
    let strong = mrr_core::Stream::normal(mrr_core::strong::strong_origin());
    let mut applied = writer.applied();
    let mut seen = u64::MAX;
    loop {
        let at = applied.borrow_and_update().get(&strong);
        if at != seen {
            seen = at;
            let s = store.clone();
            match tokio::task::spawn_blocking(move || stored(&*s)).await {
                Ok(Ok(Some(table))) if **tx.borrow() != table => {
                    tracing::info!(epoch = table.epoch, regions = ?table.members().map(|(r, e)| format!("{r}:{}", e.state.as_str())).collect::<Vec<_>>(), "membership changed");
                    tx.send_replace(Arc::new(table));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "cannot read the membership table; keeping the last one"),
                Err(e) => tracing::error!(error = %e, "membership read task failed"),
            }
        }
        if applied.changed().await.is_err() {
            return;
        }
    }
}

/// At the leader, keeps the Raft group's members in step with the table (one change at a
/// time, each committed before the next).
pub async fn keep_group(consensus: Consensus, mut table: LiveMembership) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = table.changed() => if changed.is_err() { return },
        }
        let wanted: BTreeMap<RegionName, (String, bool)> = {
            let t = table.borrow_and_update();
            t.members()
                .map(|(r, e)| (r.clone(), (e.endpoint.clone(), e.state == membership::RegionState::Active)))
                .collect()
        };
        // One step per round; the next round sees it committed.
        if let Err(e) = consensus.reconcile(&wanted).await {
            tracing::warn!(error = %e, "could not bring the consensus group in line with the membership; retrying");
        }
    }
}

/// Proposes `joined` for this region once its table says it is joining under `incarnation`.
pub async fn announce_joined(proposer: Proposer, mut table: LiveMembership, incarnation: u64) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let joining = table
            .borrow_and_update()
            .get(&proposer.region)
            .is_some_and(|e| e.state == membership::RegionState::Joining && e.incarnation == incarnation);
        if joining {
            let change = Change::Joined { region: proposer.region.clone(), incarnation };
            match proposer.change(&change, Checks::none()).await {
                // The table that says so is published by `follow`: wait for it below rather
                // than asking again at once.
                Ok(_) => {
                    tracing::info!(region = %proposer.region, incarnation, "joined the cluster: this region is active")
                }
                Err(e) => {
                    tracing::warn!(error = %e.message_text(), retry_in_ms = backoff.as_millis() as u64, "could not announce that this region joined");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        if table.changed().await.is_err() {
            return;
        }
    }
}

/// What proposes membership changes: this region's voter and store.
#[derive(Clone)]
pub struct Proposer {
    pub region: RegionName,
    pub consensus: Consensus,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn mrr_core::PhysicalClock>,
    /// The config's regions: the table before its first change.
    pub seed: Arc<Membership>,
}

impl std::fmt::Debug for Proposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposer").field("region", &self.region).finish_non_exhaustive()
    }
}

/// What a change must pass besides the table's own rules, checked against the table it
/// applies to.
#[derive(Debug, Default)]
pub struct Checks {
    /// Refuses removing a region that holds records placed nowhere else.
    placement: Option<PlacementCheck>,
}

/// What the placement check of a removal needs.
#[derive(Debug)]
struct PlacementCheck {
    /// Topic placement defaults (`regions:`), which would name only the leaving region.
    defaults: mrr_core::PlacementDefaults,
    /// How fresh this region's copy of the leaving region's writes is: the scan runs once this
    /// region has held everything the leaving one had at a moment after the request came, so
    /// every record placed only there is known here (by its register at least).
    status: mrr_replication::StatusBoard,
    clock: Arc<dyn mrr_core::PhysicalClock>,
}

/// How long a removal waits for this region to catch up with the leaving one.
const CATCH_UP_WAIT: Duration = Duration::from_secs(15);

impl Checks {
    fn none() -> Self {
        Self::default()
    }
}

impl Proposer {
    /// The table as of a read barrier (every change committed before the call is in it).
    async fn current(&self) -> ApiResult<Membership> {
        self.consensus.read_barrier().await.map_err(crate::strong::unavailable)?;
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || stored(&*store))
            .await
            .map_err(|e| storage(e.to_string()))?
            .map_err(storage)?;
        Ok(stored.unwrap_or_else(|| (*self.seed).clone()))
    }

    /// Applies `change` through the log: reads the table, checks the change against it,
    /// proposes the new table if its epoch is still the one read, and tries again (bounded) when
    /// another change committed in between.
    pub async fn change(&self, change: &Change, checks: Checks) -> ApiResult<Membership> {
        for _ in 0..RACES_MAX {
            let table = self.current().await?;
            let next = table.apply(change).map_err(refused)?;
            if next == table {
                return Ok(table);
            }
            if let Some(check) = &checks.placement {
                self.check_placement(&next, change.region(), check).await?;
            }
            let condition = if table.epoch == 0 {
                Condition::Record { exists: false }
            } else {
                Condition::Compare {
                    field: "epoch".into(),
                    cmp: Cmp::Eq,
                    operand: Operand::Number(table.epoch.to_string()),
                }
            };
            let regions = serde_json::to_value(&next.regions).map_err(|e| storage(e.to_string()))?;
            let ops = vec![
                FieldOp::Set { field: "epoch".into(), value: next.epoch.into() },
                FieldOp::Set { field: "regions".into(), value: regions },
            ];
            let write = StrongWrite::Update { key: key(), condition: Some(condition), ops };
            let request_id = format!("membership-{}-{:032x}", self.region, rand::random::<u128>());
            let command = StrongCommand::new(request_id, self.clock.now_ms(), vec![write]);
            let (_, response) = self
                .consensus
                .propose(mrr_consensus::Command(command.encode()))
                .await
                .map_err(crate::strong::unavailable)?;
            match crate::consensus::outcome_of(&response).map_err(storage)? {
                StrongOutcome::Applied { .. } | StrongOutcome::Repeated { .. } => {
                    tracing::info!(change = ?change, epoch = next.epoch, "membership change committed");
                    return Ok(next);
                }
                // Another change committed first: read the table again.
                StrongOutcome::PreconditionFailed { .. } => continue,
                StrongOutcome::Invalid(invalid) => return Err(storage(invalid.to_string())),
            }
        }
        Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::PreconditionFailed,
            format!("other membership changes kept committing first ({RACES_MAX} tries); try again"),
        ))
    }

    /// Refuses a removal that would leave records, or a topic's default placement, in no member
    /// region.
    async fn check_placement(&self, next: &Membership, leaving: &RegionName, check: &PlacementCheck) -> ApiResult<()> {
        // The leaving region itself holds every record placed in it.
        if leaving != &self.region {
            self.caught_up_with(leaving, check).await?;
        }
        let defaults = &check.defaults;
        let members: Vec<String> = next.members().map(|(r, _)| r.to_string()).collect();
        let topics = std::iter::once(("(replication_rules)", &defaults.default))
            .chain(defaults.topics.iter().map(|(t, r)| (t.as_str(), r)));
        for (topic, regions) in topics {
            if placed_in_none(regions, &members) {
                return Err(placed_only_there(leaving, format!("the placement default of {topic} names {regions:?}")));
            }
        }
        self.scan_placement(leaving, members).await
    }

    /// Waits until this region has held everything `leaving` had at a moment after the call.
    async fn caught_up_with(&self, leaving: &RegionName, check: &PlacementCheck) -> ApiResult<()> {
        let asked_ms = check.clock.now_ms();
        let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
        loop {
            let now_ms = check.clock.now_ms();
            let staleness =
                check.status.staleness_ms(now_ms).into_iter().find(|(r, _)| r == leaving).and_then(|(_, s)| s);
            if staleness.is_some_and(|s| s <= now_ms.saturating_sub(asked_ms)) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::EndpointUnreachable,
                    format!("{} has not caught up with {leaving} within {CATCH_UP_WAIT:?}, so it cannot tell whether records are placed only there; retry, run the removal at {leaving}, or declare {leaving} lost if it is gone; nothing changed", self.region),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Looks for a record placed only outside `members` (registers included).
    async fn scan_placement(&self, leaving: &RegionName, members: Vec<String>) -> ApiResult<()> {
        let store = self.store.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<Option<(Key, Vec<String>)>, String> {
            let mut after: Option<Key> = None;
            loop {
                let page = store.records_after(after.as_ref(), SCAN_RECORDS_MAX).map_err(|e| e.to_string())?;
                let done = page.len() < SCAN_RECORDS_MAX;
                for (key, record) in &page {
                    // A register (a record placed elsewhere, known by its sealed name) carries no
                    // value to tell a deleted record by: it counts. A tombstone held in clear
                    // has nothing to lose.
                    let live = mrr_core::seal::is_sealed(key) || !record.is_tombstone();
                    if live && placed_in_none(&record.metadata.regions, &members) {
                        return Ok(Some((key.clone(), record.metadata.regions.clone())));
                    }
                }
                match page.last() {
                    Some((k, _)) if !done => after = Some(k.clone()),
                    _ => return Ok(None),
                }
            }
        })
        .await
        .map_err(|e| storage(e.to_string()))?
        .map_err(storage)?;
        match found {
            Some((key, regions)) => {
                let what = if mrr_core::seal::is_sealed(&key) {
                    format!("a record of topic {} (known here by its sealed name {}; {leaving} knows its id) is placed in {regions:?}", key.topic, key.id)
                } else {
                    format!("record {key} is placed in {regions:?}")
                };
                Err(placed_only_there(leaving, format!("{what} (and perhaps others)")))
            }
            None => Ok(()),
        }
    }
}

/// Whether a placement (`__metadata.regions`, a topic's `regions:`) names none of `members`.
fn placed_in_none(regions: &[String], members: &[String]) -> bool {
    !mrr_core::placement::everywhere(regions) && !regions.iter().any(|r| members.contains(r))
}

fn placed_only_there(leaving: &RegionName, what: String) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        ErrorCode::PlacedOnlyThere,
        format!("{what}: removing {leaving} would leave it in no region; move such records (write their __metadata.regions) and change the defaults first, or declare {leaving} lost to give them up; nothing changed"),
    )
}

fn storage(message: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::StorageUnavailable, message)
}

fn refused(e: MembershipError) -> ApiError {
    let message = format!("{e}; nothing changed");
    match e {
        MembershipError::Exists(_) => ApiError::new(StatusCode::CONFLICT, ErrorCode::RegionExists, message),
        MembershipError::Unknown(_) | MembershipError::NotJoining { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, ErrorCode::UnknownRegion, message)
        }
        MembershipError::LastRegion(_) => ApiError::new(StatusCode::CONFLICT, ErrorCode::LastRegion, message),
        MembershipError::TooMany | MembershipError::Endpoint(_) => ApiError::bad(ErrorCode::InvalidRegion, message),
    }
}

/// `mrr_membership_epoch` and `mrr_member_regions{state}`, before a scrape.
pub(crate) fn refresh_gauges(state: &AppState) {
    let table = state.membership.borrow();
    state.metrics.membership_epoch.set(table.epoch as f64);
    let [joining, active] = &state.metrics.member_regions;
    let count = |s: membership::RegionState| table.members().filter(|(_, e)| e.state == s).count() as f64;
    joining.set(count(membership::RegionState::Joining));
    active.set(count(membership::RegionState::Active));
}

/// `/health` warnings: a region still joining (until it has installed its snapshot and said
/// so, `ack=all` does not count it and it does not vote).
pub(crate) fn warnings(state: &AppState) -> Vec<String> {
    warnings_of(&state.membership.borrow())
}

fn warnings_of(table: &Membership) -> Vec<String> {
    table
        .members()
        .filter(|(_, e)| e.state == membership::RegionState::Joining)
        .map(|(r, e)| {
            format!(
                "region {r} is joining the cluster (added at membership epoch {}): it installs a snapshot of a peer, catches up and then turns active; `mrr region status` shows how far it is",
                e.incarnation
            )
        })
        .collect()
}

/// The table and what this region sees of each region.
fn report(state: &AppState, table: &Membership) -> RegionsReport {
    let group = state.consensus.group();
    let peers = state.status.snapshot(state.clock.now_ms());
    // The strong stream is no region's to send (each applies the Raft log): left out.
    let applied = mrr_core::strong::replicable(&state.writer.applied().borrow());
    let durable = state.status.durable_vectors();
    let regions = table
        .regions
        .iter()
        .map(|(name, e)| {
            let here = name == &state.region;
            let stream = (!here && e.state.is_member())
                .then(|| peers.iter().find(|p| p.region == name.as_str()).map(|p| p.outbound.clone()))
                .flatten();
            let behind_changes = (!here && e.state.is_member())
                .then(|| durable.iter().find(|(r, _)| r == name).map(|(_, d)| applied.count_ahead_of(d)))
                .flatten();
            RegionInfo {
                name: name.to_string(),
                state: e.state.as_str().to_owned(),
                endpoint: e.endpoint.clone(),
                api: e.api.clone(),
                incarnation: e.incarnation,
                since_epoch: e.since_epoch,
                voter: group.get(&mrr_consensus::node_id(name)).is_some_and(|(_, voter)| *voter),
                stream,
                behind_changes,
                snapshot_sent: state.status.snapshot_served(name).map(|s| mrr_api::SnapshotSent {
                    records: s.records,
                    bytes: s.bytes,
                    done: s.done,
                }),
            }
        })
        .collect();
    RegionsReport { region: state.region.to_string(), epoch: table.epoch, regions }
}

/// The cluster's regions: the membership table as this region applied it, with each region's
/// state (`joining` while a region added to a running cluster installs its snapshot and
/// catches up), whether it votes in the strong tier, and how far behind this region it is.
#[utoipa::path(get, path = "/v1/regions", responses((status = 200, body = RegionsReport)))]
pub async fn list(State(state): State<AppState>) -> Json<RegionsReport> {
    let table = state.membership.borrow().clone();
    Json(report(&state, &table))
}

/// Adds a region to the running cluster (an entry of the strong tier's log). Start the new
/// region with a config that lists the cluster's regions and itself: its empty data directory
/// bootstraps from a snapshot of a peer once the change commits, then it turns `active`.
/// Refused (nothing changed): a name that is a member already (409 `region_exists`), a bad
/// name or endpoint (400 `invalid_region`), an endpoint that does not answer as that region of
/// this cluster (502 `endpoint_unreachable`).
#[utoipa::path(post, path = "/v1/regions", request_body = AddRegionRequest,
    responses((status = 201, body = RegionsReport), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn add(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<RegionsReport>)> {
    let request: AddRegionRequest =
        serde_json::from_slice(&crate::request::body_bytes(body)?).map_err(|e| crate::request::json_error(&e))?;
    let region =
        RegionName::new(request.name.clone()).map_err(|e| ApiError::bad(ErrorCode::InvalidRegion, e.to_string()))?;
    if !(request.endpoint.starts_with("http://") || request.endpoint.starts_with("https://")) {
        return Err(ApiError::bad(
            ErrorCode::InvalidRegion,
            format!(
                "endpoint {:?} must be http://host:port (https:// with TLS) of the region's peer listener",
                request.endpoint
            ),
        ));
    }
    let endpoint = peer_url(&request.endpoint);
    if state.membership.borrow().is_member(&region) {
        return Err(refused(MembershipError::Exists(region)));
    }
    mrr_replication::membership::probe(&state.replication, &region, &endpoint).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::EndpointUnreachable,
            format!("{endpoint} does not answer as region {region} of this cluster: {e}; start the region first (its config lists the cluster's regions and itself); nothing changed"),
        )
    })?;
    let change = Change::Add { region, endpoint, api: request.api };
    let table = state.proposer.change(&change, Checks::none()).await?;
    Ok((StatusCode::CREATED, Json(report(&state, &table))))
}

/// Removes a region that leaves cleanly. Refused while records (or a topic's placement
/// default) are placed only in it (409 `placed_only_there`), and for the last region (409
/// `last_region`). Its peers stop replicating with it and refuse it from then on.
#[utoipa::path(delete, path = "/v1/regions/{name}", params(("name" = String, Path)),
    responses((status = 200, body = RegionsReport), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn remove(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<RegionsReport>> {
    let region = member_named(&name)?;
    let checks = Checks {
        placement: Some(PlacementCheck {
            defaults: state.placement_defaults.as_ref().clone(),
            status: state.status.clone(),
            clock: state.clock.clone(),
        }),
    };
    let table = state.proposer.change(&Change::Remove { region }, checks).await?;
    Ok(Json(report(&state, &table)))
}

/// Declares a region lost: it is out of the cluster at once, and what it wrote that reached no
/// other region is given up. If it comes back with its data it is refused: it rejoins only
/// with an empty data directory, after `POST /v1/regions` adds it again.
#[utoipa::path(post, path = "/v1/regions/{name}/lost", params(("name" = String, Path)),
    responses((status = 200, body = RegionsReport), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn lost(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<RegionsReport>> {
    let region = member_named(&name)?;
    let table = state.proposer.change(&Change::Lost { region }, Checks::none()).await?;
    Ok(Json(report(&state, &table)))
}

fn member_named(name: &str) -> ApiResult<RegionName> {
    RegionName::new(name.to_owned())
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, ErrorCode::UnknownRegion, format!("{e}; nothing changed")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_warns_while_a_region_is_joining_and_not_once_it_is_active() {
        let r = |n: &str| RegionName::new(n).expect("valid");
        let seed = Membership::seed(["a", "b"].map(|n| (r(n), format!("http://{n}:1"), None)));
        assert!(warnings_of(&seed).is_empty());
        let added = seed.apply(&Change::Add { region: r("c"), endpoint: "http://c:1".into(), api: None });
        let added = added.expect("added");
        let warned = warnings_of(&added);
        assert_eq!(warned.len(), 1);
        assert!(warned[0].starts_with("region c is joining"), "{warned:?}");
        let joined = added.apply(&Change::Joined { region: r("c"), incarnation: 1 }).expect("joined");
        assert!(warnings_of(&joined).is_empty());
    }
}
