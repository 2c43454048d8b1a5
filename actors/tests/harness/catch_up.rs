//! Shared steps of the catch-up scenarios: leave a follower behind by more than the leader's
//! log keeps, and watch its Syncer.

use std::time::Duration;

use haseq_actors::syncer::SyncProgress;
use haseq_messages::Height;

use super::{Cluster, wait_until};

/// Stop a follower of the current leader, let the cluster produce `blocks` more blocks, and
/// wait until the leader's log is purged past what the stopped node holds (so it can only
/// come back through a snapshot). Returns the stopped node and the height then reached.
pub async fn leave_behind(c: &mut Cluster, blocks: u64, deadline: Duration) -> (usize, u64) {
    let (leader, _) = c.wait_leader(Duration::from_secs(10)).await;
    let lagger = (leader + 1) % c.members.len();
    let lagger_log = c
        .node(lagger)
        .raft
        .with_raft_state(|st| st.log_ids.last().map(|l| l.index))
        .await
        .expect("raft state");
    let from = c.applied_height(leader);
    c.kill(lagger).await;
    eprintln!("phase: {} stopped at height {from}", c.members[lagger].id);
    let target = wait_until(
        deadline,
        "blocks produced without the stopped node",
        || async {
            let (leader, _) = c.agreed_leader().await.ok_or("no leader")?;
            let h = c.applied_height(leader);
            if h >= from + blocks {
                Ok(h)
            } else {
                Err(format!("height {h}"))
            }
        },
    )
    .await;
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
    eprintln!("phase: height {target} reached without it; log purged past it");
    (lagger, target)
}

/// Node `i`'s sync progress now.
pub fn progress(c: &Cluster, i: usize) -> Option<SyncProgress> {
    c.node(i).sync.borrow().clone()
}

/// `(haseq_sync_active, haseq_sync_remaining_blocks)` from this process's metrics (one
/// recorder for every in-process node: only a node that syncs sets them to anything but 0).
pub fn sync_gauges() -> (f64, f64) {
    let text = haseq_actors::metrics::prometheus()
        .expect("metrics")
        .render();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
    };
    (
        value("haseq_sync_active"),
        value("haseq_sync_remaining_blocks"),
    )
}

/// Wait until node `i` holds every block from 1 to `height` and its engine has reached it.
pub async fn wait_caught_up(c: &Cluster, i: usize, height: u64, deadline: Duration) {
    wait_until(
        deadline,
        "the node's history complete and its engine at the head",
        || async {
            let n = c.node(i);
            let missing = n
                .blocks
                .missing_range(Height(0), Height(height))
                .map_err(|e| e.to_string())?;
            let exec = n.exec.borrow().exec_height;
            let sync = n.sync.borrow().clone();
            if missing.is_none() && exec >= height {
                Ok(())
            } else {
                Err(format!("missing {missing:?}, exec {exec}, sync {sync:?}"))
            }
        },
    )
    .await;
}
