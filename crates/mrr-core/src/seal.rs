//! Sealed names: what a region outside a record's placement calls the record.
//!
//! Data residency asks that a region a record is not placed in hold nothing that names it. Yet
//! that region must still know the key's placement (to refuse or forward writes there, to answer
//! reads with `not_placed`, and to order moves), and its changelog must still carry the change's
//! stream and sequence (cursors, relays). It does so under the key's *sealed name*: the topic,
//! and an id made of `~` and 128 bits of HMAC-SHA256 of the topic and id under a key derived
//! from the cluster's placement secret. Every region computes the same sealed name from a key,
//! so a region that knows the key (it holds the record, or is asked about it) finds the sealed
//! entry; a sealed name cannot be turned back into the key without the secret, and `~` never
//! appears in a client's id, so no client key is ever mistaken for one.
//!
//! This module computes names; it does no IO and decides nothing about placement
//! ([`crate::placement`] does).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::record::Key;

type HmacSha256 = Hmac<Sha256>;

/// The first character of every sealed id (never in a client id: `limits::validate_id`).
pub const SEALED_ID_PREFIX: char = '~';
/// Hex digits after the prefix: 128 bits.
const SEALED_ID_HEX_LEN: usize = 32;

/// Computes sealed names. Cheap to clone.
#[derive(Clone)]
pub struct Sealer {
    key: [u8; 32],
}

/// Never print the key.
impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("fingerprint", &self.fingerprint()).finish()
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("hmac key of any length"));
    for part in parts {
        // Length-prefixed: no two different tuples hash alike.
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

impl Sealer {
    /// The sealer of a cluster whose placement secret is `secret`.
    pub fn new(cluster: &str, secret: &str) -> Self {
        Self { key: mac(secret.as_bytes(), &[b"mrr-seal-v1", cluster.as_bytes()]) }
    }

    /// The sealed name of `key`; a sealed name is its own.
    pub fn seal(&self, key: &Key) -> Key {
        if is_sealed(key) {
            return key.clone();
        }
        let digest = mac(&self.key, &[key.topic.as_bytes(), key.id.as_bytes()]);
        let mut id = String::with_capacity(1 + SEALED_ID_HEX_LEN);
        id.push(SEALED_ID_PREFIX);
        for b in &digest[..SEALED_ID_HEX_LEN / 2] {
            id.push_str(&format!("{b:02x}"));
        }
        Key { topic: key.topic.clone(), id }
    }

    /// An HMAC under this sealer's key for `domain`: digests that, like sealed names, only a
    /// holder of the placement secret can compute ([`crate::provenance::content_digest`]).
    pub(crate) fn keyed(&self, domain: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!("hmac key of any length"));
        mac.update(&(domain.len() as u64).to_be_bytes());
        mac.update(domain);
        mac
    }

    /// Names this sealer without revealing it: regions whose sealers differ would not find each
    /// other's sealed entries, so the handshake compares these.
    pub fn fingerprint(&self) -> String {
        mac(&self.key, &[b"fingerprint"])[..6].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Whether `key` is a sealed name.
pub fn is_sealed(key: &Key) -> bool {
    is_sealed_id(&key.id)
}

/// Whether `id` has the form of a sealed id: `~` and 32 lowercase hex digits.
pub fn is_sealed_id(id: &str) -> bool {
    id.len() == 1 + SEALED_ID_HEX_LEN
        && id.starts_with(SEALED_ID_PREFIX)
        && id[1..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_names_are_stable_distinct_and_never_a_client_id() {
        let s = Sealer::new("shop", "0123456789abcdef");
        let vip = Key::new("users", "vip1");
        let sealed = s.seal(&vip);
        assert_eq!(sealed, Sealer::new("shop", "0123456789abcdef").seal(&vip), "every region computes the same");
        assert_eq!(sealed.topic, "users");
        assert!(is_sealed(&sealed) && !sealed.id.contains("vip1"), "{sealed}");
        assert!(crate::limits::validate_id(&sealed.id).is_err(), "no client can write a sealed id");
        assert_eq!(s.seal(&sealed), sealed, "sealing is idempotent");
        assert_ne!(s.seal(&Key::new("users", "vip2")), sealed);
        assert_ne!(s.seal(&Key::new("orders", "vip1")).id, sealed.id, "the topic is part of the name");
        assert_ne!(Sealer::new("shop", "another-secret-01").seal(&vip), sealed, "keyed by the secret");
        assert_ne!(Sealer::new("shop", "another-secret-01").fingerprint(), s.fingerprint());
        assert!(!is_sealed_id("~ABC") && !is_sealed_id("vip1"));
    }
}
