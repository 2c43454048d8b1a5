//! Goal: with every node lagging (a whole-cluster restart whose engines all lost their newest
//! blocks and replay slowly), no node is strictly eligible, yet the cluster does not deadlock:
//! the most caught-up node becomes eligible after the bounded relaxation and leads (L4), it
//! produces once its engine reaches the applied head, and nothing forks.
//!
//! Method: 3 in-process nodes produce every 20 ms until the chain is long enough; each engine
//! is then told to lose a different number of its newest blocks on its next open
//! ([`LOSSES`]), every node is stopped, and all are started again with engines that take
//! [`SLOW`] per imported block. The test prints the first leader every node agrees on, then
//! requires the node that lost least to lead within [`ELECT_MAX`] of the restart (printing the
//! time), and measures the time to the first new block. Then, with the two others still
//! lagging, the leader is killed: the more caught up of the two must lead within
//! [`LOST_LEADER_MAX`] of the kill (the target is 3 x `election_timeout`; the time is printed).
//! The killed node is started again, the delay is lifted, every engine must catch up, and
//! S1-S3 are checked.

mod harness;

use std::time::{Duration, Instant};

use harness::leadership::ms;
use harness::{Cluster, enable_production, guide_timing, run, wait_until};
use haseq_actors::elector::policy::relax_after;
use haseq_actors::settings::EngineSettings;
use haseq_engine::Faults;
use openraft::async_runtime::WatchReceiver as _;

const BLOCK_TIME: Duration = Duration::from_millis(20);
/// Newest blocks each node's engine loses on the restart (node-2 loses least).
const LOSSES: [u64; 3] = [160, 60, 110];
/// Per imported block after the restart: the node that lost least needs 60 x 80 ms = 4.8 s
/// to catch up, far longer than the relaxation (184 ms with the guide's timings), so it must
/// lead while still behind; the next needs 110 x 80 ms = 8.8 s, so it still lags when the
/// first leader is killed.
const SLOW: Duration = Duration::from_millis(80);
/// `raft.max_exec_lag_blocks`.
const MAX_LAG: u64 = 10;
/// The bound on the most caught-up node leading, from the start of the restart: the starts
/// (each waits up to 1 s to hear a peer), the relaxation, an election and the peers'
/// polls, with slack for a loaded machine.
const ELECT_MAX: Duration = Duration::from_secs(5);
/// The bound on the more caught up survivor leading after the leader is killed: the target,
/// 3 x the guide's `election_timeout` (1,104 ms), plus 400 ms for a machine whose two cores
/// are shared with other builds (the kill itself, a node's shutdown, is inside the figure).
const LOST_LEADER_MAX: Duration = Duration::from_millis(3 * 368 + 400);

