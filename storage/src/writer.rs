//! The writer thread: the only place a write transaction is opened, written and committed.
//!
//! Why a thread: LMDB's `write_txn()` waits on a mutex while another write transaction is open,
//! and `commit()` fsyncs; either can block for milliseconds. On a tokio worker that stalls every
//! task scheduled there, heartbeats included (a spurious election). LMDB also binds a
//! transaction to the thread that opened it, while heed's `RwTxn` is `Send`, so the compiler
//! would not stop a transaction from crossing an `.await`. So async code hands the writer a
//! closure and awaits a oneshot; the closure runs between `write_txn()` and `commit()` on this
//! thread, and its result is sent back only after the commit has returned (i.e. is durable).

use std::thread::{self, JoinHandle};

use heed::RwTxn;
use tokio::sync::{mpsc, oneshot};

use crate::env::{self, Dbs, LmdbEnv};
use crate::error::StorageError;

/// How many write jobs may wait for the writer before submitters wait in turn.
const WRITER_QUEUE_JOBS_MAX: usize = 1024;

/// A write job: open, write, commit, reply. Built by [`Writer::write`].
type Job = Box<dyn FnOnce(&LmdbEnv, &Dbs) + Send + 'static>;

/// Handle to the writer thread. Dropping the last handle closes the queue and joins the
/// thread, so the environment is closed once every reader is gone too.
pub(crate) struct Writer {
    /// `None` only while dropping.
    tx: Option<mpsc::Sender<Job>>,
    /// `None` only while dropping.
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread on `env`, which first creates the databases. Blocks the calling
    /// thread until that is done (start-up only).
    pub(crate) fn start(env: LmdbEnv) -> Result<(Writer, Dbs), StorageError> {
        let (tx, mut rx) = mpsc::channel::<Job>(WRITER_QUEUE_JOBS_MAX);
        let (init_tx, init_rx) = std::sync::mpsc::sync_channel::<Result<Dbs, StorageError>>(1);
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
                    job(&env, &dbs);
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
            },
            dbs,
        ))
    }

    /// Runs `f` inside one write transaction on the writer thread and commits it; returns `f`'s
    /// result once the commit (and its fsync) is done. If `f` fails, the transaction is aborted
    /// and nothing of it is written.
    ///
    /// Cancel-safety: if the returned future is dropped after the job was queued, the job still
    /// runs and commits; only its result is lost.
    pub(crate) async fn write<R, F>(&self, op: &'static str, f: F) -> Result<R, StorageError>
    where
        F: FnOnce(&mut RwTxn<'_>, &Dbs) -> Result<R, StorageError> + Send + 'static,
        R: Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        let job: Job = Box::new(move |env: &LmdbEnv, dbs: &Dbs| {
            let res = run_in_txn(env, dbs, op, f);
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

/// Open, run, commit: the whole life of a write transaction, on the current (writer) thread.
fn run_in_txn<R, F>(env: &LmdbEnv, dbs: &Dbs, op: &'static str, f: F) -> Result<R, StorageError>
where
    F: FnOnce(&mut RwTxn<'_>, &Dbs) -> Result<R, StorageError>,
{
    let mut wtxn = env.write_txn().map_err(StorageError::lmdb(op))?;
    let out = f(&mut wtxn, dbs)?;
    // A failed commit is reported to the caller as is: never retried quietly, never reported
    // done (the caller hands it to openraft, which stops the node).
    wtxn.commit().map_err(StorageError::lmdb(op))?;
    Ok(out)
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
