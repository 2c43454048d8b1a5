//! Blocks and the Raft command that carries them.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{BlockHash, Height, NodeId};

/// A block as committed to the Raft log: the header fields haseq checks, plus the
/// execution payload, opaque here (the engine crate encodes and decodes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// Height of this block; the state machine accepts it only at `head + 1`.
    pub height: Height,
    /// Hash of the block it builds on; must equal the applied head's hash.
    pub parent_hash: BlockHash,
    /// This block's hash (the execution payload's block hash).
    pub hash: BlockHash,
    /// Block timestamp, seconds since the Unix epoch.
    pub timestamp: u64,
    /// The node that proposed it.
    pub proposer: NodeId,
    /// The execution payload, encoded by the engine crate. Encoded as one byte string (the
    /// same postcard bytes as a sequence of `u8`, copied in bulk). `Bytes`, so that a clone
    /// (the log's and the applied tail's readers, each follower's replication) shares the
    /// payload instead of copying hundreds of KiB.
    pub payload: Bytes,
}

/// A block's header fields without its payload: for callers that need only the chain links or
/// the timestamp (a payload runs to hundreds of KiB; copying it to read a hash is waste).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSummary {
    /// The block's height.
    pub height: Height,
    /// The hash of the block it builds on.
    pub parent_hash: BlockHash,
    /// The block's hash.
    pub hash: BlockHash,
    /// Block timestamp, seconds since the Unix epoch.
    pub timestamp: u64,
}

impl BlockSummary {
    fn of(height: Height, parent_hash: BlockHash, hash: BlockHash, timestamp: u64) -> Self {
        BlockSummary {
            height,
            parent_hash,
            hash,
            timestamp,
        }
    }
}

impl Block {
    /// The block's [`BlockSummary`].
    pub fn summary(&self) -> BlockSummary {
        BlockSummary::of(self.height, self.parent_hash, self.hash, self.timestamp)
    }
}

/// A [`Block`] decoded in place: the payload borrowed from the encoded bytes, not copied.
#[derive(Debug, Deserialize)]
pub struct BlockRef<'a> {
    /// As [`Block::height`].
    pub height: Height,
    /// As [`Block::parent_hash`].
    pub parent_hash: BlockHash,
    /// As [`Block::hash`].
    pub hash: BlockHash,
    /// As [`Block::timestamp`].
    pub timestamp: u64,
    /// As [`Block::proposer`].
    pub proposer: NodeId,
    /// As [`Block::payload`], borrowed.
    #[serde(borrow)]
    pub payload: &'a [u8],
}

impl BlockRef<'_> {
    /// The block's [`BlockSummary`].
    pub fn summary(&self) -> BlockSummary {
        BlockSummary::of(self.height, self.parent_hash, self.hash, self.timestamp)
    }
}

/// The application data of a Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Propose the next block.
    Block(Block),
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Block(b) => write!(f, "block {} {} by {}", b.height, b.hash, b.proposer),
        }
    }
}

/// Why the state machine refused a proposal. Deterministic: every node decides alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// The block's height is not `head + 1` (a stale or duplicated proposal).
    NotNextHeight {
        /// The head height when the entry was applied.
        head: Height,
        /// The proposed block's height.
        got: Height,
    },
    /// The block's parent is not the head's hash (built on another chain).
    NotOnHead {
        /// The head hash when the entry was applied.
        expected: BlockHash,
        /// The proposed block's parent hash.
        got: BlockHash,
    },
}

/// What applying a log entry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ApplyOutcome {
    /// Not a block (blank or membership entry): nothing to report.
    #[default]
    None,
    /// The block became the new head.
    Accepted {
        /// Its height.
        height: Height,
    },
    /// The entry was recorded as rejected and changed nothing.
    Rejected(RejectReason),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Block` as it was encoded before its payload became a byte string.
    #[derive(Serialize, Deserialize)]
    struct BlockBefore {
        height: Height,
        parent_hash: BlockHash,
        hash: BlockHash,
        timestamp: u64,
        proposer: NodeId,
        payload: Vec<u8>,
    }

    #[test]
    fn the_payload_as_a_byte_string_keeps_the_stored_encoding() {
        let payload: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let now = Block {
            height: Height(7),
            parent_hash: BlockHash([1; 32]),
            hash: BlockHash([2; 32]),
            timestamp: 1_700_000_000,
            proposer: NodeId::from(3u64),
            payload: Bytes::from(payload.clone()),
        };
        let before = BlockBefore {
            height: now.height,
            parent_hash: now.parent_hash,
            hash: now.hash,
            timestamp: now.timestamp,
            proposer: now.proposer.clone(),
            payload,
        };
        let old_bytes = postcard::to_stdvec(&before).expect("encode before");
        // Logs, block stores and snapshots written by earlier versions read back unchanged,
        // and what is written now reads as it always did.
        assert_eq!(postcard::to_stdvec(&now).expect("encode now"), old_bytes);
        let back: Block = postcard::from_bytes(&old_bytes).expect("decode");
        assert_eq!(back, now);
    }
}
