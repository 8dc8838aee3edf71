//! The contract every [`Store`] must meet, as a suite each implementation runs in its tests.
//! `reopen` must return a store over the same data (for durability checks), or `None` when the
//! implementation has no persistence.

use mrr_core::fold::{FoldEntry, FoldState, Outcome};
use mrr_core::{
    Change, ChangeId, ConflictEntry, DeadLetter, Hlc, Key, Metadata, Op, Record, RegionName, Side, Stream, Timestamp,
    Version, VersionVector,
};

use crate::log::LogStore;
use crate::{CommitBatch, Store};

fn region(s: &str) -> RegionName {
    RegionName::new(s).unwrap_or_else(|e| panic!("{e}"))
}

fn stream(s: &str) -> Stream {
    Stream::parse(s).unwrap_or_else(|| panic!("{s} is not a stream"))
}

/// A change of `stream` (`us-west`, `us-west.urgent`).
fn change(stream_name: &str, seq: u64, topic: &str, id: &str, value: Option<&str>, ts: Timestamp) -> Change {
    let Stream { origin, lane } = stream(stream_name);
    Change {
        origin: origin.clone(),
        lane,
        seq,
        key: Key::new(topic, id),
        op: match value {
            Some(v) => Op::Put { value: v.as_bytes().to_vec() },
            None => Op::Delete,
        },
        metadata: Metadata { regions: vec!["*".into()], sync_flags: vec!["IMPORTANT".into()] },
        version: Version { ts, region: origin },
        deps: VersionVector::new(),
        replay_of: None,
        moves: false,
        carried: vec![],
        proof: Default::default(),
    }
}

fn fold_entry(c: &Change) -> FoldEntry {
    FoldEntry {
        id: c.id(),
        version: c.version.clone(),
        deps: c.deps.clone(),
        value: None,
        metadata: c.metadata.clone(),
        replay_of: None,
        after: FoldState::default(),
        outcome: Outcome::ReplaySkipped,
    }
}

/// `loser` lost to `winner`, detected at `at_ms`.
fn conflict_between(loser: &Change, winner: &Change, at_ms: u64) -> ConflictEntry {
    let side = |c: &Change| Side { id: c.id(), version: c.version.clone(), value: None };
    ConflictEntry {
        key: loser.key.clone(),
        strategy: "timestamp".into(),
        resolution: "last_writer_wins".into(),
        loser: side(loser),
        winner: side(winner),
        fields: Vec::new(),
        detected_at_ms: at_ms,
    }
}

fn batch_of(changes: Vec<Change>) -> CommitBatch {
    let mut vv = VersionVector::new();
    let mut high = Timestamp::ZERO;
    let records: Vec<(Key, Record)> = changes
        .iter()
        .map(|c| {
            vv.raise(&c.stream(), c.seq);
            high = high.max(c.version.ts);
            (c.key.clone(), c.to_record())
        })
        .collect();
    CommitBatch { records, changes, vv, hlc_high_water: high, ..CommitBatch::default() }
}

