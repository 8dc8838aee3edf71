//! A linearizability checker for one register with reads, writes and compare-and-set, in the
//! Wing–Gong style: search for an order of the operations that respects real time (an
//! operation that returned before another was invoked comes first) and the register's
//! semantics, memoising the (linearized set, value) pairs already explored.
//!
//! An operation whose outcome is unknown (it timed out, or failed in a way that may still
//! have committed) may take effect at any time after its invocation, or never. Histories are
//! checked per key, so each stays small (at most [`OPS_MAX`] operations).

use std::collections::HashSet;

/// Operations per key the checker takes (the search's set of done operations is a `u128`).
pub const OPS_MAX: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Write(u64),
    /// Compare-and-set; `ok` is what it answered (`None`: unknown).
    Cas {
        expect: u64,
        new: u64,
        ok: Option<bool>,
    },
    /// A read that returned this value.
    Read(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub client: usize,
    pub invoke_ms: u64,
    /// `None`: the outcome is unknown (the operation may or may not have taken effect).
    pub return_ms: Option<u64>,
    pub kind: Kind,
}

/// `Ok` when some linearization exists; else a description of the history.
pub fn check(ops: &[Op], initial: u64) -> Result<(), String> {
    if ops.len() > OPS_MAX {
        return Err(format!("{} operations on one key; the checker takes at most {OPS_MAX}", ops.len()));
    }
    // Reads with unknown outcome carry no information: drop them.
    let ops: Vec<&Op> = ops.iter().filter(|o| !(o.return_ms.is_none() && matches!(o.kind, Kind::Read(_)))).collect();
    let all_returned: u128 =
        ops.iter().enumerate().filter(|(_, o)| o.return_ms.is_some()).fold(0, |m, (i, _)| m | (1u128 << i));
    let mut seen = HashSet::new();
    if search(&ops, all_returned, 0, initial, &mut seen) {
        Ok(())
    } else {
        let mut lines: Vec<String> = ops
            .iter()
            .map(|o| format!("client {} {:?} [{} .. {:?}]", o.client, o.kind, o.invoke_ms, o.return_ms))
            .collect();
        lines.sort();
        Err(format!("no linearization of: {}", lines.join("; ")))
    }
}

fn search(ops: &[&Op], must: u128, done: u128, value: u64, seen: &mut HashSet<(u128, u64)>) -> bool {
    if done & must == must {
        return true;
    }
    if !seen.insert((done, value)) {
        return false;
    }
    // An operation may go next only if no pending operation returned before it was invoked.
    let horizon = ops
        .iter()
        .enumerate()
        .filter(|(i, _)| done & (1u128 << i) == 0)
        .filter_map(|(_, o)| o.return_ms)
        .min()
        .unwrap_or(u64::MAX);
    for (i, op) in ops.iter().enumerate() {
        if done & (1u128 << i) != 0 || op.invoke_ms > horizon {
            continue;
        }
        let next = match op.kind {
            Kind::Write(v) => Some(v),
            Kind::Read(v) => (v == value).then_some(value),
            Kind::Cas { expect, new, ok: Some(true) } => (value == expect).then_some(new),
            Kind::Cas { expect, ok: Some(false), .. } => (value != expect).then_some(value),
            Kind::Cas { expect, new, ok: None } => Some(if value == expect { new } else { value }),
        };
        if let Some(v) = next {
            if search(ops, must, done | (1u128 << i), v, seen) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, invoke_ms: u64, return_ms: Option<u64>, kind: Kind) -> Op {
        Op { client, invoke_ms, return_ms, kind }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [op(0, 0, Some(1), Kind::Write(1)), op(1, 2, Some(3), Kind::Read(1))];
        assert!(check(&h, 0).is_ok());
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_not() {
        let h = [op(0, 0, Some(1), Kind::Write(1)), op(1, 2, Some(3), Kind::Read(0))];
        assert!(check(&h, 0).is_err());
    }

    #[test]
    fn concurrent_operations_may_go_either_way() {
        let h =
            [op(0, 0, Some(10), Kind::Write(1)), op(1, 1, Some(2), Kind::Read(0)), op(2, 3, Some(4), Kind::Read(1))];
        assert!(check(&h, 0).is_ok());
        // Once a read saw the new value, a later read may not see the old one.
        let h =
            [op(0, 0, Some(10), Kind::Write(1)), op(1, 1, Some(2), Kind::Read(1)), op(2, 3, Some(4), Kind::Read(0))];
        assert!(check(&h, 0).is_err());
    }

    #[test]
    fn two_cas_from_the_same_value_cannot_both_succeed() {
        let h = [
            op(0, 0, Some(5), Kind::Cas { expect: 0, new: 1, ok: Some(true) }),
            op(1, 0, Some(5), Kind::Cas { expect: 0, new: 2, ok: Some(true) }),
        ];
        assert!(check(&h, 0).is_err());
        let h = [
            op(0, 0, Some(5), Kind::Cas { expect: 0, new: 1, ok: Some(true) }),
            op(1, 0, Some(5), Kind::Cas { expect: 0, new: 2, ok: Some(false) }),
        ];
        assert!(check(&h, 0).is_ok());
    }

    #[test]
    fn an_unknown_write_may_or_may_not_have_happened() {
        let took = [op(0, 0, None, Kind::Write(7)), op(1, 5, Some(6), Kind::Read(7))];
        assert!(check(&took, 0).is_ok());
        let did_not = [op(0, 0, None, Kind::Write(7)), op(1, 5, Some(6), Kind::Read(0))];
        assert!(check(&did_not, 0).is_ok());
        // But it cannot take effect before it was invoked.
        let before = [op(1, 0, Some(1), Kind::Read(7)), op(0, 2, None, Kind::Write(7))];
        assert!(check(&before, 0).is_err());
    }
}
