//! Session tokens: what a client has written, so that a read in any region can wait until that
//! region holds it (read-your-writes, cluster-wide).
//!
//! A token is a version vector over the streams the client's writes went to: for each stream,
//! the highest sequence number among them. A region holds every write the token names once its
//! applied vector dominates the token's and none of the records read lists one of those writes
//! as `lacking` (admitted, content still on its way). Like Cosmos DB's session token it names a
//! prefix per stream, so a read may also wait for other clients' earlier writes in the same
//! stream; unlike it, one token is valid in every region, and two tokens merge by taking the
//! larger entry of each stream (a client that wrote in Tokyo and Frankfurt carries one token).
//!
//! The text form is `1/<cluster id>/<stream>:<seq>,<stream>:<seq>` (the cluster id is 8 hex
//! digits of the cluster name's FNV-1a), short enough for a header and safe in a query string.
//! A token of another cluster is refused, not ignored: waiting on it would wait for nothing.
//!
//! Not here: waiting for a token (the server), HTTP.

use std::fmt::Write as _;

use crate::lane::Stream;
use crate::vv::VersionVector;
use crate::ChangeId;

/// Streams one token may name: every region's three lanes and the strong stream, with room.
pub const TOKEN_STREAMS_MAX: usize = 256;
/// Bytes of a token's text form at most.
pub const TOKEN_BYTES_MAX: usize = 8_192;

const VERSION: &str = "1";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionToken {
    cluster: u32,
    writes: VersionVector,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("session token does not decode: {0}")]
    Malformed(String),
    #[error("session token belongs to another cluster (id {found:08x}, this cluster is {expected:08x})")]
    OtherCluster { found: u32, expected: u32 },
    #[error("session token names more than {TOKEN_STREAMS_MAX} streams or exceeds {TOKEN_BYTES_MAX} bytes")]
    TooLarge,
}

/// The id a cluster's tokens carry.
pub fn cluster_id(cluster: &str) -> u32 {
    // The low half of the 64-bit hash: enough to tell clusters apart, not a secret.
    (crate::strong::fnv1a(cluster.as_bytes()) & 0xffff_ffff) as u32
}

impl SessionToken {
    /// A token of `cluster` naming no writes.
    pub fn new(cluster: &str) -> Self {
        Self { cluster: cluster_id(cluster), writes: VersionVector::new() }
    }

    /// Adds a write.
    pub fn record(&mut self, id: &ChangeId) {
        self.writes.raise(&id.stream(), id.seq);
    }

    /// Takes in every write `other` names (the larger entry of each stream).
    pub fn merge(&mut self, other: &SessionToken) {
        self.writes.join(&other.writes);
    }

    /// Per stream, the highest sequence number among the writes named.
    pub fn writes(&self) -> &VersionVector {
        &self.writes
    }

    pub fn is_empty(&self) -> bool {
        self.writes.iter().next().is_none()
    }

    /// Whether `id` is one of the writes this token waits for.
    pub fn names(&self, id: &ChangeId) -> bool {
        id.seen_by(&self.writes)
    }

    /// The streams `applied` does not yet cover: `(stream, applied there, needed)`.
    pub fn missing(&self, applied: &VersionVector) -> Vec<(Stream, u64, u64)> {
        self.writes
            .iter()
            .filter(|(s, need)| applied.get(s) < *need)
            .map(|(s, need)| (s.clone(), applied.get(s), need))
            .collect()
    }

