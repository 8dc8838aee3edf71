//! Region membership: which regions make up the cluster, as the strong tier's log decides.
//!
//! The configs' `regions:` lists are the *seed*: a cluster that never changed its membership is
//! exactly the regions its configs name, every one an original member (incarnation 0). The first
//! `mrr region add`/`remove`/`lost` writes the whole table, seeded so, as one record of the
//! reserved strong topic [`TOPIC`] through the Raft log; from then on that record is the
//! membership everywhere, a restart included, whatever a config says. Each change is a
//! compare-and-set on the table's version, so two changes proposed at once never both apply
//! to the same table.
//!
//! A region added while the cluster runs is *joining* until it has installed a snapshot and says
//! so ([`Change::Joined`]); it replicates like a member meanwhile (it must get every change) but
//! is not counted where every region must answer (`ack=all`, the strong tier's voters). A region
//! removed or declared lost is out: peers refuse its handshakes and leave it out of the stable
//! point. Its *incarnation* (the epoch that admitted it) is what stops a lost region that comes
//! back with its old data: its handshake names the incarnation its data directory was admitted
//! at, and a region added again under the same name has a new one, which only a data directory
//! bootstrapped from a snapshot since learns.
//!
//! Sans-IO: deciding whether a change applies and what the table becomes. Not here: proposing
//! it (`mrr-server`), or what replication and the Raft group do with a new table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::RegionName;

/// The reserved strong topic holding the table (a topic name users cannot write: user topics
/// start with a letter).
pub const TOPIC: &str = "_cluster";
/// The table's record id in [`TOPIC`].
pub const ID: &str = "regions";
/// Regions a cluster may have (each is a stream origin, a dialer and a voter).
pub const REGIONS_MAX: usize = 64;

/// Where a region stands in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionState {
    /// Added: installing a snapshot and catching up. Replicates; not yet a voter.
    Joining,
    /// A full member.
    Active,
    /// Left the cluster cleanly (nothing was placed only in it).
    Removed,
    /// Declared lost: its writes that did not reach another region are given up.
    Lost,
}

impl RegionState {
    pub fn is_member(self) -> bool {
        matches!(self, RegionState::Joining | RegionState::Active)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RegionState::Joining => "joining",
            RegionState::Active => "active",
            RegionState::Removed => "removed",
            RegionState::Lost => "lost",
        }
    }
}

/// One region's entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionEntry {
    /// Its peer listener (`http://` or `https://host:port`).
    pub endpoint: String,
    /// Its HTTP API, when known (forwarding and `mrr region status` use it).
    #[serde(default)]
    pub api: Option<String>,
    pub state: RegionState,
    /// The epoch that admitted it (0: an original member of the seed). A data directory knows
    /// the incarnation it was bootstrapped into; another one is a stale copy.
    pub incarnation: u64,
    /// The epoch of its last change of state.
    pub since_epoch: u64,
}

/// The cluster's regions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Changes applied since the seed (0: the seed itself).
    pub epoch: u64,
    pub regions: BTreeMap<RegionName, RegionEntry>,
}

/// A change of the membership, as proposed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A new region (or one removed or lost before, under a new incarnation).
    Add { region: RegionName, endpoint: String, api: Option<String> },
    /// A joining region has installed its snapshot under `incarnation` and serves.
    Joined { region: RegionName, incarnation: u64 },
    /// A region leaves cleanly.
    Remove { region: RegionName },
    /// A region is given up: what it wrote and no other region got is lost with it.
    Lost { region: RegionName },
}

impl Change {
    pub fn region(&self) -> &RegionName {
        match self {
            Change::Add { region, .. }
            | Change::Joined { region, .. }
            | Change::Remove { region }
            | Change::Lost { region } => region,
        }
    }
}

/// Why a change does not apply. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("region {0} is already a member of the cluster")]
    Exists(RegionName),
    #[error("region {0} is not a member of the cluster")]
    Unknown(RegionName),
    #[error("region {0} is the last member of the cluster: a cluster cannot remove every region")]
    LastRegion(RegionName),
    #[error("region {region} is {state}, not joining under incarnation {incarnation}")]
    NotJoining { region: RegionName, state: &'static str, incarnation: u64 },
    #[error("the cluster holds {REGIONS_MAX} regions already")]
    TooMany,
    #[error("the endpoint {0:?} is not an http:// or https:// address")]
    Endpoint(String),
}

