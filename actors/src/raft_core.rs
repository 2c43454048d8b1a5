//! RaftCore: the actor that owns the node's openraft handle.
//!
//! Owns: the `Raft` handle for every command (openraft's own tasks run on the tokio runtime
//! and outlive this actor, so a rebuilt RaftCore picks up exactly where the old one was).
//! Other actors ask it by message: [`ProposeBlock`] and [`ConfirmLeadership`] (the
//! Producer), [`TransferLeader`] and [`SetElect`] (the Elector), [`GetStatus`] (the API).
//! The transport's server holds a dispatch-only clone (`haseq_net::RaftHandler`) for the
//! RPCs peers send, which must never wait behind the arbiter; the node keeps the handle it
//! built only to initialise the cluster and to shut Raft down.
//! Receives: those, `CrashForTest`; openraft's server metrics (role, vote, leader,
//! membership) as a stream.
//! Sends: answers; [`RaftFacts`] (role, term, leader, last log entry, applied and committed
//! indexes, the leader's last quorum ack) on the [`RaftFeed`], at once on a role change and
//! otherwise when they change; logs every role and leader change at once, and publishes the
//! role, term, leader and indexes as Prometheus metrics (the indexes every [`GAUGES_INTERVAL`]: following
//! openraft's full metrics instead woke this actor several times per block, on the arbiter
//! thread every other actor shares). (Production is steered by the Elector.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, AsyncContext, Context, Handler, Message, ResponseFuture, StreamHandler, WrapFuture,
};
use haseq_messages::members::{MemberChange, MemberChangeError, MemberEntry, MembersReport};
use haseq_messages::{ApplyOutcome, Block, Command, NodeId, PeerNode, Term};
use openraft::async_runtime::WatchReceiver;
use openraft::{Instant as _, RaftMetrics, ServerState};
use serde::Serialize;

use crate::HaseqRaft;
use crate::feed::Feed;
use crate::supervisor::ExitGuard;

/// A node's role as `/status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Leads the cluster.
    Leader,
    /// Follows a leader (or waits for one).
    Follower,
    /// Campaigning.
    Candidate,
    /// Receives the log but does not vote.
    Learner,
    /// Raft has stopped on this node.
    Shutdown,
    /// No membership yet: started with `raft.join` (or not yet bootstrapped), waiting for a
    /// leader to replicate to it.
    Joining,
}

impl Role {
    fn of(s: ServerState) -> Role {
        match s {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        }
    }

    /// The role as a lowercase word.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
            Role::Joining => "joining",
        }
    }
}

/// The Raft side of `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RaftStatus {
    /// This node's id.
    pub node_id: NodeId,
    /// Leader, follower, candidate or learner.
    pub role: Role,
    /// Current Raft term.
    pub term: u64,
    /// The leader this node knows of; `None` while none is known.
    pub leader_id: Option<NodeId>,
    /// Highest log index this node knows committed and may apply; `None` before anything is.
    pub committed_index: Option<u64>,
    /// Highest log index the leader reported committed by a quorum (may lead
    /// `committed_index` on a node that has not received those entries yet).
    pub cluster_committed_index: Option<u64>,
    /// Highest log index applied to the state machine.
    pub applied_index: Option<u64>,
    /// Highest log index in the local log.
    pub last_log_index: Option<u64>,
    /// Index covered by the newest snapshot.
    pub snapshot_index: Option<u64>,
    /// Voters and learners of the effective membership.
    pub members: Vec<NodeId>,
    /// Voters of the effective membership.
    pub voters: Vec<NodeId>,
    /// Learners of the effective membership (`/status` shows them with their lag instead).
    #[serde(skip)]
    pub learners: Vec<NodeId>,
    /// On a leader: milliseconds since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// On a leader: the highest log index each member (voter or learner) has acknowledged
    /// (`None` for one that has acknowledged nothing yet); empty elsewhere.
    #[serde(skip)]
    pub matched: BTreeMap<NodeId, Option<u64>>,
    /// The effective membership with the addresses it records.
    #[serde(skip)]
    pub member_addrs: Members,
    /// Set when openraft stopped with a fatal error.
    pub fatal: Option<String>,
}

