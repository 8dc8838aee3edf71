//! `placement_writes: forward`: a single-record write made in a region outside the record's
//! placement is sent on to a region inside it, and that region's answer is returned.
//!
//! The writer decides placement (it refuses with 409 `not_placed_here` and the regions the
//! record lives in, in the `x-mrr-placed-in` header); this layer only replays the request once,
//! over HTTP, to the first of those regions with an `api:` address. A forwarded request carries
//! `x-mrr-forwarded-from` and is never forwarded again, so two regions with stale views cannot
//! bounce a write between them. Batches are not forwarded: a batch commits all or nothing in
//! one region. It must not decide placement itself or touch the store.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mrr_api::ErrorCode;
use mrr_core::RegionName;

use crate::http::{ApiError, AppState};

/// On a 409 `not_placed_here`: the regions the record lives in, comma-separated.
pub const PLACED_IN: &str = "x-mrr-placed-in";
/// On a forwarded request: the region it was first made in.
pub const FORWARDED_FROM: &str = "x-mrr-forwarded-from";
/// On a forwarded answer: the region that answered.
pub const FORWARDED_TO: &str = "x-mrr-forwarded-to";

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Forwarder {
    client: reqwest::Client,
    /// Region name to API base URL, from `regions[].api`.
    apis: BTreeMap<String, String>,
    /// Topics whose writes are forwarded; `all` when `replication_rules.placement_writes` is
    /// `forward` (then `except` lists topics set back to `refuse`).
    all: bool,
    topics: BTreeSet<String>,
    except: BTreeSet<String>,
    /// `(topic, field)` of bounded fields with `on_insufficient: forward`.
    rights: BTreeSet<(String, String)>,
}

/// Why the forwarder could not be built (at start-up).
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("the cluster CA: {0}")]
    Tls(#[from] mrr_tls::TlsError),
}

impl Forwarder {
    pub fn new(
        apis: BTreeMap<String, String>,
        all: bool,
        topics: BTreeSet<String>,
        except: BTreeSet<String>,
        rights: BTreeSet<(String, String)>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, ForwarderError> {
        mrr_tls::install_default_provider();
        let mut builder = reqwest::Client::builder().timeout(TIMEOUT);
        // With TLS, the other regions' `https://` APIs are trusted by the cluster CA only.
        if let Some(ca) = ca_pem {
            builder = builder.use_preconfigured_tls(mrr_tls::api_client_config(ca)?);
        }
        let client = builder.build()?;
        Ok(Self { client, apis, all, topics, except, rights })
    }

    /// Whether a decrement of `topic`'s bounded `field` beyond this region's rights is sent on
    /// to a region that holds them.
    pub(crate) fn forwards_rights(&self, topic: &str, field: &str) -> bool {
        self.rights.contains(&(topic.to_owned(), field.to_owned()))
    }

    fn forwards(&self, topic: &str) -> bool {
        (self.all && !self.except.contains(topic)) || self.topics.contains(topic)
    }
}

/// The topic of a single-record write path (`/v1/records/{topic}[/{id}[/ops]]`).
fn write_topic<'a>(method: &Method, path: &'a str) -> Option<&'a str> {
    if *method == Method::GET {
        return None;
    }
    path.strip_prefix("/v1/records/")?.split('/').next().filter(|t| !t.is_empty())
}

pub async fn forward_placement(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let forwarder = state.forwarder.clone();
    let topic = write_topic(request.method(), request.uri().path()).map(str::to_owned);
    let eligible =
        topic.as_deref().is_some_and(|t| forwarder.forwards(t)) && !request.headers().contains_key(FORWARDED_FROM);
    if !eligible {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match to_bytes(body, state.limits.body_bytes_max).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::BodyTooLarge,
                format!("body over {} bytes", state.limits.body_bytes_max),
            )
            .into_response()
        }
    };
    let local = next.run(Request::from_parts(parts.clone(), Body::from(bytes.clone()))).await;
    if local.status() != StatusCode::CONFLICT {
        return local;
    }
    let Some(placed_in) = local.headers().get(PLACED_IN).and_then(|v| v.to_str().ok()).map(str::to_owned) else {
        return local;
    };
    let target = placed_in
        .split(',')
        .filter(|r| *r != state.region.as_str())
        .find_map(|r| forwarder.apis.get(r).map(|api| (r.to_owned(), api.clone())));
    let Some((region, api)) = target else {
        // No region of the placement has an `api:` address: the refusal stands.
        return local;
    };
    let path = parts.uri.path_and_query().map_or("", |p| p.as_str());
    let why = format!("the record lives in {placed_in}");
    forwarder.send(&state.region, &region, &api, parts.method.clone(), path, &parts.headers, bytes, &why).await
}

