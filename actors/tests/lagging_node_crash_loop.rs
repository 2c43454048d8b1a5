//! Goal: the incident of `incident-lagging-node-wins-election.txt`, replayed. A follower whose
//! engine is hundreds of blocks behind must never win an election while an eligible node is
//! up, however often the leader crashes (L2); blocks keep being produced through a crash loop
//! of 20 leader kills (L1); the lagging node's catch-up is never reset by the elections (its
//! execution height never goes down, L3), its lag falls across elections once its engine is
//! faster, and it becomes eligible once caught up.
//!
//! Method: 3 in-process nodes producing every 20 ms. One follower's embedded engine is slowed
//! (`delay_per_block`) until it is at least [`LAG_TARGET`] blocks behind. Then the leader is
//! crashed (links cut, node stopped) and restarted [`CRASHES`] times; each round times the gap
//! from the crash to the first block a survivor commits, and waits until the restarted node is
//! eligible again before the next crash. Halfway through, the lagging engine is made faster
//! than production (still slow), so its lag falls during the second half of the loop. A
//! [`RoleWatch`] samples every node's role, term, eligibility and execution height every 5 ms
//! throughout; after the loop the samples are judged: no election may be won by the lagging
//! node while another node could have led (healthy, within the threshold, and with a Raft log
//! at least as long, since voters refuse a candidate whose log is behind theirs); if it leads
//! because only its log was long enough, it must hand over within [`HANDOVER_MAX`] once such
//! a rival is up; and its execution height may never decrease. If it leads at the start of a
//! round (caught up, or handing over), leadership is moved off it before the crash. The restarted node is crashed again as soon as it
//! reports itself eligible, as in a crash loop: nothing waits for its Raft log to catch up.
//! The shared invariants (S1-S3) are checked after every round.

mod harness;

use std::time::{Duration, Instant};

use harness::leadership::{
    RoleWatch, Sample, eligible_rival, l2_violations, leader_changes, min_median_max, ms,
};
use harness::{Cluster, enable_production, run, wait_until};
use haseq_actors::elector::TransferLeadership;
use haseq_engine::Faults;
use haseq_messages::{Height, NodeId};

const BLOCK_TIME: Duration = Duration::from_millis(20);
/// `raft.max_exec_lag_blocks` (the default).
const MAX_LAG: u64 = 10;
/// The lagging engine's delay while it falls behind (it imports about 8 blocks a second).
const SLOW: Duration = Duration::from_millis(120);
/// Its delay in the second half of the crash loop: faster than production, still lagging.
const CATCHING_UP: Duration = Duration::from_millis(8);
/// How far behind the lagging engine must be before the crash loop starts.
const LAG_TARGET: u64 = 300;
/// Leader crashes, as in the incident's crash loop.
const CRASHES: usize = 20;
/// The longest the lagging node may go on leading, while it lags, once another node could
/// lead instead (it got leadership because only its log was long enough): a hand-over.
const HANDOVER_MAX: Duration = Duration::from_secs(2);
/// A generous bound on one production gap (L1's target with the guide's timings is
/// 368 ms + 2 x 20 ms); the figures printed are the measurement.
const GAP_MAX: Duration = Duration::from_secs(5);

/// Wait for the first block above `above` whose proposer is not `killed`; its height.
async fn first_block_not_by(
    c: &Cluster,
    above: u64,
    killed: &NodeId,
    deadline: Duration,
) -> (u64, NodeId) {
    wait_until(deadline, "a block by a survivor", || async {
        let top = c.top_applied();
        for i in 0..c.members.len() {
            if c.members[i].node.is_none() || c.applied_height(i) < top {
                continue;
            }
            for h in above + 1..=top {
                let b = c.node(i).blocks.block(Height(h)).expect("read block");
                if let Some(b) = b
                    && b.proposer != *killed
                {
                    return Ok((h, b.proposer));
                }
            }
        }
        Err(format!(
            "top applied {top}, nothing above {above} by a survivor; {}",
            c.describe()
        ))
    })
    .await
}

