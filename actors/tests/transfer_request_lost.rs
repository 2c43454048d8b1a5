//! Goal: a leadership transfer whose first request does not reach its target (a link down
//! for a moment; the same as a request that overtakes the leader's last entry on its way,
//! which openraft's target ignores) still hands leadership to that target, without waiting
//! for an election timeout that any node may win: the leader stops proposing once it asks, and
//! the other followers stop trusting its lease.
//!
//! Method: 3 in-process nodes producing every 5 ms. Each of [`ROUNDS`] rounds cuts a seeded
//! random follower's links until it has missed [`ISOLATED_BLOCKS`] blocks, asks the leader's
//! Elector (the admin path, forced) to transfer to it while it is cut off, restores its links
//! [`HEAL_AFTER`] later, and requires that follower to lead within the election timeout
//! (before which no follower campaigns by itself) and no other node to lead meanwhile. S1-S3
//! are checked after every round, and production must resume under the new leader.

mod harness;

use std::time::{Duration, Instant};

use harness::leadership::{min_median_max, ms, random_follower};
use harness::{Cluster, enable_production, run, test_seed};
use haseq_actors::elector::TransferLeadership;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver as _;
use rand::SeedableRng as _;

const BLOCK_TIME: Duration = Duration::from_millis(5);
const ROUNDS: usize = 12;
/// Blocks the target misses before each transfer: well inside the voters' max_exec_lag_blocks
/// (10), so that they grant its campaign.
const ISOLATED_BLOCKS: u64 = 3;
/// How long after the transfer request the target's links come back.
const HEAL_AFTER: Duration = Duration::from_millis(30);
/// The target must lead within this long of the transfer request: the harness's election
/// timeout (368 ms), before which no follower campaigns by itself.
const TAKEOVER_MAX: Duration = Duration::from_millis(368);

#[test]
fn a_transfer_whose_first_request_is_lost_still_hands_leadership_to_its_target() {
    let seed = test_seed();
    run(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut c = Cluster::start_configured(3, |s| enable_production(s, BLOCK_TIME)).await;
        let names: Vec<_> = c.members.iter().map(|m| m.id.clone()).collect();
        c.wait_leader(Duration::from_secs(10)).await;
        c.wait_engines_reach(20, Duration::from_secs(10)).await;
        let mut takeovers = Vec::new();

        for round in 0..ROUNDS {
            let (leader, term) = c.wait_leader(Duration::from_secs(10)).await;
            let h = c.top_applied();
            c.wait_block_above(h, Duration::from_secs(10)).await;
            let target = random_follower(&mut rng, leader);
            let tid = names[target].clone();
            let mut rx = c.node(target).raft.metrics();
            // The target misses the last few blocks (its links cut), and the transfer is asked
            // for while it is still cut off (forced: the guard would refuse a target it has not
            // heard from), so that the first request to it is lost; its links come back
            // [`HEAL_AFTER`] later.
            c.isolate(target);
            let h = c.top_applied();
            c.wait_block_above(h + ISOLATED_BLOCKS, Duration::from_secs(10))
                .await;
            let to = c
                .node(leader)
                .elector
                .get()
                .send(TransferLeadership {
                    to: Some(tid.clone()),
                    force: true,
                })
                .await
                .expect("elector")
                .expect("a forced transfer is accepted");
            let t = Instant::now();
            assert_eq!(to, tid);
            tokio::time::sleep(HEAL_AFTER).await;
            c.heal(target);
            let mut took = None;
            for _ in 0..10_000 {
                if rx.borrow_watched().state == ServerState::Leader {
                    took = Some(t.elapsed());
                    break;
                }
                for i in (0..3).filter(|&i| i != target) {
                    let m = c.metrics(i);
                    assert!(
                        !(m.state == ServerState::Leader && m.current_term > term),
                        "round {round}: {} won term {} instead of {tid}: {}",
                        names[i],
                        m.current_term,
                        c.describe()
                    );
                }
                if t.elapsed() > TAKEOVER_MAX {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(1), rx.changed()).await;
            }
            let took = took.unwrap_or_else(|| {
                panic!(
                    "round {round}: {tid} did not lead within {TAKEOVER_MAX:?} of the transfer: {}",
                    c.describe()
                )
            });
            takeovers.push(took);
            let h = c.top_applied();
            c.wait_block_above(h, Duration::from_secs(10)).await;
            let top = c.check_invariants();
            eprintln!(
                "round {round}: {} (term {term}) -> {tid} in {}; production resumed; S1-S3 hold up to height {top}",
                names[leader],
                ms(took)
            );
        }
        let (lo, med, hi) = min_median_max(&mut takeovers);
        eprintln!(
            "figures: takeover after a transfer whose first request was lost, over {ROUNDS}: min {} / median {} / max {}",
            ms(lo),
            ms(med),
            ms(hi)
        );
        c.stop_all().await;
    });
}
