//! The consistency a read asks for (`?consistency=`), and the wait each level needs before this
//! region's records may answer.
//!
//! - `local` (default): at once, as stale as this region's apply lag.
//! - `strong` (`consistency: strong` topics): after the strong tier's read barrier.
//! - `read_your_writes`: once this region holds every write the session token names (header
//!   `x-mrr-session` or `?session=`), content included: its applied vector covers the token
//!   and no record answered lists one of them as `lacking`. Waits up to `wait_ms` (default
//!   2 s), then 504 `session_not_reached` with what is missing — or, with `fallback=forward`,
//!   reads from a region known to hold them.
//! - `bounded` with `max_staleness_ms`: once this region is known to hold every peer's writes
//!   up to that long ago (the freshness the sessions track, corrected by the measured clock
//!   offsets); waits up to `wait_ms`, then 504 `staleness_not_met`. The answer says the
//!   staleness it met in `x-mrr-staleness-ms`.
//!
//! Waits are on change signals (the writer's applied vector, the status board's freshness),
//! never on a timer loop. Not here: reading the records (`http.rs`), the strong barrier itself
//! (`strong.rs`).

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use mrr_api::{ErrorCode, StreamProgress};
use mrr_core::session_token::SessionToken;
use mrr_core::{Record, VersionVector};
use serde::Deserialize;
use tokio::time::Instant;

use crate::http::{ApiError, ApiResult, AppState};

/// Where a write's answer puts its session token, and where a read may bring one.
pub const SESSION_HEADER: &str = "x-mrr-session";
/// On a `bounded` read: how stale the answer may be, at most, in ms.
pub const STALENESS_HEADER: &str = "x-mrr-staleness-ms";

const WAIT_MS_DEFAULT: u64 = 2_000;
const WAIT_MS_MAX: u64 = 60_000;
const STALENESS_MS_MAX: u64 = 86_400_000;

/// The query parameters of a read level, shared by one-record reads and lists.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct LevelQuery {
    /// `local` (default), `strong`, `read_your_writes` or `bounded`.
    pub consistency: Option<String>,
    /// `read_your_writes`: the session token (or the `x-mrr-session` header).
    pub session: Option<String>,
    /// `read_your_writes`, `bounded`: how long to wait for the level, 0 to 60,000 ms (default
    /// 2,000).
    pub wait_ms: Option<u64>,
    /// `read_your_writes`: `forward` reads from a region that holds the session's writes
    /// when this one does not in time.
    pub fallback: Option<String>,
    /// `bounded`: the staleness allowed, 1 ms to 1 day.
    pub max_staleness_ms: Option<u64>,
}

#[derive(Clone, Debug)]
pub(crate) enum ReadLevel {
    Local,
    Strong,
    ReadYourWrites { token: SessionToken, wait: Duration, forward: bool },
    Bounded { max_staleness_ms: u64, wait: Duration },
}

impl ReadLevel {
    pub(crate) fn parse(state: &AppState, q: &LevelQuery, headers: &HeaderMap) -> ApiResult<Self> {
        let wait = || -> ApiResult<Duration> {
            match q.wait_ms {
                None => Ok(Duration::from_millis(WAIT_MS_DEFAULT)),
                Some(ms) if ms <= WAIT_MS_MAX => Ok(Duration::from_millis(ms)),
                Some(ms) => Err(ApiError::bad(
                    ErrorCode::InvalidWait,
                    format!("wait_ms {ms} is over {WAIT_MS_MAX}: wait at most a minute"),
                )),
            }
        };
        let level = match q.consistency.as_deref() {
            None | Some("local") => Self::Local,
            Some("strong") => Self::Strong,
            Some("read_your_writes") => {
                let forward = match q.fallback.as_deref() {
                    None => false,
                    Some("forward") => true,
                    Some(other) => {
                        return Err(ApiError::bad(
                            ErrorCode::InvalidQuery,
                            format!("fallback {other:?} is not known: use fallback=forward, or leave it out"),
                        ))
                    }
                };
                let token = match &q.session {
                    Some(text) => Some(decode_token(state, text)?),
                    None => session_header(state, headers)?,
                };
                let Some(token) = token else {
                    return Err(ApiError::bad(
                        ErrorCode::MissingSessionToken,
                        "consistency=read_your_writes needs the session token a write answered with (x-mrr-session header, or ?session=)",
                    ));
                };
                Self::ReadYourWrites { token, wait: wait()?, forward }
            }
            Some("bounded") => match q.max_staleness_ms {
                Some(ms) if (1..=STALENESS_MS_MAX).contains(&ms) => Self::Bounded { max_staleness_ms: ms, wait: wait()? },
                Some(ms) => {
                    return Err(ApiError::bad(
                        ErrorCode::InvalidStaleness,
                        format!("max_staleness_ms {ms} is out of range: 1 to {STALENESS_MS_MAX} (one day)"),
                    ))
                }
                None => {
                    return Err(ApiError::bad(
                        ErrorCode::InvalidStaleness,
                        "consistency=bounded needs max_staleness_ms (1 to 86400000)",
                    ))
                }
            },
            Some(other) => {
                return Err(ApiError::bad(
                    ErrorCode::InvalidConsistency,
                    format!(
                        "consistency {other:?} is not a level this node serves: use local (default), strong, read_your_writes or bounded"
                    ),
                ))
            }
        };
        if !matches!(level, Self::ReadYourWrites { .. }) && q.fallback.is_some() {
            return Err(ApiError::bad(ErrorCode::InvalidQuery, "fallback goes with consistency=read_your_writes"));
        }
        if !matches!(level, Self::Bounded { .. }) && q.max_staleness_ms.is_some() {
            return Err(ApiError::bad(ErrorCode::InvalidQuery, "max_staleness_ms goes with consistency=bounded"));
        }
        Ok(level)
    }
}