impl RaftStatus {
    /// Read the status out of openraft's metrics.
    pub fn from_metrics(m: &RaftMetrics<haseq_messages::TC>) -> RaftStatus {
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        let mut members = voters.clone();
        members.extend(learners.iter().cloned());
        #[allow(deprecated)]
        let quorum_ack = m.millis_since_quorum_ack;
        // An uninitialised node is a learner to openraft; to an operator it is one that
        // waits to be added.
        let role = if voters.is_empty() && learners.is_empty() && m.state != ServerState::Shutdown {
            Role::Joining
        } else {
            Role::of(m.state)
        };
        RaftStatus {
            node_id: m.id.clone(),
            role,
            term: m.current_term,
            leader_id: m.current_leader.clone(),
            committed_index: m.local_committed.as_ref().map(|l| l.index),
            cluster_committed_index: m.cluster_committed.as_ref().map(|l| l.index),
            applied_index: m.last_applied.as_ref().map(|l| l.index),
            last_log_index: m.last_log_index,
            snapshot_index: m.snapshot.as_ref().map(|l| l.index),
            members,
            voters,
            learners,
            millis_since_quorum_ack: quorum_ack,
            matched: m
                .replication
                .as_ref()
                .map(|r| {
                    r.iter()
                        .map(|(id, l)| (id.clone(), l.as_ref().map(|l| l.index)))
                        .collect()
                })
                .unwrap_or_default(),
            member_addrs: Members::of(m),
            fatal: m.running_state.as_ref().err().map(|e| e.to_string()),
        }
    }
}

/// A Raft log position; ordered as Raft compares logs (term first, then index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
pub struct LogPos {
    /// The entry's term.
    pub term: Term,
    /// The entry's index.
    pub index: u64,
}

/// The effective membership: voters and learners with the node-to-node address each entry
/// records (empty for the members a cluster was bootstrapped with).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Members {
    /// Voters (during a joint change, those of both configurations).
    pub voters: BTreeMap<NodeId, String>,
    /// Learners.
    pub learners: BTreeMap<NodeId, String>,
    /// The log index of the membership entry (0 before any).
    pub log_index: u64,
}

impl Members {
    /// Read from openraft's metrics.
    pub fn of(m: &RaftMetrics<haseq_messages::TC>) -> Members {
        let stored = m.membership_config.membership();
        let addr = |id: &NodeId| {
            stored
                .get_node(id)
                .map(|n| n.addr.clone())
                .unwrap_or_default()
        };
        Members {
            voters: stored
                .voter_ids()
                .map(|id| (id.clone(), addr(&id)))
                .collect(),
            learners: stored
                .learner_ids()
                .map(|id| (id.clone(), addr(&id)))
                .collect(),
            log_index: m.membership_config.log_id().as_ref().map_or(0, |l| l.index),
        }
    }

    /// No membership yet (a node that has not joined).
    pub fn is_empty(&self) -> bool {
        self.voters.is_empty() && self.learners.is_empty()
    }

    /// Is `id` a voter or a learner?
    pub fn contains(&self, id: &NodeId) -> bool {
        self.voters.contains_key(id) || self.learners.contains_key(id)
    }

    /// As a change's answer reports it.
    pub fn report(&self, leader: NodeId) -> MembersReport {
        let list = |m: &BTreeMap<NodeId, String>| {
            m.iter()
                .map(|(id, addr)| MemberEntry {
                    id: id.clone(),
                    addr: addr.clone(),
                })
                .collect()
        };
        MembersReport {
            leader,
            log_index: self.log_index,
            voters: list(&self.voters),
            learners: list(&self.learners),
        }
    }
}

/// What RaftCore tells its subscribers (the Elector): the role, term and leader, what was
/// applied and committed, as openraft last reported them. Published on the [`RaftFeed`] at
/// once when the role, term or leader changes, and otherwise when anything in it changed,
/// checked every [`FACTS_INTERVAL`].
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct RaftFacts {
    /// Leader, follower, candidate, learner or shut down.
    pub role: Role,
    /// The current term.
    pub term: Term,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// The last entry of the local log (`Default` when the log is empty).
    pub last_log: LogPos,
    /// The Raft index of the last applied entry (0 before any).
    pub applied_index: u64,
    /// The Raft index the leader says is committed (0 before any).
    pub committed_index: u64,
    /// On a leader: when a quorum last acknowledged it.
    pub quorum_acked_at: Option<std::time::Instant>,
    /// The effective membership.
    pub members: Members,
}

