//! The journal thread: writes each group of queued log changes as one flush, tells each one,
//! then hands the same change to the LMDB writer; recovers the segments into LMDB at open; and
//! checkpoints a full segment.

use std::path::Path;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use haseq_messages::TC;
use heed::RwTxn;
use openraft::type_config::alias::LogIdOf;
use tokio::sync::mpsc;

use super::record::{Op, encode_record};
use super::segment::{Journal, Recovered, WAL_SUBDIR};
use crate::env::Dbs;
use crate::error::StorageError;
use crate::writer::{Durability, Writer};

/// What the journal's records mean in LMDB, and what a checkpoint must store before it frees a
/// segment: the log's business (`log`), handed to the journal so that it knows its records and
/// files but not the log's rows.
pub(crate) trait JournalTarget: Clone + Send + 'static {
    /// Writes one recovered op to LMDB again. Each op only sets keys, so writing a suffix of
    /// the history again to any state LMDB may have reached gives the same state.
    fn replay(&self, wtxn: &mut RwTxn<'_>, dbs: &Dbs, op: &Op) -> Result<(), StorageError>;

    /// In a checkpoint's transaction: stores what the freed segment may hold the only durable
    /// copy of, and returns the ids stored.
    fn carry(&self, wtxn: &mut RwTxn<'_>, dbs: &Dbs) -> Result<Vec<LogIdOf<TC>>, StorageError>;

    /// A checkpoint's outcome; returns whether the freed segment may go.
    fn carried(&self, res: Result<Vec<LogIdOf<TC>>, StorageError>) -> bool;
}

/// Most requests the journal thread writes and flushes as one.
const GROUP_REQUESTS_MAX: usize = 256;
/// How many requests may wait for the journal thread before senders wait in turn.
const QUEUE_REQUESTS_MAX: usize = 1024;

/// Told once a request's record is durable: `Ok` with the writer (to queue the LMDB job that
/// carries the same change, in journal order) and the op back; or the error that stopped it.
pub(crate) type OnDurable = Box<dyn FnOnce(Result<(&Writer, Op), String>) + Send + 'static>;

/// Work for the journal thread.
pub(crate) struct Request {
    pub(crate) op: Op,
    pub(crate) on_durable: OnDurable,
}

/// Handle to the journal thread, which owns the [`Journal`]. Dropping it closes the queue and
/// joins the thread (requests already queued are still written).
pub(crate) struct JournalHandle {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl JournalHandle {
    /// Recovers the journal under `dir` into LMDB (one full commit through `writer`), starts
    /// a fresh segment, then the thread. Blocks until recovery is done (start-up only).
    /// `log` is the log's state outside LMDB: each checkpoint stores the block entries that
    /// wait there for their apply (see `log`).
    pub(crate) fn start(
        dir: &Path,
        writer: Arc<Writer>,
        log: impl JournalTarget,
    ) -> Result<JournalHandle, StorageError> {
        let (tx, rx) = mpsc::channel::<Request>(QUEUE_REQUESTS_MAX);
        let (init_tx, init_rx) = std::sync::mpsc::sync_channel::<Result<(), StorageError>>(1);
        let dir = dir.to_path_buf();
        let thread = thread::Builder::new()
            .name("haseq-storage-journal".into())
            .spawn(move || {
                let journal = match recover(&dir, &writer, &log) {
                    Ok(j) => j,
                    Err(e) => {
                        let _ = init_tx.send(Err(e));
                        return;
                    }
                };
                if init_tx.send(Ok(())).is_err() {
                    return;
                }
                run(journal, &writer, &log, rx);
                tracing::debug!(dir = %dir.display(), "log journal stopped");
            })
            .map_err(StorageError::io(
                "spawn journal thread",
                "haseq-storage-journal",
            ))?;
        match init_rx.recv() {
            Ok(res) => res?,
            Err(_) => return Err(StorageError::WriterStopped),
        }
        Ok(JournalHandle {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues `req`, waiting only for room in the queue. Requests are written in the order
    /// they were queued, and their LMDB jobs queued in that order too.
    pub(crate) async fn send(&self, req: Request) -> Result<(), StorageError> {
        let tx = self.tx.as_ref().ok_or(StorageError::WriterStopped)?;
        tx.send(req).await.map_err(|_| StorageError::WriterStopped)
    }
}

impl Drop for JournalHandle {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != thread::current().id()
            && thread.join().is_err()
        {
            tracing::error!("log journal thread panicked");
        }
    }
}

/// Applies every op the journal holds to LMDB in one full commit, then starts a fresh segment.
fn recover(
    dir: &Path,
    writer: &Writer,
    target: &impl JournalTarget,
) -> Result<Journal, StorageError> {
    let mut recovered = Recovered::read(dir)?;
    if !recovered.ops.is_empty() {
        let ops = std::mem::take(&mut recovered.ops);
        let n = ops.len();
        let target = target.clone();
        writer
            .write_blocking(
                "log: recover from journal",
                Durability::Full,
                move |wtxn, dbs| {
                    for op in &ops {
                        target.replay(wtxn, dbs, op)?;
                    }
                    Ok(())
                },
            )
            .map_err(|e| StorageError::JournalReplay {
                path: dir.join(WAL_SUBDIR),
                source: Box::new(e),
            })?;
        tracing::info!(dir = %dir.display(), records = n, "log journal applied to the store");
    }
    Journal::start(dir, recovered)
}

/// The journal thread's loop: each turn writes every queued request as one flush, then tells
/// each one. After a failed write nothing more is written: every later request hears the error.
fn run(
    mut journal: Journal,
    writer: &Writer,
    log: &impl JournalTarget,
    mut rx: mpsc::Receiver<Request>,
) {
    let mut failed: Option<String> = None;
    let mut buf: Vec<u8> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP_REQUESTS_MAX {
            match rx.try_recv() {
                Ok(req) => group.push(req),
                Err(_) => break,
            }
        }
        if let Some(e) = &failed {
            for req in group {
                (req.on_durable)(Err(e.clone()));
            }
            continue;
        }
        buf.clear();
        let mut written = Vec::with_capacity(group.len());
        for req in group {
            match encode_record(&req.op, journal.seq, &mut buf) {
                Ok(()) => written.push(req),
                Err(e) => (req.on_durable)(Err(e.to_string())),
            }
        }
        if let Err(e) = journal.append(&buf) {
            tracing::error!(error = %e, "log journal write failed; the log takes no more writes");
            let e = e.to_string();
            for req in written {
                (req.on_durable)(Err(e.clone()));
            }
            failed = Some(e);
            continue;
        }
        for req in written {
            (req.on_durable)(Ok((writer, req.op)));
        }
        if journal.is_full()
            && let Err(e) = checkpoint(&mut journal, writer, log)
        {
            tracing::error!(error = %e, "log journal checkpoint failed; the log takes no more writes");
            failed = Some(e.to_string());
        }
        // Keep the buffer's memory for the next group, unless one large batch grew it.
        if buf.capacity() > BUF_KEEP_BYTES {
            buf = Vec::new();
        }
    }
}

/// A buffer larger than this is freed after its group instead of kept.
const BUF_KEEP_BYTES: usize = 4 << 20;

/// Starts the next segment at once, and queues a full LMDB commit behind every job queued so
/// far: once it is done, everything the old segment holds is durable in LMDB, and the old
/// segment is recycled as the spare (or deleted, see [`Journal::retire`]). Appends never wait
/// for either: that step runs on a thread of its own, since unlinking a segment (64 MiB then)
/// is file-system work that took 40-50 ms under load (measured: one commit that slow right
/// after each checkpoint while the journal thread did it).
///
/// The old segment may hold the only durable copy of block entries that wait for their apply
/// (the log carries those into LMDB with the apply, see `log`): the checkpoint's transaction
/// stores them in full first ([`JournalTarget::carry`]).
fn checkpoint(
    journal: &mut Journal,
    writer: &Writer,
    log: &impl JournalTarget,
) -> Result<(), StorageError> {
    let old = journal.start_next()?;
    let path = journal.path_of(old);
    let dir = journal.dir.clone();
    let (carry, carried) = (log.clone(), log.clone());
    writer.submit_blocking(
        "log: journal checkpoint",
        Durability::Full,
        move |wtxn, dbs| carry.carry(wtxn, dbs),
        move |res| match res {
            Ok(ids) => {
                if !carried.carried(Ok(ids)) {
                    tracing::error!(segment = old, "the log has stopped: keeping the checkpointed journal segment for the next open's replay");
                    return;
                }
                let remove = move || {
                    // A segment left behind costs disk and replay time on the next open,
                    // nothing else (its ops are applied again, harmlessly).
                    if let Err(e) = Journal::retire(&dir, &path) {
                        tracing::warn!(path = %path.display(), error = %e, "could not recycle or remove a checkpointed journal segment");
                    }
                };
                let spawned = thread::Builder::new()
                    .name("haseq-journal-rm".into())
                    .spawn(remove);
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "no thread to remove a checkpointed journal segment; it stays until the next open");
                }
            }
            // The segment stays, and is replayed on the next open; the log takes no more
            // writes (whichever job failed, this one or one before it).
            Err(e) => {
                tracing::error!(error = %e, segment = old, "journal checkpoint commit failed");
                let _ = carried.carried(Err(e));
            }
        },
    )
}