impl Forwarder {
    /// Replays a write (`method path_and_query` with `body`) in `region` with the client's
    /// credentials and session token, marked forwarded so that region answers it itself.
    /// `None`: `region` has no `api:` address.
    pub(crate) async fn write(
        &self,
        from: &RegionName,
        region: &str,
        method: Method,
        path_and_query: &str,
        headers: &axum::http::HeaderMap,
        body: axum::body::Bytes,
    ) -> Option<Response> {
        let api = self.apis.get(region)?;
        let why = format!("{region} holds the rights this region lacks");
        Some(self.send(from, region, api, method, path_and_query, headers, body, &why).await)
    }

    /// Sends a request on, once, and relays the answer (or 502 `forward_failed`: whether a
    /// write applied there is then unknown, as after any lost answer).
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        from: &RegionName,
        region: &str,
        api: &str,
        method: Method,
        path_and_query: &str,
        headers: &axum::http::HeaderMap,
        body: axum::body::Bytes,
        why: &str,
    ) -> Response {
        let url = format!("{}{path_and_query}", api.trim_end_matches('/'));
        let mut out = self.client.request(method, &url).body(body);
        for name in ["content-type", "authorization", "x-api-key", crate::read_levels::SESSION_HEADER] {
            if let Some(v) = headers.get(name) {
                out = out.header(name, v);
            }
        }
        out = out.header(FORWARDED_FROM, from.as_str());
        match relay(out).await {
            Ok(mut response) => {
                if let Ok(v) = HeaderValue::from_str(region) {
                    response.headers_mut().insert(FORWARDED_TO, v);
                }
                tracing::debug!(to = %region, url = %url, why, "forwarded a request");
                response
            }
            Err(e) => {
                tracing::warn!(to = %region, url = %url, why, error = %e, "forwarding a request failed");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::ForwardFailed,
                    format!("{why}; forwarding the request to {region} failed: {e}"),
                )
                .into_response()
            }
        }
    }

    /// Replays a read (`GET path_and_query`) in `region`, with the client's credentials and
    /// session token, marked forwarded so that region answers it itself. `None`: `region` has
    /// no `api:` address.
    pub(crate) async fn read(
        &self,
        from: &RegionName,
        region: &str,
        path_and_query: &str,
        headers: &axum::http::HeaderMap,
    ) -> Option<Response> {
        let api = self.apis.get(region)?;
        let why = format!("{region} holds the session's writes");
        Some(self.send(from, region, api, Method::GET, path_and_query, headers, Default::default(), &why).await)
    }
}

async fn relay(request: reqwest::RequestBuilder) -> Result<Response, reqwest::Error> {
    let answer = request.send().await?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    // The answer's own headers that mean something to the client: its type, the session token
    // of a forwarded write, the staleness a forwarded read met.
    let kept: Vec<(&'static str, HeaderValue)> =
        ["content-type", crate::read_levels::SESSION_HEADER, crate::read_levels::STALENESS_HEADER]
            .into_iter()
            .filter_map(|name| {
                let v = answer.headers().get(name)?;
                Some((name, HeaderValue::from_bytes(v.as_bytes()).ok()?))
            })
            .collect();
    let body = answer.bytes().await?;
    let mut response = (status, body).into_response();
    for (name, v) in kept {
        response.headers_mut().insert(name, v);
    }
    Ok(response)
}

/// The `x-mrr-placed-in` value for a placement: its entries that are region names (a peer's
/// metadata is not trusted to be header-safe).
pub fn placed_in_header(regions: &[String]) -> Option<HeaderValue> {
    let names: Vec<&str> =
        regions.iter().map(String::as_str).filter(|r| RegionName::new(r.to_string()).is_ok()).collect();
    HeaderValue::from_str(&names.join(",")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_record_writes_are_forwarded() {
        assert_eq!(write_topic(&Method::PUT, "/v1/records/users/u1"), Some("users"));
        assert_eq!(write_topic(&Method::POST, "/v1/records/users"), Some("users"));
        assert_eq!(write_topic(&Method::POST, "/v1/records/users/u1/ops"), Some("users"));
        assert_eq!(write_topic(&Method::GET, "/v1/records/users/u1"), None);
        assert_eq!(write_topic(&Method::POST, "/v1/batch"), None);
        let f =
            Forwarder::new(BTreeMap::new(), true, BTreeSet::new(), ["audit".to_owned()].into(), BTreeSet::new(), None)
                .expect("client");
        assert!(f.forwards("users") && !f.forwards("audit"));
    }
}
