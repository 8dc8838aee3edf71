//! Conversions between core types and the peer protocol, validating everything a peer sends:
//! a malformed change is a protocol error for the stream, never stored.

use std::collections::BTreeSet;

use mrr_core::limits::{validate_id, validate_topic};
use mrr_core::provenance::{Checkpoint, Digest, Proof};
use mrr_core::{
    Change, ChangeId, Doc, Key, Lane, Metadata, Op, RegionName, Replay, Stream, Timestamp, Version, VersionVector,
};

use crate::proto;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed message from peer: {0}")]
pub struct WireError(pub String);

fn region(s: &str) -> Result<RegionName, WireError> {
    RegionName::new(s).map_err(|e| WireError(e.to_string()))
}

fn lane(n: u32) -> Result<Lane, WireError> {
    Lane::from_wire(n).ok_or_else(|| WireError(format!("unknown lane {n}")))
}

/// A signature longer than this is not one (an RSA-4096 signature is 512 bytes).
const SIGNATURE_BYTES_MAX: usize = 1024;

fn digest(what: &str, bytes: &[u8]) -> Result<Digest, WireError> {
    bytes.try_into().map_err(|_| WireError(format!("{what} of {} bytes, want 32", bytes.len())))
}

pub fn change_to_wire(c: &Change) -> proto::Change {
    proto::Change {
        origin: c.origin.to_string(),
        lane: c.lane.to_wire(),
        seq: c.seq,
        topic: c.key.topic.clone(),
        id: c.key.id.clone(),
        value: match &c.op {
            Op::Put { value } => Some(value.clone()),
            _ => None,
        },
        marker: matches!(c.op, Op::Marker),
        moves: c.moves,
        carried: c.carried.iter().map(change_to_wire).collect(),
        content_digest: c.proof.content_digest.map(|d| d.to_vec()).unwrap_or_default(),
        checkpoint: c.proof.checkpoint.as_ref().map(|cp| proto::Checkpoint {
            link: cp.link.to_vec(),
            signer: cp.signer.to_vec(),
            signature: cp.signature.clone(),
        }),
        want: matches!(c.op, Op::Want { .. }),
        wanted: match &c.op {
            Op::Want { ids } => ids
                .iter()
                .map(|id| proto::ChangeRef { origin: id.origin.to_string(), lane: id.lane.to_wire(), seq: id.seq })
                .collect(),
            _ => Vec::new(),
        },
        transfer: matches!(c.op, Op::Transfer),
        history: matches!(c.op, Op::History),
        regions: c.metadata.regions.clone(),
        sync_flags: c.metadata.sync_flags.clone(),
        wall_ms: c.version.ts.wall_ms,
        logical: c.version.ts.logical,
        version_region: c.version.region.to_string(),
        deps: vv_to_wire(&c.deps),
        merge_delta: match &c.op {
            // Serialising plain data into a Vec cannot fail.
            Op::Merge { delta } => Some(postcard::to_stdvec(delta).unwrap_or_else(|e| unreachable!("postcard: {e}"))),
            _ => None,
        },
        replay_of: c.replay_of.as_ref().map(|r| proto::ReplayOf {
            origin: r.id.origin.to_string(),
            lane: r.id.lane.to_wire(),
            seq: r.id.seq,
            wall_ms: r.version.ts.wall_ms,
            logical: r.version.ts.logical,
            version_region: r.version.region.to_string(),
        }),
    }
}

/// Decodes a merge delta and checks every JSON text in it, so a bad peer cannot store values
/// a read would fail to show.
fn merge_delta(bytes: &[u8]) -> Result<Doc, WireError> {
    let doc: Doc = postcard::from_bytes(bytes).map_err(|e| WireError(format!("merge delta: {e}")))?;
    for (name, field) in &doc.fields {
        let texts = field.reg.iter().filter_map(|r| r.value.as_deref());
        let elems = field.set.iter().flat_map(|s| s.adds.keys().map(String::as_str));
        for t in texts.chain(elems) {
            serde_json::from_str::<serde::de::IgnoredAny>(t)
                .map_err(|e| WireError(format!("merge delta field {name:?} is not JSON: {e}")))?;
        }
    }
    Ok(doc)
}

