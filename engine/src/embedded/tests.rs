//! Embedded engine tests: chain building, persistence, validation, fault knobs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::payload::{encode_payload, to_b256};

fn open(dir: &std::path::Path) -> EmbeddedEngine {
    EmbeddedEngine::open(EmbeddedConfig::new(dir)).expect("open")
}

/// Builds, fetches, imports and makes canonical `n` blocks on the current head.
pub(crate) async fn extend(engine: &dyn ExecutionEngine, n: u64) -> Vec<BuiltPayload> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (height, hash) = engine.head().await.expect("head");
        let id = engine
            .build_payload(BuildParams {
                parent: hash,
                parent_height: height,
                timestamp: 1_000 + height.0 + 1,
                fee_recipient: [0xfe; 20],
            })
            .await
            .expect("build");
        let built = engine.get_payload(id).await.expect("get");
        assert_eq!(built.parent_hash, hash);
        assert_eq!(built.number, height.next());
        let status = engine.new_payload(&built.encoded).await.expect("import");
        assert_eq!(status, PayloadStatus::Valid);
        engine
            .set_head(built.block_hash, built.block_hash, built.block_hash)
            .await
            .expect("set head");
        out.push(built);
    }
    out
}

#[tokio::test]
async fn builds_a_chain_of_100_blocks_with_real_hashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    assert_eq!(
        engine.head().await.expect("head"),
        (Height(0), engine.genesis_hash())
    );
    let blocks = extend(&engine, 100).await;
    assert_eq!(
        engine.head().await.expect("head"),
        (Height(100), blocks[99].block_hash)
    );
    for (i, b) in blocks.iter().enumerate() {
        let p = decode_payload(&b.encoded).expect("decode");
        assert_eq!(p.compute_block_hash().expect("hash"), b.block_hash);
        assert_eq!(
            engine
                .block_hash_at(Height(i as u64 + 1))
                .await
                .expect("at"),
            Some(b.block_hash)
        );
    }
    assert_eq!(engine.block_hash_at(Height(101)).await.expect("at"), None);
}

#[tokio::test]
async fn genesis_is_fixed_across_directories() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    assert_eq!(open(a.path()).genesis_hash(), open(b.path()).genesis_hash());
    assert_ne!(open(a.path()).genesis_hash(), BlockHash::ZERO);
}

#[tokio::test]
async fn reopen_keeps_the_head() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let blocks = extend(&engine, 10).await;
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(
        engine.head().await.expect("head"),
        (Height(10), blocks[9].block_hash)
    );
    extend(&engine, 1).await;
}

#[tokio::test]
async fn new_payload_does_not_move_the_head() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let (h, hash) = engine.head().await.expect("head");
    let id = engine
        .build_payload(BuildParams {
            parent: hash,
            parent_height: h,
            timestamp: 5,
            fee_recipient: [0; 20],
        })
        .await
        .expect("build");
    let built = engine.get_payload(id).await.expect("get");
    assert!(
        engine
            .new_payload(&built.encoded)
            .await
            .expect("import")
            .is_valid()
    );
    assert_eq!(engine.head().await.expect("head"), (h, hash));
    assert_eq!(engine.block_hash_at(Height(1)).await.expect("at"), None);
}

#[tokio::test]
async fn wrong_hash_is_rejected_and_nothing_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    extend(&engine, 3).await;
    let (h, hash) = engine.head().await.expect("head");
    let id = engine
        .build_payload(BuildParams {
            parent: hash,
            parent_height: h,
            timestamp: 10_000,
            fee_recipient: [1; 20],
        })
        .await
        .expect("build");
    let built = engine.get_payload(id).await.expect("get");
    let mut p = decode_payload(&built.encoded).expect("decode");
    let forged = BlockHash([0xab; 32]);
    p.payload.payload_inner.payload_inner.block_hash = to_b256(forged);
    let status = engine
        .new_payload(&encode_payload(&p))
        .await
        .expect("answer");
    let PayloadStatus::Invalid { reason } = status else {
        panic!("expected Invalid, got {status:?}");
    };
    assert!(reason.contains(&built.block_hash.to_string()), "{reason}");
    assert!(reason.contains(&forged.to_string()), "{reason}");
    // Nothing stored: the forged hash cannot become the head.
    let err = engine
        .set_head(forged, forged, forged)
        .await
        .expect_err("unknown");
    assert!(matches!(err, EngineError::Syncing { .. }), "{err}");
    assert_eq!(engine.head().await.expect("head"), (h, hash));
}

