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
        let (leader, _) = c.wait_leader(Duration::from_secs(10)).await;
        let lagger = (leader + 1) % 3;
        let lagger_log = c
            .node(lagger)
            .raft
            .with_raft_state(|st| st.log_ids.last().map(|l| l.index))
            .await
            .unwrap();
        c.kill(lagger).await;
        eprintln!("phase: {} stopped", c.members[lagger].id);

        let target = wait_until(
            Duration::from_secs(30),
            "300 blocks without the stopped node",
            || async {
                let (leader, _) = c.agreed_leader().await.ok_or("no leader")?;
                let h = c
                    .node(leader)
                    .blocks
                    .head()
                    .map_err(|e| e.to_string())?
                    .height
                    .0;
                if h >= 300 {
                    Ok(h)
                } else {
                    Err(format!("height {h}"))
                }
            },
        )
        .await;
        eprintln!("phase: height {target} reached");
        // The leader compacted past what the stopped node has: it can only catch up from a
        // snapshot, which carries the head, not the history.
        // (The purge follows the snapshot build as a flushed change of its own: wait for it.)
        let (leader, _) = c.agreed_leader().await.expect("leader");
        wait_until(
            Duration::from_secs(10),
            "the leader's log purged past what the stopped node has",
            || async {
                let purged = c.purged(leader).await?;
                if purged > lagger_log {
                    Ok(())
                } else {
                    Err(format!(
                        "leader purged {purged:?}, stopped node had {lagger_log:?}"
                    ))
                }
            },
        )
        .await;

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
