//! The peer handshake, sans-IO: building and checking Hello, Welcome and Auth.
//!
//! Both sides prove knowledge of the cluster secret without sending it: each answers the
//! other's fresh nonce with an HMAC bound to both nonces, the cluster and both region names, so a
//! proof cannot be replayed on another connection or another pair of regions. (Confidentiality
//! on the wire is TLS's job, not this handshake's.)

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::proto;
use crate::PROTOCOL_VERSION;
use mrr_core::RegionName;

type HmacSha256 = Hmac<Sha256>;

pub const NONCE_LEN: usize = 16;

/// Why a handshake failed. Each names what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("peer belongs to cluster {theirs:?}, this node to {ours:?}: check `cluster` in both configs")]
    ClusterMismatch { ours: String, theirs: String },
    #[error("peer speaks protocol version {theirs}, this node speaks {ours}: run the same MRR release on both")]
    ProtocolMismatch { ours: u32, theirs: u32 },
    #[error("peer says it is region {theirs:?}, expected {expected:?}: check the regions list and endpoints")]
    UnexpectedRegion { expected: String, theirs: String },
    #[error("region {0:?} is not in this node's regions list")]
    UnknownRegion(String),
    #[error("cluster secret mismatch with region {0}: set the same `secret` on every node")]
    BadProof(String),
    #[error("peer's topic policies differ from this node's (ours: {ours}; theirs: {theirs}): give every region the same `topics`, `replication_rules.conflict_strategy` and handler files")]
    PolicyMismatch { ours: String, theirs: String },
    #[error("malformed handshake: {0}")]
    Malformed(String),
}

const DIALER_ROLE: &[u8] = b"mrr-dialer";
const ACCEPTOR_ROLE: &[u8] = b"mrr-acceptor";

fn proof(
    secret: &str,
    role: &[u8],
    dialer_nonce: &[u8],
    acceptor_nonce: &[u8],
    cluster: &str,
    dialer: &str,
    acceptor: &str,
) -> HmacSha256 {
    // HMAC accepts keys of any length.
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!("hmac key of any length"));
    for part in [role, dialer_nonce, acceptor_nonce, cluster.as_bytes(), dialer.as_bytes(), acceptor.as_bytes()] {
        // Length-prefix each part so that no two different tuples hash alike.
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac
}

/// The dialer's side.
#[derive(Debug, Clone)]
pub struct Dialer {
    pub cluster: String,
    pub local: RegionName,
    pub peer: RegionName,
    pub secret: String,
    pub nonce: [u8; NONCE_LEN],
    pub policy_digest: String,
}

/// What the dialer learned from a valid Welcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Established {
    pub rtt_ms: u64,
    /// Peer clock minus local clock, estimated at the midpoint of the round trip.
    pub skew_ms: i64,
}

impl Dialer {
    /// The MAC of this connection for `role`, over both nonces, the cluster and both regions.
    fn mac(&self, role: &[u8], acceptor_nonce: &[u8]) -> HmacSha256 {
        proof(&self.secret, role, &self.nonce, acceptor_nonce, &self.cluster, self.local.as_str(), self.peer.as_str())
    }

    pub fn hello(&self, wall_ms: u64) -> proto::Hello {
        proto::Hello {
            cluster: self.cluster.clone(),
            protocol_version: PROTOCOL_VERSION,
            region: self.local.to_string(),
            target_region: self.peer.to_string(),
            nonce: self.nonce.to_vec(),
            wall_ms,
            policy_digest: self.policy_digest.clone(),
        }
    }

    /// Checks the acceptor's identity and proof; returns the Auth to send and the link figures.
    pub fn on_welcome(
        &self,
        welcome: &proto::Welcome,
        sent_ms: u64,
        received_ms: u64,
    ) -> Result<(proto::Auth, Established), HandshakeError> {
        if welcome.region != self.peer.as_str() {
            return Err(HandshakeError::UnexpectedRegion {
                expected: self.peer.to_string(),
                theirs: welcome.region.clone(),
            });
        }
        self.mac(ACCEPTOR_ROLE, &welcome.nonce)
            .verify_slice(&welcome.proof)
            .map_err(|_| HandshakeError::BadProof(self.peer.to_string()))?;
        let auth = self.mac(DIALER_ROLE, &welcome.nonce);
        let rtt_ms = received_ms.saturating_sub(sent_ms);
        let midpoint_ms = sent_ms + rtt_ms / 2;
        let skew_ms =
            i64::try_from(welcome.wall_ms).unwrap_or(i64::MAX) - i64::try_from(midpoint_ms).unwrap_or(i64::MAX);
        Ok((proto::Auth { proof: auth.finalize().into_bytes().to_vec() }, Established { rtt_ms, skew_ms }))
    }
}

/// The acceptor's side.
#[derive(Debug, Clone)]
pub struct Acceptor {
    pub cluster: String,
    pub local: RegionName,
    pub secret: String,
    pub nonce: [u8; NONCE_LEN],
    pub policy_digest: String,
}

/// A Hello that passed the acceptor's checks.
#[derive(Debug, Clone)]
pub struct Greeted {
    pub peer: RegionName,
    pub dialer_nonce: Vec<u8>,
}

impl Acceptor {
    /// The MAC of this connection for `role`: the same bytes the dialer computes.
    fn mac(&self, role: &[u8], greeted: &Greeted) -> HmacSha256 {
        proof(
            &self.secret,
            role,
            &greeted.dialer_nonce,
            &self.nonce,
            &self.cluster,
            greeted.peer.as_str(),
            self.local.as_str(),
        )
    }

