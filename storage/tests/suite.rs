//! openraft's storage conformance suite against haseq's LMDB store.
//!
//! Goal: `LogStore` and `StateMachineStore` behave as openraft expects (log state, purge,
//! truncate, vote, membership from log and state machine, initial state, snapshots).
//! Method: `Suite::test_all` with a builder that opens a fresh store in a new temp dir for each
//! case; the temp dir is the suite's guard, so it outlives the stores and is removed after.

use std::io;
use std::time::Instant;

use haseq_messages::TC;
use haseq_storage::{LogStore, StateMachineStore, StoreOptions};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb, StorageError};
use tempfile::TempDir;

struct LmdbBuilder;

fn sto_err(e: io::Error) -> StorageError<TC> {
    StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, e)
}

impl StoreBuilder<TC, LogStore, StateMachineStore, TempDir> for LmdbBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<TC>> {
        let dir = tempfile::tempdir().map_err(sto_err)?;
        let path = dir.path().to_path_buf();
        let opts = StoreOptions {
            map_size_bytes: 256 << 20,
            ..StoreOptions::default()
        };
        // `open` blocks while the writer thread creates the databases: keep it off the workers.
        let store = tokio::task::spawn_blocking(move || haseq_storage::open(&path, opts))
            .await
            .map_err(|e| sto_err(io::Error::other(e)))?
            .map_err(|e| sto_err(e.into()))?;
        Ok((dir, store.log, store.sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() -> Result<(), StorageError<TC>> {
    let started = Instant::now();
    Suite::test_all(LmdbBuilder).await?;
    eprintln!("openraft storage suite passed in {:?}", started.elapsed());
    Ok(())
}
