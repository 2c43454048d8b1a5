//! The Elector's decisions as a pure function of what the node knows.
//!
//! [`decide`] takes [`Inputs`] (plain data the actor gathered on one tick: Raft role and term,
//! the lease's age, the engine's position, the fresh peers' states and ages, the admin flags,
//! how long each timer has run) and returns a [`Decision`]: eligible or why not, relaxed, the
//! vote gate, produce or why not, hand over to whom and why. No I/O and no clock: every age is
//! passed in, so each rule is checked by a table of cases below, and the actor only applies
//! what changed.
//!
//! The time limits come from the configured timings ([`Limits::derive`]), so an operator who
//! scales the guide's timings for a slower network scales the Elector with them.

use std::fmt;
use std::time::Duration;

use haseq_messages::wire::PeerState;
use haseq_messages::{Height, NodeId, Term};

use crate::producer::StopReason;
pub use crate::raft_core::LogPos;

use super::error::{PauseError, TransferError};

/// A peer's status older than this no longer counts for eligibility and ranking: ten polls
/// (every 100 ms), so a peer that misses a few polls is still ranked.
pub const PEER_STALE: Duration = Duration::from_secs(1);
/// A transfer target must have answered a status poll within this long: a peer that died a
/// moment ago still counts as fresh for the ranking, but handing it the leadership would leave
/// the cluster leaderless for an election. Three and a half polls.
pub const TRANSFER_TARGET_FRESH: Duration = Duration::from_millis(350);
/// The most times one transfer asks its target (see [`Limits::transfer_retry_after`]).
pub const TRANSFER_ATTEMPTS_MAX: u32 = 5;
/// The least time between two leadership transfers this node starts, whatever the timings: a
/// leader that cannot hand over (every request failing) retries about once a second, not on
/// every tick.
const TRANSFER_SPACING_MIN: Duration = Duration::from_secs(1);

/// How long a peer's last answer shows it alive, for the relaxation rule: its claim to lead
/// counts as a live leader, and it counts as a rival in "most caught up" and towards a quorum.
/// One `election_timeout`, the time a follower itself gives a silent leader before it
/// campaigns (settings.rs: 0.75-1.0 x). It rides out three missed 100 ms polls with the guide's
/// timings, and it ends about when an eligible follower's own election timer fires, so the
/// relaxation window starts no earlier than a normal election would. The ranking must drop a
/// silent peer as soon as its leader claim: a dead leader's last answer (the longest log, an
/// engine at the head) kept out-ranking the survivors for the full [`PEER_STALE`] and cost
/// 1,035 ms against 580 ms in the lost-leader measurement.
pub fn alive_within(election_timeout: Duration) -> Duration {
    election_timeout
}

/// How long the cluster must have had no live leader before the most caught-up node becomes
/// eligible and the vote gate is lifted: half an `election_timeout`.
///
/// Why that much: the window starts once the old leader's claim is [`alive_within`]
/// old, when every eligible follower's election timer has fired at least once; half an
/// `election_timeout` more covers their pre-vote and vote round trips (each bounded by
/// `send_timeout`) and one re-drawn attempt (openraft re-draws in `[e/4, e/2)`), so an eligible
/// node that can win has won before relaxation starts. Why not more: the path must stay within
/// 3 x `election_timeout` of the leader's loss. The claim (`alive_within`, `e`), plus a poll
/// period (100 ms), plus the window `e/2`, plus the relaxed node's pre-vote and vote (a few
/// round trips) is about 1.5 x `e` + 150 ms: 700 ms with the guide's 368 ms, against a target
/// of 1,104 ms (previously a fixed 2 s; measured 500-600 ms in `every_node_lagging`).
/// Relaxing early cannot elect a lagging node over an eligible one: relaxation picks only the
/// most caught-up node, and an eligible node with the same log outranks a lagging one.
pub fn relax_after(election_timeout: Duration) -> Duration {
    election_timeout / 2
}

