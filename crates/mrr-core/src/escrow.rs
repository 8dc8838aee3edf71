//! Escrow counters: a number that never goes below its bound, decremented at local latency.
//!
//! The amount above the bound is split into *rights* held by regions. A region decrements only
//! against rights it holds, and moves rights to another region by a transfer it makes itself;
//! an increment creates rights where it is made. This is AntidoteDB's bounded counter (after
//! O'Neil's escrow): the state is
//!
//! - `granted[(from, to)]`: units `from` has given `to`; `granted[(r, r)]` are the units r's
//!   increments created (and a new counter's initial amount, in the region that created it);
//! - `consumed[r]`: units r's decrements took.
//!
//! **Laws.** Every entry is written only by the region it is keyed by first, and only grows.
//! Merge is the entry-wise maximum, so it is commutative, associative and idempotent: replicas
//! converge whatever the order, duplication or delay of what they exchange, and no operation is
//! lost by a merge. A region's rights are `granted[(r, r)] + Σ granted[(j, r)] − Σ granted[(r, j)]
//! − consumed[r]` (j ≠ r): the entries it subtracts are its own, so every replica of r holds
//! them exactly; the entries others wrote can only add to r's rights, so r's own view of its
//! rights is never more than its true rights. Every decrement and transfer is checked against
//! that view, so rights never go negative anywhere, and the value, `bound + Σ rights`, never
//! goes below the bound — under partitions, crashes (a region's own entries are in its durable
//! state before anything is acknowledged) and reordered or duplicated messages.
//!
//! Not here: where the counter lives (a field of a merge document), how requests for rights
//! travel, when rights move ahead of demand (the policy is [`Escrow::plan_transfers`], the
//! caller decides when to ask it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::RegionName;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escrow {
    granted: BTreeMap<(RegionName, RegionName), u64>,
    consumed: BTreeMap<RegionName, u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EscrowError {
    /// The region holds fewer rights than the operation needs.
    #[error("{region} holds {held} units of rights, {asked} needed")]
    Insufficient { region: RegionName, held: u64, asked: u64 },
    /// The counter would pass `u64::MAX` units.
    #[error("the counter would overflow")]
    Overflow,
    #[error("a transfer needs two different regions")]
    SelfTransfer,
}

impl Escrow {
    /// A counter whose `initial` units above the bound are all held by `region`.
    pub fn new(region: &RegionName, initial: u64) -> Self {
        let mut e = Self::default();
        if initial > 0 {
            e.granted.insert((region.clone(), region.clone()), initial);
        }
        e
    }

    /// Units above the bound, over all regions (as far as this replica knows).
    pub fn total(&self) -> u64 {
        let created: u64 = self.granted.iter().filter(|((f, t), _)| f == t).map(|(_, n)| *n).sum();
        let consumed: u64 = self.consumed.values().sum();
        created.saturating_sub(consumed)
    }

    /// The rights `region` holds, as this replica knows them: exact in `region`'s own replica,
    /// a lower bound elsewhere.
    pub fn rights(&self, region: &RegionName) -> u64 {
        // Never negative in `region`'s own replica (its operations check it); elsewhere a view
        // that has not yet seen all of `region`'s own entries may compute less than nothing.
        u64::try_from(self.balance(region).max(0)).unwrap_or(u64::MAX)
    }

    /// `region`'s rights as a signed sum: received (its increments included) minus given and
    /// consumed.
    fn balance(&self, region: &RegionName) -> i128 {
        let mut balance: i128 = 0;
        for ((from, to), n) in &self.granted {
            if to == region {
                balance += i128::from(*n);
            } else if from == region {
                balance -= i128::from(*n);
            }
        }
        balance - i128::from(self.consumed.get(region).copied().unwrap_or(0))
    }

    /// Every region's rights, as this replica knows them.
    pub fn all_rights(&self) -> BTreeMap<RegionName, u64> {
        let mut regions: Vec<&RegionName> = self.granted.keys().flat_map(|(f, t)| [f, t]).collect();
        regions.extend(self.consumed.keys());
        regions.sort();
        regions.dedup();
        regions.into_iter().map(|r| (r.clone(), self.rights(r))).collect()
    }

    /// `region` adds `n` units: they become its rights.
    pub fn increment(&mut self, region: &RegionName, n: u64) -> Result<(), EscrowError> {
        self.total().checked_add(n).ok_or(EscrowError::Overflow)?;
        let e = self.granted.entry((region.clone(), region.clone())).or_insert(0);
        *e = e.checked_add(n).ok_or(EscrowError::Overflow)?;
        Ok(())
    }

