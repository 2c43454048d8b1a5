//! The block store: height -> block, hash -> height; and [`BlockReader`], the read handle the
//! rest of the node uses (API, replayer, P2P).
//!
//! Blocks are written by the state machine (in the same transaction as the head that makes
//! them canonical), by snapshot installation, and by [`BlockBackfill`] (historical blocks below
//! a snapshot, fetched from peers, accepted only if they hash-link to the stored chain).

use std::sync::Arc;

use haseq_messages::{Block, BlockHash, BlockRef, BlockSummary, Height};
use heed::{RoTxn, RwTxn};
use tokio::sync::watch;

use crate::applied::{AppliedState, read_head};
use crate::applied_tail::AppliedTail;
use crate::env::Dbs;
use crate::error::StorageError;
use crate::lmdb::{LmdbEnv, encode_rec};
use crate::records::Head;
use crate::writer::Writer;

/// Every this many heights, the store keeps the committed block's hash even where it does not
/// hold the block (after a snapshot install): snapshots carry these checkpoints, and each one
/// vouches for a range of history fetched from peers that ends at it, so the history can be
/// fetched (and replayed) oldest first. 256 = one fetch's range
/// (`haseq_actors::p2p::FETCH_BLOCKS_MAX`); 32 bytes per 256 blocks in a snapshot.
pub const CHECKPOINT_EVERY_BLOCKS: u64 = 256;

/// Whether `height` is a checkpoint height.
pub(crate) fn is_checkpoint(height: Height) -> bool {
    height.0 > 0 && height.0.is_multiple_of(CHECKPOINT_EVERY_BLOCKS)
}

/// Records the committed hash at a checkpoint height.
///
/// # Errors
/// [`StorageError::Checkpoint`] when a different hash is recorded there already: the
/// committed chain never changes, so two hashes at one height mean a broken store or a
/// snapshot of another chain; an LMDB failure.
pub(crate) fn put_checkpoint(
    wtxn: &mut RwTxn<'_>,
    dbs: &Dbs,
    height: Height,
    hash: BlockHash,
) -> Result<(), StorageError> {
    assert!(is_checkpoint(height), "{height} is not a checkpoint height");
    if let Some(recorded) = get_checkpoint(wtxn, dbs, height)? {
        if recorded != hash {
            return Err(StorageError::Checkpoint {
                height,
                recorded,
                offered: hash,
            });
        }
        return Ok(());
    }
    dbs.checkpoints
        .put(wtxn, &height.0, &hash.0[..])
        .map_err(StorageError::lmdb("block store: put checkpoint"))
}

/// The recorded hash at a checkpoint height.
pub(crate) fn get_checkpoint(
    txn: &RoTxn<'_>,
    dbs: &Dbs,
    height: Height,
) -> Result<Option<BlockHash>, StorageError> {
    let Some(bytes) = dbs
        .checkpoints
        .get(txn, &height.0)
        .map_err(StorageError::lmdb("block store: get checkpoint"))?
    else {
        return Ok(None);
    };
    checkpoint_hash(height, bytes).map(Some)
}

/// A checkpoint record's hash.
fn checkpoint_hash(height: Height, bytes: &[u8]) -> Result<BlockHash, StorageError> {
    let hash: [u8; 32] = bytes.try_into().map_err(|_| StorageError::Backfill {
        height,
        reason: format!("checkpoint record of {} bytes, not 32", bytes.len()),
    })?;
    Ok(BlockHash(hash))
}

/// Every recorded checkpoint up to `upto`, ascending.
pub(crate) fn read_checkpoints(
    txn: &RoTxn<'_>,
    dbs: &Dbs,
    upto: Height,
) -> Result<Vec<(Height, BlockHash)>, StorageError> {
    let mut out = Vec::new();
    let iter = dbs
        .checkpoints
        .range(txn, &(..=upto.0))
        .map_err(StorageError::lmdb("block store: read checkpoints"))?;
    for row in iter {
        let (h, bytes) = row.map_err(StorageError::lmdb("block store: read checkpoint"))?;
        out.push((Height(h), checkpoint_hash(Height(h), bytes)?));
    }
    Ok(out)
}

