//! Topic policies: which conflict rule a topic uses. Built once from configuration and shared
//! read-only by the writer; every region must run the same policies (the handshake compares
//! their digests), or the same writes could merge differently in different places.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::lane::LaneRules;

/// A user conflict handler. Given the current state and a concurrent incoming write, returns the
/// merged record. Must be deterministic (same inputs, same output or same error, in every
/// region); need not be commutative — the engine feeds writes in version order.
pub trait Resolver: Send + Sync + fmt::Debug {
    fn resolve(
        &self,
        current: &Map<String, Value>,
        incoming: &Map<String, Value>,
    ) -> Result<Map<String, Value>, String>;

    /// Identifies the handler's code, for the cross-region policy digest.
    fn fingerprint(&self) -> String;
}

/// The conflict rule of a topic.
#[derive(Clone, Debug)]
pub enum Rule {
    /// `timestamp`: whole-record last-writer-wins.
    Timestamp,
    /// `merge`: per-field last-writer-wins plus CRDT field operations ([`crate::doc`]).
    Merge,
    /// `custom`: concurrent writes merged by a handler, in version order ([`crate::fold`]).
    Custom(Arc<dyn Resolver>),
}

impl Rule {
    /// The strategy's name, as written in configuration and in metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Rule::Timestamp => "timestamp",
            Rule::Merge => "merge",
            Rule::Custom(_) => "custom",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Policies {
    default: Rule,
    topics: BTreeMap<String, Rule>,
    /// Which lane a write travels in. Not in the digest: lanes change when a change arrives,
    /// never what it merges to.
    pub lanes: LaneRules,
    /// The `regions` a write gets when it names none: per topic, else the cluster default
    /// (empty: every region). Not in the digest: a change carries its placement explicitly.
    pub placement: PlacementDefaults,
    /// Topics with `consistency: strong`: every write goes through the strong tier's log
    /// ([`crate::strong`]). In the digest: regions that disagree would apply a topic's writes
    /// by different paths.
    pub strong: std::collections::BTreeSet<String>,
    /// Update functions of strong topics, by topic and name. In the digest: every region runs
    /// them in its state machine.
    pub functions: BTreeMap<String, BTreeMap<String, Arc<dyn crate::strong::UpdateFunction>>>,
    /// Bounded fields (escrow counters, [`crate::escrow`]) by topic and field: their bound.
    /// In the digest: a region that took a bounded field for a plain counter would decrement
    /// it without rights.
    pub bounded: BTreeMap<String, BTreeMap<String, i64>>,
    /// Names what is not placed here ([`crate::seal`]). In the digest (by fingerprint): regions
    /// with different sealers would not find each other's sealed entries.
    pub sealer: crate::seal::Sealer,
}

/// Default `regions` per topic (`topics.<t>.regions`, `replication_rules.regions`).
#[derive(Clone, Debug, Default)]
pub struct PlacementDefaults {
    pub default: Vec<String>,
    pub topics: BTreeMap<String, Vec<String>>,
}

impl PlacementDefaults {
    pub fn regions_of(&self, topic: &str) -> &[String] {
        self.topics.get(topic).unwrap_or(&self.default)
    }
}

impl Default for Policies {
    fn default() -> Self {
        Self::new(Rule::Timestamp, BTreeMap::new())
    }
}

impl Policies {
    pub fn new(default: Rule, topics: BTreeMap<String, Rule>) -> Self {
        Self {
            default,
            topics,
            lanes: LaneRules::default(),
            placement: PlacementDefaults::default(),
            strong: Default::default(),
            functions: BTreeMap::new(),
            bounded: BTreeMap::new(),
            sealer: crate::seal::Sealer::new("mrr", ""),
        }
    }

    /// Declares bounded fields: topic → field → bound (`topics.<t>.bounded.<f>.min`).
    pub fn with_bounded(mut self, bounded: BTreeMap<String, BTreeMap<String, i64>>) -> Self {
        self.bounded = bounded;
        self
    }

    /// The bound of `field` in `topic`, if it is a bounded field.
    pub fn bound_of(&self, topic: &str, field: &str) -> Option<i64> {
        self.bounded.get(topic)?.get(field).copied()
    }

    /// Whether `topic` has bounded fields.
    pub fn has_bounded(&self, topic: &str) -> bool {
        self.bounded.get(topic).is_some_and(|f| !f.is_empty())
    }

    pub fn with_lanes(mut self, lanes: LaneRules) -> Self {
        self.lanes = lanes;
        self
    }

    pub fn with_placement(mut self, placement: PlacementDefaults) -> Self {
        self.placement = placement;
        self
    }

    pub fn with_strong(mut self, topics: impl IntoIterator<Item = String>) -> Self {
        self.strong = topics.into_iter().collect();
        self
    }

    pub fn with_functions(
        mut self,
        functions: BTreeMap<String, BTreeMap<String, Arc<dyn crate::strong::UpdateFunction>>>,
    ) -> Self {
        self.functions = functions;
        self
    }

    /// The update function `name` of strong topic `topic`.
    pub fn function(&self, topic: &str, name: &str) -> Option<&Arc<dyn crate::strong::UpdateFunction>> {
        self.functions.get(topic)?.get(name)
    }

    /// Whether `topic` is `consistency: strong`.
    /// A `consistency: strong` topic, or the reserved membership topic
    /// ([`crate::membership::TOPIC`]), which only the strong tier writes.
    pub fn is_strong(&self, topic: &str) -> bool {
        self.strong.contains(topic) || topic == crate::membership::TOPIC
    }

    pub fn rule(&self, topic: &str) -> &Rule {
        self.topics.get(topic).unwrap_or(&self.default)
    }

    /// A canonical description of every rule. Two regions with different digests would merge
    /// the same writes differently, so peers refuse each other on a mismatch.
    pub fn digest(&self) -> String {
        let describe = |r: &Rule| match r {
            Rule::Custom(h) => format!("custom:{}", h.fingerprint()),
            r => r.name().to_owned(),
        };
        let mut s = format!("default={}", describe(&self.default));
        for (topic, rule) in &self.topics {
            s.push_str(&format!(";{topic}={}", describe(rule)));
        }
        if !self.strong.is_empty() {
            let strong: Vec<&str> = self.strong.iter().map(String::as_str).collect();
            s.push_str(&format!(";strong={}", strong.join(",")));
        }
        for (topic, fields) in &self.bounded {
            for (field, min) in fields {
                s.push_str(&format!(";bounded:{topic}.{field}>={min}"));
            }
        }
        for (topic, functions) in &self.functions {
            for (name, f) in functions {
                s.push_str(&format!(";fn:{topic}.{name}={}", f.fingerprint()));
            }
        }
        s.push_str(&format!(";seal={}", self.sealer.fingerprint()));
        s
    }
}
