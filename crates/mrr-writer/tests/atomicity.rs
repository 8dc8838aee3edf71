//! A request is all or nothing, also when storage fails: a read error part way through a local
//! batch or a remote batch leaves nothing of that request in the group's commit, the rest of
//! the group commits, and a failed commit leaves the store as it was.

use std::sync::Arc;

use mrr_core::fold::testing::Append;
use mrr_core::{Change, Key, Metadata, PhysicalClock, Policies, RegionName, Rule, Stream};
use mrr_storage::faults::FaultyStore;
use mrr_storage::{MemStore, RecoveredState, Store};
use mrr_writer::{Engine, LocalFailure, LocalOp, WriteError, Writer, WriterConfig};
use serde_json::json;

fn r(s: &str) -> RegionName {
    RegionName::new(s).expect("valid")
}

fn policies() -> Arc<Policies> {
    Arc::new(Policies::new(Rule::Timestamp, [("logs".to_owned(), Rule::Custom(Arc::new(Append)))].into()))
}

fn engine(name: &str) -> Engine {
    Engine::new(r(name), RecoveredState::default(), 200, policies())
}

fn put(topic: &str, id: &str, n: u64) -> LocalOp {
    LocalOp::Put {
        key: Key::new(topic, id),
        value: json!({ "log": format!("{n};") }).to_string().into_bytes(),
        metadata: Metadata::default(),
    }
}

/// Commits one local request at `engine` and returns the changes it logged.
fn write(engine: &mut Engine, store: &dyn Store, ops: Vec<LocalOp>, now: u64) {
    let mut p = engine.begin(now);
    engine.apply_local(&mut p, store, ops, now).expect("apply");
    let batch = engine.finish(p).expect("batch");
    store.commit(&batch).expect("commit");
    engine.committed(&batch);
}

fn changelog(store: &dyn Store, stream: &str) -> Vec<Change> {
    store.changes_after(&Stream::parse(stream).expect("stream"), 0, 1_000).expect("changes")
}

/// Three `custom` changes from b, on three keys: applying each reads its fold history, so a
/// read can fail after the first has been applied to the group.
fn remote_batch() -> Vec<Change> {
    let mut b = engine("b");
    let sb = MemStore::new();
    write(&mut b, &sb, vec![put("logs", "x", 1), put("logs", "y", 2), put("logs", "z", 3)], 1_000);
    changelog(&sb, "b")
}

#[test]
fn a_remote_batch_that_hits_a_read_error_leaves_nothing_and_applies_whole_when_sent_again() {
    let changes = remote_batch();
    let store = FaultyStore::new(MemStore::new());
    let plan = store.plan();
    let mut a = engine("a");
    // One prefetch read per key (3), then one history read per change: fail the second one.
    plan.fail_read_in(5);
    let mut p = a.begin(2_000);
    let err = a.apply_remote(&mut p, &store, changes.clone(), 2_000);
    assert!(err.is_err(), "the injected read error must surface");
    assert!(!plan.armed(), "the fault struck");
    assert!(a.finish(p).is_none(), "nothing of the failed batch is left to commit");
    assert!(store.get(&Key::new("logs", "x")).expect("get").is_none());

    // The peer resends from what was acknowledged: the same batch applies whole.
    let mut p = a.begin(2_001);
    let out = a.apply_remote(&mut p, &store, changes, 2_001).expect("apply");
    assert_eq!((out.applied, out.duplicates, out.refused), (3, 0, None));
    let batch = a.finish(p).expect("batch");
    store.commit(&batch).expect("commit");
    a.committed(&batch);
    assert_eq!(a.applied().get(&Stream::normal(r("b"))), 3);
    assert_eq!(changelog(&store, "b").len(), 3);
}

