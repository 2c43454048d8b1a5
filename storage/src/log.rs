//! The Raft log and Raft's own durable state (vote, committed, last purged): [`LogStore`].
//!
//! Every write goes through the writer thread (one write transaction, one fsync). An `append`
//! returns once its transaction has committed, so its entries are readable by every reader
//! handle when it returns, and the `IOFlushed` callback fires then, after the commit.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
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
use crate::writer::Writer;

/// Most entries one `limited_get_log_entries` call returns, and the chunk size of
/// `entries_stream`, so that replication and re-apply never load an unbounded range at once.
pub const LOG_READ_ENTRIES_MAX: u64 = 4096;

/// The Raft log store. Cloning is cheap; all clones share one environment and writer.
#[derive(Clone)]
pub struct LogStore {
    writer: Arc<Writer>,
    env: LmdbEnv,
    dbs: Dbs,
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
        LogStore { writer, env, dbs }
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

    /// Reads the entries in `range` in one read transaction, refusing a hole inside it.
    fn read_range(
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
        self.read(|txn| {
            let last_purged_log_id = read_last_purged(txn, &self.dbs)?;
            let last_log_id = read_last_entry_id(txn, &self.dbs)?.or(last_purged_log_id);
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

    /// The saved committed log id.
    ///
    /// # Errors
    /// On an LMDB failure or a corrupt record.
    pub fn committed(&self) -> Result<Option<LogIdOf<TC>>, StorageError> {
        self.read(|txn| read_committed(txn, &self.dbs))
    }

    async fn do_append(&self, entries: Vec<EntryOf<TC>>) -> Result<(), StorageError> {
        let Some(first) = entries.first().map(|e| e.index()) else {
            return Ok(());
        };
        let mut batch: Vec<(u64, Vec<u8>)> = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let expected = first + i as u64;
            if e.index() != expected {
                return Err(StorageError::LogNotContiguous {
                    expected,
                    got: e.index(),
                });
            }
            batch.push((e.index(), encode_rec("log entry", e)?));
        }
        self.writer
            .write("log: append", move |wtxn, dbs| {
                // No hole, ever: openraft only looks at the last log id, so a gap would go
                // unnoticed until an entry in it is read back.
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
            })
            .await
    }
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

    async fn save_committed(&mut self, committed: Option<LogIdOf<TC>>) -> Result<(), io::Error> {
        let bytes = encode_rec("committed log id", &committed)?;
        self.writer
            .write("meta: save committed", move |wtxn, dbs| {
                put_meta(wtxn, dbs, meta_key::COMMITTED, &bytes)
            })
            .await?;
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
        match self.do_append(entries).await {
            Ok(()) => {
                metrics::histogram!(LOG_APPEND_SECONDS).record(started.elapsed().as_secs_f64());
                // Committed (fsynced) by the writer before `do_append` returned.
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, entries = n, "log append failed");
                callback.io_completed(Err(io::Error::other(e.to_string())));
                Err(e.into())
            }
        }
    }

    /// Keeps `last_log_id` and deletes every later entry; `None` deletes them all.
    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TC>>) -> Result<(), io::Error> {
        let from = match &last_log_id {
            Some(id) => Bound::Excluded(id.index),
            None => Bound::Unbounded,
        };
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
