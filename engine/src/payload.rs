//! The execution payload as haseq carries it: everything `engine_newPayloadV4` needs, its
//! compact binary form for the Raft log, and the block hash recomputed from its header.
//!
//! The compact form is postcard of a private mirror struct behind a format tag, not alloy's
//! serde form: alloy's serde writes hex strings (JSON's form), several times larger.

use alloy_consensus::Header;
use alloy_eips::eip4895::Withdrawal;
use alloy_eips::eip7685::Requests;
use alloy_primitives::{Address, B256, Bloom, Bytes, U256};
use alloy_rpc_types_engine::{ExecutionPayloadV1, ExecutionPayloadV2, ExecutionPayloadV3};
use haseq_messages::{BlockHash, Height};
use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::types::BuiltPayload;

/// An execution payload with the fields that travel beside it in `engine_newPayloadV4`
/// (parent beacon block root, execution requests). Blob versioned hashes are not kept: haseq
/// blocks carry no blobs, so they are always empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecPayload {
    /// The payload proper (Cancun layout, used unchanged by Prague and Osaka).
    pub payload: ExecutionPayloadV3,
    /// `parentBeaconBlockRoot`, hashed into the header.
    pub parent_beacon_block_root: B256,
    /// EIP-7685 requests; their hash goes into the header (`requests_hash`).
    pub execution_requests: Vec<Bytes>,
}

impl ExecPayload {
    fn v1(&self) -> &ExecutionPayloadV1 {
        &self.payload.payload_inner.payload_inner
    }

    /// The block hash the payload claims (not checked: see [`ExecPayload::compute_block_hash`]).
    pub fn block_hash(&self) -> BlockHash {
        from_b256(self.v1().block_hash)
    }

    /// The parent's hash.
    pub fn parent_hash(&self) -> BlockHash {
        from_b256(self.v1().parent_hash)
    }

    /// The block number.
    pub fn number(&self) -> Height {
        Height(self.v1().block_number)
    }

    /// The timestamp, seconds since the Unix epoch.
    pub fn timestamp(&self) -> u64 {
        self.v1().timestamp
    }

    /// The block header this payload stands for (Prague/Osaka layout).
    ///
    /// # Errors
    /// When the payload cannot be a block: extra data over 32 bytes, base fee over `u64`.
    pub fn header(&self) -> Result<Header, String> {
        Ok(self.block()?.header)
    }

    /// The whole block (header and body, transactions as raw bytes).
    ///
    /// # Errors
    /// As [`ExecPayload::header`].
    pub fn block(&self) -> Result<alloy_consensus::Block<Bytes>, String> {
        // alloy's conversion computes the transactions and withdrawals roots; the sidecar's
        // fields (beacon root, requests hash) are ours to add.
        let mut block = self
            .payload
            .clone()
            .into_block_raw()
            .map_err(|e| e.to_string())?;
        block.header.parent_beacon_block_root = Some(self.parent_beacon_block_root);
        block.header.requests_hash =
            Some(Requests::new(self.execution_requests.clone()).requests_hash());
        Ok(block)
    }

    /// The keccak hash of the header, recomputed from the payload's fields.
    ///
    /// # Errors
    /// As [`ExecPayload::header`].
    pub fn compute_block_hash(&self) -> Result<BlockHash, String> {
        Ok(from_b256(self.header()?.hash_slow()))
    }

    /// Checks that the claimed block hash is the header's, the engine's first check.
    ///
    /// # Errors
    /// A message with expected (recomputed) vs got (claimed) hash.
    pub fn verify_block_hash(&self) -> Result<(), String> {
        let computed = self.compute_block_hash()?;
        let claimed = self.block_hash();
        if computed != claimed {
            return Err(format!(
                "block {} hash mismatch: header hashes to {computed}, payload claims {claimed}",
                self.number()
            ));
        }
        Ok(())
    }

    /// The [`BuiltPayload`] for this payload (header fields plus the compact encoding).
    pub fn to_built(&self) -> BuiltPayload {
        BuiltPayload {
            block_hash: self.block_hash(),
            parent_hash: self.parent_hash(),
            number: self.number(),
            timestamp: self.timestamp(),
            encoded: encode_payload(self),
        }
    }
}