/// How long voters keep refusing lagging candidates once no live leader is known: half the
/// relaxation window. Each node starts its own leaderless clock when its own last poll of the
/// old leader goes stale, so two nodes' clocks differ by up to a poll (100 ms) and a tick. Were
/// the gate lifted with the same window, the relaxed candidate's first pre-vote would often
/// reach a voter whose gate still holds and be refused, costing a re-drawn attempt (92-184 ms
/// with the guide's timings; twice measured, 1,050 ms in all). Lifted half a window earlier, a
/// voter is open by the time the candidate asks. Until then the gate still covers the normal
/// election (eligible followers campaign 0.75-1.0 x `election_timeout` after the silence, before
/// any node's clock starts); an ineligible node has its election timer off regardless.
pub fn gate_lift_after(election_timeout: Duration) -> Duration {
    relax_after(election_timeout) / 2
}

/// How long a transfer keeps asking its target: 3/4 of an `election_timeout`. A transferring
/// leader stops proposing and heartbeating, so from its request the followers campaign by
/// themselves 0.75-1.0 x `election_timeout` later (settings.rs); asking after that only
/// competes with their election.
pub fn transfer_budget(election_timeout: Duration) -> Duration {
    election_timeout * 3 / 4
}

/// Time and lag limits of the policy; derived once from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `raft.max_exec_lag_blocks`.
    pub max_exec_lag_blocks: u64,
    /// `raft.handoff_after`: a leader whose engine stays behind this long hands over.
    pub handoff_after: Duration,
    /// `raft.unhealthy_leader_grace`: a leader whose engine stays sick this long hands over.
    pub unhealthy_leader_grace: Duration,
    /// `raft.leader_lease_timeout`: a leader produces only while its last quorum ack is younger.
    pub leader_lease_timeout: Duration,
    /// See [`alive_within`].
    pub alive_within: Duration,
    /// See [`relax_after`].
    pub relax_after: Duration,
    /// See [`gate_lift_after`].
    pub gate_lift_after: Duration,
    /// See [`transfer_budget`]; production stays stopped this long after a transfer starts.
    pub transfer_budget: Duration,
    /// The wait between two requests of one transfer: the budget shared by
    /// [`TRANSFER_ATTEMPTS_MAX`] requests (55 ms with the guide's timings; it was a fixed
    /// 60 ms, whose 5 x 60 = 300 ms overran the guide's earliest campaign at 276 ms).
    pub transfer_retry_after: Duration,
    /// The least time between two transfers: the previous one's budget and the election it may
    /// have triggered (`election_timeout`) must be over, and never less than a second.
    pub transfer_spacing: Duration,
}

impl Limits {
    /// The limits for the configured `election_timeout`, lease and lag settings.
    pub fn derive(
        election_timeout: Duration,
        leader_lease_timeout: Duration,
        max_exec_lag_blocks: u64,
        handoff_after: Duration,
        unhealthy_leader_grace: Duration,
    ) -> Limits {
        let budget = transfer_budget(election_timeout);
        Limits {
            max_exec_lag_blocks,
            handoff_after,
            unhealthy_leader_grace,
            leader_lease_timeout,
            alive_within: alive_within(election_timeout),
            relax_after: relax_after(election_timeout),
            gate_lift_after: gate_lift_after(election_timeout),
            transfer_budget: budget,
            transfer_retry_after: budget / TRANSFER_ATTEMPTS_MAX,
            transfer_spacing: (election_timeout + budget).max(TRANSFER_SPACING_MIN),
        }
    }
}

/// A peer's last answer, with its age.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Which peer.
    pub id: NodeId,
    /// What it last said.
    pub state: PeerState,
    /// How long ago it said it.
    pub age: Duration,
    /// The poll after that answer failed (the state is kept, but the peer may be gone).
    pub last_poll_failed: bool,
    /// How long it has been answering without going stale.
    pub heard_for: Duration,
}

