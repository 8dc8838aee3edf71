//! Who may do what through the HTTP API: API keys and their scopes.
//!
//! A key is a random string (`mrr_` and 64 hex digits, made by `mrr keys create`) that the
//! config stores only as its SHA-256 digest. A presented key is hashed and compared with every
//! stored digest in constant time, so neither the config nor the comparison's timing gives a
//! key away. Keys are 256 random bits: a fast hash is what fits (a slow password hash protects
//! guessable secrets; these are not guessable).
//!
//! A key's scope: the actions it may take (`read`, `write`, `admin`), the records they apply
//! to (topic patterns: `users`, `orders/*`, `orders/eu-*`, `*`), optionally the regions it is
//! valid in, and an expiry. `admin` covers the operator's endpoints (links, dead letters,
//! conflicts, chaos); it does not imply `read` or `write` of records.
//!
//! Pure: no HTTP here. The API's middleware (`crate::http`) classifies each request and asks
//! [`Access`] for a verdict; handlers that learn a record's topic from the body (publish,
//! batch) ask [`Scope::check`] themselves.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use mrr_core::RegionName;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Read,
    Write,
    Admin,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Read, Action::Write, Action::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Action::Read),
            "write" => Ok(Action::Write),
            "admin" => Ok(Action::Admin),
            other => Err(format!("unknown action {other:?}: an action is read, write or admin")),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Records a key may touch: `*` (all), `users` or `users/*` (a topic), `orders/eu-*` (the ids
/// of a topic that start so), `orders*` (topics that start so).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPattern {
    text: String,
    topic: Glob,
    /// `None`: every id of a matching topic.
    id: Option<Glob>,
}

/// An exact name, or a prefix followed by `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Glob {
    Exact(String),
    Prefix(String),
}

impl Glob {
    fn parse(s: &str) -> Result<Self, String> {
        match s.find('*') {
            None => Ok(Glob::Exact(s.to_owned())),
            Some(i) if i == s.len() - 1 => Ok(Glob::Prefix(s[..i].to_owned())),
            Some(_) => Err(format!("{s:?}: `*` may only end a pattern")),
        }
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            Glob::Exact(e) => e == s,
            Glob::Prefix(p) => s.starts_with(p.as_str()),
        }
    }

    fn is_all(&self) -> bool {
        matches!(self, Glob::Prefix(p) if p.is_empty())
    }
}

impl TopicPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let fail = |why: String| format!("topic pattern {s:?}: {why}; write `users`, `orders/*`, `orders/eu-*` or `*`");
        if s.is_empty() || s.len() > 256 {
            return Err(fail("empty or longer than 256 bytes".into()));
        }
        let (topic, id) = match s.split_once('/') {
            Some((t, i)) => (t, Some(i)),
            None => (s, None),
        };
        let topic = Glob::parse(topic).map_err(fail)?;
        if let Glob::Exact(t) = &topic {
            mrr_core::limits::validate_topic(t).map_err(|e| fail(e.to_string()))?;
        }
        let id = match id {
            None => None,
            Some("") => return Err(fail("nothing after `/`".into())),
            Some(i) => Some(Glob::parse(i).map_err(fail)?).filter(|g| !g.is_all()),
        };
        Ok(Self { text: s.to_owned(), topic, id })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern covers record `id` of `topic`, or, with `id` `None`, every record
    /// of it.
    fn covers(&self, topic: &str, id: Option<&str>) -> bool {
        self.topic.matches(topic)
            && match (&self.id, id) {
                (None, _) => true,
                (Some(g), Some(id)) => g.matches(id),
                (Some(_), None) => false,
            }
    }
}

/// The SHA-256 digest a key is stored as: `sha256:` and 64 hex digits in the config.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyDigest([u8; 32]);

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyDigest({self})")
    }
}

impl fmt::Display for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl KeyDigest {
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let hex = s.strip_prefix("sha256:").filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        let hex = hex.ok_or_else(|| {
            format!("{s:?} is not a key digest: write `sha256:` and 64 hex digits, as `mrr keys create` prints")
        })?;
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(Self(out))
    }
}

