//! The simulator can fail: with a known bug switched on, some seed must violate an invariant.
//! Without these, a simulator that checks nothing would pass every seed.

use mrr_core::planted::{self, Bug};
use mrr_sim::{run, SimConfig, Violation};

/// The first violation among `seeds`, with `bug` switched on for this thread.
fn first_violation(bug: Bug, config: &SimConfig, seeds: std::ops::Range<u64>) -> Option<Violation> {
    planted::set(Some(bug));
    let found = seeds.into_iter().find_map(|seed| run(seed, config, None).err());
    planted::set(None);
    found
}

#[test]
fn catches_duplicates_that_bypass_the_merge() {
    let v = first_violation(Bug::DuplicatesBypassMerge, &SimConfig::default(), 0..200)
        .expect("an old change delivered twice must be caught");
    assert!(
        ["no_resurrection", "convergence", "no_acknowledged_write_lost"].contains(&v.invariant),
        "caught by an unexpected invariant: {v}"
    );
    // The same seed passes without the bug: the violation is the bug's, not the simulator's.
    assert!(run(v.seed, &SimConfig::default(), None).is_ok(), "{v}");
}

#[test]
fn catches_last_writer_wins_without_its_region_tie_break() {
    // Few keys and many writes under clock skew make equal timestamps from two regions common.
    let config = SimConfig { keys: 1, writes: 600, ..SimConfig::default() };
    let v =
        first_violation(Bug::IgnoreRegionTieBreak, &config, 0..300).expect("a tie resolved differently must be caught");
    assert!(
        ["convergence", "no_acknowledged_write_lost"].contains(&v.invariant),
        "caught by an unexpected invariant: {v}"
    );
    assert!(run(v.seed, &config, None).is_ok(), "{v}");
}

#[test]
fn catches_a_change_sent_back_to_its_origin() {
    let v = first_violation(Bug::SendOwnChangesBack, &SimConfig::default(), 0..50).expect("a loop must be caught");
    assert_eq!(v.invariant, "no_loop", "{v}");
    assert!(run(v.seed, &SimConfig::default(), None).is_ok(), "{v}");
}

#[test]
fn a_failing_seed_replays_exactly() {
    let config = SimConfig::default();
    let v = first_violation(Bug::DuplicatesBypassMerge, &config, 0..200).expect("a failing seed");
    let again = first_violation(Bug::DuplicatesBypassMerge, &config, v.seed..v.seed + 1).expect("fails again");
    assert_eq!(again, v, "same seed, same violation, same time");
}

/// A failing disk part way through a request: the bug keeps what the request did before the
/// error in the group's commit, so a remote change can be counted as applied without being
/// stored.
#[test]
fn catches_a_failed_request_that_leaves_part_of_itself_committed() {
    // Reads part way through a request happen under `custom` (fold histories).
    let config = SimConfig { strategy: mrr_sim::Strategy::Custom, disk_faults: 8, ..SimConfig::default() };
    let v = first_violation(Bug::KeepFailedRequests, &config, 0..200).expect("a half-applied request must be caught");
    // The change counted but not stored is a hole in the changelog: found where the region
    // reads past it, where a relay's range has it missing, or at the end.
    assert!(
        ["changelog_contiguous", "relay_proof", "convergence", "no_acknowledged_write_lost"].contains(&v.invariant),
        "caught by an unexpected invariant: {v}"
    );
    assert!(run(v.seed, &config, None).is_ok(), "{v}");
}

/// The production durable rule with its bug: under `durability: buffered` changes replicate
/// before the disk has them, and a power loss makes the region reuse sequence numbers its
/// peers already hold.
#[test]
fn catches_changes_replicated_before_they_are_durable() {
    let config = SimConfig { buffered: true, ..SimConfig::default() };
    let v = first_violation(Bug::ReplicateBeforeDurable, &config, 0..300)
        .expect("replicating volatile changes must be caught");
    assert!(run(v.seed, &config, None).is_ok(), "{v}");
    eprintln!("caught: {v}");
}
