//! Key layout and value encoding shared by the implementations.
//!
//! Keys sort the way the store is scanned: records by `(topic, id)`, changes by
//! `(origin, lane, seq)` with `seq` big-endian. Topics, ids and region names never contain NUL
//! (validated at the edges), so NUL is a safe separator.

use mrr_core::{ChangeId, Key, Stream, Version};
use serde::{de::DeserializeOwned, Serialize};

use crate::{Result, StoreError};

pub fn record_key(key: &Key) -> Vec<u8> {
    debug_assert!(!key.topic.contains('\0') && !key.id.contains('\0'));
    let mut k = Vec::with_capacity(key.topic.len() + 1 + key.id.len());
    k.extend_from_slice(key.topic.as_bytes());
    k.push(0);
    k.extend_from_slice(key.id.as_bytes());
    k
}

/// The key a [`record_key`] was made from.
pub fn key_from_record_key(k: &[u8]) -> Result<Key> {
    let corrupt = |reason: String| StoreError::Corrupt { what: "record key", key: k.to_vec(), reason };
    let split = k.iter().position(|b| *b == 0).ok_or_else(|| corrupt("no separator".into()))?;
    let topic = std::str::from_utf8(&k[..split]).map_err(|e| corrupt(e.to_string()))?;
    let id = std::str::from_utf8(&k[split + 1..]).map_err(|e| corrupt(e.to_string()))?;
    Ok(Key::new(topic, id))
}

pub fn topic_prefix(topic: &str) -> Vec<u8> {
    let mut k = topic.as_bytes().to_vec();
    k.push(0);
    k
}

/// `origin\0<lane byte><seq>`: one contiguous range per stream.
pub fn change_key(stream: &Stream, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(stream.origin.as_str().len() + 10);
    k.extend_from_slice(stream.origin.as_str().as_bytes());
    k.push(0);
    // Lane numbers are below 256 (three lanes).
    k.push(stream.lane.to_wire() as u8);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `topic\0id\0`: every fold entry of a key starts with it.
pub fn history_prefix(key: &Key) -> Vec<u8> {
    let mut k = record_key(key);
    k.push(0);
    k
}

/// History entries sort by version: wall and logical big-endian, then the region's bytes
/// (which order like the region names themselves).
pub fn history_key(key: &Key, version: &Version) -> Vec<u8> {
    let mut k = history_prefix(key);
    k.extend_from_slice(&version.ts.wall_ms.to_be_bytes());
    k.extend_from_slice(&version.ts.logical.to_be_bytes());
    k.extend_from_slice(version.region.as_str().as_bytes());
    k
}

pub fn change_id_key(id: &ChangeId) -> Vec<u8> {
    change_key(&id.stream(), id.seq)
}

pub fn conflict_key(ident: &(ChangeId, ChangeId)) -> Vec<u8> {
    [change_id_key(&ident.0), vec![0xff], change_id_key(&ident.1)].concat()
}

/// `vv\0` and the stream's display form (`us-west`, `us-west.urgent`).
pub fn vv_key(stream: &Stream) -> Vec<u8> {
    [b"vv\0".as_slice(), stream.to_string().as_bytes()].concat()
}

pub const VV_PREFIX: &[u8] = b"vv\0";

/// `floor\0` and the stream's display form: the last sequence retention removed.
pub fn log_floor_key(stream: &Stream) -> Vec<u8> {
    [LOG_FLOOR_PREFIX, stream.to_string().as_bytes()].concat()
}

pub const LOG_FLOOR_PREFIX: &[u8] = b"floor\0";

/// `cert\0` and a checkpoint signer's fingerprint.
pub fn certificate_key(fingerprint: &[u8; 32]) -> Vec<u8> {
    [b"cert\0".as_slice(), fingerprint].concat()
}
pub const HLC_KEY: &[u8] = b"hlc";
pub const FORMAT_KEY: &[u8] = b"format";
/// The fingerprint of the sealer this directory's sealed names were made with.
pub const SEALER_KEY: &[u8] = b"sealer";
pub const STRONG_POSITION_KEY: &[u8] = b"strong_position";
/// The stable point (`mrr_core::stability`), as last persisted.
pub const BOOTSTRAP_KEY: &[u8] = b"bootstrap";

pub const STABLE_POINT_KEY: &[u8] = b"stable_point";

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain data structs into a Vec cannot fail.
    postcard::to_stdvec(value).unwrap_or_else(|e| unreachable!("postcard encode: {e}"))
}

pub fn decode<T: DeserializeOwned>(what: &'static str, key: &[u8], bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt { what, key: key.to_vec(), reason: e.to_string() })
}

pub fn decode_u64(what: &'static str, key: &[u8], bytes: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        what,
        key: key.to_vec(),
        reason: format!("{} bytes, want 8", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

pub fn stream_from_suffix(what: &'static str, key: &[u8], prefix_len: usize) -> Result<Stream> {
    let corrupt = |reason: String| StoreError::Corrupt { what, key: key.to_vec(), reason };
    let name = std::str::from_utf8(&key[prefix_len..]).map_err(|e| corrupt(e.to_string()))?;
    Stream::parse(name).ok_or_else(|| corrupt(format!("{name:?} is not a stream")))
}

/// `depart\0` and a departed record's sealed name (the value holds the name and the note).
pub fn departure_key(sealed: &Key) -> Vec<u8> {
    [DEPARTURE_PREFIX, record_key(sealed).as_slice()].concat()
}
pub const DEPARTURE_PREFIX: &[u8] = b"depart\0";
