//! Goal: a follower that missed more than `trailing_logs` entries catches up from a snapshot,
//! then the Syncer fetches the historical blocks the snapshot did not carry from its peers,
//! and its engine replays the whole chain: catch-up never stalls on a hole in the store.
//!
//! Method: 3 in-process nodes producing every 10 ms with a snapshot every 50 entries and 20
//! trailing entries; one follower is stopped while ~300 blocks are produced, then restarted.
//! It must hold every block from 1 to the head, its engine must reach the head, and S1/S2
//! hold.

mod harness;

use std::time::Duration;

use harness::catch_up::leave_behind;
use harness::{Cluster, run, wait_until};
use haseq_messages::Height;

#[test]
fn follower_refills_history_after_a_snapshot_install() {
    run(async {
        let mut c = Cluster::start_configured(3, |s| {
            s.aggregator = true;
            s.block_time = Duration::from_millis(10);
            s.snapshot_threshold = 50;
            s.trailing_logs = 20;
            s.snap_count = 2;
        })
        .await;
        // The leader compacts past what the stopped node has: it can only catch up from a
        // snapshot, which carries the head and recent blocks, not the whole history.
        let (lagger, target) = leave_behind(&mut c, 300, Duration::from_secs(30)).await;
        c.restart(lagger).await;
        wait_until(
            Duration::from_secs(30),
            "the restarted node's engine at the head it missed",
            || async {
                let n = c.node(lagger);
                let exec = n.exec.borrow().clone();
                if exec.exec_height >= target {
                    Ok(())
                } else {
                    Err(format!("exec {exec:?}"))
                }
            },
        )
        .await;
        // Every block from 1 up is in its store (fetched from peers where the snapshot had none).
        let n = c.node(lagger);
        for h in 1..=target {
            assert!(
                n.blocks.block(Height(h)).unwrap().is_some(),
                "block {h} missing on {}",
                n.id
            );
        }
        c.check_invariants();
        eprintln!("phase: caught up through snapshot and Syncer; S1, S2 hold");
        c.stop_all().await;
    });
}
