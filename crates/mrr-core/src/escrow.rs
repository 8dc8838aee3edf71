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
//! Asking for rights is part of the state too: `asked[(r, j)]` is a mark r sets on what j has
//! granted it, "j's grants to me should reach this"; it too is written only by r and only
//! grows. The part j has not yet granted is outstanding, and j answers it with a transfer when
//! it sees it ([`Escrow::tend`]). Since requests travel inside the state, they need no
//! protocol of their own: they cross partitions, restarts and duplicated or reordered
//! messages the way every other entry does, and a request made twice is one request.
//!
//! The bound itself (`min`) is fixed when the counter is created, from the topic's policy,
//! which every region runs alike (the policy digest).
//!
//! Not here: where the counter lives (a field of a merge document, [`crate::doc`]), how the
//! recent rate per region is measured (the writer samples it), when tending runs.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::RegionName;

/// Per region, per other region: units (granted) or ask marks (asked).
type Matrix = BTreeMap<RegionName, BTreeMap<RegionName, u64>>;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escrow {
    /// The bound. `None` only in a default value that has not met its counter's state yet.
    min: Option<i64>,
    /// `granted[from][to]`; `granted[r][r]` are the units r's increments created.
    granted: Matrix,
    consumed: BTreeMap<RegionName, u64>,
    /// `asked[asker][holder]`: the mark `asker` set on `granted[holder][asker]`.
    asked: Matrix,
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

/// What a region knows of demand when it tends a counter ([`Escrow::tend`]).
#[derive(Clone, Copy, Debug)]
pub struct Outlook<'a> {
    /// Expected units per region over the horizon the caller plans for.
    pub demand: &'a BTreeMap<RegionName, u64>,
    /// Units the local region's buyers were just refused (what to ask for at least).
    pub short: u64,
    /// Whether the local region's buyers were refused lately: its own demand is not being
    /// met, so it gives nothing away ahead of demand and answers only beyond its demand.
    pub starved: bool,
    /// Holders that left an earlier ask unanswered (cut off, or down): not asked again.
    pub avoid: &'a BTreeSet<RegionName>,
}

/// What one region should write after looking at a counter ([`Escrow::tend`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tending {
    /// Transfers to make, one per region.
    pub gives: Vec<(RegionName, u64)>,
    /// Rights to ask a holder for: (holder, units).
    pub ask: Option<(RegionName, u64)>,
}

impl Tending {
    pub fn is_empty(&self) -> bool {
        self.gives.is_empty() && self.ask.is_none()
    }
}

fn get(m: &Matrix, a: &RegionName, b: &RegionName) -> u64 {
    m.get(a).and_then(|row| row.get(b)).copied().unwrap_or(0)
}

fn raise(m: &mut Matrix, a: &RegionName, b: &RegionName, to: u64) {
    let e = m.entry(a.clone()).or_default().entry(b.clone()).or_insert(0);
    *e = (*e).max(to);
}

fn join_matrix(a: &mut Matrix, b: &Matrix) {
    for (from, row) in b {
        for (to, n) in row {
            raise(a, from, to, *n);
        }
    }
}

impl Escrow {
    /// A counter at its bound, with no rights anywhere.
    pub fn bounded(min: i64) -> Self {
        Self { min: Some(min), ..Self::default() }
    }

    /// A counter whose `initial` units above the bound (0) are all held by `region`.
    pub fn new(region: &RegionName, initial: u64) -> Self {
        let mut e = Self::bounded(0);
        if initial > 0 {
            raise(&mut e.granted, region, region, initial);
        }
        e
    }

    /// The bound (0 until the counter's state has arrived).
    pub fn min(&self) -> i64 {
        self.min.unwrap_or(0)
    }

    /// The value a read shows: the bound plus every unit above it.
    pub fn value(&self) -> i64 {
        let v = i128::from(self.min()) + i128::from(self.total());
        i64::try_from(v).unwrap_or(i64::MAX)
    }

