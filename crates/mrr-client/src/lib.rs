//! The Rust client for MRR, with the article's verbs: [`connect`], [`Client::publish`],
//! [`Client::query`] (`"users/u001"`), [`Client::delete`].
//!
//! A client talks to one region's node over HTTP; it holds no replication logic and does not
//! depend on the server. It carries a session: every write's answer names the write in a
//! session token (`x-mrr-session`), which the client merges into its own and sends with
//! every request, so a [`Consistency::ReadYourWrites`] read sees this session's writes. Clients
//! made with [`Client::in_region`] share the session: write in Tokyo, read your write in
//! Frankfurt.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mrr_core::session_token::SessionToken;

pub use mrr_api::*;
use serde::de::DeserializeOwned;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("request to {url} failed: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{status} {code:?}: {message}")]
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
        /// `precondition_failed`: the record as it is.
        current: Option<Box<RecordEnvelope>>,
        /// `session_not_reached`: the streams the region lacks.
        missing: Vec<StreamProgress>,
        /// `ack_timeout`: the regions that hold the write.
        acked_by: Vec<String>,
        /// `insufficient_rights`: when to try again (the region has asked for rights), in ms.
        retry_after_ms: Option<u64>,
    },
    /// [`Client::atomic_update`] lost the compare-and-set to other writers on every attempt.
    #[error("{path}: the record changed under each of {attempts} attempts (other writers won the compare-and-set); retry later, or express the update as an atomic condition (Client::atomic), which never needs retries")]
    Contended { path: String, attempts: u32 },
    #[error("unexpected response {status} from {url}: {body}")]
    Unexpected { url: String, status: u16, body: String },
    #[error("{0:?} is not a record path; write it as topic/id, e.g. users/u001")]
    InvalidPath(String),
    #[error("the cluster CA given to the client is not usable: {0}")]
    Tls(String),
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// A connection to one region's node.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    api_key: Option<String>,
    http: reqwest::Client,
    /// The session's token: every write this client (and those sharing its session) made.
    session: Arc<Mutex<Option<SessionToken>>>,
}

/// What a read may miss (`?consistency=`, `docs/consistency.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// This region's copy as it is.
    Local,
    /// Linearizable (`consistency: strong` topics).
    Strong,
    /// Every write of this client's session is in the answer, wherever it was made; waits up
    /// to the server's default (2 s), then `SessionNotReached`.
    ReadYourWrites,
    /// No older than `max_staleness_ms` for any region's writes.
    Bounded { max_staleness_ms: u64 },
}

/// The header a session token travels in.
pub const SESSION_HEADER: &str = "x-mrr-session";

/// Connects to the node at `endpoint` (`http://host:port`). No request is made until the
/// first call.
pub fn connect(endpoint: &str, api_key: Option<&str>) -> Result<Client> {
    connect_with_ca(endpoint, api_key, None)
}

/// As [`connect`], trusting only the cluster CA in `ca_pem` for `https://` endpoints (the
/// `ca.pem` of `mrr certs`).
pub fn connect_with_ca(endpoint: &str, api_key: Option<&str>, ca_pem: Option<&[u8]>) -> Result<Client> {
    mrr_tls::install_default_provider();
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let Some(ca) = ca_pem {
        let tls = mrr_tls::api_client_config(ca).map_err(|e| ClientError::Tls(e.to_string()))?;
        builder = builder.use_preconfigured_tls(tls);
    }
    let http = builder.build().map_err(|source| ClientError::Http { url: endpoint.to_owned(), source })?;
    Ok(Client {
        base: endpoint.trim_end_matches('/').to_owned(),
        api_key: api_key.map(str::to_owned),
        http,
        session: Arc::default(),
    })
}

fn split_path(path: &str) -> Result<(&str, &str)> {
    match path.split_once('/') {
        Some((t, i)) if !t.is_empty() && !i.is_empty() && !i.contains('/') => Ok((t, i)),
        _ => Err(ClientError::InvalidPath(path.to_owned())),
    }
}

impl Client {
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// A client of the node at `endpoint` (another region) sharing this one's key and session:
    /// its read-your-writes reads see the writes made through this one, and the other way.
    pub fn in_region(&self, endpoint: &str) -> Client {
        Client { base: endpoint.trim_end_matches('/').to_owned(), ..self.clone() }
    }

