//! The applied state: what the `sm` database records once an apply or a snapshot install has
//! committed (applied log id, membership, head), how it is read back, and [`AppliedState`], the
//! part the rest of the node watches. Below the block store, the snapshots and the state
//! machine, which all read it.

use haseq_messages::{BlockHash, Height, TC};
use heed::RoTxn;
use openraft::type_config::alias::{LogIdOf, StoredMembershipOf};

use crate::env::Dbs;
use crate::error::StorageError;
use crate::lmdb;
use crate::records::{Head, sm_key};

/// What the rest of the node sees of the state machine after each committed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedState {
    /// The last applied log id.
    pub applied: Option<LogIdOf<TC>>,
    /// Height of the applied head.
    pub head_height: Height,
    /// Hash of the applied head.
    pub head_hash: BlockHash,
}

impl AppliedState {
    /// The head as a [`Head`].
    pub fn head(&self) -> Head {
        Head {
            height: self.head_height,
            hash: self.head_hash,
        }
    }
}

/// Reads the head record (genesis when absent).
pub(crate) fn read_head(txn: &RoTxn<'_>, dbs: &Dbs) -> Result<Head, StorageError> {
    Ok(lmdb::get_rec(txn, dbs.sm, "head", sm_key::HEAD)?.unwrap_or(Head::GENESIS))
}

/// Reads the applied log id.
pub(crate) fn read_applied(
    txn: &RoTxn<'_>,
    dbs: &Dbs,
) -> Result<Option<LogIdOf<TC>>, StorageError> {
    Ok(
        lmdb::get_rec::<Option<LogIdOf<TC>>>(txn, dbs.sm, "applied log id", sm_key::APPLIED)?
            .flatten(),
    )
}

/// Reads the applied membership (the empty default before any membership entry).
pub(crate) fn read_membership(
    txn: &RoTxn<'_>,
    dbs: &Dbs,
) -> Result<StoredMembershipOf<TC>, StorageError> {
    Ok(lmdb::get_rec(txn, dbs.sm, "membership", sm_key::MEMBERSHIP)?.unwrap_or_default())
}

/// Reads the applied state as published on the watch channel.
pub(crate) fn read_applied_state(txn: &RoTxn<'_>, dbs: &Dbs) -> Result<AppliedState, StorageError> {
    let applied = read_applied(txn, dbs)?;
    let head = read_head(txn, dbs)?;
    Ok(AppliedState {
        applied,
        head_height: head.height,
        head_hash: head.hash,
    })
}