#[test]
fn a_local_batch_that_hits_a_read_error_leaves_nothing() {
    let store = FaultyStore::new(MemStore::new());
    let plan = store.plan();
    let mut a = engine("a");
    write(&mut a, &store, vec![put("logs", "x", 1)], 1_000);
    // Three prefetch reads, then the first op's fold-history read succeeds and the second fails.
    plan.fail_read_in(5);
    let mut p = a.begin(1_001);
    let failed =
        a.apply_local(&mut p, &store, vec![put("logs", "x", 2), put("logs", "y", 3), put("logs", "z", 4)], 1_001);
    assert!(matches!(failed, Err(LocalFailure::Store(_))), "{failed:?}");
    assert!(a.finish(p).is_none(), "a client told the batch failed finds none of it committed");
    assert_eq!(changelog(&store, "a").len(), 1);
}

#[test]
fn in_a_mixed_group_only_the_failed_request_is_left_out() {
    let changes = remote_batch();
    let store = FaultyStore::new(MemStore::new());
    let plan = store.plan();
    let mut a = engine("a");
    let mut p = a.begin(2_000);
    a.apply_local(&mut p, &store, vec![put("users", "u1", 1)], 2_000).expect("first request");
    // The remote request's second history read fails (after 3 prefetch reads and one history read).
    plan.fail_read_in(5);
    assert!(a.apply_remote(&mut p, &store, changes.clone(), 2_000).is_err());
    let out = a.apply_local(&mut p, &store, vec![put("users", "u2", 2)], 2_000).expect("third request");
    assert_eq!(out[0].record.seq, 2, "sequences continue from the request before the failed one");
    let batch = a.finish(p).expect("batch");
    assert_eq!(batch.changes.len(), 2, "the two local writes, none of the remote batch");
    assert!(batch.changes.iter().all(|c| c.origin == r("a")));
    assert_eq!(batch.vv.get(&Stream::normal(r("b"))), 0, "the failed batch is not counted as applied");
    assert!(batch.history.is_empty(), "no fold entry of the failed batch");
    store.commit(&batch).expect("commit");
    a.committed(&batch);
    assert_eq!(a.applied().get(&Stream::normal(r("b"))), 0);
}

#[derive(Debug)]
struct Fixed;

impl PhysicalClock for Fixed {
    fn now_ms(&self) -> u64 {
        1_000
    }
}

#[tokio::test]
async fn a_failed_commit_fails_its_group_leaves_the_store_as_it_was_and_the_next_write_goes_ahead() {
    let store = Arc::new(FaultyStore::new(MemStore::new()));
    let plan = store.plan();
    let writer = Writer::start(r("a"), 200, store.clone(), Arc::new(Fixed), WriterConfig::default(), policies(), None)
        .expect("start");
    writer.write(vec![put("users", "u1", 1)]).await.expect("first write");
    plan.fail_commit_in(1);
    let err = writer.write(vec![put("users", "u2", 2)]).await.expect_err("the commit fails");
    assert!(matches!(err, WriteError::Storage(_)), "{err}");
    assert!(store.get(&Key::new("users", "u2")).expect("get").is_none());
    assert_eq!(writer.failed(), None, "a refused commit left nothing: writes go on");
    let next = writer.write(vec![put("users", "u3", 3)]).await.expect("next write");
    assert_eq!(next[0].record.seq, 2, "the failed write's sequence number is reused, not skipped");
    assert_eq!(store.recover().expect("recover").vv.get(&Stream::normal(r("a"))), 2);
}

/// A store whose commit writes, then reports failure (an fsync error after the write).
#[derive(Debug)]
struct WritesThenFails(MemStore);