impl RaftFacts {
    fn read(raft: &HaseqRaft) -> RaftFacts {
        let last_log = raft
            .data_metrics()
            .borrow_watched()
            .last_log
            .as_ref()
            .map(|l| LogPos {
                term: Term(l.leader_id.term),
                index: l.index,
            })
            .unwrap_or_default();
        let m = raft.metrics();
        let m = m.borrow_watched();
        let role = Role::of(m.state);
        // A leader that is the only voter is its own quorum: no other node can be elected
        // without a membership change that it commits itself, so its lease never lapses.
        // openraft does not refresh `last_quorum_acked` without followers to ack.
        let sole_voter = {
            let mut voters = m.membership_config.membership().voter_ids();
            voters.next().as_ref() == Some(&m.id) && voters.next().is_none()
        };
        RaftFacts {
            role,
            term: Term(m.current_term),
            leader: m.current_leader.clone(),
            last_log,
            applied_index: m.last_applied.as_ref().map_or(0, |l| l.index),
            committed_index: m.cluster_committed.as_ref().map_or(0, |l| l.index),
            quorum_acked_at: if sole_voter && role == Role::Leader {
                Some(std::time::Instant::now())
            } else {
                m.last_quorum_acked
                    .as_ref()
                    .filter(|_| role == Role::Leader)
                    // openraft keeps its own instant type, with no conversion: its age, read now,
                    // dates it on the std clock.
                    .and_then(|t| {
                        std::time::Instant::now().checked_sub((*t).into_inner().elapsed())
                    })
            },
            members: Members::of(&m),
        }
    }
}

/// Who receives [`RaftFacts`]: a replaying [`Feed`], so a rebuilt subscriber learns the
/// current role at once, and a rebuilt RaftCore keeps its subscribers.
pub type RaftFeed = Feed<RaftFacts>;

/// How often RaftCore compares openraft's metrics with the facts it last published. The
/// Elector's own tick: a fresher reading would wait for that tick anyway.
pub const FACTS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// How often the log index gauges are refreshed between role changes.
pub const GAUGES_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Ask RaftCore for the current Raft status (read from openraft's metrics when asked).
#[derive(Message)]
#[rtype(result = "RaftStatus")]
pub struct GetStatus;

/// Propose a block to the cluster (`client_write`); answered once it is committed and
/// applied, with what the state machine made of it.
#[derive(Message, Debug)]
#[rtype(result = "Result<ApplyOutcome, ProposeError>")]
pub struct ProposeBlock {
    /// The block, built on the applied head.
    pub block: Block,
}

/// Confirm with a quorum that this node still leads, and wait until everything committed so
/// far is applied (openraft's ReadIndex).
#[derive(Message, Debug)]
#[rtype(result = "Result<(), ProposeError>")]
pub struct ConfirmLeadership;

/// Hand leadership to `to` (ignored by openraft unless this node leads), asking it again
/// every `retry_after` until this node no longer leads, at most `attempts` times.
///
/// Why ask again: the target ignores a request it does not receive (a link down for a
/// moment) or that overtook the leader's last entry on its way (openraft's target campaigns
/// only with that entry in its log), and the leader has stopped proposing once it asked:
/// asked once only, the cluster would wait for an election timeout and any node could win.
/// Each request also resumes the replication to a target that was backing off.
///
/// Answered `Ok(true)` once this node no longer leads, `Ok(false)` when the target did not
/// take over within the attempts (the followers then elect a leader by themselves).
#[derive(Message, Debug)]
#[rtype(result = "Result<bool, ProposeError>")]
pub struct TransferLeader {
    /// The target.
    pub to: NodeId,
    /// How long each request is given before the next.
    pub retry_after: std::time::Duration,
    /// The most requests.
    pub attempts: u32,
}

/// Turn this node's election timer on or off (openraft's runtime `elect`).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct SetElect(pub bool);

/// Make one membership change through openraft, on the leader, as asked: the guards an
/// operator's request passes first (lag, quorum, hand-over) are [`crate::members`]'. Answered
/// once the change is committed, with the membership after it.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<MembersReport, MemberChangeError>")]
pub struct ChangeMembership(pub MemberChange);

/// How long a membership change may wait to be committed before the caller is answered
/// (openraft goes on with it meanwhile).
pub const MEMBERSHIP_COMMIT_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Why Raft did not take a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Another node leads (or none is known); only the leader takes proposals.
    #[error("not the leader (leader: {leader:?}): {why}")]
    NotLeader {
        /// The leader openraft knows of, if any.
        leader: Option<NodeId>,
        /// openraft's words.
        why: String,
    },
    /// openraft refused or failed otherwise (shutting down, lease not yet acknowledged).
    #[error("raft: {0}")]
    Raft(String),
    /// RaftCore could not be reached (being rebuilt); try again.
    #[error("RaftCore unavailable: {0}")]
    Unavailable(String),
}