/// A new key: `mrr_` and 64 hex digits of 256 random bits.
pub fn generate_key(rng: &mut impl rand::RngCore) -> String {
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    let mut s = String::from("mrr_");
    bytes.iter().for_each(|b| s.push_str(&format!("{b:02x}")));
    s
}

/// One key's scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// For messages and logs; never the key.
    pub name: String,
    pub actions: BTreeSet<Action>,
    pub topics: Vec<TopicPattern>,
    /// `None`: every region.
    pub regions: Option<BTreeSet<RegionName>>,
    /// Unix ms after which the key is refused; `None`: never.
    pub expires_ms: Option<u64>,
}

/// What a request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need<'a> {
    pub action: Action,
    /// The records it touches: `(topic, Some(id))` one record, `(topic, None)` all of a topic,
    /// `None` no record (status, admin).
    pub records: Option<(&'a str, Option<&'a str>)>,
}

/// Why a key may not do what it asked (403).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Forbidden(pub String);

impl Scope {
    /// Every action on every record, everywhere: an unscoped key.
    pub fn full(name: String) -> Self {
        Self {
            name,
            actions: Action::ALL.into_iter().collect(),
            topics: vec![TopicPattern { text: "*".into(), topic: Glob::Prefix(String::new()), id: None }],
            regions: None,
            expires_ms: None,
        }
    }

