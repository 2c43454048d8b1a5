//! [`LogShared`]: what the log holds outside LMDB (the tail of entries no committed transaction
//! holds yet, the ledger of the writer's log rows, whether the log has stopped), shared by the
//! log store, the journal's checkpoints ([`JournalTarget`]) and the state machine.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use haseq_messages::{Block, TC};
use heed::RwTxn;
use openraft::entry::RaftEntry;
use openraft::type_config::alias::{EntryOf, LogIdOf};

use super::rows::{
    apply_op, block_of, block_stored, put_block_entry_row, put_entry_row, read_last_purged,
};
use crate::env::Dbs;
use crate::error::StorageError;
use crate::lmdb::encode_rec;
use crate::records::BlockEntryRow;
use crate::wal::{ByteBuf, JournalTarget, Op};

/// What the log holds outside LMDB, shared by the log store, the journal's checkpoints and the
/// state machine. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct LogShared {
    /// The tail: entries appended that no committed LMDB transaction holds yet, by index.
    /// Readers see them at once (openraft replicates an entry as soon as `append` returns).
    /// An entry leaves the tail once a committed transaction holds it: its append job's, or
    /// for a block entry its apply's (as a reference) or a journal checkpoint's (in full).
    pub(super) tail: Arc<Mutex<BTreeMap<u64, EntryOf<TC>>>>,
    /// Set when a journalled change failed to reach LMDB: the log takes no more writes.
    pub(super) failed: Arc<Mutex<Option<String>>>,
    /// Kept by the jobs on the writer thread, so in transaction order.
    ledger: Arc<Mutex<Ledger>>,
}

/// What the writer thread knows of the log's rows. LMDB must never hold an entry above one
/// that neither it nor a journal segment still on disk holds (a crash would leave a hole), and
/// openraft applies what was submitted to the log, not only what is flushed: an apply can run
/// before its entry's append job.
#[derive(Debug, Default)]
struct Ledger {
    /// Every entry up to this index has had its append job run (or was stored before this
    /// process started): LMDB holds it, unless it is a block entry that waits for its apply.
    journalled_upto: Option<u64>,
    /// Block entries applied before their append job ran: that job stores them.
    applied_early: BTreeMap<u64, Early>,
}

/// How an entry applied early is to be stored by its append job.
#[derive(Debug)]
enum Early {
    /// An accepted block: as a reference to the block store.
    Ref(BlockEntryRow),
    /// A rejected proposal: in full (the append job has its bytes).
    Full(LogIdOf<TC>),
}

impl LogShared {
    /// Starts the ledger at what LMDB holds after the journal's replay.
    pub(crate) fn init(&self, stored_upto: Option<u64>) {
        lock(&self.ledger).journalled_upto = stored_upto;
    }

    /// In an append job, after the entries it stores: stores the block entries of `waiting`
    /// applied before this job ran (their bytes from `entries`), and raises the ledger to the
    /// append's last index. Returns the ids stored.
    pub(super) fn appended(
        &self,
        wtxn: &mut RwTxn<'_>,
        dbs: &Dbs,
        entries: &[(u64, ByteBuf)],
        waiting: &[u64],
    ) -> Result<Vec<LogIdOf<TC>>, StorageError> {
        let mut ledger = lock(&self.ledger);
        let mut stored = Vec::new();
        for index in waiting {
            match ledger.applied_early.remove(index) {
                None => {}
                // A reference only to a block this transaction's block store holds (an apply
                // rolled back after it recorded the entry stored none); else in full.
                Some(Early::Ref(row)) if block_stored(wtxn, dbs, &row)? => {
                    put_block_entry_row(wtxn, dbs, &row)?;
                    stored.push(row.log_id);
                }
                Some(Early::Ref(BlockEntryRow { log_id: id, .. }) | Early::Full(id)) => {
                    let bytes = entries
                        .iter()
                        .find(|(i, _)| i == index)
                        .map(|(_, b)| &b.0)
                        .ok_or(StorageError::LogHole {
                            expected: *index,
                            got: entries.first().map_or(0, |(i, _)| *i),
                        })?;
                    put_entry_row(wtxn, dbs, *index, bytes)?;
                    stored.push(id);
                }
            }
        }
        if let Some((last, _)) = entries.last() {
            ledger.journalled_upto = Some(*last);
        }
        Ok(stored)
    }

