//! The Raft log and Raft's own durable state (vote, committed, last purged): [`LogStore`].
//!
//! Every log change (append, truncate, purge) is first made durable in the journal (`wal`: one
//! record, one `fdatasync`), then carried into LMDB by a data-only job of the writer thread. An
//! `append` queues its record and returns: its entries are readable at once by every reader
//! handle (from the in-memory tail until their LMDB transaction has committed), and the
//! `IOFlushed` callback fires from the journal thread once the record is durable. The leader
//! thus replicates an entry while its own flush is under way, instead of after it. The vote is
//! not journalled: it is rare, and a full LMDB commit of its own.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::Stream;
use haseq_messages::TC;
use heed::{RoTxn, RwTxn};
use openraft::OptionalSend;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};

use crate::blocks::BlockBackfill;
use crate::env::{self, Dbs, LmdbEnv};
use crate::error::StorageError;
use crate::metrics::LOG_APPEND_SECONDS;
use crate::records::{decode_rec, encode_rec, meta_key};
use crate::wal::{ByteBuf, JournalHandle, Op, Request};
use crate::writer::{Durability, Writer};

/// Most entries one `limited_get_log_entries` call returns, and the chunk size of
/// `entries_stream`, so that replication and re-apply never load an unbounded range at once.
pub const LOG_READ_ENTRIES_MAX: u64 = 4096;

/// The Raft log store. Cloning is cheap; all clones share one environment and writer.
#[derive(Clone)]
pub struct LogStore {
    writer: Arc<Writer>,
    journal: Arc<JournalHandle>,
    /// Set when a journalled change failed to reach LMDB: the log takes no more writes.
    failed: Arc<Mutex<Option<String>>>,
    env: LmdbEnv,
    dbs: Dbs,
    /// The newest committed log id openraft saved in this process (`None`: none saved yet).
    /// It reaches the disk with the next write transaction (see `save_committed`).
    committed: Arc<Mutex<Option<Option<LogIdOf<TC>>>>>,
    /// The tail: entries appended whose transaction has not committed yet, by index. Readers
    /// see them at once (openraft replicates an entry as soon as `append` returns); each
    /// leaves the tail once its transaction has committed.
    tail: Arc<Mutex<BTreeMap<u64, EntryOf<TC>>>>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.env.path())
            .finish()
    }
}

/// Reads the newest purged log id.
pub(crate) fn read_last_purged(
    txn: &RoTxn<'_>,
    dbs: &Dbs,
) -> Result<Option<LogIdOf<TC>>, StorageError> {
    env::get_rec(txn, dbs.meta, "last purged log id", meta_key::LAST_PURGED)
}

/// Reads the newest entry's log id, checking it is stored under its own index.
pub(crate) fn read_last_entry_id(
    txn: &RoTxn<'_>,
    dbs: &Dbs,
) -> Result<Option<LogIdOf<TC>>, StorageError> {
    let Some((key, bytes)) = dbs
        .log
        .last(txn)
        .map_err(StorageError::lmdb("log: read last entry"))?
    else {
        return Ok(None);
    };
    let entry: EntryOf<TC> = decode_rec("log entry", key, bytes)?;
    if entry.index() != key {
        return Err(StorageError::LogKeyMismatch {
            key,
            got: entry.index(),
        });
    }
    Ok(Some(entry.log_id()))
}

/// Reads the saved committed log id (stored as an `Option`: openraft may save `None`).
pub(crate) fn read_committed(
    txn: &RoTxn<'_>,
    dbs: &Dbs,
) -> Result<Option<LogIdOf<TC>>, StorageError> {
    Ok(
        env::get_rec::<Option<LogIdOf<TC>>>(
            txn,
            dbs.meta,
            "committed log id",
            meta_key::COMMITTED,
        )?
        .flatten(),
    )
}

/// Reads the saved vote.
pub(crate) fn read_vote(txn: &RoTxn<'_>, dbs: &Dbs) -> Result<Option<VoteOf<TC>>, StorageError> {
    env::get_rec(txn, dbs.meta, "vote", meta_key::VOTE)
}

/// The index the next appended entry must have, `None` when the log has never held anything
/// (the first entry may then have any index; openraft starts at 0, a snapshot elsewhere).
fn next_index(txn: &RoTxn<'_>, dbs: &Dbs) -> Result<Option<u64>, StorageError> {
    if let Some((key, _)) = dbs
        .log
        .last(txn)
        .map_err(StorageError::lmdb("log: read last key"))?
    {
        return Ok(Some(key + 1));
    }
    Ok(read_last_purged(txn, dbs)?.map(|p| p.index + 1))
}