/// Writes `block` at its height and indexes its hash. A different block already stored at
/// that height is replaced and its hash unindexed (only a snapshot install can do that).
pub(crate) fn put_block(
    wtxn: &mut RwTxn<'_>,
    dbs: &Dbs,
    block: &Block,
) -> Result<(), StorageError> {
    let height = block.height.0;
    if let Some(old) = get_block(wtxn, dbs, block.height)?
        && old.hash != block.hash
    {
        tracing::warn!(height, old = %old.hash, new = %block.hash, "replacing a stored block");
        dbs.hashes
            .delete(wtxn, &old.hash.0[..])
            .map_err(StorageError::lmdb("block store: unindex replaced block"))?;
    }
    let bytes = encode_rec("block", block)?;
    dbs.blocks
        .put(wtxn, &height, &bytes)
        .map_err(StorageError::lmdb("block store: put block"))?;
    dbs.hashes
        .put(wtxn, &block.hash.0[..], &height)
        .map_err(StorageError::lmdb("block store: index block hash"))?;
    if is_checkpoint(block.height) {
        put_checkpoint(wtxn, dbs, block.height, block.hash)?;
    }
    Ok(())
}

/// Reads the block at `height`, checking that it is stored under its own height.
pub(crate) fn get_block(
    txn: &RoTxn<'_>,
    dbs: &Dbs,
    height: Height,
) -> Result<Option<Block>, StorageError> {
    read_block_as(txn, dbs, height, |b: &Block| b.height)
}

/// Decodes the stored block at `height` as `T` (a [`Block`], or a [`BlockRef`] borrowing from
/// the transaction), checking that it is stored under its own height (`height_of`).
fn read_block_as<'t, T: serde::Deserialize<'t>>(
    txn: &'t RoTxn<'_>,
    dbs: &Dbs,
    height: Height,
    height_of: impl FnOnce(&T) -> Height,
) -> Result<Option<T>, StorageError> {
    let Some(bytes) = dbs
        .blocks
        .get(txn, &height.0)
        .map_err(StorageError::lmdb("block store: get block"))?
    else {
        return Ok(None);
    };
    let decode_error = |source| StorageError::Decode {
        what: "block",
        key: height.to_string(),
        source,
    };
    let block: T = haseq_messages::decode_borrowed(bytes).map_err(decode_error)?;
    let stored = height_of(&block);
    if stored != height {
        return Err(decode_error(haseq_messages::CodecError(format!(
            "block under height {height} says height {stored}"
        ))));
    }
    Ok(Some(block))
}

/// The newest `count` stored blocks at or below `head`, ascending, whose payloads hold at most
/// `max_bytes` together (the head block is taken whatever its size). Stops at the first gap
/// (older blocks may not have been fetched yet after a snapshot install).
pub(crate) fn recent_blocks(
    txn: &RoTxn<'_>,
    dbs: &Dbs,
    head: Head,
    count: usize,
    max_bytes: usize,
) -> Result<Vec<Block>, StorageError> {
    let mut out: Vec<Block> = Vec::with_capacity(count.min(head.height.0 as usize));
    let mut bytes = 0usize;
    let mut expected_hash = head.hash;
    let mut height = head.height.0;
    while height > 0 && out.len() < count {
        let Some(block) = get_block(txn, dbs, Height(height))? else {
            break;
        };
        bytes = bytes.saturating_add(block.payload.len());
        if !out.is_empty() && bytes > max_bytes {
            break;
        }
        // Follow parent links, not just heights: the chain we carry must end at the head.
        if block.hash != expected_hash {
            return Err(StorageError::SnapshotBlocks {
                height: block.height,
                reason: format!(
                    "stored block {} is not on the chain to head (expected {expected_hash})",
                    block.hash
                ),
            });
        }
        expected_hash = block.parent_hash;
        out.push(block);
        height -= 1;
    }
    out.reverse();
    Ok(out)
}

/// Read-only access to the applied chain: head, blocks by height, heights by hash.
///
/// Cheap to clone; each call is one short read transaction on the calling thread.
#[derive(Clone)]
pub struct BlockReader {
    env: LmdbEnv,
    dbs: Dbs,
    applied_rx: watch::Receiver<AppliedState>,
    /// Applies not committed yet: consulted before the read transaction (see `applied_tail`).
    tail: AppliedTail,
}

impl BlockReader {
    pub(crate) fn new(
        env: LmdbEnv,
        dbs: Dbs,
        applied_rx: watch::Receiver<AppliedState>,
        tail: AppliedTail,
    ) -> Self {
        BlockReader {
            env,
            dbs,
            applied_rx,
            tail,
        }
    }

