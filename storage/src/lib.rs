//! haseq-storage: all on-disk state of a node, in one LMDB environment (heed) plus snapshot
//! files beside it: the Raft log and vote, the state machine (applied log id, membership, the
//! applied chain's head), the block store, and Raft snapshots.
//!
//! Not here: networking, actors, role decisions, the execution engine. This crate implements
//! openraft's storage traits ([`LogStore`], [`StateMachineStore`]) and gives the rest of the node
//! read access ([`BlockReader`]) and a watch on what was applied ([`AppliedState`]).
//!
//! Every write transaction runs on one writer thread per environment ([`lmdb::Writer`]): async
//! callers hand it a closure and await the result, which arrives after the commit and its
//! fsync. Reads are short read transactions on the calling thread.
//!
//! Modules, bottom up: each one uses only modules listed before it, so the crate reads one way.
//! - [`error`]: the error type, [`StorageError`]; [`metrics`]: metric names and
//!   [`describe_metrics`];
//! - [`lmdb`]: the LMDB toolkit, shared with the embedded engine: opening an environment, the
//!   writer thread (group commit, durability per job, linger, deferred writes, drop-behind),
//!   record codecs;
//! - `records`: the stored record types and their keys ([`Head`]);
//! - `env`: the environment, its databases, the directory layout;
//! - `writer`: the store's writer thread (the toolkit's, over the store's databases);
//! - `applied`: the applied state as the `sm` database records it ([`AppliedState`]);
//!   `applied_tail`: applies whose transaction has not committed yet;
//! - `wal`: the log journal, which makes a log change durable with one flush, ahead of LMDB
//!   (`record` format, `segment` files, the `journal` thread);
//! - `blocks`: height -> block, hash -> height ([`BlockReader`], [`BlockBackfill`]);
//! - `log`: Raft log, vote, committed and purged pointers (`rows` in LMDB, the shared `tail`,
//!   the `store`: [`LogStore`]);
//! - `snapshot`: snapshot files, atomic writes, retention ([`SnapshotBuilder`]);
//! - `sm`: the apply rule and the state machine ([`StateMachineStore`], [`check_block`]).

mod applied;
mod applied_tail;
mod blocks;
mod env;
pub mod error;
pub mod lmdb;
mod log;
pub mod metrics;
mod records;
mod sm;
mod snapshot;
mod wal;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use haseq_messages::TC;
use tokio::sync::watch;

pub use crate::applied::AppliedState;
pub use crate::blocks::{BACKFILL_BLOCKS_MAX, BlockBackfill, BlockReader, CHECKPOINT_EVERY_BLOCKS};
pub use crate::error::StorageError;
pub use crate::log::{LOG_READ_ENTRIES_MAX, LogStore};
pub use crate::metrics::{describe_metrics, zero_metrics};
pub use crate::records::Head;
pub use crate::sm::{APPLY_BATCH_ENTRIES_MAX, StateMachineStore, check_block};
pub use crate::snapshot::SnapshotBuilder;

use crate::snapshot::SnapshotDir;

/// Default LMDB map size: 64 GiB of address space. LMDB grows the file only as data is
/// written, so this is a ceiling, not an allocation.
pub const DEFAULT_MAP_SIZE_BYTES: usize = 64 << 30;

/// Default [`StoreOptions::snapshot_recent_bytes`]: 16 MiB, the 1,024 default blocks up to
/// 16 KiB each; 163 blocks of 100 KiB (instead of 100 MiB held and sent in one snapshot).
pub const DEFAULT_SNAPSHOT_RECENT_BYTES: usize = 16 << 20;

/// How a store is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// How many snapshot files to keep (the newest); at least 1 (operator guide `snap_count`).
    pub snap_count: usize,
    /// How many of the newest blocks a snapshot carries, so that a node installing it can
    /// replay and serve the chain tip at once.
    pub snapshot_recent_blocks: usize,
    /// The most payload bytes those blocks may hold together: a snapshot is built, held and
    /// sent whole, so at large blocks this bound, not the count, limits it. The head block is
    /// carried whatever its size.
    pub snapshot_recent_bytes: usize,
    /// LMDB map size: the most the environment may ever hold. A multiple of the page size.
    pub map_size_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            snap_count: 3,
            snapshot_recent_blocks: 1024,
            snapshot_recent_bytes: DEFAULT_SNAPSHOT_RECENT_BYTES,
            map_size_bytes: DEFAULT_MAP_SIZE_BYTES,
        }
    }
}

impl StoreOptions {
    fn validate(&self) -> Result<(), StorageError> {
        if self.snap_count == 0 {
            return Err(StorageError::InvalidOption {
                name: "snap_count",
                value: "0".into(),
                reason: "the current snapshot must be kept: use at least 1",
            });
        }
        if self.map_size_bytes == 0 {
            return Err(StorageError::InvalidOption {
                name: "map_size_bytes",
                value: "0".into(),
                reason: "must be positive",
            });
        }
        Ok(())
    }
}

/// An open store: the three handles over one environment.
///
/// Dropping every handle (and every clone of them) closes the environment: the writer thread
/// is joined when the last log or state machine handle goes.
#[derive(Debug)]
pub struct Storage {
    /// The Raft log store, for `Raft::new`.
    pub log: LogStore,
    /// The Raft state machine, for `Raft::new`.
    pub sm: StateMachineStore,
    /// Read access to the applied chain, for the rest of the node.
    pub reader: BlockReader,
}

