//! Goal: a node that crashes in the middle of a leadership transfer to it (as it campaigns,
//! or just after it took over) leaves no fork and no stall: production resumes on the other
//! two, and the crashed node rejoins as a follower with its chain intact.
//!
//! Method: 3 in-process nodes producing every 20 ms. Each of [`ROUNDS`] rounds asks the
//! leader's Elector to transfer leadership to a seeded random follower (the admin path,
//! guarded), follows the target's Raft metrics and crashes it (links cut, node stopped) at a
//! seeded random moment: as soon as it campaigns or leads, or 0-40 ms after it leads (so
//! sometimes after its first block). The gap from the crash to the first block a survivor
//! commits is measured; S1-S3 are checked after the crash and again after the restart.

mod harness;

use std::time::{Duration, Instant};

use harness::leadership::{min_median_max, ms, random_follower};
use harness::{Cluster, enable_production, run, test_seed, wait_until};
use haseq_actors::elector::TransferLeadership;
use haseq_messages::Height;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver as _;
use rand::{Rng as _, SeedableRng as _};

const BLOCK_TIME: Duration = Duration::from_millis(20);
const ROUNDS: usize = 8;
/// How far the transfer target's engine may trail the head when the transfer starts: well
/// inside the voters' `max_exec_lag_blocks` (10).
const TARGET_EXEC_LAG_MAX: u64 = 2;
/// A generous bound on one production gap; the figures printed are the measurement.
const GAP_MAX: Duration = Duration::from_secs(5);

#[test]
fn target_crashing_mid_transfer_leaves_no_fork_and_production_resumes() {
    let seed = test_seed();
    run(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut c = Cluster::start_configured(3, |s| enable_production(s, BLOCK_TIME)).await;
        let names: Vec<_> = c.members.iter().map(|m| m.id.clone()).collect();
        c.wait_leader(Duration::from_secs(10)).await;
        c.wait_engines_reach(20, Duration::from_secs(10)).await;
        c.check_invariants();
        let mut gaps = Vec::new();

        for round in 0..ROUNDS {
            let (leader, term) = c.wait_leader(Duration::from_secs(10)).await;
            // Every node eligible again (the last round's target has caught up), as the
            // leader's Elector sees its peers: the guard judges the target by that.
            wait_until(
                Duration::from_secs(10),
                "the leader sees every peer eligible",
                || async {
                    let v = c.node(leader).view.borrow().clone();
                    let all = v
                        .peers
                        .iter()
                        .all(|p| p.state.as_ref().is_some_and(|s| s.eligible && s.healthy));
                    if all && v.peers.len() == 2 {
                        Ok(())
                    } else {
                        Err(c.describe())
                    }
                },
            )
            .await;
            let h = c.top_applied();
            c.wait_block_above(h, Duration::from_secs(10)).await;
            let target = random_follower(&mut rng, leader);
            let tid = names[target].clone();
            // 0: as soon as it campaigns or leads; otherwise that many ms after it leads.
            let extra_ms: u64 = if rng.random_bool(0.4) {
                0
            } else {
                rng.random_range(1..=40)
            };
            let mut rx = c.node(target).raft.metrics();
            // The guard judges the target by the leader's last poll of it; a refusal while
            // that view catches up is retried (bounded), anything else fails below. The
            // target's engine must be near the head by its own reading too: the guard's view
            // is up to a poll old, and voters that see the target past max_exec_lag_blocks
            // refuse it (under CPU load a rejoined node's engine trails by several blocks).
            let to = wait_until(
                Duration::from_secs(5),
                &format!("the transfer to {tid} accepted"),
                || async {
                    let (eh, _) = c
                        .engine_head(target)
                        .ok_or_else(|| format!("{tid} has no embedded engine"))?;
                    let top = c.top_applied();
                    if eh + TARGET_EXEC_LAG_MAX < top {
                        return Err(format!("{tid}'s engine at {eh}, head {top}"));
                    }
                    c.node(leader)
                        .elector
                        .get()
                        .send(TransferLeadership {
                            to: Some(tid.clone()),
                            force: false,
                        })
                        .await
                        .map_err(|e| format!("elector: {e}"))?
                        .map_err(|e| e.to_string())
                },
            )
            .await;
            assert_eq!(to, tid);
            let t = Instant::now();
            let mut seen = None;
            for _ in 0..10_000 {
                let (st, tm) = {
                    let m = rx.borrow_watched();
                    (m.state, m.current_term)
                };
                let leading = st == ServerState::Leader;
                if (extra_ms == 0 && (st == ServerState::Candidate || leading))
                    || (extra_ms > 0 && leading)
                {
                    seen = Some((st, tm, t.elapsed()));
                    break;
                }
                if t.elapsed() > Duration::from_secs(2) {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(1), rx.changed()).await;
            }
            let (st, tm, after) = seen
                .unwrap_or_else(|| panic!("{tid} did not take over within 2 s: {}", c.describe()));
            if extra_ms > 0 {
                tokio::time::sleep(Duration::from_millis(extra_ms)).await;
            }
            let h_crash = c.top_applied();
            let t = Instant::now();
            c.crash(target).await;
            let by_target = (h + 1..=h_crash)
                .filter(|&x| {
                    (0..3).filter(|&i| i != target).any(|i| {
                        c.node(i)
                            .blocks
                            .block(Height(x))
                            .ok()
                            .flatten()
                            .is_some_and(|b| b.proposer == tid)
                    })
                })
                .count();
            let h_now = c.top_applied();
            let (hb, by) = wait_until(
                GAP_MAX * 2,
                "a block by a survivor after the crash",
                || async {
                    let top = c.top_applied();
                    for x in (h_now + 1)..=top {
                        for i in (0..3).filter(|&i| i != target) {
                            if let Some(b) = c.node(i).blocks.block(Height(x)).expect("read")
                                && b.proposer != tid
                            {
                                return Ok((x, b.proposer));
                            }
                        }
                    }
                    Err(c.describe())
                },
            )
            .await;
            let gap = t.elapsed();
            gaps.push(gap);
            eprintln!(
                "round {round}: {} (term {term}) -> {tid}; crashed it {} after {:?} in term {tm} (+{extra_ms} ms), having committed {by_target} blocks; {by} committed {hb} {} later",
                names[leader],
                ms(after),
                st,
                ms(gap)
            );
            c.check_invariants();
            c.restart(target).await;
            let top = c.top_applied();
            wait_until(
                Duration::from_secs(10),
                &format!("{tid} back as a follower, caught up"),
                || async {
                    let m = c.metrics(target);
                    if m.state == ServerState::Follower
                        && m.current_leader.is_some()
                        && c.applied_height(target) >= top
                    {
                        Ok(())
                    } else {
                        Err(c.describe())
                    }
                },
            )
            .await;
            let top = c.check_invariants();
            eprintln!("round {round}: {tid} rejoined; S1-S3 hold up to height {top}");
        }
        let (lo, med, hi) = min_median_max(&mut gaps);
        eprintln!(
            "figures: production gap after a crash mid-transfer over {ROUNDS}: min {} / median {} / max {}",
            ms(lo),
            ms(med),
            ms(hi)
        );
        assert!(hi < GAP_MAX, "a production gap of {hi:?}");
        c.stop_all().await;
    });
}