pub fn change_from_wire(c: proto::Change) -> Result<Change, WireError> {
    validate_topic(&c.topic).map_err(|e| WireError(e.to_string()))?;
    // A sealed id names a record outside the receiver's placement: markers only (checked below).
    if !mrr_core::seal::is_sealed_id(&c.id) {
        validate_id(&c.id).map_err(|e| WireError(e.to_string()))?;
    }
    if c.seq == 0 {
        return Err(WireError("change seq 0: sequences start at 1".into()));
    }
    if let Some(v) = &c.value {
        // Values were validated as JSON objects at their origin; a peer must not bypass that.
        if !is_json_object(v) {
            return Err(WireError(format!("change {}:{} value is not a JSON object", c.origin, c.seq)));
        }
    }
    let change = Change {
        origin: region(&c.origin)?,
        lane: lane(c.lane)?,
        seq: c.seq,
        key: Key::new(c.topic, c.id),
        op: match (c.marker, c.want, c.transfer || c.history, c.value, c.merge_delta) {
            (false, false, false, Some(value), None) => Op::Put { value },
            (false, false, false, None, Some(delta)) => Op::Merge { delta: merge_delta(&delta)? },
            (false, false, false, None, None) => Op::Delete,
            (true, false, false, None, None) => Op::Marker,
            (false, false, true, None, None) if c.transfer && c.history => {
                return Err(WireError(format!("change {}:{} is both a transfer and a history piece", c.origin, c.seq)))
            }
            (false, false, true, None, None) if c.history => Op::History,
            (false, true, false, None, None) => Op::Want {
                ids: c
                    .wanted
                    .into_iter()
                    .map(|r| Ok(ChangeId { origin: region(&r.origin)?, lane: lane(r.lane)?, seq: r.seq }))
                    .collect::<Result<_, WireError>>()?,
            },
            (false, false, true, None, None) => Op::Transfer,
            (false, false, false, Some(_), Some(_)) => {
                return Err(WireError(format!("change {}:{} has a value and a merge delta", c.origin, c.seq)))
            }
            _ => {
                return Err(WireError(format!(
                    "change {}:{} is a marker, want or transfer with content, or more than one of them",
                    c.origin, c.seq
                )))
            }
        },
        moves: c.moves,
        carried: c.carried.into_iter().map(change_from_wire).collect::<Result<_, _>>()?,
        proof: Proof {
            content_digest: match c.content_digest.len() {
                0 => None,
                _ => Some(digest("content_digest", &c.content_digest)?),
            },
            checkpoint: match c.checkpoint {
                None => None,
                Some(cp) if cp.signature.len() > SIGNATURE_BYTES_MAX => {
                    return Err(WireError(format!("a checkpoint signature of {} bytes", cp.signature.len())))
                }
                Some(cp) => Some(Checkpoint {
                    link: digest("checkpoint link", &cp.link)?,
                    signer: digest("checkpoint signer", &cp.signer)?,
                    signature: cp.signature,
                }),
            },
        },
        metadata: Metadata { regions: c.regions, sync_flags: c.sync_flags },
        version: Version { ts: Timestamp::new(c.wall_ms, c.logical), region: region(&c.version_region)? },
        deps: vv_from_wire(c.deps)?,
        replay_of: match c.replay_of {
            Some(r) => Some(Replay {
                id: ChangeId { origin: region(&r.origin)?, lane: lane(r.lane)?, seq: r.seq },
                version: Version { ts: Timestamp::new(r.wall_ms, r.logical), region: region(&r.version_region)? },
            }),
            None => None,
        },
    };
    // Carried content belongs to the change's key and carries nothing further: a peer cannot
    // deliver content for another record, or nest without bound.
    if let Some(x) = change.carried.iter().find(|x| x.key != change.key || !x.carried.is_empty()) {
        return Err(WireError(format!(
            "change {}:{} carries {} of another key or with content of its own",
            change.origin,
            change.seq,
            x.id()
        )));
    }
    if change.proof.content_digest.is_some() && change.has_content() {
        return Err(WireError(format!(
            "change {}:{} has content and a content digest: only markers carry one",
            change.origin, change.seq
        )));
    }
    if mrr_core::seal::is_sealed(&change.key) && change.has_content() {
        return Err(WireError(format!(
            "change {}:{} has content under a sealed name: only markers are sealed",
            change.origin, change.seq
        )));
    }
    Ok(change)
}

