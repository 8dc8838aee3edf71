//! Where MRR reads bytes it did not write, as functions of raw bytes: the bodies of the fuzz
//! targets in `fuzz/` (cargo-fuzz, libFuzzer, nightly) and what this crate's test replays from
//! the committed corpus (`fuzz/corpus/<target>/`) on stable in every gate run.
//!
//! Each function must return whatever the bytes: a panic, an overflow, a hang or an
//! allocation past the decoders' limits is a finding. Beyond not failing, an input a decoder
//! accepts must survive the way back (encode, decode again, the same value).
//!
//! Not here: any logic of its own. These call the real decoders and validators.

use std::path::Path;

use mrr_core::limits::Limits;
use mrr_core::RegionName;
use mrr_replication::handshake::{Acceptor, Dialer, NONCE_LEN};
use mrr_replication::proto::{self, to_acceptor, to_dialer};
use mrr_replication::wire;
use mrr_server::config::{Config, Purpose};
use prost::Message as _;
use serde_json::Value;

fn region(name: &str) -> RegionName {
    RegionName::new(name).unwrap_or_else(|e| unreachable!("a valid name: {e}"))
}

/// A batch as a peer sends it: protobuf bytes, its changes plain or zstd-compressed. A first
/// byte of 0 makes the rest the compressed changes themselves (so the fuzzer reaches the
/// decompressor without first finding protobuf framing).
pub fn peer_batch(data: &[u8]) {
    let batch = match data.split_first() {
        Some((0, zstd)) => proto::Batch { zstd_changes: zstd.to_vec(), ..Default::default() },
        _ => match proto::Batch::decode(data) {
            Ok(b) => b,
            Err(_) => return,
        },
    };
    changes(batch);
}

fn changes(mut batch: proto::Batch) {
    let _ = wire::vv_from_wire(batch.sender_durable.clone());
    let proving: Vec<_> = std::mem::take(&mut batch.proving).into_iter().filter_map(accepted).collect();
    let Ok(changes) = wire::batch_changes(batch) else { return };
    let changes: Vec<_> = changes.into_iter().filter_map(accepted).collect();
    // The relayed-range check runs on whatever decoded, as an acceptor runs it (without
    // certificates: the chains only); it refuses or passes, never fails otherwise.
    let sealer = mrr_core::Sealer::new("mrr", "0123456789abcdef0123");
    let _ = mrr_core::provenance::verify_relayed(&region("us-west"), &proving, &changes, &sealer, None);
}

/// A change the wire accepts, which must survive re-encoding.
fn accepted(c: proto::Change) -> Option<mrr_core::Change> {
    let change = wire::change_from_wire(c).ok()?;
    let again = wire::change_from_wire(wire::change_to_wire(&change));
    assert_eq!(again.as_ref(), Ok(&change), "an accepted change must survive re-encoding");
    Some(change)
}

