//! Goal: a leader cut off from both followers stops producing within its lease, before the
//! others can have elected a new leader; it keeps running (its API answers, `producing` false);
//! a new leader emerges among the other two and production goes on there; when the links are
//! back the old leader rejoins as a follower; no two nodes ever produce the same height (S1).
//!
//! Method: 3 in-process nodes producing every 20 ms with the guide's timings (lease 46 ms).
//! The leader's links are cut on all three nodes (each side of each link), [`ROUNDS`] times,
//! whoever leads. A [`RoleWatch`] samples every node every 5 ms; the time from the cut to the
//! old leader's `producing` turning false is measured and compared with the lease and with the
//! first sample showing a new leader. While cut off, every sample must show the old leader not
//! producing, and every block committed by the majority must come from the new leader. After
//! the heal the old leader must follow the new one and catch up; S1-S3 are checked.

mod harness;

use std::time::{Duration, Instant};

use harness::leadership::{RoleWatch, min_median_max, ms};
use harness::{Cluster, enable_production, guide_timing, run, wait_until};
use haseq_actors::api_client;
use openraft::ServerState;

const BLOCK_TIME: Duration = Duration::from_millis(20);
const ROUNDS: usize = 3;
/// How long the old leader stays cut off once the majority produces again.
const CUT_OFF_FOR: Duration = Duration::from_secs(1);
/// The Elector re-evaluates every 20 ms; the stop may come one tick after the lease ran out.
const TICK: Duration = haseq_actors::elector::TICK;