    /// The session token as it stands (what a read-your-writes read waits for), to hand to
    /// another process.
    pub fn session_token(&self) -> Option<String> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(SessionToken::encode)
    }

    /// Takes in a token from elsewhere (another process's [`Client::session_token`]).
    pub fn merge_session_token(&self, token: &str) {
        if let Ok(t) = SessionToken::parse(token) {
            let mut session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
            match &mut *session {
                // A token of another cluster replaces the session rather than mixing with it.
                Some(mine) if mine.cluster() == t.cluster() => mine.merge(&t),
                _ => *session = Some(t),
            }
        }
    }

    /// The record at `topic/id` read at `level`; `None` if it does not exist or was deleted.
    pub async fn query_with(&self, path: &str, level: Consistency) -> Result<Option<RecordEnvelope>> {
        match level {
            Consistency::Local => self.read(path, "").await,
            Consistency::Strong => self.read(path, "?consistency=strong").await,
            Consistency::ReadYourWrites => self.read(path, "?consistency=read_your_writes").await,
            Consistency::Bounded { max_staleness_ms } => {
                self.read(path, &format!("?consistency=bounded&max_staleness_ms={max_staleness_ms}")).await
            }
        }
    }

    /// Publishes `record` (a JSON object with an `id`, optionally `__metadata`) to `topic`.
    pub async fn publish(&self, topic: &str, record: &Value) -> Result<RecordEnvelope> {
        self.send(self.http.post(format!("{}/v1/records/{topic}", self.base)).json(record)).await
    }

    /// Publishes `record` under `topic/id`.
    pub async fn put(&self, path: &str, record: &Value) -> Result<RecordEnvelope> {
        let (topic, id) = split_path(path)?;
        self.send(self.http.put(format!("{}/v1/records/{topic}/{id}", self.base)).json(record)).await
    }

    /// The record at `topic/id` in this region, or `None` if it does not exist or was deleted.
    pub async fn query(&self, path: &str) -> Result<Option<RecordEnvelope>> {
        self.read(path, "").await
    }

    /// One record, read with `query` (`""` or `?consistency=...`); `None` when absent or deleted.
    async fn read(&self, path: &str, query: &str) -> Result<Option<RecordEnvelope>> {
        let (topic, id) = split_path(path)?;
        match self.send(self.http.get(format!("{}/v1/records/{topic}/{id}{query}", self.base))).await {
            Ok(r) => Ok(Some(r)),
            Err(ClientError::Api { code: ErrorCode::NotFound | ErrorCode::Deleted, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn delete(&self, path: &str) -> Result<RecordEnvelope> {
        let (topic, id) = split_path(path)?;
        self.send(self.http.delete(format!("{}/v1/records/{topic}/{id}", self.base))).await
    }

    /// Publishes or deletes many records in one atomic commit.
    pub async fn batch(&self, items: Vec<BatchItem>) -> Result<BatchResponse> {
        self.send(self.http.post(format!("{}/v1/batch", self.base)).json(&BatchRequest { items })).await
    }

    /// One page of a topic, in id order.
    pub async fn list(
        &self,
        topic: &str,
        after: Option<&str>,
        limit: usize,
        include_deleted: bool,
    ) -> Result<RecordList> {
        let mut query = vec![("limit", limit.to_string()), ("include_deleted", include_deleted.to_string())];
        if let Some(a) = after {
            query.push(("after", a.to_owned()));
        }
        self.send(self.http.get(format!("{}/v1/records/{topic}", self.base)).query(&query)).await
    }

    /// Every record of a topic, following pages.
    pub async fn list_all(&self, topic: &str, include_deleted: bool) -> Result<Vec<RecordEnvelope>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.list(topic, after.as_deref(), 1_000, include_deleted).await?;
            out.extend(page.records);
            match page.next_after {
                Some(a) => after = Some(a),
                None => return Ok(out),
            }
        }
    }

    pub async fn health(&self) -> Result<Health> {
        self.send(self.http.get(format!("{}/health", self.base))).await
    }

    pub async fn status(&self) -> Result<NodeStatus> {
        self.send(self.http.get(format!("{}/v1/status", self.base))).await
    }

    /// The coordinator (the strong tier's leader) as this region knows it.
    pub async fn coordinator(&self) -> Result<mrr_api::CoordinatorInfo> {
        self.send(self.http.get(format!("{}/v1/cluster/coordinator", self.base))).await
    }

    /// The node's metrics in Prometheus text format.
    pub async fn metrics(&self) -> Result<String> {
        let url = format!("{}/metrics", self.base);
        let response =
            self.http.get(&url).send().await.map_err(|source| ClientError::Http { url: url.clone(), source })?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|source| ClientError::Http { url: url.clone(), source })?;
        if status != 200 {
            return Err(ClientError::Unexpected { url, status, body });
        }
        Ok(body)
    }

    /// Follows this node's applied version vector: each commit here yields an event.
    pub async fn watch_applied(&self) -> Result<AppliedWatch> {
        let url = format!("{}/v1/watch/applied", self.base);
        let mut request = self.http.get(&url).timeout(Duration::from_secs(24 * 3600));
        if let Some(k) = &self.api_key {
            request = request.bearer_auth(k);
        }
        let response = request.send().await.map_err(|source| ClientError::Http { url: url.clone(), source })?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            return Err(ClientError::Unexpected { url, status, body });
        }
        Ok(AppliedWatch { url, response, buf: Vec::new() })
    }

    /// The emulated links from this node to each peer.
    pub async fn links(&self) -> Result<LinksView> {
        self.send(self.http.get(format!("{}/v1/admin/links", self.base))).await
    }

    /// The emulated link from this node to `peer`.
    pub async fn link(&self, peer: &str) -> Result<LinkSettings> {
        self.send(self.http.get(format!("{}/v1/admin/links/{peer}", self.base))).await
    }

    /// Changes the emulated link from this node to `peer`.
    pub async fn set_link(&self, peer: &str, settings: LinkSettings) -> Result<LinksView> {
        self.send(self.http.put(format!("{}/v1/admin/links/{peer}", self.base)).json(&settings)).await
    }

    /// Partial update of `topic/id`: only the named fields change; `null` removes one.
    pub async fn patch(&self, path: &str, fields: &Value) -> Result<RecordEnvelope> {
        let (topic, id) = split_path(path)?;
        self.send(self.http.patch(format!("{}/v1/records/{topic}/{id}", self.base)).json(fields)).await
    }

    /// CRDT operations on `topic/id` (one operation object or an array), e.g.
    /// `{"op":"incr","field":"views","by":3}`. The topic needs `conflict_strategy: merge`.
    pub async fn ops(&self, path: &str, ops: &Value) -> Result<RecordEnvelope> {
        let (topic, id) = split_path(path)?;
        self.send(self.http.post(format!("{}/v1/records/{topic}/{id}/ops", self.base)).json(ops)).await
    }

    /// The conflict log, oldest first, optionally one topic's and since a time (ms).
    pub async fn conflicts(&self, topic: Option<&str>, since_ms: Option<u64>) -> Result<ConflictList> {
        let mut query = Vec::new();
        if let Some(t) = topic {
            query.push(("topic", t.to_owned()));
        }
        if let Some(s) = since_ms {
            query.push(("since", s.to_string()));
        }
        self.send(self.http.get(format!("{}/v1/conflicts", self.base)).query(&query)).await
    }

    pub async fn dead_letters(&self) -> Result<DeadLetterList> {
        self.send(self.http.get(format!("{}/v1/dlq", self.base))).await
    }

    /// Applies a dead letter again (once cluster-wide); returns the record it produced.
    pub async fn replay(&self, id: &str) -> Result<RecordEnvelope> {
        self.send(self.http.post(format!("{}/v1/dlq/{id}/replay", self.base))).await
    }

    /// Runs anti-entropy from this region (`POST /v1/repair`): compares its records with its
    /// peers' and repairs what differs. A run reads every record compared, so it may take a
    /// while: the request waits up to 30 minutes.
    pub async fn repair(&self, request: &mrr_api::RepairRequest) -> Result<mrr_api::RepairReport> {
        let url = format!("{}/v1/repair", self.base);
        self.send(self.http.post(url).json(request).timeout(Duration::from_secs(30 * 60))).await
    }

    /// The cluster's regions as this region applied the membership (`GET /v1/regions`).
    pub async fn regions(&self) -> Result<mrr_api::RegionsReport> {
        self.send(self.http.get(format!("{}/v1/regions", self.base))).await
    }

    /// Adds a region to the running cluster (`POST /v1/regions`); it must be up and listening
    /// at `endpoint` (its peer listener).
    pub async fn add_region(&self, request: &mrr_api::AddRegionRequest) -> Result<mrr_api::RegionsReport> {
        self.send(self.http.post(format!("{}/v1/regions", self.base)).json(request)).await
    }

    /// Removes a region that leaves cleanly (`DELETE /v1/regions/{name}`).
    pub async fn remove_region(&self, name: &str) -> Result<mrr_api::RegionsReport> {
        self.send(self.http.delete(format!("{}/v1/regions/{name}", self.base))).await
    }

    /// Declares a region lost (`POST /v1/regions/{name}/lost`).
    pub async fn declare_lost(&self, name: &str) -> Result<mrr_api::RegionsReport> {
        self.send(self.http.post(format!("{}/v1/regions/{name}/lost", self.base))).await
    }

    /// Discards a dead letter in this region; returns it.
    pub async fn discard(&self, id: &str) -> Result<DeadLetterView> {
        self.send(self.http.delete(format!("{}/v1/dlq/{id}", self.base))).await
    }

    /// Reads a record linearizably (`?consistency=strong`, topics with `consistency: strong`):
    /// every write acknowledged anywhere before the call is in the answer.
    pub async fn query_strong(&self, path: &str) -> Result<Option<RecordEnvelope>> {
        self.read(path, "?consistency=strong").await
    }

    /// An atomic update (`POST .../atomic`): `then` applies only if `condition` holds, in one
    /// step of the strong tier's state machine. `request_id` makes a retry of this call apply
    /// once. A condition that does not hold is `Api { code: PreconditionFailed, current, .. }`.
    pub async fn atomic(
        &self,
        path: &str,
        condition: &Value,
        then: &Value,
        request_id: &str,
    ) -> Result<RecordEnvelope> {
        let (topic, id) = split_path(path)?;
        let body = serde_json::json!({"if": condition, "then": then, "request_id": request_id});
        self.send(self.http.post(format!("{}/v1/records/{topic}/{id}/atomic", self.base)).json(&body)).await
    }

    /// The article's `AtomicUpdate(topic, id, func(current) {...}, WithRetry(n))`: reads the
    /// record linearizably, runs `update` on its fields (an absent record starts as `{"id"}`),
    /// and writes the fields it changed with a compare-and-set on the version it read. When
    /// another writer got there first, it reads and runs `update` again, up to `retries` more
    /// times, then answers [`ClientError::Contended`]. An `update` that changes nothing writes
    /// nothing and answers the record as read (`None` if it does not exist).
    pub async fn atomic_update(
        &self,
        topic: &str,
        id: &str,
        mut update: impl FnMut(&mut serde_json::Map<String, Value>),
        retries: u32,
    ) -> Result<Option<RecordEnvelope>> {
        let path = format!("{topic}/{id}");
        for _ in 0..=retries {
            let current = self.query_strong(&path).await?;
            let before = match current.as_ref().map(|r| &r.value) {
                Some(Value::Object(m)) => m.clone(),
                _ => serde_json::Map::from_iter([("id".to_owned(), Value::String(id.to_owned()))]),
            };
            let mut after = before.clone();
            update(&mut after);
            let mut ops: Vec<Value> = after
                .iter()
                .filter(|(k, v)| before.get(*k) != Some(*v))
                .map(|(k, v)| serde_json::json!({"op": "set", "field": k, "value": v}))
                .collect();
            ops.extend(
                before
                    .keys()
                    .filter(|k| !after.contains_key(*k))
                    .map(|k| serde_json::json!({"op": "set", "field": k, "value": null})),
            );
            if ops.is_empty() {
                return Ok(current);
            }
            let condition = match &current {
                Some(r) => serde_json::json!({"$version": r.version.hlc}),
                None => serde_json::json!({"$exists": false}),
            };
            let request_id = format!("{:032x}", rand::random::<u128>());
            match self.atomic(&path, &condition, &Value::Array(ops), &request_id).await {
                Ok(r) => return Ok(Some(r)),
                Err(ClientError::Api { code: ErrorCode::PreconditionFailed, .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Contended { path, attempts: retries + 1 })
    }

    async fn send<T: DeserializeOwned>(&self, mut request: reqwest::RequestBuilder) -> Result<T> {
        if let Some(k) = &self.api_key {
            request = request.bearer_auth(k);
        }
        if let Some(token) = self.session_token() {
            request = request.header(SESSION_HEADER, token);
        }
        let response = request.send().await.map_err(|source| ClientError::Http { url: self.base.clone(), source })?;
        if let Some(token) = response.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()) {
            self.merge_session_token(token);
        }
        let status = response.status();
        let url = response.url().to_string();
        let body = response.bytes().await.map_err(|source| ClientError::Http { url: url.clone(), source })?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| ClientError::Unexpected {
                url,
                status: status.as_u16(),
                body: format!("{e}: {}", String::from_utf8_lossy(&body)),
            });
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => Err(ClientError::Api {
                status: status.as_u16(),
                code: e.error.code,
                message: e.error.message,
                current: e.error.current,
                missing: e.error.missing,
                acked_by: e.error.acked_by,
                retry_after_ms: e.error.retry_after_ms,
            }),
            Err(_) => Err(ClientError::Unexpected {
                url,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).into_owned(),
            }),
        }
    }
}

/// The event stream of [`Client::watch_applied`].
#[derive(Debug)]
pub struct AppliedWatch {
    url: String,
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl AppliedWatch {
    /// The next event, or `None` when the node closed the stream.
    pub async fn next(&mut self) -> Result<Option<AppliedEvent>> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return serde_json::from_slice(&line[..end]).map(Some).map_err(|e| ClientError::Unexpected {
                    url: self.url.clone(),
                    status: 200,
                    body: format!("{e}: {}", String::from_utf8_lossy(&line)),
                });
            }
            match self.response.chunk().await.map_err(|source| ClientError::Http { url: self.url.clone(), source })? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_paths_are_topic_slash_id() {
        assert_eq!(split_path("users/u001").ok(), Some(("users", "u001")));
        for bad in ["users", "/u001", "users/", "a/b/c"] {
            assert!(matches!(split_path(bad), Err(ClientError::InvalidPath(_))), "{bad}");
        }
    }
}
