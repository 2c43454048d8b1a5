//! The Raft log and Raft's own durable state (vote, committed, last purged): [`LogStore`].
//!
//! Every write goes through the writer thread, one write transaction each. An `append` queues
//! its transaction and returns: its entries are readable at once by every reader handle (from
//! the in-memory tail until their transaction has committed), and the `IOFlushed` callback
//! fires from the writer once the transaction is durable (a full LMDB commit). The leader thus
//! replicates an entry while its own flush is under way, instead of after it.

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
use crate::writer::{Durability, Writer};

/// Most entries one `limited_get_log_entries` call returns, and the chunk size of
/// `entries_stream`, so that replication and re-apply never load an unbounded range at once.
pub const LOG_READ_ENTRIES_MAX: u64 = 4096;

/// The Raft log store. Cloning is cheap; all clones share one environment and writer.
#[derive(Clone)]
pub struct LogStore {
    writer: Arc<Writer>,
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

impl LogStore {
    pub(crate) fn new(writer: Arc<Writer>, env: LmdbEnv, dbs: Dbs) -> Self {
        LogStore {
            writer,
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

    /// Appends `entries`: they are readable when this returns (from the tail until their
    /// transaction has committed), and `durable` is called from the writer thread once that
    /// transaction is durable, or with the error that stopped it.
    async fn do_append(
        &self,
        entries: Vec<EntryOf<TC>>,
        durable: impl FnOnce(Result<(), String>) + Send + 'static,
    ) -> Result<(), StorageError> {
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
        let mut batch: Vec<(u64, Vec<u8>)> = Vec::with_capacity(entries.len());
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
                Ok(bytes) => batch.push((e.index(), bytes)),
                Err(err) => return refuse(err, durable),
            }
        }
        let ids: Vec<LogIdOf<TC>> = entries.iter().map(|e| e.log_id()).collect();
        lock(&self.tail).extend(entries.into_iter().map(|e| (e.index(), e)));
        let tail = self.tail.clone();
        let done = move |res: Result<(), StorageError>| {
            // Committed (or refused): the tail need not hold them any longer. A reader takes
            // the tail before its read transaction, so it finds them in one or the other.
            let mut t = lock(&tail);
            for id in &ids {
                if t.get(&id.index).is_some_and(|e| e.log_id() == *id) {
                    t.remove(&id.index);
                }
            }
            drop(t);
            durable(res.map_err(|e| e.to_string()));
        };
        let job = move |wtxn: &mut RwTxn<'_>, dbs: &Dbs| {
            if let Some(expected) = next_index(wtxn, dbs)?
                && first != expected
            {
                return Err(StorageError::LogNotContiguous {
                    expected,
                    got: first,
                });
            }
            for (index, bytes) in &batch {
                dbs.log
                    .put(wtxn, index, bytes)
                    .map_err(StorageError::lmdb("log: put entry"))?;
            }
            Ok(())
        };
        self.writer
            .submit("log: append", Durability::Full, job, done)
            .await
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

    /// Not a transaction of its own: the pointer rides in the next write transaction (the
    /// apply of these very entries follows at once), so committing costs no extra flush.
    /// openraft treats the saved pointer as a hint (it re-applies up to it on start-up and
    /// learns the rest from the leader); what reached the disk only ever grows, since writes
    /// commit in order.
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
        let from = match &last_log_id {
            Some(id) => Bound::Excluded(id.index),
            None => Bound::Unbounded,
        };
        // Entries still in the tail go at once; their queued transactions commit before this
        // one, which deletes them from disk.
        lock(&self.tail).retain(|i, _| last_log_id.as_ref().is_some_and(|id| *i <= id.index));
        self.writer
            .write("log: truncate", move |wtxn, dbs| {
                let range = (from, Bound::Unbounded);
                dbs.log
                    .delete_range(wtxn, &range)
                    .map_err(StorageError::lmdb("log: delete range"))?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Deletes entries up to and including `log_id` and records it as the last purged id, in
    /// one transaction. Purging never goes backwards.
    async fn purge(&mut self, log_id: LogIdOf<TC>) -> Result<(), io::Error> {
        let bytes = encode_rec("last purged log id", &log_id)?;
        self.writer
            .write("log: purge", move |wtxn, dbs| {
                let current = read_last_purged(wtxn, dbs)?;
                if current.as_ref().is_some_and(|c| *c >= log_id) {
                    return Ok(());
                }
                let range = ..=log_id.index;
                dbs.log
                    .delete_range(wtxn, &range)
                    .map_err(StorageError::lmdb("log: delete range"))?;
                put_meta(wtxn, dbs, meta_key::LAST_PURGED, &bytes)
            })
            .await?;
        Ok(())
    }
}