impl Storage {
    /// A handle that stores historical blocks fetched from peers (see [`BlockBackfill`]).
    /// Take it before moving `log` and `sm` into openraft.
    pub fn backfill(&self) -> BlockBackfill {
        self.log.backfill()
    }
}

/// Opens (creating if needed) the store in `dir`.
///
/// Blocks the calling thread while the environment opens and the databases are created (on
/// the writer thread): call it at start-up, or from `spawn_blocking`. Deletes snapshot temp
/// files a crash left behind.
///
/// # Errors
/// On bad options, an unusable directory, an environment LMDB can't open, a store still open
/// in this process, or a corrupt state record.
pub fn open(dir: &Path, opts: StoreOptions) -> Result<Storage, StorageError> {
    opts.validate()?;
    std::fs::create_dir_all(dir).map_err(StorageError::io("create directory", dir))?;
    let snapshots = SnapshotDir::new(
        dir.to_path_buf(),
        opts.snap_count,
        opts.snapshot_recent_blocks,
        opts.snapshot_recent_bytes,
    );
    snapshots.remove_temp_files()?;

    let env = env::open_env(dir, opts.map_size_bytes)?;
    // A process killed mid-read leaves a reader slot that pins old pages; reclaim it.
    match env.clear_stale_readers() {
        Ok(0) => {}
        Ok(n) => tracing::info!(stale = n, "cleared stale LMDB readers"),
        Err(e) => tracing::warn!(error = %e, "could not clear stale LMDB readers"),
    }
    let (writer, dbs) = writer::start(env.clone())?;
    let writer = Arc::new(writer);
    // Before anything reads the log: what the journal holds goes into LMDB first.
    let log_shared = log::LogShared::default();
    let journal = Arc::new(wal::JournalHandle::start(
        dir,
        writer.clone(),
        log_shared.clone(),
    )?);

    let initial = {
        let rtxn = env
            .read_txn()
            .map_err(StorageError::lmdb("open: begin read"))?;
        // Everything the journal held is in LMDB now (no append has been queued yet).
        log_shared.init(log::last_stored_index(&rtxn, &dbs)?);
        applied::read_applied_state(&rtxn, &dbs)?
    };
    tracing::info!(dir = %dir.display(), applied = ?initial.applied, head = %initial.head_height, "store opened");
    ::metrics::gauge!(metrics::APPLIED_HEIGHT).set(initial.head_height.0 as f64);
    let (applied_tx, applied_rx) = watch::channel(initial);
    let applied_tx = Arc::new(applied_tx);

    let tail = applied_tail::AppliedTail::default();
    Ok(Storage {
        log: LogStore::new(
            writer.clone(),
            journal,
            env.clone(),
            dbs,
            log_shared.clone(),
        ),
        sm: StateMachineStore::new(
            writer,
            env.clone(),
            dbs,
            snapshots,
            applied_tx,
            tail.clone(),
            log_shared,
        ),
        reader: BlockReader::new(env, dbs, applied_rx, tail),
    })
}

/// Whether `dir` holds an initialised store: a saved vote, a log entry or purge, an applied
/// entry, or a snapshot. Decides between bootstrapping a new cluster and rejoining.
///
/// Call it before [`open`]. It errs on the side of `true`: a store it cannot read (corrupt,
/// locked, already open in this process) counts as initialised, so a node never bootstraps
/// over state it could not inspect; [`open`] then reports the actual problem.
pub fn has_state(dir: &Path) -> bool {
    match inspect(dir) {
        Ok(has) => has,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot inspect store; treating it as initialised");
            true
        }
    }
}

fn inspect(dir: &Path) -> Result<bool, StorageError> {
    if !dir.exists() {
        return Ok(false);
    }
    let snapshots = SnapshotDir::new(dir.to_path_buf(), usize::MAX, 0, 0);
    if !snapshots.list()?.is_empty() || wal::has_records(dir)? {
        return Ok(true);
    }
    let data_file: PathBuf = env::env_dir(dir).join("data.mdb");
    if !data_file.exists() {
        return Ok(false);
    }
    let env = env::open_env(dir, DEFAULT_MAP_SIZE_BYTES)?;
    let Some(dbs) = env::open_dbs(&env)? else {
        return Ok(false);
    };
    let rtxn = env
        .read_txn()
        .map_err(StorageError::lmdb("inspect: begin read"))?;
    let meta_has = |key: &str| -> Result<bool, StorageError> {
        Ok(dbs
            .meta
            .get(&rtxn, key)
            .map_err(StorageError::lmdb("inspect: read meta"))?
            .is_some())
    };
    let applied: Option<Option<openraft::type_config::alias::LogIdOf<TC>>> =
        lmdb::get_rec(&rtxn, dbs.sm, "applied log id", records::sm_key::APPLIED)?;
    let has = meta_has(records::meta_key::VOTE)?
        || meta_has(records::meta_key::LAST_PURGED)?
        || !dbs
            .log
            .is_empty(&rtxn)
            .map_err(StorageError::lmdb("inspect: read log"))?
        || applied.flatten().is_some();
    Ok(has)
}
