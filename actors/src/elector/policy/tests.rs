//! Tables of cases for the policy: each row changes a base situation (a 3-node cluster, this
//! node `n1` a healthy follower at the head, both peers fresh and eligible, a live leader `n2`)
//! and states the decision it must give.

use super::*;

const MS: Duration = Duration::from_millis(1);
/// The guide's election timeout.
const E: Duration = Duration::from_millis(368);
/// Its relaxation window (half of it).
const WINDOW: Duration = Duration::from_millis(184);
/// When voters lift the gate (half the window).
const GATE: Duration = Duration::from_millis(92);

fn limits() -> Limits {
    Limits::derive(
        E,
        Duration::from_millis(46),
        10,
        Duration::from_secs(5),
        Duration::from_secs(2),
    )
}

fn id(s: &str) -> NodeId {
    NodeId::from(s)
}

fn peer(name: &str, exec_height: u64) -> Peer {
    Peer {
        id: id(name),
        state: PeerState {
            node_id: id(name),
            term: Term(3),
            is_leader: false,
            applied_height: Height(100),
            last_log_term: Term(3),
            last_log_index: 100,
            exec_height: Height(exec_height),
            healthy: true,
            paused: false,
            eligible: true,
        },
        age: 50 * MS,
        last_poll_failed: false,
        heard_for: Duration::from_secs(10),
    }
}

/// `n1`, a healthy follower at height 100 of term 3; `n2` leads, `n3` follows.
fn base() -> Inputs {
    let mut leader = peer("n2", 100);
    leader.state.is_leader = true;
    Inputs {
        node_id: id("n1"),
        configured_peers: vec![id("n2"), id("n3")],
        peers: vec![leader, peer("n3", 100)],
        is_leader: false,
        term: Term(3),
        quorum_acked_ago: None,
        own: Own {
            applied: Height(100),
            applied_index: 100,
            committed_index: 100,
            last_log: LogPos {
                term: Term(3),
                index: 100,
            },
            exec_height: Height(100),
            healthy: true,
            on_other_chain: false,
            engine_error: None,
        },
        aggregator: true,
        paused: false,
        shutting_down: false,
        removed: None,
        leaderless_for: None,
        unhealthy_for: None,
        behind_for: None,
        since_last_transfer: None,
        limits: limits(),
    }
}

/// `n1` leads term 3 with a fresh quorum ack; both peers follow.
fn leading() -> Inputs {
    let mut i = base();
    i.is_leader = true;
    i.quorum_acked_ago = Some(10 * MS);
    i.peers[0].state.is_leader = false;
    i
}

/// No node leads and every engine lags: `n1` lost least (exec 80), `n2` 60, `n3` 70.
fn all_lagging() -> Inputs {
    let mut i = base();
    i.own.exec_height = Height(80);
    i.peers[0].state.is_leader = false;
    i.peers[0].state.exec_height = Height(60);
    i.peers[0].state.eligible = false;
    i.peers[1].state.exec_height = Height(70);
    i.peers[1].state.eligible = false;
    i
}

fn lagging(lag_blocks: u64) -> Option<Ineligible> {
    Some(Ineligible::Lagging {
        lag_blocks,
        max_blocks: 10,
    })
}

#[test]
fn derived_limits_follow_the_election_timeout() {
    let l = limits();
    assert_eq!(l.relax_after, 184 * MS);
    assert_eq!(l.gate_lift_after, 92 * MS);
    assert_eq!(l.alive_within, E);
    assert_eq!(l.transfer_budget, 276 * MS);
    assert_eq!(l.transfer_retry_after, Duration::from_micros(55_200));
    assert_eq!(l.transfer_spacing, Duration::from_secs(1));
    // The relaxation path's bound (claim + one poll + window + an election's round trips)
    // stays inside 3 x election_timeout for the guide's and the default timings.
    for e in [E, Duration::from_secs(1)] {
        let l = Limits::derive(e, e / 8, 10, Duration::from_secs(5), Duration::from_secs(2));
        let path = l.alive_within + Duration::from_millis(100) + l.relax_after;
        assert!(path + Duration::from_millis(150) < 3 * e, "{e:?}: {path:?}");
        assert!(
            l.transfer_retry_after * TRANSFER_ATTEMPTS_MAX <= e * 3 / 4,
            "transfer outlasts the earliest campaign for {e:?}"
        );
        assert!(l.transfer_spacing >= e + l.transfer_budget);
    }
    // A slow network's timings stretch the spacing past its floor.
    let slow = Limits::derive(
        Duration::from_secs(2),
        Duration::from_millis(250),
        10,
        Duration::from_secs(5),
        Duration::from_secs(2),
    );
    assert_eq!(slow.transfer_spacing, Duration::from_millis(3500));
}

