//! What a fetched range of blocks must satisfy before anything is done with it. Peers are not
//! trusted: a range that breaks a rule costs its peer a penalty.
//!
//! Two levels:
//! - [`check_range`] (in the P2P actor, cheap): the heights asked for, consecutive, each
//!   block's parent the block before it;
//! - [`verify_payloads`] (in the Syncer, on a blocking thread: it hashes every header): each
//!   block's payload is what its hash says, at its height, on its parent. The link to the
//!   committed chain above is then checked by the block store as it stores the range.

use haseq_messages::{Block, Height};

/// Why a peer was penalised; the `reason` label of `haseq_p2p_peer_penalties_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PenaltyReason {
    /// Blocks other than those asked for (wrong first height, too many).
    BadRange,
    /// Consecutive blocks that do not name each other as parent.
    BrokenLink,
    /// A range that does not hash-link to the committed chain above it.
    NotOnChain,
    /// A payload whose contents do not hash to the block's hash.
    BadPayload,
}

impl PenaltyReason {
    /// Every reason, for creating each label's series at 0.
    pub const ALL: [PenaltyReason; 4] = [
        PenaltyReason::BadRange,
        PenaltyReason::BrokenLink,
        PenaltyReason::NotOnChain,
        PenaltyReason::BadPayload,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            PenaltyReason::BadRange => "bad_range",
            PenaltyReason::BrokenLink => "broken_link",
            PenaltyReason::NotOnChain => "not_on_chain",
            PenaltyReason::BadPayload => "bad_payload",
        }
    }
}

impl std::fmt::Display for PenaltyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A range that breaks a rule: why, and the details for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Violation {
    /// The rule broken.
    pub reason: PenaltyReason,
    /// Heights and hashes involved.
    pub detail: String,
}

fn violation(reason: PenaltyReason, detail: String) -> Violation {
    Violation { reason, detail }
}

/// Checks an answer to "blocks `from..=to`": a non-empty prefix of that range, each block's
/// parent the block before it. (An empty answer means the peer lacks `from`: no violation.)
///
/// # Errors
/// The first rule broken.
pub fn check_range(from: Height, to: Height, blocks: &[Block]) -> Result<(), Violation> {
    let Some(first) = blocks.first() else {
        return Ok(());
    };
    if first.height != from {
        return Err(violation(
            PenaltyReason::BadRange,
            format!("asked from {from}, answer starts at {}", first.height),
        ));
    }
    let asked = to.0.saturating_sub(from.0).saturating_add(1);
    if blocks.len() as u64 > asked {
        return Err(violation(
            PenaltyReason::BadRange,
            format!("asked {from}..={to}, got {} blocks", blocks.len()),
        ));
    }
    for pair in blocks.windows(2) {
        let (below, above) = (&pair[0], &pair[1]);
        if above.height != below.height.next() {
            return Err(violation(
                PenaltyReason::BadRange,
                format!("block {} follows block {}", above.height, below.height),
            ));
        }
        if above.parent_hash != below.hash {
            return Err(violation(
                PenaltyReason::BrokenLink,
                format!(
                    "block {} names parent {}, block {} is {}",
                    above.height, above.parent_hash, below.height, below.hash
                ),
            ));
        }
    }
    Ok(())
}

/// Checks that each block's payload is the block its header fields say: decoded, at the
/// block's height, on its parent, and hashing to its hash (the engine's first check on
/// import, done before the block is stored so a bad one never reaches the store).
///
/// # Errors
/// The first block whose payload breaks a rule.
pub fn verify_payloads(blocks: &[Block]) -> Result<(), Violation> {
    for b in blocks {
        let bad = |detail: String| violation(PenaltyReason::BadPayload, detail);
        let p = haseq_engine::decode_payload(&b.payload)
            .map_err(|e| bad(format!("block {}: payload does not decode: {e}", b.height)))?;
        if p.number() != b.height || p.block_hash() != b.hash {
            return Err(bad(format!(
                "block {} {}: payload is block {} {}",
                b.height,
                b.hash,
                p.number(),
                p.block_hash()
            )));
        }
        // Height 1's parent is the engine's genesis, which the chain calls BlockHash::ZERO.
        if b.height.0 > 1 && p.parent_hash() != b.parent_hash {
            return Err(bad(format!(
                "block {}: payload's parent {} differs from the block's {}",
                b.height,
                p.parent_hash(),
                b.parent_hash
            )));
        }
        p.verify_block_hash().map_err(bad)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use haseq_messages::{BlockHash, NodeId};

    fn chain(from: u64, n: u64) -> Vec<Block> {
        let mut parent = BlockHash([from as u8; 32]);
        (from..from + n)
            .map(|h| {
                let mut hash = [0u8; 32];
                hash[..8].copy_from_slice(&h.to_be_bytes());
                hash[31] = 0xaa;
                let b = Block {
                    height: Height(h),
                    parent_hash: parent,
                    hash: BlockHash(hash),
                    timestamp: h,
                    proposer: NodeId("node-1".into()),
                    payload: Default::default(),
                };
                parent = b.hash;
                b
            })
            .collect()
    }

    /// What, asked from, asked to, the answer, the penalty expected.
    type Case = (&'static str, u64, u64, Vec<Block>, Option<PenaltyReason>);

    #[test]
    fn ranges_are_checked_rule_by_rule() {
        let good = chain(10, 5);
        let cases: Vec<Case> = vec![
            ("whole range", 10, 14, good.clone(), None),
            ("a prefix", 10, 20, good.clone(), None),
            ("empty: the peer lacks it", 10, 14, vec![], None),
            (
                "wrong start",
                9,
                14,
                good.clone(),
                Some(PenaltyReason::BadRange),
            ),
            (
                "too many",
                10,
                12,
                good.clone(),
                Some(PenaltyReason::BadRange),
            ),
            (
                "a height skipped",
                10,
                14,
                [&good[..2], &good[3..]].concat(),
                Some(PenaltyReason::BadRange),
            ),
            (
                "a broken link",
                10,
                14,
                {
                    let mut c = good.clone();
                    c[3].parent_hash = BlockHash([7; 32]);
                    c
                },
                Some(PenaltyReason::BrokenLink),
            ),
        ];
        for (what, from, to, blocks, want) in cases {
            let got = check_range(Height(from), Height(to), &blocks)
                .err()
                .map(|v| v.reason);
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn a_payload_that_is_not_its_block_is_refused() {
        // Synthetic blocks carry no payload at all: it does not decode.
        let v = verify_payloads(&chain(1, 2)).unwrap_err();
        assert_eq!(v.reason, PenaltyReason::BadPayload);
        assert!(verify_payloads(&[]).is_ok());
    }
}
