//! The node's [`Notary`]: signs the checkpoints of this region's streams with its certificate
//! key, and checks other regions' checkpoints against the cluster CA, with each signer's
//! certificate as the store keeps it ([`mrr_core::provenance`] says what is signed and why).
//!
//! Certificates travel with the batches that need them ([`CertificateBook`]): the first batch
//! of a stream naming a signer carries its certificate; the receiver keeps it once it verified
//! a signature (cluster CA, the origin's region name, valid when it signed), so that it can
//! relay those changes on with it, long after the origin's certificate was rotated.
//!
//! Not here: what a checkpoint covers (the core), the TLS handshake (the transports).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mrr_core::provenance::{Digest, Notary};
use mrr_core::{Change, RegionName};
use mrr_storage::Store;

use crate::PeerTls;

/// Signs as this region and verifies others, with the material in use (it follows the files).
pub struct CertNotary {
    tls: PeerTls,
    store: Arc<dyn Store>,
    /// Own certificates already in the store.
    stored: Mutex<BTreeSet<Digest>>,
}

impl std::fmt::Debug for CertNotary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertNotary").finish_non_exhaustive()
    }
}

impl CertNotary {
    pub fn new(tls: PeerTls, store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self { tls, store, stored: Mutex::new(BTreeSet::new()) })
    }

    fn verify_with(
        &self,
        der: &[u8],
        origin: &RegionName,
        message: &[u8],
        signature: &[u8],
        wall_ms: u64,
    ) -> Result<(), String> {
        let at = mrr_tls::UnixTime::since_unix_epoch(Duration::from_millis(wall_ms));
        self.tls.current().verify_signed(der, origin.as_str(), at, message, signature).map_err(|e| e.to_string())
    }

    /// This notary, also trusting to try the certificates a peer `offered` with a batch. One
    /// that verifies a signature is kept in the store (to relay the changes on with it);
    /// others are never stored, so a peer cannot fill the store with certificates.
    pub fn with_offered(&self, offered: Vec<Vec<u8>>) -> Offered<'_> {
        Offered { notary: self, offered: offered.into_iter().map(|der| (mrr_tls::fingerprint(&der), der)).collect() }
    }
}

impl Offered<'_> {
    /// Keeps the certificates `peer` offered for its own checkpoints in `changes` (which need
    /// no proof: mutual TLS binds the stream to `peer`), once one checkpoint of each verifies
    /// with it, so that this region can relay those changes on. A certificate that does not
    /// verify is logged and not kept; the changes still apply.
    pub fn keep_own(&self, peer: &RegionName, changes: &[Change]) {
        for signer in self.offered.keys() {
            let own = changes
                .iter()
                .filter(|c| &c.origin == peer)
                .find_map(|c| c.proof.checkpoint.as_ref().filter(|cp| &cp.signer == signer).map(|cp| (c, cp)));
            let Some((c, cp)) = own else { continue };
            if let Err(e) = mrr_core::provenance::verify_checkpoint(self, c, cp) {
                tracing::warn!(peer = %peer, change = %c.id(), error = %e, "not keeping the certificate a peer signs its checkpoints with: its changes cannot be relayed on from here");
            }
        }
    }
}

/// [`CertNotary`] with the certificates one batch carried.
#[derive(Debug)]
pub struct Offered<'a> {
    notary: &'a CertNotary,
    offered: std::collections::BTreeMap<Digest, Vec<u8>>,
}

impl Notary for Offered<'_> {
    fn sign(&self, message: &[u8]) -> Option<(Digest, Vec<u8>)> {
        self.notary.sign(message)
    }

    fn verify(
        &self,
        origin: &RegionName,
        signer: &Digest,
        message: &[u8],
        signature: &[u8],
        wall_ms: u64,
    ) -> Result<(), String> {
        match self.offered.get(signer) {
            None => self.notary.verify(origin, signer, message, signature, wall_ms),
            Some(der) => {
                self.notary.verify_with(der, origin, message, signature, wall_ms)?;
                self.notary
                    .store
                    .add_certificate(signer, der)
                    .map_err(|e| format!("keeping the signer's certificate: {e}"))
            }
        }
    }
}

impl Notary for CertNotary {
    fn sign(&self, message: &[u8]) -> Option<(Digest, Vec<u8>)> {
        let loaded = self.tls.current();
        match loaded.sign(message) {
            Ok((signer, signature)) => {
                let mut stored = self.stored.lock().unwrap_or_else(PoisonError::into_inner);
                if !stored.contains(&signer) {
                    match self.store.add_certificate(&signer, &loaded.cert) {
                        Ok(()) => {
                            stored.insert(signer);
                        }
                        // The checkpoint stays valid; only relaying it needs the certificate,
                        // and the next signature tries again.
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot keep this region's certificate for its checkpoints")
                        }
                    }
                }
                Some((signer, signature))
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot sign a checkpoint; relays of this region's changes will be refused until it can");
                None
            }
        }
    }

    fn verify(
        &self,
        origin: &RegionName,
        signer: &Digest,
        message: &[u8],
        signature: &[u8],
        wall_ms: u64,
    ) -> Result<(), String> {
        let der = self
            .store
            .certificate(signer)
            .map_err(|e| format!("reading the signer's certificate: {e}"))?
            .ok_or_else(|| "its signer's certificate was never sent".to_owned())?;
        self.verify_with(&der, origin, message, signature, wall_ms)
    }
}

/// The certificates one outbound stream has sent: each signer's goes once, with the first
/// batch that names it.
#[derive(Debug, Default)]
pub(crate) struct CertificateBook {
    sent: BTreeSet<Digest>,
}

impl CertificateBook {
    /// The certificates `changes` name that this stream has not sent yet, from `store`.
    pub fn unsent<'a>(&mut self, store: &dyn Store, changes: impl Iterator<Item = &'a Change>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for c in changes {
            let Some(cp) = &c.proof.checkpoint else { continue };
            if cp.signature.is_empty() || self.sent.contains(&cp.signer) {
                continue;
            }
            match store.certificate(&cp.signer) {
                Ok(Some(der)) => {
                    self.sent.insert(cp.signer);
                    out.push(der);
                }
                // The peer refuses the relayed range and names it; logged here once per stream.
                Ok(None) => {
                    self.sent.insert(cp.signer);
                    tracing::warn!(change = %c.id(), "no certificate kept for the signer of this checkpoint");
                }
                Err(e) => tracing::warn!(error = %e, "cannot read a checkpoint signer's certificate"),
            }
        }
        out
    }
}