/// Whether `bytes` is one JSON object, checked without building it (no allocation per field:
/// this runs for every replicated change).
fn is_json_object(bytes: &[u8]) -> bool {
    let starts_as_object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    starts_as_object && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

pub fn vv_to_wire(vv: &VersionVector) -> Vec<proto::VvEntry> {
    vv.iter().map(|(s, n)| proto::VvEntry { origin: s.origin.to_string(), seq: n, lane: s.lane.to_wire() }).collect()
}

pub fn vv_from_wire(entries: Vec<proto::VvEntry>) -> Result<VersionVector, WireError> {
    entries.into_iter().map(|e| Ok((Stream::new(region(&e.origin)?, lane(e.lane)?), e.seq))).collect()
}

pub fn regions_from_wire(names: Vec<String>) -> Result<BTreeSet<RegionName>, WireError> {
    names.iter().map(|n| region(n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_round_trips_and_bad_input_is_refused() {
        let c = Change {
            origin: region("us-west").expect("valid"),
            lane: Lane::Urgent,
            seq: 7,
            key: Key::new("users", "u001"),
            op: Op::Put { value: br#"{"name":"Kaito"}"#.to_vec() },
            metadata: Metadata { regions: vec!["*".into()], sync_flags: vec!["IMPORTANT".into()] },
            version: Version { ts: Timestamp::new(5, 2), region: region("us-west").expect("valid") },
            deps: [(Stream::new(region("eu-central").expect("valid"), Lane::Bulk), 3)].into_iter().collect(),
            replay_of: Some(Replay {
                id: ChangeId { origin: region("eu-central").expect("valid"), lane: Lane::Normal, seq: 2 },
                version: Version { ts: Timestamp::new(4, 0), region: region("eu-central").expect("valid") },
            }),
            moves: true,
            carried: vec![],
            proof: Default::default(),
        };
        assert_eq!(change_from_wire(change_to_wire(&c)), Ok(c.clone()));
        let stamp = mrr_core::doc::Stamp { version: c.version.clone(), lane: c.lane, seq: 7, deps: c.deps.clone() };
        let mut merged = c.clone();
        let patch = serde_json::json!({"name": "Kaito", "tags": [1]});
        let patch = patch.as_object().cloned().unwrap_or_default();
        merged.op = Op::Merge { delta: Doc::patch_delta(&patch, &stamp) };
        assert_eq!(change_from_wire(change_to_wire(&merged)), Ok(merged.clone()));
        let mut bad = change_to_wire(&merged);
        bad.merge_delta = Some(b"\x01garbage".to_vec());
        assert!(change_from_wire(bad).is_err(), "undecodable merge delta");
        let mut bad = change_to_wire(&c);
        bad.value = Some(b"[1]".to_vec());
        assert!(change_from_wire(bad).is_err());
        let mut bad = change_to_wire(&c);
        bad.value = Some(br#" {"a":1} trailing"#.to_vec());
        assert!(change_from_wire(bad).is_err(), "one object and nothing else");
        let mut bad = change_to_wire(&c);
        bad.value = Some(br#"{"a":"#.to_vec());
        assert!(change_from_wire(bad).is_err(), "truncated");
        let mut ok = change_to_wire(&c);
        ok.value = Some(b" \n{\"a\": [1, {\"b\": null}]} ".to_vec());
        assert!(change_from_wire(ok).is_ok(), "whitespace around an object is fine");
        let mut bad = change_to_wire(&c);
        bad.topic = "Bad/Topic".into();
        assert!(change_from_wire(bad).is_err());
        let mut bad = change_to_wire(&c);
        bad.origin = "NOT A REGION".into();
        assert!(change_from_wire(bad).is_err());
        let mut bad = change_to_wire(&c);
        bad.lane = 9;
        assert_eq!(change_from_wire(bad), Err(WireError("unknown lane 9".into())));
    }
}

/// Batches whose encoded changes reach this size are sent zstd-compressed.
pub const COMPRESS_MIN_BYTES: usize = 4 * 1024;
/// A compressed batch may not expand beyond this (a peer cannot make us allocate more).
pub const DECOMPRESSED_BYTES_MAX: usize = mrr_core::limits::PEER_MESSAGE_BYTES_MAX;
/// Fast compression: replication is latency-sensitive and batches are already grouped.
const ZSTD_LEVEL: i32 = 1;

/// A batch of `changes`, compressed when that makes it smaller and it is large enough to pay.
/// The proof of origin a relayed batch carries besides its changes (`mrr_core::provenance`).
#[derive(Debug, Default)]
pub struct BatchProof {
    pub proving: Vec<proto::Change>,
    pub certificates: Vec<Vec<u8>>,
}

pub fn batch_to_wire(
    changes: Vec<proto::Change>,
    wall_ms: u64,
    sender_durable: Vec<proto::VvEntry>,
    proof: BatchProof,
) -> proto::Batch {
    let BatchProof { proving, certificates } = proof;
    let list = proto::ChangeList { changes };
    let encoded_len = prost::Message::encoded_len(&list);
    if encoded_len >= COMPRESS_MIN_BYTES {
        let encoded = prost::Message::encode_to_vec(&list);
        if let Ok(compressed) = zstd::bulk::compress(&encoded, ZSTD_LEVEL) {
            if compressed.len() < encoded.len() {
                return proto::Batch {
                    changes: Vec::new(),
                    zstd_changes: compressed,
                    wall_ms,
                    sender_durable,
                    certificates,
                    proving,
                };
            }
        }
    }
    proto::Batch { changes: list.changes, zstd_changes: Vec::new(), wall_ms, sender_durable, certificates, proving }
}

/// The changes of a batch, decompressing when needed.
pub fn batch_changes(batch: proto::Batch) -> Result<Vec<proto::Change>, WireError> {
    if batch.zstd_changes.is_empty() {
        return Ok(batch.changes);
    }
    if !batch.changes.is_empty() {
        return Err(WireError("batch carries both plain and compressed changes".into()));
    }
    let encoded = zstd::bulk::decompress(&batch.zstd_changes, DECOMPRESSED_BYTES_MAX)
        .map_err(|e| WireError(format!("compressed batch: {e} (limit {DECOMPRESSED_BYTES_MAX} bytes)")))?;
    let list: proto::ChangeList =
        prost::Message::decode(encoded.as_slice()).map_err(|e| WireError(format!("compressed batch: {e}")))?;
    Ok(list.changes)
}

#[cfg(test)]
mod compression_tests {
    use super::*;

    fn change(seq: u64, payload: usize) -> proto::Change {
        proto::Change {
            origin: "us-west".into(),
            seq,
            topic: "users".into(),
            id: format!("u{seq}"),
            value: Some(format!("{{\"p\":\"{}\"}}", "x".repeat(payload)).into_bytes()),
            version_region: "us-west".into(),
            ..Default::default()
        }
    }

    #[test]
    fn small_batches_go_plain_large_ones_compressed_and_both_round_trip() {
        let small: Vec<_> = (1..=3).map(|s| change(s, 10)).collect();
        let b = batch_to_wire(small.clone(), 1, Vec::new(), BatchProof::default());
        assert!(b.zstd_changes.is_empty());
        assert_eq!(batch_changes(b), Ok(small));

        let large: Vec<_> = (1..=500).map(|s| change(s, 200)).collect();
        let b = batch_to_wire(large.clone(), 1, Vec::new(), BatchProof::default());
        assert!(b.changes.is_empty() && !b.zstd_changes.is_empty());
        let plain_len = prost::Message::encoded_len(&proto::ChangeList { changes: large.clone() });
        assert!(b.zstd_changes.len() * 4 < plain_len, "repetitive JSON compresses well");
        assert_eq!(batch_changes(b), Ok(large));
    }

    #[test]
    fn a_decompression_bomb_or_garbage_is_refused() {
        // 200 MiB of zeros compresses to a few KiB; it must not be inflated.
        let bomb = zstd::bulk::compress(&vec![0u8; 200 * 1024 * 1024], 3).expect("compress");
        let b = proto::Batch { zstd_changes: bomb, ..Default::default() };
        assert!(batch_changes(b).is_err());
        let b = proto::Batch { zstd_changes: b"not zstd".to_vec(), ..Default::default() };
        assert!(batch_changes(b).is_err());
    }
}

/// What a snapshot chunk carries, postcard-encoded in a zstd frame.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChunkBody {
    records: Vec<(Key, mrr_core::Record)>,
    history: Vec<(Key, mrr_core::fold::FoldEntry)>,
    last: Option<Key>,
}

/// The fastest level: measured on loopback, level 3 held a snapshot's rate down for little
/// gain in size (values are mostly already compact JSON).
const SNAPSHOT_ZSTD_LEVEL: i32 = 1;

pub fn chunk_to_wire(chunk: mrr_writer::snapshot::Chunk) -> Result<proto::SnapshotChunk, WireError> {
    let done = chunk.done;
    let body = ChunkBody { records: chunk.records, history: chunk.history, last: chunk.last };
    let encoded = postcard::to_allocvec(&body).map_err(|e| WireError(format!("encoding a snapshot chunk: {e}")))?;
    let zstd_body = zstd::bulk::compress(&encoded, SNAPSHOT_ZSTD_LEVEL)
        .map_err(|e| WireError(format!("compressing a snapshot chunk: {e}")))?;
    Ok(proto::SnapshotChunk { zstd_body, done })
}

/// A snapshot chunk, checked: every key names a valid topic and id (sealed names included).
pub fn chunk_from_wire(chunk: proto::SnapshotChunk) -> Result<mrr_writer::snapshot::Chunk, WireError> {
    let encoded = zstd::bulk::decompress(&chunk.zstd_body, DECOMPRESSED_BYTES_MAX)
        .map_err(|e| WireError(format!("compressed snapshot chunk: {e} (limit {DECOMPRESSED_BYTES_MAX} bytes)")))?;
    let body: ChunkBody =
        postcard::from_bytes(&encoded).map_err(|e| WireError(format!("snapshot chunk does not decode: {e}")))?;
    let keys = body.records.iter().map(|(k, _)| k).chain(body.history.iter().map(|(k, _)| k)).chain(body.last.as_ref());
    for key in keys {
        validate_topic(&key.topic).map_err(|e| WireError(format!("snapshot key {key}: {e}")))?;
        if !mrr_core::seal::is_sealed(key) {
            validate_id(&key.id).map_err(|e| WireError(format!("snapshot key {key}: {e}")))?;
        }
    }
    if body.last.is_none() && !body.records.is_empty() {
        return Err(WireError("snapshot chunk with records names no key it ended at".into()));
    }
    Ok(mrr_writer::snapshot::Chunk { records: body.records, history: body.history, last: body.last, done: chunk.done })
}

pub fn header_to_wire(id: u64, header: &mrr_writer::snapshot::Header, storage_format: u32) -> proto::SnapshotHeader {
    proto::SnapshotHeader {
        id,
        vv: vv_to_wire(&header.vv),
        hlc_wall_ms: header.hlc_high_water.wall_ms,
        hlc_logical: header.hlc_high_water.logical,
        anchors: header.anchors.iter().map(change_to_wire).collect(),
        certificates: header.certificates.iter().map(|(_, der)| der.clone()).collect(),
        storage_format,
    }
}

/// A snapshot header: its id, and what it says, checked like any change a peer sends.
pub fn header_from_wire(h: proto::SnapshotHeader) -> Result<(u64, mrr_writer::snapshot::Header), WireError> {
    let anchors = h.anchors.into_iter().map(change_from_wire).collect::<Result<Vec<_>, _>>()?;
    let vv = vv_from_wire(h.vv)?;
    if let Some(c) = anchors.iter().find(|c| c.seq > vv.get(&c.stream())) {
        return Err(WireError(format!("snapshot anchor {} is beyond the snapshot's vector", c.id())));
    }
    let certificates = h.certificates.into_iter().map(|der| (mrr_tls::fingerprint(&der), der)).collect();
    let header = mrr_writer::snapshot::Header {
        vv,
        hlc_high_water: Timestamp::new(h.hlc_wall_ms, h.hlc_logical),
        anchors,
        certificates,
    };
    Ok((h.id, header))
}