impl Peer {
    /// Counts at all: answered within [`PEER_STALE`], and with its own id. A node answers
    /// polls before its Elector's first decision with an empty state (no id, no heights),
    /// which would rank it below everyone.
    fn fresh(&self) -> bool {
        self.age < PEER_STALE && self.state.node_id == self.id
    }

    fn log(&self) -> LogPos {
        LogPos {
            term: self.state.last_log_term,
            index: self.state.last_log_index,
        }
    }

    /// May take leadership: answered its last poll lately, and eligible, healthy, unpaused.
    fn fit_target(&self) -> bool {
        self.fresh()
            && !self.last_poll_failed
            && self.age < TRANSFER_TARGET_FRESH
            && self.state.eligible
            && self.state.healthy
            && !self.state.paused
    }
}

/// This node's own state, as gathered on one tick.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Own {
    /// The applied head's height.
    pub applied: Height,
    /// The Raft index of the last applied entry.
    pub applied_index: u64,
    /// The Raft index the leader says is committed.
    pub committed_index: u64,
    /// The last entry of this node's Raft log.
    pub last_log: LogPos,
    /// The engine's head height.
    pub exec_height: Height,
    /// The engine's last call succeeded.
    pub healthy: bool,
    /// The engine's chain is not the committed chain.
    pub on_other_chain: bool,
    /// The engine's last problem.
    pub engine_error: Option<String>,
}

/// Everything the policy looks at; plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// This node.
    pub node_id: NodeId,
    /// The configured peers (whether they answered or not).
    pub configured_peers: Vec<NodeId>,
    /// The peers that have answered at least once, with their last answer.
    pub peers: Vec<Peer>,
    /// openraft says this node is the leader.
    pub is_leader: bool,
    /// This node's current term.
    pub term: Term,
    /// On a leader: how long ago a quorum last acknowledged it.
    pub quorum_acked_ago: Option<Duration>,
    /// The node itself.
    pub own: Own,
    /// `node.aggregator`.
    pub aggregator: bool,
    /// Paused by an operator.
    pub paused: bool,
    /// A graceful shutdown has begun.
    pub shutting_down: bool,
    /// This node is no longer a member of the cluster (why, in words): it neither
    /// campaigns nor produces.
    pub removed: Option<String>,
    /// How long no live leader has been known (`None`: the timer is not running).
    pub leaderless_for: Option<Duration>,
    /// How long this leader's engine has been sick.
    pub unhealthy_for: Option<Duration>,
    /// How long this leader's engine has been behind the cluster's head.
    pub behind_for: Option<Duration>,
    /// How long ago this node last started a leadership transfer.
    pub since_last_transfer: Option<Duration>,
    /// The limits.
    pub limits: Limits,
}

/// Why a node may not lead (strictly); the texts are those `/status` and `/events` show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ineligible {
    /// Removed from the cluster's membership.
    Removed {
        /// How this node knows.
        why: String,
    },
    /// An operator paused it.
    Paused,
    /// Its engine follows another chain.
    OtherChain,
    /// Its engine does not answer.
    Unhealthy {
        /// The engine's last error.
        error: String,
    },
    /// Its engine is too far behind the cluster's head.
    Lagging {
        /// Blocks behind.
        lag_blocks: u64,
        /// `raft.max_exec_lag_blocks`.
        max_blocks: u64,
    },
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ineligible::Removed { why } => write!(f, "removed from the cluster: {why}"),
            Ineligible::Paused => f.write_str("paused"),
            Ineligible::OtherChain => f.write_str("engine on another chain"),
            Ineligible::Unhealthy { error } => write!(f, "engine unhealthy: {error}"),
            Ineligible::Lagging {
                lag_blocks,
                max_blocks,
            } => write!(
                f,
                "exec lag {lag_blocks} > max_exec_lag_blocks {max_blocks}"
            ),
        }
    }
}

/// Why a leader hands over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoverReason {
    /// An operator paused it.
    Paused,
    /// It leads only because no one else could (relaxed, or elected before the others' logs
    /// caught up), and its engine lags past `max_exec_lag_blocks`.
    Lagging,
    /// Its engine stayed sick past `unhealthy_leader_grace`.
    UnhealthyPastGrace,
    /// Its engine stayed behind past `handoff_after`.
    BehindPastHandoff,
}