    fn read<R>(
        &self,
        f: impl FnOnce(&RoTxn<'_>) -> Result<R, StorageError>,
    ) -> Result<R, StorageError> {
        let rtxn = self
            .env
            .read_txn()
            .map_err(StorageError::lmdb("block store: begin read"))?;
        f(&rtxn)
    }

    /// The applied chain's head.
    ///
    /// # Errors
    /// On an LMDB failure or a corrupt head record.
    pub fn head(&self) -> Result<Head, StorageError> {
        match self.tail.head() {
            Some(h) => Ok(h),
            None => self.read(|txn| read_head(txn, &self.dbs)),
        }
    }

    /// The stored block at `height`, `None` if this node does not hold it (not applied yet, or
    /// older than the snapshot it installed and not fetched yet).
    ///
    /// # Errors
    /// On an LMDB failure or a corrupt record.
    pub fn block(&self, height: Height) -> Result<Option<Block>, StorageError> {
        match self.tail.block(height) {
            Some(b) => Ok(Some(b)),
            None => self.read(|txn| get_block(txn, &self.dbs, height)),
        }
    }

    /// The header fields of the stored block at `height` ([`BlockReader::block`] without
    /// copying its payload).
    ///
    /// # Errors
    /// On an LMDB failure or a corrupt record.
    pub fn summary(&self, height: Height) -> Result<Option<BlockSummary>, StorageError> {
        if let Some(s) = self.tail.summary(height) {
            return Ok(Some(s));
        }
        self.read(|txn| {
            let block = read_block_as(txn, &self.dbs, height, |b: &BlockRef<'_>| b.height)?;
            Ok(block.map(|b| b.summary()))
        })
    }

    /// The height of the stored block with this hash, if any.
    ///
    /// # Errors
    /// On an LMDB failure.
    pub fn height_of(&self, hash: &BlockHash) -> Result<Option<Height>, StorageError> {
        if let Some(h) = self.tail.height_of(hash) {
            return Ok(Some(h));
        }
        self.read(|txn| {
            let h = self
                .dbs
                .hashes
                .get(txn, &hash.0[..])
                .map_err(StorageError::lmdb("block store: get height by hash"))?;
            Ok(h.map(Height))
        })
    }

    /// The committed hash at checkpoint height `height`: recorded (from a snapshot, or as the
    /// block was stored), or the stored block's own. `None` where neither is known, or
    /// `height` is no checkpoint height.
    ///
    /// # Errors
    /// On an LMDB failure or a corrupt record.
    pub fn checkpoint(&self, height: Height) -> Result<Option<BlockHash>, StorageError> {
        if !is_checkpoint(height) {
            return Ok(None);
        }
        if let Some(s) = self.tail.summary(height) {
            return Ok(Some(s.hash));
        }
        self.read(|txn| match get_checkpoint(txn, &self.dbs, height)? {
            Some(h) => Ok(Some(h)),
            None => Ok(get_block(txn, &self.dbs, height)?.map(|b| b.hash)),
        })
    }

    /// Stored blocks from `from` upward, at most `max` of them, stopping at the first height not
    /// held. For replay and for serving peers.
    ///
    /// # Errors
    /// On an LMDB failure or a corrupt record.
    pub fn blocks_from(&self, from: Height, max: usize) -> Result<Vec<Block>, StorageError> {
        self.blocks_from_bounded(from, max, usize::MAX)
    }

    /// [`BlockReader::blocks_from`] whose payloads hold at most `max_bytes` together (the first
    /// block is returned whatever its size, so a caller always makes progress). For serving
    /// peers: what one answer costs in memory is bounded whatever the block size.
    ///
    /// # Errors
    /// On an LMDB failure or a corrupt record.
    pub fn blocks_from_bounded(
        &self,
        from: Height,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Block>, StorageError> {
        let mut tail = self.tail.blocks_from(from, max);
        self.read(|txn| {
            let mut out = Vec::new();
            let mut bytes = 0usize;
            let mut h = from.0;
            while out.len() < max {
                let stored = match tail.remove(&h) {
                    Some(b) => Some(b),
                    None => get_block(txn, &self.dbs, Height(h))?,
                };
                match stored {
                    Some(b) => {
                        bytes = bytes.saturating_add(b.payload.len());
                        if !out.is_empty() && bytes > max_bytes {
                            break;
                        }
                        out.push(b)
                    }
                    None => break,
                }
                h = match h.checked_add(1) {
                    Some(n) => n,
                    None => break,
                };
            }
            Ok(out)
        })
    }

    /// The highest run of heights in `(floor, head]` this node does not hold, as `(lowest,
    /// highest)`: what the Syncer must fetch next. Every height above `highest` up to `head` is
    /// held, and `lowest - 1` is held or is `floor`. `None` when nothing in `(floor, head]` is
    /// missing. Costs one read per held height above the hole, plus one.
    ///
    /// # Errors
    /// On an LMDB failure.
    pub fn missing_range(
        &self,
        floor: Height,
        head: Height,
    ) -> Result<Option<(Height, Height)>, StorageError> {
        // Applied but not yet written: held all the same (the tail is the newest heights).
        let mut expected = head.0;
        while expected > floor.0 && self.tail.summary(Height(expected)).is_some() {
            expected -= 1;
        }
        if expected <= floor.0 {
            return Ok(None);
        }
        self.read(|txn| {
            let range = (floor.0 + 1)..=expected;
            let iter = self
                .dbs
                .blocks
                .rev_range(txn, &range)
                .map_err(StorageError::lmdb("block store: scan for a hole"))?;
            for item in iter {
                let (height, _) =
                    item.map_err(StorageError::lmdb("block store: scan for a hole"))?;
                if height != expected {
                    // `expected` down to `height + 1` are missing; `height` is held.
                    return Ok(Some((Height(height + 1), Height(expected))));
                }
                expected -= 1;
                if expected <= floor.0 {
                    return Ok(None);
                }
            }
            Ok(Some((Height(floor.0 + 1), Height(expected))))
        })
    }

    /// Watch the applied state (published after each apply or snapshot install).
    pub fn subscribe(&self) -> watch::Receiver<AppliedState> {
        self.applied_rx.clone()
    }
}

impl std::fmt::Debug for BlockReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockReader")
            .field("path", &self.env.path())
            .finish()
    }
}

/// Most blocks one [`BlockBackfill::insert`] call takes (one write transaction).
pub const BACKFILL_BLOCKS_MAX: usize = 4096;

/// Writes historical blocks (below the applied head) that this node lacks, typically after a
/// snapshot install: the Syncer fetches them from peers, newest gap first.
///
/// Peers are not trusted: a block is stored only if it hash-links to the stored chain above it
/// (the block at `height + 1` names it as parent, or it is the head itself), or, where nothing
/// above it is stored, if it is the block a checkpoint names ([`CHECKPOINT_EVERY_BLOCKS`]):
/// so the store only ever holds the applied chain.
#[derive(Clone)]
pub struct BlockBackfill {
    writer: Arc<Writer>,
}

impl std::fmt::Debug for BlockBackfill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockBackfill").finish_non_exhaustive()
    }
}