#[tokio::test]
async fn unknown_parent_and_wrong_height_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let other = tempfile::tempdir().expect("tempdir");
    let other = open(other.path());
    let foreign = extend(&other, 2).await;
    // Block 2 of another chain: its parent (that chain's block 1) is unknown here.
    let status = engine
        .new_payload(&foreign[1].encoded)
        .await
        .expect("answer");
    assert_eq!(status, PayloadStatus::Syncing);
    // Build on a known parent with the wrong height.
    let err = engine
        .build_payload(BuildParams {
            parent: engine.genesis_hash(),
            parent_height: Height(7),
            timestamp: 1,
            fee_recipient: [0; 20],
        })
        .await
        .expect_err("wrong height");
    assert!(
        matches!(err, EngineError::Rejected { .. }) && err.to_string().contains("expected 7"),
        "{err}"
    );
    let err = engine
        .build_payload(BuildParams {
            parent: BlockHash([9; 32]),
            parent_height: Height(0),
            timestamp: 1,
            fee_recipient: [0; 20],
        })
        .await
        .expect_err("unknown parent");
    assert!(matches!(err, EngineError::Syncing { .. }), "{err}");
    let err = engine
        .get_payload(PayloadId([3; 8]))
        .await
        .expect_err("unknown id");
    assert!(matches!(err, EngineError::UnknownPayload { .. }), "{err}");
}

#[tokio::test]
async fn head_can_be_set_back_and_forward_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let blocks = extend(&engine, 10).await;
    let b5 = blocks[4].block_hash;
    engine.set_head(b5, b5, b5).await.expect("back");
    assert_eq!(engine.head().await.expect("head"), (Height(5), b5));
    assert_eq!(engine.block_hash_at(Height(6)).await.expect("at"), None);
    let b10 = blocks[9].block_hash;
    engine.set_head(b10, b5, b5).await.expect("forward");
    assert_eq!(engine.head().await.expect("head"), (Height(10), b10));
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(
            engine
                .block_hash_at(Height(i as u64 + 1))
                .await
                .expect("at"),
            Some(b.block_hash)
        );
    }
    // A finalized block that is not an ancestor of the head: refused, nothing changed.
    let err = engine
        .set_head(b5, b5, b10)
        .await
        .expect_err("finalized above head");
    assert!(matches!(err, EngineError::Rejected { .. }), "{err}");
    assert_eq!(engine.head().await.expect("head"), (Height(10), b10));
}

#[tokio::test]
async fn losing_the_newest_blocks_on_restart_drops_exactly_n() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let blocks = extend(&engine, 20).await;
    engine
        .set_faults(Faults {
            lose_newest_on_restart: 5,
            ..Faults::default()
        })
        .await
        .expect("set");
    assert_eq!(engine.pending_lose_newest().expect("read"), 5);
    drop(engine);

    let engine = open(dir.path());
    assert_eq!(
        engine.head().await.expect("head"),
        (Height(15), blocks[14].block_hash)
    );
    assert_eq!(engine.block_hash_at(Height(16)).await.expect("at"), None);
    // The bodies are gone too: block 17 no longer has its parent.
    assert_eq!(
        engine
            .new_payload(&blocks[16].encoded)
            .await
            .expect("answer"),
        PayloadStatus::Syncing
    );
    // One-shot: the knob is cleared once applied.
    assert_eq!(engine.pending_lose_newest().expect("read"), 0);
    // The hole refills from the same blocks.
    for b in &blocks[15..] {
        assert!(
            engine
                .new_payload(&b.encoded)
                .await
                .expect("import")
                .is_valid()
        );
    }
    let top = blocks[19].block_hash;
    engine.set_head(top, top, top).await.expect("set head");
    assert_eq!(engine.head().await.expect("head"), (Height(20), top));
    drop(engine);
    // A further restart loses nothing.
    let engine = open(dir.path());
    assert_eq!(engine.head().await.expect("head"), (Height(20), top));
}

#[tokio::test]
async fn lose_newest_from_config_applies_on_the_next_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = EmbeddedConfig::new(dir.path());
    config.faults.lose_newest_on_restart = 3;
    let engine = EmbeddedEngine::open(config).expect("open");
    let blocks = extend(&engine, 4).await;
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(
        engine.head().await.expect("head"),
        (Height(1), blocks[0].block_hash)
    );
}

