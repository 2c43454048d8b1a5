//! How the log is stored in LMDB: an entry in full (`log`), an applied block's entry as a
//! reference to the block store (`log_blocks`), Raft's pointers (`meta`), and how a journalled
//! change ([`Op`]) is applied there.

use std::ops::Bound;

use haseq_messages::{Block, Command, TC};
use heed::{RoTxn, RwTxn};
use openraft::EntryPayload;
use openraft::entry::RaftEntry;
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};

use crate::blocks::get_block;
use crate::env::Dbs;
use crate::error::StorageError;
use crate::lmdb::{self, decode_rec, encode_rec};
use crate::records::{BlockEntryRow, meta_key};
use crate::wal::{ByteBuf, Op};

/// The block an entry proposes, if it is a block entry.
pub(super) fn block_of(e: &EntryOf<TC>) -> Option<&Block> {
    match &e.payload {
        EntryPayload::Normal(Command::Block(b)) => Some(b),
        _ => None,
    }
}

/// Stores an entry in full (its encoding) at `index`, replacing a reference row there.
pub(crate) fn put_entry_row(
    wtxn: &mut RwTxn<'_>,
    dbs: &Dbs,
    index: u64,
    bytes: &[u8],
) -> Result<(), StorageError> {
    dbs.log
        .put(wtxn, &index, bytes)
        .map_err(StorageError::lmdb("log: put entry"))?;
    dbs.log_blocks
        .delete(wtxn, &index)
        .map_err(StorageError::lmdb("log: delete block entry"))?;
    Ok(())
}

/// Stores a block's entry as a reference to the block store, which must hold that block at
/// its height (in this transaction or before); replaces a full row there.
pub(super) fn put_block_entry_row(
    wtxn: &mut RwTxn<'_>,
    dbs: &Dbs,
    row: &BlockEntryRow,
) -> Result<(), StorageError> {
    let index = row.log_id.index;
    dbs.log_blocks
        .put(wtxn, &index, &encode_rec("log block entry", row)?)
        .map_err(StorageError::lmdb("log: put block entry"))?;
    dbs.log
        .delete(wtxn, &index)
        .map_err(StorageError::lmdb("log: delete entry"))?;
    Ok(())
}

/// Whether the block store holds the block a reference row names.
pub(super) fn block_stored(
    txn: &RoTxn<'_>,
    dbs: &Dbs,
    row: &BlockEntryRow,
) -> Result<bool, StorageError> {
    let at = dbs
        .hashes
        .get(txn, &row.hash.0[..])
        .map_err(StorageError::lmdb("log: look up a block's height"))?;
    Ok(at == Some(row.height.0))
}

/// Rebuilds the entry a reference row stands for, from the block store.
pub(super) fn entry_of_row(
    txn: &RoTxn<'_>,
    dbs: &Dbs,
    key: u64,
    bytes: &[u8],
) -> Result<EntryOf<TC>, StorageError> {
    let row: BlockEntryRow = decode_rec("log block entry", key, bytes)?;
    if row.log_id.index != key {
        return Err(StorageError::LogKeyMismatch {
            key,
            got: row.log_id.index,
        });
    }
    let missing = |found: String| StorageError::LogBlockMissing {
        index: key,
        height: row.height.0,
        hash: row.hash.to_string(),
        found,
    };
    match get_block(txn, dbs, row.height)? {
        Some(b) if b.hash == row.hash => {
            Ok(EntryOf::<TC>::new_normal(row.log_id, Command::Block(b)))
        }
        Some(b) => Err(missing(format!("holds {} there", b.hash))),
        None => Err(missing("does not hold".to_string())),
    }
}

/// The newest stored index in either log database.
pub(crate) fn last_stored_index(txn: &RoTxn<'_>, dbs: &Dbs) -> Result<Option<u64>, StorageError> {
    let full = dbs
        .log
        .last(txn)
        .map_err(StorageError::lmdb("log: read last key"))?
        .map(|(k, _)| k);
    let refs = dbs
        .log_blocks
        .last(txn)
        .map_err(StorageError::lmdb("log: read last block entry key"))?
        .map(|(k, _)| k);
    Ok(full.max(refs))
}

/// Reads the newest purged log id.
pub(crate) fn read_last_purged(
    txn: &RoTxn<'_>,
    dbs: &Dbs,
) -> Result<Option<LogIdOf<TC>>, StorageError> {
    lmdb::get_rec(txn, dbs.meta, "last purged log id", meta_key::LAST_PURGED)
}