#[test]
fn isolated_leader_stops_within_its_lease_and_rejoins_as_follower() {
    run(async {
        let mut c = Cluster::start_configured(3, |s| enable_production(s, BLOCK_TIME)).await;
        let names: Vec<_> = c.members.iter().map(|m| m.id.clone()).collect();
        let lease = guide_timing().leader_lease_timeout;
        c.wait_leader(Duration::from_secs(10)).await;
        c.wait_engines_reach(20, Duration::from_secs(10)).await;
        c.check_invariants();
        let mut watch = RoleWatch::start(&c);
        let mut stops = Vec::new();
        let mut elections = Vec::new();

        for round in 0..ROUNDS {
            let (old, term) = c.wait_leader(Duration::from_secs(10)).await;
            let h = c.top_applied();
            c.wait_block_above(h, Duration::from_secs(10)).await;
            let oid = names[old].clone();
            let h_cut = c.applied_height(old);
            let cut_at = watch.now();
            let t = Instant::now();
            c.isolate(old);
            eprintln!("round {round}: cut {oid} (leader of term {term}, head {h_cut}) off");

            let stopped = wait_until(
                Duration::from_secs(2),
                &format!("{oid} stops producing"),
                || async {
                    if c.node(old).view.borrow().producing {
                        Err("producing".to_string())
                    } else {
                        Ok(t.elapsed())
                    }
                },
            )
            .await;
            let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
            let (new, new_term) = wait_until(
                Duration::from_secs(10),
                "a new leader among the other two",
                || async {
                    let ms: Vec<_> = others.iter().map(|&i| c.metrics(i)).collect();
                    let leader = others
                        .iter()
                        .zip(&ms)
                        .find(|(_, m)| m.state == ServerState::Leader)
                        .map(|(i, m)| (*i, m.current_term));
                    match leader {
                        Some((i, t))
                            if ms
                                .iter()
                                .all(|m| m.current_leader.as_ref() == Some(&names[i])) =>
                        {
                            Ok((i, t))
                        }
                        _ => Err(c.describe()),
                    }
                },
            )
            .await;
            let elected = t.elapsed();
            stops.push(stopped);
            elections.push(elected);
            let nid = names[new].clone();
            eprintln!(
                "round {round}: {oid} stopped producing {} after the cut (lease {}); {nid} leads term {new_term} after {}",
                ms(stopped),
                ms(lease),
                ms(elected)
            );
            assert!(new_term > term);
            assert!(
                stopped < elected,
                "{oid} still produced when {nid} was elected"
            );
            let h_new = c.top_applied();
            c.wait_block_above(h_new, Duration::from_secs(10)).await;

            // The old leader keeps running: its API answers and says it does not produce.
            let api = c.node(old).api_addr.to_string();
            let r = api_client::request(&api, "GET", "/status", None, Duration::from_secs(2))
                .await
                .expect("the cut-off node's API answers");
            assert_eq!(r.status, 200, "{}", r.body);
            let st: serde_json::Value = serde_json::from_str(&r.body).expect("status JSON");
            assert_eq!(st["producing"], false, "{oid} /status: {}", r.body);
            eprintln!(
                "round {round}: {oid} still runs: role {}, term {}, producing {}, applied {}",
                st["role"], st["term"], st["producing"], st["applied_height"]
            );

            let h_before_heal = {
                let t = Instant::now();
                let h = c.top_applied();
                wait_until(
                    CUT_OFF_FOR + Duration::from_secs(10),
                    "the majority produces while the old leader is cut off",
                    || async {
                        if t.elapsed() >= CUT_OFF_FOR {
                            Ok(c.top_applied())
                        } else {
                            Err(format!("head {} from {h}", c.top_applied()))
                        }
                    },
                )
                .await
            };
            assert!(
                c.applied_height(old) <= h_cut + 2,
                "{oid} applied {} while cut off at {h_cut}",
                c.applied_height(old)
            );
            let heal_at = watch.now();
            c.heal(old);
            let t = Instant::now();
            wait_until(
                Duration::from_secs(10),
                &format!("{oid} follows {nid} and catches up"),
                || async {
                    let m = c.metrics(old);
                    if m.state == ServerState::Follower
                        && m.current_leader.as_ref() == Some(&nid)
                        && c.applied_height(old) >= h_before_heal
                    {
                        Ok(())
                    } else {
                        Err(c.describe())
                    }
                },
            )
            .await;
            eprintln!(
                "round {round}: healed; {oid} follows {nid} and caught up after {}",
                ms(t.elapsed())
            );

            // Judge the window: the old leader never produced after its lease, and the
            // majority's blocks all came from the new leader.
            let window = watch.samples_since(cut_at);
            let late: Vec<_> = window
                .iter()
                .filter(|s| s.at < heal_at && s.at > cut_at + lease + 2 * TICK)
                .filter(|s| s.nodes[old].as_ref().is_some_and(|n| n.producing))
                .map(|s| s.at - cut_at)
                .collect();
            assert!(
                late.is_empty(),
                "{oid} still told to produce after its lease: {late:?} after the cut"
            );
            let by_old: Vec<_> = c
                .proposers(new, h_cut + 3, h_before_heal)
                .into_iter()
                .filter(|(_, p)| *p == oid)
                .collect();
            assert!(
                by_old.is_empty(),
                "blocks committed by the cut-off {oid}: {by_old:?}"
            );
            let top = c.check_invariants();
            eprintln!("round {round}: S1-S3 hold up to height {top}");
        }
        watch.stop().await;
        let (slo, smed, shi) = min_median_max(&mut stops);
        let (elo, emed, ehi) = min_median_max(&mut elections);
        eprintln!(
            "figures: cut to stop producing over {ROUNDS}: min {} / median {} / max {} (lease {})",
            ms(slo),
            ms(smed),
            ms(shi),
            ms(lease)
        );
        eprintln!(
            "figures: cut to a new leader: min {} / median {} / max {}",
            ms(elo),
            ms(emed),
            ms(ehi)
        );
        assert!(
            shi <= lease + 3 * TICK + Duration::from_millis(50),
            "the old leader took {shi:?} to stop producing; lease {lease:?}"
        );
        c.stop_all().await;
    });
}