#[test]
fn each_ineligibility_reason_and_its_text() {
    type Tweak = fn(&mut Inputs);
    let cases: &[(&str, Tweak, Option<Ineligible>, &str)] = &[
        ("caught up", |_| {}, None, ""),
        (
            "removed wins over everything",
            |i| {
                i.removed = Some("not in the membership".into());
                i.paused = true;
                i.own.healthy = false;
            },
            Some(Ineligible::Removed {
                why: "not in the membership".into(),
            }),
            "removed from the cluster: not in the membership",
        ),
        (
            "paused",
            |i| i.paused = true,
            Some(Ineligible::Paused),
            "paused",
        ),
        (
            "paused wins over a sick engine",
            |i| {
                i.paused = true;
                i.own.healthy = false;
            },
            Some(Ineligible::Paused),
            "paused",
        ),
        (
            "engine on another chain",
            |i| i.own.on_other_chain = true,
            Some(Ineligible::OtherChain),
            "engine on another chain",
        ),
        (
            "engine unhealthy",
            |i| {
                i.own.healthy = false;
                i.own.engine_error = Some("connection refused".into());
            },
            Some(Ineligible::Unhealthy {
                error: "connection refused".into(),
            }),
            "engine unhealthy: connection refused",
        ),
        (
            "lag one past the limit",
            |i| i.own.exec_height = Height(89),
            lagging(11),
            "exec lag 11 > max_exec_lag_blocks 10",
        ),
        (
            "lag at the limit",
            |i| i.own.exec_height = Height(90),
            None,
            "",
        ),
        (
            "behind a peer's applied head, not our own",
            |i| i.peers[1].state.applied_height = Height(120),
            lagging(20),
            "exec lag 20 > max_exec_lag_blocks 10",
        ),
        (
            "behind the leader's commit index",
            |i| i.own.committed_index = 115,
            lagging(15),
            "exec lag 15 > max_exec_lag_blocks 10",
        ),
        (
            "a stale peer's head does not count",
            |i| {
                i.peers[1].state.applied_height = Height(120);
                i.peers[1].age = PEER_STALE;
            },
            None,
            "",
        ),
    ];
    for (name, tweak, want, text) in cases {
        let mut i = base();
        tweak(&mut i);
        let d = decide(&i);
        assert_eq!(&d.ineligible, want, "{name}");
        assert_eq!(d.eligible, want.is_none(), "{name}");
        assert_eq!(
            d.ineligible_reason()
                .map(ToString::to_string)
                .unwrap_or_default(),
            *text,
            "{name}"
        );
    }
}