#[tokio::test]
async fn fail_knob_fails_every_call_until_cleared() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let blocks = extend(&engine, 1).await;
    engine
        .set_faults(Faults {
            fail: true,
            ..Faults::default()
        })
        .await
        .expect("set");
    let fault = |r: &EngineError| matches!(r, EngineError::Fault { .. });
    assert!(fault(&engine.head().await.expect_err("head")));
    assert!(fault(
        &engine.block_hash_at(Height(1)).await.expect_err("at")
    ));
    assert!(fault(
        &engine
            .new_payload(&blocks[0].encoded)
            .await
            .expect_err("new")
    ));
    let h = blocks[0].block_hash;
    assert!(fault(&engine.set_head(h, h, h).await.expect_err("set")));
    assert!(fault(
        &engine
            .build_payload(BuildParams {
                parent: h,
                parent_height: Height(1),
                timestamp: 99_999,
                fee_recipient: [0; 20],
            })
            .await
            .expect_err("build")
    ));
    assert!(fault(
        &engine
            .get_payload(PayloadId([0; 8]))
            .await
            .expect_err("get")
    ));
    engine.set_faults(Faults::default()).await.expect("clear");
    extend(&engine, 1).await;
}

#[tokio::test]
async fn delay_knob_slows_each_imported_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(open(dir.path()));
    let source = tempfile::tempdir().expect("tempdir");
    let source = open(source.path());
    let blocks = extend(&source, 3).await;
    let delay = Duration::from_millis(200);
    engine
        .set_faults(Faults {
            delay_per_block: delay,
            ..Faults::default()
        })
        .await
        .expect("set");
    let start = Instant::now();
    for b in &blocks {
        assert!(
            engine
                .new_payload(&b.encoded)
                .await
                .expect("import")
                .is_valid()
        );
    }
    assert!(start.elapsed() >= delay * 3, "{:?}", start.elapsed());
    engine.set_faults(Faults::default()).await.expect("clear");
    let start = Instant::now();
    extend(engine.as_ref(), 3).await;
    assert!(start.elapsed() < delay * 3, "{:?}", start.elapsed());
}

#[tokio::test]
async fn synthetic_transactions_fill_blocks_and_are_hashed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = EmbeddedConfig::new(dir.path());
    config.txs_per_block = 10;
    config.tx_bytes = 1024;
    let engine = EmbeddedEngine::open(config).expect("open");
    let blocks = extend(&engine, 2).await;
    for b in &blocks {
        assert!(b.encoded.len() > 10 * 1024, "{} bytes", b.encoded.len());
        let p = decode_payload(&b.encoded).expect("decode");
        assert_eq!(p.payload.payload_inner.payload_inner.transactions.len(), 10);
        p.verify_block_hash().expect("hash covers the transactions");
    }
    let mut too_big = EmbeddedConfig::new(dir.path());
    too_big.txs_per_block = 1 << 20;
    too_big.tx_bytes = 1 << 20;
    assert!(matches!(
        EmbeddedEngine::open(too_big),
        Err(EngineError::Config { .. })
    ));
}

#[tokio::test]
async fn equal_timestamps_are_accepted_for_sub_second_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    for _ in 0..3 {
        let (height, hash) = engine.head().await.expect("head");
        let id = engine
            .build_payload(BuildParams {
                parent: hash,
                parent_height: height,
                timestamp: 1_000,
                fee_recipient: [0; 20],
            })
            .await
            .expect("build");
        let built = engine.get_payload(id).await.expect("get");
        assert!(
            engine
                .new_payload(&built.encoded)
                .await
                .expect("import")
                .is_valid()
        );
        let h = built.block_hash;
        engine.set_head(h, h, h).await.expect("set head");
    }
    let (height, hash) = engine.head().await.expect("head");
    assert_eq!(height, Height(3));
    // Going back in time is still refused.
    let err = engine
        .build_payload(BuildParams {
            parent: hash,
            parent_height: height,
            timestamp: 999,
            fee_recipient: [0; 20],
        })
        .await
        .expect_err("older than parent");
    assert!(matches!(err, EngineError::Rejected { .. }), "{err}");
}

#[tokio::test]
async fn unset_safe_and_finalized_follow_a_head_moved_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let blocks = extend(&engine, 6).await;
    let b3 = blocks[2].block_hash;
    engine
        .set_head(b3, BlockHash::ZERO, BlockHash::ZERO)
        .await
        .expect("back");
    let safe = engine
        .canonical_block("test", BlockRef::Safe)
        .expect("read")
        .expect("safe block");
    let finalized = engine
        .canonical_block("test", BlockRef::Finalized)
        .expect("read")
        .expect("finalized block");
    assert_eq!(safe.block_hash(), b3);
    assert_eq!(finalized.block_hash(), b3);
}

