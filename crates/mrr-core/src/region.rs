//! Region names: the identity of a node in the cluster and the tie-break of last-writer-wins.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The name of a region (`ap-northeast`, `us-west`, ...). Ordered by its bytes, which is the
/// deterministic tie-break between versions carrying the same timestamp.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RegionName(String);

impl TryFrom<String> for RegionName {
    type Error = RegionNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<RegionName> for String {
    fn from(r: RegionName) -> String {
        r.0
    }
}

/// Why a string is not a valid region name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid region name {name:?}: use 1-63 characters from a-z, 0-9 and '-', starting with a letter")]
pub struct RegionNameError {
    pub name: String,
}

impl RegionName {
    pub const LEN_MAX: usize = 63;

    pub fn new(name: impl Into<String>) -> Result<Self, RegionNameError> {
        let name = name.into();
        let valid = !name.is_empty()
            && name.len() <= Self::LEN_MAX
            && name.as_bytes()[0].is_ascii_lowercase()
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if valid {
            Ok(Self(name))
        } else {
            Err(RegionNameError { name })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RegionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_article_names_and_refuses_others() {
        for ok in ["ap-northeast", "us-west", "eu-central", "r1"] {
            assert!(RegionName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "US-West", "1abc", "a b", "a/b", &"a".repeat(64)] {
            assert!(RegionName::new(bad).is_err(), "{bad}");
        }
    }
}
