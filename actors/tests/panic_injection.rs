//! Goal: a panic in any actor, or in any task an actor spawned, restarts that actor (counted
//! per node and in `haseq_actor_restarts_total{actor}`), never the process, and its duty
//! resumes: after a panic in the leader's production task, blocks resume within two block
//! times in the same term.
//!
//! Method: 3 in-process nodes producing every 100 ms. For each panic site of the steady state
//! (every site but the Syncer's verification and P2P's fetch task, which run only during a
//! catch-up: `catch_up_p2p` injects those), the site is armed on the leader; the test waits
//! until the knob has fired and the actor's restart is counted, then checks the actor's duty:
//! blocks keep coming in the same term (production, Elector), the engine keeps following the
//! applied head (ExecReplayer), peers' states stay fresh (P2P), `/status` answers (RaftCore).
//! The largest gap between two blocks around each panic is printed and bounded. S1-S3 at the
//! end.

mod harness;

use std::time::{Duration, Instant};

use harness::{Cluster, enable_production, run, wait_until};
use haseq_actors::faults::PanicSite;
use haseq_actors::raft_core::GetStatus;
use openraft::async_runtime::WatchReceiver;

const BLOCK_TIME: Duration = Duration::from_millis(100);
/// The production task's bound from the issue: blocks resume within two block times.
const PRODUCTION_GAP_MAX: Duration = Duration::from_millis(2 * 100);
/// Slack for a loaded 2-core machine running a debug build (scheduling, the restart itself).
const SLACK: Duration = Duration::from_millis(150);

/// Watch the leader's head for `window`; the largest gap between two new blocks, the blocks
/// seen, and whether the term stayed the same.
async fn largest_gap(c: &Cluster, leader: usize, window: Duration) -> (Duration, u64, bool) {
    let term0 = c.node(leader).raft.metrics().borrow_watched().current_term;
    let start = Instant::now();
    let mut last_height = c.applied_height(leader);
    let mut last_at = start;
    let mut gap = Duration::ZERO;
    let mut blocks = 0;
    for _ in 0..10_000 {
        if start.elapsed() >= window {
            break;
        }
        let h = c.applied_height(leader);
        if h > last_height {
            gap = gap.max(last_at.elapsed());
            blocks += h - last_height;
            last_height = h;
            last_at = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    gap = gap.max(last_at.elapsed());
    let same_term = c.node(leader).raft.metrics().borrow_watched().current_term == term0;
    (gap, blocks, same_term)
}

#[test]
fn every_actor_and_task_is_rebuilt_after_a_panic_and_its_duty_resumes() {
    // The injected panics happen on the arbiter thread too; with RUST_BACKTRACE set, the
    // default hook symbolises a backtrace there (hundreds of ms in a debug build), which would
    // be measured as a production gap. One line per panic says what the test needs.
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    run(async {
        let mut c = Cluster::start_configured(3, |s| enable_production(s, BLOCK_TIME)).await;
        let (leader, _) = c.wait_leader(Duration::from_secs(10)).await;
        c.wait_engines_reach(5, Duration::from_secs(10)).await;
        let steady: Vec<PanicSite> = PanicSite::ALL
            .into_iter()
            .filter(|s| !matches!(s, PanicSite::VerifyTask | PanicSite::FetchTask))
            .collect();
        for site in steady {
            let node = c.node(leader);
            let actor = site.actor();
            let before = node.restarts().get(actor).copied().unwrap_or(0);
            let term = node.raft.metrics().borrow_watched().current_term;
            node.faults.arm(site);
            // Measure production across the panic: the window opens before the knob fires.
            let watch = largest_gap(&c, leader, Duration::from_millis(1500));
            let restarted = wait_until(
                Duration::from_secs(5),
                "the knob fired and the actor was rebuilt",
                || async {
                    let n = c.node(leader);
                    let now = n.restarts().get(actor).copied().unwrap_or(0);
                    if !n.faults.is_armed(site) && now > before {
                        Ok(now)
                    } else {
                        Err(format!("armed {}, restarts {now}", n.faults.is_armed(site)))
                    }
                },
            );
            let ((gap, blocks, same_term), restarts) = futures::join!(watch, restarted);
            eprintln!(
                "phase: {site:?} -> {actor} restarted ({restarts} so far); largest block gap \
                 {gap:?} over 1.5 s ({blocks} blocks), same term: {same_term}"
            );
            assert!(same_term, "{site:?}: the term changed (was {term})");
            assert!(
                blocks >= 5,
                "{site:?}: production went on ({blocks} blocks in 1.5 s)"
            );
            let bound = if matches!(site, PanicSite::ProductionTask | PanicSite::Producer) {
                BLOCK_TIME + PRODUCTION_GAP_MAX + SLACK
            } else {
                BLOCK_TIME + SLACK
            };
            assert!(
                gap <= bound,
                "{site:?}: a gap of {gap:?} between blocks (bound {bound:?})"
            );

            // The actor's own duty.
            let n = c.node(leader);
            match site {
                PanicSite::RaftCore => {
                    let s = n
                        .raft_core
                        .get()
                        .send(GetStatus)
                        .await
                        .expect("rebuilt RaftCore");
                    assert_eq!(s.term, term);
                }
                PanicSite::ExecReplayer | PanicSite::ReplayTask => {
                    let head = c.applied_height(leader);
                    c.wait_engines_reach(head, Duration::from_secs(5)).await;
                }
                PanicSite::P2p | PanicSite::PollTask => {
                    wait_until(
                        Duration::from_secs(3),
                        "peers' states fresh again",
                        || async {
                            let v = c.node(leader).view.borrow().clone();
                            let fresh = v
                                .peers
                                .iter()
                                .filter(|p| p.seen_ms_ago.is_some_and(|ms| ms < 300))
                                .count();
                            if fresh == 2 {
                                Ok(())
                            } else {
                                Err(format!("{:?}", v.peers))
                            }
                        },
                    )
                    .await;
                }
                _ => {}
            }
        }
        c.check_invariants();
        eprintln!("phase: S1-S3 hold");
        c.stop_all().await;
    });
}