impl fmt::Display for HandoverReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandoverReason::Paused => "paused",
            HandoverReason::Lagging => "engine lags past max_exec_lag_blocks",
            HandoverReason::UnhealthyPastGrace => "engine unhealthy past unhealthy_leader_grace",
            HandoverReason::BehindPastHandoff => "engine behind past handoff_after",
        })
    }
}

/// A leader should hand over: why, and to whom (`None`: no peer is fit to take over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// Why.
    pub why: HandoverReason,
    /// The best peer, if any.
    pub to: Option<NodeId>,
}

/// What the Producer should be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Production {
    /// Produce for this term.
    Produce {
        /// The term this node leads.
        term: Term,
    },
    /// Stay idle, for this reason.
    Stop(StopReason),
}

/// Which timers should be running after this tick (a running one keeps its start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Clocks {
    /// No live leader is known.
    pub leaderless: bool,
    /// This leader's engine is sick.
    pub unhealthy: bool,
    /// This leader's engine is behind the cluster's head.
    pub behind: bool,
}

/// The policy's answer for one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The highest applied height this node can infer.
    pub cluster_head: Height,
    /// Blocks the engine is behind `cluster_head`.
    pub exec_lag_blocks: u64,
    /// The highest execution height known (own or a fresh peer's).
    pub best_exec_height: Height,
    /// Why this node is not strictly eligible.
    pub ineligible: Option<Ineligible>,
    /// Eligible only because the cluster has had no live leader for the relaxation window.
    pub relaxed: bool,
    /// May campaign (strictly or relaxed): openraft's `elect` switch.
    pub eligible: bool,
    /// This node leads, or a fresh peer of at least our term says it does.
    pub leader_alive: bool,
    /// Voters refuse lagging candidates.
    pub gate_active: bool,
    /// Produce or not, and why not.
    pub production: Production,
    /// Hand over, why and to whom.
    pub handover: Option<Handover>,
    /// Timers to keep running.
    pub clocks: Clocks,
}

impl Decision {
    /// The reason `/status` shows: only when the node may not campaign at all.
    pub fn ineligible_reason(&self) -> Option<&Ineligible> {
        if self.eligible {
            None
        } else {
            self.ineligible.as_ref()
        }
    }
}

/// "Most caught up" order: a healthy engine first (with every engine sick a leader is still
/// elected, so production resumes the moment one recovers), then the Raft log (only a node
/// with the longest log can win), then the execution height, then the smaller id.
type Rank<'a> = (bool, LogPos, Height, std::cmp::Reverse<&'a NodeId>);

fn fresh(i: &Inputs) -> impl Iterator<Item = &Peer> {
    i.peers.iter().filter(|p| p.fresh())
}

/// The fresh peers that answered within [`Limits::alive_within`].
fn alive(i: &Inputs) -> impl Iterator<Item = &Peer> {
    fresh(i).filter(|p| p.age < i.limits.alive_within)
}