    pub fn on_hello(
        &self,
        hello: &proto::Hello,
        known: impl Fn(&RegionName) -> bool,
    ) -> Result<Greeted, HandshakeError> {
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(HandshakeError::ProtocolMismatch { ours: PROTOCOL_VERSION, theirs: hello.protocol_version });
        }
        if hello.cluster != self.cluster {
            return Err(HandshakeError::ClusterMismatch { ours: self.cluster.clone(), theirs: hello.cluster.clone() });
        }
        if hello.policy_digest != self.policy_digest {
            return Err(HandshakeError::PolicyMismatch {
                ours: self.policy_digest.clone(),
                theirs: hello.policy_digest.clone(),
            });
        }
        if hello.target_region != self.local.as_str() {
            return Err(HandshakeError::UnexpectedRegion {
                expected: hello.target_region.clone(),
                theirs: self.local.to_string(),
            });
        }
        let peer = RegionName::new(hello.region.clone()).map_err(|e| HandshakeError::Malformed(e.to_string()))?;
        if peer == self.local || !known(&peer) {
            return Err(HandshakeError::UnknownRegion(hello.region.clone()));
        }
        if hello.nonce.len() != NONCE_LEN {
            return Err(HandshakeError::Malformed(format!("nonce of {} bytes, want {NONCE_LEN}", hello.nonce.len())));
        }
        Ok(Greeted { peer, dialer_nonce: hello.nonce.clone() })
    }

    /// The Welcome's proof for a greeted dialer.
    pub fn proof(&self, greeted: &Greeted) -> Vec<u8> {
        self.mac(ACCEPTOR_ROLE, greeted).finalize().into_bytes().to_vec()
    }

    pub fn on_auth(&self, greeted: &Greeted, auth: &proto::Auth) -> Result<(), HandshakeError> {
        self.mac(DIALER_ROLE, greeted)
            .verify_slice(&auth.proof)
            .map_err(|_| HandshakeError::BadProof(greeted.peer.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RegionName {
        RegionName::new(s).expect("valid")
    }

    fn pair(dialer_secret: &str, acceptor_secret: &str) -> (Dialer, Acceptor) {
        (
            Dialer {
                cluster: "demo".into(),
                local: r("us-west"),
                peer: r("eu-central"),
                secret: dialer_secret.into(),
                nonce: [1; NONCE_LEN],
                policy_digest: "default=timestamp".into(),
            },
            Acceptor {
                cluster: "demo".into(),
                local: r("eu-central"),
                secret: acceptor_secret.into(),
                nonce: [2; NONCE_LEN],
                policy_digest: "default=timestamp".into(),
            },
        )
    }

    fn welcome(a: &Acceptor, g: &Greeted, wall_ms: u64) -> proto::Welcome {
        proto::Welcome {
            region: a.local.to_string(),
            nonce: a.nonce.to_vec(),
            proof: a.proof(g),
            wall_ms,
            applied: vec![],
            direct_origins: vec![],
        }
    }

    #[test]
    fn matching_secrets_complete_and_measure_rtt_and_skew() {
        let (d, a) = pair("s3cret", "s3cret");
        let g = a.on_hello(&d.hello(1_000), |_| true).expect("hello");
        // Sent at 1000, answered at 1100 by a clock 30 ms ahead, received at 1200.
        let (auth, est) = d.on_welcome(&welcome(&a, &g, 1_130), 1_000, 1_200).expect("welcome");
        assert_eq!(est, Established { rtt_ms: 200, skew_ms: 30 });
        a.on_auth(&g, &auth).expect("auth");
    }

    #[test]
    fn wrong_secret_is_refused_on_both_sides() {
        let (d, a) = pair("right", "wrong");
        let g = a.on_hello(&d.hello(0), |_| true).expect("hello carries no secret");
        assert_eq!(
            d.on_welcome(&welcome(&a, &g, 0), 0, 0).expect_err("dialer refuses"),
            HandshakeError::BadProof("eu-central".into())
        );
        let forged = proto::Auth { proof: vec![0; 32] };
        assert!(matches!(a.on_auth(&g, &forged), Err(HandshakeError::BadProof(_))));
    }

    #[test]
    fn hello_checks_protocol_cluster_target_and_membership() {
        let (d, a) = pair("s", "s");
        let mut h = d.hello(0);
        h.protocol_version = 99;
        assert!(matches!(a.on_hello(&h, |_| true), Err(HandshakeError::ProtocolMismatch { theirs: 99, .. })));
        let mut h = d.hello(0);
        h.cluster = "other".into();
        assert!(matches!(a.on_hello(&h, |_| true), Err(HandshakeError::ClusterMismatch { .. })));
        let mut h = d.hello(0);
        h.policy_digest = "default=timestamp;inventory=custom:abc".into();
        assert!(matches!(a.on_hello(&h, |_| true), Err(HandshakeError::PolicyMismatch { .. })));
        let mut h = d.hello(0);
        h.target_region = "ap-northeast".into();
        assert!(matches!(a.on_hello(&h, |_| true), Err(HandshakeError::UnexpectedRegion { .. })));
        assert!(matches!(a.on_hello(&d.hello(0), |_| false), Err(HandshakeError::UnknownRegion(_))));
    }
}