/// Whatever reaches either side of the peer handshake, and what follows it on the stream:
/// `ToAcceptor` (Hello, Auth, Batch, Heartbeat) at an acceptor, `ToDialer` (Challenge, Welcome,
/// Ack) at a dialer. A forged Auth or Welcome must never pass.
pub fn handshake(data: &[u8]) {
    let (tokyo, sf) = (region("ap-northeast"), region("us-west"));
    let acceptor = Acceptor {
        cluster: "mrr".into(),
        local: tokyo.clone(),
        secrets: std::sync::Arc::new(mrr_replication::secrets::Secrets::one("0123456789abcdef0123")),
        nonce: [7; NONCE_LEN],
        policy_digest: "p".into(),
    };
    let dialer = Dialer {
        cluster: "mrr".into(),
        local: sf.clone(),
        peer: tokyo.clone(),
        secret: "0123456789abcdef0123".into(),
        nonce: [9; NONCE_LEN],
        policy_digest: "p".into(),
        incarnation: Some(0),
    };
    if let Ok(m) = proto::ToAcceptor::decode(data) {
        match m.msg {
            Some(to_acceptor::Msg::Hello(hello)) => {
                let _ = acceptor.on_hello(&hello, |r| r == &sf);
            }
            Some(to_acceptor::Msg::Auth(auth)) => {
                let greeted = acceptor.on_hello(&dialer.hello(), |r| r == &sf).expect("the dialer's own Hello passes");
                assert!(acceptor.on_auth(&greeted, &auth).is_err(), "a forged Auth passed: {auth:?}");
            }
            Some(to_acceptor::Msg::Batch(batch)) => changes(batch),
            Some(to_acceptor::Msg::Heartbeat(_)) | None => {}
        }
    }
    if let Ok(m) = proto::ToDialer::decode(data) {
        match m.msg {
            Some(to_dialer::Msg::Challenge(challenge)) => {
                let _ = dialer.on_challenge(&challenge);
            }
            Some(to_dialer::Msg::Welcome(welcome)) => {
                let (_, challenged) = dialer.on_challenge(&acceptor.challenge()).expect("the acceptor's own Challenge");
                assert!(
                    dialer.on_welcome(&challenged, &welcome, 0, u64::MAX).is_err(),
                    "a forged Welcome passed: {welcome:?}"
                );
            }
            Some(to_dialer::Msg::Ack(ack)) => {
                let _ = wire::vv_from_wire(ack.applied);
                let _ = wire::regions_from_wire(ack.direct_origins);
            }
            None => {}
        }
    }
}

/// A config file, read as a node (its region given and not) and as a cluster layout. The file
/// sits in a directory that does not exist, so the scripts and secret files it names resolve
/// there unless absolute.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("/nonexistent-mrr-fuzz/mrr-config.yaml");
    let _ = Config::parse_for(path, text, Purpose::Cluster);
    let _ = Config::parse_for(path, text, Purpose::Node { region: None });
    let _ = Config::parse_for(path, text, Purpose::Node { region: Some(region("us-west")) });
}

/// A request body, as every parser of the API reads it: a record to put or publish, CRDT
/// operations, an atomic update's condition, and the short strings that come in headers and
/// query strings (a session token, a key's topic pattern).
pub fn request_json(data: &[u8]) {
    let limits = Limits::default();
    let regions = [region("ap-northeast"), region("us-west")];
    let _ = mrr_server::request::parse_put(&limits, &regions, "users", None, data);
    let _ = mrr_server::request::parse_put(&limits, &regions, "users", Some("u001"), data);
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        let _ = mrr_server::request::parse_ops(&limits, value.clone());
        let _ = mrr_core::strong::Condition::parse(&value);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mrr_core::session_token::SessionToken::parse(text);
        let _ = mrr_server::access::TopicPattern::parse(text);
    }
}

/// A target: bytes in, a panic on a finding.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus replay.
pub const TARGETS: [(&str, Target); 4] =
    [("peer_batch", peer_batch), ("handshake", handshake), ("config", config), ("request_json", request_json)];