/// Crash-fast failover (see `p2p::crash_fast`): `leader`'s connections closed without a
/// goodbye and a quorum of voters saw the same; campaign now, if this node still follows
/// `leader` in `term`. Answers whether the campaign was started.
#[derive(Message, Debug)]
#[rtype(result = "bool")]
pub struct CrashFastElect {
    /// The leader that is gone.
    pub leader: NodeId,
    /// The term it led.
    pub term: Term,
}

/// Make the actor panic: the supervisor must rebuild it. For fault-injection tests.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CrashForTest;

/// The actor; see the module doc.
pub struct RaftCore {
    raft: HaseqRaft,
    status: RaftStatus,
    feed: RaftFeed,
    /// What was last published on the feed.
    facts: Option<RaftFacts>,
    faults: crate::faults::PanicKnobs,
    /// The target of the leadership transfer last asked of this node, for the log's reason.
    transfer_to: Option<NodeId>,
    /// The last leader that handed leadership to this node, for the log's reason.
    handed: TransferSeen,
    _exit: ExitGuard,
}

impl RaftCore {
    /// A RaftCore over `raft`. Its status starts from openraft's current metrics.
    pub fn new(
        raft: HaseqRaft,
        feed: RaftFeed,
        faults: crate::faults::PanicKnobs,
        handed: TransferSeen,
        exit: ExitGuard,
    ) -> RaftCore {
        let status = RaftStatus::from_metrics(&raft.metrics().borrow_watched());
        RaftCore {
            raft,
            status,
            feed,
            facts: None,
            faults,
            transfer_to: None,
            handed,
            _exit: exit,
        }
    }

    /// Reads openraft's metrics now and takes them in.
    fn refresh(&mut self) {
        self.faults.trip(crate::faults::PanicSite::RaftCore);
        let next = RaftStatus::from_metrics(&self.raft.metrics().borrow_watched());
        self.observe(next);
    }

    /// Publishes the facts when they changed (or were never published by this actor).
    fn tell(&mut self) {
        let next = RaftFacts::read(&self.raft);
        if self.facts.as_ref() == Some(&next) {
            return;
        }
        self.feed.publish(&next);
        self.facts = Some(next);
    }

    fn observe(&mut self, next: RaftStatus) {
        let prev = &self.status;
        if next.role != prev.role {
            let handed_by = self.handed.recent(HANDED_RECENT);
            let why =
                role_change_reason(prev, &next, self.transfer_to.as_ref(), handed_by.as_ref());
            tracing::info!(
                from = prev.role.as_str(),
                to = next.role.as_str(),
                term = next.term,
                leader = next.leader_id.as_ref().map(|l| l.as_str()).unwrap_or("none"),
                why = %why,
                "role changed"
            );
            if prev.role == Role::Leader {
                self.transfer_to = None;
            }
            match next.role {
                Role::Leader => metrics::counter!("haseq_elections_won_total").increment(1),
                Role::Candidate => metrics::counter!("haseq_elections_started_total").increment(1),
                _ => {}
            }
        }
        if next.leader_id != prev.leader_id {
            tracing::info!(
                leader = next
                    .leader_id
                    .as_ref()
                    .map(|l| l.as_str())
                    .unwrap_or("none"),
                term = next.term,
                "leader changed"
            );
            if next.leader_id.is_some() {
                metrics::counter!("haseq_leader_changes_total").increment(1);
            }
        }
        publish_gauges(&next);
        crate::log_context::set_term(next.term);
        self.status = next;
    }
}

