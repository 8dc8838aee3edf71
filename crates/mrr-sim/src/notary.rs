//! The simulator's stand-in for region certificates: each region "signs" a checkpoint with a
//! keyed hash only it is meant to compute, and every region can check it. The provenance
//! logic it serves is the node's own ([`mrr_core::provenance`]); only the cryptography is
//! replaced, so that runs stay fast and deterministic. A forging relay
//! ([`crate::schedule::FaultEvent::Forge`]) never calls `sign` for another region: it can only
//! alter what it relays, which is what the checks must catch.

use mrr_core::provenance::{link, Digest, Notary};
use mrr_core::RegionName;

#[derive(Debug)]
pub struct SimNotary {
    region: RegionName,
}

impl SimNotary {
    pub fn new(region: RegionName) -> Self {
        Self { region }
    }
}

/// A region's stand-in certificate fingerprint and key.
fn identity(region: &RegionName) -> (Digest, Digest) {
    let name = link(&[1; 32], &link(&[0; 32], &pad(region.as_str().as_bytes())));
    (name, link(&name, &[2; 32]))
}

fn pad(bytes: &[u8]) -> Digest {
    let mut out = [0; 32];
    for (i, b) in bytes.iter().enumerate() {
        out[i % 32] ^= b.wrapping_add(i as u8);
    }
    out
}

fn mac(key: &Digest, message: &[u8]) -> Digest {
    message.chunks(32).fold(*key, |acc, chunk| link(&acc, &pad(chunk)))
}

impl Notary for SimNotary {
    fn sign(&self, message: &[u8]) -> Option<(Digest, Vec<u8>)> {
        let (name, key) = identity(&self.region);
        Some((name, mac(&key, message).to_vec()))
    }

    fn verify(
        &self,
        origin: &RegionName,
        signer: &Digest,
        message: &[u8],
        signature: &[u8],
        _: u64,
    ) -> Result<(), String> {
        let (name, key) = identity(origin);
        if signer != &name {
            return Err(format!("signed by another region than {origin}"));
        }
        if signature != mac(&key, message).as_slice() {
            return Err("the signature does not verify".into());
        }
        Ok(())
    }
}