fn decode_token(state: &AppState, text: &str) -> ApiResult<SessionToken> {
    SessionToken::decode(text, &state.cluster).map_err(|e| ApiError::bad(ErrorCode::InvalidSessionToken, e.to_string()))
}

/// The session token of the request's `x-mrr-session` header, if it has one.
pub(crate) fn session_header(state: &AppState, headers: &HeaderMap) -> ApiResult<Option<SessionToken>> {
    let Some(h) = headers.get(SESSION_HEADER) else { return Ok(None) };
    let text = h
        .to_str()
        .map_err(|_| ApiError::bad(ErrorCode::InvalidSessionToken, "the x-mrr-session header is not text"))?;
    decode_token(state, text).map(Some)
}

/// What a level's wait found, for the answer.
#[derive(Debug, Default)]
pub(crate) struct Granted {
    /// `bounded`: the staleness met, for `x-mrr-staleness-ms`.
    pub staleness_ms: Option<u64>,
}

impl Granted {
    pub(crate) fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ms) = self.staleness_ms {
            h.insert(STALENESS_HEADER, HeaderValue::from(ms));
        }
        h
    }
}

/// A `read_your_writes` read this region could not serve in time.
#[derive(Debug)]
pub(crate) struct NotReached {
    pub missing: Vec<StreamProgress>,
    pub lacking_content: bool,
}

impl NotReached {
    pub(crate) fn into_error(self, state: &AppState, wait: Duration) -> ApiError {
        let what = if self.missing.is_empty() && self.lacking_content {
            "has applied the session's writes but not yet received the content of some of them".to_owned()
        } else {
            let streams: Vec<String> =
                self.missing.iter().map(|m| format!("{} at {} of {}", m.stream, m.applied, m.needed)).collect();
            format!("lacks the session's writes in {}", streams.join(", "))
        };
        let e = ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::SessionNotReached,
            format!(
                "{} {what} after {} ms; wait longer (wait_ms), read with fallback=forward, or read in the region you wrote in",
                state.region,
                wait.as_millis()
            ),
        );
        e.with_extra(|x| x.missing = self.missing)
    }
}

fn progress(token: &SessionToken, applied: &VersionVector) -> Vec<StreamProgress> {
    token
        .missing(applied)
        .into_iter()
        .map(|(s, applied, needed)| StreamProgress { stream: s.to_string(), applied, needed })
        .collect()
}

/// Whether `record` still lacks the content of a write `token` names.
pub(crate) fn lacks_named(token: &SessionToken, record: &Record) -> bool {
    record.lacking.iter().any(|id| token.names(id))
}