    /// `region` takes `n` units, against its own rights only.
    pub fn decrement(&mut self, region: &RegionName, n: u64) -> Result<(), EscrowError> {
        let held = self.rights(region);
        if held < n {
            return Err(EscrowError::Insufficient { region: region.clone(), held, asked: n });
        }
        let e = self.consumed.entry(region.clone()).or_insert(0);
        *e = e.checked_add(n).ok_or(EscrowError::Overflow)?;
        Ok(())
    }

    /// `from` gives `to` `n` of its rights. Only `from` may make this call (it writes `from`'s
    /// entry).
    pub fn transfer(&mut self, from: &RegionName, to: &RegionName, n: u64) -> Result<(), EscrowError> {
        if from == to {
            return Err(EscrowError::SelfTransfer);
        }
        let held = self.rights(from);
        if held < n {
            return Err(EscrowError::Insufficient { region: from.clone(), held, asked: n });
        }
        let e = self.granted.entry((from.clone(), to.clone())).or_insert(0);
        *e = e.checked_add(n).ok_or(EscrowError::Overflow)?;
        Ok(())
    }

    /// Takes in another replica's state: the larger of each entry.
    pub fn merge(&mut self, other: &Escrow) {
        for (k, n) in &other.granted {
            let e = self.granted.entry(k.clone()).or_insert(0);
            *e = (*e).max(*n);
        }
        for (r, n) in &other.consumed {
            let e = self.consumed.entry(r.clone()).or_insert(0);
            *e = (*e).max(*n);
        }
    }