/// Runs the whole suite against a fresh, empty store.
pub fn run<S: Store>(store: S, reopen: impl FnOnce(S) -> Option<S>) {
    let mut clock = Hlc::new(Timestamp::ZERO, 200);
    let mut a1 = change("ap-northeast", 1, "users", "u001", Some(r#"{"name":"Kaito"}"#), clock.now(1));
    // A change's proof of origin is stored with it.
    a1.proof.checkpoint =
        Some(mrr_core::provenance::Checkpoint { link: [7; 32], signer: [8; 32], signature: b"sig".to_vec() });
    let a2 = change("ap-northeast", 2, "users", "u002", Some(r#"{"name":"Emma"}"#), clock.now(2));
    let b1 = change("us-west", 1, "users", "u001", None, clock.now(3));
    let o1 = change("us-west", 2, "orders", "o1", Some("{}"), clock.now(4));
    let mut u1 = change("ap-northeast.urgent", 1, "stock", "s1", Some(r#"{"n":1}"#), clock.now(5));
    u1.proof.checkpoint = Some(mrr_core::provenance::Checkpoint { link: [9; 32], signer: [0; 32], signature: vec![] });

    assert!(store.get(&a1.key).expect("get").is_none(), "empty store has no records");
    assert_eq!(store.certificate(&[1; 32]).expect("certificate"), None);
    store.add_certificate(&[1; 32], b"der").expect("add certificate");
    store.add_certificate(&[1; 32], b"der").expect("adding again is harmless");
    assert_eq!(store.stable_point().expect("stable point"), VersionVector::new());
    let stable: VersionVector = [(stream("us-west"), 1)].into_iter().collect();
    store.set_stable_point(&stable).expect("persist the stable point");
    assert_eq!(store.recover().expect("recover").vv, VersionVector::new());

    store.commit(&batch_of(vec![a1.clone(), a2.clone()])).expect("commit");
    store.commit(&batch_of(vec![b1.clone(), o1.clone(), u1.clone()])).expect("commit");
    // The chain heads: streams whose last change carries a checkpoint (a1 does, but a2 follows).
    assert_eq!(
        store.recover().expect("recover").chain_heads.into_iter().collect::<Vec<_>>(),
        vec![(u1.stream(), (1, [9; 32]))]
    );

    // A view sees the store as of when it was taken, whatever commits after it.
    let view = store.view().expect("view");
    let before = store.recover().expect("recover");
    let later = change("eu-view", 1, "views", "v1", Some("{}"), clock.now(6));
    store.commit(&batch_of(vec![later.clone()])).expect("commit");
    assert_eq!(view.recover().expect("view recover").vv, before.vv, "the view's vector is as of the view");
    assert_eq!(view.recover().expect("view recover").chain_heads, before.chain_heads);
    let seen: Vec<Key> = view.records_after(None, 100).expect("view records").into_iter().map(|(k, _)| k).collect();
    assert!(!seen.contains(&later.key), "a record committed after the view is not in it");
    assert_eq!(seen.len(), 4, "records in the view: {seen:?}");
    assert_eq!(view.changes_within(&stream("us-west"), 0, 10, u64::MAX).expect("view changes").len(), 2);
    assert_eq!(store.changes_within(&stream("eu-view"), 0, 10, u64::MAX).expect("changes").len(), 1);
    assert!(view.changes_within(&stream("eu-view"), 0, 10, u64::MAX).expect("view changes").is_empty());
    assert_eq!(view.certificate(&[1; 32]).expect("view certificate").as_deref(), Some(&b"der"[..]));
    drop(view);
    // A bootstrap mark is stored with the batch that carries it, and only replaced.
    assert_eq!(store.bootstrap_mark().expect("mark"), None);
    let mark = crate::BootstrapMark::Installing { donor: "us-west".into(), snapshot: 7, after: Some(a1.key.clone()) };
    let high = store.recover().expect("recover").hlc_high_water;
    let marked = CommitBatch { bootstrap: Some(mark.clone()), hlc_high_water: high, ..CommitBatch::default() };
    assert!(!marked.is_empty());
    store.commit(&marked).expect("commit");
    assert_eq!(store.bootstrap_mark().expect("mark"), Some(mark));
    let unmarked = CommitBatch { hlc_high_water: before.hlc_high_water, ..CommitBatch::default() };
    store.commit(&unmarked).expect("commit");
    assert!(matches!(store.bootstrap_mark().expect("mark"), Some(crate::BootstrapMark::Installing { .. })));

    // Latest record state per key, tombstones included.
    assert_eq!(store.get(&a1.key).expect("get"), Some(b1.to_record()));
    assert!(store.get(&a1.key).expect("get").is_some_and(|r| r.is_tombstone()));
    assert_eq!(store.get(&a2.key).expect("get"), Some(a2.to_record()));

    // Scans stay inside their topic and resume after an id.
    let users = store.scan("users", None, 10).expect("scan");
    assert_eq!(users.iter().map(|(k, _)| k.id.as_str()).collect::<Vec<_>>(), ["u001", "u002"]);
    let rest = store.scan("users", Some("u001"), 10).expect("scan");
    assert_eq!(rest.iter().map(|(k, _)| k.id.as_str()).collect::<Vec<_>>(), ["u002"]);
    assert_eq!(store.scan("users", None, 1).expect("scan").len(), 1);
    assert!(store.scan("user", None, 10).expect("scan").is_empty(), "prefix of a topic is another topic");

    // A record moves from its clear name to its sealed one (it left this region's placement):
    // the clear entry and the index entry go in the same commit; scans never show sealed names.
    let sealer = mrr_core::Sealer::new("t", "0123456789abcdef");
    let sealed = sealer.seal(&a2.key);
    let high = store.recover().expect("recover").hlc_high_water;
    assert_eq!(store.unseal(&sealed).expect("unseal"), None);
    let held = CommitBatch {
        sealed_index: vec![(sealed.clone(), Some(a2.key.clone()))],
        hlc_high_water: high,
        ..CommitBatch::default()
    };
    assert!(!held.is_empty());
    store.commit(&held).expect("commit");
    assert_eq!(store.unseal(&sealed).expect("unseal"), Some(a2.key.clone()));
    let register = Record { value: None, ..a2.to_record() };
    let left = CommitBatch {
        records: vec![(sealed.clone(), register.clone())],
        records_removed: vec![a2.key.clone()],
        sealed_index: vec![(sealed.clone(), None)],
        hlc_high_water: high,
        ..CommitBatch::default()
    };
    store.commit(&left).expect("commit");
    assert_eq!(store.get(&a2.key).expect("get"), None, "the clear name is gone");
    assert_eq!(store.get(&sealed).expect("get"), Some(register));
    assert_eq!(store.unseal(&sealed).expect("unseal"), None);
    let users = store.scan("users", None, 10).expect("scan");
    assert_eq!(users.iter().map(|(k, _)| k.id.as_str()).collect::<Vec<_>>(), ["u001"], "no sealed name listed");
    assert!(store.scan("users", Some("u001"), 10).expect("scan").is_empty());
    // And back: placed here again.
    let back = CommitBatch {
        records: vec![(a2.key.clone(), a2.to_record())],
        records_removed: vec![sealed.clone()],
        sealed_index: vec![(sealed.clone(), Some(a2.key.clone()))],
        hlc_high_water: high,
        ..CommitBatch::default()
    };
    store.commit(&back).expect("commit");
    assert_eq!(store.get(&sealed).expect("get"), None);
    assert_eq!(store.get(&a2.key).expect("get"), Some(a2.to_record()));
    assert_eq!(store.unseal(&sealed).expect("unseal"), Some(a2.key.clone()));

    // The changelog per stream, in order, from a cursor, bounded; lanes are separate streams.
    let ap = stream("ap-northeast");
    assert_eq!(store.changes_after(&ap, 0, 10).expect("changes"), vec![a1.clone(), a2.clone()]);
    assert_eq!(store.changes_after(&ap, 1, 10).expect("changes"), vec![a2.clone()]);
    assert_eq!(store.changes_after(&ap, 0, 1).expect("changes"), vec![a1.clone()]);
    assert!(store.changes_after(&ap, 2, 10).expect("changes").is_empty());
    assert_eq!(store.changes_after(&stream("us-west"), 0, 10).expect("changes"), vec![b1.clone(), o1.clone()]);
    assert_eq!(store.changes_after(&stream("ap-northeast.urgent"), 0, 10).expect("changes"), vec![u1.clone()]);
    assert!(store.changes_after(&stream("ap-northeast.bulk"), 0, 10).expect("changes").is_empty());
    // Bounded in bytes too: stopping before the change that passes the bound, never at none.
    assert_eq!(store.changes_within(&ap, 0, 10, 1).expect("changes"), vec![a1.clone()], "one travels alone");
    assert_eq!(store.changes_within(&ap, 0, 10, u64::MAX).expect("changes"), vec![a1.clone(), a2.clone()]);
    assert_eq!(store.changes_within(&ap, 0, 1, u64::MAX).expect("changes"), vec![a1.clone()]);
    assert!(store.changes_within(&ap, 2, 10, 1).expect("changes").is_empty());

    let state = store.recover().expect("recover");
    assert_eq!(state.vv.get(&ap), 2);
    assert_eq!(state.vv.get(&stream("ap-northeast.urgent")), 1);
    assert_eq!(state.vv.get(&stream("us-west")), 2);
    assert_eq!(state.hlc_high_water, u1.version.ts);

    // Fold history: entries of one key in version order, split around a version.
    let (x1, x2, x3) = (fold_entry(&a1), fold_entry(&b1), fold_entry(&a2));
    let mut batch = CommitBatch { hlc_high_water: state.hlc_high_water, ..CommitBatch::default() };
    batch.history = vec![(a1.key.clone(), x2.clone()), (a1.key.clone(), x1.clone()), (a2.key.clone(), x3.clone())];
    // Conflict log and dead letters: keyed by ids, joined or overwritten in place, removable.
    let side = |c: &Change| Side { id: c.id(), version: c.version.clone(), value: None };
    let conflict = conflict_between(&a1, &b1, 7);
    let letter = |c: &Change| DeadLetter {
        id: c.id(),
        key: c.key.clone(),
        version: c.version.clone(),
        reason: "handler failed".into(),
        value: None,
        failed_at_ms: 9,
    };
    batch.conflicts = vec![conflict.clone(), conflict.clone()];
    batch.dead_letters = vec![letter(&a1), letter(&a2)];
    store.commit(&batch).expect("commit");
    assert_eq!(store.history_from(&a1.key, &b1.version).expect("history"), (Some(x1.clone()), vec![x2.clone()]));
    assert_eq!(store.history_from(&a1.key, &a1.version).expect("history"), (None, vec![x1.clone(), x2.clone()]));
    assert_eq!(store.history_entry(&a1.key, &b1.version).expect("entry"), Some(x2.clone()));
    assert_eq!(store.history_from(&a2.key, &a1.version).expect("history"), (None, vec![x3]), "other keys stay out");
    assert_eq!(store.conflicts().expect("conflicts"), vec![conflict.clone()]);
    // Reported again, later and naming other fields: one entry with every field, first seen.
    let with_fields = |fields: &[&str], detected_at_ms: u64| ConflictEntry {
        fields: fields.iter().map(|f| (*f).to_owned()).collect(),
        detected_at_ms,
        ..conflict.clone()
    };
    let again = CommitBatch {
        conflicts: vec![with_fields(&["a", "b"], 8), with_fields(&["c"], 9)],
        hlc_high_water: state.hlc_high_water,
        ..CommitBatch::default()
    };
    store.commit(&again).expect("commit");
    let again = CommitBatch { conflicts: vec![with_fields(&["b"], 10)], ..again };
    store.commit(&again).expect("commit");
    assert_eq!(store.conflicts().expect("conflicts"), vec![with_fields(&["a", "b", "c"], 7)]);
    store.expire_conflicts(&[conflict.ident()]).expect("expire");
    assert!(store.conflicts().expect("conflicts").is_empty());
    store
        .commit(&CommitBatch {
            conflicts: vec![conflict.clone()],
            hlc_high_water: state.hlc_high_water,
            ..CommitBatch::default()
        })
        .expect("commit");
    let cleared = CommitBatch {
        dead_letters_cleared: vec![a1.id()],
        hlc_high_water: state.hlc_high_water,
        ..CommitBatch::default()
    };
    store.commit(&cleared).expect("commit");
    assert_eq!(store.dead_letters().expect("dlq"), vec![letter(&a2)]);
    assert_eq!(store.dead_letter(&a1.id()).expect("dlq"), None);
    store.discard_dead_letter(&a1.id()).expect("discarding what is gone is a no-op");
    let a2_id = ChangeId { origin: ap.origin.clone(), lane: ap.lane, seq: 2 };
    assert_eq!(store.dead_letter(&a2_id).expect("dlq"), Some(letter(&a2)));

    // Operator reads page through time indexes and counts, never whole logs.
    let logged = |seq: u64, at_ms: u64| {
        let loser = change("us-west", 100 + seq, "t", &format!("k{seq}"), None, Timestamp::new(seq, 0));
        ConflictEntry { loser: side(&loser), detected_at_ms: at_ms, ..conflict.clone() }
    };
    let count_before = store.conflict_count();
    let many: Vec<ConflictEntry> =
        [(1, 300), (2, 100), (3, 200), (4, 100), (5, 400)].map(|(s, t)| logged(s, t)).to_vec();
    store
        .commit(&CommitBatch {
            conflicts: many.clone(),
            hlc_high_water: state.hlc_high_water,
            ..CommitBatch::default()
        })
        .expect("commit");
    assert_eq!(store.conflict_count(), count_before + 5);
    let times = |v: &[ConflictEntry]| v.iter().map(|e| e.detected_at_ms).collect::<Vec<_>>();
    let first = store.conflicts_after(100, None, 2).expect("page");
    assert_eq!(times(&first), [100, 100], "detection order, from `since`");
    let cursor = crate::ConflictCursor::of(&first[1]);
    assert_eq!(crate::ConflictCursor::decode(&cursor.encode()), Some(cursor.clone()), "cursors round-trip");
    let rest = store.conflicts_after(0, Some(&cursor), 10).expect("page");
    assert_eq!(times(&rest), [200, 300, 400], "a cursor resumes strictly after the entry it names");
    store.commit(&CommitBatch { conflicts: vec![many[0].clone()], ..CommitBatch::default() }).expect("commit");
    assert_eq!(store.conflict_count(), count_before + 5, "a conflict reported again is not counted twice");
    store.expire_conflicts(&[many[1].ident(), many[1].ident()]).expect("expire");
    assert_eq!(store.conflict_count(), count_before + 4, "each entry that goes is counted once");
    assert_eq!(times(&store.conflicts_after(100, None, 10).expect("page")), [100, 200, 300, 400]);
    store.expire_conflicts(&many.iter().map(ConflictEntry::ident).collect::<Vec<_>>()).expect("expire");
    assert_eq!(store.conflict_count(), count_before);
    let letters_before = store.dead_letter_count();
    let timed = |c: &Change, at: u64| DeadLetter { failed_at_ms: at, ..letter(c) };
    let (d1, d2) = (
        change("us-west", 201, "t", "d1", None, clock.now(20)),
        change("us-west", 202, "t", "d2", None, clock.now(21)),
    );
    store
        .commit(&CommitBatch {
            dead_letters: vec![timed(&d1, 50), timed(&d2, 40)],
            hlc_high_water: state.hlc_high_water,
            ..CommitBatch::default()
        })
        .expect("commit");
    assert_eq!(store.dead_letter_count(), letters_before + 2);
    assert_eq!(
        store.oldest_dead_letter_ms().expect("oldest"),
        Some(9),
        "a2's letter, failed at 9, is still the oldest"
    );
    let page = store.dead_letters_after(None, 1).expect("page");
    assert_eq!(store.dead_letters_after(Some(&page[0].id), 100).expect("page").len() as u64, letters_before + 1);
    store.discard_dead_letter(&d2.id()).expect("discard");
    store.discard_dead_letter(&d2.id()).expect("discarding twice is a no-op");
    let cleared = CommitBatch { dead_letters_cleared: vec![d1.id(), d1.id()], ..CommitBatch::default() };
    store.commit(&cleared).expect("commit");
    assert_eq!(store.dead_letter_count(), letters_before, "each letter counted out once");

    // Keys leaving the region's placement lose their fold history, atomically; an entry the
    // same batch writes for such a key is its new history.
    let dropped = CommitBatch {
        histories_dropped: vec![a1.key.clone(), a2.key.clone()],
        history: vec![(a1.key.clone(), x2.clone())],
        hlc_high_water: state.hlc_high_water,
        ..CommitBatch::default()
    };
    store.commit(&dropped).expect("commit");
    assert_eq!(store.history_from(&a1.key, &a1.version).expect("history"), (None, vec![x2.clone()]));
    assert_eq!(store.history_from(&a2.key, &a1.version).expect("history"), (None, vec![]));
    assert_eq!(store.history_entry(&a1.key, &x1.version).expect("entry"), None);

    // The strong tier's position and answered requests commit with a batch and stay until
    // a later batch moves them.
    assert_eq!(store.strong_request("r1").expect("request"), None);
    let strong = CommitBatch {
        strong_position: Some(b"p1".to_vec()),
        strong_requests: vec![("r1".into(), b"answer".to_vec())],
        ..CommitBatch::default()
    };
    assert!(!strong.is_empty(), "a position alone is something to commit");
    store.commit(&strong).expect("commit");
    store.commit(&CommitBatch { hlc_high_water: state.hlc_high_water, ..CommitBatch::default() }).expect("commit");
    assert_eq!(store.recover().expect("recover").strong_position.as_deref(), Some(&b"p1"[..]));
    assert_eq!(store.strong_request("r1").expect("request").as_deref(), Some(&b"answer"[..]));
    // What a move-out leaves behind: the departure notes, changelog entries rewritten in place
    // (no vector moves), and conflict entries removed with their index.
    let before = store.recover().expect("recover");
    let other = conflict_between(&a2, &o1, 11);
    let departed = mrr_core::placement::Departure::new(a2.key.clone(), o1.id(), before.vv.clone());
    let sealed_a2 = sealer.seal(&a2.key);
    store
        .commit(&CommitBatch {
            departures: vec![(sealed_a2.clone(), Some(departed.clone()))],
            conflicts: vec![other.clone()],
            hlc_high_water: before.hlc_high_water,
            ..CommitBatch::default()
        })
        .expect("commit");
    assert_eq!(store.departure(&sealed_a2).expect("departure"), Some(departed.clone()));
    assert_eq!(store.departures().expect("departures"), vec![(sealed_a2.clone(), departed.clone())]);
    assert_eq!(store.conflict_count(), 2);
    let erased = mrr_core::placement::to_marker(&a2, &sealer);
    store
        .commit(&CommitBatch {
            rewritten: vec![erased.clone()],
            departures: vec![(sealed_a2.clone(), None)],
            conflicts_removed: vec![other.ident()],
            hlc_high_water: before.hlc_high_water,
            ..CommitBatch::default()
        })
        .expect("commit");
    let after = store.recover().expect("recover");
    assert_eq!(after.vv, before.vv, "a rewrite moves no vector");
    assert_eq!(store.changes_after(&ap, 1, 1).expect("changes"), vec![erased.clone()]);
    assert_eq!(store.departures().expect("departures"), vec![]);
    assert_eq!(store.conflicts().expect("conflicts"), vec![conflict.clone()]);
    assert_eq!(store.conflict_count(), 1);
    // Put back as it was, for what follows.
    store
        .commit(&CommitBatch {
            rewritten: vec![a2.clone()],
            hlc_high_water: before.hlc_high_water,
            ..CommitBatch::default()
        })
        .expect("commit");

    // Retention truncates a stream's changelog up to a floor: entries above it stay, the
    // vector does not move, and a second truncation starts where the first ended.
    let uw = stream("us-west");
    assert_eq!(store.log_floors().expect("floors"), VersionVector::new());
    let footprint = store.footprint();
    let truncate = |upto: u64| CommitBatch {
        log_truncated: [(uw.clone(), upto)].into_iter().collect(),
        hlc_high_water: before.hlc_high_water,
        ..CommitBatch::default()
    };
    store.commit(&truncate(1)).expect("truncate");
    assert_eq!(store.changes_after(&uw, 0, 10).expect("changes"), vec![o1.clone()]);
    assert_eq!(store.log_floors().expect("floors"), [(uw.clone(), 1)].into_iter().collect());
    assert_eq!(store.recover().expect("recover").vv, before.vv, "truncation moves no vector");
    assert_eq!(store.changes_after(&ap, 0, 10).expect("changes").len(), 2, "other streams keep theirs");
    assert!(footprint.changelog_entries >= 4, "the footprint counts the changelog: {footprint:?}");
    store.commit(&truncate(1)).expect("truncating again is harmless");
    assert_eq!(store.changes_after(&uw, 0, 10).expect("changes"), vec![o1.clone()]);
    // Every record, clear and sealed names alike, in key order, resuming after a key.
    let all = store.records_after(None, 100).expect("records");
    let keys: Vec<Key> = all.iter().map(|(k, _)| k.clone()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert!(keys.contains(&a1.key) && keys.contains(&o1.key));
    assert_eq!(store.records_after(Some(&keys[0]), 100).expect("records"), all[1..].to_vec());
    assert_eq!(store.records_after(None, 1).expect("records"), all[..1].to_vec());

    let state = store.recover().expect("recover");

    // Everything survives a reopen.
    if let Some(store) = reopen(store) {
        assert_eq!(store.certificate(&[1; 32]).expect("certificate").as_deref(), Some(&b"der"[..]));
        assert_eq!(store.stable_point().expect("stable point"), stable);
        assert_eq!(store.strong_request("r1").expect("request").as_deref(), Some(&b"answer"[..]));
        assert_eq!(store.history_from(&a1.key, &b1.version).expect("history"), (None, vec![x2]));
        assert_eq!(store.conflicts().expect("conflicts"), vec![conflict]);
        assert_eq!(store.get(&a2.key).expect("get"), Some(a2.to_record()));
        assert_eq!(store.changes_after(&ap, 0, 10).expect("changes"), vec![a1, a2]);
        assert_eq!(store.recover().expect("recover"), state);
        assert_eq!(store.log_floors().expect("floors"), [(uw.clone(), 1)].into_iter().collect());
        assert_eq!(store.changes_after(&uw, 0, 10).expect("changes"), vec![o1]);
        assert_eq!(store.conflict_count(), 1, "counts are rebuilt when the store opens");
        assert_eq!(store.dead_letter_count(), 1);
        assert_eq!(store.oldest_dead_letter_ms().expect("oldest"), Some(9));
    }
}

/// Everything a store holds that a commit writes, to compare before and after a fault.
fn contents<S: Store>(store: &S, keys: &[&Key], streams: &[Stream]) -> String {
    let records: Vec<_> = keys.iter().map(|k| store.get(k).expect("get")).collect();
    let changes: Vec<_> = streams.iter().map(|s| store.changes_after(s, 0, 100).expect("changes")).collect();
    let history: Vec<_> = keys
        .iter()
        .map(|k| store.history_from(k, &Version { ts: Timestamp::ZERO, region: region("a") }).expect("history"))
        .collect();
    format!(
        "{records:?}\n{changes:?}\n{history:?}\n{:?}\n{:?}\n{:?}",
        store.recover().expect("recover"),
        store.conflicts().expect("conflicts"),
        store.dead_letters().expect("dlq")
    )
}

/// The injected-fault cases, run over `store` wrapped in a [`crate::faults::FaultyStore`]: a
/// failed read changes nothing and the next read succeeds; a failed commit leaves every
/// keyspace exactly as it was, and the same batch commits afterwards.
pub fn run_faults<S: Store>(store: S) {
    let store = crate::faults::FaultyStore::new(store);
    let plan = store.plan();
    let mut clock = Hlc::new(Timestamp::ZERO, 200);
    let a1 = change("ap-northeast", 1, "users", "u001", Some(r#"{"name":"Kaito"}"#), clock.now(1));
    let a2 = change("ap-northeast", 2, "logs", "l1", Some(r#"{"n":1}"#), clock.now(2));
    let b1 = change("us-west.urgent", 1, "users", "u001", None, clock.now(3));
    store.commit(&batch_of(vec![a1.clone()])).expect("commit");
    let keys = [&a1.key, &a2.key];
    let streams = [stream("ap-northeast"), stream("us-west.urgent")];
    let before = contents(&store, &keys, &streams);

    plan.fail_read_in(1);
    assert!(store.get(&a1.key).is_err(), "the armed read fails");
    assert_eq!(store.get(&a1.key).expect("the next read succeeds"), Some(a1.to_record()));
    plan.fail_read_in(2);
    assert!(store.changes_after(&streams[0], 0, 10).is_ok());
    assert!(store.changes_within(&streams[0], 0, 10, 1_000).is_err(), "the second read from arming fails");

    // A batch touching every keyspace fails to commit and leaves nothing.
    let mut batch = batch_of(vec![a2.clone(), b1.clone()]);
    batch.history = vec![(a2.key.clone(), fold_entry(&a2))];
    batch.histories_dropped = vec![a1.key.clone()];
    batch.conflicts = vec![conflict_between(&a1, &b1, 7)];
    batch.dead_letters = vec![DeadLetter {
        id: a2.id(),
        key: a2.key.clone(),
        version: a2.version.clone(),
        reason: "handler failed".into(),
        value: None,
        failed_at_ms: 9,
    }];
    plan.fail_commit_in(1);
    let err = store.commit(&batch).expect_err("the armed commit fails");
    assert!(err.to_string().contains("commit"), "{err}");
    assert_eq!(contents(&store, &keys, &streams), before, "a failed commit leaves the store as it was");
    store.commit(&batch).expect("the same batch commits afterwards");
    assert_ne!(contents(&store, &keys, &streams), before);
    assert_eq!(store.recover().expect("recover").vv.get(&streams[1]), 1);
}

/// The contract of a [`LogStore`]: a fresh, empty log; `reopen` as for [`run`].
pub fn run_log<L: LogStore>(log: L, reopen: impl FnOnce(L) -> Option<L>) {
    let entry = |i: u64| (i, format!("entry {i}").into_bytes());
    assert_eq!(log.last().expect("last"), None, "an empty log");
    assert_eq!(log.get_value("vote").expect("get"), None);

    log.append(&(1..=10).map(entry).collect::<Vec<_>>()).expect("append");
    assert_eq!(log.last().expect("last"), Some(entry(10)));
    assert_eq!(log.range(3, 6, 100).expect("range"), (3..6).map(entry).collect::<Vec<_>>(), "until is exclusive");
    assert_eq!(log.range(3, 6, 2).expect("range").len(), 2, "bounded by limit");
    assert!(log.range(6, 3, 100).expect("range").is_empty());
    assert_eq!(log.range(0, u64::MAX, 100).expect("range").len(), 10);

    // A new leader overwrites a conflicting tail: cut after 7, append 8' and 9'.
    log.truncate_after(Some(7)).expect("truncate");
    assert_eq!(log.last().expect("last"), Some(entry(7)));
    log.append(&[(8, b"8'".to_vec()), (9, b"9'".to_vec())]).expect("append");
    assert_eq!(log.range(7, 10, 10).expect("range").iter().map(|(i, _)| *i).collect::<Vec<_>>(), [7, 8, 9]);
    assert_eq!(log.range(8, 9, 1).expect("range"), vec![(8, b"8'".to_vec())]);

    // The head goes once a snapshot covers it.
    log.purge_through(4).expect("purge");
    assert_eq!(log.range(0, 100, 100).expect("range").first().map(|(i, _)| *i), Some(5));

    log.put_value("vote", b"term 3").expect("put");
    log.put_value("vote", b"term 4").expect("put");
    log.put_hint("committed", b"6").expect("hint");
    log.put_hint("committed", b"7").expect("hint");
    assert_eq!(log.get_value("vote").expect("get").as_deref(), Some(&b"term 4"[..]));
    assert_eq!(log.get_value("committed").expect("get").as_deref(), Some(&b"7"[..]), "a hint reads back at once");

    let Some(log) = reopen(log) else { return };
    assert_eq!(log.last().expect("last"), Some((9, b"9'".to_vec())), "entries survive a reopen");
    assert_eq!(log.range(0, 100, 100).expect("range").len(), 5, "and so do truncation and purge");
    assert_eq!(log.get_value("vote").expect("get").as_deref(), Some(&b"term 4"[..]));
    assert_eq!(log.get_value("committed").expect("get").as_deref(), Some(&b"7"[..]), "a clean close keeps hints");
    log.truncate_after(None).expect("truncate all");
    assert_eq!(log.last().expect("last"), None);
}

#[cfg(test)]
mod tests {
    use crate::log::MemLog;
    use crate::{Durability, FjallStore, MemStore};

    #[test]
    fn mem_log_conforms() {
        super::run_log(MemLog::new(), |_| None);
    }

    #[test]
    fn fjall_log_conforms_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FjallStore::open(dir.path(), Durability::Buffered).expect("open");
        let log = store.log("consensus").expect("log");
        super::run_log(log, |log| {
            drop(log);
            drop(store);
            let store = FjallStore::open(dir.path(), Durability::Buffered).expect("reopen");
            Some(store.log("consensus").expect("log"))
        });
    }

    #[test]
    fn mem_store_conforms() {
        super::run(MemStore::new(), |_| None);
    }

    #[test]
    fn mem_store_conforms_under_injected_faults() {
        super::run_faults(MemStore::new());
    }

    #[test]
    fn fjall_store_conforms_under_injected_faults() {
        let dir = tempfile::tempdir().expect("tempdir");
        super::run_faults(FjallStore::open(dir.path(), Durability::Fsync).expect("open"));
    }

    #[test]
    fn fjall_store_conforms_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FjallStore::open(dir.path(), Durability::Fsync).expect("open");
        super::run(store, |store| {
            drop(store);
            Some(FjallStore::open(dir.path(), Durability::Fsync).expect("reopen"))
        });
    }
}
