//! haseq-messages: the types every other crate speaks.
//!
//! - ids: `NodeId`, `Height`, `BlockHash`, newtypes so a height can't be passed as a term.
//! - the openraft type configuration `TC` and its node type `PeerNode`;
//! - `Block` and the Raft command `Command` with its apply outcome;
//! - the node-to-node wire protocol (`wire`): frames, handshake, RPC envelopes;
//! - membership changes (`members`), as operators ask for them and followers forward them.
//!
//! Not here: any I/O, actors, storage. Encoding is postcard (compact, binary, never JSON
//! on the hot path); decoding arbitrary bytes returns an error, never panics.

mod block;
mod ids;
pub mod members;
mod raft_types;
pub mod wire;

pub use block::{ApplyOutcome, Block, BlockRef, BlockSummary, Command, RejectReason};
pub use ids::{BlockHash, Height, NodeId, Term};
pub use raft_types::{PeerNode, TC};

/// Encode a value in the compact binary form used on disk and on the wire.
///
/// # Errors
/// Only if a value cannot be represented (postcard refuses, e.g., unknown-length sequences).
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_stdvec(value).map_err(|e| CodecError(e.to_string()))
}

/// Decode a value written by [`encode`]. Arbitrary input gives `Err`, never a panic.
///
/// # Errors
/// When the bytes are not a valid encoding of `T`, or trailing bytes remain.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_borrowed(bytes)
}

/// [`decode`] for a value that borrows from `bytes` (such as [`BlockRef`]).
///
/// # Errors
/// As [`decode`].
pub fn decode_borrowed<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| CodecError(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError(format!(
            "{} trailing bytes after value",
            rest.len()
        )));
    }
    Ok(value)
}

/// A value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("codec: {0}")]
pub struct CodecError(pub String);
