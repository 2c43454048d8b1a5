//! The plain values the [`ExecutionEngine`](crate::ExecutionEngine) trait speaks: what to build
//! on, the id of a build, what was built, and an import's verdict.

use std::fmt;

use haseq_messages::{BlockHash, Height};
use serde::{Deserialize, Serialize};

/// The id an engine gives a payload build (Engine API `payloadId`, 8 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct PayloadId(pub [u8; 8]);

impl fmt::Display for PayloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", hex::encode(self.0))
    }
}

impl fmt::Debug for PayloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<alloy_rpc_types_engine::PayloadId> for PayloadId {
    fn from(id: alloy_rpc_types_engine::PayloadId) -> Self {
        PayloadId(id.0.0)
    }
}

impl From<PayloadId> for alloy_rpc_types_engine::PayloadId {
    fn from(id: PayloadId) -> Self {
        alloy_rpc_types_engine::PayloadId::new(id.0)
    }
}

/// What to build on and with: the arguments of `forkchoiceUpdated` with payload attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildParams {
    /// The block to build on (becomes the engine's head, safe and finalized block: it is the
    /// applied head, hence committed).
    pub parent: BlockHash,
    /// The parent's height; the built payload must be at `parent_height + 1`.
    pub parent_height: Height,
    /// The new block's timestamp, seconds since the Unix epoch; above the parent's.
    pub timestamp: u64,
    /// Who receives the fees (`suggestedFeeRecipient`), 20 bytes.
    pub fee_recipient: [u8; 20],
}

/// A built payload, as `get_payload` returns it: the header fields haseq checks plus the
/// whole payload in the compact form that goes into the Raft log ([`crate::encode_payload`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltPayload {
    /// The block's hash (keccak of its header).
    pub block_hash: BlockHash,
    /// Its parent's hash.
    pub parent_hash: BlockHash,
    /// Its number (height).
    pub number: Height,
    /// Its timestamp, seconds since the Unix epoch.
    pub timestamp: u64,
    /// The execution payload, encoded by [`crate::encode_payload`]; `new_payload` takes it back.
    pub encoded: Vec<u8>,
}

/// An engine's verdict on an imported payload (`newPayload`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadStatus {
    /// Validated and stored (or already known). Not yet canonical: `set_head` does that.
    Valid,
    /// The payload is wrong (bad hash, wrong number, …) and nothing was stored. Final:
    /// importing the same bytes again gets the same answer.
    Invalid {
        /// The engine's explanation, with expected vs got where it applies.
        reason: String,
    },
    /// The engine cannot validate it yet, usually because it lacks the parent (Engine API
    /// `SYNCING`, and `ACCEPTED` for a side chain). Import the missing ancestors first; the
    /// embedded engine never fetches them by itself.
    Syncing,
}

impl PayloadStatus {
    /// Whether the payload was accepted.
    pub fn is_valid(&self) -> bool {
        matches!(self, PayloadStatus::Valid)
    }
}