/// How recent a leader's hand-over to this node must be to explain its campaign.
const HANDED_RECENT: Duration = Duration::from_secs(2);

/// The last leader that handed leadership to this node (its transfer request, served by the
/// node port), shared by the serving side and RaftCore.
#[derive(Debug, Clone, Default)]
pub struct TransferSeen(Arc<std::sync::Mutex<Option<(NodeId, Instant)>>>);

impl TransferSeen {
    /// The leader `from` asked this node to take over.
    pub fn record(&self, from: NodeId) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((from, Instant::now()));
    }

    /// Who asked, if it was within `within`.
    fn recent(&self, within: Duration) -> Option<NodeId> {
        let seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        seen.as_ref()
            .filter(|(_, at)| at.elapsed() <= within)
            .map(|(from, _)| from.clone())
    }
}

/// Why this node's role changed from `prev` to `next`, in a sentence for the log, from what
/// RaftCore knows: the terms, the leaders before and after, a transfer this node was asked to
/// make (`transfer_to`) and a leader that handed leadership to it (`handed_by`).
pub fn role_change_reason(
    prev: &RaftStatus,
    next: &RaftStatus,
    transfer_to: Option<&NodeId>,
    handed_by: Option<&NodeId>,
) -> String {
    let leader = |s: &RaftStatus| {
        s.leader_id
            .as_ref()
            .map_or_else(|| "none".to_string(), |l| l.to_string())
    };
    match (prev.role, next.role) {
        (_, Role::Shutdown) => "Raft stopped on this node".into(),
        (Role::Joining, Role::Candidate | Role::Leader) => format!(
            "the cluster was initialised with this node as a voter: campaigning for term {}",
            next.term
        ),
        (Role::Joining, _) => match &next.leader_id {
            Some(l) => format!("the leader {l} added this node to the cluster"),
            None => "a membership that names this node reached it".into(),
        },
        (Role::Learner, Role::Follower | Role::Candidate | Role::Leader) => {
            "promoted from learner to voter".into()
        }
        (_, Role::Learner) => "this node is a learner now: not a voter of the membership".into(),
        (_, Role::Candidate) if handed_by.is_some() => format!(
            "the leader {} handed leadership to this node: campaigning for term {}",
            handed_by.map(|h| h.as_str()).unwrap_or_default(),
            next.term
        ),
        (_, Role::Candidate) => match &prev.leader_id {
            Some(l) if l != &prev.node_id => format!(
                "no heartbeat from the leader {l} within the election timeout (and a majority agreed in the pre-vote): campaigning for term {}",
                next.term
            ),
            _ => format!(
                "no leader within the election timeout (and a majority agreed in the pre-vote): campaigning for term {}",
                next.term
            ),
        },
        (_, Role::Leader) => format!("won the election for term {}", next.term),
        (Role::Leader, _) => match (transfer_to, &next.leader_id) {
            (Some(to), l) if l.as_ref().is_none_or(|l| l == to) => {
                format!("handed leadership to {to}, as asked (term {})", next.term)
            }
            (Some(to), _) => format!(
                "stepped down while handing leadership to {to}; leader now {} (term {})",
                leader(next),
                next.term
            ),
            (None, _) if next.term > prev.term => format!(
                "a higher term {} was seen (was {}): leader now {}",
                next.term,
                prev.term,
                leader(next)
            ),
            (None, _) => format!("stepped down in term {}", next.term),
        },
        (Role::Candidate, _) if next.leader_id.is_some() => format!(
            "lost the election: {} leads term {}",
            leader(next),
            next.term
        ),
        (Role::Candidate, _) => {
            format!(
                "stopped campaigning for term {}: not elected (term now {}, no leader yet)",
                prev.term, next.term
            )
        }
        (from, to) => format!(
            "{} -> {} in term {}; leader {}",
            from.as_str(),
            to.as_str(),
            next.term,
            leader(next)
        ),
    }
}