/// Reads the newest stored entry's log id, checking it is stored under its own index.
pub(crate) fn read_last_entry_id(
    txn: &RoTxn<'_>,
    dbs: &Dbs,
) -> Result<Option<LogIdOf<TC>>, StorageError> {
    let full = dbs
        .log
        .last(txn)
        .map_err(StorageError::lmdb("log: read last entry"))?;
    let refs = dbs
        .log_blocks
        .last(txn)
        .map_err(StorageError::lmdb("log: read last block entry"))?;
    let (key, id) = match (full, refs) {
        (None, None) => return Ok(None),
        (Some((key, bytes)), r) if r.is_none_or(|(rk, _)| rk < key) => {
            let entry: EntryOf<TC> = decode_rec("log entry", key, bytes)?;
            (key, entry.log_id())
        }
        (_, Some((key, bytes))) => {
            let row: BlockEntryRow = decode_rec("log block entry", key, bytes)?;
            (key, row.log_id)
        }
        (Some(_), None) => unreachable!("matched by the arm above"),
    };
    if id.index != key {
        return Err(StorageError::LogKeyMismatch { key, got: id.index });
    }
    Ok(Some(id))
}

/// Reads the saved committed log id (stored as an `Option`: openraft may save `None`).
pub(crate) fn read_committed(
    txn: &RoTxn<'_>,
    dbs: &Dbs,
) -> Result<Option<LogIdOf<TC>>, StorageError> {
    Ok(lmdb::get_rec::<Option<LogIdOf<TC>>>(
        txn,
        dbs.meta,
        "committed log id",
        meta_key::COMMITTED,
    )?
    .flatten())
}

/// Reads the saved vote.
pub(crate) fn read_vote(txn: &RoTxn<'_>, dbs: &Dbs) -> Result<Option<VoteOf<TC>>, StorageError> {
    lmdb::get_rec(txn, dbs.meta, "vote", meta_key::VOTE)
}

/// The index the next appended entry must have, `None` when the log has never held anything
/// (the first entry may then have any index; openraft starts at 0, a snapshot elsewhere).
pub(super) fn next_index(txn: &RoTxn<'_>, dbs: &Dbs) -> Result<Option<u64>, StorageError> {
    if let Some(key) = last_stored_index(txn, dbs)? {
        return Ok(Some(key + 1));
    }
    Ok(read_last_purged(txn, dbs)?.map(|p| p.index + 1))
}

pub(super) fn put_meta(
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
            apply_append(wtxn, dbs, entries, committed.as_ref(), |_| false)?;
        }
        Op::Truncate { after } => {
            let from = match after {
                Some(a) => Bound::Excluded(*a),
                None => Bound::Unbounded,
            };
            dbs.log
                .delete_range(wtxn, &(from, Bound::Unbounded))
                .map_err(StorageError::lmdb("log: delete range"))?;
            dbs.log_blocks
                .delete_range(wtxn, &(from, Bound::Unbounded))
                .map_err(StorageError::lmdb("log: delete block entries"))?;
        }
        Op::Purge { upto, log_id } => {
            dbs.log
                .delete_range(wtxn, &(..=*upto))
                .map_err(StorageError::lmdb("log: delete range"))?;
            dbs.log_blocks
                .delete_range(wtxn, &(..=*upto))
                .map_err(StorageError::lmdb("log: delete block entries"))?;
            let new: LogIdOf<TC> =
                decode_rec("last purged log id", meta_key::LAST_PURGED, &log_id.0)?;
            if read_last_purged(wtxn, dbs)?.is_none_or(|current| current < new) {
                put_meta(wtxn, dbs, meta_key::LAST_PURGED, &log_id.0)?;
            }
        }
    }
    Ok(())
}

/// Stores an append's entries in full, except those `skip` names (block entries waiting for
/// their apply), and raises the committed pointer that rides with them.
pub(super) fn apply_append(
    wtxn: &mut RwTxn<'_>,
    dbs: &Dbs,
    entries: &[(u64, ByteBuf)],
    committed: Option<&ByteBuf>,
    skip: impl Fn(u64) -> bool,
) -> Result<(), StorageError> {
    for (index, bytes) in entries {
        if !skip(*index) {
            put_entry_row(wtxn, dbs, *index, &bytes.0)?;
        }
    }
    if let Some(bytes) = committed {
        let new: Option<LogIdOf<TC>> =
            decode_rec("committed log id", meta_key::COMMITTED, &bytes.0)?;
        if new > read_committed(wtxn, dbs)? {
            put_meta(wtxn, dbs, meta_key::COMMITTED, &bytes.0)?;
        }
    }
    Ok(())
}