/// Builds one block on the engine's head without importing it.
async fn build_next(engine: &dyn ExecutionEngine, timestamp: u64) -> BuiltPayload {
    let (height, hash) = engine.head().await.expect("head");
    let id = engine
        .build_payload(BuildParams {
            parent: hash,
            parent_height: height,
            timestamp,
            fee_recipient: [2; 20],
        })
        .await
        .expect("build");
    engine.get_payload(id).await.expect("get")
}

#[tokio::test]
async fn import_and_set_head_imports_and_moves_the_head_in_one_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    extend(&engine, 2).await;
    // A block built here: building keeps it in memory only, so this imports it.
    let built = build_next(&engine, 5_000).await;
    let status = engine
        .import_and_set_head(&built.encoded, built.block_hash)
        .await
        .expect("import as head");
    assert_eq!(status, PayloadStatus::Valid);
    assert_eq!(
        engine.head().await.expect("head"),
        (Height(3), built.block_hash)
    );
    // Safe and finalized moved with it.
    let safe = engine
        .canonical_block("test", BlockRef::Safe)
        .expect("safe")
        .expect("some");
    let fin = engine
        .canonical_block("test", BlockRef::Finalized)
        .expect("finalized")
        .expect("some");
    assert_eq!(safe.block_hash(), built.block_hash);
    assert_eq!(fin.block_hash(), built.block_hash);
    // Persisted: a reopen finds the block and the head, and the block is the one imported,
    // byte for byte (the import stores the bytes it was given).
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(
        engine.head().await.expect("head"),
        (Height(3), built.block_hash)
    );
    let stored = engine
        .canonical_block("test", BlockRef::Number(Height(3)))
        .expect("read")
        .expect("stored");
    assert_eq!(encode_payload(&stored), built.encoded);
    // The same block again (a replay after a restart) only confirms the head.
    let status = engine
        .import_and_set_head(&built.encoded, built.block_hash)
        .await
        .expect("again");
    assert_eq!(status, PayloadStatus::Valid);
    assert_eq!(
        engine.head().await.expect("head"),
        (Height(3), built.block_hash)
    );
}

#[tokio::test]
async fn import_and_set_head_refuses_forged_unknown_and_mismatched_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    extend(&engine, 2).await;
    let before = engine.head().await.expect("head");
    let built = build_next(&engine, 6_000).await;

    // The head named is not the payload's hash: refused before anything is read or written.
    let err = engine
        .import_and_set_head(&built.encoded, BlockHash([7; 32]))
        .await
        .expect_err("mismatch");
    assert!(matches!(err, EngineError::Mismatch { .. }), "{err}");

    // A forged hash: Invalid, nothing stored, the head stays.
    let mut p = decode_payload(&built.encoded).expect("decode");
    let forged = BlockHash([0xcd; 32]);
    p.payload.payload_inner.payload_inner.block_hash = to_b256(forged);
    let status = engine
        .import_and_set_head(&encode_payload(&p), forged)
        .await
        .expect("answer");
    assert!(
        matches!(status, PayloadStatus::Invalid { .. }),
        "{status:?}"
    );
    assert_eq!(engine.head().await.expect("head"), before);
    assert_eq!(engine.block_hash_at(Height(3)).await.expect("at"), None);

    // The block this engine built, with its hash kept but its contents changed: not taken
    // for the one built here, so its hash is checked, and refused.
    let mut p = decode_payload(&built.encoded).expect("decode");
    p.payload.payload_inner.payload_inner.timestamp += 1;
    let status = engine
        .import_and_set_head(&encode_payload(&p), built.block_hash)
        .await
        .expect("answer");
    assert!(
        matches!(status, PayloadStatus::Invalid { .. }),
        "{status:?}"
    );
    assert_eq!(engine.head().await.expect("head"), before);

    // A block on an unknown parent cannot become the head: Syncing, as newPayload then
    // forkchoiceUpdated would answer.
    // (Another chain: same genesis, other timestamps, so other blocks.)
    let other = tempfile::tempdir().expect("tempdir");
    let other = open(other.path());
    let f1 = build_next(&other, 9_000).await;
    other
        .import_and_set_head(&f1.encoded, f1.block_hash)
        .await
        .expect("other chain 1");
    let f2 = build_next(&other, 9_001).await;
    let err = engine
        .import_and_set_head(&f2.encoded, f2.block_hash)
        .await
        .expect_err("unknown parent");
    assert!(matches!(err, EngineError::Syncing { .. }), "{err}");
    assert_eq!(engine.head().await.expect("head"), before);

    // The genuine block still imports afterwards.
    let status = engine
        .import_and_set_head(&built.encoded, built.block_hash)
        .await
        .expect("genuine");
    assert_eq!(status, PayloadStatus::Valid);
    assert_eq!(engine.head().await.expect("head").0, Height(3));
}