    pub fn encode(&self) -> String {
        let mut out = format!("{VERSION}/{:08x}/", self.cluster);
        for (i, (stream, seq)) in self.writes.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // Writing to a String cannot fail.
            let _ = write!(out, "{stream}:{seq}");
        }
        out
    }

    /// Decodes a token and checks it belongs to `cluster`.
    pub fn decode(text: &str, cluster: &str) -> Result<Self, TokenError> {
        let token = Self::parse(text)?;
        let expected = cluster_id(cluster);
        if token.cluster != expected {
            return Err(TokenError::OtherCluster { found: token.cluster, expected });
        }
        Ok(token)
    }

    /// The id of the cluster the token belongs to.
    pub fn cluster(&self) -> u32 {
        self.cluster
    }

    /// Decodes a token of any cluster (a client, which knows no cluster name, merging the
    /// tokens its answers carried).
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        if text.len() > TOKEN_BYTES_MAX {
            return Err(TokenError::TooLarge);
        }
        let malformed = |why: &str| TokenError::Malformed(why.to_owned());
        let mut parts = text.splitn(3, '/');
        let (Some(version), Some(id), Some(entries)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed("expected 1/<cluster>/<stream>:<seq>,..."));
        };
        if version != VERSION {
            return Err(malformed("unknown version (expected 1)"));
        }
        if id.len() != 8 {
            return Err(malformed("the cluster id is 8 hex digits"));
        }
        let found = u32::from_str_radix(id, 16).map_err(|_| malformed("the cluster id is 8 hex digits"))?;
        let mut writes = VersionVector::new();
        if !entries.is_empty() {
            for (n, entry) in entries.split(',').enumerate() {
                if n >= TOKEN_STREAMS_MAX {
                    return Err(TokenError::TooLarge);
                }
                let (stream, seq) = entry.rsplit_once(':').ok_or_else(|| malformed("an entry is <stream>:<seq>"))?;
                let stream = Stream::parse(stream).ok_or_else(|| malformed("an entry names no valid stream"))?;
                let seq: u64 = seq.parse().map_err(|_| malformed("a sequence number is not a number"))?;
                if seq == 0 {
                    return Err(malformed("sequence numbers start at 1"));
                }
                writes.raise(&stream, seq);
            }
        }
        Ok(Self { cluster: found, writes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Lane, RegionName};

    fn id(origin: &str, lane: Lane, seq: u64) -> ChangeId {
        ChangeId { origin: RegionName::new(origin).expect("valid"), lane, seq }
    }

    #[test]
    fn a_token_round_trips_and_names_what_was_recorded() {
        let mut t = SessionToken::new("prod");
        t.record(&id("ap-northeast", Lane::Normal, 17));
        t.record(&id("ap-northeast", Lane::Normal, 12));
        t.record(&id("eu-central", Lane::Urgent, 3));
        let text = t.encode();
        assert!(text.starts_with("1/"), "{text}");
        assert!(text.ends_with("/ap-northeast:17,eu-central.urgent:3"), "{text}");
        let back = SessionToken::decode(&text, "prod").expect("decodes");
        assert_eq!(back, t);
        assert!(back.names(&id("ap-northeast", Lane::Normal, 17)));
        assert!(!back.names(&id("ap-northeast", Lane::Normal, 18)));
        assert!(!back.names(&id("ap-northeast", Lane::Urgent, 1)), "another lane is another stream");
    }

    #[test]
    fn tokens_from_two_regions_merge_entry_by_entry() {
        let mut tokyo = SessionToken::new("prod");
        tokyo.record(&id("ap-northeast", Lane::Normal, 5));
        tokyo.record(&id("eu-central", Lane::Normal, 2));
        let mut frankfurt = SessionToken::new("prod");
        frankfurt.record(&id("eu-central", Lane::Normal, 9));
        tokyo.merge(&frankfurt);
        assert!(tokyo.names(&id("ap-northeast", Lane::Normal, 5)));
        assert!(tokyo.names(&id("eu-central", Lane::Normal, 9)));
        let applied: VersionVector =
            [(Stream::new(RegionName::new("eu-central").expect("valid"), Lane::Normal), 4)].into_iter().collect();
        let missing = tokyo.missing(&applied);
        assert_eq!(missing.len(), 2);
        assert_eq!((missing[1].1, missing[1].2), (4, 9));
    }

    #[test]
    fn bad_tokens_are_refused_with_the_reason() {
        let t = SessionToken::new("prod").encode();
        assert!(matches!(SessionToken::decode(&t, "staging"), Err(TokenError::OtherCluster { .. })));
        let prefix = t.as_str(); // `1/<id>/`, naming nothing
        let other_version = t.replacen('1', "2", 1);
        let bad_entries = ["a", "a:x", "A_B:1", "us-west:0", "us-west.fast:1"].map(|e| format!("{prefix}{e}"));
        for bad in ["", "1", "1/xyz/", "1/0000000g/", other_version.as_str()]
            .into_iter()
            .chain(bad_entries.iter().map(String::as_str))
        {
            assert!(matches!(SessionToken::decode(bad, "prod"), Err(TokenError::Malformed(_))), "{bad:?}");
        }
        let many: Vec<String> = (0..300).map(|i| format!("r{i}:1")).collect();
        assert_eq!(SessionToken::decode(&format!("{prefix}{}", many.join(",")), "prod"), Err(TokenError::TooLarge));
        assert!(SessionToken::decode(&t, "prod").expect("an empty token is valid").is_empty());
    }
}
