//! Goal: `raft.snapshot_threshold` and `raft.trailing_logs` take effect: the log is compacted
//! behind snapshots (snapshot files appear in `raft_dir`, at most `snap_count` of them), and a
//! node that missed more than `trailing_logs` entries catches up from a snapshot.
//!
//! Method: 3 in-process nodes producing every 5 ms with a threshold of 100 and 50 trailing
//! entries; one follower is stopped while 400 blocks are committed, then restarted; it must
//! reach the same head through a snapshot install.

mod harness;

use std::time::Duration;

use harness::{Cluster, enable_production, run, wait_until};
use haseq_messages::Height;

#[test]
fn lagging_follower_catches_up_from_a_snapshot() {
    run(async {
        let mut c = Cluster::start_configured(3, |s| {
            enable_production(s, Duration::from_millis(5));
            s.snapshot_threshold = 100;
            s.trailing_logs = 50;
            s.snap_count = 2;
        })
        .await;
        let (leader, _) = c.wait_leader(Duration::from_secs(10)).await;
        let lagger = (leader + 1) % 3;
        c.kill(lagger).await;
        eprintln!("phase: {} stopped", c.members[lagger].id);

        wait_until(
            Duration::from_secs(60),
            "height 400 without the stopped node",
            || async {
                let h = c.top_applied();
                if h >= 400 {
                    Ok(())
                } else {
                    Err(format!("height {h}"))
                }
            },
        )
        .await;
        let (leader, _) = c.wait_leader(Duration::from_secs(10)).await;
        eprintln!(
            "phase: 400 blocks committed without {}",
            c.members[lagger].id
        );

        let leader_dir = &c.members[leader].settings.raft_dir;
        // Production goes on, and each new snapshot file is in place (renamed) a moment before
        // the oldest is deleted: a listing may catch snap_count + 1 files in between. Wait for
        // a listing with 1 to snap_count files; old files that are never deleted fail it.
        wait_until(
            Duration::from_secs(10),
            "1 to snap_count (2) snapshot files on the leader",
            || async {
                let n = std::fs::read_dir(leader_dir)
                    .map_err(|e| e.to_string())?
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".snp"))
                    .count();
                if (1..=2).contains(&n) {
                    Ok(n)
                } else {
                    Err(format!("snap_count = 2, found {n} snapshot files"))
                }
            },
        )
        .await;
        // openraft purges the log after the snapshot is built (a journalled, flushed change of
        // its own): the file can be there a moment before the purge is.
        wait_until(
            Duration::from_secs(10),
            "the leader's log compacted behind a snapshot",
            || async {
                let purged = c.purged(leader).await?;
                if purged.is_some_and(|p| p > 50) {
                    Ok(())
                } else {
                    Err(format!("purged {purged:?}"))
                }
            },
        )
        .await;

        c.restart(lagger).await;
        let top = c.top_applied();
        wait_until(
            Duration::from_secs(15),
            "the lagging follower at the head it missed",
            || async {
                let h = c
                    .node(lagger)
                    .blocks
                    .head()
                    .map_err(|e| e.to_string())?
                    .height
                    .0;
                if h >= top {
                    Ok(())
                } else {
                    Err(format!("height {h}, want {top}"))
                }
            },
        )
        .await;
        let snap = c
            .node(lagger)
            .raft
            .with_raft_state(|st| st.snapshot_meta.last_log_id.map(|l| l.index))
            .await
            .unwrap();
        assert!(
            snap.is_some(),
            "the follower caught up through a snapshot install"
        );
        let want = c.node(leader).blocks.block(Height(top)).unwrap();
        assert_eq!(c.node(lagger).blocks.block(Height(top)).unwrap(), want);
        eprintln!("phase: caught up from snapshot at index {snap:?}");
        c.stop_all().await;
    });
}