fn put_meta(
    wtxn: &mut RwTxn<'_>,
    dbs: &Dbs,
    key: &'static str,
    bytes: &[u8],
) -> Result<(), StorageError> {
    dbs.meta
        .put(wtxn, key, bytes)
        .map_err(StorageError::lmdb("meta: put"))
}

/// Applies one journalled change to LMDB. Also how the journal is recovered: each op only sets
/// keys (puts these entries, deletes above or below an index, raises a pointer), so applying
/// ops again, in order, to any state they already reached gives the same state.
pub(crate) fn apply_op(wtxn: &mut RwTxn<'_>, dbs: &Dbs, op: &Op) -> Result<(), StorageError> {
    match op {
        Op::Append { entries, committed } => {
            for (index, bytes) in entries {
                dbs.log
                    .put(wtxn, index, &bytes.0)
                    .map_err(StorageError::lmdb("log: put entry"))?;
            }
            if let Some(bytes) = committed {
                let new: Option<LogIdOf<TC>> =
                    decode_rec("committed log id", meta_key::COMMITTED, &bytes.0)?;
                if new > read_committed(wtxn, dbs)? {
                    put_meta(wtxn, dbs, meta_key::COMMITTED, &bytes.0)?;
                }
            }
        }
        Op::Truncate { after } => {
            let from = match after {
                Some(a) => Bound::Excluded(*a),
                None => Bound::Unbounded,
            };
            dbs.log
                .delete_range(wtxn, &(from, Bound::Unbounded))
                .map_err(StorageError::lmdb("log: delete range"))?;
        }
        Op::Purge { upto, log_id } => {
            dbs.log
                .delete_range(wtxn, &(..=*upto))
                .map_err(StorageError::lmdb("log: delete range"))?;
            let new: LogIdOf<TC> =
                decode_rec("last purged log id", meta_key::LAST_PURGED, &log_id.0)?;
            if read_last_purged(wtxn, dbs)?.is_none_or(|current| current < new) {
                put_meta(wtxn, dbs, meta_key::LAST_PURGED, &log_id.0)?;
            }
        }
    }
    Ok(())
}

impl LogStore {
    pub(crate) fn new(
        writer: Arc<Writer>,
        journal: Arc<JournalHandle>,
        env: LmdbEnv,
        dbs: Dbs,
    ) -> Self {
        LogStore {
            writer,
            journal,
            failed: Arc::default(),
            env,
            dbs,
            committed: Arc::default(),
            tail: Arc::default(),
        }
    }

    /// A backfill handle sharing this store's writer.
    pub(crate) fn backfill(&self) -> BlockBackfill {
        BlockBackfill::new(self.writer.clone())
    }

