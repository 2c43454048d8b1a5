//! Goal: killing the leader at random moments, 20 times, never forks the chain, never loses a
//! committed block, never leaves an engine on an uncommitted block, and production always
//! resumes on the survivors (L1); the production gap is measured.
//!
//! Method: 3 in-process nodes with embedded engines producing every 50 ms. Each round waits
//! for production under the current leader, waits a seeded random delay, kills the leader
//! abruptly and times the gap from the kill to the first block committed on a survivor on
//! top of the pre-kill head by another proposer; then restarts the killed node and waits until
//! its Raft log and its engine have caught up. The shared invariants (S1-S3) are checked after
//! the kill, right after the restart and after the catch-up; S3 (every engine's head is a
//! committed block) also at every poll while waiting. The gaps' min / median / max are
//! printed at the end; the assertion on each gap is a generous bound, the figures are the
//! measurement.

mod harness;

use std::time::{Duration, Instant};

use harness::{Cluster, enable_production, run, test_seed, wait_until};
use haseq_messages::{Height, NodeId};
use haseq_storage::BlockReader;
use rand::{Rng as _, SeedableRng as _};

const BLOCK_TIME: Duration = Duration::from_millis(50);
const KILLS: usize = 20;
/// Generous bound on one production gap; DESIGN.md's L1 target is far below it.
const GAP_MAX: Duration = Duration::from_secs(5);
/// L1: `election_timeout_max + 2 x block_time` with the guide's 368 ms election timeout.
const L1_TARGET: Duration = Duration::from_millis(368 + 2 * 50);
/// How long after the new leader's first block the survivors' engine heads are still watched.
const HEAD_WATCH_AFTER: Duration = Duration::from_millis(300);
/// How often the gap watcher looks at the survivors' block stores.
const WATCH_EVERY: Duration = Duration::from_millis(2);