impl Store for WritesThenFails {
    fn get(&self, key: &Key) -> mrr_storage::Result<Option<mrr_core::Record>> {
        self.0.get(key)
    }
    fn unseal(&self, sealed: &Key) -> mrr_storage::Result<Option<Key>> {
        self.0.unseal(sealed)
    }
    fn scan(&self, t: &str, a: Option<&str>, l: usize) -> mrr_storage::Result<Vec<(Key, mrr_core::Record)>> {
        self.0.scan(t, a, l)
    }
    fn changes_within(&self, s: &Stream, a: u64, l: usize, b: u64) -> mrr_storage::Result<Vec<Change>> {
        self.0.changes_within(s, a, l, b)
    }
    fn recover(&self) -> mrr_storage::Result<RecoveredState> {
        self.0.recover()
    }
    fn commit(&self, batch: &mrr_storage::CommitBatch) -> mrr_storage::Result<()> {
        self.0.commit(batch)?;
        Err(mrr_storage::StoreError::Io { op: "fsync", source: std::io::Error::other("EIO") })
    }
    fn persist(&self) -> mrr_storage::Result<()> {
        self.0.persist()
    }
    fn history_from(
        &self,
        k: &Key,
        v: &mrr_core::Version,
    ) -> mrr_storage::Result<(Option<mrr_core::fold::FoldEntry>, Vec<mrr_core::fold::FoldEntry>)> {
        self.0.history_from(k, v)
    }
    fn history_entry(&self, k: &Key, v: &mrr_core::Version) -> mrr_storage::Result<Option<mrr_core::fold::FoldEntry>> {
        self.0.history_entry(k, v)
    }
    fn conflicts_after(
        &self,
        s: u64,
        a: Option<&mrr_storage::ConflictCursor>,
        l: usize,
    ) -> mrr_storage::Result<Vec<mrr_core::ConflictEntry>> {
        self.0.conflicts_after(s, a, l)
    }
    fn conflict_count(&self) -> u64 {
        self.0.conflict_count()
    }
    fn expire_conflicts(&self, i: &[(mrr_core::ChangeId, mrr_core::ChangeId)]) -> mrr_storage::Result<()> {
        self.0.expire_conflicts(i)
    }
    fn dead_letters_after(
        &self,
        a: Option<&mrr_core::ChangeId>,
        l: usize,
    ) -> mrr_storage::Result<Vec<mrr_core::DeadLetter>> {
        self.0.dead_letters_after(a, l)
    }
    fn dead_letter_count(&self) -> u64 {
        self.0.dead_letter_count()
    }
    fn oldest_dead_letter_ms(&self) -> mrr_storage::Result<Option<u64>> {
        self.0.oldest_dead_letter_ms()
    }
    fn strong_request(&self, request_id: &str) -> mrr_storage::Result<Option<Vec<u8>>> {
        self.0.strong_request(request_id)
    }
    fn dead_letter(&self, id: &mrr_core::ChangeId) -> mrr_storage::Result<Option<mrr_core::DeadLetter>> {
        self.0.dead_letter(id)
    }
    fn discard_dead_letter(&self, id: &mrr_core::ChangeId) -> mrr_storage::Result<()> {
        self.0.discard_dead_letter(id)
    }
    fn disk_bytes(&self) -> u64 {
        0
    }
    fn certificate(&self, fingerprint: &[u8; 32]) -> mrr_storage::Result<Option<Vec<u8>>> {
        self.0.certificate(fingerprint)
    }
    fn add_certificate(&self, fingerprint: &[u8; 32], der: &[u8]) -> mrr_storage::Result<()> {
        self.0.add_certificate(fingerprint, der)
    }
    fn departure(&self, sealed: &Key) -> mrr_storage::Result<Option<mrr_core::placement::Departure>> {
        self.0.departure(sealed)
    }
    fn departures(&self) -> mrr_storage::Result<Vec<(Key, mrr_core::placement::Departure)>> {
        self.0.departures()
    }
    fn stable_point(&self) -> mrr_storage::Result<mrr_core::VersionVector> {
        self.0.stable_point()
    }
    fn set_stable_point(&self, stable: &mrr_core::VersionVector) -> mrr_storage::Result<()> {
        self.0.set_stable_point(stable)
    }

    fn footprint(&self) -> mrr_storage::Footprint {
        self.0.footprint()
    }

    fn log_floors(&self) -> mrr_storage::Result<mrr_core::VersionVector> {
        self.0.log_floors()
    }

    fn records_after(&self, after: Option<&Key>, limit: usize) -> mrr_storage::Result<Vec<(Key, mrr_core::Record)>> {
        self.0.records_after(after, limit)
    }

