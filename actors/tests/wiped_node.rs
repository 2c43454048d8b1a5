//! Goal: a voter whose `raft_dir` was lost does not come back under its old id as if new
//! (it would forget the votes it gave: Raft's double-vote hazard). Started with an empty
//! `raft_dir`, it asks its peers before it serves Raft; the leader that replicated to it
//! says so, and the node refuses to start (`NodeError::ForgottenIdentity`, exit status 2 in
//! `haseqd`) with a message naming `raft.join`; the cluster goes on producing. (Brought back
//! anyway, its log would go backwards: openraft's leader asserts against that.)
//!
//! Method: 3 in-process nodes producing 100 ms blocks; a follower is stopped, its whole
//! directory removed, and started again, twice. S1-S3 checked on the running nodes.

mod harness;

use std::time::Duration;

use harness::{Cluster, enable_production, run, wait_until};
use haseq_actors::node::NodeError;

#[test]
fn a_wiped_voter_refuses_to_start_afresh_and_the_cluster_goes_on() {
    run(async {
        let mut c = Cluster::start_configured(3, |s| {
            enable_production(s, Duration::from_millis(100));
        })
        .await;
        let (leader, _) = c.wait_leader(Duration::from_secs(10)).await;
        c.wait_engines_reach(20, Duration::from_secs(30)).await;
        let wiped = (leader + 1) % 3;
        c.kill(wiped).await;
        let dir = c.members[wiped].settings.raft_dir.clone();
        std::fs::remove_dir_all(&dir).expect("wipe raft_dir");
        eprintln!(
            "phase: {} stopped and its raft_dir removed",
            c.members[wiped].id
        );

        let err = c
            .try_restart(wiped)
            .await
            .expect_err("a wiped voter must not start");
        eprintln!("phase: refused: {err}");
        assert!(
            matches!(err, NodeError::ForgottenIdentity { matched, .. } if matched > 0),
            "{err:?}"
        );
        assert!(err.is_operator_error(), "haseqd exits 2 on it");
        assert!(err.to_string().contains("raft.join"), "{err}");
        assert!(c.members[wiped].node.is_none());

        // The cluster never noticed: it goes on producing, and a second attempt is refused
        // the same way (the refused start wrote no Raft state).
        let before = c.top_applied();
        wait_until(Duration::from_secs(10), "production goes on", || async {
            let h = c.top_applied();
            if h >= before + 10 {
                Ok(h)
            } else {
                Err(format!("top {h}, was {before}"))
            }
        })
        .await;
        let again = c.try_restart(wiped).await.expect_err("refused again");
        assert!(
            matches!(again, NodeError::ForgottenIdentity { .. }),
            "{again:?}"
        );
        eprintln!("phase: production went on past {before}; a second start refused too");
        c.check_invariants();
        c.stop_all().await;
    });
}