fn publish_gauges(s: &RaftStatus) {
    for role in [
        Role::Leader,
        Role::Follower,
        Role::Candidate,
        Role::Learner,
        Role::Shutdown,
        Role::Joining,
    ] {
        let on = if s.role == role { 1.0 } else { 0.0 };
        metrics::gauge!("haseq_role", "role" => role.as_str()).set(on);
    }
    metrics::gauge!("haseq_term").set(s.term as f64);
    metrics::gauge!("haseq_is_leader").set(if s.role == Role::Leader { 1.0 } else { 0.0 });
    metrics::gauge!("haseq_committed_index").set(s.committed_index.unwrap_or(0) as f64);
    metrics::gauge!("haseq_applied_index").set(s.applied_index.unwrap_or(0) as f64);
    metrics::gauge!("haseq_last_log_index").set(s.last_log_index.unwrap_or(0) as f64);
}

impl Actor for RaftCore {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        publish_gauges(&self.status);
        // openraft publishes its server metrics (role, vote, leader, membership) on a watch
        // channel that changes only with them; turn it into a stream of full snapshots.
        // `changed()` is cancel-safe, and a rebuilt actor subscribes anew.
        let rx = self.raft.server_metrics();
        let full = self.raft.clone();
        let stream = futures::stream::unfold((rx, full), |(mut rx, full)| async move {
            rx.changed().await.ok()?;
            rx.borrow_and_update();
            let m = RaftStatus::from_metrics(&full.metrics().borrow_watched());
            Some((m, (rx, full)))
        });
        ctx.add_stream(stream);
        ctx.run_interval(GAUGES_INTERVAL, |act, _| act.refresh());
        self.tell();
        ctx.run_interval(FACTS_INTERVAL, |act, _| act.tell());
    }
}

impl StreamHandler<RaftStatus> for RaftCore {
    fn handle(&mut self, item: RaftStatus, _ctx: &mut Context<Self>) {
        self.observe(item);
        // A role change is told at once, not at the next interval.
        self.tell();
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {
        // The metrics channel closes only when openraft has shut down; keep the last status
        // (role `shutdown` will have been published just before).
        tracing::debug!("raft metrics stream ended");
    }
}

impl Handler<GetStatus> for RaftCore {
    type Result = actix::MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        self.refresh();
        actix::MessageResult(self.status.clone())
    }
}

impl Handler<ProposeBlock> for RaftCore {
    type Result = ResponseFuture<Result<ApplyOutcome, ProposeError>>;

    fn handle(&mut self, msg: ProposeBlock, _: &mut Context<Self>) -> Self::Result {
        let raft = self.raft.clone();
        // The write waits on openraft's core (a channel and a oneshot), not on this actor:
        // other messages run meanwhile.
        Box::pin(async move {
            use openraft::error::{ClientWriteError, RaftError};
            match raft.client_write(Command::Block(msg.block)).await {
                Ok(resp) => Ok(resp.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    Err(ProposeError::NotLeader {
                        leader: f.leader_id.clone(),
                        why: f.to_string(),
                    })
                }
                Err(e) => Err(ProposeError::Raft(e.to_string())),
            }
        })
    }
}

impl Handler<ConfirmLeadership> for RaftCore {
    type Result = ResponseFuture<Result<(), ProposeError>>;

    fn handle(&mut self, _: ConfirmLeadership, _: &mut Context<Self>) -> Self::Result {
        let raft = self.raft.clone();
        Box::pin(async move {
            raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex)
                .await
                .map(|_| ())
                .map_err(|e| ProposeError::Raft(e.to_string()))
        })
    }
}

impl Handler<TransferLeader> for RaftCore {
    type Result = ResponseFuture<Result<bool, ProposeError>>;