/// Waits until this region's applied vector covers `token` and `content_ready` says the records
/// to be read hold the content of its writes, or until `wait` passes. `content_ready` is asked
/// after every commit once the vector is covered.
pub(crate) async fn wait_for_session(
    state: &AppState,
    token: &SessionToken,
    wait: Duration,
    mut content_ready: impl FnMut() -> ApiResult<bool>,
) -> ApiResult<Result<(), NotReached>> {
    let deadline = Instant::now() + wait;
    let mut applied = state.writer.applied();
    loop {
        let vv = applied.borrow_and_update().clone();
        let missing = progress(token, &vv);
        let lacking_content = missing.is_empty() && !content_ready()?;
        if missing.is_empty() && !lacking_content {
            return Ok(Ok(()));
        }
        // Every commit (a write, an apply, arriving content) notifies; a closed writer ends it.
        match tokio::time::timeout_at(deadline, applied.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return Ok(Err(NotReached { missing, lacking_content })),
        }
    }
}

/// The region that, as far as this one knows, holds every write of `token`: a peer whose
/// last ack covered each stream, counting a peer's own streams as held (a region holds every
/// write it made).
pub(crate) fn region_holding(state: &AppState, token: &SessionToken) -> Option<String> {
    state
        .status
        .durable_vectors()
        .into_iter()
        .find(|(region, vv)| token.missing(vv).iter().all(|(stream, _, _)| stream.origin == *region))
        .map(|(region, _)| region.to_string())
}

/// Waits for a `bounded` read's staleness; `Err` is the 504 to answer.
pub(crate) async fn wait_for_staleness(state: &AppState, max_staleness_ms: u64, wait: Duration) -> ApiResult<u64> {
    let deadline = Instant::now() + wait;
    let mut changed = state.status.subscribe();
    loop {
        changed.borrow_and_update();
        let stale = state.status.staleness_ms(state.clock.now_ms());
        let worst = stale.iter().map(|(_, s)| s.unwrap_or(u64::MAX)).max().unwrap_or(0);
        if worst <= max_staleness_ms {
            return Ok(worst);
        }
        // Staleness also grows with time alone: look again when a peer catches up, or at the
        // deadline.
        if !matches!(tokio::time::timeout_at(deadline, changed.changed()).await, Ok(Ok(()))) {
            let described: Vec<String> = stale
                .iter()
                .map(|(r, s)| match s {
                    Some(ms) => format!("{r} {ms} ms"),
                    None => format!("{r} never caught up"),
                })
                .collect();
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                ErrorCode::StalenessNotMet,
                format!(
                    "{} cannot show its copy within {max_staleness_ms} ms of every region after {} ms (staleness: {}); allow more staleness, wait longer, or read with consistency=local",
                    state.region,
                    wait.as_millis(),
                    described.join(", ")
                ),
            ));
        }
    }
}

/// What to do after a level's wait.
pub(crate) enum Before {
    /// Read this region's records; `Granted` says what to add to the answer.
    Read(Granted),
    /// Another region answered (`fallback=forward`).
    Answered(axum::response::Response),
}

/// Runs `level`'s wait for a read of `topic`. `content_ready` says whether the records to be
/// read hold the content of the session's writes (see [`wait_for_session`]);
/// `path_and_query` and `headers` replay the read elsewhere for `fallback=forward`.
pub(crate) async fn before_read(
    state: &AppState,
    topic: &str,
    level: &ReadLevel,
    path_and_query: &str,
    headers: &HeaderMap,
    content_ready: impl FnMut() -> ApiResult<bool>,
) -> ApiResult<Before> {
    match level {
        ReadLevel::Local => Ok(Before::Read(Granted::default())),
        ReadLevel::Strong => {
            crate::strong::read_barrier(state, topic).await?;
            Ok(Before::Read(Granted::default()))
        }
        ReadLevel::Bounded { max_staleness_ms, wait } => {
            let staleness_ms = wait_for_staleness(state, *max_staleness_ms, *wait).await?;
            Ok(Before::Read(Granted { staleness_ms: Some(staleness_ms) }))
        }
        ReadLevel::ReadYourWrites { token, wait, forward } => {
            let Err(not_reached) = wait_for_session(state, token, *wait, content_ready).await? else {
                return Ok(Before::Read(Granted::default()));
            };
            // A forwarded read is answered where it lands: two regions never bounce one.
            if *forward && !headers.contains_key(crate::forward::FORWARDED_FROM) {
                if let Some(region) = region_holding(state, token) {
                    if let Some(answer) = state.forwarder.read(&state.region, &region, path_and_query, headers).await {
                        tracing::debug!(to = %region, "a read-your-writes read went to a region that holds the session");
                        return Ok(Before::Answered(answer));
                    }
                }
            }
            Err(not_reached.into_error(state, *wait))
        }
    }
}