#[tokio::test]
async fn import_and_set_head_obeys_the_fault_knobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let built = build_next(&engine, 7_000).await;
    engine
        .set_faults(Faults {
            fail: true,
            ..Faults::default()
        })
        .await
        .expect("fail knob");
    let err = engine
        .import_and_set_head(&built.encoded, built.block_hash)
        .await
        .expect_err("failing engine");
    assert!(matches!(err, EngineError::Fault { .. }), "{err}");
    let delay = Duration::from_millis(150);
    engine
        .set_faults(Faults {
            delay_per_block: delay,
            ..Faults::default()
        })
        .await
        .expect("delay knob");
    let t = Instant::now();
    engine
        .import_and_set_head(&built.encoded, built.block_hash)
        .await
        .expect("slow import");
    assert!(t.elapsed() >= delay, "took {:?}", t.elapsed());
    assert_eq!(engine.head().await.expect("head").0, Height(1));
}

#[tokio::test]
async fn a_build_on_the_current_head_changes_no_pointer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let blocks = extend(&engine, 3).await;
    // Move safe/finalized back by hand: a build (head = safe = finalized = parent) must then
    // write them, not take the read-only shortcut.
    engine
        .set_head(
            blocks[2].block_hash,
            blocks[0].block_hash,
            blocks[0].block_hash,
        )
        .await
        .expect("set");
    build_next(&engine, 8_000).await;
    let safe = engine
        .canonical_block("test", BlockRef::Safe)
        .expect("safe")
        .expect("some");
    assert_eq!(safe.block_hash(), blocks[2].block_hash);
    // And on an unchanged head, the shortcut keeps everything as it was.
    build_next(&engine, 8_001).await;
    assert_eq!(
        engine.head().await.expect("head"),
        (Height(3), blocks[2].block_hash)
    );
}

#[tokio::test]
async fn blocks_imported_as_head_are_readable_at_once_and_all_reach_the_disk() {
    const BLOCKS: u64 = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut hashes = Vec::new();
    {
        let engine = open(dir.path());
        for i in 0..BLOCKS {
            // Built on the head just acknowledged (possibly not written yet).
            let built = build_next(&engine, 20_000 + i).await;
            let status = engine
                .import_and_set_head(&built.encoded, built.block_hash)
                .await
                .expect("import as head");
            assert_eq!(status, PayloadStatus::Valid);
            let h = Height(i + 1);
            assert_eq!(engine.head().await.expect("head"), (h, built.block_hash));
            assert_eq!(
                engine.block_hash_at(h).await.expect("at"),
                Some(built.block_hash)
            );
            let latest = engine
                .canonical_block("test", BlockRef::Latest)
                .expect("latest")
                .expect("some");
            assert_eq!(latest.block_hash(), built.block_hash);
            hashes.push(built.block_hash);
        }
    }
    // Dropping the engine lets its queued writes finish: every block is on disk, in order.
    let engine = open(dir.path());
    assert_eq!(
        engine.head().await.expect("head"),
        (Height(BLOCKS), hashes[BLOCKS as usize - 1])
    );
    for (i, hash) in hashes.iter().enumerate() {
        assert_eq!(
            engine
                .block_hash_at(Height(i as u64 + 1))
                .await
                .expect("at"),
            Some(*hash)
        );
    }
    let fin = engine
        .canonical_block("test", BlockRef::Finalized)
        .expect("finalized")
        .expect("some");
    assert_eq!(fin.block_hash(), hashes[BLOCKS as usize - 1]);
}

