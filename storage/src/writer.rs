//! The writer thread: the only place a write transaction is opened, written and committed.
//!
//! Why a thread: LMDB's `write_txn()` waits on a mutex while another write transaction is open,
//! and `commit()` fsyncs; either can block for milliseconds. On a tokio worker that stalls every
//! task scheduled there, heartbeats included (a spurious election). LMDB also binds a
//! transaction to the thread that opened it, while heed's `RwTxn` is `Send`, so the compiler
//! would not stop a transaction from crossing an `.await`. So async code hands the writer a
//! closure and awaits a oneshot; the closure runs between `write_txn()` and `commit()` on this
//! thread, and its result is sent back only after the commit has returned (durable as the job
//! asked, see below).
//!
//! Durability is chosen per job ([`Durability`]): the vote, a log truncation or purge, and a
//! journal checkpoint are flushed whole (LMDB's default commit: data pages `fdatasync`, then
//! the meta page written through LMDB's `O_DSYNC` descriptor), while the log appends the
//! journal already made durable (see `wal`) and the state-machine applies flush their data
//! pages but not the meta page (`MDB_NOMETASYNC`). Either way LMDB's integrity holds: the
//! environment after a power loss is the state after some committed transaction, never a mix,
//! and every transaction before the last full commit is in it. A process crash loses nothing
//! that was committed, whatever the durability (the meta page is written, only not flushed).
//!
//! Group commit: the writer takes every job queued at once (up to [`GROUP_JOBS_MAX`]) into one
//! transaction, each job in a nested transaction of its own (a job that fails is rolled back
//! alone, and its caller gets its error), and commits the group once, at the strongest
//! durability any of its jobs asked for. A group of only `DataOnly` jobs first gathers what
//! arrives within [`DATA_ONLY_LINGER`] (a `Full` job ends the wait), so that these commits,
//! which nothing waits on, cost few flushes. Every job's caller hears back only after the
//! group's commit (or with the commit's error).
//!
//! A deferred write ([`Writer::defer`]) is not a job of its own: it rides in the next group's
//! transaction, written last so that it carries the newest value saved before any job of the
//! group is told (openraft's committed pointer, which is advisory and followed by an apply).

use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use heed::{EnvFlags, FlagSetMode, RwTxn};
use tokio::sync::{mpsc, oneshot};

use crate::drop_behind::DropBehind;
use crate::env::{self, Dbs, LmdbEnv};
use crate::error::StorageError;

/// How many write jobs may wait for the writer before submitters wait in turn.
const WRITER_QUEUE_JOBS_MAX: usize = 1024;
/// Most jobs committed as one group.
pub(crate) const GROUP_JOBS_MAX: usize = 64;
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

/// What a job hands back once it has run in its nested transaction: its durability, and what
/// to do with the group's commit outcome.
struct Ran {
    durability: Durability,
    completion: Completion,
}

/// Told the group's commit outcome (`Err` carries the commit's error text).
type Completion = Box<dyn FnOnce(Result<(), String>) + Send + 'static>;