    fn handle(&mut self, msg: TransferLeader, _: &mut Context<Self>) -> Self::Result {
        self.transfer_to = Some(msg.to.clone());
        let raft = self.raft.clone();
        Box::pin(async move {
            for attempt in 1..=msg.attempts {
                raft.trigger()
                    .transfer_leader(msg.to.clone())
                    .await
                    .map_err(|e| ProposeError::Raft(e.to_string()))?;
                let handed = raft
                    .wait(Some(msg.retry_after))
                    .metrics(|m| m.state != ServerState::Leader, "leadership handed over")
                    .await;
                if handed.is_ok() {
                    return Ok(true);
                }
                tracing::info!(to = %msg.to, attempt, "transfer target has not taken over yet");
            }
            Ok(false)
        })
    }
}

impl Handler<ChangeMembership> for RaftCore {
    type Result = ResponseFuture<Result<MembersReport, MemberChangeError>>;

    fn handle(&mut self, msg: ChangeMembership, _: &mut Context<Self>) -> Self::Result {
        let raft = self.raft.clone();
        let me = self.status.node_id.clone();
        Box::pin(async move {
            let change = msg.0;
            tracing::info!(kind = change.kind(), member = %change.id(), "membership change");
            let done = tokio::time::timeout(MEMBERSHIP_COMMIT_MAX, async {
                match &change {
                    // Not blocking: answered once the entry is committed; the learner catches up
                    // afterwards, its lag shown in `/status` `learners`.
                    MemberChange::AddLearner { id, addr } => {
                        raft.add_learner(id.clone(), PeerNode { addr: addr.clone() }, false)
                            .await
                    }
                    MemberChange::Promote { id, .. } => {
                        raft.change_membership(
                            openraft::ChangeMembers::AddVoterIds(BTreeSet::from([id.clone()])),
                            false,
                        )
                        .await
                    }
                    MemberChange::Remove { id, .. } => {
                        let m = Members::of(&raft.metrics().borrow_watched());
                        let set = BTreeSet::from([id.clone()]);
                        let step = if m.voters.contains_key(id) {
                            // `retain: false`: it leaves as a voter and as a node; nothing is
                            // replicated to it any more.
                            openraft::ChangeMembers::RemoveVoters(set)
                        } else {
                            openraft::ChangeMembers::RemoveNodes(set)
                        };
                        raft.change_membership(step, false).await
                    }
                }
            })
            .await;
            let Ok(done) = done else {
                return Err(MemberChangeError::Unavailable(format!(
                    "the change was not committed within {MEMBERSHIP_COMMIT_MAX:?} (no quorum?); it may still be: check `haseqd ctl members`"
                )));
            };
            match done {
                Ok(_) => {
                    let m = Members::of(&raft.metrics().borrow_watched());
                    tracing::info!(
                        kind = change.kind(), member = %change.id(), log_index = m.log_index,
                        voters = ?m.voters.keys().collect::<Vec<_>>(),
                        learners = ?m.learners.keys().collect::<Vec<_>>(),
                        "membership changed"
                    );
                    Ok(m.report(me))
                }
                Err(e) => Err(membership_error(e)),
            }
        })
    }
}

fn membership_error(
    e: openraft::error::RaftError<
        haseq_messages::TC,
        openraft::error::ClientWriteError<haseq_messages::TC>,
    >,
) -> MemberChangeError {
    use openraft::error::{ClientWriteError, RaftError};
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => MemberChangeError::NotLeader {
            leader: f.leader_id.clone(),
            why: f.to_string(),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            MemberChangeError::Refused {
                why: c.to_string(),
                lag_blocks: None,
            }
        }
        RaftError::APIError(other) => MemberChangeError::Refused {
            why: other.to_string(),
            lag_blocks: None,
        },
        RaftError::Fatal(f) => MemberChangeError::Unavailable(format!("raft: {f}")),
    }
}

impl Handler<SetElect> for RaftCore {
    type Result = ();

    fn handle(&mut self, msg: SetElect, _: &mut Context<Self>) {
        self.raft.runtime_config().elect(msg.0);
    }
}

impl Handler<CrashFastElect> for RaftCore {
    type Result = bool;

