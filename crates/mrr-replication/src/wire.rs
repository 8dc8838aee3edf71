//! Conversions between core types and the peer protocol, validating everything a peer sends:
//! a malformed change is a protocol error for the stream, never stored.

use std::collections::BTreeSet;

use mrr_core::limits::{validate_id, validate_topic};
use mrr_core::{Change, Key, Metadata, Op, RegionName, Timestamp, Version, VersionVector};

use crate::proto;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed message from peer: {0}")]
pub struct WireError(pub String);

fn region(s: &str) -> Result<RegionName, WireError> {
    RegionName::new(s).map_err(|e| WireError(e.to_string()))
}

pub fn change_to_wire(c: &Change) -> proto::Change {
    proto::Change {
        origin: c.origin.to_string(),
        seq: c.seq,
        topic: c.key.topic.clone(),
        id: c.key.id.clone(),
        value: match &c.op {
            Op::Put { value } => Some(value.clone()),
            Op::Delete => None,
        },
        regions: c.metadata.regions.clone(),
        sync_flags: c.metadata.sync_flags.clone(),
        wall_ms: c.version.ts.wall_ms,
        logical: c.version.ts.logical,
        version_region: c.version.region.to_string(),
    }
}

pub fn change_from_wire(c: proto::Change) -> Result<Change, WireError> {
    validate_topic(&c.topic).map_err(|e| WireError(e.to_string()))?;
    validate_id(&c.id).map_err(|e| WireError(e.to_string()))?;
    if c.seq == 0 {
        return Err(WireError("change seq 0: sequences start at 1".into()));
    }
    if let Some(v) = &c.value {
        // Values were validated as JSON objects at their origin; a peer must not bypass that.
        if !matches!(serde_json::from_slice::<serde_json::Value>(v), Ok(serde_json::Value::Object(_))) {
            return Err(WireError(format!("change {}:{} value is not a JSON object", c.origin, c.seq)));
        }
    }
    Ok(Change {
        origin: region(&c.origin)?,
        seq: c.seq,
        key: Key::new(c.topic, c.id),
        op: match c.value {
            Some(value) => Op::Put { value },
            None => Op::Delete,
        },
        metadata: Metadata { regions: c.regions, sync_flags: c.sync_flags },
        version: Version { ts: Timestamp::new(c.wall_ms, c.logical), region: region(&c.version_region)? },
    })
}

pub fn vv_to_wire(vv: &VersionVector) -> Vec<proto::VvEntry> {
    vv.iter().map(|(o, s)| proto::VvEntry { origin: o.to_string(), seq: s }).collect()
}

pub fn vv_from_wire(entries: Vec<proto::VvEntry>) -> Result<VersionVector, WireError> {
    entries.into_iter().map(|e| Ok((region(&e.origin)?, e.seq))).collect()
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
            seq: 7,
            key: Key::new("users", "u001"),
            op: Op::Put { value: br#"{"name":"Kaito"}"#.to_vec() },
            metadata: Metadata { regions: vec!["*".into()], sync_flags: vec!["IMPORTANT".into()] },
            version: Version { ts: Timestamp::new(5, 2), region: region("us-west").expect("valid") },
        };
        assert_eq!(change_from_wire(change_to_wire(&c)), Ok(c.clone()));
        let mut bad = change_to_wire(&c);
        bad.value = Some(b"[1]".to_vec());
        assert!(change_from_wire(bad).is_err());
        let mut bad = change_to_wire(&c);
        bad.topic = "Bad/Topic".into();
        assert!(change_from_wire(bad).is_err());
        let mut bad = change_to_wire(&c);
        bad.origin = "NOT A REGION".into();
        assert!(change_from_wire(bad).is_err());
    }
}