impl Membership {
    /// The membership of a cluster that never changed it: `regions` (name, peer endpoint, API)
    /// are original active members.
    pub fn seed(regions: impl IntoIterator<Item = (RegionName, String, Option<String>)>) -> Self {
        let regions = regions
            .into_iter()
            .map(|(name, endpoint, api)| {
                (name, RegionEntry { endpoint, api, state: RegionState::Active, incarnation: 0, since_epoch: 0 })
            })
            .collect();
        Self { epoch: 0, regions }
    }

    /// The table after `change`, or why it does not apply.
    pub fn apply(&self, change: &Change) -> Result<Self, MembershipError> {
        let mut next = self.clone();
        next.epoch = self.epoch + 1;
        let epoch = next.epoch;
        let region = change.region();
        let entry = next.regions.get_mut(region);
        match (change, entry) {
            (Change::Add { .. }, Some(e)) if e.state.is_member() => {
                return Err(MembershipError::Exists(region.clone()))
            }
            (Change::Add { endpoint, api, .. }, existing) => {
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    return Err(MembershipError::Endpoint(endpoint.clone()));
                }
                if existing.is_none() && self.regions.len() >= REGIONS_MAX {
                    return Err(MembershipError::TooMany);
                }
                let entry = RegionEntry {
                    endpoint: endpoint.clone(),
                    api: api.clone(),
                    state: RegionState::Joining,
                    incarnation: epoch,
                    since_epoch: epoch,
                };
                next.regions.insert(region.clone(), entry);
            }
            (Change::Joined { incarnation, .. }, Some(e))
                if e.state == RegionState::Joining && e.incarnation == *incarnation =>
            {
                e.state = RegionState::Active;
                e.since_epoch = epoch;
            }
            (Change::Joined { incarnation, .. }, Some(e))
                if e.state == RegionState::Active && e.incarnation == *incarnation =>
            {
                // Said twice (a retry after an answer was lost): nothing changes.
                return Ok(self.clone());
            }
            (Change::Joined { incarnation, .. }, e) => {
                return Err(MembershipError::NotJoining {
                    region: region.clone(),
                    state: e.map_or("unknown", |e| e.state.as_str()),
                    incarnation: *incarnation,
                })
            }
            (Change::Remove { .. } | Change::Lost { .. }, Some(e)) if e.state.is_member() => {
                if self.members().filter(|(r, _)| *r != region).count() == 0 {
                    return Err(MembershipError::LastRegion(region.clone()));
                }
                e.state = if matches!(change, Change::Lost { .. }) { RegionState::Lost } else { RegionState::Removed };
                e.since_epoch = epoch;
            }
            (Change::Remove { .. } | Change::Lost { .. }, _) => return Err(MembershipError::Unknown(region.clone())),
        }
        Ok(next)
    }

    /// Joining and active regions.
    pub fn members(&self) -> impl Iterator<Item = (&RegionName, &RegionEntry)> + Clone {
        self.regions.iter().filter(|(_, e)| e.state.is_member())
    }

    pub fn is_member(&self, region: &RegionName) -> bool {
        self.regions.get(region).is_some_and(|e| e.state.is_member())
    }

    /// Active regions: the ones every region must hear from (`ack=all`, voters).
    pub fn active(&self) -> impl Iterator<Item = &RegionName> + Clone {
        self.regions.iter().filter(|(_, e)| e.state == RegionState::Active).map(|(r, _)| r)
    }

    pub fn get(&self, region: &RegionName) -> Option<&RegionEntry> {
        self.regions.get(region)
    }

    /// Whether a peer of `incarnation` (`None`: an empty data directory asking where it
    /// stands) is admitted as `region` now: a member, and, with its data, the incarnation the
    /// table admitted. `Err` says why not, for the peer to read.
    pub fn admits(&self, region: &RegionName, incarnation: Option<u64>) -> Result<(), String> {
        let Some(entry) = self.regions.get(region) else {
            return Err(format!(
                "region {region} is not a member of this cluster: add it with `mrr region add {region} --endpoint <its peer address>` at a member"
            ));
        };
        match entry.state {
            RegionState::Removed | RegionState::Lost => Err(format!(
                "region {region} was {} at membership epoch {}: it cannot replicate with its old data; to bring it back, stop it, move its data directory aside, run `mrr region add {region} --endpoint <its peer address>` at a member and start it (it rejoins from a snapshot)",
                entry.state.as_str(),
                entry.since_epoch
            )),
            RegionState::Joining | RegionState::Active => match incarnation {
                None => Ok(()),
                Some(i) if i == entry.incarnation => Ok(()),
                // Admitted by a change this table has not applied yet: the dialer knows a newer
                // table (a stale copy names an incarnation this table has seen or passed).
                Some(i) if i > self.epoch => Ok(()),
                Some(i) => Err(format!(
                    "region {region}'s data directory belongs to incarnation {i}, but the cluster admitted region {region} again at epoch {} after it left: stop it, move its data directory aside and start it (it rejoins from a snapshot)",
                    entry.incarnation
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str) -> RegionName {
        RegionName::new(name).expect("valid")
    }

    fn seed() -> Membership {
        Membership::seed(["a", "b", "c"].map(|n| (r(n), format!("http://{n}:1"), None)))
    }

    fn add(name: &str) -> Change {
        Change::Add { region: r(name), endpoint: format!("http://{name}:1"), api: None }
    }

    #[test]
    fn an_added_region_joins_then_becomes_active_and_counts_as_a_member_throughout() {
        let m = seed().apply(&add("d")).expect("added");
        let d = m.get(&r("d")).expect("there");
        assert_eq!((d.state, d.incarnation, m.epoch), (RegionState::Joining, 1, 1));
        assert!(m.is_member(&r("d")));
        assert_eq!(m.active().count(), 3, "a joining region is not active yet");
        let m = m.apply(&Change::Joined { region: r("d"), incarnation: 1 }).expect("joined");
        assert_eq!(m.get(&r("d")).map(|e| e.state), Some(RegionState::Active));
        assert_eq!(m.active().count(), 4);
        assert_eq!(m.apply(&Change::Joined { region: r("d"), incarnation: 1 }), Ok(m.clone()), "said twice");
    }

    #[test]
    fn bad_changes_are_refused_and_change_nothing() {
        let m = seed();
        assert_eq!(m.apply(&add("a")), Err(MembershipError::Exists(r("a"))));
        assert_eq!(m.apply(&Change::Remove { region: r("x") }), Err(MembershipError::Unknown(r("x"))));
        assert!(matches!(
            m.apply(&Change::Add { region: r("d"), endpoint: "d:1".into(), api: None }),
            Err(MembershipError::Endpoint(_))
        ));
        assert!(matches!(
            m.apply(&Change::Joined { region: r("a"), incarnation: 5 }),
            Err(MembershipError::NotJoining { .. })
        ));
        let m = m.apply(&Change::Remove { region: r("a") }).and_then(|m| m.apply(&Change::Lost { region: r("b") }));
        let m = m.expect("two of three go");
        assert_eq!(m.apply(&Change::Remove { region: r("c") }), Err(MembershipError::LastRegion(r("c"))));
        assert_eq!(m.apply(&Change::Remove { region: r("a") }), Err(MembershipError::Unknown(r("a"))), "gone already");
    }

    #[test]
    fn a_lost_region_is_refused_until_added_again_and_then_only_with_a_new_data_directory() {
        let m = seed().apply(&Change::Lost { region: r("c") }).expect("lost");
        assert!(!m.is_member(&r("c")));
        assert!(m.admits(&r("c"), Some(0)).is_err(), "its old data");
        assert!(m.admits(&r("c"), None).is_err(), "not even to ask: it is not a member");
        let m = m.apply(&add("c")).expect("added again");
        let incarnation = m.get(&r("c")).map(|e| e.incarnation).expect("there");
        assert_eq!(incarnation, 2);
        assert!(m.admits(&r("c"), Some(0)).is_err(), "the old data directory stays out");
        assert!(m.admits(&r("c"), None).is_ok(), "an empty directory may ask for a snapshot");
        assert!(m.admits(&r("c"), Some(incarnation)).is_ok());
        assert!(m.admits(&r("zz"), None).is_err());
        assert!(seed().admits(&r("a"), Some(7)).is_ok(), "admitted by a change the seed has not seen yet");
        assert!(m.admits(&r("a"), Some(0)).is_ok());
    }
}