#[test]
fn relaxation_only_for_the_most_caught_up_only_after_the_window_never_with_a_live_leader() {
    type Tweak = fn(&mut Inputs);
    assert_eq!(limits().relax_after, WINDOW);
    // (case, change to all_lagging(), relaxed, gate_active)
    let cases: &[(&str, Tweak, bool, bool)] = &[
        (
            "leaderless past the window",
            |i| i.leaderless_for = Some(WINDOW),
            true,
            false,
        ),
        (
            "leaderless, window not over",
            |i| i.leaderless_for = Some(WINDOW - MS),
            false,
            false,
        ),
        (
            "leaderless, gate window over",
            |i| i.leaderless_for = Some(GATE),
            false,
            false,
        ),
        (
            "leaderless, gate window not over",
            |i| i.leaderless_for = Some(GATE - MS),
            false,
            true,
        ),
        (
            "timer not running yet",
            |i| i.leaderless_for = None,
            false,
            true,
        ),
        (
            "a live leader (fresh claim of our term)",
            |i| {
                i.leaderless_for = Some(Duration::from_secs(5));
                i.peers[0].state.is_leader = true;
            },
            false,
            true,
        ),
        (
            "a leader claim older than election_timeout is not live",
            |i| {
                i.leaderless_for = Some(WINDOW);
                i.peers[0].state.is_leader = true;
                i.peers[0].age = E;
            },
            true,
            false,
        ),
        (
            "a leader claim from an older term is not live",
            |i| {
                i.leaderless_for = Some(WINDOW);
                i.peers[0].state.is_leader = true;
                i.term = Term(4);
            },
            true,
            false,
        ),
        (
            "a peer has a longer log",
            |i| {
                i.leaderless_for = Some(WINDOW);
                i.peers[1].state.last_log_index = 101;
            },
            false,
            false,
        ),
        (
            "a rival silent for an election timeout (a dead leader) no longer out-ranks us",
            |i| {
                i.leaderless_for = Some(WINDOW);
                i.peers[0].state.exec_height = Height(100);
                i.peers[0].state.last_log_index = 101;
                i.peers[0].age = E;
            },
            true,
            false,
        ),
        (
            "a rival heard within the election timeout still does",
            |i| {
                i.leaderless_for = Some(WINDOW);
                i.peers[0].state.exec_height = Height(100);
                i.peers[0].age = E - MS;
            },
            false,
            false,
        ),
        (
            "a peer's engine is further",
            |i| {
                i.leaderless_for = Some(WINDOW);
                i.peers[1].state.exec_height = Height(81);
            },
            false,
            false,
        ),
        (
            "a tie on everything goes to the smaller id (n1)",
            |i| {
                i.leaderless_for = Some(WINDOW);
                i.peers[1].state.exec_height = Height(80);
            },
            true,
            false,
        ),
        (
            "a healthy engine outranks a longer log",
            |i| {
                i.leaderless_for = Some(WINDOW);
                i.own.healthy = false;
                i.peers[1].state.last_log_index = 99;
            },
            false,
            false,
        ),
        (
            "a paused peer does not outrank us",
            |i| {
                i.leaderless_for = Some(WINDOW);
                i.peers[1].state.exec_height = Height(95);
                i.peers[1].state.paused = true;
            },
            true,
            false,
        ),
        (
            "we are paused",
            |i| {
                i.leaderless_for = Some(WINDOW);
                i.paused = true;
            },
            false,
            false,
        ),
        (
            "our engine is on another chain",
            |i| {
                i.leaderless_for = Some(WINDOW);
                i.own.on_other_chain = true;
            },
            false,
            false,
        ),
        (
            "no quorum heard (both peers stale)",
            |i| {
                i.leaderless_for = Some(WINDOW);
                i.peers[0].age = PEER_STALE;
                i.peers[1].age = PEER_STALE;
            },
            false,
            false,
        ),
        (
            "a peer heard for less than the window may show its start-up state",
            |i| {
                i.leaderless_for = Some(WINDOW);
                i.peers[1].heard_for = WINDOW - MS;
            },
            false,
            false,
        ),
        (
            "a start-up answer (no id yet) is not heard: with the other stale, no quorum",
            |i| {
                i.leaderless_for = Some(WINDOW);
                i.peers[0].state = PeerState::default();
                i.peers[1].age = PEER_STALE;
            },
            false,
            false,
        ),
        (
            "one peer heard is a quorum of three",
            |i| {
                i.leaderless_for = Some(WINDOW);
                i.peers[0].age = PEER_STALE;
            },
            true,
            false,
        ),
    ];
    for (name, tweak, relaxed, gate) in cases {
        let mut i = all_lagging();
        tweak(&mut i);
        let d = decide(&i);
        assert_eq!(d.relaxed, *relaxed, "{name}: relaxed");
        assert_eq!(d.eligible, *relaxed, "{name}: eligible");
        assert_eq!(d.gate_active, *gate, "{name}: gate_active");
        // A relaxed node still knows why it is not strictly eligible, but /status shows none.
        assert!(d.ineligible.is_some(), "{name}");
        assert_eq!(d.ineligible_reason().is_none(), *relaxed, "{name}");
    }
    // A strictly eligible node is never "relaxed", and its gate lifts with the same window.
    let mut i = base();
    i.peers[0].state.is_leader = false;
    i.leaderless_for = Some(WINDOW);
    let d = decide(&i);
    assert!(d.eligible && !d.relaxed && !d.gate_active);
}

