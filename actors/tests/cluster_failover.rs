//! Goal: a 3-node in-process cluster elects one leader, replicates and applies blocks on every
//! node, elects a new leader in a higher term after its leader is killed, and takes the
//! killed node back as a follower with its log intact.
//!
//! Method: real nodes (LMDB, TCP on loopback, openraft with the guide's timings, embedded
//! engines) producing every 20 ms; the leader is stopped abruptly three times; after each
//! phase every running node must agree on one leader, hold the same chain (S1), never have
//! lost an applied block (S2), and have its engine on a committed block (S3); a restarted
//! node's recovered Raft log must not have shrunk.

mod harness;

use std::time::{Duration, Instant};

use harness::{Cluster, enable_production, run, wait_until};
use haseq_actors::raft_core::Role;

#[test]
fn three_nodes_elect_replicate_fail_over_and_rejoin() {
    run(async {
        let mut c =
            Cluster::start_configured(3, |s| enable_production(s, Duration::from_millis(20))).await;
        let (mut leader, mut term) = c.wait_leader(Duration::from_secs(10)).await;
        eprintln!(
            "phase: first leader {} in term {term}",
            c.members[leader].id
        );
        c.wait_engines_reach(20, Duration::from_secs(15)).await;
        c.check_invariants();
        eprintln!("phase: 20 blocks applied and replayed on every node");

        for round in 0..3 {
            let killed_log = c
                .node(leader)
                .raft
                .with_raft_state(|st| st.log_ids.last().map(|l| l.index))
                .await
                .expect("raft state");
            let top = c.top_applied();
            let t = Instant::now();
            c.kill(leader).await;
            let (new_leader, new_term) = c.wait_leader(Duration::from_secs(10)).await;
            let gap = t.elapsed();
            assert_ne!(new_leader, leader, "a killed node cannot lead");
            assert!(
                new_term > term,
                "new leader's term {new_term} must exceed {term}"
            );
            eprintln!(
                "phase {round}: {} killed; {} leads term {new_term} after {gap:?}",
                c.members[leader].id, c.members[new_leader].id
            );
            c.wait_engines_reach(top + 10, Duration::from_secs(15))
                .await;

            let old = leader;
            c.restart(old).await;
            // Ask Raft's core for the log it recovered from disk (metrics may lag a moment).
            let recovered = c
                .node(old)
                .raft
                .with_raft_state(|st| st.log_ids.last().map(|l| l.index))
                .await
                .expect("raft state");
            assert!(
                recovered >= killed_log,
                "S2: {} restarted with log {recovered:?}, had {killed_log:?}",
                c.members[old].id
            );
            let leader_id = c.members[new_leader].id.clone();
            wait_until(
                Duration::from_secs(10),
                "restarted node follows the new leader",
                || async {
                    let st = c.statuses().await;
                    let s = &st.iter().find(|(i, _)| *i == old).unwrap().1;
                    if s.role == Role::Follower && s.leader_id.as_ref() == Some(&leader_id) {
                        Ok(())
                    } else {
                        Err(format!("{s:?}"))
                    }
                },
            )
            .await;
            let h = c.top_applied();
            c.wait_engines_reach(h, Duration::from_secs(15)).await;
            c.check_invariants();
            eprintln!(
                "phase {round}: {} rejoined; every engine at >= {h}; S1-S3 hold",
                c.members[old].id
            );
            leader = new_leader;
            term = new_term;
        }
        c.stop_all().await;
    });
}
