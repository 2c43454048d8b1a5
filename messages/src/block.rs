//! Blocks and the Raft command that carries them.

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
    /// The execution payload, encoded by the engine crate.
    pub payload: Vec<u8>,
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
