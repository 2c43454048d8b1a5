//! Snapshot files: atomic builds, retention, install on a fresh store, reopen.
//!
//! Goal: a snapshot is one complete `.snp` file (never a torn or temp one), only the newest
//! `snap_count` are kept, and installing one on an empty store gives the source's head,
//! membership and recent blocks, which survive a reopen.
//! Method: apply blocks to a real store in a temp dir, build and install through openraft's
//! traits, and look at the directory and the stores.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use futures::stream;
use haseq_messages::{Block, BlockHash, Command, Height, NodeId, TC};
use haseq_storage::{Head, Storage, StoreOptions};
use openraft::entry::RaftEntry;
use openraft::storage::{RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::vote::leader_id_std::CommittedLeaderId;
use openraft::{LogId, Membership};

fn log_id(term: u64, index: u64) -> LogIdOf<TC> {
    LogId::new(CommittedLeaderId::new(term), index)
}

fn hash(height: u64) -> BlockHash {
    let mut h = [0x5Au8; 32];
    h[..8].copy_from_slice(&height.to_be_bytes());
    BlockHash(h)
}

fn block(height: u64) -> Block {
    let parent_hash = if height == 1 {
        BlockHash::ZERO
    } else {
        hash(height - 1)
    };
    Block {
        height: Height(height),
        parent_hash,
        hash: hash(height),
        timestamp: height,
        proposer: NodeId::from("n1"),
        payload: vec![height as u8; 100].into(),
    }
}

fn opts(snap_count: usize, recent: usize) -> StoreOptions {
    StoreOptions {
        snap_count,
        snapshot_recent_blocks: recent,
        map_size_bytes: 64 << 20,
        ..StoreOptions::default()
    }
}

fn open(dir: &Path, o: StoreOptions) -> Storage {
    haseq_storage::open(dir, o).expect("open store")
}

/// Applies a membership entry at index 1, then blocks `from..=to` at the following indexes
/// (block h at index h + 1), in one `apply` call.
async fn apply_blocks(store: &mut Storage, from: u64, to: u64) {
    let mut entries: Vec<EntryOf<TC>> = Vec::new();
    if from == 1 {
        let voters: BTreeSet<NodeId> = [1u64, 2, 3].into_iter().map(NodeId::from).collect();
        entries.push(EntryOf::<TC>::new_membership(
            log_id(1, 1),
            Membership::new_with_defaults(vec![voters], []),
        ));
    }
    for h in from..=to {
        entries.push(EntryOf::<TC>::new_normal(
            log_id(1, h + 1),
            Command::Block(block(h)),
        ));
    }
    store
        .sm
        .apply(stream::iter(entries.into_iter().map(|e| Ok((e, None)))))
        .await
        .expect("apply");
}

/// Builds a snapshot of `store` (through openraft's builder).
async fn build(store: &mut Storage) -> openraft::type_config::alias::SnapshotOf<TC, Vec<u8>> {
    store
        .sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build")
}

/// Builds a snapshot of `src` and installs it on a fresh store in `dst_dir` (`opts(3, 8)`).
async fn build_and_install(src: &mut Storage, dst_dir: &Path) -> Storage {
    let snap = build(src).await;
    let mut dst = open(dst_dir, opts(3, 8));
    dst.sm
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .expect("install");
    dst
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(suffix))
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_writes_one_complete_file_and_no_temp_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(dir.path(), opts(3, 4));
    assert!(
        store
            .sm
            .get_current_snapshot()
            .await
            .expect("current")
            .is_none()
    );
    apply_blocks(&mut store, 1, 10).await;

    let snap = build(&mut store).await;
    assert_eq!(snap.meta.last_log_id, Some(log_id(1, 11)));
    assert_eq!(snap.meta.last_membership.log_id(), &Some(log_id(1, 1)));

    let snp = files(dir.path(), ".snp");
    assert_eq!(snp.len(), 1, "one snapshot file: {snp:?}");
    let name = snp[0].file_name().and_then(|n| n.to_str()).expect("name");
    assert_eq!(
        name,
        "snapshot-00000000000000000001-00000000000000000011.snp"
    );
    assert!(files(dir.path(), ".tmp").is_empty(), "no temp file left");
    assert_eq!(
        fs::read(&snp[0]).expect("read"),
        snap.snapshot,
        "the file is the whole snapshot"
    );

    let current = store
        .sm
        .get_current_snapshot()
        .await
        .expect("current")
        .expect("some");
    assert_eq!(current.meta, snap.meta);
    assert_eq!(current.snapshot, snap.snapshot);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_temp_file_is_removed_on_open_and_never_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = {
        let mut store = open(dir.path(), opts(3, 4));
        apply_blocks(&mut store, 1, 5).await;
        build(&mut store).await
    };
    // A crash mid-write of a newer snapshot: a torn temp file with a newer name.
    let torn = dir
        .path()
        .join("snapshot-00000000000000000009-00000000000000000099.snp.4242-7.tmp");
    fs::write(&torn, &snap.snapshot[..snap.snapshot.len() / 2]).expect("write torn");

    let mut store = open(dir.path(), opts(3, 4));
    assert!(!torn.exists(), "open removes the temp file");
    let current = store
        .sm
        .get_current_snapshot()
        .await
        .expect("current")
        .expect("some");
    assert_eq!(
        current.meta, snap.meta,
        "the complete snapshot is still current"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_newest_snap_count_files_are_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(dir.path(), opts(2, 4));
    let mut built = Vec::new();
    for round in 0..5u64 {
        apply_blocks(&mut store, round * 3 + 1, round * 3 + 3).await;
        let snap = build(&mut store).await;
        built.push(snap.meta.clone());
        let snp = files(dir.path(), ".snp");
        assert_eq!(
            snp.len(),
            (round as usize + 1).min(2),
            "round {round}: {snp:?}"
        );
    }
    let snp = files(dir.path(), ".snp");
    let names: Vec<String> = snp
        .iter()
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .collect();
    assert_eq!(
        names,
        vec![
            "snapshot-00000000000000000001-00000000000000000013.snp".to_string(),
            "snapshot-00000000000000000001-00000000000000000016.snp".to_string(),
        ]
    );
    let current = store
        .sm
        .get_current_snapshot()
        .await
        .expect("current")
        .expect("some");
    assert_eq!(Some(&current.meta), built.last());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_on_a_fresh_store_gives_the_same_state_and_survives_reopen() {
    let src_dir = tempfile::tempdir().expect("tempdir");
    let dst_dir = tempfile::tempdir().expect("tempdir");
    let mut src = open(src_dir.path(), opts(3, 8));
    apply_blocks(&mut src, 1, 50).await;
    let snap = build(&mut src).await;
    let src_state = src.sm.applied_state().await.expect("applied state");
    let src_head = src.reader.head().expect("head");
    assert_eq!(
        src_head,
        Head {
            height: Height(50),
            hash: hash(50)
        }
    );

    {
        let mut dst = open(dst_dir.path(), opts(3, 8));
        let watch = dst.sm.subscribe();
        dst.sm
            .install_snapshot(&snap.meta, snap.snapshot.clone())
            .await
            .expect("install");
        check_installed(&mut dst, &src_state, src_head, &snap.meta).await;
        assert_eq!(watch.borrow().head(), src_head, "install is published");
        assert_eq!(watch.borrow().applied, Some(log_id(1, 51)));
    }

    // Reopen: the installed state and the snapshot file are on disk, not in memory.
    let mut dst = open(dst_dir.path(), opts(3, 8));
    check_installed(&mut dst, &src_state, src_head, &snap.meta).await;
}

/// At large blocks a snapshot's byte bound, not its block count, limits the recent blocks it
/// carries; the head block is carried whatever its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_carries_recent_blocks_up_to_its_byte_bound() {
    // Every payload is 100 bytes; the count bound (8) is never the one reached.
    for (max_bytes, carried) in [(250, 2), (300, 3), (0, 1)] {
        let src_dir = tempfile::tempdir().expect("tempdir");
        let dst_dir = tempfile::tempdir().expect("tempdir");
        let mut src = open(
            src_dir.path(),
            StoreOptions {
                snapshot_recent_bytes: max_bytes,
                ..opts(3, 8)
            },
        );
        apply_blocks(&mut src, 1, 20).await;
        let dst = build_and_install(&mut src, dst_dir.path()).await;
        for h in 1..=20u64 {
            let want = (h > 20 - carried).then(|| block(h));
            assert_eq!(
                dst.reader.block(Height(h)).expect("block"),
                want,
                "bound {max_bytes} bytes: block {h}"
            );
        }
    }
}

async fn check_installed(
    dst: &mut Storage,
    src_state: &(
        Option<LogIdOf<TC>>,
        openraft::type_config::alias::StoredMembershipOf<TC>,
    ),
    src_head: Head,
    meta: &openraft::type_config::alias::SnapshotMetaOf<TC>,
) {
    assert_eq!(
        &dst.sm.applied_state().await.expect("applied state"),
        src_state
    );
    assert_eq!(dst.reader.head().expect("head"), src_head);
    for h in 43..=50 {
        assert_eq!(
            dst.reader.block(Height(h)).expect("block"),
            Some(block(h)),
            "recent block {h}"
        );
        assert_eq!(
            dst.reader.height_of(&hash(h)).expect("height_of"),
            Some(Height(h))
        );
    }
    assert_eq!(
        dst.reader.block(Height(42)).expect("block"),
        None,
        "older blocks are not carried"
    );
    let current = dst
        .sm
        .get_current_snapshot()
        .await
        .expect("current")
        .expect("some");
    assert_eq!(&current.meta, meta);
    // The next block applies on the installed head.
    let applied = dst.sm.applied().expect("applied");
    assert_eq!(applied.head(), src_head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_refuses_data_that_does_not_match_its_meta() {
    let src_dir = tempfile::tempdir().expect("tempdir");
    let dst_dir = tempfile::tempdir().expect("tempdir");
    let mut src = open(src_dir.path(), opts(3, 8));
    apply_blocks(&mut src, 1, 5).await;
    let snap = build(&mut src).await;

    let mut dst = open(dst_dir.path(), opts(3, 8));
    let mut meta = snap.meta.clone();
    meta.last_log_id = Some(log_id(2, 99));
    let err = dst
        .sm
        .install_snapshot(&meta, snap.snapshot.clone())
        .await
        .expect_err("mismatch");
    assert!(err.to_string().contains("last_log_id"), "{err}");
    let err = dst
        .sm
        .install_snapshot(&snap.meta, vec![1, 2, 3])
        .await
        .expect_err("garbage");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert_eq!(
        dst.sm.applied_state().await.expect("state").0,
        None,
        "nothing installed"
    );
    assert!(
        dst.sm
            .get_current_snapshot()
            .await
            .expect("current")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn has_state_tells_a_fresh_dir_from_a_used_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("node");
    assert!(!haseq_storage::has_state(&sub), "missing dir");
    {
        let _store = open(&sub, opts(3, 8));
    }
    assert!(
        !haseq_storage::has_state(&sub),
        "opened but nothing written"
    );
    {
        let mut store = open(&sub, opts(3, 8));
        store
            .log
            .save_vote(&VoteOf::<TC>::new(1, NodeId::from(1u64)))
            .await
            .expect("vote");
    }
    assert!(haseq_storage::has_state(&sub), "a saved vote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_after_install_accepts_only_the_linked_chain() {
    let src_dir = tempfile::tempdir().expect("tempdir");
    let dst_dir = tempfile::tempdir().expect("tempdir");
    let mut src = open(src_dir.path(), opts(3, 8));
    apply_blocks(&mut src, 1, 30).await;
    let dst = build_and_install(&mut src, dst_dir.path()).await;
    let backfill = dst.backfill();
    assert_eq!(dst.reader.block(Height(22)).expect("block"), None);

    // A gap: 20 does not link to anything stored (21 is missing).
    let err = backfill.insert(vec![block(20)]).await.expect_err("gap");
    assert!(err.to_string().contains("height 20"), "{err}");
    // A forged block at 22: right height, wrong hash.
    let mut forged = block(22);
    forged.hash = BlockHash([0xEE; 32]);
    assert!(backfill.insert(vec![block(21), forged]).await.is_err());
    assert_eq!(
        dst.reader.block(Height(21)).expect("block"),
        None,
        "all or nothing"
    );
    // Above the head.
    assert!(backfill.insert(vec![block(31)]).await.is_err());

    // The real chain, newest gap first, in two batches and any order.
    assert_eq!(
        backfill
            .insert((12..=22).rev().map(block).collect())
            .await
            .expect("insert"),
        11
    );
    assert_eq!(
        backfill
            .insert((1..=11).map(block).collect())
            .await
            .expect("insert"),
        11
    );
    assert_eq!(
        backfill.insert(vec![block(5)]).await.expect("again"),
        0,
        "idempotent"
    );
    for h in 1..=30 {
        assert_eq!(
            dst.reader.block(Height(h)).expect("block"),
            Some(block(h)),
            "block {h}"
        );
    }
    assert_eq!(
        dst.reader.blocks_from(Height(1), 100).expect("range").len(),
        30
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_range_finds_the_highest_hole_and_shrinks_as_it_is_filled() {
    let src_dir = tempfile::tempdir().expect("tempdir");
    let dst_dir = tempfile::tempdir().expect("tempdir");
    let mut src = open(src_dir.path(), opts(3, 8));
    apply_blocks(&mut src, 1, 30).await;
    let dst = build_and_install(&mut src, dst_dir.path()).await;
    let r = &dst.reader;
    let head = Height(30);
    // The snapshot carried 23..=30: the hole is everything below.
    assert_eq!(
        r.missing_range(Height(0), head).unwrap(),
        Some((Height(1), Height(22)))
    );
    // Heights at or below the floor (the engine has them) are not wanted.
    assert_eq!(
        r.missing_range(Height(10), head).unwrap(),
        Some((Height(11), Height(22)))
    );
    assert_eq!(r.missing_range(Height(22), head).unwrap(), None);
    assert_eq!(r.missing_range(Height(30), head).unwrap(), None);

    // Filled from the top, the hole's top comes down; a hole lower down is found next.
    let backfill = dst.backfill();
    backfill
        .insert((15..=22).map(block).collect())
        .await
        .expect("insert");
    assert_eq!(
        r.missing_range(Height(0), head).unwrap(),
        Some((Height(1), Height(14)))
    );
    backfill
        .insert((1..=14).map(block).collect())
        .await
        .expect("insert");
    assert_eq!(r.missing_range(Height(0), head).unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_from_bounded_stops_at_its_byte_bound_but_always_gives_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(dir.path(), opts(3, 8));
    apply_blocks(&mut store, 1, 20).await;
    let r = &store.reader;
    // Each test block carries 100 payload bytes.
    assert_eq!(r.blocks_from_bounded(Height(1), 50, 350).unwrap().len(), 3);
    assert_eq!(r.blocks_from_bounded(Height(1), 50, 1).unwrap().len(), 1);
    assert_eq!(
        r.blocks_from_bounded(Height(18), 50, 10_000).unwrap().len(),
        3
    );
    assert_eq!(
        r.blocks_from_bounded(Height(21), 50, 10_000).unwrap().len(),
        0
    );
}

/// Goal: history can be filled oldest first. Method: a 600-block chain, a snapshot of its
/// newest 8 blocks installed on a fresh store; the snapshot carries the checkpoints (256,
/// 512), so a range ending at one is taken with nothing stored above it, a forged one is not,
/// and a range ending elsewhere still needs the block above it. The checkpoints survive in
/// the next snapshot the installed store builds, blocks or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_vouch_for_history_filled_oldest_first() {
    assert_eq!(haseq_storage::CHECKPOINT_EVERY_BLOCKS, 256);
    let src_dir = tempfile::tempdir().expect("tempdir");
    let dst_dir = tempfile::tempdir().expect("tempdir");
    let next_dir = tempfile::tempdir().expect("tempdir");
    let mut src = open(src_dir.path(), opts(3, 8));
    apply_blocks(&mut src, 1, 600).await;
    assert_eq!(src.reader.checkpoint(Height(256)).unwrap(), Some(hash(256)));
    assert_eq!(src.reader.checkpoint(Height(300)).unwrap(), None, "not one");
    let mut dst = build_and_install(&mut src, dst_dir.path()).await;
    let r = dst.reader.clone();
    assert_eq!(
        r.block(Height(256)).unwrap(),
        None,
        "the block is not carried"
    );
    assert_eq!(r.checkpoint(Height(256)).unwrap(), Some(hash(256)));
    assert_eq!(r.checkpoint(Height(512)).unwrap(), Some(hash(512)));
    let backfill = dst.backfill();

    // Oldest first: 1..=256 ends at a checkpoint.
    assert_eq!(
        backfill
            .insert((1..=256).map(block).collect())
            .await
            .unwrap(),
        256
    );
    // A range ending at a checkpoint with another hash there is refused, all of it.
    let mut forged: Vec<Block> = (257..=512).map(block).collect();
    let top = forged.last_mut().unwrap();
    top.hash = BlockHash([0xEE; 32]);
    let err = backfill.insert(forged).await.expect_err("forged top");
    assert!(err.to_string().contains("512"), "{err}");
    assert_eq!(r.block(Height(300)).unwrap(), None);
    // A range ending between checkpoints waits for the block above it.
    assert!(
        backfill
            .insert((257..=300).map(block).collect())
            .await
            .is_err()
    );
    assert_eq!(
        backfill
            .insert((301..=512).map(block).collect())
            .await
            .unwrap(),
        212
    );
    assert_eq!(
        backfill
            .insert((257..=300).map(block).collect())
            .await
            .unwrap(),
        44
    );
    assert_eq!(
        r.missing_range(Height(0), Height(600)).unwrap(),
        Some((Height(513), Height(592)))
    );

    // A snapshot of the installed store carries the checkpoints it holds no block for too.
    let next = build_and_install(&mut dst, next_dir.path()).await;
    assert_eq!(
        next.reader.checkpoint(Height(512)).unwrap(),
        Some(hash(512))
    );
    assert_eq!(
        next.reader.checkpoint(Height(256)).unwrap(),
        Some(hash(256))
    );
}
