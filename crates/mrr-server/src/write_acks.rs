//! What a write's answer waits for and carries: `?ack=` (how many regions must hold the write
//! durably) and the session token (the request's `x-mrr-session`, merged with the writes made).
//! The lag throttle is `throttle.rs`; `http::admit` runs both checks before a write.
//!
//! - `ack=local` (default): the write is durable here (the writer's commit).
//! - `ack=quorum`: also in enough peers that, with this region, a majority of the cluster
//!   holds it durably; `ack=all`: every region; `ack=<n>`: n regions, this one counted. A
//!   peer counts once its ack's *durable* vector covers the write (under `durability:
//!   buffered` that trails what it applied). On timeout (`ack_timeout_ms`, default 5 s) the
//!   answer is 504 `ack_timeout` naming the regions that have it: the write is not undone and
//!   reaches the rest when they are reachable.
//! - Strong topics are acknowledged by a quorum of the strong tier already; `ack=local` and
//!   `ack=quorum` are what they get, a larger count is refused (their applies are durable in
//!   the log, which no peer's durable vector reports).
//!
//! Checked before the write: a count over the cluster's size, or `all` while an operator cut a
//! link (`/v1/admin/links`), is 409 `ack_unreachable` and nothing is written. Not here: the
//! write itself (`http.rs`, `strong.rs`), the acks' transport (`mrr-replication`).

use std::time::Duration;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use mrr_api::ErrorCode;
use mrr_core::session_token::SessionToken;
use mrr_core::ChangeId;
use serde::Deserialize;
use tokio::time::Instant;

use crate::http::{ApiError, ApiResult, AppState};
use crate::read_levels::{session_header, SESSION_HEADER};

const ACK_TIMEOUT_MS_DEFAULT: u64 = 5_000;
const ACK_TIMEOUT_MS_MAX: u64 = 60_000;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WriteQuery {
    /// `local` (default), `quorum`, `all`, or a number of regions: how many regions must hold
    /// the write durably before the answer.
    pub ack: Option<String>,
    /// How long `ack` may wait, 1 to 60,000 ms (default 5,000).
    pub ack_timeout_ms: Option<u64>,
}

/// Regions that must hold a write durably, this one included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ack {
    Local,
    Regions(usize),
}

/// A write request's options, from its query and headers.
#[derive(Debug)]
pub struct WriteOptions {
    session: Option<SessionToken>,
    ack: Ack,
    ack_timeout: Duration,
}

/// Regions that make a majority of `regions`.
fn quorum(regions: usize) -> usize {
    regions / 2 + 1
}

impl FromRequestParts<AppState> for WriteOptions {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Query(q) = Query::<WriteQuery>::from_request_parts(parts, state).await.map_err(|e| {
            ApiError::bad(ErrorCode::InvalidQuery, format!("{}; writes take ?ack= and ?ack_timeout_ms=", e.body_text()))
        })?;
        let session = session_header(state, &parts.headers)?;
        let regions = state.active_regions();
        let ack = match q.ack.as_deref() {
            None | Some("local") => Ack::Local,
            Some("quorum") => Ack::Regions(quorum(regions)),
            Some("all") => Ack::Regions(regions),
            Some(n) => match n.parse::<usize>() {
                Ok(0) | Err(_) => {
                    return Err(ApiError::bad(
                        ErrorCode::InvalidAck,
                        format!("ack {n:?} is not a level: use local (default), quorum, all, or a number of regions"),
                    ))
                }
                Ok(n) if n > regions => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        ErrorCode::AckUnreachable,
                        format!("ack={n} asks for more regions than the cluster's {regions}; nothing was written"),
                    ))
                }
                Ok(1) => Ack::Local,
                Ok(n) => Ack::Regions(n),
            },
        };
        let ack_timeout = match q.ack_timeout_ms {
            None => Duration::from_millis(ACK_TIMEOUT_MS_DEFAULT),
            Some(ms) if (1..=ACK_TIMEOUT_MS_MAX).contains(&ms) => Duration::from_millis(ms),
            Some(ms) => {
                return Err(ApiError::bad(
                    ErrorCode::InvalidAck,
                    format!("ack_timeout_ms {ms} is out of range: 1 to {ACK_TIMEOUT_MS_MAX}"),
                ))
            }
        };
        let ack = if regions <= 1 { Ack::Local } else { ack };
        Ok(Self { session, ack, ack_timeout })
    }
}

