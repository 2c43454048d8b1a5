//! Identifier newtypes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's identity in the cluster, as the operator names it (`node-1`, `sequencer-eu-1`).
///
/// Stored in the Raft log and in membership, so it must never change once a cluster is
/// bootstrapped (operator guide, `raft.node_id`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct NodeId(pub String);

impl NodeId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        NodeId(s.to_string())
    }
}

impl From<String> for NodeId {
    fn from(s: String) -> Self {
        NodeId(s)
    }
}

/// openraft's storage suite builds node ids from integers; ours are names, so the
/// integer becomes `n<number>`, zero-padded so that the order of names follows the numbers.
impl From<u64> for NodeId {
    fn from(n: u64) -> Self {
        NodeId(format!("n{n:020}"))
    }
}

/// A block height. Height 0 is the genesis head that every chain starts from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Height(pub u64);

impl Height {
    /// The next height.
    pub fn next(self) -> Height {
        Height(self.0 + 1)
    }
}

impl fmt::Display for Height {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A Raft term: openraft's own term type is a bare `u64`, and haseq passes terms next to
/// heights and log indexes, so the newtype keeps one from being taken for another.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Term(pub u64);

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A 32-byte block hash, shown as `0x`-prefixed hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct BlockHash(pub [u8; 32]);

impl BlockHash {
    /// The all-zero hash: the parent of the first block when no genesis is configured.
    pub const ZERO: BlockHash = BlockHash([0u8; 32]);

    /// Parse `0x`-prefixed (or bare) hex of exactly 32 bytes.
    ///
    /// # Errors
    /// When the text is not 64 hex digits.
    pub fn from_hex(s: &str) -> Result<BlockHash, String> {
        let s = s.strip_prefix("0x").unwrap_or(s);
        let bytes = hex::decode(s).map_err(|e| format!("block hash {s:?}: {e}"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("block hash has {} bytes, expected 32", b.len()))?;
        Ok(BlockHash(arr))
    }
}

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", hex::encode(self.0))
    }
}

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_from_numbers_sort_like_numbers() {
        let a = NodeId::from(2u64);
        let b = NodeId::from(10u64);
        assert!(a < b, "{a} should sort before {b}");
    }

    #[test]
    fn block_hash_hex_round_trips() {
        let h = BlockHash([7u8; 32]);
        assert_eq!(BlockHash::from_hex(&h.to_string()).unwrap(), h);
        assert!(BlockHash::from_hex("0x1234").is_err());
        assert!(BlockHash::from_hex("zz").is_err());
    }
}
