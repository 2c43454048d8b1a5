//! Applies are visible when `apply` returns, before their transaction has committed, and reach
//! the disk in order.
//!
//! Goal: right after `apply` returns, every reader (block reader, state machine, the watch)
//! sees the new head and blocks, whether the transaction has committed yet or not; many
//! applies in a row (each queued behind the previous one) all land, in order, and survive a
//! reopen; a snapshot built right after applying covers everything applied.
//! Method: a real store in a temp dir, driven through openraft's `RaftStateMachine`.

use futures::stream;
use haseq_messages::{Block, BlockHash, Command, Height, NodeId, TC};
use haseq_storage::{Storage, StoreOptions};
use openraft::LogId;
use openraft::entry::RaftEntry;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::type_config::alias::{EntryOf, LogIdOf};
use openraft::vote::leader_id_std::CommittedLeaderId;

fn log_id(index: u64) -> LogIdOf<TC> {
    LogId::new(CommittedLeaderId::new(1), index)
}

fn hash(h: u64) -> BlockHash {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&h.to_be_bytes());
    b[31] = 1;
    BlockHash(b)
}

fn block(h: u64) -> Block {
    Block {
        height: Height(h),
        parent_hash: if h == 1 { BlockHash::ZERO } else { hash(h - 1) },
        hash: hash(h),
        timestamp: h,
        proposer: NodeId::from(1u64),
        payload: vec![(h % 251) as u8; 4096].into(),
    }
}

fn open(dir: &std::path::Path) -> Storage {
    let o = StoreOptions {
        map_size_bytes: 256 << 20,
        ..StoreOptions::default()
    };
    haseq_storage::open(dir, o).expect("open store")
}

async fn apply_one(store: &mut Storage, h: u64) {
    let e = EntryOf::<TC>::new_normal(log_id(h), Command::Block(block(h)));
    store
        .sm
        .apply(stream::iter([Ok((e, None))]))
        .await
        .expect("apply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_apply_is_visible_at_once_and_all_of_them_land_in_order() {
    const BLOCKS: u64 = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = open(dir.path());
        let reader = store.reader.clone();
        let watch = store.sm.subscribe();
        for h in 1..=BLOCKS {
            apply_one(&mut store, h).await;
            // Visible now, to every reader, committed or not.
            assert_eq!(reader.head().expect("head").height, Height(h));
            assert_eq!(reader.head().expect("head").hash, hash(h));
            assert_eq!(reader.block(Height(h)).expect("block"), Some(block(h)));
            assert_eq!(
                reader.summary(Height(h)).expect("summary"),
                Some(block(h).summary())
            );
            assert_eq!(
                reader.height_of(&hash(h)).expect("by hash"),
                Some(Height(h))
            );
            assert_eq!(
                store.sm.applied().expect("applied").applied,
                Some(log_id(h))
            );
            assert_eq!(watch.borrow().head_height, Height(h));
        }
        // A range straddling committed and queued applies comes back whole and in order.
        let got = reader.blocks_from(Height(BLOCKS - 20), 50).expect("range");
        assert_eq!(
            got.iter().map(|b| b.height.0).collect::<Vec<_>>(),
            (BLOCKS - 20..=BLOCKS).collect::<Vec<_>>()
        );
        // A snapshot asked for now covers everything applied.
        let snap = store
            .sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("snapshot");
        assert_eq!(snap.meta.last_log_id, Some(log_id(BLOCKS)));
    }
    // Every apply reached the disk (dropping the store lets queued writes finish).
    let store = open(dir.path());
    let applied = store.sm.applied().expect("applied");
    assert_eq!(applied.applied, Some(log_id(BLOCKS)));
    assert_eq!(applied.head_height, Height(BLOCKS));
    let all = store
        .reader
        .blocks_from(Height(1), BLOCKS as usize + 1)
        .expect("all");
    assert_eq!(all.len() as u64, BLOCKS);
    for (i, b) in all.iter().enumerate() {
        assert_eq!(*b, block(i as u64 + 1));
    }
    // Read from LMDB now (nothing is queued): the summary decodes in place, and agrees.
    for h in [1, BLOCKS / 2, BLOCKS] {
        assert_eq!(
            store.reader.summary(Height(h)).expect("summary"),
            Some(block(h).summary())
        );
    }
    assert_eq!(
        store.reader.summary(Height(BLOCKS + 1)).expect("summary"),
        None
    );
}