    /// In an apply job, after the blocks are stored: each accepted block's entry becomes a
    /// reference to its block, each rejected proposal's entry is stored in full, or, for an
    /// entry whose append job has not run yet, that job will do it. Returns the ids stored.
    pub(crate) fn applied(
        &self,
        wtxn: &mut RwTxn<'_>,
        dbs: &Dbs,
        accepted: &[(LogIdOf<TC>, Block)],
        rejected: &[(LogIdOf<TC>, Vec<u8>)],
    ) -> Result<Vec<LogIdOf<TC>>, StorageError> {
        let mut ledger = lock(&self.ledger);
        let upto = ledger.journalled_upto;
        let mut stored = Vec::new();
        // Recorded in the ledger only once every row of this job is written.
        let mut early = Vec::new();
        for (id, b) in accepted {
            let row = BlockEntryRow {
                log_id: *id,
                height: b.height,
                hash: b.hash,
            };
            if upto.is_some_and(|u| id.index <= u) {
                put_block_entry_row(wtxn, dbs, &row)?;
                stored.push(*id);
            } else {
                early.push((id.index, Early::Ref(row)));
            }
        }
        for (id, bytes) in rejected {
            if upto.is_some_and(|u| id.index <= u) {
                put_entry_row(wtxn, dbs, id.index, bytes)?;
                stored.push(*id);
            } else {
                early.push((id.index, Early::Full(*id)));
            }
        }
        ledger.applied_early.extend(early);
        Ok(stored)
    }

    /// In a truncate's or purge's job, after its rows are deleted: the ledger follows.
    pub(super) fn changed(&self, op: &Op) {
        if let Op::Truncate { after } = op {
            let mut ledger = lock(&self.ledger);
            ledger.journalled_upto = ledger.journalled_upto.min(*after);
            let after = *after;
            ledger
                .applied_early
                .retain(|i, _| after.is_some_and(|a| *i <= a));
        }
    }

    /// Once a truncate or purge has committed: its entries leave the tail. Not before, so
    /// that a checkpoint in between still finds (and stores) what the change has not yet
    /// durably removed.
    pub(super) fn prune(&self, op: &Op) {
        match op {
            Op::Truncate { after } => {
                lock(&self.tail).retain(|i, _| after.is_some_and(|a| *i <= a));
            }
            Op::Purge { upto, .. } => lock(&self.tail).retain(|i, _| *i > *upto),
            Op::Append { .. } => {}
        }
    }

    /// Drops the entries with these ids from the tail, once a committed transaction holds
    /// them (an entry replaced meanwhile under the same index stays).
    pub(crate) fn forget(&self, ids: &[LogIdOf<TC>]) {
        let mut t = lock(&self.tail);
        for id in ids {
            if t.get(&id.index).is_some_and(|e| e.log_id() == *id) {
                t.remove(&id.index);
            }
        }
    }

    /// Stops the log: every later write is refused with `detail`.
    pub(super) fn fail(&self, detail: String) {
        lock(&self.failed).get_or_insert(detail);
    }
}

/// The log is what the journal's records mean: a recovered op is applied to the rows as at
/// first (`rows::apply_op`), and a checkpoint carries the block entries that wait in the tail.
impl JournalTarget for LogShared {
    fn replay(&self, wtxn: &mut RwTxn<'_>, dbs: &Dbs, op: &Op) -> Result<(), StorageError> {
        apply_op(wtxn, dbs, op)
    }

    /// For a journal checkpoint, in its transaction: stores in full every block entry of the
    /// tail that waits for its apply and whose append job has run (the segment being freed
    /// may hold its only durable copy; every append job of that segment ran before this one),
    /// and returns their ids. Not the entries above (their records are in the next segment,
    /// and storing one before the entries below it could leave a hole), nor those at or below
    /// the purge point, nor one stored as a reference already.
    fn carry(&self, wtxn: &mut RwTxn<'_>, dbs: &Dbs) -> Result<Vec<LogIdOf<TC>>, StorageError> {
        let Some(upto) = lock(&self.ledger).journalled_upto else {
            return Ok(Vec::new());
        };
        let above = read_last_purged(wtxn, dbs)?.map_or(0, |p| p.index + 1);
        if above > upto {
            return Ok(Vec::new());
        }
        let waiting: Vec<EntryOf<TC>> = lock(&self.tail)
            .range(above..=upto)
            .map(|(_, e)| e)
            .filter(|e| block_of(e).is_some())
            .cloned()
            .collect();
        let mut carried = Vec::with_capacity(waiting.len());
        for e in waiting {
            let index = e.index();
            if dbs
                .log_blocks
                .get(wtxn, &index)
                .map_err(StorageError::lmdb("log: get block entry"))?
                .is_none()
            {
                put_entry_row(wtxn, dbs, index, &encode_rec("log entry", &e)?)?;
            }
            carried.push(e.log_id());
        }
        Ok(carried)
    }

    /// A checkpoint's outcome: its carried entries leave the tail, or the log stops. Returns
    /// whether the freed segment may go: not if the log has stopped, since a job before the
    /// checkpoint (in its group, or earlier) may have failed to store what only that segment
    /// holds durably (completions run in queue order, so such a job's has run already).
    fn carried(&self, res: Result<Vec<LogIdOf<TC>>, StorageError>) -> bool {
        match res {
            Ok(ids) => {
                self.forget(&ids);
                lock(&self.failed).is_none()
            }
            Err(e) => {
                tracing::error!(error = %e, "a journal checkpoint failed to store the log's waiting block entries");
                self.fail(e.to_string());
                false
            }
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data (a map, a pointer): a panic while it was held leaves it consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
