//! The peer handshake, sans-IO: building and checking Hello, Challenge, Auth and Welcome.
//!
//! Both sides prove knowledge of the cluster secret without sending it: each answers the
//! other's fresh nonce with an HMAC bound to both nonces, the cluster and both region names, so a
//! proof cannot be replayed on another connection or another pair of regions.
//!
//! The dialer proves itself first. Before the dialer's proof has checked out, the acceptor sends
//! only a fresh nonce (Challenge): not its proof, its clock, what it has applied, its cluster
//! name or its topic policies. Anyone can open a TCP connection to a peer port; only a holder of
//! the secret learns anything there. An error that goes back to an unproved dialer names only
//! what the dialer itself sent. (Confidentiality on the wire is TLS's job, not this handshake's;
//! with mutual TLS the dialer has also proved its region with its certificate before its Hello
//! is read.)
//!
//! This module does no IO and reads no clock: the runtime passes send and receive times in.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::proto;
use crate::PROTOCOL_VERSION;
use mrr_core::RegionName;

type HmacSha256 = Hmac<Sha256>;

pub const NONCE_LEN: usize = 16;

/// Why a handshake failed. Each names what to fix. The messages name only what the side that
/// reads them already knows: `ClusterMismatch` names the dialer's cluster, never the acceptor's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("peer belongs to cluster {theirs:?}, which is not this node's: check `cluster` in both configs")]
    ClusterMismatch { theirs: String },
    #[error("peer speaks protocol version {theirs}, this node speaks {ours}: run the same MRR release on both")]
    ProtocolMismatch { ours: u32, theirs: u32 },
    #[error("peer says it is region {theirs:?}, expected {expected:?}: check the regions list and endpoints")]
    UnexpectedRegion { expected: String, theirs: String },
    #[error("this node is not region {0:?}: check the endpoint configured for that region")]
    NotTarget(String),
    #[error("region {0:?} is not a member of this cluster as this node knows it: add it with `mrr region add` at a member (or check the regions lists)")]
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

fn nonce_of(bytes: &[u8]) -> Result<[u8; NONCE_LEN], HandshakeError> {
    <[u8; NONCE_LEN]>::try_from(bytes)
        .map_err(|_| HandshakeError::Malformed(format!("nonce of {} bytes, want {NONCE_LEN}", bytes.len())))
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
    /// The membership incarnation this region's data directory was admitted under; `None`
    /// while an empty directory asks where it stands.
    pub incarnation: Option<u64>,
}

/// A dialer that has answered the acceptor's Challenge and waits for its Welcome.
#[derive(Debug, Clone)]
pub struct Challenged {
    acceptor_nonce: [u8; NONCE_LEN],
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

    pub fn hello(&self) -> proto::Hello {
        proto::Hello {
            cluster: self.cluster.clone(),
            protocol_version: PROTOCOL_VERSION,
            region: self.local.to_string(),
            target_region: self.peer.to_string(),
            nonce: self.nonce.to_vec(),
            incarnation: self.incarnation,
        }
    }

    /// Answers the acceptor's nonce with this dialer's proof.
    pub fn on_challenge(&self, challenge: &proto::Challenge) -> Result<(proto::Auth, Challenged), HandshakeError> {
        let acceptor_nonce = nonce_of(&challenge.nonce)?;
        let auth = proto::Auth {
            proof: self.mac(DIALER_ROLE, &acceptor_nonce).finalize().into_bytes().to_vec(),
            policy_digest: self.policy_digest.clone(),
        };
        Ok((auth, Challenged { acceptor_nonce }))
    }

    /// Checks the acceptor's identity and proof. `sent_ms` is when the Auth left, `received_ms`
    /// when the Welcome arrived: the acceptor answers the one with the other at once.
    pub fn on_welcome(
        &self,
        challenged: &Challenged,
        welcome: &proto::Welcome,
        sent_ms: u64,
        received_ms: u64,
    ) -> Result<Established, HandshakeError> {
        if welcome.region != self.peer.as_str() {
            return Err(HandshakeError::UnexpectedRegion {
                expected: self.peer.to_string(),
                theirs: welcome.region.clone(),
            });
        }
        self.mac(ACCEPTOR_ROLE, &challenged.acceptor_nonce)
            .verify_slice(&welcome.proof)
            .map_err(|_| HandshakeError::BadProof(self.peer.to_string()))?;
        let rtt_ms = received_ms.saturating_sub(sent_ms);
        let midpoint_ms = sent_ms + rtt_ms / 2;
        let skew_ms =
            i64::try_from(welcome.wall_ms).unwrap_or(i64::MAX) - i64::try_from(midpoint_ms).unwrap_or(i64::MAX);
        Ok(Established { rtt_ms, skew_ms })
    }
}