#[test]
fn the_leaderless_clock_runs_exactly_while_no_leader_is_live() {
    let mut i = all_lagging();
    assert!(decide(&i).clocks.leaderless, "no leader: the clock starts");
    i.peers[0].state.is_leader = true;
    assert!(!decide(&i).clocks.leaderless, "a live peer leader stops it");
    let mut i = leading();
    i.leaderless_for = Some(Duration::from_secs(3));
    let d = decide(&i);
    assert!(d.leader_alive && !d.clocks.leaderless && d.gate_active);
}

#[test]
fn production_and_its_stop_reason() {
    type Tweak = fn(&mut Inputs);
    let produce = Production::Produce { term: Term(3) };
    let stop = Production::Stop;
    let cases: &[(&str, Tweak, Production)] = &[
        ("leading with a fresh lease", |_| {}, produce),
        (
            "a follower",
            |i| i.is_leader = false,
            stop(StopReason::LostLeadership),
        ),
        (
            "lease just expired",
            |i| i.quorum_acked_ago = Some(Duration::from_millis(46)),
            stop(StopReason::LeaseExpired),
        ),
        (
            "lease just valid",
            |i| i.quorum_acked_ago = Some(Duration::from_millis(45)),
            produce,
        ),
        (
            "never acked",
            |i| i.quorum_acked_ago = None,
            stop(StopReason::LeaseExpired),
        ),
        ("paused", |i| i.paused = true, stop(StopReason::Paused)),
        (
            "a removed leader",
            |i| i.removed = Some("refused by its peers".into()),
            stop(StopReason::Removed),
        ),
        (
            "shutting down",
            |i| i.shutting_down = true,
            stop(StopReason::Shutdown),
        ),
        (
            "not an aggregator",
            |i| i.aggregator = false,
            stop(StopReason::NotAggregator),
        ),
        (
            "a transfer in flight",
            |i| i.since_last_transfer = Some(Duration::from_millis(275)),
            stop(StopReason::HandingOver),
        ),
        (
            "a transfer's budget is over",
            |i| i.since_last_transfer = Some(Duration::from_millis(276)),
            produce,
        ),
        (
            "a follower that is also paused stops for not leading",
            |i| {
                i.is_leader = false;
                i.paused = true;
            },
            stop(StopReason::LostLeadership),
        ),
    ];
    for (name, tweak, want) in cases {
        let mut i = leading();
        tweak(&mut i);
        assert_eq!(decide(&i).production, *want, "{name}");
    }
}