/// The first block above `above` committed on any of `stores` by a proposer other than
/// `killed`: when it was seen, its height and its proposer. Polls every [`WATCH_EVERY`] for at
/// most `deadline`.
async fn first_new_block(
    stores: Vec<(NodeId, BlockReader)>,
    above: u64,
    killed: NodeId,
    deadline: Duration,
) -> Option<(Instant, u64, NodeId)> {
    let start = Instant::now();
    let polls = deadline.as_millis() / WATCH_EVERY.as_millis() + 1;
    for _poll in 0..polls {
        for (_, store) in &stores {
            let Ok(head) = store.head() else { continue };
            for h in above + 1..=head.height.0 {
                if let Ok(Some(b)) = store.block(Height(h))
                    && b.proposer != killed
                {
                    return Some((Instant::now(), h, b.proposer));
                }
            }
        }
        if start.elapsed() > deadline {
            break;
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
    None
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[test]
fn leader_killed_twenty_times_production_resumes_and_nothing_forks() {
    let seed = test_seed();
    run(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut c = Cluster::start_configured(3, |s| enable_production(s, BLOCK_TIME)).await;
        let (leader, term) = c.wait_leader(Duration::from_secs(10)).await;
        eprintln!("phase: {} leads term {term}", c.members[leader].id);
        c.wait_engines_reach(5, Duration::from_secs(10)).await;
        c.check_invariants();

        let mut gaps = Vec::new();
        let mut regressions: Vec<String> = Vec::new();
        for round in 0..KILLS {
            let (leader, term) = c.wait_leader(Duration::from_secs(10)).await;
            let before = c.top_applied();
            wait_until(
                Duration::from_secs(5),
                "the leader produces a block",
                || async {
                    // S3 at every poll, not only between phases.
                    c.check_engine_heads();
                    let now = c.top_applied();
                    if now > before {
                        Ok(())
                    } else {
                        Err(format!("head still {now}"))
                    }
                },
            )
            .await;
            // The random moment: anywhere in the next two block times (mid-build, mid-commit,
            // mid-replay). The sleep is the moment itself, not a stand-in for a condition.
            let delay =
                Duration::from_millis(rng.random_range(0..2 * BLOCK_TIME.as_millis() as u64));
            tokio::time::sleep(delay).await;

            let killed = c.members[leader].id.clone();
            let survivors: Vec<(NodeId, BlockReader)> = (0..c.members.len())
                .filter(|&i| i != leader && c.members[i].node.is_some())
                .map(|i| (c.members[i].id.clone(), c.node(i).blocks.clone()))
                .collect();
            let h0 = c.top_applied();
            let t0 = Instant::now();
            let watcher = tokio::spawn(first_new_block(survivors, h0, killed.clone(), GAP_MAX));
            let others: Vec<usize> = (0..c.members.len()).filter(|&i| i != leader).collect();
            let mut last: Vec<u64> = others
                .iter()
                .map(|&i| c.engine_head(i).map(|(h, _)| h).unwrap_or(0))
                .collect();
            c.kill(leader).await;
            let killed_in = t0.elapsed();
            // Until the watcher has seen the new leader's first block, and a little beyond,
            // watch the survivors' engine heads: they should only move forward.
            let mut finished_at: Option<Instant> = None;
            for _poll in 0..(GAP_MAX + HEAD_WATCH_AFTER).as_millis() {
                for (k, &i) in others.iter().enumerate() {
                    let (eh, _) = c.engine_head(i).expect("engine head");
                    if eh < last[k] {
                        regressions.push(format!(
                            "round {round}: {} engine head {} -> {eh} at {:?} after the kill",
                            c.members[i].id,
                            last[k],
                            t0.elapsed()
                        ));
                    }
                    last[k] = eh;
                }
                if watcher.is_finished()
                    && finished_at.get_or_insert_with(Instant::now).elapsed() > HEAD_WATCH_AFTER
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let seen = watcher.await.expect("gap watcher");
            let Some((t1, height, proposer)) = seen else {
                panic!(
                    "round {round}: no new block above {h0} within {GAP_MAX:?} after killing {killed}; \
                     statuses {:?}",
                    c.statuses().await
                );
            };
            let gap = t1.duration_since(t0);
            assert!(
                gap <= GAP_MAX,
                "round {round}: production gap {gap:?} > {GAP_MAX:?}"
            );
            gaps.push(gap);
            eprintln!(
                "phase {round}: killed leader {killed} (term {term}) {} after its block; kill took {}; \
                 block {height} by {proposer} after {}",
                fmt_ms(delay),
                fmt_ms(killed_in),
                fmt_ms(gap)
            );
            c.check_invariants();

            c.restart(leader).await;
            c.check_invariants();
            let target = c.top_applied();
            wait_until(
                Duration::from_secs(15),
                "the restarted node's log and engine caught up",
                || async {
                    // S3 at every poll, not only between phases.
                    c.check_engine_heads();
                    let applied = c.applied_height(leader);
                    let (eh, _) = c.engine_head(leader).expect("embedded engine");
                    if applied >= target && eh >= target {
                        Ok(())
                    } else {
                        Err(format!(
                            "{killed}: applied {applied}, engine {eh}, target {target}; exec {:?}",
                            c.exec_status(leader)
                        ))
                    }
                },
            )
            .await;
            let low = c.check_invariants();
            eprintln!(
                "phase {round}: {killed} restarted and caught up to {target} (lowest head {low}); S1-S3 hold"
            );
        }

        let mut sorted = gaps.clone();
        sorted.sort();
        let over_l1 = sorted.iter().filter(|g| **g > L1_TARGET).count();
        eprintln!(
            "production gap after a leader kill over {} kills: min {} / median {} / max {}; \
             {over_l1} above L1's {} (all gaps: {})",
            sorted.len(),
            fmt_ms(sorted[0]),
            fmt_ms(sorted[sorted.len() / 2]),
            fmt_ms(sorted[sorted.len() - 1]),
            fmt_ms(L1_TARGET),
            gaps.iter()
                .map(|g| fmt_ms(*g))
                .collect::<Vec<_>>()
                .join(", ")
        );
        eprintln!(
            "survivors' engine head regressions around the kills: {} {regressions:?}",
            regressions.len()
        );
        c.check_invariants();
        c.stop_all().await;
    });
}