    /// Units above the bound, over all regions (as far as this replica knows).
    pub fn total(&self) -> u64 {
        let created: u128 = self.granted.iter().map(|(r, row)| u128::from(row.get(r).copied().unwrap_or(0))).sum();
        let consumed: u128 = self.consumed.values().map(|n| u128::from(*n)).sum();
        u64::try_from(created.saturating_sub(consumed)).unwrap_or(u64::MAX)
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
    pub fn balance(&self, region: &RegionName) -> i128 {
        let received: i128 = self.granted.values().filter_map(|row| row.get(region)).map(|n| i128::from(*n)).sum();
        let given: i128 = self
            .granted
            .get(region)
            .into_iter()
            .flatten()
            .filter(|(to, _)| *to != region)
            .map(|(_, n)| i128::from(*n))
            .sum();
        received - given - i128::from(self.consumed.get(region).copied().unwrap_or(0))
    }

    /// Every region this replica has heard of for this counter.
    fn regions(&self) -> BTreeSet<&RegionName> {
        let mut regions: BTreeSet<&RegionName> = self.consumed.keys().collect();
        for m in [&self.granted, &self.asked] {
            for (a, row) in m {
                regions.insert(a);
                regions.extend(row.keys());
            }
        }
        regions
    }

    /// Every region's rights, as this replica knows them.
    pub fn all_rights(&self) -> BTreeMap<RegionName, u64> {
        self.regions().into_iter().map(|r| (r.clone(), self.rights(r))).collect()
    }

    /// The region other than `except` that holds the most rights as this replica knows them
    /// (a lower bound of what it holds), and those rights; the first by name on a tie.
    pub fn richest_other(&self, except: &RegionName) -> Option<(RegionName, u64)> {
        self.richest(|r| r != except).map(|(r, n)| (r.clone(), n))
    }

    /// The region `eligible` admits that holds the most rights (more than none) as this
    /// replica knows them, and those rights; the first by name on a tie.
    fn richest(&self, eligible: impl Fn(&RegionName) -> bool) -> Option<(&RegionName, u64)> {
        self.regions().into_iter().filter(|r| eligible(r)).map(|r| (r, self.rights(r))).filter(|(_, n)| *n > 0).fold(
            None,
            |best, (r, n)| match best {
                Some((_, m)) if m >= n => best,
                _ => Some((r, n)),
            },
        )
    }

    /// Units `region` has consumed in all, as this replica knows.
    pub fn consumed(&self, region: &RegionName) -> u64 {
        self.consumed.get(region).copied().unwrap_or(0)
    }

    /// Every region's consumed units, as this replica knows them.
    pub fn consumed_all(&self) -> &BTreeMap<RegionName, u64> {
        &self.consumed
    }

    /// `region` adds `n` units: they become its rights.
    pub fn increment(&mut self, region: &RegionName, n: u64) -> Result<(), EscrowError> {
        self.total().checked_add(n).ok_or(EscrowError::Overflow)?;
        let now = get(&self.granted, region, region).checked_add(n).ok_or(EscrowError::Overflow)?;
        raise(&mut self.granted, region, region, now);
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
        let now = get(&self.granted, from, to).checked_add(n).ok_or(EscrowError::Overflow)?;
        raise(&mut self.granted, from, to, now);
        Ok(())
    }

    /// `asker` asks `holder` for `n` more units than `holder` has granted it so far (as
    /// `asker` knows). Only `asker` may make this call. Returns whether the ask grew (an ask
    /// already covering `n` is not repeated).
    pub fn ask(&mut self, asker: &RegionName, holder: &RegionName, n: u64) -> Result<bool, EscrowError> {
        if asker == holder {
            return Err(EscrowError::SelfTransfer);
        }
        let mark = get(&self.granted, holder, asker).checked_add(n).ok_or(EscrowError::Overflow)?;
        let grew = mark > get(&self.asked, asker, holder);
        raise(&mut self.asked, asker, holder, mark);
        Ok(grew)
    }

    /// What `asker` asked of `holder` that `holder` has not granted yet, as this replica knows.
    pub fn outstanding(&self, asker: &RegionName, holder: &RegionName) -> u64 {
        get(&self.asked, asker, holder).saturating_sub(get(&self.granted, holder, asker))
    }

    /// Takes in another replica's state: the larger of each entry.
    pub fn merge(&mut self, other: &Escrow) {
        // Every creator writes the policy's bound; the larger keeps the join a function.
        self.min = self.min.max(other.min);
        join_matrix(&mut self.granted, &other.granted);
        join_matrix(&mut self.asked, &other.asked);
        for (r, n) in &other.consumed {
            let e = self.consumed.entry(r.clone()).or_insert(0);
            *e = (*e).max(*n);
        }
    }

    /// The entries `region` writes, and the bound: what a change made by `region` carries.
    pub fn own_entries(&self, region: &RegionName) -> Escrow {
        let mut out = Escrow { min: self.min, ..Escrow::default() };
        if let Some(row) = self.granted.get(region) {
            out.granted.insert(region.clone(), row.clone());
        }
        if let Some(row) = self.asked.get(region) {
            out.asked.insert(region.clone(), row.clone());
        }
        if let Some(n) = self.consumed.get(region) {
            out.consumed.insert(region.clone(), *n);
        }
        out
    }

    /// Whether this state asks anything of `holder` that it has not granted.
    pub fn asks_of(&self, holder: &RegionName) -> bool {
        self.asked.iter().any(|(asker, _)| asker != holder && self.outstanding(asker, holder) > 0)
    }

    /// The transfers `local` should make now, given each region's expected demand over the
    /// next transfer's round trip (units): to every region expected to need more than it
    /// holds, from what `local` holds beyond its own expected demand, neediest first. Pure
    /// and deterministic; the caller makes the transfers it returns (each one with
    /// [`Escrow::transfer`]).
    pub fn plan_transfers(&self, local: &RegionName, demand: &BTreeMap<RegionName, u64>) -> Vec<(RegionName, u64)> {
        let own = demand.get(local).copied().unwrap_or(0);
        let spare = self.rights(local).saturating_sub(own);
        self.top_up(local, demand, spare)
    }

    fn top_up(&self, local: &RegionName, demand: &BTreeMap<RegionName, u64>, mut spare: u64) -> Vec<(RegionName, u64)> {
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

    /// What `local` should write now, in this order:
    ///
    /// 1. **Answers**: every outstanding ask of `local`, largest first, from what `local`
    ///    holds beyond a reserve for its own demand. While `local`'s own demand is met
    ///    (`outlook.starved` false) the reserve is at most half its rights, so a region whose
    ///    own buyers are busy still answers; while its buyers are being refused, it reserves
    ///    all its demand — rights do not move away from unmet demand, or the last units would
    ///    travel from one short region to the next, unsellable while in flight.
    /// 2. **Ahead of demand**, unless `local` is starved itself: regions expected to run below
    ///    half their demand are topped up to it from what is left beyond `local`'s own demand
    ///    ([`Escrow::plan_transfers`]).
    /// 3. **An ask**, when what `local` keeps is below half its demand, or below
    ///    `outlook.short`: of the region that holds the most rights (not in `outlook.avoid`),
    ///    for what is missing up to its demand — unless an outstanding ask to it covers that
    ///    already.
    ///
    /// Pure and deterministic; the caller writes what it returns, with [`Escrow::transfer`]
    /// and [`Escrow::ask`].
    pub fn tend(&self, local: &RegionName, outlook: &Outlook<'_>) -> Tending {
        let Outlook { demand, short, starved, avoid } = *outlook;
        let rights = self.rights(local);
        let own = demand.get(local).copied().unwrap_or(0);
        let mut gives: BTreeMap<RegionName, u64> = BTreeMap::new();
        // 1. Answers.
        let reserve = if starved { own.min(rights) } else { own.min(rights / 2) };
        let mut spare = rights - reserve;
        let mut asks: Vec<(u64, &RegionName)> = self
            .asked
            .keys()
            .filter(|asker| *asker != local)
            .map(|asker| (self.outstanding(asker, local), asker))
            .filter(|(n, _)| *n > 0)
            .collect();
        asks.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        for (n, asker) in asks {
            let n = n.min(spare);
            if n == 0 {
                break;
            }
            spare -= n;
            *gives.entry(asker.clone()).or_insert(0) += n;
        }
        // 2. Ahead of demand, for regions below half their demand.
        let given: u64 = gives.values().sum();
        let low: BTreeMap<RegionName, u64> = demand
            .iter()
            .filter(|(r, want)| *r != local && self.rights(r) + gives.get(*r).copied().unwrap_or(0) < **want / 2)
            .map(|(r, want)| (r.clone(), want.saturating_sub(gives.get(r).copied().unwrap_or(0))))
            .collect();
        if !starved {
            for (r, n) in self.top_up(local, &low, rights.saturating_sub(given).saturating_sub(own)) {
                *gives.entry(r).or_insert(0) += n;
            }
        }
        // 3. An ask.
        let kept = rights - gives.values().sum::<u64>();
        let want = own.max(short);
        let ask = if kept < short || kept < want / 2 {
            let need = want - kept.min(want);
            let regions = self.regions().len() + usize::from(!self.regions().contains(local));
            self.richest(|r| r != local && !avoid.contains(r))
                .filter(|(holder, _)| need > 0 && self.outstanding(local, holder) < need)
                .map(|(holder, held)| {
                    // Before a rate is known, demand reads as the few units just refused;
                    // asking for a fair part of what the holder has saves round trips.
                    let fair = held / (2 * u64::try_from(regions.max(2)).unwrap_or(u64::MAX));
                    (holder.clone(), need.max(fair))
                })
        } else {
            None
        };
        Tending { gives: gives.into_iter().collect(), ask }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn r(name: &str) -> RegionName {
        RegionName::new(name).expect("valid")
    }

    /// `tend` for a region whose own demand is met.
    fn tend(
        e: &Escrow,
        local: &RegionName,
        demand: &BTreeMap<RegionName, u64>,
        short: u64,
        avoid: &BTreeSet<RegionName>,
    ) -> Tending {
        e.tend(local, &Outlook { demand, short, starved: short > 0, avoid })
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

    #[test]
    fn an_ask_is_answered_once_from_what_the_holder_spares() {
        let (a, b) = (r("a"), r("b"));
        let none = BTreeSet::new();
        let mut at_a = Escrow::new(&a, 100);
        let mut at_b = at_a.clone();
        // b's buyers were refused 5 units; b expects 20 over the horizon: it asks a for a fair
        // part of a's 100 (a quarter, with two regions), which covers the 20.
        let demand_b: BTreeMap<_, _> = [(b.clone(), 20)].into_iter().collect();
        let plan = tend(&at_b, &b, &demand_b, 5, &none);
        assert_eq!(plan, Tending { gives: vec![], ask: Some((a.clone(), 25)) });
        assert!(at_b.ask(&b, &a, 20).expect("no overflow"));
        assert!(!at_b.ask(&b, &a, 20).expect("no overflow"), "the same ask again is not a new one");
        assert_eq!(tend(&at_b, &b, &demand_b, 5, &none).ask, None, "covered by the outstanding ask");
        // a sees the ask and answers it (its own demand is 30: it keeps min(30, 50)).
        at_a.merge(&at_b.own_entries(&b));
        assert!(at_a.asks_of(&a));
        let demand_a: BTreeMap<_, _> = [(a.clone(), 30)].into_iter().collect();
        let plan = tend(&at_a, &a, &demand_a, 0, &none);
        assert_eq!(plan.gives, vec![(b.clone(), 20)], "a keeps min(30, 50) and answers the rest of 100 up to the ask");
        at_a.transfer(&a, &b, 20).expect("a holds 100");
        assert_eq!(at_a.outstanding(&b, &a), 0);
        assert!(tend(&at_a, &a, &demand_a, 0, &none).is_empty(), "answered: nothing more to do");
        // The answer arrives twice (duplicated): b holds 20, once.
        at_b.merge(&at_a.own_entries(&a));
        at_b.merge(&at_a.own_entries(&a));
        assert_eq!(at_b.rights(&b), 20);
        assert_eq!(at_b.outstanding(&b, &a), 0);
        // A holder that left an ask unanswered is avoided; with no other holder, no ask.
        let avoid: BTreeSet<_> = [a.clone()].into_iter().collect();
        assert_eq!(tend(&at_b, &b, &[(b.clone(), 100)].into_iter().collect(), 0, &avoid).ask, None);
    }

    /// `holder`'s replica of a counter it holds 40 units of, after `asker` asked it for 100.
    fn holding_40_asked_100(holder: &RegionName, asker: &RegionName) -> Escrow {
        let mut e = Escrow::new(holder, 40);
        let mut at_asker = e.clone();
        at_asker.ask(asker, holder, 100).expect("no overflow");
        e.merge(&at_asker.own_entries(asker));
        e
    }

    #[test]
    fn a_busy_holder_still_answers_with_half_and_tops_up_low_regions() {
        let (a, b, c) = (r("a"), r("b"), r("c"));
        let none = BTreeSet::new();
        let e = holding_40_asked_100(&a, &b);
        // a expects 1,000 units of its own demand: it keeps half of 40 and answers with 20.
        let plan = tend(&e, &a, &[(a.clone(), 1_000)].into_iter().collect(), 0, &none);
        assert_eq!(plan.gives, vec![(b.clone(), 20)]);
        // Calm a, c expected to need 10 and holding nothing: a tops c up ahead of demand.
        let calm = Escrow::new(&a, 40);
        let plan = tend(&calm, &a, &[(a.clone(), 5), (c.clone(), 10)].into_iter().collect(), 0, &none);
        assert_eq!(plan, Tending { gives: vec![(c.clone(), 10)], ask: None });
    }

    #[test]
    fn a_starved_holder_keeps_what_its_own_demand_needs() {
        // The end of a flash sale: a holds the last 40 units and its buyers were just refused
        // (its demand, 1,000, is not met); b asks, c is expected to need 10 and holds nothing.
        let (a, b, c) = (r("a"), r("b"), r("c"));
        let none = BTreeSet::new();
        let e = holding_40_asked_100(&a, &b);
        let demand: BTreeMap<_, _> = [(a.clone(), 1_000), (c.clone(), 10)].into_iter().collect();
        let starved = Outlook { demand: &demand, short: 0, starved: true, avoid: &none };
        // Nothing moves: half of it would travel to b, unsellable for a round trip, while a's
        // own buyers wait; and the next short region would take half of that on.
        assert_eq!(e.tend(&a, &starved).gives, vec![]);
        // Its demand met again, a answers with half and keeps half.
        let met = Outlook { starved: false, ..starved };
        assert_eq!(e.tend(&a, &met).gives, vec![(b.clone(), 20)]);
        // Starved, it still answers from what is beyond its own demand.
        let small: BTreeMap<_, _> = [(a.clone(), 15)].into_iter().collect();
        assert_eq!(e.tend(&a, &Outlook { demand: &small, ..starved }).gives, vec![(b.clone(), 25)]);
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