    pub fn check(&self, need: &Need<'_>) -> Result<(), Forbidden> {
        if !self.actions.contains(&need.action) {
            let has: Vec<&str> = self.actions.iter().map(|a| a.name()).collect();
            return Err(Forbidden(format!(
                "key {:?} lacks the `{}` action (it has: {})",
                self.name,
                need.action,
                if has.is_empty() { "none".to_owned() } else { has.join(", ") }
            )));
        }
        if let Some((topic, id)) = need.records {
            if !self.topics.iter().any(|p| p.covers(topic, id)) {
                let what = match id {
                    Some(id) => format!("{topic}/{id}"),
                    None => format!("all of topic {topic}"),
                };
                let has: Vec<&str> = self.topics.iter().map(TopicPattern::as_str).collect();
                return Err(Forbidden(format!(
                    "key {:?} may {} {} only, not {what}",
                    self.name,
                    need.action,
                    has.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// Why a request is not authenticated (401).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    #[error("no API key: send `Authorization: Bearer <key>` (or `x-api-key: <key>`)")]
    Missing,
    #[error("the API key is not one of this cluster's keys")]
    Unknown,
    #[error("the API key {name:?} expired")]
    Expired { name: String },
    #[error("the API key {name:?} is not valid in region {region}")]
    WrongRegion { name: String, region: RegionName },
}

/// Every key of the node. Without keys (and only with `allow_anonymous`, or an API on
/// loopback) every request is let through as [`Scope::full`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    keys: Vec<(KeyDigest, Arc<Scope>)>,
}

/// The most bytes a presented key may have; longer is refused before hashing.
const PRESENTED_BYTES_MAX: usize = 256;

impl Access {
    pub fn new(keys: Vec<(KeyDigest, Scope)>) -> Self {
        Self { keys: keys.into_iter().map(|(d, s)| (d, Arc::new(s))).collect() }
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The scope of `presented` in `region` at `now_ms`. Compares the digest with every key's,
    /// each in constant time, and does not stop at the first match.
    pub fn authenticate(
        &self,
        presented: Option<&str>,
        region: &RegionName,
        now_ms: u64,
    ) -> Result<&Arc<Scope>, Unauthenticated> {
        let presented = presented.ok_or(Unauthenticated::Missing)?;
        if presented.is_empty() || presented.len() > PRESENTED_BYTES_MAX {
            return Err(Unauthenticated::Unknown);
        }
        let digest = KeyDigest::of(presented);
        let mut found = None;
        for (d, scope) in &self.keys {
            if bool::from(d.0.ct_eq(&digest.0)) {
                found = Some(scope);
            }
        }
        let scope = found.ok_or(Unauthenticated::Unknown)?;
        if scope.expires_ms.is_some_and(|at| now_ms >= at) {
            return Err(Unauthenticated::Expired { name: scope.name.clone() });
        }
        if scope.regions.as_ref().is_some_and(|r| !r.contains(region)) {
            return Err(Unauthenticated::WrongRegion { name: scope.name.clone(), region: region.clone() });
        }
        Ok(scope)
    }
}

/// The keys in use, replaced whole while the node runs when its config file changes
/// (`crate::reload`). A request authenticates against one snapshot from start to end.
pub type LiveAccess = mrr_core::live::Live<Access>;

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RegionName {
        RegionName::new(s).expect("valid")
    }

    fn scope(actions: &[Action], topics: &[&str]) -> Scope {
        Scope {
            name: "web".into(),
            actions: actions.iter().copied().collect(),
            topics: topics.iter().map(|t| TopicPattern::parse(t).expect("valid")).collect(),
            regions: None,
            expires_ms: None,
        }
    }

    fn read(topic: &'static str, id: Option<&'static str>) -> Need<'static> {
        Need { action: Action::Read, records: Some((topic, id)) }
    }

    #[test]
    fn patterns_cover_topics_and_id_prefixes() {
        let s = scope(&[Action::Read], &["users", "orders/eu-*", "logs*"]);
        assert!(s.check(&read("users", Some("u001"))).is_ok());
        assert!(s.check(&read("users", None)).is_ok(), "a whole topic");
        assert!(s.check(&read("orders", Some("eu-17"))).is_ok());
        assert!(s.check(&read("orders", Some("us-17"))).is_err());
        assert!(s.check(&read("orders", None)).is_err(), "a listing of orders would show us-17");
        assert!(s.check(&read("logs_eu", Some("x"))).is_ok());
        assert!(s.check(&read("user", Some("u001"))).is_err(), "exact topic names");
        let e =
            s.check(&Need { action: Action::Write, records: Some(("users", Some("u001"))) }).expect_err("read only");
        assert!(e.0.contains("lacks the `write` action (it has: read)"), "{e}");
        assert!(scope(&[Action::Admin], &[]).check(&Need { action: Action::Admin, records: None }).is_ok());
        assert_eq!(TopicPattern::parse("orders/*").expect("valid").id, None, "orders/* is all of orders");
        for bad in ["", "us*ers", "users/", "a b", "orders/e*u"] {
            assert!(TopicPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_are_found_by_digest_and_refused_when_expired_or_elsewhere() {
        let key = generate_key(&mut rand::rng());
        assert!(key.starts_with("mrr_") && key.len() == 68);
        let digest = KeyDigest::of(&key);
        assert_eq!(KeyDigest::parse(&digest.to_string()), Ok(digest.clone()));
        assert!(KeyDigest::parse("sha256:zz").is_err());
        let mut limited = scope(&[Action::Read], &["*"]);
        limited.regions = Some([r("us-west")].into_iter().collect());
        limited.expires_ms = Some(1_000);
        let access = Access::new(vec![(digest, limited)]);
        let (sf, tokyo) = (r("us-west"), r("ap-northeast"));
        assert_eq!(access.authenticate(Some(&key), &sf, 999).map(|s| s.name.as_str()), Ok("web"));
        assert_eq!(access.authenticate(None, &sf, 0).err(), Some(Unauthenticated::Missing));
        assert_eq!(access.authenticate(Some("mrr_nope"), &sf, 0).err(), Some(Unauthenticated::Unknown));
        assert_eq!(access.authenticate(Some(&"x".repeat(10_000)), &sf, 0).err(), Some(Unauthenticated::Unknown));
        assert!(matches!(access.authenticate(Some(&key), &sf, 1_000), Err(Unauthenticated::Expired { .. })));
        assert!(matches!(access.authenticate(Some(&key), &tokyo, 0), Err(Unauthenticated::WrongRegion { .. })));
    }
}
