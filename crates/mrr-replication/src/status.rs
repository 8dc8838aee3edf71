//! What each peer session last reported, for `/v1/status`, `mrr status` and health.
//! Sessions write here; nothing here drives replication.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use mrr_api::PeerStatus;
use mrr_core::{RegionName, VersionVector};

/// States of our stream to a peer, as shown in [`PeerStatus::outbound`].
pub mod state {
    pub const CONNECTING: &str = "connecting";
    pub const CONNECTED: &str = "connected";
    /// Waiting before the next attempt after a failure.
    pub const BACKOFF: &str = "backoff";
}

#[derive(Clone, Debug)]
pub struct StatusBoard {
    inner: Arc<Mutex<BTreeMap<RegionName, PeerStatus>>>,
}

impl StatusBoard {
    pub fn new<'a>(local: &RegionName, peers: impl Iterator<Item = (&'a RegionName, &'a str)>) -> Self {
        let map = peers
            .filter(|(r, _)| *r != local)
            .map(|(r, e)| {
                (
                    r.clone(),
                    PeerStatus {
                        region: r.to_string(),
                        endpoint: e.to_owned(),
                        outbound: state::CONNECTING.into(),
                        ..Default::default()
                    },
                )
            })
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