#[test]
fn most_caught_up_node_leads_when_every_engine_lags() {
    run(async {
        let mut c = Cluster::start_configured(3, |s| {
            enable_production(s, BLOCK_TIME);
            s.max_exec_lag_blocks = MAX_LAG;
        })
        .await;
        let names: Vec<_> = c.members.iter().map(|m| m.id.clone()).collect();
        c.wait_leader(Duration::from_secs(10)).await;
        let need = LOSSES.iter().max().copied().unwrap_or(0) + 40;
        let t = Instant::now();
        c.wait_block_above(need, Duration::from_secs(60)).await;
        let top = c.top_applied();
        c.wait_engines_reach(top, Duration::from_secs(10)).await;
        eprintln!(
            "phase 1: {} blocks produced in {:?}; setting the losses {LOSSES:?}",
            top,
            t.elapsed()
        );
        for (i, loss) in LOSSES.iter().enumerate() {
            c.node(i)
                .embedded
                .as_ref()
                .expect("embedded")
                .set_faults(Faults {
                    lose_newest_on_restart: *loss,
                    ..Faults::default()
                })
                .await
                .expect("set faults");
        }
        c.check_invariants();
        c.stop_all().await;
        for m in &mut c.members {
            if let EngineSettings::Embedded { faults, .. } = &mut m.settings.engine {
                faults.delay_per_block = SLOW;
            }
        }

        eprintln!("phase 2: whole-cluster restart, engines replaying at {SLOW:?} per block");
        let t = Instant::now();
        let mut started_at = [Duration::ZERO; 3];
        for (i, at) in started_at.iter_mut().enumerate() {
            c.restart(i).await;
            *at = t.elapsed();
        }
        let started = t.elapsed();
        let heads: Vec<(u64, u64)> = (0..3)
            .map(|i| {
                (
                    c.applied_height(i),
                    c.engine_head(i).map(|(h, _)| h).unwrap_or(0),
                )
            })
            .collect();
        eprintln!("phase 2: all started after {started:?}; (applied, engine) per node: {heads:?}");
        for (i, (applied, engine)) in heads.iter().enumerate() {
            assert!(
                applied - engine > MAX_LAG,
                "{} is not lagging after the restart: applied {applied}, engine {engine}",
                names[i]
            );
        }
        let best = (0..3).max_by_key(|&i| heads[i].1).expect("three nodes");
        // Who leads first (openraft restores a leader of before the restart without an
        // election), then the bound on the most caught-up node leading.
        let (first, first_term) =
            wait_until(ELECT_MAX, "a leader with every engine lagging", || async {
                match c.agreed_leader().await {
                    Some(l) => Ok(l),
                    None => Err(c.describe()),
                }
            })
            .await;
        let first_at = t.elapsed();
        let v = c.node(first).view.borrow().clone();
        eprintln!(
            "phase 2: first leader {} (term {first_term}) {} after the restart; eligible {}, relaxed {}, exec lag {}",
            names[first],
            ms(first_at),
            v.eligible,
            v.relaxed,
            v.exec_lag
        );
        let (leader, term) = wait_until(
            ELECT_MAX.saturating_sub(t.elapsed()),
            &format!("{} (the most caught up) leads", names[best]),
            || async {
                match c.agreed_leader().await {
                    Some((l, term)) if l == best => Ok((l, term)),
                    _ => Err(c.describe()),
                }
            },
        )
        .await;
        let elected = t.elapsed();
        let v = c.node(leader).view.borrow().clone();
        eprintln!(
            "figures: whole cluster lagging: {} leads term {term} {} after the restart, {} after it started (relaxation {}); relaxed {}, exec lag {}",
            names[leader],
            ms(elected),
            ms(elected.saturating_sub(started_at[best])),
            ms(relax_after(guide_timing().election_timeout)),
            v.relaxed,
            v.exec_lag
        );
        let h0 = c.top_applied();
        let (h, by) = c.wait_block_above(h0, Duration::from_secs(30)).await;
        let produced = t.elapsed();
        eprintln!(
            "figures: first new block {h} by {by} {} after the restart",
            ms(produced)
        );
        c.check_invariants();

        // Phase 2b: the relaxed leader dies while both other engines still lag. The survivor
        // that ranks first (Raft log, then exec height, then id) must lead, and soon.
        let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let t_kill = Instant::now();
        c.kill(leader).await;
        let killed_in = t_kill.elapsed();
        for &i in &survivors {
            let v = c.node(i).view.borrow().clone();
            assert!(
                v.exec_lag > MAX_LAG,
                "{} caught up before the kill (exec lag {}): the scenario needs both lagging",
                names[i],
                v.exec_lag
            );
        }
        // Logs stop growing with the leader gone (its shutdown has returned): rank on each
        // survivor's own Raft log and engine now, not on its Elector's view, which is up to a
        // tick old and once showed one survivor an entry short.
        let rank = |i: usize| {
            let log = c
                .node(i)
                .raft
                .data_metrics()
                .borrow_watched()
                .last_log
                .as_ref()
                .map(|l| (l.leader_id.term, l.index));
            let exec = c.engine_head(i).map(|(h, _)| h).unwrap_or(0);
            (log, exec, std::cmp::Reverse(names[i].clone()))
        };
        let want = *survivors
            .iter()
            .max_by_key(|&&i| rank(i))
            .expect("two survivors");
        let (next, next_term) = wait_until(
            LOST_LEADER_MAX.saturating_sub(t_kill.elapsed()),
            &format!("{} (the more caught up survivor) leads", names[want]),
            || async {
                match c.agreed_leader().await {
                    Some((l, term)) if l == want => Ok((l, term)),
                    _ => Err(c.describe()),
                }
            },
        )
        .await;
        let took = t_kill.elapsed();
        let v = c.node(next).view.borrow().clone();
        eprintln!(
            "figures: leader lost with every engine lagging: {} leads term {next_term} {} after the kill (kill took {}; target 3 x election_timeout = {}); relaxed {}, exec lag {}",
            names[next],
            ms(took),
            ms(killed_in),
            ms(3 * guide_timing().election_timeout),
            v.relaxed,
            v.exec_lag
        );
        c.check_invariants();
        c.restart(leader).await;

        eprintln!("phase 3: lifting the delay");
        for i in 0..3 {
            c.node(i)
                .embedded
                .as_ref()
                .expect("embedded")
                .set_faults(Faults::default())
                .await
                .expect("clear faults");
        }
        let top = c.top_applied();
        c.wait_engines_reach(top, Duration::from_secs(30)).await;
        wait_until(Duration::from_secs(10), "every node eligible", || async {
            if (0..3).all(|i| c.node(i).view.borrow().eligible) {
                Ok(())
            } else {
                Err(c.describe())
            }
        })
        .await;
        let top = c.check_invariants();
        eprintln!("phase 3: every engine caught up; S1-S3 hold up to height {top}");
        c.stop_all().await;
    });
}
