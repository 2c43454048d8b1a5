//! The writer thread: the only place a write transaction is opened, written and committed.
//!
//! Why a thread: LMDB's `write_txn()` waits on a mutex while another write transaction is open,
//! and `commit()` fsyncs; either can block for milliseconds. On a tokio worker that stalls every
//! task scheduled there, heartbeats included (a spurious election). LMDB also binds a
//! transaction to the thread that opened it, while heed's `RwTxn` is `Send`, so the compiler
//! would not stop a transaction from crossing an `.await`. So async code hands the writer a
//! closure and awaits a oneshot; the closure runs between `write_txn()` and `commit()` on this
//! thread, and its result is sent back only after the commit has returned (i.e. is durable).
//!
//! Durability is chosen per job ([`Durability`]): the Raft log and vote are flushed whole
//! before they are acknowledged (LMDB's default commit: data pages `fdatasync`, then the meta
//! page written through LMDB's `O_DSYNC` descriptor), while state-machine applies flush their
//! data pages but not the meta page (`MDB_NOMETASYNC`). Either way LMDB's integrity holds: the
//! environment after a power loss is the state after some committed transaction, never a mix,
//! and every transaction before the last full commit is in it. A process crash loses nothing
//! that was committed, whatever the durability (the meta page is written, only not flushed).
//!
//! A deferred write ([`Writer::defer`]) is not a job of its own: it rides in the next job's
//! transaction (openraft's committed pointer, which is advisory and followed by an apply).

use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use heed::{EnvFlags, FlagSetMode, RwTxn};
use tokio::sync::{mpsc, oneshot};

use crate::env::{self, Dbs, LmdbEnv};
use crate::error::StorageError;

/// How many write jobs may wait for the writer before submitters wait in turn.
const WRITER_QUEUE_JOBS_MAX: usize = 1024;

/// A write job: open, write, commit, reply. Built by [`Writer::write_with`].
type Job = Box<dyn FnOnce(&LmdbEnv, &Dbs, &DeferredSlot) + Send + 'static>;

/// A write that rides in the next job's transaction.
type Deferred = Box<dyn FnOnce(&mut RwTxn<'_>, &Dbs) -> Result<(), StorageError> + Send + 'static>;

/// The one pending deferred write: a newer one replaces it.
type DeferredSlot = Arc<Mutex<Option<(&'static str, Deferred)>>>;

/// How durable a job's commit is when its result is handed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Survives a power loss: data and meta pages flushed (LMDB's default commit). For what
    /// Raft acknowledges: log entries, votes, truncation and purge.
    Full,
    /// Survives a process crash; a power loss may undo it (and only what came after the last
    /// `Full` commit), never corrupt anything: data pages flushed, meta page written but not
    /// flushed (`MDB_NOMETASYNC`). For the state machine, which openraft re-applies from the
    /// durable log if it goes back.
    DataOnly,
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
        let (tx, mut rx) = mpsc::channel::<Job>(WRITER_QUEUE_JOBS_MAX);
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
                if init_tx.send(Ok(dbs)).is_err() {
                    return;
                }
                // Runs queued jobs until every sender is gone; queued jobs still run after the
                // last sender drops, so nothing handed to the writer is silently skipped.
                while let Some(job) = rx.blocking_recv() {
                    job(&env, &dbs, &slot);
                }
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

    /// Has `f` written in the next job's transaction, without a commit of its own. A later
    /// `defer` replaces a pending one (for records where only the newest value matters). If
    /// that transaction fails, the deferred write is lost with it.
    pub(crate) fn defer<F>(&self, op: &'static str, f: F)
    where
        F: FnOnce(&mut RwTxn<'_>, &Dbs) -> Result<(), StorageError> + Send + 'static,
    {
        *lock(&self.deferred) = Some((op, Box::new(f)));
    }

    /// Queues `f` to run inside one write transaction on the writer thread, committed at
    /// `durability`, and returns once it is queued (waiting only for room in the queue);
    /// `done` is then called on the writer thread with `f`'s result after the commit, or with
    /// the error that stopped it. Jobs run in the order they were queued.
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
        D: FnOnce(Result<R, StorageError>) + Send + 'static,
    {
        let job: Job = Box::new(move |env: &LmdbEnv, dbs: &Dbs, slot: &DeferredSlot| {
            let deferred = lock(slot).take();
            done(run_in_txn(env, dbs, op, durability, deferred, f));
        });
        let tx = self.tx.as_ref().ok_or(StorageError::WriterStopped)?;
        tx.send(job).await.map_err(|_| StorageError::WriterStopped)
    }

    /// Runs `f` inside one write transaction on the writer thread and commits it at
    /// `durability`; returns `f`'s result once the commit (and its flushes) is done. If `f`
    /// fails, the transaction is aborted and nothing of it is written.
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
        let job: Job = Box::new(move |env: &LmdbEnv, dbs: &Dbs, slot: &DeferredSlot| {
            let deferred = lock(slot).take();
            let res = run_in_txn(env, dbs, op, durability, deferred, f);
            // The submitter may have gone away (cancelled); the write stands regardless.
            let _ = reply_tx.send(res);
        });
        let tx = self.tx.as_ref().ok_or(StorageError::WriterStopped)?;
        tx.send(job)
            .await
            .map_err(|_| StorageError::WriterStopped)?;
        reply_rx.await.map_err(|_| StorageError::WriterStopped)?
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The slot holds an Option: a panic while it was held leaves it consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Open, run, commit: the whole life of a write transaction, on the current (writer) thread.
fn run_in_txn<R, F>(
    env: &LmdbEnv,
    dbs: &Dbs,
    op: &'static str,
    durability: Durability,
    deferred: Option<(&'static str, Deferred)>,
    f: F,
) -> Result<R, StorageError>
where
    F: FnOnce(&mut RwTxn<'_>, &Dbs) -> Result<R, StorageError>,
{
    let mut wtxn = env.write_txn().map_err(StorageError::lmdb(op))?;
    if let Some((deferred_op, write)) = deferred
        && let Err(e) = write(&mut wtxn, dbs)
    {
        // Advisory data: its loss must not fail the job it rode with.
        tracing::warn!(op = deferred_op, error = %e, "deferred write failed; dropped");
        wtxn.abort();
        wtxn = env.write_txn().map_err(StorageError::lmdb(op))?;
    }
    let out = f(&mut wtxn, dbs)?;
    // A failed commit is reported to the caller as is: never retried quietly, never reported
    // done (the caller hands it to openraft, which stops the node).
    commit_at(env, wtxn, durability).map_err(StorageError::lmdb(op))?;
    Ok(out)
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