impl WriteOptions {
    /// Before the write: whether the ack asked for can be given at all (nothing is written
    /// when it cannot). `strong`: the write goes to a strong topic.
    pub(crate) fn check(&self, state: &AppState, strong: bool) -> ApiResult<()> {
        let Ack::Regions(n) = self.ack else { return Ok(()) };
        if strong {
            let quorum = quorum(state.active_regions());
            if n > quorum {
                return Err(ApiError::bad(
                    ErrorCode::InvalidAck,
                    format!("a strong write is acknowledged by a quorum of the strong tier ({quorum} regions); ack={n} is for eventual topics"),
                ));
            }
            return Ok(());
        }
        // Every region (`all`, or the count of them): refused while a link is cut.
        if n == state.active_regions() {
            let cut: Vec<String> = state
                .links
                .all()
                .into_iter()
                .filter(|(_, spec)| spec.partitioned)
                .map(|(r, _)| r.to_string())
                .collect();
            if !cut.is_empty() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    ErrorCode::AckUnreachable,
                    format!(
                        "ack=all cannot be met while the link to {} is cut (/v1/admin/links); nothing was written",
                        cut.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// After the write committed here: waits for the ack, then returns the answer's session
    /// token (the request's, with `written` added). `strong`: acknowledged already.
    pub(crate) async fn settle(&self, state: &AppState, written: &[ChangeId], strong: bool) -> ApiResult<SessionToken> {
        if let (Ack::Regions(n), false) = (self.ack, strong) {
            wait_for_ack(state, written, n, self.ack_timeout).await?;
        }
        let mut token = self.session.clone().unwrap_or_else(|| SessionToken::new(&state.cluster));
        for id in written {
            token.record(id);
        }
        Ok(token)
    }
}

/// Peers whose durable vector covers every change of `written`.
fn holders(state: &AppState, written: &[ChangeId]) -> Vec<String> {
    state
        .status
        .durable_vectors()
        .into_iter()
        .filter(|(_, vv)| written.iter().all(|id| id.seen_by(vv)))
        .map(|(r, _)| r.to_string())
        .collect()
}

async fn wait_for_ack(state: &AppState, written: &[ChangeId], regions: usize, timeout: Duration) -> ApiResult<()> {
    let deadline = Instant::now() + timeout;
    let mut changed = state.status.subscribe();
    loop {
        changed.borrow_and_update();
        let peers = holders(state, written);
        // This region holds it: the commit was durable before the writer answered.
        if peers.len() + 1 >= regions {
            return Ok(());
        }
        if !matches!(tokio::time::timeout_at(deadline, changed.changed()).await, Ok(Ok(()))) {
            let mut acked_by = vec![state.region.to_string()];
            acked_by.extend(peers);
            let message = format!(
                "the write is durable in {} of the {regions} regions asked for ({}) after {} ms; it is not undone and reaches the others when they are reachable",
                acked_by.len(),
                acked_by.join(", "),
                timeout.as_millis()
            );
            let e = ApiError::new(StatusCode::GATEWAY_TIMEOUT, ErrorCode::AckTimeout, message);
            return Err(e.with_extra(|x| x.acked_by = acked_by));
        }
    }
}

/// A write's answer: its body, and its session token in `x-mrr-session`.
#[derive(Debug)]
pub struct Written<T>(pub T, pub SessionToken);

impl<T: IntoResponse> IntoResponse for Written<T> {
    fn into_response(self) -> Response {
        let mut response = self.0.into_response();
        if let Ok(v) = HeaderValue::from_str(&self.1.encode()) {
            response.headers_mut().insert(SESSION_HEADER, v);
        }
        response
    }
}
