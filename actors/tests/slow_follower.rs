//! Goal: a follower with a slow execution engine falls behind, its catch-up progress never
//! goes back when leaders change (its lag never jumps up beyond what new blocks explain), and
//! once the engine is fast again it catches up to a lag of about zero.
//!
//! Method: 3 in-process nodes producing every 10 ms; one follower's embedded engine gets a
//! 50 ms delay per imported block (it imports at most 20 blocks/s, less than is produced). While it
//! falls behind, leadership changes six times between the two other nodes: three times by
//! openraft's `transfer_leader`, three times by killing the leader and restarting it. A sampler
//! reads the slow node's published execution status and its engine's own head every 2 ms; an
//! execution height that ever decreases (a lag increase that new blocks do not explain), or an
//! engine head that is not the committed block at its height (S3), fails the test. Then the delay is lifted and the node must reach a lag of at most one block. The
//! shared invariants (S1-S3) are checked after every phase.

mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use harness::{Cluster, enable_production, run, wait_until};
use haseq_actors::exec_replayer::ExecStatus;
use haseq_engine::{EmbeddedEngine, ExecutionEngine as _, Faults};
use haseq_storage::BlockReader;
use tokio::sync::watch;

const BLOCK_TIME: Duration = Duration::from_millis(10);
/// Production runs at about 20-50 blocks/s here in a debug build (each block waits for its
/// commit and for the leader's own replay), so an engine that imports at most 20 blocks/s
/// falls behind, while its head still moves after each (growing) replay batch.
const DELAY_PER_BLOCK: Duration = Duration::from_millis(50);
const LEADER_CHANGES: usize = 6;
/// Blocks produced between two leader changes.
const BLOCKS_PER_ROUND: u64 = 60;
const SAMPLE_EVERY: Duration = Duration::from_millis(2);
/// The sampler's bound: it is stopped long before.
const SAMPLES_MAX: usize = 60_000;

#[derive(Debug, Default)]
struct Samples {
    count: usize,
    /// The largest drop of the published exec height between two samples.
    exec_drop_max: u64,
    /// The largest drop of the engine's own head between two samples.
    engine_drop_max: u64,
    /// How many times the engine's head was seen to move forward.
    advances: usize,
    /// Samples whose engine head was not the committed block at its height (S3).
    uncommitted_heads: usize,
    /// The largest lag seen: the node's applied height minus its engine's head, both read at
    /// the sample (the published status is only refreshed after each replay batch).
    lag_max: u64,
    /// The first few drops, for the failure message.
    drops: Vec<String>,
}