#[test]
fn hand_over_reasons_and_targets() {
    type Tweak = fn(&mut Inputs);
    let best = |why| {
        Some(Handover {
            why,
            to: Some(id("n2")),
        })
    };
    let cases: &[(&str, Tweak, Option<Handover>)] = &[
        ("healthy leader at the head", |_| {}, None),
        ("paused", |i| i.paused = true, best(HandoverReason::Paused)),
        (
            "lagging past the limit (elected relaxed)",
            |i| i.own.exec_height = Height(80),
            best(HandoverReason::Lagging),
        ),
        (
            "sick within the grace",
            |i| {
                i.own.healthy = false;
                i.unhealthy_for = Some(Duration::from_millis(1999));
            },
            None,
        ),
        (
            "sick past the grace",
            |i| {
                i.own.healthy = false;
                i.unhealthy_for = Some(Duration::from_secs(2));
            },
            best(HandoverReason::UnhealthyPastGrace),
        ),
        (
            "behind (within the lag limit) before handoff_after",
            |i| {
                i.own.exec_height = Height(95);
                i.behind_for = Some(Duration::from_millis(4999));
            },
            None,
        ),
        (
            "behind past handoff_after",
            |i| {
                i.own.exec_height = Height(95);
                i.behind_for = Some(Duration::from_secs(5));
            },
            best(HandoverReason::BehindPastHandoff),
        ),
        (
            "a timer left over from an episode that ended does not count",
            |i| i.behind_for = Some(Duration::from_secs(9)),
            None,
        ),
        (
            "not within the spacing of the last transfer",
            |i| {
                i.paused = true;
                i.since_last_transfer = Some(Duration::from_millis(999));
            },
            None,
        ),
        (
            "past the spacing",
            |i| {
                i.paused = true;
                i.since_last_transfer = Some(Duration::from_secs(1));
            },
            best(HandoverReason::Paused),
        ),
        (
            "shutting down: the shutdown path hands over itself",
            |i| {
                i.paused = true;
                i.shutting_down = true;
            },
            None,
        ),
        (
            "a follower never hands over",
            |i| {
                i.is_leader = false;
                i.paused = true;
            },
            None,
        ),
        (
            "the better engine wins",
            |i| {
                i.paused = true;
                i.peers[1].state.exec_height = Height(101);
            },
            Some(Handover {
                why: HandoverReason::Paused,
                to: Some(id("n3")),
            }),
        ),
        (
            "never to a lagging, sick, paused, stale or silent peer: no target",
            |i| {
                i.paused = true;
                i.peers[0].state.eligible = false;
                i.peers[1].state.healthy = false;
            },
            Some(Handover {
                why: HandoverReason::Paused,
                to: None,
            }),
        ),
    ];
    for (name, tweak, want) in cases {
        let mut i = leading();
        tweak(&mut i);
        let d = decide(&i);
        assert_eq!(&d.handover, want, "{name}");
    }
}

#[test]
fn best_peer_skips_every_unfit_peer_and_breaks_ties_by_id() {
    type Tweak = fn(&mut Peer);
    // n3 is made better than n2 (exec 101), then unfit in one way: n2 must be chosen.
    let unfit: &[(&str, Tweak)] = &[
        ("lagging", |p| p.state.eligible = false),
        ("sick", |p| p.state.healthy = false),
        ("paused", |p| p.state.paused = true),
        ("stale", |p| p.age = PEER_STALE),
        ("not answered lately", |p| p.age = TRANSFER_TARGET_FRESH),
        ("its last poll failed", |p| p.last_poll_failed = true),
    ];
    for (name, tweak) in unfit {
        let mut i = leading();
        i.peers[1].state.exec_height = Height(101);
        tweak(&mut i.peers[1]);
        assert_eq!(best_peer(&i), Some(id("n2")), "n3 {name}");
        // And with n2 unfit the same way, no target at all.
        tweak(&mut i.peers[0]);
        assert_eq!(best_peer(&i), None, "both {name}");
    }
    let i = leading();
    assert_eq!(
        best_peer(&i),
        Some(id("n2")),
        "a tie goes to the smaller id"
    );
    let mut i = leading();
    i.peers.reverse();
    assert_eq!(best_peer(&i), Some(id("n2")), "whatever the table's order");
}

#[test]
fn the_health_clocks_run_only_on_a_leader_with_the_condition() {
    let cases: &[(&str, bool, bool, u64, Clocks)] = &[
        (
            "healthy leader at the head",
            true,
            true,
            100,
            Clocks::default(),
        ),
        (
            "sick leader",
            true,
            false,
            100,
            Clocks {
                unhealthy: true,
                ..Clocks::default()
            },
        ),
        (
            "leader behind",
            true,
            true,
            99,
            Clocks {
                behind: true,
                ..Clocks::default()
            },
        ),
        ("sick follower behind", false, false, 50, Clocks::default()),
    ];
    for (name, is_leader, healthy, exec, want) in cases {
        let mut i = leading();
        i.is_leader = *is_leader;
        i.own.healthy = *healthy;
        i.own.exec_height = Height(*exec);
        let mut got = decide(&i).clocks;
        // The follower case has no leader at all (n1 was the leader): ignore that clock here.
        got.leaderless = false;
        assert_eq!(got, *want, "{name}");
    }
}

