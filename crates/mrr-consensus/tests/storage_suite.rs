//! openraft's own storage test suite against the strong tier's log (`LogAdapter`) on both the
//! memory log and the fjall log, with a state machine whose whole state is its position.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use mrr_consensus::{
    Apply, ApplyBatch, BoxFuture, Io, LogAdapter, Response, Runtime, SnapshotData, StateMachine, Types,
};
use mrr_storage::log::{LogStore, MemLog};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

#[derive(Debug, Default)]
struct Positions {
    position: Mutex<Option<Vec<u8>>>,
}

impl Apply for Positions {
    fn apply(&self, batch: ApplyBatch) -> BoxFuture<io::Result<Vec<Response>>> {
        *self.position.lock().unwrap_or_else(PoisonError::into_inner) = Some(batch.position);
        let answers = batch.commands.iter().map(|_| Response::default()).collect();
        Box::pin(async move { Ok(answers) })
    }

    fn position(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.position.lock().unwrap_or_else(PoisonError::into_inner).clone())
    }

    fn snapshot(&self) -> BoxFuture<io::Result<SnapshotData>> {
        let position = self.position.lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_default();
        Box::pin(async move { Ok(SnapshotData { position, data: Vec::new() }) })
    }

    fn restore(&self, snapshot: SnapshotData) -> BoxFuture<io::Result<()>> {
        *self.position.lock().unwrap_or_else(PoisonError::into_inner) = Some(snapshot.position);
        Box::pin(async { Ok(()) })
    }
}

struct Memory;

impl StoreBuilder<Types, LogAdapter, StateMachine, ()> for Memory {
    async fn build(&self) -> Result<((), LogAdapter, StateMachine), StorageError<Types>> {
        let log: Arc<dyn LogStore> = Arc::new(MemLog::new());
        Ok(((), LogAdapter::new(log, Io::Inline), StateMachine::new(Arc::new(Positions::default()))))
    }
}

struct OnFjall;

impl StoreBuilder<Types, LogAdapter, StateMachine, tempfile::TempDir> for OnFjall {
    async fn build(&self) -> Result<(tempfile::TempDir, LogAdapter, StateMachine), StorageError<Types>> {
        // Setting up the fixture is not what the suite tests: a failure here is the test's.
        let dir = tempfile::tempdir().expect("tempdir");
        let store = mrr_storage::FjallStore::open(dir.path(), mrr_storage::Durability::Fsync).expect("open store");
        let log: Arc<dyn LogStore> = Arc::new(store.log("consensus").expect("open log"));
        Ok((dir, LogAdapter::new(log, Io::Blocking), StateMachine::new(Arc::new(Positions::default()))))
    }
}

#[tokio::test]
async fn the_memory_log_passes_openraft_s_storage_suite() {
    let result = Runtime::scope(1, Suite::test_all(Memory)).await;
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fjall_log_passes_openraft_s_storage_suite() {
    let result = Runtime::scope(2, Suite::test_all(OnFjall)).await;
    assert!(result.is_ok(), "{result:?}");
}