    /// The transfers `local` should make now, given each region's expected demand over the
    /// next transfer's round trip (units): to every region expected to need more than it
    /// holds, from what `local` holds beyond its own expected demand, neediest first. Pure
    /// and deterministic; the caller makes the transfers it returns (each one with
    /// [`Escrow::transfer`]).
    pub fn plan_transfers(&self, local: &RegionName, demand: &BTreeMap<RegionName, u64>) -> Vec<(RegionName, u64)> {
        let own = demand.get(local).copied().unwrap_or(0);
        let mut spare = self.rights(local).saturating_sub(own);
        let mut short: Vec<(u64, RegionName)> = demand
            .iter()
            .filter(|(r, _)| *r != local)
            .filter_map(|(r, want)| want.checked_sub(self.rights(r)).filter(|s| *s > 0).map(|s| (s, r.clone())))
            .collect();
        short.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut out = Vec::new();
        for (need, region) in short {
            if spare == 0 {
                break;
            }
            let n = need.min(spare);
            spare -= n;
            out.push((region, n));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn r(name: &str) -> RegionName {
        RegionName::new(name).expect("valid")
    }

    #[test]
    fn rights_move_and_the_total_never_goes_below_the_bound() {
        let (tokyo, sf) = (r("ap-northeast"), r("us-west"));
        let mut a = Escrow::new(&tokyo, 10);
        assert_eq!(a.rights(&tokyo), 10);
        a.transfer(&tokyo, &sf, 4).expect("tokyo holds 10");
        let mut b = Escrow::default();
        assert!(matches!(b.decrement(&sf, 1), Err(EscrowError::Insufficient { held: 0, .. })), "not yet received");
        b.merge(&a);
        b.decrement(&sf, 3).expect("sf holds 4");
        assert!(b.decrement(&sf, 2).is_err(), "1 left");
        a.decrement(&tokyo, 6).expect("tokyo holds 6");
        a.merge(&b);
        assert_eq!(a.total(), 1);
        assert_eq!(a.all_rights(), [(tokyo.clone(), 0), (sf.clone(), 1)].into_iter().collect());
        a.increment(&tokyo, 5).expect("no overflow");
        assert_eq!((a.total(), a.rights(&tokyo)), (6, 5));
        assert_eq!(a.transfer(&tokyo, &tokyo, 1), Err(EscrowError::SelfTransfer));
    }

    #[test]
    fn transfers_go_to_the_neediest_from_what_is_spare() {
        let (a, b, c) = (r("a"), r("b"), r("c"));
        let mut e = Escrow::new(&a, 100);
        e.transfer(&a, &b, 10).expect("enough");
        let demand: BTreeMap<_, _> = [(a.clone(), 60), (b.clone(), 30), (c.clone(), 50)].into_iter().collect();
        // a holds 90 and needs 60: 30 spare; c is short 50, b 20.
        assert_eq!(e.plan_transfers(&a, &demand), vec![(c.clone(), 30)]);
        let calm: BTreeMap<_, _> = [(b.clone(), 5)].into_iter().collect();
        assert!(e.plan_transfers(&a, &calm).is_empty(), "b holds enough");
    }

    /// One step of three regions' replicas.
    #[derive(Clone, Debug)]
    enum Step {
        Incr(usize, u64),
        Decr(usize, u64),
        Transfer(usize, usize, u64),
        /// Region `to` receives `from`'s state as it was `age` steps ago (delay, reordering).
        Deliver {
            from: usize,
            to: usize,
            age: usize,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..3usize, 0..20u64).prop_map(|(i, n)| Step::Incr(i, n)),
            (0..3usize, 0..30u64).prop_map(|(i, n)| Step::Decr(i, n)),
            (0..3usize, 0..3usize, 0..30u64).prop_map(|(f, t, n)| Step::Transfer(f, t, n)),
            (0..3usize, 0..3usize, 0..8usize).prop_map(|(from, to, age)| Step::Deliver { from, to, age }),
        ]
    }

    proptest! {
        /// Whatever the interleaving, delay, duplication and order of merges, no replica's
        /// counter is ever below the bound, the decrements that succeeded never exceed what
        /// was created, and once every state reached every replica they agree.
        #[test]
        fn never_below_bound_and_convergent(initial in 0..50u64, steps in prop::collection::vec(step(), 1..120)) {
            let regions = [r("a"), r("b"), r("c")];
            let mut replicas = [Escrow::new(&regions[0], initial), Escrow::default(), Escrow::default()];
            let mut history: Vec<[Escrow; 3]> = vec![replicas.clone()];
            let (mut created, mut taken) = (u128::from(initial), 0u128);
            for s in steps {
                match s {
                    Step::Incr(i, n) => {
                        if replicas[i].increment(&regions[i], n).is_ok() { created += u128::from(n); }
                    }
                    Step::Decr(i, n) => {
                        if replicas[i].decrement(&regions[i], n).is_ok() { taken += u128::from(n); }
                    }
                    Step::Transfer(f, t, n) => { let _ = replicas[f].transfer(&regions[f], &regions[t], n); }
                    Step::Deliver { from, to, age } => {
                        let past = history.len().saturating_sub(1 + age);
                        let old = history[past][from].clone();
                        replicas[to].merge(&old);
                    }
                }
                prop_assert!(taken <= created, "decrements took {taken} of {created}");
                // The truth is every replica's entries together (each entry's largest value is
                // in the replica that writes it).
                let mut truth = Escrow::default();
                for e in &replicas { truth.merge(e); }
                prop_assert_eq!(u128::from(truth.total()), created - taken);
                for (i, e) in replicas.iter().enumerate() {
                    prop_assert!(truth.balance(&regions[i]) >= 0, "region {i} overdrew: {truth:?}");
                    prop_assert!(e.rights(&regions[i]) <= truth.rights(&regions[i]), "region {i} thinks it holds more than it does");
                }
                history.push(replicas.clone());
            }
            // Everyone gets everyone's latest state: one answer.
            let all = replicas.clone();
            for e in replicas.iter_mut() { for o in &all { e.merge(o); } }
            prop_assert_eq!(&replicas[0], &replicas[1]);
            prop_assert_eq!(&replicas[1], &replicas[2]);
            prop_assert_eq!(u128::from(replicas[0].total()), created - taken);
        }

        #[test]
        fn merge_is_commutative_associative_and_idempotent(
            a_ops in prop::collection::vec((0..3usize, 0..10u64), 0..10),
            b_ops in prop::collection::vec((0..3usize, 0..10u64), 0..10),
        ) {
            let regions = [r("a"), r("b"), r("c")];
            let build = |ops: &[(usize, u64)], seed: u64| {
                let mut e = Escrow::new(&regions[0], seed);
                for (i, n) in ops {
                    let _ = e.increment(&regions[*i], *n);
                    let _ = e.transfer(&regions[0], &regions[(*i + 1) % 3], *n / 2);
                    let _ = e.decrement(&regions[*i], *n / 3);
                }
                e
            };
            let (a, b, c) = (build(&a_ops, 20), build(&b_ops, 30), build(&a_ops[..a_ops.len() / 2], 5));
            let merged = |x: &Escrow, y: &Escrow| { let mut m = x.clone(); m.merge(y); m };
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
            prop_assert_eq!(merged(&a, &a), a);
        }
    }
}