/// Sample the slow node until `stop`: its published status and its engine's head.
async fn sample(
    exec: watch::Receiver<ExecStatus>,
    engine: Arc<EmbeddedEngine>,
    blocks: BlockReader,
    stop: Arc<AtomicBool>,
) -> Samples {
    let mut s = Samples::default();
    let mut prev: Option<(u64, u64, u64)> = None;
    let start = Instant::now();
    for _sample in 0..SAMPLES_MAX {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let st = exec.borrow().clone();
        if let (Ok((eh, ehash)), Ok(applied)) = (engine.head().await, blocks.head()) {
            s.count += 1;
            // S3 at every sample: the slow engine's head is a committed block (or genesis).
            if eh.0 > 0 {
                let committed = blocks.block(eh).ok().flatten().map(|b| b.hash);
                if committed != Some(ehash) {
                    s.uncommitted_heads += 1;
                    if s.drops.len() < 10 {
                        s.drops.push(format!(
                            "engine head {eh} {ehash} is not committed ({committed:?})"
                        ));
                    }
                }
            }
            s.lag_max = s.lag_max.max(applied.height.0.saturating_sub(eh.0));
            if let Some((pe, pa, ph)) = prev {
                let exec_drop = pe.saturating_sub(st.exec_height);
                let engine_drop = ph.saturating_sub(eh.0);
                if (exec_drop > 0 || engine_drop > 0) && s.drops.len() < 10 {
                    s.drops.push(format!(
                        "at {:?}: exec {pe} -> {} (applied {pa} -> {}, lag -> {}), engine {ph} -> {}",
                        start.elapsed(),
                        st.exec_height,
                        st.applied_height,
                        st.lag,
                        eh.0
                    ));
                }
                s.exec_drop_max = s.exec_drop_max.max(exec_drop);
                s.engine_drop_max = s.engine_drop_max.max(engine_drop);
                if eh.0 > ph {
                    s.advances += 1;
                }
            }
            prev = Some((st.exec_height, st.applied_height, eh.0));
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    s
}

/// Waits (bounded) until the nodes agree that `want` leads.
async fn wait_agreed_leader(c: &Cluster, want: usize, within: Duration, what: &str) {
    wait_until(within, what, || async {
        match c.agreed_leader().await {
            Some((l, _)) if l == want => Ok(()),
            got => Err(format!("leader {got:?}")),
        }
    })
    .await;
}

#[test]
fn slow_follower_never_loses_progress_across_leader_changes_and_catches_up() {
    run(async {
        let mut c = Cluster::start_configured(3, |s| enable_production(s, BLOCK_TIME)).await;
        let (leader, term) = c.wait_leader(Duration::from_secs(10)).await;
        c.wait_engines_reach(10, Duration::from_secs(10)).await;
        c.check_invariants();
        let slow = (leader + 1) % 3;
        let sid = c.members[slow].id.clone();
        eprintln!(
            "phase: {} leads term {term}; {sid} gets a slow engine",
            c.members[leader].id
        );

        let engine = c.node(slow).embedded.clone().expect("embedded engine");
        engine
            .set_faults(Faults {
                delay_per_block: DELAY_PER_BLOCK,
                ..Faults::default()
            })
            .await
            .expect("set faults");
        let (t_rounds, h_rounds) = (Instant::now(), c.top_applied());
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = tokio::spawn(sample(
            c.node(slow).exec.clone(),
            engine.clone(),
            c.node(slow).blocks.clone(),
            stop.clone(),
        ));
        // The slow node's lag against the cluster's head, from its engine's own head.
        let lag_of = |c: &Cluster| {
            let (eh, _) = c.engine_head(slow).expect("engine head");
            (eh, c.top_applied().saturating_sub(eh))
        };

        for round in 0..LEADER_CHANGES {
            let (leader, term) = c.wait_leader(Duration::from_secs(10)).await;
            assert_ne!(leader, slow, "the lagging node must not lead");
            let from = c.top_applied();
            wait_until(
                Duration::from_secs(10),
                "blocks produced under this leader",
                || async {
                    let now = c.top_applied();
                    if now >= from + BLOCKS_PER_ROUND {
                        Ok(())
                    } else {
                        Err(format!("head {now}, from {from}"))
                    }
                },
            )
            .await;
            let before = lag_of(&c);
            let lid = c.members[leader].id.clone();
            let other = (0..3)
                .find(|&i| i != leader && i != slow)
                .expect("a third node");
            let how = if round % 2 == 0 {
                c.node(leader)
                    .raft
                    .trigger()
                    .transfer_leader(c.members[other].id.clone())
                    .await
                    .expect("transfer_leader");
                wait_agreed_leader(&c, other, Duration::from_secs(10), "the transfer completed")
                    .await;
                "transferred"
            } else {
                c.kill(leader).await;
                let (nl, _) = c.wait_leader(Duration::from_secs(10)).await;
                if nl != other {
                    // Raft's own rule can bar the caught-up survivor: when the killed leader's
                    // last entry reached the slow node alone, the slow node (longer log)
                    // refuses the survivor's votes and the survivor refuses the slow node's
                    // (exec lag). After the relaxation window with no leader the most caught-up node by
                    // Raft log, the slow one, may win; it must hand over to the survivor at
                    // once (seen under CPU load, at a23d465 too: 1 run in 8).
                    assert_eq!(nl, slow, "only the survivors can win");
                    wait_agreed_leader(
                        &c,
                        other,
                        Duration::from_secs(3),
                        "the lagging winner handed over to the caught-up survivor",
                    )
                    .await;
                }
                c.check_invariants();
                c.restart(leader).await;
                let target = c.top_applied();
                wait_until(
                    Duration::from_secs(15),
                    "the restarted node caught up",
                    || async {
                        let (eh, _) = c.engine_head(leader).expect("engine head");
                        if eh >= target {
                            Ok(())
                        } else {
                            Err(format!("engine {eh}, target {target}"))
                        }
                    },
                )
                .await;
                "killed and restarted"
            };
            let (nl, nterm) = c.wait_leader(Duration::from_secs(10)).await;
            let after = lag_of(&c);
            c.check_invariants();
            eprintln!(
                "phase {round}: {lid} (term {term}) {how}; {} leads term {nterm}; {sid}: exec {} lag {} before, exec {} lag {} after",
                c.members[nl].id, before.0, before.1, after.0, after.1
            );
        }
        let lagging = lag_of(&c);
        let produced = c.top_applied() - h_rounds;
        eprintln!(
            "phase: {produced} blocks in {:?} across {LEADER_CHANGES} leader changes ({:.1} blocks/s); {sid} lags {}",
            t_rounds.elapsed(),
            produced as f64 / t_rounds.elapsed().as_secs_f64(),
            lagging.1
        );
        assert!(
            lagging.1 >= 30,
            "{sid} was expected to fall behind with a {DELAY_PER_BLOCK:?} engine at {BLOCK_TIME:?} blocks: \
             engine {}, lag {}; exec {:?}",
            lagging.0,
            lagging.1,
            c.exec_status(slow)
        );

        engine
            .set_faults(Faults::default())
            .await
            .expect("clear faults");
        let t = Instant::now();
        eprintln!("phase: delay lifted on {sid} at lag {}", lagging.1);
        let (st, lag) = wait_until(
            Duration::from_secs(30),
            "the slow node at lag <= 1",
            || async {
                let st = c.exec_status(slow);
                let (eh, lag) = lag_of(&c);
                if st.healthy && lag <= 1 && st.exec_height == eh {
                    Ok((st, lag))
                } else {
                    Err(format!("engine {eh}, lag {lag}, exec {st:?}"))
                }
            },
        )
        .await;
        eprintln!(
            "phase: {sid} caught up in {:?}: exec {} lag {}",
            t.elapsed(),
            st.exec_height,
            lag
        );

        stop.store(true, Ordering::Relaxed);
        let samples = sampler.await.expect("sampler");
        drop(engine);
        eprintln!(
            "samples: {}, engine head advances {}, max lag {}, largest exec-height drop {}, \
             largest engine-head drop {}",
            samples.count,
            samples.advances,
            samples.lag_max,
            samples.exec_drop_max,
            samples.engine_drop_max
        );
        assert!(samples.count > 100, "too few samples: {samples:?}");
        assert_eq!(
            (
                samples.exec_drop_max,
                samples.engine_drop_max,
                samples.uncommitted_heads
            ),
            (0, 0, 0),
            "{sid}'s progress went back or its head left the committed chain: {:?}",
            samples.drops
        );
        c.check_invariants();
        c.stop_all().await;
    });
}