/// Well-formed inputs of each target, (target, file name, bytes): the corpus starts from them
/// so the fuzzers begin past the framing.
///
/// (`relayed.bin` is a range us-west relays of eu-central's stream, stamped as its writer
/// stamps it, anchored at a checkpoint: it passes `verify_relayed`.) `fuzz/corpus` holds them; the `write_seeds` test
/// (ignored) writes them again.
fn relayed_range() -> proto::Batch {
    use mrr_core::provenance::Stamper;
    let eu = region("eu-central");
    let sealer = mrr_core::Sealer::new("mrr", "0123456789abcdef0123");
    let mut stamper = Stamper::default();
    let mut log = Vec::new();
    for group in [[1, 2], [3, 4]] {
        let mut g: Vec<mrr_core::Change> = group
            .iter()
            .map(|&seq| mrr_core::Change {
                origin: eu.clone(),
                lane: mrr_core::Lane::Normal,
                seq,
                key: mrr_core::Key::new("users", format!("u{seq}")),
                op: mrr_core::Op::Put { value: br#"{"p":1}"#.to_vec() },
                metadata: Default::default(),
                version: mrr_core::Version { ts: mrr_core::Timestamp::new(1_000 + seq, 0), region: eu.clone() },
                deps: Default::default(),
                replay_of: None,
                moves: seq == 1,
                carried: Vec::new(),
                proof: Default::default(),
            })
            .collect();
        stamper.stamp(&eu, &mut g, &sealer, None);
        stamper.committed(&eu, &g);
        log.extend(g);
    }
    let anchor = mrr_core::placement::to_marker(&log[1], &sealer);
    let proof = wire::BatchProof { proving: vec![wire::change_to_wire(&anchor)], certificates: Vec::new() };
    wire::batch_to_wire(log[2..].iter().map(wire::change_to_wire).collect(), 1, Vec::new(), proof)
}

pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let change = |seq: u64, payload: usize| proto::Change {
        origin: "us-west".into(),
        seq,
        topic: "users".into(),
        id: format!("u{seq}"),
        value: Some(format!("{{\"p\":\"{}\"}}", "x".repeat(payload)).into_bytes()),
        version_region: "us-west".into(),
        deps: vec![proto::VvEntry { origin: "ap-northeast".into(), seq: 3, ..Default::default() }],
        ..Default::default()
    };
    let plain = wire::batch_to_wire((1..=3).map(|s| change(s, 10)).collect(), 1, Vec::new(), Default::default());
    let zstd = wire::batch_to_wire((1..=200).map(|s| change(s, 100)).collect(), 1, Vec::new(), Default::default());
    let mut raw_zstd = vec![0];
    raw_zstd.extend_from_slice(&zstd.zstd_changes);
    let relayed = relayed_range().encode_to_vec();
    let dialer = Dialer {
        cluster: "mrr".into(),
        local: region("us-west"),
        peer: region("ap-northeast"),
        secret: "0123456789abcdef0123".into(),
        nonce: [9; NONCE_LEN],
        policy_digest: "p".into(),
        incarnation: Some(0),
    };
    let to_acceptor = |msg| proto::ToAcceptor { msg: Some(msg) }.encode_to_vec();
    let to_dialer = |msg| proto::ToDialer { msg: Some(msg) }.encode_to_vec();
    vec![
        ("peer_batch", "plain.bin", plain.encode_to_vec()),
        ("peer_batch", "zstd.bin", zstd.encode_to_vec()),
        ("peer_batch", "raw_zstd_changes.bin", raw_zstd),
        ("peer_batch", "relayed.bin", relayed),
        ("handshake", "hello.bin", to_acceptor(to_acceptor::Msg::Hello(dialer.hello()))),
        (
            "handshake",
            "auth.bin",
            to_acceptor(to_acceptor::Msg::Auth(proto::Auth { proof: vec![1; 32], policy_digest: "p".into() })),
        ),
        (
            "handshake",
            "challenge.bin",
            to_dialer(to_dialer::Msg::Challenge(proto::Challenge { nonce: vec![7; NONCE_LEN] })),
        ),
        ("handshake", "batch.bin", to_acceptor(to_acceptor::Msg::Batch(plain))),
        (
            "handshake",
            "welcome.bin",
            to_dialer(to_dialer::Msg::Welcome(proto::Welcome {
                region: "ap-northeast".into(),
                proof: vec![2; 32],
                ..Default::default()
            })),
        ),
        (
            "handshake",
            "ack.bin",
            to_dialer(to_dialer::Msg::Ack(proto::Ack {
                applied: vec![proto::VvEntry { origin: "us-west".into(), seq: 9, ..Default::default() }],
                direct_origins: vec!["us-west".into()],
                ..Default::default()
            })),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relayed_seed_is_a_range_that_verifies() {
        let batch = relayed_range();
        let proving: Vec<_> = batch.proving.clone().into_iter().filter_map(accepted).collect();
        let changes: Vec<_> = wire::batch_changes(batch).expect("changes").into_iter().filter_map(accepted).collect();
        let sealer = mrr_core::Sealer::new("mrr", "0123456789abcdef0123");
        assert_eq!((proving.len(), changes.len()), (1, 2));
        mrr_core::provenance::verify_relayed(&region("us-west"), &proving, &changes, &sealer, None).expect("verifies");
    }
}
