//! The store's writer thread: the toolkit's [`lmdb::Writer`] over the store's databases, with
//! the store's queue, groups and linger.
//!
//! Durability per job, as the store uses it: the vote, a log truncation or purge, and a
//! journal checkpoint are flushed whole ([`Durability::Full`]: what Raft acknowledges outside
//! the journal, and changes whose callers wait, so a full commit ends the linger), while the
//! log appends the journal already made durable (see `wal`) and the state-machine applies flush
//! their data pages but not the meta page ([`Durability::DataOnly`]: openraft re-applies from
//! the durable log if the state machine goes back, and the journal holds log appends until a
//! full commit, its checkpoint, has made them durable here).
//!
//! The deferred write carries openraft's committed pointer, which is advisory and followed by
//! an apply: it rides in the next group, written last so that it carries the newest value saved
//! before any job of the group is told.

use std::time::Duration;

use crate::env::{self, Dbs};
use crate::error::StorageError;
use crate::lmdb::{self, LmdbEnv, WriterConfig};

pub(crate) use crate::lmdb::Durability;

/// The store's writer: every job is handed the store's databases.
pub(crate) type Writer = lmdb::Writer<Dbs>;

/// How many write jobs may wait for the writer before submitters wait in turn.
const WRITER_QUEUE_JOBS_MAX: usize = 1024;
/// Most jobs committed as one group.
const GROUP_JOBS_MAX: usize = 64;
/// How long a group of only `DataOnly` jobs gathers more jobs before it commits (a `Full` job
/// ends the wait). Nothing waits on these commits to go on (the log is durable in its journal,
/// applies are readable at once), so a longer wait only means fewer flushes competing with the
/// journal's: measured on 3 nodes sharing a disk, 1 KiB blocks, commit p50 1.10 ms at 1 ms,
/// 1.03 ms at 5 ms, 1.01 ms at 20 ms. 25 ms with the engine's `EXTEND_LINGER` at 25 ms too,
/// against 10 ms for both (alternating runs of `haseqd bench --nodes 3 --blocks 2000`, a
/// machine whose disk the three nodes' flushes kept busy at 100 KiB): 100 KiB blocks 131.8 vs
/// 123.5 blocks/s, p50 3.60 vs 4.48 ms (6 pairs); 10 KiB 362 vs 350 blocks/s (2 pairs); 1 KiB
/// 584 vs 507 blocks/s, p50 1.23 vs 1.35 ms (2 pairs). The price is the tail: a journal flush
/// that queues behind one of these larger flushes waits longer (p99 at 100 KiB 23-24 ms
/// against 17-18 ms).
pub(crate) const DATA_ONLY_LINGER: Duration = Duration::from_millis(25);

const CONFIG: WriterConfig = WriterConfig {
    thread_name: "haseq-storage-writer",
    queue_jobs_max: WRITER_QUEUE_JOBS_MAX,
    group_jobs_max: GROUP_JOBS_MAX,
    linger: DATA_ONLY_LINGER,
};

/// Starts the store's writer thread on `env`, which first creates the databases. Blocks the
/// calling thread until that is done (start-up only).
pub(crate) fn start(env: LmdbEnv) -> Result<(Writer, Dbs), StorageError> {
    Writer::start(env, CONFIG, env::create_dbs)
}