#[test]
fn admin_transfer_targets_and_refusals() {
    let leader = leading();
    type Case = (
        &'static str,
        Option<&'static str>,
        bool,
        fn(&mut Inputs),
        Result<NodeId, TransferError>,
    );
    let cases: &[Case] = &[
        ("the best peer", None, false, |_| {}, Ok(id("n2"))),
        ("a named fit peer", Some("n3"), false, |_| {}, Ok(id("n3"))),
        (
            "not the leader",
            Some("n3"),
            false,
            |i| i.is_leader = false,
            Err(TransferError::NotLeader),
        ),
        (
            "itself",
            Some("n1"),
            true,
            |_| {},
            Err(TransferError::AlreadyLeads(id("n1"))),
        ),
        (
            "a stranger",
            Some("n9"),
            true,
            |_| {},
            Err(TransferError::NotAPeer(id("n9"))),
        ),
        (
            "a silent peer",
            Some("n3"),
            false,
            |i| i.peers[1].age = PEER_STALE,
            Err(TransferError::NotHeard(id("n3"))),
        ),
        (
            "a paused peer",
            Some("n3"),
            false,
            |i| i.peers[1].state.paused = true,
            Err(TransferError::Paused(id("n3"))),
        ),
        (
            "a sick peer",
            Some("n3"),
            false,
            |i| i.peers[1].state.healthy = false,
            Err(TransferError::Unhealthy(id("n3"))),
        ),
        (
            "a lagging peer",
            Some("n3"),
            false,
            |i| {
                i.peers[1].state.eligible = false;
                i.peers[1].state.exec_height = Height(40);
            },
            Err(TransferError::Lagging {
                id: id("n3"),
                exec_height: Height(40),
                applied_height: Height(100),
            }),
        ),
        (
            "a lagging peer, forced",
            Some("n3"),
            true,
            |i| i.peers[1].state.eligible = false,
            Ok(id("n3")),
        ),
        (
            "no fit peer",
            None,
            false,
            |i| {
                i.peers[0].state.eligible = false;
                i.peers[1].state.paused = true;
            },
            Err(TransferError::NoFitPeer),
        ),
    ];
    for (name, to, force, tweak, want) in cases {
        let mut i = leader.clone();
        tweak(&mut i);
        assert_eq!(&admin_target(&i, to.map(id), *force), want, "{name}");
    }
    assert_eq!(
        TransferError::Lagging {
            id: id("n3"),
            exec_height: Height(40),
            applied_height: Height(100)
        }
        .to_string(),
        "n3 is lagging (exec height 40, applied 100); use force to transfer anyway"
    );
}

#[test]
fn shutdown_target_falls_back_to_the_most_caught_up_healthy_peer() {
    let mut i = leading();
    i.peers[0].state.eligible = false;
    i.peers[0].state.exec_height = Height(90);
    i.peers[1].state.eligible = false;
    i.peers[1].state.exec_height = Height(95);
    assert_eq!(shutdown_target(&i), Some(id("n3")));
    i.peers[1].state.healthy = false;
    assert_eq!(shutdown_target(&i), Some(id("n2")));
    i.peers[0].age = PEER_STALE;
    assert_eq!(shutdown_target(&i), None, "a stale peer is no target");
}

#[test]
fn pausing_needs_another_node_that_could_lead() {
    let mut i = base();
    assert!(may_pause(&i, false).is_ok());
    for p in &mut i.peers {
        p.state.eligible = false;
    }
    assert!(matches!(
        may_pause(&i, false),
        Err(PauseError::NoOtherEligible)
    ));
    assert!(may_pause(&i, true).is_ok(), "force overrides");
}

#[test]
fn the_same_inputs_give_the_same_decision() {
    for i in [base(), leading(), all_lagging()] {
        assert_eq!(decide(&i), decide(&i.clone()));
    }
}

#[test]
fn a_relaxed_node_keeps_its_strict_reason() {
    let mut i = all_lagging();
    i.leaderless_for = Some(WINDOW);
    let d = decide(&i);
    assert!(d.relaxed);
    assert_eq!(d.ineligible, lagging(20));
}