/// Encodes a payload in the compact binary form stored in the Raft log.
pub fn encode_payload(p: &ExecPayload) -> Vec<u8> {
    let v1 = p.v1();
    let wire = Wire::V1(CompactV1 {
        parent_hash: v1.parent_hash.0,
        fee_recipient: v1.fee_recipient.0.0,
        state_root: v1.state_root.0,
        receipts_root: v1.receipts_root.0,
        logs_bloom: v1.logs_bloom.0.0.to_vec(),
        prev_randao: v1.prev_randao.0,
        block_number: v1.block_number,
        gas_limit: v1.gas_limit,
        gas_used: v1.gas_used,
        timestamp: v1.timestamp,
        extra_data: v1.extra_data.to_vec(),
        base_fee_per_gas: v1.base_fee_per_gas.to_be_bytes::<32>(),
        block_hash: v1.block_hash.0,
        transactions: v1
            .transactions
            .iter()
            .map(|t| serde_bytes::ByteBuf::from(t.to_vec()))
            .collect(),
        withdrawals: p
            .payload
            .payload_inner
            .withdrawals
            .iter()
            .map(|w| (w.index, w.validator_index, w.address.0.0, w.amount))
            .collect(),
        blob_gas_used: p.payload.blob_gas_used,
        excess_blob_gas: p.payload.excess_blob_gas,
        parent_beacon_block_root: p.parent_beacon_block_root.0,
        execution_requests: p
            .execution_requests
            .iter()
            .map(|r| serde_bytes::ByteBuf::from(r.to_vec()))
            .collect(),
    });
    // A struct of integers, fixed arrays and byte vectors always encodes: postcard fails
    // only on sequences of unknown length, which this type has none of.
    haseq_messages::encode(&wire)
        .unwrap_or_else(|e| unreachable!("postcard cannot fail on CompactV1: {e}"))
}

/// Decodes bytes written by [`encode_payload`]. Arbitrary input gives `Err`, never a panic.
///
/// # Errors
/// [`EngineError::Decode`] when the bytes are not a payload in a known format.
pub fn decode_payload(bytes: &[u8]) -> Result<ExecPayload, EngineError> {
    let wire: Wire = haseq_messages::decode(bytes).map_err(|e| EngineError::Decode {
        method: "decode_payload",
        what: "execution payload",
        detail: e.to_string(),
    })?;
    let Wire::V1(c) = wire;
    let bloom: [u8; 256] = c
        .logs_bloom
        .try_into()
        .map_err(|b: Vec<u8>| EngineError::Decode {
            method: "decode_payload",
            what: "execution payload",
            detail: format!("logs bloom has {} bytes, expected 256", b.len()),
        })?;
    Ok(ExecPayload {
        payload: ExecutionPayloadV3 {
            payload_inner: ExecutionPayloadV2 {
                payload_inner: ExecutionPayloadV1 {
                    parent_hash: B256::from(c.parent_hash),
                    fee_recipient: Address::from(c.fee_recipient),
                    state_root: B256::from(c.state_root),
                    receipts_root: B256::from(c.receipts_root),
                    logs_bloom: Bloom::from(bloom),
                    prev_randao: B256::from(c.prev_randao),
                    block_number: c.block_number,
                    gas_limit: c.gas_limit,
                    gas_used: c.gas_used,
                    timestamp: c.timestamp,
                    extra_data: Bytes::from(c.extra_data),
                    base_fee_per_gas: U256::from_be_bytes(c.base_fee_per_gas),
                    block_hash: B256::from(c.block_hash),
                    transactions: c
                        .transactions
                        .into_iter()
                        .map(|t| Bytes::from(t.into_vec()))
                        .collect(),
                },
                withdrawals: c
                    .withdrawals
                    .into_iter()
                    .map(|(index, validator_index, address, amount)| Withdrawal {
                        index,
                        validator_index,
                        address: Address::from(address),
                        amount,
                    })
                    .collect(),
            },
            blob_gas_used: c.blob_gas_used,
            excess_blob_gas: c.excess_blob_gas,
        },
        parent_beacon_block_root: B256::from(c.parent_beacon_block_root),
        execution_requests: c
            .execution_requests
            .into_iter()
            .map(|r| Bytes::from(r.into_vec()))
            .collect(),
    })
}

/// The stored form, tagged so that a later fork's layout can be added as `V2` while old log
/// entries still decode.
#[derive(Serialize, Deserialize)]
enum Wire {
    V1(CompactV1),
}