/// The acceptor's side.
#[derive(Debug, Clone)]
pub struct Acceptor {
    pub cluster: String,
    pub local: RegionName,
    /// A dialer may prove itself with any of them; the Welcome proves with the one it used.
    pub secrets: std::sync::Arc<crate::secrets::Secrets>,
    pub nonce: [u8; NONCE_LEN],
    pub policy_digest: String,
}

/// A Hello that passed the acceptor's checks: who the dialer claims to be, not yet proved.
#[derive(Debug, Clone)]
pub struct Greeted {
    pub peer: RegionName,
    pub dialer_nonce: [u8; NONCE_LEN],
    /// The cluster the dialer named, to tell a wrong cluster from a wrong secret.
    pub cluster: String,
    /// The incarnation the dialer's data directory claims ([`Dialer::incarnation`]).
    pub incarnation: Option<u64>,
}

impl Acceptor {
    /// The MAC of this connection for `role` under `secret`: the same bytes the dialer computes.
    fn mac(&self, secret: &str, role: &[u8], greeted: &Greeted) -> HmacSha256 {
        proof(
            secret,
            role,
            &greeted.dialer_nonce,
            &self.nonce,
            &self.cluster,
            greeted.peer.as_str(),
            self.local.as_str(),
        )
    }

    /// Checks what a Hello claims, before any proof. Its errors name only what the dialer sent.
    pub fn on_hello(
        &self,
        hello: &proto::Hello,
        known: impl Fn(&RegionName) -> bool,
    ) -> Result<Greeted, HandshakeError> {
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(HandshakeError::ProtocolMismatch { ours: PROTOCOL_VERSION, theirs: hello.protocol_version });
        }
        if hello.target_region != self.local.as_str() {
            return Err(HandshakeError::NotTarget(hello.target_region.clone()));
        }
        let peer = RegionName::new(hello.region.clone()).map_err(|e| HandshakeError::Malformed(e.to_string()))?;
        if peer == self.local || !known(&peer) {
            return Err(HandshakeError::UnknownRegion(hello.region.clone()));
        }
        let dialer_nonce = nonce_of(&hello.nonce)?;
        Ok(Greeted { peer, dialer_nonce, cluster: hello.cluster.clone(), incarnation: hello.incarnation })
    }

    /// All the acceptor says before the dialer's proof.
    pub fn challenge(&self) -> proto::Challenge {
        proto::Challenge { nonce: self.nonce.to_vec() }
    }

    /// Checks the dialer's proof (made with any accepted secret), then its topic policies
    /// (only a proved dialer learns that they differ, and how). Returns the Welcome's proof,
    /// made with the secret the dialer used.
    pub fn on_auth(&self, greeted: &Greeted, auth: &proto::Auth) -> Result<Vec<u8>, HandshakeError> {
        if greeted.cluster != self.cluster {
            return Err(HandshakeError::ClusterMismatch { theirs: greeted.cluster.clone() });
        }
        let secret = self
            .secrets
            .all()
            .find(|secret| self.mac(secret, DIALER_ROLE, greeted).verify_slice(&auth.proof).is_ok())
            .ok_or_else(|| HandshakeError::BadProof(greeted.peer.to_string()))?;
        if auth.policy_digest != self.policy_digest {
            return Err(HandshakeError::PolicyMismatch {
                ours: self.policy_digest.clone(),
                theirs: auth.policy_digest.clone(),
            });
        }
        Ok(self.mac(secret, ACCEPTOR_ROLE, greeted).finalize().into_bytes().to_vec())
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
                incarnation: Some(0),
            },
            Acceptor {
                cluster: "demo".into(),
                local: r("eu-central"),
                secrets: std::sync::Arc::new(crate::secrets::Secrets::one(acceptor_secret)),
                nonce: [2; NONCE_LEN],
                policy_digest: "default=timestamp".into(),
            },
        )
    }

    fn welcome(a: &Acceptor, proof: Vec<u8>, wall_ms: u64) -> proto::Welcome {
        proto::Welcome {
            region: a.local.to_string(),
            proof,
            wall_ms,
            applied: vec![],
            direct_origins: vec![],
            log_floors: vec![],
            stable: vec![],
            incarnation: 0,
        }
    }

    #[test]
    fn matching_secrets_complete_and_measure_rtt_and_skew() {
        let (d, a) = pair("s3cret", "s3cret");
        let g = a.on_hello(&d.hello(), |_| true).expect("hello");
        let (auth, c) = d.on_challenge(&a.challenge()).expect("challenge");
        let proof = a.on_auth(&g, &auth).expect("auth");
        // Auth sent at 1000, answered at 1100 by a clock 30 ms ahead, Welcome received at 1200.
        let est = d.on_welcome(&c, &welcome(&a, proof, 1_130), 1_000, 1_200).expect("welcome");
        assert_eq!(est, Established { rtt_ms: 200, skew_ms: 30 });
    }

    #[test]
    fn during_a_rotation_either_secret_proves_and_the_welcome_answers_in_kind() {
        for dialer_secret in ["old-secret", "new-secret"] {
            let (d, mut a) = pair(dialer_secret, "unused");
            a.secrets = std::sync::Arc::new(crate::secrets::Secrets {
                current: "new-secret".into(),
                accepted: vec!["old-secret".into()],
            });
            let g = a.on_hello(&d.hello(), |_| true).expect("hello");
            let (auth, c) = d.on_challenge(&a.challenge()).expect("challenge");
            let proof = a.on_auth(&g, &auth).unwrap_or_else(|e| panic!("{dialer_secret}: {e}"));
            d.on_welcome(&c, &welcome(&a, proof, 0), 0, 0).unwrap_or_else(|e| panic!("{dialer_secret}: {e}"));
        }
        let (d, mut a) = pair("retired-secret", "unused");
        a.secrets = std::sync::Arc::new(crate::secrets::Secrets {
            current: "new-secret".into(),
            accepted: vec!["old-secret".into()],
        });
        let g = a.on_hello(&d.hello(), |_| true).expect("hello");
        let (auth, _) = d.on_challenge(&a.challenge()).expect("challenge");
        assert!(matches!(a.on_auth(&g, &auth), Err(HandshakeError::BadProof(_))), "a secret no longer accepted");
    }

    #[test]
    fn the_acceptor_says_nothing_but_a_nonce_before_the_dialer_proves_itself() {
        let (d, a) = pair("s3cret", "s3cret");
        a.on_hello(&d.hello(), |_| true).expect("hello");
        assert_eq!(a.challenge(), proto::Challenge { nonce: vec![2; NONCE_LEN] });
    }

    #[test]
    fn wrong_secret_is_refused_on_both_sides() {
        let (d, a) = pair("right", "wrong");
        let g = a.on_hello(&d.hello(), |_| true).expect("hello carries no secret");
        let (auth, c) = d.on_challenge(&a.challenge()).expect("challenge");
        assert_eq!(a.on_auth(&g, &auth).expect_err("acceptor refuses"), HandshakeError::BadProof("us-west".into()));
        // A dialer talking to an acceptor with another secret refuses its Welcome too.
        let acceptor_proof =
            proof("wrong", ACCEPTOR_ROLE, &g.dialer_nonce, &a.nonce, &a.cluster, g.peer.as_str(), a.local.as_str());
        assert_eq!(
            d.on_welcome(&c, &welcome(&a, acceptor_proof.finalize().into_bytes().to_vec(), 0), 0, 0)
                .expect_err("dialer refuses"),
            HandshakeError::BadProof("eu-central".into())
        );
        let forged = proto::Auth { proof: vec![0; 32], policy_digest: a.policy_digest.clone() };
        assert!(matches!(a.on_auth(&g, &forged), Err(HandshakeError::BadProof(_))));
    }

    #[test]
    fn hello_checks_protocol_target_nonce_and_membership() {
        let (d, a) = pair("s", "s");
        let mut h = d.hello();
        h.protocol_version = 99;
        assert!(matches!(a.on_hello(&h, |_| true), Err(HandshakeError::ProtocolMismatch { theirs: 99, .. })));
        let mut h = d.hello();
        h.target_region = "ap-northeast".into();
        assert_eq!(a.on_hello(&h, |_| true).expect_err("not me"), HandshakeError::NotTarget("ap-northeast".into()));
        let mut h = d.hello();
        h.nonce = vec![1; 3];
        assert!(matches!(a.on_hello(&h, |_| true), Err(HandshakeError::Malformed(_))));
        assert!(matches!(a.on_hello(&d.hello(), |_| false), Err(HandshakeError::UnknownRegion(_))));
    }

    #[test]
    fn another_cluster_is_named_by_its_own_name_only_and_policies_are_checked_after_the_proof() {
        let (mut d, a) = pair("s", "s");
        d.cluster = "other".into();
        let g = a.on_hello(&d.hello(), |_| true).expect("the cluster is checked with the proof");
        let (auth, _) = d.on_challenge(&a.challenge()).expect("challenge");
        let e = a.on_auth(&g, &auth).expect_err("other cluster");
        assert!(!e.to_string().contains("demo"), "the acceptor's cluster stays unsaid: {e}");

        let (mut d, a) = pair("s", "s");
        d.policy_digest = "default=merge".into();
        let g = a.on_hello(&d.hello(), |_| true).expect("hello");
        let (auth, _) = d.on_challenge(&a.challenge()).expect("challenge");
        assert!(matches!(a.on_auth(&g, &auth), Err(HandshakeError::PolicyMismatch { .. })));
        let forged = proto::Auth { proof: vec![0; 32], policy_digest: "default=merge".into() };
        assert!(
            matches!(a.on_auth(&g, &forged), Err(HandshakeError::BadProof(_))),
            "an unproved dialer learns nothing about the acceptor's policies"
        );
    }
}
