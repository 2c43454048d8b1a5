//! Log store rules the openraft suite does not cover.
//!
//! Goal: an append that would leave a hole is refused (and reported through the callback), a
//! failed write (LMDB map full) comes back as an `io::Error`, is never reported durable, stops
//! the log, and loses nothing acknowledged; and the purge pointer survives a reopen with an
//! empty log.
//! Method: drive `LogStore` through openraft's traits on a real store in a temp dir.

use haseq_messages::{Block, BlockHash, Command, Height, NodeId, TC};
use haseq_storage::{LogStore, StoreOptions};
use openraft::LogId;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::type_config::alias::{EntryOf, LogIdOf};
use openraft::vote::leader_id_std::CommittedLeaderId;

fn log_id(index: u64) -> LogIdOf<TC> {
    LogId::new(CommittedLeaderId::new(1), index)
}

fn opts(map_size_bytes: usize) -> StoreOptions {
    StoreOptions {
        map_size_bytes,
        ..StoreOptions::default()
    }
}

/// Appends and returns (what `append` returned, what the callback reported).
async fn append(
    log: &mut LogStore,
    entries: Vec<EntryOf<TC>>,
) -> (std::io::Result<()>, std::io::Result<()>) {
    let (tx, rx) = TC::oneshot();
    let returned = log.append(entries, IOFlushed::signal(tx)).await;
    let flushed = rx.await.expect("callback must be called, even on failure");
    (returned, flushed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_that_leaves_a_hole_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = haseq_storage::open(dir.path(), opts(64 << 20))
        .expect("open")
        .log;
    let (r, f) = append(
        &mut log,
        vec![
            EntryOf::<TC>::new_blank(log_id(1)),
            EntryOf::<TC>::new_blank(log_id(2)),
        ],
    )
    .await;
    assert!(r.is_ok() && f.is_ok());

    let (r, f) = append(&mut log, vec![EntryOf::<TC>::new_blank(log_id(4))]).await;
    let err = r.expect_err("hole");
    assert!(err.to_string().contains("expected index 3, got 4"), "{err}");
    assert!(f.is_err(), "a refused append is never reported durable");

    let (r, _) = append(
        &mut log,
        vec![
            EntryOf::<TC>::new_blank(log_id(3)),
            EntryOf::<TC>::new_blank(log_id(5)),
        ],
    )
    .await;
    assert!(r.is_err(), "a batch with a hole inside");
    assert_eq!(
        log.entries(..).expect("read").len(),
        2,
        "nothing of the refused appends was written"
    );
}

fn big_entry(i: u64) -> EntryOf<TC> {
    let b = Block {
        height: Height(i),
        parent_hash: BlockHash::ZERO,
        hash: BlockHash::ZERO,
        timestamp: 0,
        proposer: NodeId::from(1u64),
        payload: vec![7; 64 * 1024].into(),
    };
    EntryOf::<TC>::new_normal(log_id(i), Command::Block(b))
}

/// An append is acknowledged once the journal holds it; carrying it into LMDB comes after. When
/// LMDB then refuses (map full), the log takes no more writes and says why, and nothing that
/// was acknowledged is lost: the store does not open until the map can hold it, then has it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_returned_not_swallowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A tiny map: LMDB refuses writes once it is full (MDB_MAP_FULL).
    let mut log = haseq_storage::open(dir.path(), opts(1 << 20))
        .expect("open")
        .log;
    const ATTEMPTS_MAX: u64 = 200;
    let mut acked = 0;
    let mut refused = None;
    for i in 1..=ATTEMPTS_MAX {
        match append(&mut log, vec![big_entry(i)]).await {
            (Ok(()), Ok(())) => acked = i,
            // Refused at once (an earlier append failed to reach LMDB) or through the callback:
            // either way never reported durable.
            (Ok(()), Err(e)) | (Err(e), _) => {
                assert!(e.to_string().contains("LMDB"), "{e}");
                refused = Some(i);
                break;
            }
        }
    }
    let refused = refused.expect("a 1 MiB map must fill up");
    assert_eq!(
        acked,
        refused - 1,
        "every append before the refusal was acknowledged"
    );
    let (r, f) = append(&mut log, vec![big_entry(refused)]).await;
    assert!(
        r.is_err() && f.is_err(),
        "the log stays refusing: {r:?} {f:?}"
    );
    let readable = log.entries(..).expect("read after failure");
    assert_eq!(
        readable.iter().map(|e| e.index()).collect::<Vec<_>>(),
        (1..=acked).collect::<Vec<_>>(),
        "every acknowledged entry stays readable, and nothing else"
    );
    drop(log);

    let e = haseq_storage::open(dir.path(), opts(1 << 20)).expect_err("the journal does not fit");
    assert!(e.to_string().contains("journal"), "{e}");
    let log = haseq_storage::open(dir.path(), opts(64 << 20))
        .expect("reopen with room")
        .log;
    let entries = log.entries(..).expect("read");
    assert_eq!(
        entries.iter().map(|e| e.index()).collect::<Vec<_>>(),
        (1..=acked).collect::<Vec<_>>(),
        "every acknowledged append is there, and nothing else"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purge_pointer_survives_reopen_with_an_empty_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = haseq_storage::open(dir.path(), opts(64 << 20))
            .expect("open")
            .log;
        let entries = (1..=5)
            .map(|i| EntryOf::<TC>::new_blank(log_id(i)))
            .collect();
        let (r, _) = append(&mut log, entries).await;
        r.expect("append");
        log.purge(log_id(5)).await.expect("purge");
        log.purge(log_id(3))
            .await
            .expect("an older purge is a no-op");
    }
    let mut log = haseq_storage::open(dir.path(), opts(64 << 20))
        .expect("reopen")
        .log;
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(5)));
    assert_eq!(
        state.last_log_id,
        Some(log_id(5)),
        "an empty log ends at the purged id"
    );
    let (r, _) = append(&mut log, vec![EntryOf::<TC>::new_blank(log_id(7))]).await;
    assert!(r.is_err(), "the next entry must be 6");
    let (r, _) = append(&mut log, vec![EntryOf::<TC>::new_blank(log_id(6))]).await;
    r.expect("append after purge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_pointer_is_read_back_at_once_and_reaches_disk_with_the_next_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = haseq_storage::open(dir.path(), opts(64 << 20))
            .expect("open")
            .log;
        let entries = (1..=3)
            .map(|i| EntryOf::<TC>::new_blank(log_id(i)))
            .collect();
        let (r, f) = append(&mut log, entries).await;
        assert!(r.is_ok() && f.is_ok());
        log.save_committed(Some(log_id(2))).await.expect("save");
        // Read back at once, before any transaction carried it.
        assert_eq!(log.read_committed().await.expect("read"), Some(log_id(2)));
        // A newer value replaces the pending one; the next write carries it.
        log.save_committed(Some(log_id(3))).await.expect("save");
        let (r, _) = append(&mut log, vec![EntryOf::<TC>::new_blank(log_id(4))]).await;
        r.expect("append");
    }
    let mut log = haseq_storage::open(dir.path(), opts(64 << 20))
        .expect("reopen")
        .log;
    assert_eq!(
        log.read_committed().await.expect("read"),
        Some(log_id(3)),
        "the pointer rode in the append's transaction"
    );
    // Saved but followed by no write: a reopen finds the last value that reached the disk,
    // never a newer one and never nothing.
    log.save_committed(Some(log_id(4))).await.expect("save");
    drop(log);
    let mut log = haseq_storage::open(dir.path(), opts(64 << 20))
        .expect("reopen")
        .log;
    assert_eq!(log.read_committed().await.expect("read"), Some(log_id(3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_entries_are_readable_when_append_returns_and_durable_when_the_callback_fires() {
    use openraft::storage::RaftLogReader;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = haseq_storage::open(dir.path(), opts(64 << 20))
        .expect("open")
        .log;
    let (tx, rx) = TC::oneshot();
    let entries: Vec<_> = (1..=4)
        .map(|i| EntryOf::<TC>::new_blank(log_id(i)))
        .collect();
    log.append(entries, IOFlushed::signal(tx))
        .await
        .expect("append");
    // Readable now, by another reader handle, whether or not the flush has finished.
    let mut reader = log.get_log_reader().await;
    let got = reader.try_get_log_entries(1..5).await.expect("read");
    assert_eq!(
        got.iter().map(|e| e.index()).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    rx.await.expect("callback").expect("durable");
    // And still there after a reopen.
    drop((log, reader));
    let mut log = haseq_storage::open(dir.path(), opts(64 << 20))
        .expect("reopen")
        .log;
    assert_eq!(
        log.get_log_state().await.expect("state").last_log_id,
        Some(log_id(4))
    );
}

/// The journal's segment number of each file under `dir/wal`.
fn journal_segments(dir: &std::path::Path) -> Vec<u64> {
    let mut out: Vec<u64> = std::fs::read_dir(dir.join("wal"))
        .expect("journal dir")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".wal")?.parse().ok()
        })
        .collect();
    out.sort_unstable();
    out
}

/// A journal segment that fills up is checkpointed (next segment started, the old one recycled
/// as the spare once a full LMDB commit behind its records is done) while appends go on; later
/// segments are recycled files holding older records; and a reopen finds every entry,
/// truncation and purge, whichever segment or LMDB commit carried them, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_checkpoints_as_it_fills_and_a_reopen_finds_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 64 KiB entries, 16 per append: one 8 MiB segment in about 8 appends, so six segments,
    // from the third on recycled when their predecessor's spare was ready.
    const APPENDS: u64 = 48;
    const BATCH: u64 = 16;
    {
        let mut log = haseq_storage::open(dir.path(), opts(1 << 30))
            .expect("open")
            .log;
        assert_eq!(journal_segments(dir.path()).len(), 1);
        for a in 0..APPENDS {
            let entries = (a * BATCH + 1..=(a + 1) * BATCH).map(big_entry).collect();
            let (r, f) = append(&mut log, entries).await;
            r.and(f).unwrap_or_else(|e| panic!("append {a}: {e}"));
        }
        // An old segment goes once its checkpoint commit is done (a thread of its own
        // recycles it): the newest checkpoints' may still be under way, for a bounded time.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut segs = journal_segments(dir.path());
        while segs.len() > 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            segs = journal_segments(dir.path());
        }
        assert!(segs.len() <= 2, "old segments are recycled: {segs:?}");
        assert!(
            segs[segs.len() - 1] >= 4,
            "checkpoints started new segments: {segs:?}"
        );
        let files = std::fs::read_dir(dir.path().join("wal"))
            .expect("journal dir")
            .count();
        assert!(files <= 3, "segments and at most one spare: {files} files");
        log.truncate_after(Some(log_id(APPENDS * BATCH - 3)))
            .await
            .expect("truncate");
        log.purge(log_id(100)).await.expect("purge");
    }
    let mut log = haseq_storage::open(dir.path(), opts(1 << 30))
        .expect("reopen")
        .log;
    assert_eq!(
        journal_segments(dir.path()).len(),
        1,
        "replayed segments are deleted"
    );
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(100)));
    assert_eq!(state.last_log_id, Some(log_id(APPENDS * BATCH - 3)));
    let entries = log.entries(..).expect("read");
    assert_eq!(
        entries.iter().map(|e| e.index()).collect::<Vec<_>>(),
        (101..=APPENDS * BATCH - 3).collect::<Vec<_>>()
    );
}
