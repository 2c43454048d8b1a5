//! Goal: a 3-node in-process cluster elects one leader, replicates and applies entries on
//! every node, elects a new leader in a higher term after its leader is killed, and takes the
//! killed node back as a follower with its log intact.
//!
//! Method: real nodes (LMDB, TCP on loopback, openraft with the guide's timings); the leader
//! is stopped abruptly three times; after each phase every running node must agree on one
//! leader and on the applied index, and a restarted node's log must not have shrunk.

mod harness;

use std::time::{Duration, Instant};

use harness::{Cluster, run, wait_until};
use haseq_actors::raft_core::Role;
use haseq_messages::{Block, BlockHash, Command, Height, NodeId};

fn block(height: u64, proposer: &NodeId) -> Block {
    Block {
        height: Height(height),
        parent_hash: hash(height - 1),
        hash: hash(height),
        timestamp: height,
        proposer: proposer.clone(),
        payload: vec![0xab; 64],
    }
}

fn hash(height: u64) -> BlockHash {
    if height == 0 {
        return BlockHash::ZERO;
    }
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&height.to_be_bytes());
    h[31] = 1;
    BlockHash(h)
}

/// Propose blocks `from..=to` on node `leader`, one at a time. A new leader refuses writes
/// until a quorum has acknowledged it (openraft's lease), so a refusal is retried, bounded.
async fn propose(c: &Cluster, leader: usize, from: u64, to: u64) {
    let node = c.node(leader);
    for h in from..=to {
        let mut last = None;
        for _attempt in 0..100 {
            match node
                .raft
                .client_write(Command::Block(block(h, &node.id)))
                .await
            {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(e) = last {
            panic!("proposing block {h} on {}: {e}", node.id);
        }
    }
}

async fn wait_applied_everywhere(c: &Cluster, deadline: Duration) -> u64 {
    wait_until(
        deadline,
        "every running node applied the same index",
        || async {
            let st = c.statuses().await;
            let applied: Vec<_> = st.iter().map(|(_, s)| s.applied_index).collect();
            let committed = st.iter().filter_map(|(_, s)| s.committed_index).max();
            if !applied.is_empty() && applied.iter().all(|a| *a == committed) {
                Ok(committed.unwrap_or(0))
            } else {
                Err(format!("applied {applied:?}, committed {committed:?}"))
            }
        },
    )
    .await
}

#[test]
fn three_nodes_elect_replicate_fail_over_and_rejoin() {
    run(async {
        let mut c = Cluster::start(3).await;
        let (mut leader, mut term) = c.wait_leader(Duration::from_secs(10)).await;
        eprintln!(
            "phase: first leader {} in term {term}",
            c.members[leader].id
        );

        let mut height = 0;
        propose(&c, leader, height + 1, height + 20).await;
        height += 20;
        let applied = wait_applied_everywhere(&c, Duration::from_secs(5)).await;
        assert_eq!(c.check_invariants(), 20);
        eprintln!("phase: 20 blocks applied on every node (index {applied})");

        for round in 0..3 {
            let before = c
                .statuses()
                .await
                .into_iter()
                .find(|(i, _)| *i == leader)
                .unwrap()
                .1;
            let killed_log = before.last_log_index;
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

            propose(&c, new_leader, height + 1, height + 10).await;
            height += 10;

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
                "S2: {} restarted with log {:?}, had {:?}",
                c.members[old].id,
                recovered,
                killed_log
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
            let applied = wait_applied_everywhere(&c, Duration::from_secs(10)).await;
            let low = c.check_invariants();
            assert_eq!(low, height, "every node holds all {height} blocks");
            eprintln!(
                "phase {round}: {} rejoined; all applied index {applied}, height {low}; S1, S2 hold",
                c.members[old].id
            );
            leader = new_leader;
            term = new_term;
        }
        c.stop_all().await;
    });
}