/// The fields of [`ExecPayload`] as plain integers and bytes (postcard writes `u64` as a
/// varint and byte vectors with a length prefix).
#[derive(Serialize, Deserialize)]
struct CompactV1 {
    parent_hash: [u8; 32],
    fee_recipient: [u8; 20],
    state_root: [u8; 32],
    receipts_root: [u8; 32],
    /// 256 bytes; serde derives arrays only up to 32.
    #[serde(with = "serde_bytes")]
    logs_bloom: Vec<u8>,
    prev_randao: [u8; 32],
    block_number: u64,
    gas_limit: u64,
    gas_used: u64,
    timestamp: u64,
    #[serde(with = "serde_bytes")]
    extra_data: Vec<u8>,
    base_fee_per_gas: [u8; 32],
    block_hash: [u8; 32],
    transactions: Vec<serde_bytes::ByteBuf>,
    /// (index, validator index, address, amount in gwei).
    withdrawals: Vec<(u64, u64, [u8; 20], u64)>,
    blob_gas_used: u64,
    excess_blob_gas: u64,
    parent_beacon_block_root: [u8; 32],
    execution_requests: Vec<serde_bytes::ByteBuf>,
}

/// haseq's hash type to alloy's.
pub(crate) fn to_b256(h: BlockHash) -> B256 {
    B256::from(h.0)
}

/// alloy's hash type to haseq's.
pub(crate) fn from_b256(h: B256) -> BlockHash {
    BlockHash(h.0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A payload with a correct hash, `txs` transactions of `tx_bytes` bytes.
    pub(crate) fn sample(number: u64, parent: B256, txs: usize, tx_bytes: usize) -> ExecPayload {
        let mut p = ExecPayload {
            payload: ExecutionPayloadV3 {
                payload_inner: ExecutionPayloadV2 {
                    payload_inner: ExecutionPayloadV1 {
                        parent_hash: parent,
                        fee_recipient: Address::repeat_byte(0x11),
                        state_root: B256::repeat_byte(0x22),
                        receipts_root: B256::repeat_byte(0x33),
                        logs_bloom: Bloom::default(),
                        prev_randao: B256::repeat_byte(0x44),
                        block_number: number,
                        gas_limit: 30_000_000,
                        gas_used: 21_000,
                        timestamp: 1_700_000_000 + number,
                        extra_data: Bytes::from_static(b"haseq"),
                        base_fee_per_gas: U256::from(7u64),
                        block_hash: B256::ZERO,
                        transactions: (0..txs)
                            .map(|i| Bytes::from(vec![(i % 251) as u8; tx_bytes]))
                            .collect(),
                    },
                    withdrawals: vec![Withdrawal {
                        index: 1,
                        validator_index: 2,
                        address: Address::repeat_byte(0x55),
                        amount: 3,
                    }],
                },
                blob_gas_used: 0,
                excess_blob_gas: 0,
            },
            parent_beacon_block_root: B256::repeat_byte(0x66),
            execution_requests: vec![],
        };
        let hash = p.compute_block_hash().expect("hash");
        p.payload.payload_inner.payload_inner.block_hash = to_b256(hash);
        p
    }

    #[test]
    fn encoding_round_trips_and_keeps_the_hash() {
        let p = sample(5, B256::repeat_byte(9), 3, 100);
        let bytes = encode_payload(&p);
        let back = decode_payload(&bytes).expect("decode");
        assert_eq!(back, p);
        back.verify_block_hash().expect("hash still verifies");
    }

    #[test]
    fn a_changed_field_breaks_the_hash() {
        let mut p = sample(5, B256::repeat_byte(9), 2, 10);
        p.payload.payload_inner.payload_inner.transactions[1] = Bytes::from_static(b"other");
        let err = p
            .verify_block_hash()
            .expect_err("tx change must change the root");
        assert!(err.contains("hash mismatch"), "{err}");
    }

    #[test]
    fn arbitrary_bytes_do_not_panic() {
        for len in 0..64usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let _ = decode_payload(&bytes);
        }
        let mut good = encode_payload(&sample(1, B256::ZERO, 1, 8));
        good.truncate(good.len() - 3);
        assert!(decode_payload(&good).is_err());
    }

    #[test]
    fn compact_form_is_near_the_raw_size() {
        let p = sample(1, B256::ZERO, 10, 10_240);
        let bytes = encode_payload(&p);
        assert!(bytes.len() < 10 * 10_240 + 1024, "{} bytes", bytes.len());
    }
}

/// Checks the hash path against the spec's test chain, written by a real client: every block
/// whose header has this crate's layout (Prague/Osaka, no execution requests) must hash the
/// same when rebuilt from its payload fields.
#[cfg(test)]
mod spec_chain_tests {
    use alloy_consensus::Header;
    use alloy_eips::eip7685::EMPTY_REQUESTS_HASH;
    use alloy_primitives::{B256, Bytes};
    use alloy_rlp::Decodable;
    use alloy_rpc_types_engine::{ExecutionPayloadV1, ExecutionPayloadV2, ExecutionPayloadV3};

