//! Goal: a node whose execution engine loses its newest 50 blocks on a restart (an engine
//! that persisted less than it acknowledged) refills the hole by itself from its block store,
//! its execution lag returns to zero, and it can then lead and produce on top of the
//! committed chain.
//!
//! Method: 3 in-process nodes producing every 20 ms. A follower's engine gets
//! `lose_newest_on_restart: 50` through `set_faults`; after 60 more blocks on that engine the
//! node is killed and restarted. It restarts with a 50 ms per-block import delay (a start-up
//! fault knob) so that its engine can be seen exactly 50 blocks back with the hole's blocks
//! gone before the replay has moved its head; the delay is then lifted and the node must
//! catch up by itself. Leadership is then transferred to it (openraft's `transfer_leader`,
//! once its Elector calls it eligible), and it must commit blocks it proposed. The shared
//! invariants (S1-S3) are checked after every phase.

mod harness;

use std::time::{Duration, Instant};

use futures::FutureExt as _;
use harness::{Cluster, enable_production, run, wait_until};
use haseq_actors::settings::EngineSettings;
use haseq_engine::{ExecutionEngine as _, Faults};
use haseq_messages::Height;

const BLOCK_TIME: Duration = Duration::from_millis(20);
const LOSE: u64 = 50;
const MORE_BLOCKS: u64 = 60;
/// Import delay while the node restarts: 50 blocks take 2.5 s to re-import, longer than a
/// restart, so the engine's head is read before the first replay batch moves it.
const RESTART_DELAY_PER_BLOCK: Duration = Duration::from_millis(50);

#[test]
fn engine_that_loses_fifty_blocks_refills_them_and_leads_again() {
    run(async {
        let mut c = Cluster::start_configured(3, |s| enable_production(s, BLOCK_TIME)).await;
        let (leader, term) = c.wait_leader(Duration::from_secs(10)).await;
        c.wait_engines_reach(10, Duration::from_secs(10)).await;
        c.check_invariants();
        let f = (leader + 1) % 3;
        let fid = c.members[f].id.clone();
        eprintln!(
            "phase: {} leads term {term}; {fid} is the forgetful follower",
            c.members[leader].id
        );

        let engine = c.node(f).embedded.clone().expect("embedded engine");
        engine
            .set_faults(Faults {
                lose_newest_on_restart: LOSE,
                ..Faults::default()
            })
            .await
            .expect("set faults");
        let (h1, _) = c.engine_head(f).expect("engine head");
        c.wait_engines_reach(h1 + MORE_BLOCKS, Duration::from_secs(20))
            .await;
        c.check_invariants();
        eprintln!(
            "phase: lose_newest_on_restart = {LOSE} set at engine height {h1}; {MORE_BLOCKS}+ more blocks replayed"
        );

        // Kill it; its actors stop first, so its engine no longer moves: read where it was.
        c.kill(f).await;
        let (hk, hk_hash) = engine.head().await.expect("engine head after kill");
        drop(engine); // the restart reopens the environment
        assert!(hk.0 >= h1 + MORE_BLOCKS, "engine at {hk} when killed");
        c.check_invariants();
        eprintln!("phase: {fid} killed with its engine at {hk} {hk_hash}");

        if let EngineSettings::Embedded { faults, .. } = &mut c.members[f].settings.engine {
            faults.delay_per_block = RESTART_DELAY_PER_BLOCK;
        }
        c.restart(f).await;
        let t_restart = Instant::now();
        let (hr, _) = c.engine_head(f).expect("engine head after restart");
        let engine = c.node(f).embedded.clone().expect("embedded engine");
        let lost_gone = engine
            .block_hash_at(hk)
            .now_or_never()
            .expect("embedded engine answers at once")
            .expect("block_hash_at");
        assert_eq!(
            hr,
            hk.0 - LOSE,
            "{fid}'s engine should come back exactly {LOSE} blocks behind {hk}"
        );
        assert_eq!(
            lost_gone, None,
            "block {hk} should be gone from {fid}'s engine"
        );
        c.check_invariants();
        eprintln!(
            "phase: {fid} restarted; its engine came back at {hr} ({} behind), block {hk} gone; exec {:?}",
            hk.0 - hr,
            c.exec_status(f)
        );

        // Lift the import delay (and the start-up knob, for any later restart): it must refill.
        engine
            .set_faults(Faults::default())
            .await
            .expect("clear faults");
        drop(engine);
        if let EngineSettings::Embedded { faults, .. } = &mut c.members[f].settings.engine {
            *faults = Faults::default();
        }
        let target = c.top_applied();
        let st = wait_until(
            Duration::from_secs(20),
            "the forgetful node's engine refilled and at lag ~0",
            || async {
                let st = c.exec_status(f);
                let (eh, _) = c.engine_head(f).expect("engine head");
                if st.lag <= 1 && st.healthy && eh >= target {
                    Ok(st)
                } else {
                    Err(format!("engine {eh}, target {target}, exec {st:?}"))
                }
            },
        )
        .await;
        c.check_invariants();
        eprintln!(
            "phase: {fid} refilled the hole by itself within {:?} of the restart: exec height {}, lag {}",
            t_restart.elapsed(),
            st.exec_height,
            st.lag
        );

        // Make it lead: once its Elector calls it eligible, ask the leader to transfer.
        wait_until(
            Duration::from_secs(10),
            "the forgetful node eligible",
            || async {
                let v = c.node(f).view.borrow().clone();
                if v.eligible {
                    Ok(())
                } else {
                    Err(format!("{:?}, lag {}", v.ineligible_reason, v.exec_lag))
                }
            },
        )
        .await;
        let mut led = false;
        for attempt in 0..5 {
            let (l, term) = c.wait_leader(Duration::from_secs(10)).await;
            if l == f {
                led = true;
                break;
            }
            eprintln!(
                "phase: attempt {attempt}: {} (term {term}) transfers leadership to {fid}",
                c.members[l].id
            );
            if let Err(e) = c.node(l).raft.trigger().transfer_leader(fid.clone()).await {
                eprintln!("transfer_leader: {e}");
            }
            let mut follows = false;
            for _poll in 0..300 {
                if c.agreed_leader().await.is_some_and(|(l, _)| l == f) {
                    follows = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if follows {
                led = true;
                break;
            }
        }
        assert!(led, "{fid} never became leader: {:?}", c.statuses().await);
        let (_, term) = c.wait_leader(Duration::from_secs(5)).await;
        eprintln!("phase: {fid} leads term {term}");

        let from = c.top_applied();
        let (height, ts) = wait_until(
            Duration::from_secs(10),
            "a block proposed by the forgetful node committed on every node",
            || async {
                let low = (0..3).map(|i| c.applied_height(i)).min().unwrap_or(0);
                for h in from + 1..=low {
                    if let Some(b) = c
                        .node(f)
                        .blocks
                        .block(Height(h))
                        .map_err(|e| e.to_string())?
                        && b.proposer == fid
                    {
                        return Ok((h, b.timestamp));
                    }
                }
                Err(format!("from {from}, lowest applied {low}"))
            },
        )
        .await;
        c.wait_engines_reach(height, Duration::from_secs(10)).await;
        c.check_invariants();
        eprintln!(
            "phase: {fid} produced block {height} (timestamp {ts}), committed and replayed everywhere; S1-S3 hold"
        );
        c.stop_all().await;
    });
}
