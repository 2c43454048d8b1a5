//! Goal: a node started with `raft.join: true` and an empty `raft_dir` never bootstraps a
//! cluster of its own: it serves `/status` as `joining` and waits; once the others have
//! formed the cluster (it is in their membership), their leader replicates to it, and it
//! follows with the same chain.
//!
//! Method: 3 in-process nodes producing 100 ms blocks; node-3 has `join: true` and starts
//! alone. For 1.5 s (longer than an election timeout) it must stay at term 0 with no
//! membership and say `joining` (a sleep: this shows that something does *not* happen).
//! Then node-1 and node-2 start; node-3 must become a follower of their leader, reach their
//! height, and S1-S3 hold.

mod harness;

use std::time::Duration;

use harness::{Cluster, enable_production, run, wait_until};
use haseq_actors::api_client;
use haseq_messages::NodeId;
use openraft::async_runtime::WatchReceiver;

const CALL: Duration = Duration::from_millis(500);

async fn role(c: &Cluster, i: usize) -> Result<String, String> {
    let api = c.node(i).api_addr.to_string();
    let r = api_client::request(&api, "GET", "/status", None, CALL).await?;
    let v: serde_json::Value = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
    Ok(v["role"].as_str().unwrap_or_default().to_string())
}

#[test]
fn a_joining_node_waits_for_the_cluster_and_then_follows_it() {
    run(async {
        let mut c = Cluster::configured(3, |s| {
            enable_production(s, Duration::from_millis(100));
            s.join = s.node_id == NodeId::from("node-3");
        })
        .await;
        let joiner = 2;
        c.restart(joiner).await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        {
            let m = c.node(joiner).raft.metrics().borrow_watched().clone();
            assert_eq!(m.current_term, 0, "a joining node never campaigns");
            assert_eq!(
                m.membership_config.membership().voter_ids().count(),
                0,
                "a joining node has no membership of its own"
            );
        }
        assert_eq!(role(&c, joiner).await.expect("status"), "joining");
        eprintln!("phase: node-3 alone for 1.5 s: joining, term 0, no membership");

        c.restart(0).await;
        c.restart(1).await;
        let height = wait_until(
            Duration::from_secs(30),
            "node-3 follows the cluster's leader with 20 blocks",
            || async {
                let r = role(&c, joiner).await?;
                let h = c.applied_height(joiner);
                if r == "follower" && h >= 20 {
                    Ok(h)
                } else {
                    Err(format!("role {r}, applied {h}"))
                }
            },
        )
        .await;
        eprintln!("phase: node-3 follows at height {height}");
        c.check_invariants();
        c.stop_all().await;
    });
}