    fn handle(&mut self, msg: CrashFastElect, ctx: &mut Context<Self>) -> bool {
        let (still, term) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            let still = m.state == openraft::ServerState::Follower
                && m.current_leader.as_ref() == Some(&msg.leader)
                && m.current_term == msg.term.0;
            (still, m.current_term)
        };
        if !still {
            tracing::debug!(leader = %msg.leader, term, "crash-fast campaign dropped: the term or leader changed meanwhile");
            return false;
        }
        // A real vote at once (`elect(false)`): openraft's own pre-vote would be refused here
        // until this node's lease on the gone leader runs out. The quorum's answers stood in
        // for it; the voters waive the lease on their own evidence, nothing else.
        let raft = self.raft.clone();
        ctx.spawn(
            async move {
                if let Err(e) = raft.trigger().elect(false).await {
                    tracing::warn!(error = %e, "crash-fast campaign not started");
                }
            }
            .into_actor(self),
        );
        true
    }
}

impl Handler<CrashForTest> for RaftCore {
    type Result = ();

    fn handle(&mut self, _: CrashForTest, _: &mut Context<Self>) {
        panic!("RaftCore: deliberate panic requested by a fault-injection test");
    }
}

crate::supervisor::stops_on_request!(RaftCore);

#[cfg(test)]
mod reason_tests {
    use super::*;

    fn st(role: Role, term: u64, leader: Option<&str>) -> RaftStatus {
        RaftStatus {
            node_id: NodeId("node-1".into()),
            role,
            term,
            leader_id: leader.map(|l| NodeId(l.into())),
            committed_index: None,
            cluster_committed_index: None,
            applied_index: None,
            last_log_index: None,
            snapshot_index: None,
            members: Vec::new(),
            voters: Vec::new(),
            learners: Vec::new(),
            millis_since_quorum_ack: None,
            matched: BTreeMap::new(),
            member_addrs: Members::default(),
            fatal: None,
        }
    }

    #[test]
    fn each_role_change_gets_its_reason() {
        let n2 = NodeId("node-2".into());
        use Role::*;
        let cases: Vec<(RaftStatus, RaftStatus, Option<&NodeId>, &str)> = vec![
            (
                st(Follower, 3, Some("node-2")),
                st(Candidate, 4, None),
                None,
                "no heartbeat from the leader node-2 within the election timeout",
            ),
            (
                st(Follower, 3, None),
                st(Candidate, 4, None),
                None,
                "no leader within the election timeout",
            ),
            (
                st(Candidate, 4, None),
                st(Leader, 4, Some("node-1")),
                None,
                "won the election for term 4",
            ),
            (
                st(Candidate, 4, None),
                st(Follower, 5, Some("node-3")),
                None,
                "lost the election: node-3 leads term 5",
            ),
            (
                st(Leader, 4, Some("node-1")),
                st(Follower, 5, Some("node-2")),
                Some(&n2),
                "handed leadership to node-2, as asked",
            ),
            (
                st(Leader, 4, Some("node-1")),
                st(Follower, 6, Some("node-3")),
                None,
                "a higher term 6 was seen (was 4): leader now node-3",
            ),
            (
                st(Learner, 4, Some("node-2")),
                st(Follower, 4, Some("node-2")),
                None,
                "promoted from learner to voter",
            ),
            (
                st(Joining, 0, None),
                st(Learner, 4, Some("node-2")),
                None,
                "the leader node-2 added this node to the cluster",
            ),
            (
                st(Joining, 0, None),
                st(Candidate, 1, None),
                None,
                "the cluster was initialised",
            ),
            (
                st(Leader, 4, Some("node-1")),
                st(Follower, 5, None),
                Some(&n2),
                "handed leadership to node-2, as asked",
            ),
            (
                st(Candidate, 4, None),
                st(Follower, 5, None),
                None,
                "stopped campaigning for term 4: not elected",
            ),
            (
                st(Follower, 4, Some("node-2")),
                st(Shutdown, 4, None),
                None,
                "Raft stopped",
            ),
        ];
        for (prev, next, transfer, want) in cases {
            let got = role_change_reason(&prev, &next, transfer, None);
            assert!(
                got.contains(want),
                "{:?} -> {:?}: {got:?} lacks {want:?}",
                prev.role,
                next.role
            );
        }
        let handed = role_change_reason(
            &st(Follower, 4, Some("node-2")),
            &st(Candidate, 5, None),
            None,
            Some(&n2),
        );
        assert!(
            handed.contains("the leader node-2 handed leadership to this node"),
            "{handed}"
        );
    }
}