/// The policy. Pure: the same inputs give the same decision.
pub fn decide(i: &Inputs) -> Decision {
    let l = &i.limits;
    let own = &i.own;
    // Lag is measured against the cluster's head, not just our own applied head: a node that
    // was down is behind on its Raft log too, and must not count itself caught up.
    let peer_head = fresh(i)
        .map(|p| p.state.applied_height.0)
        .max()
        .unwrap_or(0);
    let implied = own.applied.0 + own.committed_index.saturating_sub(own.applied_index);
    let cluster_head = Height(own.applied.0.max(peer_head).max(implied));
    let lag = cluster_head.0.saturating_sub(own.exec_height.0);
    let best_exec_height = Height(
        fresh(i)
            .map(|p| p.state.exec_height.0)
            .chain([own.exec_height.0])
            .max()
            .unwrap_or(0),
    );

    let ineligible = if let Some(why) = &i.removed {
        Some(Ineligible::Removed { why: why.clone() })
    } else if i.paused {
        Some(Ineligible::Paused)
    } else if own.on_other_chain {
        Some(Ineligible::OtherChain)
    } else if !own.healthy {
        Some(Ineligible::Unhealthy {
            error: own.engine_error.clone().unwrap_or_default(),
        })
    } else if lag > l.max_exec_lag_blocks {
        Some(Ineligible::Lagging {
            lag_blocks: lag,
            max_blocks: l.max_exec_lag_blocks,
        })
    } else {
        None
    };
    let strict = ineligible.is_none();

    // A leader is live if it is us, or a peer of at least our term that said so within one
    // election timeout: an older claim is from a leader that may be dead, and trusting it for
    // the full PEER_STALE would delay relaxation by a second.
    let leader_alive = i.is_leader || alive(i).any(|p| p.state.is_leader && p.state.term >= i.term);
    // The timer starts on the tick that sees no leader (as zero) and stops when one appears.
    let leaderless_for = (!leader_alive).then(|| i.leaderless_for.unwrap_or_default());
    let relax_window_over = leaderless_for.is_some_and(|t| t >= l.relax_after);

    // No deadlock: with no live leader for the window, whatever the reason (no node eligible;
    // or the eligible ones cannot win because a voter with a longer log refuses them), the
    // most caught-up node becomes eligible and the vote gate is lifted.
    let healthy = own.healthy && !own.on_other_chain;
    let mine: Rank<'_> = (
        healthy,
        own.last_log,
        own.exec_height,
        std::cmp::Reverse(&i.node_id),
    );
    let most_caught_up = alive(i).filter(|p| !p.state.paused).all(|p| {
        let theirs: Rank<'_> = (
            p.state.healthy,
            p.log(),
            p.state.exec_height,
            std::cmp::Reverse(&p.id),
        );
        theirs < mine
    });
    // Ranked against fewer than a quorum, a node might be outranked by ones it has not heard;
    // and without a quorum it cannot win anyway.
    let members = i.configured_peers.len() + 1;
    let quorum_heard = alive(i).count() + 1 > members / 2;
    // A peer heard only lately may still show its start-up state (its engine not read yet:
    // unhealthy, height 0) and be outranked wrongly; judge it once it has answered for the
    // window, as long as a normal election gets.
    let peers_settled = alive(i).all(|p| p.heard_for >= l.relax_after);
    let relaxed = !strict
        && i.removed.is_none()
        && !i.paused
        && !own.on_other_chain
        && most_caught_up
        && quorum_heard
        && peers_settled
        && relax_window_over;
    let eligible = strict || relaxed;
    // The vote gate holds while a leader is live, or only briefly none is (gate_lift_after).
    let gate_active = leaderless_for.is_none_or(|t| t < l.gate_lift_after);

    let sick = !healthy;
    let unhealthy_for = (i.is_leader && sick).then(|| i.unhealthy_for.unwrap_or_default());
    let behind_for = (i.is_leader && lag > 0).then(|| i.behind_for.unwrap_or_default());
    let transferring = i.since_last_transfer.is_some_and(|t| t < l.transfer_budget);
    let lease_ok = i
        .quorum_acked_ago
        .is_some_and(|t| t < l.leader_lease_timeout);

    let production = if !i.is_leader {
        Production::Stop(StopReason::LostLeadership)
    } else if i.removed.is_some() {
        Production::Stop(StopReason::Removed)
    } else if !i.aggregator {
        Production::Stop(StopReason::NotAggregator)
    } else if i.shutting_down {
        Production::Stop(StopReason::Shutdown)
    } else if i.paused {
        Production::Stop(StopReason::Paused)
    } else if transferring {
        Production::Stop(StopReason::HandingOver)
    } else if !lease_ok {
        Production::Stop(StopReason::LeaseExpired)
    } else {
        Production::Produce { term: i.term }
    };

    let may_transfer = i.is_leader
        && !i.shutting_down
        && i.since_last_transfer
            .is_none_or(|t| t >= l.transfer_spacing);
    let why = if !may_transfer {
        None
    } else if i.paused {
        Some(HandoverReason::Paused)
    } else if !strict && lag > l.max_exec_lag_blocks {
        Some(HandoverReason::Lagging)
    } else if unhealthy_for.is_some_and(|t| t >= l.unhealthy_leader_grace) {
        Some(HandoverReason::UnhealthyPastGrace)
    } else if behind_for.is_some_and(|t| t >= l.handoff_after) {
        Some(HandoverReason::BehindPastHandoff)
    } else {
        None
    };
    let handover = why.map(|why| Handover {
        why,
        to: best_peer(i),
    });

    Decision {
        cluster_head,
        exec_lag_blocks: lag,
        best_exec_height,
        ineligible,
        relaxed,
        eligible,
        leader_alive,
        gate_active,
        production,
        handover,
        clocks: Clocks {
            leaderless: leaderless_for.is_some(),
            unhealthy: unhealthy_for.is_some(),
            behind: behind_for.is_some(),
        },
    }
}

