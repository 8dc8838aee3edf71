//! Input limits and name rules, shared by every entry point that accepts records.
//!
//! Bounds are explicit and named with their unit so every path that takes input refuses the
//! same things with the same words.

use serde::{Deserialize, Serialize};

/// Bounds on client input. Defaults are generous for documents and tight for abuse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub body_bytes_max: usize,
    pub record_bytes_max: usize,
    pub batch_records_max: usize,
    pub json_depth_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes_max: 4 * 1024 * 1024,
            record_bytes_max: 1024 * 1024,
            batch_records_max: 1_000,
            json_depth_max: 32,
        }
    }
}

/// The largest peer message a receiver decodes (and a compressed batch may inflate to). Every
/// batch is cut far below it (`OutboundLimits::batch_bytes_max`), and a single change must
/// fit it: [`Limits::record_bytes_max`] may not exceed [`RECORD_BYTES_MAX_ALLOWED`].
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The largest `record_bytes_max` a config may set: a change carries its record with metadata,
/// causal past and (under `merge`) a document that can be a few times the value, and must
/// still fit one peer message.
pub const RECORD_BYTES_MAX_ALLOWED: usize = PEER_MESSAGE_BYTES_MAX / 8;

/// Stored bytes a change may carry besides its own content (a `custom` move's fold history),
/// about: a longer history goes ahead of the move in pieces of this size ([`crate::Op::History`]).
pub const CARRIED_BYTES_MAX: usize = 1024 * 1024;

pub const TOPIC_LEN_MAX: usize = 64;
pub const ID_LEN_MAX: usize = 256;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("topic {0:?} is invalid: use 1-64 characters from a-z, 0-9, '_' and '-', starting with a letter")]
    Topic(String),
    #[error("id {0:?} is invalid: use 1-256 characters from A-Z, a-z, 0-9, '_', '-', '.', ':' and '@'")]
    Id(String),
}

pub fn validate_topic(topic: &str) -> Result<(), NameError> {
    let ok = !topic.is_empty()
        && topic.len() <= TOPIC_LEN_MAX
        && topic.as_bytes()[0].is_ascii_lowercase()
        && topic.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NameError::Topic(topic.to_owned()))
    }
}

pub fn validate_id(id: &str) -> Result<(), NameError> {
    let ok = !id.is_empty()
        && id.len() <= ID_LEN_MAX
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(NameError::Id(id.to_owned()))
    }
}

/// Nesting depth of a JSON value: scalars are 0, `{}` and `[]` are 1.
pub fn json_depth(value: &serde_json::Value) -> usize {
    // Iterative so that depth checking itself cannot overflow the stack.
    let mut depth_max = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            serde_json::Value::Array(items) => {
                depth_max = depth_max.max(d + 1);
                stack.extend(items.iter().map(|i| (i, d + 1)));
            }
            serde_json::Value::Object(map) => {
                depth_max = depth_max.max(d + 1);
                stack.extend(map.values().map(|i| (i, d + 1)));
            }
            _ => depth_max = depth_max.max(d),
        }
    }
    depth_max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_and_id_rules() {
        assert!(validate_topic("users").is_ok());
        assert!(validate_topic("flash_sale-2").is_ok());
        for bad in ["", "Users", "a/b", "9x", "a b"] {
            assert!(validate_topic(bad).is_err(), "{bad}");
        }
        assert!(validate_id("u001").is_ok());
        assert!(validate_id("vip2023").is_ok());
        for bad in ["", "a/b", "a b", "é"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn depth_counts_nesting() {
        assert_eq!(json_depth(&serde_json::json!(1)), 0);
        assert_eq!(json_depth(&serde_json::json!({"a": 1})), 1);
        assert_eq!(json_depth(&serde_json::json!({"a": [{"b": []}]})), 4);
    }
}