    fn view(&self) -> mrr_storage::Result<std::sync::Arc<dyn mrr_storage::StoreView>> {
        self.0.view()
    }

    fn bootstrap_mark(&self) -> mrr_storage::Result<Option<mrr_storage::BootstrapMark>> {
        self.0.bootstrap_mark()
    }
}

#[tokio::test]
async fn a_commit_that_failed_after_reaching_the_disk_stops_writes_and_reads_go_on() {
    let store = Arc::new(WritesThenFails(MemStore::new()));
    let writer = Writer::start(r("a"), 200, store.clone(), Arc::new(Fixed), WriterConfig::default(), policies(), None)
        .expect("start");
    let err = writer.write(vec![put("users", "u1", 1)]).await.expect_err("the commit fails");
    assert!(matches!(err, WriteError::Storage(_)), "{err}");
    assert!(writer.failed().is_some(), "what the disk holds is unknown: the writer stops");
    let again = writer.write(vec![put("users", "u2", 2)]).await.expect_err("no more writes");
    assert!(matches!(again, WriteError::Failed(_)), "{again}");
    assert!(again.to_string().contains("restart"), "{again}");
    // The store is not written to again: the sequence the failed commit used is not reused.
    assert!(store.get(&Key::new("users", "u2")).expect("reads go on").is_none());
}

/// A full dead-letter queue never drops a letter: a replicated change of a topic whose handler
/// could fail waits at its sender (refused, named), while other topics go on.
#[test]
fn a_full_dead_letter_queue_holds_custom_changes_back_and_lets_others_through() {
    let (mut a, mut b, mut c) = (engine("a"), engine("b"), engine("c"));
    let (sa, sb, sc) = (MemStore::new(), MemStore::new(), MemStore::new());
    // a and b write logs/k concurrently; b's write is one the handler refuses.
    write(&mut a, &sa, vec![put("logs", "k", 1)], 1_000);
    let refused = LocalOp::Put {
        key: Key::new("logs", "k"),
        value: json!({ "log": "!" }).to_string().into_bytes(),
        metadata: Metadata::default(),
    };
    write(&mut b, &sb, vec![refused], 1_001);
    write(&mut a, &sa, vec![put("logs", "k", 2), put("users", "u", 3)], 1_002);
    let from_a = changelog(&sa, "a");
    let apply = |c: &mut Engine, changes: Vec<Change>, room: u64| {
        let mut p = c.begin(2_000);
        p.limit_dead_letters(room);
        let out = c.apply_remote(&mut p, &sc, changes, 2_000).expect("apply");
        if let Some(batch) = c.finish(p) {
            sc.commit(&batch).expect("commit");
            c.committed(&batch);
        }
        out
    };
    let out = apply(&mut c, vec![from_a[0].clone()], 1);
    assert_eq!((out.applied, out.refused), (1, None));
    let out = apply(&mut c, changelog(&sb, "b"), 1);
    assert_eq!((out.applied, out.dead_letters), (1, 1), "the refused write is a dead letter");
    // The queue (bound 1) is full: a's next custom change waits; nothing after it applies.
    let out = apply(&mut c, from_a[1..].to_vec(), 1 - sc.dead_letter_count());
    assert!(matches!(out.refused, Some(mrr_writer::Refusal::DeadLettersFull { .. })), "{out:?}");
    assert_eq!(out.applied, 0);
    assert!(out.refused.as_ref().is_some_and(|r| r.to_string().contains("GET /v1/dlq")));
    // A timestamp topic's changes never dead-letter: they go through a full queue.
    write(&mut b, &sb, vec![put("users", "v", 4)], 1_003);
    let out = apply(&mut c, changelog(&sb, "b")[1..].to_vec(), 0);
    assert_eq!((out.applied, &out.refused), (1, &None), "{out:?}");
    assert_eq!(sc.dead_letter_count(), 1, "the letter is still there: nothing was dropped");
}