/// The most caught-up peer fit to take over (answered lately; eligible, healthy, unpaused);
/// ties go to the smaller id, so every node picks the same one.
pub fn best_peer(i: &Inputs) -> Option<NodeId> {
    i.peers
        .iter()
        .filter(|p| p.fit_target())
        .max_by(|a, b| {
            a.state
                .exec_height
                .cmp(&b.state.exec_height)
                .then_with(|| b.id.cmp(&a.id))
        })
        .map(|p| p.id.clone())
}

/// Whom a leader that shuts down hands over to: the best peer, or with none strictly fit, the
/// most caught-up healthy fresh peer (it still beats no leader until an election).
pub fn shutdown_target(i: &Inputs) -> Option<NodeId> {
    best_peer(i).or_else(|| {
        fresh(i)
            .filter(|p| p.state.healthy)
            .max_by(|a, b| {
                a.state
                    .exec_height
                    .cmp(&b.state.exec_height)
                    .then_with(|| b.id.cmp(&a.id))
            })
            .map(|p| p.id.clone())
    })
}

/// The target of an admin transfer: `to`, checked unless `force`, or the best peer.
///
/// # Errors
/// When this node does not lead, `to` is this node or not a peer, or (without `force`) `to`
/// has not answered lately, is paused, unhealthy or lagging; with no `to`, when no peer is fit.
pub fn admin_target(i: &Inputs, to: Option<NodeId>, force: bool) -> Result<NodeId, TransferError> {
    if !i.is_leader {
        return Err(TransferError::NotLeader);
    }
    let Some(to) = to else {
        return best_peer(i).ok_or(TransferError::NoFitPeer);
    };
    if to == i.node_id {
        return Err(TransferError::AlreadyLeads(to));
    }
    if !i.configured_peers.contains(&to) {
        return Err(TransferError::NotAPeer(to));
    }
    if force {
        return Ok(to);
    }
    match fresh(i).find(|p| p.id == to).map(|p| &p.state) {
        None => Err(TransferError::NotHeard(to)),
        Some(s) if s.paused => Err(TransferError::Paused(to)),
        Some(s) if !s.healthy => Err(TransferError::Unhealthy(to)),
        Some(s) if !s.eligible => Err(TransferError::Lagging {
            exec_height: s.exec_height,
            applied_height: s.applied_height,
            id: to,
        }),
        Some(_) => Ok(to),
    }
}

/// May this node be paused: another node could lead (a fresh, eligible, unpaused peer), or
/// the operator forces it.
///
/// # Errors
/// [`PauseError::NoOtherEligible`] when pausing would halt production.
pub fn may_pause(i: &Inputs, force: bool) -> Result<(), PauseError> {
    if force || fresh(i).any(|p| p.state.eligible && !p.state.paused) {
        Ok(())
    } else {
        Err(PauseError::NoOtherEligible)
    }
}

#[cfg(test)]
mod tests;
