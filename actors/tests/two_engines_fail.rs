//! Goal: when two of three engines fail at once, the leader's among them, the healthy node
//! ends up leading within a bounded time (the sick leader waits `unhealthy_leader_grace`, then
//! hands over) and production resumes there; there is no ping-pong: leadership moves at most
//! once or twice, and never returns to a sick node while the healthy one is up. Once the
//! engines are healed, nothing forks and every engine catches up.
//!
//! Method: 3 in-process nodes producing every 20 ms, `unhealthy_leader_grace` 2 s (default).
//! `fail: true` is set on the leader's and one follower's embedded engines together. A
//! [`RoleWatch`] samples roles every 5 ms; the test waits for the healthy node to lead and to
//! produce, then watches a further [`STABLE_FOR`] (a window in which nothing must happen). The
//! leader changes after the fault are counted from the samples; any sample showing a sick
//! node leading after the healthy one first led fails the test. The engines are then healed
//! and S1-S3 checked.

mod harness;

use std::time::{Duration, Instant};

use harness::leadership::{RoleWatch, leader_changes, ms};
use harness::{Cluster, enable_production, run, wait_until};
use haseq_engine::Faults;

const BLOCK_TIME: Duration = Duration::from_millis(20);
const GRACE: Duration = Duration::from_secs(2);
/// A window after the hand-over in which leadership must stay put.
const STABLE_FOR: Duration = Duration::from_secs(3);
/// At most this many leader changes after the fault (sick leader -> healthy node, plus one
/// intermediate sick node at worst).
const CHANGES_MAX: usize = 2;

#[test]
fn healthy_node_leads_when_two_engines_fail_without_ping_pong() {
    run(async {
        let mut c = Cluster::start_configured(3, |s| {
            enable_production(s, BLOCK_TIME);
            s.unhealthy_leader_grace = GRACE;
        })
        .await;
        let names: Vec<_> = c.members.iter().map(|m| m.id.clone()).collect();
        let (leader, term) = c.wait_leader(Duration::from_secs(10)).await;
        c.wait_engines_reach(20, Duration::from_secs(10)).await;
        c.check_invariants();
        let sick_follower = (leader + 1) % 3;
        let healthy = (leader + 2) % 3;
        let hid = names[healthy].clone();
        eprintln!(
            "phase 1: {} leads term {term}; failing the engines of {} and {} together",
            names[leader], names[leader], names[sick_follower]
        );
        let mut watch = RoleWatch::start(&c);
        let fault_at = watch.now();
        let fail = Faults {
            fail: true,
            ..Faults::default()
        };
        let e_leader = c.node(leader).embedded.clone().expect("embedded");
        let e_follower = c.node(sick_follower).embedded.clone().expect("embedded");
        let t = Instant::now();
        let (a, b) = tokio::join!(e_leader.set_faults(fail), e_follower.set_faults(fail));
        a.expect("set faults");
        b.expect("set faults");
        let h_fault = c.top_applied();

        let (_, new_term) =
            wait_until(Duration::from_secs(15), &format!("{hid} leads"), || async {
                match c.agreed_leader().await {
                    Some((l, t)) if l == healthy => Ok((l, t)),
                    _ => Err(c.describe()),
                }
            })
            .await;
        let led_after = t.elapsed();
        let h_led = c.top_applied();
        let (h, by) = c.wait_block_above(h_led, Duration::from_secs(10)).await;
        let produced_after = t.elapsed();
        assert_eq!(by, hid, "block {h} after the fault not by the healthy node");
        eprintln!(
            "phase 2: {hid} leads term {new_term} {} after the fault (grace {}; head then {h_fault}, now {h_led}); its first block {h} after {}",
            ms(led_after),
            ms(GRACE),
            ms(produced_after)
        );
        let led_at = watch.now();

        // Nothing must happen in this window: leadership stays with the healthy node.
        tokio::time::sleep(STABLE_FOR).await;
        let samples = watch.samples_since(fault_at);
        let changes = leader_changes(&samples);
        let after: Vec<_> = changes.iter().skip(1).collect();
        eprintln!(
            "phase 3: leader changes after the fault: {:?}",
            changes
                .iter()
                .map(|(at, i, t)| format!("{} term {t} at +{}", names[*i], ms(*at - fault_at)))
                .collect::<Vec<_>>()
        );
        let back_to_sick: Vec<_> = samples
            .iter()
            .filter(|s| s.at > led_at)
            .filter_map(|s| s.leader().filter(|(i, _)| *i != healthy).map(|l| (s.at, l)))
            .take(5)
            .collect();
        assert!(
            back_to_sick.is_empty(),
            "leadership went back to a sick node while {hid} was up: {back_to_sick:?}"
        );
        assert!(
            after.len() <= CHANGES_MAX,
            "{} leader changes after the fault (ping-pong?): {changes:?}",
            after.len()
        );
        let h_now = c.top_applied();
        assert!(
            h_now > h + 10,
            "production stalled under {hid}: {h} -> {h_now}"
        );

        eprintln!("phase 4: healing both engines");
        let (a, b) = tokio::join!(
            e_leader.set_faults(Faults::default()),
            e_follower.set_faults(Faults::default())
        );
        a.expect("clear faults");
        b.expect("clear faults");
        let top = c.top_applied();
        let low = c.wait_engines_reach(top, Duration::from_secs(20)).await;
        watch.stop().await;
        let top = c.check_invariants();
        eprintln!(
            "phase 4: every engine at or above {low}; S1-S3 hold up to height {top}; {} samples",
            samples.len()
        );
        c.stop_all().await;
    });
}