/// A write job: runs in a nested transaction of the group's (`None`: the group could not begin
/// one), then waits for the group's commit outcome.
type Job = Box<dyn FnOnce(&LmdbEnv, Option<&mut RwTxn<'_>>, &Dbs) -> Ran + Send + 'static>;

/// A write that rides in the next group's transaction.
type Deferred = Box<dyn FnOnce(&mut RwTxn<'_>, &Dbs) -> Result<(), StorageError> + Send + 'static>;

/// The one pending deferred write: a newer one replaces it.
type DeferredSlot = Arc<Mutex<Option<(&'static str, Deferred)>>>;

/// How durable a job's commit is when its result is handed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Durability {
    /// Survives a process crash; a power loss may undo it (and only what came after the last
    /// `Full` commit), never corrupt anything: data pages flushed, meta page written but not
    /// flushed (`MDB_NOMETASYNC`). For the state machine, which openraft re-applies from the
    /// durable log if it goes back, and for log appends, which the journal holds until a full
    /// commit (its checkpoint) has made them durable here.
    DataOnly,
    /// Survives a power loss: data and meta pages flushed (LMDB's default commit). For what
    /// Raft acknowledges outside the journal (votes), for truncation and purge (their callers
    /// wait; a full commit ends the linger), and for journal checkpoints.
    Full,
}

/// Handle to the writer thread. Dropping the last handle closes the queue and joins the
/// thread, so the environment is closed once every reader is gone too.
pub(crate) struct Writer {
    /// `None` only while dropping.
    tx: Option<mpsc::Sender<Job>>,
    /// `None` only while dropping.
    thread: Option<JoinHandle<()>>,
    deferred: DeferredSlot,
}

impl Writer {
    /// Starts the writer thread on `env`, which first creates the databases. Blocks the calling
    /// thread until that is done (start-up only).
    pub(crate) fn start(env: LmdbEnv) -> Result<(Writer, Dbs), StorageError> {
        let (tx, rx) = mpsc::channel::<Job>(WRITER_QUEUE_JOBS_MAX);
        let (init_tx, init_rx) = std::sync::mpsc::sync_channel::<Result<Dbs, StorageError>>(1);
        let deferred = DeferredSlot::default();
        let slot = deferred.clone();
        let thread = thread::Builder::new()
            .name("haseq-storage-writer".into())
            .spawn(move || {
                let dbs = match env::create_dbs(&env) {
                    Ok(dbs) => dbs,
                    Err(e) => {
                        let _ = init_tx.send(Err(e));
                        return;
                    }
                };
                // A timer for the linger only: this thread never runs async work otherwise.
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = init_tx.send(Err(StorageError::Io {
                            op: "build the writer's timer",
                            path: env.path().to_path_buf(),
                            source: e,
                        }));
                        return;
                    }
                };
                if init_tx.send(Ok(dbs)).is_err() {
                    return;
                }
                run_writer(&env, &dbs, &slot, &rt, rx);
                tracing::debug!(path = %env.path().display(), "storage writer stopped");
            })
            .map_err(StorageError::io(
                "spawn writer thread",
                "haseq-storage-writer",
            ))?;
        let dbs = match init_rx.recv() {
            Ok(res) => res?,
            Err(_) => return Err(StorageError::WriterStopped),
        };
        Ok((
            Writer {
                tx: Some(tx),
                thread: Some(thread),
                deferred,
            },
            dbs,
        ))
    }

    /// [`Writer::write_with`] at [`Durability::Full`].
    pub(crate) async fn write<R, F>(&self, op: &'static str, f: F) -> Result<R, StorageError>
    where
        F: FnOnce(&mut RwTxn<'_>, &Dbs) -> Result<R, StorageError> + Send + 'static,
        R: Send + 'static,
    {
        self.write_with(op, Durability::Full, f).await
    }

    /// Has `f` written in the next group's transaction, without a job of its own. A later
    /// `defer` replaces a pending one (for records where only the newest value matters). If
    /// that write fails, it is dropped (logged), and the group goes on.
    pub(crate) fn defer<F>(&self, op: &'static str, f: F)
    where
        F: FnOnce(&mut RwTxn<'_>, &Dbs) -> Result<(), StorageError> + Send + 'static,
    {
        *lock(&self.deferred) = Some((op, Box::new(f)));
    }

    /// Queues `f` to run inside a write transaction on the writer thread, committed at
    /// `durability` (or stronger, with its group), and returns once it is queued (waiting only
    /// for room in the queue); `done` is then called on the writer thread with `f`'s result
    /// after the commit, or with the error that stopped it. Jobs run in the order they were
    /// queued.
    ///
    /// For the Raft log: openraft wants `append` to return without waiting for the disk and
    /// to be told separately when the entries are durable, so the leader's flush overlaps
    /// replication instead of preceding it.
    pub(crate) async fn submit<R, F, D>(
        &self,
        op: &'static str,
        durability: Durability,
        f: F,
        done: D,
    ) -> Result<(), StorageError>
    where
        F: FnOnce(&mut RwTxn<'_>, &Dbs) -> Result<R, StorageError> + Send + 'static,
        R: Send + 'static,
        D: FnOnce(Result<R, StorageError>) + Send + 'static,
    {
        let tx = self.tx.as_ref().ok_or(StorageError::WriterStopped)?;
        tx.send(job(op, durability, f, done))
            .await
            .map_err(|_| StorageError::WriterStopped)
    }

    /// [`Writer::submit`] from a plain thread (the log journal's): waits for room in the queue
    /// by blocking. Never call it on an async task.
    pub(crate) fn submit_blocking<R, F, D>(
        &self,
        op: &'static str,
        durability: Durability,
        f: F,
        done: D,
    ) -> Result<(), StorageError>
    where
        F: FnOnce(&mut RwTxn<'_>, &Dbs) -> Result<R, StorageError> + Send + 'static,
        R: Send + 'static,
        D: FnOnce(Result<R, StorageError>) + Send + 'static,
    {
        let tx = self.tx.as_ref().ok_or(StorageError::WriterStopped)?;
        tx.blocking_send(job(op, durability, f, done))
            .map_err(|_| StorageError::WriterStopped)
    }

    /// [`Writer::write_with`] from a plain thread: blocks until the commit is done.
    pub(crate) fn write_blocking<R, F>(
        &self,
        op: &'static str,
        durability: Durability,
        f: F,
    ) -> Result<R, StorageError>
    where
        F: FnOnce(&mut RwTxn<'_>, &Dbs) -> Result<R, StorageError> + Send + 'static,
        R: Send + 'static,
    {
        let (reply_tx, reply_rx) = std::sync::mpsc::sync_channel(1);
        self.submit_blocking(op, durability, f, move |res| {
            let _ = reply_tx.send(res);
        })?;
        reply_rx.recv().map_err(|_| StorageError::WriterStopped)?
    }

    /// Runs `f` inside a write transaction on the writer thread, committed at `durability` (or
    /// stronger, with its group); returns `f`'s result once the commit (and its flushes) is
    /// done. If `f` fails, nothing of it is written.
    ///
    /// Cancel-safety: if the returned future is dropped after the job was queued, the job still
    /// runs and commits; only its result is lost.
    pub(crate) async fn write_with<R, F>(
        &self,
        op: &'static str,
        durability: Durability,
        f: F,
    ) -> Result<R, StorageError>
    where
        F: FnOnce(&mut RwTxn<'_>, &Dbs) -> Result<R, StorageError> + Send + 'static,
        R: Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.submit(op, durability, f, move |res| {
            // The submitter may have gone away (cancelled); the write stands regardless.
            let _ = reply_tx.send(res);
        })
        .await?;
        reply_rx.await.map_err(|_| StorageError::WriterStopped)?
    }
}

/// The job that runs `f` in its nested transaction and tells `done` after the group's commit.
fn job<R, F, D>(op: &'static str, durability: Durability, f: F, done: D) -> Job
where
    F: FnOnce(&mut RwTxn<'_>, &Dbs) -> Result<R, StorageError> + Send + 'static,
    R: Send + 'static,
    D: FnOnce(Result<R, StorageError>) + Send + 'static,
{
    Box::new(
        move |env: &LmdbEnv, group: Option<&mut RwTxn<'_>>, dbs: &Dbs| {
            let res = match group {
                Some(group) => run_nested(env, group, dbs, op, f).map(Some),
                // Nothing ran: the completion gets the group's error.
                None => Ok(None),
            };
            let completion: Completion = match res {
                Ok(out) => Box::new(move |committed: Result<(), String>| {
                    let res = match (committed, out) {
                        (Ok(()), Some(out)) => Ok(out),
                        (Err(detail), _) => Err(StorageError::Commit { op, detail }),
                        (Ok(()), None) => Err(StorageError::Commit {
                            op,
                            detail: "no transaction to run in".into(),
                        }),
                    };
                    done(res);
                }),
                Err(e) => Box::new(move |_| done(Err(e))),
            };
            Ran {
                durability,
                completion,
            }
        },
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The slot holds an Option: a panic while it was held leaves it consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The writer thread's loop: groups of queued jobs, one commit each, until every sender is
/// gone; queued jobs still run after the last sender drops, so nothing handed to the writer is
/// silently skipped.
fn run_writer(
    env: &LmdbEnv,
    dbs: &Dbs,
    slot: &DeferredSlot,
    rt: &tokio::runtime::Runtime,
    mut rx: mpsc::Receiver<Job>,
) {
    // Block bodies are written once and read from memory while recent (see `drop_behind`).
    let mut drop_behind = DropBehind::for_env_dir(env.path());
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP_JOBS_MAX {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        commit_group(env, dbs, slot, rt, &mut rx, group);
        drop_behind.after_commit();
    }
}

/// Runs `group` (and, for a group of `DataOnly` jobs, whatever arrives within the linger) in
/// one transaction and commits it once; then tells every job the outcome.
fn commit_group(
    env: &LmdbEnv,
    dbs: &Dbs,
    slot: &DeferredSlot,
    rt: &tokio::runtime::Runtime,
    rx: &mut mpsc::Receiver<Job>,
    group: Vec<Job>,
) {
    let mut wtxn = match env.write_txn() {
        Ok(t) => t,
        Err(e) => {
            // Nothing can be written: every job hears so through its completion.
            let detail = format!("LMDB begin write: {e}");
            for job in group {
                (job(env, None, dbs).completion)(Err(detail.clone()));
            }
            return;
        }
    };
    let mut durability = Durability::DataOnly;
    let mut completions: Vec<Completion> = Vec::with_capacity(group.len());
    let run = |job: Job,
               wtxn: &mut RwTxn<'_>,
               durability: &mut Durability,
               completions: &mut Vec<Completion>| {
        let ran = job(env, Some(wtxn), dbs);
        *durability = (*durability).max(ran.durability);
        completions.push(ran.completion);
    };
    for job in group {
        run(job, &mut wtxn, &mut durability, &mut completions);
    }
    // Only applies so far: give the next job (a log append, as a rule) a moment to come and
    // carry them in its commit.
    if durability == Durability::DataOnly {
        let deadline = tokio::time::Instant::now() + DATA_ONLY_LINGER;
        while completions.len() < GROUP_JOBS_MAX && durability == Durability::DataOnly {
            match rt.block_on(async { tokio::time::timeout_at(deadline, rx.recv()).await }) {
                Ok(Some(job)) => run(job, &mut wtxn, &mut durability, &mut completions),
                _ => break,
            }
        }
        while completions.len() < GROUP_JOBS_MAX {
            match rx.try_recv() {
                Ok(job) => run(job, &mut wtxn, &mut durability, &mut completions),
                Err(_) => break,
            }
        }
    }
    // Last, so that it carries the newest value saved before any job of the group is told.
    if let Some((op, write)) = lock(slot).take() {
        let res = env
            .nested_write_txn(&mut wtxn)
            .map_err(StorageError::lmdb(op))
            .and_then(|mut child| {
                write(&mut child, dbs)?;
                child.commit().map_err(StorageError::lmdb(op))
            });
        if let Err(e) = res {
            // Advisory data: its loss must not fail the jobs it rode with.
            tracing::warn!(op, error = %e, "deferred write failed; dropped");
        }
    }
    // A failed commit is reported to every caller as is: never retried quietly, never
    // reported done (the callers hand it to openraft, which stops the node).
    let committed = commit_at(env, wtxn, durability).map_err(|e| format!("LMDB commit: {e}"));
    for c in completions {
        c(committed.clone());
    }
}

/// Runs `f` in a nested transaction of `group`: committed into the group if `f` succeeds,
/// rolled back alone if it fails.
fn run_nested<R, F>(
    env: &LmdbEnv,
    group: &mut RwTxn<'_>,
    dbs: &Dbs,
    op: &'static str,
    f: F,
) -> Result<R, StorageError>
where
    F: FnOnce(&mut RwTxn<'_>, &Dbs) -> Result<R, StorageError>,
{
    let mut child = env
        .nested_write_txn(group)
        .map_err(StorageError::lmdb(op))?;
    match f(&mut child, dbs) {
        Ok(out) => {
            child.commit().map_err(StorageError::lmdb(op))?;
            Ok(out)
        }
        Err(e) => {
            child.abort();
            Err(e)
        }
    }
}

/// Commits `wtxn` at `durability`.
fn commit_at(env: &LmdbEnv, wtxn: RwTxn<'_>, durability: Durability) -> Result<(), heed::Error> {
    match durability {
        Durability::Full => wtxn.commit(),
        Durability::DataOnly => {
            // SAFETY: LMDB requires that one thread at a time changes the flags; only this
            // (writer) thread ever does, around its own commits. `MDB_NOMETASYNC` is one of
            // the flags LMDB allows to change at run time; it keeps the database's integrity
            // (see the module doc) and is read by the commit alone.
            unsafe { env.set_flags(EnvFlags::NO_META_SYNC, FlagSetMode::Enable)? };
            let res = wtxn.commit();
            // SAFETY: as above.
            let reset = unsafe { env.set_flags(EnvFlags::NO_META_SYNC, FlagSetMode::Disable) };
            res.and(reset)
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            // Joining makes close deterministic: once the last store handle is dropped, the
            // environment can be opened again. The writer never holds a `Writer`, so this never
            // joins itself; the check is a guard against a future change doing so.
            if thread.thread().id() != thread::current().id() && thread.join().is_err() {
                tracing::error!("storage writer thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_meta(env: &LmdbEnv, dbs: &Dbs, key: &str) -> Option<Vec<u8>> {
        let rtxn = env.read_txn().expect("read txn");
        dbs.meta.get(&rtxn, key).expect("get").map(<[u8]>::to_vec)
    }

    /// Jobs queued together: the one that fails is rolled back alone and hears its own error;
    /// the others commit, whichever group they landed in; durability follows the strongest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_job_is_rolled_back_alone_and_the_others_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = env::open_env(dir.path(), 16 << 20).expect("env");
        let (writer, dbs) = Writer::start(env.clone()).expect("writer");
        let (tx, mut rx) = mpsc::unbounded_channel::<(&'static str, Result<(), String>)>();
        for (name, fails, durability) in [
            ("a", false, Durability::DataOnly),
            ("b", true, Durability::DataOnly),
            ("c", false, Durability::Full),
            ("d", false, Durability::DataOnly),
        ] {
            let tx = tx.clone();
            writer
                .submit(
                    "test",
                    durability,
                    move |wtxn, dbs| {
                        dbs.meta
                            .put(wtxn, name, name.as_bytes())
                            .map_err(StorageError::lmdb("put"))?;
                        if fails {
                            return Err(StorageError::WriterStopped);
                        }
                        Ok(())
                    },
                    move |res| {
                        let _ = tx.send((name, res.map_err(|e| e.to_string())));
                    },
                )
                .await
                .expect("queued");
        }
        let mut outcomes = Vec::new();
        for _ in 0..4 {
            outcomes.push(rx.recv().await.expect("every job hears back"));
        }
        outcomes.sort_by_key(|(n, _)| *n);
        assert_eq!(outcomes[0], ("a", Ok(())));
        assert!(outcomes[1].1.is_err(), "{outcomes:?}");
        assert_eq!(outcomes[2], ("c", Ok(())));
        assert_eq!(outcomes[3], ("d", Ok(())));
        assert_eq!(read_meta(&env, &dbs, "a").as_deref(), Some(&b"a"[..]));
        assert_eq!(
            read_meta(&env, &dbs, "b"),
            None,
            "the failed job left nothing"
        );
        assert_eq!(read_meta(&env, &dbs, "c").as_deref(), Some(&b"c"[..]));
        assert_eq!(read_meta(&env, &dbs, "d").as_deref(), Some(&b"d"[..]));
        // The flags are back to full durability after any data-only commit.
        let flags = env.get_flags().expect("flags");
        assert_eq!(flags & EnvFlags::NO_META_SYNC.bits(), 0);
        drop(writer);
    }

    /// The writer lets go of the block bodies it committed (see `drop_behind`): after eighty
    /// commits of a 100 KiB value each, the data file holds them all but the page cache holds
    /// little of it. Fails with the drop-behind call taken out of `run_writer`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_values_leave_the_page_cache() {
        const VALUE_BYTES: usize = 100 * 1024;
        const COMMITS: usize = 80;
        // On the build's disk: a tmpfs (often /tmp) keeps every page whatever the advice.
        let exe = std::env::current_exe().expect("test binary path");
        let dir = tempfile::tempdir_in(exe.parent().expect("its directory")).expect("tempdir");
        let env = env::open_env(dir.path(), 64 << 20).expect("env");
        let (writer, dbs) = Writer::start(env.clone()).expect("writer");
        for i in 0..COMMITS {
            let key = format!("value-{i:03}");
            writer
                .write("test: put value", move |wtxn, dbs| {
                    dbs.meta
                        .put(wtxn, &key, &vec![i as u8; VALUE_BYTES])
                        .map_err(StorageError::lmdb("put"))
                })
                .await
                .expect("committed");
        }
        let data = env.path().join("data.mdb");
        let resident = crate::drop_behind::resident_pages(&data).expect("mincore");
        let page = crate::drop_behind::page_bytes();
        let cached = resident.iter().filter(|r| **r).count() * page;
        let file = resident.len() * page;
        assert!(file >= COMMITS * VALUE_BYTES, "file {file} bytes");
        // Kept: the last LAG_COMMITS commits' growth, what was there at open, and the tree's
        // pages that later commits rewrote in place of freed ones. Without drop-behind, all of
        // the file.
        assert!(
            cached * 4 <= file,
            "{cached} of {file} bytes cached after {COMMITS} commits; at most a quarter expected"
        );
        // Nothing lost: every value reads back (from the disk, for most).
        let rtxn = env.read_txn().expect("read txn");
        for i in 0..COMMITS {
            let v = dbs
                .meta
                .get(&rtxn, &format!("value-{i:03}"))
                .expect("get")
                .expect("present");
            assert_eq!(v.len(), VALUE_BYTES);
            assert!(v.iter().all(|b| *b == i as u8));
        }
        drop(rtxn);
        drop(writer);
    }
}
