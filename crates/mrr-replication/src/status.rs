//! What each peer session last reported, for `/v1/status`, `mrr status` and health.
//! Sessions write here; nothing here drives replication.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use mrr_core::{RegionName, VersionVector};
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    #[default]
    Connecting,
    Connected,
    /// Waiting before the next attempt after a failure.
    Backoff,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PeerStatus {
    pub region: String,
    pub endpoint: String,
    /// Our stream to the peer (changes we send).
    pub outbound: PeerState,
    pub last_error: Option<String>,
    pub rtt_ms: Option<u64>,
    /// Peer clock minus ours, from the last handshake.
    pub clock_skew_ms: Option<i64>,
    /// What the peer has acknowledged applying.
    pub acked: BTreeMap<String, u64>,
    /// Changes the peer still needs from us.
    pub backlog_changes: u64,
    /// Live streams from the peer to us (changes we receive); more than one only while a
    /// replaced stream has not yet timed out.
    pub inbound_streams: u32,
    /// Replication lag of the last change applied from this origin: applied time minus its
    /// origin timestamp, in ms (includes clock skew).
    pub lag_ms_last: Option<u64>,
    pub changes_received: u64,
    pub changes_sent: u64,
    pub handshakes: u64,
}

#[derive(Clone, Debug)]
pub struct StatusBoard {
    inner: Arc<Mutex<BTreeMap<RegionName, PeerStatus>>>,
}

impl StatusBoard {
    pub fn new<'a>(local: &RegionName, peers: impl Iterator<Item = (&'a RegionName, &'a str)>) -> Self {
        let map = peers
            .filter(|(r, _)| *r != local)
            .map(|(r, e)| (r.clone(), PeerStatus { region: r.to_string(), endpoint: e.to_owned(), ..Default::default() }))
            .collect();
        Self { inner: Arc::new(Mutex::new(map)) }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<RegionName, PeerStatus>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn update(&self, peer: &RegionName, f: impl FnOnce(&mut PeerStatus)) {
        if let Some(s) = self.lock().get_mut(peer) {
            f(s);
        }
    }

    pub fn snapshot(&self) -> Vec<PeerStatus> {
        self.lock().values().cloned().collect()
    }

    /// Origins whose own stream to this node is live: the peers this node hears directly.
    pub fn direct_origins(&self) -> BTreeSet<RegionName> {
        self.lock().iter().filter(|(_, s)| s.inbound_streams > 0).map(|(r, _)| r.clone()).collect()
    }
}

pub(crate) fn vv_map(vv: &VersionVector) -> BTreeMap<String, u64> {
    vv.iter().map(|(o, s)| (o.to_string(), s)).collect()
}