impl BlockBackfill {
    pub(crate) fn new(writer: Arc<Writer>) -> Self {
        BlockBackfill { writer }
    }

    /// Stores `blocks` (any order) in one write transaction, all or nothing; returns how many
    /// were new (blocks already stored with the same hash are skipped).
    ///
    /// # Errors
    /// [`StorageError::Backfill`] if a block is above the head, at height 0, not linked to the
    /// stored chain above it, or differs from the block stored at its height (nothing is
    /// written then); an LMDB failure; more than [`BACKFILL_BLOCKS_MAX`] blocks.
    pub async fn insert(&self, mut blocks: Vec<Block>) -> Result<usize, StorageError> {
        if blocks.len() > BACKFILL_BLOCKS_MAX {
            return Err(StorageError::InvalidOption {
                name: "backfill batch",
                value: blocks.len().to_string(),
                reason: "more than BACKFILL_BLOCKS_MAX blocks",
            });
        }
        // Newest first: each block is checked against the one just above it, which is either
        // already stored or inserted earlier in this same transaction.
        blocks.sort_by_key(|b| std::cmp::Reverse(b.height));
        self.writer
            .write("block store: backfill", move |wtxn, dbs| {
                let head = read_head(wtxn, dbs)?;
                let mut inserted = 0;
                for block in &blocks {
                    let refuse = |reason: String| StorageError::Backfill {
                        height: block.height,
                        reason,
                    };
                    if block.height.0 == 0 || block.height > head.height {
                        return Err(refuse(format!("not in 1..={}", head.height)));
                    }
                    if let Some(stored) = get_block(wtxn, dbs, block.height)? {
                        if stored.hash != block.hash {
                            return Err(refuse(format!(
                                "stored block there is {}, got {}",
                                stored.hash, block.hash
                            )));
                        }
                        continue;
                    }
                    let expected = if block.height == head.height {
                        head.hash
                    } else {
                        match get_block(wtxn, dbs, block.height.next())? {
                            Some(above) => above.parent_hash,
                            // No chain above (yet): a checkpoint vouches for its block.
                            None => match get_checkpoint(wtxn, dbs, block.height)? {
                                Some(hash) => hash,
                                None => {
                                    return Err(refuse(format!(
                                        "block {} is not stored and {} is no checkpoint",
                                        block.height.next(),
                                        block.height
                                    )));
                                }
                            },
                        }
                    };
                    if block.hash != expected {
                        return Err(refuse(format!(
                            "hash {} is not the parent {expected} of the chain above",
                            block.hash
                        )));
                    }
                    put_block(wtxn, dbs, block)?;
                    inserted += 1;
                }
                Ok(inserted)
            })
            .await
    }
}