#[tokio::test]
async fn large_blocks_are_checked_off_the_async_workers_and_a_changed_transaction_is_refused() {
    // 40 KiB of transactions: over VERIFY_INLINE_TX_BYTES_MAX, so the verifier checks them.
    let open_large = |dir: &std::path::Path| {
        let mut cfg = EmbeddedConfig::new(dir);
        cfg.txs_per_block = 40;
        cfg.tx_bytes = 1024;
        EmbeddedEngine::open(cfg).expect("open")
    };
    const { assert!(40 * 1024 >= VERIFY_INLINE_TX_BYTES_MAX) };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open_large(dir_a.path()), open_large(dir_b.path()));
    let built = build_next(&a, 7_000).await;

    // One transaction's last byte changed, the claimed hash kept: the transactions root, so
    // the header's hash, no longer matches. Refused, nothing stored.
    let mut p = decode_payload(&built.encoded).expect("decode");
    let txs = &mut p.payload.payload_inner.payload_inner.transactions;
    let mut tx = txs[17].to_vec();
    *tx.last_mut().expect("bytes") ^= 1;
    txs[17] = tx.into();
    let status = b
        .import_and_set_head(&encode_payload(&p), built.block_hash)
        .await
        .expect("answer");
    assert!(
        matches!(&status, PayloadStatus::Invalid { reason } if reason.contains("hash mismatch")),
        "{status:?}"
    );
    assert_eq!(b.block_hash_at(Height(1)).await.expect("at"), None);

    // The block as built: valid on the other engine, and its head.
    let status = b
        .import_and_set_head(&built.encoded, built.block_hash)
        .await
        .expect("import");
    assert_eq!(status, PayloadStatus::Valid);
    assert_eq!(b.head().await.expect("head"), (Height(1), built.block_hash));
}

/// The engine's writer lets go of the blocks it wrote (`haseq_storage::lmdb::drop_behind`): after 80
/// blocks of 100 KiB, the page cache holds little of its data file. Fails with the call taken
/// out of the writer's loop.
#[tokio::test]
async fn written_blocks_leave_the_page_cache() {
    const BLOCKS: u64 = 80;
    // On the build's disk: a tmpfs (often /tmp) keeps every page whatever the advice.
    let exe = std::env::current_exe().expect("test binary path");
    let dir = tempfile::tempdir_in(exe.parent().expect("its directory")).expect("tempdir");
    let mut cfg = EmbeddedConfig::new(dir.path());
    cfg.txs_per_block = 100;
    cfg.tx_bytes = 1024;
    let engine = EmbeddedEngine::open(cfg).expect("open");
    let built = extend(&engine, BLOCKS).await;
    let data = dir.path().join(store::ENV_SUBDIR).join("data.mdb");
    let resident = haseq_storage::lmdb::drop_behind::resident_pages(&data).expect("mincore");
    let page = haseq_storage::lmdb::drop_behind::page_bytes();
    let cached = resident.iter().filter(|r| **r).count() * page;
    let file = resident.len() * page;
    assert!(file >= BLOCKS as usize * 100 * 1024, "file {file} bytes");
    assert!(
        cached * 4 <= file,
        "{cached} of {file} bytes cached after {BLOCKS} blocks; at most a quarter expected"
    );
    // Every block still reads back whole (from the disk, for most).
    for b in &built {
        let p = engine
            .canonical_block("test", BlockRef::Number(b.number))
            .expect("read")
            .expect("stored");
        assert_eq!(encode_payload(&p), b.encoded);
    }
}

/// A full batch of blocks imported as the head is written at once, not after the writer's
/// linger: with a linger of a minute, [`store::EXTEND_BATCH_MAX`] blocks imported in a row
/// are on disk within seconds. Fails with the writer waiting out its linger before every batch
/// (what capped a long replay at one batch per linger).
#[tokio::test]
async fn a_full_batch_is_written_without_waiting_out_the_linger() {
    const ATTEMPTS_MAX: u32 = 2_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine =
        EmbeddedEngine::open_with_linger(EmbeddedConfig::new(dir.path()), Duration::from_secs(60))
            .expect("open");
    let mut last = None;
    for i in 0..store::EXTEND_BATCH_MAX as u64 {
        let built = build_next(&engine, 30_000 + i).await;
        let status = engine
            .import_and_set_head(&built.encoded, built.block_hash)
            .await
            .expect("import as head");
        assert_eq!(status, PayloadStatus::Valid);
        last = Some((built.number, built.block_hash));
    }
    let last = last.expect("a batch of blocks");
    // What the disk holds, not the blocks still waiting in memory.
    let on_disk = || engine.store.read(store::head).expect("stored head");
    let started = Instant::now();
    for attempt in 0..ATTEMPTS_MAX {
        if on_disk() == last {
            break;
        }
        assert!(
            attempt + 1 < ATTEMPTS_MAX,
            "after {:?} the stored head is {:?}, the batch ends at {last:?}",
            started.elapsed(),
            on_disk()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
