//! The API's door: every `/v1` request's key is authenticated (401 `unauthenticated`) and its
//! scope checked against what the request does (403 `forbidden`, naming what is missing),
//! before a handler runs. `/health` and `/metrics` need a key only with
//! `require_key_for_monitoring`.
//!
//! What a request does is read from its method and path ([`need_of`]); the two handlers that
//! learn their records from the body (publish, batch) check each record themselves with the
//! [`Caller`] the door leaves in the request. Nothing here decides scopes (`crate::access`
//! does) or touches records.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mrr_api::ErrorCode;
use mrr_core::Key;

use crate::access::{Action, Need, Scope};
use crate::http::{ApiError, AppState};

/// Who is calling, as the door found it. Every `/v1` handler may take it; a request that did
/// not pass the door has none, and a handler asking for it refuses the request (fail closed).
#[derive(Clone, Debug)]
pub enum Caller {
    /// The API has no keys (loopback, or `allow_anonymous`).
    Open,
    Key(Arc<Scope>),
}

impl Caller {
    /// Refuses (403) unless the caller may take `action` on record `key`.
    pub fn check(&self, action: Action, key: &Key) -> Result<(), ApiError> {
        match self {
            Caller::Open => Ok(()),
            Caller::Key(scope) => scope
                .check(&Need { action, records: Some((key.topic.as_str(), Some(key.id.as_str()))) })
                .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, e.0)),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthenticated, "the request was not authenticated")
        })
    }
}

/// The key a request presents: `Authorization: Bearer <key>` or `x-api-key: <key>`. A header
/// that is not visible ASCII counts as a key that matches none.
fn presented(headers: &HeaderMap) -> Option<&str> {
    let bearer = || {
        let v = headers.get(axum::http::header::AUTHORIZATION)?;
        Some(v.to_str().unwrap_or("\u{0}").strip_prefix("Bearer ").unwrap_or("\u{0}"))
    };
    headers.get("x-api-key").map(|v| v.to_str().unwrap_or("\u{0}")).or_else(bearer)
}

fn unauthenticated(message: String) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthenticated, message).into_response();
    r.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
    r
}

/// What a `/v1` request does, from its method and its path below `/v1`. `None` records: the
/// handler checks them (publish and batch carry them in the body) or there are none.
pub fn need_of<'a>(method: &Method, path: &'a str) -> Need<'a> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let write = |records| Need { action: Action::Write, records };
    let read = |records| Need { action: Action::Read, records };
    match segments.as_slice() {
        ["records", topic] if method == Method::GET => read(Some((*topic, None))),
        ["records", _] => write(None),
        ["records", topic, id] if method == Method::GET => read(Some((*topic, Some(*id)))),
        ["records", topic, id, ..] => write(Some((*topic, Some(*id)))),
        ["batch"] => write(None),
        ["status"] | ["cluster", ..] => read(None),
        ["regions"] if method == Method::GET => read(None),
        ["regions", ..] => Need { action: Action::Admin, records: None },
        // Operators' endpoints; the applied-change feed names records of every topic.
        ["conflicts", ..] | ["dlq", ..] | ["admin", ..] | ["watch", ..] | ["repair"] => {
            Need { action: Action::Admin, records: None }
        }
        // Unknown paths: any valid key gets the 404.
        _ => read(None),
    }
}

/// The door of `/v1`.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let access = state.access.current();
    if access.is_open() {
        request.extensions_mut().insert(Caller::Open);
        return next.run(request).await;
    }
    let scope = match access.authenticate(presented(request.headers()), &state.region, state.clock.now_ms()) {
        Ok(scope) => scope.clone(),
        Err(e) => return unauthenticated(e.to_string()),
    };
    // Nested under /v1: the path here may or may not carry the prefix.
    let path = request.uri().path();
    let path = path.strip_prefix("/v1").unwrap_or(path);
    if let Err(e) = scope.check(&need_of(request.method(), path)) {
        return ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, e.0).into_response();
    }
    request.extensions_mut().insert(Caller::Key(scope));
    next.run(request).await
}

/// The door of `/health` and `/metrics` with `require_key_for_monitoring`: any valid key.
pub async fn monitoring(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let access = state.access.current();
    if state.require_key_for_monitoring && !access.is_open() {
        if let Err(e) = access.authenticate(presented(request.headers()), &state.region, state.clock.now_ms()) {
            return unauthenticated(e.to_string());
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_need_what_they_do() {
        let need = |m: Method, p: &'static str| need_of(&m, p);
        assert_eq!(
            need(Method::GET, "/records/users/u1"),
            Need { action: Action::Read, records: Some(("users", Some("u1"))) }
        );
        assert_eq!(need(Method::GET, "/records/users"), Need { action: Action::Read, records: Some(("users", None)) });
        assert_eq!(need(Method::DELETE, "/records/users/u1").action, Action::Write);
        assert_eq!(need(Method::POST, "/records/users/u1/ops").records, Some(("users", Some("u1"))));
        assert_eq!(need(Method::POST, "/records/users"), Need { action: Action::Write, records: None });
        for admin in [
            "/dlq",
            "/dlq/x/replay",
            "/conflicts",
            "/admin/links/us-west",
            "/watch/applied",
            "/repair",
            "/regions/x/lost",
        ] {
            assert_eq!(need(Method::GET, admin).action, Action::Admin, "{admin}");
        }
        assert_eq!(need(Method::GET, "/status").action, Action::Read);
    }

    #[test]
    fn a_malformed_key_header_is_a_key_that_matches_none() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert("authorization", axum::http::HeaderValue::from_static("Basic abc"));
        assert_eq!(presented(&h), Some("\u{0}"));
        h.insert("authorization", axum::http::HeaderValue::from_bytes(b"Bearer \xff").expect("opaque bytes"));
        assert_eq!(presented(&h), Some("\u{0}"));
        h.insert("x-api-key", axum::http::HeaderValue::from_static("mrr_1"));
        assert_eq!(presented(&h), Some("mrr_1"));
    }
}