#[test]
fn lagging_node_never_wins_through_a_leader_crash_loop() {
    run(async {
        let mut c = Cluster::start_configured(3, |s| {
            enable_production(s, BLOCK_TIME);
            s.max_exec_lag_blocks = MAX_LAG;
        })
        .await;
        let names: Vec<NodeId> = c.members.iter().map(|m| m.id.clone()).collect();
        let (leader, term) = c.wait_leader(Duration::from_secs(10)).await;
        c.wait_engines_reach(20, Duration::from_secs(10)).await;
        c.check_invariants();
        let lagging = (leader + 1) % 3;
        let lid = names[lagging].clone();
        eprintln!(
            "phase 1: {} leads term {term}; slowing {lid}'s engine to {SLOW:?} per block",
            names[leader]
        );
        let engine = c.node(lagging).embedded.clone().expect("embedded engine");
        engine
            .set_faults(Faults {
                delay_per_block: SLOW,
                ..Faults::default()
            })
            .await
            .expect("set faults");
        let mut watch = RoleWatch::start(&c);

        let t = Instant::now();
        let lag = wait_until(
            Duration::from_secs(60),
            &format!("{lid} at least {LAG_TARGET} blocks behind"),
            || async {
                let lag = c
                    .top_applied()
                    .saturating_sub(c.exec_status(lagging).exec_height);
                if lag >= LAG_TARGET {
                    Ok(lag)
                } else {
                    Err(format!("lag {lag}"))
                }
            },
        )
        .await;
        let v = c.node(lagging).view.borrow().clone();
        eprintln!(
            "phase 2: {lid} is {lag} blocks behind after {:?}; eligible {}, reason {:?}",
            t.elapsed(),
            v.eligible,
            v.ineligible_reason
        );
        assert!(
            !v.eligible,
            "{lid} lags {lag} blocks but calls itself eligible"
        );
        assert!(
            v.ineligible_reason
                .as_deref()
                .is_some_and(|r| r.contains("exec lag")),
            "reason: {:?}",
            v.ineligible_reason
        );

        let loop_start = watch.now();
        let mut gaps = Vec::with_capacity(CRASHES);
        let mut half_lag = 0;
        let mut lags_at_elections = Vec::with_capacity(CRASHES);
        let head_before_loop = c.top_applied();
        for round in 0..CRASHES {
            if round == CRASHES / 2 {
                engine
                    .set_faults(Faults {
                        delay_per_block: CATCHING_UP,
                        ..Faults::default()
                    })
                    .await
                    .expect("set faults");
                half_lag = c
                    .top_applied()
                    .saturating_sub(c.exec_status(lagging).exec_height);
                eprintln!(
                    "phase 3: halfway, {lid} lags {half_lag}; its engine now takes {CATCHING_UP:?} per block"
                );
            }
            let (leader, term) = c.wait_leader(Duration::from_secs(10)).await;
            let (leader, term) = if leader == lagging {
                // It may lead once caught up, or briefly when only its log was long enough
                // (judged on the samples below). The crash loop kills the others' leaders:
                // move leadership off it (caught up), or wait for its own hand-over (lagging).
                let lag = c
                    .top_applied()
                    .saturating_sub(c.exec_status(lagging).exec_height);
                if lag <= MAX_LAG {
                    let _ = c
                        .node(lagging)
                        .elector
                        .get()
                        .send(TransferLeadership {
                            to: None,
                            force: false,
                        })
                        .await;
                }
                wait_until(
                    Duration::from_secs(10),
                    &format!("leadership off {lid} (lag {lag})"),
                    || async {
                        match c.agreed_leader().await {
                            Some((l, t)) if l != lagging => Ok((l, t)),
                            _ => Err(c.describe()),
                        }
                    },
                )
                .await
            } else {
                (leader, term)
            };
            let from = c.top_applied();
            c.wait_block_above(from, Duration::from_secs(10)).await;

            let killed = names[leader].clone();
            let h_kill = c.top_applied();
            watch.detach(leader);
            let t = Instant::now();
            c.crash(leader).await;
            let stopped_in = t.elapsed();
            let (h, by) = first_block_not_by(&c, h_kill, &killed, GAP_MAX * 2).await;
            let gap = t.elapsed();
            gaps.push(gap);
            let lag_at_election = c
                .top_applied()
                .saturating_sub(c.exec_status(lagging).exec_height);
            lags_at_elections.push(lag_at_election);
            eprintln!(
                "round {round}: crashed {killed} (term {term}, head {h_kill}, stop took {}); {by} committed {h} after {}; {lid} lags {lag_at_election}",
                ms(stopped_in),
                ms(gap)
            );
            assert!(
                by != lid || lag_at_election <= MAX_LAG,
                "round {round}: the lagging {lid} produced block {h}"
            );

            c.restart(leader).await;
            watch.attach(&c, leader);
            wait_until(
                Duration::from_secs(15),
                &format!("{killed} eligible again after its restart"),
                || async {
                    let v = c.node(leader).view.borrow().clone();
                    if v.eligible && !v.relaxed {
                        Ok(())
                    } else {
                        Err(format!(
                            "eligible {} relaxed {} reason {:?} lag {}",
                            v.eligible, v.relaxed, v.ineligible_reason, v.exec_lag
                        ))
                    }
                },
            )
            .await;
            c.check_invariants();
        }
        let end_lag = c
            .top_applied()
            .saturating_sub(c.exec_status(lagging).exec_height);
        let produced = c.top_applied() - head_before_loop;
        let samples = watch.samples_since(loop_start);

        // Judge the samples.
        // The lagging node leading while it lags: a violation when another node could have led
        // (eligible, with a log at least as long); otherwise (the others' logs are behind its
        // own, so only it can win) it is counted and shown.
        let leading_lagging: Vec<&Sample> = samples
            .iter()
            .filter(|s| {
                s.nodes[lagging].as_ref().is_some_and(|n| n.is_leader())
                    && s.lag(lagging).is_some_and(|l| l > MAX_LAG)
            })
            .collect();
        // A stretch of samples in which it leads, lags and a rival could lead: allowed only
        // as long as a hand-over takes ([`HANDOVER_MAX`]).
        let mut stretches: Vec<(Duration, Duration)> = Vec::new();
        let mut open: Option<(Duration, Duration)> = None;
        for s in &samples {
            let bad = s.nodes[lagging].as_ref().is_some_and(|n| n.is_leader())
                && s.lag(lagging).is_some_and(|l| l > MAX_LAG)
                && eligible_rival(s, lagging, MAX_LAG).is_some();
            open = match (open, bad) {
                (None, true) => Some((s.at, s.at)),
                (Some((a, _)), true) => Some((a, s.at)),
                (Some(st), false) => {
                    stretches.push(st);
                    None
                }
                (None, false) => None,
            };
        }
        stretches.extend(open);
        let longest = stretches
            .iter()
            .map(|(a, b)| *b - *a)
            .max()
            .unwrap_or_default();
        let lagging_leads: Vec<String> = stretches
            .iter()
            .filter(|(a, b)| *b - *a > HANDOVER_MAX)
            .take(5)
            .map(|(a, b)| format!("from {a:?} to {b:?}"))
            .collect();
        let l2 = l2_violations(&samples, MAX_LAG, &names);
        let mut exec_drops = Vec::new();
        let mut prev: Option<u64> = None;
        for s in &samples {
            if let Some(n) = &s.nodes[lagging] {
                if let Some(p) = prev
                    && n.exec_height < p
                {
                    exec_drops.push(format!("at {:?}: {p} -> {}", s.at, n.exec_height));
                }
                prev = Some(n.exec_height);
            }
        }
        let changes = leader_changes(&samples);
        let (lo, med, hi) = min_median_max(&mut gaps);
        eprintln!(
            "figures: {} samples over {:?}; {} leader changes; {produced} blocks produced in the loop",
            samples.len(),
            samples
                .last()
                .map(|s| s.at - loop_start)
                .unwrap_or_default(),
            changes.len()
        );
        eprintln!(
            "figures: production gap after a leader crash over {CRASHES}: min {} / median {} / max {}",
            ms(lo),
            ms(med),
            ms(hi)
        );
        eprintln!(
            "figures: {lid}'s lag at each election: {lags_at_elections:?} (halfway {half_lag}, end {end_lag})"
        );
        eprintln!(
            "figures: samples with {lid} leading while lagging: {}; stretches with an eligible rival up: {} (longest {}); L2 violations {}; exec height drops {}",
            leading_lagging.len(),
            stretches.len(),
            ms(longest),
            l2.len(),
            exec_drops.len()
        );
        assert!(
            lagging_leads.is_empty(),
            "L2: {lid} kept leading while lagging and a rival could lead: {lagging_leads:?}"
        );
        assert!(l2.is_empty(), "L2: {l2:?}");
        assert!(
            exec_drops.is_empty(),
            "L3: {lid}'s execution height went down: {exec_drops:?}"
        );
        assert!(hi < GAP_MAX, "L1: a production gap of {hi:?} after a crash");
        assert!(
            end_lag < half_lag,
            "L3: {lid}'s lag did not fall across the second half's elections: {half_lag} -> {end_lag}"
        );

        eprintln!("phase 4: lifting {lid}'s delay");
        engine
            .set_faults(Faults::default())
            .await
            .expect("clear faults");
        let t = Instant::now();
        wait_until(
            Duration::from_secs(30),
            &format!("{lid} caught up and eligible"),
            || async {
                let v = c.node(lagging).view.borrow().clone();
                if v.eligible && !v.relaxed && v.exec_lag <= MAX_LAG {
                    Ok(())
                } else {
                    Err(format!(
                        "eligible {} lag {} reason {:?}",
                        v.eligible, v.exec_lag, v.ineligible_reason
                    ))
                }
            },
        )
        .await;
        eprintln!(
            "phase 4: {lid} caught up and eligible after {:?}",
            t.elapsed()
        );
        watch.stop().await;
        let top = c.check_invariants();
        eprintln!("phase 5: S1-S3 hold on every node up to height {top}");
        c.stop_all().await;
    });
}