    fn read<R>(
        &self,
        f: impl FnOnce(&RoTxn<'_>) -> Result<R, StorageError>,
    ) -> Result<R, StorageError> {
        let rtxn = self
            .env
            .read_txn()
            .map_err(StorageError::lmdb("log: begin read"))?;
        f(&rtxn)
    }

    /// Reads the entries in `range`: the tail's, then the rest from one read transaction;
    /// refuses a hole inside the range.
    fn read_range(
        &self,
        range: (Bound<u64>, Bound<u64>),
    ) -> Result<Vec<EntryOf<TC>>, StorageError> {
        // The tail first: an entry leaves it only after its transaction committed, so one
        // missing from this copy is in the read transaction opened after it.
        let tail: Vec<EntryOf<TC>> = lock(&self.tail)
            .range(range)
            .map(|(_, e)| e.clone())
            .collect();
        let mut out = self.read_stored(range)?;
        for e in tail {
            match out.last() {
                Some(last) if last.index() >= e.index() => {
                    // Committed meanwhile: the stored copy is the same entry.
                    if let Ok(pos) = out.binary_search_by_key(&e.index(), |x| x.index()) {
                        out[pos] = e;
                    }
                }
                Some(last) if last.index() + 1 != e.index() => {
                    return Err(StorageError::LogHole {
                        expected: last.index() + 1,
                        got: e.index(),
                    });
                }
                _ => out.push(e),
            }
        }
        Ok(out)
    }

    /// Reads the stored entries in `range` in one read transaction, refusing a hole inside it.
    fn read_stored(
        &self,
        range: (Bound<u64>, Bound<u64>),
    ) -> Result<Vec<EntryOf<TC>>, StorageError> {
        self.read(|txn| {
            let iter = self
                .dbs
                .log
                .range(txn, &range)
                .map_err(StorageError::lmdb("log: range"))?;
            let mut out: Vec<EntryOf<TC>> = Vec::new();
            for item in iter {
                let (key, bytes) = item.map_err(StorageError::lmdb("log: iterate"))?;
                if let Some(prev) = out.last()
                    && key != prev.index() + 1
                {
                    return Err(StorageError::LogHole {
                        expected: prev.index() + 1,
                        got: key,
                    });
                }
                let entry: EntryOf<TC> = decode_rec("log entry", key, bytes)?;
                if entry.index() != key {
                    return Err(StorageError::LogKeyMismatch {
                        key,
                        got: entry.index(),
                    });
                }
                out.push(entry);
            }
            Ok(out)
        })
    }

    /// The log's state: newest entry (or the purged id when empty) and the newest purged id.
    ///
    /// # Errors
    /// On an LMDB failure or a corrupt record.
    pub fn log_state(&self) -> Result<LogState<TC>, StorageError> {
        let tail_last = lock(&self.tail).values().next_back().map(|e| e.log_id());
        self.read(|txn| {
            let last_purged_log_id = read_last_purged(txn, &self.dbs)?;
            let stored_last = read_last_entry_id(txn, &self.dbs)?;
            let last_log_id = tail_last.or(stored_last).or(last_purged_log_id);
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        })
    }

    /// All entries in `range`, in one read transaction (no hole inside, by construction).
    ///
    /// # Errors
    /// On an LMDB failure, a corrupt record, or a hole inside the range.
    pub fn entries<RB: RangeBounds<u64>>(
        &self,
        range: RB,
    ) -> Result<Vec<EntryOf<TC>>, StorageError> {
        self.read_range((range.start_bound().cloned(), range.end_bound().cloned()))
    }

    /// The saved vote.
    ///
    /// # Errors
    /// On an LMDB failure or a corrupt record.
    pub fn vote(&self) -> Result<Option<VoteOf<TC>>, StorageError> {
        self.read(|txn| read_vote(txn, &self.dbs))
    }

    /// The saved committed log id: the newest one saved in this process, else the one on disk.
    ///
    /// # Errors
    /// On an LMDB failure or a corrupt record.
    pub fn committed(&self) -> Result<Option<LogIdOf<TC>>, StorageError> {
        let saved = *lock(&self.committed);
        match saved {
            Some(c) => Ok(c),
            None => self.read(|txn| read_committed(txn, &self.dbs)),
        }
    }

    /// Appends `entries`: they are readable when this returns (from the tail until their LMDB
    /// transaction has committed), and `durable` is called from the journal thread once their
    /// journal record is durable, or with the error that stopped it.
    async fn do_append(
        &self,
        entries: Vec<EntryOf<TC>>,
        durable: impl FnOnce(Result<(), String>) + Send + 'static,
    ) -> Result<(), StorageError> {
        if let Err(e) = self.check_failed() {
            durable(Err(e.to_string()));
            return Err(e);
        }
        let Some(first) = entries.first().map(|e| e.index()) else {
            durable(Ok(()));
            return Ok(());
        };
        let refuse = |e: StorageError, durable: Box<dyn FnOnce(Result<(), String>) + Send>| {
            durable(Err(e.to_string()));
            Err(e)
        };
        let durable: Box<dyn FnOnce(Result<(), String>) + Send> = Box::new(durable);
        // No hole, ever: openraft only looks at the last log id, so a gap would go unnoticed
        // until an entry in it is read back. Checked here against the tail (so the caller
        // hears of it at once) and again in the transaction against what is on disk.
        let tail_next = lock(&self.tail).keys().next_back().map(|i| i + 1);
        let expected = match tail_next {
            Some(n) => Some(n),
            None => self.read(|txn| next_index(txn, &self.dbs))?,
        };
        if let Some(expected) = expected
            && first != expected
        {
            return refuse(
                StorageError::LogNotContiguous {
                    expected,
                    got: first,
                },
                durable,
            );
        }
        let mut batch: Vec<(u64, ByteBuf)> = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let expected = first + i as u64;
            if e.index() != expected {
                return refuse(
                    StorageError::LogNotContiguous {
                        expected,
                        got: e.index(),
                    },
                    durable,
                );
            }
            match encode_rec("log entry", e) {
                Ok(bytes) => batch.push((e.index(), ByteBuf(bytes))),
                Err(err) => return refuse(err, durable),
            }
        }
        // The committed pointer saved so far rides with the entries (see `save_committed`).
        let committed = match *lock(&self.committed) {
            Some(c) => match encode_rec("committed log id", &c) {
                Ok(bytes) => Some(ByteBuf(bytes)),
                Err(err) => return refuse(err, durable),
            },
            None => None,
        };
        let ids: Vec<LogIdOf<TC>> = entries.iter().map(|e| e.log_id()).collect();
        lock(&self.tail).extend(entries.into_iter().map(|e| (e.index(), e)));
        let tail = self.tail.clone();
        let failed = self.failed.clone();
        let in_lmdb = move |res: Result<(), StorageError>| {
            if let Err(e) = res {
                // Durable in the journal all the same: the entries stay readable from the
                // tail, and the log takes no more writes (the journal puts them into LMDB
                // on the next open, once LMDB can take them).
                tracing::error!(error = %e, "journalled log append failed to reach LMDB");
                lock(&failed).get_or_insert(e.to_string());
                return;
            }
            // In LMDB: the tail need not hold them any longer. A reader takes the tail before
            // its read transaction, so it finds them in one or the other.
            let mut t = lock(&tail);
            for id in &ids {
                if t.get(&id.index).is_some_and(|e| e.log_id() == *id) {
                    t.remove(&id.index);
                }
            }
        };
        let on_durable: crate::wal::OnDurable = Box::new(move |res| match res {
            Ok((writer, op)) => {
                // Durable in the journal: acknowledge, and carry it into LMDB.
                durable(Ok(()));
                let job = move |wtxn: &mut RwTxn<'_>, dbs: &Dbs| {
                    if let Some(expected) = next_index(wtxn, dbs)?
                        && first != expected
                    {
                        return Err(StorageError::LogNotContiguous {
                            expected,
                            got: first,
                        });
                    }
                    apply_op(wtxn, dbs, &op)
                };
                // A writer that is gone means the store is closing; nothing more to carry.
                if let Err(e) =
                    writer.submit_blocking("log: append", Durability::DataOnly, job, in_lmdb)
                {
                    tracing::warn!(error = %e, "journalled log append not carried into LMDB");
                }
            }
            Err(e) => {
                durable(Err(e));
            }
        });
        self.journal
            .send(Request {
                op: Op::Append {
                    entries: batch,
                    committed,
                },
                on_durable,
            })
            .await
    }

    /// Journals `op` and waits until LMDB holds it too (so that no reader sees what it removed).
    async fn change(&self, what: &'static str, op: Op) -> Result<(), StorageError> {
        self.check_failed()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), StorageError>>();
        let on_durable: crate::wal::OnDurable = Box::new(move |res| match res {
            Ok((writer, op)) => {
                // Full: the caller waits, so it ends the writer's linger (and it is rare). A
                // job that cannot be queued is dropped with its completion, and the caller
                // hears `WriterStopped` from the closed reply channel.
                let _ = writer.submit_blocking(
                    what,
                    Durability::Full,
                    move |wtxn, dbs| apply_op(wtxn, dbs, &op),
                    move |res| {
                        let _ = tx.send(res);
                    },
                );
            }
            Err(detail) => {
                let _ = tx.send(Err(StorageError::Commit { op: what, detail }));
            }
        });
        self.journal.send(Request { op, on_durable }).await?;
        rx.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Refuses a write once a journalled change failed to reach LMDB.
    fn check_failed(&self) -> Result<(), StorageError> {
        match &*lock(&self.failed) {
            Some(detail) => Err(StorageError::Commit {
                op: "log",
                detail: format!("an earlier journalled log change failed to reach LMDB: {detail}"),
            }),
            None => Ok(()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data (a map, a pointer): a panic while it was held leaves it consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl RaftLogReader<TC> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TC>>, io::Error> {
        Ok(self.entries(range)?)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TC>>, io::Error> {
        Ok(self.vote()?)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<EntryOf<TC>>, io::Error> {
        let end = end.min(start.saturating_add(LOG_READ_ENTRIES_MAX));
        Ok(self.entries(start..end)?)
    }

    /// Streams the range in chunks of [`LOG_READ_ENTRIES_MAX`], so re-applying a long log after
    /// a restart never holds it all in memory. Used for committed entries, which do not change.
    async fn entries_stream<RB>(
        &mut self,
        range: RB,
    ) -> impl Stream<Item = Result<EntryOf<TC>, io::Error>> + OptionalSend
    where
        RB: RangeBounds<u64> + Clone + Debug + OptionalSend,
    {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => e.saturating_add(1),
            Bound::Excluded(e) => *e,
            Bound::Unbounded => u64::MAX,
        };
        let state = (
            self.clone(),
            start,
            end,
            VecDeque::<EntryOf<TC>>::new(),
            false,
        );
        futures::stream::unfold(state, |(store, next, end, mut buf, done)| async move {
            if let Some(e) = buf.pop_front() {
                return Some((Ok(e), (store, next, end, buf, done)));
            }
            if done || next >= end {
                return None;
            }
            let chunk_end = end.min(next.saturating_add(LOG_READ_ENTRIES_MAX));
            match store.entries(next..chunk_end) {
                Err(e) => Some((Err(io::Error::from(e)), (store, next, end, buf, true))),
                Ok(entries) => {
                    // A short chunk means the log ends here.
                    let short = (entries.len() as u64) < chunk_end - next;
                    let next = entries.last().map_or(chunk_end, |e| e.index() + 1);
                    buf.extend(entries);
                    let e = buf.pop_front()?;
                    Some((Ok(e), (store, next, end, buf, short)))
                }
            }
        })
    }
}

impl RaftLogStorage<TC> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TC>, io::Error> {
        Ok(self.log_state()?)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// Durable before it returns: a vote must never be forgotten after it was granted.
    async fn save_vote(&mut self, vote: &VoteOf<TC>) -> Result<(), io::Error> {
        let bytes = encode_rec("vote", vote)?;
        self.writer
            .write("meta: save vote", move |wtxn, dbs| {
                put_meta(wtxn, dbs, meta_key::VOTE, &bytes)
            })
            .await?;
        Ok(())
    }

    /// Not a write of its own: the pointer rides in the next LMDB transaction (the apply of
    /// these very entries follows at once) and in the next journalled append, so committing
    /// costs no extra flush. openraft treats the saved pointer as a hint (it re-applies up to
    /// it on start-up and learns the rest from the leader); what reached the disk only ever
    /// grows, since writes commit in order and a journal replay keeps the larger value.
    async fn save_committed(&mut self, committed: Option<LogIdOf<TC>>) -> Result<(), io::Error> {
        let bytes = encode_rec("committed log id", &committed)?;
        *lock(&self.committed) = Some(committed);
        self.writer.defer("meta: save committed", move |wtxn, dbs| {
            put_meta(wtxn, dbs, meta_key::COMMITTED, &bytes)
        });
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TC>>, io::Error> {
        Ok(self.committed()?)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TC>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TC>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = Instant::now();
        let entries: Vec<EntryOf<TC>> = entries.into_iter().collect();
        let n = entries.len();
        // Returns once the entries are readable; `callback` fires from the writer thread once
        // they are durable (or with the error that stops them being so).
        let durable = move |res: Result<(), String>| match res {
            Ok(()) => {
                metrics::histogram!(LOG_APPEND_SECONDS).record(started.elapsed().as_secs_f64());
                callback.io_completed(Ok(()));
            }
            Err(e) => {
                tracing::error!(error = %e, entries = n, "log append failed");
                callback.io_completed(Err(io::Error::other(e)));
            }
        };
        Ok(self.do_append(entries, durable).await?)
    }

    /// Keeps `last_log_id` and deletes every later entry; `None` deletes them all.
    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TC>>) -> Result<(), io::Error> {
        // Entries still in the tail go at once; their queued LMDB jobs run before this one,
        // which deletes them.
        lock(&self.tail).retain(|i, _| last_log_id.as_ref().is_some_and(|id| *i <= id.index));
        self.change(
            "log: truncate",
            Op::Truncate {
                after: last_log_id.map(|id| id.index),
            },
        )
        .await?;
        Ok(())
    }

    /// Deletes entries up to and including `log_id` and records it as the last purged id, in
    /// one transaction. Purging never goes backwards.
    async fn purge(&mut self, log_id: LogIdOf<TC>) -> Result<(), io::Error> {
        let bytes = encode_rec("last purged log id", &log_id)?;
        self.change(
            "log: purge",
            Op::Purge {
                upto: log_id.index,
                log_id: ByteBuf(bytes),
            },
        )
        .await?;
        Ok(())
    }
}
