//! The applied tail: applies whose write transaction is queued but not committed yet.
//!
//! An apply is decided (accepted or rejected) and made visible at once; its transaction is
//! queued on the writer and commits in the background (data pages flushed, see `writer`), so
//! the leader answers its proposer and the node's engine imports the block without waiting for
//! the disk. Until that transaction has committed, readers ([`crate::BlockReader`],
//! [`crate::StateMachineStore`]) find the new head and blocks here. Each entry leaves the tail
//! only after its transaction has committed, and a reader takes what it needs from the tail
//! before opening its read transaction, so it finds every applied block in one or the other.
//!
//! What this costs: a process that dies with applies still queued (a window of about one
//! flush) comes back with its state machine a little behind what it had applied; openraft
//! re-applies those entries from the durable log, and if the engine imported them meanwhile,
//! start-up hole filling finds it ahead on the same chain and sets it back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use haseq_messages::{Block, BlockHash, Height, TC};
use openraft::type_config::alias::{LogIdOf, StoredMembershipOf};

use crate::error::StorageError;
use crate::records::Head;

/// The state after the newest queued apply.
#[derive(Debug, Clone)]
pub(crate) struct TailState {
    pub(crate) applied: Option<LogIdOf<TC>>,
    pub(crate) head: Head,
    pub(crate) membership: StoredMembershipOf<TC>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Accepted blocks whose transaction has not committed, by height.
    blocks: BTreeMap<u64, Block>,
    /// The state after the newest queued apply; `None` once every queued apply has committed.
    state: Option<TailState>,
    /// Applies queued and not yet committed.
    queued: u64,
    /// The error of an apply transaction that failed: the node must stop.
    failed: Option<String>,
}

/// Shared by the state machine (which fills it) and every block reader. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct AppliedTail(Arc<Mutex<Inner>>);

impl AppliedTail {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain data: a panic while it was held leaves it consistent.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records an apply about to be queued: its accepted blocks and the state after it.
    pub(crate) fn push<'b>(&self, blocks: impl IntoIterator<Item = &'b Block>, state: TailState) {
        let mut t = self.lock();
        for b in blocks {
            t.blocks.insert(b.height.0, b.clone());
        }
        t.state = Some(state);
        t.queued += 1;
    }

    /// The apply's transaction has committed (`Ok`) or failed: its blocks leave the tail.
    pub(crate) fn done(&self, blocks: &[(Height, BlockHash)], res: Result<(), StorageError>) {
        let mut t = self.lock();
        if let Err(e) = res {
            tracing::error!(error = %e, "state machine apply failed to commit; the node must stop");
            t.failed = Some(e.to_string());
            return;
        }
        for (height, hash) in blocks {
            if t.blocks.get(&height.0).is_some_and(|b| b.hash == *hash) {
                t.blocks.remove(&height.0);
            }
        }
        t.queued = t.queued.saturating_sub(1);
        if t.queued == 0 {
            t.state = None;
        }
    }

    /// A failed apply transaction, if any.
    pub(crate) fn failed(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    /// The state after the newest queued apply, if one is still queued.
    pub(crate) fn state(&self) -> Option<TailState> {
        self.lock().state.clone()
    }

    /// The head after the newest queued apply, if one is still queued.
    pub(crate) fn head(&self) -> Option<Head> {
        self.lock().state.as_ref().map(|s| s.head)
    }

    /// The tail's block at `height`.
    pub(crate) fn block(&self, height: Height) -> Option<Block> {
        self.lock().blocks.get(&height.0).cloned()
    }

    /// The summary of the tail's block at `height` (its payload is not copied).
    pub(crate) fn summary(&self, height: Height) -> Option<haseq_messages::BlockSummary> {
        self.lock().blocks.get(&height.0).map(Block::summary)
    }

    /// The tail's blocks from `from`, at most `max`.
    pub(crate) fn blocks_from(&self, from: Height, max: usize) -> BTreeMap<u64, Block> {
        self.lock()
            .blocks
            .range(from.0..)
            .take(max)
            .map(|(h, b)| (*h, b.clone()))
            .collect()
    }

    /// The height of the tail's block with this hash.
    pub(crate) fn height_of(&self, hash: &BlockHash) -> Option<Height> {
        self.lock()
            .blocks
            .values()
            .find(|b| b.hash == *hash)
            .map(|b| b.height)
    }
}
