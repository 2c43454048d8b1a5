//! Goal: a restart never resets a node's reported execution progress (DESIGN.md L3, issue 4:
//! "its progress is the engine's own head, read back, so a role change or restart never
//! resets it"). A node whose slow engine is behind must, right after a restart, report its
//! engine's real head (healthy, at the height it had), not "engine not read yet" at height 0
//! for as long as its first replay batch takes.
//!
//! Method: 3 in-process nodes producing every 20 ms; one follower's engine imports with a
//! 100 ms delay per block (at run time and in its start-up settings) until it is 40+ blocks
//! behind. It is killed and restarted; the time from the restart to the first published
//! status that is healthy and at least at the engine's pre-kill head is measured and must be
//! under 1.5 s (a first replay batch of 40+ blocks takes 4 s and more). Then the delay is
//! lifted and the node must catch up; the shared invariants (S1-S3) are checked after every
//! phase. The measurement is asserted only after the cluster is stopped.

mod harness;

use std::time::{Duration, Instant};

use harness::{Cluster, enable_production, run, wait_until};
use haseq_actors::settings::EngineSettings;
use haseq_engine::{ExecutionEngine as _, Faults};

const BLOCK_TIME: Duration = Duration::from_millis(20);
const DELAY_PER_BLOCK: Duration = Duration::from_millis(100);
const LAG_BEFORE_KILL: u64 = 40;
/// A restarted node reads its engine's head at once; it should say so well within this.
const REPORT_WITHIN: Duration = Duration::from_millis(1500);

#[test]
fn restarted_slow_node_reports_its_engine_head_at_once() {
    run(async {
        let mut c = Cluster::start_configured(3, |s| enable_production(s, BLOCK_TIME)).await;
        let (leader, term) = c.wait_leader(Duration::from_secs(10)).await;
        c.wait_engines_reach(10, Duration::from_secs(10)).await;
        c.check_invariants();
        let slow = (leader + 1) % 3;
        let sid = c.members[slow].id.clone();
        let slow_faults = Faults {
            delay_per_block: DELAY_PER_BLOCK,
            ..Faults::default()
        };
        c.node(slow)
            .embedded
            .as_ref()
            .expect("embedded engine")
            .set_faults(slow_faults)
            .await
            .expect("set faults");
        if let EngineSettings::Embedded { faults, .. } = &mut c.members[slow].settings.engine {
            *faults = slow_faults;
        }
        eprintln!(
            "phase: {} leads term {term}; {sid}'s engine imports with {DELAY_PER_BLOCK:?} per block",
            c.members[leader].id
        );

        wait_until(
            Duration::from_secs(20),
            "the slow node 40+ blocks behind",
            || async {
                let (eh, _) = c.engine_head(slow).expect("engine head");
                let top = c.top_applied();
                if top >= eh + LAG_BEFORE_KILL {
                    Ok(())
                } else {
                    Err(format!("engine {eh}, cluster head {top}"))
                }
            },
        )
        .await;
        c.check_invariants();

        let engine = c.node(slow).embedded.clone().expect("embedded engine");
        c.kill(slow).await;
        let (hk, _) = engine.head().await.expect("engine head after kill");
        drop(engine);
        let top = c.top_applied();
        c.check_invariants();
        eprintln!("phase: {sid} killed with its engine at {hk}, cluster head {top}");

        c.restart(slow).await;
        let t0 = Instant::now();
        let first_unknown = std::cell::RefCell::new(None);
        let (reported_after, st) = wait_until(
            Duration::from_secs(30),
            "the restarted node reports its engine's head",
            || async {
                let st = c.exec_status(slow);
                if st.healthy && st.exec_height >= hk.0 {
                    Ok((t0.elapsed(), st))
                } else {
                    first_unknown
                        .borrow_mut()
                        .get_or_insert_with(|| format!("{st:?}"));
                    Err(format!("{st:?}"))
                }
            },
        )
        .await;
        let first_unknown = first_unknown.into_inner();
        let (eh, _) = c.engine_head(slow).expect("engine head");
        eprintln!(
            "phase: {sid} restarted; first healthy status at its engine's head after {reported_after:?} \
             (exec {}, engine now {eh}); before that it published {first_unknown:?}",
            st.exec_height
        );
        c.check_invariants();

        c.node(slow)
            .embedded
            .as_ref()
            .expect("embedded engine")
            .set_faults(Faults::default())
            .await
            .expect("clear faults");
        if let EngineSettings::Embedded { faults, .. } = &mut c.members[slow].settings.engine {
            *faults = Faults::default();
        }
        let target = c.top_applied();
        c.wait_engines_reach(target, Duration::from_secs(30)).await;
        c.check_invariants();
        eprintln!("phase: delay lifted; {sid} caught up to {target}; S1-S3 hold");
        c.stop_all().await;

        assert!(
            reported_after <= REPORT_WITHIN,
            "{sid} reported its engine's head ({hk}) only {reported_after:?} after the restart \
             (bound {REPORT_WITHIN:?}); until then it published {first_unknown:?}"
        );
    });
}
