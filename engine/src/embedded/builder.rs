//! How the embedded engine makes payloads: the fixed genesis and the next block on a parent,
//! optionally filled with synthetic transactions so that block sizes are realistic.

use alloy_consensus::EMPTY_ROOT_HASH;
use alloy_eips::eip4895::Withdrawal;
use alloy_primitives::{Address, B256, Bloom, Bytes, U256, keccak256};
use alloy_rpc_types_engine::{ExecutionPayloadV1, ExecutionPayloadV2, ExecutionPayloadV3};
use haseq_messages::BlockHash;

use crate::payload::{ExecPayload, to_b256};
use crate::types::PayloadId;

/// Gas limit of every embedded block (the mainnet order of magnitude; nothing is executed).
const GAS_LIMIT: u64 = 30_000_000;
/// Base fee of every embedded block, 1 gwei (no EIP-1559 dynamics: no gas is used).
const BASE_FEE_WEI: u64 = 1_000_000_000;
/// Extra data of every embedded block.
const EXTRA_DATA: &[u8] = b"haseq embedded";

/// What a build needs: the parent and the attributes.
pub(crate) struct BuildInput {
    pub(crate) parent: BlockHash,
    pub(crate) parent_number: u64,
    pub(crate) timestamp: u64,
    pub(crate) fee_recipient: Address,
    pub(crate) prev_randao: B256,
    pub(crate) parent_beacon_block_root: B256,
    pub(crate) withdrawals: Vec<Withdrawal>,
    pub(crate) txs_per_block: usize,
    pub(crate) tx_bytes: usize,
}

/// The sealed payload at `number` on `input.parent` carrying `transactions`.
fn payload(input: &BuildInput, number: u64, transactions: Vec<Bytes>) -> ExecPayload {
    let mut p = ExecPayload {
        payload: ExecutionPayloadV3 {
            payload_inner: ExecutionPayloadV2 {
                payload_inner: ExecutionPayloadV1 {
                    parent_hash: to_b256(input.parent),
                    fee_recipient: input.fee_recipient,
                    // Nothing executes, so the state and receipts stay those of an empty chain.
                    state_root: EMPTY_ROOT_HASH,
                    receipts_root: EMPTY_ROOT_HASH,
                    logs_bloom: Bloom::default(),
                    prev_randao: input.prev_randao,
                    block_number: number,
                    gas_limit: GAS_LIMIT,
                    gas_used: 0,
                    timestamp: input.timestamp,
                    extra_data: Bytes::from_static(EXTRA_DATA),
                    base_fee_per_gas: U256::from(BASE_FEE_WEI),
                    block_hash: B256::ZERO,
                    transactions,
                },
                withdrawals: input.withdrawals.clone(),
            },
            blob_gas_used: 0,
            excess_blob_gas: 0,
        },
        parent_beacon_block_root: input.parent_beacon_block_root,
        execution_requests: Vec::new(),
    };
    seal(&mut p);
    p
}

/// Sets the payload's block hash to its header's.
fn seal(p: &mut ExecPayload) {
    // Our own fields are always in range (extra data under 32 bytes, base fee in u64), so the
    // header conversion cannot fail; a failure here is a bug in this file.
    let hash = p
        .compute_block_hash()
        .unwrap_or_else(|e| panic!("embedded payload is not a valid header: {e}"));
    p.payload.payload_inner.payload_inner.block_hash = to_b256(hash);
}

/// The genesis block: height 0, timestamp 0, no transactions. Its hash is the same on every
/// node and every run.
pub(crate) fn genesis() -> ExecPayload {
    let input = BuildInput {
        parent: BlockHash::ZERO,
        parent_number: 0,
        timestamp: 0,
        fee_recipient: Address::ZERO,
        prev_randao: B256::ZERO,
        parent_beacon_block_root: B256::ZERO,
        withdrawals: Vec::new(),
        txs_per_block: 0,
        tx_bytes: 0,
    };
    payload(&input, 0, Vec::new())
}

/// The next block on `input.parent`, with its synthetic transactions.
pub(crate) fn build(input: &BuildInput) -> ExecPayload {
    let number = input.parent_number + 1;
    let txs = (0..input.txs_per_block)
        .map(|i| synthetic_tx(number, input.timestamp, i as u64, input.tx_bytes))
        .collect();
    payload(input, number, txs)
}

/// The id of a build: the same attributes on the same parent give the same id, so a retried
/// `forkchoiceUpdated` finds the payload already built.
pub(crate) fn payload_id(input: &BuildInput) -> PayloadId {
    let mut buf = Vec::with_capacity(32 + 8 + 20 + 32 + 32);
    buf.extend_from_slice(&input.parent.0);
    buf.extend_from_slice(&input.timestamp.to_be_bytes());
    buf.extend_from_slice(input.fee_recipient.as_slice());
    buf.extend_from_slice(input.prev_randao.as_slice());
    buf.extend_from_slice(input.parent_beacon_block_root.as_slice());
    for w in &input.withdrawals {
        buf.extend_from_slice(&w.index.to_be_bytes());
        buf.extend_from_slice(&w.validator_index.to_be_bytes());
        buf.extend_from_slice(w.address.as_slice());
        buf.extend_from_slice(&w.amount.to_be_bytes());
    }
    let h = keccak256(&buf);
    let mut id = [0u8; 8];
    id.copy_from_slice(&h[..8]);
    PayloadId(id)
}

/// Deterministic opaque bytes for transaction `index` of block `number`: the same block built
/// twice has the same transactions. Not a decodable transaction; the header's transactions
/// root covers them all the same.
fn synthetic_tx(number: u64, timestamp: u64, index: u64, len: usize) -> Bytes {
    // splitmix64: cheap, and good enough to keep the bytes from compressing to nothing.
    let mut state = number.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ timestamp.rotate_left(17)
        ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&z.to_le_bytes()[..take]);
    }
    Bytes::from(out)
}

/// Block 1 on the genesis block with `txs_per_block` synthetic transactions of `tx_bytes`.
#[cfg(test)]
pub(crate) fn test_block(txs_per_block: usize, tx_bytes: usize) -> ExecPayload {
    let g = genesis();
    build(&BuildInput {
        parent: g.block_hash(),
        parent_number: 0,
        timestamp: 1,
        fee_recipient: Address::ZERO,
        prev_randao: B256::ZERO,
        parent_beacon_block_root: B256::ZERO,
        withdrawals: Vec::new(),
        txs_per_block,
        tx_bytes,
    })
}
