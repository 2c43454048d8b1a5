//! [`LogStore`]: the Raft log store, and openraft's log traits over it.

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

use super::rows::{
    apply_append, apply_op, block_of, entry_of_row, next_index, put_meta, read_committed,
    read_last_entry_id, read_last_purged, read_vote,
};
use super::tail::{LogShared, lock};
use crate::blocks::BlockBackfill;
use crate::env::Dbs;
use crate::error::StorageError;
use crate::lmdb::{LmdbEnv, decode_rec, encode_rec};
use crate::metrics::LOG_APPEND_SECONDS;
use crate::records::meta_key;
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
    /// The tail, and whether the log has stopped taking writes.
    shared: LogShared,
    env: LmdbEnv,
    dbs: Dbs,
    /// The newest committed log id openraft saved in this process (`None`: none saved yet).
    /// It reaches the disk with the next write transaction (see `save_committed`).
    committed: Arc<Mutex<Option<Option<LogIdOf<TC>>>>>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.env.path())
            .finish()
    }
}

impl LogStore {
    pub(crate) fn new(
        writer: Arc<Writer>,
        journal: Arc<JournalHandle>,
        env: LmdbEnv,
        dbs: Dbs,
        shared: LogShared,
    ) -> Self {
        LogStore {
            writer,
            journal,
            shared,
            env,
            dbs,
            committed: Arc::default(),
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
        // The tail first: an entry leaves it only after a transaction holding it committed, so
        // one missing from this copy is in the read transaction opened after it. The tail may
        // hold entries below stored ones (block entries waiting for their apply), so the two
        // are merged by index, the tail's copy first (the same entry).
        let mut merged: BTreeMap<u64, EntryOf<TC>> = lock(&self.shared.tail)
            .range(range)
            .map(|(i, e)| (*i, e.clone()))
            .collect();
        for e in self.read_stored(range, &merged)? {
            merged.entry(e.index()).or_insert(e);
        }
        let mut out: Vec<EntryOf<TC>> = Vec::with_capacity(merged.len());
        for (index, e) in merged {
            if let Some(prev) = out.last()
                && index != prev.index() + 1
            {
                return Err(StorageError::LogHole {
                    expected: prev.index() + 1,
                    got: index,
                });
            }
            out.push(e);
        }
        Ok(out)
    }

    /// Reads the stored entries in `range` in one read transaction, both the full rows and the
    /// references to applied blocks (rebuilt from the block store), skipping those `have`
    /// holds already. Not checked for holes: the caller merges them with the tail first.
    fn read_stored(
        &self,
        range: (Bound<u64>, Bound<u64>),
        have: &BTreeMap<u64, EntryOf<TC>>,
    ) -> Result<Vec<EntryOf<TC>>, StorageError> {
        self.read(|txn| {
            let mut out: Vec<EntryOf<TC>> = Vec::new();
            let full = self
                .dbs
                .log
                .range(txn, &range)
                .map_err(StorageError::lmdb("log: range"))?;
            for item in full {
                let (key, bytes) = item.map_err(StorageError::lmdb("log: iterate"))?;
                if have.contains_key(&key) {
                    continue;
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
            let refs = self
                .dbs
                .log_blocks
                .range(txn, &range)
                .map_err(StorageError::lmdb("log: range of block entries"))?;
            for item in refs {
                let (key, bytes) =
                    item.map_err(StorageError::lmdb("log: iterate block entries"))?;
                if !have.contains_key(&key) {
                    out.push(entry_of_row(txn, &self.dbs, key, bytes)?);
                }
            }
            Ok(out)
        })
    }

    /// The log's state: newest entry (or the purged id when empty) and the newest purged id.
    ///
    /// # Errors
    /// On an LMDB failure or a corrupt record.
    pub fn log_state(&self) -> Result<LogState<TC>, StorageError> {
        let tail_last = lock(&self.shared.tail)
            .values()
            .next_back()
            .map(|e| e.log_id());
        self.read(|txn| {
            let last_purged_log_id = read_last_purged(txn, &self.dbs)?;
            let stored_last = read_last_entry_id(txn, &self.dbs)?;
            // The tail may end below what is stored (a block entry waiting for its apply, with
            // later entries stored already): the newer of the two.
            let newest = match (tail_last, stored_last) {
                (Some(t), Some(s)) => Some(if t.index >= s.index { t } else { s }),
                (t, s) => t.or(s),
            };
            let last_log_id = newest.or(last_purged_log_id);
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
        // until an entry in it is read back. Checked here, against the newer of the tail and
        // what is stored (either may end the log, see `log_state`), so the caller hears of it
        // at once. Not again in the transaction: block entries reach LMDB with their apply,
        // so what LMDB holds there may end below or above this append.
        let tail_next = lock(&self.shared.tail).keys().next_back().map(|i| i + 1);
        let stored_next = self.read(|txn| next_index(txn, &self.dbs))?;
        let expected = tail_next.max(stored_next);
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
        // Block entries wait in the tail for their apply (see the module's note); the others
        // are carried into LMDB by this append's job.
        let (waiting, carried): (Vec<&EntryOf<TC>>, Vec<&EntryOf<TC>>) =
            entries.iter().partition(|e| block_of(e).is_some());
        let waiting: Vec<u64> = waiting.iter().map(|e| e.index()).collect();
        let mut ids: Vec<LogIdOf<TC>> = carried.iter().map(|e| e.log_id()).collect();
        lock(&self.shared.tail).extend(entries.into_iter().map(|e| (e.index(), e)));
        let shared = self.shared.clone();
        let ledger = self.shared.clone();
        let in_lmdb = move |res: Result<Vec<LogIdOf<TC>>, StorageError>| match res {
            // In LMDB: the tail need not hold them any longer. A reader takes the tail before
            // its read transaction, so it finds them in one or the other.
            Ok(early) => {
                ids.extend(early);
                shared.forget(&ids);
            }
            Err(e) => {
                // Durable in the journal all the same: the entries stay readable from the
                // tail, and the log takes no more writes (the journal puts them into LMDB
                // on the next open, once LMDB can take them).
                tracing::error!(error = %e, "journalled log append failed to reach LMDB");
                shared.fail(e.to_string());
            }
        };
        let on_durable: crate::wal::OnDurable = Box::new(move |res| match res {
            Ok((writer, op)) => {
                // Durable in the journal: acknowledge, and carry it into LMDB.
                durable(Ok(()));
                let job = move |wtxn: &mut RwTxn<'_>, dbs: &Dbs| match &op {
                    Op::Append { entries, committed } => {
                        apply_append(wtxn, dbs, entries, committed.as_ref(), |i| {
                            waiting.binary_search(&i).is_ok()
                        })?;
                        ledger.appended(wtxn, dbs, entries, &waiting)
                    }
                    other => apply_op(wtxn, dbs, other).map(|()| Vec::new()),
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
        let (ledger, shared) = (self.shared.clone(), self.shared.clone());
        let on_durable: crate::wal::OnDurable = Box::new(move |res| match res {
            Ok((writer, op)) => {
                // Full: the caller waits, so it ends the writer's linger (and it is rare). A
                // job that cannot be queued is dropped with its completion, and the caller
                // hears `WriterStopped` from the closed reply channel.
                let done_op = op.clone();
                let _ = writer.submit_blocking(
                    what,
                    Durability::Full,
                    move |wtxn, dbs| {
                        apply_op(wtxn, dbs, &op)?;
                        ledger.changed(&op);
                        Ok(())
                    },
                    move |res| {
                        match &res {
                            Ok(()) => shared.prune(&done_op),
                            // Journalled, not in LMDB: as for a failed append, no more writes
                            // (and no checkpoint frees the segment that holds it).
                            Err(e) => shared.fail(e.to_string()),
                        }
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
        match &*lock(&self.shared.failed) {
            Some(detail) => Err(StorageError::Commit {
                op: "log",
                detail: format!("an earlier journalled log change failed to reach LMDB: {detail}"),
            }),
            None => Ok(()),
        }
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
        // Entries in the tail above it go once the change has committed (see `prune`); their
        // queued LMDB jobs run before this one, which deletes them.
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
        // Block entries a snapshot covers may still wait in the tail (installed, never
        // applied): they go once the purge has committed (see `prune`).
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

#[cfg(test)]
mod tests {
    //! Goal: an applied block's entry is stored once (a reference to the block store), a
    //! rejected proposal's and every other entry in full, and every entry reads back whole:
    //! before the apply (from the tail), after it, after a reopen (journal replay), and after a
    //! purge. Method: a real store in a temp dir, driven through openraft's traits, its LMDB
    //! databases looked at directly.

    use std::time::{Duration, Instant};

    use futures::stream;
    use haseq_messages::{Block, BlockHash, Command, Height, NodeId};
    use openraft::LogId;
    use openraft::storage::RaftStateMachine;
    use openraft::type_config::TypeConfigExt;
    use openraft::vote::leader_id_std::CommittedLeaderId;

    use super::*;
    use crate::wal::JournalTarget;
    use crate::{Storage, StoreOptions};

    fn log_id(index: u64) -> LogIdOf<TC> {
        LogId::new(CommittedLeaderId::new(1), index)
    }

    fn hash(h: u64) -> BlockHash {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&h.to_be_bytes());
        b[31] = 1;
        BlockHash(b)
    }

    fn block_entry(index: u64, height: u64, parent_hash: BlockHash) -> EntryOf<TC> {
        let b = Block {
            height: Height(height),
            parent_hash,
            hash: hash(height * 1000 + index),
            timestamp: height,
            proposer: NodeId::from(1u64),
            payload: vec![(index % 251) as u8; 10_000].into(),
        };
        EntryOf::<TC>::new_normal(log_id(index), Command::Block(b))
    }

    /// Index 1 blank; 2..=6 the blocks at heights 1..=5, each on the one before; 7 a stale
    /// proposal at height 3 (rejected); 8 blank.
    fn entries() -> Vec<EntryOf<TC>> {
        let mut out = vec![EntryOf::<TC>::new_blank(log_id(1))];
        let mut parent = BlockHash::ZERO;
        for h in 1..=5u64 {
            let e = block_entry(h + 1, h, parent);
            parent = block_of(&e).expect("a block entry").hash;
            out.push(e);
        }
        out.push(block_entry(7, 3, hash(2 * 1000 + 3)));
        out.push(EntryOf::<TC>::new_blank(log_id(8)));
        out
    }

    fn open(dir: &std::path::Path) -> Storage {
        let o = StoreOptions {
            map_size_bytes: 256 << 20,
            ..StoreOptions::default()
        };
        crate::open(dir, o).expect("open store")
    }

    /// Which indexes each log database holds: (full rows, reference rows).
    fn stored(log: &LogStore) -> (Vec<u64>, Vec<u64>) {
        log.read(|txn| {
            let keys = |db: heed::Database<
                'static,
                heed::types::U64<heed::byteorder::BE>,
                heed::types::Bytes,
            >| {
                db.iter(txn)
                    .expect("iter")
                    .map(|kv| kv.expect("row").0)
                    .collect::<Vec<u64>>()
            };
            Ok((keys(log.dbs.log), keys(log.dbs.log_blocks)))
        })
        .expect("read")
    }

    /// Appends `entries` and waits until the journal holds them.
    async fn append_durably(log: &mut LogStore, entries: Vec<EntryOf<TC>>) {
        let (tx, rx) = TC::oneshot();
        log.append(entries, IOFlushed::signal(tx))
            .await
            .expect("append");
        rx.await.expect("callback").expect("durable");
    }

    /// Waits (bounded) until `what` holds.
    async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_applied_block_entry_is_stored_once_and_every_entry_reads_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = entries();
        {
            let mut store = open(dir.path());
            append_durably(&mut store.log, all.clone()).await;
            // Before the apply: the blank entries reach LMDB, the block entries wait in the
            // tail, and everything reads back.
            wait_for("the blank entries in LMDB", || {
                stored(&store.log).0 == vec![1, 8]
            })
            .await;
            assert_eq!(store.log.entries(..).expect("read"), all);
            assert_eq!(
                store.log.log_state().expect("state").last_log_id,
                Some(log_id(8)),
                "the log ends with the newest entry, stored or not"
            );

            let stream = stream::iter(all.clone().into_iter().map(|e| Ok((e, None))));
            store.sm.apply(stream).await.expect("apply");
            wait_for("the applied entries to leave the tail", || {
                lock(&store.log.shared.tail).is_empty()
            })
            .await;
            assert_eq!(
                stored(&store.log),
                (vec![1, 7, 8], vec![2, 3, 4, 5, 6]),
                "accepted blocks' entries are references; the rejected proposal is in full"
            );
            assert_eq!(store.log.entries(..).expect("read"), all);
            assert_eq!(store.log.entries(3..5).expect("read"), all[2..4].to_vec());
            assert_eq!(
                store.log.log_state().expect("state").last_log_id,
                Some(log_id(8))
            );
        }
        // A reopen replays the journal (full rows again) and reads the same entries.
        let mut store = open(dir.path());
        assert_eq!(store.log.entries(..).expect("read after reopen"), all);
        store.log.purge(log_id(4)).await.expect("purge");
        let read = store.log.entries(..).expect("read after purge");
        assert_eq!(
            read.iter().map(|e| e.index()).collect::<Vec<_>>(),
            vec![5, 6, 7, 8]
        );
        let (full, refs) = stored(&store.log);
        assert!(
            full.iter().chain(&refs).all(|i| *i > 4),
            "{full:?} {refs:?}"
        );
    }

    /// openraft applies what was submitted to the log, not only what is flushed: an apply can
    /// run before its entry's append job. The entry is then stored by that job, never before
    /// the entries below it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_entry_applied_before_its_append_job_is_stored_by_that_job() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = open(dir.path());
        let accepted = block_entry(1, 1, BlockHash::ZERO);
        let stale = block_entry(2, 1, BlockHash::ZERO);
        let b = block_of(&accepted).expect("a block").clone();
        let rejected_bytes = encode_rec("log entry", &stale).expect("encode");
        let shared = store.log.shared.clone();
        let (id1, id2) = (accepted.log_id(), stale.log_id());
        let stored_now = store
            .log
            .writer
            .write("test: apply first", move |wtxn, dbs| {
                crate::blocks::put_block(wtxn, dbs, &b)?;
                shared.applied(wtxn, dbs, &[(id1, b)], &[(id2, rejected_bytes)])
            })
            .await
            .expect("apply job");
        assert!(stored_now.is_empty(), "{stored_now:?}");
        assert_eq!(
            stored(&store.log),
            (vec![], vec![]),
            "nothing above a missing entry"
        );

        let all = vec![accepted, stale];
        append_durably(&mut store.log, all.clone()).await;
        wait_for("the append job to store both", || {
            lock(&store.log.shared.tail).is_empty()
        })
        .await;
        assert_eq!(stored(&store.log), (vec![2], vec![1]));
        assert_eq!(store.log.entries(..).expect("read"), all);
    }

    /// An entry recorded as applied early whose block the block store does not hold (its
    /// apply rolled back) is stored in full by its append job, never as a dangling reference.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_early_apply_whose_block_is_not_stored_leaves_the_entry_in_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = open(dir.path());
        let e = block_entry(1, 1, BlockHash::ZERO);
        let b = block_of(&e).expect("a block").clone();
        let shared = store.log.shared.clone();
        let id = e.log_id();
        store
            .log
            .writer
            .write("test: apply without its block", move |wtxn, dbs| {
                shared.applied(wtxn, dbs, &[(id, b)], &[])
            })
            .await
            .expect("apply job");
        append_durably(&mut store.log, vec![e.clone()]).await;
        wait_for("the append job to store it", || {
            lock(&store.log.shared.tail).is_empty()
        })
        .await;
        assert_eq!(stored(&store.log), (vec![1], vec![]));
        assert_eq!(store.log.entries(..).expect("read"), vec![e]);
    }

    /// A checkpoint stores the waiting block entries whose append job has run, and none above
    /// (their records are in the next segment).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkpoint_stores_waiting_block_entries_up_to_the_ledger_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let shared = store.log.shared.clone();
        let mut parent = BlockHash::ZERO;
        for i in 1..=3u64 {
            let e = block_entry(i, i, parent);
            parent = block_of(&e).expect("a block").hash;
            lock(&shared.tail).insert(i, e);
        }
        shared.init(Some(2));
        let carry = shared.clone();
        let carried = store
            .log
            .writer
            .write("test: checkpoint", move |wtxn, dbs| carry.carry(wtxn, dbs))
            .await
            .expect("checkpoint job");
        assert_eq!(carried, vec![log_id(1), log_id(2)]);
        assert_eq!(stored(&store.log), (vec![1, 2], vec![]));
    }
}