    use super::{ExecPayload, decode_payload, encode_payload};

    /// One block of the RLP chain: header, transactions as their EIP-2718 bytes, withdrawals.
    fn decode_block(buf: &mut &[u8]) -> (Header, Vec<Bytes>, Vec<alloy_eips::eip4895::Withdrawal>) {
        let outer = alloy_rlp::Header::decode(buf).expect("block list");
        assert!(outer.list);
        let (mut body, rest) = buf.split_at(outer.payload_length);
        *buf = rest;
        let header = Header::decode(&mut body).expect("header");
        let txs_list = alloy_rlp::Header::decode(&mut body).expect("txs list");
        let (mut txs_buf, after) = body.split_at(txs_list.payload_length);
        body = after;
        let mut txs = Vec::new();
        while !txs_buf.is_empty() {
            let start = txs_buf;
            let h = alloy_rlp::Header::decode(&mut txs_buf).expect("tx");
            let header_len = start.len() - txs_buf.len();
            if h.list {
                // Legacy: the transaction is the whole RLP list.
                txs.push(Bytes::copy_from_slice(
                    &start[..header_len + h.payload_length],
                ));
            } else {
                // Typed: an RLP string holding type || payload.
                txs.push(Bytes::copy_from_slice(&txs_buf[..h.payload_length]));
            }
            txs_buf = &txs_buf[h.payload_length..];
        }
        let uncles = alloy_rlp::Header::decode(&mut body).expect("uncles");
        body = &body[uncles.payload_length..];
        let withdrawals = if body.is_empty() {
            Vec::new()
        } else {
            Vec::<alloy_eips::eip4895::Withdrawal>::decode(&mut body).expect("withdrawals")
        };
        (header, txs, withdrawals)
    }

    #[test]
    fn rebuilt_payloads_hash_like_the_spec_test_chain() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/engine-api-spec/tests/chain.rlp"
        );
        let Ok(bytes) = std::fs::read(path) else {
            eprintln!("SKIP: {path} not found (shared/ is not beside the repository)");
            return;
        };
        let mut buf = bytes.as_slice();
        let (mut total, mut checked, mut with_txs) = (0, 0, 0);
        while !buf.is_empty() {
            let (header, txs, withdrawals) = decode_block(&mut buf);
            total += 1;
            if header.requests_hash != Some(EMPTY_REQUESTS_HASH) {
                continue; // Cancun layout, or requests we cannot rebuild from the block.
            }
            let expected = header.hash_slow();
            let p = ExecPayload {
                payload: ExecutionPayloadV3 {
                    payload_inner: ExecutionPayloadV2 {
                        payload_inner: ExecutionPayloadV1 {
                            parent_hash: header.parent_hash,
                            fee_recipient: header.beneficiary,
                            state_root: header.state_root,
                            receipts_root: header.receipts_root,
                            logs_bloom: header.logs_bloom,
                            prev_randao: header.mix_hash,
                            block_number: header.number,
                            gas_limit: header.gas_limit,
                            gas_used: header.gas_used,
                            timestamp: header.timestamp,
                            extra_data: header.extra_data.clone(),
                            base_fee_per_gas: header
                                .base_fee_per_gas
                                .unwrap_or_default()
                                .try_into()
                                .expect("fee"),
                            block_hash: expected,
                            transactions: txs,
                        },
                        withdrawals,
                    },
                    blob_gas_used: header.blob_gas_used.unwrap_or_default(),
                    excess_blob_gas: header.excess_blob_gas.unwrap_or_default(),
                },
                parent_beacon_block_root: header.parent_beacon_block_root.unwrap_or(B256::ZERO),
                execution_requests: Vec::new(),
            };
            p.verify_block_hash()
                .unwrap_or_else(|e| panic!("block {}: {e}", header.number));
            // And through the compact form.
            decode_payload(&encode_payload(&p))
                .expect("decode")
                .verify_block_hash()
                .expect("hash after round trip");
            checked += 1;
            with_txs += usize::from(
                !p.payload
                    .payload_inner
                    .payload_inner
                    .transactions
                    .is_empty(),
            );
        }
        eprintln!("checked {checked} of {total} blocks, {with_txs} with transactions");
        assert!(
            checked > 0,
            "no Prague/Osaka block without requests in {total} blocks"
        );
    }
}
