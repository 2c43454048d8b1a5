//! The store's LMDB environment, its databases, and the directory layout.
//!
//! Layout under the node's directory:
//! ```text
//! <dir>/db/data.mdb, lock.mdb     the LMDB environment (this module)
//! <dir>/wal/<seq>.wal, spare       the log journal's segments (see `wal`)
//! <dir>/snapshot-<term>-<index>.snp   snapshot files (see `snapshot`)
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};

use heed::byteorder::BE;
use heed::types::{Bytes, Str, U64};
use heed::{CommitOrAbort, Database};

use crate::error::StorageError;
use crate::lmdb::{self, EnvOptions, LmdbEnv};

/// Name of the environment's subdirectory under the node's directory.
const ENV_SUBDIR: &str = "db";

/// How many named databases the environment may hold (we use seven; room to grow).
const MAX_DBS: u32 = 16;

/// The databases of one environment. `Copy`: a handle is only a number.
#[derive(Clone, Copy)]
pub(crate) struct Dbs {
    /// Raft log: index (big-endian) -> postcard entry. Holds every entry except those of
    /// applied blocks, which are in `log_blocks`; an index is in one or the other.
    pub(crate) log: Database<'static, U64<BE>, Bytes>,
    /// Raft log entries of applied blocks: index (big-endian) -> postcard
    /// [`crate::records::BlockEntryRow`], the payload being the block store's.
    pub(crate) log_blocks: Database<'static, U64<BE>, Bytes>,
    /// Raft metadata: vote, committed, last purged.
    pub(crate) meta: Database<'static, Str, Bytes>,
    /// State machine: applied log id, membership, head.
    pub(crate) sm: Database<'static, Str, Bytes>,
    /// Block store: height (big-endian) -> postcard block.
    pub(crate) blocks: Database<'static, U64<BE>, Bytes>,
    /// Block index: hash (32 bytes) -> height.
    pub(crate) hashes: Database<'static, Bytes, U64<BE>>,
    /// Checkpoints: height (big-endian, a multiple of `CHECKPOINT_EVERY_BLOCKS`) -> the
    /// committed block's hash (32 bytes), also where the block itself is not stored.
    pub(crate) checkpoints: Database<'static, U64<BE>, Bytes>,
}

/// The environment directory for a node directory.
pub(crate) fn env_dir(dir: &Path) -> PathBuf {
    dir.join(ENV_SUBDIR)
}

/// Opens (creating the directory if needed) the environment under `dir` (see
/// [`lmdb::open_env`]: it waits for a store on the same directory that was just dropped).
pub(crate) fn open_env(dir: &Path, map_size_bytes: usize) -> Result<LmdbEnv, StorageError> {
    let opts = EnvOptions {
        map_size_bytes,
        max_dbs: MAX_DBS,
    };
    lmdb::open_env(&env_dir(dir), &opts)
}

/// Creates (or opens) the databases. Runs a write transaction: call it on the writer thread.
pub(crate) fn create_dbs(env: &LmdbEnv) -> Result<Dbs, StorageError> {
    let wtxn = env
        .write_txn()
        .map_err(StorageError::lmdb("begin: create databases"))?;
    let (log, log_blocks, meta, sm, blocks, hashes, checkpoints) = env
        .create_databases_and_commit(wtxn, |dbo, wtxn| -> Result<_, heed::Error> {
            let log = dbo.create_database::<U64<BE>, Bytes>(wtxn, Some("log"))?;
            // Created on the first open by a version that has it; older stores lack it.
            let log_blocks = dbo.create_database::<U64<BE>, Bytes>(wtxn, Some("log_blocks"))?;
            let meta = dbo.create_database::<Str, Bytes>(wtxn, Some("meta"))?;
            let sm = dbo.create_database::<Str, Bytes>(wtxn, Some("sm"))?;
            let blocks = dbo.create_database::<U64<BE>, Bytes>(wtxn, Some("blocks"))?;
            let hashes = dbo.create_database::<Bytes, U64<BE>>(wtxn, Some("block_hashes"))?;
            // Created on the first open by a version that has it; older stores lack it.
            let checkpoints =
                dbo.create_database::<U64<BE>, Bytes>(wtxn, Some("block_checkpoints"))?;
            Ok(CommitOrAbort::<_, ()>::Commit((
                log,
                log_blocks,
                meta,
                sm,
                blocks,
                hashes,
                checkpoints,
            )))
        })
        .map_err(StorageError::lmdb("create databases"))?
        .unwrap_commit();
    Ok(Dbs {
        log,
        log_blocks,
        meta,
        sm,
        blocks,
        hashes,
        checkpoints,
    })
}

/// The databases [`open_dbs`] opens: what tells whether a store holds any state.
#[derive(Clone, Copy)]
pub(crate) struct InspectDbs {
    /// See [`Dbs::log`].
    pub(crate) log: Database<'static, U64<BE>, Bytes>,
    /// See [`Dbs::meta`].
    pub(crate) meta: Database<'static, Str, Bytes>,
    /// See [`Dbs::sm`].
    pub(crate) sm: Database<'static, Str, Bytes>,
}

/// Opens the existing databases that [`InspectDbs`] names, read-only; `None` when the
/// environment has none yet. (Not `log_blocks`: a store written by an older version lacks it,
/// and a store with a row there has an applied log id in `sm` anyway.)
pub(crate) fn open_dbs(env: &LmdbEnv) -> Result<Option<InspectDbs>, StorageError> {
    let rtxn = env
        .read_txn()
        .map_err(StorageError::lmdb("begin: open databases"))?;
    let res = env
        .open_databases_and_commit(rtxn, |dbo, rtxn| -> Result<_, heed::Error> {
            let log = dbo.open_database::<U64<BE>, Bytes>(rtxn, Some("log"))?;
            let meta = dbo.open_database::<Str, Bytes>(rtxn, Some("meta"))?;
            let sm = dbo.open_database::<Str, Bytes>(rtxn, Some("sm"))?;
            Ok(match (log, meta, sm) {
                (Some(log), Some(meta), Some(sm)) => CommitOrAbort::Commit((log, meta, sm)),
                _ => CommitOrAbort::Abort(()),
            })
        })
        .map_err(StorageError::lmdb("open databases"))?;
    Ok(res
        .commit()
        .map(|(log, meta, sm)| InspectDbs { log, meta, sm }))
}

/// fsyncs a directory, so that a rename or delete in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StorageError::io("fsync directory", dir))
}
