//! openraft's storage conformance suite against our write-ahead log and the
//! sled-backed state machine.

use std::sync::Arc;

use ballast_server::mvcc::Store;
use ballast_server::raft::{LogStore, StateMachine, TypeConfig};
use ballast_server::storage::db::StateDb;
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(&dir.path().join("wal")).expect("open log store");
        let db = StateDb::open(&dir.path().join("db")).expect("open state db");
        let store = Arc::new(Store::open(db).expect("open store"));
        let sm = StateMachine::open(store, dir.path().join("snap")).expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("storage suite passes");
}
